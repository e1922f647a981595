"""Which running trials still have a worker: OS locks that a process holds while it lives.

Each worker holds an exclusive ``fcntl.flock`` on its own file under ``SWEEP_DIR/workers/``
for as long as it runs, and writes that file's name into each trial it runs. The OS lets a
lock go when its process dies, however it dies (SIGKILL included), so a RUNNING trial of this
machine whose worker's lock can be taken has no worker: it is failed at once and put back to
be retried, without waiting for a heartbeat's grace period. The gate (``SWEEP_DIR/gate.lock``)
is held while a worker counts the trials and starts one, so the workers of a machine never
start more trials than the sweep needs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyro_vae.sweeps.errors import require_optuna
from pyro_vae.sweeps.storage import retry_callback

WORKERS = "workers"
GATE = "gate.lock"


@contextlib.contextmanager
def worker_lock(sweep_dir: Path) -> Iterator[str]:
    """Hold this worker's lock meanwhile; yields the lock file's path (a trial's ``worker``)."""
    folder = sweep_dir / WORKERS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
    with path.open("w") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield str(path.resolve())
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            path.unlink(missing_ok=True)


class Gate:
    """The machine's lock around counting trials and starting one; :meth:`release` lets the
    objective open it once its trial is marked with its worker."""

    def __init__(self, sweep_dir: Path):
        self.path = sweep_dir / GATE
        self.handle = None

    def acquire(self) -> None:
        self.handle = self.path.open("w")
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def _worker_alive(lock_file: str) -> bool:
    try:
        handle = open(lock_file)  # noqa: SIM115 -- closed below
    except FileNotFoundError:
        return False  # its worker removed it on the way out
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def fail_abandoned_trials(study: Any) -> list[int]:
    """Fail this machine's RUNNING trials whose worker is gone and put each back (WAITING) to
    be retried; returns their numbers. Call it holding the :class:`Gate`."""
    optuna = require_optuna()
    running = optuna.trial.TrialState.RUNNING
    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(running,)):
        worker = trial.user_attrs.get("worker")
        if worker is None or trial.user_attrs.get("host") != host or _worker_alive(worker):
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            failed_state = optuna.trial.TrialState.FAIL
            if study._storage.set_trial_state_values(trial._trial_id, state=failed_state):
                failed.append(trial.number)
                retry_callback()(study, study._storage.get_trial(trial._trial_id))
    return failed
