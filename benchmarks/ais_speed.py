"""Seconds per point of AIS against importance sampling at matched compute.

AIS with S steps, L leapfrog steps and C chains evaluates the joint density and its gradient
in z about C (1 + (S - 1) L) times per point, and as many again for the pilot run that tunes
the step sizes (a quarter of the chains): :func:`pyro_vae.infer.ais.density_evaluations`.
Importance sampling with K equal to that count makes as many decoder passes, without the
gradients. Both run on the IWAE paper's 1-stochastic-layer net (784-200-200-50 tanh,
Bernoulli decoder), untrained, on random binary points: speed does not depend on the weights
or the data.

Reported, per point (the median of ``--repeats`` timed runs after a warm-up, and its ratio
to compiled IS in the same process): AIS with its densities as the traced ``make_fx`` graph
(the default) and, with ``--compiled``, compiled by ``torch.compile``; IS eager and compiled
(``evaluate --compile``), all on the same points.

    OMP_NUM_THREADS=1 python benchmarks/ais_speed.py --points 20 --steps 50 --chains 4

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pyro
import torch

from pyro_vae.infer.ais import ais_log_px, density_evaluations, make_runner
from pyro_vae.infer.compiled import CompiledLogWeights
from pyro_vae.infer.estimators import estimate_log_px, evaluation_view
from pyro_vae.pairs import build_pair, check_pair, evaluation_mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--leapfrog-steps", type=int, default=10)
    parser.add_argument("--compiled", action="store_true", help="also AIS under torch.compile")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median counts")
    args = parser.parse_args()

    torch.manual_seed(0)
    pair = build_pair((1, 28, 28), "mlp", {"hidden": [200, 200], "z_dim": 50,
                                            "activation": "tanh"})  # fmt: skip
    pair.to(args.device)
    x = torch.bernoulli(torch.full((args.points, 784), 0.3, device=args.device))
    info = check_pair(pair, x)
    view = evaluation_view(pair, info, x[:2])
    compute = density_evaluations(args.steps, args.leapfrog_steps, args.chains)
    results: dict[str, float] = {}

    def timed(name: str, run, warm: bool = True) -> None:
        if warm:  # trace or compile outside the timing
            run()
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            run()
            times.append((time.perf_counter() - started) / args.points)
        results[name] = statistics.median(times)

    with evaluation_mode(pair), pyro.validation_enabled(False):
        for graph in ("traced", "compiled") if args.compiled else ("traced",):
            runner = make_runner(graph)
            timed(f"ais {graph}", lambda runner=runner: ais_log_px(
                view, x, steps=args.steps, chains=args.chains,
                leapfrog_steps=args.leapfrog_steps, runner=runner))  # fmt: skip
        compiled = CompiledLogWeights()
        for name, trace_fn in (("is eager", None), ("is compiled", compiled)):
            timed(name, lambda trace_fn=trace_fn: estimate_log_px(
                view, x, compute, max_plate_nesting=info.max_plate_nesting,
                trace_fn=trace_fn))  # fmt: skip
    reference = results["is compiled"]  # the ratio is against IS in this same process
    for name, seconds in results.items():
        print(f"{name:14s} {1000 * seconds:10.1f} ms per point  {seconds / reference:6.1f} x IS "
              "compiled")  # fmt: skip
    print(json.dumps({
        "seconds_per_point": results,
        "ratio_to_is_compiled": {name: seconds / reference for name, seconds in results.items()},
        "repeats": args.repeats,
        "density_evaluations_per_point": compute,
        "steps": args.steps, "chains": args.chains, "leapfrog_steps": args.leapfrog_steps,
        "points": args.points, "device": args.device, "num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
