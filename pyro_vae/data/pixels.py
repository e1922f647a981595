"""What a data set's values become: the pixel scale an array file is divided by
(--pixel-scale) and the binarization (--binarize) that turns intensities into bits."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from pyro_vae.data.errors import DataError
from pyro_vae.data.splits import SPLITS

PIXEL_LEVELS = 255.0  # the top level of an 8-bit pixel


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


def _is_binary(tensor: torch.Tensor, block: int = 4096) -> bool:
    """True when every value is exactly 0 or 1; read `block` rows at a time, so a
    memory-mapped set is never held whole."""
    for start in range(0, tensor.shape[0], block):
        rows = tensor[start : start + block]
        if not bool(((rows == 0) | (rows == 1)).all()):
            return False
    return True
