"""Training as a function of the objects a user holds: ``fit(pair, data, **settings)``.

:func:`fit` trains a pair object in place on a named data set, a
:class:`~pyro_vae.data.Dataset` or plain tensors, with the settings of
:class:`~pyro_vae.runs.config.TrainConfig` as keyword arguments. With ``out`` it writes today's run
directory (checkpoints, lock, exact resume), so every command reopens it; with ``out=None``
nothing is left on disk. Training with your own ``SVI.step`` loop is just as welcome: no
analysis needs this function.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.data import SPLITS, Dataset
from pyro_vae.runs.config import FIELDS, ConfigError, TrainConfig
from pyro_vae.training.train import RunResult, train

#: Where tensors given to :func:`fit` are kept in a run directory, so it reopens anywhere.
DATA_FILE = "data.npz"

#: TrainConfig fields that :func:`fit` sets from its own arguments.
OWN_ARGUMENTS = ("out", "dataset", "pair", "model", "guide")


def _check_settings(settings: dict[str, Any]) -> None:
    unknown = sorted(name for name in settings if name not in FIELDS or name in OWN_ARGUMENTS)
    if unknown:
        taken = sorted(name for name in FIELDS if name not in OWN_ARGUMENTS)
        raise ConfigError(
            f"fit: unknown setting(s) {unknown}; fit takes the pair, the data and out= "
            f"itself, and these TrainConfig settings as keywords: {', '.join(taken)}"
        )


def _as_rows(name: str, value: Any) -> np.ndarray:
    if not isinstance(value, torch.Tensor | np.ndarray):
        raise ConfigError(f"fit: {name} must be a tensor or array, got {type(value).__name__}")
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
    if array.ndim < 2:
        raise ConfigError(
            f"fit: {name} has shape {array.shape}; expected (num_points, ...), one row per point"
        )
    return array.astype(np.float32, copy=False)


def _write_arrays(path: Path, splits: dict[str, Any], labels: dict[str, Any] | None) -> str:
    """Save splits (and labels) as the .npz that :func:`pyro_vae.data.load_dataset` reads."""
    arrays = {split: _as_rows(split, value) for split, value in splits.items()}
    shapes = {split: array.shape[1:] for split, array in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ConfigError(f"fit: the splits disagree on the shape of one point: {shapes}")
    if labels is not None:
        for split, value in labels.items():
            array = np.asarray(torch.as_tensor(value).cpu(), dtype=np.int64)
            if array.shape != (arrays[split].shape[0],):
                raise ConfigError(
                    f"fit: labels of {split!r} have shape {array.shape}; expected "
                    f"({arrays[split].shape[0]},), one class index per point"
                )
            arrays[f"y_{split}"] = array
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return str(path.resolve())


def _data_source(data: Any, valid: Any, test: Any, labels: Any, folder: Path) -> str:
    """The ``dataset`` setting for ``data``: a name or file as given; tensors and a
    :class:`Dataset` saved as ``folder/data.npz``. Tensors without ``valid``/``test`` get
    empty splits: no validation (best.pt follows the last epoch) and no test points."""
    if isinstance(data, str | os.PathLike):
        if valid is not None or test is not None or labels is not None:
            raise ConfigError(
                "fit: valid=, test= and labels= go with data given as tensors; a named data "
                "set brings its own splits and labels"
            )
        return str(data)
    if isinstance(data, Dataset):
        splits = {split: getattr(data, split) for split in SPLITS}
        return _write_arrays(folder / DATA_FILE, splits, data.labels)
    x = data
    empty = x[:0]
    splits = {"train": x, "valid": empty if valid is None else valid,
              "test": empty if test is None else test}  # fmt: skip
    split_labels = None
    if labels is not None:
        if not isinstance(labels, dict) and (valid is not None or test is not None):
            raise ConfigError(
                "fit: with valid= or test= given, give their labels too: "
                "labels={'train': ..., 'valid': ..., 'test': ...}"
            )
        labels = dict(labels) if isinstance(labels, dict) else {"train": labels}
        if "train" not in labels or not set(labels) <= set(SPLITS):
            raise ConfigError("fit: labels= is a tensor for x, or a dict with train/valid/test")
        split_labels = {
            split: labels.get(split, torch.zeros(0, dtype=torch.int64)) for split in SPLITS
        }
    return _write_arrays(folder / DATA_FILE, splits, split_labels)


def fit(
    pair: Any,
    data: Any = "digits",
    *,
    out: str | os.PathLike | None = None,
    valid: Any = None,
    test: Any = None,
    labels: Any = None,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
    loggers: Sequence[Any] = (),
    **settings: Any,
) -> RunResult:
    """Train ``pair`` (an object with ``model`` and ``guide``) in place by SVI.

    ``data``: a data set name (``pyro-vae list``) or an .npy/.npz path; a
    :class:`~pyro_vae.data.Dataset`; or a tensor of training points ``x`` (N, ...), with
    optional ``valid`` and ``test`` tensors and ``labels`` (class indices of ``x``, or a dict
    with ``train``/``valid``/``test``). ``settings`` are :class:`~pyro_vae.runs.config.TrainConfig`
    fields (``epochs=``, ``lr=``, ``objective=``, ``batch_size=``, ...).

    ``out``: the run directory to write (checkpoints, ``metrics.csv``, ``config.toml``;
    ``resume=True`` continues it exactly); tensors are saved there as ``data.npz``, so
    ``pyro-vae evaluate OUT`` reopens the run from anywhere. ``out=None``: the run lives in
    a temporary folder that is removed when training ends, and the trained pair is what you
    keep. ``on_epoch(row)`` gets each epoch's metrics, ``on_step(metrics)`` each step's.
    ``loggers``: logger objects (``TensorBoardLogger(log_dir)``, ``MLflowLogger(...)``) that
    get the run's metrics, sample grids and configuration, as ``log=`` settings' loggers do.

    Returns the :class:`~pyro_vae.training.train.RunResult` (``pair``, ``history``, ``config``, and
    ``run_dir``, None without ``out``).
    """
    _check_settings(settings)
    if not (callable(getattr(pair, "model", None)) and callable(getattr(pair, "guide", None))):
        raise ConfigError(
            f"fit: {type(pair).__name__} is not a pair; give an object with model and guide "
            "methods (train plain model/guide functions with pyro-vae train --model/--guide)"
        )
    if out is None and resume:
        raise ConfigError("fit: resume=True continues a run directory; give out=")
    with contextlib.ExitStack() as stack:
        if out is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pyro_vae_")))
            run_dir = folder / "run"
        else:
            folder = run_dir = Path(out)
        dataset = _data_source(data, valid, test, labels, folder)
        config = TrainConfig(dataset=dataset, out=str(run_dir), **settings)
        result = train(config, pair=pair, resume=resume, progress=progress, on_epoch=on_epoch,
                       on_step=on_step, loggers=loggers)  # fmt: skip
    if out is None:
        result.run_dir = None
        result.config.out = None
    return result


__all__ = ["DATA_FILE", "fit"]
