"""Records of pair objects: how a pair given from Python is written into a run (its spec and
constructor arguments) so that the command line can rebuild it, and its parameter shapes."""

from __future__ import annotations

import importlib.metadata
import inspect
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_vae.pairs.arguments import INPUT_SHAPE_NAMES, INPUT_SIZE_NAMES
from pyro_vae.pairs.loading import _USER_FILES, _is_stdlib
from pyro_vae.pairs.networks import pair_modules


@dataclass(frozen=True)
class PairRecord:
    """How a pair object given from Python is written into a run: ``spec`` (``FILE.py:NAME``
    or ``module:NAME``, None when its class cannot be imported), the constructor ``kwargs``
    recovered from same-named attributes, the ``missing`` required arguments, and the
    optional ones not recovered, whose defaults the record ``assumed``."""

    spec: str | None
    kwargs: dict[str, Any]
    missing: tuple[str, ...]
    assumed: tuple[str, ...] = ()


def _json_value(value: Any) -> Any:
    """``value`` as a JSON/TOML-writable value (tuples become lists), or raise TypeError."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_value(v) for k, v in value.items()}
    raise TypeError(f"{type(value).__name__} is not a plain value")


def _plain_module_file(module: str) -> str | None:
    """The resolved ``.py`` file of the top-level, non-package module named ``module`` when it
    is the user's own (not the standard library's, pyro_vae's, in site-packages or of an
    installed distribution), else None."""
    loaded = sys.modules.get(module)
    file = getattr(loaded, "__file__", None)
    if "." in module or _is_stdlib(module) or getattr(loaded, "__path__", None) is not None:
        return None
    if not file or not file.endswith(".py"):
        return None
    path = Path(file).resolve()
    library_folders = {
        Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "purelib", "platlib")
    } | {Path(__file__).resolve().parent}
    if {"site-packages", "dist-packages"} & set(path.parts) or any(
        path.is_relative_to(folder) for folder in library_folders
    ):
        return None
    if module in importlib.metadata.packages_distributions():
        return None
    return str(path)


def record_pair(pair: Any) -> PairRecord:
    """The spec and constructor arguments of a pair object, as far as they can be recovered.

    The class is named ``FILE.py:NAME``, by absolute path, when it came from a pair file, a
    script run as ``__main__`` or a plain module file of the user's (``from my_vae import
    MyVAE``: a top-level module loaded from a ``.py`` file outside site-packages, the standard
    library and pyro_vae, of no installed distribution), so that the run reopens without that
    folder on PYTHONPATH. A module of a package (``my_package.vae:MyVAE``, or a top-level
    package's ``__init__.py``) keeps its module name: loading its file by path would break its
    relative imports.

    An argument of ``__init__`` is recovered from the attribute of the same name
    (``self.z_dim = z_dim``, the usual habit) when that holds a plain value; arguments of
    :data:`INPUT_SIZE_NAMES`/:data:`INPUT_SHAPE_NAMES` are left out, since they are filled in
    from the data set.
    """
    cls = type(pair)
    module, name = cls.__module__, cls.__qualname__
    if module in _USER_FILES:
        spec: str | None = f"{_USER_FILES[module]}:{name}"
    elif module == "__main__":
        file = getattr(sys.modules.get("__main__"), "__file__", None)
        spec = f"{Path(file).resolve()}:{name}" if file else None
    elif (file := _plain_module_file(module)) is not None:
        spec = f"{file}:{name}"
    else:
        spec = f"{module}:{name}"
    if "<locals>" in name:
        spec = None
    kwargs: dict[str, Any] = {}
    missing, assumed = [], []
    try:
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        parameters = []
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.name in INPUT_SIZE_NAMES + INPUT_SHAPE_NAMES:
            continue
        try:
            kwargs[parameter.name] = _json_value(vars(pair)[parameter.name])
        except (KeyError, TypeError):
            if parameter.default is parameter.empty:
                missing.append(parameter.name)
            else:
                assumed.append(parameter.name)
    return PairRecord(spec, kwargs, tuple(missing), tuple(assumed))


def parameter_shapes(pair: Any) -> dict[str, tuple[int, ...]]:
    """Name and shape of every parameter and buffer of the pair's modules."""
    return {
        f"{i}.{key}": tuple(value.shape)
        for i, module in enumerate(pair_modules(pair))
        for key, value in module.state_dict().items()
    }
