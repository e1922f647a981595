"""Where a run stands (:class:`_Progress`), and saving it in the middle of an epoch: every
checkpoint holds it, each rank's random stream included, so a resume continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pyro_vae.infer.distributed import World, world
from pyro_vae.runs.checkpoints import checkpoint_state, rng_state, save_checkpoint
from pyro_vae.training.steps import _check_finite


@dataclass
class _Progress:
    """Where a run stands: finished epochs, SVI steps, and the epoch in progress (its data
    order, the batches done and the running sums), all of it in every checkpoint."""

    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0
    epoch: int = 0  # the last finished epoch
    order: torch.Tensor | None = None
    batches_done: int = 0
    total: float = 0.0
    seen: int = 0
    train_seconds: float = 0.0
    beta: float = 1.0
    classify_total: float = 0.0  # model_classify/guide_classify loss over the epoch
    labelled_seen: int = 0

    def in_progress(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch + 1,
            "order": None if self.order is None else self.order.cpu(),
            "batches_done": self.batches_done,
            "total": self.total,
            "seen": self.seen,
            "train_seconds": self.train_seconds,
            "beta": self.beta,
            "classify_total": self.classify_total,
            "labelled_seen": self.labelled_seen,
        }


def _saved_at(run: _Progress) -> str:
    if run.batches_done:
        return f"the checkpoint of epoch {run.epoch + 1}, step {run.batches_done}"
    if run.epoch:
        return f"the checkpoint of epoch {run.epoch}"
    return ""


def _save_in_progress(pair, optimizers, run: _Progress, config, device, path, where) -> None:
    """A checkpoint in the middle of an epoch: the last finished epoch's history, the state
    after this step, and the epoch in progress. ``best.pt`` and ``metrics.csv`` stay."""
    _check_finite(pair, where, _saved_at(run), path.parent, config)
    optimizer, scheduler = optimizers
    state = checkpoint_state(
        pair, optimizer, run.epoch, run.history, config, device, run.step, scheduler=scheduler
    )
    state["in_progress"] = run.in_progress()
    ranks = world()
    _add_rank_states(state, ranks, device, run)
    if ranks.is_main:
        save_checkpoint(state, path)


def _add_rank_states(state: dict, ranks: World, device, run: _Progress | None) -> None:
    """Every rank's random state (and, mid-epoch, its data order) into rank 0's checkpoint:
    a resume on the same number of ranks continues each stream exactly."""
    if not ranks.distributed:
        return
    mine = {"rng": rng_state(device),
            "order": None if run is None or run.order is None else run.order.cpu()}  # fmt: skip
    state["world_size"] = ranks.size
    state["ranks"] = ranks.gather(mine, "saving the checkpoint")
