"""One step of the loop and how it stops: the step's batch, the SVI step with its checks for
divergence, and a stop (a signal here or at another rank) turned into the loop's exit.

A diverged run raises :class:`~pyro_vae.training.outputs.TrainingError` naming where it
diverged and the last checkpoint, which is never overwritten by non-finite parameters.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.infer.distributed import DistributedError, World, world
from pyro_vae.pairs import pair_modules
from pyro_vae.runs.checkpoints import CHECKPOINT
from pyro_vae.runs.config import TrainConfig
from pyro_vae.runs.lock import StopSignals
from pyro_vae.training.outputs import TrainingError


def _batch(train_x, labels, plan, run, epoch: int, step: int, config: TrainConfig,
           batch_size: int):  # fmt: skip
    """Step ``step`` of epoch ``epoch``: a labelled batch ``(x, y)`` or an unlabelled one
    ``(x, None)`` (see :class:`~pyro_vae.pairs.labels.EpochPlan`) of ``batch_size`` points (this
    rank's share of ``--batch-size``), binarized afresh if dynamic, and its ``rows`` of
    ``train_x`` (a guide's per-point params are selected by them)."""
    if plan.is_labelled(step):
        index = (epoch - 1) * plan.labelled_batches + plan.labelled_before(step)
        rows = plan.labelled_indices(index)
        x, y = train_x[rows], labels.train[rows]
    else:
        start = (step - plan.labelled_before(step)) * batch_size
        rows = run.order[start : start + batch_size]
        if plan.labelled.numel():
            rows = plan.unlabelled[rows]
        x, y = train_x[rows], None
    if config.binarize == "dynamic":
        x = torch.bernoulli(x)
    return x, y, rows


def _svi_step(svi, args: tuple, pair: Any, where: str, saved: str, run_dir, config,
              stop: StopSignals | None = None) -> float:  # fmt: skip
    """One SVI step; a non-finite loss, or a failure from non-finite values (Pyro's
    validation of a distribution's parameters, NaN parameters), becomes a TrainingError
    that says what was kept; any other failure one naming the step and the batch.

    In a distributed run the loss returned is the sum over the ranks (with the stop flags:
    one all-reduce), so a NaN or a stop at any rank is seen by every rank at this step."""
    x = args[0]
    try:
        loss = svi.step(*args)
    except DistributedError:  # a peer died mid-step: its own message, not a step failure
        raise
    except Exception as error:
        message = str(error)
        if not _parameters_finite(pair) or _invalid_values(error):
            what = "non-finite parameters" if not _parameters_finite(pair) else "invalid values"
            first = message.splitlines()[0].rstrip(":")
            cause = f"the run diverged: {what} ({type(error).__name__}: {first})"
            raise _diverged(cause, where, saved, run_dir, config) from error
        hint = ""
        if x.shape[0] == 1:
            hint = (
                " A batch of one point: BatchNorm cannot train on it; pass --drop-last, or a "
                "--batch-size that divides the training set"
            )
        raise TrainingError(
            f"the SVI step failed at {where} on a batch of shape {tuple(x.shape)}: "
            f"{type(error).__name__}: {message}.{hint}"
        ) from error
    ranks = world()
    if ranks.distributed:
        requested = stop is not None and stop.requested
        loss, stops = ranks.sum([loss, 1.0 if requested else 0.0])
        _note_stops(stop, stops)
    if not math.isfinite(loss):
        at = " (summed over the ranks)" if ranks.distributed else ""
        raise _diverged(f"loss is {loss}{at}", where, saved, run_dir, config)
    return loss


def _diverged(cause: str, where: str, saved: str, run_dir: Path, config) -> TrainingError:
    if saved:
        kept = f"{saved} in {str(run_dir)!r} is kept (its parameters are finite)"
        advice = (
            "Resume it with a smaller learning rate (pyro-vae train --out "
            f"{run_dir} --resume --lr {config.lr / 10:g})"
        )
    else:
        kept = "no checkpoint was written yet"
        advice = f"Start again with a smaller --lr (now {config.lr:g})"
    return TrainingError(
        f"{cause} at {where}: training stopped; {kept}. {advice}, or check the data and the pair."
    )


def _parameters_finite(pair: Any) -> bool:
    tensors = [value for _, value in pyro.get_param_store().named_parameters()]
    tensors += [p for module in pair_modules(pair) for p in module.parameters()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _check_finite(pair: Any, where: str, saved: str, run_dir: Path, config) -> None:
    """Never save non-finite parameters over a good checkpoint."""
    if not _parameters_finite(pair):
        raise _diverged("a parameter is not finite", where, saved, run_dir, config)


def _invalid_values(error: Exception) -> bool:
    """Pyro's (torch.distributions') argument validation refusing a parameter's values."""
    message = str(error)
    return (
        isinstance(error, ValueError)
        and "Expected parameter" in message
        and "invalid values" in message
    )


def _agree_on_stop(stop: StopSignals, ranks: World) -> None:
    """A signal at one rank stops every rank (at the same step or epoch end)."""
    if ranks.distributed:
        _note_stops(stop, ranks.sum([1.0 if stop.requested else 0.0])[0])


def _note_stops(stop: StopSignals | None, stops: float) -> None:
    """``stops``: the ranks' stop flags summed; one set anywhere stops this rank too."""
    if stops and stop is not None and not stop.requested:
        stop.requested = "a stop at another rank"


def _stopped(stop: StopSignals, where: str, run_dir: Path) -> KeyboardInterrupt:
    """The loop's exit on a stop, once the state after ``where`` is saved."""
    return KeyboardInterrupt(
        f"{stop.requested}: stopped after {where}, which is saved in "
        f"{str(run_dir / CHECKPOINT)!r}; resume with: pyro-vae train --out {run_dir} --resume"
    )
