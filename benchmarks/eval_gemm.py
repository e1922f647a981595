"""The compiled IS evaluation against this machine's matmul throughput.

``pyro-vae evaluate --compile`` computes K importance log weights per point as compiled graphs
(:class:`pyro_vae.infer.compiled.CompiledLogWeights`), one chunk of samples at a time. On the
IWAE paper's 1-layer net (encoder 784-200-200 tanh -> 50-d Normal, decoder 50-200-200-784 tanh,
Bernoulli logits: the built-in ``mlp`` pair) almost all the arithmetic is matrix products, so
the yardstick is the rate of ``torch.mm`` on this machine. Measured in one process:

- (a) the fp32 GEMM rate of ``torch.mm`` (into a buffer it reuses) at the shapes of the
  evaluation's linear layers (decoder on K_chunk * B rows, encoder on B rows) and at one
  large square shape;
- (b) the evaluation's achieved FLOP rate: the FLOPs of its matrix products, counted
  analytically (2 * rows * in * out per linear layer: the decoder on every sample, the encoder
  on the batch's points once per chunk of samples), over the median seconds of ``--repeats``
  runs after a warm-up, and its ratio to (a) measured in between, so the machine's other load
  touches both alike;
- (c) where the rest goes: a torch.profiler breakdown of one run (matrix products; the bias
  copied into each product's output; Inductor's fused elementwise kernels: tanh, softplus, the
  Bernoulli log-prob of 784 logits per sample, the Normal log-probs and their sums; random
  numbers), the minor page faults per run, and standalone timings at the chunk's shape of
  the draws, the summary's logsumexp, and the writing of a buffer fresh from the allocator
  against a reused one (the cost of page faults).

Each ``--max-elements`` value (the bound on K_chunk * B * D of one chunk) is a configuration:
``2**24`` was the estimator's bound before this benchmark, ``default`` is today's
(:func:`pyro_vae.infer.estimators.default_max_elements`). Random binary data: the speed does
not depend on the pixel values, and the weights are the initial ones.

    python benchmarks/eval_gemm.py                       # 200 points, K=5000, batches of 100
    python benchmarks/eval_gemm.py --smoke               # a few seconds plus compiling

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import time
from typing import Any

import pyro
import torch
from _gemm import GemmSet, median_seconds
from torch import nn
from torch.profiler import ProfilerActivity, profile

from pyro_vae.infer.compiled import CompiledLogWeights
from pyro_vae.infer.estimators import (
    chunk_size_for,
    default_max_elements,
    estimate_log_px,
    evaluation_view,
)
from pyro_vae.pairs import build_pair, check_pair

PAIR_KWARGS = {"hidden": [200, 200], "z_dim": 50, "activation": "tanh"}


def linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    """(in, out) of every ``nn.Linear`` in ``module``, in order."""
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def matmul_flops(pair: Any, points: int, samples: int, chunk: int, batch_size: int) -> float:
    """FLOPs of the matrix products of one evaluation: the decoder on every (sample, point),
    the encoder on each batch's points once per chunk of samples (the guide runs per chunk)."""
    decoder = sum(2 * i * o for i, o in linear_shapes(pair.decoder))
    encoder = sum(2 * i * o for i, o in linear_shapes(pair.encoder))
    chunks_per_batch = math.ceil(samples / chunk)
    return points * samples * decoder + points * chunks_per_batch * encoder


def evaluation_run(view: Any, info: Any, x: torch.Tensor, samples: int, batch_size: int,
                   max_elements: int, compiled: CompiledLogWeights):  # fmt: skip
    """One compiled evaluation of ``x``, batch i seeded ``i`` (as ``evaluate`` seeds them)."""

    def run() -> torch.Tensor:
        out = []
        for i, start in enumerate(range(0, x.shape[0], batch_size)):
            torch.manual_seed(i)
            result = estimate_log_px(view, x[start : start + batch_size], samples,
                                     max_plate_nesting=info.max_plate_nesting,
                                     max_elements=max_elements, vectorize=True,
                                     trace_fn=compiled)  # fmt: skip
            out.append(result["log_px"])
        return torch.cat(out)

    return run


def kernel_profiled(graph):
    """``compile_graph`` with each of Inductor's C++ kernels recorded by torch.profiler
    under its own name (``cpp_fused_tanh_0``, ...): what each fused elementwise kernel costs."""
    options = {"fallback_random": True, "cpp.enable_kernel_profile": True}
    return torch.compile(graph, options=options)


def profile_breakdown(run) -> dict[str, Any]:
    """Seconds of one ``run()`` by kind, from torch.profiler's per-op self times; ``run``
    uses graphs compiled by :func:`kernel_profiled`, whose kernels are listed by name."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        run()
        wall = time.perf_counter() - started
    kinds = dict.fromkeys(KINDS, 0.0)
    kernels: dict[str, float] = {}
    for event in prof.key_averages():
        self_s, total_s = event.self_cpu_time_total / 1e6, event.cpu_time_total / 1e6
        if event.key in ("aten::addmm", "aten::mm"):
            kinds["matmul"] += self_s
            kinds["bias copied into the matmul output"] += total_s - self_s
        elif "cpp_fused" in event.key:
            kinds["fused elementwise kernels"] += self_s
            kernels[event.key] = kernels.get(event.key, 0.0) + self_s
        elif event.key in ("aten::normal_", "aten::randn"):
            kinds["random numbers"] += self_s
        elif event.key in ("aten::logsumexp", "aten::cat", "aten::exp", "aten::mean"):
            kinds["summaries"] += total_s
    kinds["the rest"] = max(0.0, wall - sum(kinds.values()))
    return {"wall_seconds": wall, "kinds": kinds, "kernels": kernels}


#: What each kind of :func:`profile_breakdown` counts.
KINDS = {
    "matmul": "aten::addmm and aten::mm, self time (MKL's sgemm)",
    "bias copied into the matmul output": "addmm's copy of the bias into its output",
    "fused elementwise kernels": "Inductor's C++ kernels: tanh, softplus, log-probs, sums",
    "random numbers": "aten::normal_ (the guide's draws)",
    "summaries": "logsumexp, ESS, cat of the chunks, outside the graph",
    "the rest": "Pyro and Python outside the graph, the graph's wrapper, dispatch",
}


def piece_timings(rows: int, x_dim: int, z_dim: int, samples: int, points: int,
                  repeats: int) -> dict[str, float]:  # fmt: skip
    """Milliseconds of pieces alone at the chunk's ``rows``: the draws, the summary's
    logsumexp, and writing a (rows, x_dim) buffer fresh from the allocator against reused."""
    weights, reused = torch.randn(samples, points), torch.empty(rows, x_dim)
    pieces = {
        f"randn ({rows} x {z_dim})": lambda: torch.randn(rows, z_dim),
        f"logsumexp over K ({samples} x {points})": lambda: torch.logsumexp(weights, 0),
        f"fill a fresh buffer ({rows} x {x_dim})": lambda: torch.empty(rows, x_dim).fill_(1.0),
        f"fill a reused buffer ({rows} x {x_dim})": lambda: reused.fill_(1.0),
    }
    return {name: 1000 * median_seconds(fn, repeats, 2) for name, fn in pieces.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--samples", type=int, default=5000, help="K per point")
    parser.add_argument("--batch-size", type=int, default=100, help="points per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median)")
    parser.add_argument("--square", type=int, default=2048, help="side of the square GEMM")
    parser.add_argument(
        "--max-elements",
        nargs="+",
        default=[str(2**24), "default"],
        help="bounds on K_chunk * B * D to compare ('default': today's)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds, not minutes")
    args = parser.parse_args(argv)
    if args.smoke:
        args.points, args.samples, args.batch_size, args.repeats = 20, 64, 10, 1
        args.square = 256
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pair = build_pair((28, 28), "mlp", pair_kwargs=PAIR_KWARGS)
    x = (torch.rand(args.points, 784) < 0.3).float()
    info = check_pair(pair, x[:2])
    pair.eval()
    view = evaluation_view(pair, info, x[:2])
    compiled = CompiledLogWeights()
    profiled = CompiledLogWeights(compiler=kernel_profiled)
    square = GemmSet([(args.square, args.square, args.square)])
    result: dict[str, Any] = {
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "points": args.points, "samples": args.samples, "batch_size": args.batch_size,
        "repeats": args.repeats, "configs": {},
    }  # fmt: skip
    configs = {}
    for name in args.max_elements:
        max_elements = default_max_elements(x.device) if name == "default" else int(name)
        chunk = min(args.samples, chunk_size_for(args.batch_size, 784, max_elements))
        rows = chunk * args.batch_size
        config = {"max_elements": max_elements, "chunk": chunk, "rows": rows}
        config["gemms"] = GemmSet(
            [(rows, i, o) for i, o in linear_shapes(pair.decoder)]
            + [(args.batch_size, i, o) for i, o in linear_shapes(pair.encoder)]
        )
        config["run"] = evaluation_run(view, info, x, args.samples, args.batch_size,
                                       max_elements, compiled)  # fmt: skip
        started = time.perf_counter()
        config["run"]()  # warm-up: traces and compiles one graph per chunk size
        config["warmup"] = time.perf_counter() - started
        config["seconds"], config["gemm_seconds"], config["faults"] = [], [], []
        configs[name] = config
    for _ in range(args.repeats):
        # interleaved, each run next to a pass of torch.mm at its shapes: the machine's
        # other load touches the configurations and the yardstick alike
        for config in configs.values():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            started = time.perf_counter()
            config["run"]()
            config["seconds"].append(time.perf_counter() - started)
            config["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            config["gemm_seconds"].append(median_seconds(config["gemms"].run, 3, 1))
    for name, config in configs.items():
        gemms, chunk = config["gemms"], config["chunk"]
        flops = matmul_flops(pair, args.points, args.samples, chunk, args.batch_size)
        paired = zip(config["seconds"], config["gemm_seconds"], strict=True)
        ratios = [(flops / e) / (sum(gemms.flops) / g) for e, g in paired]
        seconds = statistics.median(config["seconds"])
        gemm_rate = sum(gemms.flops) / statistics.median(config["gemm_seconds"]) / 1e9
        square_rate = square.rates(3)[0]
        profiled_run = evaluation_run(view, info, x, args.samples, args.batch_size,
                                      config["max_elements"], profiled)  # fmt: skip
        profiled_run()  # compiles the kernel-profiled graphs, outside the profile
        result["configs"][name] = {
            "max_elements": config["max_elements"], "chunk_samples": chunk,
            "decoder_rows": config["rows"], "warmup_seconds": config["warmup"],
            "seconds": seconds, "seconds_each": config["seconds"], "matmul_gflop": flops / 1e9,
            "achieved_gflops": flops / seconds / 1e9, "gemm_gflops_at_eval_shapes": gemm_rate,
            "gemm_gflops_square": square_rate,
            # the median of each run's rate over the GEMM rate measured right after it
            "ratio_to_gemm": statistics.median(ratios),
            "ratio_to_square": flops / seconds / 1e9 / square_rate,
            "gemm_gflops_by_shape": {f"{m}x{k}x{n}": rate for (m, k, n), rate
                                     in zip(gemms.shapes, gemms.rates(3), strict=True)},
            "minor_page_faults_per_run": statistics.median(config["faults"]),
            "profile_seconds": profile_breakdown(profiled_run),
            "pieces_ms": piece_timings(config["rows"], 784, 50, args.samples, args.batch_size,
                                       max(3, args.repeats)),
        }  # fmt: skip
    result["graphs"] = len(compiled.graphs)
    result["fallback"] = compiled.fallback_reason
    print_tables(result)
    print(json.dumps(result))
    return result


def print_tables(result: dict) -> None:
    print(f"\ncompiled IS evaluation: K={result['samples']} on {result['points']} points, "
          f"batches of {result['batch_size']}, {result['threads']} threads, "
          f"median of {result['repeats']}")  # fmt: skip
    head = ("max_elements", "chunk", "s", "GFLOP/s", "GEMM GFLOP/s", "ratio", "square",
            "faults/run")  # fmt: skip
    print(f"{head[0]:<14}{head[1]:>7}{head[2]:>9}{head[3]:>9}{head[4]:>14}{head[5]:>7}"
          f"{head[6]:>8}{head[7]:>12}")  # fmt: skip
    for name, row in result["configs"].items():
        print(f"{name:<14}{row['chunk_samples']:>7}{row['seconds']:>9.2f}"
              f"{row['achieved_gflops']:>9.1f}{row['gemm_gflops_at_eval_shapes']:>14.1f}"
              f"{row['ratio_to_gemm']:>7.2f}{row['gemm_gflops_square']:>8.1f}"
              f"{row['minor_page_faults_per_run']:>12.0f}")  # fmt: skip
    for name, row in result["configs"].items():
        print(f"\nmax_elements {name}: GEMM GFLOP/s by shape (rows x in x out)")
        for shape, rate in row["gemm_gflops_by_shape"].items():
            print(f"  {shape:<22}{rate:>8.1f}")
        profiled = row["profile_seconds"]
        print(f"  one run, profiled ({profiled['wall_seconds']:.3f} s): seconds by kind")
        for kind, seconds in profiled["kinds"].items():
            print(f"  {kind:<36}{seconds:>8.3f}  {KINDS[kind]}")
        for kernel, seconds in sorted(profiled["kernels"].items(), key=lambda kv: -kv[1]):
            print(f"    {kernel[:70]:<72}{seconds:>8.3f}")
        print("  pieces alone (eager, ms)")
        for piece, ms in row["pieces_ms"].items():
            print(f"  {piece:<58}{ms:>8.2f}")


if __name__ == "__main__":
    main()
