"""How noisy is a gradient estimator? Variance and signal-to-noise ratio of ELBO gradients.

On one fixed minibatch x and fixed parameters theta, every estimator of
:data:`~pyro_vae.infer.gradients.GRADIENT_ESTIMATORS` is drawn many times, g_1 .. g_N, and
summarized per coordinate j of theta by

    Var_j = (1/(N-1)) sum_n (g_nj - mean_j)^2,      SNR_j = |mean_j| / sqrt(Var_j),

then averaged over coordinates (Rainforth et al. 2018 use the same SNR to compare estimators).
The ELBO's estimators are unbiased, so they differ only in this noise: the reparameterized
gradient is usually far less noisy than the score function, and baselines close part of that
gap (Mnih & Gregor 2014); sticking the landing (``stl``) drops the score term of log q, whose
expectation is zero (Roeder et al. 2017). The rows ``iwae``, ``iwae-dreg`` and ``vimco`` are
gradients of the K-particle IWAE bound instead (K = ``num_particles``): as K grows, IWAE's
encoder gradient loses its signal, DReG's does not (Rainforth et al. 2018; Tucker et al. 2019);
:mod:`pyro_vae.analysis.snr_k` draws that against K.

Which tensors are "the pair's parameters" is decided by the pair's own modules, not by
Pyro's global param store (:mod:`pyro_vae.analysis.parameters`); the draws and their
statistics are :mod:`pyro_vae.analysis.gradient_draws`.

References:
    Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh (2018), Tighter Variational Bounds
    are Not Necessarily Better.
    Mnih & Gregor (2014), Neural Variational Inference and Learning in Belief Networks.
    Kingma & Welling (2014), Auto-Encoding Variational Bayes.
    Roeder, Wu & Duvenaud (2017), Sticking the Landing.
    Tucker, Lawson, Gu & Maddison (2019), Doubly Reparameterized Gradient Estimators for Monte
    Carlo Objectives.
    Mnih & Rezende (2016), Variational Inference for Monte Carlo Objectives.
"""

from __future__ import annotations

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
from pyro_vae.analysis.results import Result, aligned_lines, figure_path, number_cell
from pyro_vae.analysis.subjects import Subject, amortized, subject
from pyro_vae.infer.gradients import (
    GRADIENT_ESTIMATORS,
    forget_baselines,
    non_reparameterized_sites,
    score_function_blocker,
)
from pyro_vae.infer.handlers import unscaled
from pyro_vae.pairs import FunctionPair, PairError
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
#: The K of the multi-sample rows (iwae, iwae-dreg, vimco) unless told: Burda et al.'s
#: middle setting; K = 1 would make IWAE the ELBO and leave VIMCO no other particle.
DEFAULT_NUM_PARTICLES = 10


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


def _check_arguments(estimators, num_draws, batch_size, baseline_steps,
                     num_particles=DEFAULT_NUM_PARTICLES) -> list[str]:  # fmt: skip
    if estimators is None:
        estimators = list(GRADIENT_ESTIMATORS)
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
    if num_particles < 1:
        raise ConfigError(
            f"--num-particles must be >= 1 (the K of the bounds iwae, iwae-dreg, vimco), got "
            f"{num_particles}"
        )
    return names


def held_minibatch(source: Any, x: Tensor | None, batch_size: int, what: str,
                   **reopen: Any) -> Subject:  # fmt: skip
    """The first ``batch_size`` points of what the user holds (see :func:`gradient_variance`),
    for analysis ``what``; says on stderr when there are fewer."""
    held = subject(source, x, **reopen).first(batch_size)
    held = amortized(held, what)
    if held.x.shape[0] < batch_size:
        print(
            f"note: --batch-size {batch_size}: only {held.x.shape[0]} points to draw from, so "
            f"the minibatch is all {held.x.shape[0]} of them",
            file=sys.stderr,
        )
    return held


def baseline_settings(held: Subject, baseline_lr, baseline_hidden, baseline_beta) -> dict:
    """The baseline settings: those given, else the run's, else TrainConfig's."""
    config = held.run.config if held.run is not None else TrainConfig()
    if baseline_lr is None:
        baseline_lr = config.baseline_lr or 10 * config.lr
    return {
        "baseline_lr": baseline_lr,
        "baseline_hidden": [int(h) for h in (baseline_hidden or config.baseline_hidden)],
        "baseline_beta": config.baseline_beta if baseline_beta is None else baseline_beta,
    }


def gradient_variance(
    source: Any,
    x: Tensor | None = None,
    *,
    labels: Any = None,
    guide: Any = None,
    estimators: Sequence[str] | None = None,
    num_draws: int = 100,
    batch_size: int = 100,
    num_particles: int = DEFAULT_NUM_PARTICLES,
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

    ``estimators``: names from :data:`~pyro_vae.infer.gradients.GRADIENT_ESTIMATORS` (default:
    all). ``reparam``, ``score``, ``score+avg``, ``score+nn`` and ``stl`` estimate the ELBO's
    gradient from one z per point; ``iwae``, ``iwae-dreg`` and ``vimco`` that of the IWAE
    bound with K = ``num_particles`` z per point. A row that cannot run on this guide is left
    out with a note; if every row asked for is, that is a :class:`ConfigError` that says why:
    ``stl`` and ``iwae-dreg`` need every site reparameterized (and, like the score rows, a
    flow with an inverse), ``vimco`` a site that is not and K >= 2; ``iwae`` (Pyro's
    ``RenyiELBO``) gives a site without ``rsample`` no gradient, so it is left out there too.

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
    names = _check_arguments(estimators, num_draws, batch_size, baseline_steps, num_particles)
    held = held_minibatch(source, x, batch_size, "gradvar", labels=labels, guide=guide,
                          split=split, checkpoint=checkpoint, device=device,
                          data_dir=data_dir, pair=pair)  # fmt: skip
    if save is None:
        save = isinstance(source, str | os.PathLike)
    if save and out is None and held.run is None:
        raise ConfigError(
            "save=True writes gradvar.json and gradvar.png into a run directory; this pair has "
            "none. Pass out=FOLDER, or use the result (result.to_dict(), result.plot(path))"
        )
    settings = baseline_settings(held, baseline_lr, baseline_hidden, baseline_beta)
    if progress is None:
        progress = sys.stderr.isatty()
    result = measure(held, names, num_draws, baseline_steps, settings, seed, progress,
                     num_particles)  # fmt: skip
    if save:
        from pyro_vae.analysis.plots import gradient_variance_figure  # matplotlib only when saving

        out_dir = Path(out) if out is not None else held.run.path
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / GRADVAR_JSON, json_bytes(result))
        gradient_variance_figure(result, out_dir / GRADVAR_PNG)
    return result


def measure(held: Subject, names: list[str], num_draws: int, baseline_steps: int,
            settings: dict[str, Any], seed: int, progress: bool,
            num_particles: int = DEFAULT_NUM_PARTICLES) -> GradientVariance:  # fmt: skip
    """The draws and their statistics on ``held``'s minibatch (see :func:`gradient_variance`),
    the multi-sample rows with K = ``num_particles``."""
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
    modules = list(_pair_modules_by_name(held.pair).values())  # STL and DReG stop them

    results: dict[str, Any] = {}
    skipped = _skipped_estimators(pair.guide, x, names, num_particles)
    asked, names = names, [name for name in names if name not in skipped]
    zero_everywhere = set(names_in_order)
    started = time.perf_counter()
    try:
        for name in names:
            spec = GRADIENT_ESTIMATORS[name]
            forget_baselines()
            pyro.set_rng_seed(seed)
            module = spec.make_baselines(pair.guide, x, settings["baseline_hidden"])
            guide = spec.make_guide(pair.guide, beta=settings["baseline_beta"], module=module)
            particles = num_particles if spec.multi_sample else 1
            elbo = spec.make_elbo(info.max_plate_nesting, particles, modules=modules)
            warm = baseline_steps if spec.baseline != "none" else 0
            bar = tqdm(total=warm + num_draws, desc=f"gradvar {name}", disable=not progress,
                       unit="draw", leave=False)  # fmt: skip
            warm_up_baseline(pair.model, guide, x, elbo, warm, module=module,
                             lr=settings["baseline_lr"], params=params,
                             on_step=bar.update)  # fmt: skip
            began = time.perf_counter()
            try:
                draws = gradient_draws(pair.model, guide, x, elbo, params, num_draws,
                                       on_draw=bar.update)  # fmt: skip
            except PairError as error:  # a new objective refuses what no guide trace showed
                bar.close()
                if spec.objective is None or len(asked) == 1:
                    raise
                skipped[name] = f"{name} skipped: {error}"
                continue
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
            summary["num_particles"] = particles
            summary["description"] = spec.description
            results[name] = summary
            del draws, chunks
    finally:
        forget_baselines()
    if not results:  # every row asked for refused the guide when drawn
        raise ConfigError(
            f"--estimators {','.join(asked)}: none can run on this pair: "
            + "; ".join(skipped.values())
        )

    zero_names = [n for n in names_in_order if n in zero_everywhere] if results else []
    notes = (
        _notes(pair.guide, x, names, num_particles)
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
            "num_particles": num_particles,
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


def _skipped_estimators(guide: Any, x: Tensor, names: list[str],
                        num_particles: int) -> dict[str, str]:  # fmt: skip
    """The estimators among ``names`` that cannot run on this guide, each with the note
    saying why: the score rows on a flow without an inverse (they need log q at a draw held
    fixed, as do ``stl`` and ``iwae-dreg``, which also need every site reparameterized),
    ``vimco`` on a guide without a site that is not reparameterized, or with K < 2. All of
    them refused: ConfigError."""
    reasons: dict[str, str] = {}
    blocker = score_function_blocker(guide, x)
    discrete = non_reparameterized_sites(guide, x)
    for name in names:
        spec = GRADIENT_ESTIMATORS[name]
        if blocker is not None and spec.score_function:
            reasons[name] = blocker
        elif blocker is not None and spec.guide_sites == "reparameterized" and name != "iwae":
            reasons[name] = f"{blocker}, and {name} evaluates log q at the draw with stopped params"
        elif spec.objective == "iwae" and discrete:
            reasons[name] = (
                f"guide site(s) {discrete} have no rsample, and Pyro's RenyiELBO weights their "
                "score term by alpha / (1 - alpha), 0 for the IWAE bound: their parameters get "
                "no gradient (vimco measures this guide)"
            )
        elif spec.guide_sites == "reparameterized" and discrete:
            reasons[name] = (
                f"guide site(s) {discrete} have no rsample, and {name} differentiates through "
                "the guide's draws (vimco or the score rows take such sites)"
            )
        elif spec.guide_sites == "score" and not discrete:
            reasons[name] = (
                "every guide site is reparameterized, so there is no score-function term for "
                "VIMCO's baselines (iwae-dreg and iwae measure this guide)"
            )
        elif spec.objective == "vimco" and num_particles < 2:
            reasons[name] = (
                f"--num-particles {num_particles}: VIMCO's baseline for each particle is "
                "formed from the others, so it needs K >= 2"
            )
    if blocker is not None and all(GRADIENT_ESTIMATORS[name].score_function for name in names):
        raise ConfigError(
            f"--estimators {','.join(names)}: every one takes the score function, and "
            f"{blocker}; add reparam, or train the guide with an IAF flow"
        )
    if reasons and len(reasons) == len(names):
        raise ConfigError(
            f"--estimators {','.join(names)}: none can run on this pair: "
            + "; ".join(f"{name}: {why}" for name, why in reasons.items())
        )
    return {name: f"{name} skipped: {why}" for name, why in reasons.items()}


def _notes(guide: Any, x: Tensor, names: list[str], num_particles: int) -> list[str]:
    """What a reader of the table must know: which rows take K particles, and, for a guide
    with sites without ``rsample`` (discrete ones), that ``reparam`` takes the score function
    there."""
    notes = []
    multi = [name for name in names if GRADIENT_ESTIMATORS[name].multi_sample]
    if multi:
        notes.append(
            f"{', '.join(multi)}: gradients of the IWAE bound with K = {num_particles} "
            "particles per point (--num-particles); the other rows draw one z per point"
        )
    discrete = non_reparameterized_sites(guide, x)
    if not discrete or "reparam" not in names:
        return notes
    return notes + [
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
    header = ("estimator", "K", "variance", "SNR", "enc. var", "dec. var", "enc. SNR",
              "dec. SNR", "ms/draw")  # fmt: skip
    rows = [header]
    number = number_cell
    for name, summary in result["estimators"].items():
        parts = summary.get("parts", {})
        rows.append(
            (
                name,
                str(summary.get("num_particles", 1)),
                number(summary["variance"]),
                number(summary["snr"]),
                number(parts.get("encoder", {}).get("variance")),
                number(parts.get("decoder", {}).get("variance")),
                number(parts.get("encoder", {}).get("snr")),
                number(parts.get("decoder", {}).get("snr")),
                f"{1000 * summary['seconds']:.2f}",
            )
        )
    lines = aligned_lines(rows)
    title = (
        f"gradient variance on {result['batch_size']} {result.get('split') or 'x'} points, "
        f"{result['num_draws']} draws, {result['num_parameters']} parameters"
    )
    notes = [f"note: {note}" for note in result.get("notes", [])]
    return "\n".join([title, *lines, *notes])


__all__ = [
    "DEFAULT_BASELINE_LR",
    "DEFAULT_NUM_PARTICLES",
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
