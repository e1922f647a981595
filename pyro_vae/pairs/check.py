"""The contract a pair must meet and its check: `check_pair` traces a pair once and reports,
by site name, what would otherwise fail deep inside Pyro; `PairInfo` is what it finds."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pyro
import torch
from pyro import poutine

from pyro_vae.pairs.errors import PairError
from pyro_vae.pairs.labels import LabelError, find_label_site, label_arguments, program_args
from pyro_vae.pairs.local_params import (
    MODULE_SEPARATOR,
    LocalParams,
    per_point_params,
    rows_of_points,
)
from pyro_vae.pairs.networks import evaluation_mode
from pyro_vae.pairs.shape_errors import plate_mismatch_message, width_mismatch_message
from pyro_vae.pairs.sites import (
    _enumerable,
    _is_scaled,
    _sample_sites,
    _subsample_size,
    data_plate_dim,
    describe_plates,
    is_sample_site,
)


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
    # Labels (pyro_vae.pairs.labels): the programs take a second argument y / need it; the model
    # site that y observes (latent without y: q(y|x) classifies); model_classify/guide_classify.
    takes_labels: bool = False
    needs_labels: bool = False
    label_site: str | None = None
    has_classifier: bool = False
    #: Guide sites with a finite discrete support that TraceEnum_ELBO can sum out exactly.
    enumerable_sites: tuple[str, ...] = ()
    #: ``pyro.param``s with one row per training point (a guide that is not amortized, as
    #: the sparse gamma DEF's): see :mod:`pyro_vae.pairs.local_params`.
    local_params: tuple[str, ...] = ()

    @property
    def local_latent_sites(self) -> tuple[str, ...]:
        """The latent sites inside the data plate: one value per data point."""
        return tuple(n for n in self.latent_sites if n not in self.global_sites)


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
        message = (
            _support_message(label, error, x)
            or plate_mismatch_message(label, error)
            or width_mismatch_message(label, error, x)
        )
        if message is not None:
            raise PairError(message) from error
        raise PairError(
            f"the {label} failed on a batch of shape {tuple(x.shape)}: "
            f"{type(error).__name__}: {error}"
        ) from error


def check_pair(
    pair: Any,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    points: torch.Tensor | Callable[[], torch.Tensor] | None = None,
    point_labels: torch.Tensor | None = None,
) -> PairInfo:
    """Trace ``guide(x)`` and ``model(x)`` once and report what does not fit, by site name.

    Checks: every latent of the model is sampled by the guide and vice versa; the guide does
    not sample an observed site; the model observes at least one site, and only inside the
    plate over the data points; distributions agree on event shapes; a latent outside that
    plate is global (its shape does not change with the batch size: traced twice to tell a
    forgotten plate from a global); log-densities are finite. Also finds the plate nesting,
    the global and the scaled sites, and whether the pair survives Pyro's vectorization over
    particles. Modules are traced in eval mode, so a check leaves BatchNorm statistics alone.

    A pair whose programs take labels (``model(x, y=None)``, see :mod:`pyro_vae.pairs.labels`) is
    checked with the labels ``y`` and without them (only with them when it needs them), and
    its label site is found.

    ``points``: all the training points (``point_labels`` their labels), or a function that
    returns them (called only where needed), for a guide that is not amortized. Its
    ``pyro.param``s hold one row per training point, so it traces only on all of them: where
    the check on ``x`` fails, or the guide's params follow the size of ``x``, the pair is
    checked again on ``points`` and its per-point params are named in
    :attr:`PairInfo.local_params` (the trace on one point fewer then selects their rows,
    :class:`~pyro_vae.pairs.local_params.LocalParams`).
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
        y = point_labels = None
    if callable(points):
        points = points()
    store = pyro.get_param_store()
    before = set(store.keys())
    try:
        info = _check_labelled(pair, x, y, arguments)
    except PairError as error:
        if points is None or not _may_be_per_point(points.shape[0], x, before):
            raise
        return _check_per_point(pair, points, point_labels, arguments, before, error)
    if info.local_params and points is not None and not _traces_on_fewer(pair, x, y):
        return _check_per_point(pair, points, point_labels, arguments, before, None)
    return replace(info, local_params=())


def _check_labelled(
    pair: Any, x: torch.Tensor, y: torch.Tensor | None, arguments, per_point: bool = False
) -> PairInfo:
    """The check of :func:`check_pair` on ``x`` (with the labels ``y`` and without them)."""
    with evaluation_mode(pair), torch.no_grad():
        if arguments.needs:
            info = _check_pair(pair, x, y, per_point=per_point)
            return replace(info, takes_labels=True, needs_labels=True,
                           has_classifier=arguments.classifier)  # fmt: skip
        info = _check_pair(pair, x, per_point=per_point)
        if y is None:
            return replace(info, takes_labels=arguments.takes,
                           has_classifier=arguments.classifier)  # fmt: skip
        labelled = _check_pair(pair, x, y, "with labels", per_point=per_point)
        label_site = find_label_site(pair.model, x, y)
    return replace(
        info,
        takes_labels=True,
        label_site=label_site,
        has_classifier=arguments.classifier,
        max_plate_nesting=max(info.max_plate_nesting, labelled.max_plate_nesting),
        vectorizable=info.vectorizable and labelled.vectorizable,
    )


def _may_be_per_point(num_points: int, x: torch.Tensor, before: set) -> bool:
    """Whether a failed check may come from per-point params: a ``pyro.param`` (not a
    module's) with one row per point of ``x`` made by the check (created at the first call's
    batch size, as Pyro's sparse gamma DEF does), or one row per training point."""
    for name, value in pyro.get_param_store().named_parameters():
        if MODULE_SEPARATOR in name or value.dim() == 0:
            continue
        rows = value.shape[0]
        if rows == num_points > 1 or (name not in before and rows == x.shape[0] > 1):
            return True
    return False


def _traces_on_fewer(pair: Any, x: torch.Tensor, y: torch.Tensor | None) -> bool:
    """Whether the guide traces on one point fewer than ``x`` (params that follow the
    first batch's size do not)."""
    args = program_args(x[:-1], None if y is None else y[:-1])
    try:
        with evaluation_mode(pair), torch.no_grad():
            poutine.trace(pair.guide).get_trace(*args)
    except Exception:
        return False
    return True


def _check_per_point(pair: Any, points: torch.Tensor, labels: torch.Tensor | None, arguments,
                     before: set, error: PairError | None) -> PairInfo:  # fmt: skip
    """The check again on all the training ``points``, the params the first check made
    forgotten (they are made again with a row per point); ``error`` (that check's) stands
    where this finds no per-point params or fails too."""
    store = pyro.get_param_store()
    for name in set(store.keys()) - before:
        del store[name]
    try:
        info = _check_labelled(pair, points, labels, arguments, per_point=True)
    except PairError:
        if error is None:
            raise
        raise error from None
    if not info.local_params and error is not None:
        raise error
    return info


def _check_pair(
    pair: Any,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    called: str = "",
    per_point: bool = False,
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
    local = per_point_params(guide_trace, batch_size)
    data_name = None
    if per_point:  # on all N points, a global's plate may have N entries too: go by name
        data_name = _observed_plate(model_sites, batch_size)
        if local:  # only params whose rows are the points' (not a global's of N entries)
            local = rows_of_points(pair.guide, args, local, batch_size, data_name)
    plates = set()
    outside: dict[str, tuple[str, dict]] = {}
    for label, sites in (("model", model_sites), ("guide", guide_sites)):
        for name, site in sites.items():
            found = data_plate_dim(site, batch_size, data_name)
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
    problems += _forgotten_plates(pair, x, y, outside, local if per_point else ())
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
        local_params=local,
    )


def _observed_plate(model_sites: dict, batch_size: int) -> str | None:
    """The name of the plate over the data points that the model's observations sit in."""
    for site in model_sites.values():
        found = data_plate_dim(site, batch_size) if site["is_observed"] else None
        if found is not None:
            return found[0]
    return None


def _forgotten_plates(
    pair: Any,
    x: torch.Tensor,
    y: torch.Tensor | None,
    outside: dict[str, tuple[str, dict]],
    local: tuple[str, ...] = (),
) -> list:
    """Sites outside the data plate whose shape follows the batch size: a forgotten plate,
    not a global latent. Found by tracing the guide and model again on one point fewer
    (the per-point params ``local`` at the rows of those points)."""
    if not outside:
        return []
    smaller = x[: x.shape[0] - 1]
    args = program_args(smaller, None if y is None else y[: x.shape[0] - 1])
    rows = LocalParams(local)
    rows.indices = torch.arange(smaller.shape[0], device=x.device) if local else None
    guide, model = rows(pair.guide), rows(pair.model)
    guide_trace = _run(lambda: poutine.trace(guide).get_trace(*args), "guide", smaller)
    model_trace = _run(
        lambda: poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args),
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
