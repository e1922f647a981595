"""The three splits every data set has (train, valid, test), the arrays that hold them,
and cutting rows into them in file order."""

from __future__ import annotations

import numpy as np

from pyro_vae.data.errors import DataError

SPLITS = ("train", "valid", "test")

# (train, valid, test), each (N, D) float32.
Splits = tuple[np.ndarray, np.ndarray, np.ndarray]
# (train, valid, test) class indices, each (N,) int64, in the row order of the splits.
SplitLabels = tuple[np.ndarray, np.ndarray, np.ndarray]


def _split_tail(rows: np.ndarray, num_valid: int, num_test: int, source: str) -> Splits:
    """Split rows in order: the last `num_test` are test, the `num_valid` before them valid."""
    if len(rows) <= num_valid + num_test:
        raise DataError(
            f"{source} has {len(rows)} rows; need more than {num_valid + num_test} "
            f"({num_valid} for valid, {num_test} for test)"
        )
    end_train = len(rows) - num_valid - num_test
    return rows[:end_train], rows[end_train : len(rows) - num_test], rows[len(rows) - num_test :]


def _split_by_fractions(
    num_rows: int, valid_fraction: float, test_fraction: float, seed: int, source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of train, valid and test drawn by a permutation seeded with `seed`.

    Each held-out split takes round(N * fraction) rows (at least one for a fraction above 0);
    the indices of each split are sorted, so rows keep their order in the source.
    """
    counts = [
        max(1, round(num_rows * fraction)) if fraction > 0 else 0
        for fraction in (valid_fraction, test_fraction)
    ]
    if num_rows - sum(counts) < 2:
        raise DataError(
            f"{source} has {num_rows} row{'' if num_rows == 1 else 's'}; --valid-fraction "
            f"{valid_fraction:g} and --test-fraction {test_fraction:g} hold out {counts[0]} + "
            f"{counts[1]} of them, leaving fewer than 2 to train on. Add rows or lower the "
            "fractions."
        )
    order = np.random.default_rng(seed).permutation(num_rows)
    valid, test = order[: counts[0]], order[counts[0] : sum(counts)]
    train = order[sum(counts) :]
    return np.sort(train), np.sort(valid), np.sort(test)
