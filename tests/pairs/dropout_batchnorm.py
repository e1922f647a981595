"""A VAE whose networks use BatchNorm1d and Dropout, as in Pyro's ProdLDA example.

Encoder Linear -> BatchNorm1d -> Softplus -> Dropout -> Linear; decoder Linear -> BatchNorm1d
-> ReLU -> Dropout -> Linear; Bernoulli likelihood on binary pixels.

For tests: a pair whose outputs depend on ``train()``/``eval()`` mode (dropout noise and
batch statistics in training, running statistics in evaluation), whose q(z|x_i) in training
mode depends on the other points of the batch, which fails in training mode on a batch of
one point, and which does not broadcast over an extra leading particle dimension
(BatchNorm1d reads a 3-d input as (N, C, L), so the batch size is taken as the channels).

Sites: "z" (latent, event 1) and "x" (observed, event 1), both in plate "data" (dim -1).
"""

import pyro
import pyro.distributions as dist
from torch import nn


class Encoder(nn.Module):
    def __init__(self, x_dim, z_dim, hidden, dropout):
        super().__init__()
        self.fc = nn.Linear(x_dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.act = nn.Softplus()
        self.drop = nn.Dropout(dropout)
        self.fc_out = nn.Linear(hidden, 2 * z_dim)

    def forward(self, x):
        h = self.drop(self.act(self.bn(self.fc(x))))
        z_loc, z_log_scale = self.fc_out(h).chunk(2, dim=-1)
        return z_loc, z_log_scale.exp()


class Decoder(nn.Module):
    def __init__(self, x_dim, z_dim, hidden, dropout):
        super().__init__()
        self.fc = nn.Linear(z_dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.fc_out = nn.Linear(hidden, x_dim)

    def forward(self, z):
        return self.fc_out(self.drop(self.act(self.bn(self.fc(z)))))


class DropoutBatchNormVAE(nn.Module):
    def __init__(self, x_dim, z_dim=8, hidden=64, dropout=0.2):
        super().__init__()
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.hidden = hidden
        self.dropout = dropout
        self.encoder = Encoder(x_dim, z_dim, hidden, dropout)
        self.decoder = Decoder(x_dim, z_dim, hidden, dropout)

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
