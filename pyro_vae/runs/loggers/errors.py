"""The error a logger raises when its package is not installed: which package, and the extra
that installs it."""

from __future__ import annotations

import importlib
from typing import Any

from pyro_vae.runs.config import ConfigError

#: Each logger's package, as ``--log`` names the logger: (module to import, pip extra).
PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
}


class MissingPackageError(ConfigError):
    """``--log NAME`` needs a package that is not installed; the message says how to install
    it (the CLI exits with status 2)."""


def require(logger: str) -> Any:
    """Import the package of ``logger`` (``tensorboard`` or ``mlflow``), or raise
    :class:`MissingPackageError` naming the package and the extra that installs it."""
    module, extra = PACKAGES[logger]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingPackageError(
            f"--log {logger} needs the package {module!r}, which is not installed ({error}); "
            f'install it with: pip install "pyro-vae[{extra}]" (or pip install {module}), or '
            f"drop {logger} from --log"
        ) from None
