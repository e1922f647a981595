"""Minibatches: one epoch of a split sliced on its device, optionally shuffled and binarized."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from pyro_vae.data.errors import DataError
from pyro_vae.data.pixels import _BATCH_BINARIZERS, _check_binarization


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
