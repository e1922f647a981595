"""The loggers a run's configuration names (``--log``), made for its run directory."""

from __future__ import annotations

from typing import Any

from pyro_vae.runs.loggers.base import RunLogger


def named_loggers(config: Any) -> list[RunLogger]:
    """The loggers ``config.log`` names, beyond ``csv`` (``metrics.csv`` is the trainer's own
    file): a :class:`~pyro_vae.runs.loggers.TensorBoardLogger` writing into
    ``RUN/tensorboard``, an :class:`~pyro_vae.runs.loggers.MLflowLogger` with
    ``config.mlflow_uri`` and ``config.mlflow_experiment``. A missing package raises
    :class:`~pyro_vae.runs.loggers.MissingPackageError`."""
    made: list[RunLogger] = []
    for name in dict.fromkeys(config.log):
        if name == "tensorboard":
            from pyro_vae.runs.loggers.tensorboard_writer import TensorBoardLogger

            made.append(TensorBoardLogger())
        elif name == "mlflow":
            from pyro_vae.runs.loggers.mlflow_writer import MLflowLogger

            made.append(MLflowLogger(config.mlflow_uri, config.mlflow_experiment))
    return made
