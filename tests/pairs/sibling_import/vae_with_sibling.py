"""A pair file that imports its networks from a sibling file: ``from modules import ...``.

Imitates how Pyro's example scripts are laid out (a script next to the files it imports,
run from its own folder). The import only works when this file's folder is on ``sys.path``,
so it is for testing that ``--pair path/to/vae_with_sibling.py:SiblingVAE`` loads a file the
way ``python path/to/vae_with_sibling.py`` would.

Sites: "z" (latent, event 1) and "x" (observed, event 1), both in plate "data" (dim -1).
"""

import pyro
import pyro.distributions as dist
from modules import Decoder, Encoder
from torch import nn


class SiblingVAE(nn.Module):
    def __init__(self, x_dim, z_dim=4, hidden=32):
        super().__init__()
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.hidden = hidden
        self.encoder = Encoder(x_dim, z_dim, hidden)
        self.decoder = Decoder(x_dim, z_dim, hidden)

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
            z_loc, z_scale = self.encoder(x)
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
