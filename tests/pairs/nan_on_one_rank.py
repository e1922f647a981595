"""A plain VAE whose decoder returns NaN logits at one rank, once, after some calls.

For the data-parallel tests: ``NaNOnOneRank(x_dim, rank=1, after=5)`` behaves as a
Bernoulli-decoder VAE except that, in the process whose torchrun ``RANK`` is ``rank``, the
model's ``after``-th call in training mode (and only that one) gets NaN logits, as a bad
batch on one GPU would. Every rank must then stop at that step with the same message.

Sites: "z" (latent, event 1) and "x" (observed, event 1), both in plate "data" (dim -1).
"""

import os

import pyro
import pyro.distributions as dist
from torch import nn


class NaNOnOneRank(nn.Module):
    def __init__(self, x_dim, z_dim=3, hidden=16, rank=1, after=5):
        super().__init__()
        self.z_dim = z_dim
        self.rank, self.after, self.calls = str(rank), after, 0
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(),
                                     nn.Linear(hidden, 2 * z_dim))  # fmt: skip
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(),
                                     nn.Linear(hidden, x_dim))  # fmt: skip

    def model(self, x):
        pyro.module("decoder", self.decoder)
        self.calls += self.training
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            logits = self.decoder(z)
            if self.training and os.environ.get("RANK") == self.rank and self.calls == self.after:
                logits = logits * float("nan")
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1),
                        obs=x)  # fmt: skip

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
