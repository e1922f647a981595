"""A pair file that imports a helper from a local package: ``from utils.custom_mlp import MLP``.

Imitates Pyro's semi-supervised VAE example, whose script imports its MLP from a ``utils``
package next to it. The import only works when this file's folder is on ``sys.path``; note
that ``utils`` is a common name, so another ``utils`` already in ``sys.modules`` would shadow
it. For testing that loading a pair by path makes its local package importable.

Sites: "z" (latent, event 1) and "x" (observed, event 1), both in plate "data" (dim -1).
"""

import pyro
import pyro.distributions as dist
from torch import nn
from utils.custom_mlp import MLP


class PackageVAE(nn.Module):
    def __init__(self, x_dim, z_dim=4, hidden=32):
        super().__init__()
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.hidden = hidden
        self.encoder = MLP([x_dim, hidden, 2 * z_dim], split=2)
        self.decoder = MLP([z_dim, hidden, x_dim])

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
            z_loc, z_log_scale = self.encoder(x)
            pyro.sample("z", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))
