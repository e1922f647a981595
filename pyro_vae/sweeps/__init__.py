"""Hyperparameter sweeps with Optuna: a search space in TOML (:mod:`.space`), a study in a
storage that many processes or machines share (:mod:`.storage`), each trial a run directory
pruned by epoch (:mod:`.objective`), the workers (:mod:`.workers`) and which trials still
have one (:mod:`.liveness`), and what the sweep found (:mod:`.report`); :func:`sweep` ties
them together (:mod:`.api`). Optuna is optional: ``pip install "pyro-vae[optuna]"``.

A stage above training and analysis: it trains runs and evaluates them.
"""

from pyro_vae.sweeps.api import SweepResult, sweep
from pyro_vae.sweeps.errors import SweepError
from pyro_vae.sweeps.objective import METRICS
from pyro_vae.sweeps.space import Distribution, Space, load_space

__all__ = ["METRICS", "Distribution", "Space", "SweepError", "SweepResult", "load_space", "sweep"]
