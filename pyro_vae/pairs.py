"""Model/guide pairs: the built-in table, user pairs from files or modules, and a check.

A *pair* is any object with two Pyro programs ``model(x)`` and ``guide(x)`` over a batch
``x`` of shape ``(B, D)``, the contract of Pyro's tutorial VAE. Built-in pairs are listed in
:data:`PAIRS`, one factory per name; a user pair is named ``FILE.py:NAME`` or
``package.module:NAME`` and built with keyword arguments. :func:`check_pair` traces a pair
once before training and reports, by site name, what would otherwise fail deep inside Pyro.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyro_vae.guides import (
    ConvGaussianEncoder,
    GaussianMLPEncoder,
    LinearGaussianEncoder,
    SigmoidBeliefNetEncoder,
    TwoLayerGaussianEncoder,
)
from pyro_vae.models import (
    BernoulliMLPDecoder,
    ConvBernoulliDecoder,
    GaussianMLPDecoder,
    LinearGaussianDecoder,
    SigmoidBeliefNetDecoder,
    TwoLayerBernoulliDecoder,
)


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


class FunctionPair:
    """Two plain functions ``model(x)`` and ``guide(x)`` whose parameters are ``pyro.param``s."""

    def __init__(self, model: Callable, guide: Callable):
        self.model = model
        self.guide = guide


def _mlp(image_shape, z_dim=50, hidden=(200, 200), activation="tanh") -> VAE:
    x_dim = math.prod(image_shape)
    return VAE(
        BernoulliMLPDecoder(x_dim, z_dim, hidden, activation),
        GaussianMLPEncoder(x_dim, z_dim, hidden, activation),
    )


def _gaussian_mlp(image_shape, z_dim=20, hidden=(200,), activation="tanh") -> VAE:
    x_dim = math.prod(image_shape)
    return VAE(
        GaussianMLPDecoder(x_dim, z_dim, hidden, activation),
        GaussianMLPEncoder(x_dim, z_dim, hidden, activation),
    )


def _conv(image_shape, z_dim=32, channels=(32, 64), hidden=256) -> VAE:
    image_shape = tuple(image_shape)
    return VAE(
        ConvBernoulliDecoder(image_shape, z_dim, channels, hidden),
        ConvGaussianEncoder(image_shape, z_dim, channels, hidden),
    )


def _two_layer(
    image_shape, z1_dim=100, z2_dim=50, hidden1=(100, 100), hidden2=(50, 50), activation="tanh"
) -> VAE:
    x_dim = math.prod(image_shape)
    return VAE(
        TwoLayerBernoulliDecoder(x_dim, z1_dim, z2_dim, hidden1, hidden2, activation),
        TwoLayerGaussianEncoder(x_dim, z1_dim, z2_dim, hidden1, hidden2, activation),
    )


def _linear_gaussian(
    image_shape, z_dim=2, noise_scale=1.0, learn_noise=True, covariance="diagonal"
) -> VAE:
    x_dim = math.prod(image_shape)
    return VAE(
        LinearGaussianDecoder(x_dim, z_dim, noise_scale, learn_noise),
        LinearGaussianEncoder(x_dim, z_dim, covariance),
    )


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
        "MLP VAE with Bernoulli likelihood; IWAE paper net: hidden=[200,200], z_dim=50, tanh",
    ),
    "gaussian-mlp": PairSpec(
        _gaussian_mlp, "gaussian", "MLP VAE with Gaussian likelihood for continuous data"
    ),
    "conv": PairSpec(_conv, "bernoulli", "convolutional VAE with Bernoulli likelihood"),
    "two-layer": PairSpec(
        _two_layer, "bernoulli", "two stochastic layers (Burda et al. 2016), Bernoulli"
    ),
    "linear-gaussian": PairSpec(
        _linear_gaussian, "gaussian", "linear-Gaussian VAE with closed-form log p(x)"
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
}


def load_object(spec: str, *, flag: str = "--pair") -> Any:
    """Import ``NAME`` from ``FILE.py:NAME`` or ``package.module:NAME``."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise PairError(
            f"{flag} {spec!r}: expected FILE.py:NAME or package.module:NAME "
            f"(or a built-in pair: {', '.join(PAIRS)})"
        )
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise PairError(f"{flag} {spec!r}: file {str(path)!r} does not exist")
        module_name = f"_pyro_vae_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up here
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[module_name]
            raise PairError(
                f"{flag} {spec!r}: importing {str(path)!r} failed: {type(error).__name__}: {error}"
            ) from error
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


def resolve_spec(spec: str) -> str:
    """Make a ``FILE.py:NAME`` spec absolute, so a run directory can rebuild it from anywhere."""
    target, sep, name = spec.rpartition(":")
    if sep and target.endswith(".py"):
        return f"{Path(target).expanduser().resolve()}:{name}"
    return spec


def _call_with_shape(factory: Callable, kwargs: dict, image_shape: tuple, spec: str) -> Any:
    """Call a user factory, filling ``x_dim``/``image_shape`` if it asks for them."""
    kwargs = dict(kwargs)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    if "x_dim" in parameters and "x_dim" not in kwargs:
        kwargs["x_dim"] = math.prod(image_shape)
    if "image_shape" in parameters and "image_shape" not in kwargs:
        kwargs["image_shape"] = tuple(image_shape)
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


def build_pair(
    image_shape: tuple[int, ...],
    pair: str | None = None,
    pair_kwargs: dict | None = None,
    model: str | None = None,
    guide: str | None = None,
) -> Any:
    """Build a pair from a built-in name, a ``FILE.py:NAME``/``module:NAME`` spec, or two
    function specs ``model``/``guide``."""
    pair_kwargs = dict(pair_kwargs or {})
    if model or guide:
        if pair:
            raise PairError("give either --pair or --model/--guide, not both")
        if not (model and guide):
            missing = "--guide" if model else "--model"
            raise PairError(f"--model and --guide go together; {missing} is missing")
        model_fn = load_object(model, flag="--model")
        guide_fn = load_object(guide, flag="--guide")
        for flag, fn in (("--model", model_fn), ("--guide", guide_fn)):
            if not callable(fn):
                raise PairError(f"{flag} {model if flag == '--model' else guide!r} is not callable")
        return FunctionPair(model_fn, guide_fn)
    if pair is None:
        raise PairError(f"no pair given: use --pair NAME (built-in: {', '.join(PAIRS)})")
    if pair in PAIRS:
        factory = PAIRS[pair].factory
        try:
            return factory(tuple(image_shape), **pair_kwargs)
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
    built = _call_with_shape(obj, pair_kwargs, image_shape, pair) if callable(obj) else obj
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
    return pair


@dataclass(frozen=True)
class PairInfo:
    """What one trace of a pair shows: its sites and plate nesting."""

    latent_sites: tuple[str, ...]
    observed_sites: tuple[str, ...]
    max_plate_nesting: int
    data_plate: str
    vectorizable: bool


def _sample_sites(trace) -> dict:
    return {name: site for name, site in trace.nodes.items() if is_sample_site(site)}


def is_sample_site(site: dict) -> bool:
    """A real ``pyro.sample`` site: not a plate's subsample site, not auxiliary."""
    return (
        site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("is_auxiliary")
    )


def data_plate_dim(site: dict, batch_size: int) -> tuple[str, int] | None:
    """The (name, dim) of the plate over the data points that ``site`` sits in."""
    frames = [f for f in site["cond_indep_stack"] if f.vectorized and f.size == batch_size]
    named = [f for f in frames if f.name == "data"]
    frame = (named or frames or [None])[0]
    return None if frame is None else (frame.name, frame.dim)


def _run(fn: Callable, label: str, x: torch.Tensor):
    try:
        return fn()
    except PairError:
        raise
    except Exception as error:
        message = str(error)
        if "support" in message and "value argument" in message:
            raise PairError(
                f"the {label} rejected the data: a likelihood got values outside its support "
                f"(data range [{x.min().item():.3g}, {x.max().item():.3g}]). A Bernoulli "
                "likelihood needs x in {0, 1}: use --binarize dynamic or static, or a "
                f"Gaussian-likelihood pair such as --pair gaussian-mlp. ({error})"
            ) from error
        raise PairError(
            f"the {label} failed on a batch of shape {tuple(x.shape)}: "
            f"{type(error).__name__}: {error}"
        ) from error


def check_pair(pair: Any, x: torch.Tensor) -> PairInfo:
    """Trace ``guide(x)`` and ``model(x)`` once and report what does not fit, by site name.

    Checks: every latent of the model is sampled by the guide and vice versa; the guide does
    not sample an observed site; the model observes at least one site; distributions agree on
    event shapes; every site sits in a plate over the data points (needed for per-datapoint
    log p(x)); log-densities are finite. Also finds the plate nesting and whether the pair
    survives Pyro's vectorization over particles.
    """
    if x.dim() < 2 or x.shape[0] < 2:
        raise PairError(f"check_pair needs a batch of at least 2 points, got {tuple(x.shape)}")
    guide_trace = _run(lambda: poutine.trace(pair.guide).get_trace(x), "guide", x)
    model_trace = _run(
        lambda: poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(x),
        "model",
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
    for label, sites in (("model", model_sites), ("guide", guide_sites)):
        for name, site in sites.items():
            found = data_plate_dim(site, batch_size)
            if found is None:
                problems.append(
                    f"{label} site {name!r} is not inside a plate over the {batch_size} data "
                    "points: wrap it in `with pyro.plate('data', x.shape[0]):` (per-datapoint "
                    "log p(x) needs every site local to a data point)"
                )
            else:
                plates.add(found)
    if problems:
        raise PairError("the model/guide pair does not fit:\n  - " + "\n  - ".join(problems))
    for label, trace in (("guide", guide_trace), ("model", model_trace)):
        _run(trace.compute_log_prob, f"{label} log-density", x)
        for name, site in _sample_sites(trace).items():
            if not torch.isfinite(site["log_prob"]).all():
                raise PairError(
                    f"{label} site {name!r}: log-density is not finite on this batch "
                    "(data outside the likelihood's support, or NaN parameters?)"
                )
    if len({dim for _, dim in plates}) > 1:
        raise PairError(f"the data plate sits at different dims across sites: {sorted(plates)}")
    frames = [
        f
        for trace in (model_trace, guide_trace)
        for site in trace.nodes.values()
        if is_sample_site(site)
        for f in site["cond_indep_stack"]
        if f.vectorized
    ]
    max_plate_nesting = max([-f.dim for f in frames] + [1])
    data_plate = sorted(plates)[0][0]
    return PairInfo(
        latent_sites=tuple(latent),
        observed_sites=tuple(observed),
        max_plate_nesting=max_plate_nesting,
        data_plate=data_plate,
        vectorizable=_vectorizable(pair, x, max_plate_nesting),
    )


def _vectorizable(pair: Any, x: torch.Tensor, max_plate_nesting: int) -> bool:
    """Whether the pair runs with particles vectorized in an outer plate (Pyro's way)."""
    elbo = pyro.infer.Trace_ELBO(
        num_particles=2, vectorize_particles=True, max_plate_nesting=max_plate_nesting
    )
    try:
        with torch.no_grad():
            loss = elbo.loss(pair.model, pair.guide, x)
    except Exception:
        return False
    return bool(torch.isfinite(torch.as_tensor(loss)))
