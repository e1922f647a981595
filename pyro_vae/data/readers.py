"""Readers of the named sets' file formats: IDX (MNIST, Fashion-MNIST), Larochelle's .amat
text (binarized MNIST), the Frey Face .mat file and scikit-learn's digits. Each set's
reader returns its splits and, where the files carry them, their labels.

References:
    LeCun et al. (1998), MNIST. Xiao et al. (2017), Fashion-MNIST.
    Larochelle & Murray (2011), the fixed binarization of MNIST.
    Kingma & Welling (2014), the Frey Face set.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pyro_vae.data.checks import _read_bytes
from pyro_vae.data.errors import DataError
from pyro_vae.data.pixels import PIXEL_LEVELS
from pyro_vae.data.splits import SplitLabels, Splits, _split_tail


def _scale_bytes(images: np.ndarray) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1], flattened to (N, D)."""
    return (images.astype(np.float32) / np.float32(PIXEL_LEVELS)).reshape(len(images), -1)


IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
MNIST_NUM_VALID = 10_000
MNIST_NUM_CLASSES = 10


def read_idx_images(path: Path, image_size: tuple[int, int] = (28, 28)) -> np.ndarray:
    """uint8 images (N, H, W) from an IDX image file (gzipped or not)."""
    content = _read_bytes(path)
    if len(content) < 16:
        raise DataError(f"{path} is too short ({len(content)} bytes) to be an IDX image file")
    magic, count, height, width = (int.from_bytes(content[i : i + 4], "big") for i in (0, 4, 8, 12))
    if magic != IDX_IMAGES_MAGIC:
        raise DataError(
            f"{path} is not an IDX image file: magic number {magic}, expected {IDX_IMAGES_MAGIC} "
            "(is it a labels file, or a different format?)"
        )
    if (height, width) != image_size:
        raise DataError(f"{path} holds {height}x{width} images, expected {image_size}")
    expected = 16 + count * height * width
    if len(content) != expected:
        raise DataError(
            f"{path} has {len(content)} bytes but its header promises {count} images of "
            f"{height}x{width} ({expected} bytes); the file is truncated or corrupt. "
            "Delete it and fetch it again (--download)."
        )
    return np.frombuffer(content, dtype=np.uint8, offset=16).reshape(count, height, width)


def read_idx_labels(path: Path) -> np.ndarray:
    """int64 class labels (N,) from an IDX label file (gzipped or not): one byte per item."""
    content = _read_bytes(path)
    if len(content) < 8:
        raise DataError(f"{path} is too short ({len(content)} bytes) to be an IDX label file")
    magic, count = (int.from_bytes(content[i : i + 4], "big") for i in (0, 4))
    if magic == IDX_IMAGES_MAGIC:
        raise DataError(
            f"{path} is not an IDX label file: magic number {magic} marks an IDX image file "
            f"(expected {IDX_LABELS_MAGIC}). Were the images and labels files swapped? The "
            "labels are *-labels-idx1-ubyte.gz."
        )
    if magic != IDX_LABELS_MAGIC:
        raise DataError(
            f"{path} is not an IDX label file: magic number {magic}, expected "
            f"{IDX_LABELS_MAGIC} (a different format, or a corrupt file?)"
        )
    if len(content) != 8 + count:
        raise DataError(
            f"{path} has {len(content)} bytes but its header promises {count} labels "
            f"({8 + count} bytes); the file is truncated or corrupt. "
            "Delete it and fetch it again (--download)."
        )
    return np.frombuffer(content, dtype=np.uint8, offset=8).astype(np.int64)


def _read_labels_of(labels_path: Path, images_path: Path, num_images: int) -> np.ndarray:
    """The labels of an IDX image file: one per image, each a class index below 10."""
    labels = read_idx_labels(labels_path)
    if len(labels) != num_images:
        raise DataError(
            f"{labels_path} holds {len(labels)} labels but {images_path} holds {num_images} "
            "images; each image needs one label. The two files are from different sets or "
            "versions: fetch both again (--download) from the same source."
        )
    if labels.max(initial=0) >= MNIST_NUM_CLASSES:
        raise DataError(
            f"{labels_path} holds label {labels.max()}, but the classes are "
            f"0..{MNIST_NUM_CLASSES - 1}; the file is corrupt or from another set. "
            "Delete it and fetch it again (--download)."
        )
    return labels


def _read_idx_splits(paths: Mapping[str, Path]) -> tuple[Splits, SplitLabels | None]:
    """MNIST-style sets: train = first 50000 train images, valid = last 10000, test = t10k.

    The labels are split the same way; without both label files the images come unlabelled.
    """
    train_images = read_idx_images(paths["train_images"])
    test_images = read_idx_images(paths["test_images"])
    if len(train_images) <= MNIST_NUM_VALID:
        raise DataError(
            f"{paths['train_images']} has {len(train_images)} images; need more than "
            f"{MNIST_NUM_VALID} (the last {MNIST_NUM_VALID} become the validation split)"
        )
    train = _scale_bytes(train_images[:-MNIST_NUM_VALID])
    valid = _scale_bytes(train_images[-MNIST_NUM_VALID:])
    splits = (train, valid, _scale_bytes(test_images))
    if "train_labels" not in paths or "test_labels" not in paths:
        return splits, None
    train_labels = _read_labels_of(paths["train_labels"], paths["train_images"], len(train_images))
    test_labels = _read_labels_of(paths["test_labels"], paths["test_images"], len(test_images))
    labels = (train_labels[:-MNIST_NUM_VALID], train_labels[-MNIST_NUM_VALID:], test_labels)
    return splits, labels


def read_amat(path: Path, dim: int = 784) -> np.ndarray:
    """float32 rows (N, dim) of 0/1 values from a Larochelle-style .amat text file (or .amat.gz).

    Parsed from the raw bytes rather than with np.loadtxt, which is ~100x slower here.
    """
    content = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    values = _amat_canonical_values(content, dim)
    if values is None:  # not "d d ... d\n" rows: take the slower line-by-line route
        values = _amat_values_by_line(content, dim, path)
    digits = values - np.uint8(ord("0"))  # uint8 arithmetic wraps, so other bytes become > 1
    if (digits > 1).any():
        raise DataError(
            f"{path} holds characters other than 0, 1 and whitespace; expected one row per line "
            f"of {dim} space-separated 0/1 values. Is it the right file, and not corrupt?"
        )
    return digits.astype(np.float32)


def _amat_canonical_values(content: np.ndarray, dim: int) -> np.ndarray | None:
    """Digit bytes (N, dim) when every row is exactly `dim` single characters, spaces and \\n."""
    row_bytes = 2 * dim
    if content.size == 0 or content.size % row_bytes:
        return None
    table = content.reshape(-1, row_bytes)
    if not ((table[:, 1:-1:2] == ord(" ")).all() and (table[:, -1] == ord("\n")).all()):
        return None
    return table[:, ::2]


def _amat_values_by_line(content: np.ndarray, dim: int, path: Path) -> np.ndarray:
    """Digit bytes (N, dim) from rows with any whitespace; one-character tokens only."""
    rows = [line.split() for line in content.tobytes().splitlines() if line.strip()]
    for number, row in enumerate(rows, start=1):
        if len(row) != dim or any(len(token) != 1 for token in row):
            raise DataError(
                f"{path}: row {number} has {len(row)} values, expected {dim} single 0/1 digits "
                "(the file is truncated or corrupt)"
            )
    joined = b"".join(b"".join(row) for row in rows)
    return np.frombuffer(joined, dtype=np.uint8).reshape(len(rows), dim)


def _read_amat_splits(paths: Mapping[str, Path]) -> tuple[Splits, None]:
    """Binarized MNIST: three ready-made splits of 0/1 rows, without labels."""
    splits = read_amat(paths["train"]), read_amat(paths["valid"]), read_amat(paths["test"])
    return splits, None


FREY_IMAGE_SIZE = (28, 20)
FREY_NUM_VALID = 200
FREY_NUM_TEST = 200


def read_frey_mat(path: Path) -> np.ndarray:
    """uint8 Frey faces (N, 28, 20) from the MATLAB file holding `ff` of shape (560, N)."""
    import scipy.io

    try:
        contents = scipy.io.loadmat(path)
    except Exception as error:  # scipy raises many unrelated types for a damaged .mat file
        raise DataError(
            f"{path} could not be read as a MATLAB .mat file ({type(error).__name__}: {error}); "
            "it is truncated or corrupt. Delete it and fetch it again (--download)."
        ) from error
    if "ff" not in contents:
        names = sorted(key for key in contents if not key.startswith("__"))
        raise DataError(f"{path} has no variable 'ff' (it holds {names}); is it frey_rawface.mat?")
    faces = np.asarray(contents["ff"])
    pixels = FREY_IMAGE_SIZE[0] * FREY_IMAGE_SIZE[1]
    if faces.ndim != 2 or faces.shape[0] != pixels or faces.dtype != np.uint8:
        raise DataError(
            f"{path}: 'ff' is {faces.dtype} of shape {faces.shape}, expected uint8 ({pixels}, N)"
        )
    return faces.T.reshape(-1, *FREY_IMAGE_SIZE)


def _read_frey_splits(paths: Mapping[str, Path]) -> tuple[Splits, None]:
    """Frey Face, in video order: the last 200 frames test, the 200 before them valid; no labels."""
    faces = _scale_bytes(read_frey_mat(paths["faces"]))
    return _split_tail(faces, FREY_NUM_VALID, FREY_NUM_TEST, str(paths["faces"])), None


DIGITS_NUM_TRAIN = 1297
DIGITS_NUM_VALID = 200
DIGITS_LEVELS = 16.0  # scikit-learn's digits count 0..16 pixels of a 4x4 block


def _digits_table() -> np.ndarray:
    """scikit-learn's digits file as it ships, (1797, 65): 64 pixel counts and the digit.

    Read straight from the installed package's ``digits.csv.gz``, as ``load_digits`` reads it,
    without importing scikit-learn (about a second at every start of a command on digits);
    through ``load_digits`` where the file is not where this looks."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as handle:
                return np.loadtxt(handle, delimiter=",")
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.column_stack([digits.data, digits.target])


def _read_digits_splits(paths: Mapping[str, Path]) -> tuple[Splits, SplitLabels]:
    """scikit-learn's 8x8 digits, /16, in file order: first 1297 train, next 200 valid, last 300.

    No shuffle: the file is roughly grouped by writer, so the test digits come mostly from
    writers unseen in training, which makes the split a fair held-out test. The labels are
    scikit-learn's `target`, split the same way.
    """
    table = _digits_table()
    images = (table[:, :-1] / DIGITS_LEVELS).astype(np.float32)
    labels = table[:, -1].astype(np.int64)
    end_valid = DIGITS_NUM_TRAIN + DIGITS_NUM_VALID

    def in_file_order(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return rows[:DIGITS_NUM_TRAIN], rows[DIGITS_NUM_TRAIN:end_valid], rows[end_valid:]

    return in_file_order(images), in_file_order(labels)
