"""Distributions the built-in pairs need that Pyro does not ship in the form they need."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints

__all__ = ["StraightThroughBernoulli"]


class StraightThroughBernoulli(dist.TorchDistribution):
    """Bernoulli(sigmoid(logits)) whose samples carry a straight-through Concrete gradient.

    ``rsample`` draws logistic noise ``L = log U - log(1 - U)``, ``U ~ Uniform(0, 1)``, and
    returns

        hard = 1[logits + L > 0]  (= 1[s > 1/2]),   s = sigmoid((logits + L) / temperature),

    with the gradient of the relaxed sample s (``hard + (s - s.detach())``, which is hard
    exactly in value). Since ``P(logits + L > 0) = sigmoid(logits)``, ``hard`` is an exact
    Bernoulli(sigmoid(logits)) draw at *any* temperature, and ``log_prob`` is the discrete
    Bernoulli log-probability ``value * logits - softplus(logits)``. A guide made of it is the
    same discrete q(z|x) as a plain Bernoulli guide: the ELBO's value and the importance-
    sampled log p(x) of a discrete sigmoid belief net are unchanged and comparable with a
    score-function-trained one; only the gradient (through s) is biased, less so at lower
    temperature and with more variance. Relaxing the *model* instead (Concrete prior and
    likelihood on non-binary z) would change the model, and its log p(x) would not be
    comparable. Pyro's ``RelaxedBernoulliStraightThrough`` differs here: its ``log_prob`` is
    the relaxed density.

    References:
        Bengio, Leonard & Courville (2013), Estimating or Propagating Gradients Through
            Stochastic Neurons for Conditional Computation.
        Maddison, Mnih & Teh (2017), The Concrete Distribution; Jang, Gu & Poole (2017),
            Categorical Reparameterization with Gumbel-Softmax.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.boolean
    has_rsample = True

    def __init__(
        self, logits: Tensor, temperature: float = 0.5, validate_args: bool | None = None
    ) -> None:
        temperature = float(temperature)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(
                f"StraightThroughBernoulli: temperature must be a positive number, got "
                f"{temperature} (e.g. --pair-kwargs '{{\"temperature\": 0.5}}')"
            )
        self.logits = logits
        self.temperature = temperature
        super().__init__(logits.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> StraightThroughBernoulli:
        new = self._get_checked_instance(StraightThroughBernoulli, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape)
        new.temperature = self.temperature
        super(StraightThroughBernoulli, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self) -> Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def variance(self) -> Tensor:
        probs = self.probs
        return probs * (1 - probs)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        uniform = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
        # rand draws from [0, 1): only 0 needs moving to keep the logistic noise finite
        uniform = uniform.clamp(min=torch.finfo(uniform.dtype).tiny)
        noisy_logits = self.logits.expand(shape) + (uniform.log() - (-uniform).log1p())
        soft = torch.sigmoid(noisy_logits / self.temperature)
        # the threshold on the noisy logits, not on soft: sigmoid can round to exactly 1/2
        hard = (noisy_logits > 0).to(soft.dtype)
        # (soft - soft.detach()) is exactly 0 in value, so the sample is exactly 0 or 1
        return hard + (soft - soft.detach())

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """The discrete Bernoulli log-probability ``value * logits - softplus(logits)``."""
        if self._validate_args:
            self._validate_sample(value)
        logits, value = torch.broadcast_tensors(self.logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none")

    def entropy(self) -> Tensor:
        return F.binary_cross_entropy_with_logits(self.logits, self.probs, reduction="none")
