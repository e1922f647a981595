"""Optimizers and learning-rate schedules by name: ``--optimizer`` and ``--lr-schedule``.

An optimizer is a ``torch.optim`` class (or Pyro's ``ClippedAdam``): one instance over all
the parameters of a run (:class:`RunOptimizer`, behind Pyro's ``PyroOptim`` interface, so
``SVI`` drives it), with PyTorch's fused kernels where the class has them. Parameters that
Pyro programs create at their first call join when they appear. ``--clip-norm`` clips each
parameter tensor's gradient norm (as ``PyroOptim``'s ``clip_args`` do; ``clipped-adam``
clips inside its own step, the same way). The checkpoint holds the optimizer's
``state_dict`` (with the param-store name of each tensor) and the schedule's.

A schedule is a pure function of the epoch: the learning rate of epoch e (counted from 0)
is ``lr * factor(e)`` for every parameter group (the neural baselines' ``--baseline-lr``
scaled alike). The epoch is in every checkpoint, so a resumed run, mid-epoch or not,
continues the schedule exactly; the rate of each epoch is the ``lr`` column of the metrics.

- ``none``: factor 1.
- ``step``: ``gamma ** floor(e / step_size)`` (``--lr-gamma``, ``--lr-step-size``).
- ``exponential``: ``gamma ** e``.
- ``cosine``: ``f + (1 - f) (1 + cos(pi e / E)) / 2`` with ``f = lr_min / lr`` over the
  run's ``E`` epochs, half a cosine period: PyTorch's ``CosineAnnealingLR`` with
  ``T_max = E`` stepped once per epoch. The last epoch (``e = E - 1``) still trains above
  ``lr_min``; ``lr_min`` is where the schedule ends, after it.
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
    """Half a cosine from 1 at epoch 0 to ``floor`` at epoch ``epochs``, the end of the run
    (``CosineAnnealingLR``'s rate with ``T_max = epochs``): every epoch trains above it."""
    return floor + (1 - floor) * (1 + math.cos(math.pi * min(epoch, epochs) / epochs)) / 2


#: ``--lr-schedule`` names and descriptions (the factors: :func:`lr_factor`).
SCHEDULES: dict[str, str] = {
    "none": "constant --lr",
    "step": "x --lr-gamma every --lr-step-size epochs",
    "exponential": "x --lr-gamma every epoch",
    "cosine": "half a cosine from --lr down to --lr-min, reached when the last epoch ends",
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


#: The schedules that read each schedule setting (see :func:`lr_factor`).
_SCHEDULE_SETTINGS = {
    "lr_gamma": ("step", "exponential"),
    "lr_step_size": ("step",),
    "lr_min": ("cosine",),
}


def unused_optimizer_settings(config: Any) -> dict[str, tuple[str, str]]:
    """The optimizer and schedule settings of ``config`` that the others leave without
    effect, as ``{field: (why, what would use it)}``: a schedule setting the schedule does not
    read (``--lr-gamma`` under ``--lr-schedule none``), Adam's ``--adam-betas``/``--adam-eps``
    under ``--optimizer sgd``. The caller decides which ones differ from their defaults."""
    unused = {}
    for name, schedules in _SCHEDULE_SETTINGS.items():
        if config.lr_schedule not in schedules:
            wanted = " or ".join(schedules)
            unused[name] = (
                f"it is for --lr-schedule {wanted}; --lr-schedule {config.lr_schedule} does "
                "not read it",
                f"pass --lr-schedule {schedules[0]}",
            )
    if config.optimizer in OPTIMIZERS and not OPTIMIZERS[config.optimizer].adam_like:
        adam = ", ".join(name for name, spec in OPTIMIZERS.items() if spec.adam_like)
        for name in ("adam_betas", "adam_eps"):
            unused[name] = (
                f"it is for the Adam optimizers ({adam}); --optimizer {config.optimizer} does "
                "not take it",
                "pass --optimizer adam",
            )
    return unused


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


def make_optimizer(config: Any, base_lr_for: Callable[[str], float]) -> RunOptimizer:
    """The run's optimizer: one ``config.optimizer`` over every parameter of the run, a
    parameter joining the group of its base rate ``base_lr_for(param_name)`` (``--lr``, or
    ``--baseline-lr`` for the neural baselines) when its first gradient appears."""
    return RunOptimizer(config, base_lr_for)


class RunOptimizer(pyro.optim.PyroOptim):
    """One ``torch.optim`` optimizer over all the parameters of a run, behind Pyro's
    ``PyroOptim`` interface (``SVI`` calls it with the parameters of each step).

    Pyro's own ``PyroOptim`` keeps one torch optimizer per parameter tensor, which costs a
    Python call per tensor and step and rules out the multi-tensor kernels. Here the tensors
    share one optimizer, which uses PyTorch's fused kernel where the class has one (``Adam``,
    ``AdamW``, ``SGD``: ``fused=True``). The arithmetic per tensor is the optimizer's own, so
    the grouping does not change results. Each step moves only the parameters it is given
    (the classifier's SVI steps a subset): the gradients of the others are held back for
    the span of the step.

    - Parameters join at their first gradient, in the order of their param-store names (a
      tensor that never receives one, such as Pyro's decaying-average baseline, never
      joins). Tensors of one base rate form one parameter group, whose ``initial_lr`` is
      that rate and whose ``lr`` is ``initial_lr * factor`` (:meth:`set_lr_factor`, called by
      :class:`EpochScheduler`).
    - ``--clip-norm`` clips each tensor's gradient norm before the step, as ``PyroOptim``'s
      ``clip_args`` do (``clipped-adam`` clips inside its own step).
    - :meth:`get_state` is ``{"optimizer", "names", "state_dict"}``: the torch optimizer's
      ``state_dict`` and the param-store names of its parameters, group by group.
      :meth:`set_state` takes that (or ``PyroOptim``'s per-parameter dict of an older
      checkpoint) and binds it by name at the next step.
    """

    def __init__(self, config: Any, base_lr_for: Callable[[str], float]) -> None:
        self.spec = OPTIMIZERS[config.optimizer]
        self.config = config
        self.base_lr_for = base_lr_for
        super().__init__(self.spec.constructor, lambda name: optimizer_kwargs(config, 0.0))
        self.clip_norm = None if self.spec.clips_itself else config.clip_norm
        self.factor = 1.0
        self.optimizer: torch.optim.Optimizer | None = None
        self.names: list[list[str]] = []  # param-store names, group by group
        self.fused = False
        self._joined: set[int] = set()  # ids of the tensors the optimizer holds
        self._pending: dict | None = None
        #: Called with the stepped tensors (in the optimizer's order, the same at every rank)
        #: before clipping and stepping: a distributed run sums their gradients over ranks.
        self.reduce_gradients: Callable[[list[torch.Tensor]], None] | None = None

    @property
    def parameters(self) -> list[torch.Tensor]:
        if self.optimizer is None:
            return []
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def __call__(self, params: Any, *args: Any, **kwargs: Any) -> None:
        stepped = [p for p in params if p.grad is not None]
        if self._pending is not None:
            self._bind_pending()
        new = [p for p in stepped if id(p) not in self._joined]
        if new:
            self._join(new)
        if self.reduce_gradients is not None:
            given = {id(p) for p in stepped}
            self.reduce_gradients([p for p in self.parameters if id(p) in given])
        if self.clip_norm is not None:
            for param in stepped:
                torch.nn.utils.clip_grad_norm_(param, self.clip_norm)
        assert self.optimizer is not None or not stepped
        if self.optimizer is None:
            return
        if len(stepped) == len(self._joined):
            self.optimizer.step(*args, **kwargs)
            return
        given = {id(p) for p in stepped}
        held = [(p, p.grad) for p in self.parameters if id(p) not in given]
        for param, _ in held:
            param.grad = None
        try:
            self.optimizer.step(*args, **kwargs)
        finally:
            for param, grad in held:
                param.grad = grad

    def _group_kwargs(self, base_lr: float) -> dict[str, Any]:
        kwargs = optimizer_kwargs(self.config, base_lr * self.factor)
        kwargs["initial_lr"] = base_lr
        return kwargs

    def _join(self, tensors: list[torch.Tensor]) -> None:
        store = pyro.get_param_store()
        named = sorted((store.param_name(p), p) for p in tensors)
        by_rate: dict[float, list[tuple[str, torch.Tensor]]] = {}
        for name, tensor in named:
            by_rate.setdefault(float(self.base_lr_for(name)), []).append((name, tensor))
        for rate, members in by_rate.items():
            groups = self.optimizer.param_groups if self.optimizer is not None else []
            index = next((i for i, g in enumerate(groups) if g["initial_lr"] == rate), None)
            if index is None:
                self._add_group([t for _, t in members], self._group_kwargs(rate))
                self.names.append([name for name, _ in members])
            else:
                self.optimizer.param_groups[index]["params"].extend(t for _, t in members)
                self.names[index].extend(name for name, _ in members)
            self._joined.update(id(t) for _, t in members)

    def _add_group(self, tensors: list[torch.Tensor], kwargs: dict[str, Any]) -> None:
        group = {"params": tensors, **kwargs}
        if self.optimizer is not None:
            self.optimizer.add_param_group(group)
            return
        fused_ok = self.spec.constructor in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
        if fused_ok and all(t.is_floating_point() and t.device.type in ("cpu", "cuda")
                            for t in tensors):  # fmt: skip
            try:
                self.optimizer = self.spec.constructor([group], fused=True)
                self.fused = True
                return
            except (RuntimeError, ValueError):
                pass
        self.optimizer = self.spec.constructor([group])

    def set_lr_factor(self, factor: float) -> None:
        """Every group's ``lr`` to its ``initial_lr`` times ``factor`` (and the groups that
        join later)."""
        self.factor = float(factor)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * self.factor

    def get_state(self) -> dict[str, Any]:
        if self._pending is not None:  # saved before the first step after a resume
            return self._pending
        if self.optimizer is None:
            return {"optimizer": self.config.optimizer, "names": [], "state_dict": None}
        return {
            "optimizer": self.config.optimizer,
            "names": [list(names) for names in self.names],
            "state_dict": self.optimizer.state_dict(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if "state_dict" not in state:  # PyroOptim's {param name: state_dict} of old runs
            state = {**_from_per_parameter(state), "optimizer": self.config.optimizer}
        if state["optimizer"] != self.config.optimizer:
            raise OptimizerError(
                f"the checkpoint's optimizer state is --optimizer {state['optimizer']}, "
                f"the run's is --optimizer {self.config.optimizer}"
            )
        self.optimizer, self.names, self._joined = None, [], set()
        self._pending = state if state["state_dict"] is not None else None

    def _bind_pending(self) -> None:
        """The saved state, bound by name to the tensors the param store now holds (a
        saved group whose tensors now have different base rates is split by rate)."""
        state, self._pending = self._pending, None
        store = pyro.get_param_store()
        saved = state["state_dict"]
        groups, kept_state, index = [], {}, 0
        for names, group in zip(state["names"], saved["param_groups"], strict=True):
            by_rate: dict[float, list[tuple[str, int]]] = {}
            for name, old in zip(names, group["params"], strict=True):
                if name in store:
                    by_rate.setdefault(float(self.base_lr_for(name)), []).append((name, old))
            for rate, members in by_rate.items():
                tensors = [store._params[name] for name, _ in members]
                self._add_group(tensors, self._group_kwargs(rate))
                self.names.append([name for name, _ in members])
                self._joined.update(id(t) for t in tensors)
                renumbered = []
                for _, old in members:
                    if old in saved["state"]:
                        kept_state[index] = saved["state"][old]
                    renumbered.append(index)
                    index += 1
                groups.append({**group, "params": renumbered, "initial_lr": rate,
                               "lr": rate * self.factor})  # fmt: skip
        if self.optimizer is None:
            return
        # how the step runs is this optimizer's choice, not the checkpoint's
        for group, current in zip(groups, self.optimizer.param_groups, strict=True):
            for key in ("fused", "foreach", "capturable", "differentiable"):
                if key in current:
                    group[key] = current[key]
                else:
                    group.pop(key, None)
        self.optimizer.load_state_dict({"state": kept_state, "param_groups": groups})

    def forget(self, live: set[int]) -> None:
        """Drop the tensors whose ids are not in ``live`` (replaced in the param store)."""
        if self.optimizer is None:
            return
        for group, names in zip(self.optimizer.param_groups, self.names, strict=True):
            kept = [(p, n) for p, n in zip(group["params"], names, strict=True) if id(p) in live]
            for param in group["params"]:
                if id(param) not in live:
                    self.optimizer.state.pop(param, None)
                    self._joined.discard(id(param))
            group["params"] = [p for p, _ in kept]
            names[:] = [n for _, n in kept]


def _from_per_parameter(state: dict[str, Any]) -> dict[str, Any]:
    """``PyroOptim.get_state()`` (one torch ``state_dict`` per parameter name) as one
    optimizer's state: one group per rate, in the order of the names."""
    names, state_by_index, groups = [], {}, {}
    for name in sorted(state):
        per_parameter = state[name]
        group = dict(per_parameter["param_groups"][0])
        key = group["lr"]
        if key not in groups:
            groups[key] = {**group, "params": []}
            names.append([])
        position = list(groups).index(key)
        index = sum(len(g) for g in names)
        names[position].append(name)
        if 0 in per_parameter["state"]:
            state_by_index[index] = per_parameter["state"][0]
        groups[key]["params"].append(index)
    return {
        "optimizer": None,
        "names": names,
        "state_dict": {"state": state_by_index, "param_groups": list(groups.values())},
    }


class EpochScheduler:
    """The learning-rate schedule of a run, with PyTorch's scheduler interface: ``step(epoch)``
    sets every group's rate to its ``initial_lr`` times :func:`lr_factor` of the epoch
    (1-based), ``get_last_lr()``, and ``state_dict()`` / ``load_state_dict()``, which the
    checkpoint holds. The rate is a pure function of the epoch, so a resumed run continues
    the schedule exactly, and a new ``--lr`` on resume takes effect from the next epoch."""

    def __init__(self, optimizer: RunOptimizer, config: Any) -> None:
        self.optimizer = optimizer
        self.config = config
        self.last_epoch = 0

    def step(self, epoch: int) -> None:
        self.last_epoch = epoch
        self.optimizer.set_lr_factor(lr_factor(self.config, epoch - 1))

    def get_last_lr(self) -> list[float]:
        """The rate of each parameter group (``--lr`` times the factor before any joined)."""
        if self.optimizer.optimizer is None:
            return [self.config.lr * self.optimizer.factor]
        return [group["lr"] for group in self.optimizer.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.config.lr_schedule, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step(int(state["last_epoch"]))
