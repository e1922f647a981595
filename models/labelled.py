"""Decoders with class labels: the M2 semi-supervised model, a conditional VAE, and a VAE with
a Gaussian-mixture prior (GMVAE).

Label sites hold one-hot values (``OneHotCategorical``) whichever encoding the caller passes,
int indices ``(B,)`` or one-hot floats ``(B, C)``. Every network broadcasts over extra left
dims, so these models run under vectorized particles and parallel enumeration
(``TraceEnum_ELBO`` with the guide wrapped in ``config_enumerate``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_vae.models.priors import standard_normal
from pyro_vae.nn import broadcast_cat, check_flat_data, labels_for_batch, mlp, one_hot_labels

__all__ = ["ConditionalDecoder", "MixturePriorDecoder", "SemiSupervisedDecoder"]


class _LabelledBernoulliDecoder(nn.Module):
    """An MLP from ``[z, y]`` to the Bernoulli logits of x; the shared part of M2 and the CVAE."""

    def __init__(
        self, x_dim: int, num_classes: int, z_dim: int, hidden: Sequence[int], activation: str
    ) -> None:
        super().__init__()
        self.x_dim = x_dim
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.net = mlp([z_dim + num_classes, *hidden, x_dim], activation)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        """Bernoulli logits of x given z ``(..., z_dim)`` and one-hot y ``(..., C)``.

        The leading dims of z and y broadcast: shape ``(..., x_dim)``.
        """
        return self.net(broadcast_cat([z, y]))

    def decode(self, z: Tensor, y: Tensor) -> Tensor:
        """Pixel probabilities ``sigmoid(f([z, y]))`` for drawing images of chosen classes.

        ``y`` holds int class indices ``(...)`` or one-hot floats ``(..., C)``; its leading
        dims broadcast with those of ``z``, so one label can decode many z.
        """
        y = one_hot_labels(y, self.num_classes, z.dtype, type(self).__name__)
        return torch.sigmoid(self(z, y))


class SemiSupervisedDecoder(_LabelledBernoulliDecoder):
    """Generative model M2 of Kingma et al. (2014) for binary data with partly labelled classes.

    ``p(x, y, z) = Cat(y; uniform) * N(z; 0, I) * prod_d Bernoulli(x_d; sigmoid(f([z, y]))_d)``

    Sites: ``"y"`` (one-hot, observed when the batch is labelled, latent otherwise), ``"z"``
    and ``"x"``. Pair it with :class:`~pyro_vae.guides.SemiSupervisedEncoder`; the extra
    classification loss of the paper is ``SemiSupervisedEncoder.model_classify``, as it needs
    the encoder's classifier.

    References:
        Kingma, Rezende, Mohamed & Welling (2014), Semi-Supervised Learning with Deep
        Generative Models.
    """

    def __init__(
        self,
        x_dim: int,
        num_classes: int = 10,
        z_dim: int = 50,
        hidden: Sequence[int] = (500,),
        activation: str = "softplus",
    ) -> None:
        super().__init__(x_dim, num_classes, z_dim, hidden, activation)

    def model(self, x: Tensor, y: Tensor | None = None) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("decoder", self)
        if y is not None:
            y = labels_for_batch(y, x, self.num_classes, type(self).__name__)
        batch_size = x.shape[0]
        with pyro.plate("data", batch_size):
            prior_logits = x.new_zeros(batch_size, self.num_classes)
            y = pyro.sample("y", dist.OneHotCategorical(logits=prior_logits), obs=y)
            z = pyro.sample("z", standard_normal(x, self.z_dim))
            pyro.sample("x", dist.Bernoulli(logits=self(z, y)).to_event(1), obs=x)


class ConditionalDecoder(_LabelledBernoulliDecoder):
    """Class-conditional VAE generative model for binary data.

    ``p(x, z | y) = N(z; 0, I) * prod_d Bernoulli(x_d; sigmoid(f([z, y]))_d)``

    The label ``y`` is an input, not a sample site: sites ``"z"`` and ``"x"``. Draw images of
    class ``k`` with ``decode(torch.randn(n, z_dim), torch.full((n,), k))``.

    References:
        Sohn, Lee & Yan (2015), Learning Structured Output Representation using Deep
        Conditional Generative Models.
    """

    def __init__(
        self,
        x_dim: int,
        num_classes: int = 10,
        z_dim: int = 20,
        hidden: Sequence[int] = (500,),
        activation: str = "softplus",
    ) -> None:
        super().__init__(x_dim, num_classes, z_dim, hidden, activation)

    def model(self, x: Tensor, y: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("decoder", self)
        y = labels_for_batch(y, x, self.num_classes, type(self).__name__)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", standard_normal(x, self.z_dim))
            pyro.sample("x", dist.Bernoulli(logits=self(z, y)).to_event(1), obs=x)


class MixturePriorDecoder(nn.Module):
    """VAE generative model with a Gaussian-mixture prior (GMVAE) for binary data.

    ``p(x, c, z) = Cat(c; uniform) * N(z; mu_c, diag(sigma_c^2))
    * prod_d Bernoulli(x_d; sigmoid(f(z))_d)``

    The component means ``mu`` (``prior_locs``, K x z_dim) start as standard-normal draws so
    the components start apart; the scales are ``softplus(.) + min_scale``, starting at 1.
    Sites: ``"c"`` (int component index, shape ``(B,)``; ``(K, 1)`` when enumerated), ``"z"``
    and ``"x"``. x depends on z only, so enumerating c leaves one decoder pass per particle.

    References:
        Dilokthanakul et al. (2016), Deep Unsupervised Clustering with Gaussian Mixture
        Variational Autoencoders.
    """

    def __init__(
        self,
        x_dim: int,
        num_components: int = 10,
        z_dim: int = 10,
        hidden: Sequence[int] = (500,),
        activation: str = "softplus",
        *,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        if not 0 <= min_scale < 1:
            raise ValueError(f"MixturePriorDecoder: min_scale must be in [0, 1), got {min_scale}")
        self.x_dim = x_dim
        self.num_components = num_components
        self.z_dim = z_dim
        self.min_scale = min_scale
        self.prior_locs = nn.Parameter(torch.randn(num_components, z_dim))
        # softplus(raw) + min_scale == 1 at the start
        raw_scale = math.log(math.expm1(1.0 - min_scale))
        self.raw_prior_scales = nn.Parameter(torch.full((num_components, z_dim), raw_scale))
        self.net = mlp([z_dim, *hidden, x_dim], activation)

    @property
    def prior_scales(self) -> Tensor:
        """Scales sigma_c of the mixture components, shape ``(K, z_dim)``, all positive."""
        return F.softplus(self.raw_prior_scales) + self.min_scale

    def forward(self, z: Tensor) -> Tensor:
        """Bernoulli logits of x given z, shape ``(..., x_dim)``."""
        return self.net(z)

    def model(self, x: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("decoder", self)
        batch_size = x.shape[0]
        with pyro.plate("data", batch_size):
            prior_logits = x.new_zeros(batch_size, self.num_components)
            c = pyro.sample("c", dist.Categorical(logits=prior_logits))
            z_loc = self.prior_locs.to(x)[c]
            z_scale = self.prior_scales.to(x)[c]
            z = pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self(z)).to_event(1), obs=x)
