"""A conditional VAE that completes the bottom half of an image from its top half.

Imitates Pyro's conditional VAE example (image completion from a visible part): the model
conditions on the top half, with a prior network p(z | top) giving a Normal with learned loc
and scale, and a generation network p(bottom | z); the guide is a recognition network
q(z | top, bottom) that reads the whole image.

For tests: a pair whose observed site covers only part of x. The model's log-density is
log p(bottom | top), not log p(x), and the top half of x enters the model as a conditioning
input, not as an observation.

Sites: "z" (latent, event 1) and "bottom" (observed, the C * (H - H // 2) * W pixels of the
bottom rows, event 1), both in plate "data" (dim -1).
"""

import pyro
import pyro.distributions as dist
from torch import nn


class PriorNet(nn.Module):
    """p(z | top half): a Normal with loc and scale from an MLP."""

    def __init__(self, top_dim, z_dim, hidden):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(top_dim, hidden), nn.ReLU())
        self.loc = nn.Linear(hidden, z_dim)
        self.scale = nn.Sequential(nn.Linear(hidden, z_dim), nn.Softplus())

    def forward(self, top):
        h = self.body(top)
        return self.loc(h), self.scale(h) + 1e-3


class RecognitionNet(nn.Module):
    """q(z | top half, bottom half), from the whole image."""

    def __init__(self, x_dim, z_dim, hidden):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU())
        self.loc = nn.Linear(hidden, z_dim)
        self.scale = nn.Sequential(nn.Linear(hidden, z_dim), nn.Softplus())

    def forward(self, x):
        h = self.body(x)
        return self.loc(h), self.scale(h) + 1e-3


class ConditionalCompletionVAE(nn.Module):
    def __init__(self, image_shape, z_dim=4, hidden=32):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.z_dim = z_dim
        self.hidden = hidden
        channels, height, width = self.image_shape
        self.top_rows = height // 2
        top_dim = channels * self.top_rows * width
        bottom_dim = channels * (height - self.top_rows) * width
        self.prior_net = PriorNet(top_dim, z_dim, hidden)
        self.generation_net = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, bottom_dim)
        )
        self.recognition_net = RecognitionNet(channels * height * width, z_dim, hidden)

    def split(self, x):
        """(top, bottom) halves of flattened images, each flattened again."""
        images = x.reshape((x.shape[0],) + self.image_shape)
        top = images[:, :, : self.top_rows].reshape(x.shape[0], -1)
        bottom = images[:, :, self.top_rows :].reshape(x.shape[0], -1)
        return top, bottom

    def model(self, x):
        pyro.module("prior_net", self.prior_net)
        pyro.module("generation_net", self.generation_net)
        top, bottom = self.split(x)
        with pyro.plate("data", x.shape[0]):
            prior_loc, prior_scale = self.prior_net(top)
            z = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            logits = self.generation_net(z)
            pyro.sample("bottom", dist.Bernoulli(logits=logits).to_event(1), obs=bottom)

    def guide(self, x):
        pyro.module("recognition_net", self.recognition_net)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.recognition_net(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
