"""Evaluation of a trained run: importance-sampled log p(x) and the ELBO, per data point.

Kingma & Welling's third job, efficient estimation of the marginal likelihood: for every data
point, K draws z_k ~ q(z|x) from the trained guide give

    log p(x) ~= log (1/K) sum_k exp(log p(x, z_k) - log q(z_k|x)),

a lower bound in expectation that tightens as K grows (Burda et al. 2016); the ELBO is the
mean of the same log weights, and ``gap = log_px - elbo`` measures how far the ELBO is from it.
``estimator="prior"`` draws z_k from the prior p(z) instead (the naive Monte Carlo estimator,
see :data:`pyro_vae.infer.estimators.ESTIMATORS`), for comparison.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import ExitStack
from functools import partial
from typing import Any

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.analysis.bdmc import (
    AIS_ESTIMATORS,
    ais_in_batches,
    check_ais_arguments,
    check_log_px_estimator,
)
from pyro_vae.analysis.results import Result
from pyro_vae.analysis.subjects import Subject, subject, world_for
from pyro_vae.infer.ais import AIS_CHAINS, AIS_STEPS, LEAPFROG_STEPS, STEP_SIZE
from pyro_vae.infer.compiled import CompiledLogWeights
from pyro_vae.infer.distributed import World
from pyro_vae.infer.estimators import (
    estimate_log_px_in_batches,
    evaluation_notes,
    evaluation_view,
    low_ess_warnings,
)
from pyro_vae.infer.local_fit import (
    LOCAL_FIT_LR,
    LOCAL_FIT_STEPS,
    fit_local_params,
    fresh_local_params,
)
from pyro_vae.pairs import PairInfo, evaluation_mode
from pyro_vae.pairs.labels import (
    accuracy,
    cluster_accuracy,
    guide_class_probabilities,
)
from pyro_vae.pairs.local_params import LocalParams
from pyro_vae.runs.checkpoints import BEST
from pyro_vae.runs.config import ConfigError
from pyro_vae.runs.files import atomic_write_bytes, json_bytes
from pyro_vae.runs.reopen import RestoredRun, restore_run  # noqa: F401 -- importable from here as before

#: Seed of the importance samples, so evaluating twice gives the same numbers.
EVAL_SEED = 0


def _classification(pair, info: PairInfo, x: torch.Tensor, classes, batch_size: int) -> dict:
    """How well the guide classifies: ``accuracy`` of argmax q(y|x) at the label site (and
    ``num_labelled``, the training labels), or for an unsupervised discrete site (a mixture
    component) its ``cluster_accuracy`` against the labels (see
    :func:`pyro_vae.pairs.labels.cluster_accuracy`). Empty without labels."""
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


#: What the summary's ``elbo`` and ``gap`` are for an estimator whose mean log weight is not
#: the ELBO of q: its line in the text summary, and the JSON's ``elbo_meaning``.
ELBO_LABELS = {"prior": "mean log w", "ais": "mean log w"}
ELBO_MEANINGS = {
    "is": "'elbo' is the ELBO of q, the mean log weight of the guide's draws; 'gap' is log p(x) "
    "minus it, KL(q(z|x) || p(z|x)) on average",
    "prior": "with --estimator prior, 'elbo' is E_p(z)[log p(x|z)], the mean log weight of "
    "draws from the prior, not the ELBO of q; 'gap' is log p(x) minus it",
    "ais": "with --estimator ais, 'elbo' is the mean log AIS weight over the chains (a looser "
    "stochastic lower bound of log p(x)), not the ELBO of q; 'gap' is log p(x) minus it",
}


class Evaluation(Result):
    """What :func:`evaluate` found: means over the points (the JSON keys ``log_px``,
    ``elbo``, ``gap``, their standard errors, ``ess_mean``, ...) and, in ``per_point``, the
    tensors ``log_px``, ``elbo`` and ``ess`` of every point."""

    kind = "evaluation"

    def __init__(self, summary: dict[str, Any], per_point: dict[str, torch.Tensor]):
        super().__init__(summary)
        self.per_point = per_point

    def summary(self) -> str:
        where = self.get("split") or "x"
        lines = [
            f"{where}: {self['num_points']} points, K={self['num_samples']}, "
            f"estimator {self['estimator']}",
            f"  log p(x) ~ {self['log_px']:.3f} +- {self['log_px_stderr']:.3f} nats",
            f"  {ELBO_LABELS.get(self['estimator'], 'ELBO'):10s} {self['elbo']:.3f} +- "
            f"{self['elbo_stderr']:.3f} nats",
            f"  gap        {self['gap']:.3f} nats   (mean ESS {self['ess_mean']:.1f}, "
            f"{self['seconds']:.1f}s)",
        ]
        if self.get("elbo_meaning") and self["estimator"] in ELBO_LABELS:
            lines.append(f"  ({self['elbo_meaning']})")
        if "accuracy" in self:
            lines.append(f"  accuracy   {self['accuracy']:.4f} (argmax q(y|x))")
        if "cluster_accuracy" in self:
            lines.append(f"  cluster accuracy {self['cluster_accuracy']:.4f}")
        if self.get("scaled_sites"):
            lines.append(f"  unscaled densities at site(s) {', '.join(self['scaled_sites'])}")
        if self.get("conditioned_on"):
            lines.append(
                "  log p(x_i | globals), global site(s) held at the guide's mean: "
                + ", ".join(self["conditioned_on"]["sites"])
            )
        if self.get("local_fit"):
            fit = self["local_fit"]
            lines.append(
                f"  per-point guide params fitted on these points: {fit['steps']} SVI steps "
                f"(lr {fit['lr']:g}), final ELBO {fit['final_elbo']:.3f} nats, "
                f"{fit['seconds']:.1f}s"
            )
        lines += [f"  warning: {warning}" for warning in self.get("warnings", [])]
        return "\n".join(lines)


def _check_arguments(estimator: str, num_samples: int, limit: int | None, batch_size: int,
                     local_fit_steps: int = 1, local_fit_lr: float = 1.0) -> None:  # fmt: skip
    check_log_px_estimator(estimator)
    if isinstance(local_fit_steps, bool) or not isinstance(local_fit_steps, int):
        raise ConfigError(f"--local-fit-steps must be an integer, got {local_fit_steps!r}")
    if local_fit_steps < 1:
        raise ConfigError(f"--local-fit-steps must be >= 1, got {local_fit_steps}")
    if not (isinstance(local_fit_lr, int | float) and 0 < local_fit_lr < math.inf):
        raise ConfigError(f"--local-fit-lr must be a number > 0, got {local_fit_lr!r}")
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {num_samples}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")


def evaluate(
    source: Any,
    x: torch.Tensor | None = None,
    *,
    labels: Any = None,
    guide: Any = None,
    num_samples: int = 1000,
    estimator: str = "is",
    batch_size: int = 100,
    seed: int = EVAL_SEED,
    limit: int | None = None,
    split: str = "test",
    checkpoint: str = BEST,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
    progress: bool | None = None,
    save: bool | None = None,
    compile: bool = False,
    local_fit_steps: int = LOCAL_FIT_STEPS,
    local_fit_lr: float = LOCAL_FIT_LR,
    ais_steps: int = AIS_STEPS,
    ais_chains: int = AIS_CHAINS,
    leapfrog_steps: int = LEAPFROG_STEPS,
    step_size: float = STEP_SIZE,
    ais_proposal: str = "guide",
) -> Evaluation:
    """Estimate log p(x) by importance sampling, and the mean log weight, per data point.

    log p(x) ~= log (1/K) sum_k p(x, z_k) / r(z_k|x),  z_k ~ r, with r the guide q(z|x)
    (``estimator="is"``) or the prior p(z) (``"prior"``).

    ``source`` is what you hold: a pair (an object with ``model`` and ``guide``; or a model
    with ``guide=``, or a ``(model, guide)`` tuple) with its data ``x`` (and ``labels``, class
    indices or one-hot rows, for accuracy or a pair that takes labels); or a
    :class:`~pyro_vae.runs.reopen.Run`, or a run directory's path, whose split ``split`` is used
    when ``x`` is None (``checkpoint``, ``device``, ``data_dir`` and ``pair`` say how to reopen
    a path). ``limit``: only the first points.

    Returns an :class:`Evaluation`: ``log_px``, ``elbo`` (the mean log weight: the ELBO for
    ``is``, E_p(z)[log p(x|z)] for ``prior``), ``gap`` (means over points, nats), their
    standard errors, ``ess_mean``, ``num_points``, ``num_samples``, ``estimator``, accuracy
    where labels apply, ``warnings``; per-point values in ``.per_point``. With ``save`` (the
    default for a path), writes ``evaluation_<split>.json`` (``evaluation_<split>_prior.json``
    for the prior) and the per-point ``.npz`` into the run directory.

    Densities are the model's own, unscaled (``scaled_sites`` names the sites whose
    ``poutine.scale`` was removed); modules run in eval mode; a pair with global latents is
    evaluated at log p(x_i | globals) with the globals at the guide's mean
    (``conditioned_on``). ``warnings`` (also on stderr) flags a mean ESS below 1% of K or
    below 10. ``seed`` seeds the draws: the same seed gives the same numbers, for a pair in
    memory and for its run directory alike.

    A guide that is not amortized (its ``pyro.param``s hold a row per training point,
    :attr:`~pyro_vae.pairs.PairInfo.local_params`) has no parameters for the evaluated
    points: they are fitted first, ``local_fit_steps`` Adam steps at ``local_fit_lr`` on the
    ELBO of all the points with the model and every other parameter frozen
    (:mod:`pyro_vae.infer.local_fit`), and the fitted guide is the proposal; ``local_fit``
    in the summary records it. The trained parameters are put back afterwards.

    ``compile``: the log weights come from a compiled graph of the same computation
    (:class:`pyro_vae.infer.compiled.CompiledLogWeights`; ``compiled`` in the summary says how
    many graphs, or why it ran eagerly); with the same seed the numbers are the eager ones.

    ``estimator="ais"``: annealed importance sampling from the guide (``ais_proposal``:
    or the prior) with ``ais_steps`` HMC transitions of ``leapfrog_steps`` steps of
    ``step_size`` (tuned per point by a pilot run), ``ais_chains`` chains per point, in place
    of the K draws (:mod:`pyro_vae.infer.ais`); per point ``log_px_stderr`` too, and ``ais``
    in the summary says the settings and the compute.

    References:
        Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
        Neal (2001), Annealed Importance Sampling.
    """
    _check_arguments(estimator, num_samples, limit, batch_size, local_fit_steps, local_fit_lr)
    ais = None
    if estimator in AIS_ESTIMATORS:
        check_ais_arguments(ais_steps, ais_chains, leapfrog_steps, step_size, ais_proposal)
        ais = dict(steps=ais_steps, chains=ais_chains, leapfrog_steps=leapfrog_steps,
                   step_size=step_size, proposal=ais_proposal)  # fmt: skip
    ranks, device = world_for(source, device)
    held = subject(source, x, labels=labels, guide=guide, split=split, checkpoint=checkpoint,
                   device=device, data_dir=data_dir, pair=pair).first(limit)  # fmt: skip
    if save is None:
        save = isinstance(source, str | os.PathLike)
    if save and held.run is None:
        raise ConfigError(
            "save=True writes into a run directory; this pair has none. Use the result "
            "(result.to_dict(), result.per_point) or train it into one with pyro_vae.fit"
        )
    if progress is None:
        progress = sys.stderr.isatty()
    progress = progress and ranks.is_main
    result = _evaluate(held, num_samples, estimator, batch_size, seed, progress, compile, ranks,
                       (local_fit_steps, local_fit_lr), ais)  # fmt: skip
    if not ranks.is_main:  # rank 0 alone prints and writes
        return result
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if save:
        stem = evaluation_stem(split if x is None else "x", estimator)
        run_dir = held.run.path
        atomic_write_bytes(run_dir / f"{stem}.json", json_bytes(result))
        np.savez(
            run_dir / f"{stem}.npz",
            **{name: values.cpu().numpy() for name, values in result.per_point.items()},
        )
    return result


def _evaluate(held: Subject, num_samples: int, estimator: str, batch_size: int, seed: int,
              progress: bool, compile: bool, ranks: World,
              local_fit: tuple[int, float] = (LOCAL_FIT_STEPS, LOCAL_FIT_LR),
              ais: dict[str, Any] | None = None) -> Evaluation:  # fmt: skip
    """The estimates on ``held``'s points (see :func:`evaluate`); ``local_fit``: the steps
    and learning rate of the fit of a guide's per-point params; ``ais``: the AIS settings
    (``estimator="ais"``)."""
    if ais is not None:
        return _evaluate_ais(held, estimator, batch_size, seed, progress, compile, ranks, ais)
    pair, info, x_all, y_all, classes = held.pair, held.info, held.x, held.y, held.classes
    local = LocalParams(info.local_params) if info.local_params else None
    compiled = None
    if compile and local is not None:
        print("note: --compile: evaluated eagerly: the guide's per-point params are selected "
              "by each batch's points", file=sys.stderr)  # fmt: skip
    elif compile:
        compiled = CompiledLogWeights(on_note=lambda line: print(line, file=sys.stderr))
    where = held.context["split"] or "x"
    pyro.set_rng_seed(seed)
    started = time.perf_counter()
    fit = None
    with evaluation_mode(pair), ExitStack() as fitted:
        view = evaluation_view(pair, info, x_all[:2], None if y_all is None else y_all[:2],
                               local)  # fmt: skip
        if local is not None and estimator == "is":  # the points' own params, fitted first
            params = fitted.enter_context(fresh_local_params(local.names, x_all.shape[0]))
            fit = fit_local_params(view.model, view.guide, x_all, params, steps=local_fit[0],
                                   lr=local_fit[1], max_plate_nesting=info.max_plate_nesting,
                                   y=y_all)  # fmt: skip
        out = estimate_log_px_in_batches(
            view,
            x_all,
            num_samples,
            batch_size=batch_size,
            max_plate_nesting=info.max_plate_nesting,
            vectorize=view.vectorizable,
            estimator=estimator,
            progress=partial(tqdm, desc=f"evaluate {where}", disable=not progress, unit="batch"),
            y=y_all,
            trace_fn=compiled,
            batch_seed=seed,
            ranks=ranks,
        )
        classification = {} if local else _classification(pair, info, x_all, classes, batch_size)
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
        "elbo_meaning": ELBO_MEANINGS.get(estimator),
        "compiled": None
        if compiled is None
        else {"graphs": len(compiled.graphs), "fallback": compiled.fallback_reason},
        **held.context,
        "ranks": ranks.size,
        "seconds": seconds,
        "seed": seed,
        **evaluation_notes(view),
        "local_fit": fit,
        **classification,
        "warnings": low_ess_warnings(float(ess_t.mean()), num_samples),
    }
    if "accuracy" in classification and held.run is not None:
        summary["num_labelled"] = held.run.config.num_labelled
    if info.needs_labels:
        summary["conditioned_on_labels"] = "log p(x | y): the pair needs the labels y"
    return Evaluation(summary, {"log_px": log_px_t, "elbo": elbo_t, "ess": ess_t})


def _evaluate_ais(held: Subject, estimator: str, batch_size: int, seed: int, progress: bool,
                  compile: bool, ranks: World, ais: dict[str, Any]) -> Evaluation:  # fmt: skip
    """AIS estimates on ``held``'s points (:func:`~pyro_vae.analysis.bdmc.ais_in_batches`),
    in the keys of the importance-sampling evaluation: ``elbo`` is the mean AIS log weight,
    ``ess`` that of the chains' weights, ``num_samples`` the chains."""
    pyro.set_rng_seed(seed)
    started = time.perf_counter()
    view, per_point, notes = ais_in_batches(held, batch_size=batch_size, seed=seed,
                                            compile=compile, progress=progress, ranks=ranks,
                                            **ais)  # fmt: skip
    log_px_t, elbo_t = per_point["log_px"], per_point["elbo"]
    n = log_px_t.shape[0]
    spread = float(log_px_t.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    summary = {
        "log_px": float(log_px_t.mean()),
        "elbo": float(elbo_t.mean()),
        "gap": float((log_px_t - elbo_t).mean()),
        "log_px_stderr": spread,
        "elbo_stderr": float(elbo_t.std(unbiased=True) / math.sqrt(n)) if n > 1 else spread,
        "log_px_stderr_per_point_mean": float(per_point["log_px_stderr"].mean()),
        "ess_mean": float(per_point["ess"].mean()),
        "num_points": n,
        "num_samples": ais["chains"],
        "estimator": estimator,
        "elbo_meaning": ELBO_MEANINGS["ais"],
        "ais": notes,
        "compiled": None,
        **held.context,
        "ranks": ranks.size,
        "seconds": time.perf_counter() - started,
        "seed": seed,
        **evaluation_notes(view),
        "local_fit": None,
        "warnings": [],
    }
    if held.info.needs_labels:
        summary["conditioned_on_labels"] = "log p(x | y): the pair needs the labels y"
    return Evaluation(summary, per_point)
