"""Pictures of a trained run: data, reconstructions and samples from the prior, as one grid."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: files, never windows

import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro import poutine  # noqa: E402

from pyro_vae.train import CHECKPOINT, eval_split, read_config, resolve_device, restore_pair  # noqa: E402


def _observed_mean(trace, observed_sites: tuple[str, ...]) -> torch.Tensor:
    """The mean of the (first) observed site's distribution; its value if it has no mean."""
    site = trace.nodes[observed_sites[0]]
    try:
        return site["fn"].mean
    except NotImplementedError:
        return site["value"]


def reconstructions(pair: Any, x: torch.Tensor, observed_sites: tuple[str, ...]) -> torch.Tensor:
    """E[x | z] with z ~ q(z|x): the decoder's mean at a guide draw for each point."""
    with torch.no_grad():
        guide_trace = poutine.trace(pair.guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(x)
    return _observed_mean(model_trace, observed_sites)


def prior_samples(pair: Any, x: torch.Tensor, observed_sites: tuple[str, ...]) -> torch.Tensor:
    """E[x | z] with z ~ p(z): ``x`` only sets the batch size and shape."""
    with torch.no_grad():
        trace = poutine.trace(poutine.uncondition(pair.model)).get_trace(x)
    return _observed_mean(trace, observed_sites)


def image_grid(rows: list[tuple[str, torch.Tensor]], image_shape: tuple[int, ...], path: Path):
    """Save labelled rows of flattened images as one PNG."""
    channels, height, width = image_shape
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
                ax.imshow(
                    image.squeeze(-1) if channels == 1 else image, cmap="gray", vmin=0, vmax=1
                )
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def training_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Save train loss and validation ELBO per epoch (both in nats per data point) as a PNG."""
    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(epochs, [-row["train_loss"] for row in history], "o-", label="train objective")
    ax.plot(epochs, [row["valid_elbo"] for row in history], "s-", label="validation ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per data point")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def sample_figure(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    num: int = 10,
    split: str = "test",
    seed: int = 0,
    device: str | None = None,
    checkpoint: str = CHECKPOINT,
) -> Path:
    """Write a PNG grid: test points, their reconstructions, and samples from the prior."""
    run_dir, out = Path(run_dir), Path(out)
    config = read_config(run_dir)
    torch_device = (
        resolve_device(device) if device else resolve_device(config.device, fall_back_to_cpu=True)
    )
    pyro.set_rng_seed(config.seed)
    pair, info, data, _ = restore_pair(run_dir, config, torch_device, checkpoint=checkpoint)
    pyro.set_rng_seed(seed)
    x = eval_split(data, split, config.binarize)[: max(num, 2)]
    rows = [
        ("data", x[:num]),
        ("reconstruction", reconstructions(pair, x, info.observed_sites)[:num]),
        ("prior sample", prior_samples(pair, x, info.observed_sites)[:num]),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows, data.image_shape, out)
    return out
