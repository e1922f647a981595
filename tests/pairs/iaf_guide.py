"""A VAE whose guide pushes its Gaussian through IAF transforms it owns, Pyro's DMM style.

The transforms are plain (not conditioned on x), built with
``pyro.distributions.transforms.affine_autoregressive`` and registered with ``pyro.module``;
the guide samples from ``TransformedDistribution(Normal(loc, scale), iafs)``, whose event
dim comes from the transforms. pyro_vae has no per-point family for such a guide: diagnose's
q* falls back to a factorized Gaussian and says so.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import affine_autoregressive
from torch import nn


class IAFGuideVAE(nn.Module):
    def __init__(self, x_dim=64, z_dim=4, hidden=32, num_iafs=2):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.Softplus())
        self.loc = nn.Linear(hidden, z_dim)
        self.log_scale = nn.Linear(hidden, z_dim)
        self.decoder = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim)
        )
        self.iafs = nn.ModuleList(
            [affine_autoregressive(z_dim, hidden_dims=[16]) for _ in range(num_iafs)]
        )

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            loc = torch.zeros(x.shape[0], self.z_dim, dtype=x.dtype, device=x.device)
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        pyro.module("loc", self.loc)
        pyro.module("log_scale", self.log_scale)
        pyro.module("iafs", self.iafs)
        with pyro.plate("data", x.shape[0]):
            hidden = self.encoder(x)
            base = dist.Normal(self.loc(hidden), self.log_scale(hidden).exp())
            pyro.sample("z", dist.TransformedDistribution(base, list(self.iafs)))
