"""A folder of PNG/JPEG images as a data set: its splits (train/valid/test subfolders, or
seeded fractions), its labels (class subfolders), and the decoded pixels, kept in a cache.

The images are decoded once, with Pillow, into a float32 .npy file under the cache folder
(`cache_dir() / "image-folders"`), its rows grouped train, valid, test so that every split is
a slice of it; the file's name is a hash of the folder's image files (paths, sizes, mtimes)
and of the settings that shape the rows (image size and mode, fractions, seed). A second run
finds the file and reads it, or memory-maps it (--lazy), without decoding anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pyro_vae.data.errors import DataError, logger
from pyro_vae.data.pixels import PIXEL_LEVELS
from pyro_vae.data.roots import cache_dir
from pyro_vae.data.splits import SPLITS, _split_by_fractions

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: --image-mode: auto is grey when every image is grey (Pillow modes 1, L, LA, I, F), else RGB.
IMAGE_MODES = ("auto", "grey", "rgb")
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "F")
#: Bumped when the cache's layout changes, so old files are not read as new ones.
_CACHE_VERSION = 1


class ImageFolder(NamedTuple):
    """A decoded image folder: the float32 rows of each split (slices of one array), their
    int64 labels (None without class subfolders), the image shape (C, H, W), the class names
    (sorted folder names; None without), and whether the rows are memory-mapped."""

    splits: tuple[np.ndarray, np.ndarray, np.ndarray]
    labels: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...] | None
    lazy: bool


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """--image-size: "N" (N x N) or "HxW" as (H, W); None for None."""
    if text is None:
        return None
    parts = str(text).lower().replace(" ", "").split("x")
    if len(parts) in (1, 2) and all(part.isdigit() and int(part) >= 1 for part in parts):
        height, width = int(parts[0]), int(parts[-1])
        return height, width
    raise DataError(
        f"--image-size {text!r}: give one size N (N x N pixels) or HxW, e.g. 28 or 64x48"
    )


def _check_image_mode(mode: str) -> None:
    if mode not in IMAGE_MODES:
        raise DataError(f"--image-mode {mode!r}: choose one of {', '.join(IMAGE_MODES)}")


def _images_in(folder: Path) -> list[tuple[Path, str | None]]:
    """The images of one folder, each with its class (its subfolder's name) or None."""
    entries = sorted(folder.iterdir())
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    classes = {}
    for sub in entries:
        if sub.is_dir() and not sub.name.startswith(".") and sub.name not in SPLITS:
            files = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if files:
                classes[sub.name] = files
    if loose and classes:
        raise DataError(
            f"{folder} holds images ({loose[0].name}, ...) beside class subfolders "
            f"({', '.join(sorted(classes))}): put every image in a class subfolder (labelled), "
            "or every image directly in the folder (unlabelled)"
        )
    if classes:
        return [(path, name) for name, files in classes.items() for path in files]
    return [(path, None) for path in loose]


def _empty_folder_error(root: Path, name: str) -> DataError:
    """An image folder without images; the folder may hold array files instead."""
    from pyro_vae.data.registry import DATASETS

    arrays = sorted(str(p) for p in root.iterdir() if p.suffix.lower() in (".npy", ".npz"))
    inside = f" It holds {', '.join(arrays[:5])}: pass one of those files." if arrays else ""
    return DataError(
        f"--dataset {name!r} is a folder, not a data set: it holds no PNG or JPEG images "
        f"(directly, in class subfolders, or in train/valid/test subfolders).{inside} Put the "
        f"images there, or name a data set ({', '.join(DATASETS)}), a .npy/.npz/.csv file. "
        "(A folder that holds the named data sets' files is --data-dir.)"
    )


def _list_splits(
    root: Path, name: str, valid_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[tuple[Path, str | None]]]:
    """The images of each split: from train/valid/test subfolders where there are any (a
    missing valid or test split is cut from train by the fractions), else from the whole
    folder cut by the seeded fractions."""
    named = {split: root / split for split in SPLITS if (root / split).is_dir()}
    if named and "train" not in named:
        raise DataError(
            f"{root} has {'/'.join(named)} subfolder(s) but no train/: add train/ (the images "
            "to train on), or move the images out of the split subfolders"
        )
    pooled = {split: _images_in(folder) for split, folder in named.items()}
    if not named:
        pooled = {"train": _images_in(root)}
    if not pooled["train"]:
        if named:
            raise DataError(f"{root / 'train'} holds no PNG or JPEG images; add some there")
        raise _empty_folder_error(root, name)
    fractions = {"valid": valid_fraction, "test": test_fraction}
    cut = {split: fractions[split] if split not in pooled else 0.0 for split in fractions}
    if any(cut.values()) or not named:
        train, valid, test = _split_by_fractions(
            len(pooled["train"]), cut["valid"], cut["test"], seed, f"{root} (images)"
        )
        images = pooled["train"]
        for split, rows in zip(SPLITS, (train, valid, test)):
            if split == "train" or split not in pooled:
                pooled[split] = [images[i] for i in rows]
    for split in SPLITS:
        pooled.setdefault(split, [])
    return pooled


def _cache_key(root: Path, splits: dict, size: tuple[int, int] | None, mode: str, seed: int,
               fractions: tuple[float, float]) -> str:  # fmt: skip
    """A hash of the folder, every image (path, size, mtime) in split order and the settings."""
    digest = hashlib.sha256()
    settings = {"version": _CACHE_VERSION, "size": size, "mode": mode, "seed": seed,
                "fractions": fractions, "folder": str(root.resolve())}  # fmt: skip
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for split in SPLITS:
        digest.update(f"\n[{split}]".encode())
        for path, label in splits[split]:
            stat = path.stat()
            line = f"\n{path.relative_to(root)}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}"
            digest.update(line.encode())
    return digest.hexdigest()[:32]


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    """An image's Pillow mode and (height, width), reading its header only."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode, (image.height, image.width)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(
            f"image {path} could not be read ({error}); is it a PNG or JPEG file? Delete or "
            "replace it"
        ) from error


def _shape_of(files: list[Path], size: tuple[int, int] | None, mode: str,
              root: Path) -> tuple[int, int, int]:  # fmt: skip
    """(C, H, W) of the rows: C from --image-mode (auto: the images' own modes), H and W from
    --image-size, else the size every image shares."""
    headers = {path: _header(path) for path in files}
    if mode == "auto":
        rgb = [path for path, (pil_mode, _) in headers.items() if pil_mode not in _GREY_MODES]
        mode = "rgb" if rgb else "grey"
    channels = 3 if mode == "rgb" else 1
    if size is None:
        sizes: dict[tuple[int, int], Path] = {}
        for path, (_, shape) in headers.items():
            sizes.setdefault(shape, path)
        if len(sizes) > 1:
            shown = ", ".join(f"{h}x{w} ({path.name})" for (h, w), path in list(sizes.items())[:3])
            raise DataError(
                f"the images in {root} differ in size ({shown}); pass --image-size N or HxW "
                "to resize them all, e.g. --image-size 64"
            )
        size = next(iter(sizes))
    return channels, size[0], size[1]


def _decode(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """One image as a float32 row of C*H*W values in [0, 1], channels first."""
    from PIL import Image

    channels, height, width = shape
    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / np.float32(PIXEL_LEVELS)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(
            f"image {path} could not be decoded ({error}); is it corrupt? Delete or replace it"
        ) from error
    return (pixels.transpose(2, 0, 1) if channels == 3 else pixels).reshape(-1)


def _write_cache(files: list[Path], shape: tuple[int, int, int], target: Path) -> None:
    """Decode `files` into the rows of a float32 .npy at `target`, with a progress bar;
    written beside it and renamed, so a reader never sees half a file."""
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.stem}.{os.getpid()}.partial.npy")
    rows = np.lib.format.open_memmap(
        partial, mode="w+", dtype=np.float32, shape=(len(files), int(np.prod(shape)))
    )
    try:
        for index, path in enumerate(tqdm(files, desc="decoding images", unit="img", disable=None)):
            rows[index] = _decode(path, shape)
        rows.flush()
        del rows
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def load_image_folder(
    root: Path,
    name: str,
    *,
    image_size: str | None = None,
    image_mode: str = "auto",
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    lazy: str = "auto",
) -> ImageFolder:
    """The images under `root` as float32 rows in [0, 1] (pixel / 255), decoded once into
    the cache (see the module's docstring) and read from there.

    Splits come from train/valid/test subfolders, else from seeded fractions of all the
    images; labels from class subfolders (class i is the i-th folder name, sorted). Raises
    DataError naming the file or flag for an unreadable image, an empty folder, or images
    that differ in size without --image-size.
    """
    from pyro_vae.data.lazy import wants_lazy

    _check_image_mode(image_mode)
    size = parse_image_size(image_size)
    splits = _list_splits(root, name, valid_fraction, test_fraction, seed)
    labelled = {split: entries[0][1] is not None for split, entries in splits.items() if entries}
    if len(set(labelled.values())) > 1:
        which = ", ".join(
            f"{split}: {'labelled' if on else 'unlabelled'}" for split, on in labelled.items()
        )
        raise DataError(
            f"{root}: some splits have class subfolders and some do not ({which}); use class "
            "subfolders in every split or in none"
        )
    classes = sorted({label for entries in splits.values() for _, label in entries} - {None})
    key = _cache_key(root, splits, size, image_mode, seed, (valid_fraction, test_fraction))
    target = cache_dir() / "image-folders" / f"{key}.npy"
    about = target.with_suffix(".json")
    files = [path for split in SPLITS for path, _ in splits[split]]
    if target.is_file() and about.is_file():
        shape = tuple(json.loads(about.read_text())["image_shape"])
        logger.info("%s: decoded images read from the cache %s", root, target)
    else:
        shape = _shape_of(files, size, image_mode, root)
        about.parent.mkdir(parents=True, exist_ok=True)
        about.write_text(json.dumps({"folder": str(root.resolve()), "image_shape": shape}))
        _write_cache(files, shape, target)
    counts = np.cumsum([len(splits[split]) for split in SPLITS])
    num_bytes = int(counts[-1]) * int(np.prod(shape)) * 4
    mapped = wants_lazy(lazy, num_bytes)
    rows = np.load(target, mmap_mode="c" if mapped else None, allow_pickle=False)
    if rows.shape != (counts[-1], int(np.prod(shape))):
        target.unlink(missing_ok=True)
        raise DataError(f"the image cache {target} was damaged and is removed; run again")
    parts = (rows[: counts[0]], rows[counts[0] : counts[1]], rows[counts[1] :])
    labels = None
    if classes:
        index = {label: i for i, label in enumerate(classes)}
        labels = tuple(
            np.array([index[label] for _, label in splits[split]], dtype=np.int64)
            for split in SPLITS
        )
    return ImageFolder(parts, labels, shape, tuple(classes) if classes else None, mapped)
