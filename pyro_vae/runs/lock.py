"""A run directory in use: one trainer at a time, no stale temporary files, signals that
stop a run at the next step boundary instead of in the middle of an update."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

#: The lock file of a run directory; ``fcntl.flock`` on it is held while a run trains.
LOCK = "train.lock"


class RunInUseError(RuntimeError):
    """Another process is training in this run directory."""


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive OS lock (``fcntl.flock``) on ``run_dir/train.lock`` meanwhile.

    A second trainer on the same directory is refused at once; the lock of a killed process
    goes with the process (the kernel releases it), so a stale lock file never blocks.
    """
    path = Path(run_dir) / LOCK
    handle = open(path, "a+")  # noqa: SIM115 -- held open for the lock's lifetime
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunInUseError(
                f"{str(run_dir)!r} is in use by another pyro-vae train (pid {holder}); wait "
                "for it to finish or stop it, or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # closing the descriptor releases the lock


#: Age after which a temporary file of another command (``evaluate`` writing its JSON, ...,
#: which takes no lock) counts as left by a killed write.
STALE_AFTER_S = 600.0


def remove_stale_temporaries(run_dir: Path, own: tuple[str, ...] = ()) -> list[Path]:
    """Delete the temporary files that killed writes left behind (``.NAME.*.tmp``, see
    :func:`pyro_vae.runs.files.atomic_write_bytes`); call it while holding :func:`run_lock`.

    Those of the files named in ``own`` (the trainer's, which only the lock holder writes)
    go at once; any other only when older than :data:`STALE_AFTER_S`, since a command that
    reads the run may be writing it right now."""
    removed = []
    now = time.time()
    for path in Path(run_dir).glob(".*.tmp"):
        name = path.name[1:].rsplit(".", 2)[0]  # .NAME.RANDOM.tmp -> NAME
        with contextlib.suppress(FileNotFoundError):
            if name not in own and now - path.stat().st_mtime < STALE_AFTER_S:
                continue
            path.unlink()
            removed.append(path)
    return removed


class StopSignals:
    """SIGINT and SIGTERM, while active, ask the run to stop instead of interrupting it.

    The first signal sets :attr:`requested`; the training loop checks it after each step,
    saves where it stopped and raises KeyboardInterrupt. A second signal interrupts at once.
    Outside the main thread (where signal handlers cannot be set) it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
