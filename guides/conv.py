"""Convolutional amortized guide q(z|x) for images."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pyro_vae.guides.flows import (
    DEFAULT_STEPS,
    GaussianFlowEncoder,
    make_flow,
)
from pyro_vae.nn import GaussianHead, activation_layer, apply_flat

__all__ = ["ConvGaussianEncoder"]


class ConvGaussianEncoder(GaussianFlowEncoder):
    """Amortized diagonal-Gaussian guide with a convolutional encoder.

    ``q(z | x) = N(z; mu_phi(x), diag(sigma_phi(x)^2))``, or with ``flow`` that Gaussian
    pushed through ``flow_steps`` transforms conditioned on the hidden layer
    (`pyro_vae.guides.flows`). ``forward`` gives the Gaussian (the flow's base).

    The flattened x is reshaped to ``(C, H, W)``, passed through ``len(channels)`` stride-2
    convolutions (kernel 3, padding 1, so size s becomes ceil(s / 2) and small images never
    shrink to nothing), flattened, and mapped by one hidden layer to the Gaussian head.

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
        min_scale: float = 1e-3,
        flow: str = "none",
        flow_steps: int = DEFAULT_STEPS,
        flow_hidden: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        channels = list(channels)
        if len(image_shape) != 3 or not channels:
            raise ValueError(
                f"ConvGaussianEncoder needs image_shape=(C, H, W) and at least one channel "
                f"width, got image_shape={image_shape}, channels={channels}"
            )
        self.image_shape = tuple(int(size) for size in image_shape)
        self.x_dim = math.prod(self.image_shape)
        self.z_dim = z_dim

        layers: list[nn.Module] = [nn.Unflatten(-1, self.image_shape)]
        widths = [self.image_shape[0], *channels]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1),
                activation_layer(activation),
            ]
        layers.append(nn.Flatten(-3))
        conv = nn.Sequential(*layers)
        with torch.no_grad():
            flat_size = conv(torch.zeros(1, self.x_dim)).shape[-1]
        self.net = nn.Sequential(*conv, nn.Linear(flat_size, hidden), activation_layer(activation))
        self.head = GaussianHead(hidden, z_dim, min_scale=min_scale)
        owner = type(self).__name__
        self.flow = make_flow(flow, flow_steps, z_dim, hidden, flow_hidden, owner)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean and scale of the Gaussian, ``(..., z_dim)`` each, and the hidden layer that
        conditions the flow."""
        hidden = apply_flat(self.net, x, event_dim=1)
        loc, scale = self.head(hidden)
        return loc, scale, hidden
