"""Optimizers and learning-rate schedules by name: ``--optimizer`` and ``--lr-schedule``.

An optimizer is a ``torch.optim`` class (or Pyro's ``ClippedAdam``) run by Pyro's
``PyroOptim``, which keeps one instance per parameter tensor: parameters that Pyro programs
create at their first call join when they appear, and the state of each is a plain
``state_dict`` in the checkpoint. ``--clip-norm`` clips each parameter tensor's gradient norm
(``PyroOptim``'s ``clip_args``; ``clipped-adam`` clips inside its own step, the same way).

A schedule is a pure function of the epoch: the learning rate of epoch e (counted from 0)
is ``lr * factor(e)`` for every parameter group (the neural baselines' ``--baseline-lr``
scaled alike). The epoch is in every checkpoint, so a resumed run, mid-epoch or not,
continues the schedule exactly; the rate of each epoch is the ``lr`` column of the metrics.

- ``none``: factor 1.
- ``step``: ``gamma ** floor(e / step_size)`` (``--lr-gamma``, ``--lr-step-size``).
- ``exponential``: ``gamma ** e``.
- ``cosine``: from 1 down to ``lr_min / lr`` over the run's epochs, half a cosine period.
- ``iwae``: Burda et al. (2016): stage i = 0..7 lasts 3^i epochs at ``10 ** (-i / 7)``
  (3280 epochs in all; with ``--lr 1e-3``, 1e-3 down to 1e-4). Past the last stage the
  rate stays at the last stage's.

References:
    Kingma & Ba (2015), Adam: A Method for Stochastic Optimization.
    Loshchilov & Hutter (2019), Decoupled Weight Decay Regularization (AdamW).
    Loshchilov & Hutter (2017), SGDR: Stochastic Gradient Descent with Warm Restarts.
    Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, section 5.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.optim
import torch
from pyro.optim.clipped_adam import ClippedAdam


class OptimizerError(ValueError):
    """An optimizer or schedule name or setting that cannot work; the message names the flag."""


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer: its class and which of the shared settings it takes."""

    constructor: type[torch.optim.Optimizer]
    description: str
    adam_like: bool = True  # takes betas and eps
    momentum: bool = False  # takes --momentum
    clips_itself: bool = False  # takes clip_norm in its own step


#: The optimizers by name. A new optimizer is one entry here; tests iterate over this table.
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adam": OptimizerSpec(torch.optim.Adam, "torch.optim.Adam (default)"),
    "adamw": OptimizerSpec(torch.optim.AdamW, "torch.optim.AdamW: decoupled weight decay"),
    "sgd": OptimizerSpec(
        torch.optim.SGD, "torch.optim.SGD, with --momentum", adam_like=False, momentum=True
    ),
    "clipped-adam": OptimizerSpec(
        ClippedAdam, "Pyro's ClippedAdam (Pyro's examples): Adam with clipping", clips_itself=True
    ),
}

#: Burda et al. (2016): 3^i epochs at 10^(-i/7) times the initial rate, i = 0..7.
IWAE_STAGES = 8
IWAE_EPOCHS = sum(3**stage for stage in range(IWAE_STAGES))  # 3280


def _iwae_factor(epoch: int) -> float:
    end = 0
    for stage in range(IWAE_STAGES):
        end += 3**stage
        if epoch < end:
            return 10 ** (-stage / 7)
    return 10 ** (-(IWAE_STAGES - 1) / 7)


def _cosine_factor(epoch: int, epochs: int, floor: float) -> float:
    if epochs <= 1:
        return 1.0
    return floor + (1 - floor) * (1 + math.cos(math.pi * epoch / (epochs - 1))) / 2


#: ``--lr-schedule`` names and descriptions (the factors: :func:`lr_factor`).
SCHEDULES: dict[str, str] = {
    "none": "constant --lr",
    "step": "x --lr-gamma every --lr-step-size epochs",
    "exponential": "x --lr-gamma every epoch",
    "cosine": "half a cosine from --lr to --lr-min over the epochs",
    "iwae": "Burda et al. (2016): 3^i epochs at --lr x 10^(-i/7), i = 0..7 (3280 epochs)",
}


def lr_factor(config: Any, epoch: int) -> float:
    """The factor on ``--lr`` in epoch ``epoch`` (0-based) under ``config.lr_schedule``."""
    schedule = config.lr_schedule
    if schedule == "none":
        return 1.0
    if schedule == "step":
        return config.lr_gamma ** (epoch // config.lr_step_size)
    if schedule == "exponential":
        return config.lr_gamma**epoch
    if schedule == "cosine":
        return _cosine_factor(epoch, config.epochs, config.lr_min / config.lr)
    if schedule == "iwae":
        return _iwae_factor(epoch)
    raise OptimizerError(
        f"--lr-schedule {schedule!r} is unknown; choose from {', '.join(SCHEDULES)}"
    )


def check_optimizer_settings(config: Any) -> None:
    """Raise :class:`OptimizerError` naming the flag for settings that cannot work."""
    if config.optimizer not in OPTIMIZERS:
        raise OptimizerError(
            f"--optimizer {config.optimizer!r} is unknown; choose from {', '.join(OPTIMIZERS)}"
        )
    if config.lr_schedule not in SCHEDULES:
        raise OptimizerError(
            f"--lr-schedule {config.lr_schedule!r} is unknown; choose from {', '.join(SCHEDULES)}"
        )
    spec = OPTIMIZERS[config.optimizer]
    betas = config.adam_betas
    if len(betas) != 2 or not all(0 <= beta < 1 for beta in betas):
        raise OptimizerError(f"--adam-betas {betas!r}: two numbers in [0, 1), e.g. 0.9 0.999")
    checks = [
        (config.adam_eps > 0, "--adam-eps", config.adam_eps, "a number > 0"),
        (config.weight_decay >= 0, "--weight-decay", config.weight_decay, "a number >= 0"),
        (config.momentum >= 0, "--momentum", config.momentum, "a number >= 0"),
        (config.clip_norm is None or config.clip_norm > 0, "--clip-norm", config.clip_norm,
         "a number > 0"),
        (0 < config.lr_gamma <= 1, "--lr-gamma", config.lr_gamma, "in (0, 1]"),
        (config.lr_step_size >= 1, "--lr-step-size", config.lr_step_size, "at least 1"),
        (0 <= config.lr_min <= config.lr, "--lr-min", config.lr_min, "in [0, --lr]"),
    ]  # fmt: skip
    for ok, flag, value, wanted in checks:
        if not ok:
            raise OptimizerError(f"{flag} {value!r}: must be {wanted}")
    if config.momentum and not spec.momentum:
        raise OptimizerError(
            f"--momentum is for --optimizer sgd; --optimizer {config.optimizer} does not take it"
        )


def optimizer_kwargs(config: Any, lr: float) -> dict[str, Any]:
    """The constructor arguments of ``config.optimizer`` at learning rate ``lr``."""
    spec = OPTIMIZERS[config.optimizer]
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": config.weight_decay}
    if spec.adam_like:
        kwargs["betas"] = tuple(config.adam_betas)
        kwargs["eps"] = config.adam_eps
    if spec.momentum:
        kwargs["momentum"] = config.momentum
    if spec.clips_itself and config.clip_norm is not None:
        kwargs["clip_norm"] = config.clip_norm
    return kwargs


def make_optimizer(config: Any, lr_for: Callable[[str], float]) -> pyro.optim.PyroOptim:
    """The run's ``PyroOptim``: ``config.optimizer`` per parameter tensor, at the learning
    rate ``lr_for(param_name)`` when the tensor first appears (:func:`set_learning_rates`
    moves the rates of those already there)."""
    spec = OPTIMIZERS[config.optimizer]
    clip_args = None
    if config.clip_norm is not None and not spec.clips_itself:
        clip_args = {"clip_norm": config.clip_norm}
    return pyro.optim.PyroOptim(
        spec.constructor, lambda name: optimizer_kwargs(config, lr_for(name)), clip_args
    )


def set_learning_rates(optimizer: pyro.optim.PyroOptim, lr_for: Callable[[str], float]) -> None:
    """Set every per-parameter optimizer's learning rate to ``lr_for(param_name)``."""
    store = pyro.get_param_store()
    for param, optim in optimizer.optim_objs.items():
        lr = lr_for(store.param_name(param))
        for group in optim.param_groups:
            group["lr"] = lr


def with_learning_rates(optimizer_state: dict, lr_for: Callable[[str], float]) -> dict:
    """Saved per-parameter optimizer states (``PyroOptim.get_state``) with each group's
    learning rate set to ``lr_for(param_name)``: loaded lazily, at a parameter's next step,
    they would otherwise bring back the rate they were saved with."""
    updated = {}
    for name, saved in optimizer_state.items():
        groups = [{**group, "lr": lr_for(name)} for group in saved["param_groups"]]
        updated[name] = {**saved, "param_groups": groups}
    return updated
