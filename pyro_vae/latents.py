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

from pyro_vae.checkpoints import BEST
from pyro_vae.config import ConfigError
from pyro_vae.files import atomic_write_bytes, json_bytes
from pyro_vae.labels import program_args
from pyro_vae.pairs import PairInfo, evaluation_mode, is_sample_site

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
) -> dict[str, Any]:
    """Write ``latents_<split>_<method>.png`` (the map, coloured by label) and ``.csv`` (index,
    label, the two coordinates, then E_q[z|x] itself) into ``out`` (default
    ``RUN_DIR/latents``); return a summary with the paths."""
    from pyro_vae.evaluate import restore_run  # evaluate imports train: only when called
    from pyro_vae.plots import latent_map_figure

    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    if limit is not None and limit < 3:
        raise ConfigError(f"--limit {limit}: a map needs at least 3 points")
    if draws < 1:
        raise ConfigError(f"--draws {draws}: must be at least 1")
    run_dir = Path(run_dir)
    restored = restore_run(run_dir, split=split, checkpoint=checkpoint, device=device,
                           data_dir=data_dir)  # fmt: skip
    pair, info, x, y, classes = (
        restored.pair, restored.info, restored.x, restored.y, restored.classes
    )  # fmt: skip
    if limit is not None:
        x, classes = x[:limit], None if classes is None else classes[:limit]
        y = None if y is None else y[:limit]
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
    means_np = means.double().cpu().numpy()
    coordinates = project(means_np, method, seed)
    label_np = None if classes is None else classes.cpu().numpy()
    folder = Path(out) if out is not None else run_dir / "latents"
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"latents_{split}_{method}"
    png = latent_map_figure(
        coordinates, label_np, stem.with_suffix(".png"),
        title=f"E_q[{name}|x], {split} split, {method.upper()} ({means_np.shape[1]} dims)",
    )  # fmt: skip
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    dims = [f"{name}_{d}" for d in range(means_np.shape[1])]
    writer.writerow(["index", "label", f"{method}_1", f"{method}_2", *dims])
    for i in range(means_np.shape[0]):
        label = "" if label_np is None else int(label_np[i])
        writer.writerow([i, label, *(f"{v:.6g}" for v in coordinates[i]),
                         *(f"{v:.6g}" for v in means_np[i])])  # fmt: skip
    csv_path = stem.with_suffix(".csv")
    atomic_write_bytes(csv_path, buffer.getvalue().encode())
    summary = {
        "png": str(png),
        "csv": str(csv_path),
        "site": name,
        "method": method,
        "split": split,
        "num_points": int(means_np.shape[0]),
        "latent_dims": int(means_np.shape[1]),
        "draws": draws if discrete else 1,
        "labelled": label_np is not None,
    }
    atomic_write_bytes(stem.with_suffix(".json"), json_bytes(summary))
    if label_np is None:
        print(f"note: data set {restored.dataset!r} has no labels: the map is not coloured",
              file=sys.stderr)  # fmt: skip
    return summary
