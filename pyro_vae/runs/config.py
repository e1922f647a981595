"""Run configuration: one dataclass, read from TOML and flags, written back as resolved TOML."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


#: ``--pixel-scale`` values (see pyro_vae.data.load_dataset).
PIXEL_SCALE_CHOICES = ("auto", "none", "255")


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names file and key."""


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "the data set's default"."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    base_url: str | None = None
    binarize: str | None = None
    pair: str | None = None
    pair_kwargs: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    guide: str | None = None
    objective: str = "elbo"
    num_particles: int = 1
    alpha: float = 0.5
    # None: the data set's default (DatasetSpec.default_pair_settings when the run names no
    # pair, else 10); the resolved number is recorded in config.toml.
    epochs: int | None = None
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    train_limit: int | None = None
    # Rows of train + valid kept for validation (None: the data set's own split; 0: train on
    # all of them, best.pt is then the last epoch).
    valid_size: int | None = None
    drop_last: bool = False
    # Score-function training (pyro_vae.infer.gradients): baselines need --objective tracegraph.
    baseline: str = "none"
    baseline_beta: float = 0.9
    baseline_lr: float | None = None  # None: 10 x lr (NVIL's faster baseline)
    baseline_hidden: list[int] = field(default_factory=lambda: [100])
    score_function: bool = False
    # β-VAE and KL warm-up (pyro_vae.infer.handlers.TrainingScales): the weight of every latent site
    # at step t is kl_warmup_start + (beta - kl_warmup_start) * min(1, t / kl_warmup).
    # kl_warmup None: the data set's default, as for epochs (else 0, no warm-up).
    beta: float = 1.0
    kl_warmup: int | None = None
    kl_warmup_start: float = 0.0
    # How .npy/.npz values are scaled: auto (uint8 images / 255, counts as they are), none, 255.
    pixel_scale: str = "auto"
    # Image folders and .csv tables, and memory-mapped sets (--lazy): see
    # pyro_vae.data.sources; image_size None is the size the images share.
    image_size: str | None = None
    image_mode: str = "auto"
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    label_column: str | None = None
    lazy: str = "auto"
    # Mid-epoch checkpoints every N SVI steps (0: at the end of each epoch only).
    checkpoint_every: int = 0
    # Loggers besides metrics.csv/metrics.png, always written (pyro_vae.runs.loggers): csv,
    # tensorboard, mlflow; sample grids every N epochs (0: none); MLflow's tracking URI (None:
    # $MLFLOW_TRACKING_URI, else sqlite:///PARENT/mlflow.db beside the run) and experiment.
    log: list[str] = field(default_factory=lambda: ["csv"])
    log_images_every: int = 5
    mlflow_uri: str | None = None
    mlflow_experiment: str = "pyro-vae"
    # Labels (pyro_vae.pairs.labels), for pairs whose programs take them: y as class indices or
    # one-hot rows (auto: the first the pair's programs take; the run records its choice); how
    # many training points keep theirs (None: all; 0: none; balanced and seeded); labelled
    # batches per epoch (None: one pass over the labelled points); the pair's classification
    # loss model_classify/guide_classify, on or off (None: on where the pair defines it).
    label_encoding: str = "auto"
    num_labelled: int | None = None
    labelled_batches: int | None = None
    classify_loss: str | None = None
    # --objective enum: how the guide's discrete sites are enumerated.
    enumerate: str = "parallel"
    # --compile (pyro_vae.infer.compiled): off; on (an untraceable pair trains eagerly, with a
    # note); strict (an untraceable pair is an error).
    compile: str = "off"
    # The optimizer and its learning-rate schedule (pyro_vae.infer.optimizers).
    optimizer: str = "adam"
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    clip_norm: float | None = None
    lr_schedule: str = "none"
    lr_gamma: float = 0.5
    lr_step_size: int = 10
    lr_min: float = 0.0
    # Set when a pair object given from Python cannot be rebuilt from `pair` and `pair_kwargs`:
    # what to pass so that the command line can rebuild it.
    pair_note: str | None = None

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the flag for values that cannot work.

        First each value is checked against its field's annotation (:func:`conform_types`),
        so ``TrainConfig(epochs="ten")`` is refused here as it is in a TOML file.
        """
        values = {name: getattr(self, name) for name in FIELDS}
        for name, value in conform_types(values, "TrainConfig").items():
            if value is not values[name]:
                setattr(self, name, value)
        checks = [
            (self.epochs is None or self.epochs >= 1, "--epochs", self.epochs, "at least 1"),
            (self.batch_size >= 1, "--batch-size", self.batch_size, "at least 1"),
            (self.num_particles >= 1, "--num-particles", self.num_particles, "at least 1"),
            (math.isfinite(self.lr) and self.lr > 0, "--lr", self.lr, "a positive number"),
            (self.device in ("auto", "cpu") or self.device.startswith("cuda"), "--device",
             self.device, "auto, cpu or cuda[:N]"),
            (self.train_limit is None or self.train_limit >= 2, "--train-limit",
             self.train_limit, "at least 2"),
            (self.valid_size is None or self.valid_size >= 0, "--valid-size",
             self.valid_size, "a number of rows >= 0"),
            (0 <= self.seed < 2**32, "--seed", self.seed, "in [0, 2**32 - 1] (NumPy's range)"),
            (self.out is None or str(self.out).strip() != "", "--out", self.out,
             "a folder to write the run into, e.g. --out runs/digits (an empty one would "
             "write it into the current folder)"),
        ]  # fmt: skip
        for ok, flag, value, wanted in checks:
            if not ok:
                raise ConfigError(f"{flag} {value!r}: must be {wanted}")
        weights = (("--beta", self.beta, True), ("--kl-warmup-start", self.kl_warmup_start, False))
        for flag, value, positive in weights:
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and (value > 0 if positive else value >= 0))
            ):
                wanted = "a number > 0" if positive else "a number >= 0"
                raise ConfigError(f"{flag} {value!r}: must be {wanted}")
        kl_warmup = self.kl_warmup
        if kl_warmup is not None and (
            isinstance(kl_warmup, bool) or not isinstance(kl_warmup, int) or kl_warmup < 0
        ):
            raise ConfigError(f"--kl-warmup {kl_warmup!r}: must be a number of steps >= 0")
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"--checkpoint-every {self.checkpoint_every!r}: must be a number of steps >= 0 "
                "(0: at the end of each epoch only)"
            )
        if self.pixel_scale not in PIXEL_SCALE_CHOICES:
            raise ConfigError(
                f"--pixel-scale {self.pixel_scale!r}: choose from {', '.join(PIXEL_SCALE_CHOICES)}"
            )
        from pyro_vae.data.sources import source_settings_problem

        if problem := source_settings_problem(
            self.image_size, self.image_mode, self.valid_fraction, self.test_fraction, self.lazy
        ):
            raise ConfigError(problem)
        from pyro_vae.infer.compiled import COMPILE_MODES
        from pyro_vae.infer.objectives import ENUMERATE_STRATEGIES
        from pyro_vae.pairs.label_encoding import CLASSIFY_LOSS_CHOICES, LABEL_ENCODING_CHOICES

        classify_loss = "off" if self.classify_loss is None else self.classify_loss  # unset: valid
        choices = (
            ("--label-encoding", self.label_encoding, LABEL_ENCODING_CHOICES),
            ("--classify-loss", classify_loss, CLASSIFY_LOSS_CHOICES),
            ("--enumerate", self.enumerate, ENUMERATE_STRATEGIES),
            ("--compile", self.compile, COMPILE_MODES),
        )
        for flag, value, allowed in choices:
            if value not in allowed:
                raise ConfigError(f"{flag} {value!r}: choose from {', '.join(allowed)}")
        from pyro_vae.infer.optimizers import OptimizerError, check_optimizer_settings

        try:
            check_optimizer_settings(self)
        except OptimizerError as error:
            raise ConfigError(str(error)) from error
        self._validate_labels()
        from pyro_vae.runs.loggers.settings import log_settings_problem

        if problem := log_settings_problem(self.log, self.log_images_every):
            raise ConfigError(problem)
        if not isinstance(self.pair_kwargs, dict):
            raise ConfigError(f"--pair-kwargs must be a JSON object, got {self.pair_kwargs!r}")
        self._validate_gradient_estimator()
        return self

    def _validate_labels(self) -> None:
        if self.num_labelled is not None and self.num_labelled < 0:
            raise ConfigError(
                f"--num-labelled {self.num_labelled!r}: must be at least 0 (0: no labels)"
            )
        if self.labelled_batches is not None and self.labelled_batches < 1:
            raise ConfigError(f"--labelled-batches {self.labelled_batches!r}: must be at least 1")
        if self.num_labelled == 0:
            if self.labelled_batches is not None:
                raise ConfigError(
                    f"--labelled-batches {self.labelled_batches} has no effect with "
                    "--num-labelled 0 (no labelled batches); drop one of them"
                )
            if self.classify_loss == "on":
                raise ConfigError(
                    "--classify-loss on: --num-labelled 0 leaves no labelled batch to train it "
                    "on; drop one of them"
                )

    def _validate_gradient_estimator(self) -> None:
        from pyro_vae.infer.gradients import BASELINES  # torch and pyro only when configuring

        if self.baseline not in BASELINES:
            raise ConfigError(
                f"--baseline {self.baseline!r} is unknown; choose from {', '.join(BASELINES)}"
            )
        if self.baseline != "none" and self.objective != "tracegraph":
            raise ConfigError(
                f"--baseline {self.baseline} needs --objective tracegraph: only TraceGraph_ELBO "
                f"uses baselines (Trace_ELBO, TraceMeanField_ELBO and RenyiELBO ignore them); "
                f"got --objective {self.objective}"
            )
        from pyro_vae.infer.objectives import OBJECTIVES

        spec = OBJECTIVES.get(self.objective)
        if spec is not None and self.num_particles < spec.min_particles:
            raise ConfigError(
                f"--objective {self.objective} needs --num-particles >= {spec.min_particles}: "
                f"its baseline for each particle is formed from the other particles (got "
                f"{self.num_particles}); e.g. --num-particles 5"
            )
        if self.score_function and spec is not None and spec.stops_guide:
            raise ConfigError(
                f"--score-function cannot train with --objective {self.objective}: it "
                "differentiates through the guide's draws; use --objective vimco (the "
                "multi-sample score function) or tracegraph"
            )
        if self.score_function and self.objective == "meanfield":
            raise ConfigError(
                "--score-function cannot train with --objective meanfield: TraceMeanField_ELBO "
                "needs every guide site reparameterized; use --objective tracegraph or elbo"
            )
        beta = self.baseline_beta
        if not (isinstance(beta, int | float) and 0.0 <= beta < 1.0):
            raise ConfigError(f"--baseline-beta {beta!r}: must be in [0, 1)")
        lr = self.baseline_lr
        if lr is not None and not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise ConfigError(f"--baseline-lr {lr!r}: must be a positive number")
        hidden = self.baseline_hidden
        if not (
            isinstance(hidden, list | tuple)
            and all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden)
        ):
            raise ConfigError(
                f"--baseline-hidden {hidden!r}: must be hidden-layer widths >= 1, e.g. 100 or "
                "200,100"
            )
        self.baseline_hidden = [int(h) for h in hidden]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
#: Each field's annotation as a type (``int | None``, ``list[int]``), for :func:`conform_types`.
FIELD_TYPES = typing.get_type_hints(TrainConfig)
#: The defaults, as the examples in type messages show them.
_DEFAULTS = {name: getattr(TrainConfig(), name) for name in FIELDS}
#: What a checkpoint that lacks a key (written before the setting existed) ran with: the
#: defaults, but where a default is now None (the data set's), the value it had then.
CHECKPOINT_DEFAULTS = {**_DEFAULTS, "kl_warmup": 0}


class _Kind(NamedTuple):
    accepts: Callable[[Any], bool]
    convert: Callable[[Any], Any]
    name: str  # what a message says is expected
    plural: str  # the same, as the items of a list


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# What each annotated type accepts and how a value becomes it. An integer is a fine float
# (lr = 1 is lr = 1.0), but a boolean is no integer: `epochs = true` is refused, not 1 epoch.
# NumPy scalars pass (numbers.Integral/Real) and become Python ones, so they write to TOML.
_KINDS: dict[Any, _Kind] = {
    bool: _Kind(lambda v: isinstance(v, bool), bool, "true or false", "booleans"),
    int: _Kind(_is_integer, int, "an integer", "integers"),
    float: _Kind(
        lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
        float,
        "a number",
        "numbers",
    ),
    str: _Kind(lambda v: isinstance(v, str), str, "a string", "strings"),
    dict: _Kind(
        lambda v: isinstance(v, dict), lambda v: v, "a table of keyword arguments", "tables"
    ),
    list: _Kind(lambda v: isinstance(v, list | tuple), list, "a list", "lists"),
    type(None): _Kind(lambda v: v is None, lambda v: v, "no value (in TOML: no key)", "-"),
}

# What a wrong value is, as a message says it.
_VALUE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a decimal number",
    str: "a string",
    list: "an array",
    tuple: "an array",
    dict: "a table",
}

_MISMATCH = object()


def _members(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _conform(hint: Any, value: Any) -> Any:
    """``value`` as the annotation ``hint`` wants it (1 -> 1.0 for a float), else _MISMATCH."""
    for member in _members(hint):
        origin = typing.get_origin(member) or member
        kind = _KINDS[origin]
        if not kind.accepts(value):
            continue
        if origin is list:
            (item_hint,) = typing.get_args(member)
            items = [_conform(item_hint, item) for item in value]
            if any(item is _MISMATCH for item in items):
                continue
            return items
        return kind.convert(value)
    return _MISMATCH


def _expected(hint: Any) -> str:
    """``int | None`` -> 'an integer or no value (in TOML: no key)'."""
    names = []
    for member in _members(hint):
        origin = typing.get_origin(member) or member
        if origin is list:
            (item_hint,) = typing.get_args(member)
            names.append(f"a list of {_KINDS[item_hint].plural}")
        else:
            names.append(_KINDS[origin].name)
    return " or ".join(names)


def _toml_literal(text: str) -> Any:
    """What ``text`` means written as a TOML value, or _MISMATCH when it is not one."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return _MISMATCH


def _type_problem(key: str, value: Any, toml: bool) -> str:
    """One clause: the key, its value, what it is, what is expected and how to write it."""
    hint = FIELD_TYPES[key]
    show = _show_toml if toml else repr
    shown = f"{key} = {show(value)}" if toml else f"{key}={value!r} (--{key.replace('_', '-')})"
    what = _VALUE_NAMES.get(type(value), f"a {type(value).__name__}")
    advice = ""
    unquoted = _toml_literal(value) if toml and isinstance(value, str) else _MISMATCH
    default = _DEFAULTS.get(key)
    if unquoted is not _MISMATCH and _conform(hint, unquoted) is not _MISMATCH:
        advice = f"; write it without quotes: {key} = {value}"
    elif default not in (None, {}, []):
        advice = f", e.g. {key} = {show(default)}" if toml else f", e.g. {key}={default!r}"
    return f"{shown} is {what}, expected {_expected(hint)}{advice}"


def _show_toml(value: Any) -> str:
    try:
        return _toml_value(value)
    except ConfigError:
        return repr(value)


def conform_types(values: Mapping[str, Any], source: str, *, toml: bool = False) -> dict:
    """``values`` checked against :class:`TrainConfig`'s annotations, converted where exact.

    Every key of ``values`` must be a field. An ``int`` stands for a ``float`` (and becomes
    one), NumPy scalars become Python ones, a bool is not an int, ``None`` only where the
    annotation allows it. A mismatch raises :class:`ConfigError` naming ``source`` (the file,
    or ``TrainConfig``) and, for each bad key, the value and the type expected.
    """
    values = dict(values)
    pixel_scale = values.get("pixel_scale")
    if pixel_scale == 255 and not isinstance(pixel_scale, bool):
        values["pixel_scale"] = "255"  # a TOML number for the string choice
    image_size = values.get("image_size")
    if _is_integer(image_size):
        values["image_size"] = str(image_size)  # image_size = 28 for "28"
    conformed, problems = {}, []
    for key, value in values.items():
        conformed[key] = _conform(FIELD_TYPES[key], value)
        if conformed[key] is _MISMATCH:
            problems.append(_type_problem(key, value, toml))
    if problems:
        raise ConfigError(f"{source}: wrong type: " + "; ".join(problems))
    return conformed


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config (top level or a ``[train]`` table) and check its keys."""
    if not str(path).strip():
        raise ConfigError("--config '' is empty: name a TOML file, e.g. --config run.toml")
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as error:
        raise ConfigError(f"--config {str(path)!r}: no such file") from error
    except IsADirectoryError as error:
        inside = path / "config.toml"
        hint = (
            f"; {str(inside)!r} is a run's config: pass that, or continue the run with "
            f"--resume --out {str(path)!r}"
            if inside.is_file()
            else ""
        )
        raise ConfigError(
            f"--config {str(path)!r} is a folder, not a TOML file: name the file (FILE.toml){hint}"
        ) from error
    except OSError as error:
        raise ConfigError(
            f"--config {str(path)!r}: cannot read it ({error.strerror}); check the path and "
            "its permissions"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"--config {str(path)!r}: not valid TOML: {error}") from error
    data = data.get("train", data)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"--config {str(path)!r}: unknown key(s) {unknown}; known keys: {sorted(FIELDS)}"
        )
    return conform_types(data, str(path), toml=True)


def resolve(file_values: dict[str, Any], flag_values: dict[str, Any]) -> TrainConfig:
    """Defaults, then the file, then flags given on the command line (flags win).

    A flag given with a value that the other settings leave without effect (``--alpha``
    without ``--objective renyi``, see :func:`unused_settings`) is refused; the same value
    from the file is only warned about when the run starts (a run's own config.toml holds
    every key)."""
    given = {k: v for k, v in flag_values.items() if v is not None}
    merged = {**file_values, **given}
    try:
        config = TrainConfig(**merged)
    except TypeError as error:
        raise ConfigError(str(error)) from error
    config.validate()
    for name, (why, remedy) in unused_settings(config).items():
        if name in given:
            flag = "--" + name.replace("_", "-")
            value = getattr(config, name)
            shown = flag if value is True else f"{flag} {_show_flag(value)}"
            raise ConfigError(f"{shown} has no effect here: {why}. Drop {flag}, or {remedy}")
    return config


def _show_flag(value: Any) -> str:
    """A value as it is typed after its flag: ``0.7``, ``0.9 0.999``, ``200,100``."""
    if value == []:
        return "''"
    if isinstance(value, list):
        return (
            ",".join(map(str, value))
            if all(isinstance(v, int) for v in value)
            else " ".join(map(str, value))
        )
    return str(value)


def unused_settings(config: TrainConfig) -> dict[str, tuple[str, str]]:
    """The settings of ``config`` that differ from their defaults yet have no effect with the
    others, as ``{field: (why, what would give it one)}``.

    ``--alpha`` without a Renyi objective, ``--enumerate`` without ``--objective enum``,
    the baseline settings without the baseline that reads them, ``--kl-warmup-start``
    without ``--kl-warmup``, ``--pixel-scale 255`` on a named data set, ``--base-url``
    without ``--download``, and the schedule and Adam settings that the schedule or
    optimizer does not read (:func:`~pyro_vae.infer.optimizers.unused_optimizer_settings`).
    A value equal to the default is never listed: a run's config.toml holds every key.
    """
    from pyro_vae.data import DATASETS
    from pyro_vae.infer.gradients import BASELINES
    from pyro_vae.infer.objectives import OBJECTIVES
    from pyro_vae.infer.optimizers import unused_optimizer_settings
    from pyro_vae.runs.loggers.settings import unused_log_settings

    unused = dict(unused_optimizer_settings(config))
    unused.update(unused_log_settings(config))
    objective = OBJECTIVES.get(config.objective)
    if objective is not None and not objective.uses_alpha:
        fixed = f" (it fixes alpha at {objective.alpha:g})" if objective.alpha is not None else ""
        unused["alpha"] = (
            f"it is Renyi's alpha, for --objective renyi; --objective {config.objective} does "
            f"not read it{fixed}",
            "pass --objective renyi",
        )
    if objective is not None and not objective.enumerates:
        unused["enumerate"] = (
            f"it is for --objective enum; --objective {config.objective} enumerates nothing",
            "pass --objective enum",
        )
    baseline = BASELINES.get(config.baseline)
    if baseline is not None and not baseline.needs_module:
        for name in ("baseline_lr", "baseline_hidden"):
            unused[name] = (
                f"it is for the neural baseline (--baseline nn); --baseline {config.baseline} "
                "has no network",
                "pass --objective tracegraph --baseline nn",
            )
    if config.baseline != "avg":
        unused["baseline_beta"] = (
            f"it is the decay of --baseline avg; --baseline {config.baseline} has no average",
            "pass --objective tracegraph --baseline avg",
        )
    if config.kl_warmup == 0:  # None: the data set's default, which may warm up
        unused["kl_warmup_start"] = (
            "it is the first latent weight of a KL warm-up; without --kl-warmup N the weight "
            "is --beta from the first step",
            "pass --kl-warmup N (steps)",
        )
    if config.dataset in DATASETS and config.pixel_scale == "255":
        divisor = DATASETS[config.dataset].pixel_scale
        scaled = f" (here /{divisor:g})" if divisor else ""
        unused["pixel_scale"] = (
            f"it scales .npy/.npz files; the named data set {config.dataset!r} is always "
            f"scaled to [0, 1]{scaled}",
            "pass your own .npy/.npz file as --dataset",
        )
    from pyro_vae.data.sources import unused_source_settings

    unused.update(unused_source_settings(config.dataset))  # --image-size, --download, ...
    if not config.download:
        unused["base_url"] = (
            "it is where --download fetches missing files from; without --download nothing "
            "is fetched",
            "pass --download",
        )
    return {
        name: reason for name, reason in unused.items() if getattr(config, name) != _DEFAULTS[name]
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise ConfigError(f"cannot write {value!r} to TOML")


def dumps_toml(values: dict[str, Any], table: str = "train") -> str:
    """Write a flat config as TOML; ``None`` values are left out (TOML has no null)."""
    lines = [f"[{table}]"]
    for key, value in values.items():
        if value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
