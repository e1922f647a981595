"""The front of a diagnosis: :func:`diagnose` on what a user holds, and its printable result.

The points a user selects (:func:`select_indices`) of a pair and its data, or of a run's
split, go through :func:`~pyro_vae.analysis.diagnose.batch.diagnose_pair`; a
:class:`PosteriorDiagnosis` holds what it found and prints, plots and saves itself.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pyro_vae.analysis.diagnose.batch import _check_settings, diagnose_pair
from pyro_vae.analysis.diagnose.errors import DiagnoseError
from pyro_vae.analysis.diagnose.report import FIGURES, format_summary, write_figures, write_outputs
from pyro_vae.analysis.evaluate import refuse_conditional_pair
from pyro_vae.analysis.results import Result
from pyro_vae.analysis.subjects import Subject, amortized, subject, world_for
from pyro_vae.infer.distributed import World
from pyro_vae.runs.checkpoints import BEST
from pyro_vae.runs.config import ConfigError
from pyro_vae.runs.files import atomic_write_bytes, json_bytes, jsonable

#: How many points of the split ``diagnose`` takes when neither points nor indices is given.
DEFAULT_POINTS = 20
#: Default folder for the outputs, inside the run directory.
DIAGNOSE_DIR = "diagnose"


def select_indices(num_available: int, split: str | None, points: int | None,
                   indices: Sequence[int] | None) -> list[int]:  # fmt: skip
    """The indices into the split (or, for ``split=None``, the rows of ``x``) that
    ``--points`` or ``--indices`` select, checked."""
    where = f"the {split} split" if split is not None else "x"
    if points is not None and indices is not None:
        raise DiagnoseError("give --points or --indices, not both")
    if indices is not None:
        indices = [int(i) for i in indices]
        if not indices:
            raise DiagnoseError("--indices is empty; give comma-separated indices like 0,5,9")
        bad = [i for i in indices if not 0 <= i < num_available]
        if bad:
            raise DiagnoseError(
                f"--indices {','.join(map(str, bad))} out of range: {where} has "
                f"{num_available} points (indices 0 to {num_available - 1})"
            )
        if len(set(indices)) != len(indices):
            raise DiagnoseError(f"--indices repeats an index: {indices}")
        return indices
    if points is None:
        return list(range(min(DEFAULT_POINTS, num_available)))
    if not 1 <= points <= num_available:
        raise DiagnoseError(
            f"--points {points}: must be between 1 and {num_available}, the size of {where}"
        )
    return list(range(points))


class PosteriorDiagnosis(Result):
    """What :func:`diagnose` found: the JSON summary as dict items (``result["khat"]``,
    ``result["amortization_gap"]``, ``result["nuts"]``, ...), and the draws as ArviZ
    InferenceData: ``guide`` (q(z|x)) and ``nuts`` (the NUTS reference, or None).

    ``summary()`` reads it in a few lines, ``to_dict()`` is the JSON ``pyro-vae diagnose
    --json`` prints, ``to_inference_data()`` the draws for ArviZ, ``plot(folder)`` the
    figures and ``save(folder)`` every file the command line writes."""

    kind = "diagnosis"

    def __init__(self, summary: dict[str, Any], guide: Any, nuts: Any = None):
        super().__init__(summary)
        self.guide = guide
        self.nuts = nuts

    def summary(self) -> str:
        return format_summary(self)

    def to_inference_data(self, which: str = "guide") -> Any:
        """The draws as ``arviz.InferenceData``: ``"guide"`` the S draws from q(z|x) (one
        chain), ``"nuts"`` the NUTS reference p(z|x) (its chains, ``sample_stats.diverging``).

        Group ``posterior``, one variable per latent site with dims ``chain, draw, obs_id,
        <latent dim>`` (``latent_dim`` for a single site, else ``<site>_dim``); ``obs_id``
        are the diagnosed points' indices. Both have the same coordinates, so ArviZ compares
        them directly: ``az.plot_forest([d.to_inference_data(), d.to_inference_data("nuts")],
        model_names=["q(z|x)", "NUTS"])``, ``az.summary(d.to_inference_data("nuts"))``."""
        if which == "guide":
            return self.guide
        if which == "nuts":
            if self.nuts is None:
                raise DiagnoseError(
                    "this diagnosis has no NUTS reference; run diagnose(..., nuts=True)"
                )
            return self.nuts
        raise ValueError(f"to_inference_data({which!r}): give 'guide' or 'nuts'")

    def plot(self, path: str | os.PathLike) -> list[Path]:
        """Draw the figures into the folder ``path`` (made if missing) and return their paths:
        ``khat.png`` (k-hat per point), ``kl_per_dim.png`` (KL to the prior per dimension,
        where it is known), ``forest.png`` (q against NUTS, if run, for a few points and
        dims) and ``pair.png`` (the worst point's first dims, with two dims or more)."""
        folder = Path(path)
        if folder.suffix.lower() == ".png":
            raise DiagnoseError(
                f"plot({str(path)!r}): a diagnosis draws several figures "
                f"({', '.join(FIGURES)}); give a folder"
            )
        folder.mkdir(parents=True, exist_ok=True)
        return [folder / name for name in write_figures(self, self, folder)]

    def save(self, path: str | os.PathLike) -> list[Path]:
        """Write every file the command line writes into the folder ``path``:
        ``guide.nc`` (and ``nuts.nc``) as ArviZ netcdf, the figures of :meth:`plot`, and
        ``diagnose.json`` last; records ``out``, ``files`` and ``seconds["outputs"]`` in the
        summary as well. Returns the paths written."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self["out"] = str(out)
        self["files"] = write_outputs(self, self, out)
        self["seconds"]["outputs"] = time.perf_counter() - started
        atomic_write_bytes(out / "diagnose.json", json_bytes(self))
        return [out / name for name in self["files"]]


def diagnose(
    source: Any,
    x: torch.Tensor | None = None,
    *,
    labels: Any = None,
    guide: Any = None,
    points: int | None = None,
    indices: Sequence[int] | None = None,
    num_samples: int = 1000,
    nuts: bool = False,
    split: str = "test",
    out: str | os.PathLike | None = None,
    checkpoint: str = BEST,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
    nuts_chains: int = 4,
    nuts_warmup: int = 200,
    nuts_samples: int = 200,
    gap_steps: int = 200,
    gap_lr: float = 1e-2,
    gap_particles: int = 8,
    progress: bool | None = None,
    save: bool | None = None,
    seed: int = 0,
    compile: bool = False,
) -> PosteriorDiagnosis:
    """Diagnose an amortized posterior q(z|x) at selected points: can it be trusted there?

    ``source`` is what you hold: a pair (an object with ``model`` and ``guide``; or a model
    with ``guide=``, or a ``(model, guide)`` tuple) with its data ``x``; or a
    :class:`~pyro_vae.runs.reopen.Run`, or a run directory's path, whose split ``split`` is used
    when ``x`` is None (``checkpoint``, ``device``, ``data_dir`` and ``pair`` say how to
    reopen a path). ``indices`` selects rows of ``x`` (or points of the split); else the
    first ``points`` (default 20, or all of them if fewer); not both. A pair that needs
    labels on every call (``model(x, y)``) is refused.

    Measured (see :func:`diagnose_pair`): PSIS k-hat per point, log p(x) ~= log (1/S)
    sum_s p(x, z_s)/q(z_s|x) and the ELBO from S = ``num_samples`` draws, the amortization
    and approximation gaps (q* fitted by ``gap_steps`` Adam steps), active units, KL per
    dimension, and with ``nuts`` a NUTS reference posterior. ``seed`` seeds every part: the
    same seed gives the same numbers for a pair in memory and for its run directory.
    ``compile`` runs the importance-sampling parts as compiled graphs (the same numbers).

    Returns a :class:`PosteriorDiagnosis` (the JSON summary as dict items; ``summary()``,
    ``to_inference_data()``, ``plot(folder)``, ``save(folder)``). With ``save`` (the default
    for a path, or when ``out`` is given), writes into ``out`` (default RUN_DIR/diagnose):
    ``diagnose.json``, ``guide.nc`` (and ``nuts.nc``) and the PNGs ``khat.png``,
    ``kl_per_dim.png``, ``forest.png``, ``pair.png``. Under torchrun (a path) the draws from
    q are shared among the ranks; rank 0 returns the diagnosis, the others only their rank.

    References:
        Yao, Vehtari, Simpson & Gelman (2018), Yes, but Did It Work?
        Cremer, Li & Duvenaud (2018), Inference Suboptimality in Variational Autoencoders.
        Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
    """
    _check_settings(num_samples, nuts_chains, nuts_warmup, nuts_samples, gap_steps, gap_lr,
                    gap_particles)  # fmt: skip
    ranks, device = world_for(source, device)
    held = subject(source, x, labels=labels, guide=guide, split=split, checkpoint=checkpoint,
                   device=device, data_dir=data_dir, pair=pair)  # fmt: skip
    held = amortized(held, "diagnose")
    refuse_conditional_pair(held, "diagnose")
    if save is None:
        save = isinstance(source, str | os.PathLike) or out is not None
    if save and out is None and held.run is None:
        raise ConfigError(
            "save=True writes into RUN_DIR/diagnose; this pair has no run directory. Give "
            "out=FOLDER, or keep the result (result.to_dict(), result.plot(FOLDER), "
            "result.save(FOLDER))"
        )
    if progress is None:
        progress = sys.stderr.isatty()
    progress = progress and ranks.is_main
    chosen = select_indices(held.x.shape[0], held.context["split"], points, indices)
    result = _diagnose(
        held, chosen, ranks, num_samples=num_samples, nuts=nuts, nuts_chains=nuts_chains,
        nuts_warmup=nuts_warmup, nuts_samples=nuts_samples, gap_steps=gap_steps,
        gap_lr=gap_lr, gap_particles=gap_particles, seed=seed, progress=progress,
        compile=compile,
    )  # fmt: skip
    if save and ranks.is_main:
        result.save(Path(out) if out is not None else held.run.path / DIAGNOSE_DIR)
    return result


def _diagnose(held: Subject, chosen: list[int], ranks: World, *, seed: int,
              **settings: Any) -> PosteriorDiagnosis | Result:  # fmt: skip
    """:func:`diagnose_pair` on the rows ``chosen`` of ``held``'s points, with the summary's
    keys that say where they came from; a rank other than 0 gets only its rank."""
    x = held.x[torch.as_tensor(chosen, device=held.x.device)]
    diagnosis = diagnose_pair(held.pair, x, info=held.info, indices=chosen, seed=seed,
                              **settings)  # fmt: skip
    if diagnosis is None:  # a rank other than 0: its share of the draws went to rank 0
        return Result({"rank": ranks.rank, "ranks": ranks.size})
    context = held.context
    summary = {
        "run_dir": None if held.run is None else str(held.run.path),
        "split": context["split"],
        "checkpoint": context["checkpoint"],
        "epoch": context["epoch"],
        "dataset": context["dataset"],
        "pair": None if held.run is None else held.run.config.pair,
        "device": context["device"],
        "ranks": ranks.size,
        "seed": seed,
        **diagnosis.summary,
    }
    return PosteriorDiagnosis(jsonable(summary), diagnosis.guide, diagnosis.nuts)
