"""`load_dataset`: a named data set, or the user's .npy/.npz file, as a `Dataset`.

Every named data set is one `DatasetSpec` entry in `DATASETS`; `load_dataset` finds its files in
the search roots (`--data-dir`, `$PYRO_VAE_DATA_DIR`, the cache), verifies their checksums,
optionally downloads what is missing, and returns a `Dataset` of flattened float32 tensors with,
where the files carry them, int64 class labels. A path ending in `.npy` or `.npz` loads the user's
own arrays instead (an .npz may hold labels as `y_train`, `y_valid`, `y_test`), a `.csv` path a
table (`tables.py`), and a folder of PNG/JPEG images an image set (`images.py`). Large .npy
files and image caches are memory-mapped instead of loaded whole (`lazy.py`).
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
from pyro_vae.data.images import load_image_folder
from pyro_vae.data.lazy import _check_lazy_mode, load_lazy_npy, refuse_whole_copy
from pyro_vae.data.lookup import _locate
from pyro_vae.data.pixels import (
    _LOAD_BINARIZERS,
    PIXEL_LEVELS,
    _check_binarization,
    _check_intensities,
    _check_pixel_scale,
    _is_binary,
)
from pyro_vae.data.registry import DATASETS, DatasetSpec
from pyro_vae.data.roots import search_roots
from pyro_vae.data.splits import SPLITS
from pyro_vae.data.tables import load_table

#: What --dataset takes besides the named sets, as messages say it.
_OWN_DATA = (
    "or a path to your own data: a .npy / .npz array file, a .csv table (numeric columns, "
    "--label-column for classes), or a folder of PNG/JPEG images (class subfolders for labels)"
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


def _unknown_dataset_error(name: str) -> DataError:
    """The error for a name that is neither registered nor a readable path: what it is (a
    file of another kind, nothing) and what --dataset takes."""
    known = "\n".join(f"  {key:<16} {spec.description}" for key, spec in DATASETS.items())
    takes = f"--dataset takes a data set name:\n{known}\n{_OWN_DATA}."
    path = Path(name).expanduser()
    if not name.strip():
        return DataError(f"--dataset '' is empty. {takes}")
    if path.is_file():
        return DataError(
            f"--dataset {name!r} is a {path.suffix or 'suffix-less'} file, which pyro_vae does "
            "not read: convert it to one it reads: rows as points in a NumPy array "
            "(numpy.save('x.npy', x) or numpy.savez('x.npz', train=..., test=...)) or a .csv "
            f"table, or images as PNG files in a folder. {takes}"
        )
    return DataError(f"unknown data set {name!r}. Known data sets:\n{known}\n{_OWN_DATA}.")


def _find_folder(name: str, roots: list[Path]) -> Path | None:
    """The folder `name` names: the path as given, else relative to each search root."""
    given = Path(name).expanduser()
    candidates = [given] if given.is_absolute() else [given, *(root / given for root in roots)]
    return next((candidate for candidate in candidates if candidate.is_dir()), None)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = False,
    base_url: str | None = None,
    binarize: str = "none",
    seed: int = 0,
    pixel_scale: str = "auto",
    image_size: str | None = None,
    image_mode: str = "auto",
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    label_column: str | None = None,
    lazy: str = "auto",
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

    A folder of PNG/JPEG images (`images.load_image_folder`) is read as grey or RGB
    (`image_mode`), resized to `image_size` ("N" or "HxW"), scaled to [0, 1], split by its
    train/valid/test subfolders or else by `valid_fraction` and `test_fraction` of the images
    (permuted with `seed`), labelled by its class subfolders (`Dataset.class_names`). A .csv
    table (`tables.load_table`) is split the same way, its `label_column` the classes.

    `lazy` ("auto", "on", "off"; --lazy) memory-maps an .npy file or an image folder's cache
    instead of loading it: "auto" does when its float32 rows pass a quarter of the memory
    available. What would copy a memory-mapped set whole is refused (see `lazy.py`).
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
    _check_lazy_mode(lazy)
    roots = search_roots(data_dir)
    missing_labels_reason, class_names, mapped = None, None, False
    folder = None if name in DATASETS or not name.strip() else _find_folder(name, roots)
    if folder is not None:
        images = load_image_folder(folder, name, image_size=image_size, image_mode=image_mode,
                                   valid_fraction=valid_fraction, test_fraction=test_fraction,
                                   seed=seed, lazy=lazy)  # fmt: skip
        arrays, labels, image_shape = images.splits, images.labels, images.image_shape
        divisor, class_names, mapped = PIXEL_LEVELS, images.class_names, images.lazy
        num_classes = None if class_names is None else len(class_names)
    elif name.lower().endswith(".csv"):
        path = _resolve_array_path(name, roots)
        if lazy == "on":
            raise DataError(f"--lazy on: {path} is a CSV table, which is parsed into memory; "
                            "save it as a float32 .npy file to memory-map it")  # fmt: skip
        table = load_table(path, label_column=label_column, valid_fraction=valid_fraction,
                           test_fraction=test_fraction, seed=seed)  # fmt: skip
        arrays, labels, image_shape, divisor = table.splits, table.labels, None, None
        image_shape = (1, 1, table.splits[0].shape[1])
        class_names = table.class_names
        num_classes = None if class_names is None else len(class_names)
    elif name.lower().endswith(ARRAY_SUFFIXES):
        path = _resolve_array_path(name, roots)
        if lazy == "on" and path.suffix.lower() == ".npz":
            raise DataError(f"--lazy on: {path} is an .npz archive, which NumPy cannot "
                            "memory-map; save its arrays as .npy files (float32 rows) and "
                            "pass one of those, or pass --lazy off")  # fmt: skip
        loaded = load_lazy_npy(path, pixel_scale, lazy) if path.suffix.lower() == ".npy" else None
        if loaded is not None:
            (arrays, image_shape), labels, divisor, mapped = loaded, None, None, True
        else:
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
    if mapped and binarize == "static":
        raise refuse_whole_copy(name, "--binarize static (one fixed draw of every point, kept)",
                                "use --binarize dynamic (a draw per batch)")  # fmt: skip
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
        class_names=class_names,
        lazy=mapped,
        **splits,
    )
