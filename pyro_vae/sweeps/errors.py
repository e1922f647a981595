"""What a sweep can refuse, and the one place that imports Optuna (an optional package)."""

from __future__ import annotations

import importlib
from types import ModuleType

#: The command that installs what ``pyro-vae sweep`` needs.
INSTALL = 'pip install "pyro-vae[optuna]"'


class SweepError(ValueError):
    """A sweep that cannot run as asked: a bad space file, a storage that cannot be opened, a
    study made with other settings, Optuna missing. The message names the file, key or flag."""


def require_optuna() -> ModuleType:
    """The ``optuna`` module, or :class:`SweepError` saying how to install it."""
    try:
        return importlib.import_module("optuna")
    except ImportError as error:
        raise SweepError(
            f"pyro-vae sweep needs the package optuna, which is not installed; install it with "
            f"{INSTALL}"
        ) from error
