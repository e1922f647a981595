"""Fault injection: training killed (SIGKILL) or stopped (SIGTERM) at each write point and
at random steps, then resumed, ends bit for bit where an uninterrupted run ends, with a
``best.pt`` that holds the epoch the history calls best.

Kills use the test hook ``PYRO_VAE_FAULT=POINT:N[:SIGNAL]`` (see :mod:`pyro_vae.runs.faults`):
the N-th pass of the process through POINT (``step``, ``written:FILE``, ``renamed:FILE``)
signals the process itself. A few kills run in CI; ``-m slow`` runs the campaign (every
write point at every pass, chains of random kills, kills at random wall-clock moments).
"""

import csv
import math
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from pyro_vae.runs.faults import parse_fault

EPOCHS, STEPS_PER_EPOCH = 5, 4
TRAIN = [
    "train", "--dataset", "digits", "--pair", "mlp",
    "--pair-kwargs", '{"hidden": [16], "z_dim": 3}', "--epochs", str(EPOCHS),
    "--batch-size", "50", "--train-limit", "200", "--lr", "0.15", "--device", "cpu",
    "--checkpoint-every", "3", "--seed", "1", "--no-progress",
]  # fmt: skip
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
TIMING = ("seconds", "train_seconds")
FILES = ("config.toml", "checkpoint.pt", "best.pt", "metrics.csv", "metrics.png")


def _command() -> list[str]:
    return [sys.executable, "-m", "pyro_vae"]


def _train(out: Path, fault: str | None = None, timeout: int = 300):
    """One ``pyro-vae train`` process on ``out``: a fresh start, or ``--resume`` where a
    checkpoint exists (what a user does after a crash)."""
    resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYRO_VAE_FAULT", None)
    if fault:
        env["PYRO_VAE_FAULT"] = fault
    return subprocess.run(
        [*_command(), *TRAIN, "--out", str(out), *resume], cwd=out.parent,
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip


def _expected_exits(fault: str) -> set[int]:
    """SIGKILL ends the process there; SIGTERM stops it at the next step boundary (130), or
    lets it finish (0) when it came during the last epoch's writes."""
    signum = parse_fault(fault)[2]
    return {-signal.SIGKILL} if signum == signal.SIGKILL else {130, 0}


def run_with_faults(out: Path, faults: list[str]) -> list[str]:
    """Train ``out`` through the processes ``faults`` kill, then once more to the end; return
    what each process said on stderr (for failure messages)."""
    out.mkdir(parents=True, exist_ok=True)
    said = []
    for fault in faults:
        result = _train(out, fault)
        said.append(f"--- {fault}: exit {result.returncode}\n{result.stderr}")
        assert result.returncode in _expected_exits(fault), "\n".join(said)
        if result.returncode == 130:
            assert "resume with: pyro-vae train" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
    result = _train(out)
    said.append(f"--- resumed to the end: exit {result.returncode}\n{result.stderr}")
    assert result.returncode == 0, "\n".join(said)
    return said


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _same(a, b, where: str) -> list[str]:
    """Where two checkpoint contents differ (tensors bit for bit, timings ignored)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a)} != {sorted(b)}"]
        keys = [k for k in a if k not in (*TIMING, "out")]
        return [d for k in keys for d in _same(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (u, v) in enumerate(zip(a, b)) for d in _same(u, v, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def _metrics(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def assert_consistent_and_identical(run_dir: Path, reference: Path, said: list[str]) -> None:
    """The run equals the reference bit for bit (parameters, optimizer, RNG, history), its
    ``best.pt`` holds the history's best epoch, and nothing of the kills is left over."""
    context = "\n".join(said)
    state, expected = _load(run_dir / "checkpoint.pt"), _load(reference / "checkpoint.pt")
    differences = _same(state, expected, "checkpoint.pt")
    best, expected_best = _load(run_dir / "best.pt"), _load(reference / "best.pt")
    differences += _same(best, expected_best, "best.pt")
    assert not differences, "\n".join(differences[:20]) + "\n" + context
    history = state["history"]
    assert len(history) == EPOCHS and "in_progress" not in state
    best_epoch = max(history, key=lambda row: row["valid_elbo"])["epoch"]
    assert best["epoch"] == best_epoch, context
    assert _metrics(run_dir) == _metrics(reference), context
    assert (run_dir / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(run_dir.glob(".*.tmp")), context


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end as."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_with_faults(out, [])
    history = _load(out / "checkpoint.pt")["history"]
    # the settings are chosen so that the last epoch is not the best: best.pt lags behind
    assert max(history, key=lambda row: row["valid_elbo"])["epoch"] < EPOCHS, history
    return out


def write_passes(reference: Path) -> dict[str, int]:
    """How often an uninterrupted run writes each file (from its history: every epoch
    writes checkpoint.pt and metrics.csv, an improving one best.pt; ``--checkpoint-every 3``
    adds a checkpoint at each multiple of 3 steps that does not end an epoch)."""
    history = _load(reference / "checkpoint.pt")["history"]
    improving, best = 0, -math.inf
    for row in history:
        if row["valid_elbo"] > best:
            improving, best = improving + 1, row["valid_elbo"]
    mid_epoch = sum(1 for s in range(3, TOTAL_STEPS + 1, 3) if s % STEPS_PER_EPOCH)
    return {
        "config.toml": 1,
        "checkpoint.pt": EPOCHS + mid_epoch,
        "best.pt": improving,
        "metrics.csv": EPOCHS,
        "metrics.png": 1,
    }


def every_write_point(reference: Path) -> list[str]:
    return [
        f"{phase}:{name}:{n}"
        for name, count in write_passes(reference).items()
        for n in range(1, count + 1)
        for phase in ("written", "renamed")
    ]


# -- in CI: each file's first write, both phases; a stop by signal; random steps ----------

CI_CHAINS = [
    ["written:config.toml:1", "written:checkpoint.pt:1", "renamed:checkpoint.pt:2"],
    ["renamed:config.toml:1", "written:best.pt:2", "renamed:best.pt:1"],
    ["written:metrics.csv:2", "renamed:metrics.csv:1", "written:metrics.png:1"],
    ["renamed:metrics.png:1"],
    ["step:6:SIGTERM", "written:checkpoint.pt:2:SIGTERM", "step:2"],
]


@pytest.mark.parametrize("faults", CI_CHAINS, ids=["+".join(c) for c in CI_CHAINS])
def test_killed_at_write_points_the_run_resumes_bit_identical(tmp_path, reference, faults):
    said = run_with_faults(tmp_path / "run", faults)
    assert_consistent_and_identical(tmp_path / "run", reference, said)


def test_killed_at_random_steps_the_run_resumes_bit_identical(tmp_path, reference):
    rng = random.Random(int(os.environ.get("PYRO_VAE_FAULT_SEED", "0")))
    faults = random_step_chain(rng, length=3)
    said = run_with_faults(tmp_path / "run", faults)
    assert_consistent_and_identical(tmp_path / "run", reference, said)


def random_step_chain(rng: random.Random, length: int) -> list[str]:
    """Kills at random steps, each counted from its own process's start and within the
    steps left, so that every process is killed before it finishes."""
    faults, done = [], 0
    for _ in range(length):
        left = TOTAL_STEPS - done - 1
        if left < 1:
            break
        n = rng.randint(1, left)
        faults.append(f"step:{n}")
        done += n  # the kill loses the steps since the last checkpoint: a lower bound
    return faults


def test_a_stop_saves_its_step_and_the_lock_of_a_killed_run_does_not_block(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stopped = _train(out, "step:5:SIGTERM")
    assert stopped.returncode == 130
    assert "SIGTERM: stopped after epoch 2, step 1, which is saved in" in stopped.stderr
    assert _load(out / "checkpoint.pt")["in_progress"]["batches_done"] == 1
    assert "resuming" not in stopped.stderr
    killed = _train(out, "step:2")  # global step 7; --checkpoint-every 3 saved step 6
    assert killed.returncode == -signal.SIGKILL and (out / "train.lock").exists()
    assert "after step 1 of epoch 2 (of 5 epochs)" in killed.stderr
    resumed = _train(out)
    assert resumed.returncode == 0, resumed.stderr
    assert "after step 2 of epoch 2 (of 5 epochs)" in resumed.stderr


# -- the campaign: python -m pytest -m slow tests/test_faults.py ---------------------------


def _campaign(reference: Path, root: Path, chains: list[list[str]], workers: int = 2) -> int:
    def one(index_chain):
        index, chain = index_chain
        out = root / f"run{index}"
        said = run_with_faults(out, chain)
        assert_consistent_and_identical(out, reference, said)
        return len(chain)

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(one, enumerate(chains)))


@pytest.mark.slow
def test_campaign_every_write_point_at_every_pass(tmp_path, reference):
    points = every_write_point(reference)
    signalled = [f"{point}:SIGTERM" for point in points[::3]]
    kills = _campaign(reference, tmp_path, [[p] for p in points + signalled])
    print(f"\n{kills} kills and stops at {len(points)} write points: all bit-identical")


def _next_fault(out: Path, rng: random.Random) -> str | None:
    """A kill that is sure to happen in the next process, chosen at random from the work it
    has left (from the checkpoint on disk): a step, or a pass through a write point."""
    done = _load(out / "checkpoint.pt")["step"] if (out / "checkpoint.pt").exists() else 0
    left = TOTAL_STEPS - done
    if left < 2:
        return None
    if rng.random() < 0.5:
        return f"step:{rng.randint(1, left - 1)}"
    remaining = range(done + 1, TOTAL_STEPS + 1)
    ends = sum(1 for s in remaining if s % STEPS_PER_EPOCH == 0)
    saves = sum(1 for s in remaining if s % STEPS_PER_EPOCH == 0 or s % 3 == 0)
    name, passes = rng.choice(
        [("config.toml", 1), ("checkpoint.pt", saves), ("metrics.png", 1), ("metrics.csv", ends)]
    )
    return f"{rng.choice(('written', 'renamed'))}:{name}:{rng.randint(1, passes)}"


@pytest.mark.slow
def test_campaign_chains_of_random_kills(tmp_path, reference):
    """Runs killed one to four times in a row, each time at a random step or write point of
    the work left, then resumed to the end."""
    rng = random.Random(2026)
    seeds = [rng.randrange(2**32) for _ in range(40)]

    def one(index):
        chain_rng, out, faults = random.Random(seeds[index]), tmp_path / f"run{index}", []
        out.mkdir()
        said = []
        for _ in range(chain_rng.randint(1, 4)):
            fault = _next_fault(out, chain_rng)
            if fault is None:
                break
            faults.append(fault)
            result = _train(out, fault)
            said.append(f"--- {fault}: exit {result.returncode}\n{result.stderr}")
            assert result.returncode == -signal.SIGKILL, "\n".join(said)
        said += run_with_faults(out, [])
        assert_consistent_and_identical(out, reference, said)
        return len(faults)

    with ThreadPoolExecutor(2) as pool:
        kills = sum(pool.map(one, range(len(seeds))))
    print(f"\n{kills} kills in {len(seeds)} chains: all bit-identical")


@pytest.mark.slow
def test_campaign_kills_at_random_moments(tmp_path, reference):
    """SIGKILL from outside at a random moment of the process's life (start-up, training,
    a write), as ``kill -9`` would; then resume."""
    rng = random.Random(7)
    probe = tmp_path / "probe" / "run"
    probe.mkdir(parents=True)
    started = time.perf_counter()
    _train(probe)
    lifetime = time.perf_counter() - started

    delays = [rng.uniform(0.3, 1.0) * lifetime for _ in range(20)]

    def one(index):
        out = tmp_path / f"run{index}"
        out.mkdir()
        process = subprocess.Popen(
            [*_command(), *TRAIN, "--out", str(out)], cwd=tmp_path,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        time.sleep(delays[index])
        process.send_signal(signal.SIGKILL)
        process.wait()
        said = run_with_faults(out, [])
        assert_consistent_and_identical(out, reference, said)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(len(delays))))
    print(f"\n{len(delays)} kills at random moments: all bit-identical")
