"""The run settings of logging (``--log``, ``--log-images-every``, ``--mlflow-uri``,
``--mlflow-experiment``): their choices, their checks and when they have no effect. Plain
functions of the values, so that :mod:`pyro_vae.runs.config` can call them."""

from __future__ import annotations

from typing import Any

#: ``--log`` choices. ``csv`` is ``metrics.csv`` and ``metrics.png``, always written: resume
#: and every analysis read them.
LOG_CHOICES = ("csv", "tensorboard", "mlflow")
#: The loggers that draw sample grids and the KL per latent dimension.
RICH_LOGGERS = ("tensorboard", "mlflow")


def log_settings_problem(log: Any, images_every: Any) -> str | None:
    """What is wrong with ``--log`` and ``--log-images-every``, as a message; None if nothing."""
    unknown = [name for name in log if name not in LOG_CHOICES]
    if unknown or not log:
        return (
            f"--log {','.join(map(str, log))!r}: "
            + (f"unknown logger(s) {unknown}" if unknown else "names no logger")
            + f"; choose from {', '.join(LOG_CHOICES)}, comma-separated, e.g. --log csv,tensorboard"
        )
    if images_every < 0:
        return (
            f"--log-images-every {images_every!r}: must be a number of epochs >= 0 (0: no "
            "sample grids)"
        )
    return None


def unused_log_settings(config: Any) -> dict[str, tuple[str, str]]:
    """The logging settings that no logger of ``config.log`` reads, as
    :func:`~pyro_vae.runs.config.unused_settings` reports them."""
    unused = {}
    if "mlflow" not in config.log:
        for name in ("mlflow_uri", "mlflow_experiment"):
            unused[name] = (
                f"it is for the MLflow logger; --log {','.join(config.log)} has none",
                "add mlflow to --log",
            )
    if not any(name in config.log for name in RICH_LOGGERS):
        unused["log_images_every"] = (
            f"sample grids go to TensorBoard or MLflow; --log {','.join(config.log)} has neither",
            "add tensorboard or mlflow to --log",
        )
    return unused
