"""A VAE with an unsized data plate, as Pyro's semi-supervised VAE example writes it.

``with pyro.plate("data"):`` is given no size: the plate only declares the batch dimension
(-1) independent, and the batch size comes from the shapes of the distributions' parameters.
Pyro records such a plate with ``size == -1`` (torch's "any size") in each site's
``cond_indep_stack``, and ``subsample_size == -1`` too, so no subsampling scale applies.

For tests: a pair whose data plate does not state the number of data points; anything that
finds the data plate by comparing a frame's size with x.shape[0] has to handle size -1.

Sites: "z" (latent, event 1) and "x" (observed, event 1), both in plate "data" (dim -1,
size -1).
"""

import pyro
import pyro.distributions as dist
from torch import nn


class UnsizedPlateVAE(nn.Module):
    def __init__(self, x_dim, z_dim=4, hidden=32):
        super().__init__()
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.hidden = hidden
        self.encoder_hidden = nn.Linear(x_dim, hidden)
        self.encoder_loc = nn.Linear(hidden, z_dim)
        self.encoder_scale = nn.Linear(hidden, z_dim)
        self.decoder = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim), nn.Sigmoid()
        )

    def model(self, xs):
        pyro.module("ss_decoder", self.decoder)
        batch_size = xs.size(0)
        with pyro.plate("data"):
            prior_loc = xs.new_zeros(batch_size, self.z_dim)
            prior_scale = xs.new_ones(batch_size, self.z_dim)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            probs = self.decoder(zs)
            pyro.sample("x", dist.Bernoulli(probs).to_event(1), obs=xs)

    def guide(self, xs):
        pyro.module("ss_encoder_hidden", self.encoder_hidden)
        pyro.module("ss_encoder_loc", self.encoder_loc)
        pyro.module("ss_encoder_scale", self.encoder_scale)
        with pyro.plate("data"):
            hidden = nn.functional.softplus(self.encoder_hidden(xs))
            loc = self.encoder_loc(hidden)
            scale = nn.functional.softplus(self.encoder_scale(hidden)) + 1e-4
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
