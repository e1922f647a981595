"""Validation of an epoch: the validation ELBO with its own fixed seed, the guide's accuracy
on the validation labels, and a divergence that shows first there.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pyro_vae.infer.distributed import world
from pyro_vae.infer.estimators import evaluation_view, log_importance_weights
from pyro_vae.pairs import PairInfo, evaluation_mode
from pyro_vae.pairs.labels import accuracy, guide_class_probabilities
from pyro_vae.training.steps import _diverged, _invalid_values

#: Seed of the Monte-Carlo noise in the validation ELBO, so epochs are compared fairly and
#: validation never moves the training RNG.
VALID_SEED = 2024


def validation_elbo(
    pair: Any, x: torch.Tensor, info: PairInfo, batch_size: int, y: torch.Tensor | None = None
) -> float:
    """Mean single-sample ELBO per data point over ``x``, with its own fixed seed: the true
    ELBO (every site unscaled, so beta = 1; global latents at the guide's mean; modules in
    eval mode), whatever the training objective weighs. ``y``: the labels of a pair that
    needs them (its ELBO is then that of log p(x | y))."""
    devices = [x.device] if x.device.type == "cuda" else []
    total = 0.0
    with torch.random.fork_rng(devices=devices), evaluation_mode(pair):
        torch.manual_seed(VALID_SEED)
        view = evaluation_view(pair, info, x[:2], None if y is None else y[:2])
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size]
            log_weights = log_importance_weights(
                view.model,
                view.guide,
                batch,
                1,
                max_plate_nesting=info.max_plate_nesting,
                vectorize=view.vectorizable,
                data_plate=info.data_plate,
                y=None if y is None else y[start : start + batch_size],
            )
            total += log_weights.sum().item()
    return total / x.shape[0]


def guide_accuracy(
    pair: Any, x: torch.Tensor, classes: torch.Tensor, label_site: str, batch_size: int
) -> float:
    """The fraction of points of ``x`` whose most probable class under the guide's q(y|x)
    at ``label_site`` is their class (modules in eval mode; the RNG is left as it was)."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), evaluation_mode(pair):
        probs = guide_class_probabilities(pair.guide, x, label_site, max(batch_size, 500))
    return accuracy(probs, classes)


def _validate(pair, valid_x, valid_y, info, config, epoch, saved, run_dir,
              num_valid: int) -> float:  # fmt: skip
    """The validation ELBO of an epoch; a failure from invalid values in the pair's
    distributions, or a non-finite ELBO, is a divergence (kept checkpoint named). In a
    distributed run each rank holds ``valid_x``, its share of the ``num_valid`` points."""
    where = f"the validation of epoch {epoch}"
    ranks = world()
    try:
        valid = 0.0
        if valid_x.shape[0]:
            valid = validation_elbo(pair, valid_x, info, max(config.batch_size, 500), valid_y)
        if ranks.distributed:
            valid = ranks.sum([valid * valid_x.shape[0]])[0] / num_valid
    except ValueError as error:
        if not _invalid_values(error):
            raise
        first = str(error).splitlines()[0].rstrip(":")
        cause = f"the run diverged: invalid values (ValueError: {first})"
        raise _diverged(cause, where, saved, run_dir, config) from error
    if not math.isfinite(valid):
        raise _diverged(f"the validation ELBO is {valid}", where, saved, run_dir, config)
    return valid
