"""Flow guides and learned priors on fixed-binarization MNIST: which gap does each close?

Each row trains the IWAE paper's one-stochastic-layer net (``--pair mlp``: 784-200-200-50
tanh) on ``binarized-mnist`` (Larochelle's fixed binarization: 50000 train, 10000 valid,
10000 test) with the engine's schedule (``--lr-schedule iwae``: 3^i epochs at
1e-3 * 10^(-i/7), Adam eps 1e-4, batch 100, ``--compile``) for the same budget of training
time on one CPU thread. The run is stopped by SIGTERM once its training seconds pass the budget
(the engine saves and stops; ``best.pt`` is its best finished epoch by validation ELBO). Then,
one thread again:

- ``pyro-vae evaluate --num-samples K --limit N``: test log p(x) by importance sampling with
  q and the test ELBO from the same weights, on the first N test points;
- ``pyro-vae diagnose --points P``: PSIS k-hat and the amortization and approximation gaps
  (Cremer et al. 2018) on the first P test points.

Rows: VAE, VAE+IAF, VAE+planar, VampPrior, IWAE k=50, VampPrior+IAF (``--rows`` picks some).
Two rows run at once by default (``--lanes``), each on one thread.

    python benchmarks/flows_priors.py --out runs/flows-priors --budget-minutes 10

prints a Markdown table and writes ``results.json`` in ``--out``; an interrupted table is
resumed by the same command (finished steps are kept, a row's training resumes only if it
has not reached its budget). ``--smoke`` runs every row for a few seconds on ``digits``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _rows import (
    exit_on_sigterm,
    last_json_line,
    pyro_vae,
    train_command,
    train_seconds,
    train_until,
)

#: name -> (--pair-kwargs, extra train flags)
ROWS: dict[str, tuple[dict, list[str]]] = {
    "VAE": ({}, []),
    "VAE+IAF": ({"flow": "iaf", "flow_steps": 4}, []),
    "VAE+planar": ({"flow": "planar", "flow_steps": 8}, []),
    "VampPrior": ({"prior": "vamp", "prior_components": 500}, []),
    "IWAE k=50": ({}, ["--objective", "iwae", "--num-particles", "50"]),
    "VampPrior+IAF": ({"prior": "vamp", "prior_components": 500, "flow": "iaf", "flow_steps": 4},
                      []),
}  # fmt: skip
#: pythae's published figures on the same data (their budgets and nets differ from ours).
PYTHAE = {"VAE": 89.78, "VampPrior": 85.79, "IWAE k=50": 86.82}


def _train(name: str, run_dir: Path, args, env: dict, log: Path) -> float:
    """Train until the training process has used the budget of CPU seconds, then SIGTERM it
    (the engine saves and stops). CPU time, not wall time: other work on the machine slows a
    row down but does not take epochs from it. Returns the CPU seconds used (kept in
    ``cpu_seconds.txt`` across an interrupted table)."""
    budget = args.budget_minutes * 60
    spent_path = run_dir / "cpu_seconds.txt"
    spent = float(spent_path.read_text()) if spent_path.exists() else 0.0
    if spent >= budget:
        return spent
    kwargs, extra = ROWS[name]
    flags = ["--dataset", args.dataset, "--pair", "mlp", "--pair-kwargs", json.dumps(kwargs),
             *extra, "--lr-schedule", "iwae", "--adam-eps", "1e-4", "--batch-size", "100",
             "--seed", str(args.seed)]  # fmt: skip
    if args.compile:
        flags.append("--compile")

    def over_budget(cpu: float, wall: float) -> bool:
        spent_path.write_text(str(spent + cpu))
        return spent + cpu >= budget

    _, used, _ = train_until(train_command(run_dir, flags), env, log, over_budget)
    spent += used
    spent_path.write_text(str(spent))
    if spent < budget:
        raise RuntimeError(f"{name}: training ended before its budget; see {log}")
    return spent


def _row(name: str, args, out: Path) -> dict:
    run_dir = out / name.replace(" ", "_").replace("=", "").replace("+", "_")
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "table.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done_path = run_dir / "row.json"
    if done_path.exists():
        return json.loads(done_path.read_text())
    cpu = _train(name, run_dir, args, env, log)
    seconds = train_seconds(run_dir)
    per_epoch = [b - a for a, b in zip([0.0, *seconds[:-1]], seconds)]
    evaluation = json.loads(last_json_line(pyro_vae(
        "evaluate", str(run_dir), "--num-samples", str(args.eval_samples), "--limit",
        str(args.eval_points), "--json", "--no-progress", env=env, log=log,
    )))  # fmt: skip
    diagnosis = json.loads(last_json_line(pyro_vae(
        "diagnose", str(run_dir), "--points", str(args.diagnose_points), "--num-samples",
        str(args.diagnose_samples), "--json", "--no-progress", env=env, log=log,
    )))  # fmt: skip
    khat = diagnosis["khat"]  # None where k-hat is infinite: unreliable too
    unreliable = sum(1 for k in khat if k is None or k > 0.7) / len(khat)
    row = {
        "row": name,
        "pair_kwargs": ROWS[name][0],
        "train_flags": ROWS[name][1],
        "epochs": len(seconds),
        "cpu_minutes": cpu / 60,
        "cpu_seconds_per_epoch": cpu / len(seconds),
        "train_minutes": seconds[-1] / 60,
        "seconds_per_epoch": statistics.median(per_epoch),
        "test_log_px": evaluation["log_px"],
        "test_log_px_stderr": evaluation.get("log_px_stderr"),
        "test_elbo": evaluation["elbo"],
        "eval_points": args.eval_points,
        "eval_samples": args.eval_samples,
        "diagnose_log_px": diagnosis["log_px"],
        "diagnose_elbo": diagnosis["elbo"],
        "amortization_gap": diagnosis["amortization_gap"],
        "approximation_gap": diagnosis["approximation_gap"],
        "q_star_family": diagnosis.get("q_star_family"),
        "khat_above_0_7": unreliable,
        "diagnose_points": args.diagnose_points,
        "run_dir": str(run_dir),
    }
    done_path.write_text(json.dumps(row, indent=1))
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| row | epochs in budget | CPU s/epoch | test log p(x) | test ELBO | log p(x) − ELBO "
        "| amortization gap | approximation gap | k-hat > 0.7 | pythae |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reference = PYTHAE.get(r["row"])
        lines.append(
            f"| {r['row']} | {r['epochs']} | {r['cpu_seconds_per_epoch']:.1f} | "
            f"{r['test_log_px']:.2f} | {r['test_elbo']:.2f} | "
            f"{r['test_log_px'] - r['test_elbo']:.2f} | {r['amortization_gap']:.2f} | "
            f"{r['approximation_gap']:.2f} | {100 * r['khat_above_0_7']:.0f}% | "
            f"{f'−{reference:.2f}' if reference else ''} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder of the runs and results.json")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of: {', '.join(ROWS)}")
    parser.add_argument("--dataset", default="binarized-mnist")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=13.0,
        help="training seconds per row, one thread (default 13 minutes)",
    )
    parser.add_argument("--eval-samples", type=int, default=5000)
    parser.add_argument("--eval-points", type=int, default=1000)
    parser.add_argument("--diagnose-points", type=int, default=100)
    parser.add_argument("--diagnose-samples", type=int, default=1000)
    parser.add_argument("--lanes", type=int, default=2, help="rows at once, one thread each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="digits, a few seconds per row, small K: checks the script runs",
    )
    args = parser.parse_args(argv)  # fmt: skip
    exit_on_sigterm()
    names = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown row(s) {unknown}; choose from {', '.join(ROWS)}")
    if args.smoke:
        args.dataset, args.budget_minutes = "digits", 0.2
        args.eval_samples, args.eval_points = 50, 50
        args.diagnose_points, args.diagnose_samples = 5, 100
        args.compile = False
        ROWS["VampPrior"][0]["prior_components"] = 20
        ROWS["VampPrior+IAF"][0]["prior_components"] = 20
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    results: dict[str, dict] = {}

    def run(name: str) -> None:
        row = _row(name, args, out)
        with lock:
            results[name] = row
            print(f"{name}: done ({row['epochs']} epochs)", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=args.lanes) as pool:
        for future in [pool.submit(run, name) for name in names]:
            future.result()
    rows = [results[name] for name in names]
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
