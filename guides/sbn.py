"""Amortized guides q(z|x) over binary latents for the sigmoid belief net."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
from torch import Tensor, nn

from pyro_vae.distributions import StraightThroughBernoulli
from pyro_vae.nn import check_flat_data, mlp

__all__ = ["SigmoidBeliefNetEncoder"]


class SigmoidBeliefNetEncoder(nn.Module):
    """Factorized Bernoulli guide with an MLP (or linear, ``hidden=()``) inference network.

    ``q(z | x) = prod_j Bernoulli(z_j; sigmoid(g_phi(x))_j)``

    By default the site is a plain Bernoulli: not reparameterizable, so Pyro's objectives use
    score-function (REINFORCE) gradients; ``TraceGraph_ELBO`` adds Rao-Blackwellization and
    baselines (NVIL). With ``straight_through=True`` the same q(z|x) is drawn through
    :class:`~pyro_vae.distributions.StraightThroughBernoulli`: reparameterized, with a biased
    gradient, while values and log-probabilities stay those of the discrete guide.

    References:
        Mnih & Gregor (2014), Neural Variational Inference and Learning in Belief Networks.
        Bengio, Leonard & Courville (2013), Estimating or Propagating Gradients Through
            Stochastic Neurons for Conditional Computation.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int = 200,
        hidden: Sequence[int] = (),
        activation: str = "tanh",
        straight_through: bool = False,
        temperature: float = 0.5,
    ) -> None:
        super().__init__()
        if straight_through and not temperature > 0:
            raise ValueError(f"SigmoidBeliefNetEncoder: temperature must be > 0, got {temperature}")
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.straight_through = straight_through
        self.temperature = temperature
        self.net = mlp([x_dim, *hidden, z_dim], activation)

    def forward(self, x: Tensor) -> dist.TorchDistribution:
        """The distribution q(z | x), batch shape ``x.shape[:-1]``, event shape ``(z_dim,)``."""
        logits = self.net(x)
        if self.straight_through:
            return StraightThroughBernoulli(logits, self.temperature).to_event(1)
        return dist.Bernoulli(logits=logits).to_event(1)

    def guide(self, x: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("encoder", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self(x))
