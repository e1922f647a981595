"""What an analysis returns: a mapping of JSON-ready numbers that prints itself readably.

Every analysis (:func:`pyro_vae.evaluate`, :func:`pyro_vae.diagnose`,
:func:`pyro_vae.gradient_variance`, ...) returns a :class:`Result`: a ``dict`` with the keys
the command line prints as JSON, so ``result["log_px"]`` works as before; ``to_dict()`` gives
that JSON as plain data, ``summary()`` (and ``repr``, and a notebook's display) a few lines of
text, and ``plot(path)`` the figure the command line draws, where it draws one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from pyro_vae.runs.files import jsonable


class Result(dict):
    """A JSON-ready summary with a readable ``summary()``; subclasses add ``plot``."""

    #: What the result is, for the fallback summary.
    kind = "result"

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-ready data (tensors and arrays as lists, non-finite
        numbers as None), as ``pyro-vae ... --json`` prints it."""
        return jsonable(dict(self))

    def summary(self) -> str:
        """A few readable lines (here: the JSON; subclasses say more in fewer words)."""
        return f"{self.kind}: " + json.dumps(self.to_dict(), indent=1)

    def __repr__(self) -> str:
        return self.summary()

    def __str__(self) -> str:
        return self.summary()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython's display
        printer.text(self.summary())


def figure_path(path: str | os.PathLike, default_name: str) -> Path:
    """Where ``plot`` writes: ``path`` itself for a file name with a suffix, else
    ``path/default_name`` (the folder is made)."""
    path = Path(path)
    if path.suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    path.mkdir(parents=True, exist_ok=True)
    return path / default_name


def number_cell(value: float | None) -> str:
    """A table cell for a number: three significant digits, ``-`` for none or not finite."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.3g}"


def aligned_lines(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells as text lines in columns: the first column left-aligned (a name), the
    others right-aligned (numbers), two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                  for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]  # fmt: skip


__all__ = ["Result", "aligned_lines", "figure_path", "number_cell"]
