"""Two-stochastic-layer guide q(z1|x) q(z2|z1) of Burda et al. (2016)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
from torch import Tensor, nn

from pyro_vae.nn import GaussianHead, check_flat_data, mlp

__all__ = ["TwoLayerGaussianEncoder"]


class TwoLayerGaussianEncoder(nn.Module):
    """Amortized guide with two stochastic layers, bottom-up.

    ``q(z1, z2 | x) = N(z1; mu_1(x), diag(sigma_1(x)^2)) * N(z2; mu_2(z1), diag(sigma_2(z1)^2))``

    ``hidden1`` are the deterministic layers between x and z1, ``hidden2`` those between z1
    and z2. The defaults give the paper's 784-100-100-100(z1)-50-50-50(z2) tanh network.
    Because q(z2 | z1) depends on z1 the guide is not mean-field: ``TraceMeanField_ELBO``
    warns about it, and rightly so.

    References:
        Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, section 5.
    """

    def __init__(
        self,
        x_dim: int,
        z1_dim: int = 100,
        z2_dim: int = 50,
        hidden1: Sequence[int] = (100, 100),
        hidden2: Sequence[int] = (50, 50),
        activation: str = "tanh",
        *,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        self.x_dim = x_dim
        self.z1_dim = z1_dim
        self.z2_dim = z2_dim
        hidden1 = list(hidden1)
        hidden2 = list(hidden2)
        self.z1_trunk = (
            mlp([x_dim, *hidden1], activation, final_activation=True) if hidden1 else None
        )
        self.z1_head = GaussianHead(hidden1[-1] if hidden1 else x_dim, z1_dim, min_scale)
        self.z2_trunk = (
            mlp([z1_dim, *hidden2], activation, final_activation=True) if hidden2 else None
        )
        self.z2_head = GaussianHead(hidden2[-1] if hidden2 else z1_dim, z2_dim, min_scale)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of q(z1 | x), each of shape ``(..., z1_dim)``."""
        hidden = self.z1_trunk(x) if self.z1_trunk is not None else x
        return self.z1_head(hidden)

    def z2_params(self, z1: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of q(z2 | z1), each of shape ``(..., z2_dim)``."""
        hidden = self.z2_trunk(z1) if self.z2_trunk is not None else z1
        return self.z2_head(hidden)

    def guide(self, x: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("encoder", self)
        with pyro.plate("data", x.shape[0]):
            z1_loc, z1_scale = self(x)
            z1 = pyro.sample("z1", dist.Normal(z1_loc, z1_scale).to_event(1))
            z2_loc, z2_scale = self.z2_params(z1)
            pyro.sample("z2", dist.Normal(z2_loc, z2_scale).to_event(1))
