"""What an analysis runs on: a pair and the points to look at, from what a user holds.

Every analysis takes a *source*: a pair (any object with ``model`` and ``guide``), a model
with ``guide=``, a ``(model, guide)`` tuple, a reopened :class:`~pyro_vae.runs.reopen.Run`, or the
path of a run directory. :func:`subject` turns it into a :class:`Subject`: the pair, its
:class:`~pyro_vae.pairs.PairInfo`, the data ``x`` and its labels, and where they came from
(the JSON keys ``split``, ``checkpoint``, ``epoch``, ``dataset``, ``device``). A pair held
in memory is used as it is: nothing is rebuilt, Pyro's param store is not cleared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from pyro_vae.infer.distributed import World, current_world, world
from pyro_vae.pairs import FunctionPair, PairError, PairInfo, check_pair
from pyro_vae.runs.checkpoints import BEST
from pyro_vae.runs.config import ConfigError
from pyro_vae.runs.reopen import Run, load_run, restored_split

#: How many points of ``x`` the pair's check traces.
CHECK_POINTS = 16


@dataclass
class Subject:
    """A pair and the points an analysis looks at.

    ``labels`` are as the pair's programs receive them (None where it takes none),
    ``classes`` the class indices (None without labels); ``run`` is the reopened run, if the
    source was one; ``context`` the JSON keys that say where pair and points came from."""

    pair: Any
    info: PairInfo
    x: torch.Tensor
    labels: torch.Tensor | None = None
    classes: torch.Tensor | None = None
    run: Run | None = None
    context: dict[str, Any] | None = None

    @property
    def y(self) -> torch.Tensor | None:
        """The labels the pair's programs get: only a pair that needs them gets them."""
        return self.labels if self.info.needs_labels else None

    def first(self, count: int | None) -> Subject:
        """The same subject on the first ``count`` points (all of them for None)."""
        if count is None:
            return self

        def head(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[:count]

        return Subject(self.pair, self.info, self.x[:count], head(self.labels),
                       head(self.classes), self.run, self.context)  # fmt: skip


def is_run_source(source: Any) -> bool:
    """Whether ``source`` names a run (a :class:`Run` or a run directory path)."""
    return isinstance(source, Run | str | os.PathLike)


def world_for(source: Any, device: str | None) -> tuple[World, str | None]:
    """The ranks an analysis of ``source`` runs on, and the device: a run reopened under
    torchrun is shared among the ranks, each on its own device (:mod:`pyro_vae.infer.distributed`);
    a pair held in memory runs in this process's world as it is."""
    if not is_run_source(source):
        return world(), device
    ranks, rank_device = current_world(device or "auto")
    return ranks, (rank_device if ranks.distributed else device)


def as_pair(source: Any, guide: Any = None) -> Any:
    """The pair a user holds: ``source`` itself when it has callable ``model`` and ``guide``;
    ``FunctionPair(source, guide)`` for a model function with ``guide=``, or for a
    ``(model, guide)`` tuple. Anything else is a :class:`PairError` saying what to pass."""
    if guide is not None:
        if not callable(source) or not callable(guide):
            raise PairError(
                "give a model function and guide=a guide function (both callable), "
                f"got {type(source).__name__} and {type(guide).__name__}"
            )
        return FunctionPair(source, guide)
    if isinstance(source, tuple) and len(source) == 2 and all(map(callable, source)):
        return FunctionPair(*source)
    if callable(getattr(source, "model", None)) and callable(getattr(source, "guide", None)):
        return source
    raise PairError(
        f"cannot analyse a {type(source).__name__}: give a pair (an object with model and "
        "guide methods, such as Pyro's tutorial VAE), a model with guide=GUIDE, a (model, "
        "guide) tuple, a Run from pyro_vae.load_run, or a run directory's path"
    )


def _labels_for(pair_info: PairInfo, labels: Any, x: torch.Tensor):
    """``labels`` given with in-memory data, as the pair receives them and as classes."""
    if labels is None:
        if pair_info.needs_labels:
            raise PairError(
                "the pair needs labels on every call (model(x, y) with no default for y): "
                "pass labels=, one per point of x"
            )
        return None, None
    labels = torch.as_tensor(labels, device=x.device)
    if labels.shape[0] != x.shape[0]:
        raise ConfigError(
            f"labels: {labels.shape[0]} labels for {x.shape[0]} points of x; give one per point"
        )
    classes = labels.argmax(-1) if labels.dim() == 2 else labels.long()
    return (labels if pair_info.takes_labels else None), classes


def subject(
    source: Any,
    x: torch.Tensor | None = None,
    *,
    labels: Any = None,
    guide: Any = None,
    split: str = "test",
    checkpoint: str = BEST,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
) -> Subject:
    """The pair and points an analysis runs on (see the module docstring).

    For a run (a :class:`Run` or a path; ``checkpoint``, ``device``, ``data_dir`` and
    ``pair`` say how to reopen a path, as for :func:`~pyro_vae.runs.reopen.load_run`), ``x``
    defaults to the run's split ``split`` with its labels. For a pair, ``x`` is required;
    ``labels`` are class indices (N,) or one-hot rows (N, C), passed to a pair whose programs
    take labels as given."""
    if is_run_source(source):
        run = source
        if not isinstance(run, Run):
            run = load_run(source, checkpoint=checkpoint, device=device, data_dir=data_dir,
                           pair=pair)  # fmt: skip
        if x is None:
            restored = restored_split(run, split)
            context = _run_context(run, split)
            return Subject(run.pair, run.info, restored.x, restored.labels, restored.classes,
                           run, context)  # fmt: skip
        given, classes = _labels_for(run.info, labels, x)
        context = {**_run_context(run, None), "device": str(x.device)}
        return Subject(run.pair, run.info, x, given, classes, run, context)
    if pair is not None:
        raise ConfigError("pair= reopens a run directory with that pair; here, pass the pair first")
    held = as_pair(source, guide)
    if x is None:
        raise ConfigError(
            "pass the data to analyse: x, a tensor of shape (num_points, ...) as the pair's "
            "programs take it"
        )
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.shape[0] < 1:
        raise ConfigError("x holds no points; pass at least one")
    probe = x[:CHECK_POINTS] if x.shape[0] >= 2 else torch.cat([x, x])
    probe_labels = None
    if labels is not None:
        probe_labels = torch.as_tensor(labels, device=x.device)
        probe_labels = (
            probe_labels[: probe.shape[0]]
            if x.shape[0] >= 2
            else probe_labels.repeat(2, *([1] * (probe_labels.dim() - 1)))
        )
    info = check_pair(held, probe, probe_labels)
    given, classes = _labels_for(info, labels, x)
    context = {"split": None, "checkpoint": None, "epoch": None, "dataset": None,
               "device": str(x.device)}  # fmt: skip
    return Subject(held, info, x, given, classes, None, context)


def amortized(held: Subject, analysis: str) -> Subject:
    """``held``, when its guide is amortized; else a :class:`PairError` saying why
    ``analysis`` cannot run on it and what can.

    A guide whose ``pyro.param``s hold a row per training point
    (:attr:`~pyro_vae.pairs.PairInfo.local_params`) has no q(z|x) for other points, and its
    rows for the training points are not indexed by the points an analysis is given; only
    :func:`~pyro_vae.analysis.evaluate.evaluate` fits fresh per-point parameters first."""
    names = held.info.local_params
    if names:
        raise PairError(
            f"{analysis}: the pair's guide is not amortized: its pyro.param(s) "
            f"{', '.join(repr(n) for n in names)} hold one row per training point, so it has "
            "no q(z|x) for the points analysed here. `pyro-vae evaluate` (pyro_vae.evaluate) "
            "fits per-point parameters for the evaluated points first and estimates log p(x); "
            f"{analysis} does not fit them. Use evaluate, or an amortized guide (an encoder "
            "network) for this analysis"
        )
    return held


def _run_context(run: Run, split: str | None) -> dict[str, Any]:
    return {
        "split": split,
        "checkpoint": run.checkpoint,
        "epoch": run.epoch,
        "dataset": run.config.dataset,
        "device": str(run.device),
    }


__all__ = ["Subject", "amortized", "as_pair", "is_run_source", "subject", "world_for"]
