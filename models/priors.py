"""Priors shared by the generative models."""

import pyro.distributions as dist
from torch import Tensor


def standard_normal(x: Tensor, z_dim: int) -> dist.TorchDistribution:
    """p(z) = N(0, I) over ``z_dim`` dims for each point of the batch ``x``.

    Built with ``x.new_zeros`` so it follows the device and dtype of the data.
    """
    batch_size = x.shape[0]
    return dist.Normal(x.new_zeros(batch_size, z_dim), x.new_ones(batch_size, z_dim)).to_event(1)
