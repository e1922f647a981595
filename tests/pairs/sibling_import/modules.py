"""Encoder and decoder networks that ``vae_with_sibling.py`` imports as ``from modules import``.

Kept in their own file next to the pair, the way Pyro's examples keep networks in a sibling
module (e.g. ``from utils.custom_mlp import MLP`` in the semi-supervised VAE).
"""

from torch import nn


class Encoder(nn.Module):
    def __init__(self, x_dim, z_dim, hidden):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU())
        self.loc = nn.Linear(hidden, z_dim)
        self.log_scale = nn.Linear(hidden, z_dim)

    def forward(self, x):
        h = self.body(x)
        return self.loc(h), self.log_scale(h).exp()


class Decoder(nn.Module):
    def __init__(self, x_dim, z_dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, x_dim))

    def forward(self, z):
        return self.net(z)  # Bernoulli logits
