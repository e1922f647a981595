"""Model/guide pairs: the built-in table, user pairs from files or modules, and a check.

A *pair* is any object with two Pyro programs ``model(x)`` and ``guide(x)`` over a batch
``x`` of shape ``(B, D)``, the contract of Pyro's tutorial VAE. Built-in pairs are listed in
:data:`PAIRS`, one factory per name; a user pair is named ``FILE.py:NAME`` or
``package.module:NAME`` and built with keyword arguments. :func:`check_pair` traces a pair
once before training and reports, by site name, what would otherwise fail deep inside Pyro.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import math
import re
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import is_identically_one
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyro_vae.guides import (
    ConditionalEncoder,
    ConvGaussianEncoder,
    GaussianMLPEncoder,
    LinearGaussianEncoder,
    MixturePriorEncoder,
    SemiSupervisedEncoder,
    SigmoidBeliefNetEncoder,
    TwoLayerGaussianEncoder,
)
from pyro_vae.guides.flows import DEFAULT_STEPS, FLOWS
from pyro_vae.models import (
    BernoulliMLPDecoder,
    ConditionalDecoder,
    ConvBernoulliDecoder,
    GaussianMLPDecoder,
    LinearGaussianDecoder,
    MixturePriorDecoder,
    SemiSupervisedDecoder,
    SigmoidBeliefNetDecoder,
    TwoLayerBernoulliDecoder,
)
from pyro_vae.models.priors import PRIORS, learned_prior
from pyro_vae.pairs.labels import LabelError, find_label_site, label_arguments, program_args


class PairError(ValueError):
    """A model/guide pair that cannot be loaded, built or run; the message names the site."""


class VAE(nn.Module):
    """A generative model p(z) p(x|z) and an amortized guide q(z|x), as one module.

    ``decoder.model(x)`` and ``encoder.guide(x)`` are the two Pyro programs; holding both in
    one ``nn.Module`` gives one ``state_dict`` for checkpoints and one ``.to(device)``.
    """

    def __init__(self, decoder: nn.Module, encoder: nn.Module):
        super().__init__()
        self.decoder = decoder
        self.encoder = encoder

    def model(self, x: torch.Tensor) -> None:
        self.decoder.model(x)

    def guide(self, x: torch.Tensor) -> None:
        self.encoder.guide(x)

    def per_point_guide(self, x: torch.Tensor) -> Any:
        """The encoder's per-point member of its own family (a flow guide's), or None: then
        ``diagnose`` fits a factorized Gaussian q* per point."""
        per_point = getattr(self.encoder, "per_point_guide", None)
        return per_point(x) if callable(per_point) else None


class SemiSupervisedVAE(VAE):
    """A VAE whose programs take labels where a batch has them, ``model(x, y=None)`` and
    ``guide(x, y=None)`` (M2), and the encoder's classification loss as Pyro's convention
    names it, ``model_classify(x, y)`` / ``guide_classify(x, y)``, trained on labelled
    batches."""

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self.decoder.model(x, y)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self.encoder.guide(x, y)

    def model_classify(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.encoder.model_classify(x, y)

    def guide_classify(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.encoder.guide_classify(x, y)


class ConditionalVAE(VAE):
    """A VAE conditioned on a label every batch has: ``model(x, y)``, ``guide(x, y)``."""

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.decoder.model(x, y)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.encoder.guide(x, y)


class FunctionPair:
    """Two plain functions ``model(x)`` and ``guide(x)`` whose parameters are ``pyro.param``s."""

    def __init__(self, model: Callable, guide: Callable):
        self.model = model
        self.guide = guide


def _with_prior(pair: VAE, prior: str, prior_components: int | None, z_dim: int, owner: str,
                binary: bool) -> VAE:  # fmt: skip
    """``pair`` with the decoder's prior set from the ``prior`` setting. Built after both
    networks, so that the default (no learned prior) draws the same initial weights as a
    pair built without one; a VampPrior's components are the encoder's Gaussian (its
    ``forward``) at the pseudo-inputs."""
    pair.decoder.prior = learned_prior(
        prior, prior_components, z_dim, owner=owner, encode=pair.encoder,
        input_shape=(pair.encoder.x_dim,), clamp_inputs=binary,
    )  # fmt: skip
    return pair


def _mlp(
    image_shape, z_dim=50, hidden=(200, 200), activation="tanh", *, flow="none",
    flow_steps=DEFAULT_STEPS, flow_hidden=None, prior="standard", prior_components=None,
) -> VAE:  # fmt: skip
    x_dim = math.prod(image_shape)
    pair = VAE(
        BernoulliMLPDecoder(x_dim, z_dim, hidden, activation),
        GaussianMLPEncoder(x_dim, z_dim, hidden, activation, flow=flow, flow_steps=flow_steps,
                           flow_hidden=flow_hidden),
    )  # fmt: skip
    return _with_prior(pair, prior, prior_components, z_dim, "mlp", binary=True)


def _gaussian_mlp(
    image_shape, z_dim=20, hidden=(200,), activation="tanh", *, flow="none",
    flow_steps=DEFAULT_STEPS, flow_hidden=None, prior="standard", prior_components=None,
) -> VAE:  # fmt: skip
    x_dim = math.prod(image_shape)
    pair = VAE(
        GaussianMLPDecoder(x_dim, z_dim, hidden, activation),
        GaussianMLPEncoder(x_dim, z_dim, hidden, activation, flow=flow, flow_steps=flow_steps,
                           flow_hidden=flow_hidden),
    )  # fmt: skip
    return _with_prior(pair, prior, prior_components, z_dim, "gaussian-mlp", binary=False)


def _conv(
    image_shape, z_dim=32, channels=(32, 64), hidden=256, *, flow="none",
    flow_steps=DEFAULT_STEPS, flow_hidden=None, prior="standard", prior_components=None,
) -> VAE:  # fmt: skip
    image_shape = tuple(image_shape)
    pair = VAE(
        ConvBernoulliDecoder(image_shape, z_dim, channels, hidden),
        ConvGaussianEncoder(image_shape, z_dim, channels, hidden, flow=flow,
                            flow_steps=flow_steps, flow_hidden=flow_hidden),
    )  # fmt: skip
    return _with_prior(pair, prior, prior_components, z_dim, "conv", binary=True)


def _two_layer(
    image_shape, z1_dim=100, z2_dim=50, hidden1=(100, 100), hidden2=(50, 50), activation="tanh",
    *, flow="none", flow_steps=DEFAULT_STEPS, flow_hidden=None, prior="standard",
    prior_components=None,
) -> VAE:  # fmt: skip
    x_dim = math.prod(image_shape)
    if prior == "vamp":
        raise ValueError(
            'two-layer: "prior": "vamp" mixes q(z|u_k) over pseudo-inputs, but the top layer '
            'z2 has no q(z2|x) of its own here (q(z2|z1) needs z1); use "prior": "mog"'
        )
    pair = VAE(
        TwoLayerBernoulliDecoder(x_dim, z1_dim, z2_dim, hidden1, hidden2, activation),
        TwoLayerGaussianEncoder(x_dim, z1_dim, z2_dim, hidden1, hidden2, activation,
                                flow=flow, flow_steps=flow_steps, flow_hidden=flow_hidden),
    )  # fmt: skip
    pair.decoder.prior = learned_prior(prior, prior_components, z2_dim, owner="two-layer")
    return pair


def _linear_gaussian(
    image_shape, z_dim=2, noise_scale=1.0, learn_noise=True, covariance="diagonal", *,
    flow="none", flow_steps=DEFAULT_STEPS, flow_hidden=None,
) -> VAE:  # fmt: skip
    x_dim = math.prod(image_shape)
    return VAE(
        LinearGaussianDecoder(x_dim, z_dim, noise_scale, learn_noise),
        LinearGaussianEncoder(x_dim, z_dim, covariance, flow=flow, flow_steps=flow_steps,
                              flow_hidden=flow_hidden),
    )  # fmt: skip


def _sbn(image_shape, z_dim=200, hidden=(), activation="tanh") -> VAE:
    x_dim = math.prod(image_shape)
    return VAE(
        SigmoidBeliefNetDecoder(x_dim, z_dim, hidden, activation),
        SigmoidBeliefNetEncoder(x_dim, z_dim, hidden, activation),
    )


def _sbn_nonlinear(image_shape, z_dim=200, hidden=(200,), activation="tanh") -> VAE:
    return _sbn(image_shape, z_dim, hidden, activation)


def _sbn_straight_through(
    image_shape, z_dim=200, hidden=(), activation="tanh", temperature=0.5
) -> VAE:
    x_dim = math.prod(image_shape)
    return VAE(
        SigmoidBeliefNetDecoder(x_dim, z_dim, hidden, activation),
        SigmoidBeliefNetEncoder(
            x_dim, z_dim, hidden, activation, straight_through=True, temperature=temperature
        ),
    )


def _ss_m2(
    image_shape, num_classes=10, z_dim=50, hidden=(500,), activation="softplus",
    classify_weight=50.0,
) -> SemiSupervisedVAE:  # fmt: skip
    x_dim = math.prod(image_shape)
    return SemiSupervisedVAE(
        SemiSupervisedDecoder(x_dim, num_classes, z_dim, hidden, activation),
        SemiSupervisedEncoder(
            x_dim, num_classes, z_dim, hidden, activation, classify_weight=classify_weight
        ),
    )


def _cvae(
    image_shape, num_classes=10, z_dim=20, hidden=(500,), activation="softplus"
) -> ConditionalVAE:
    x_dim = math.prod(image_shape)
    return ConditionalVAE(
        ConditionalDecoder(x_dim, num_classes, z_dim, hidden, activation),
        ConditionalEncoder(x_dim, num_classes, z_dim, hidden, activation),
    )


def _gmvae(image_shape, num_components=10, z_dim=10, hidden=(500,), activation="softplus") -> VAE:
    x_dim = math.prod(image_shape)
    return VAE(
        MixturePriorDecoder(x_dim, num_components, z_dim, hidden, activation),
        MixturePriorEncoder(x_dim, num_components, z_dim, hidden, activation),
    )


@dataclass(frozen=True)
class PairSpec:
    """One built-in pair: its factory ``factory(image_shape, **kwargs)`` and what it suits."""

    factory: Callable[..., VAE]
    likelihood: str
    description: str


#: The built-in pairs by name. A new pair is one entry here; tests iterate over this table.
PAIRS: dict[str, PairSpec] = {
    "mlp": PairSpec(
        _mlp,
        "bernoulli",
        "MLP VAE with Bernoulli likelihood; IWAE paper net: hidden=[200,200], z_dim=50, tanh; "
        "kwargs flow (iaf, planar, radial), flow_steps, prior (vamp, mog), prior_components",
    ),
    "gaussian-mlp": PairSpec(
        _gaussian_mlp,
        "gaussian",
        "MLP VAE with Gaussian likelihood for continuous data; kwargs flow, prior as mlp's",
    ),
    "conv": PairSpec(
        _conv,
        "bernoulli",
        "convolutional VAE with Bernoulli likelihood; kwargs flow, prior as mlp's",
    ),
    "two-layer": PairSpec(
        _two_layer,
        "bernoulli",
        "two stochastic layers (Burda et al. 2016), Bernoulli; kwargs flow (on both layers), "
        "prior (mog) for z2",
    ),
    "linear-gaussian": PairSpec(
        _linear_gaussian,
        "gaussian",
        "linear-Gaussian VAE with closed-form log p(x); kwarg flow on the diagonal guide",
    ),
    "sbn": PairSpec(
        _sbn,
        "bernoulli",
        "sigmoid belief net SBN-200 (Mnih & Gregor 2014): 200 binary latents, linear; "
        "train with --objective tracegraph",
    ),
    "sbn-nonlinear": PairSpec(
        _sbn_nonlinear,
        "bernoulli",
        "sigmoid belief net with a deterministic tanh layer (hidden=[200]) in decoder and "
        "encoder; train with --objective tracegraph",
    ),
    "sbn-st": PairSpec(
        _sbn_straight_through,
        "bernoulli",
        "linear SBN-200 with a straight-through guide (biased, reparameterized gradient; "
        "same discrete model); train with --objective elbo; kwargs temperature, hidden",
    ),
    "ss-m2": PairSpec(
        _ss_m2,
        "bernoulli",
        "semi-supervised M2 (Kingma et al. 2014): q(y|x), q(z|x,y), p(x|y,z), MLPs of 500 "
        "softplus units, z_dim 50; train with --objective enum --num-labelled N",
    ),
    "cvae": PairSpec(
        _cvae,
        "bernoulli",
        "class-conditional VAE: p(x|y,z) p(z), q(z|x,y); every batch labelled; "
        "`sample` draws one row per class",
    ),
    "gmvae": PairSpec(
        _gmvae,
        "bernoulli",
        "VAE with a Gaussian-mixture prior, component c enumerated (--objective enum): "
        "unsupervised clustering; num_components 10, z_dim 10",
    ),
}

#: Constructor arguments that name the number of classes of the labels; filled in from the
#: data set when a factory takes one and --pair-kwargs does not give it.
NUM_CLASSES_NAMES = ("num_classes", "n_classes", "num_labels", "label_dim", "y_dim")


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
#: ``pyro_vae.checkpoints:upgrade_checkpoint``, ...): a function of theirs named by a spec is
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


#: Constructor arguments that name the size of one data point; filled in from the data set
#: when a user's pair asks for them and they are not in ``--pair-kwargs``.
INPUT_SIZE_NAMES = (
    "x_dim",
    "input_dim",
    "input_size",
    "in_features",
    "data_dim",
    "obs_dim",
    "vocab_size",
    "num_features",
    "num_pixels",
)
#: Constructor arguments that name the (C, H, W) shape of one data point.
INPUT_SHAPE_NAMES = ("image_shape", "input_shape", "x_shape")


def input_arguments(
    factory: Callable, image_shape: tuple, num_classes: int | None = None
) -> dict[str, Any]:
    """The arguments of :data:`INPUT_SIZE_NAMES` / :data:`INPUT_SHAPE_NAMES` (and, for
    labelled data, :data:`NUM_CLASSES_NAMES`) that ``factory`` takes, with their values for
    data of ``image_shape``."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    filled: dict[str, Any] = {}
    for name in parameters:
        if name in INPUT_SIZE_NAMES:
            filled[name] = math.prod(image_shape)
        elif name in INPUT_SHAPE_NAMES:
            filled[name] = tuple(image_shape)
        elif name in NUM_CLASSES_NAMES and num_classes is not None:
            filled[name] = int(num_classes)
    return filled


def _call_with_shape(
    factory: Callable, kwargs: dict, image_shape: tuple, spec: str, num_classes: int | None = None
) -> Any:
    """Call a user factory, filling the input-size arguments it asks for (see
    :data:`INPUT_SIZE_NAMES`) unless ``kwargs`` gives them."""
    kwargs = {**input_arguments(factory, image_shape, num_classes), **kwargs}
    try:
        return factory(**kwargs)
    except TypeError as error:
        raise PairError(
            f"--pair {spec!r} with --pair-kwargs {kwargs}: {error}. "
            f"Its signature is {spec.rpartition(':')[2]}{_signature(factory)}"
        ) from error


def _signature(obj: Callable) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


#: --pair-kwargs that choose a flow on the guide, and those that choose the model's prior.
FLOW_KWARGS = ("flow", "flow_steps", "flow_hidden")
PRIOR_KWARGS = ("prior", "prior_components")


def _taking(names: Sequence[str]) -> list[str]:
    """The built-in pairs whose factories take every argument of ``names``."""
    return [
        name for name, spec in PAIRS.items()
        if all(n in inspect.signature(spec.factory).parameters for n in names)
    ]  # fmt: skip


def _check_guide_and_prior_kwargs(pair: str, factory: Callable, pair_kwargs: dict) -> None:
    """A flow or prior setting given to a built-in pair whose guide or model has no such
    choice: say so, and which pairs do take it (instead of Python's unexpected keyword)."""
    taken = inspect.signature(factory).parameters
    for names, what in ((FLOW_KWARGS, f"normalizing flow on its guide ({', '.join(FLOWS)})"),
                        (PRIOR_KWARGS, f"choice of prior ({', '.join(PRIORS)})")):  # fmt: skip
        given = [name for name in names if name in pair_kwargs and name not in taken]
        if given:
            raise PairError(
                f"--pair {pair} does not take {given[0]!r} in --pair-kwargs: it has no {what}. "
                f"The pairs that take {given[0]!r}: {', '.join(_taking([given[0]]))}"
            )


def build_pair(
    image_shape: tuple[int, ...],
    pair: str | None = None,
    pair_kwargs: dict | None = None,
    model: str | None = None,
    guide: str | None = None,
    num_classes: int | None = None,
) -> Any:
    """Build a pair from a built-in name, a ``FILE.py:NAME``/``module:NAME`` spec, or two
    function specs ``model``/``guide``. ``num_classes`` (the data set's, if labelled) fills
    a factory argument of :data:`NUM_CLASSES_NAMES` that ``pair_kwargs`` does not give."""
    pair_kwargs = dict(pair_kwargs or {})
    if model or guide:
        if pair:
            raise PairError("give either --pair or --model/--guide, not both")
        if not (model and guide):
            missing = "--guide" if model else "--model"
            raise PairError(f"--model and --guide go together; {missing} is missing")
        model_fn = load_object(model, flag="--model")
        check_program(model_fn, model, "--model")
        guide_fn = load_object(guide, flag="--guide")
        check_program(guide_fn, guide, "--guide")
        return FunctionPair(model_fn, guide_fn)
    if pair is None:
        raise PairError(f"no pair given: use --pair NAME (built-in: {', '.join(PAIRS)})")
    if pair in PAIRS:
        factory = PAIRS[pair].factory
        filled = input_arguments(factory, image_shape, num_classes)
        pair_kwargs = {**{k: v for k, v in filled.items() if k in NUM_CLASSES_NAMES},
                       **pair_kwargs}  # fmt: skip
        _check_guide_and_prior_kwargs(pair, factory, pair_kwargs)
        try:
            return factory(tuple(image_shape), **pair_kwargs)
        except ValueError as error:
            raise PairError(f"--pair {pair} --pair-kwargs {pair_kwargs}: {error}") from error
        except TypeError as error:
            raise PairError(
                f"--pair {pair} does not take --pair-kwargs {pair_kwargs}: {error}. "
                f"It takes {_signature(factory)}"
            ) from error
    if ":" not in pair:
        raise PairError(
            f"unknown pair {pair!r}: built-in pairs are {', '.join(PAIRS)}; "
            "a pair of your own is FILE.py:NAME or package.module:NAME"
        )
    obj = load_object(pair)
    check_pair_factory(obj, pair)
    built = (
        _call_with_shape(obj, pair_kwargs, image_shape, pair, num_classes) if callable(obj) else obj
    )
    if not (callable(getattr(built, "model", None)) and callable(getattr(built, "guide", None))):
        raise PairError(
            f"--pair {pair!r} built a {type(built).__name__}, which lacks methods model(x) and "
            "guide(x); a pair is a class or factory whose instance has both"
        )
    return built


def pair_to(pair: Any, device: torch.device) -> Any:
    """Move a pair's parameters to ``device`` (modules by ``.to``; param-store params follow)."""
    if isinstance(pair, nn.Module):
        pair.to(device)
    else:
        for module in pair_modules(pair):
            module.to(device)
    return pair


def pair_modules(pair: Any) -> list[nn.Module]:
    """The ``nn.Module`` objects of a pair: the pair itself, or the modules among its attributes
    (a pair that is a plain object holding an encoder and a decoder). For two plain functions
    (``--model``/``--guide``), the modules they refer to: globals of their module and
    variables of their closures (``pyro.module("decoder", decoder)`` at module level)."""
    if isinstance(pair, nn.Module):
        return [pair]
    base = getattr(pair, "base_pair", None)  # an estimators.EvaluationPair view
    if base is not None:
        return pair_modules(base)
    if isinstance(pair, FunctionPair):
        return _referenced_modules(pair.model, pair.guide)
    attributes = vars(pair).values() if hasattr(pair, "__dict__") else ()
    return [value for value in attributes if isinstance(value, nn.Module)]


def _referenced_modules(*functions: Callable) -> list[nn.Module]:
    """The ``nn.Module`` objects that ``functions`` name (globals, closure variables),
    each once, in order; callables that are not plain functions contribute none."""
    found: list[nn.Module] = []
    for function in functions:
        if isinstance(function, nn.Module):
            candidates = [function]
        else:
            try:
                names = inspect.getclosurevars(function)
            except TypeError:
                continue
            candidates = [*names.nonlocals.values(), *names.globals.values()]
        found += [
            m for m in candidates if isinstance(m, nn.Module) and not any(m is f for f in found)
        ]
    return found


@contextlib.contextmanager
def evaluation_mode(pair: Any) -> Iterator[None]:
    """Every module of ``pair`` in ``eval()`` mode (dropout off, BatchNorm on its running
    statistics) meanwhile; each submodule's own mode is restored on exit. Estimators run in
    it, so log p(x) of a point does not depend on the other points of its batch."""
    modules = [m for root in pair_modules(pair) for m in root.modules()]
    modes = [m.training for m in modules]
    try:
        for module in modules:
            module.training = False
        yield
    finally:
        for module, mode in zip(modules, modes, strict=True):
            module.training = mode


def set_training_mode(pair: Any, training: bool = True) -> None:
    """``train()`` (or ``eval()``) on every module of ``pair``: SVI steps run in train mode."""
    for module in pair_modules(pair):
        module.train(training)


# ---------------------------------------------------------------------------------------------
# Recording a pair object so that the command line can rebuild it


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


# ---------------------------------------------------------------------------------------------
# The check


#: Name of the plate over importance samples that estimators put around a pair's programs.
PARTICLE_PLATE = "_pyro_vae_samples"


@dataclass(frozen=True)
class PairInfo:
    """What one trace of a pair shows: its sites and plate nesting.

    ``latent_sites`` are all of the model's latent sites; ``global_sites`` those among them
    outside the data plate (shared by every point: Bayesian decoder weights, a deep
    exponential family's top layer). ``scaled_sites`` carried a ``poutine.scale`` (or a
    subsampling plate's scale) in the pair's own programs: estimators use their unscaled log
    densities. ``data_subsampled``: the pair's data plate subsamples a larger size itself.
    """

    latent_sites: tuple[str, ...]
    observed_sites: tuple[str, ...]
    max_plate_nesting: int
    data_plate: str
    vectorizable: bool
    global_sites: tuple[str, ...] = ()
    scaled_sites: tuple[str, ...] = ()
    data_plate_dim: int = -1
    data_subsampled: bool = False
    data_plate_size: int | None = None  # the full size of a data plate the pair subsamples
    # Labels (pyro_vae.labels): the programs take a second argument y / need it; the model
    # site that y observes (latent without y: q(y|x) classifies); model_classify/guide_classify.
    takes_labels: bool = False
    needs_labels: bool = False
    label_site: str | None = None
    has_classifier: bool = False
    #: Guide sites with a finite discrete support that TraceEnum_ELBO can sum out exactly.
    enumerable_sites: tuple[str, ...] = ()

    @property
    def local_latent_sites(self) -> tuple[str, ...]:
        """The latent sites inside the data plate: one value per data point."""
        return tuple(n for n in self.latent_sites if n not in self.global_sites)


def _sample_sites(trace) -> dict:
    return {name: site for name, site in trace.nodes.items() if is_sample_site(site)}


def is_sample_site(site: dict) -> bool:
    """A real ``pyro.sample`` site: not a plate's subsample site, not auxiliary."""
    return (
        site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("is_auxiliary")
    )


def _batch_size_at(site: dict, dim: int) -> int:
    """The size of the site's batch shape at ``dim`` (1 where it broadcasts)."""
    shape = tuple(site["fn"].batch_shape)
    return shape[dim] if len(shape) >= -dim else 1


def _covers(frame: Any, site: dict, batch_size: int) -> bool:
    """Whether a plate frame runs over the ``batch_size`` data points at this site. A plate
    without a size (``pyro.plate("data")``, size -1) does when the site's batch dim there
    holds the points."""
    if frame.size in (None, -1):
        return _batch_size_at(site, frame.dim) == batch_size
    return frame.size == batch_size


def data_plate_dim(site: dict, batch_size: int, name: str | None = None) -> tuple[str, int] | None:
    """The (name, dim) of the plate over the data points that ``site`` sits in, or None.

    ``name`` (the data plate :func:`check_pair` found) picks the plate by name; without it,
    a vectorized plate that covers ``batch_size`` points, ``"data"`` first.
    """
    frames = [f for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE]
    if name is not None:
        found = [f for f in frames if f.name == name]
        return (found[0].name, found[0].dim) if found else None
    matching = [f for f in frames if _covers(f, site, batch_size)]
    named = [f for f in matching if f.name == "data"]
    frame = (named or matching or [None])[0]
    return None if frame is None else (frame.name, frame.dim)


def describe_plates(site: dict) -> str:
    """The plates a site sits in, as found: name, dim and size (size None: unsized)."""
    frames = [f for f in site["cond_indep_stack"] if f.name != PARTICLE_PLATE]
    if not frames:
        return "no plate"
    parts = []
    for f in frames:
        size = "no size" if f.size in (None, -1) else f"size {f.size}"
        covered = _batch_size_at(site, f.dim) if f.vectorized else None
        extra = f", batch dim there {covered}" if f.size in (None, -1) else ""
        parts.append(f"plate {f.name!r} (dim {f.dim}, {size}{extra})")
    return ", ".join(parts)


#: What to do when a likelihood rejects the data, by the distribution named in torch's error.
_SUPPORT_ADVICE: dict[str, str] = {
    "Bernoulli": "a Bernoulli likelihood needs x in {0, 1}: use --binarize dynamic or static, "
    "or a Gaussian-likelihood pair such as --pair gaussian-mlp",
    "ContinuousBernoulli": "a continuous Bernoulli needs x in [0, 1]: scale the data (e.g. "
    "--pixel-scale 255 for 0-255 pixels)",
    "Beta": "a Beta likelihood needs x strictly inside (0, 1): scale the data and clip 0 and 1",
    "Poisson": "a Poisson likelihood needs non-negative integer counts: keep count data as "
    "counts (--pixel-scale none) and do not binarize",
    "Multinomial": "a Multinomial likelihood needs non-negative integer counts summing to at "
    "most total_count per row: keep count data as counts (--pixel-scale none)",
    "Categorical": "a Categorical likelihood needs integer class indices",
    "Binomial": "a Binomial likelihood needs integer counts between 0 and total_count",
}


def _support_message(label: str, error: Exception, x: torch.Tensor) -> str | None:
    message = str(error)
    if "support" not in message or "value argument" not in message:
        return None
    found = re.search(r"within the support \((.*?)\) of the distribution (\w+)", message)
    support, likelihood = (found.group(1), found.group(2)) if found else ("?", "likelihood")
    advice = _SUPPORT_ADVICE.get(likelihood, f"the {likelihood} likelihood's support is {support}")
    integers = bool(torch.equal(x, x.round()))
    kind = "integers" if integers else "non-integer values"
    return (
        f"the {label} rejected the data: the {likelihood} likelihood got values outside its "
        f"support {support} (data range [{x.min().item():.3g}, {x.max().item():.3g}], {kind}). "
        f"{advice[0].upper()}{advice[1:]}. ({error})"
    )


def _run(fn: Callable, label: str, x: torch.Tensor):
    try:
        return fn()
    except PairError:
        raise
    except Exception as error:
        message = _support_message(label, error, x)
        if message is not None:
            raise PairError(message) from error
        raise PairError(
            f"the {label} failed on a batch of shape {tuple(x.shape)}: "
            f"{type(error).__name__}: {error}"
        ) from error


def _is_scaled(site: dict) -> bool:
    return not is_identically_one(site["scale"])


def _subsample_size(trace, data_plate: str) -> int | None:
    """The full size of the data plate when the pair subsamples it itself
    (``plate(name, size, subsample_size=B)`` or ``subsample=``, B smaller than the size)."""
    site = trace.nodes.get(data_plate)
    if site is None or site["type"] != "sample" or not site_is_subsample(site):
        return None
    size, value = getattr(site["fn"], "size", None), site["value"]
    if size is not None and value is not None and len(value) != size:
        return int(size)
    return None


def check_pair(pair: Any, x: torch.Tensor, y: torch.Tensor | None = None) -> PairInfo:
    """Trace ``guide(x)`` and ``model(x)`` once and report what does not fit, by site name.

    Checks: every latent of the model is sampled by the guide and vice versa; the guide does
    not sample an observed site; the model observes at least one site, and only inside the
    plate over the data points; distributions agree on event shapes; a latent outside that
    plate is global (its shape does not change with the batch size: traced twice to tell a
    forgotten plate from a global); log-densities are finite. Also finds the plate nesting,
    the global and the scaled sites, and whether the pair survives Pyro's vectorization over
    particles. Modules are traced in eval mode, so a check leaves BatchNorm statistics alone.

    A pair whose programs take labels (``model(x, y=None)``, see :mod:`pyro_vae.labels`) is
    checked with the labels ``y`` and without them (only with them when it needs them), and
    its label site is found.
    """
    if x.dim() < 2 or x.shape[0] < 2:
        raise PairError(f"check_pair needs a batch of at least 2 points, got {tuple(x.shape)}")
    try:
        arguments = label_arguments(pair)
    except LabelError as error:
        raise PairError(str(error)) from error
    if arguments.needs and y is None:
        raise PairError(
            "the pair's programs need labels (model(x, y) with no default for y), but the "
            "data set has none: train it on a labelled data set (mnist, fashion-mnist, "
            "digits, or an .npz with y_train/y_valid/y_test), or give y a default of None "
            "and sample it where it is missing"
        )
    if not arguments.takes:
        y = None
    with evaluation_mode(pair), torch.no_grad():
        if arguments.needs:
            info = _check_pair(pair, x, y)
            return replace(info, takes_labels=True, needs_labels=True,
                           has_classifier=arguments.classifier)  # fmt: skip
        info = _check_pair(pair, x)
        if y is None:
            return replace(info, takes_labels=arguments.takes,
                           has_classifier=arguments.classifier)  # fmt: skip
        labelled = _check_pair(pair, x, y, "with labels")
        label_site = find_label_site(pair.model, x, y)
    return replace(
        info,
        takes_labels=True,
        label_site=label_site,
        has_classifier=arguments.classifier,
        max_plate_nesting=max(info.max_plate_nesting, labelled.max_plate_nesting),
        vectorizable=info.vectorizable and labelled.vectorizable,
    )


def _check_pair(
    pair: Any, x: torch.Tensor, y: torch.Tensor | None = None, called: str = ""
) -> PairInfo:
    args = program_args(x, y)
    guide_label, model_label = (f"guide {called}".strip(), f"model {called}".strip())
    guide_trace = _run(lambda: poutine.trace(pair.guide).get_trace(*args), guide_label, x)
    model_trace = _run(
        lambda: poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(*args),
        model_label,
        x,
    )
    guide_sites = _sample_sites(guide_trace)
    model_sites = _sample_sites(model_trace)
    observed = [n for n, s in model_sites.items() if s["is_observed"]]
    latent = [n for n, s in model_sites.items() if not s["is_observed"]]
    if not observed:
        raise PairError(
            "the model observes no site: it must have pyro.sample('x', ..., obs=x) "
            f"(its sample sites: {list(model_sites)})"
        )
    problems = []
    missing = [n for n in latent if n not in guide_sites]
    if missing:
        problems.append(f"latent site(s) {missing} of the model are not sampled by the guide")
    for name, site in guide_sites.items():
        if site["is_observed"]:
            problems.append(f"the guide observes site {name!r}; observations belong in the model")
        elif name in observed:
            problems.append(
                f"the guide samples {name!r}, which the model observes: a guide samples "
                "only latent sites"
            )
        elif name not in model_sites:
            problems.append(f"the guide samples {name!r}, which the model does not have")
    for name in latent:
        if name not in guide_sites:
            continue
        model_fn, guide_fn = model_sites[name]["fn"], guide_sites[name]["fn"]
        if model_fn.event_shape != guide_fn.event_shape:
            problems.append(
                f"site {name!r}: event shape {tuple(guide_fn.event_shape)} in the guide but "
                f"{tuple(model_fn.event_shape)} in the model (a missing .to_event(1)?)"
            )
        elif model_fn.batch_shape != guide_fn.batch_shape:
            problems.append(
                f"site {name!r}: batch shape {tuple(guide_fn.batch_shape)} in the guide but "
                f"{tuple(model_fn.batch_shape)} in the model"
            )
    batch_size = x.shape[0]
    plates = set()
    outside: dict[str, tuple[str, dict]] = {}
    for label, sites in (("model", model_sites), ("guide", guide_sites)):
        for name, site in sites.items():
            found = data_plate_dim(site, batch_size)
            if found is not None:
                plates.add(found)
            elif label == "model" and site["is_observed"]:
                problems.append(
                    f"model site {name!r} observes data outside a plate over the {batch_size} "
                    f"data points (found: {describe_plates(site)}): wrap it in `with "
                    "pyro.plate('data', x.shape[0]):` (log p(x) is estimated per data point)"
                )
            else:
                outside.setdefault(name, (label, site))
    problems += _forgotten_plates(pair, x, y, outside)
    if problems:
        where = f" (called {called})" if called else ""
        raise PairError(
            f"the model/guide pair does not fit{where}:\n  - " + "\n  - ".join(problems)
        )
    for label, trace in (("guide", guide_trace), ("model", model_trace)):
        _run(trace.compute_log_prob, f"{label} log-density", x)
        for name, site in _sample_sites(trace).items():
            if not torch.isfinite(site["log_prob"]).all():
                raise PairError(
                    f"{label} site {name!r}: log-density is not finite on this batch "
                    "(data outside the likelihood's support, or NaN parameters?)"
                )
    if len({dim for _, dim in plates}) > 1:
        raise PairError(
            "the plate over the data points sits at different dims across sites: "
            + ", ".join(f"plate {n!r} at dim {d}" for n, d in sorted(plates))
            + "; give it one dim (pyro.plate('data', x.shape[0], dim=-1) everywhere)"
        )
    frames = [
        f
        for trace in (model_trace, guide_trace)
        for site in trace.nodes.values()
        if is_sample_site(site)
        for f in site["cond_indep_stack"]
        if f.vectorized
    ]
    max_plate_nesting = max([-f.dim for f in frames] + [1])
    data_plate, data_dim = sorted(plates)[0]
    subsampled_size = _subsample_size(model_trace, data_plate) or _subsample_size(
        guide_trace, data_plate
    )
    scaled = [
        name
        for sites in (model_sites, guide_sites)
        for name, site in sites.items()
        if _is_scaled(site)
    ]
    return PairInfo(
        latent_sites=tuple(latent),
        observed_sites=tuple(observed),
        max_plate_nesting=max_plate_nesting,
        data_plate=data_plate,
        vectorizable=_vectorizable(pair, args, max_plate_nesting),
        global_sites=tuple(n for n in latent if n in outside),
        scaled_sites=tuple(dict.fromkeys(scaled)),
        data_plate_dim=data_dim,
        data_subsampled=subsampled_size is not None,
        data_plate_size=subsampled_size,
        enumerable_sites=tuple(
            name
            for name, site in guide_sites.items()
            if not site["is_observed"] and _enumerable(site["fn"])
        ),
    )


def _enumerable(fn: Any) -> bool:
    """A discrete distribution whose support TraceEnum_ELBO can sum over."""
    return bool(getattr(fn, "has_enumerate_support", False)) and not fn.has_rsample


def _forgotten_plates(
    pair: Any, x: torch.Tensor, y: torch.Tensor | None, outside: dict[str, tuple[str, dict]]
) -> list:
    """Sites outside the data plate whose shape follows the batch size: a forgotten plate,
    not a global latent. Found by tracing the guide and model again on one point fewer."""
    if not outside:
        return []
    smaller = x[: x.shape[0] - 1]
    args = program_args(smaller, None if y is None else y[: x.shape[0] - 1])
    guide_trace = _run(lambda: poutine.trace(pair.guide).get_trace(*args), "guide", smaller)
    model_trace = _run(
        lambda: poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(*args),
        "model",
        smaller,
    )
    problems = []
    for name, (label, site) in outside.items():
        again = (guide_trace if label == "guide" else model_trace).nodes.get(name)
        if again is None or tuple(again["value"].shape) != tuple(site["value"].shape):
            problems.append(
                f"{label} site {name!r} is not inside a plate over the {x.shape[0]} data "
                f"points (found: {describe_plates(site)}), yet its shape "
                f"{tuple(site['value'].shape)} follows the batch size: wrap it in `with "
                "pyro.plate('data', x.shape[0]):` (a global latent, shared by all points, "
                "has the same shape for any batch)"
            )
    return problems


def _vectorizable(pair: Any, args: tuple, max_plate_nesting: int) -> bool:
    """Whether the pair runs with particles vectorized in an outer plate (Pyro's way)."""
    elbo = pyro.infer.Trace_ELBO(
        num_particles=2, vectorize_particles=True, max_plate_nesting=max_plate_nesting
    )
    try:
        with torch.no_grad():
            loss = elbo.loss(pair.model, pair.guide, *args)
    except Exception:
        return False
    return bool(torch.isfinite(torch.as_tensor(loss)))
