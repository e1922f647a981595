"""A VAE whose decoder is a recurrent net over image rows, one observed site per row.

Imitates Pyro's deep Markov model example, which observes one site per time step inside a
loop (``for t in pyro.markov(range(T))``), here with a single latent "z" per image: z sets
the initial state of a GRU cell that runs over the H rows, each step reading the previous row
and emitting Bernoulli logits for the next. The guide encodes the whole image with an MLP.

For tests: a pair with H observed sites "x_0" ... "x_{H-1}" (each a row of W pixels, event 1)
instead of one site "x"; log p(x|z) is the sum of their log-densities. Images are one channel:
the rows are ``x.reshape(B, H, W)``.

Sites: "z" (latent, event 1) and "x_0" ... "x_{H-1}" (observed, event 1), all in plate "data"
(dim -1). Leading particle dimensions are folded into the GRU's batch, so it broadcasts over
an outer particle plate.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class RowSequenceVAE(nn.Module):
    def __init__(self, image_shape, z_dim=8, hidden=32):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.z_dim = z_dim
        self.hidden = hidden
        channels, height, width = self.image_shape
        if channels != 1:
            raise ValueError(f"RowSequenceVAE takes one-channel images, got {self.image_shape}")
        self.height, self.width = height, width
        self.z_to_state = nn.Linear(z_dim, hidden)
        self.cell = nn.GRUCell(width, hidden)
        self.emit = nn.Linear(hidden, width)
        self.encoder = nn.Sequential(
            nn.Linear(height * width, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim)
        )

    def model(self, x):
        pyro.module("z_to_state", self.z_to_state)
        pyro.module("cell", self.cell)
        pyro.module("emit", self.emit)
        rows = x.reshape(x.shape[0], self.height, self.width)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(x.shape[0], self.z_dim)
            z_scale = x.new_ones(x.shape[0], self.z_dim)
            z = pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
            batch_shape = z.shape[:-1]  # (B,) or (particles, B)
            state = torch.tanh(self.z_to_state(z)).reshape(-1, self.hidden)
            for t in pyro.markov(range(self.height)):
                logits = self.emit(state).reshape(batch_shape + (self.width,))
                row = pyro.sample(
                    f"x_{t}", dist.Bernoulli(logits=logits).to_event(1), obs=rows[:, t]
                )
                # feed the row back in (the observed one, or the drawn one when sampling)
                prev_row = row.expand(batch_shape + (self.width,))
                state = self.cell(prev_row.reshape(-1, self.width), state)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_log_scale = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))
