"""Fully connected amortized guides q(z|x)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
from torch import Tensor, nn

from pyro_vae.nn import GaussianHead, check_flat_data, mlp

__all__ = ["GaussianMLPEncoder"]


class GaussianMLPEncoder(nn.Module):
    """Amortized diagonal-Gaussian guide with an MLP encoder.

    ``q(z | x) = N(z; mu_phi(x), diag(sigma_phi(x)^2))``, with
    ``sigma_phi = softplus(.) + min_scale``.

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
    ) -> None:
        super().__init__()
        self.x_dim = x_dim
        self.z_dim = z_dim
        hidden = list(hidden)
        self.trunk = mlp([x_dim, *hidden], activation, final_activation=True) if hidden else None
        self.head = GaussianHead(hidden[-1] if hidden else x_dim, z_dim, min_scale=min_scale)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of q(z|x), each of shape ``(..., z_dim)``."""
        hidden = self.trunk(x) if self.trunk is not None else x
        return self.head(hidden)

    def guide(self, x: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("encoder", self)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self(x)
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
