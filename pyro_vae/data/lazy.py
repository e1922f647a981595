"""Memory-mapped data sets (--lazy): when rows stay in their file instead of memory, and the
checks that read such rows a block at a time so that none of them copies the whole set.

A lazy split is a float32 tensor over a NumPy memmap opened copy-on-write (mode "c"): pages
are read from the file as batches index them, and the tensor is writable (torch.from_numpy
warns on read-only arrays) without any write reaching the file. What would copy the whole set
(a dtype conversion, a division by a pixel scale, a static binarization, --valid-size's re-cut
of train + valid) is refused with a message instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pyro_vae.data.errors import DataError, logger

#: --lazy: auto memory-maps a set whose float32 rows pass a quarter of the memory available.
LAZY_MODES = ("auto", "on", "off")

#: Rows read at a time by the checks that scan a memory-mapped set.
_SCAN_ROWS = 4096


def _check_lazy_mode(lazy: str) -> None:
    """Raise DataError for a --lazy value that is not one of LAZY_MODES."""
    if lazy not in LAZY_MODES:
        raise DataError(f"--lazy {lazy!r}: choose one of {', '.join(LAZY_MODES)}")


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable in /proc/meminfo, else the free pages)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def wants_lazy(lazy: str, num_bytes: int) -> bool:
    """Whether rows of `num_bytes` (as float32) are memory-mapped: --lazy on, or auto and more
    than a quarter of the memory available."""
    _check_lazy_mode(lazy)
    if lazy == "auto":
        return num_bytes > available_memory() // 4
    return lazy == "on"


def open_lazy_npy(path: Path) -> np.ndarray:
    """The array in an .npy file, memory-mapped copy-on-write."""
    from pyro_vae.data.arrays import _PICKLED

    try:
        return np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError) as error:
        if "Python objects" in str(error) or "allow_pickle" in str(error):  # an object array
            raise DataError(f"{path} {_PICKLED}") from error
        raise DataError(f"{path} could not be memory-mapped ({error}); is it corrupt?") from error


def lazy_rows(array: np.ndarray, path: Path, divisor: float | None, forced: bool) -> bool:
    """Whether a memory-mapped .npy array can serve as rows without a whole copy: float32,
    C-contiguous, nothing to divide by. Otherwise --lazy on is an error, and auto (a large
    file) loads it whole with a warning saying how to make it lazy."""
    problems = []
    if array.dtype != np.float32:
        problems.append(f"its dtype is {array.dtype}, not float32")
    if divisor is not None:
        problems.append(f"--pixel-scale divides it by {divisor:g}")
    if not array.flags.c_contiguous:
        problems.append("it is stored in Fortran order")
    if not problems:
        return True
    remedy = (
        "save the rows as float32, already scaled, in C order, e.g. "
        "np.save('x32.npy', np.ascontiguousarray(x / 255, dtype=np.float32))"
    )
    if forced:
        raise DataError(
            f"--lazy on: {path} cannot be used in place, since {' and '.join(problems)}: "
            f"converting it would copy the whole array into memory. To map it, {remedy}; "
            "or pass --lazy off to load it whole."
        )
    logger.warning(
        "%s is large but is loaded whole (a copy of %.1f GB), since %s; to memory-map it, %s",
        path,
        array.size * 4 / 1e9,
        " and ".join(problems),
        remedy,
    )
    return False


def check_finite_rows(rows: np.ndarray, source: str) -> None:
    """Raise DataError when rows hold NaN or inf, reading a block of rows at a time."""
    num_bad = 0
    for start in range(0, len(rows), _SCAN_ROWS):
        num_bad += int((~np.isfinite(rows[start : start + _SCAN_ROWS])).sum())
    if num_bad:
        raise DataError(
            f"{source} has {num_bad} non-finite values (NaN or inf). Drop or impute those "
            "examples (e.g. np.nan_to_num, or filter rows with np.isfinite) and save again."
        )


def refuse_whole_copy(name: str, what: str, remedy: str) -> DataError:
    """The error for an operation that would copy a memory-mapped set whole."""
    return DataError(
        f"data set {name!r} is memory-mapped (--lazy), and {what} would copy all of it into "
        f"memory; {remedy}, or pass --lazy off to load it whole."
    )


def load_lazy_npy(
    path: Path, pixel_scale: str, lazy: str
) -> tuple[tuple[np.ndarray, ...], tuple[int, int, int]] | None:
    """The splits (the 80/10/10 cut of `_array_splits`, as views of the file) and image shape
    of an .npy file to memory-map, or None when it is to be loaded whole (--lazy off, or auto
    and small, or auto and not usable in place)."""
    from pyro_vae.data.arrays import _array_splits, _image_shape_of
    from pyro_vae.data.checks import _check_array_file_magic
    from pyro_vae.data.pixels import _ARRAY_DIVISORS

    _check_lazy_mode(lazy)
    if lazy == "off":
        return None
    _check_array_file_magic(path)
    try:
        array = open_lazy_npy(path)
    except DataError:
        if lazy == "on":
            raise
        return None  # auto: loaded whole, which says what is wrong with the file
    if not wants_lazy(lazy, array.size * 4):
        return None
    divisor = _ARRAY_DIVISORS[pixel_scale](array)
    if not lazy_rows(array, path, divisor, forced=lazy == "on"):
        return None
    splits = _array_splits(array, str(path))
    image_shape = _image_shape_of(array.shape[1:], str(path))
    width = int(np.prod(array.shape[1:]))
    rows = tuple(split.reshape(len(split), width) for split in splits)
    for split, part in zip(("train", "valid", "test"), rows):
        check_finite_rows(part, f"{path} array {split!r}")
    return rows, image_shape
