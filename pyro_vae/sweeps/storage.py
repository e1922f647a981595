"""Where a study lives: ``--storage`` as SQLite (the default), any SQLAlchemy URL, or
Optuna's journal file, opened with heartbeats where the storage has them.

``sqlite:///SWEEP_DIR/sweep.db`` serves the workers of one machine; a server database
(``postgresql://user:password@host/db``) or ``journal:PATH`` on a file system that several
machines mount serves several machines, each running the same command with the same
``--storage`` and ``--study``. A relational storage beats every :data:`HEARTBEAT_S` seconds
for each running trial; a trial whose worker stopped beating for :data:`GRACE_S` seconds is
failed and retried by whichever worker starts a trial next.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pyro_vae.sweeps.errors import SweepError, require_optuna

#: Seconds between the heartbeats of a running trial, and without one before it is failed.
HEARTBEAT_S = 10
GRACE_S = 60
#: How many times a trial whose worker died is retried.
MAX_RETRY = 3
JOURNAL = "journal:"


def default_storage(sweep_dir: str | Path) -> str:
    """SQLite in the sweep's folder."""
    return f"sqlite:///{Path(sweep_dir).resolve() / 'sweep.db'}"


def retry_callback() -> Any:
    """Optuna's callback that puts a failed trial back as a WAITING copy of it (same params,
    user attributes, and the failed trial's number in its system attributes)."""
    optuna = require_optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def open_storage(url: str) -> Any:
    """The Optuna storage ``url`` names; :class:`SweepError` naming ``--storage`` when it
    cannot be opened."""
    optuna = require_optuna()
    try:
        if url.startswith(JOURNAL):
            path = Path(url[len(JOURNAL) :])
            if not path.parent.is_dir():
                raise SweepError(f"--storage {url!r}: the folder {str(path.parent)!r} does not "
                                 "exist; make it, or name a journal file in one")  # fmt: skip
            journal = optuna.storages.journal
            return journal.JournalStorage(journal.JournalFileBackend(str(path)))
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=retry_callback(),
            )
    except SweepError:
        raise
    except Exception as error:  # SQLAlchemy's and the drivers' errors have no common base
        raise SweepError(
            f"--storage {url!r} cannot be opened ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); give sqlite:///PATH.db, a "
            f"database URL such as postgresql://user:password@host/db, or {JOURNAL}PATH"
        ) from error
