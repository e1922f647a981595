"""What a pair's samples are, so that :func:`pyro_vae.analysis.sampling.sample` can lay them
out: whole images, part of an image drawn given the rest, or vectors.

- ``images``: the observed sites together hold one image (one site, or several in model order
  that together have its size); each row is an image, as always.
- ``image parts``: the model observes only part of an image and conditions on the rest (Pyro's
  conditional VAE completes the lower half from the upper half). Which entries of x a site
  holds is found by tracing the model on a probe batch whose entries all differ
  (:func:`observed_positions`); each drawn row is then a whole image, its observed (input)
  part from the data and its drawn part from the model (:func:`complete`).
- ``vectors``: anything else (counts of words, features, topic mixtures; a data set whose
  points have no image shape, (1, 1, D)); drawn as a heatmap and written as a table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine

from pyro_vae.infer.pair_draws import per_point
from pyro_vae.pairs import PairError, evaluation_mode
from pyro_vae.pairs.labels import program_args

#: The layouts, in the order they are tried.
LAYOUTS = ("images", "image parts", "vectors")


class NothingToDraw(PairError):
    """``sample`` found nothing it could draw for a pair; the message says why per row."""


def _model_trace(pair: Any, x: torch.Tensor, y: torch.Tensor | None):
    """One trace of ``pair.model`` on ``x``, leaving the random stream where it was (the
    draws that follow are those of a seed, with or without this look) and validation off
    (a probe batch is no data the likelihood supports)."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), evaluation_mode(pair):
        with pyro.validation_enabled(False):
            return poutine.trace(pair.model).get_trace(*program_args(x, y))


def observed_values(pair: Any, x: torch.Tensor, observed_sites: tuple[str, ...],
                    data_plate: str | None = None,
                    y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per observed site, the values the model observes on ``x`` (what its draws are compared
    with), as ``(num points, values per point)``."""
    trace = _model_trace(pair, x, y)
    values = {}
    for name in observed_sites:
        site = trace.nodes[name]
        value = per_point(site, site["value"], x.shape[0], data_plate)
        if value is not None:
            values[name] = value
    return values


def observed_positions(
    pair: Any,
    x: torch.Tensor,
    observed_sites: tuple[str, ...],
    data_plate: str | None = None,
    y: torch.Tensor | None = None,
) -> dict[str, torch.Tensor] | None:
    """Which entries of a flattened data point each observed site holds: value j of site s
    is entry ``positions[s][j]`` of every point. None where that is not so (a site computed
    from x, rather than a part of it) or the model cannot run on the probe.

    The probe is a batch shaped like ``x`` whose entries all differ, so each observed value
    names the one entry it came from."""
    num_points, width = x.shape[0], x[0].numel()
    count = num_points * width
    probe = (torch.arange(1, count + 1, dtype=torch.float64) / (count + 1)).to(x.dtype)
    if probe.unique().numel() != count:  # too many entries for the dtype to tell apart
        return None
    probe = probe.to(x.device).reshape(x.shape)
    try:
        trace = _model_trace(pair, probe, y)
    except Exception:  # a model that cannot run on a probe: no positions, vectors then
        return None
    flat = probe.reshape(-1)
    ordered, order = flat.sort()
    positions = {}
    for name in observed_sites:
        site = trace.nodes.get(name)
        value = None if site is None else per_point(site, site["value"], num_points, data_plate)
        if value is None or value.shape[1] == 0 or not value.is_floating_point():
            return None
        index = torch.searchsorted(ordered, value.reshape(-1)).clamp(max=count - 1)
        if not torch.equal(ordered[index], value.reshape(-1).to(ordered.dtype)):
            return None
        entry = order[index].reshape(value.shape)
        rows = torch.arange(num_points, device=entry.device).unsqueeze(1)
        if not torch.equal(entry // width, rows.expand_as(entry)):
            return None  # a value from another point: not a part of each point
        site_positions = entry % width
        if not (site_positions == site_positions[:1]).all():
            return None
        positions[name] = site_positions[0].cpu()
    every = torch.cat(list(positions.values()))
    if every.unique().numel() != every.numel():
        return None
    return positions


def complete(x: torch.Tensor, positions: dict[str, torch.Tensor],
             means: dict[str, torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """Whole flattened points: ``x`` with the entries each site holds replaced by that site's
    ``means`` (the drawn part beside the observed, conditioning part)."""
    whole = x.reshape(x.shape[0], -1).clone()
    for name, where in positions.items():
        whole[:, where.to(whole.device)] = means[name][: whole.shape[0]].to(whole.dtype)
    return whole


def drawn_mask(positions: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """A bool vector over the ``size`` entries of a point: True where the model draws."""
    mask = torch.zeros(size, dtype=torch.bool)
    mask[torch.cat(list(positions.values()))] = True
    return mask


def is_image_shape(image_shape: tuple[int, ...] | None) -> bool:
    """Whether points of ``image_shape`` are images: (C, H, W) with H and W above 1 (a data
    set of flat rows has the shape (1, 1, D))."""
    return image_shape is not None and len(image_shape) == 3 and min(image_shape[1:]) > 1


@dataclass(frozen=True)
class Layout:
    """How :func:`sample` lays its rows out: ``kind`` (one of :data:`LAYOUTS`),
    ``positions`` (image parts: the entries of a point each observed site holds) and
    ``columns`` (vectors: a name per value, ``site_j``)."""

    kind: str
    positions: dict[str, torch.Tensor] | None = None
    columns: tuple[str, ...] | None = None


def choose_layout(means: dict[str, torch.Tensor], image_shape: tuple[int, ...] | None,
                  find_positions: Any) -> Layout:  # fmt: skip
    """The layout for rows whose observed sites have these ``means`` (one row's, by site):
    images where they make one of ``image_shape``, image parts where the sites are parts of
    an image (``find_positions()`` gives them, or None), else vectors."""
    sizes = {name: mean.shape[1] for name, mean in means.items()}
    if is_image_shape(image_shape):
        size = math.prod(image_shape)
        if (len(sizes) == 1 and size in sizes.values()) or sum(sizes.values()) == size:
            return Layout("images")
        positions = find_positions()
        if positions is not None and sum(sizes.values()) < size:
            return Layout("image parts", positions=positions)
    columns = tuple(f"{name}_{j}" for name, width in sizes.items() for j in range(width))
    return Layout("vectors", columns=columns)


__all__ = [
    "LAYOUTS",
    "Layout",
    "NothingToDraw",
    "choose_layout",
    "complete",
    "drawn_mask",
    "is_image_shape",
    "observed_positions",
    "observed_values",
    "per_point",
]
