"""How estimates of log p(x) converge with the number of samples K, for each proposal.

For the first points of a split, every estimator of :data:`pyro_vae.infer.estimators.ESTIMATORS`
and every K, ``repeats`` independent estimates

    log p_K(x) = log (1/K) sum_k p(x, z_k) / r(z_k|x),   z_k ~ r,

are drawn per point. Their mean shows the bias (each is a stochastic lower bound whose mean
rises towards log p(x) with K), their spread the noise of one estimate. With the guide as
proposal the estimate is close after few samples; with the prior as proposal (the naive Monte
Carlo estimator) it can stay many nats low for any practical K, because almost all prior
draws explain x badly: that is why amortized importance sampling is used.

The estimator ``ais`` (annealed importance sampling, :mod:`pyro_vae.infer.ais`) sits beside
them at matched compute: for each K it runs the most AIS steps S whose density-and-gradient
evaluations per point (:func:`~pyro_vae.infer.ais.density_evaluations`: C chains of
1 + (S - 1) L evaluations, L leapfrog steps, and as many for the pilot run's chains) are at
most K (S = 1, plain importance sampling with the C chains, when none fits; :func:`ais_steps_for`).
Every row carries its ``compute``, the density evaluations per point (IS: K), and the
figure's x axis is that compute, so IS and AIS are compared at equal cost.

References:
    Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
    Wu, Burda, Salakhutdinov & Grosse (2017), On the Quantitative Analysis of Decoder-Based
        Generative Models.
    Neal (2001), Annealed Importance Sampling.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.analysis.bdmc import AIS_ESTIMATORS, ais_in_batches, check_ais_arguments
from pyro_vae.analysis.results import Result, figure_path
from pyro_vae.analysis.subjects import Subject, amortized, subject, world_for
from pyro_vae.infer.ais import (
    AIS_CHAINS,
    LEAPFROG_STEPS,
    STEP_SIZE,
    pilot_chains,
)
from pyro_vae.infer.compiled import CompiledLogWeights
from pyro_vae.infer.distributed import World
from pyro_vae.infer.estimators import (
    ESTIMATORS,
    EstimatorError,
    estimate_log_px_in_batches,
    evaluation_notes,
    evaluation_view,
    low_ess_warnings,
)
from pyro_vae.pairs import PairInfo, evaluation_mode
from pyro_vae.runs.checkpoints import BEST
from pyro_vae.runs.config import ConfigError
from pyro_vae.runs.files import atomic_write_bytes, json_bytes

__all__ = [
    "CONVERGENCE_COLUMNS",
    "Convergence",
    "ais_steps_for",
    "convergence",
    "convergence_study",
    "exact_log_marginal",
    "format_table",
    "save_convergence",
    "table_lines",
]

#: Columns of ``convergence.csv``, one row per estimator and K.
CONVERGENCE_COLUMNS = (
    "estimator",
    "num_samples",
    "estimate",
    "stderr",
    "ess",
    "elbo",
    "difference",
    "seconds",
    "compute",
    "ais_steps",
)
#: How the ``ais`` rows choose their steps (the JSON's ``ais["steps"]``).
AIS_STEPS_RULE = "per K, the most whose density evaluations per point fit in K"
#: Rows (point x repeat) per vectorized call, as ``evaluate``'s batch size; within a call the
#: samples are chunked so that K * rows * x_dim stays bounded.
ROWS_PER_CALL = 100
#: Seeds of the batches: cell c (estimator, K) of a study with ``seed`` draws its batch b
#: from ``seed * CELL_SEEDS + c * BATCH_SEEDS + b`` (room for 10^6 batches per cell).
BATCH_SEEDS = 1_000_000
CELL_SEEDS = 1_000_000_000


def exact_log_marginal(pair: Any, x: torch.Tensor) -> torch.Tensor | None:
    """The exact log p(x) per point when the pair (or its ``decoder``) has a closed form
    ``exact_log_marginal(x)``; None when it has none or raises ``NotImplementedError``."""
    for owner in (pair, getattr(pair, "decoder", None)):
        method = getattr(owner, "exact_log_marginal", None)
        if callable(method):
            try:
                with torch.no_grad():
                    return method(x)
            except NotImplementedError:
                return None
    return None


def ais_steps_for(compute: int, chains: int, leapfrog_steps: int) -> int:
    """The most AIS steps S >= 1 whose density evaluations per point,
    :func:`~pyro_vae.infer.ais.density_evaluations` (``chains`` chains and the pilot's of
    1 + (S - 1) ``leapfrog_steps`` each), are at most ``compute``; 1 when none fits (one step
    is importance sampling with the chains, ``chains`` evaluations)."""
    runs = chains + pilot_chains(chains)
    return 1 + max(0, (compute // runs - 1) // leapfrog_steps)


def _repeated_estimates(
    pair: Any,
    info: PairInfo,
    x: torch.Tensor,
    num_samples: int,
    repeats: int,
    estimator: str,
    y: torch.Tensor | None = None,
    trace_fn: Any = None,
    batch_seed: int | None = None,
    ranks: Any = None,
) -> dict[str, torch.Tensor]:
    """``repeats`` independent estimates for each point of ``x``: tensors of shape (R, N)
    (``y``: the labels of a pair that needs them; ``trace_fn``: a compiled weight function,
    :class:`pyro_vae.infer.compiled.CompiledLogWeights`; ``batch_seed`` and ``ranks``: as in
    :func:`~pyro_vae.infer.estimators.estimate_log_px_in_batches`)."""
    repeated_y = None if y is None else y.repeat(repeats, *([1] * (y.dim() - 1)))
    out = estimate_log_px_in_batches(
        pair,
        x.repeat(repeats, 1),
        num_samples,
        batch_size=ROWS_PER_CALL,
        max_plate_nesting=info.max_plate_nesting,
        vectorize=getattr(pair, "vectorizable", info.vectorizable),
        estimator=estimator,
        y=repeated_y,
        trace_fn=trace_fn,
        batch_seed=batch_seed,
        ranks=ranks,
    )
    return {key: value.reshape(repeats, x.shape[0]) for key, value in out.items()}


def _reference(
    results: list[dict[str, Any]], exact: torch.Tensor | None, largest_k: int
) -> tuple[float | None, str | None]:
    """The exact mean log p(x) if known, else the ``is`` estimate at the largest K."""
    if exact is not None:
        return float(exact.mean()), "exact"
    for row in results:
        if row["estimator"] == "is" and row["num_samples"] == largest_k:
            return row["estimate"], "is"
    return None, None


def _check_arguments(
    ks: Sequence[int], estimators: Sequence[str], num_points: int, repeats: int
) -> tuple[list[int], list[str]]:
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ConfigError(f"--ks must be sample counts >= 1, got {list(ks)}")
    known = (*ESTIMATORS, *AIS_ESTIMATORS)
    unknown = [name for name in estimators if name not in known]
    if unknown or not estimators:
        raise EstimatorError(
            f"--estimators {','.join(estimators)!r}: unknown {unknown}; choose from "
            f"{', '.join(known)}"
        )
    if num_points < 1:
        raise ConfigError(f"--points must be >= 1, got {num_points}")
    if repeats < 2:
        raise ConfigError(
            f"--repeats must be >= 2, got {repeats}: the spread of one estimate needs two"
        )
    return ks, list(dict.fromkeys(estimators))


class Convergence(Result):
    """What :func:`convergence` found: the JSON keys (``results``, one row per estimator and
    K; ``reference``, ``reference_kind``, ``ks``, ``estimators``, ...) as a mapping, a table
    in ``summary()``, the figure by ``plot(path)``."""

    kind = "convergence"

    def summary(self) -> str:
        return "\n".join(table_lines(self))

    def plot(self, path: str | os.PathLike) -> Path:
        """Draw the estimates against K (``convergence.png`` in a folder ``path``, or the file
        ``path``); return the path written."""
        from pyro_vae.analysis.plots import convergence_figure  # matplotlib only when drawing

        return convergence_figure(self, figure_path(path, "convergence.png"))


def convergence(
    source: Any,
    x: torch.Tensor | None = None,
    *,
    labels: Any = None,
    guide: Any = None,
    ks: Sequence[int] = (1, 10, 100, 1000, 5000),
    estimators: Sequence[str] = ("is", "prior"),
    num_points: int = 10,
    repeats: int = 10,
    split: str = "test",
    checkpoint: str = BEST,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
    save: bool | None = None,
    seed: int = 0,
    compile: bool = False,
    ais_chains: int = AIS_CHAINS,
    leapfrog_steps: int = LEAPFROG_STEPS,
    step_size: float = STEP_SIZE,
    ais_proposal: str = "guide",
) -> Convergence:
    """Estimates of log p(x) against K for each estimator, on the first ``num_points`` points.

    log p_K(x) = log (1/K) sum_k w_k,  w_k = p(x, z_k) / r(z_k|x),  z_k ~ r  (r: q or p(z))

    ``source`` is what you hold: a pair (an object with ``model`` and ``guide``; a model with
    ``guide=``; a ``(model, guide)`` tuple) with its data ``x`` (and ``labels`` for a pair
    that takes them), or a :class:`~pyro_vae.runs.reopen.Run` or a run directory's path, whose
    split ``split`` is used when ``x`` is None (``checkpoint``, ``device``, ``data_dir`` and
    ``pair`` say how to reopen a path).

    Returns a :class:`Convergence` whose ``results`` hold one row per (estimator, K):
    ``estimate`` (mean over points of the mean over repeats), ``stderr`` (mean over points of
    the standard deviation over repeats: the noise of one estimate), ``ess`` (mean effective
    sample size), ``elbo`` (mean log weight), ``seconds``, and ``difference`` = estimate -
    ``reference``, and ``compute``: density evaluations per point (K for importance
    sampling). The reference is the exact log p(x) (mean over the points) when the pair
    has a closed form (:func:`exact_log_marginal`), else the ``is`` estimate at the largest K
    (``reference_kind`` says which; None without either). With ``save`` (the default for a
    path, or when ``out`` is given), writes ``convergence.json``, ``convergence.csv`` and
    ``convergence.png`` into ``out`` (default: the run directory). Densities are unscaled and
    global latents fixed as in :func:`pyro_vae.analysis.evaluate.evaluate` (``scaled_sites``,
    ``conditioned_on``); ``warnings`` lists the cells whose mean ESS is below 1% of K or 10.

    Each batch of each cell draws from its own seed (derived from ``seed``, the cell and the
    batch), so the same seed gives the same numbers for a pair in memory and for its run
    directory, and under torchrun the batches are shared among the ranks with the results of
    one process; rank 0 alone writes and returns the full summary to print.

    ``"ais"`` in ``estimators`` adds annealed importance sampling at matched compute: for
    each K, AIS from ``ais_proposal`` with ``ais_chains`` chains, HMC transitions of
    ``leapfrog_steps`` steps (sizes tuned from ``step_size`` by a pilot run) and the most
    steps whose density-and-gradient evaluations per point fit in K (:func:`ais_steps_for`;
    the row's ``ais_steps``, and its ``compute``, pilot included, at most K unless one step
    with the chains already exceeds it). Its ``ess`` is that of the chains' weights, its
    ``elbo`` the mean AIS log weight; the JSON's ``ais`` holds the settings.

    References:
        Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
    """
    ks, estimators = _check_arguments(ks, estimators, num_points, repeats)
    ais = None
    if any(name in AIS_ESTIMATORS for name in estimators):
        check_ais_arguments(1, ais_chains, leapfrog_steps, step_size, ais_proposal)
        ais = dict(chains=ais_chains, leapfrog_steps=leapfrog_steps, step_size=step_size,
                   proposal=ais_proposal)  # fmt: skip
    ranks, device = world_for(source, device)
    held = subject(source, x, labels=labels, guide=guide, split=split, checkpoint=checkpoint,
                   device=device, data_dir=data_dir, pair=pair).first(num_points)  # fmt: skip
    held = amortized(held, "convergence")
    if save is None:
        save = isinstance(source, str | os.PathLike) or out is not None
    folder = Path(out) if out is not None else None if held.run is None else held.run.path
    if save and folder is None:
        raise ConfigError(
            "save=True writes convergence.json, .csv and .png into a run directory; this pair "
            "has none. Pass out=FOLDER to write them there, or use the result "
            "(result.to_dict(), result.plot(path))"
        )
    if progress is None:
        progress = sys.stderr.isatty()
    run_dir = None
    if held.run is not None:
        run_dir = str(source) if isinstance(source, str | os.PathLike) else str(held.run.path)
    result = _convergence(held, run_dir, ks, estimators, repeats, seed,
                          progress and ranks.is_main, compile, ranks, ais)  # fmt: skip
    if not ranks.is_main:  # rank 0 alone prints and writes
        return result
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if save:
        save_convergence(result, folder)
    return result


def _convergence(held: Subject, run_dir: str | None, ks: list[int], estimators: list[str],
                 repeats: int, seed: int, progress: bool, compile: bool,
                 ranks: World, ais: dict[str, Any] | None = None) -> Convergence:  # fmt: skip
    """The study on ``held``'s points (see :func:`convergence`)."""
    x, y = held.x, held.y
    exact = exact_log_marginal(held.pair, x)
    compiled = None
    if compile:  # one graph per estimator, K chunk and batch shape; the same numbers
        compiled = CompiledLogWeights(on_note=lambda line: print(line, file=sys.stderr))
    pyro.set_rng_seed(seed)
    started = time.perf_counter()
    cells = [(estimator, k) for estimator in estimators for k in ks]
    results = []
    warnings: list[str] = []
    with evaluation_mode(held.pair):
        view = evaluation_view(held.pair, held.info, x[:2], None if y is None else y[:2])
    for index, (estimator, k) in enumerate(
        tqdm(cells, desc="convergence", disable=not progress, unit="cell")
    ):
        cell_started = time.perf_counter()
        cell_seed = seed * CELL_SEEDS + index * BATCH_SEEDS
        if estimator in AIS_ESTIMATORS:
            row = _ais_cell(held, k, repeats, cell_seed, compile, ranks, ais or {})
            warnings += low_ess_warnings(row["ess"], ais["chains"], f"ais, K={k}")
            results.append({**row, "seconds": time.perf_counter() - cell_started})
            continue
        out_k = _repeated_estimates(view, held.info, x, k, repeats, estimator, y, compiled,
                                    batch_seed=seed * CELL_SEEDS + index * BATCH_SEEDS,
                                    ranks=ranks)  # fmt: skip
        warnings += low_ess_warnings(float(out_k["ess"].mean()), k, f"{estimator}, K={k}")
        results.append(
            {
                "estimator": estimator,
                "num_samples": k,
                "estimate": float(out_k["log_px"].mean()),
                "stderr": float(out_k["log_px"].std(dim=0, unbiased=True).mean()),
                "ess": float(out_k["ess"].mean()),
                "elbo": float(out_k["elbo"].mean()),
                "seconds": time.perf_counter() - cell_started,
                "compute": k,
                "ais_steps": None,
            }
        )
    reference, reference_kind = _reference(results, exact, ks[-1])
    for row in results:
        row["difference"] = None if reference is None else row["estimate"] - reference
    context = held.context
    return Convergence(
        {
            "run_dir": run_dir,
            "split": context["split"],
            "checkpoint": context["checkpoint"],
            "epoch": context["epoch"],
            "dataset": context["dataset"],
            "num_points": x.shape[0],
            "repeats": repeats,
            "ks": ks,
            "estimators": estimators,
            "reference": reference,
            "reference_kind": reference_kind,
            "ais": None if ais is None else {**ais, "steps": AIS_STEPS_RULE},
            "seed": seed,
            "device": context["device"],
            "ranks": ranks.size,
            "seconds": time.perf_counter() - started,
            "results": results,
            **evaluation_notes(view),
            "warnings": warnings,
        }
    )


def _ais_cell(held: Subject, k: int, repeats: int, seed: int, compile: bool, ranks: World,
              ais: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """One AIS row of the study: ``repeats`` AIS estimates per point of ``held`` with the
    most steps whose compute fits in ``k`` (:func:`ais_steps_for`), batch b seeded by
    ``seed + b``."""
    steps = ais_steps_for(k, ais["chains"], ais["leapfrog_steps"])
    n = held.x.shape[0]

    def repeated(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.repeat(repeats, *[1] * (tensor.dim() - 1))

    points = Subject(held.pair, held.info, repeated(held.x), repeated(held.labels),
                     repeated(held.classes), held.run, held.context)  # fmt: skip
    _, per_point, notes = ais_in_batches(points, batch_size=ROWS_PER_CALL, seed=seed,
                                         steps=steps, compile=compile, progress=False,
                                         ranks=ranks, **ais)  # fmt: skip
    log_px = per_point["log_px"].reshape(repeats, n)
    return {
        "estimator": "ais",
        "num_samples": k,
        "estimate": float(log_px.mean()),
        "stderr": float(log_px.std(dim=0, unbiased=True).mean()),
        "ess": float(per_point["ess"].mean()),
        "elbo": float(per_point["elbo"].mean()),
        "compute": notes["density_evaluations_per_point"],
        "ais_steps": steps,
        "acceptance": notes["acceptance_mean"],
    }


def convergence_study(
    run_dir: str | os.PathLike, *, save: bool = True, **options: Any
) -> Convergence:
    """:func:`convergence` of a run directory, under its old name: writes the files unless
    ``save=False`` (the same keyword arguments, the same JSON keys and files)."""
    return convergence(run_dir, save=save, **options)


def save_convergence(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``convergence.json``, ``convergence.csv`` and ``convergence.png`` into ``out``."""
    from pyro_vae.analysis.plots import convergence_figure  # matplotlib only when saving

    out.mkdir(parents=True, exist_ok=True)
    paths = {suffix: out / f"convergence.{suffix}" for suffix in ("json", "csv", "png")}
    atomic_write_bytes(paths["json"], json_bytes(summary))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CONVERGENCE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in summary["results"]:
        writer.writerow({key: row.get(key) for key in CONVERGENCE_COLUMNS})
    atomic_write_bytes(paths["csv"], buffer.getvalue().encode())
    convergence_figure(summary, paths["png"])
    return paths


def table_lines(summary: dict[str, Any]) -> list[str]:
    """A convergence summary as lines of a table, one per estimator and K."""
    reference = summary["reference"]
    kind = {"exact": "exact log p(x)", "is": f"is, K={max(summary['ks'])}"}.get(
        summary["reference_kind"], "none"
    )
    ref_text = "none" if reference is None else f"{reference:.3f} ({kind})"
    where = summary["split"] or "x"
    lines = [
        f"{where}: {summary['num_points']} points x {summary['repeats']} repeats; "
        f"reference {ref_text}",
        f"  {'estimator':10s} {'K':>7s} {'compute':>8s} {'estimate':>10s} {'stderr':>8s} "
        f"{'ess':>9s} {'minus ref':>10s} {'seconds':>8s}",
    ]
    for row in summary["results"]:
        difference = "-" if row["difference"] is None else f"{row['difference']:.3f}"
        lines.append(
            f"  {row['estimator']:10s} {row['num_samples']:7d} "
            f"{row.get('compute', row['num_samples']):8d} {row['estimate']:10.3f} "
            f"{row['stderr']:8.3f} {row['ess']:9.1f} {difference:>10s} {row['seconds']:8.2f}"
        )
    return lines


def format_table(summary: dict[str, Any], write: Callable[[str], Any] = print) -> None:
    """Print a convergence summary as a table, one line per estimator and K (the lines of
    :func:`table_lines`, each passed to ``write``)."""
    for line in table_lines(summary):
        write(line)
