"""How noisy is a gradient estimator? Variance and signal-to-noise ratio of ELBO gradients.

On one fixed minibatch x and fixed parameters theta, every estimator of
:data:`~pyro_vae.infer.gradients.GRADIENT_ESTIMATORS` is drawn many times, g_1 .. g_N, and
summarized per coordinate j of theta by

    Var_j = (1/(N-1)) sum_n (g_nj - mean_j)^2,      SNR_j = |mean_j| / sqrt(Var_j),

then averaged over coordinates (Rainforth et al. 2018 use the same SNR to compare estimators).
All estimators are unbiased, so they differ only in this noise: the reparameterized gradient
is usually far less noisy than the score function, and baselines close part of that gap
(Mnih & Gregor 2014).

Which tensors are "the pair's parameters" is decided by the pair's own modules, not by
Pyro's global param store (:mod:`pyro_vae.analysis.parameters`); the draws and their
statistics are :mod:`pyro_vae.analysis.gradient_draws`.

References:
    Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh (2018), Tighter Variational Bounds
    are Not Necessarily Better.
    Mnih & Gregor (2014), Neural Variational Inference and Learning in Belief Networks.
    Kingma & Welling (2014), Auto-Encoding Variational Bayes.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import Tensor
from tqdm.auto import tqdm

from pyro_vae.analysis.gradient_draws import (
    gradient_draws,
    gradient_statistics,
    warm_up_baseline,
)
from pyro_vae.analysis.parameters import (
    PARTS,
    _pair_modules_by_name,
    _stale_notes,
    pair_parameters,
)
from pyro_vae.analysis.results import Result, figure_path
from pyro_vae.analysis.subjects import Subject, amortized, subject
from pyro_vae.infer.gradients import (
    GRADIENT_ESTIMATORS,
    forget_baselines,
    non_reparameterized_sites,
    score_function_blocker,
)
from pyro_vae.infer.handlers import unscaled
from pyro_vae.pairs import FunctionPair
from pyro_vae.pairs.labels import with_labels
from pyro_vae.runs.checkpoints import BEST
from pyro_vae.runs.config import ConfigError, TrainConfig
from pyro_vae.runs.files import atomic_write_bytes, json_bytes

#: Files written into the output folder.
GRADVAR_JSON = "gradvar.json"
GRADVAR_PNG = "gradvar.png"
#: The baseline learning rate for a pair held in memory: NVIL's 10 x the training default.
DEFAULT_BASELINE_LR = 10 * TrainConfig().lr
#: How many names a note lists.
NAMES_IN_A_NOTE = 5


class GradientVariance(Result):
    """What :func:`gradient_variance` found: per estimator (``result["estimators"][name]``)
    the ``variance``, ``snr`` and ``mean_norm`` of its gradient draws, ``seconds`` per draw,
    the same per ``parts`` (encoder, decoder) and per parameter (``groups``); the
    minibatch, the settings and ``notes``."""

    kind = "gradient variance"

    def summary(self) -> str:
        return format_table(self)

    def plot(self, path: str | os.PathLike) -> Path:
        """Bar charts of variance and SNR per estimator (``gradvar.png`` in a folder
        ``path``, or the file ``path``); returns the file written."""
        from pyro_vae.analysis.plots import gradient_variance_figure  # matplotlib only when drawing

        target = figure_path(path, GRADVAR_PNG)
        return gradient_variance_figure({**self, "split": self.get("split") or "x"}, target)


def _check_arguments(estimators, num_draws, batch_size, baseline_steps) -> list[str]:
    names = [estimators] if isinstance(estimators, str) else list(estimators)
    unknown = [name for name in names if name not in GRADIENT_ESTIMATORS]
    if unknown or not names:
        raise ConfigError(
            f"--estimators: unknown estimator(s) {unknown}; choose from "
            f"{', '.join(GRADIENT_ESTIMATORS)}"
        )
    if num_draws < 2:
        raise ConfigError(f"--num-draws must be >= 2 (a variance needs two), got {num_draws}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if baseline_steps < 0:
        raise ConfigError(f"--baseline-steps must be >= 0, got {baseline_steps}")
    return names


def gradient_variance(
    source: Any,
    x: Tensor | None = None,
    *,
    labels: Any = None,
    guide: Any = None,
    estimators: Sequence[str] = ("reparam", "score", "score+avg", "score+nn"),
    num_draws: int = 100,
    batch_size: int = 100,
    split: str = "train",
    checkpoint: str = BEST,
    baseline_steps: int = 200,
    baseline_lr: float | None = None,
    baseline_hidden: Sequence[int] | None = None,
    baseline_beta: float | None = None,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
    save: bool | None = None,
    seed: int = 0,
) -> GradientVariance:
    """Variance and SNR of each gradient estimator of a pair's loss, on one minibatch.

        Var = mean_j Var_n(g_nj),   SNR = mean_j |mean_n g_nj| / std_n g_nj

    ``source`` is what you hold: a pair (an object with ``model`` and ``guide``; or a model
    with ``guide=``, or a ``(model, guide)`` tuple) with its data ``x`` (and ``labels`` for
    a pair that takes them); or a :class:`~pyro_vae.runs.reopen.Run`, or a run directory's path,
    whose split ``split`` is used when ``x`` is None (``checkpoint``, ``device``,
    ``data_dir`` and ``pair`` say how to reopen a path; dynamically binarized data get the
    fixed draw of evaluation). The minibatch is the first ``batch_size`` points.

    For each estimator, ``num_draws`` draws of the gradient w.r.t. the pair's own
    parameters (its networks' tensors and its plain ``pyro.param`` sites, not a baseline's;
    see :func:`pair_parameters`) are summarized by :func:`gradient_statistics`, overall, per
    part (encoder: read by the guide; decoder: read only by the model) and per parameter. A
    baseline first warms up on the minibatch for ``baseline_steps`` draws
    (:func:`warm_up_baseline`): the decaying average from zero (``baseline_beta``), fresh
    neural baselines, one per site (hidden widths ``baseline_hidden``), by Adam at
    ``baseline_lr``. Each of the three defaults to the run's setting (a run's
    ``baseline_lr`` of None: 10 x its lr) and, for a pair in memory, to
    :class:`~pyro_vae.runs.config.TrainConfig`'s (``baseline_lr``: :data:`DEFAULT_BASELINE_LR`,
    10 x the default lr).

    Pyro keeps the decaying average per *position* in the batch: on this one fixed
    minibatch that is each point's own mean signal, a better baseline than it can be in
    training, where every position holds a new point at each step.

    An estimator whose every draw is exactly zero is a :class:`ConfigError` (the programs do
    not read the parameters found), never a variance of 0; parameters that are exactly zero
    on every draw while others are not are named in ``notes``. ``seed`` seeds the draws: the
    same seed gives the same numbers, for a pair in memory and for its run directory alike.

    Returns a :class:`GradientVariance`. With ``save`` (the default for a path), writes
    ``gradvar.json`` and ``gradvar.png`` into ``out`` (default: the run directory).
    Memory: the draws of one estimator, num_draws x num_parameters floats.

    References:
        Rainforth et al. (2018), Tighter Variational Bounds are Not Necessarily Better.
        Mnih & Gregor (2014), Neural Variational Inference and Learning in Belief Networks.
    """
    names = _check_arguments(estimators, num_draws, batch_size, baseline_steps)
    held = subject(source, x, labels=labels, guide=guide, split=split, checkpoint=checkpoint,
                   device=device, data_dir=data_dir, pair=pair).first(batch_size)  # fmt: skip
    held = amortized(held, "gradvar")
    if held.x.shape[0] < batch_size:
        print(
            f"note: --batch-size {batch_size}: only {held.x.shape[0]} points to draw from, so "
            f"the minibatch is all {held.x.shape[0]} of them",
            file=sys.stderr,
        )
    if save is None:
        save = isinstance(source, str | os.PathLike)
    if save and out is None and held.run is None:
        raise ConfigError(
            "save=True writes gradvar.json and gradvar.png into a run directory; this pair has "
            "none. Pass out=FOLDER, or use the result (result.to_dict(), result.plot(path))"
        )
    config = held.run.config if held.run is not None else TrainConfig()
    if baseline_lr is None:
        baseline_lr = config.baseline_lr or 10 * config.lr
    settings = {
        "baseline_lr": baseline_lr,
        "baseline_hidden": [int(h) for h in (baseline_hidden or config.baseline_hidden)],
        "baseline_beta": config.baseline_beta if baseline_beta is None else baseline_beta,
    }
    if progress is None:
        progress = sys.stderr.isatty()
    result = _gradient_variance(held, names, num_draws, baseline_steps, settings, seed, progress)
    if save:
        from pyro_vae.analysis.plots import gradient_variance_figure  # matplotlib only when saving

        out_dir = Path(out) if out is not None else held.run.path
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / GRADVAR_JSON, json_bytes(result))
        gradient_variance_figure(result, out_dir / GRADVAR_PNG)
    return result


def _gradient_variance(held: Subject, names: list[str], num_draws: int, baseline_steps: int,
                       settings: dict[str, Any], seed: int,
                       progress: bool) -> GradientVariance:  # fmt: skip
    """The draws and their statistics on ``held``'s minibatch (see :func:`gradient_variance`)."""
    info, x = held.info, held.x
    # gradients of the pair's own ELBO: every site unscaled, whatever poutine.scale it declares
    pair = FunctionPair(unscaled(held.pair.model), unscaled(held.pair.guide))
    if held.y is not None:  # a pair that needs labels: the minibatch's own, bound in
        pair = FunctionPair(with_labels(pair.model, held.y), with_labels(pair.guide, held.y))
    found = pair_parameters(pair.model, pair.guide, x, _pair_modules_by_name(held.pair))
    if not found:
        raise ConfigError(
            "the pair has no parameters to differentiate: its programs trace no pyro.param "
            "and it holds no network (an nn.Module attribute registered with pyro.module)"
        )
    names_in_order = list(found)
    params = [found[name]["param"] for name in names_in_order]
    sizes = [p.numel() for p in params]

    results: dict[str, Any] = {}
    skipped = _skip_score_estimators(pair.guide, x, names)
    names = [name for name in names if name not in skipped]
    zero_everywhere = set(names_in_order)
    started = time.perf_counter()
    try:
        for name in names:
            spec = GRADIENT_ESTIMATORS[name]
            forget_baselines()
            pyro.set_rng_seed(seed)
            module = spec.make_baselines(pair.guide, x, settings["baseline_hidden"])
            guide = spec.make_guide(pair.guide, beta=settings["baseline_beta"], module=module)
            elbo = spec.make_elbo(max_plate_nesting=info.max_plate_nesting)
            warm = baseline_steps if spec.baseline != "none" else 0
            bar = tqdm(total=warm + num_draws, desc=f"gradvar {name}", disable=not progress,
                       unit="draw", leave=False)  # fmt: skip
            warm_up_baseline(pair.model, guide, x, elbo, warm, module=module,
                             lr=settings["baseline_lr"], params=params,
                             on_step=bar.update)  # fmt: skip
            began = time.perf_counter()
            draws = gradient_draws(pair.model, guide, x, elbo, params, num_draws,
                                   on_draw=bar.update)  # fmt: skip
            seconds = (time.perf_counter() - began) / num_draws
            bar.close()
            if not bool(draws.any()):
                raise ConfigError(_all_zero_message(name, found, num_draws))
            chunks = dict(zip(names_in_order, draws.split(sizes, dim=1), strict=True))
            zero_everywhere &= {n for n in names_in_order if not bool(chunks[n].any())}
            summary = gradient_statistics(draws)
            summary["seconds"] = seconds
            summary["parts"] = {
                part: gradient_statistics(
                    torch.cat([chunks[n] for n in names_in_order if found[n]["part"] == part], 1)
                )
                for part in PARTS
                if any(found[n]["part"] == part for n in names_in_order)
            }
            summary["groups"] = {n: gradient_statistics(chunks[n]) for n in names_in_order}
            summary["baseline"] = spec.baseline
            summary["description"] = spec.description
            results[name] = summary
            del draws, chunks
    finally:
        forget_baselines()

    zero_names = [n for n in names_in_order if n in zero_everywhere] if results else []
    notes = (
        _notes(pair.guide, x, names)
        + _site_notes(info)
        + list(skipped.values())
        + _stale_notes(found, held)
        + _zero_notes(zero_names, len(results))
    )
    return GradientVariance(
        {
            "estimators": results,
            "num_draws": num_draws,
            "batch_size": int(x.shape[0]),
            "num_parameters": int(sum(sizes)),
            **held.context,
            "baseline_steps": baseline_steps,
            "baseline_lr": settings["baseline_lr"],
            "baseline_hidden": settings["baseline_hidden"],
            "baseline_beta": settings["baseline_beta"],
            "seed": seed,
            "seconds": time.perf_counter() - started,
            "notes": notes,
            "scaled_sites": list(info.scaled_sites),
        }
    )


def _all_zero_message(name: str, found: dict[str, dict], num_draws: int) -> str:
    shown = ", ".join(repr(n) for n in list(found)[:NAMES_IN_A_NOTE])
    return (
        f"estimator {name}: the gradient w.r.t. every one of the pair's parameters ({shown}"
        f"{', ...' if len(found) > NAMES_IN_A_NOTE else ''}) is exactly zero on all "
        f"{num_draws} draws, so the programs do not compute with the tensors found, and a "
        "variance of 0 would be wrong. Likely causes: Pyro's param store held a stale "
        "same-named entry that the programs read instead of the pair's own tensors (another "
        "instance of the pair's class, e.g. built when a pair file without an "
        '`if __name__ == "__main__":` guard was imported), or networks that are not '
        "registered with pyro.module (or a PyroModule) inside model/guide or are not "
        "attributes of the pair. Register each network with pyro.module(name, network) in "
        "the program that uses it, keep it as an attribute of the pair, and put a pair "
        "file's own training under a main guard (or call pyro.clear_param_store() before "
        "building the pair)"
    )


def _zero_notes(zero_names: list[str], num_estimators: int) -> list[str]:
    if not zero_names:
        return []
    shown = ", ".join(repr(n) for n in zero_names[:NAMES_IN_A_NOTE])
    more = len(zero_names) - NAMES_IN_A_NOTE
    more = f" and {more} more" if more > 0 else ""
    every = "every estimator" if num_estimators > 1 else "the estimator"
    return [
        f"parameter(s) {shown}{more} had an exactly zero gradient on every draw of {every}: "
        "the programs do not compute with them on this x (they may legitimately be unused)"
    ]


def _skip_score_estimators(guide: Any, x: Tensor, names: list[str]) -> dict[str, str]:
    """The score-function estimators among ``names`` that cannot run on this guide (a flow
    without an inverse), each with the note saying so; all of them refused: ConfigError."""
    scored = [name for name in names if GRADIENT_ESTIMATORS[name].score_function]
    reason = score_function_blocker(guide, x) if scored else None
    if reason is None:
        return {}
    if len(scored) == len(names):
        raise ConfigError(
            f"--estimators {','.join(names)}: every one takes the score function, and {reason}; "
            "add reparam, or train the guide with an IAF flow"
        )
    return {name: f"{name} skipped: {reason}" for name in scored}


def _notes(guide: Any, x: Tensor, names: list[str]) -> list[str]:
    """What a reader of the table must know about this guide: sites without ``rsample``
    (discrete ones) are differentiated by the score function under every estimator."""
    discrete = non_reparameterized_sites(guide, x)
    if not discrete or "reparam" not in names:
        return []
    return [
        f"'reparam' is not reparameterized here: the guide's sites {discrete} have no rsample, "
        "so Trace_ELBO takes the score function there, without Rao-Blackwellization or a "
        "baseline"
    ]


def _site_notes(info: Any) -> list[str]:
    notes = []
    if info.scaled_sites:
        notes.append(
            f"site(s) {list(info.scaled_sites)} carry a poutine.scale in the pair: the "
            "gradients here are of the unscaled ELBO"
        )
    if info.global_sites:
        notes.append(
            f"global latent site(s) {list(info.global_sites)}: the loss is the ELBO of this "
            "minibatch alone (global terms once, local terms unscaled by N/B)"
        )
    return notes


def without_groups(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the per-parameter ``groups`` left out (short enough for stdout)."""
    estimators = {
        name: {k: v for k, v in summary.items() if k != "groups"}
        for name, summary in result["estimators"].items()
    }
    return {**result, "estimators": estimators}


def format_table(result: dict[str, Any]) -> str:
    """An aligned text table: one row per estimator."""
    header = ("estimator", "variance", "SNR", "enc. var", "dec. var", "ms/draw")
    rows = [header]
    for name, summary in result["estimators"].items():
        parts = summary.get("parts", {})

        def number(value):
            return "-" if value is None or not math.isfinite(value) else f"{value:.3g}"

        rows.append(
            (
                name,
                number(summary["variance"]),
                number(summary["snr"]),
                number(parts.get("encoder", {}).get("variance")),
                number(parts.get("decoder", {}).get("variance")),
                f"{1000 * summary['seconds']:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                  enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]  # fmt: skip
    title = (
        f"gradient variance on {result['batch_size']} {result.get('split') or 'x'} points, "
        f"{result['num_draws']} draws, {result['num_parameters']} parameters"
    )
    notes = [f"note: {note}" for note in result.get("notes", [])]
    return "\n".join([title, *lines, *notes])


__all__ = [
    "DEFAULT_BASELINE_LR",
    "GRADVAR_JSON",
    "GRADVAR_PNG",
    "GradientVariance",
    "format_table",
    "gradient_draws",
    "gradient_statistics",
    "gradient_variance",
    "pair_parameters",
    "warm_up_baseline",
    "without_groups",
]
