""":class:`TensorBoardLogger`: a run's numbers, sample grids, configuration and summaries as
TensorBoard event files, written by ``torch.utils.tensorboard.SummaryWriter`` (TensorBoard's
own event format).

A run's default folder is ``RUN/tensorboard``. ``logged.json`` there records the last epoch
whose events were flushed, so a resumed run purges what it logged after that (TensorBoard's
``purge_step``) and adds the epochs it had not logged from the run's history: no epoch is
doubled or lost.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from pyro_vae.runs.files import atomic_write_bytes
from pyro_vae.runs.loggers.base import (
    RunLogger,
    flat_params,
    image_grid,
    summary_json,
    summary_numbers,
)
from pyro_vae.runs.loggers.errors import require

#: A run's TensorBoard folder, inside the run directory.
FOLDER = "tensorboard"
#: The last epoch whose events were flushed, in the TensorBoard folder.
LOGGED = "logged.json"


class TensorBoardLogger(RunLogger):
    """Writes TensorBoard event files into ``log_dir`` (default: ``RUN/tensorboard`` of the
    run it is started for). View them with ``tensorboard --logdir RUN_OR_PARENT``."""

    name = "tensorboard"

    def __init__(self, log_dir: str | Path | None = None) -> None:
        require("tensorboard")
        self.log_dir = None if log_dir is None else Path(log_dir)
        self._writer = None
        self._last_step = 0
        self._recorded = None

    def start(self, run_dir: Any, resumed_history: list[dict[str, float]] | None) -> None:
        if self.log_dir is None:
            self.log_dir = Path(run_dir) / FOLDER
        purge_step = None
        missed = []
        if resumed_history is not None:
            finished = resumed_history[-1]["epoch"] if resumed_history else 0
            logged = min(_read_logged(self.log_dir), finished)
            purge_step = logged + 1  # events of later epochs were never checkpointed
            missed = [row for row in resumed_history if row["epoch"] > logged]
            self._last_step = logged
        self._open(purge_step)
        for row in missed:  # scalars of epochs finished but not logged before the interruption
            self.log_metrics(row_metrics(row), int(row["epoch"]))
        if resumed_history is not None:
            self.flush()

    def _open(self, purge_step: int | None = None):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            if self.log_dir is None:
                raise ValueError("TensorBoardLogger: give log_dir, or start() it for a run")
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)
        return self._writer

    def log_params(self, params: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        writer, flat = self._open(), flat_params(params)
        for summary in hparams(flat, {}):
            writer.file_writer.add_summary(summary)
        writer.add_text("config", _as_code(json.dumps(flat, indent=2, sort_keys=True)), 0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        writer = self._open()
        for name, value in metrics.items():
            if value is not None and math.isfinite(value):
                writer.add_scalar(name, float(value), step)
        self._last_step = max(self._last_step, step)

    def log_images(self, tag: str, images: torch.Tensor, step: int) -> None:
        self._open().add_image(tag, image_grid(images), step, dataformats="HWC")

    def log_summary(self, name: str, summary: dict[str, Any], step: int) -> None:
        self.log_metrics(summary_numbers(summary, name), step)
        self._open().add_text(f"{name}/summary", _as_code(summary_json(summary)), step)

    def flush(self) -> None:
        if self._writer is None:
            return
        self._writer.flush()
        if self._last_step != self._recorded:
            record = json.dumps({"epoch": self._last_step}).encode()
            atomic_write_bytes(self.log_dir / LOGGED, record)
            self._recorded = self._last_step

    def close(self, status: str | None = "FINISHED") -> None:
        if self._writer is not None:
            self.flush()
            self._writer.close()
            self._writer = None


def row_metrics(row: dict[str, float]) -> dict[str, float]:
    """An epoch's row of ``metrics.csv`` as metrics: every column but ``epoch`` (the step)."""
    return {key: value for key, value in row.items() if key != "epoch"}


def _read_logged(log_dir: Path) -> int:
    try:
        return int(json.loads((log_dir / LOGGED).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _as_code(text: str) -> str:
    """Text as a Markdown code block (TensorBoard renders text as Markdown); still valid JSON
    when ``text`` is."""
    return "\n".join("    " + line for line in text.splitlines())
