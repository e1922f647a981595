"""The workers of a sweep: processes sharing one study, each starting trials until the sweep
has its number of finished (complete or pruned) trials.

A worker counts the study's trials holding the machine's gate (:mod:`.liveness`), fails the
trials whose worker died, and starts a trial only while finished + running trials are fewer
than wanted; otherwise it waits for the running ones (a failed one is retried). Several
workers of one machine are ``multiprocessing`` processes (spawned); each uses
``max(1, cores // workers)`` torch threads, so the workers together use the machine's cores
once. A worker prints one line per trial it finishes.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_vae.sweeps.errors import SweepError, require_optuna
from pyro_vae.sweeps.liveness import Gate, fail_abandoned_trials, worker_lock
from pyro_vae.sweeps.objective import Trial
from pyro_vae.sweeps.space import Space
from pyro_vae.sweeps.storage import open_storage

#: Seconds between looks at the study while other workers' trials run.
POLL_S = 0.5
#: The median pruner's default: no pruning before this many trials completed (Optuna's own
#: default). The epochs a trial is never pruned in are its own (:class:`~.objective.Trial`).
STARTUP_TRIALS = 5


@dataclass
class Job:
    """What a worker process needs (it pickles, for a spawned process)."""

    space: Space
    sweep_dir: Path
    storage: str
    study: str
    trials: int
    metric: str
    num_samples: int
    seed: int
    index: int = 0
    threads: int = 1
    parent: int | None = None
    prune_startup: int | None = STARTUP_TRIALS  # None: no pruning
    prune_warmup: int | None = None  # None: half of each trial's epochs


def finished_states(optuna: Any) -> tuple:
    state = optuna.trial.TrialState
    return (state.COMPLETE, state.PRUNED)


def load_study(job: Job, sampler_seed: int | None = None) -> Any:
    """The study ``job`` names, with its sampler and median pruner."""
    optuna = require_optuna()
    return optuna.load_study(
        study_name=job.study,
        storage=open_storage(job.storage),
        sampler=optuna.samplers.TPESampler(seed=sampler_seed),
        pruner=optuna.pruners.NopPruner()
        if job.prune_startup is None
        else optuna.pruners.MedianPruner(n_startup_trials=job.prune_startup),  # fmt: skip
    )


def work(job: Job) -> None:
    """Run trials of the study until it has ``job.trials`` finished ones."""
    import torch

    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(job.threads)
    study = load_study(job)
    # a sampler seeded per worker and per start, so that workers and resumed sweeps draw anew
    seed = (job.seed * 1_000_003 + job.index * 7919 + len(study.trials)) % 2**32
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    gate = Gate(job.sweep_dir)
    from pyro_vae.training.train import TrainingError

    with worker_lock(job.sweep_dir) as worker:
        objective = Trial(job.space, job.sweep_dir, job.metric, job.num_samples, worker, gate,
                          job.parent, prune_warmup=job.prune_warmup)  # fmt: skip
        while True:
            objective.check_parent()
            gate.acquire()
            try:
                fail_abandoned_trials(study)
                trials = study.get_trials(deepcopy=False)
                finished = sum(t.state in finished_states(optuna) for t in trials)
                running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
                _check_failures(trials, job.trials, optuna)
                if finished >= job.trials:
                    return
                if finished + running >= job.trials:
                    gate.release()
                    time.sleep(POLL_S)
                    continue
                study.optimize(objective, n_trials=1, catch=(TrainingError,))
            finally:
                gate.release()
            _say(study.trials[objective.number], optuna)


def _check_failures(trials: list, wanted: int, optuna: Any) -> None:
    """Stop a sweep whose trials keep failing in training (non-finite losses, ...)."""
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL and "error" in
              t.user_attrs]  # fmt: skip
    if len(failed) >= max(wanted, 3):
        raise SweepError(
            f"{len(failed)} trials failed in training; the last: trial {failed[-1].number}: "
            f"{failed[-1].user_attrs['error']}. Narrow the space (e.g. lower lr)"
        )


def _say(trial: Any, optuna: Any) -> None:
    """The line of the trial this worker just finished."""
    value = f"{trial.value:.3f}" if trial.value is not None else "-"
    params = "  ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    print(f"trial {trial.number:4d}  {trial.state.name.lower():8s}  value {value}  "
          f"epochs {trial.user_attrs.get('epochs', 0)}  "
          f"{trial.user_attrs.get('seconds', 0):.1f}s  {params}", flush=True)  # fmt: skip


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _process_main(job: Job, errors: Any) -> None:
    """A spawned worker: its errors go back to the parent, which raises them."""
    try:
        work(job)
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as error:  # noqa: BLE001 -- every failure is the parent's to raise
        errors.put(error if _pickles(error) else SweepError(f"{type(error).__name__}: {error}"))
        sys.exit(1)


def _pickles(error: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001
        return False
    return True


def run_workers(job: Job, workers: int) -> None:
    """``workers`` processes on ``job`` (one: this process), until the sweep is done; the
    first error a worker raised is raised here."""
    cores = os.cpu_count() or 1
    if workers == 1:
        job.threads = max(1, cores)
        work(job)
        return
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    processes = []
    for index in range(workers):
        worker_job = Job(**{**job.__dict__, "index": index, "threads": max(1, cores // workers),
                            "parent": os.getpid()})  # fmt: skip
        process = context.Process(target=_process_main, args=(worker_job, errors), daemon=True)
        process.start()
        processes.append(process)
    try:
        while any(p.is_alive() for p in processes):
            if not errors.empty():
                break
            time.sleep(POLL_S)
    except KeyboardInterrupt:  # stopped (Ctrl-C, SIGTERM): the workers save and stop too
        for process in processes:
            if process.is_alive():
                process.terminate()
        raise
    finally:
        failure = None if errors.empty() else errors.get()
        for process in processes:
            if failure is not None and process.is_alive():
                process.terminate()
            process.join()
    if failure is not None:
        raise failure
    codes = [p.exitcode for p in processes if p.exitcode not in (0, None)]
    if codes:
        raise SweepError(f"a sweep worker exited with status {codes[0]}; run the same command "
                         "again to continue the sweep")  # fmt: skip
