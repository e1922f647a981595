"""Rows of published tables, trained to the end of their protocol on this machine.

Each row trains the IWAE paper's one-stochastic-layer net (``--pair mlp``: 784-200-200-50 tanh,
Bernoulli) with the ``pyro-vae`` CLI, ``--compile`` and ``--checkpoint-every``, then evaluates
``best.pt`` with ``pyro-vae evaluate --num-samples 5000 --compile`` on all 10 000 test points
(test log p(x) by importance sampling with q, and the test ELBO from the same run):

- ``burda-vae``: Burda et al. (2016) Table 1, VAE k=1: all 60 000 MNIST training images,
  dynamic binarization, the paper's schedule (3280 epochs, 3^i epochs at 1e-3 * 10^(-i/7)).
- ``burda-iwae-dreg-k5``: the same net and schedule trained by ``iwae-dreg`` with k=5 for a
  budget of training wall time: how far it gets against the paper's IWAE k=5.
- ``pythae-vae``, ``pythae-vampprior``: pythae's reproducibility table, fixed-binarized MNIST
  (50000/10000/10000), trained to early stopping on the validation ELBO.

Every row states its protocol and each deviation from the paper (``--list``). One command per
row, resumable: a row whose ``row.json`` exists is skipped, a row with a run directory resumes
its training (``--resume`` from the last checkpoint), an interrupted evaluation is redone.

    python benchmarks/paper_rows.py --row burda-vae --out runs/paper
    python benchmarks/paper_rows.py --rows all --out runs/paper
    python benchmarks/paper_rows.py --table --out runs/paper   # the Markdown table so far
    python benchmarks/paper_rows.py --list                      # each row's protocol

``--smoke`` runs every row on ``digits`` for 2 epochs, K=10 on 50 test points, eager, one
thread each and two rows at once (``--lanes``).

References: Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders;
Tucker et al. (2019), Doubly Reparameterized Gradient Estimators; Tomczak & Welling (2018),
VAE with a VampPrior; Chadebec et al. (2022), Pythae.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from _gemm import gemm_gflops
from _rows import (
    exit_on_sigterm,
    last_json_line,
    metrics,
    pyro_vae,
    train_command,
    train_until,
)

#: Burda et al.'s optimizer: Adam, betas 0.9/0.999, eps 1e-4, the paper's learning-rate stages.
BURDA_FLAGS = ["--pair", "mlp", "--lr-schedule", "iwae", "--adam-eps", "1e-4",
               "--adam-betas", "0.9", "0.999", "--batch-size", "100"]  # fmt: skip
#: pythae's rows: Adam 1e-3 at a constant rate, to early stopping; what differs from pythae's.
PYTHAE_FLAGS = ["--dataset", "binarized-mnist", "--pair", "mlp", "--lr", "1e-3",
                "--batch-size", "100"]  # fmt: skip
PYTHAE_DEVIATIONS = [
    "our mlp net 784-200-200-50 tanh (pythae uses each paper's own networks)",
    "our Adam 1e-3, batch 100 and stopping rule (patience, max epochs), not pythae's settings",
]


@dataclass
class Row:
    """One row of a published table: how we train it, how it differs, what the paper says."""

    protocol: str
    deviations: list[str]
    paper: dict[str, float]  # label -> the paper's test NLL, nats
    flags: list[str]
    stop: str  # "schedule": to the last epoch; "budget": wall minutes; "early": patience
    pair_kwargs: dict = field(default_factory=dict)


ROWS: dict[str, Row] = {
    "burda-vae": Row(
        protocol="Burda et al. 2016 Table 1, VAE k=1, 1 stochastic layer: mlp 784-200-200-50 "
        "tanh, MNIST all 60 000 training images (--valid-size 0), dynamic binarization, ELBO, "
        "Adam eps 1e-4 betas 0.9/0.999, 3280 epochs: 3^i epochs at 1e-3 * 10^(-i/7), i=0..7",
        deviations=["batch 100 (paper 20)",
                    "no validation set, so best.pt is the last epoch (as the paper's)",
                    "test images binarized once, with pyro_vae's fixed evaluation seed"],
        paper={"VAE k=1": 86.76},
        flags=["--dataset", "mnist", "--valid-size", "0", "--binarize", "dynamic",
               *BURDA_FLAGS],
        stop="schedule",
    ),
    "burda-iwae-dreg-k5": Row(
        protocol="the burda-vae net, data and schedule, trained by the IWAE bound with k=5 and "
        "DReG guide gradients (--objective iwae-dreg --num-particles 5) for a budget of "
        "training wall time (--budget-minutes, default 60), the schedule cut where it stops",
        deviations=["batch 100 (paper 20)",
                    "the schedule is cut by the budget (paper: all 3280 epochs)",
                    "DReG gradients (paper: the plain IWAE gradient; same bound)"],
        paper={"IWAE k=5": 85.54, "VAE k=5": 86.47},
        flags=["--dataset", "mnist", "--valid-size", "0", "--binarize", "dynamic",
               *BURDA_FLAGS, "--objective", "iwae-dreg", "--num-particles", "5"],
        stop="budget",
    ),
    "pythae-vae": Row(
        protocol="pythae's reproducibility table, VAE: fixed-binarized MNIST (Larochelle's, "
        "50000/10000/10000), ELBO, Adam 1e-3 constant, batch 100, early stopping on the "
        "validation ELBO (--patience epochs without improvement, default 20; at most "
        "--max-epochs, default 500); best.pt is the best validation epoch",
        deviations=PYTHAE_DEVIATIONS,
        paper={"pythae VAE": 89.78},
        flags=PYTHAE_FLAGS,
        stop="early",
    ),
    "pythae-vampprior": Row(
        protocol="as pythae-vae, with the VampPrior of Tomczak & Welling 2018 (500 learned "
        "pseudo-inputs)",
        deviations=PYTHAE_DEVIATIONS,
        paper={"pythae VampPrior": 85.79},
        flags=PYTHAE_FLAGS,
        stop="early",
        pair_kwargs={"prior": "vamp", "prior_components": 500},
    ),
}  # fmt: skip


def patience_spent(history: list[dict[str, str]], patience: int) -> bool:
    """True once ``patience`` finished epochs have passed without a better validation ELBO."""
    if not history:
        return False
    elbos = [float(row["valid_elbo"]) for row in history]
    best = max(range(len(elbos)), key=elbos.__getitem__)
    return len(elbos) - 1 - best >= patience


def machine(threads: int) -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.exists() else []  # fmt: skip
    return {"cpu": models[0] if models else platform.processor(), "cores": os.cpu_count(),
            "torch": version("torch"), "pyro": version("pyro-ppl"), "threads": threads}  # fmt: skip


def _train(name: str, row: Row, run_dir: Path, args, env: dict, log: Path) -> dict:
    """Train (or resume) the row's run to its stop; wall and CPU seconds kept in
    ``train_time.json`` across interruptions."""
    time_path = run_dir / "train_time.json"
    spent = json.loads(time_path.read_text()) if time_path.exists() else {}
    spent = {"wall_seconds": 0.0, "cpu_seconds": 0.0, "done": False, **spent}
    if spent["done"]:
        return spent
    flags = [*row.flags, "--pair-kwargs", json.dumps(row.pair_kwargs), "--seed", str(args.seed),
             "--checkpoint-every", str(args.checkpoint_every)]  # fmt: skip
    if row.stop == "early":
        flags += ["--epochs", str(args.max_epochs)]
    elif args.epochs is not None:
        flags += ["--epochs", str(args.epochs)]
    if args.compile:
        flags.append("--compile")
    budget = args.budget_minutes * 60

    def stop(cpu: float, wall: float) -> bool:
        now = {
            "wall_seconds": spent["wall_seconds"] + wall,
            "cpu_seconds": spent["cpu_seconds"] + cpu,
        }
        time_path.write_text(json.dumps({**spent, **now}))
        if row.stop == "budget":
            return spent["wall_seconds"] + wall >= budget
        return row.stop == "early" and patience_spent(metrics(run_dir), args.patience)

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    over = row.stop == "budget" and spent["wall_seconds"] >= budget
    if not over and not (row.stop == "early" and patience_spent(metrics(run_dir), args.patience)):
        wall, cpu, _ = train_until(train_command(run_dir, flags), env, log, stop)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        children = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        spent["wall_seconds"] += wall
        # getrusage counts every finished descendant, but of all the rows running at once
        spent["cpu_seconds"] += max(cpu, children) if args.lanes == 1 else cpu
    spent["done"] = True
    time_path.write_text(json.dumps(spent))
    return spent


def spread(values: list[float]) -> list[float] | None:
    """[min, median, max] of ``values`` (None for none)."""
    return [min(values), statistics.median(values), max(values)] if values else None


def run_row(name: str, args, out: Path) -> dict:
    """Train and evaluate one row; its JSON is ``OUT/NAME/row.json``."""
    row, run_dir = ROWS[name], out / name
    done_path = run_dir / "row.json"
    if done_path.exists():
        return json.loads(done_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "paper_rows.log"
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    spent = _train(name, row, run_dir, args, env, log)
    evaluate = ["evaluate", str(run_dir), "--num-samples", str(args.eval_samples), "--json",
                "--no-progress"]  # fmt: skip
    if args.eval_points is not None:
        evaluate += ["--limit", str(args.eval_points)]
    if args.compile:
        evaluate.append("--compile")
    history = metrics(run_dir)
    epoch_seconds = [float(epoch["train_seconds"]) for epoch in history]
    gflops = gemm_gflops(args.threads)
    started = time.monotonic()
    evaluation = json.loads(last_json_line(pyro_vae(*evaluate, env=env, log=log)))
    result = {
        "row": name,
        "protocol": row.protocol,
        "deviations": row.deviations + (["smoke: digits, 2 epochs, eager"] if args.smoke else []),
        "paper_nll": row.paper,
        "test_log_px": evaluation["log_px"],
        "test_log_px_stderr": evaluation.get("log_px_stderr"),
        "test_elbo": evaluation["elbo"],
        "eval_samples": args.eval_samples,
        "eval_points": evaluation.get("num_points", args.eval_points),
        "epochs": len(history),
        "train_step_seconds": sum(epoch_seconds),
        # min, median, max: a shared host's speed moves, and an epoch's time with it
        "epoch_seconds_range": spread(epoch_seconds),
        "train_wall_seconds": spent["wall_seconds"],
        "train_cpu_seconds": spent["cpu_seconds"],
        "eval_seconds": time.monotonic() - started,  # the command: start-up, compile, data
        "eval_compute_seconds": evaluation.get("seconds"),
        "machine": {**machine(args.threads), "gemm_gflops_before_eval": round(gflops, 1)},
        "command": f"python benchmarks/paper_rows.py --row {name} --out {out}",
        "run_dir": str(run_dir),
    }
    done_path.write_text(json.dumps(result, indent=1))
    return result


def table(results: list[dict]) -> str:
    """Markdown: our test NLL beside the paper's, the times and the machine, then deviations."""
    lines = [
        "| row | paper test NLL | our test NLL (s.e.) | our test −ELBO | epochs | "
        "train wall min | train CPU min | epoch s (min / median / max) | eval s | "
        "GEMM GFLOP/s at eval |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in results:
        paper = "; ".join(f"{label} {nll:.2f}" for label, nll in r["paper_nll"].items())
        stderr = r["test_log_px_stderr"]
        ours = f"{-r['test_log_px']:.2f}" + (f" ({stderr:.2f})" if stderr is not None else "")
        seconds = r.get("epoch_seconds_range")  # rows measured before it was kept have none
        seconds = " / ".join(f"{s:.1f}" for s in seconds) if seconds else "—"
        gflops = r["machine"].get("gemm_gflops_before_eval", "—")
        lines.append(
            f"| {r['row']} | {paper} | {ours} | {-r['test_elbo']:.2f} | {r['epochs']} | "
            f"{r['train_wall_seconds'] / 60:.1f} | {r['train_cpu_seconds'] / 60:.1f} | "
            f"{seconds} | {r['eval_seconds']:.0f} | {gflops} |"
        )
        notes.append(f"- {r['row']}: {r['protocol']}. Deviations: {'; '.join(r['deviations'])}.")
    if results:
        m = results[0]["machine"]
        notes.append(f"- machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, "
                     f"torch {m['torch']}, pyro-ppl {m['pyro']}; K={results[0]['eval_samples']} "
                     f"on {results[0]['eval_points']} test points")  # fmt: skip
    return "\n".join(lines + [""] + notes)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder of the runs; one NAME/row.json per row")
    parser.add_argument(
        "--row",
        "--rows",
        dest="rows",
        default=None,
        help=f"comma list of rows, or all: {', '.join(ROWS)}",
    )
    parser.add_argument("--list", action="store_true", help="print each row's protocol")
    parser.add_argument("--table", action="store_true", help="print the table of rows done")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (OMP_NUM_THREADS) of training and evaluation (default 2; 1 with "
        "--smoke, whose small matrices gain nothing from a second thread)",
    )
    parser.add_argument(
        "--lanes",
        type=int,
        default=None,
        help="rows at once (default 1, so that each row's times are a quiet machine's; "
        "2 with --smoke)",
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=60.0,
        help="training wall minutes of burda-iwae-dreg-k5 (default 60)",
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=20,
        help="pythae rows: epochs without a better validation ELBO (default 20)",
    )
    parser.add_argument(
        "--max-epochs", type=int, default=500, help="pythae rows: epochs at most (default 500)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="cut the burda rows' schedule at this epoch (default: all 3280)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=600,
        help="SVI steps between checkpoints (default 600: an epoch of MNIST)",
    )
    parser.add_argument("--eval-samples", type=int, default=5000)
    parser.add_argument("--eval-points", type=int, default=None, help="default: all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every row on digits, 2 epochs, K=10 on 50 test points, eager, 1 thread",
    )
    args = parser.parse_args(argv)  # fmt: skip
    exit_on_sigterm()
    if args.list:
        for name, row in ROWS.items():
            paper = ", ".join(f"{label} {nll}" for label, nll in row.paper.items())
            print(f"{name} (paper test NLL: {paper})\n  protocol: {row.protocol}\n"
                  f"  deviations: {'; '.join(row.deviations)}\n"
                  f"  command: python benchmarks/paper_rows.py --row {name} --out OUT")  # fmt: skip
        return []
    if args.out is None:
        parser.error("--out is required (the folder of the runs)")
    out = Path(args.out)
    if args.table:
        done = [out / name / "row.json" for name in ROWS]
        results = [json.loads(path.read_text()) for path in done if path.exists()]
        print(table(results))
        return results
    if args.rows is None and not args.smoke:
        parser.error("choose --row NAME (or --rows all), --table or --list")
    names = list(ROWS) if args.rows in (None, "all") else [
        name.strip() for name in args.rows.split(",") if name.strip()]  # fmt: skip
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown row(s) {unknown}; choose from {', '.join(ROWS)} or all")
    if args.smoke:
        for row in ROWS.values():
            row.flags = [*row.flags, "--dataset", "digits"]
            row.pair_kwargs = {**row.pair_kwargs, "prior_components": 20} if row.pair_kwargs else {}
        args.epochs, args.max_epochs, args.patience = 2, 2, 1
        args.checkpoint_every, args.budget_minutes = 5, 10.0
        args.eval_samples, args.eval_points, args.compile = 10, 50, False
    if args.threads is None:
        args.threads = 1 if args.smoke else 2
    if args.lanes is None:
        args.lanes = 2 if args.smoke else 1

    def run(name: str) -> dict:
        result = run_row(name, args, out)
        print(f"{name}: test NLL {-result['test_log_px']:.2f} after {result['epochs']} epochs",
              file=sys.stderr, flush=True)  # fmt: skip
        return result

    with ThreadPoolExecutor(max_workers=args.lanes) as pool:
        results = list(pool.map(run, names))
    print(table(results))
    return results


if __name__ == "__main__":
    main()
