"""A run directory reopened: the pair with its trained parameters, the data, the config and
the history, for any analysis; nothing here trains.

:func:`load_run` gives a :class:`Run`; ``run.split("test")`` the points of a split as they
are evaluated (a fixed binarization for dynamically binarized data), ``run.labels(split)``
their labels. The training loop builds its pair and data with the same helpers
(:func:`load_data`, :func:`make_pair`), so a reopened run sees what training saw.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pyro
import torch

from pyro_vae.data import Dataset, binarize_static, load_dataset
from pyro_vae.pairs import PairError, PairInfo, build_pair, check_pair, pair_to
from pyro_vae.pairs.labels import LabelError, encode_labels, label_arguments
from pyro_vae.runs.checkpoints import BEST, CHECKPOINT, load_checkpoint, restore_params
from pyro_vae.runs.config import CHECKPOINT_DEFAULTS, ConfigError, TrainConfig, load_toml

#: The resolved configuration of a run, written by training.
CONFIG = "config.toml"

#: Seed of the fixed binarization of validation and test points (dynamic binarization
#: trains on fresh draws; evaluation needs one fixed draw so numbers are comparable).
EVAL_BINARIZE_SEED = 12345

#: Settings that may change when a run is resumed; any other change would make the resumed
#: run differ from an uninterrupted one. A new learning rate takes effect from the resumed
#: epoch on and is recorded in each epoch's row (``lr``), so diverged runs can go on slower.
RESUMABLE_CHANGES = (
    "epochs", "out", "data_dir", "download", "base_url", "lr", "baseline_lr", "checkpoint_every",
    "compile", "log", "log_images_every", "mlflow_uri", "mlflow_experiment", "lazy",
)  # fmt: skip


def resolve_device(name: str, *, fall_back_to_cpu: bool = False) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is a clear error, or
    cpu with ``fall_back_to_cpu`` (a run trained on a GPU, evaluated on a laptop)."""
    if name.startswith("cuda") and fall_back_to_cpu and not torch.cuda.is_available():
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"--device {name}: not a device name ({error})") from error
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def load_data(config: TrainConfig, device: torch.device, data_dir: str | None = None) -> Dataset:
    """The run's data set on ``device``, checked against its binarization."""
    data = load_dataset(
        config.dataset,
        data_dir if data_dir is not None else config.data_dir,
        download=config.download,
        base_url=config.base_url,
        binarize="static" if config.binarize == "static" else "none",
        seed=config.seed,
        pixel_scale=config.pixel_scale,
        image_size=config.image_size,
        image_mode=config.image_mode,
        valid_fraction=config.valid_fraction,
        test_fraction=config.test_fraction,
        label_column=config.label_column,
        lazy=config.lazy,
    )
    if config.binarize == "dynamic":
        low, high = data.train.min().item(), data.train.max().item()
        if low < 0 or high > 1:
            raise ConfigError(
                f"--binarize dynamic needs data in [0, 1], but data set {config.dataset!r} "
                f"has values in [{low:.3g}, {high:.3g}]; use --binarize none with a "
                "Gaussian-likelihood pair (or, for 0-255 pixels in a file, --pixel-scale 255)"
            )
    if config.valid_size is not None:
        data = data.with_valid_size(config.valid_size)
    return data.to(device)


def eval_split(data: Dataset, split: str, binarize: str) -> torch.Tensor:
    """A split as evaluated: dynamically binarized data get one fixed Bernoulli draw."""
    x = data.split(split)
    if binarize == "dynamic":
        x = binarize_static(x, EVAL_BINARIZE_SEED)
    return x


def make_pair(
    config: TrainConfig,
    image_shape: tuple,
    device: torch.device,
    pair: Any = None,
    num_classes: int | None = None,
):
    """Build (or take) the pair and move it to ``device``, with Pyro's global param store
    cleared once the pair is built: parameters of an earlier pair in this process, or the
    same-named ones a pair file registers when importing it runs its top level (a script
    without an ``if __name__ == "__main__":`` guard), cannot stand in for the pair's own.
    ``pyro.module`` would otherwise return those stale tensors to the optimizer while the
    networks compute with theirs, and nothing would train."""
    if pair is None:
        try:
            pair = build_pair(
                image_shape, config.pair, config.pair_kwargs, config.model, config.guide,
                num_classes=num_classes,
            )  # fmt: skip
        except PairError as error:
            if config.pair_note:
                raise PairError(f"{error}\n{config.pair_note}") from error
            raise
    pyro.clear_param_store()
    return pair_to(pair, device)


def restore_pair(run_dir: Path, config: TrainConfig, device: torch.device, pair=None,
                 checkpoint: str = BEST) -> tuple[Any, PairInfo, Dataset, dict]:  # fmt: skip
    """Rebuild a run's pair on ``device`` from a checkpoint (``best.pt`` or ``checkpoint.pt``).

    The checkpoint is read with ``weights_only=True`` and ``config`` (the run's
    ``config.toml``) must agree with the configuration stored in it, but for the settings
    that may change between sessions; both are checked before the pair is built, so an edited
    ``config.toml`` cannot make a command call what it names. A checkpoint whose parameters
    do not fit the pair is refused."""
    path = run_dir / checkpoint
    if not path.exists() and checkpoint == BEST:
        path = run_dir / CHECKPOINT
    state = load_checkpoint(
        path,
        device,
        config=config.to_dict(),
        defaults=CHECKPOINT_DEFAULTS,
        may_differ=(*RESUMABLE_CHANGES, "device"),
    )
    data = load_data(config, device)
    pair = make_pair(config, data.image_shape, device, pair, data.num_classes)
    probe = probe_batch(data, config)
    labels = split_labels(data, "train", config, pair)
    train_labels = None if labels is None else labels[0][: config.train_limit]
    info = check_pair(pair, probe, None if labels is None else labels[0][: probe.shape[0]],
                      points=lambda: train_points(data, config),
                      point_labels=train_labels)  # fmt: skip
    restore_params(pair, state, device, path)
    return pair, info, data, state


def split_labels(
    data: Dataset, split: str, config: TrainConfig, pair: Any
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The labels of ``split`` as ``pair`` receives them (``config.label_encoding``) and as
    class indices; None where the pair takes no labels, or the data set has none and the
    pair can do without."""
    try:
        arguments = label_arguments(pair)
    except LabelError as error:
        raise PairError(str(error)) from error
    if not arguments.takes or (data.labels is None and not arguments.needs):
        return None
    classes = data.split_labels(split)
    encoded = encode_labels(classes, config.label_encoding, data.num_classes, data.train.dtype)
    return encoded, classes


def probe_batch(data: Dataset, config: TrainConfig) -> torch.Tensor:
    """A few training points to trace the pair on (one Bernoulli draw of dynamically
    binarized data)."""
    x = data.train[: max(2, min(config.batch_size, 16))]
    if config.binarize == "dynamic":
        x = torch.bernoulli(x)
    return x


def train_points(data: Dataset, config: TrainConfig) -> torch.Tensor:
    """All the training points (``--train-limit``) as the pair's check traces a guide that is
    not amortized on them (:func:`~pyro_vae.pairs.check_pair`'s ``points``): one fixed
    Bernoulli draw of dynamically binarized data."""
    x = data.train if config.train_limit is None else data.train[: config.train_limit]
    return binarize_static(x, EVAL_BINARIZE_SEED) if config.binarize == "dynamic" else x


def read_config(run_dir: Path) -> TrainConfig:
    """The resolved configuration a run directory was trained with."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ConfigError(
            f"{str(run_dir)!r} is not a pyro-vae run directory: {CONFIG} is missing "
            "(train one with `pyro-vae train --out DIR`)"
        )
    return TrainConfig(**load_toml(path))


class RestoredRun(NamedTuple):
    """A trained run ready to evaluate: its pair, the evaluated split, and where it came from."""

    pair: Any
    info: PairInfo
    x: torch.Tensor
    state: dict[str, Any]
    dataset: str
    device: torch.device
    config: TrainConfig
    #: The split's labels as the pair receives them and as class indices (None: no labels).
    labels: torch.Tensor | None = None
    classes: torch.Tensor | None = None
    run: Run | None = None

    @property
    def y(self) -> torch.Tensor | None:
        """The labels the pair's programs get: only a pair that needs them gets them."""
        return self.labels if self.info.needs_labels else None


@dataclass
class Run:
    """A reopened run: its ``pair`` with the parameters of ``checkpoint``, the pair's
    :class:`~pyro_vae.pairs.PairInfo`, the ``config`` it trained with, its ``data`` set on
    ``device``, and the checkpoint's ``state`` (``history``, ``epoch``)."""

    path: Path
    pair: Any
    info: PairInfo
    config: TrainConfig
    data: Dataset
    state: dict[str, Any]
    device: torch.device
    checkpoint: str = BEST

    @property
    def history(self) -> list[dict[str, float]]:
        """One row per finished epoch, as in ``metrics.csv``."""
        return list(self.state.get("history", []))

    @property
    def epoch(self) -> int:
        """The epoch whose parameters the pair holds."""
        return int(self.state["epoch"])

    def split(self, name: str = "test") -> torch.Tensor:
        """The points of split ``name`` (train, valid or test) as evaluated: dynamically
        binarized data get one fixed Bernoulli draw (:data:`EVAL_BINARIZE_SEED`)."""
        return eval_split(self.data, name, self.config.binarize)

    def labels(self, name: str = "test") -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The labels of split ``name`` as the pair receives them (None where it takes none)
        and as class indices (None where the data set has none)."""
        labels = split_labels(self.data, name, self.config, self.pair)
        if labels is not None:
            return labels
        classes = self.data.split_labels(name) if self.data.labels is not None else None
        return None, classes

    def __repr__(self) -> str:
        return (
            f"Run({str(self.path)!r}, pair={self.config.pair or self.config.model!r}, "
            f"dataset={self.config.dataset!r}, epoch={self.epoch}, "
            f"checkpoint={self.checkpoint!r}, device={str(self.device)!r})"
        )


def load_run(
    path: str | os.PathLike,
    *,
    checkpoint: str = BEST,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
) -> Run:
    """Reopen the run directory ``path``: its pair rebuilt (or ``pair``, given from Python)
    with the parameters of ``checkpoint`` (``best.pt``, or ``checkpoint.pt``), its data set,
    config and history, on the run's device (CPU where it trained on a GPU that is not
    here) or ``device``.

    A pair recorded as ``FILE.py:NAME`` is imported from that file once per process
    (:func:`pyro_vae.pairs.load_object`). Pyro's global param store is cleared first and
    then holds this pair's parameters."""
    run_dir = Path(path)
    config = read_config(run_dir)
    if data_dir is not None:
        config.data_dir = data_dir
    torch_device = (
        resolve_device(device) if device else resolve_device(config.device, fall_back_to_cpu=True)
    )
    pyro.set_rng_seed(config.seed)
    built, info, data, state = restore_pair(run_dir, config, torch_device, pair, checkpoint)
    return Run(run_dir, built, info, config, data, state, torch_device, checkpoint)


def restore_run(
    run_dir: str | os.PathLike,
    *,
    split: str = "test",
    checkpoint: str = BEST,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
) -> RestoredRun:
    """:func:`load_run` and the split ``split`` of it, checked to be non-empty."""
    run = load_run(run_dir, checkpoint=checkpoint, device=device, data_dir=data_dir, pair=pair)
    return restored_split(run, split)


def restored_split(run: Run, split: str) -> RestoredRun:
    """The split ``split`` of a reopened run, with its labels; an empty split is refused."""
    x = run.split(split)
    if x.shape[0] == 0:
        raise ConfigError(
            f"--split {split}: the run's {split} split is empty (it trained with --valid-size "
            f"{run.config.valid_size}); choose --split test or train"
        )
    encoded, classes = run.labels(split)
    return RestoredRun(run.pair, run.info, x, run.state, run.config.dataset, run.device,
                       run.config, encoded, classes, run)  # fmt: skip
