"""Annealed importance sampling of log p(x) for a run or a pair, and its BDMC check.

:func:`ais_in_batches` is what ``evaluate --estimator ais`` runs: AIS from the guide (or the
prior) to the posterior for every point, batch by batch, with a progress bar
(:mod:`pyro_vae.infer.ais`). :func:`bdmc` is bidirectional Monte Carlo: data (x, z) simulated
from the model, then per point the forward AIS estimate, a stochastic lower bound of
log p(x), and the reverse AIS estimate started at the exact z, a stochastic upper bound. The
gap between them bounds how far AIS with these settings is from log p(x) on data like the
model's own (Grosse et al. 2015; Wu et al. 2017).

References:
    Neal (2001), Annealed Importance Sampling.
    Grosse, Ghahramani & Adams (2015), Sandwiching the marginal likelihood using
        bidirectional Monte Carlo.
    Wu, Burda, Salakhutdinov & Grosse (2017), On the Quantitative Analysis of Decoder-Based
        Generative Models.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.analysis.results import Result, figure_path
from pyro_vae.analysis.subjects import Subject, amortized, subject, world_for
from pyro_vae.infer.ais import (
    AIS_CHAINS,
    AIS_STEPS,
    LEAPFROG_STEPS,
    PROPOSALS,
    STEP_SIZE,
    ais_log_px,
    bdmc_log_px,
    density_evaluations,
    make_runner,
    simulate,
    steps_per_run,
)
from pyro_vae.infer.distributed import World
from pyro_vae.infer.estimators import (
    ESTIMATORS,
    EstimatorError,
    evaluation_notes,
    evaluation_view,
)
from pyro_vae.pairs import PairError, evaluation_mode
from pyro_vae.runs.checkpoints import BEST
from pyro_vae.runs.config import ConfigError
from pyro_vae.runs.files import atomic_write_bytes, json_bytes

#: The ``--estimator`` values that anneal (beside :data:`~pyro_vae.infer.estimators.ESTIMATORS`).
AIS_ESTIMATORS = ("ais",)


def check_log_px_estimator(name: str) -> None:
    """An :class:`EstimatorError` naming ``--estimator`` unless ``name`` is an importance
    sampling estimator or AIS."""
    if name not in ESTIMATORS and name not in AIS_ESTIMATORS:
        choices = ", ".join([*ESTIMATORS, *AIS_ESTIMATORS])
        raise EstimatorError(f"--estimator {name!r} is unknown; choose from {choices}")


def check_ais_arguments(steps: Any, chains: Any, leapfrog_steps: Any, step_size: Any,
                        proposal: Any) -> None:  # fmt: skip
    """A :class:`ConfigError` naming the flag of the first AIS setting that cannot be."""
    for flag, value, low in (("--ais-steps", steps, 1), ("--ais-chains", chains, 1),
                             ("--leapfrog-steps", leapfrog_steps, 1)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{flag} must be an integer >= {low}, got {value!r}")
    if (
        isinstance(step_size, bool)
        or not isinstance(step_size, int | float)
        or not (0 < step_size < math.inf)
    ):
        raise ConfigError(
            f"--step-size must be a number > 0 (the leapfrog step), got {step_size!r}"
        )
    if proposal not in PROPOSALS:
        raise ConfigError(
            f"--ais-proposal {proposal!r}: choose from {', '.join(PROPOSALS)} (where the chains "
            "start: the guide q(z|x) or the prior p(z))"
        )


def ais_in_batches(held: Subject, *, batch_size: int, seed: int, steps: int, chains: int,
                   leapfrog_steps: int, step_size: float, proposal: str, compile: bool,
                   progress: bool, ranks: World | None = None,
                   ) -> tuple[Any, dict[str, torch.Tensor], dict[str, Any]]:  # fmt: skip
    """AIS of log p(x) on every point of ``held``, ``batch_size`` points at a time, batch i
    seeded by ``seed + i`` (sharded among ``ranks`` as importance sampling is). Returns the
    evaluation view, the per-point tensors (``log_px``, ``log_px_stderr``, ``elbo``: the
    mean log weight, ``ess`` of the chains' weights, ``acceptance``) and the ``ais`` notes
    of the summary (settings, compute per point, how the densities ran)."""
    held = amortized(held, "AIS")
    pair, info, x, y = held.pair, held.info, held.x, held.y
    notes: list[str] = []
    runner = make_runner("compiled" if compile else "traced", notes.append)
    starts = list(range(0, x.shape[0], batch_size))
    mine = starts if ranks is None or not ranks.distributed else starts[ranks.rank :: ranks.size]
    bar = tqdm(total=len(mine) * steps_per_run(steps), desc="ais", unit="step",
               disable=not progress)  # fmt: skip
    parts: dict[str, list[torch.Tensor]] = {}
    with evaluation_mode(pair), pyro.validation_enabled(False):
        view = evaluation_view(pair, info, x[:2], None if y is None else y[:2])
        for start in mine:
            torch.manual_seed(seed + start // batch_size)
            out = ais_log_px(view, x[start : start + batch_size], steps=steps, chains=chains,
                             leapfrog_steps=leapfrog_steps, step_size=step_size,
                             proposal=proposal, max_plate_nesting=info.max_plate_nesting,
                             data_plate=info.data_plate,
                             y=None if y is None else y[start : start + batch_size],
                             runner=runner, on_step=bar.update)  # fmt: skip
            for key in ("log_px", "log_px_stderr", "elbo", "ess", "acceptance"):
                parts.setdefault(key, []).append(out[key].cpu())
    bar.close()
    if ranks is not None and ranks.distributed:
        gathered = ranks.gather(parts, "gathering the AIS estimates")
        parts = {key: [gathered[i % ranks.size][key][i // ranks.size]
                       for i in range(len(starts))] for key in parts}  # fmt: skip
    per_point = {key: torch.cat(values) for key, values in parts.items()}
    ais = {
        "steps": steps,
        "chains": chains,
        "leapfrog_steps": leapfrog_steps,
        "step_size": step_size,
        "proposal": proposal,
        "schedule": "sigmoid (Grosse et al. 2015, delta 4)",
        "step_size_adaptation": "per point, from a pilot run of a quarter of the chains "
        "toward acceptance 0.65; the estimating chains use its schedule",
        "density_evaluations_per_point": density_evaluations(steps, leapfrog_steps, chains),
        "acceptance_mean": float(per_point["acceptance"].mean()),
        "graph": {
            "graphs": len(runner.graphs),
            "compiled": compile,
            "fallback": runner.fallback_reason,
        },  # fmt: skip
        "notes": notes,
    }
    for line in notes if compile or runner.fallback_reason else []:
        print(line, file=sys.stderr)
    return view, per_point, ais


class BDMC(Result):
    """What :func:`bdmc` found: the means ``bdmc_lower``, ``bdmc_upper`` and ``bdmc_gap``
    (nats) with the settings, in ``per_point`` the tensors ``lower``, ``upper``, ``gap``,
    ``lower_stderr`` and ``upper_stderr`` of every simulated point, and in ``x`` the points."""

    kind = "bdmc"

    def __init__(self, summary: dict[str, Any], per_point: dict[str, torch.Tensor],
                 x: torch.Tensor | None = None):  # fmt: skip
        super().__init__(summary)
        self.per_point = per_point
        self.x = x

    def summary(self) -> str:
        ais = self["ais"]
        lines = [
            f"BDMC on {self['num_points']} points simulated from the model: AIS with "
            f"{ais['steps']} steps, {ais['chains']} chains, {ais['leapfrog_steps']} leapfrog "
            f"steps, from the {ais['proposal']}",
            f"  lower (forward AIS)  {self['bdmc_lower']:.3f} nats",
            f"  upper (reverse AIS)  {self['bdmc_upper']:.3f} nats",
            f"  gap                  {self['bdmc_gap']:.3f} nats (max over points "
            f"{self['bdmc_gap_max']:.3f}; {self['seconds']:.1f}s)",
        ]
        if self.get("conditioned_on"):
            lines.append("  given the global site(s) held at the guide's mean: "
                         + ", ".join(self["conditioned_on"]["sites"]))  # fmt: skip
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike) -> Path:
        """Lower and upper bound per simulated point (``bdmc.png`` in a folder ``path``, or
        the file ``path``); returns the path written."""
        from pyro_vae.analysis.plots import bdmc_figure  # matplotlib only when drawing

        return bdmc_figure(self, self.per_point, figure_path(path, "bdmc.png"))


def bdmc(
    source: Any,
    x: torch.Tensor | None = None,
    *,
    labels: Any = None,
    guide: Any = None,
    num_points: int = 100,
    ais_steps: int = AIS_STEPS,
    ais_chains: int = AIS_CHAINS,
    leapfrog_steps: int = LEAPFROG_STEPS,
    step_size: float = STEP_SIZE,
    proposal: str = "guide",
    batch_size: int = 100,
    seed: int = 0,
    split: str = "test",
    checkpoint: str = BEST,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
    save: bool | None = None,
    compile: bool = False,
) -> BDMC:
    """Bidirectional Monte Carlo: ``num_points`` points (x, z) simulated from the model, and
    per point the forward AIS estimate of log p(x) (``lower``) and the reverse AIS estimate
    from the exact z (``upper``), so that in expectation lower <= log p(x) <= upper.

    ``source`` is what you hold: a pair with data ``x`` (whose shape and labels the simulated
    points take), or a run (a :class:`~pyro_vae.runs.reopen.Run` or a run directory's path,
    its split ``split`` giving the shape). The AIS settings are those of ``evaluate
    --estimator ais`` (:mod:`pyro_vae.infer.ais`). Returns a :class:`BDMC`; with ``save``
    (the default for a path, or when ``out`` is given) writes ``bdmc.json`` and ``bdmc.png``
    into ``out`` (default: the run directory). The model's global latents, if any, are held
    at the guide's mean (``conditioned_on``), and the data are simulated given them.

    References:
        Grosse, Ghahramani & Adams (2015), Sandwiching the marginal likelihood using
            bidirectional Monte Carlo.
    """
    check_ais_arguments(ais_steps, ais_chains, leapfrog_steps, step_size, proposal)
    for flag, value in (("--num-points", num_points), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{flag} must be an integer >= 1, got {value!r}")
    ranks, device = world_for(source, device)
    held = subject(source, x, labels=labels, guide=guide, split=split, checkpoint=checkpoint,
                   device=device, data_dir=data_dir, pair=pair)  # fmt: skip
    held = amortized(held, "bdmc")
    if len(held.info.observed_sites) != 1:
        raise PairError(
            f"bdmc simulates x from the model's one observed site; this model observes "
            f"{', '.join(map(repr, held.info.observed_sites))}"
        )
    if save is None:
        save = isinstance(source, str | os.PathLike) or out is not None
    folder = Path(out) if out is not None else None if held.run is None else held.run.path
    if save and folder is None:
        raise ConfigError("save=True writes bdmc.json and bdmc.png into a run directory; this "
                          "pair has none. Pass out=FOLDER, or use the result")  # fmt: skip
    if progress is None:
        progress = sys.stderr.isatty()
    settings = dict(steps=ais_steps, chains=ais_chains, leapfrog_steps=leapfrog_steps,
                    step_size=step_size, proposal=proposal)  # fmt: skip
    result = _bdmc(held, num_points, batch_size, seed, settings, compile,
                   progress and ranks.is_main)  # fmt: skip
    if save and ranks.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "bdmc.json", json_bytes(result))
        result.plot(folder / "bdmc.png")
    return result


def _bdmc(held: Subject, num_points: int, batch_size: int, seed: int, settings: dict[str, Any],
          compile: bool, progress: bool) -> BDMC:  # fmt: skip
    pair, info = held.pair, held.info
    rows = torch.arange(num_points, device=held.x.device) % held.x.shape[0]
    x_all, y_all = held.x[rows], None if held.y is None else held.y[rows]
    notes: list[str] = []
    runner = make_runner("compiled" if compile else "traced", notes.append)
    bar = tqdm(total=-(-num_points // batch_size) * 2 * steps_per_run(settings["steps"]),
               desc="bdmc", unit="step", disable=not progress)  # fmt: skip
    pyro.set_rng_seed(seed)
    started = time.perf_counter()
    parts: dict[str, list[torch.Tensor]] = {}
    simulated = []
    with evaluation_mode(pair), pyro.validation_enabled(False):
        view = evaluation_view(pair, info, x_all[:2], None if y_all is None else y_all[:2])
        for start in range(0, num_points, batch_size):
            torch.manual_seed(seed + start // batch_size)
            y = None if y_all is None else y_all[start : start + batch_size]
            x_sim, z = simulate(view.prior_model(), x_all[start : start + batch_size],
                                info.observed_sites[0], y)  # fmt: skip
            simulated.append(x_sim)
            out = bdmc_log_px(view, x_sim, z, max_plate_nesting=info.max_plate_nesting,
                              data_plate=info.data_plate, y=y, runner=runner,
                              on_step=bar.update, **settings)  # fmt: skip
            for key, values in out.items():
                parts.setdefault(key, []).append(values.cpu())
    bar.close()
    for line in notes if compile or runner.fallback_reason else []:
        print(line, file=sys.stderr)
    per_point = {key: torch.cat(values) for key, values in parts.items()}
    lower, upper, gap = per_point["lower"], per_point["upper"], per_point["gap"]
    summary = {
        "bdmc_lower": float(lower.mean()),
        "bdmc_upper": float(upper.mean()),
        "bdmc_gap": float(gap.mean()),
        "bdmc_gap_max": float(gap.max()),
        "bdmc_lower_stderr": _mean_stderr(per_point["lower_stderr"], lower),
        "bdmc_upper_stderr": _mean_stderr(per_point["upper_stderr"], upper),
        "num_points": num_points,
        "ais": {
            **settings,
            "schedule": "sigmoid (Grosse et al. 2015, delta 4)",
            "density_evaluations_per_point": 2
            * density_evaluations(
                settings["steps"], settings["leapfrog_steps"], settings["chains"]
            ),
            "acceptance_mean": float(per_point["acceptance"].mean()),
            "graph": {
                "graphs": len(runner.graphs),
                "compiled": compile,
                "fallback": runner.fallback_reason,
            },  # fmt: skip
        },
        **held.context,
        "seconds": time.perf_counter() - started,
        "seed": seed,
        **evaluation_notes(view),
        "per_point": {key: per_point[key] for key in ("lower", "upper", "gap")},
    }
    return BDMC(summary, per_point, torch.cat(simulated))


def _mean_stderr(stderrs: torch.Tensor, values: torch.Tensor) -> float:
    """The standard error of a mean over points of per-point estimates with these errors:
    sqrt(sum se_i^2) / N (the points' own spread is what the model does, not noise)."""
    if not torch.isfinite(stderrs).all():
        return float("nan")
    return float(stderrs.square().sum().sqrt() / values.shape[0])


__all__ = ["AIS_ESTIMATORS", "BDMC", "ais_in_batches", "bdmc", "check_ais_arguments",
           "check_log_px_estimator"]  # fmt: skip
