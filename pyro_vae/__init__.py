"""pyro_vae: variational autoencoders written as Pyro programs.

Train a model/guide pair by SVI, estimate log p(x) by importance sampling, and look at the
results, from Python, the ``pyro-vae`` command line and notebooks. The package follows the
data one way: :mod:`~pyro_vae.data` -> :mod:`~pyro_vae.objectives` -> :mod:`~pyro_vae.train`
-> :mod:`~pyro_vae.evaluate` -> :mod:`~pyro_vae.diagnose`. Gradient estimators (score function,
baselines) are in :mod:`~pyro_vae.gradients` and measured by :mod:`~pyro_vae.gradvar`;
:mod:`~pyro_vae.convergence` compares estimators of log p(x) as K grows. Generative models
live in :mod:`pyro_vae.models`, amortized guides in :mod:`pyro_vae.guides`, built-in pairs of
them in :mod:`pyro_vae.pairs`.
"""

from pyro_vae.config import TrainConfig
from pyro_vae.data import DATASETS, Dataset, load_dataset
from pyro_vae.estimators import (
    ESTIMATORS,
    elbo_estimate,
    estimate_log_px,
    iwae_bound,
    log_importance_weights,
    log_mean_exp,
)
from pyro_vae.evaluate import evaluate
from pyro_vae.gradients import BASELINES, GRADIENT_ESTIMATORS, score_function, with_baseline
from pyro_vae.objectives import OBJECTIVES, make_objective
from pyro_vae.pairs import PAIRS, VAE, build_pair, check_pair
from pyro_vae.train import RunResult, train

__version__ = "0.1.0"

__all__ = [
    "BASELINES",
    "DATASETS",
    "ESTIMATORS",
    "GRADIENT_ESTIMATORS",
    "OBJECTIVES",
    "PAIRS",
    "VAE",
    "Dataset",
    "RunResult",
    "TrainConfig",
    "build_pair",
    "check_pair",
    "elbo_estimate",
    "estimate_log_px",
    "evaluate",
    "iwae_bound",
    "load_dataset",
    "log_importance_weights",
    "log_mean_exp",
    "make_objective",
    "score_function",
    "train",
    "with_baseline",
]
