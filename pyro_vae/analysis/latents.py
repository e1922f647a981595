"""A map of the latent space: the guide's mean E_q[z|x] of every point of a split, projected to
two dimensions (PCA, or t-SNE) and coloured by class label.

For a guide whose continuous latent depends on a sampled discrete one (M2's q(z|x,y) under
q(y|x)), E_q[z|x] = sum_y q(y|x) E[z|x,y] is estimated by averaging the conditional means over
``draws`` traces of the guide.

References:
    Kingma, Rezende, Mohamed & Welling (2014), Semi-supervised Learning with Deep Generative
    Models (latent maps of M1 and M2).
    van der Maaten & Hinton (2008), Visualizing Data using t-SNE.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine

from pyro_vae.analysis.results import Result, figure_path
from pyro_vae.analysis.subjects import Subject, amortized, subject
from pyro_vae.pairs import PairInfo, evaluation_mode, is_sample_site
from pyro_vae.pairs.labels import program_args
from pyro_vae.runs.checkpoints import BEST
from pyro_vae.runs.config import ConfigError
from pyro_vae.runs.files import atomic_write_bytes, json_bytes

#: ``--method`` values: how the means are projected to two dimensions.
METHODS = ("pca", "tsne")


def latent_site(guide_trace: Any, info: PairInfo, site: str | None = None) -> str:
    """The guide site the map shows: ``site``, or the first local continuous latent (one
    value per point that is not discrete), named in a ConfigError where there is none."""
    candidates = [
        name
        for name, node in guide_trace.nodes.items()
        if is_sample_site(node)
        and not node["is_observed"]
        and name not in info.global_sites
        and node["fn"].event_shape.numel() >= 1
        and not getattr(node["fn"], "has_enumerate_support", False)
    ]
    if site is None:
        if not candidates:
            raise ConfigError(
                "the guide has no continuous latent site with one value per point to map"
            )
        return candidates[0]
    if site not in candidates:
        raise ConfigError(
            f"--site {site!r}: not a continuous per-point latent site of the guide; choose "
            f"from {candidates}"
        )
    return site


def _site_mean(node: dict) -> torch.Tensor:
    try:
        return node["fn"].mean
    except NotImplementedError:
        return node["value"]


def latent_means(
    guide: Any,
    x: torch.Tensor,
    site: str,
    *,
    draws: int = 1,
    batch_size: int = 500,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """E_q[z|x] at ``site`` for every row of ``x``, shape (N, D): the distribution's mean
    (its value where it has none), averaged over ``draws`` traces of the guide. Run it with
    the pair's modules in eval mode."""
    parts = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size]
            labels = None if y is None else y[start : start + batch_size]
            total = 0.0
            for _ in range(draws):
                trace = poutine.trace(guide).get_trace(*program_args(batch, labels))
                total = total + _site_mean(trace.nodes[site])
            mean = total / draws
            parts.append(mean.reshape(batch.shape[0], -1))
    return torch.cat(parts)


def project(means: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Two coordinates per row: the first two principal components of the centred means, or
    a t-SNE embedding (scikit-learn, perplexity min(30, (N - 1) / 3))."""
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    if means.shape[1] == 1:
        return np.concatenate([means, np.zeros_like(means)], axis=1)
    if method == "pca":
        centred = means - means.mean(axis=0, keepdims=True)
        _, _, components = np.linalg.svd(centred, full_matrices=False)
        return centred @ components[:2].T
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(1.0, (means.shape[0] - 1) / 3)))
    embedding = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return embedding.fit_transform(means)


class LatentMap(Result):
    """What :func:`latents` found: ``coordinates`` (N, 2), the two projected coordinates of
    every point (NumPy); ``means`` (N, D), E_q[z|x] at ``site`` (a tensor); ``labels`` (N,),
    the class indices that colour the map (a tensor, or None). The mapping holds the JSON
    keys ``site``, ``method``, ``split``, ``num_points``, ``latent_dims``, ``draws``,
    ``labelled`` (and ``png``, ``csv`` where it was saved); the CSV holds the arrays."""

    kind = "latent map"

    def __init__(self, summary: dict[str, Any], coordinates: np.ndarray, means: torch.Tensor,
                 labels: torch.Tensor | None):  # fmt: skip
        super().__init__(summary)
        self.coordinates = coordinates
        self.means = means
        self.labels = labels

    @property
    def site(self) -> str:
        return self["site"]

    @property
    def method(self) -> str:
        return self["method"]

    def title(self) -> str:
        """The figure's title: site, split, projection and dimension."""
        where = (f"{self['num_points']} points" if self.get("split") is None
                 else f"{self['split']} split")  # fmt: skip
        return (
            f"E_q[{self['site']}|x], {where}, {self['method'].upper()} ({self['latent_dims']} dims)"
        )

    def summary(self) -> str:
        where = "x" if self.get("split") is None else f"the {self['split']} split"
        coloured = "coloured by class label" if self["labelled"] else "no labels to colour by"
        spread = self.coordinates.std(axis=0) if len(self.coordinates) else (0.0, 0.0)
        return (
            f"latent map of E_q[{self['site']}|x] for {self['num_points']} points of {where}: "
            f"{self['latent_dims']} dims to 2 by {self['method'].upper()} "
            f"(spread {spread[0]:.3g}, {spread[1]:.3g}), {coloured}"
        )

    def plot(self, path: str | os.PathLike) -> Path:
        """Draw the map, one colour per class (``latents_<split>_<method>.png`` in a folder
        ``path``, or the file ``path``); return the path written."""
        from pyro_vae.analysis.plots import latent_map_figure  # matplotlib only when drawing

        default = f"latents_{self.get('split') or 'x'}_{self['method']}.png"
        labels = None if self.labels is None else self.labels.cpu().numpy()
        return latent_map_figure(self.coordinates, labels, figure_path(path, default),
                                 title=self.title())  # fmt: skip


def latents(
    source: Any,
    x: torch.Tensor | None = None,
    *,
    labels: Any = None,
    guide: Any = None,
    method: str = "pca",
    site: str | None = None,
    draws: int = 10,
    limit: int | None = None,
    seed: int = 0,
    split: str = "test",
    checkpoint: str = BEST,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
    out: str | os.PathLike | None = None,
    save: bool | None = None,
) -> LatentMap:
    """A map of the latent space: E_q[z|x] at a guide site for every point, projected to two
    dimensions and coloured by class.

    E_q[z|x] = sum_y q(y|x) E[z|x,y], averaged over ``draws`` guide traces where z depends on
    a sampled discrete latent (else one trace: the distribution's mean).

    ``source`` is what you hold: a pair (an object with ``model`` and ``guide``; a model with
    ``guide=``; a ``(model, guide)`` tuple) with its data ``x`` and, for colour, ``labels``
    (class indices or one-hot rows); or a :class:`~pyro_vae.runs.reopen.Run` or a run directory's
    path, whose split ``split`` (and its labels) is used when ``x`` is None (``checkpoint``,
    ``device``, ``data_dir`` and ``pair`` say how to reopen a path). ``site``: the guide's
    latent site (default: the first continuous one with one value per point); ``method``:
    ``pca`` or ``tsne`` (seeded by ``seed``); ``limit``: only the first points.

    Returns a :class:`LatentMap` (``coordinates``, ``means``, ``labels``; ``plot(path)``).
    With ``save`` (the default for a path, or when ``out`` is given), writes
    ``latents_<split>_<method>.png``, ``.csv`` (index, label, the two coordinates, then
    E_q[z|x]) and ``.json`` into ``out`` (default ``RUN_DIR/latents``; ``<split>`` is ``x``
    for points given as ``x``), and the result has their paths as ``png`` and ``csv``.

    References:
        Kingma, Rezende, Mohamed & Welling (2014), Semi-supervised Learning with Deep
        Generative Models.
        van der Maaten & Hinton (2008), Visualizing Data using t-SNE.
    """
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    if limit is not None and limit < 3:
        raise ConfigError(f"--limit {limit}: a map needs at least 3 points")
    if draws < 1:
        raise ConfigError(f"--draws {draws}: must be at least 1")
    held = subject(source, x, labels=labels, guide=guide, split=split, checkpoint=checkpoint,
                   device=device, data_dir=data_dir, pair=pair).first(limit)  # fmt: skip
    held = amortized(held, "latents")
    if held.x.shape[0] < 3:
        raise ConfigError(f"a map needs at least 3 points, got {held.x.shape[0]}")
    if save is None:
        save = isinstance(source, str | os.PathLike) or out is not None
    folder = Path(out) if out is not None else None
    if folder is None and held.run is not None:
        folder = held.run.path / "latents"
    if save and folder is None:
        raise ConfigError(
            "save=True writes latents_*.png, .csv and .json into a run directory; this pair "
            "has none. Pass out=FOLDER to write them there, or use the result "
            "(result.coordinates, result.means, result.plot(path))"
        )
    result = _latent_map(held, method, site, draws, seed)
    if save:
        result = _save_latent_map(result, folder)
    if held.run is not None and held.classes is None:
        print(f"note: data set {held.run.config.dataset!r} has no labels: the map is not "
              "coloured", file=sys.stderr)  # fmt: skip
    return result


def _latent_map(held: Subject, method: str, site: str | None, draws: int,
                seed: int) -> LatentMap:  # fmt: skip
    """The map of ``held``'s points (see :func:`latents`)."""
    pair, info, x, y = held.pair, held.info, held.x, held.y
    pyro.set_rng_seed(seed)
    with evaluation_mode(pair), torch.no_grad():
        probe = poutine.trace(pair.guide).get_trace(
            *program_args(x[:2], None if y is None else y[:2])
        )
        name = latent_site(probe, info, site)
        discrete = any(
            is_sample_site(node) and not getattr(node["fn"], "has_rsample", True)
            for node in probe.nodes.values()
        )
        means = latent_means(pair.guide, x, name, draws=draws if discrete else 1, y=y)
    coordinates = project(means.double().cpu().numpy(), method, seed)
    summary = {
        "site": name,
        "method": method,
        "split": held.context["split"],
        "num_points": int(means.shape[0]),
        "latent_dims": int(means.shape[1]),
        "draws": draws if discrete else 1,
        "labelled": held.classes is not None,
    }
    return LatentMap(summary, coordinates, means, held.classes)


def _save_latent_map(result: LatentMap, folder: Path) -> LatentMap:
    """Write the map's PNG, CSV and JSON into ``folder``; the result with ``png`` and
    ``csv`` (their paths) first among its keys."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"latents_{result.get('split') or 'x'}_{result['method']}"
    png = result.plot(stem.with_suffix(".png"))
    means_np = result.means.double().cpu().numpy()
    label_np = None if result.labels is None else result.labels.cpu().numpy()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    dims = [f"{result['site']}_{d}" for d in range(means_np.shape[1])]
    writer.writerow(["index", "label", f"{result['method']}_1", f"{result['method']}_2", *dims])
    for i in range(means_np.shape[0]):
        label = "" if label_np is None else int(label_np[i])
        writer.writerow([i, label, *(f"{v:.6g}" for v in result.coordinates[i]),
                         *(f"{v:.6g}" for v in means_np[i])])  # fmt: skip
    csv_path = stem.with_suffix(".csv")
    atomic_write_bytes(csv_path, buffer.getvalue().encode())
    saved = LatentMap({"png": str(png), "csv": str(csv_path), **result}, result.coordinates,
                      result.means, result.labels)  # fmt: skip
    atomic_write_bytes(stem.with_suffix(".json"), json_bytes(saved))
    return saved


def latent_map(
    run_dir: str | os.PathLike,
    *,
    split: str = "test",
    method: str = "pca",
    limit: int | None = None,
    site: str | None = None,
    draws: int = 10,
    out: str | os.PathLike | None = None,
    checkpoint: str = BEST,
    device: str | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    pair: Any = None,
) -> LatentMap:
    """:func:`latents` of a run directory, under its old name: writes
    ``latents_<split>_<method>.png``, ``.csv`` and ``.json`` into ``out`` (default
    ``RUN_DIR/latents``) and returns the summary with the paths (``png``, ``csv``)."""
    return latents(run_dir, method=method, site=site, draws=draws, limit=limit, seed=seed,
                   split=split, checkpoint=checkpoint, device=device, data_dir=data_dir,
                   pair=pair, out=out, save=True)  # fmt: skip


__all__ = ["METHODS", "LatentMap", "latent_map", "latent_means", "latent_site", "latents",
           "project"]  # fmt: skip
