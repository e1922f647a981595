"""A CSV table as a data set: numeric columns as each point's values, an optional label
column (--label-column) as its class, rows split into train, valid and test by seeded
fractions."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pyro_vae.data.errors import DataError
from pyro_vae.data.splits import _split_by_fractions


class Table(NamedTuple):
    """A parsed table: float32 rows of each split, their int64 labels (None without
    --label-column) and the class names (the label column's values, sorted)."""

    splits: tuple[np.ndarray, np.ndarray, np.ndarray]
    labels: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    class_names: tuple[str, ...] | None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _label_index(first: list[str], label_column: str | None, path: Path) -> tuple[int | None, bool]:
    """The label column's index and whether the first row is a header.

    The first row is a header when it names the label column or holds a cell (other than the
    label column's) that is not a number. Without a header, --label-column is a 0-based index.
    """
    if label_column is not None and label_column in first:
        return first.index(label_column), True
    index = None
    if label_column is not None and label_column.isdigit() and int(label_column) < len(first):
        index = int(label_column)
    header = any(not _is_number(cell) for i, cell in enumerate(first) if i != index)
    if label_column is not None and index is None:
        named = f"its header names {first}" if header else "it has no header row"
        raise DataError(
            f"--label-column {label_column!r}: {path} has no such column ({named}); give a "
            "column's name from the header, or its 0-based index in a file without a header"
        )
    if header and index is not None:
        raise DataError(
            f"--label-column {label_column!r}: {path} has a header row {first}; name the "
            "label column as the header does"
        )
    return index, header


def _class_indices(values: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Label cells as class indices: the sorted distinct values (numerically when all are
    numbers) numbered from 0."""
    numeric = all(_is_number(value) for value in values)
    names = sorted(set(values), key=float if numeric else str)
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[value] for value in values], dtype=np.int64), tuple(names)


def load_table(
    path: Path,
    *,
    label_column: str | None = None,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> Table:
    """The rows of a comma-separated file as float32 values, split by seeded fractions.

    Raises DataError naming the file, line and column for a cell that is not a number, a
    row with another number of cells, or a label column that is not there.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            lines = [(number, row) for number, row in enumerate(csv.reader(handle), 1) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path} could not be read as a CSV table ({error})") from error
    if not lines:
        raise DataError(f"{path} is empty; a CSV table needs one row per point")
    first = [cell.strip() for cell in lines[0][1]]
    label_index, header = _label_index(first, label_column, path)
    names = first if header else [str(i) for i in range(len(first))]
    body = lines[1:] if header else lines
    width = len(first)
    values, labels = [], []
    for number, row in body:
        if len(row) != width:
            raise DataError(
                f"{path} line {number} has {len(row)} cells, but the first row has {width}; "
                "every row needs one value per column"
            )
        cells = [cell.strip() for cell in row]
        numbers = []
        for column, cell in enumerate(cells):
            if column == label_index:
                labels.append(cell)
                continue
            try:
                numbers.append(float(cell))
            except ValueError:
                raise DataError(
                    f"{path} line {number}, column {column + 1} ({names[column]!r}): {cell!r} "
                    "is not a number. Every column is a feature and must hold numbers; fix the "
                    "cell, drop the column, or name a class column with --label-column"
                ) from None
        values.append(numbers)
    num_features = width - (label_index is not None)
    rows = np.asarray(values, dtype=np.float32).reshape(len(values), num_features)
    if rows.shape[1] == 0:
        raise DataError(f"{path} has no feature columns besides the label column")
    if not np.isfinite(rows).all():
        raise DataError(f"{path} holds nan or inf values; drop or impute them and save again")
    parts = _split_by_fractions(len(rows), valid_fraction, test_fraction, seed, str(path))
    splits = tuple(rows[part] for part in parts)
    if label_index is None:
        return Table(splits, None, None)
    classes, class_names = _class_indices(labels)
    return Table(splits, tuple(classes[part] for part in parts), class_names)
