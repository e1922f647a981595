"""Guides for the labelled decoders of `pyro_vae.models.labelled`: M2, the conditional VAE and
the GMVAE.

Label sites hold one-hot values (``OneHotCategorical``) whichever encoding the caller passes,
int indices ``(B,)`` or one-hot floats ``(B, C)``. The discrete sites ``"y"`` (M2) and ``"c"``
(GMVAE) can be enumerated: wrap the guide in ``pyro.infer.config_enumerate`` and train with
``TraceEnum_ELBO(max_plate_nesting=1)``; the networks broadcast over the enumeration dims.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
from pyro import poutine
from torch import Tensor, nn

from pyro_vae.nn import GaussianHead, broadcast_cat, check_flat_data, labels_for_batch, mlp

__all__ = ["ConditionalEncoder", "MixturePriorEncoder", "SemiSupervisedEncoder"]


class _GaussianNet(nn.Module):
    """An MLP trunk and a `GaussianHead`: ``in_dim -> (loc, scale)`` of a diagonal Gaussian."""

    def __init__(
        self, in_dim: int, out_dim: int, hidden: Sequence[int], activation: str, min_scale: float
    ) -> None:
        super().__init__()
        hidden = list(hidden)
        self.trunk = mlp([in_dim, *hidden], activation, final_activation=True) if hidden else None
        self.head = GaussianHead(hidden[-1] if hidden else in_dim, out_dim, min_scale=min_scale)

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.trunk(inputs) if self.trunk is not None else inputs
        return self.head(hidden)


class SemiSupervisedEncoder(nn.Module):
    """Guide of the M2 semi-supervised model (Kingma et al. 2014), with its classifier.

    ``q(y, z | x) = Cat(y; softmax(g(x))) * N(z; mu([x, y]), diag(sigma([x, y])^2))``

    ``guide(x)`` on an unlabelled batch samples site ``"y"`` (one-hot) from the classifier,
    then ``"z"``; ``guide(x, y)`` on a labelled batch samples ``"z"`` only.

    The paper adds a classification loss on the labelled data,
    ``alpha * E_labelled[-log q(y | x)]`` with ``alpha = 0.1 * N``; per labelled example that is
    the weight ``classify_weight = 0.1 * N / N_labelled`` (50 for MNIST, N = 50000, with 100
    labels). It is the Pyro program pair `model_classify` / `guide_classify`, trained with
    ``Trace_ELBO`` on the labelled batches, as in Pyro's ss-vae example. Both live here
    because the loss needs this encoder's classifier; a pair holding ``decoder`` and
    ``encoder`` forwards them::

        def model_classify(self, x, y):
            self.encoder.model_classify(x, y)

        def guide_classify(self, x, y):
            self.encoder.guide_classify(x, y)

    References:
        Kingma, Rezende, Mohamed & Welling (2014), Semi-Supervised Learning with Deep
        Generative Models, section 3.1.2.
    """

    def __init__(
        self,
        x_dim: int,
        num_classes: int = 10,
        z_dim: int = 50,
        hidden: Sequence[int] = (500,),
        activation: str = "softplus",
        *,
        classify_weight: float = 50.0,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        if classify_weight < 0:
            raise ValueError(
                f"SemiSupervisedEncoder: classify_weight must be >= 0, got {classify_weight}"
            )
        self.x_dim = x_dim
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.classify_weight = classify_weight
        self.classifier = mlp([x_dim, *hidden, num_classes], activation)
        self.z_net = _GaussianNet(x_dim + num_classes, z_dim, hidden, activation, min_scale)

    def class_logits(self, x: Tensor) -> Tensor:
        """Logits of q(y | x), shape ``(..., num_classes)``."""
        return self.classifier(x)

    def classify(self, x: Tensor) -> Tensor:
        """Class probabilities q(y | x), shape ``(B, num_classes)``."""
        check_flat_data(x, self.x_dim, type(self).__name__)
        return self.class_logits(x).softmax(-1)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of q(z | x, y) for one-hot y; leading dims broadcast."""
        return self.z_net(broadcast_cat([x, y]))

    def guide(self, x: Tensor, y: Tensor | None = None) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("encoder", self)
        if y is not None:
            y = labels_for_batch(y, x, self.num_classes, type(self).__name__)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample("y", dist.OneHotCategorical(logits=self.class_logits(x)))
            z_loc, z_scale = self(x, y)
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))

    def model_classify(self, x: Tensor, y: Tensor) -> None:
        """The classification loss as a model: ``classify_weight * log q(y | x)``, site "y_aux".

        With the empty `guide_classify`, ``Trace_ELBO`` gives the loss
        ``-classify_weight * sum_b log q(y_b | x_b)``.
        """
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("encoder", self)
        y = labels_for_batch(y, x, self.num_classes, type(self).__name__)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self.classify_weight):
            pyro.sample("y_aux", dist.OneHotCategorical(logits=self.class_logits(x)), obs=y)

    def guide_classify(self, x: Tensor, y: Tensor) -> None:
        """Empty: `model_classify` has no latent sites."""


class ConditionalEncoder(nn.Module):
    """Guide of the class-conditional VAE: ``q(z | x, y) = N(z; mu([x, y]), diag(sigma^2))``.

    ``y`` (int indices ``(B,)`` or one-hot ``(B, C)``) is required; site ``"z"``.

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
        *,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        self.x_dim = x_dim
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.z_net = _GaussianNet(x_dim + num_classes, z_dim, hidden, activation, min_scale)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of q(z | x, y) for one-hot y; leading dims broadcast."""
        return self.z_net(broadcast_cat([x, y]))

    def guide(self, x: Tensor, y: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("encoder", self)
        y = labels_for_batch(y, x, self.num_classes, type(self).__name__)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self(x, y)
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))


class MixturePriorEncoder(nn.Module):
    """Guide of the GMVAE: ``q(c, z | x) = Cat(c; softmax(g(x))) * N(z; mu(x), diag(sigma(x)^2))``.

    Sites ``"c"`` (int component index) and ``"z"``. z does not depend on c, so with c
    enumerated the guide, and the decoder after it, run once per particle.

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
        self.x_dim = x_dim
        self.num_components = num_components
        self.z_dim = z_dim
        self.classifier = mlp([x_dim, *hidden, num_components], activation)
        self.z_net = _GaussianNet(x_dim, z_dim, hidden, activation, min_scale)

    def component_logits(self, x: Tensor) -> Tensor:
        """Logits of q(c | x), shape ``(..., num_components)``."""
        return self.classifier(x)

    def cluster_probs(self, x: Tensor) -> Tensor:
        """Component probabilities q(c | x), shape ``(B, num_components)``."""
        check_flat_data(x, self.x_dim, type(self).__name__)
        return self.component_logits(x).softmax(-1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of q(z | x), each of shape ``(..., z_dim)``."""
        return self.z_net(x)

    def guide(self, x: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("encoder", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=self.component_logits(x)))
            z_loc, z_scale = self(x)
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
