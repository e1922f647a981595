"""One trainer per run directory: the lock (``train.lock``, ``fcntl.flock``), concurrent
starts, stale locks and stale temporary files."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from pyro_vae.runs.lock import LOCK, RunInUseError, remove_stale_temporaries, run_lock

TRAIN = [
    "train", "--dataset", "digits", "--pair", "mlp", "--pair-kwargs", '{"hidden": [8], "z_dim": 2}',
    "--epochs", "2", "--batch-size", "50", "--train-limit", "200", "--device", "cpu",
    "--no-progress",
]  # fmt: skip


def start(out: Path, *extra: str, fault: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYRO_VAE_FAULT", None)
    if fault:
        env["PYRO_VAE_FAULT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_vae", *TRAIN, "--out", str(out), *extra], cwd=out.parent,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def finish(process: subprocess.Popen, timeout: int = 300) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def test_a_second_lock_on_a_directory_is_refused_and_released_on_exit(tmp_path):
    with run_lock(tmp_path):
        assert (tmp_path / LOCK).read_text() == str(os.getpid())
        held = rf"in use by another pyro-vae train \(pid {os.getpid()}\)"
        with pytest.raises(RunInUseError, match=held), run_lock(tmp_path):
            pass
    with run_lock(tmp_path):  # released: taken again at once
        pass


def test_a_lock_file_left_behind_does_not_block(tmp_path):
    (tmp_path / LOCK).write_text("999999")  # a pid file of a process long gone
    with run_lock(tmp_path):
        assert (tmp_path / LOCK).read_text() == str(os.getpid())


def test_stale_temporary_files_are_removed_and_nothing_else(tmp_path):
    for name in (".checkpoint.pt.abc_123.tmp", ".best.pt.x.tmp", ".write-test.17.tmp"):
        (tmp_path / name).write_bytes(b"half a write")
    (tmp_path / ".evaluate.json.young.tmp").write_bytes(b"evaluate may be writing it now")
    old = tmp_path / ".evaluate.json.old.tmp"
    old.write_bytes(b"left by a killed evaluate")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    (tmp_path / "checkpoint.pt").write_bytes(b"kept")
    (tmp_path / "notes.tmp").write_bytes(b"a user's file, not ours")
    removed = remove_stale_temporaries(tmp_path, own=("checkpoint.pt", "best.pt", "write-test"))
    assert len(removed) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".evaluate.json.young.tmp", "checkpoint.pt", "notes.tmp",
    ]  # fmt: skip


def test_train_and_resume_on_a_locked_directory_are_refused_and_write_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with run_lock(out):
        for extra in ((), ("--resume",)):
            code, stderr = finish(start(out, *extra))
            assert code == 2, stderr
            assert f"is in use by another pyro-vae train (pid {os.getpid()})" in stderr
            assert "Traceback" not in stderr
        assert sorted(p.name for p in out.iterdir()) == [LOCK]


def test_two_concurrent_starts_one_trains_the_other_is_refused_at_once(tmp_path):
    """The first trainer is frozen (SIGSTOP) after its first step, lock held; a second start
    is refused at once; the first, continued, finishes its run alone."""
    out = tmp_path / "run"
    out.mkdir()
    first = start(out, fault="step:1:SIGSTOP")
    deadline = time.monotonic() + 120
    while not _stopped(first.pid):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    try:
        began = time.monotonic()
        code, stderr = finish(start(out))
        assert code == 2 and f"in use by another pyro-vae train (pid {first.pid})" in stderr
        assert "Traceback" not in stderr
        refused_in = time.monotonic() - began
    finally:
        os.kill(first.pid, signal.SIGCONT)
    code, stderr = finish(first)
    assert code == 0, stderr
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    print(f"\nsecond start refused in {refused_in:.2f} s (start-up included)")


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.slow
def test_campaign_of_simultaneous_starts(tmp_path):
    """Pairs of trainers started at the same instant on one directory: exactly one trains,
    the other is refused (in use, or the run exists), and the directory is one run's."""
    outcomes = []
    for index in range(20):
        out = tmp_path / f"run{index}"
        out.mkdir()
        with ThreadPoolExecutor(2) as pool:  # two seeds, so that a mixed directory shows
            processes = [start(out, "--seed", str(seed)) for seed in (0, 1)]
            results = list(pool.map(finish, processes))
        codes = [code for code, _ in results]
        assert sorted(codes) == [0, 2], results
        winner = codes.index(0)
        refused = results[1 - winner][1]
        assert "in use by another pyro-vae train" in refused or "already holds a run" in refused
        assert "Traceback" not in refused
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        assert state["config"]["seed"] == winner and len(state["history"]) == 2
        assert f"seed = {winner}\n" in (out / "config.toml").read_text()
        outcomes.append("in use" if "in use" in refused else "exists")
    print(f"\n20 simultaneous pairs: {outcomes.count('in use')} refused as in use, "
          f"{outcomes.count('exists')} as an existing run, 0 mixed")  # fmt: skip
