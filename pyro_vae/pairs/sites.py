"""Sites and plates of a traced pair: which sites are real samples, the plate over the data
points a site sits in, and what else a check reads off a site or a trace."""

from __future__ import annotations

from typing import Any

from pyro.distributions.util import is_identically_one
from pyro.poutine.util import site_is_subsample

#: Name of the plate over importance samples that estimators put around a pair's programs.
PARTICLE_PLATE = "_pyro_vae_samples"


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


def _enumerable(fn: Any) -> bool:
    """A discrete distribution whose support TraceEnum_ELBO can sum over."""
    return bool(getattr(fn, "has_enumerate_support", False)) and not fn.has_rsample
