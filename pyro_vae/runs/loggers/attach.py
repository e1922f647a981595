""":func:`attach`: the summary of an analysis (``evaluate``, ``diagnose``) added to the run it
looked at, in the loggers the run was trained with."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from pyro_vae.runs.loggers.base import RunLogger
from pyro_vae.runs.loggers.registry import named_loggers

#: The trainer's table of epochs (pyro_vae.training.outputs.METRICS).
_METRICS = "metrics.csv"


def attach(run: Any, name: str, summary: Any, *,
           loggers: list[RunLogger] | None = None) -> list[str]:  # fmt: skip
    """Log ``summary`` (a dict, or a result with ``to_dict()``) as ``name`` into the loggers of
    ``run`` (a run directory or a :class:`~pyro_vae.runs.reopen.Run`): those its
    ``config.toml`` names in ``log`` (the same TensorBoard folder and MLflow run), or
    ``loggers`` if given. Its numbers become metrics ``name/...`` at the run's last epoch,
    the whole summary a JSON artifact (MLflow) or text (TensorBoard). Returns the names of
    the loggers written to (none for a run that logs to ``metrics.csv`` only, or a path
    that is no run directory)."""
    from pyro_vae.runs.reopen import read_config

    run_dir = Path(getattr(run, "path", run))
    if loggers is None and not (run_dir / "config.toml").is_file():
        return []  # not a run directory: nothing to attach to
    if loggers is None:
        config = getattr(run, "config", None) or read_config(run_dir)
        loggers = named_loggers(config)
    if not loggers:
        return []
    values = summary.to_dict() if hasattr(summary, "to_dict") else dict(summary)
    step = _last_epoch(run_dir)
    for logger in loggers:
        logger.start(run_dir, None)
        try:
            logger.log_summary(name, values, step)
        finally:
            logger.close(status=None)
    return [logger.name for logger in loggers]


def _last_epoch(run_dir: Path) -> int:
    try:
        with (run_dir / _METRICS).open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        return int(float(rows[-1]["epoch"])) if rows else 0
    except (OSError, KeyError, ValueError):
        return 0
