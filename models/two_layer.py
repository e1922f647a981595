"""Two-stochastic-layer decoder p(x|z1) p(z1|z2) p(z2) of Burda et al. (2016)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
from torch import Tensor, nn

from pyro_vae.models.priors import prior_distribution
from pyro_vae.nn import GaussianHead, check_flat_data, mlp

__all__ = ["TwoLayerBernoulliDecoder"]


class TwoLayerBernoulliDecoder(nn.Module):
    """VAE generative model with two stochastic layers for binary data.

    ``p(x, z1, z2) = N(z2; 0, I) * N(z1; mu(z2), diag(sigma(z2)^2))
    * prod_d Bernoulli(x_d; sigmoid(f(z1))_d)``

    ``hidden1`` are the deterministic layers between x and z1 and ``hidden2`` those between
    z1 and z2, listed from the data side (as in the encoder); the decoder runs them in
    reverse. The defaults give the paper's 784-100-100-100(z1)-50-50-50(z2) tanh network.
    Site ``"z1"`` is the layer next to x, ``"z2"`` the top layer. A learned ``prior`` module
    (`pyro_vae.models.priors`) replaces N(z2; 0, I).

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
        prior: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.prior = prior  # p(z2); the standard normal when None
        self.x_dim = x_dim
        self.z1_dim = z1_dim
        self.z2_dim = z2_dim
        hidden1 = list(reversed(hidden1))
        hidden2 = list(reversed(hidden2))
        self.z1_trunk = (
            mlp([z2_dim, *hidden2], activation, final_activation=True) if hidden2 else None
        )
        self.z1_head = GaussianHead(hidden2[-1] if hidden2 else z2_dim, z1_dim, min_scale)
        self.x_net = mlp([z1_dim, *hidden1, x_dim], activation)

    def z1_params(self, z2: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of p(z1 | z2), each of shape ``(..., z1_dim)``."""
        hidden = self.z1_trunk(z2) if self.z1_trunk is not None else z2
        return self.z1_head(hidden)

    def forward(self, z1: Tensor) -> Tensor:
        """Bernoulli logits of x given z1, shape ``(..., x_dim)``."""
        return self.x_net(z1)

    def model(self, x: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("decoder", self)
        batch_size = x.shape[0]
        with pyro.plate("data", batch_size):
            z2 = pyro.sample("z2", prior_distribution(self.prior, x, self.z2_dim))
            z1_loc, z1_scale = self.z1_params(z2)
            z1 = pyro.sample("z1", dist.Normal(z1_loc, z1_scale).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self(z1)).to_event(1), obs=x)
