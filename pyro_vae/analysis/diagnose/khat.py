"""PSIS k-hat of the guide as an importance proposal, and what the same weights say per point.

From S log weights log w_s = log p(x, z_s) - log q(z_s|x), z_s ~ q(z|x), of each point: the
shape k of a generalized Pareto distribution fitted to the largest weights (k < 0.5: q can be
trusted; 0.5 <= k <= 0.7: usable; k > 0.7: unreliable), log p(x), the ELBO and the ESS.

References:
    Yao, Vehtari, Simpson & Gelman (2018), Yes, but Did It Work?: Evaluating Variational
        Inference.
    Vehtari, Simpson, Gelman, Yao & Gabry (2024), Pareto Smoothed Importance Sampling.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from pyro_vae.analysis.diagnose.errors import DiagnoseError
from pyro_vae.infer.estimators import summarize_log_weights

#: k-hat below this: the importance weights (and q) can be trusted (Yao et al. 2018).
KHAT_GOOD = 0.5
#: k-hat above this: importance sampling with q is unreliable (Yao et al. 2018).
KHAT_UNRELIABLE = 0.7
#: The fewest draws for which PSIS fits its Pareto tail: the tail holds
#: ceil(min(S / 5, 3 sqrt(S))) draws and needs at least 5 (arviz returns inf below that).
MIN_KHAT_SAMPLES = 21
#: Log weights whose spread max - min is at most this many nats count as all equal: every
#: normalized weight is then within 0.1% of 1/S, importance sampling is exact to that
#: precision whatever the tail, and a Pareto fit would only see float rounding (a guide equal
#: to p(z|x) gives weights equal in exact arithmetic but not in float32).
EQUAL_WEIGHTS_SPREAD = 1e-3


def psis_khat(
    log_weights: np.ndarray | torch.Tensor, equal_spread: float = EQUAL_WEIGHTS_SPREAD
) -> np.ndarray:
    """Pareto k-hat of the importance weights of each data point.

    Fits a generalized Pareto distribution to the M = ceil(min(S/5, 3 sqrt S)) largest of the
    S weights w_s = exp(log_weights[s, b]) of each point b and returns its shape k, one per
    point (``arviz.psislw``). Points whose S log weights are all equal, up to a spread of
    ``equal_spread`` nats (float rounding), get k = -inf: the weights have no tail at all (q
    is proportional to p(z|x) there and importance sampling is exact), the limit of a Pareto
    shape k -> -inf; arviz would return inf (too few distinct tail values), which reads as
    the opposite. Other weights tied so that fewer than 5 exceed the tail cut-off keep
    arviz's inf (flagged unreliable, the cautious reading).

    ``log_weights`` has shape (S,) or (S, B) with S >= 21; -inf entries (zero weights) are
    allowed, NaN and +inf are not.

    References:
        Yao, Vehtari, Simpson & Gelman (2018), Yes, but Did It Work?: Evaluating Variational
            Inference, section 3.
        Vehtari, Simpson, Gelman, Yao & Gabry (2024), Pareto Smoothed Importance Sampling.
    """
    import arviz as az

    if isinstance(log_weights, torch.Tensor):
        log_weights = log_weights.detach().cpu().numpy()
    log_weights = np.asarray(log_weights, dtype=np.float64)
    one_point = log_weights.ndim == 1
    if one_point:
        log_weights = log_weights[:, None]
    if log_weights.ndim != 2:
        raise ValueError(f"log_weights must have shape (S,) or (S, B), got {log_weights.shape}")
    num_samples = log_weights.shape[0]
    if num_samples < MIN_KHAT_SAMPLES:
        raise ValueError(
            f"PSIS k-hat needs at least {MIN_KHAT_SAMPLES} draws per point to fit its Pareto "
            f"tail, got {num_samples}"
        )
    if np.isnan(log_weights).any() or np.isposinf(log_weights).any():
        raise ValueError("log_weights hold NaN or +inf; k-hat is undefined for them")
    khat = np.full(log_weights.shape[1], -np.inf)
    varying = log_weights.max(axis=0) - log_weights.min(axis=0) > equal_spread
    if varying.any():
        _, fitted = az.psislw(np.ascontiguousarray(log_weights[:, varying].T))
        khat[varying] = np.asarray(fitted, dtype=np.float64)
    return khat[0:1] if one_point else khat


def khat_counts(khat: np.ndarray) -> dict[str, Any]:
    """How many k-hats are good (k < 0.5), usable (0.5 <= k <= 0.7), unreliable (k > 0.7).

    Also ``khat_status``, one of those words per point: in JSON both infinities become
    null, and the status tells -inf (no tail at all: good) from inf (unreliable).
    ``khat_max`` is the largest k-hat, the string ``"inf"`` when some point has inf.

    References:
        Yao, Vehtari, Simpson & Gelman (2018), Yes, but Did It Work?, section 3.
    """
    khat = np.asarray(khat, dtype=np.float64)
    n = max(len(khat), 1)
    unreliable_mask = (khat > KHAT_UNRELIABLE) | np.isnan(khat)
    good_mask = khat < KHAT_GOOD
    good = int(good_mask.sum())
    unreliable = int(unreliable_mask.sum())
    usable = len(khat) - good - unreliable
    status = np.where(good_mask, "good", np.where(unreliable_mask, "unreliable", "usable"))
    if not len(khat):
        khat_max: float | str | None = None
    elif np.isposinf(khat).any():
        khat_max = "inf"
    else:
        khat_max = float(np.nanmax(khat))
    return {
        "khat_max": khat_max,
        "khat_status": status.tolist(),
        "khat_count_below_0_5": good,
        "khat_count_0_5_to_0_7": usable,
        "khat_count_above_0_7": unreliable,
        "khat_fraction_below_0_5": good / n,
        "khat_fraction_0_5_to_0_7": usable / n,
        "khat_fraction_above_0_7": unreliable / n,
    }


def _weight_diagnostics(log_weights: torch.Tensor) -> tuple[dict[str, Any], list[str]]:
    """PSIS k-hat, log p(x) ~= log (1/S) sum_s w_s, the ELBO (1/S) sum_s log w_s, its
    standard error and the ESS per point, from the (S, B) log weights of draws from q; and
    the notes on infinite k-hats. NaN or +inf log weights are a :class:`DiagnoseError`.

    References:
        Yao, Vehtari, Simpson & Gelman (2018), Yes, but Did It Work?, section 3.
    """
    broken = torch.isnan(log_weights) | torch.isposinf(log_weights)  # -inf: a zero weight
    if broken.any():
        bad = broken.any(0).nonzero()[:, 0].tolist()
        raise DiagnoseError(
            f"log p(x, z) - log q(z|x) is NaN or +inf at points {bad[:10]} of the selection: "
            "the parameters may have diverged; try --checkpoint checkpoint.pt or another run"
        )
    khat = psis_khat(log_weights)
    weights = summarize_log_weights(log_weights)
    notes = []
    if np.isneginf(khat).any():
        notes.append(
            f"k-hat is -inf (null in JSON) where all S log weights are equal (to within "
            f"{EQUAL_WEIGHTS_SPREAD} nats): q(z|x) is proportional to p(z|x) there, the weights "
            "have no tail, importance sampling is exact"
        )
    if np.isposinf(khat).any():
        notes.append(
            "k-hat is inf (null in JSON, khat_status 'unreliable') where fewer than 5 of the S "
            "weights are within exp(-708) of the largest: a few draws carry all the weight, "
            "the worst case for q as a proposal"
        )
    found = {
        "khat": khat,
        "log_px": weights["log_px"],
        "elbo": weights["elbo"],
        "ess": weights["ess"],
        "elbo_stderr": log_weights.std(0) / math.sqrt(log_weights.shape[0]),
    }
    return found, notes


def _weight_summary(weights: dict[str, Any]) -> dict[str, Any]:
    """The summary's keys of :func:`_weight_diagnostics`: k-hat and its counts, the means
    of log p(x), the ELBO and their gap over the points, and the values per point."""
    khat, log_px, elbo = weights["khat"], weights["log_px"], weights["elbo"]
    return {
        "khat": khat,
        **khat_counts(khat),
        "log_px": log_px.mean(),
        "elbo": elbo.mean(),
        "gap": (log_px - elbo).mean(),
        "log_px_per_point": log_px,
        "elbo_per_point": elbo,
        "elbo_stderr_per_point": weights["elbo_stderr"],
        "gap_per_point": log_px - elbo,
        "ess_per_point": weights["ess"],
    }


def _khat_values(summary: dict[str, Any]) -> np.ndarray:
    """k-hat per point with its infinities, also from JSON (null, told apart by status)."""
    khat = np.array([np.nan if k is None else k for k in summary["khat"]], dtype=np.float64)
    status = np.asarray(summary["khat_status"])
    khat[np.isnan(khat) & (status == "unreliable")] = np.inf
    khat[np.isnan(khat) & (status == "good")] = -np.inf
    return khat
