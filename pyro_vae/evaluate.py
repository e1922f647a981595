"""Evaluation of a trained run: importance-sampled log p(x) and the ELBO, per data point.

Kingma & Welling's third job, efficient estimation of the marginal likelihood: for every data
point, K draws z_k ~ q(z|x) from the trained guide give

    log p(x) ~= log (1/K) sum_k exp(log p(x, z_k) - log q(z_k|x)),

a lower bound in expectation that tightens as K grows (Burda et al. 2016); the ELBO is the
mean of the same log weights, and ``gap = log_px - elbo`` measures how far the ELBO is from it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.config import ConfigError
from pyro_vae.estimators import estimate_log_px
from pyro_vae.train import (
    BEST,
    atomic_write_bytes,
    eval_split,
    read_config,
    resolve_device,
    restore_pair,
)

#: Seed of the importance samples, so evaluating twice gives the same numbers.
EVAL_SEED = 0


def evaluate(
    run_dir: str | os.PathLike,
    *,
    num_samples: int = 1000,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 100,
    checkpoint: str = BEST,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
    progress: bool | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Estimate log p(x) by importance sampling with the guide, and the ELBO, on a split.

    Returns (and saves as ``evaluation_<split>.json`` in the run directory) a summary with
    ``log_px``, ``elbo``, ``gap`` (means over points, nats), their standard errors,
    ``num_points``, ``num_samples``; per-point values go to ``evaluation_<split>.npz``.
    """
    run_dir = Path(run_dir)
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {num_samples}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    config = read_config(run_dir)
    if data_dir is not None:
        config.data_dir = data_dir
    torch_device = (
        resolve_device(device) if device else resolve_device(config.device, fall_back_to_cpu=True)
    )
    pyro.set_rng_seed(config.seed)
    pair, info, data, state = restore_pair(run_dir, config, torch_device, pair, checkpoint)
    x_all = eval_split(data, split, config.binarize)
    if limit is not None:
        x_all = x_all[:limit]
    if progress is None:
        progress = sys.stderr.isatty()
    pyro.set_rng_seed(EVAL_SEED)
    started = time.perf_counter()
    log_px, elbo, ess = [], [], []
    starts = range(0, x_all.shape[0], batch_size)
    for start in tqdm(starts, desc=f"evaluate {split}", disable=not progress, unit="batch"):
        out = estimate_log_px(
            pair,
            x_all[start : start + batch_size],
            num_samples,
            max_plate_nesting=info.max_plate_nesting,
            vectorize=info.vectorizable,
        )
        log_px.append(out["log_px"].cpu())
        elbo.append(out["elbo"].cpu())
        ess.append(out["ess"].cpu())
    seconds = time.perf_counter() - started
    log_px_t, elbo_t, ess_t = torch.cat(log_px), torch.cat(elbo), torch.cat(ess)
    n = log_px_t.shape[0]

    def stderr(values: torch.Tensor) -> float:
        return float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")

    summary = {
        "log_px": float(log_px_t.mean()),
        "elbo": float(elbo_t.mean()),
        "gap": float((log_px_t - elbo_t).mean()),
        "log_px_stderr": stderr(log_px_t),
        "elbo_stderr": stderr(elbo_t),
        "ess_mean": float(ess_t.mean()),
        "num_points": n,
        "num_samples": num_samples,
        "split": split,
        "checkpoint": checkpoint,
        "epoch": state["epoch"],
        "dataset": config.dataset,
        "device": str(torch_device),
        "seconds": seconds,
    }
    if save:
        atomic_write_bytes(
            run_dir / f"evaluation_{split}.json", (json.dumps(summary, indent=2) + "\n").encode()
        )
        np.savez(
            run_dir / f"evaluation_{split}.npz",
            log_px=log_px_t.numpy(),
            elbo=elbo_t.numpy(),
            ess=ess_t.numpy(),
        )
    return summary
