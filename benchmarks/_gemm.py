"""The yardstick the benchmarks measure compute against: this machine's fp32 ``torch.mm`` rate.
Imported by ``eval_gemm.py`` (at an evaluation's shapes) and ``paper_rows.py`` (one square
shape before each row's evaluation; a shared host's speed moves over hours)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class GemmSet:
    """``torch.mm`` into reused buffers at a list of (rows, in, out) shapes; ``run()`` is one
    pass over them all (their FLOP-weighted rate is the yardstick)."""

    def __init__(self, shapes: list[tuple[int, int, int]]) -> None:
        self.shapes = shapes
        self.operands = [(torch.randn(m, k), torch.randn(k, n), torch.empty(m, n))
                         for m, k, n in shapes]  # fmt: skip
        self.flops = [2 * m * k * n for m, k, n in shapes]

    def run(self, index: int | None = None) -> None:
        for i, (a, b, out) in enumerate(self.operands):
            if index is None or i == index:
                torch.mm(a, b, out=out)

    def rates(self, repeats: int) -> list[float]:
        """GFLOP/s of each shape alone: the median of ``repeats`` timed products."""
        return [self.flops[i] / median_seconds(lambda i=i: self.run(i), repeats, 2) / 1e9
                for i in range(len(self.shapes))]  # fmt: skip


def gemm_gflops(threads: int, side: int = 1024, repeats: int = 100) -> float:
    """This machine's square fp32 ``torch.mm`` rate now (GFLOP/s, ``threads`` torch threads),
    the median of ``repeats`` products (about 1 s at 1024 on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return GemmSet([(side, side, side)]).rates(repeats)[0]
    finally:
        torch.set_num_threads(before)
