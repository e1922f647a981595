"""One trial of a sweep: its run directory, its config, training with pruning by epoch, and
the metric it returns.

The trial's run directory is ``SWEEP_DIR/trial-NNNN`` (a retried trial continues the one of
the trial it retries, from its checkpoint). Its valid ELBO is reported to the pruner after
every epoch through :func:`~pyro_vae.training.train.train`'s ``on_epoch``; a pruned trial stops
there and keeps its checkpoint. The value is the run's best valid ELBO (``valid-elbo``), or
the importance-sampled log p(x) of its validation split (``valid-log-px``, by
:func:`~pyro_vae.analysis.evaluate.evaluate` on the reopened run, ``best.pt``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_vae.runs.checkpoints import CHECKPOINT
from pyro_vae.sweeps.errors import SweepError, require_optuna
from pyro_vae.sweeps.space import Space
from pyro_vae.sweeps.storage import retry_callback

#: The objectives a sweep can maximize (``--metric``).
METRICS = ("valid-elbo", "valid-log-px")
#: Where a trial's training writes its epoch lines.
TRAIN_LOG = "train.log"


@dataclass
class Trial:
    """What every trial of one worker shares."""

    space: Space
    sweep_dir: Path
    metric: str = "valid-elbo"
    num_samples: int = 100
    worker: str = ""  # this worker's lock file (see pyro_vae.sweeps.liveness)
    gate: Any = None  # released once the trial is marked as this worker's
    parent: int | None = None  # the process that started this worker; gone: stop
    number: int = -1  # the trial this worker runs or ran last
    #: epochs never pruned: the first ``prune_warmup`` (None: half of the trial's epochs,
    #: since a run that learns slowly at first, e.g. with more latent dimensions, would be
    #: cut by a median of faster starters before it shows where it ends)
    prune_warmup: int | None = 0

    def run_dir(self, trial: Any) -> Path:
        """The trial's run directory: the retried trial's where it is one of this sweep's."""
        inherited = trial.user_attrs.get("run_dir")
        if inherited and Path(inherited).parent == self.sweep_dir.resolve():
            return Path(inherited)
        return self.sweep_dir.resolve() / f"trial-{trial.number:04d}"

    def __call__(self, trial: Any) -> float:
        optuna = require_optuna()
        self.number = trial.number
        run_dir = self.run_dir(trial)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("host", socket.gethostname())
        if self.gate is not None:
            self.gate.release()
        config = self.space.config_for(trial, run_dir)
        resume = (run_dir / CHECKPOINT).exists()
        epochs = []
        warmup = self.prune_warmup
        if warmup is None:  # half of the epochs this trial will train (train's default if unset)
            from pyro_vae.training.setup import defaults_for

            warmup = defaults_for(copy.deepcopy(config)).epochs // 2

        def on_epoch(row: dict[str, float]) -> None:
            self.check_parent()
            epochs.append(row["epoch"])
            trial.set_user_attr("epochs", row["epoch"])
            if not math.isnan(row["valid_elbo"]):
                trial.report(row["valid_elbo"], row["epoch"])
            if row["epoch"] > warmup and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")

        from pyro_vae.training.train import TrainingError, train

        started = time.perf_counter()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            with (run_dir / TRAIN_LOG).open("a") as log, contextlib.redirect_stderr(log):
                result = train(config, resume=resume, progress=False, on_epoch=on_epoch)
        except TrainingError as error:  # this trial's settings cannot train: the next may
            trial.set_user_attr("error", str(error))
            raise
        except KeyboardInterrupt:  # stopped with its checkpoint saved: retried on resume
            retry_callback()(trial.study, trial.study._storage.get_trial(trial._trial_id))
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
        if result.history:
            trial.set_user_attr("epochs", result.history[-1]["epoch"])
        if self.metric == "valid-log-px":
            return self.log_px(run_dir, config)
        value = result.best_valid_elbo
        if math.isnan(value):
            raise SweepError(f"trial {trial.number}: the run has no validation split "
                             "(valid_size = 0), so there is no valid ELBO to maximize")  # fmt: skip
        return value

    def log_px(self, run_dir: Path, config: Any) -> float:
        """IS log p(x) of the run's validation split at ``best.pt``."""
        from pyro_vae.analysis.evaluate import evaluate

        with (run_dir / TRAIN_LOG).open("a") as log, contextlib.redirect_stderr(log):
            evaluation = evaluate(str(run_dir), split="valid", num_samples=self.num_samples,
                                  device=config.device, progress=False, save=True)  # fmt: skip
        return float(evaluation["log_px"])

    def check_parent(self) -> None:
        """Leave when the process that started this worker is gone (killed): the trial stays
        RUNNING with its checkpoint, and a resumed sweep retries it."""
        if self.parent is not None and os.getppid() != self.parent:
            os._exit(1)
