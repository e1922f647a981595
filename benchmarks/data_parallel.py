"""Seconds per epoch with 1 and N processes (ranks), and the scaling efficiency.

Trains the same run (default: MNIST, the IWAE paper's 1-layer net, batch 100, dynamic
binarization) with ``pyro-vae train --nproc-per-node R`` for each R in ``--ranks``, one
torch thread per rank on the CPU (gloo) or one GPU per rank with ``--device cuda`` (nccl),
then evaluates each run with ``pyro-vae evaluate`` on 1 and on max(R) ranks. Reported: the
median seconds of the SVI steps per epoch (``train_seconds`` in metrics.csv; the first epoch,
which carries the start-up, is left out when there are more), the speed-up over one rank
and the efficiency speed-up / R, the last validation ELBO, and for the evaluation log p(x)
and seconds.

    python benchmarks/data_parallel.py --epochs 3 --ranks 1 2
    python benchmarks/data_parallel.py --device cuda --ranks 1 2 4 8

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def pyro_vae(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = shutil.which("pyro-vae")
    command = [script] if script else [sys.executable, "-m", "pyro_vae"]
    result = subprocess.run([*command, *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"pyro-vae {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def epoch_seconds(run_dir: Path) -> tuple[float, float, list[float]]:
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    seconds = [float(row["train_seconds"]) for row in rows]
    steady = seconds[1:] if len(seconds) > 1 else seconds
    return statistics.median(steady), float(rows[-1]["valid_elbo"]), seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--pair", default="mlp")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="train with --compile")
    parser.add_argument("--eval-samples", type=int, default=1000, help="0: no evaluation")
    parser.add_argument("--eval-points", type=int, default=1000)
    parser.add_argument("--out", help="folder for the runs (default: a temporary one)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="data_parallel_"))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    common = ["--dataset", args.dataset, "--pair", args.pair, "--epochs", str(args.epochs),
              "--batch-size", str(args.batch_size), "--seed", "0", "--device", args.device,
              "--no-progress"]  # fmt: skip
    if args.compile:
        common.append("--compile")
    result: dict = {"device": args.device, "epochs": args.epochs, "batch_size": args.batch_size,
                    "compile": args.compile, "runs": {}}  # fmt: skip
    for ranks in args.ranks:
        run_dir = out / f"ranks{ranks}"
        started = time.perf_counter()
        pyro_vae("train", *common, "--out", str(run_dir), "--nproc-per-node", str(ranks),
                 env=env)  # fmt: skip
        median, valid, seconds = epoch_seconds(run_dir)
        result["runs"][ranks] = {"median_epoch_seconds": median, "epoch_seconds": seconds,
                                 "valid_elbo": valid,
                                 "wall_seconds": time.perf_counter() - started}  # fmt: skip
    one = result["runs"][min(args.ranks)]["median_epoch_seconds"] * min(args.ranks)
    mode = "--compile" if args.compile else "eager"
    print(f"\n{args.dataset}, {args.pair}, batch {args.batch_size}, {args.device}, {mode}, "
          f"median of epochs 2..{args.epochs}")  # fmt: skip
    print(f"{'ranks':>6}{'s/epoch':>10}{'speed-up':>10}{'efficiency':>12}{'valid ELBO':>12}")
    for ranks, run in result["runs"].items():
        run["speedup"] = one / run["median_epoch_seconds"]
        run["efficiency"] = run["speedup"] / ranks
        print(f"{ranks:>6}{run['median_epoch_seconds']:>10.2f}{run['speedup']:>10.2f}"
              f"{run['efficiency']:>12.2f}{run['valid_elbo']:>12.3f}")  # fmt: skip
    if args.eval_samples:
        run_dir = out / f"ranks{max(args.ranks)}"
        result["evaluation"] = {}
        for ranks in sorted({1, max(args.ranks)}):
            flags = ["--num-samples", str(args.eval_samples), "--limit", str(args.eval_points),
                     "--json", "--no-progress"]  # fmt: skip
            if ranks > 1:
                flags += ["--nproc-per-node", str(ranks)]
            started = time.perf_counter()
            printed = pyro_vae("evaluate", str(run_dir), *flags, env=env).stdout
            summary = json.loads(printed.strip().splitlines()[-1])
            wall = time.perf_counter() - started
            row = {"log_px": summary["log_px"], "seconds": summary["seconds"]}
            result["evaluation"][ranks] = {**row, "wall_seconds": wall}
        print(f"\nevaluate, K={args.eval_samples} on {args.eval_points} points")
        print(f"{'ranks':>6}{'log p(x)':>12}{'seconds':>10}")
        for ranks, row in result["evaluation"].items():
            print(f"{ranks:>6}{row['log_px']:>12.4f}{row['seconds']:>10.2f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
