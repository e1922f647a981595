"""The search space of a sweep, read from TOML: fixed train settings and distributions.

A space file has two tables::

    [train]                       # fixed settings: any key of a run's config.toml
    dataset = "digits"
    epochs = 5

    [params]                      # distributions over train settings
    beta = {low = 0.5, high = 4.0, log = true}     # a float range (log-uniform)
    batch_size = {low = 50, high = 200, step = 50}  # an int range with a step
    objective = {choices = ["elbo", "iwae"]}

    [params.pair_kwargs]          # distributions over the pair's keyword arguments
    z_dim = {choices = [2, 8, 16]}
    hidden = {choices = [[64], [128, 64]]}

A range is ``{low, high}`` with optional ``log = true`` or ``step``; it draws integers for an
integer setting (or, in ``pair_kwargs``, when ``low``, ``high`` and ``step`` are integers) and
numbers otherwise. ``{choices = [...]}`` draws one of the values. Keys may be written with
dashes as the flags are (``train-limit``). Every fixed value, and every end of a range and
every choice, is checked by :class:`~pyro_vae.runs.config.TrainConfig` as ``pyro-vae train``
would check it; the pair's keyword arguments are checked when a trial builds the pair.
"""

from __future__ import annotations

import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_vae.runs.config import FIELD_TYPES, FIELDS, ConfigError, TrainConfig, conform_types
from pyro_vae.sweeps.errors import SweepError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The keys a distribution may have.
RANGE_KEYS = ("low", "high", "log", "step")
CHOICE_KEYS = ("choices",)
#: Settings a sweep sets itself for every trial.
SWEEP_OWNED = ("out",)
#: The prefix of a pair keyword argument's name in the study.
PAIR_PREFIX = "pair_kwargs."


@dataclass(frozen=True)
class Distribution:
    """One searched setting: a range (``low``..``high``, ``log`` or ``step``) of ``int`` or
    ``float``, or ``choices``."""

    name: str
    kind: str  # "int", "float" or "choices"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial: Any) -> Any:
        """This setting's value for an Optuna trial."""
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1,
                                     log=self.log)  # fmt: skip
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step,
                                       log=self.log)  # fmt: skip
        if all(_is_scalar(c) for c in self.choices):
            return trial.suggest_categorical(self.name, list(self.choices))
        labels = [json.dumps(c) for c in self.choices]  # Optuna's choices are scalars
        return json.loads(trial.suggest_categorical(self.name, labels))

    def ends(self) -> list:
        """The values to check: both ends of a range, every choice."""
        return [self.low, self.high] if self.kind != "choices" else list(self.choices)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "choices":
            return {"choices": list(self.choices)}
        found = {"low": self.low, "high": self.high, "log": self.log}
        return found if self.step is None else {**found, "step": self.step}


@dataclass
class Space:
    """A sweep's space: ``fixed`` train settings, ``params`` over train settings and
    ``pair_params`` over the pair's keyword arguments."""

    path: str
    fixed: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Distribution] = field(default_factory=dict)
    pair_params: dict[str, Distribution] = field(default_factory=dict)

    def config_for(self, trial: Any, out: str | Path) -> TrainConfig:
        """The trial's full train config: fixed settings, then its drawn values."""
        values = {**self.fixed, **{n: d.suggest(trial) for n, d in self.params.items()}}
        pair_kwargs = dict(values.get("pair_kwargs") or {})
        for name, distribution in self.pair_params.items():
            pair_kwargs[name] = distribution.suggest(trial)
        values.update(pair_kwargs=pair_kwargs, out=str(out))
        return TrainConfig(**conform_types(values, self.path)).validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as the study records it (a resumed sweep must have the same)."""
        return {
            "train": self.fixed,
            "params": {n: d.to_dict() for n, d in self.params.items()},
            "pair_kwargs": {n: d.to_dict() for n, d in self.pair_params.items()},
        }


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _train_key(key: str) -> str:
    return key.replace("-", "_")


def load_space(path: str | Path) -> Space:
    """Read and check a space file; :class:`SweepError` names the file and the key."""
    where = f"space file {str(path)!r}"
    try:
        with Path(path).open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as error:
        raise SweepError(f"{where}: no such file") from error
    except IsADirectoryError as error:
        raise SweepError(f"{where} is a folder; name the TOML file (SPACE.toml)") from error
    except OSError as error:
        raise SweepError(f"{where}: cannot read it ({error.strerror})") from error
    except tomllib.TOMLDecodeError as error:
        raise SweepError(f"{where}: not valid TOML: {error}") from error
    unknown = sorted(set(data) - {"train", "params"})
    if unknown:
        raise SweepError(
            f"{where}: unknown key(s) {unknown} at the top; a space file has the tables "
            "[train] (fixed settings) and [params] (distributions)"
        )
    for table in ("train", "params"):
        if not isinstance(data.get(table, {}), dict):
            raise SweepError(f"{where}: {table} must be a table, [{table}]")
    space = Space(path=str(path))
    space.fixed = _fixed(data.get("train", {}), where)
    params = {_train_key(k): v for k, v in data.get("params", {}).items()}
    pair_table = params.pop("pair_kwargs", {})
    if not isinstance(pair_table, dict):
        raise SweepError(f"{where}: [params] pair_kwargs must be a table, [params.pair_kwargs]")
    for key, spec in params.items():
        space.params[key] = _train_distribution(key, spec, where)
        _check_values(space, key, space.params[key], where)
    for key, spec in pair_table.items():
        hint = f"[params.pair_kwargs] {key}"
        space.pair_params[key] = _distribution(PAIR_PREFIX + key, spec, None, f"{where}: {hint}")
    if not space.params and not space.pair_params:
        raise SweepError(f"{where}: [params] is empty; give at least one distribution, e.g. "
                         "beta = {low = 0.5, high = 4.0, log = true}")  # fmt: skip
    return space


def _fixed(table: dict, where: str) -> dict[str, Any]:
    fixed = {_train_key(k): v for k, v in table.items()}
    unknown = sorted(set(fixed) - set(FIELDS))
    if unknown:
        raise SweepError(
            f"{where}: [train] unknown key(s) {unknown}: not settings of pyro-vae train; "
            f"known keys: {sorted(FIELDS)}"
        )
    owned = [k for k in SWEEP_OWNED if k in fixed]
    if owned:
        raise SweepError(f"{where}: [train] {owned[0]}: the sweep sets it for each trial "
                         "(SWEEP_DIR/trial-NNNN); drop it and pass --out SWEEP_DIR")  # fmt: skip
    try:
        fixed = conform_types(fixed, f"{where}: [train]", toml=True)
        TrainConfig(**fixed).validate()
    except ConfigError as error:
        message = str(error)
        prefix = "" if message.startswith(where) else f"{where}: [train]: "
        raise SweepError(prefix + message) from error
    return fixed


def _train_distribution(key: str, spec: Any, where: str) -> Distribution:
    hint = f"{where}: [params] {key}"
    if key not in FIELDS:
        raise SweepError(
            f"{hint}: not a setting of pyro-vae train (a pair's keyword argument goes under "
            f"[params.pair_kwargs]); known settings: {sorted(FIELDS)}"
        )
    if key in SWEEP_OWNED:
        raise SweepError(f"{hint}: the sweep sets it for each trial; drop it")
    members = typing.get_args(FIELD_TYPES[key]) or (FIELD_TYPES[key],)
    numeric = "int" if int in members else "float" if float in members else None
    return _distribution(key, spec, numeric or "not a number", hint)


def _distribution(name: str, spec: Any, numeric: str | None, hint: str) -> Distribution:
    """``numeric``: the kind a range draws (None: from the bounds), or why there is none."""
    if not isinstance(spec, dict):
        raise SweepError(
            f"{hint} = {spec!r}: a distribution is a table, {{low = ..., high = ...}} or "
            "{choices = [...]}; a fixed value goes under [train]"
        )
    unknown = sorted(set(spec) - set(RANGE_KEYS) - set(CHOICE_KEYS))
    if unknown:
        raise SweepError(
            f"{hint}: unknown field(s) {unknown}; a distribution has {', '.join(RANGE_KEYS)} "
            "(a range) or choices"
        )
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            raise SweepError(f"{hint}: choices cannot go with {sorted(set(spec) - {'choices'})}")
        if not isinstance(choices, list) or not choices:
            raise SweepError(f"{hint}: choices must be a non-empty array, e.g. [2, 8, 16]")
        return Distribution(name, "choices", choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        missing = [k for k in ("low", "high") if k not in spec]
        raise SweepError(f"{hint}: a range needs both low and high (missing {missing[0]})")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for label, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and not (_is_number(value) and math.isfinite(value)):
            raise SweepError(f"{hint}: {label} = {value!r} must be a number")
    if not isinstance(log, bool):
        raise SweepError(f"{hint}: log = {log!r} must be true or false")
    if numeric is not None and numeric not in ("int", "float"):
        raise SweepError(f"{hint}: a range draws numbers, but this setting takes no number; "
                         "use {choices = [...]}")  # fmt: skip
    ints = all(isinstance(v, int) for v in (low, high, step) if v is not None)
    kind = numeric or ("int" if ints else "float")
    if kind == "int" and not ints:
        raise SweepError(f"{hint}: an integer setting needs integer low, high and step")
    if not low < high:
        raise SweepError(f"{hint}: low = {low!r} must be below high = {high!r} (a fixed "
                         "value goes under [train])")  # fmt: skip
    if log and step is not None:
        raise SweepError(f"{hint}: log and step cannot go together; drop one")
    if log and low <= 0:
        raise SweepError(f"{hint}: log = true needs low > 0 (got {low!r})")
    if step is not None and step <= 0:
        raise SweepError(f"{hint}: step = {step!r} must be positive")
    return Distribution(name, kind, low=low, high=high, log=log, step=step)


def _check_values(space: Space, key: str, distribution: Distribution, where: str) -> None:
    """Each end of a range and each choice, with the fixed settings, as train checks them."""
    for value in distribution.ends():
        try:
            values = conform_types({**space.fixed, key: value}, where, toml=True)
            TrainConfig(**values).validate()
        except ConfigError as error:
            raise SweepError(f"{where}: [params] {key} = {value!r}: {error}") from error
