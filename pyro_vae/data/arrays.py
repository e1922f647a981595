"""The user's own arrays: .npy and .npz files, read without unpickling anything, split into
train, valid and test, with the labels an .npz holds as y_train, y_valid, y_test."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pyro_vae.data.checks import _check_array_file_magic
from pyro_vae.data.errors import DataError, logger
from pyro_vae.data.pixels import _ARRAY_DIVISORS
from pyro_vae.data.splits import SPLITS, SplitLabels, Splits, _split_tail

ARRAY_SUFFIXES = (".npy", ".npz")


def _check_rows(array: np.ndarray, source: str) -> None:
    """An array of examples has a leading axis of rows (points) and at least one more."""
    if array.ndim >= 2:
        return
    what = "a single number" if array.ndim == 0 else "one axis only"
    raise DataError(
        f"{source} has shape {array.shape}: {what}, but pyro_vae reads the rows of an array "
        "as the data points, so it needs (N, D) (or (N, H, W), (N, C, H, W)). Reshape it "
        "and save it again: x.reshape(N, D) for N points of D values each, e.g. "
        "x.reshape(-1, 1) if every value is a point of its own"
    )


def _array_splits(array: np.ndarray, source: str) -> Splits:
    """One array split in order: last 10% test, the 10% before it valid, the rest train."""
    _check_rows(array, source)
    num_held_out = len(array) // 10
    if num_held_out == 0:
        raise DataError(
            f"{source} has {len(array)} rows; need at least 10 to split off valid and test. "
            "Save more rows, or save train/valid/test arrays in an .npz."
        )
    return _split_tail(array, num_held_out, num_held_out, source)


def _npz_splits(
    arrays: Mapping[str, np.ndarray], path: Path
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """train/valid/test arrays from an .npz (named splits, or one array split 80/10/10), and
    their labels from y_train/y_valid/y_test (None when there are none).

    A missing 'valid' is the last tenth of 'train', and its labels the last tenth of 'y_train'.
    """
    if "train" not in arrays:
        if len(arrays) == 1:
            (key,) = arrays
            return dict(zip(SPLITS, _array_splits(arrays[key], f"{path}[{key!r}]"))), None
        raise DataError(
            f"{path} holds arrays {sorted(arrays)}; expected 'train' and 'test' "
            "(and optionally 'valid'), or a single array to split 80/10/10"
        )
    if "test" not in arrays:
        raise DataError(f"{path} has a 'train' array but no 'test' array; add one")
    splits = {split: arrays[split] for split in SPLITS if split in arrays}
    labels = _npz_labels(arrays, splits, path)
    if "valid" not in splits:
        num_valid = len(splits["train"]) // 10
        if num_valid == 0:
            raise DataError(f"{path}: 'train' has too few rows to split off a 'valid' array")
        for named in [splits] if labels is None else [splits, labels]:
            train = named["train"]
            named["train"], named["valid"] = train[:-num_valid], train[-num_valid:]
    return splits, labels


def _label_key(split: str) -> str:
    """The name of a split's label array in an .npz: y_train, y_valid, y_test."""
    return f"y_{split}"


def _npz_labels(
    arrays: Mapping[str, np.ndarray], splits: Mapping[str, np.ndarray], path: Path
) -> dict[str, np.ndarray] | None:
    """int64 class labels (N,) of every split in `splits` from the .npz's y arrays, or None.

    Labels come for every split present or for none: a partial set is an error, not a guess.
    """
    stray = [_label_key(split) for split in SPLITS if split not in splits]
    stray = [key for key in stray if key in arrays]
    if stray:
        raise DataError(
            f"{path} has label array(s) {stray} but no images for them to label "
            f"(no {[key[2:] for key in stray]} array); drop them or add the images"
        )
    given = [_label_key(split) for split in splits if _label_key(split) in arrays]
    if not given:
        return None
    lacking = [_label_key(split) for split in splits if _label_key(split) not in arrays]
    if lacking:
        raise DataError(
            f"{path} has label array(s) {given} but not {lacking}: labels go with every split "
            f"or none. Save {', '.join(map(_label_key, splits))} beside "
            f"{', '.join(splits)}, or drop the y arrays."
        )
    return {
        split: _class_indices(arrays[_label_key(split)], len(images), path, split)
        for split, images in splits.items()
    }


def _class_indices(array: np.ndarray, num_rows: int, path: Path, split: str) -> np.ndarray:
    """An .npz label array checked and converted to int64 class indices (N,).

    Integer dtypes and bools are taken as they are; floats only when every value is a whole
    number (1.0, 7.0), as arrays saved through a float pipeline often are.
    """
    source = f"{path} array {_label_key(split)!r}"
    if array.ndim != 1:
        how = (
            f"{_label_key(split)}.reshape(-1)"
            if array.ndim == 2 and array.shape[1] == 1
            else f"{_label_key(split)}.argmax(1) for one-hot or per-class rows"
        )
        raise DataError(
            f"{source} has shape {array.shape}; labels must be class indices of shape (N,), "
            f"one integer per example. Save the indices instead, e.g. {how}."
        )
    if len(array) != num_rows:
        raise DataError(
            f"{source} has {len(array)} labels but {split!r} has {num_rows} examples; each "
            "example needs exactly one label, in the same order"
        )
    integer = np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_
    if not (integer or np.issubdtype(array.dtype, np.floating)):
        raise DataError(
            f"{source} has dtype {array.dtype}; expected integer class indices 0..K-1. Class "
            "names? Turn them into indices first, e.g. np.unique(y, return_inverse=True)[1]."
        )
    if not integer:
        fractional = ~np.isfinite(array) | (array != np.round(array))
        if fractional.any():
            raise DataError(
                f"{source} holds {int(fractional.sum())} values that are not whole numbers "
                f"(e.g. {array[fractional][0].item()}); expected integer class indices 0..K-1. "
                "Save class indices, not probabilities or scores."
            )
    labels = array.astype(np.int64)
    if labels.min(initial=0) < 0:
        raise DataError(
            f"{source} holds negative labels (smallest {labels.min()}); expected class "
            "indices 0..K-1 (K = the number of classes)"
        )
    return labels


def _num_classes_seen(labels: Mapping[str, np.ndarray]) -> int:
    """1 + the largest label in any split: the classes a user's labels imply."""
    return 1 + max(int(split_labels.max(initial=0)) for split_labels in labels.values())


def _image_shape_of(trailing: tuple[int, ...], source: str) -> tuple[int, int, int]:
    """(C, H, W) from an array's per-example dims: (D,), (H, W) or (C, H, W)."""
    shapes = {1: lambda d: (1, 1, d[0]), 2: lambda d: (1, *d), 3: lambda d: tuple(d)}
    if len(trailing) not in shapes:
        raise DataError(
            f"{source}: each example has shape {trailing}; expected (D,), (H, W) or (C, H, W) "
            "after the leading example dimension"
        )
    return shapes[len(trailing)](trailing)


def _as_float_rows(array: np.ndarray, source: str, divisor: float | None = None) -> np.ndarray:
    """An (N, ...) array of numbers as float32 (N, D), divided by `divisor` when one is given.

    x_row = float32(x) / divisor, or float32(x) as stored when `divisor` is None, so integer
    counts arrive as exactly those counts (0, 3, 17). Which divisor `--pixel-scale` picks is
    decided by the caller (see `_ARRAY_DIVISORS`).
    """
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise DataError(f"{source} has dtype {array.dtype}; expected numbers (integer or float)")
    # the width is named: -1 cannot be inferred for a split of no rows (fit's empty valid)
    rows = array.astype(np.float32).reshape(len(array), int(np.prod(array.shape[1:])))
    if divisor is not None:
        rows /= np.float32(divisor)
    num_bad = int((~np.isfinite(rows)).sum())
    if num_bad:
        raise DataError(
            f"{source} has {num_bad} non-finite values (NaN or inf). Drop or impute those "
            "examples (e.g. np.nan_to_num, or filter rows with np.isfinite) and save again."
        )
    return rows


_PICKLED = (
    "holds Python objects (a pickled object array), which are never loaded since unpickling "
    "can run code; save a numeric array instead (e.g. np.asarray(x, dtype=np.float32))"
)


def _read_npy(path: Path) -> np.ndarray:
    """The array in an .npy file."""
    _check_array_file_magic(path)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        if "allow_pickle" in str(error):  # numpy's refusal of an object array
            raise DataError(f"{path} {_PICKLED}") from error
        raise DataError(f"{path} could not be read as .npy ({error}); is it corrupt?") from error


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array in an .npz file, by name."""
    _check_array_file_magic(path)
    key = None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {}
            for key in archive.files:
                arrays[key] = archive[key]
            return arrays
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if "allow_pickle" in str(error):  # numpy's refusal of an object array
            raise DataError(f"{path}: array {key!r} {_PICKLED}") from error
        raise DataError(f"{path} could not be read as .npz ({error}); is it corrupt?") from error


def _load_array_file(
    path: Path, pixel_scale: str = "auto"
) -> tuple[Splits, SplitLabels | None, tuple[int, int, int], float | None]:
    """Splits, their labels (or None), image shape and the divisor applied (or None) from a
    user's .npy or .npz file.

    The divisor comes from `_ARRAY_DIVISORS[pixel_scale]`, one for all splits: splits that
    `auto` would scale differently (uint8 images beside floats) are an error, not a mix.
    Labels come only from an .npz's y_train/y_valid/y_test arrays.
    """
    labels = None
    if path.suffix.lower() == ".npy":
        named = dict(zip(SPLITS, _array_splits(_read_npy(path), str(path))))
    else:
        named, labels = _npz_splits(_read_npz(path), path)
    for split, array in named.items():
        _check_rows(array, f"{path} array {split!r}")
    trailing = {split: array.shape[1:] for split, array in named.items()}
    if len(set(trailing.values())) != 1:
        raise DataError(f"{path}: the splits disagree on the example shape: {trailing}")
    image_shape = _image_shape_of(trailing["train"], str(path))
    divisors = {split: _ARRAY_DIVISORS[pixel_scale](array) for split, array in named.items()}
    if len(set(divisors.values())) != 1:
        dtypes = {split: str(array.dtype) for split, array in named.items()}
        raise DataError(
            f"{path}: --pixel-scale {pixel_scale} would scale the splits differently "
            f"(dtypes {dtypes}, divisors {divisors}). Save every split with the same dtype, "
            "or pass --pixel-scale 255 or none to treat them alike."
        )
    divisor = divisors["train"]
    if divisor is None and named["train"].dtype == np.uint8 and named["train"].max(initial=0) > 1:
        logger.info(
            "%s: flat uint8 rows kept as stored (counts, max %d); pass --pixel-scale 255 if "
            "they are 0-255 pixels",
            path,
            named["train"].max(),
        )
    splits = tuple(
        _as_float_rows(named[split], f"{path} array {split!r}", divisor) for split in SPLITS
    )
    split_labels = None if labels is None else tuple(labels[split] for split in SPLITS)
    return splits, split_labels, image_shape, divisor


def _resolve_array_path(name: str, roots: list[Path]) -> Path:
    """The user's array file: the path as given, else relative to each search root."""
    given = Path(name).expanduser()
    candidates = [given] if given.is_absolute() else [given, *(root / given for root in roots)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = "\n".join(f"  {candidate.resolve()}" for candidate in candidates)
    raise DataError(
        f"data file {name!r} not found. Searched:\n{searched}\n"
        "Pass an existing .npy/.npz/.csv path (or a folder of images), or a path relative to "
        "--data-dir / PYRO_VAE_DATA_DIR."
    )
