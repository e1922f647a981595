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
