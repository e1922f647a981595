"""Run loggers: writers of a run's numbers, sample grids, configuration and summaries to
TensorBoard and MLflow, beside the ``metrics.csv`` every run writes.

One idea a module: the interface and what loggers share (:mod:`.base`), the settings of
``--log`` (:mod:`.settings`), the missing-package error (:mod:`.errors`), TensorBoard
(:mod:`.tensorboard_writer`), MLflow (:mod:`.mlflow_writer`), the loggers a configuration
names (:mod:`.registry`) and the summaries of analyses attached to a run (:mod:`.attach`).
Packages are imported when a logger is made, never here.
"""

from pyro_vae.runs.loggers.attach import attach
from pyro_vae.runs.loggers.base import RunLogger
from pyro_vae.runs.loggers.errors import MissingPackageError
from pyro_vae.runs.loggers.mlflow_writer import MLflowLogger
from pyro_vae.runs.loggers.registry import named_loggers
from pyro_vae.runs.loggers.settings import LOG_CHOICES
from pyro_vae.runs.loggers.tensorboard_writer import TensorBoardLogger

__all__ = [
    "LOG_CHOICES",
    "MLflowLogger",
    "MissingPackageError",
    "RunLogger",
    "TensorBoardLogger",
    "attach",
    "named_loggers",
]
