"""Training by SVI: data on the device, a checked pair, atomic checkpoints, exact resume.

A run directory holds:

- ``config.toml``: the resolved configuration,
- ``metrics.csv``: epoch, train loss and validation ELBO per data point, seconds (all, and
  the SVI steps alone),
- ``checkpoint.pt``: the last finished epoch (model, guide, param store, optimizer, RNG),
- ``best.pt``: the checkpoint with the highest validation ELBO,
- ``metrics.png``: the learning curves, drawn when the run finishes.

Checkpoints are written to a temporary file and renamed, so an interrupted write never
leaves a broken one. ``resume=True`` restores the last checkpoint, RNG included, and ends
exactly where an uninterrupted run with the same seed and device would have.

The loop is this module; the steps around it are named where they live: :mod:`.setup`
(everything before the first step), :mod:`.steps` (one step, divergence, stops),
:mod:`.progress` (where a run stands, saved mid-epoch), :mod:`.epochs` (an epoch's row,
checkpoint and log line), :mod:`.validation`, :mod:`.resume`, :mod:`.svi` (what the step
differentiates), :mod:`.records` (a pair object in the config) and :mod:`.outputs` (the run
directory's files and the result).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pyro_vae.infer.distributed import current_world, world
from pyro_vae.infer.gradients import forget_stale_optimizers
from pyro_vae.infer.handlers import kl_weight
from pyro_vae.pairs import set_training_mode
from pyro_vae.pairs.labels import program_args
from pyro_vae.runs.checkpoints import (  # noqa: F401 -- importable from here as before
    BEST,
    CHECKPOINT,
    load_checkpoint,
)
from pyro_vae.runs.config import ConfigError, TrainConfig
from pyro_vae.runs.faults import fault_point
from pyro_vae.runs.lock import StopSignals, remove_stale_temporaries, run_lock
from pyro_vae.runs.loggers import RunLogger
from pyro_vae.runs.reopen import (  # noqa: F401 -- importable from here as before
    CONFIG,
    read_config,
    restore_pair,
    split_labels,
)
from pyro_vae.training.epochs import _epoch_row, _log_epoch, _save_epoch
from pyro_vae.training.outputs import (  # noqa: F401 -- importable from here as before
    CURVES,
    LABEL_METRIC_COLUMNS,
    METRIC_COLUMNS,
    METRICS,
    RUN_FILES,
    LossGrowth,
    RunResult,
    TrainingError,
    _finish,
    best_epoch,
    prepare_run_dir,
    warn_unused_settings,
    write_metrics,
)
from pyro_vae.training.progress import _Progress, _save_in_progress, _saved_at
from pyro_vae.training.records import record_pair_object  # noqa: F401 -- as before
from pyro_vae.training.run_logging import TrainingLoggers
from pyro_vae.training.setup import TrainingSetup, defaults_for, set_up
from pyro_vae.training.steps import _agree_on_stop, _batch, _stopped, _svi_step
from pyro_vae.training.svi import base_rates, training_guide  # noqa: F401 -- as before
from pyro_vae.training.validation import (  # noqa: F401 -- importable from here as before
    VALID_SEED,
    guide_accuracy,
    validation_elbo,
)


def train(
    config: TrainConfig,
    *,
    pair: Any = None,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
    loggers: Sequence[RunLogger] = (),
) -> RunResult:
    """Train a pair by SVI as ``config`` says, writing the run directory ``config.out``.

    ``pair`` may be given as an object (from Python); otherwise it is built from
    ``config.pair`` or ``config.model``/``config.guide``. ``resume=True`` continues from the
    run directory's last checkpoint (the end of an epoch, or the step a signal or
    ``checkpoint_every`` saved) up to ``config.epochs``; a finished run only gets its
    finishing steps (metrics, learning curves). One trainer at a time holds the directory's
    lock; SIGINT/SIGTERM stop the run after the current step, with that step saved.
    ``on_epoch(row)`` receives each epoch's row of ``metrics.csv``; ``on_step(metrics)`` the
    ``epoch``, ``step``, ``loss`` (of this step's batch) and ``beta`` after every SVI step.
    ``loggers``: logger objects (:class:`~pyro_vae.runs.loggers.TensorBoardLogger`,
    :class:`~pyro_vae.runs.loggers.MLflowLogger`, a :class:`~pyro_vae.runs.loggers.RunLogger`
    of your own) that get what the loggers of ``config.log`` get (:mod:`.run_logging`), and
    are closed when the run ends.

    Under torchrun (``WORLD_SIZE`` > 1) this process is one rank of a data-parallel run
    (:mod:`pyro_vae.infer.distributed`): every rank trains on its shard with ``batch_size / R``
    points per step, gradients are summed before each optimizer step, and rank 0 alone
    holds the lock and writes the run directory.
    """
    record_object = pair is not None and config.pair is None and config.model is None
    if record_object:
        config.pair = "<pair object>"  # replaced once the data set's shape is known
    config = defaults_for(config.validate())
    warn_unused_settings(config)
    TrainingLoggers.check(config)
    if config.out is None:
        raise ConfigError("--out RUN_DIR is required: the run directory to write")
    ranks, config.device = current_world(config.device)
    run_dir = Path(config.out)
    if ranks.is_main:
        run_dir = prepare_run_dir(run_dir)
    ranks.barrier("rank 0 prepared the run directory")
    with run_lock(run_dir) if ranks.is_main else nullcontext(), StopSignals() as stop:
        if ranks.is_main:
            remove_stale_temporaries(run_dir, own=RUN_FILES)
        return _train(config, run_dir, pair, record_object, resume, progress,
                      (on_epoch, on_step, loggers), stop)  # fmt: skip


def _train(config, run_dir, pair, record_object, resume, progress, callbacks, stop) -> RunResult:
    on_epoch, on_step, loggers = callbacks
    setup, run = set_up(config, run_dir, pair, record_object, resume, progress)
    logs = TrainingLoggers.open(config, run_dir, loggers, run.history if resume else None)
    try:
        result = _epochs(setup, run, config, run_dir, (on_epoch, on_step), stop, logs)
    except BaseException:
        logs.close("KILLED" if stop.requested else "FAILED")
        raise
    logs.close("FINISHED")
    return result


def _epochs(setup: TrainingSetup, run: _Progress, config: TrainConfig, run_dir: Path,
            callbacks, stop: StopSignals, logs: TrainingLoggers) -> RunResult:  # fmt: skip
    """The loop over epochs, from where ``run`` stands to ``config.epochs``."""
    on_epoch, on_step = callbacks
    pair, plan, ranks = setup.pair, setup.plan, world()
    saved = _saved_at(run)
    growth = LossGrowth(config, run.history)

    for epoch in range(run.epoch + 1, config.epochs + 1):
        setup.scheduler.step(epoch)
        set_training_mode(pair, True)
        started = time.perf_counter() - run.train_seconds
        if run.batches_done == 0 and plan.unlabelled.numel():
            count, device = plan.unlabelled.numel(), setup.train_x.device
            in_order = setup.local is not None and setup.local.mode == "full"  # per-point params
            order = torch.arange if in_order else torch.randperm
            run.order = order(count, device=device)
        bar = tqdm(range(run.batches_done, plan.steps), total=plan.steps,
                   initial=run.batches_done, desc=f"epoch {epoch}/{config.epochs}",
                   disable=not setup.progress, leave=False, unit="step")  # fmt: skip
        for step_in_epoch in bar:
            where = f"epoch {epoch}, step {run.batches_done + 1}"
            loss = _step(setup, run, epoch, step_in_epoch, where, saved, run_dir, config, stop)
            run.train_seconds = time.perf_counter() - started
            growth.check(run.total / run.seen, where)
            fault_point("step")
            if on_step is not None:
                on_step({"epoch": epoch, "step": run.step, "loss": loss, "beta": run.beta})
            if setup.progress and run.batches_done % 10 == 0:
                bar.set_postfix(loss=f"{run.total / run.seen:.2f}")
            last = run.batches_done == plan.steps
            every = config.checkpoint_every and run.step % config.checkpoint_every == 0
            if not last and (stop.requested or every):
                _save_in_progress(pair, (setup.optimizer, setup.scheduler), run, config,
                                  setup.device, run_dir / CHECKPOINT, where)  # fmt: skip
                saved = _saved_at(run)
                if stop.requested:
                    raise _stopped(stop, where, run_dir)
        bar.close()
        row = _epoch_row(setup, run, epoch, started, saved, run_dir, config)
        run = _save_epoch(setup, run, row, config, run_dir)
        saved = _saved_at(run)
        _log_epoch(row, config)
        logs.epoch(setup, row, config)
        if on_epoch is not None:
            on_epoch(row)
        _agree_on_stop(stop, ranks)
        if stop.requested and epoch < config.epochs:
            raise _stopped(stop, f"epoch {epoch}", run_dir)
    if ranks.is_main:
        _finish(run_dir, run.history)
    return RunResult(run_dir=run_dir, config=config, history=run.history, pair=pair)


def _step(setup: TrainingSetup, run: _Progress, epoch: int, step_in_epoch: int, where: str,
          saved: str, run_dir: Path, config: TrainConfig, stop: StopSignals) -> float:  # fmt: skip
    """One step of the loop: the batch, its KL weight and minibatch scale, the SVI step (and
    the classifier's on a labelled batch), and the run's counts; returns the step's loss."""
    x, y, rows = _batch(setup.train_x, setup.labels, setup.plan, run, epoch, step_in_epoch,
                        config, setup.batch_size)  # fmt: skip
    if setup.local is not None:  # the guide's per-point params at this batch's rows
        setup.local.use_rows(rows, setup.num_train)
    run.beta = kl_weight(run.step, config.beta, config.kl_warmup, config.kl_warmup_start)
    setup.scales.beta = run.beta
    global_batch = x.shape[0] * world().size
    setup.scales.data_scale = setup.num_train / global_batch if setup.points_per_step else 1.0
    # _svi_step is looked up in this module: tests replace it here to make a step diverge
    loss = _svi_step(setup.svi, program_args(x, y), setup.pair, where, saved, run_dir, config,
                     stop)  # fmt: skip
    if setup.classify is not None and y is not None:
        run.classify_total += _svi_step(setup.classify, (x, y), setup.pair, where, saved,
                                        run_dir, config, stop)  # fmt: skip
        run.labelled_seen += global_batch
    if config.baseline != "none":
        forget_stale_optimizers(setup.optimizer)
    run.step += 1
    run.batches_done += 1
    # per point: a step whose data sites are scaled by N/B stands for N points
    per_point = setup.points_per_step
    run.total += loss * global_batch / per_point(x) if per_point else loss
    run.seen += global_batch
    return loss
