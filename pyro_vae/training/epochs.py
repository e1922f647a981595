"""The end of an epoch: its row of ``metrics.csv`` (validation included), its checkpoint
(``best.pt`` before ``checkpoint.pt``) and its line in the log.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from pyro_vae.infer.distributed import world
from pyro_vae.infer.optimizers import lr_factor
from pyro_vae.runs.checkpoints import BEST, CHECKPOINT, checkpoint_state, save_checkpoint
from pyro_vae.runs.config import TrainConfig
from pyro_vae.training.outputs import _best_key, _log, write_metrics
from pyro_vae.training.progress import _add_rank_states, _Progress
from pyro_vae.training.setup import TrainingSetup
from pyro_vae.training.steps import _check_finite
from pyro_vae.training.validation import _validate, guide_accuracy


def _epoch_row(setup: TrainingSetup, run: _Progress, epoch: int, started: float, saved: str,
               run_dir: Path, config: TrainConfig) -> dict[str, float]:  # fmt: skip
    """Epoch ``epoch``'s row of ``metrics.csv``, once its parameters are found finite: the
    training loss per point, the validation ELBO (NaN without a validation split), the
    seconds since ``started`` and of the SVI steps alone, beta, lr, and the label columns of
    a run that has them."""
    pair, info, labels, ranks = setup.pair, setup.info, setup.labels, world()
    num_valid = setup.num_valid
    train_seconds = run.train_seconds
    _check_finite(pair, f"the end of epoch {epoch}", saved, run_dir, config)
    valid_y = labels.valid if info.needs_labels else None
    valid = math.nan  # --valid-size 0: no validation split, best.pt follows the last epoch
    if num_valid:
        valid = _validate(pair, setup.valid_x, valid_y, info, config, epoch, saved, run_dir,
                          num_valid)  # fmt: skip
    row = {
        "epoch": epoch,
        "train_loss": run.total / run.seen,
        "valid_elbo": valid,
        "seconds": time.perf_counter() - started,
        "train_seconds": train_seconds,
        "beta": run.beta,
        "lr": config.lr * lr_factor(config, epoch - 1),
    }
    if setup.classify is not None:
        row["classify_loss"] = run.classify_total / max(run.labelled_seen, 1)
    if info.label_site is not None and labels.valid_classes is not None and num_valid:
        classes = labels.valid_classes[ranks.rank :: ranks.size]
        right = guide_accuracy(pair, setup.valid_x, classes, info.label_site,
                               config.batch_size) * classes.shape[0]  # fmt: skip
        row["valid_accuracy"] = ranks.sum([right])[0] / num_valid
    return row


def _save_epoch(setup: TrainingSetup, run: _Progress, row: dict[str, float], config: TrainConfig,
                run_dir: Path) -> _Progress:  # fmt: skip
    """Add ``row`` to the history and save the finished epoch: ``best.pt`` too where its
    validation ELBO beats the history's (always without a validation split), then
    ``checkpoint.pt`` and ``metrics.csv``. Returns where the run stands now."""
    epoch, valid, ranks = row["epoch"], row["valid_elbo"], world()
    best = max((_best_key(r["valid_elbo"]) for r in run.history), default=-math.inf)
    improved = valid > best or math.isnan(valid)
    run.history.append(row)
    run = _Progress(history=run.history, step=run.step, epoch=epoch, beta=run.beta)
    state = checkpoint_state(setup.pair, setup.optimizer, epoch, run.history, config,
                             setup.device, run.step, scheduler=setup.scheduler)  # fmt: skip
    _add_rank_states(state, ranks, setup.device, None)
    # best.pt first: a kill between the two writes leaves checkpoint.pt one epoch behind,
    # and the resumed run redoes that epoch and writes best.pt again, bit for bit
    if ranks.is_main:
        save_checkpoint(state, *([run_dir / BEST] if improved else []), run_dir / CHECKPOINT)
        write_metrics(run_dir, run.history)
    return run


def _log_epoch(row: dict[str, float], config: TrainConfig) -> None:
    """The epoch's line on stderr."""
    valid = row["valid_elbo"]
    _log(
        f"epoch {row['epoch']}/{config.epochs}  train loss {row['train_loss']:.3f}  "
        + (f"valid ELBO {valid:.3f}" if not math.isnan(valid) else "no validation split")
        + f"  {row['seconds']:.1f}s"
        + (f"  beta {row['beta']:.3g}" if config.beta != 1 or config.kl_warmup else "")
        + (f"  valid accuracy {row['valid_accuracy']:.4f}" if "valid_accuracy" in row else "")
    )
