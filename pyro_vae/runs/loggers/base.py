"""What a run logger is: a writer of a run's numbers, images, hyperparameters and summaries
to a place where researchers compare runs (TensorBoard, MLflow).

Loggers only write what they are given; what is logged, and when, is decided by whoever
calls them: the training loop (:mod:`pyro_vae.training.run_logging`), ``pyro-vae evaluate`` and
``pyro-vae diagnose`` (:func:`~pyro_vae.runs.loggers.attach`), or your own SVI loop. Every
step is an epoch number.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import torch

from pyro_vae.runs.files import jsonable


class RunLogger:
    """The calls every logger answers. Subclasses write; this base class keeps nothing.

    ``log_metrics({name: number}, step)``, ``log_images(tag, images, step)`` with images
    ``(N, C, H, W)`` in [0, 1], ``log_params({name: value})`` (the configuration, once at the
    start), ``log_summary(name, summary, step)`` (a whole summary dict: its numbers as metrics
    under ``name/``, the dict as JSON), ``flush()`` and ``close()``.
    """

    #: The name ``--log`` knows the logger by.
    name = "logger"

    def start(self, run_dir: Any, resumed_history: list[dict[str, float]] | None) -> None:
        """Bind to run directory ``run_dir`` before its first epoch is logged.
        ``resumed_history``: the rows of the epochs a resumed run already finished (None for
        a new run), so that a logger can add those it missed and drop what it logged after
        them. Loggers made for a folder of their own may ignore ``run_dir``."""

    def log_params(self, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_images(self, tag: str, images: torch.Tensor, step: int) -> None:
        raise NotImplementedError

    def log_summary(self, name: str, summary: dict[str, Any], step: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Write what is buffered; called at every epoch end, so an interruption loses
        nothing that was logged."""

    def close(self, status: str | None = "FINISHED") -> None:
        """Flush and let go of the files or the connection; ``status`` is how the run ended
        (FINISHED, FAILED, KILLED) for a logger that records it, None to leave it as it is."""


def flat_params(params: dict[str, Any]) -> dict[str, Any]:
    """A configuration as hyperparameters: numbers, strings and booleans kept, lists and
    tables written as JSON, unset values (None) left out."""
    flat = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool | int | float | str):
            flat[key] = value
        else:
            flat[key] = json.dumps(value, sort_keys=True, default=str)
    return flat


def summary_numbers(summary: dict[str, Any], prefix: str) -> dict[str, float]:
    """The finite numbers of a (nested) summary dict, as ``prefix/key/subkey``: what a logger
    shows as metrics. Booleans, strings, lists and non-finite numbers are left to the JSON."""
    numbers = {}
    for key, value in summary.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            numbers.update(summary_numbers(value, name))
        elif isinstance(value, np.generic) and np.ndim(value) == 0:
            value = value.item()
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value):
                numbers[name] = float(value)
    return numbers


def summary_json(summary: dict[str, Any]) -> str:
    """A summary dict as strict JSON text (:func:`~pyro_vae.runs.files.jsonable`: arrays as
    lists, non-finite numbers as null), anything else as its str."""
    return json.dumps(jsonable(summary), indent=2, sort_keys=True, default=str)


def image_grid(images: torch.Tensor, columns: int | None = None) -> np.ndarray:
    """Images ``(N, C, H, W)`` in [0, 1] tiled into one ``(rows*H + gaps, cols*W + gaps, 3)``
    uint8 array (grey images made RGB), one pixel of white between tiles."""
    images = images.detach().float().cpu().clamp(0, 1)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    count, channels, height, width = images.shape
    if channels == 1:
        images = images.expand(count, 3, height, width)
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    grid = torch.ones(3, rows * (height + 1) + 1, columns * (width + 1) + 1)
    for index in range(count):
        top, left = 1 + (index // columns) * (height + 1), 1 + (index % columns) * (width + 1)
        grid[:, top : top + height, left : left + width] = images[index]
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def metric_name(name: str) -> str:
    """``name`` with the characters MLflow refuses in a metric or param name replaced by ``_``
    (it takes letters, digits, ``_ - . : /`` and spaces)."""
    return re.sub(r"[^\w\-.:/ ]", "_", name)
