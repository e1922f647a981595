"""Figures a run directory holds, and the one way every figure is written.

Matplotlib runs headless here (files, never windows), unless ``MPLBACKEND`` chooses a backend:
Jupyter's kernel sets it to its inline backend, which forcing Agg would switch off for the
notebook's own figures.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import matplotlib

if not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from pyro_vae.runs.files import atomic_write_bytes  # noqa: E402


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Lay ``fig`` out, write it to ``path`` at 100 dpi (PNG unless the suffix names another
    format) and close it; return the path.

    The image is written whole or not at all (a temporary file and a rename), so a run killed
    while drawing its curves never leaves a broken ``metrics.png``."""
    path = Path(path)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format=path.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def training_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Save train loss and validation ELBO per epoch (both in nats per data point) as a PNG."""
    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(epochs, [-row["train_loss"] for row in history], "o-", label="train objective")
    ax.plot(epochs, [row["valid_elbo"] for row in history], "s-", label="validation ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per data point")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
