"""Resuming a run: the checks of ``--resume``, the checkpoint and configuration it continues,
and putting the checkpoint back (parameters, optimizer, RNG, the epoch in progress), with
``metrics.csv`` and ``best.pt`` made to agree with its history.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyro
import torch

from pyro_vae.infer.distributed import rank_seed, world
from pyro_vae.runs.checkpoints import (
    BEST,
    CHECKPOINT,
    CheckpointError,
    load_checkpoint,
    restore_params,
    set_rng_state,
)
from pyro_vae.runs.config import CHECKPOINT_DEFAULTS, FIELDS, ConfigError, TrainConfig
from pyro_vae.runs.files import atomic_write_bytes
from pyro_vae.runs.reopen import RESUMABLE_CHANGES
from pyro_vae.training.outputs import TrainingError, _log, best_epoch, write_metrics
from pyro_vae.training.progress import _Progress


def _check_resume_flag(run_dir: Path, resume: bool) -> None:
    """``--resume`` needs the run directory's checkpoint; a new run needs a directory without
    one."""
    checkpoint_path = run_dir / CHECKPOINT
    if resume and not checkpoint_path.exists():
        raise TrainingError(
            f"--resume: no checkpoint in {str(run_dir)!r} ({CHECKPOINT} is missing); "
            "start the run without --resume"
        )
    if not resume and checkpoint_path.exists():
        raise TrainingError(
            f"{str(run_dir)!r} already holds a run; pass --resume to continue it, "
            "or choose another --out"
        )


def _resumed_checkpoint(
    config: TrainConfig, run_dir: Path, device: torch.device, record_object: bool
) -> tuple[dict, TrainConfig]:
    """The checkpoint ``--resume`` continues and the configuration it was trained with;
    ``config`` takes the choices made when the run started, and nothing else may differ."""
    state = load_checkpoint(run_dir / CHECKPOINT, device)
    trained = TrainConfig(**{**CHECKPOINT_DEFAULTS, **state["config"]})  # keys older runs lack
    if record_object:  # the object's record is the run's own
        config.pair, config.pair_kwargs = trained.pair, trained.pair_kwargs
        config.pair_note = trained.pair_note
    if config.num_labelled is None:  # resolved when the run started
        config.num_labelled = trained.num_labelled
    _check_resumable(config, trained, state["epoch"])
    return state, trained


def _check_resumable(config: TrainConfig, trained: TrainConfig, epoch: int) -> None:
    changed = [
        f"{key} (run: {getattr(trained, key)!r}, now: {getattr(config, key)!r})"
        for key in FIELDS
        if key not in RESUMABLE_CHANGES and getattr(config, key) != getattr(trained, key)
    ]
    if changed:
        raise ConfigError(
            "--resume continues a run as it was configured, but these settings differ: "
            + "; ".join(changed)
            + ". Drop those flags, or start a new run with another --out."
        )
    if config.epochs < epoch:
        raise ConfigError(
            f"--resume: the run already finished epoch {epoch}; pass --epochs N with N > {epoch}"
        )


def _resume(pair, optimizer, scheduler, state, trained, config, device, run_dir,
            train_x) -> _Progress:  # fmt: skip
    """Put a checkpoint back: parameters, optimizer (at a new ``--lr`` if one was given),
    RNG, history and the epoch in progress; make ``metrics.csv`` and ``best.pt`` agree with
    the checkpoint's history."""
    restore_params(pair, state, device, run_dir / CHECKPOINT)
    if (trained.lr, trained.baseline_lr) != (config.lr, config.baseline_lr):
        _log(
            f"note: --lr {trained.lr:g} -> {config.lr:g} from epoch {state['epoch'] + 1} on "
            "(the lr column of metrics.csv records it)"
        )
    # the saved groups carry the rates they were saved with: the run's base rates replace
    # them (a new --lr), and the schedule sets the resumed epoch's factor
    optimizer.set_state(state["optimizer"])
    scheduler.load_state_dict(state.get("scheduler") or {"last_epoch": state["epoch"] + 1})
    ranks, saved_size = world(), int(state.get("world_size", 1))
    partial = state.get("in_progress")
    order = None if partial is None else partial["order"]
    if saved_size == ranks.size:
        mine = state["ranks"][ranks.rank] if ranks.distributed else {"rng": state["rng"]}
        set_rng_state(mine["rng"], device)
        order = mine.get("order", order) if ranks.distributed else order
    elif partial is not None:
        raise ConfigError(
            f"{CHECKPOINT} was saved in the middle of epoch {state['epoch'] + 1} by "
            f"{saved_size} rank(s); resume it on {saved_size} (--nproc-per-node {saved_size}), "
            "or from the end of an epoch on any number"
        )
    else:
        _log(
            f"note: the checkpoint was saved by {saved_size} rank(s) and the run resumes on "
            f"{ranks.size}: each rank's data shard and random stream change, so the run goes "
            "on correctly but not bit for bit as it would have"
        )
        pyro.set_rng_seed(rank_seed(config.seed + state["epoch"], ranks.rank))
    history = list(state["history"])
    step = state.get("step", state["epoch"] * _steps_per_epoch(train_x, config))
    run = _Progress(history=history, epoch=state["epoch"], step=step)
    if partial is not None:
        run.order = None if order is None else order.to(train_x.device)
        run.batches_done = int(partial["batches_done"])
        run.total, run.seen = float(partial["total"]), int(partial["seen"])
        run.train_seconds = float(partial["train_seconds"])
        run.beta = float(partial["beta"])
        run.classify_total = float(partial.get("classify_total", 0.0))
        run.labelled_seen = int(partial.get("labelled_seen", 0))
    if ranks.is_main:
        write_metrics(run_dir, history)
        _repair_best(run_dir, history, state, partial is not None)
    where = f"step {run.batches_done} of epoch {run.epoch + 1}" if partial else f"epoch {run.epoch}"
    _log(f"resuming {run_dir} after {where} (of {config.epochs} epochs)")
    return run


def _repair_best(run_dir: Path, history: list, state: dict, mid_epoch: bool) -> None:
    """``best.pt`` must hold the epoch the history calls best. It can be one epoch ahead of
    ``checkpoint.pt`` (killed between the two writes): the resumed run redoes and rewrites
    it. Missing or behind while the checkpoint holds the best epoch: copied from it."""
    if not history:
        return
    best = best_epoch(history)
    path = run_dir / BEST
    held = None
    if path.exists():
        try:
            held = load_checkpoint(path)["epoch"]
        except CheckpointError:
            held = None
    if held == best or (held is not None and held > state["epoch"]):
        return
    if best == state["epoch"] and not mid_epoch:
        atomic_write_bytes(path, (run_dir / CHECKPOINT).read_bytes())
        _log(f"note: {BEST} did not hold the best epoch {best}; copied from {CHECKPOINT}")
    else:
        _log(
            f"warning: {BEST} holds epoch {held}, but the history's best is epoch {best}, "
            "whose parameters were not kept; it is replaced when a later epoch beats it"
        )


def _steps_per_epoch(train_x: torch.Tensor, config: TrainConfig) -> int:
    if config.drop_last:
        return train_x.shape[0] // config.batch_size
    return math.ceil(train_x.shape[0] / config.batch_size)
