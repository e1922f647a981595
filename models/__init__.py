"""Generative models p(x, z) as Pyro programs: each class has a ``model(x)`` method."""

from pyro_vae.models.conv import ConvBernoulliDecoder
from pyro_vae.models.linear_gaussian import LinearGaussianDecoder
from pyro_vae.models.mlp import BernoulliMLPDecoder, GaussianMLPDecoder
from pyro_vae.models.sbn import SigmoidBeliefNetDecoder
from pyro_vae.models.two_layer import TwoLayerBernoulliDecoder

__all__ = [
    "BernoulliMLPDecoder",
    "ConvBernoulliDecoder",
    "GaussianMLPDecoder",
    "LinearGaussianDecoder",
    "SigmoidBeliefNetDecoder",
    "TwoLayerBernoulliDecoder",
]
