"""Figures of the analyses: image grids, heatmaps of vectors, latent maps, k-hat and KL per
dimension, forest and pair plots of posterior draws, convergence in K and gradient variance.
Each draws given numbers into a file; the analyses compute them."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import matplotlib

# Headless: files, never windows. A backend chosen through MPLBACKEND is kept: Jupyter's
# kernel sets it to its inline backend, which forcing Agg here would switch off for the
# notebook's own figures.
if not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_vae.runs.figures import save_figure  # noqa: E402


def image_grid(rows: list[tuple[str, torch.Tensor]], image_shape: tuple[int, ...], path: Path,
               drawn: torch.Tensor | None = None) -> Path:  # fmt: skip
    """Save labelled rows of flattened images as one PNG.

    ``drawn`` (a bool mask over the C*H*W values of an image) marks the part a model draws
    given the rest: every image then has that part outlined, and an ``input`` row after the
    data shows what the model was given, the drawn part blanked out."""
    channels, height, width = image_shape
    if drawn is not None and rows and rows[0][0] == "data":
        rows = [rows[0], ("input", rows[0][1]), *rows[1:]]
    num_cols = max(r.shape[0] for _, r in rows)
    fig, axes = plt.subplots(
        len(rows), num_cols, figsize=(num_cols * 0.9, len(rows) * 0.9 + 0.3), squeeze=False
    )
    for i, (label, images) in enumerate(rows):
        images = images.detach().float().cpu().reshape(-1, channels, height, width)
        for j in range(num_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < images.shape[0]:
                image = images[j].permute(1, 2, 0).clamp(0, 1).numpy()
                if drawn is None:
                    ax.imshow(
                        image.squeeze(-1) if channels == 1 else image, cmap="gray", vmin=0, vmax=1
                    )
                else:
                    _show_part(ax, image, drawn.reshape(image_shape), blank=label == "input")
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if drawn is not None:
        fig.suptitle("outlined in red: the part the model draws; the rest is its input",
                     fontsize=8)  # fmt: skip
    return save_figure(fig, path)


#: The colour of the part of an image a model was not given, in the ``input`` row.
_BLANK = (0.95, 0.8, 0.8)


def _show_part(ax: Any, image: Any, drawn: torch.Tensor, blank: bool) -> None:
    """Show one (H, W, C) image with the pixels ``drawn`` (C, H, W) outlined in red, or, for
    ``blank``, painted a flat colour."""
    import numpy as np
    from matplotlib.collections import LineCollection

    mask = drawn.any(0).numpy()  # (H, W): a pixel any of whose channels is drawn
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image.copy()
    if blank:
        rgb[mask] = _BLANK
    ax.imshow(rgb, vmin=0, vmax=1)
    # the boundary between drawn and given pixels, along pixel edges
    segments = []
    rows, cols = np.nonzero(mask[1:] != mask[:-1])
    segments += [[(c - 0.5, r + 0.5), (c + 0.5, r + 0.5)] for r, c in zip(rows, cols, strict=True)]
    rows, cols = np.nonzero(mask[:, 1:] != mask[:, :-1])
    segments += [[(c + 0.5, r - 0.5), (c + 0.5, r + 0.5)] for r, c in zip(rows, cols, strict=True)]
    ax.add_collection(LineCollection(segments, colors="red", linewidths=1.2))


def vector_heatmap(rows: list[tuple[str, torch.Tensor]], columns: Any, path: Path, *,
                   max_columns: int = 200) -> Path:  # fmt: skip
    """Save labelled rows of vectors as stacked heatmaps, one block per row (data,
    reconstruction, prior sample, class K), one line per point, on one colour scale.

    x is the index of a value within a point (``columns`` names them); past ``max_columns``
    values, only the ``max_columns`` with the largest mean absolute value over all rows are
    shown, in index order, and the axis says so. Values that are all >= 0 (counts) get a
    square-root colour scale."""
    import numpy as np
    from matplotlib.colors import Normalize, PowerNorm
    from matplotlib.gridspec import GridSpec

    blocks = [(label, values.detach().float().cpu().reshape(values.shape[0], -1).numpy())
              for label, values in rows]  # fmt: skip
    every = np.concatenate([values for _, values in blocks])
    width = every.shape[1]
    keep = np.arange(width)
    if width > max_columns:
        strength = np.nan_to_num(np.abs(every)).mean(0)
        keep = np.sort(np.argsort(-strength, kind="stable")[:max_columns])
    finite = every[:, keep][np.isfinite(every[:, keep])]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    high = high if high > low else low + 1.0
    # counts are skewed (a few large ones among many zeros): a square-root colour scale keeps
    # the small values of reconstructions and samples visible beside them
    norm = PowerNorm(0.5, vmin=low, vmax=high) if low >= 0 else Normalize(low, high)
    heights = [values.shape[0] for _, values in blocks]
    fig = plt.figure(figsize=(min(14.0, max(6.0, 0.06 * len(keep) + 3.0)),
                              1.0 + 0.2 * sum(heights) + 0.35 * len(blocks)))  # fmt: skip
    grid = GridSpec(len(blocks), 2, figure=fig, height_ratios=heights, width_ratios=[40, 1])
    axes = [fig.add_subplot(grid[i, 0]) for i in range(len(blocks))]
    for ax, (label, values) in zip(axes, blocks, strict=True):
        image = ax.imshow(values[:, keep], aspect="auto", interpolation="nearest",
                          cmap="viridis", norm=norm)  # fmt: skip
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
        step = max(1, math.ceil(values.shape[0] / 5))
        ax.set_yticks(range(0, values.shape[0], step))
        ax.tick_params(labelsize=7, labelbottom=False)
    step = max(1, math.ceil(len(keep) / 20))
    axes[-1].set_xticks(range(0, len(keep), step))
    axes[-1].set_xticklabels([str(k) for k in keep[::step]], rotation=90)
    axes[-1].tick_params(labelbottom=True)
    sites = sorted({str(name).rsplit("_", 1)[0] for name in columns}) if columns else []
    what = f" of {', '.join(map(repr, sites))}" if sites else ""
    shown = f", the {len(keep)} of {width} with the largest mean" if len(keep) < width else ""
    axes[-1].set_xlabel(f"feature index{what}{shown}", fontsize=9)
    axes[0].set_title("rows: points (data, reconstructions E[x|z], z ~ q(z|x); samples E[x|z], "
                      "z ~ p(z))", fontsize=8)  # fmt: skip
    colorbar = fig.colorbar(image, cax=fig.add_subplot(grid[:, 1]))
    scale = " (square-root colour scale)" if low >= 0 else ""
    colorbar.set_label(f"value{scale}", fontsize=9)
    return save_figure(fig, path)


def latent_map_figure(coordinates: Any, labels: Any, path: str | os.PathLike, *,
                      title: str = "") -> Path:  # fmt: skip
    """Save a 2-D scatter of ``coordinates`` (N, 2), one colour per class of ``labels`` (N,)
    with a legend, or grey points where there are no labels."""
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    size = max(2.0, min(20.0, 4000.0 / max(len(coordinates), 1)))
    if labels is None:
        ax.scatter(coordinates[:, 0], coordinates[:, 1], s=size, c="0.4", alpha=0.7)
    else:
        classes = sorted(set(int(k) for k in labels))
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, k in enumerate(classes):
            chosen = labels == k
            ax.scatter(coordinates[chosen, 0], coordinates[chosen, 1], s=size, alpha=0.7,
                       color=cmap(i % cmap.N), label=str(k))  # fmt: skip
        ax.legend(title="label", markerscale=max(1.0, 12.0 / size), fontsize=8,
                  loc="center left", bbox_to_anchor=(1.0, 0.5))  # fmt: skip
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def convergence_figure(summary: dict[str, Any], path: str | os.PathLike) -> Path:
    """Save estimates of log p(x) +- the spread of one estimate against compute, one line per
    estimator, with the reference (exact log p(x), or IS at the largest K) as a line. The x
    axis (log scale) is the density evaluations per point: K for importance sampling, the
    density-and-gradient evaluations of AIS (pilot included), so both sit on one axis."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for estimator in summary["estimators"]:
        rows = [row for row in summary["results"] if row["estimator"] == estimator]
        ax.errorbar(
            [row.get("compute", row["num_samples"]) for row in rows],
            [row["estimate"] for row in rows],
            yerr=[row["stderr"] for row in rows],
            marker="o",
            capsize=3,
            label=estimator,
        )
    if summary["reference"] is not None:
        kind = summary["reference_kind"]
        label = "exact log p(x)" if kind == "exact" else f"{kind}, K={max(summary['ks'])}"
        ax.axhline(summary["reference"], color="black", linestyle="--", linewidth=1, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("compute: density evaluations per point (IS: K)")
    ax.set_ylabel("log p(x) estimate (nats, mean over points)")
    ax.set_title(
        f"{summary['split']}: {summary['num_points']} points, {summary['repeats']} repeats"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def bdmc_figure(summary: dict[str, Any], per_point: dict[str, Any],
                path: str | os.PathLike) -> Path:  # fmt: skip
    """Save BDMC's lower (forward AIS) and upper (reverse AIS) bound of log p(x) per
    simulated point, points sorted by the lower bound, with the gap shaded."""
    import numpy as np

    path = Path(path)
    lower = np.asarray(per_point["lower"], dtype=float)
    upper = np.asarray(per_point["upper"], dtype=float)
    order = np.argsort(lower)
    positions = np.arange(len(lower))
    fig, ax = plt.subplots(figsize=(min(12.0, max(4.5, 0.08 * len(lower) + 3)), 3.6))
    ax.fill_between(positions, lower[order], upper[order], color="C1", alpha=0.3, label="gap")
    ax.plot(positions, upper[order], "v", color="C3", markersize=3, label="upper (reverse AIS)")
    ax.plot(positions, lower[order], "^", color="C0", markersize=3, label="lower (forward AIS)")
    ax.set_xlabel("simulated point (sorted by the lower bound)")
    ax.set_ylabel("log p(x) (nats)")
    ax.set_title(f"BDMC: mean gap {summary['bdmc_gap']:.3f} nats, {summary['ais']['steps']} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def khat_figure(khat: Any, indices: Any, path: str | os.PathLike) -> Path:
    """Save PSIS k-hat per data point with the 0.5 (good) and 0.7 (unreliable) lines
    (Yao et al. 2018); -inf (all weights equal) is drawn at the bottom edge, inf at the top."""
    import numpy as np

    path = Path(path)
    khat = np.array([np.nan if k is None else k for k in khat], dtype=float)
    finite = khat[np.isfinite(khat)]
    low = min([-0.2, *(finite - 0.1)])
    high = max([1.0, *(finite + 0.1)])
    shown = np.clip(np.nan_to_num(khat, nan=high, posinf=high, neginf=low), low, high)
    colors = np.where(khat > 0.7, "C3", np.where(khat >= 0.5, "C1", "C0"))
    fig, ax = plt.subplots(figsize=(min(12.0, max(4.0, 0.25 * len(khat) + 2)), 3.2))
    positions = np.arange(len(khat))
    ax.scatter(positions, shown, c=list(colors), s=20 if len(khat) <= 40 else 10, zorder=3)
    for level, style in ((0.5, ":"), (0.7, "--")):
        ax.axhline(level, color="gray", linestyle=style, linewidth=1, label=f"k = {level}")
    ax.set_ylim(low - 0.05, high + 0.05)
    # one tick per point while the labels stay readable, then about 20 ticks
    step = max(1, math.ceil(len(khat) / 40))
    ax.set_xticks(positions[::step])
    ax.set_xticklabels([str(i) for i in list(indices)[::step]], rotation=90, fontsize=7)
    ax.set_xlabel("data point (index into the split)")
    ax.set_ylabel("PSIS k-hat of q(z|x)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def kl_per_dim_figure(kl_per_dim: Any, labels: Any, path: str | os.PathLike) -> Path:
    """Save the mean KL(q(z_d|x) || p(z_d)) per latent dimension as bars (nats); dimensions
    at ~0 are collapsed onto the prior."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(min(12.0, max(4.0, 0.18 * len(labels) + 2)), 3.2))
    ax.bar(range(len(labels)), list(kl_per_dim), color="C0")
    step = max(1, math.ceil(len(labels) / 60))
    ax.set_xticks(range(0, len(labels), step))
    ax.set_xticklabels(list(labels)[::step], rotation=90, fontsize=7)
    ax.set_ylabel("KL to the prior (nats)")
    ax.set_xlabel("latent dimension")
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def forest_figure(datasets: dict[str, Any], path: str | os.PathLike, *, var_name: str,
                  coords: dict[str, Any]) -> Path:  # fmt: skip
    """Save an ArviZ forest plot of one latent site, a few points and dims, one row per
    InferenceData in ``datasets`` (label -> data), e.g. q(z|x) against NUTS."""
    import arviz as az
    import numpy as np

    path = Path(path)
    axes = az.plot_forest(
        list(datasets.values()),
        model_names=list(datasets),
        var_names=[var_name],
        coords=coords,
        combined=True,
        hdi_prob=0.9,
        figsize=(6, 1 + 0.35 * len(datasets) * np.prod([len(v) for v in coords.values()])),
    )
    fig = axes.ravel()[0].figure
    return save_figure(fig, path)


def pair_figure(datasets: dict[str, Any], path: str | os.PathLike, *, var_name: str,
                coords: dict[str, Any]) -> Path:  # fmt: skip
    """Save a pair plot of one point's first latent dims: histograms on the diagonal,
    scatter plots below it, the draws of every InferenceData in ``datasets`` (label -> data)
    overlaid, e.g. q(z|x) against NUTS. ``coords`` picks one ``obs_id`` and the dims."""
    import numpy as np

    path = Path(path)
    arrays = {}
    for label, data in datasets.items():
        values = data.posterior[var_name].sel(coords)
        values = values.stack(sample=("chain", "draw")).squeeze("obs_id", drop=False)
        arrays[label] = np.asarray(values.transpose(..., "sample").values).reshape(
            -1, values.sizes["sample"]
        )
    size = next(iter(arrays.values())).shape[0]
    dim_name = next(d for d in coords if d != "obs_id")
    names = [f"{var_name}[{d}]" for d in coords[dim_name]]
    fig, axes = plt.subplots(size, size, figsize=(1.9 * size + 1, 1.9 * size + 0.5),
                             squeeze=False)  # fmt: skip
    for row in range(size):
        for col in range(size):
            ax = axes[row][col]
            if col > row:
                ax.set_visible(False)
                continue
            for i, (label, values) in enumerate(arrays.items()):
                color = f"C{i}"
                if row == col:
                    ax.hist(values[row], bins=30, density=True, histtype="step", color=color,
                            label=label)  # fmt: skip
                else:
                    ax.scatter(values[col], values[row], s=2, alpha=0.25, color=color)
            if row == size - 1:
                ax.set_xlabel(names[col], fontsize=8)
            if col == 0 and row > 0:
                ax.set_ylabel(names[row], fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.05, 1.0))
    obs_id = coords["obs_id"][0]
    fig.suptitle(f"draws of {var_name} for data point {obs_id}", fontsize=9)
    return save_figure(fig, path)


def gradient_variance_figure(summary: dict[str, Any], path: str | os.PathLike) -> Path:
    """Save bar charts (log scale) of gradient variance and SNR per estimator, for all the
    pair's parameters and for its encoder and decoder apart (``pyro-vae gradvar``)."""
    path = Path(path)
    estimators = list(summary["estimators"])
    groups = [("all", None), ("encoder", "encoder"), ("decoder", "decoder")]

    def value(name: str, part: str | None, key: str) -> float:
        stats = summary["estimators"][name]
        stats = stats if part is None else stats.get("parts", {}).get(part, {})
        number = stats.get(key)
        return number if number is not None and number > 0 else float("nan")

    width = 0.8 / len(groups)
    positions = range(len(estimators))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in zip(
        axes, ("variance", "snr"), ("variance per coordinate", "signal-to-noise ratio"),
        strict=True,
    ):  # fmt: skip
        for i, (group, part) in enumerate(groups):
            ax.bar(
                [p + (i - (len(groups) - 1) / 2) * width for p in positions],
                [value(name, part, key) for name in estimators],
                width,
                label=group,
            )
        ax.set_yscale("log")
        ax.set_xticks(list(positions))
        ax.set_xticklabels(estimators)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend()
    fig.suptitle(
        f"gradients on {summary['batch_size']} {summary['split']} points, "
        f"{summary['num_draws']} draws each"
    )
    return save_figure(fig, path)


def snr_against_k_figure(summary: dict[str, Any], path: str | os.PathLike) -> Path:
    """Save the encoder's and the decoder's gradient SNR against K (log-log), one line per
    estimator: the shape of Rainforth et al. (2018)'s figure (``pyro-vae gradvar
    --snr-vs-k``)."""
    path = Path(path)
    ks = summary["ks"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    for ax, part in zip(axes, ("encoder", "decoder"), strict=True):
        for i, (name, series) in enumerate(summary["estimators"].items()):
            values = [v if v is not None and v > 0 else float("nan") for v in series[f"{part}_snr"]]
            # dashed and open after the first: equal decoder lines (iwae, iwae-dreg) both show
            ax.plot(ks, values, marker="os^"[i % 3], linestyle=("-", "--", ":")[i % 3],
                    fillstyle="full" if i == 0 else "none", label=name)  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("K (particles per point)")
        ax.set_ylabel("signal-to-noise ratio")
        ax.set_title(part)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend()
    fig.suptitle(
        f"gradient SNR against K on {summary['batch_size']} {summary.get('split') or 'x'} "
        f"points, {summary['num_draws']} draws per K"
    )
    return save_figure(fig, path)
