"""Milliseconds per training step: hand-written PyTorch against pyro_vae, eager and compiled.

One process, the IWAE paper's 1-stochastic-layer net (784-200-200-50 tanh, Bernoulli
decoder), one Adam step on the single-sample ELBO per step. Four ways to take that step:

- ``hand eager``: the plain-PyTorch yardstick of ``iwae_reference.py`` (its encoder,
  decoder and log weights), ``loss.backward()``, ``torch.optim.Adam``;
- ``hand compiled``: the same step function under ``torch.compile``;
- ``hand eager, fused`` and ``hand compiled, fused``: the same two with
  ``torch.optim.Adam(fused=True)``, the kernel pyro_vae's optimizer uses: the fair yardstick
  for the optimizer's share of the step (ratios stay against ``hand eager``);
- ``pyro_vae eager``: the built-in ``mlp`` pair, ``pyro.infer.SVI`` with ``Trace_ELBO``
  and the run's optimizer (:func:`pyro_vae.infer.optimizers.make_optimizer`: one fused Adam), as
  ``pyro-vae train`` runs it;
- ``pyro_vae --compile``: the same programs, the loss traced once and compiled
  (:class:`pyro_vae.infer.compiled.CompiledSVI`), as ``pyro-vae train --compile`` runs it.

After a warm-up (the compile time is reported), the ways run interleaved: ``--repeats``
rounds of ``--steps`` steps each, one round of each way in turn, so drifts of the machine
touch all alike. Reported: the median ms per step over the rounds and its ratio to
the hand-written eager step. Then importance-sampled log p(x), K = ``--eval-samples`` on
``--eval-points`` points: the reference's ``evaluate``, pyro_vae's estimator eager and
compiled (``evaluate --compile``), in seconds. Random binary data: speed does not depend on
the data.

    python benchmarks/step_speed.py --batch-sizes 20 100 --repeats 9 --steps 20
    python benchmarks/step_speed.py --device cuda

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from iwae_reference import IMAGE_SIZE, Encoder, build_decoder  # noqa: E402
from iwae_reference import evaluate as reference_evaluate  # noqa: E402
from iwae_reference import log_weights as reference_log_weights  # noqa: E402

from pyro_vae.infer.compiled import CompiledLogWeights, CompiledSVI  # noqa: E402
from pyro_vae.infer.estimators import (  # noqa: E402
    chunk_size_for,
    estimate_log_px_in_batches,
    evaluation_view,
)
from pyro_vae.infer.optimizers import make_optimizer  # noqa: E402
from pyro_vae.pairs import build_pair, check_pair  # noqa: E402
from pyro_vae.runs.config import TrainConfig  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hand_written(device: torch.device, compiled: bool, fused: bool = False):
    """The plain-PyTorch step; returns ``step(x)``. ``fused``: ``torch.optim.Adam`` with
    PyTorch's fused kernel, as pyro_vae's optimizer runs it; otherwise Adam's defaults."""
    encoder, decoder = Encoder().to(device), build_decoder().to(device)
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3, **({"fused": True} if fused else {}))

    def loss_and_backward(x):
        loss = -reference_log_weights(encoder, decoder, x, num_samples=1).sum()
        loss.backward()
        return loss.detach()

    forward_backward = torch.compile(loss_and_backward) if compiled else loss_and_backward

    def step(x):
        optimizer.zero_grad(set_to_none=True)
        loss = forward_backward(x)
        optimizer.step()
        return loss

    return step


def pyro_vae_step(device: torch.device, compiled: bool, prefix: str):
    """pyro_vae's step on the built-in ``mlp`` pair (the IWAE net); returns ``step(x)``.

    Each way registers its modules under its own names: Pyro's param store is global."""
    pair = build_pair((28, 28), "mlp").to(device)
    model, guide = _renamed(pair.model, prefix), _renamed(pair.guide, prefix)
    config = TrainConfig(lr=1e-3)  # the defaults of pyro-vae train: Adam, one fused instance
    optimizer = make_optimizer(config, lambda name: config.lr)
    svi = pyro.infer.SVI(model, guide, optimizer, loss=pyro.infer.Trace_ELBO())
    if compiled:
        svi = CompiledSVI(model, guide, optimizer, modules=[pair], eager=svi,
                          on_note=lambda line: print(line, file=sys.stderr))  # fmt: skip
    return svi


def _renamed(program, prefix: str):
    """``program`` with every param site's name prefixed (two pairs in one param store)."""
    return _PrefixParams(prefix)(program)


class _PrefixParams(pyro.poutine.messenger.Messenger):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def _pyro_param(self, msg) -> None:
        name = f"{self.prefix}.{msg['name']}"
        msg["name"] = name
        msg["args"] = (name, *msg["args"][1:])  # the param store reads the first argument


def time_round(step, batches, device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    for x in batches:
        step(x)
    synchronize(device)
    return 1000 * (time.perf_counter() - started) / len(batches)


def evaluation_seconds(device: torch.device, points: int, samples: int, repeats: int) -> dict:
    """Seconds for importance-sampled log p(x), K = ``samples`` on ``points`` points, 100
    points per chunk and the same samples per chunk for all: the plain-PyTorch reference,
    pyro_vae eager, pyro_vae ``evaluate --compile``. Median of ``repeats``, interleaved,
    after one warm-up run each (its seconds reported: compiling, for the compiled way)."""
    x = (torch.rand(points, IMAGE_SIZE, device=device) < 0.3).float()
    chunk = chunk_size_for(100, IMAGE_SIZE)
    encoder, decoder = Encoder().to(device), build_decoder().to(device)
    pyro.clear_param_store()
    pair = build_pair((28, 28), "mlp").to(device)
    info = check_pair(pair, x[:2])
    view = evaluation_view(pair, info, x[:2])
    compiled_weights = CompiledLogWeights()

    def pyro_vae_run(trace_fn):
        return estimate_log_px_in_batches(
            view, x, samples, batch_size=100, max_plate_nesting=info.max_plate_nesting,
            vectorize=view.vectorizable, trace_fn=trace_fn,
        )  # fmt: skip

    ways = {
        "hand eager": lambda: reference_evaluate(encoder, decoder, x, samples, 100, chunk),
        "pyro_vae eager": lambda: pyro_vae_run(None),
        "pyro_vae --compile": lambda: pyro_vae_run(compiled_weights),
    }
    warmup, times = {}, {name: [] for name in ways}
    for name, run in ways.items():
        started = time.perf_counter()
        run()
        synchronize(device)
        warmup[name] = time.perf_counter() - started
    for _ in range(repeats):
        for name, run in ways.items():
            synchronize(device)
            started = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - started)
    reference = statistics.median(times["hand eager"])
    result: dict = {
        name: {"seconds": statistics.median(times[name]),
               "ratio": statistics.median(times[name]) / reference,
               "warmup_seconds": warmup[name]}
        for name in ways
    }  # fmt: skip
    result["graphs"] = len(compiled_weights.graphs)
    result["fallback"] = compiled_weights.fallback_reason
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--repeats", type=int, default=9, help="rounds per way (median)")
    parser.add_argument("--steps", type=int, default=20, help="steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="steps before timing")
    parser.add_argument("--eval-points", type=int, default=1000, help="0: skip the evaluation")
    parser.add_argument("--eval-samples", type=int, default=5000, help="K of the evaluation")
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pyro.set_rng_seed(0)
    result = {"device": str(device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "pyro": pyro.__version__, "batch_sizes": {}}  # fmt: skip
    for batch_size in args.batch_sizes:
        batches = (torch.rand(args.steps, batch_size, IMAGE_SIZE, device=device) < 0.3).float()
        pyro.clear_param_store()
        compiled_svi = pyro_vae_step(device, True, "compiled")
        ways = {
            "hand eager": hand_written(device, compiled=False),
            "hand compiled": hand_written(device, compiled=True),
            "hand eager, fused": hand_written(device, compiled=False, fused=True),
            "hand compiled, fused": hand_written(device, compiled=True, fused=True),
            "pyro_vae eager": pyro_vae_step(device, False, "eager").step,
            "pyro_vae --compile": compiled_svi.step,
        }
        warmup = {}
        for name, step in ways.items():
            started = time.perf_counter()
            for x in batches[: args.warmup]:
                step(x)
            synchronize(device)
            warmup[name] = time.perf_counter() - started
        rounds = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, step in ways.items():
                rounds[name].append(time_round(step, batches, device))
        medians = {name: statistics.median(times) for name, times in rounds.items()}
        reference = medians["hand eager"]
        result["batch_sizes"][batch_size] = {
            name: {"ms_per_step": medians[name], "ratio": medians[name] / reference,
                   "warmup_seconds": warmup[name]}
            for name in ways
        }  # fmt: skip
        # a fallback to eager Pyro would make the compiled row a second eager one: say so
        result["batch_sizes"][batch_size]["pyro_vae --compile"].update(
            graphs=compiled_svi.num_graphs, eager_steps=compiled_svi.eager_steps,
            fallback=compiled_svi.fallback_reason)  # fmt: skip
        print(f"\nbatch {batch_size} ({device}, {torch.get_num_threads()} threads, "
              f"median of {args.repeats} rounds of {args.steps} steps)")  # fmt: skip
        print(f"{'step':<24}{'ms/step':>10}{'ratio':>8}{'warm-up s':>12}")
        for name in ways:
            row = result["batch_sizes"][batch_size][name]
            print(f"{name:<24}{row['ms_per_step']:>10.2f}{row['ratio']:>8.2f}"
                  f"{row['warmup_seconds']:>12.1f}")  # fmt: skip
    if args.eval_points:
        evaluation = evaluation_seconds(device, args.eval_points, args.eval_samples,
                                        args.eval_repeats)  # fmt: skip
        result["evaluation"] = {"points": args.eval_points, "samples": args.eval_samples,
                                **evaluation}  # fmt: skip
        print(f"\nevaluation: K={args.eval_samples} on {args.eval_points} points "
              f"(median of {args.eval_repeats})")  # fmt: skip
        print(f"{'way':<22}{'seconds':>10}{'ratio':>8}{'warm-up s':>12}")
        for name in ("hand eager", "pyro_vae eager", "pyro_vae --compile"):
            row = evaluation[name]
            print(f"{name:<22}{row['seconds']:>10.2f}{row['ratio']:>8.2f}"
                  f"{row['warmup_seconds']:>12.1f}")  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
