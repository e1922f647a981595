"""Pyro effect handlers the toolkit puts around a user's model and guide.

- :func:`unscaled`: every site's log density at scale 1, whatever ``poutine.scale`` or a
  subsampling plate set, for estimators of the model's own log p(x).
- :func:`fix_sites`: given sites (a pair's global latents) held at fixed values and marked,
  so estimators of log p(x_i | globals) leave their densities out.
- :class:`TrainingScales`: β and KL warm-up on every latent site, and the minibatch scale
  N/B on the data plate of a pair with global latents, applied during training only.

References:
    Higgins et al. (2017), beta-VAE: Learning Basic Visual Concepts with a Constrained
    Variational Framework.
    Bowman et al. (2016), Generating Sentences from a Continuous Space (KL annealing).
    Hoffman, Blei, Wang & Paisley (2013), Stochastic Variational Inference (the N/B scale).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

#: ``infer`` key marking a site held fixed by :func:`fix_sites`.
FIXED_SITE = "_pyro_vae_fixed"


class UnscaledMessenger(Messenger):
    """Sets every sample site's scale back to 1. Put it outside all other handlers of the
    program (it processes messages after the scales and plates inside it)."""

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample":
            msg["scale"] = 1.0


def unscaled(fn: Callable) -> Callable:
    """``fn`` with every site's log density unscaled (see :class:`UnscaledMessenger`)."""
    return UnscaledMessenger()(fn)


class FixSitesMessenger(Messenger):
    """Holds the sample sites named in ``values`` at those values, as observed sites marked
    ``infer[FIXED_SITE]``: neither program samples them, and estimators skip their densities."""

    def __init__(self, values: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.values = dict(values)

    def _pyro_sample(self, msg) -> None:
        if msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]
            msg["is_observed"] = True
            msg["infer"] = {**msg["infer"], FIXED_SITE: True}


def fix_sites(fn: Callable, values: Mapping[str, torch.Tensor]) -> Callable:
    """``fn`` with the sites of ``values`` held fixed (see :class:`FixSitesMessenger`)."""
    return FixSitesMessenger(values)(fn) if values else fn


def is_fixed(site: dict) -> bool:
    """Whether :func:`fix_sites` held this site fixed."""
    return bool(site["infer"].get(FIXED_SITE))


def kl_weight(step: int, beta: float = 1.0, warmup_steps: int = 0, start: float = 0.0) -> float:
    """The weight of the latent sites at SVI step ``step`` (0 for the first step):

        beta_t = start + (beta - start) * min(1, t / warmup_steps),

    linear KL warm-up from ``start`` to ``beta`` over ``warmup_steps`` steps, then ``beta``;
    ``warmup_steps = 0`` gives ``beta`` from the first step.

    References:
        Bowman et al. (2016), Generating Sentences from a Continuous Space.
        Sønderby et al. (2016), Ladder Variational Autoencoders (warm-up).
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(beta)
    return float(start + (beta - start) * step / warmup_steps)


class TrainingScales(Messenger):
    """Training-time scales on a pair's sites, set before each step:

    - ``beta`` multiplies every latent (unobserved) site of model and guide, so the loss is
      -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)) (a β-VAE; KL warm-up moves beta);
    - ``data_scale`` (N/B) multiplies every site inside the data plate ``data_plate``, as
      Pyro's ``plate(size=N, subsample_size=B)`` would: with global latents the minibatch
      loss is then an unbiased estimate of the loss on all N points.

    Wrap both programs in the same instance. Estimators never see it.
    """

    def __init__(self, data_plate: str | None = None) -> None:
        super().__init__()
        self.beta = 1.0
        self.data_scale = 1.0
        self.data_plate = data_plate

    def _process_message(self, msg) -> None:
        if msg["type"] != "sample" or site_is_subsample(msg):
            return
        # a tensor scale is an input of a traced graph (pyro_vae.infer.compiled): never compared
        scale = 1.0
        if _not_one(self.beta) and not msg["is_observed"]:
            scale = scale * self.beta
        if _not_one(self.data_scale) and any(
            frame.name == self.data_plate for frame in msg["cond_indep_stack"]
        ):
            scale = scale * self.data_scale
        if _not_one(scale):
            msg["scale"] = scale * msg["scale"]


def _not_one(scale: float | torch.Tensor) -> bool:
    return isinstance(scale, torch.Tensor) or scale != 1.0
