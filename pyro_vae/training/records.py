"""Recording a pair object given from Python into the run's configuration, so that the
commands that reopen the run rebuild the same pair (or say what to pass where they cannot).
"""

from __future__ import annotations

import json
from typing import Any

import torch

from pyro_vae.pairs import PairError, build_pair, parameter_shapes, record_pair
from pyro_vae.runs.config import TrainConfig
from pyro_vae.training.outputs import _log


def record_pair_object(pair: Any, config: TrainConfig, image_shape: tuple) -> None:
    """Write a pair object given from Python into ``config`` (``pair``, ``pair_kwargs``) so
    that ``pyro-vae evaluate`` can rebuild it, and check that the record rebuilds the same
    parameters; where it does not, ``config.pair_note`` says what to pass."""
    record = record_pair(pair)
    config.pair = record.spec or f"{type(pair).__module__}:{type(pair).__qualname__}"
    config.pair_kwargs = {**record.kwargs, **config.pair_kwargs}
    assumed = [name for name in record.assumed if name not in config.pair_kwargs]
    if assumed:
        _log(
            f"note: the pair object {type(pair).__qualname__} keeps no attribute named "
            f"{', '.join(assumed)}, so the run records the default value(s) of those "
            "constructor arguments; if you passed others, give them in TrainConfig's "
            "pair_kwargs (or config.toml's) so that pyro-vae evaluate rebuilds the same pair"
        )
    problem = None
    if record.spec is None:
        problem = (
            f"its class {type(pair).__qualname__} is defined where it cannot be imported "
            "(inside a function, or in a notebook)"
        )
    elif record.missing:
        problem = (
            f"constructor argument(s) {list(record.missing)} were not found as attributes of "
            "the same name"
        )
    elif type(pair).__module__ == "__main__":
        problem = None  # re-importing a script would run it: recorded, not tried here
    else:
        problem = _rebuild_problem(pair, config, image_shape)
    if problem is None:
        return
    config.pair_note = (
        f"note: the pair object {type(pair).__qualname__} was recorded as --pair "
        f"{config.pair!r} --pair-kwargs {json.dumps(config.pair_kwargs)}, but {problem}. To "
        "evaluate the run, pass the pair again from Python (pyro_vae.evaluate(run_dir, "
        "pair=...)), or move the class into a .py file, store each constructor argument as "
        "an attribute of the same name, and put its arguments into config.toml's "
        "pair_kwargs"
    )
    _log(config.pair_note)


def _rebuild_problem(pair: Any, config: TrainConfig, image_shape: tuple) -> str | None:
    """Why ``config.pair``/``pair_kwargs`` do not rebuild ``pair`` (same parameter names and
    shapes), or None; the global RNG is left as it was."""
    try:
        with torch.random.fork_rng(devices=[]):
            rebuilt = build_pair(image_shape, config.pair, config.pair_kwargs)
    except PairError as error:
        return f"rebuilding it failed: {error}"
    if parameter_shapes(rebuilt) != parameter_shapes(pair):
        return "the rebuilt pair has other parameters (names or shapes) than the one given"
    return None
