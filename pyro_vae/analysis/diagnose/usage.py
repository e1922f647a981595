"""How the latent dimensions are used: active units and the KL to the prior per dimension.

Posterior collapse shows as dimensions with KL ~ 0 whose mean does not move with x.

References:
    Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, section 5.2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pyro_vae.analysis.diagnose.draws import LatentSite

#: A latent dimension is active when Var_x E_q[z_d|x] exceeds this (Burda et al. 2016).
ACTIVE_UNIT_THRESHOLD = 0.01
#: A latent dimension whose mean KL to the prior is below this many nats counts as collapsed.
COLLAPSED_KL = 0.01


def active_units(posterior_means: np.ndarray, threshold: float = ACTIVE_UNIT_THRESHOLD):
    """Which latent dimensions are active: A_d = Var_x E_q[z_d | x] > threshold.

    ``posterior_means`` has shape (B, D): E_q[z_d | x_b] for B >= 2 points. Returns the
    boolean mask (D,) and the variances A_d (unbiased, over the B points).

    References:
        Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, section 5.2.
    """
    posterior_means = np.asarray(posterior_means, dtype=np.float64)
    if posterior_means.ndim != 2 or posterior_means.shape[0] < 2:
        raise ValueError(
            f"active units need E_q[z|x] for at least 2 points, shape (B, D); "
            f"got {posterior_means.shape}"
        )
    variance = posterior_means.var(axis=0, ddof=1)
    return variance > threshold, variance


def _latent_usage(latents: Sequence[LatentSite], labels: Sequence[str], q_mean: np.ndarray,
                  q_sd: np.ndarray, kl: dict[str, np.ndarray | None],
                  kl_method: dict[str, str | None]
                  ) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """Active units A_d = Var_x E_q[z_d|x] > threshold over the points, the KL to the prior
    per dimension averaged over them and the collapsed dimensions, and q's mean and sd per
    point; the notes on what could not be computed.

    References:
        Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, section 5.2.
    """
    usage: dict[str, Any] = {}
    notes = []
    if q_mean.shape[0] >= 2:
        active, variance = active_units(q_mean)
        usage["active_units"] = int(active.sum())
        usage["active_units_per_site"] = {
            latent.name: int(part.sum())
            for latent, part in zip(latents, np.split(active, _splits(latents)), strict=True)
        }
        usage["active_dims"] = [label for label, on in zip(labels, active, strict=True) if on]
        usage["posterior_mean_variance"] = variance
    else:
        usage.update({"active_units": None, "active_units_per_site": None,
                      "active_dims": None, "posterior_mean_variance": None})  # fmt: skip
        notes.append("active units need at least 2 points (a variance over points)")
    missing = next((latent.name for latent in latents if kl[latent.name] is None), None)
    if missing is None:
        kl_per_dim = np.concatenate([kl[latent.name].mean(axis=0) for latent in latents])
        usage["kl_per_dim"] = kl_per_dim
        usage["kl_total"] = float(kl_per_dim.sum())
        usage["kl_method"] = dict(kl_method)
        usage["collapsed_dims"] = [
            label for label, value in zip(labels, kl_per_dim, strict=True) if value < COLLAPSED_KL
        ]
    else:
        notes.append(f"KL per dimension: site {missing!r} has no per-dimension distribution")
        usage.update({"kl_per_dim": None, "kl_total": None, "kl_method": None,
                      "collapsed_dims": None})  # fmt: skip
    usage["posterior_mean"] = q_mean
    usage["posterior_sd"] = q_sd
    return usage, notes


def _splits(latents: Sequence[LatentSite]) -> list[int]:
    return list(np.cumsum([latent.size for latent in latents])[:-1])
