"""Old module paths kept importable: each forwards its names to where they live now.

pyro_vae 0.1 kept every module at the top of the package (``pyro_vae.estimators``,
``pyro_vae.train``, ...); they now live in the package of their stage (``pyro_vae.infer``,
``pyro_vae.training``, ...). An old path still gives every name, with a DeprecationWarning
that names the new one (PEP 562 module ``__getattr__``).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def moved_module(
    old: str, new: str, *also: str
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the module ``old``, forwarding to ``new`` (and to
    the modules ``also``, where some of its names went)."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        for target in (new, *also):
            module = importlib.import_module(target)
            if hasattr(module, name):
                warnings.warn(
                    f"{old} is now {target}: import {name} from {target} (the old path will "
                    "be removed)",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(module, name)
        raise AttributeError(f"module {old!r} (now {new!r}) has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({name for target in (new, *also)
                       for name in vars(importlib.import_module(target))})  # fmt: skip

    return __getattr__, __dir__
