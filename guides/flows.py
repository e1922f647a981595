"""Normalizing flows on an amortized Gaussian guide.

``q(z | x) = (f_K o ... o f_1)_# N(mu(x), diag(sigma(x)^2))``: a draw from the encoder's
Gaussian is pushed through K invertible maps, each conditioned on a context ``h(x)`` from the
encoder (its last hidden layer), and ``log q(z|x) = log N(z_0) - sum_k log |det df_k/dz_{k-1}|``.
The maps are Pyro's conditional transforms:

- ``"iaf"``: inverse autoregressive flow, ``z_k = s * z_{k-1} + (1 - s) * m`` with
  ``s = sigmoid(.)`` and ``(m, .)`` an autoregressive function of ``z_{k-1}`` and ``h``
  (Pyro's ``ConditionalAffineAutoregressive`` with ``stable=True``, the LSTM-type update of
  Kingma et al. 2016); the variable order is reversed between steps.
- ``"planar"``: ``z_k = z_{k-1} + u tanh(w^T z_{k-1} + b)`` with ``(u, w, b)`` a function of
  ``h`` (Rezende & Mohamed 2015).
- ``"radial"``: ``z_k = z_{k-1} + beta (z_{k-1} - z_ref) / (alpha + |z_{k-1} - z_ref|)``
  with ``(z_ref, alpha, beta)`` a function of ``h`` (Rezende & Mohamed 2015).

Planar and radial maps have no closed-form inverse: their density is known at their own
draws only (Pyro caches the pre-image), which is all an ELBO or an importance weight needs.

References:
    Rezende & Mohamed (2015), Variational Inference with Normalizing Flows.
    Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), Improved Variational
        Inference with Inverse Autoregressive Flow.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import ConditionalAutoRegressiveNN, DenseNN
from torch import Tensor, nn

from pyro_vae.nn import check_flat_data

__all__ = [
    "FLOWS",
    "ConditionalFlow",
    "GaussianFlowEncoder",
    "PerPointFlowGuide",
    "check_flow",
    "gaussian_or_flow",
    "make_flow",
]

#: The flows the built-in Gaussian guides take, ``--pair-kwargs '{"flow": ...}'``.
FLOWS = ("none", "iaf", "planar", "radial")
#: Steps of a flow when ``flow_steps`` is not given.
DEFAULT_STEPS = 4


def check_flow(flow: str, flow_steps: int, z_dim: int, owner: str) -> None:
    """Raise ValueError naming ``owner`` for an unknown flow or a bad number of steps."""
    if flow not in FLOWS:
        raise ValueError(f"{owner}: unknown flow {flow!r}; choose one of: {', '.join(FLOWS)}")
    if isinstance(flow_steps, bool) or not isinstance(flow_steps, int):
        raise ValueError(f"{owner}: flow_steps must be an integer, got {flow_steps!r}")
    if flow != "none" and flow_steps < 1:
        raise ValueError(
            f'{owner}: flow_steps must be at least 1 for "flow": "{flow}", got {flow_steps} '
            '(for the plain Gaussian guide use "flow": "none")'
        )
    if flow == "iaf" and z_dim < 2:
        raise ValueError(
            f'{owner}: "flow": "iaf" needs z_dim >= 2 (an autoregressive map of one variable '
            f'is affine in it alone), got z_dim={z_dim}; use "planar" or "radial"'
        )


def _hidden(flow_hidden: Sequence[int] | None, z_dim: int) -> list[int]:
    return [max(4 * z_dim, 16)] if flow_hidden is None else [int(h) for h in flow_hidden]


class ConditionalFlow(nn.Module):
    """``steps`` conditional transforms of one kind on a ``z_dim``-dimensional latent, each
    conditioned on a ``context_dim``-dimensional context (see the module docstring).

    ``flow(loc, scale, context)`` is the distribution of z: the Gaussian
    ``N(loc, diag(scale^2))`` pushed through the transforms, batch shape ``loc.shape[:-1]``,
    event shape ``(z_dim,)``. ``hidden`` are the widths of each transform's network (default
    ``[max(4 z_dim, 16)]``).
    """

    def __init__(
        self,
        kind: str,
        z_dim: int,
        context_dim: int,
        steps: int = DEFAULT_STEPS,
        hidden: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_flow(kind, steps, z_dim, type(self).__name__)
        if kind == "none":
            raise ValueError('ConditionalFlow: "none" is the plain Gaussian guide, not a flow')
        self.kind = kind
        self.z_dim = z_dim
        self.context_dim = context_dim
        widths = _hidden(hidden, z_dim)
        transforms: list[nn.Module] = []
        for step in range(steps):
            if kind == "iaf":
                order = torch.arange(z_dim)
                permutation = order if step % 2 == 0 else order.flip(0)
                net = ConditionalAutoRegressiveNN(
                    z_dim, context_dim, widths, permutation=permutation
                )
                transforms.append(T.ConditionalAffineAutoregressive(net, stable=True))
            elif kind == "planar":  # the net gives (b, u, w)
                net = DenseNN(context_dim, widths, [1, z_dim, z_dim])
                transforms.append(T.ConditionalPlanar(net))
            else:  # the net gives (z_ref, alpha, beta) before their constraints
                net = DenseNN(context_dim, widths, [z_dim, 1, 1])
                transforms.append(T.ConditionalRadial(net))
        self.transforms = nn.ModuleList(transforms)

    def conditioned(self, context: Tensor) -> list[dist.transforms.Transform]:
        """The transforms ``f_1 .. f_K`` given the context, in the order they are applied."""
        return [transform.condition(context) for transform in self.transforms]

    def forward(self, loc: Tensor, scale: Tensor, context: Tensor) -> dist.TransformedDistribution:
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, self.conditioned(context))


def make_flow(
    flow: str,
    flow_steps: int,
    z_dim: int,
    context_dim: int,
    flow_hidden: Sequence[int] | None,
    owner: str,
) -> ConditionalFlow | None:
    """The flow of a guide's ``flow`` setting, checked first; None for ``"none"``."""
    check_flow(flow, flow_steps, z_dim, owner)
    if flow == "none":
        return None
    return ConditionalFlow(flow, z_dim, context_dim, flow_steps, flow_hidden)


def gaussian_or_flow(
    flow: ConditionalFlow | None, loc: Tensor, scale: Tensor, context: Tensor
) -> dist.TorchDistribution:
    """``N(loc, diag(scale^2))`` without a flow, else the flow's distribution."""
    if flow is None:
        return dist.Normal(loc, scale).to_event(1)
    return flow(loc, scale, context)


class PerPointFlowGuide:
    """The per-datapoint member of a flow guide's family, for the gaps of Cremer et al.

    Each point b gets its own free Gaussian base ``(m_b, log s_b)`` and its own context
    ``h_b``, pushed through the guide's trained transforms (held fixed): the family the
    amortized guide chooses from, with the choice made for each point alone instead of by the
    encoder. The free values start at the encoder's, so before any fitting q* is q.

    ``sites`` maps a site name to ``(flow, loc, scale, context)``, each tensor ``(B, D)`` or
    ``(B, C)``; ``plate_name`` is the guide's data plate.

    References:
        Cremer, Li & Duvenaud (2018), Inference Suboptimality in Variational Autoencoders.
    """

    def __init__(
        self, sites: dict[str, tuple[ConditionalFlow, Tensor, Tensor, Tensor]], plate_name: str
    ) -> None:
        self.plate_name = plate_name

        def free(tensor: Tensor) -> Tensor:
            return tensor.detach().clone().requires_grad_()

        self.flows = {name: flow for name, (flow, *_) in sites.items()}
        self.loc = {name: free(loc) for name, (_, loc, _, _) in sites.items()}
        self.log_scale = {name: free(scale.log()) for name, (_, _, scale, _) in sites.items()}
        self.context = {name: free(context) for name, (*_, context) in sites.items()}

    def parameters(self) -> list[Tensor]:
        return [*self.loc.values(), *self.log_scale.values(), *self.context.values()]

    def __call__(self, x: Tensor, *args, **kwargs) -> None:
        with pyro.plate(self.plate_name, x.shape[0], dim=-1):
            for name, flow in self.flows.items():
                distribution = flow(self.loc[name], self.log_scale[name].exp(), self.context[name])
                pyro.sample(name, distribution)


class GaussianFlowEncoder(nn.Module):
    """The programs shared by the one-site Gaussian encoders (MLP, conv): a subclass sets
    ``x_dim`` and ``flow`` (None without one) and defines ``encode(x) -> (loc, scale,
    context)``; this gives ``forward`` (the Gaussian, a flow's base), ``guide`` (site
    ``"z"`` in plate ``"data"``) and ``per_point_guide`` (the q* of the gaps)."""

    flow: ConditionalFlow | None

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of the Gaussian q(z|x) (the flow's base), each ``(..., z_dim)``."""
        loc, scale, _ = self.encode(x)
        return loc, scale

    def guide(self, x: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("encoder", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", gaussian_or_flow(self.flow, *self.encode(x)))

    def per_point_guide(self, x: Tensor) -> PerPointFlowGuide | None:
        """With a flow: the flow family with a free base and context per point, started at
        the encoder's (the q* of the gaps); None without (a factorized Gaussian is q*)."""
        if self.flow is None:
            return None
        with torch.no_grad():
            return PerPointFlowGuide({"z": (self.flow, *self.encode(x))}, "data")
