"""Evaluation of a trained run: importance-sampled log p(x) and the ELBO, per data point.

Kingma & Welling's third job, efficient estimation of the marginal likelihood: for every data
point, K draws z_k ~ q(z|x) from the trained guide give

    log p(x) ~= log (1/K) sum_k exp(log p(x, z_k) - log q(z_k|x)),

a lower bound in expectation that tightens as K grows (Burda et al. 2016); the ELBO is the
mean of the same log weights, and ``gap = log_px - elbo`` measures how far the ELBO is from it.
``estimator="prior"`` draws z_k from the prior p(z) instead (the naive Monte Carlo estimator,
see :data:`pyro_vae.estimators.ESTIMATORS`), for comparison.
"""

from __future__ import annotations

import math
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.checkpoints import BEST
from pyro_vae.compiled import CompiledLogWeights
from pyro_vae.config import ConfigError, TrainConfig
from pyro_vae.distributed import current_world
from pyro_vae.estimators import (
    check_estimator,
    estimate_log_px_in_batches,
    evaluation_notes,
    evaluation_view,
    low_ess_warnings,
)
from pyro_vae.files import atomic_write_bytes, json_bytes
from pyro_vae.labels import (
    accuracy,
    cluster_accuracy,
    guide_class_probabilities,
)
from pyro_vae.pairs import PairInfo, evaluation_mode
from pyro_vae.train import eval_split, read_config, resolve_device, restore_pair, split_labels

#: Seed of the importance samples, so evaluating twice gives the same numbers.
EVAL_SEED = 0


class RestoredRun(NamedTuple):
    """A trained run ready to evaluate: its pair, the evaluated split, and where it came from."""

    pair: Any
    info: PairInfo
    x: torch.Tensor
    state: dict[str, Any]
    dataset: str
    device: torch.device
    config: TrainConfig
    #: The split's labels as the pair receives them and as class indices (None: no labels).
    labels: torch.Tensor | None = None
    classes: torch.Tensor | None = None

    @property
    def y(self) -> torch.Tensor | None:
        """The labels the pair's programs get: only a pair that needs them gets them."""
        return self.labels if self.info.needs_labels else None


def restore_run(
    run_dir: str | os.PathLike,
    *,
    split: str = "test",
    checkpoint: str = BEST,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
) -> RestoredRun:
    """Rebuild a run's pair from ``checkpoint`` and the split it is evaluated on (a fixed
    binarization for dynamically binarized data), on the run's device or ``device``."""
    config = read_config(Path(run_dir))
    if data_dir is not None:
        config.data_dir = data_dir
    torch_device = (
        resolve_device(device) if device else resolve_device(config.device, fall_back_to_cpu=True)
    )
    pyro.set_rng_seed(config.seed)
    pair, info, data, state = restore_pair(Path(run_dir), config, torch_device, pair, checkpoint)
    x = eval_split(data, split, config.binarize)
    if x.shape[0] == 0:
        raise ConfigError(
            f"--split {split}: the run's {split} split is empty (it trained with --valid-size "
            f"{config.valid_size}); choose --split test or train"
        )
    labels = split_labels(data, split, config, pair)
    if labels is None and data.labels is not None:
        labels = (None, data.split_labels(split))
    encoded, classes = labels if labels is not None else (None, None)
    return RestoredRun(pair, info, x, state, config.dataset, torch_device, config, encoded,
                       classes)  # fmt: skip


def _classification(pair, info: PairInfo, x: torch.Tensor, classes, batch_size: int) -> dict:
    """How well the guide classifies: ``accuracy`` of argmax q(y|x) at the label site (and
    ``num_labelled``, the training labels), or for an unsupervised discrete site (a mixture
    component) its ``cluster_accuracy`` against the labels (see
    :func:`pyro_vae.labels.cluster_accuracy`). Empty without labels."""
    if classes is None:
        return {}
    site = info.label_site
    if site is None:
        clusters = [name for name in info.enumerable_sites if name not in info.global_sites]
        if len(clusters) != 1:
            return {}
        site = clusters[0]
    probs = guide_class_probabilities(pair.guide, x, site, max(batch_size, 500))
    if info.label_site is not None:
        return {"accuracy": accuracy(probs, classes), "label_site": site}
    result = cluster_accuracy(probs.argmax(-1).cpu().numpy(), classes.cpu().numpy())
    return {**result, "cluster_site": site}


def refuse_conditional_pair(restored: RestoredRun, command: str) -> None:
    """A ConfigError for commands that call a pair's programs with ``x`` alone, on a run
    whose pair needs labels on every call (a conditional pair, ``model(x, y)``)."""
    if restored.info.needs_labels:
        raise ConfigError(
            "the run's pair needs labels on every call (its programs are "
            f"model(x, y) and guide(x, y) with no default for y), and {command} calls them "
            "with x alone; evaluate, convergence and gradvar take the labels (log p(x | y)), "
            f"{command} does not yet"
        )


def evaluation_stem(split: str, estimator: str = "is") -> str:
    """File name stem of saved evaluations: ``evaluation_<split>`` for importance sampling
    with the guide, ``evaluation_<split>_<estimator>`` for the others."""
    return f"evaluation_{split}" if estimator == "is" else f"evaluation_{split}_{estimator}"


def evaluate(
    run_dir: str | os.PathLike,
    *,
    num_samples: int = 1000,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 100,
    checkpoint: str = BEST,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
    progress: bool | None = None,
    save: bool = True,
    estimator: str = "is",
    compile: bool = False,
) -> dict[str, Any]:
    """Estimate log p(x) by importance sampling, and the mean log weight, on a split.

    log p(x) ~= log (1/K) sum_k p(x, z_k) / r(z_k|x),  z_k ~ r, with r the guide q(z|x)
    (``estimator="is"``) or the prior p(z) (``"prior"``).

    Returns (and saves as ``evaluation_<split>.json``, or ``evaluation_<split>_prior.json``
    for the prior, in the run directory) a summary with ``log_px``, ``elbo`` (the mean log
    weight: the ELBO for ``is``, E_p(z)[log p(x|z)] for ``prior``), ``gap`` (means over
    points, nats), their standard errors, ``num_points``, ``num_samples``, ``estimator``;
    per-point values go to the ``.npz`` of the same name.

    Densities are the model's own, unscaled (``scaled_sites`` names the sites whose
    ``poutine.scale`` was removed); modules run in eval mode; a pair with global latents is
    evaluated at log p(x_i | globals) with the globals at the guide's mean
    (``conditioned_on``). ``warnings`` (also on stderr) flags a mean ESS below 1% of K or
    below 10.

    ``compile``: the log weights come from a compiled graph of the same computation
    (:class:`pyro_vae.compiled.CompiledLogWeights`; ``compiled`` in the summary says how
    many graphs, or why it ran eagerly); with the same seed the numbers are the eager ones.

    References:
        Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
    """
    run_dir = Path(run_dir)
    check_estimator(estimator)
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {num_samples}")
    ranks, rank_device = current_world(device or "auto")
    if ranks.distributed:
        device = rank_device
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    restored = restore_run(run_dir, split=split, checkpoint=checkpoint, device=device,
                           data_dir=data_dir, pair=pair)  # fmt: skip
    pair, info, x_all, state = restored.pair, restored.info, restored.x, restored.state
    y_all, classes = restored.y, restored.classes
    if limit is not None:
        x_all = x_all[:limit]
        y_all = None if y_all is None else y_all[:limit]
        classes = None if classes is None else classes[:limit]
    if progress is None:
        progress = sys.stderr.isatty()
    progress = progress and ranks.is_main
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    compiled = None
    if compile:
        compiled = CompiledLogWeights(on_note=lambda line: print(line, file=sys.stderr))
    pyro.set_rng_seed(EVAL_SEED)
    started = time.perf_counter()
    with evaluation_mode(pair):
        view = evaluation_view(pair, info, x_all[:2], None if y_all is None else y_all[:2])
        out = estimate_log_px_in_batches(
            view,
            x_all,
            num_samples,
            batch_size=batch_size,
            max_plate_nesting=info.max_plate_nesting,
            vectorize=view.vectorizable,
            estimator=estimator,
            progress=partial(tqdm, desc=f"evaluate {split}", disable=not progress, unit="batch"),
            y=y_all,
            trace_fn=compiled,
            batch_seed=EVAL_SEED,
            ranks=ranks,
        )
        classification = _classification(pair, info, x_all, classes, batch_size)
    seconds = time.perf_counter() - started
    log_px_t, elbo_t, ess_t = out["log_px"], out["elbo"], out["ess"]
    n = log_px_t.shape[0]

    def stderr(values: torch.Tensor) -> float:
        return float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")

    summary = {
        "log_px": float(log_px_t.mean()),
        "elbo": float(elbo_t.mean()),
        "gap": float((log_px_t - elbo_t).mean()),
        "log_px_stderr": stderr(log_px_t),
        "elbo_stderr": stderr(elbo_t),
        "ess_mean": float(ess_t.mean()),
        "num_points": n,
        "num_samples": num_samples,
        "estimator": estimator,
        "compiled": None
        if compiled is None
        else {"graphs": len(compiled.graphs), "fallback": compiled.fallback_reason},
        "split": split,
        "checkpoint": checkpoint,
        "epoch": state["epoch"],
        "dataset": restored.dataset,
        "device": str(restored.device),
        "ranks": ranks.size,
        "seconds": seconds,
        **evaluation_notes(view),
        **classification,
        "warnings": low_ess_warnings(float(ess_t.mean()), num_samples),
    }
    if "accuracy" in classification:
        summary["num_labelled"] = restored.config.num_labelled
    if info.needs_labels:
        summary["conditioned_on_labels"] = "log p(x | y): the pair needs the labels y"
    if not ranks.is_main:  # rank 0 alone prints and writes
        return summary
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if save:
        stem = evaluation_stem(split, estimator)
        atomic_write_bytes(run_dir / f"{stem}.json", json_bytes(summary))
        np.savez(
            run_dir / f"{stem}.npz",
            log_px=log_px_t.numpy(),
            elbo=elbo_t.numpy(),
            ess=ess_t.numpy(),
        )
    return summary
