"""``sweep(space, trials=..., workers=..., storage=..., out=...)``: a hyperparameter search
with Optuna, each trial a run directory, and what it found."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_vae.sweeps.errors import SweepError, require_optuna
from pyro_vae.sweeps.objective import METRICS
from pyro_vae.sweeps.report import best_trial, draw_plots, text_table, trial_rows, write_tables
from pyro_vae.sweeps.space import Space, load_space
from pyro_vae.sweeps.storage import default_storage, open_storage
from pyro_vae.sweeps.workers import STARTUP_TRIALS, Job, run_workers


@dataclass
class SweepResult:
    """What a sweep found: the ``best`` trial (number, value, params, run_dir; None before one
    completed), the ``table`` (one dict per trial), the ``plots`` drawn and ``notes`` on those
    that were not, and where it all is (``sweep_dir``, ``storage``, ``study``, ``files``)."""

    sweep_dir: Path
    storage: str
    study: str
    metric: str
    best: dict[str, Any] | None
    table: list[dict[str, Any]] = field(default_factory=list)
    plots: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        finished = sum(row["state"] in ("COMPLETE", "PRUNED") for row in self.table)
        lines = [f"sweep {self.study!r} ({self.storage}): {finished} finished trials, "
                 f"metric {self.metric} (maximized)"]  # fmt: skip
        if self.best is None:
            lines.append("no complete trial yet")
        else:
            params = ", ".join(f"{k}={v}" for k, v in self.best["params"].items())
            lines.append(f"best: trial {self.best['number']}  value {self.best['value']:.4f}  "
                         f"{params}  {self.best['run_dir']}")  # fmt: skip
        lines.append(text_table(self.table).rstrip())
        lines += [f"{name}: {path}" for name, path in {**self.files, **self.plots}.items()]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        plots = {k: str(v) for k, v in self.plots.items()}
        return {"sweep_dir": str(self.sweep_dir), "storage": self.storage, "study": self.study,
                "metric": self.metric, "best": self.best, "table": self.table, "plots": plots,
                "notes": self.notes}  # fmt: skip


def sweep(
    space: str | Path | Space,
    *,
    trials: int,
    workers: int = 1,
    storage: str | None = None,
    study: str | None = None,
    out: str | Path = "sweep",
    metric: str = "valid-elbo",
    num_samples: int = 100,
    seed: int = 0,
    prune: bool = True,
    prune_startup: int = STARTUP_TRIALS,
    prune_warmup: int | None = None,
) -> SweepResult:
    """Search ``space`` (a space file, see :mod:`pyro_vae.sweeps.space`) with Optuna until
    ``trials`` trials have finished (complete or pruned), maximizing ``metric``.

    ``workers`` processes share the study in ``storage`` (default: SQLite at
    ``out/sweep.db``; any SQLAlchemy URL, or ``journal:PATH``) under the name ``study``
    (default: the folder's name). Each trial trains a run directory ``out/trial-NNNN`` and
    is pruned by a median pruner on its valid ELBO after each epoch: once ``prune_startup``
    trials have completed, and after its first ``prune_warmup`` epochs (None: half of its
    epochs); ``prune=False`` trains every trial to its end. Calling it again with
    the same arguments continues the sweep: finished trials are kept, trials whose worker
    died are retried from their checkpoints, and it runs until ``trials`` have finished.
    Writes ``trials.csv``, ``trials.txt``, ``best.json`` and the plots into ``out``.
    """
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial has its own line
    if metric not in METRICS:
        raise SweepError(f"--metric {metric!r}: choose from {', '.join(METRICS)}")
    checks = [
        ("--trials", trials, 1),
        ("--workers", workers, 1),
        ("--num-samples", num_samples, 1),
        ("--prune-startup", prune_startup, 0),
    ]
    if prune_warmup is not None:
        checks.append(("--prune-warmup", prune_warmup, 0))
    for flag, value, least in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise SweepError(f"{flag} {value!r}: must be an integer >= {least}")
    space = space if isinstance(space, Space) else load_space(space)
    sweep_dir = Path(out).resolve()
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SweepError(
            f"--out {str(out)!r}: cannot make this folder ({error.strerror}); choose another"
        ) from error
    storage = storage or default_storage(sweep_dir)
    study = study or sweep_dir.name
    created = optuna.create_study(study_name=study, storage=open_storage(storage),
                                  direction="maximize", load_if_exists=True)  # fmt: skip
    _check_same_sweep(created, space, metric, study)
    job = Job(space=space, sweep_dir=sweep_dir, storage=storage, study=study, trials=trials,
              metric=metric, num_samples=num_samples, seed=seed,
              prune_startup=prune_startup if prune else None,
              prune_warmup=prune_warmup)  # fmt: skip
    run_workers(job, workers)
    return report(created, sweep_dir, storage, study, metric)


def _check_same_sweep(study: Any, space: Space, metric: str, name: str) -> None:
    """A study continues only with the space and metric it was started with."""
    settings = {"metric": metric, "space": space.to_dict()}
    recorded = {key: study.user_attrs.get(key) for key in settings}
    if recorded["metric"] is None:
        for key, value in settings.items():
            study.set_user_attr(key, value)
        return
    if recorded["metric"] != metric:
        raise SweepError(f"--metric {metric}: study {name!r} maximizes {recorded['metric']}; "
                         f"pass --metric {recorded['metric']}, or another --study")  # fmt: skip
    if recorded["space"] != settings["space"]:
        raise SweepError(f"study {name!r} was started with another space file (settings or "
                         f"distributions differ from {space.path!r}); use the same space, or "
                         "another --study")  # fmt: skip


def report(study: Any, sweep_dir: Path, storage: str, name: str, metric: str) -> SweepResult:
    """Write the tables and plots of ``study`` into ``sweep_dir``, and return them."""
    rows = trial_rows(study)
    best = best_trial(study)
    files = write_tables(rows, best, sweep_dir)
    plots, notes = draw_plots(study, sweep_dir)
    return SweepResult(sweep_dir=sweep_dir, storage=storage, study=name, metric=metric,
                       best=best, table=rows, plots=plots, notes=notes, files=files)  # fmt: skip
