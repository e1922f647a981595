"""What the table benchmarks share: run the ``pyro-vae`` CLI, train a row in the background
until a rule says stop (SIGTERM: the engine saves the step and stops), and read a run's
``metrics.csv``. Imported by ``flows_priors.py`` and ``paper_rows.py`` (same folder)."""

from __future__ import annotations

import csv
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def pyro_vae(*args: str, env: dict, log: Path) -> subprocess.CompletedProcess:
    """``pyro-vae ARGS`` in a subprocess: stdout returned, stderr appended to ``log``."""
    command = [sys.executable, "-m", "pyro_vae", *args]
    with log.open("a") as handle:
        handle.write("$ pyro-vae " + " ".join(args) + "\n")
        handle.flush()
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=handle, text=True)
        handle.write(done.stdout)
    if done.returncode != 0:
        raise RuntimeError(f"pyro-vae {args[0]} failed (exit {done.returncode}); see {log}")
    return done


def last_json_line(done: subprocess.CompletedProcess) -> str:
    """The one JSON object a ``--json`` command prints last."""
    return done.stdout.strip().splitlines()[-1]


def metrics(run_dir: Path) -> list[dict[str, str]]:
    """The rows of ``run_dir/metrics.csv``, one per finished epoch ([] before the first)."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))


def train_seconds(run_dir: Path) -> list[float]:
    """Training seconds (steps only) at the end of each finished epoch, summed from the start."""
    return list(itertools.accumulate(float(row["train_seconds"]) for row in metrics(run_dir)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, with its waited-for children
    (torch.compile's workers) (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def train_command(run_dir: Path, flags: list[str]) -> list[str]:
    """``pyro-vae train FLAGS --no-progress --out RUN_DIR``, with ``--resume`` where the run
    directory already holds a checkpoint."""
    command = [sys.executable, "-m", "pyro_vae", "train", *flags, "--no-progress",
               "--out", str(run_dir)]  # fmt: skip
    if (run_dir / "checkpoint.pt").exists():
        command.append("--resume")
    return command


#: The trainers :func:`train_until` is running now, in any thread.
TRAINERS: set[subprocess.Popen] = set()


def exit_on_sigterm() -> None:
    """Make SIGTERM to this script stop its trainers first: each is sent SIGTERM (it saves and
    stops) and waited for, then the script exits 143. Python runs the handler in the main
    thread while the rows train in worker threads, so it signals the trainers itself."""

    def stop(signum, frame):
        for process in list(TRAINERS):
            process.send_signal(signal.SIGTERM)
        for process in list(TRAINERS):
            process.wait()
        os._exit(128 + signum)  # the worker threads would go on waiting; nothing is left to do

    signal.signal(signal.SIGTERM, stop)


def train_until(
    command: list[str], env: dict, log: Path, stop: Callable[[float, float], bool]
) -> tuple[float, float, bool]:
    """Run the training ``command``; every second ``stop(cpu_seconds, wall_seconds)`` (of this
    process so far) is asked, and a True sends SIGTERM (the engine saves the step and stops).

    Returns (wall seconds, CPU seconds, whether it was stopped). A trainer that fails, rather
    than finishing or stopping when asked, raises with the log's name.
    """
    with log.open("a") as handle:
        handle.write("$ " + " ".join(command[2:]) + "\n")
        handle.flush()
        started = time.monotonic()
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=handle)
        TRAINERS.add(process)
        used, stopped = 0.0, False
        try:
            while process.poll() is None:
                time.sleep(1)
                try:
                    used = cpu_seconds(process.pid)
                except (FileNotFoundError, ProcessLookupError):
                    break
                if not stopped and stop(used, time.monotonic() - started):
                    process.send_signal(signal.SIGTERM)
                    stopped = True
        except BaseException:  # the watching failed (the stop rule, /proc): stop the trainer too
            process.send_signal(signal.SIGTERM)
            process.wait()
            raise
        finally:
            TRAINERS.discard(process)
        code = process.wait()
    if code != 0 and not (stopped and code == 130):
        raise RuntimeError(f"pyro-vae train failed (exit {code}); see {log}")
    return time.monotonic() - started, used, stopped
