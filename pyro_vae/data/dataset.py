"""The `Dataset` container: three flattened splits of one data set and their labels, with
copies moved to a device or split off with another validation size."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from pyro_vae.data.errors import DataError
from pyro_vae.data.registry import DATASETS
from pyro_vae.data.splits import SPLITS


@dataclass(frozen=True, eq=False)
class Dataset:
    """Three flattened splits of one data set, with the image shape that unflattens a row.

    `pixel_scale` is the divisor the stored values were scaled by on loading (255.0 for 8-bit
    pixels, 16.0 for the digits' 0..16 levels), or None when they are kept as stored (counts,
    floats, 0/1 bits).

    `labels` holds one int64 tensor of class indices in [0, num_classes) per split, row i
    labelling row i of that split; None (and `num_classes` None) for a set without labels.
    `missing_labels_reason` says why labels are absent when that is the user's to fix (label
    files not found); `split_labels` raises it. `class_names` names class i (an image folder's
    class subfolders, a table's label values), where the source names its classes.

    `lazy` is True when the splits are tensors over a memory-mapped file (see
    `pyro_vae.data.lazy`): `to("cpu")` and slicing keep them there; `with_valid_size` refuses.
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
    class_names: tuple[str, ...] | None = None
    lazy: bool = False

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
        whose training split is the rest; 0 trains on all of them. Labels follow their rows.
        A memory-mapped set is refused: pooling train and valid would copy both whole."""
        if self.lazy:
            raise DataError(
                f"--valid-size {num_valid}: data set {self.name!r} is memory-mapped (--lazy), "
                "and re-cutting train + valid would copy both into memory; keep the split it "
                "has (drop --valid-size; an image folder takes --valid-fraction), or pass "
                "--lazy off to load it whole"
            )
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
            f"num_classes={self.num_classes}, device={self.train.device}"
            + (", lazy=True)" if self.lazy else ")")
        )


def _no_labels_message(name: str) -> str:
    """Why a data set without labels has none, and where labelled data come from."""
    labelled = [key for key, spec in DATASETS.items() if spec.num_classes is not None]
    unlabelled = [key for key, spec in DATASETS.items() if spec.num_classes is None]
    return (
        f"data set {name!r} has no class labels: {' and '.join(unlabelled)} carry none, nor do "
        ".npy files, single-array .npz files, image folders without class subfolders and .csv "
        f"tables without --label-column. For labels use {', '.join(labelled[:-1])} or "
        f"{labelled[-1]}, put images in one subfolder per class, name a .csv table's class "
        "column with --label-column, or save an .npz with arrays y_train, y_valid, y_test "
        "(integer class indices, one per example) beside train, valid, test."
    )
