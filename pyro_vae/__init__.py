"""pyro_vae: variational autoencoders written as Pyro programs.

Train a model/guide pair by SVI (your own ``SVI.step`` loop, :func:`fit`, or ``pyro-vae
train``), estimate log p(x) by importance sampling, and look at the results, from Python, the
``pyro-vae`` command line and notebooks. Every analysis is a function of the objects you hold:
a pair and tensors, or a run reopened by :func:`load_run`.

The package follows the data one way, a subpackage per stage (ARCHITECTURE.md):
:mod:`pyro_vae.data` -> :mod:`pyro_vae.pairs` -> :mod:`pyro_vae.infer` -> :mod:`pyro_vae.runs`
and :mod:`pyro_vae.training` -> :mod:`pyro_vae.analysis` -> :mod:`pyro_vae.cli`. Generative
models live in :mod:`pyro_vae.models`, amortized guides in :mod:`pyro_vae.guides`.
"""

# ruff: noqa: E402 - the finder below must be in place before the imports that need it
import importlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path


class _SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Finds ``pyro_vae.models`` and ``pyro_vae.guides`` in the repository's top-level
    ``models/`` and ``guides/`` when ``pyro_vae`` is imported from the source tree.

    setup.cfg installs those folders inside the package, but from the repository root (the
    cwd first on sys.path, as in every torchrun rank of ``python -m pyro_vae``) the source
    folder ``pyro_vae/``, which has neither, shadows the installed package. Submodules
    (``pyro_vae.guides.flows``) are then found through the package's ``__path__``.
    """

    def __init__(self, folders: dict[str, Path]):
        self.folders = folders

    def find_spec(self, fullname, path=None, target=None):
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


def _find_source_tree_packages() -> None:
    here = Path(__file__).resolve().parent
    root = here.parent
    folders = {f"pyro_vae.{name}": root / name for name in ("models", "guides")}
    in_source_tree = (
        not any((here / name).exists() for name in ("models", "guides"))
        and (root / "setup.cfg").is_file()
        and all((folder / "__init__.py").is_file() for folder in folders.values())
    )
    if in_source_tree and not any(isinstance(f, _SourceTreeFinder) for f in sys.meta_path):
        sys.meta_path.append(_SourceTreeFinder(folders))


_find_source_tree_packages()

# The old module paths that share a name with a function exported here load first: importing
# a submodule later would rebind ``pyro_vae.<name>`` from the function to the module.
for _old_path in ("convergence", "diagnose", "evaluate", "latents", "train"):
    importlib.import_module(f"pyro_vae.{_old_path}")

from pyro_vae.analysis.bdmc import BDMC, bdmc
from pyro_vae.analysis.convergence import Convergence, convergence
from pyro_vae.analysis.diagnose import PosteriorDiagnosis, diagnose
from pyro_vae.analysis.evaluate import Evaluation, evaluate
from pyro_vae.analysis.gradvar import GradientVariance, gradient_variance
from pyro_vae.analysis.latents import LatentMap, latents
from pyro_vae.analysis.results import Result
from pyro_vae.analysis.sampling import Samples, sample
from pyro_vae.analysis.snr_k import SNRAgainstK, snr_against_k
from pyro_vae.data import DATASETS, Dataset, load_dataset
from pyro_vae.infer.estimators import (
    ESTIMATORS,
    elbo_estimate,
    estimate_log_px,
    iwae_bound,
    log_importance_weights,
    log_mean_exp,
)
from pyro_vae.infer.gradients import BASELINES, GRADIENT_ESTIMATORS, score_function, with_baseline
from pyro_vae.infer.objectives import OBJECTIVES, make_objective
from pyro_vae.infer.surrogate_elbos import STL_ELBO, VIMCO, IWAE_DReG
from pyro_vae.pairs import PAIRS, VAE, build_pair, check_pair
from pyro_vae.runs.config import TrainConfig
from pyro_vae.runs.loggers import MLflowLogger, RunLogger, TensorBoardLogger
from pyro_vae.runs.reopen import Run, load_run
from pyro_vae.sweeps import SweepResult, sweep
from pyro_vae.training.fitting import fit
from pyro_vae.training.train import RunResult, train

__version__ = "0.1.0"

__all__ = [
    "BASELINES",
    "DATASETS",
    "ESTIMATORS",
    "GRADIENT_ESTIMATORS",
    "IWAE_DReG",
    "OBJECTIVES",
    "STL_ELBO",
    "VIMCO",
    "PAIRS",
    "VAE",
    "BDMC",
    "Convergence",
    "Dataset",
    "Evaluation",
    "GradientVariance",
    "LatentMap",
    "MLflowLogger",
    "PosteriorDiagnosis",
    "Result",
    "Run",
    "RunLogger",
    "RunResult",
    "Samples",
    "SNRAgainstK",
    "SweepResult",
    "TensorBoardLogger",
    "TrainConfig",
    "bdmc",
    "build_pair",
    "check_pair",
    "convergence",
    "diagnose",
    "elbo_estimate",
    "estimate_log_px",
    "evaluate",
    "fit",
    "gradient_variance",
    "iwae_bound",
    "latents",
    "load_dataset",
    "load_run",
    "log_importance_weights",
    "log_mean_exp",
    "make_objective",
    "sample",
    "score_function",
    "snr_against_k",
    "sweep",
    "train",
    "with_baseline",
]
