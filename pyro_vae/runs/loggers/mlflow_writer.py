""":class:`MLflowLogger`: a run's numbers, sample grids, configuration and summaries in an
MLflow run, written through ``mlflow.tracking.MlflowClient``.

Where: ``tracking_uri`` if given, else ``$MLFLOW_TRACKING_URI``, else a SQLite store shared by
the runs of one folder: ``sqlite:///PARENT/mlflow.db`` beside the run directory, with the
artifacts (sample grids, summaries) in ``PARENT/mlartifacts``; ``mlflow ui
--backend-store-uri sqlite:///PARENT/mlflow.db`` shows every run of that folder. A server
(``http://host:5000``) is passed to the client as it is. The run's id is kept in
``RUN/mlflow_run.json``, so a resumed run, ``pyro-vae evaluate`` and ``pyro-vae diagnose``
log into the same MLflow run. A resumed run adds the epochs the MLflow run lacks (read from
its metric history), so none is doubled or lost.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from pyro_vae.runs.files import atomic_write_bytes
from pyro_vae.runs.loggers.base import (
    RunLogger,
    flat_params,
    image_grid,
    metric_name,
    summary_json,
    summary_numbers,
)
from pyro_vae.runs.loggers.errors import require
from pyro_vae.runs.loggers.tensorboard_writer import row_metrics

#: The MLflow run of a run directory: tracking URI, experiment and run id.
RUN_RECORD = "mlflow_run.json"
#: The store a run uses by default, in the folder that holds the run directory.
DEFAULT_STORE = "mlflow.db"
DEFAULT_EXPERIMENT = "pyro-vae"
#: The metric whose history says which epochs an MLflow run holds.
EPOCH_METRIC = "train_loss"


@contextlib.contextmanager
def _quiet():
    """mlflow's SQL store triggers deprecation warnings inside SQLAlchemy and Alembic that a
    user can do nothing about; they are silenced for mlflow's calls only."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings(
                "ignore", category=category, module=r"(mlflow|sqlalchemy|alembic)(\.|$)"
            )
        yield


class MLflowLogger(RunLogger):
    """Logs into an MLflow run: ``tracking_uri`` (default ``$MLFLOW_TRACKING_URI``, else a
    SQLite file, see the module), ``experiment`` (created if missing), and ``run_id`` to
    continue a run (default: the run directory's own, else a new run named ``run_name``, by
    default the run directory's name)."""

    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None,
                 run_id: str | None = None, run_name: str | None = None) -> None:  # fmt: skip
        require("mlflow")
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        self.experiment = experiment or DEFAULT_EXPERIMENT
        self.run_id = run_id
        self.run_name = run_name
        self._client = None

    def start(self, run_dir: Any, resumed_history: list[dict[str, float]] | None) -> None:
        run_dir = None if run_dir is None else Path(run_dir).resolve()
        record = _read_record(run_dir)
        if self.tracking_uri is None:
            self.tracking_uri = record.get("tracking_uri") or default_uri(run_dir)
        if self.run_id is None and record.get("tracking_uri") == self.tracking_uri:
            self.run_id = record.get("run_id")
        client = self._open(run_dir)
        if run_dir is not None:
            run = {"tracking_uri": self.tracking_uri, "run_id": self.run_id,
                   "experiment": self.experiment}  # fmt: skip
            atomic_write_bytes(run_dir / RUN_RECORD, json.dumps(run, indent=2).encode())
        if resumed_history is not None:
            with _quiet():
                held = client.get_metric_history(self.run_id, EPOCH_METRIC)
                client.update_run(self.run_id, status="RUNNING")
            logged = max((metric.step for metric in held), default=0)
            for row in resumed_history:  # epochs finished but not logged before the interruption
                if row["epoch"] > logged:
                    self.log_metrics(row_metrics(row), int(row["epoch"]))

    def _open(self, run_dir: Path | None = None):
        if self._client is not None:
            return self._client
        from mlflow.tracking import MlflowClient

        if self.tracking_uri is None:
            self.tracking_uri = default_uri(run_dir)
        with _quiet():
            client = MlflowClient(tracking_uri=self.tracking_uri)
            if self.run_id is None:
                experiment = client.get_experiment_by_name(self.experiment)
                if experiment is None:
                    experiment_id = client.create_experiment(
                        self.experiment, artifact_location=_artifacts(self.tracking_uri)
                    )
                else:
                    experiment_id = experiment.experiment_id
                name = self.run_name or (run_dir.name if run_dir is not None else None)
                tags = {} if run_dir is None else {"pyro_vae.run_dir": str(run_dir)}
                self.run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        self._client = client
        return client

    def log_params(self, params: dict[str, Any]) -> None:
        """MLflow keeps one value per param: those the run already holds (its start's, on a
        resume) are kept, the others added."""
        from mlflow.entities import Param

        client = self._open()
        with _quiet():
            held = client.get_run(self.run_id).data.params
            new = [Param(metric_name(key), str(value)) for key, value in
                   flat_params(params).items() if metric_name(key) not in held]  # fmt: skip
            if new:
                client.log_batch(self.run_id, params=new)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        client, now = self._open(), int(time.time() * 1000)
        finite = {key: value for key, value in metrics.items() if _is_finite(value)}
        batch = [Metric(metric_name(key), float(value), now, int(step))
                 for key, value in finite.items()]  # fmt: skip
        with _quiet():
            for start in range(0, len(batch), 1000):  # MLflow takes 1000 metrics a call
                client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def log_images(self, tag: str, images: torch.Tensor, step: int) -> None:
        client = self._open()
        with _quiet():
            client.log_image(self.run_id, image_grid(images), f"{tag}/epoch_{step:05d}.png")

    def log_summary(self, name: str, summary: dict[str, Any], step: int) -> None:
        self.log_metrics(summary_numbers(summary, name), step)
        with _quiet():
            self._open().log_text(self.run_id, summary_json(summary), f"summaries/{name}.json")

    def close(self, status: str | None = "FINISHED") -> None:
        """Mark the MLflow run ``status`` (FINISHED, FAILED, KILLED; None: leave it)."""
        if self._client is not None and status is not None:
            with _quiet():
                self._client.set_terminated(self.run_id, status)
        self._client = None


def _is_finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def default_uri(run_dir: Path | None) -> str:
    """``sqlite:///PARENT/mlflow.db``: one store for the runs of the folder that holds
    ``run_dir`` (the current folder without one)."""
    folder = (run_dir.parent if run_dir is not None else Path.cwd()).resolve()
    return f"sqlite:///{folder / DEFAULT_STORE}"


def _artifacts(tracking_uri: str) -> str | None:
    """Where a new experiment keeps artifacts: ``mlartifacts`` beside a SQLite file (mlflow's
    own default is relative to the current folder); a server's choice otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri[len("sqlite:///") :])
    return (database.parent / "mlartifacts").resolve().as_uri()


def _read_record(run_dir: Path | None) -> dict[str, Any]:
    if run_dir is None:
        return {}
    try:
        record = json.loads((run_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
