"""Fully connected decoders p(x|z) p(z): a standard-normal prior unless given a learned one."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
from torch import Tensor, nn

from pyro_vae.models.priors import prior_distribution
from pyro_vae.nn import GaussianHead, activation_layer, check_flat_data, mlp

__all__ = ["BernoulliMLPDecoder", "GaussianMLPDecoder"]


class BernoulliMLPDecoder(nn.Module):
    """VAE generative model for binary data with an MLP decoder.

    ``p(x, z) = N(z; 0, I) * prod_d Bernoulli(x_d; sigmoid(f_theta(z))_d)``, or with a
    learned ``prior`` module (`pyro_vae.models.priors`) in place of N(0, I).

    With ``x_dim=784, z_dim=50, hidden=(200, 200), activation="tanh"`` this is the
    one-stochastic-layer network of Burda et al. (2016).

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
        prior: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.prior = prior
        self.net = mlp([z_dim, *hidden, x_dim], activation)

    def forward(self, z: Tensor) -> Tensor:
        """Bernoulli logits of x given z, shape ``(..., x_dim)``."""
        return self.net(z)

    def model(self, x: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("decoder", self)
        batch_size = x.shape[0]
        with pyro.plate("data", batch_size):
            z = pyro.sample("z", prior_distribution(self.prior, x, self.z_dim))
            pyro.sample("x", dist.Bernoulli(logits=self(z)).to_event(1), obs=x)


class GaussianMLPDecoder(nn.Module):
    """VAE generative model for continuous data with a Gaussian MLP decoder.

    ``p(x, z) = N(z; 0, I) * N(x; sigmoid(mu_theta(z)), diag(sigma_theta(z)^2))``, or with a
    learned ``prior`` module (`pyro_vae.models.priors`) in place of N(0, I).

    The mean goes through a sigmoid, as Kingma & Welling (2014) did for the Frey Face pixels
    in [0, 1]; pass ``loc_activation=None`` for unbounded data. The scale is
    ``softplus(.) + min_scale``: without the floor the likelihood of pixels that sit exactly
    on the mean is unbounded and training diverges.

    References:
        Kingma & Welling (2014), Auto-Encoding Variational Bayes, appendix C.2.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int = 50,
        hidden: Sequence[int] = (200,),
        activation: str = "tanh",
        *,
        loc_activation: str | None = "sigmoid",
        min_scale: float = 1e-3,
        prior: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.prior = prior
        hidden = list(hidden)
        self.trunk = mlp([z_dim, *hidden], activation, final_activation=True) if hidden else None
        self.head = GaussianHead(hidden[-1] if hidden else z_dim, x_dim, min_scale=min_scale)
        self.loc_activation = (
            activation_layer(loc_activation) if loc_activation is not None else nn.Identity()
        )

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of x given z, each of shape ``(..., x_dim)``."""
        hidden = self.trunk(z) if self.trunk is not None else z
        loc, scale = self.head(hidden)
        return self.loc_activation(loc), scale

    def model(self, x: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("decoder", self)
        batch_size = x.shape[0]
        with pyro.plate("data", batch_size):
            z = pyro.sample("z", prior_distribution(self.prior, x, self.z_dim))
            x_loc, x_scale = self(z)
            pyro.sample("x", dist.Normal(x_loc, x_scale).to_event(1), obs=x)
