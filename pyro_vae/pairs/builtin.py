"""The built-in pairs: the VAE classes that hold a decoder and an encoder as one module, one
factory per named pair, and `PAIRS`, the table of them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pyro_vae.guides import (
    ConditionalEncoder,
    ConvGaussianEncoder,
    GaussianMLPEncoder,
    LinearGaussianEncoder,
    MixturePriorEncoder,
    SemiSupervisedEncoder,
    SigmoidBeliefNetEncoder,
    TwoLayerGaussianEncoder,
)
from pyro_vae.guides.flows import DEFAULT_STEPS
from pyro_vae.models import (
    BernoulliMLPDecoder,
    ConditionalDecoder,
    ConvBernoulliDecoder,
    GaussianMLPDecoder,
    LinearGaussianDecoder,
    MixturePriorDecoder,
    SemiSupervisedDecoder,
    SigmoidBeliefNetDecoder,
    TwoLayerBernoulliDecoder,
)
from pyro_vae.models.priors import learned_prior


class VAE(nn.Module):
    """A generative model p(z) p(x|z) and an amortized guide q(z|x), as one module.

    ``decoder.model(x)`` and ``encoder.guide(x)`` are the two Pyro programs; holding both in
    one ``nn.Module`` gives one ``state_dict`` for checkpoints and one ``.to(device)``.
    """

    def __init__(self, decoder: nn.Module, encoder: nn.Module):
        super().__init__()
        self.decoder = decoder
        self.encoder = encoder

    def model(self, x: torch.Tensor) -> None:
        self.decoder.model(x)

    def guide(self, x: torch.Tensor) -> None:
        self.encoder.guide(x)

    def per_point_guide(self, x: torch.Tensor) -> Any:
        """The encoder's per-point member of its own family (a flow guide's), or None: then
        ``diagnose`` fits a factorized Gaussian q* per point."""
        per_point = getattr(self.encoder, "per_point_guide", None)
        return per_point(x) if callable(per_point) else None


class SemiSupervisedVAE(VAE):
    """A VAE whose programs take labels where a batch has them, ``model(x, y=None)`` and
    ``guide(x, y=None)`` (M2), and the encoder's classification loss as Pyro's convention
    names it, ``model_classify(x, y)`` / ``guide_classify(x, y)``, trained on labelled
    batches."""

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self.decoder.model(x, y)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self.encoder.guide(x, y)

    def model_classify(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.encoder.model_classify(x, y)

    def guide_classify(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.encoder.guide_classify(x, y)


class ConditionalVAE(VAE):
    """A VAE conditioned on a label every batch has: ``model(x, y)``, ``guide(x, y)``."""

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.decoder.model(x, y)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.encoder.guide(x, y)


def _with_prior(pair: VAE, prior: str, prior_components: int | None, z_dim: int, owner: str,
                binary: bool) -> VAE:  # fmt: skip
    """``pair`` with the decoder's prior set from the ``prior`` setting. Built after both
    networks, so that the default (no learned prior) draws the same initial weights as a
    pair built without one; a VampPrior's components are the encoder's Gaussian (its
    ``forward``) at the pseudo-inputs."""
    pair.decoder.prior = learned_prior(
        prior, prior_components, z_dim, owner=owner, encode=pair.encoder,
        input_shape=(pair.encoder.x_dim,), clamp_inputs=binary,
    )  # fmt: skip
    return pair


def _mlp(
    image_shape, z_dim=50, hidden=(200, 200), activation="tanh", *, flow="none",
    flow_steps=DEFAULT_STEPS, flow_hidden=None, prior="standard", prior_components=None,
) -> VAE:  # fmt: skip
    x_dim = math.prod(image_shape)
    pair = VAE(
        BernoulliMLPDecoder(x_dim, z_dim, hidden, activation),
        GaussianMLPEncoder(x_dim, z_dim, hidden, activation, flow=flow, flow_steps=flow_steps,
                           flow_hidden=flow_hidden),
    )  # fmt: skip
    return _with_prior(pair, prior, prior_components, z_dim, "mlp", binary=True)


def _gaussian_mlp(
    image_shape, z_dim=20, hidden=(200,), activation="tanh", *, flow="none",
    flow_steps=DEFAULT_STEPS, flow_hidden=None, prior="standard", prior_components=None,
) -> VAE:  # fmt: skip
    x_dim = math.prod(image_shape)
    pair = VAE(
        GaussianMLPDecoder(x_dim, z_dim, hidden, activation),
        GaussianMLPEncoder(x_dim, z_dim, hidden, activation, flow=flow, flow_steps=flow_steps,
                           flow_hidden=flow_hidden),
    )  # fmt: skip
    return _with_prior(pair, prior, prior_components, z_dim, "gaussian-mlp", binary=False)


def _conv(
    image_shape, z_dim=32, channels=(32, 64), hidden=256, *, flow="none",
    flow_steps=DEFAULT_STEPS, flow_hidden=None, prior="standard", prior_components=None,
) -> VAE:  # fmt: skip
    image_shape = tuple(image_shape)
    pair = VAE(
        ConvBernoulliDecoder(image_shape, z_dim, channels, hidden),
        ConvGaussianEncoder(image_shape, z_dim, channels, hidden, flow=flow,
                            flow_steps=flow_steps, flow_hidden=flow_hidden),
    )  # fmt: skip
    return _with_prior(pair, prior, prior_components, z_dim, "conv", binary=True)


def _two_layer(
    image_shape, z1_dim=100, z2_dim=50, hidden1=(100, 100), hidden2=(50, 50), activation="tanh",
    *, flow="none", flow_steps=DEFAULT_STEPS, flow_hidden=None, prior="standard",
    prior_components=None,
) -> VAE:  # fmt: skip
    x_dim = math.prod(image_shape)
    if prior == "vamp":
        raise ValueError(
            'two-layer: "prior": "vamp" mixes q(z|u_k) over pseudo-inputs, but the top layer '
            'z2 has no q(z2|x) of its own here (q(z2|z1) needs z1); use "prior": "mog"'
        )
    pair = VAE(
        TwoLayerBernoulliDecoder(x_dim, z1_dim, z2_dim, hidden1, hidden2, activation),
        TwoLayerGaussianEncoder(x_dim, z1_dim, z2_dim, hidden1, hidden2, activation,
                                flow=flow, flow_steps=flow_steps, flow_hidden=flow_hidden),
    )  # fmt: skip
    pair.decoder.prior = learned_prior(prior, prior_components, z2_dim, owner="two-layer")
    return pair


def _linear_gaussian(
    image_shape, z_dim=2, noise_scale=1.0, learn_noise=True, covariance="diagonal", *,
    flow="none", flow_steps=DEFAULT_STEPS, flow_hidden=None,
) -> VAE:  # fmt: skip
    x_dim = math.prod(image_shape)
    return VAE(
        LinearGaussianDecoder(x_dim, z_dim, noise_scale, learn_noise),
        LinearGaussianEncoder(x_dim, z_dim, covariance, flow=flow, flow_steps=flow_steps,
                              flow_hidden=flow_hidden),
    )  # fmt: skip


def _sbn(image_shape, z_dim=200, hidden=(), activation="tanh") -> VAE:
    x_dim = math.prod(image_shape)
    return VAE(
        SigmoidBeliefNetDecoder(x_dim, z_dim, hidden, activation),
        SigmoidBeliefNetEncoder(x_dim, z_dim, hidden, activation),
    )


def _sbn_nonlinear(image_shape, z_dim=200, hidden=(200,), activation="tanh") -> VAE:
    return _sbn(image_shape, z_dim, hidden, activation)


def _sbn_straight_through(
    image_shape, z_dim=200, hidden=(), activation="tanh", temperature=0.5
) -> VAE:
    x_dim = math.prod(image_shape)
    return VAE(
        SigmoidBeliefNetDecoder(x_dim, z_dim, hidden, activation),
        SigmoidBeliefNetEncoder(
            x_dim, z_dim, hidden, activation, straight_through=True, temperature=temperature
        ),
    )


def _ss_m2(
    image_shape, num_classes=10, z_dim=50, hidden=(500,), activation="softplus",
    classify_weight=50.0,
) -> SemiSupervisedVAE:  # fmt: skip
    x_dim = math.prod(image_shape)
    return SemiSupervisedVAE(
        SemiSupervisedDecoder(x_dim, num_classes, z_dim, hidden, activation),
        SemiSupervisedEncoder(
            x_dim, num_classes, z_dim, hidden, activation, classify_weight=classify_weight
        ),
    )


def _cvae(
    image_shape, num_classes=10, z_dim=20, hidden=(500,), activation="softplus"
) -> ConditionalVAE:
    x_dim = math.prod(image_shape)
    return ConditionalVAE(
        ConditionalDecoder(x_dim, num_classes, z_dim, hidden, activation),
        ConditionalEncoder(x_dim, num_classes, z_dim, hidden, activation),
    )


def _gmvae(image_shape, num_components=10, z_dim=10, hidden=(500,), activation="softplus") -> VAE:
    x_dim = math.prod(image_shape)
    return VAE(
        MixturePriorDecoder(x_dim, num_components, z_dim, hidden, activation),
        MixturePriorEncoder(x_dim, num_components, z_dim, hidden, activation),
    )


@dataclass(frozen=True)
class PairSpec:
    """One built-in pair: its factory ``factory(image_shape, **kwargs)`` and what it suits."""

    factory: Callable[..., VAE]
    likelihood: str
    description: str


#: The built-in pairs by name. A new pair is one entry here; tests iterate over this table.
PAIRS: dict[str, PairSpec] = {
    "mlp": PairSpec(
        _mlp,
        "bernoulli",
        "MLP VAE with Bernoulli likelihood; IWAE paper net: hidden=[200,200], z_dim=50, tanh; "
        "kwargs flow (iaf, planar, radial), flow_steps, prior (vamp, mog), prior_components",
    ),
    "gaussian-mlp": PairSpec(
        _gaussian_mlp,
        "gaussian",
        "MLP VAE with Gaussian likelihood for continuous data; kwargs flow, prior as mlp's",
    ),
    "conv": PairSpec(
        _conv,
        "bernoulli",
        "convolutional VAE with Bernoulli likelihood; kwargs flow, prior as mlp's",
    ),
    "two-layer": PairSpec(
        _two_layer,
        "bernoulli",
        "two stochastic layers (Burda et al. 2016), Bernoulli; kwargs flow (on both layers), "
        "prior (mog) for z2",
    ),
    "linear-gaussian": PairSpec(
        _linear_gaussian,
        "gaussian",
        "linear-Gaussian VAE with closed-form log p(x); kwarg flow on the diagonal guide",
    ),
    "sbn": PairSpec(
        _sbn,
        "bernoulli",
        "sigmoid belief net SBN-200 (Mnih & Gregor 2014): 200 binary latents, linear; "
        "train with --objective tracegraph",
    ),
    "sbn-nonlinear": PairSpec(
        _sbn_nonlinear,
        "bernoulli",
        "sigmoid belief net with a deterministic tanh layer (hidden=[200]) in decoder and "
        "encoder; train with --objective tracegraph",
    ),
    "sbn-st": PairSpec(
        _sbn_straight_through,
        "bernoulli",
        "linear SBN-200 with a straight-through guide (biased, reparameterized gradient; "
        "same discrete model); train with --objective elbo; kwargs temperature, hidden",
    ),
    "ss-m2": PairSpec(
        _ss_m2,
        "bernoulli",
        "semi-supervised M2 (Kingma et al. 2014): q(y|x), q(z|x,y), p(x|y,z), MLPs of 500 "
        "softplus units, z_dim 50; train with --objective enum --num-labelled N",
    ),
    "cvae": PairSpec(
        _cvae,
        "bernoulli",
        "class-conditional VAE: p(x|y,z) p(z), q(z|x,y); every batch labelled; "
        "`sample` draws one row per class",
    ),
    "gmvae": PairSpec(
        _gmvae,
        "bernoulli",
        "VAE with a Gaussian-mixture prior, component c enumerated (--objective enum): "
        "unsupervised clustering; num_components 10, z_dim 10",
    ),
}
