"""Run directories: the configuration, checkpoints, atomic files, the lock a trainer holds,
and reopening a run for analysis.

The names of the former module ``pyro_vae.runs`` (the lock) are importable from here.
"""

from pyro_vae.runs.lock import (
    LOCK,
    STALE_AFTER_S,
    RunInUseError,
    StopSignals,
    remove_stale_temporaries,
    run_lock,
)

__all__ = [
    "LOCK",
    "RunInUseError",
    "STALE_AFTER_S",
    "StopSignals",
    "remove_stale_temporaries",
    "run_lock",
]
