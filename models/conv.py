"""Convolutional decoder p(x|z) p(z) for binary images."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
from torch import Tensor, nn

from pyro_vae.models.priors import prior_distribution
from pyro_vae.nn import CropImage, activation_layer, apply_flat, check_flat_data

__all__ = ["ConvBernoulliDecoder"]


class ConvBernoulliDecoder(nn.Module):
    """VAE generative model for binary images with a transposed-convolution decoder.

    ``p(x, z) = N(z; 0, I) * prod_d Bernoulli(x_d; sigmoid(g_theta(z))_d)``, or with a
    learned ``prior`` module (`pyro_vae.models.priors`) in place of N(0, I).

    ``g_theta``: linear -> reshape to ``(channels[-1], ceil(H / 2^n), ceil(W / 2^n))`` ->
    ``n = len(channels)`` stride-2 transposed convolutions, each doubling height and width
    -> crop to exactly ``(C, H, W)`` -> flatten to ``D = C * H * W`` logits.

    References:
        Kingma & Welling (2014), Auto-Encoding Variational Bayes.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        z_dim: int = 32,
        channels: Sequence[int] = (32, 64),
        hidden: int = 256,
        *,
        activation: str = "relu",
        prior: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.prior = prior
        channels = list(channels)
        if len(image_shape) != 3 or not channels:
            raise ValueError(
                f"ConvBernoulliDecoder needs image_shape=(C, H, W) and at least one channel "
                f"width, got image_shape={image_shape}, channels={channels}"
            )
        self.image_shape = tuple(int(size) for size in image_shape)
        self.x_dim = math.prod(self.image_shape)
        self.z_dim = z_dim
        num_channels, height, width = self.image_shape
        scale = 2 ** len(channels)
        start_shape = (channels[-1], math.ceil(height / scale), math.ceil(width / scale))

        layers: list[nn.Module] = [
            nn.Linear(z_dim, hidden),
            activation_layer(activation),
            nn.Linear(hidden, math.prod(start_shape)),
            activation_layer(activation),
            nn.Unflatten(-1, start_shape),
        ]
        # Mirror of the encoder: widest channels nearest z, image channels last.
        widths = [*reversed(channels), num_channels]
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            # kernel 4, stride 2, padding 1 maps size s to exactly 2 s.
            layers.append(nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1))
            if i < len(widths) - 2:
                layers.append(activation_layer(activation))
        layers += [CropImage(height, width), nn.Flatten(-3)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """Bernoulli logits of the flattened image given z, shape ``(..., C * H * W)``."""
        return apply_flat(self.net, z, event_dim=1)

    def model(self, x: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("decoder", self)
        batch_size = x.shape[0]
        with pyro.plate("data", batch_size):
            z = pyro.sample("z", prior_distribution(self.prior, x, self.z_dim))
            pyro.sample("x", dist.Bernoulli(logits=self(z)).to_event(1), obs=x)
