"""A β-VAE written the Pyro way: the KL weight comes from ``poutine.scale`` on the latent site.

Imitates Pyro's tutorial VAE (Bernoulli decoder, diagonal-Gaussian encoder) with the latent
site "z" wrapped in ``poutine.scale(scale=beta)`` in both the model and the guide, so that
``Trace_ELBO`` computes E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)).

For tests: a pair whose latent site carries a non-unit ``scale`` (``site["scale"] == beta``
in both traces), which is not a log-density of x for beta != 1. ``BetaVAE(x_dim, beta=1.0)``
is the plain VAE twin; the parameter names do not depend on beta, so one state_dict loads
into both.

Sites: "z" (latent, event 1) and "x" (observed, event 1), both in plate "data" (dim -1).
"""

import pyro
import pyro.distributions as dist
from pyro import poutine
from torch import nn


class BetaVAE(nn.Module):
    def __init__(self, x_dim, z_dim=8, hidden=64, beta=4.0):
        super().__init__()
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.hidden = hidden
        self.beta = beta
        self.encoder = nn.Sequential(
            nn.Linear(x_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim)
        )

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(x.shape[0], self.z_dim)
            z_scale = x.new_ones(x.shape[0], self.z_dim)
            # the scale multiplies log p(z) here and log q(z|x) in the guide: beta * KL
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_log_scale = self.encoder(x).chunk(2, dim=-1)
            with poutine.scale(scale=self.beta):
                pyro.sample("z", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))
