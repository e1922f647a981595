"""Generative models p(x, z) as Pyro programs: each class has a ``model(x)`` method.

The labelled decoders take class labels too: ``SemiSupervisedDecoder.model(x, y=None)`` and
``ConditionalDecoder.model(x, y)``.
"""

from pyro_vae.models.conv import ConvBernoulliDecoder
from pyro_vae.models.labelled import (
    ConditionalDecoder,
    MixturePriorDecoder,
    SemiSupervisedDecoder,
)
from pyro_vae.models.linear_gaussian import LinearGaussianDecoder
from pyro_vae.models.mlp import BernoulliMLPDecoder, GaussianMLPDecoder
from pyro_vae.models.sbn import SigmoidBeliefNetDecoder
from pyro_vae.models.two_layer import TwoLayerBernoulliDecoder

__all__ = [
    "BernoulliMLPDecoder",
    "ConditionalDecoder",
    "ConvBernoulliDecoder",
    "GaussianMLPDecoder",
    "LinearGaussianDecoder",
    "MixturePriorDecoder",
    "SemiSupervisedDecoder",
    "SigmoidBeliefNetDecoder",
    "TwoLayerBernoulliDecoder",
]
