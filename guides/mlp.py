"""Fully connected amortized guides q(z|x)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from pyro_vae.guides.flows import (
    DEFAULT_STEPS,
    GaussianFlowEncoder,
    make_flow,
)
from pyro_vae.nn import GaussianHead, mlp

__all__ = ["GaussianMLPEncoder"]


class GaussianMLPEncoder(GaussianFlowEncoder):
    """Amortized diagonal-Gaussian guide with an MLP encoder.

    ``q(z | x) = N(z; mu_phi(x), diag(sigma_phi(x)^2))``, with
    ``sigma_phi = softplus(.) + min_scale``; with ``flow="iaf"``, ``"planar"`` or ``"radial"``
    that Gaussian is pushed through ``flow_steps`` transforms conditioned on the last hidden
    layer (`pyro_vae.guides.flows`). ``forward`` gives the Gaussian (the flow's base).

    With ``x_dim=784, z_dim=50, hidden=(200, 200), activation="tanh"`` this is the
    one-stochastic-layer recognition network of Burda et al. (2016).

    References:
        Kingma & Welling (2014), Auto-Encoding Variational Bayes.
        Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int = 50,
        hidden: Sequence[int] = (200, 200),
        activation: str = "tanh",
        *,
        min_scale: float = 1e-3,
        flow: str = "none",
        flow_steps: int = DEFAULT_STEPS,
        flow_hidden: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.x_dim = x_dim
        self.z_dim = z_dim
        hidden = list(hidden)
        self.trunk = mlp([x_dim, *hidden], activation, final_activation=True) if hidden else None
        context_dim = hidden[-1] if hidden else x_dim
        self.head = GaussianHead(context_dim, z_dim, min_scale=min_scale)
        owner = type(self).__name__
        self.flow = make_flow(flow, flow_steps, z_dim, context_dim, flow_hidden, owner)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean and scale of the Gaussian, ``(..., z_dim)`` each, and the context (the last
        hidden layer) that conditions the flow."""
        hidden = self.trunk(x) if self.trunk is not None else x
        loc, scale = self.head(hidden)
        return loc, scale, hidden
