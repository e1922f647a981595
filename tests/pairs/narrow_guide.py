"""A plain Bernoulli-MLP VAE whose guide scale is fixed, far too small, at ``scale``.

Written like Pyro's tutorial VAE, except that the encoder outputs only the loc of q(z|x) and
the scale is the constant ``scale`` (default 1e-3) in every dimension.

For tests: a pair with a badly mismatched proposal. q(z|x) is much narrower than the true
posterior, so the importance weights p(x, z) / q(z|x) degenerate (one sample carries nearly
all the weight: effective sample size near 1, Pareto k-hat large) and the ELBO sits far
below log p(x).

Sites: "z" (latent, event 1) and "x" (observed, event 1), both in plate "data" (dim -1).
"""

import pyro
import pyro.distributions as dist
from torch import nn


class NarrowGuideVAE(nn.Module):
    def __init__(self, x_dim, z_dim=8, hidden=32, scale=1e-3):
        super().__init__()
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.hidden = hidden
        self.scale = scale
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(x.shape[0], self.z_dim)
            z_scale = x.new_ones(x.shape[0], self.z_dim)
            z = pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = self.encoder(x)
            z_scale = z_loc.new_full(z_loc.shape, self.scale)  # fixed, not learned
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
