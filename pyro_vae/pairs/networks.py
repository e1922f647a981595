"""A pair's networks: its `nn.Module`s (the pair itself, its attributes, or what two plain
functions refer to), moved to a device and switched between train and eval modes."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


class FunctionPair:
    """Two plain functions ``model(x)`` and ``guide(x)`` whose parameters are ``pyro.param``s."""

    def __init__(self, model: Callable, guide: Callable):
        self.model = model
        self.guide = guide


def pair_to(pair: Any, device: torch.device) -> Any:
    """Move a pair's parameters to ``device`` (modules by ``.to``; param-store params follow)."""
    if isinstance(pair, nn.Module):
        pair.to(device)
    else:
        for module in pair_modules(pair):
            module.to(device)
    return pair


def pair_modules(pair: Any) -> list[nn.Module]:
    """The ``nn.Module`` objects of a pair: the pair itself, or the modules among its attributes
    (a pair that is a plain object holding an encoder and a decoder). For two plain functions
    (``--model``/``--guide``), the modules they refer to: globals of their module and
    variables of their closures (``pyro.module("decoder", decoder)`` at module level)."""
    if isinstance(pair, nn.Module):
        return [pair]
    base = getattr(pair, "base_pair", None)  # an estimators.EvaluationPair view
    if base is not None:
        return pair_modules(base)
    if isinstance(pair, FunctionPair):
        return _referenced_modules(pair.model, pair.guide)
    attributes = vars(pair).values() if hasattr(pair, "__dict__") else ()
    return [value for value in attributes if isinstance(value, nn.Module)]


def _referenced_modules(*functions: Callable) -> list[nn.Module]:
    """The ``nn.Module`` objects that ``functions`` name (globals, closure variables),
    each once, in order; callables that are not plain functions contribute none."""
    found: list[nn.Module] = []
    for function in functions:
        if isinstance(function, nn.Module):
            candidates = [function]
        else:
            try:
                names = inspect.getclosurevars(function)
            except TypeError:
                continue
            candidates = [*names.nonlocals.values(), *names.globals.values()]
        found += [
            m for m in candidates if isinstance(m, nn.Module) and not any(m is f for f in found)
        ]
    return found


@contextlib.contextmanager
def evaluation_mode(pair: Any) -> Iterator[None]:
    """Every module of ``pair`` in ``eval()`` mode (dropout off, BatchNorm on its running
    statistics) meanwhile; each submodule's own mode is restored on exit. Estimators run in
    it, so log p(x) of a point does not depend on the other points of its batch."""
    modules = [m for root in pair_modules(pair) for m in root.modules()]
    modes = [m.training for m in modules]
    try:
        for module in modules:
            module.training = False
        yield
    finally:
        for module, mode in zip(modules, modes, strict=True):
            module.training = mode


def set_training_mode(pair: Any, training: bool = True) -> None:
    """``train()`` (or ``eval()``) on every module of ``pair``: SVI steps run in train mode."""
    for module in pair_modules(pair):
        module.train(training)
