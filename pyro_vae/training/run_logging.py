"""What a training run logs to TensorBoard and MLflow (the loggers of ``--log`` and those given
to :func:`~pyro_vae.training.train.train`), and when.

- At the start: the configuration, as hyperparameters.
- Every epoch: the row of ``metrics.csv`` (train loss, valid ELBO, beta, lr, seconds, and
  valid accuracy and classify loss where the run has them) and the KL to the prior per latent
  dimension, ``kl/SITE/D`` and their sum ``kl/total``, on the first validation points (the
  first training points without a validation split; one draw z ~ q(z|x) each). The KL is
  analytic where torch knows the pair of marginals (Normal to Normal, ...), else a Monte
  Carlo estimate log q - log p at the draw; a site without per-dimension marginals (a joint
  distribution other than a MultivariateNormal) is left out, and a guide with per-point
  params logs none.
- Every ``--log-images-every`` epochs and at the last: a grid of samples from the prior (the
  observation means E[x|z], z ~ p(z)), for data with an image shape, as ``samples``.

The draws use their own seed (the run's) and put every RNG back, so a run with loggers trains
bit for bit as one without. Only rank 0 of a distributed run logs. Loggers are flushed at
every epoch end and closed when the run ends, stops or fails.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.infer.distributed import world
from pyro_vae.infer.estimators import evaluation_view
from pyro_vae.infer.pair_draws import as_images, kl_per_dimension, prior_samples
from pyro_vae.pairs import evaluation_mode
from pyro_vae.runs.checkpoints import rng_state, set_rng_state
from pyro_vae.runs.config import TrainConfig
from pyro_vae.runs.loggers import RunLogger, named_loggers
from pyro_vae.runs.loggers.errors import PACKAGES, require
from pyro_vae.runs.loggers.tensorboard_writer import row_metrics
from pyro_vae.training.outputs import _log
from pyro_vae.training.setup import TrainingSetup

#: Prior samples in a grid, and validation points the KL per dimension is averaged over.
GRID_SAMPLES = 64
KL_POINTS = 256


class TrainingLoggers:
    """The loggers of one training run (none on ranks other than 0)."""

    def __init__(self, loggers: list[RunLogger]) -> None:
        self.loggers = loggers
        self._noted: set[str] = set()

    @staticmethod
    def check(config: TrainConfig) -> None:
        """Refuse a run whose ``--log`` names a logger whose package is missing, before any
        work (:class:`~pyro_vae.runs.loggers.MissingPackageError`)."""
        for name in config.log:
            if name in PACKAGES:
                require(name)

    @classmethod
    def open(cls, config: TrainConfig, run_dir: Path, given: Any,
             resumed_history: list[dict[str, float]] | None) -> TrainingLoggers:  # fmt: skip
        """Make the loggers ``config.log`` names, add ``given`` (logger objects), start them
        for ``run_dir`` (a resumed run passes its history) and log the configuration."""
        if not world().is_main:
            return cls([])
        loggers = [*named_loggers(config), *(given or ())]
        opened = cls(loggers)
        try:
            for logger in loggers:
                logger.start(run_dir, resumed_history)
                logger.log_params(config.to_dict())
        except BaseException:
            opened.close("FAILED")
            raise
        return opened

    def epoch(self, setup: TrainingSetup, row: dict[str, float], config: TrainConfig) -> None:
        """Log epoch ``row``: its metrics, the KL per dimension and, when due, a sample grid."""
        if not self.loggers:
            return
        epoch = int(row["epoch"])
        metrics = row_metrics(row)
        every = config.log_images_every
        grid = every and (epoch % every == 0 or epoch == config.epochs)
        state = rng_state(setup.device)
        try:
            pyro.set_rng_seed(config.seed)  # the same draws every epoch: grids comparable
            metrics.update(self._kl_metrics(setup))
            images = self._grid(setup) if grid else None
        finally:
            set_rng_state(state, setup.device)
        for logger in self.loggers:
            logger.log_metrics(metrics, epoch)
            if images is not None:
                logger.log_images("samples", images, epoch)
            logger.flush()

    def _kl_metrics(self, setup: TrainingSetup) -> dict[str, float]:
        info = setup.info
        if setup.local is not None or not info.local_latent_sites:
            return {}
        x, y = _points(setup, KL_POINTS)
        try:
            kl, how = kl_per_dimension(setup.pair, x, info.local_latent_sites, info.data_plate, y)
        except Exception as error:  # a guide that cannot run on these points alone, ...
            self._note(f"no KL per dimension: {type(error).__name__}: {error}")
            return {}
        for site, why in how.items():
            if site not in kl:
                self._note(f"the KL per dimension of site {site!r} is not logged: {why}")
        metrics = {f"kl/{site}/{d}": float(v) for site, per in kl.items() for d, v in
                   enumerate(per.tolist())}  # fmt: skip
        if metrics:
            metrics["kl/total"] = math.fsum(metrics.values())
        return metrics

    def _grid(self, setup: TrainingSetup) -> torch.Tensor | None:
        shape, info = setup.image_shape, setup.info
        if shape is None or len(shape) != 3 or shape[0] not in (1, 3):
            self._note("no sample grids: the data points have no image shape")
            return None
        x, y = _points(setup, GRID_SAMPLES)
        try:
            with evaluation_mode(setup.pair):
                view = evaluation_view(setup.pair, info, x, y)
            means = prior_samples(view, x, info.observed_sites, info.data_plate, y,
                                  info.label_site)  # fmt: skip
        except Exception as error:  # a model that cannot run unconditioned, ...
            self._note(f"no sample grids: {type(error).__name__}: {error}")
            return None
        images, reason = as_images(means, shape)
        if images is None:
            self._note(f"no sample grids: {reason}")
            return None
        return images.reshape(-1, *shape).clamp(0, 1)

    def _note(self, message: str) -> None:
        if message not in self._noted:
            self._noted.add(message)
            _log(f"note: {message}")

    def close(self, status: str = "FINISHED") -> None:
        """Close every logger (``status``: how the run ended, for MLflow)."""
        for logger in self.loggers:
            logger.close(status)
        self.loggers = []


def _points(setup: TrainingSetup, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``count`` validation points (training points without a validation split)
    and their labels where the pair needs them."""
    labels = setup.labels
    if setup.valid_x.shape[0]:
        x, y = setup.valid_x[:count], labels.valid if setup.info.needs_labels else None
    else:
        x, y = setup.train_x[:count], labels.train if setup.info.needs_labels else None
    return x, None if y is None else y[: x.shape[0]]
