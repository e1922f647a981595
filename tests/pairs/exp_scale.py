"""A Gaussian VAE whose encoder's scale is exp() of a linear layer, unclamped: at a large
learning rate it diverges, and Pyro's argument validation is where it first shows."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class ExpScaleVAE(nn.Module):
    def __init__(self, x_dim=64, z_dim=2, hidden=32):
        super().__init__()
        self.z_dim = z_dim
        self.enc = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh())
        self.enc_loc = nn.Linear(hidden, z_dim)
        self.enc_log_scale = nn.Linear(hidden, z_dim)
        self.dec = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))

    def model(self, x):
        pyro.module("decoder", self.dec)
        x = x.reshape(x.shape[0], -1)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 0.1).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self)
        x = x.reshape(x.shape[0], -1)
        with pyro.plate("data", x.shape[0]):
            h = self.enc(x)
            scale = torch.exp(self.enc_log_scale(h))
            pyro.sample("z", dist.Normal(self.enc_loc(h), scale).to_event(1))
