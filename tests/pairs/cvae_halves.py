"""A conditional VAE that draws the lower half of a digit given its upper half, written the way
Pyro's CVAE example (examples/cvae) writes its pair.

As there: the input ``xs`` is the image with the pixels to predict set to -1, the output
``ys`` the image; a baseline network guesses the missing pixels from ``xs``; a prior network
p(z | xs, guess) and a recognition network q(z | xs, ys) read the input with the missing part
filled in (by the guess, or by the truth); the generation network draws a whole image from z,
and only the pixels missing from the input are observed, at site "y", under a Bernoulli that
takes grey pixels (``validate_args=False``, as Pyro's example does).

Adapted as far as pyro_vae needs: pyro_vae calls ``model(x)`` with the whole image (a second
argument would receive class labels), so ``xs`` and ``ys`` are made from x inside; Pyro
pre-trains the baseline and runs it under ``torch.no_grad``, here it learns with the rest.

Sites: "z" (latent, event 1) and "y" (observed, the C * (H - H // 2) * W pixels of the lower
rows, event 1), both in plate "data" (dim -1).
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class BaselineNet(nn.Module):
    """A guess of every pixel from the input (missing pixels -1)."""

    def __init__(self, x_dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(x_dim, hidden)
        self.fc2 = nn.Linear(hidden, x_dim)
        self.relu = nn.ReLU()

    def forward(self, xs):
        return torch.sigmoid(self.fc2(self.relu(self.fc1(xs))))


class Encoder(nn.Module):
    """loc and scale of z from the input with its missing pixels filled in from ``ys``."""

    def __init__(self, x_dim, z_dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(x_dim, hidden)
        self.fc21 = nn.Linear(hidden, z_dim)
        self.fc22 = nn.Linear(hidden, z_dim)
        self.relu = nn.ReLU()

    def forward(self, xs, ys):
        # put the input and the output together in one image
        xc = xs.clone()
        xc[xs == -1] = ys[xs == -1]
        hidden = self.relu(self.fc1(xc))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    """Pixel probabilities of a whole image from z."""

    def __init__(self, z_dim, x_dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden)
        self.fc2 = nn.Linear(hidden, x_dim)
        self.relu = nn.ReLU()

    def forward(self, z):
        return torch.sigmoid(self.fc2(self.relu(self.fc1(z))))


class CVAE(nn.Module):
    def __init__(self, image_shape, z_dim=4, hidden=32):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.z_dim = z_dim
        self.hidden = hidden
        channels, height, width = self.image_shape
        x_dim = channels * height * width
        missing = torch.zeros(self.image_shape, dtype=torch.bool)
        missing[:, height // 2 :] = True
        self.register_buffer("missing", missing.reshape(-1))
        self.baseline_net = BaselineNet(x_dim, hidden)
        self.prior_net = Encoder(x_dim, z_dim, hidden)
        self.generation_net = Decoder(z_dim, x_dim, hidden)
        self.recognition_net = Encoder(x_dim, z_dim, hidden)

    def inputs(self, x):
        """Pyro's (xs, ys): the image with its lower half set to -1, and the image."""
        ys = x.reshape(x.shape[0], -1)
        xs = ys.clone()
        xs[:, self.missing] = -1
        return xs, ys

    def model(self, x):
        pyro.module("generation_net", self)
        xs, ys = self.inputs(x)
        batch_size = xs.shape[0]
        with pyro.plate("data", batch_size):
            y_hat = self.baseline_net(xs)
            prior_loc, prior_scale = self.prior_net(xs, y_hat)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            loc = self.generation_net(zs)
            # only the pixels missing from the input are observed
            mask_loc = loc[xs == -1].view(batch_size, -1)
            mask_ys = ys[xs == -1].view(batch_size, -1)
            pyro.sample("y", dist.Bernoulli(mask_loc, validate_args=False).to_event(1), obs=mask_ys)
        return loc

    def guide(self, x):
        xs, ys = self.inputs(x)
        with pyro.plate("data", xs.shape[0]):
            loc, scale = self.recognition_net(xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
