"""What a trainer puts out: the run directory's files, ``metrics.csv``, the best epoch, the
result of a run, its errors and its notes on stderr.

The files: ``config.toml`` (:data:`~pyro_vae.runs.reopen.CONFIG`), ``metrics.csv``
(:data:`METRICS`, rewritten whole from the checkpoint's history), ``checkpoint.pt`` and
``best.pt`` (:mod:`pyro_vae.runs.checkpoints`), and ``metrics.png`` (:data:`CURVES`, drawn
when the run finishes).
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_vae.infer.distributed import world
from pyro_vae.runs.checkpoints import BEST, CHECKPOINT
from pyro_vae.runs.config import ConfigError, TrainConfig, _toml_value, unused_settings
from pyro_vae.runs.files import atomic_write_bytes
from pyro_vae.runs.reopen import CONFIG

METRICS = "metrics.csv"
CURVES = "metrics.png"
#: The files a trainer writes (see :func:`pyro_vae.runs.lock.remove_stale_temporaries`).
RUN_FILES = (CONFIG, METRICS, CURVES, CHECKPOINT, BEST, "write-test")
METRIC_COLUMNS = (
    "epoch", "train_loss", "valid_elbo", "seconds", "train_seconds", "beta", "lr",
)  # fmt: skip
#: Columns written only for runs that have them (a pair with a label site, a classifier).
LABEL_METRIC_COLUMNS = ("valid_accuracy", "classify_loss")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, no checkpoint to resume, ...)."""


@dataclass
class RunResult:
    """What a finished (or resumed) run produced."""

    run_dir: Path
    config: TrainConfig
    history: list[dict[str, float]] = field(default_factory=list)
    pair: Any = None

    @property
    def best_valid_elbo(self) -> float:
        """The best validation ELBO; NaN for a run without a validation split."""
        return max((row["valid_elbo"] for row in self.history), key=_best_key)


def _best_key(valid_elbo: float) -> float:
    """Order of validation ELBOs for best.pt: NaN (no validation split) counts as -inf."""
    return -math.inf if math.isnan(valid_elbo) else valid_elbo


def best_epoch(history: list[dict[str, float]]) -> int:
    """The epoch best.pt holds: the best validation ELBO (the first of equals), or the last
    epoch for a run without a validation split (``--valid-size 0``)."""
    if all(math.isnan(row["valid_elbo"]) for row in history):
        return history[-1]["epoch"]
    return max(history, key=lambda row: _best_key(row["valid_elbo"]))["epoch"]


def write_metrics(run_dir: Path, history: list[dict[str, float]]) -> None:
    """Rewrite ``metrics.csv`` from the history kept in the checkpoint (never out of step);
    the label columns only where some epoch has them."""
    extra = [c for c in LABEL_METRIC_COLUMNS if any(c in row for row in history)]
    columns = [*METRIC_COLUMNS, *extra]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in columns})
    atomic_write_bytes(run_dir / METRICS, buffer.getvalue().encode())


def prepare_run_dir(path: str | Path) -> Path:
    """Make the folder ``path`` (``--out``) and check a file can be created in it.

    An existing file, a path under a file, or a place that cannot be written (read-only,
    no permission, a virtual file system such as /proc) raises :class:`ConfigError` naming
    the path, before any data are read or training starts. The check creates and removes an
    empty file, since permission bits say nothing when running as root.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test.{time.time_ns()}.tmp"
        probe.touch()
        probe.unlink()
    except FileExistsError as error:
        raise ConfigError(
            f"--out {str(path)!r} is an existing file, not a folder; choose another --out"
        ) from error
    except NotADirectoryError as error:
        blocking = next((p for p in reversed((path, *path.parents)) if p.is_file()), path)
        raise ConfigError(
            f"--out {str(path)!r}: {str(blocking)!r} is a file, so no folder can be made "
            "inside it; choose another --out"
        ) from error
    except OSError as error:
        raise ConfigError(
            f"--out {str(path)!r}: cannot make or write to this folder ({error.strerror}); "
            "choose another --out, a folder you can write to"
        ) from error
    return path


def _finish(run_dir: Path, history: list) -> None:
    """The finishing steps of a run (again on a resume of a finished run): the curves."""
    if history:
        from pyro_vae.runs.figures import training_curves  # matplotlib only when a run finishes

        training_curves(history, run_dir / CURVES)


#: How many times its first value the mean training loss may grow to before a warning.
LOSS_GROWTH = 100.0


class LossGrowth:
    """Watches a run's mean training loss per point: when it has grown to :data:`LOSS_GROWTH`
    times its first value (by ``(LOSS_GROWTH - 1) * max(|first|, 1)``) while staying finite,
    the steps overshoot; one ``warning:`` line says the numbers and what to try. A loss that
    turns NaN or infinite is stopped by the loop instead (:mod:`.steps`).

    The first value is the first epoch's train loss of the history (a resumed run), else the
    first one :meth:`check` sees."""

    def __init__(self, config: TrainConfig, history: list[dict[str, float]]) -> None:
        self.config = config
        self.first = (history[0]["train_loss"], "epoch 1") if history else None
        self.warned = False

    def check(self, loss: float, where: str) -> bool:
        """Look at ``loss`` (the mean per point so far this epoch) at ``where``; True when
        this call warned."""
        if self.warned or not math.isfinite(loss):
            return False
        if self.first is None:
            self.first = (loss, where)
            return False
        first, at = self.first
        if loss - first < (LOSS_GROWTH - 1) * max(abs(first), 1.0):
            return False
        self.warned = True
        lr = self.config.lr
        times = f", {loss / first:.3g} times as large," if first > 0 else ""
        _log(
            f"warning: the mean training loss grew from {first:.4g} ({at}) to {loss:.4g} "
            f"({where}){times} while staying finite: the steps overshoot. Lower --lr (now "
            f"{lr:g}; try --lr {lr / 10:g}), bound the steps with --clip-norm (e.g. 10), and "
            "check the data's scale (e.g. --pixel-scale 255 for a file of 0-255 pixels)"
        )
        return True


def warn_unused_settings(config: TrainConfig) -> None:
    """One ``warning:`` line per setting that differs from its default yet has no effect with
    the others (:func:`~pyro_vae.runs.config.unused_settings`). On the command line such a
    flag is refused; from a config file or from Python it is warned about, so that a run's
    own config.toml, which holds every key, always reads back."""
    for name, (why, remedy) in unused_settings(config).items():
        value = _toml_value(getattr(config, name))
        _log(
            f"warning: {name} = {value} has no effect: {why}; it is ignored (remove it, or "
            f"{remedy})"
        )


def _log(message: str) -> None:
    if world().is_main:  # one voice for the ranks of a distributed run
        print(message, file=sys.stderr, flush=True)
