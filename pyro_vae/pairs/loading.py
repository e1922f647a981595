"""Loading users' pair files and objects: ``FILE.py:NAME`` and ``package.module:NAME``
imported (each file once per process, announced on stderr), and the checks that refuse
what is not a pair or a program before anything is called."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyro_vae.pairs.builtin import PAIRS
from pyro_vae.pairs.errors import PairError


def load_object(spec: str, *, flag: str = "--pair") -> Any:
    """Import ``NAME`` from ``FILE.py:NAME`` or ``package.module:NAME``.

    Importing a file executes it, so each file import is announced on stderr (one line);
    a module of the Python standard library is refused before it is imported (a pair is
    never there, and ``os:system`` must not be reachable from a run's ``config.toml``).
    A file is executed once per process: asked again, its module is reused while the file's
    modification time and size are unchanged (a run reopened many times in a notebook does
    not rerun the user's script), and imported afresh once it changed. A file already
    imported under its plain name (``import my_vae``) is that module, not executed again, so
    the class is the very one the user holds; reloading it is then the user's business.
    """
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise PairError(
            f"{flag} {spec!r}: expected FILE.py:NAME or package.module:NAME "
            f"(or a built-in pair: {', '.join(PAIRS)})"
        )
    if not target.endswith(".py") and _is_stdlib(target):
        raise PairError(_not_a_pair(spec, flag, f"module {target!r} is Python's standard library"))
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise PairError(f"{flag} {spec!r}: file {str(path)!r} does not exist")
        module = _imported_file(path.resolve())
        if module is None:
            module = _import_file(path, spec, flag)
        where = repr(str(path))
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as error:
            raise PairError(
                f"{flag} {spec!r}: cannot import module {target!r} ({error}); "
                "is it installed or on PYTHONPATH?"
            ) from error
        where = f"module {target!r}"
    if not hasattr(module, name):
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise PairError(f"{flag} {spec!r}: {where} has no {name!r}; it defines: {public}")
    return getattr(module, name)


def _is_stdlib(module: str | None) -> bool:
    """Whether ``module`` (a dotted name) is part of Python's standard library, builtins and
    C modules such as ``posix`` and ``_io`` included."""
    return bool(module) and module.partition(".")[0] in sys.stdlib_module_names


#: Installed libraries that hold no pair factory or Pyro program but do hold functions that
#: read or run files (``torch:load``, ``numpy:load``, ``pandas:read_pickle``,
#: ``pyro_vae.runs.checkpoints:upgrade_checkpoint``, ...): a function of theirs named by a spec is
#: refused like the standard library's. A class of theirs still passes when it has ``model``
#: and ``guide`` methods.
LIBRARY_PACKAGES = frozenset({
    "torch", "torchvision", "numpy", "scipy", "pandas", "xarray", "arviz", "matplotlib",
    "pyro", "pyro_vae", "funsor", "opt_einsum", "tqdm", "joblib", "dill", "cloudpickle",
    "yaml", "h5py", "netCDF4", "IPython", "ipykernel", "jupyter_core", "nbformat", "jupytext",
    "setuptools", "pkg_resources", "pip", "pytest", "_pytest", "sympy", "jinja2",
    "networkx", "fsspec", "filelock", "requests", "urllib3",
})  # fmt: skip


def _library_function(obj: Any) -> str | None:
    """``package.name`` when ``obj`` is a function (not a class) of :data:`LIBRARY_PACKAGES`
    (the pair factories of pyro_vae's own ``models``/``guides`` excepted), else None."""
    if inspect.isclass(obj) or not callable(obj):
        return None
    origin = _origin(obj) or ""
    if origin.startswith(("pyro_vae.models", "pyro_vae.guides")):
        return None
    if origin.partition(".")[0] not in LIBRARY_PACKAGES:
        return None
    return f"{origin}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _origin(obj: Any) -> str | None:
    """The module an object comes from: its own ``__module__`` for classes and functions,
    else its type's (``functools.partial``, bound methods: ``builtins``)."""
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return getattr(obj, "__module__", None) or type(obj).__module__
    return type(obj).__module__


def _not_a_pair(spec: str, flag: str, why: str) -> str:
    if flag == "--pair":
        return (
            f"--pair {spec!r} was refused, nothing was called: {why}. A pair is a class or a "
            "factory function (in a FILE.py or an installed module) whose instance has "
            "methods model(x) and guide(x)"
        )
    return (
        f"{flag} {spec!r} was refused, nothing was called: {why}. {flag} names a Pyro "
        "program: a function of the batch x defined in a FILE.py or an installed module"
    )


def check_pair_factory(obj: Any, spec: str) -> None:
    """Refuse (:class:`PairError`, before anything is called) an object a ``--pair`` spec
    names that is not a pair class or factory: a callable that is not a class or a Python
    function, anything from the standard library or builtins, a class without callable
    ``model`` and ``guide``. An object that is not callable (a pair instance) is not called,
    and is checked for ``model``/``guide`` as a built pair is."""
    if not callable(obj):
        return
    if _is_stdlib(_origin(obj)):
        what = f"{_origin(obj)}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
        raise PairError(_not_a_pair(spec, "--pair", f"{what} is Python's standard library"))
    library = _library_function(obj)
    if library:
        raise PairError(
            _not_a_pair(spec, "--pair", f"{library} is a function of a library, not a pair factory")
        )
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        raise PairError(
            _not_a_pair(spec, "--pair", f"it names a {type(obj).__name__}, not a class or function")
        )
    if inspect.isclass(obj):
        lacking = [m for m in ("model", "guide") if not callable(getattr(obj, m, None))]
        if lacking:
            raise PairError(
                _not_a_pair(spec, "--pair", f"class {obj.__qualname__} has no method(s) {lacking}")
            )


def check_program(obj: Any, spec: str, flag: str) -> None:
    """Refuse a ``--model``/``--guide`` object that is not a program of the user's: not
    callable, builtin or from the standard library (``os:system``, ``subprocess:run``),
    or a callable other than a Python function or an instance of a user's class."""
    origin = _origin(obj)
    what = f"{origin}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
    if not callable(obj):
        raise PairError(_not_a_pair(spec, flag, f"it names a {type(obj).__name__}, not callable"))
    if inspect.isbuiltin(obj):
        raise PairError(_not_a_pair(spec, flag, f"{what} is a builtin function"))
    if _is_stdlib(origin):
        raise PairError(_not_a_pair(spec, flag, f"{what} is Python's standard library"))
    if _library_function(obj):
        raise PairError(_not_a_pair(spec, flag, f"{what} is a function of a library"))
    if inspect.isclass(obj):
        raise PairError(_not_a_pair(spec, flag, f"it names the class {obj.__qualname__}"))


#: Files loaded by :func:`load_object`, by the module name they were given, so a pair object
#: built from one can be recorded as ``FILE.py:NAME`` again.
_USER_FILES: dict[str, str] = {}


def user_module_name(path: Path) -> str:
    """The ``sys.modules`` name a pair file is imported under (one per resolved path)."""
    return f"_pyro_vae_user_{path.stem}_{abs(hash(str(path.resolve())))}"


@contextlib.contextmanager
def _folder_on_path(folder: Path) -> Iterator[None]:
    """Put ``folder`` first on ``sys.path`` while a pair file is imported, so the file's own
    imports of its siblings (``from modules import Encoder``, ``from utils.mlp import MLP``)
    resolve the way ``python FILE.py`` would resolve them; modules imported meanwhile stay in
    ``sys.modules``, so the pair keeps working afterwards."""
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


#: Files executed by :func:`load_object`, by resolved path: the module name they were given
#: and the file's (modification time in ns, size) when executed.
_IMPORTED_FILES: dict[str, tuple[str, tuple[int, int]]] = {}


def _file_stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_mtime_ns, status.st_size


def _imported_file(path: Path) -> Any:
    """The module of the resolved ``path`` already in this process, or None: the one the user
    imported under the file's plain name, else the one :func:`load_object` executed, if the
    file has not changed since."""
    plain = sys.modules.get(path.stem)
    file = getattr(plain, "__file__", None)
    if file and getattr(plain, "__path__", None) is None and Path(file).resolve() == path:
        return plain
    module_name, stamp = _IMPORTED_FILES.get(str(path), (None, None))
    if module_name in sys.modules and stamp == _file_stamp(path):
        return sys.modules[module_name]
    return None


def _import_file(path: Path, spec: str, flag: str) -> Any:
    """Execute the pair file ``path`` as a new module, announced on stderr."""
    resolved = path.resolve()
    print(f"pyro-vae: loading {flag.lstrip('-')} file {resolved}", file=sys.stderr, flush=True)
    module_name = user_module_name(path)
    stamp = _file_stamp(resolved)  # before executing: a change meanwhile imports it again
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        with _folder_on_path(resolved.parent):
            module_spec.loader.exec_module(module)
    except Exception as error:
        if previous is None:
            del sys.modules[module_name]
        else:  # the file changed and no longer imports: keep what the process already holds
            sys.modules[module_name] = previous
        raise PairError(
            f"{flag} {spec!r}: importing {str(path)!r} failed: {type(error).__name__}: {error}"
            + _import_hint(error, path)
        ) from error
    _USER_FILES[module_name] = str(resolved)
    _IMPORTED_FILES[str(resolved)] = (module_name, stamp)
    return module


def _import_hint(error: Exception, path: Path) -> str:
    if isinstance(error, ModuleNotFoundError):
        return (
            f". Sibling modules are looked up in the file's folder {str(path.resolve().parent)!r} "
            "and on sys.path; is the module there, or installed?"
        )
    return ""


def resolve_spec(spec: str) -> str:
    """Make a ``FILE.py:NAME`` spec absolute, so a run directory can rebuild it from anywhere."""
    target, sep, name = spec.rpartition(":")
    if sep and target.endswith(".py"):
        return f"{Path(target).expanduser().resolve()}:{name}"
    return spec
