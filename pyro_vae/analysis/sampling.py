"""Draws from a trained pair: its data, reconstructions E[x|z] with z ~ q(z|x), and samples
E[x|z] with z ~ p(z), one row per class for a pair conditioned on labels.

:func:`sample` returns the rows as tensors (a :class:`Samples`), laid out by what the pair
observes (:mod:`pyro_vae.analysis.sample_kinds`): images, part of an image drawn given the
rest, or vectors. ``Samples.plot`` draws them as ``pyro-vae sample`` does: a grid of images
(:func:`pyro_vae.analysis.plots.image_grid`), or a heatmap and a CSV of vectors
(:func:`pyro_vae.analysis.plots.vector_heatmap`).

References:
    Kingma & Welling (2014), Auto-Encoding Variational Bayes.
    Sohn, Lee & Yan (2015), Learning Structured Output Representation using Deep Conditional
        Generative Models (class-conditional samples).
"""

from __future__ import annotations

import math
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine

from pyro_vae.analysis.results import Result, figure_path
from pyro_vae.analysis.sample_kinds import (
    Layout,
    NothingToDraw,
    choose_layout,
    complete,
    drawn_mask,
    observed_positions,
    observed_values,
)
from pyro_vae.analysis.subjects import Subject, amortized, as_pair, is_run_source, subject
from pyro_vae.infer.estimators import evaluation_view
from pyro_vae.infer.pair_draws import (
    as_images,
    cannot_draw,
    observed_means,
    prior_samples,
)
from pyro_vae.pairs import PairError, evaluation_mode, pair_modules
from pyro_vae.pairs.labels import (
    LABEL_ENCODINGS,
    LabelError,
    encode_labels,
    label_arguments,
    program_args,
)
from pyro_vae.runs.checkpoints import BEST, CHECKPOINT
from pyro_vae.runs.config import ConfigError
from pyro_vae.runs.files import atomic_write_bytes


def reconstructions(pair: Any, x: torch.Tensor, observed_sites: tuple[str, ...],
                    data_plate: str | None = None,
                    y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """E[x | z] with z ~ q(z|x): the decoder's mean at a guide draw, per observed site
    (``y``: the labels of a pair that needs them)."""
    args = program_args(x, y)
    with torch.no_grad(), evaluation_mode(pair):
        guide_trace = poutine.trace(pair.guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(*args)
    return observed_means(model_trace, observed_sites, x.shape[0], data_plate)


def sampled_classes(
    takes_labels: bool,
    num_classes: int | None,
    label: int | None,
    flag: str = "--label ",
    owner: str = "this run's pair",
) -> list[int] | None:
    """The classes ``sample`` draws a row for: all ``num_classes``, or ``label``; None for a
    pair drawn without labels (``label`` is then an error, naming ``flag`` and ``owner``)."""
    if not takes_labels:
        if label is not None:
            raise ConfigError(
                f"{flag}{label}: {owner} takes no labels, so its samples cannot be drawn per "
                f"class; drop {flag.strip()}"
            )
        return None
    if label is None:
        return list(range(num_classes))
    if num_classes is not None and not 0 <= label < num_classes:
        raise ConfigError(f"{flag}{label}: must be a class in 0..{num_classes - 1}")
    if label < 0:
        raise ConfigError(f"{flag}{label}: must be a class index >= 0")
    return [label]


class Samples(Result):
    """What :func:`sample` drew: ``rows``, a list of ``(name, values)`` with ``values`` a
    tensor (n, values per point): ``data``, ``reconstruction``, then ``prior sample`` or one
    ``class K`` row per class; ``image_shape`` (C, H, W), or None where it is not known;
    ``layout`` (:class:`~pyro_vae.analysis.sample_kinds.Layout`): ``images``, ``image parts``
    (each row whole images, the drawn part beside the observed part of the data; ``drawn``
    the mask of drawn entries) or ``vectors`` (a heatmap and a CSV, ``columns`` naming the
    values). The mapping holds the JSON keys (``rows``: the names, ``num``, ``layout``,
    ``image_shape``, ``skipped``: the rows that could not be drawn and why, ``seed``, where
    the pair came from; ``png`` and ``csv`` once plotted)."""

    kind = "samples"

    def __init__(self, summary: dict[str, Any], rows: list[tuple[str, torch.Tensor]],
                 image_shape: tuple[int, ...] | None,
                 layout: Layout | None = None) -> None:  # fmt: skip
        super().__init__(summary)
        self.rows = rows
        self.image_shape = image_shape
        self.layout = layout or Layout("images")
        positions = self.layout.positions
        self.drawn = None
        if positions is not None and image_shape is not None:
            self.drawn = drawn_mask(positions, math.prod(image_shape))
        self.columns = self.layout.columns

    def summary(self) -> str:
        names = ", ".join(f"{name} ({values.shape[0]})" for name, values in self.rows)
        plural = "" if len(self.rows) == 1 else "s"
        kind = self.layout.kind
        if kind == "vectors":
            width = self.rows[0][1].shape[1] if self.rows else 0
            what = f"vectors of {width} values"
        else:
            shape = self.image_shape
            what = "images" + ("" if shape is None else " of " + "x".join(map(str, shape)))
            if self.drawn is not None:
                what += f", {int(self.drawn.sum())} of {self.drawn.numel()} values drawn"
        lines = [f"{len(self.rows)} row{plural} of {what}: {names}"]
        lines += [f"  skipped {message}" for message in self["skipped"]]
        lines += [f"  wrote {self[key]}" for key in ("png", "csv") if key in self]
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike) -> Path:
        """Draw the rows (``samples.png`` in a folder ``path``, or the file ``path``): a grid
        of images, whole images with the drawn part outlined, or a heatmap of vectors whose
        values also go to a CSV of the same name (``samples.csv``); return the PNG's path."""
        return self.draw(figure_path(path, "samples.png"))

    def draw(self, path: str | os.PathLike) -> Path:
        """Draw the rows into the file ``path`` whatever its suffix (see :meth:`plot`)."""
        from pyro_vae.analysis import plots  # matplotlib only when drawing

        path = Path(path)
        if not self.rows:
            raise NothingToDraw("no rows to draw: " + "; ".join(self["skipped"]))
        kind = self.layout.kind
        if kind == "vectors":
            table = path.with_suffix(".csv")
            atomic_write_bytes(table, self.table().encode())
            plots.vector_heatmap(self.rows, self.columns, path)
            self["csv"] = str(table)
        elif self.image_shape is None:
            size = self.rows[0][1].shape[1]
            raise ConfigError(
                f"cannot draw images of {size} values without their shape: pass "
                "image_shape=(channels, height, width) to sample()"
            )
        else:
            plots.image_grid(self.rows, self.image_shape, path, drawn=self.drawn)
        self["png"] = str(path)
        return path

    def table(self) -> str:
        """The rows as CSV text: a header ``row,point,<one column per value>``, then one line
        per point of each row (``row`` its name: data, reconstruction, prior sample, ...)."""
        width = self.rows[0][1].shape[1] if self.rows else 0
        columns = self.columns or tuple(f"x_{j}" for j in range(width))
        lines = [",".join(("row", "point", *columns))]
        for name, values in self.rows:
            for point, row in enumerate(values.detach().reshape(values.shape[0], -1).tolist()):
                lines.append(",".join((name, str(point), *(f"{v:.6g}" for v in row))))
        return "\n".join(lines) + "\n"


def sample(
    source: Any,
    x: torch.Tensor | None = None,
    *,
    num: int = 10,
    labels: Any = None,
    guide: Any = None,
    label: int | None = None,
    num_classes: int | None = None,
    label_encoding: str | None = None,
    seed: int = 0,
    image_shape: tuple[int, ...] | None = None,
    split: str = "test",
    checkpoint: str = BEST,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
) -> Samples:
    """Data points, their reconstructions and samples from the prior, ``num`` of each.

    reconstruction: E[x|z], z ~ q(z|x);   prior sample: E[x|z], z ~ p(z) (or p(z|y))

    ``source`` is what you hold: a pair (an object with ``model`` and ``guide``; a model with
    ``guide=``; a ``(model, guide)`` tuple), or a :class:`~pyro_vae.runs.reopen.Run` or a run
    directory's path, whose split ``split`` gives the data rows when ``x`` is None
    (``checkpoint``, ``device``, ``data_dir`` and ``pair`` say how to reopen a path). For a
    pair, ``x`` gives the data and reconstruction rows; with ``x=None`` only samples are
    drawn, the model traced on a placeholder batch of zeros of shape (max(num, 2),
    prod(image_shape)) that sets the batch size, so ``image_shape`` is then required (a pair
    that takes x in another layout needs ``x``).

    ``image_shape`` (C, H, W), for drawing: a run's is its data set's; for a pair, this
    argument, else ``x.shape[1:]`` for ``x`` with more than 2 dims, else (1, s, s) when a
    point has s*s values; otherwise None.

    Layout (``result["layout"]``, :mod:`~pyro_vae.analysis.sample_kinds`): ``images`` where
    the observed sites together make an image of that shape; ``image parts`` where they are
    part of one (the lower half, the upper half given), every row then whole images, the
    given part from the data; else ``vectors`` (no image shape, such as (1, 1, D), or sites
    that are no part of one), whose data row is what the model observes. Where no row can
    be drawn, :class:`NothingToDraw` says why.

    Labels: a run whose pair takes labels, on a data set that has them, gets one row of
    samples per class, or only class ``label`` (``--label K``). A pair in memory whose
    programs take labels gets class rows when ``labels``, ``num_classes`` or ``label`` is
    given, or when it needs labels: the classes are 0..``num_classes``-1 (``num_classes``
    defaults to the width of one-hot ``labels``; an error asks for it otherwise), or
    ``label`` alone; each class is passed as ``labels`` are (``label_encoding``: ``index``
    or ``onehot``, default the form of ``labels``, else ``index``). ``labels`` go with ``x``,
    one per point. ``seed`` seeds the draws: the same seed gives the same tensors for a pair
    in memory and for its run directory alike.
    """
    if num < 1:
        raise ConfigError(f"--num must be >= 1, got {num}")
    count = max(num, 2)
    if is_run_source(source):
        held = subject(source, x, labels=labels, guide=guide, split=split, checkpoint=checkpoint,
                       device=device, data_dir=data_dir, pair=pair).first(count)  # fmt: skip
        held = amortized(held, "sample")
        data = held.run.data
        shape = _image_shape(image_shape) if image_shape is not None else data.image_shape
        encoding, num_classes = held.run.config.label_encoding, data.num_classes
        classes = sampled_classes(held.labels is not None, num_classes, label)
        return _sample(held, num, seed, shape, True, classes, encoding, num_classes)
    if pair is not None:
        raise ConfigError("pair= reopens a run directory with that pair; here, pass the pair first")
    held_pair = as_pair(source, guide)
    try:
        arguments = label_arguments(held_pair)
    except LabelError as error:
        raise PairError(str(error)) from error
    if labels is not None and x is None:
        raise ConfigError(
            "labels= go with x, one per point; without x, name the classes to draw with "
            "num_classes= (every class) or label=K (class K)"
        )
    if labels is not None:
        labels = torch.as_tensor(labels)
    encoding = label_encoding or ("onehot" if labels is not None and labels.dim() == 2 else "index")
    if encoding not in LABEL_ENCODINGS:
        raise ConfigError(f"label_encoding={encoding!r}: choose from {', '.join(LABEL_ENCODINGS)}")
    if num_classes is None and labels is not None and labels.dim() == 2:
        num_classes = labels.shape[1]
    conditional = arguments.needs or any(v is not None for v in (labels, num_classes, label))
    if not arguments.takes:
        if num_classes is not None:
            raise ConfigError(
                f"num_classes={num_classes}: the pair's programs take no labels, so its "
                "samples cannot be drawn per class; drop num_classes"
            )
        conditional = False
    classes = None
    if conditional:
        if label is None and num_classes is None:
            raise ConfigError(
                "the pair's programs take labels: pass num_classes= to draw one row of "
                "samples per class, or label=K for class K alone"
            )
        if encoding == "onehot" and num_classes is None:
            raise ConfigError("one-hot labels need num_classes=, the width of a one-hot row")
        classes = sampled_classes(True, num_classes, label, "label=")
    elif label is not None:  # the error for a pair without labels
        sampled_classes(False, None, label, "label=", "the pair")
    shown = x is not None
    if x is None:
        if image_shape is None:
            raise ConfigError(
                "sample(pair) without x draws from the prior on a placeholder batch: pass "
                "image_shape=(channels, height, width), the shape of one data point ((1, 1, D) "
                "for vectors of D values), or x"
            )
        image_shape = _image_shape(image_shape)
        device_, dtype = _pair_device(held_pair)
        x = torch.zeros(count, math.prod(image_shape), device=device_, dtype=dtype)
        if classes is not None:
            placeholder = torch.full((count,), classes[0], device=x.device)
            labels = encode_labels(placeholder, encoding, num_classes, x.dtype)
    elif image_shape is not None:
        image_shape = _image_shape(image_shape)
    elif x.dim() > 2:
        image_shape = _image_shape(tuple(x.shape[1:]))
    else:
        side = math.isqrt(x.shape[1]) if x.dim() == 2 else 0
        image_shape = (1, side, side) if side * side == x.shape[1] and side > 0 else None
    held = subject(held_pair, x, labels=labels).first(count)
    return _sample(held, num, seed, image_shape, shown, classes, encoding, num_classes)


def _sample(held: Subject, num: int, seed: int, image_shape: tuple[int, ...] | None,
            shown: bool, classes: list[int] | None, encoding: str,
            num_classes: int | None) -> Samples:  # fmt: skip
    """The rows of :func:`sample` for ``held`` (its first ``max(num, 2)`` points), laid out
    by what the pair observes (:func:`~pyro_vae.analysis.sample_kinds.choose_layout`)."""
    pair, info, x = held.pair, held.info, held.x
    y = held.y
    pyro.set_rng_seed(seed)
    with evaluation_mode(pair):
        view = evaluation_view(pair, info, x, y)
    draws = [("reconstruction", partial(reconstructions, y=y))] if shown else []
    if classes is None:
        draws.append(("prior sample", prior_samples))
    for k in classes or ():
        class_y = encode_labels(torch.full((x.shape[0],), k, device=x.device), encoding,
                                num_classes, x.dtype)  # fmt: skip
        draws.append((f"class {k}", partial(prior_samples, y=class_y, label_site=info.label_site)))
    skipped, drawn = [], []
    for row_label, draw in draws:
        try:
            means = draw(view, x, info.observed_sites, info.data_plate)
        except NotImplementedError:  # pyro drew an observed site its distribution cannot draw
            skipped.append(f"{row_label}s: {cannot_draw()}")
            continue
        except Exception as error:  # a pair whose model cannot run unconditioned, ...
            skipped.append(f"{row_label}s: {type(error).__name__}: {error}")
            continue
        if not means or not all(mean.shape[1] for mean in means.values()):
            skipped.append(f"{row_label}s: an observed site holds no values per data point")
            continue
        drawn.append((row_label, means))
    if not drawn:
        raise NothingToDraw(
            "sample: nothing to draw for this pair: " + "; ".join(skipped) + ". Samples need "
            "likelihoods that can be drawn from (distributions with .mean or .sample(), at "
            "pyro.sample(name, dist..., obs=x) inside the data plate) in a model that runs "
            "with those sites unobserved."
        )
    sites = tuple(drawn[0][1])
    layout = choose_layout(drawn[0][1], image_shape, partial(
        observed_positions, view, x, sites, info.data_plate, y))  # fmt: skip
    rows = _laid_out(layout, drawn, view, x, y, num, shown, image_shape, info.data_plate,
                     skipped)  # fmt: skip
    summary = {
        "rows": [name for name, _ in rows],
        "num": num,
        "layout": layout.kind,
        "image_shape": None if image_shape is None else list(image_shape),
        "classes": classes,
        "skipped": skipped,
        "seed": seed,
        **held.context,
    }
    if layout.kind == "image parts":
        summary["drawn_values"] = sum(where.numel() for where in layout.positions.values())
    return Samples(summary, rows, image_shape, layout)


def _laid_out(layout: Layout, drawn: list[tuple[str, dict[str, torch.Tensor]]], view: Any,
              x: torch.Tensor, y: torch.Tensor | None, num: int, shown: bool,
              image_shape: tuple[int, ...] | None, data_plate: str | None,
              skipped: list[str]) -> list[tuple[str, torch.Tensor]]:  # fmt: skip
    """The rows of ``drawn`` (name, means by site) in ``layout``, after the data row."""
    sites = tuple(drawn[0][1])
    if layout.kind == "image parts":
        rows = [("data", x[:num].reshape(min(num, x.shape[0]), -1))] if shown else []
        return rows + [(name, complete(x[:num], layout.positions, means))
                       for name, means in drawn]  # fmt: skip
    if layout.kind == "vectors":
        rows = []
        if shown:
            observed = observed_values(view, x, sites, data_plate, y)
            rows.append(("data", torch.cat([observed[name] for name in sites], dim=1)[:num]))
        return rows + [(name, torch.cat([means[name] for name in sites], dim=1)[:num])
                       for name, means in drawn]  # fmt: skip
    rows = [("data", x[:num])] if shown else []
    for name, means in drawn:
        images, reason = as_images(means, image_shape)
        if images is None:
            skipped.append(f"{name}s: {reason}")
        else:
            rows.append((name, images[:num]))
    return rows


def _image_shape(shape: Any) -> tuple[int, int, int]:
    """``shape`` as (channels, height, width): (H, W) gets one channel."""
    shape = tuple(int(size) for size in shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"image_shape={shape}: give (channels, height, width) or (height, width)")
    return shape


def _pair_device(pair: Any) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the pair's parameters (its modules', else Pyro's param
    store's), for a placeholder batch; the CPU and the default dtype where it has none."""
    tensors = [p for module in pair_modules(pair) for p in module.parameters()]
    store = pyro.get_param_store()
    tensors += [store[name] for name in store.keys()]
    for tensor in tensors:
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def sample_figure(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    num: int = 10,
    split: str = "test",
    seed: int = 0,
    device: str | None = None,
    checkpoint: str = CHECKPOINT,
    label: int | None = None,
    with_result: bool = False,
) -> Path | Samples:
    """Write the PNG ``out``: test points, their reconstructions, and samples from the prior
    (:func:`sample` of the run, drawn by :meth:`Samples.draw`); return its path, or with
    ``with_result`` the :class:`Samples` (its ``png``, and ``csv`` for vectors).

    Images as a grid; a model that observes part of an image as whole images, the drawn part
    outlined beside its input; vectors (counts, features) as a heatmap, their values also in
    ``out`` with the suffix ``.csv``. A conditional pair (one whose programs take labels,
    with a data set that has them) gets one row of samples per class instead, or only class
    ``label`` (``--label K``). Where nothing can be drawn, :class:`NothingToDraw` says why
    and no file is written; a row that could not be drawn is named on stderr."""
    drawn = sample(run_dir, num=num, split=split, seed=seed, device=device,
                   checkpoint=checkpoint, label=label)  # fmt: skip
    for message in drawn["skipped"]:
        print(f"pyro-vae sample: skipped {message}", file=sys.stderr)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = drawn.draw(out)
    return drawn if with_result else path


__all__ = ["NothingToDraw", "Samples", "as_images", "prior_samples", "reconstructions", "sample",
           "sample_figure", "sampled_classes"]  # fmt: skip
