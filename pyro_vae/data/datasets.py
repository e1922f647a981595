"""Data sets for the VAEs: a registry of named image sets, file lookup, checksums and minibatches.

Every named data set is one `DatasetSpec` entry in `DATASETS`; `load_dataset` finds its files in
the search roots (`--data-dir`, `$PYRO_VAE_DATA_DIR`, the cache), verifies their checksums,
optionally downloads what is missing, and returns a `Dataset` of flattened float32 tensors with,
where the files carry them, int64 class labels. A path ending in `.npy` or `.npz` loads the user's
own arrays instead (an .npz may hold labels as `y_train`, `y_valid`, `y_test`).

References:
    LeCun et al. (1998), MNIST. Xiao et al. (2017), Fashion-MNIST.
    Larochelle & Murray (2011), the fixed binarization of MNIST.
    Kingma & Welling (2014), the Frey Face set.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "DEFAULT_DATASET",
    "DataError",
    "DataFile",
    "Dataset",
    "DatasetSpec",
    "PIXEL_SCALES",
    "binarize_static",
    "cache_dir",
    "load_dataset",
    "minibatches",
    "search_roots",
]

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "digits"
SPLITS = ("train", "valid", "test")
ARRAY_SUFFIXES = (".npy", ".npz")
_CHUNK_BYTES = 1 << 20
_DOWNLOAD_TIMEOUT_S = 60

# (train, valid, test), each (N, D) float32.
Splits = tuple[np.ndarray, np.ndarray, np.ndarray]
# (train, valid, test) class indices, each (N,) int64, in the row order of the splits.
SplitLabels = tuple[np.ndarray, np.ndarray, np.ndarray]


class DataError(ValueError):
    """Bad or missing data; the message says what was wrong and what to do, naming file/flag."""


# --------------------------------------------------------------------------------------------
# The data set container


@dataclass(frozen=True, eq=False)
class Dataset:
    """Three flattened splits of one data set, with the image shape that unflattens a row.

    `pixel_scale` is the divisor the stored values were scaled by on loading (255.0 for 8-bit
    pixels, 16.0 for the digits' 0..16 levels), or None when they are kept as stored (counts,
    floats, 0/1 bits).

    `labels` holds one int64 tensor of class indices in [0, num_classes) per split, row i
    labelling row i of that split; None (and `num_classes` None) for a set without labels.
    `missing_labels_reason` says why labels are absent when that is the user's to fix (label
    files not found); `split_labels` raises it.
    """

    name: str
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    image_shape: tuple[int, int, int]
    binary: bool
    pixel_scale: float | None = None
    labels: dict[str, torch.Tensor] | None = None
    num_classes: int | None = None
    missing_labels_reason: str | None = None

    def __post_init__(self) -> None:
        size = int(np.prod(self.image_shape))
        for split in SPLITS:
            tensor = getattr(self, split)
            if tensor.dim() != 2 or tensor.shape[1] != size:
                raise DataError(
                    f"data set {self.name!r}: split {split!r} has shape {tuple(tensor.shape)}, "
                    f"expected (N, {size}) for image shape {self.image_shape}"
                )
        self._check_labels()

    def _check_labels(self) -> None:
        """Labels, when given: int64 (N_split,) per split, every value in [0, num_classes)."""
        if self.labels is None:
            if self.num_classes is not None:
                raise DataError(
                    f"data set {self.name!r}: num_classes={self.num_classes} given without "
                    "labels; pass both or neither"
                )
            return
        if sorted(self.labels) != sorted(SPLITS):
            raise DataError(
                f"data set {self.name!r}: labels must hold one tensor per split "
                f"({', '.join(SPLITS)}), got {sorted(self.labels)}"
            )
        num_classes = self.num_classes
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise DataError(
                f"data set {self.name!r}: labels need num_classes, an int >= 1; got {num_classes!r}"
            )
        for split in SPLITS:
            labels, rows = self.labels[split], getattr(self, split).shape[0]
            if labels.dtype != torch.int64 or labels.dim() != 1 or labels.shape[0] != rows:
                raise DataError(
                    f"data set {self.name!r}: labels of split {split!r} are {labels.dtype} of "
                    f"shape {tuple(labels.shape)}, expected torch.int64 of shape ({rows},), one "
                    "class index per example"
                )
            if rows and (labels.min() < 0 or labels.max() >= num_classes):
                raise DataError(
                    f"data set {self.name!r}: labels of split {split!r} range over "
                    f"[{labels.min().item()}, {labels.max().item()}], outside "
                    f"[0, {num_classes}) for num_classes={num_classes}"
                )

    def split(self, name: str) -> torch.Tensor:
        """The tensor of split `name` ("train", "valid" or "test")."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def split_labels(self, name: str) -> torch.Tensor:
        """The class labels of split `name`: int64 (N,), row i labelling `split(name)[i]`."""
        self.split(name)  # the same check of the name
        if self.labels is None:
            raise DataError(self.missing_labels_reason or _no_labels_message(self.name))
        return self.labels[name]

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with all three splits, and their labels, moved to `device`."""
        moved = {split: getattr(self, split).to(device) for split in SPLITS}
        if self.labels is not None:
            moved["labels"] = {split: labels.to(device) for split, labels in self.labels.items()}
        return replace(self, **moved)

    def with_valid_size(self, num_valid: int) -> Dataset:
        """A copy whose validation split is the last ``num_valid`` rows of train + valid (in
        that order: the named sets' validation rows are the tail of their training file), and
        whose training split is the rest; 0 trains on all of them. Labels follow their rows."""
        pooled = torch.cat([self.train, self.valid])
        if not 0 <= num_valid <= pooled.shape[0] - 2:
            raise DataError(
                f"--valid-size {num_valid}: must be in [0, {pooled.shape[0] - 2}] for data set "
                f"{self.name!r} ({pooled.shape[0]} training and validation rows in all; "
                "at least 2 must train)"
            )
        end = pooled.shape[0] - num_valid
        moved: dict[str, object] = {"train": pooled[:end], "valid": pooled[end:]}
        if self.labels is not None:
            labels = torch.cat([self.labels["train"], self.labels["valid"]])
            moved["labels"] = {**self.labels, "train": labels[:end], "valid": labels[end:]}
        return replace(self, **moved)

    @property
    def dim(self) -> int:
        """Number of values per example, C*H*W."""
        return self.train.shape[1]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split}={getattr(self, split).shape[0]}" for split in SPLITS)
        return (
            f"Dataset(name={self.name!r}, {sizes}, image_shape={self.image_shape}, "
            f"binary={self.binary}, pixel_scale={self.pixel_scale}, "
            f"num_classes={self.num_classes}, device={self.train.device})"
        )


def _no_labels_message(name: str) -> str:
    """Why a data set without labels has none, and where labelled data come from."""
    labelled = [key for key, spec in DATASETS.items() if spec.num_classes is not None]
    unlabelled = [key for key, spec in DATASETS.items() if spec.num_classes is None]
    return (
        f"data set {name!r} has no class labels: {' and '.join(unlabelled)} carry none, nor do "
        ".npy files and single-array .npz files. For labels use "
        f"{', '.join(labelled[:-1])} or {labelled[-1]}, or save an .npz with arrays y_train, "
        "y_valid, y_test (integer class indices, one per example) beside train, valid, test."
    )


# --------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class DataFile:
    """One accepted form of a data file: its name, the checksum of its bytes, where to fetch it.

    `checksum` is a hex md5 (32 digits) or sha256 (64 digits); `url` is None for a form that is
    accepted on disk but not downloaded.
    """

    filename: str
    checksum: str
    url: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, check and read one named data set."""

    name: str
    folder: str
    # role -> accepted forms of that file, in lookup order (the first form found wins).
    files: Mapping[str, tuple[DataFile, ...]]
    # The paths of the files found, by role -> the splits and their labels (None: no labels).
    reader: Callable[[Mapping[str, Path]], tuple[Splits, SplitLabels | None]]
    image_shape: tuple[int, int, int]
    default_binarize: str
    default_pair: str
    description: str
    # What the reader divides the stored levels by to reach [0, 1]; None for values kept as
    # stored (binarized MNIST's 0/1 bits).
    pixel_scale: float | None = None
    # Number of classes of the set's labels; None for a set without labels.
    num_classes: int | None = None
    # Roles in `files` that hold only labels: optional, the images load without them (and
    # then without labels); --download fetches them like the rest.
    label_roles: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# Small pure helpers: bytes, checksums, splits


def _hash_name(checksum: str) -> str:
    """The hashlib algorithm of a hex checksum, told by its length."""
    algorithms = {32: "md5", 64: "sha256"}
    if len(checksum) not in algorithms:
        raise DataError(f"checksum {checksum!r} is neither an md5 nor a sha256 hex digest")
    return algorithms[len(checksum)]


def file_checksum(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, checksum: str, *, downloaded: bool = False) -> None:
    """Raise DataError when the file's checksum differs from the expected one."""
    algorithm = _hash_name(checksum)
    actual = file_checksum(path, algorithm)
    if actual == checksum:
        return
    advice = (
        "The server sent different bytes; check --base-url or place the file by hand."
        if downloaded
        else "The file is truncated, corrupt or a different version: delete it and fetch it "
        "again (--download), or copy in a good copy."
    )
    raise DataError(
        f"checksum mismatch for {path}: expected {algorithm} {checksum}, got {actual}. {advice}"
    )


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when its name ends in .gz."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"{path} is not a valid gzip file ({error}); it is truncated or corrupt. "
            "Delete it and fetch it again (--download), or copy in a good copy."
        ) from error


PIXEL_LEVELS = 255.0  # the top level of an 8-bit pixel


def _scale_bytes(images: np.ndarray) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1], flattened to (N, D)."""
    return (images.astype(np.float32) / np.float32(PIXEL_LEVELS)).reshape(len(images), -1)


def _split_tail(rows: np.ndarray, num_valid: int, num_test: int, source: str) -> Splits:
    """Split rows in order: the last `num_test` are test, the `num_valid` before them valid."""
    if len(rows) <= num_valid + num_test:
        raise DataError(
            f"{source} has {len(rows)} rows; need more than {num_valid + num_test} "
            f"({num_valid} for valid, {num_test} for test)"
        )
    end_train = len(rows) - num_valid - num_test
    return rows[:end_train], rows[end_train : len(rows) - num_test], rows[len(rows) - num_test :]


# --------------------------------------------------------------------------------------------
# Readers, one per file format


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


def _read_digits_splits(paths: Mapping[str, Path]) -> tuple[Splits, SplitLabels]:
    """scikit-learn's 8x8 digits, /16, in file order: first 1297 train, next 200 valid, last 300.

    No shuffle: the file is roughly grouped by writer, so the test digits come mostly from
    writers unseen in training, which makes the split a fair held-out test. The labels are
    scikit-learn's `target`, split the same way.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.data / DIGITS_LEVELS).astype(np.float32)
    labels = np.asarray(digits.target).astype(np.int64)
    end_valid = DIGITS_NUM_TRAIN + DIGITS_NUM_VALID

    def in_file_order(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return rows[:DIGITS_NUM_TRAIN], rows[DIGITS_NUM_TRAIN:end_valid], rows[end_valid:]

    return in_file_order(images), in_file_order(labels)


IDX_LABEL_ROLES = ("train_labels", "test_labels")


def _idx_files(checksums: Mapping[str, str], base_url: str) -> dict[str, tuple[DataFile, ...]]:
    """The image and label files of an MNIST-style set, by role."""
    names = {
        "train_images": "train-images-idx3-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }
    return {
        role: (DataFile(name, checksums[role], f"{base_url}{name}"),)
        for role, name in names.items()
    }


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_BINARIZED_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_FREY_URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"


def _amat_files() -> dict[str, tuple[DataFile, ...]]:
    """Binarized MNIST splits: our gzipped copies (md5) or the original text files (sha256)."""
    gz_md5 = {
        "train": "55c6be0db63f47a228822edc21049d6f",
        "valid": "bf325c5893052cb8b540dfeb3c0c6fbe",
        "test": "f7f18e7c5d551792f6aab10d62a7ea74",
    }
    amat_sha256 = {
        "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
        "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
        "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
    }
    files = {}
    for split in SPLITS:
        name = f"binarized_mnist_{split}.amat"
        files[split] = (
            DataFile(f"{name}.gz", gz_md5[split]),
            DataFile(name, amat_sha256[split], f"{_BINARIZED_URL}{name}"),
        )
    return files


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="digits",
            folder="digits",
            files={},
            reader=_read_digits_splits,
            image_shape=(1, 8, 8),
            default_binarize="dynamic",
            default_pair="mlp",
            description="scikit-learn's 1797 handwritten 8x8 digits (ships with sklearn; offline)",
            pixel_scale=DIGITS_LEVELS,
            num_classes=10,
        ),
        DatasetSpec(
            name="mnist",
            folder="mnist",
            files=_idx_files(
                {
                    "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                    "test_images": "9fb629c4189551a2d022fa330f9573f3",
                    "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
                    "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
                },
                _MNIST_URL,
            ),
            reader=_read_idx_splits,
            image_shape=(1, 28, 28),
            default_binarize="dynamic",
            default_pair="mlp",
            description="MNIST handwritten digits, 28x28 grey levels (LeCun et al. 1998)",
            pixel_scale=PIXEL_LEVELS,
            num_classes=MNIST_NUM_CLASSES,
            label_roles=IDX_LABEL_ROLES,
        ),
        DatasetSpec(
            name="fashion-mnist",
            folder="fashion_mnist",
            files=_idx_files(
                {
                    "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "test_images": "bef4ecab320f06d8554ea6380940ec79",
                    "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
                    "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
                },
                _FASHION_URL,
            ),
            reader=_read_idx_splits,
            image_shape=(1, 28, 28),
            default_binarize="dynamic",
            default_pair="mlp",
            description="Fashion-MNIST clothing images, 28x28 grey levels (Xiao et al. 2017)",
            pixel_scale=PIXEL_LEVELS,
            num_classes=MNIST_NUM_CLASSES,
            label_roles=IDX_LABEL_ROLES,
        ),
        DatasetSpec(
            name="binarized-mnist",
            folder="binarized_mnist",
            files=_amat_files(),
            reader=_read_amat_splits,
            image_shape=(1, 28, 28),
            default_binarize="none",
            default_pair="mlp",
            description="MNIST with the fixed binarization of Larochelle & Murray (2011)",
        ),
        DatasetSpec(
            name="frey-face",
            folder="frey_face",
            files={
                "faces": (
                    DataFile("frey_rawface.mat", "5aeb024d42b8a6091f30e5eb18c8a48d", _FREY_URL),
                )
            },
            reader=_read_frey_splits,
            image_shape=(1, 28, 20),
            default_binarize="none",
            default_pair="gaussian-mlp",
            description="Frey Face, 1965 video frames of one face, 28x20 (Kingma & Welling 2014)",
            pixel_scale=PIXEL_LEVELS,
        ),
    )
}


# --------------------------------------------------------------------------------------------
# Where files live


def cache_dir() -> Path:
    """Download cache: $PYRO_VAE_CACHE, else $XDG_CACHE_HOME/pyro_vae, else ~/.cache/pyro_vae."""
    if os.environ.get("PYRO_VAE_CACHE"):
        return Path(os.environ["PYRO_VAE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "pyro_vae"
    return Path.home() / ".cache" / "pyro_vae"


def search_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Data roots in lookup order: `data_dir` (--data-dir), $PYRO_VAE_DATA_DIR, the cache."""
    candidates = [data_dir, os.environ.get("PYRO_VAE_DATA_DIR") or None, cache_dir()]
    roots: list[Path] = []
    for candidate in candidates:
        if candidate is not None and Path(candidate).expanduser() not in roots:
            roots.append(Path(candidate).expanduser())
    return roots


def _candidate_paths(
    spec: DatasetSpec, role: str, roots: list[Path]
) -> list[tuple[Path, DataFile]]:
    """Every place a file may be, in order: each root's `<folder>/` and then the root itself."""
    return [
        (place / form.filename, form)
        for root in roots
        for place in (root / spec.folder, root)
        for form in spec.files[role]
    ]


def _missing_files_error(spec: DatasetSpec, missing: Mapping[str, list[Path]]) -> DataError:
    """The error for files found nowhere: names, every place searched, and how to fix it."""
    wanted = ", ".join(" or ".join(form.filename for form in spec.files[role]) for role in missing)
    searched = "\n".join(f"  {path}" for paths in missing.values() for path in paths)
    return DataError(
        f"data set {spec.name!r}: {len(missing)} file(s) not found: {wanted}.\n"
        f"Searched:\n{searched}\n"
        f"To fix: put the files in DIR/{spec.folder}/ (or in DIR itself) and pass --data-dir DIR "
        f"or set PYRO_VAE_DATA_DIR=DIR; or pass --download to fetch them into "
        f"{cache_dir() / spec.folder}."
    )


def _missing_labels_reason(
    spec: DatasetSpec, missing: Mapping[str, list[Path]], download_errors: list[str]
) -> str:
    """Why a set loaded without labels: its label files, every place searched, how to fix it,
    and why --download could not fetch them when it was asked to."""
    wanted = ", ".join(form.filename for role in missing for form in spec.files[role])
    searched = "\n".join(f"  {path}" for paths in missing.values() for path in paths)
    failed = "".join(f"\n--download was given but failed: {error}" for error in download_errors)
    return (
        f"data set {spec.name!r} was loaded without class labels: label file(s) not found: "
        f"{wanted} (the images load without them).\n"
        f"Searched:\n{searched}\n"
        f"To fix: put the label files beside the images, in DIR/{spec.folder}/ (or in DIR "
        f"itself), and pass --data-dir DIR or set PYRO_VAE_DATA_DIR=DIR; or pass --download to "
        f"fetch them into {cache_dir() / spec.folder}.{failed}"
    )


# --------------------------------------------------------------------------------------------
# Download


def _download_form(spec: DatasetSpec, role: str) -> DataFile:
    """The form of a file that is fetched from the web."""
    for form in spec.files[role]:
        if form.url is not None:
            return form
    raise DataError(f"data set {spec.name!r} has no download source for its {role!r} file")


def download_file(url: str, target: Path, checksum: str) -> Path:
    """Fetch `url` to `target` atomically: temp file in the same folder, verify, os.replace."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    temp_path = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as sink:
            _copy_url(url, sink, target.name)
        _verify(temp_path, checksum, downloaded=True)
        os.replace(temp_path, target)
    except (OSError, http.client.HTTPException) as error:
        raise DataError(
            f"download of {url} failed ({error}). Fetch it by hand and place it at {target} "
            "(or in DIR and pass --data-dir DIR / set PYRO_VAE_DATA_DIR=DIR), "
            "or pass --base-url with a mirror."
        ) from error
    finally:
        temp_path.unlink(missing_ok=True)
    return target


def _copy_url(url: str, sink: BinaryIO, label: str) -> None:
    """Stream the body of `url` into `sink`, with a progress bar when stderr is a terminal."""
    from tqdm import tqdm

    try:
        response = urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        error.close()  # it holds the connection open; its status and reason are all we need
        raise
    with response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=label, disable=not sys.stderr.isatty()
        ) as bar:
            for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                sink.write(chunk)
                bar.update(len(chunk))


def _fetch(spec: DatasetSpec, role: str, base_url: str | None) -> Path:
    """Download one file of a data set into `cache_dir()/<folder>/`."""
    form = _download_form(spec, role)
    url = f"{base_url.rstrip('/')}/{form.filename}" if base_url else form.url
    target = cache_dir() / spec.folder / form.filename
    logger.info("downloading %s to %s", url, target)
    return download_file(url, target, form.checksum)


# --------------------------------------------------------------------------------------------
# Loading


def _locate(
    spec: DatasetSpec, roots: list[Path], download: bool, base_url: str | None
) -> tuple[dict[str, Path], str | None]:
    """Path of every file of a data set, checksum-verified; downloads the missing if asked.

    Returns the paths found by role and, when label files (`spec.label_roles`) are found
    nowhere, the reason the set comes without labels (for `Dataset.split_labels`). Label files
    are optional: one that --download cannot fetch leaves the set unlabelled, with a warning,
    rather than blocking images already on disk (an offline run with --download, a mirror
    without label files).
    """
    found: dict[str, Path] = {}
    missing: dict[str, list[Path]] = {}
    for role in spec.files:
        candidates = _candidate_paths(spec, role, roots)
        hit = next(((path, form) for path, form in candidates if path.is_file()), None)
        if hit is not None:
            path, form = hit
            _verify(path, form.checksum)
            found[role] = path
        else:
            missing[role] = [path for path, _ in candidates]
    required = {role: paths for role, paths in missing.items() if role not in spec.label_roles}
    if required and not download:
        raise _missing_files_error(spec, required)
    for role in required:
        found[role] = _fetch(spec, role, base_url)
    missing_labels = {role: paths for role, paths in missing.items() if role in spec.label_roles}
    download_errors = []
    for role in list(missing_labels) if download else []:
        try:
            found[role] = _fetch(spec, role, base_url)
        except DataError as error:
            logger.warning("%s: loading without class labels: %s", spec.name, error)
            download_errors.append(str(error))
        else:
            del missing_labels[role]
    if not missing_labels:
        return found, None
    logger.info("%s: label files not found; loading without class labels", spec.name)
    return found, _missing_labels_reason(spec, missing_labels, download_errors)


def _array_splits(array: np.ndarray, source: str) -> Splits:
    """One array split in order: last 10% test, the 10% before it valid, the rest train."""
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


def _auto_divisor(array: np.ndarray) -> float | None:
    """255 for uint8 images, each example (H, W) or (C, H, W); None for anything else.

    Flat uint8 rows (N, D) are as often counts (bag-of-words) as pixels, and other integer
    dtypes are counts, so only an array shaped like images is taken to hold 8-bit pixels.
    """
    return PIXEL_LEVELS if array.dtype == np.uint8 and array.ndim in (3, 4) else None


# --pixel-scale: what an array file's values are divided by, per array; None keeps them.
_ARRAY_DIVISORS: dict[str, Callable[[np.ndarray], float | None]] = {
    "auto": _auto_divisor,
    "none": lambda array: None,
    "255": lambda array: PIXEL_LEVELS,
}
PIXEL_SCALES = tuple(_ARRAY_DIVISORS)


def _check_pixel_scale(pixel_scale: str) -> None:
    """Raise DataError for a pixel scale that is not one of PIXEL_SCALES."""
    if not isinstance(pixel_scale, str) or pixel_scale not in _ARRAY_DIVISORS:
        raise DataError(
            f"unknown pixel scale {pixel_scale!r} (--pixel-scale); choose one of "
            f"{', '.join(PIXEL_SCALES)} (as a string)"
        )


def _check_named_pixel_scale(spec: DatasetSpec, pixel_scale: str) -> None:
    """A named set stored as pixel levels cannot be kept raw: say so for --pixel-scale none."""
    if pixel_scale == "none" and spec.pixel_scale is not None:
        raise DataError(
            f"--pixel-scale none: the named data set {spec.name!r} is stored as pixel levels, "
            f"and the named sets are always scaled to [0, 1] (here /{spec.pixel_scale:g}). "
            "--pixel-scale applies to .npy/.npz files only: drop it (or pass auto), or save "
            "the raw array as a .npy file and load that."
        )


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


# The first bytes of each array file format: numpy.save's magic string, a zip archive.
_ARRAY_FILE_MAGIC = {
    ".npy": (b"\x93NUMPY", "a NumPy array file", "numpy.save(path, array)"),
    ".npz": (b"PK", "a NumPy .npz archive", "numpy.savez(path, train=..., test=...)"),
}


def _check_array_file_magic(path: Path) -> None:
    """Raise DataError unless ``path`` starts as its suffix's format must (``_ARRAY_FILE_MAGIC``).

    Without this check numpy takes any other file for a pickle and advises allow_pickle=True,
    which would run code from the file.
    """
    magic, what, how = _ARRAY_FILE_MAGIC[path.suffix.lower()]
    try:
        with path.open("rb") as handle:
            start = handle.read(len(magic))
    except OSError as error:
        raise DataError(f"{path} could not be opened ({error.strerror})") from error
    if start != magic:
        found = f"it starts with {start!r}, not {magic!r}" if start else "it is empty"
        raise DataError(
            f"{path} is not {what}: {found} (a text file, or another format given a "
            f"{path.suffix} name?). Save the data with {how}."
        )


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
        if array.ndim < 2:
            raise DataError(
                f"{path} array {split!r} has shape {array.shape}; expected (N, ...) examples"
            )
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
        "Pass an existing .npy/.npz path, or a path relative to --data-dir / PYRO_VAE_DATA_DIR."
    )


def _check_binarization(binarize: str, flag: str = "--binarize") -> None:
    """Raise DataError for a binarization that is not one of BINARIZATIONS."""
    if binarize not in BINARIZATIONS:
        raise DataError(
            f"unknown binarization {binarize!r} ({flag}); choose one of {', '.join(BINARIZATIONS)}"
        )


def _check_intensities(name: str, splits: Mapping[str, torch.Tensor], binarize: str) -> None:
    """Bernoulli draws need intensities in [0, 1]; say so before torch.bernoulli fails."""
    for split, tensor in splits.items():
        if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
            raise DataError(
                f"data set {name!r}: --binarize {binarize} needs values in [0, 1], but split "
                f"{split!r} ranges over [{tensor.min():g}, {tensor.max():g}]. Rescale the data "
                "(0-255 pixels saved as flat uint8 rows: --pixel-scale 255) or use --binarize none."
            )


def binarize_static(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One fixed Bernoulli draw x_b ~ Bernoulli(x) from its own generator seeded by `seed`.

    Drawn on the CPU so the same seed gives the same bits on every device; the global torch
    RNG is left untouched.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(x.detach().cpu(), generator=generator).to(x.device)


def _binarize_splits_statically(splits: dict[str, torch.Tensor], seed: int) -> dict:
    """Static binarization of every split; seed+i for the i-th split so noise differs."""
    return {split: binarize_static(splits[split], seed + i) for i, split in enumerate(SPLITS)}


# What load_dataset does to the splits for each binarization; minibatches applies the rest.
_LOAD_BINARIZERS: dict[str, Callable[[dict[str, torch.Tensor], int], dict]] = {
    "none": lambda splits, seed: splits,
    "static": _binarize_splits_statically,
    "dynamic": lambda splits, seed: splits,
}
_BATCH_BINARIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda batch: batch,
    "static": lambda batch: batch,  # drawn once at load time
    "dynamic": torch.bernoulli,  # a fresh draw each time the batch is used
}
BINARIZATIONS = tuple(_BATCH_BINARIZERS)


def _is_binary(tensor: torch.Tensor) -> bool:
    """True when every value is exactly 0 or 1."""
    return bool(((tensor == 0) | (tensor == 1)).all())


def _unknown_dataset_error(name: str) -> DataError:
    """The error for a name that is neither registered nor an array file."""
    known = "\n".join(f"  {key:<16} {spec.description}" for key, spec in DATASETS.items())
    return DataError(
        f"unknown data set {name!r}. Known data sets:\n{known}\n"
        f"or a path to your own {' / '.join(ARRAY_SUFFIXES)} file."
    )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = False,
    base_url: str | None = None,
    binarize: str = "none",
    seed: int = 0,
    pixel_scale: str = "auto",
) -> Dataset:
    """Load a named data set (see DATASETS) or a .npy/.npz file as flattened float32 splits.

    `pixel_scale` (--pixel-scale, one of PIXEL_SCALES) says what an array file is divided by:
    "auto" divides uint8 images, each example (H, W) or (C, H, W), by 255 and keeps everything
    else as stored (flat uint8 rows and other integers are counts, floats are values); "255"
    divides every array file by 255; "none" never rescales. The named pixel sets are always
    scaled to [0, 1] ("none" is an error for them); the divisor applied is `Dataset.pixel_scale`.

    `binarize="static"` replaces the intensities by one fixed Bernoulli draw (seeds `seed`,
    `seed + 1`, `seed + 2` for train, valid, test); "dynamic" and "none" return intensities,
    and `minibatches(..., binarize="dynamic")` draws per batch. Raises DataError with what to do
    for a missing, corrupt or mismatching file, an unknown name, an unknown binarization or an
    unknown pixel scale.

    Class labels come with mnist and fashion-mnist (their optional label files), digits, and an
    .npz holding y_train/y_valid/y_test; `Dataset.split_labels` says why when there are none.
    """
    _check_binarization(binarize)
    _check_pixel_scale(pixel_scale)
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise DataError(
            f"--data-dir {str(data_dir)!r} is not a folder; give the folder that holds the "
            "data sets (one subfolder each) or the files themselves"
        )
    roots = search_roots(data_dir)
    missing_labels_reason = None
    if name.lower().endswith(ARRAY_SUFFIXES):
        path = _resolve_array_path(name, roots)
        arrays, labels, image_shape, divisor = _load_array_file(path, pixel_scale)
        num_classes = None if labels is None else _num_classes_seen(dict(zip(SPLITS, labels)))
    elif name in DATASETS:
        spec = DATASETS[name]
        _check_named_pixel_scale(spec, pixel_scale)
        paths, missing_labels_reason = _locate(spec, roots, download, base_url)
        arrays, labels = spec.reader(paths)
        image_shape, divisor, num_classes = spec.image_shape, spec.pixel_scale, spec.num_classes
    else:
        raise _unknown_dataset_error(name)
    splits = {split: torch.from_numpy(array) for split, array in zip(SPLITS, arrays)}
    if binarize != "none":
        _check_intensities(name, splits, binarize)
    splits = _LOAD_BINARIZERS[binarize](splits, seed)
    binary = all(_is_binary(tensor) for tensor in splits.values())
    label_tensors = None
    if labels is not None:
        label_tensors = {split: torch.from_numpy(y) for split, y in zip(SPLITS, labels)}
    return Dataset(
        name=name,
        image_shape=image_shape,
        binary=binary,
        pixel_scale=divisor,
        labels=label_tensors,
        num_classes=num_classes if labels is not None else None,
        missing_labels_reason=missing_labels_reason,
        **splits,
    )


# --------------------------------------------------------------------------------------------
# Minibatches


def minibatches(
    data: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = True,
    binarize: str = "none",
    drop_last: bool = False,
    order: torch.Tensor | None = None,
    first_batch: int = 0,
) -> Iterator[torch.Tensor]:
    """One epoch of minibatches sliced on `data`'s device, optionally shuffled and binarized.

    The permutation is drawn now from the global torch RNG (so `pyro.set_rng_seed` fixes it),
    unless `order` gives it (an epoch resumed in the middle: the saved permutation, from batch
    `first_batch` on); `binarize="dynamic"` draws Bernoulli(batch) afresh for every batch.
    """
    _check_binarization(binarize)
    if int(batch_size) < 1:
        raise DataError(f"batch size must be at least 1 (--batch-size), got {batch_size}")
    num_rows = data.shape[0]
    if order is None and shuffle:
        order = torch.randperm(num_rows, device=data.device)
    stop = num_rows - num_rows % batch_size if drop_last else num_rows
    return _batches(data, order, int(batch_size), stop, _BATCH_BINARIZERS[binarize], first_batch)


def _batches(
    data: torch.Tensor,
    order: torch.Tensor | None,
    batch_size: int,
    stop: int,
    binarizer: Callable[[torch.Tensor], torch.Tensor],
    first_batch: int = 0,
) -> Iterator[torch.Tensor]:
    """The generator behind `minibatches`: slices [start, start + batch_size) up to `stop`."""
    for start in range(first_batch * batch_size, stop, batch_size):
        end = min(start + batch_size, stop)
        batch = data[order[start:end]] if order is not None else data[start:end]
        yield binarizer(batch)
