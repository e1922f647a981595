"""`load_dataset`: a named data set, or the user's .npy/.npz file, as a `Dataset`.

Every named data set is one `DatasetSpec` entry in `DATASETS`; `load_dataset` finds its files in
the search roots (`--data-dir`, `$PYRO_VAE_DATA_DIR`, the cache), verifies their checksums,
optionally downloads what is missing, and returns a `Dataset` of flattened float32 tensors with,
where the files carry them, int64 class labels. A path ending in `.npy` or `.npz` loads the user's
own arrays instead (an .npz may hold labels as `y_train`, `y_valid`, `y_test`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pyro_vae.data.arrays import (
    ARRAY_SUFFIXES,
    _load_array_file,
    _num_classes_seen,
    _resolve_array_path,
)
from pyro_vae.data.dataset import Dataset
from pyro_vae.data.errors import DataError
from pyro_vae.data.lookup import _locate
from pyro_vae.data.pixels import (
    _LOAD_BINARIZERS,
    _check_binarization,
    _check_intensities,
    _check_pixel_scale,
    _is_binary,
)
from pyro_vae.data.registry import DATASETS, DatasetSpec
from pyro_vae.data.roots import search_roots
from pyro_vae.data.splits import SPLITS


def _check_named_pixel_scale(spec: DatasetSpec, pixel_scale: str) -> None:
    """A named set stored as pixel levels cannot be kept raw: say so for --pixel-scale none."""
    if pixel_scale == "none" and spec.pixel_scale is not None:
        raise DataError(
            f"--pixel-scale none: the named data set {spec.name!r} is stored as pixel levels, "
            f"and the named sets are always scaled to [0, 1] (here /{spec.pixel_scale:g}). "
            "--pixel-scale applies to .npy/.npz files only: drop it (or pass auto), or save "
            "the raw array as a .npy file and load that."
        )


def _unknown_dataset_error(name: str) -> DataError:
    """The error for a name that is neither registered nor an array file: what it is (a
    folder, a file of another kind, nothing) and what --dataset takes."""
    known = "\n".join(f"  {key:<16} {spec.description}" for key, spec in DATASETS.items())
    takes = (
        f"--dataset takes a data set name:\n{known}\n"
        f"or a path to your own {' / '.join(ARRAY_SUFFIXES)} file."
    )
    path = Path(name).expanduser()
    if not name.strip():
        return DataError(f"--dataset '' is empty. {takes}")
    if path.is_dir():
        arrays = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in ARRAY_SUFFIXES)
        inside = f" It holds {', '.join(arrays[:5])}: pass one of those files." if arrays else ""
        return DataError(
            f"--dataset {name!r} is a folder, not a data set.{inside} {takes} (A folder that "
            "holds the named data sets' files is --data-dir.)"
        )
    if path.is_file():
        return DataError(
            f"--dataset {name!r} is a {path.suffix or 'suffix-less'} file, which pyro_vae does "
            "not read: save the data as a NumPy array, rows as points (numpy.save('x.npy', x) "
            f"or numpy.savez('x.npz', train=..., test=...)). {takes}"
        )
    return DataError(f"unknown data set {name!r}. Known data sets:\n{known}\n"
                     f"or a path to your own {' / '.join(ARRAY_SUFFIXES)} file.")  # fmt: skip


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
    if data_dir is not None and not str(data_dir).strip():
        raise DataError(
            "--data-dir '' is empty: give the folder that holds the data sets, or leave the "
            "flag out (then $PYRO_VAE_DATA_DIR and the cache are searched)"
        )
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
