"""Linear-Gaussian generative model: the VAE whose log p(x) and p(z|x) are exact."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_vae.models.priors import standard_normal
from pyro_vae.nn import check_flat_data

__all__ = ["LinearGaussianDecoder"]


class LinearGaussianDecoder(nn.Module):
    """Linear-Gaussian latent variable model (probabilistic PCA) written as a VAE decoder.

    ``p(z) = N(0, I)``, ``p(x | z) = N(W z + b, sigma^2 I)``, hence
    ``p(x) = N(b, W W^T + sigma^2 I)`` and ``p(z | x) = N(Sigma W^T (x - b) / sigma^2, Sigma)``
    with ``Sigma = (I + W^T W / sigma^2)^{-1}``.

    Its closed forms (`exact_log_marginal`, `exact_posterior`) are the ground truth that
    the estimators and guides are tested against.

    References:
        Tipping & Bishop (1999), Probabilistic Principal Component Analysis.
        Kingma & Welling (2014), Auto-Encoding Variational Bayes.
    """

    def __init__(
        self, x_dim: int, z_dim: int, noise_scale: float = 1.0, learn_noise: bool = True
    ) -> None:
        super().__init__()
        if not noise_scale > 0:
            raise ValueError(f"LinearGaussianDecoder: noise_scale must be > 0, got {noise_scale}")
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.linear = nn.Linear(z_dim, x_dim)  # weight is W (x_dim, z_dim), bias is b
        log_noise_scale = torch.tensor(math.log(noise_scale))
        if learn_noise:
            self.log_noise_scale = nn.Parameter(log_noise_scale)
        else:
            self.register_buffer("log_noise_scale", log_noise_scale)

    @property
    def noise_scale(self) -> Tensor:
        """The observation noise standard deviation sigma (a 0-dim tensor)."""
        return self.log_noise_scale.exp()

    def forward(self, z: Tensor) -> Tensor:
        """Mean ``W z + b`` of x given z, shape ``(..., x_dim)``."""
        return self.linear(z)

    def model(self, x: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("decoder", self)
        batch_size = x.shape[0]
        with pyro.plate("data", batch_size):
            z = pyro.sample("z", standard_normal(x, self.z_dim))
            x_loc = self(z)
            x_scale = self.noise_scale.expand(x_loc.shape)
            pyro.sample("x", dist.Normal(x_loc, x_scale).to_event(1), obs=x)

    def exact_log_marginal(self, x: Tensor) -> Tensor:
        """``log p(x) = log N(x; b, W W^T + sigma^2 I)``, shape ``(B,)`` for x of shape (B, D)."""
        weight, bias = self.linear.weight, self.linear.bias
        eye = torch.eye(self.x_dim, dtype=weight.dtype, device=weight.device)
        covariance = weight @ weight.T + self.noise_scale**2 * eye
        marginal = torch.distributions.MultivariateNormal(bias, covariance_matrix=covariance)
        return marginal.log_prob(x)

    def exact_posterior(self, x: Tensor) -> torch.distributions.MultivariateNormal:
        """``p(z | x) = N(Sigma W^T (x - b) / sigma^2, Sigma)``, batched over the rows of x."""
        weight, bias = self.linear.weight, self.linear.bias
        noise_var = self.noise_scale**2
        eye = torch.eye(self.z_dim, dtype=weight.dtype, device=weight.device)
        precision = eye + weight.T @ weight / noise_var
        covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
        covariance = 0.5 * (covariance + covariance.T)  # exactly symmetric for the Cholesky
        loc = (x - bias) @ weight @ covariance / noise_var  # Sigma is symmetric
        return torch.distributions.MultivariateNormal(loc, covariance_matrix=covariance)
