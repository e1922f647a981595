"""Posterior diagnostics of a trained pair: per data point, can the amortized q(z|x) be trusted?

``diagnose(pair, x)`` (or ``diagnose(run_dir)``, on points of a split) returns a
:class:`PosteriorDiagnosis`: the numbers below as a JSON-ready mapping with a readable
``summary()``, the draws as ArviZ InferenceData (``to_inference_data()``), ``plot(folder)``
and ``save(folder)``. For the selected points it measures

- **PSIS k-hat** of the guide as an importance proposal for p(z|x): the shape of a generalized
  Pareto distribution fitted to the largest weights w_s = p(x, z_s) / q(z_s|x), z_s ~ q(z|x).
  k < 0.5: importance sampling (and the ELBO's picture of the posterior) can be trusted;
  0.5 <= k <= 0.7: usable, slowly converging; k > 0.7: unreliable (Yao et al. 2018).
- importance-sampled **log p(x)**, the **ELBO**, and their gap, from the same weights.
- the **amortization and approximation gaps** (Cremer et al. 2018): a fully factorized
  Gaussian q*(z|x) fitted to each point alone, or the guide's own family per point where the
  pair offers one (``per_point_guide(x)``: the built-in flow guides). L[q*] - L[q] is what
  amortization costs; log p(x) - L[q*] is what the family costs.
- with ``nuts=True``, a **NUTS reference posterior** p(z|x) with the decoder fixed, and the
  guide compared with it dimension by dimension.
- **active units** and the **KL to the prior per latent dimension**: posterior collapse shows
  as dimensions with KL ~ 0 whose mean does not move with x (Burda et al. 2016).

References:
    Yao, Vehtari, Simpson & Gelman (2018), Yes, but Did It Work?: Evaluating Variational
        Inference.
    Vehtari, Simpson, Gelman, Yao & Gabry (2024), Pareto Smoothed Importance Sampling.
    Cremer, Li & Duvenaud (2018), Inference Suboptimality in Variational Autoencoders.
    Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders (active units).
    Hoffman & Gelman (2014), The No-U-Turn Sampler.
    Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), Rank-Normalization, Folding, and
        Localization: An Improved R-hat.

The modules, one idea each: :mod:`~pyro_vae.analysis.diagnose.khat` (PSIS k-hat and the
per-point numbers of the importance weights), :mod:`~pyro_vae.analysis.diagnose.draws` (the
latent sites and the draws from q(z|x)), :mod:`~pyro_vae.analysis.diagnose.usage` (active
units, KL per dimension), :mod:`~pyro_vae.analysis.diagnose.gaps` (q* per point),
:mod:`~pyro_vae.analysis.diagnose.nuts` (the NUTS reference),
:mod:`~pyro_vae.analysis.diagnose.batch` (:func:`diagnose_pair`: every part in order),
:mod:`~pyro_vae.analysis.diagnose.report` (summary text, figures, files) and
:mod:`~pyro_vae.analysis.diagnose.api` (:func:`diagnose`, :class:`PosteriorDiagnosis`).
"""

from pyro_vae.analysis.diagnose.api import (
    DEFAULT_POINTS,
    DIAGNOSE_DIR,
    PosteriorDiagnosis,
    diagnose,
    select_indices,
)
from pyro_vae.analysis.diagnose.batch import Diagnosis, diagnose_pair
from pyro_vae.analysis.diagnose.draws import (
    BLOCK_SEEDS,
    POINT_BLOCK,
    GuideDraws,
    LatentSite,
    guide_draws,
    inference_data,
    latent_sites,
)
from pyro_vae.analysis.diagnose.errors import DiagnoseError
from pyro_vae.analysis.diagnose.gaps import (
    FLOW_FAMILY,
    GAUSSIAN_FAMILY,
    FactorizedGaussian,
    frozen_parameters,
    gaps_unavailable,
    inference_gaps,
    per_point_guide,
)
from pyro_vae.analysis.diagnose.khat import (
    EQUAL_WEIGHTS_SPREAD,
    KHAT_GOOD,
    KHAT_UNRELIABLE,
    MIN_KHAT_SAMPLES,
    khat_counts,
    psis_khat,
)
from pyro_vae.analysis.diagnose.nuts import MIN_NUTS_SAMPLES, check_continuous, nuts_posterior
from pyro_vae.analysis.diagnose.report import FIGURES, format_summary, write_figures, write_outputs
from pyro_vae.analysis.diagnose.usage import ACTIVE_UNIT_THRESHOLD, COLLAPSED_KL, active_units

__all__ = [
    "ACTIVE_UNIT_THRESHOLD",
    "BLOCK_SEEDS",
    "COLLAPSED_KL",
    "DEFAULT_POINTS",
    "DIAGNOSE_DIR",
    "EQUAL_WEIGHTS_SPREAD",
    "FIGURES",
    "FLOW_FAMILY",
    "GAUSSIAN_FAMILY",
    "KHAT_GOOD",
    "KHAT_UNRELIABLE",
    "MIN_KHAT_SAMPLES",
    "MIN_NUTS_SAMPLES",
    "POINT_BLOCK",
    "DiagnoseError",
    "Diagnosis",
    "FactorizedGaussian",
    "GuideDraws",
    "LatentSite",
    "PosteriorDiagnosis",
    "active_units",
    "check_continuous",
    "diagnose",
    "diagnose_pair",
    "format_summary",
    "frozen_parameters",
    "gaps_unavailable",
    "guide_draws",
    "inference_data",
    "inference_gaps",
    "khat_counts",
    "latent_sites",
    "nuts_posterior",
    "per_point_guide",
    "psis_khat",
    "select_indices",
    "write_figures",
    "write_outputs",
]
