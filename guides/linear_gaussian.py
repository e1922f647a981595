"""Linear-Gaussian guide: a family that can hold the exact linear-Gaussian posterior."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import constraints, transform_to

from pyro_vae.guides.flows import DEFAULT_STEPS, PerPointFlowGuide, make_flow
from pyro_vae.nn import check_flat_data

__all__ = ["LinearGaussianEncoder"]

#: The covariance families LinearGaussianEncoder offers.
COVARIANCES = ("diagonal", "full")


class LinearGaussianEncoder(nn.Module):
    """Amortized Gaussian guide whose mean is linear in x and whose covariance is shared.

    ``q(z | x) = N(z; A x + c, S)`` with ``S = diag(exp(2 log_s))`` (``"diagonal"``) or
    ``S = L L^T`` for a learned lower-triangular L with positive diagonal (``"full"``).
    The exact posterior of `LinearGaussianDecoder` has this form with a full S, so the
    ``"full"`` family contains it and `set_to_exact_posterior` places the guide there.

    With ``flow`` (``"diagonal"`` only) the Gaussian is pushed through ``flow_steps``
    transforms conditioned on x itself (`pyro_vae.guides.flows`): an IAF can then reach the
    full-covariance posterior from the diagonal base.

    References:
        Kingma & Welling (2014), Auto-Encoding Variational Bayes.
        Cremer, Li & Duvenaud (2018), Inference Suboptimality in Variational Autoencoders.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        covariance: str = "diagonal",
        *,
        flow: str = "none",
        flow_steps: int = DEFAULT_STEPS,
        flow_hidden: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if covariance not in COVARIANCES:
            raise ValueError(
                f"LinearGaussianEncoder: unknown covariance {covariance!r}; "
                f"choose one of: {', '.join(COVARIANCES)}"
            )
        if flow != "none" and covariance != "diagonal":
            raise ValueError(
                f'LinearGaussianEncoder: a flow ("flow": "{flow}") takes the diagonal Gaussian '
                f'as its base; covariance={covariance!r} is not one (drop "covariance" or the flow)'
            )
        self.flow = make_flow(flow, flow_steps, z_dim, x_dim, flow_hidden, type(self).__name__)
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.covariance = covariance
        self.linear = nn.Linear(x_dim, z_dim)  # weight is A (z_dim, x_dim), bias is c
        if covariance == "diagonal":
            self.log_scale = nn.Parameter(torch.zeros(z_dim))
        else:
            # Unconstrained square matrix; transform_to(lower_cholesky) keeps the strict lower
            # triangle and exponentiates the diagonal.
            self.unconstrained_scale_tril = nn.Parameter(torch.zeros(z_dim, z_dim))

    @property
    def scale_tril(self) -> Tensor:
        """Lower-triangular L with ``S = L L^T`` (diagonal for the ``"diagonal"`` family)."""
        if self.covariance == "diagonal":
            return torch.diag_embed(self.log_scale.exp())
        return transform_to(constraints.lower_cholesky)(self.unconstrained_scale_tril)

    def forward(self, x: Tensor) -> dist.TorchDistribution:
        """The distribution q(z | x), batch shape ``x.shape[:-1]``, event shape ``(z_dim,)``."""
        z_loc = self.linear(x)
        if self.flow is not None:
            return self.flow(z_loc, self.log_scale.exp().expand(z_loc.shape), x)
        if self.covariance == "diagonal":
            return dist.Normal(z_loc, self.log_scale.exp().expand(z_loc.shape)).to_event(1)
        return dist.MultivariateNormal(z_loc, scale_tril=self.scale_tril)

    def guide(self, x: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("encoder", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self(x))

    def per_point_guide(self, x: Tensor) -> PerPointFlowGuide | None:
        """With a flow: the flow family with a free base and context per point, started at
        the encoder's (the q* of the gaps); None without (a factorized Gaussian is q*)."""
        if self.flow is None:
            return None
        with torch.no_grad():
            z_loc = self.linear(x)
            scale = self.log_scale.exp().expand(z_loc.shape)
            return PerPointFlowGuide({"z": (self.flow, z_loc, scale, x)}, "data")

    @torch.no_grad()
    def set_to_exact_posterior(self, decoder: nn.Module) -> None:
        """Set A, c and the scale to the best member of the family for ``decoder``.

        With ``P = I + W^T W / sigma^2`` the exact posterior is ``N(A x + c, P^{-1})`` where
        ``A = P^{-1} W^T / sigma^2`` and ``c = -A b``. ``"full"`` takes it exactly;
        ``"diagonal"`` takes the same mean and the mean-field optimum of KL(q || p), the
        variances ``1 / diag(P)`` (Bishop 2006, section 10.1.2).
        """
        if self.flow is not None:
            raise ValueError(
                "set_to_exact_posterior: this guide has a flow; the closed form places a "
                "Gaussian guide (flow none) only"
            )
        if (decoder.x_dim, decoder.z_dim) != (self.x_dim, self.z_dim):
            raise ValueError(
                f"set_to_exact_posterior: decoder has (x_dim, z_dim) = "
                f"({decoder.x_dim}, {decoder.z_dim}) but this encoder has "
                f"({self.x_dim}, {self.z_dim})"
            )
        weight, bias = decoder.linear.weight, decoder.linear.bias
        noise_var = decoder.noise_scale**2
        eye = torch.eye(self.z_dim, dtype=weight.dtype, device=weight.device)
        precision = eye + weight.T @ weight / noise_var
        precision_tril = torch.linalg.cholesky(precision)
        covariance = torch.cholesky_inverse(precision_tril)
        covariance = 0.5 * (covariance + covariance.T)
        gain = covariance @ weight.T / noise_var
        self.linear.weight.copy_(gain)
        self.linear.bias.copy_(-gain @ bias)
        if self.covariance == "diagonal":
            self.log_scale.copy_(-0.5 * precision.diagonal().log())
        else:
            scale_tril = torch.linalg.cholesky(covariance)
            self.unconstrained_scale_tril.copy_(
                transform_to(constraints.lower_cholesky).inv(scale_tril)
            )
