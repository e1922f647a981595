"""Amortized guides q(z | x) as Pyro programs: each class has a ``guide(x)`` method.

The labelled guides take class labels too: ``SemiSupervisedEncoder.guide(x, y=None)`` and
``ConditionalEncoder.guide(x, y)``.
"""

from pyro_vae.guides.conv import ConvGaussianEncoder
from pyro_vae.guides.labelled import (
    ConditionalEncoder,
    MixturePriorEncoder,
    SemiSupervisedEncoder,
)
from pyro_vae.guides.linear_gaussian import LinearGaussianEncoder
from pyro_vae.guides.mlp import GaussianMLPEncoder
from pyro_vae.guides.sbn import SigmoidBeliefNetEncoder
from pyro_vae.guides.two_layer import TwoLayerGaussianEncoder

__all__ = [
    "ConditionalEncoder",
    "ConvGaussianEncoder",
    "GaussianMLPEncoder",
    "LinearGaussianEncoder",
    "MixturePriorEncoder",
    "SemiSupervisedEncoder",
    "SigmoidBeliefNetEncoder",
    "TwoLayerGaussianEncoder",
]
