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
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import biject_to, constraints
from tqdm.auto import tqdm

from pyro_vae.analysis.evaluate import refuse_conditional_pair
from pyro_vae.analysis.results import Result
from pyro_vae.analysis.subjects import Subject, is_run_source, subject
from pyro_vae.infer.compiled import CompiledByShape, CompiledLogWeights
from pyro_vae.infer.distributed import World, current_world, world
from pyro_vae.infer.estimators import (
    chunk_size_for,
    evaluation_notes,
    evaluation_view,
    log_importance_weights,
    log_mean_exp,
    log_weights_of_traces,
    particle_traces,
    summarize_log_weights,
)
from pyro_vae.pairs import PairInfo, check_pair, data_plate_dim, evaluation_mode, pair_modules
from pyro_vae.runs.checkpoints import BEST
from pyro_vae.runs.config import ConfigError
from pyro_vae.runs.files import atomic_write_bytes, json_bytes, jsonable

#: k-hat below this: the importance weights (and q) can be trusted (Yao et al. 2018).
KHAT_GOOD = 0.5
#: k-hat above this: importance sampling with q is unreliable (Yao et al. 2018).
KHAT_UNRELIABLE = 0.7
#: A latent dimension is active when Var_x E_q[z_d|x] exceeds this (Burda et al. 2016).
ACTIVE_UNIT_THRESHOLD = 0.01
#: Points per block of draws from q(z|x); block j of a diagnosis with ``seed`` draws from
#: ``seed * BLOCK_SEEDS + j`` (the same on one process and on any rank of several).
POINT_BLOCK = 25
BLOCK_SEEDS = 1_000_003
#: A latent dimension whose mean KL to the prior is below this many nats counts as collapsed.
COLLAPSED_KL = 0.01
#: How many points of the split ``diagnose`` takes when neither points nor indices is given.
DEFAULT_POINTS = 20
#: The fewest draws for which PSIS fits its Pareto tail: the tail holds
#: ceil(min(S / 5, 3 sqrt(S))) draws and needs at least 5 (arviz returns inf below that).
MIN_KHAT_SAMPLES = 21
#: Log weights whose spread max - min is at most this many nats count as all equal: every
#: normalized weight is then within 0.1% of 1/S, importance sampling is exact to that
#: precision whatever the tail, and a Pareto fit would only see float rounding (a guide equal
#: to p(z|x) gives weights equal in exact arithmetic but not in float32).
EQUAL_WEIGHTS_SPREAD = 1e-3
#: The fewest NUTS draws per chain for which split R-hat and ESS mean something.
MIN_NUTS_SAMPLES = 10
#: Default folder for the outputs, inside the run directory.
DIAGNOSE_DIR = "diagnose"


class DiagnoseError(ValueError):
    """Diagnostics that cannot run as asked; the message names the flag or the site."""


# ---------------------------------------------------------------------------------------------
# Pure functions of arrays


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


# ---------------------------------------------------------------------------------------------
# The latent sites of a pair, and per-point arrays from traces


@dataclass(frozen=True)
class LatentSite:
    """One latent sample site as the diagnostics see it: ``size`` numbers per data point."""

    name: str
    size: int
    value_shape: tuple[int, ...]  # the site's value in one unvectorized trace
    event_shape: tuple[int, ...]
    dim_name: str  # the netcdf / InferenceData dimension of its latent coordinates
    distribution: str  # the model's distribution at the site, e.g. "Normal", "Bernoulli"
    real: bool  # support is the whole real line (a Gaussian q* can cover it)
    discrete: bool

    def labels(self) -> list[str]:
        return [f"{self.name}[{i}]" for i in range(self.size)]


def _base_distribution(fn: Any) -> Any:
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn


def _base_support(support: Any) -> Any:
    """The support of one coordinate: Independent and mixture wrappers removed."""
    wrappers = (constraints.independent, constraints.MixtureSameFamilyConstraint)
    while isinstance(support, wrappers):
        support = support.base_constraint
    return support


def latent_sites(pair: Any, x: torch.Tensor, info: PairInfo) -> list[LatentSite]:
    """The model's latent sites (in model order) with their per-point sizes and supports."""
    with torch.no_grad():
        guide_trace = poutine.trace(pair.guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(x)
    names = info.latent_sites
    sites = []
    for name in names:
        site = model_trace.nodes[name]
        value = site["value"]
        fn = site["fn"]
        support = _base_support(fn.support)
        sites.append(
            LatentSite(
                name=name,
                size=value.numel() // x.shape[0],
                value_shape=tuple(value.shape),
                event_shape=tuple(fn.event_shape),
                dim_name="latent_dim" if len(names) == 1 else f"{name}_dim",
                distribution=type(_base_distribution(fn)).__name__,
                real=support is constraints.real,
                discrete=bool(fn.support.is_discrete),
            )
        )
    return sites


def _per_point(tensor: torch.Tensor, site: dict, event_dims: int, num_draws: int,
               num_points: int, rank: int) -> torch.Tensor:  # fmt: skip
    """Reshape a site-shaped tensor (draws and plates as batch dims) to (draws, points, -1).

    ``rank`` counts the particle plate and every plate; the particle axis is the leftmost.
    """
    batch_dims = tensor.dim() - event_dims
    tensor = tensor.reshape((1,) * (rank - batch_dims) + tuple(tensor.shape))
    data_axis = rank + data_plate_dim(site, num_points)[1]
    tensor = tensor.movedim(data_axis, 1)
    tensor = tensor.expand(num_draws, num_points, *tensor.shape[2:])
    return tensor.reshape(num_draws, num_points, -1)


def _per_dimension(fn: Any) -> Any:
    """The distribution of each latent coordinate alone (marginals), or None if unknown."""
    fn = _base_distribution(fn)
    if isinstance(fn, torch.distributions.MultivariateNormal):
        return dist.Normal(fn.loc, fn.variance.sqrt())
    if len(fn.event_shape) == 0:
        return fn
    return None


def _moments(fn: Any, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[z | parents] and Var[z | parents] of a site, or (value, 0) without closed forms."""
    try:
        return fn.mean.expand(value.shape), fn.variance.expand(value.shape)
    except NotImplementedError:
        return value, torch.zeros_like(value)


@dataclass
class GuideDraws:
    """Draws z ~ q(z|x) per site, (S, B, D) each, and the guide's moments and KL per dim."""

    draws: dict[str, np.ndarray]
    mean: dict[str, np.ndarray]  # E_q[z|x], (B, D)
    sd: dict[str, np.ndarray]  # sd_q[z|x], (B, D)
    kl: dict[str, np.ndarray | None]  # E_q KL(q(z_d|.) || p(z_d|.)), (B, D)
    kl_method: dict[str, str | None]
    conditional: dict[str, bool]  # whether q's distribution at the site moves with other z
    log_weights: torch.Tensor  # log p(x, z_s) - log q(z_s|x) of these draws, (S, B)


def guide_draws(pair: Any, x: torch.Tensor, latents: Sequence[LatentSite], info: PairInfo,
                num_samples: int, *, progress: bool = False,
                compiled: CompiledByShape | None = None, seed: int | None = None,
                ranks: World | None = None) -> GuideDraws:  # fmt: skip
    """Draw ``num_samples`` z ~ q(z|x) for every point and site; estimate moments and KLs
    (:func:`_block_draws`).

    With ``seed``, the points go in blocks of :data:`POINT_BLOCK`, block j drawing from
    ``seed * BLOCK_SEEDS + j``, so a point's draws do not depend on the other blocks. Under
    torchrun (``ranks`` of several processes) rank r draws the blocks j with j % R == r and
    every rank gets the whole result, which is then that of one process.
    """
    if seed is None:
        return _block_draws(pair, x, latents, info, num_samples, progress=progress,
                            compiled=compiled)  # fmt: skip
    starts = list(range(0, x.shape[0], POINT_BLOCK))
    if ranks is not None and ranks.distributed:
        starts = starts[ranks.rank :: ranks.size]
    blocks = []
    for start in tqdm(starts, desc="q(z|x) draws", disable=not progress, unit="block",
                      leave=False):  # fmt: skip
        torch.manual_seed(seed * BLOCK_SEEDS + start // POINT_BLOCK)
        part = _block_draws(pair, x[start : start + POINT_BLOCK], latents, info, num_samples,
                            compiled=compiled)  # fmt: skip
        blocks.append((start, part))
    if ranks is not None and ranks.distributed:
        gathered = ranks.gather(blocks, "gathering the draws from q(z|x)")
        blocks = sorted((block for part in gathered for block in part), key=lambda b: b[0])
    parts = [part for _, part in blocks]
    names = [latent.name for latent in latents]

    def joined(field: str, axis: int) -> dict[str, np.ndarray | None]:
        values = {}
        for name in names:
            pieces = [getattr(part, field)[name] for part in parts]
            values[name] = None if any(v is None for v in pieces) else np.concatenate(pieces, axis)
        return values

    return GuideDraws(
        draws=joined("draws", 1),
        mean=joined("mean", 0),
        sd=joined("sd", 0),
        kl=joined("kl", 0),
        kl_method=parts[0].kl_method,
        conditional={name: any(part.conditional[name] for part in parts) for name in names},
        log_weights=torch.cat([part.log_weights for part in parts], dim=1),
    )


def _block_draws(pair: Any, x: torch.Tensor, latents: Sequence[LatentSite], info: PairInfo,
                 num_samples: int, *, progress: bool = False,
                 compiled: CompiledByShape | None = None) -> GuideDraws:  # fmt: skip
    """Draw ``num_samples`` z ~ q(z|x) for every point of ``x`` and site; estimate moments
    and KLs, from the global random stream.

    Moments are Rao-Blackwellized over the guide's own conditionals (law of total variance):
    E_q[z] = E_q[E_q[z|pa]], Var_q[z] = E_q[Var_q[z|pa]] + Var_q[E_q[z|pa]], exact for a site
    whose guide distribution depends on x only. The KL per dimension is
    E_{z~q}[KL(q(z_d | guide parents, x) || p(z_d | model parents))], both conditionals taken
    at the same joint draw: the closed form where torch has one (Normal-Normal,
    Bernoulli-Bernoulli, ...), else the Monte-Carlo log ratio of the draw. For one latent site
    with a fixed prior it is KL(q(z_d|x) || p(z_d)); for the marginal of a full-covariance q
    it is the KL of that marginal.

    The draws come in chunks (:func:`_chunk_statistics`); ``compiled`` (``diagnose
    --compile``) runs each chunk as a compiled graph of the same computation, one per chunk
    size, with the same random numbers.

    References:
        Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, section 5.2.
    """
    num_points = x.shape[0]
    draws = {s.name: [] for s in latents}
    sums = {s.name: {"mean": 0.0, "variance": 0.0, "mean_sq": 0.0, "kl": 0.0} for s in latents}
    kl_method: dict[str, str | None] = {}
    conditional = {s.name: False for s in latents}
    log_weights = []
    chunk = chunk_size_for(num_points, x[0].numel()) if info.vectorizable else 1
    bar = tqdm(total=num_samples, desc="q(z|x) draws", disable=not progress, unit="draw",
               leave=False)  # fmt: skip
    done = 0
    with torch.no_grad():
        while done < num_samples:
            k = min(chunk, num_samples - done)

            def statistics(batch: torch.Tensor, k: int = k) -> tuple[torch.Tensor, ...]:
                return _chunk_statistics(pair, batch, k, latents, info, kl_method)

            if compiled is None:
                outputs = statistics(x)
            else:
                outputs = compiled(
                    statistics,
                    (x,),
                    key=("guide draws", k),
                    describe=f"{k} draws from q(z|x) and their weights",
                )
            log_weights.append(outputs[0])
            for index, latent in enumerate(latents):
                value, mean, variance, mean_sq, kl, moved = outputs[1 + 6 * index : 7 + 6 * index]
                draws[latent.name].append(value.float().cpu().numpy())
                conditional[latent.name] |= bool(moved)
                total = sums[latent.name]
                total["mean"] = total["mean"] + mean
                total["variance"] = total["variance"] + variance
                total["mean_sq"] = total["mean_sq"] + mean_sq
                if kl_method.get(latent.name) is not None:
                    total["kl"] = total["kl"] + kl
            done += k
            bar.update(k)
    bar.close()
    mean, sd, kl = {}, {}, {}
    for latent in latents:
        total = sums[latent.name]
        m = total["mean"] / num_samples
        v = total["variance"] / num_samples + (total["mean_sq"] / num_samples - m**2).clamp(min=0)
        mean[latent.name] = m.double().cpu().numpy()
        sd[latent.name] = v.sqrt().double().cpu().numpy()
        kl[latent.name] = (
            None
            if kl_method.get(latent.name) is None
            else (total["kl"] / num_samples).double().cpu().numpy()
        )
    return GuideDraws(
        draws={name: np.concatenate(chunks, axis=0) for name, chunks in draws.items()},
        mean=mean,
        sd=sd,
        kl=kl,
        kl_method=kl_method,
        conditional=conditional,
        log_weights=torch.cat(log_weights, dim=0),
    )


def _chunk_statistics(pair: Any, x: torch.Tensor, k: int, latents: Sequence[LatentSite],
                      info: PairInfo, kl_method: dict[str, str | None]
                      ) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """One chunk of ``k`` draws z ~ q(z|x) (in a particle plate when the pair vectorizes,
    else one draw without it), as tensors only, so that it can be traced into a graph: the
    log weights (k, B), then per latent site its draws (k, B, D), the sums over the chunk of
    E_q[z|pa], Var_q[z|pa], E_q[z|pa]^2 and the KL per dimension (B, D each; the KL zero
    where ``kl_method`` records none), and whether q's mean at the site moved from draw to
    draw. ``kl_method[site]`` is set on the first call: "analytic", "monte carlo" or None."""
    num_points = x.shape[0]
    rank = info.max_plate_nesting + 1
    guide_trace, model_trace = particle_traces(
        pair.model, pair.guide, x, k if info.vectorizable else None, info.max_plate_nesting
    )
    outputs = [
        log_weights_of_traces(
            guide_trace,
            model_trace,
            num_points,
            max_plate_nesting=info.max_plate_nesting,
            num_samples=k if info.vectorizable else None,
            data_plate=info.data_plate,
        )
    ]
    for latent in latents:
        guide_site = guide_trace.nodes[latent.name]
        model_site = model_trace.nodes[latent.name]
        event_dims = len(guide_site["fn"].event_shape)

        def flat(t, site=guide_site, event_dims=event_dims):
            return _per_point(t, site, event_dims, k, num_points, rank)

        value = guide_site["value"]
        mean, variance = _moments(guide_site["fn"], value)
        kl = torch.zeros_like(flat(value)[0])
        q_dims = _per_dimension(guide_site["fn"])
        p_dims = _per_dimension(model_site["fn"])
        if q_dims is None or p_dims is None:
            kl_method[latent.name] = None
        else:
            try:
                per_draw = torch.distributions.kl_divergence(q_dims, p_dims)
                kl_method.setdefault(latent.name, "analytic")
            except NotImplementedError:
                per_draw = q_dims.log_prob(value) - p_dims.log_prob(value)
                kl_method.setdefault(latent.name, "monte carlo")
            kl = flat(per_draw.expand(value.shape)).sum(0)
        # a site whose q depends on x only has one mean for all draws, bit for bit
        moved = (flat(mean) != flat(mean)[:1]).any()
        outputs += [flat(value), flat(mean).sum(0), flat(variance).sum(0),
                    flat(mean).pow(2).sum(0), kl, moved]  # fmt: skip
    return tuple(outputs)


@contextlib.contextmanager
def frozen_parameters(pair: Any) -> Iterator[None]:
    """Hold every parameter of the pair (module and param store) fixed: requires_grad False,
    restored on exit, so q* and NUTS move z only and never the decoder.

    Modules go to eval mode meanwhile (restored too): ``pyro.module`` warns about a frozen
    parameter of a module in training mode.
    """
    tensors = [value for _, value in pyro.get_param_store().named_parameters()]
    roots = pair_modules(pair)
    modules = [module for root in roots for module in root.modules()]
    tensors += [param for root in roots for param in root.parameters()]
    unique = list({id(t): t for t in tensors}.values())
    flags = [t.requires_grad for t in unique]
    training = [module.training for module in modules]
    try:
        for t in unique:
            t.requires_grad_(False)
        for module in modules:
            module.train(False)
        yield
    finally:
        for t, flag in zip(unique, flags, strict=True):
            t.requires_grad_(flag)
        for module, mode in zip(modules, training, strict=True):
            module.train(mode)


# ---------------------------------------------------------------------------------------------
# Amortization and approximation gaps (Cremer et al. 2018)


class FactorizedGaussian:
    """Per-datapoint fully factorized Gaussian guide q*(z|x_b) = prod_s,d N(z_sd; m_bsd, s_bsd^2).

    One free (m, log s) per point, site and coordinate, not a function of x: fitted to each
    point alone, it is the best the Gaussian family can do without amortization.

    References:
        Cremer, Li & Duvenaud (2018), Inference Suboptimality in Variational Autoencoders.
    """

    def __init__(self, latents: Sequence[LatentSite], loc: dict[str, torch.Tensor],
                 scale: dict[str, torch.Tensor], plate_name: str) -> None:  # fmt: skip
        self.latents = list(latents)
        self.plate_name = plate_name
        self.loc = {n: v.detach().clone().requires_grad_() for n, v in loc.items()}
        self.log_scale = {n: v.detach().log().clone().requires_grad_() for n, v in scale.items()}

    def parameters(self) -> list[torch.Tensor]:
        return [*self.loc.values(), *self.log_scale.values()]

    def __call__(self, x: torch.Tensor) -> None:
        num_points = x.shape[0]
        with pyro.plate(self.plate_name, num_points, dim=-1):
            for latent in self.latents:
                shape = (num_points, *latent.event_shape)
                loc = self.loc[latent.name].reshape(shape)
                scale = self.log_scale[latent.name].exp().reshape(shape)
                pyro.sample(latent.name, dist.Normal(loc, scale).to_event(len(latent.event_shape)))


#: What q* was, in ``diagnose.json``'s ``q_star_family``.
GAUSSIAN_FAMILY = "factorized Gaussian per point"
FLOW_FAMILY = "the guide's flow per point (free base and context)"


def per_point_guide(pair: Any, x: torch.Tensor) -> Any:
    """The pair's own per-point family for q* (``pair.per_point_guide(x)``, built-in flow
    guides have one), or None for the factorized Gaussian."""
    pair = getattr(pair, "base_pair", pair)  # an EvaluationPair's own pair
    method = getattr(pair, "per_point_guide", None)
    return method(x) if callable(method) else None


def gaps_unavailable(latents: Sequence[LatentSite], num_points: int) -> str | None:
    """Why the Gaussian q* cannot be fitted to these latents, or None if it can."""
    for latent in latents:
        if not latent.real:
            return (
                f"site {latent.name!r} is {latent.distribution} (not real-valued): the "
                "per-datapoint Gaussian q* of Cremer et al. needs real-valued latent sites"
            )
        if latent.value_shape != (num_points, *latent.event_shape):
            return (
                f"site {latent.name!r} has value shape {latent.value_shape}: the per-datapoint "
                "q* handles sites whose only batch dim is the data plate"
            )
    return None


def inference_gaps(pair: Any, x: torch.Tensor, latents: Sequence[LatentSite], info: PairInfo,
                   loc: dict[str, np.ndarray], scale: dict[str, np.ndarray], *,
                   num_samples: int, steps: int = 200, lr: float = 1e-2, particles: int = 8,
                   progress: bool = False, compiled: CompiledLogWeights | None = None,
                   q_star: Any = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Fit q* to each point by Adam on its ELBO; return its ELBO and IS log p(x) per point.

    q* is ``q_star`` when given (a per-point member of the guide's own family, such as
    `pyro_vae.guides.flows.PerPointFlowGuide`: a program over the data plate with
    ``parameters()``); else a :class:`FactorizedGaussian` started at ``loc``, ``scale`` (the
    guide's mean and sd per coordinate: for a Gaussian guide site that depends on x only, its
    own loc and scale). It maximizes

        L[q*] = E_{q*}[log p(x, z) - log q*(z|x)]

    with ``particles`` reparameterized draws per step and the model's parameters frozen.
    Returns per-point tensors ``elbo`` (L[q*] from ``num_samples`` fresh draws), ``log_px``
    (log-mean-exp of the same weights: importance sampling with q* as the proposal) and
    ``elbo_stderr``. ``compiled``: those weights from compiled graphs (``--compile``).

    References:
        Cremer, Li & Duvenaud (2018), Inference Suboptimality in Variational Autoencoders.
    """
    device = x.device
    if q_star is None:
        q_star = FactorizedGaussian(
            latents,
            {n: torch.as_tensor(v, dtype=x.dtype, device=device) for n, v in loc.items()},
            {
                n: torch.as_tensor(v, dtype=x.dtype, device=device).clamp(min=1e-6)
                for n, v in scale.items()
            },  # fmt: skip
            info.data_plate,
        )
    elbo = pyro.infer.Trace_ELBO(
        num_particles=particles,
        vectorize_particles=info.vectorizable,
        max_plate_nesting=info.max_plate_nesting,
    )
    optimizer = torch.optim.Adam(q_star.parameters(), lr=lr)
    with frozen_parameters(pair):
        for step in tqdm(range(steps), desc="q* per point", disable=not progress, leave=False):
            optimizer.zero_grad()
            loss = elbo.differentiable_loss(pair.model, q_star, x)
            if not torch.isfinite(loss):
                raise DiagnoseError(
                    f"the per-datapoint q* diverged at step {step + 1} (ELBO {-loss.item()}); "
                    f"try a smaller --gap-lr (now {lr}) or fewer --gap-steps"
                )
            loss.backward()
            optimizer.step()
        log_weights = log_importance_weights(
            pair.model,
            q_star,
            x,
            num_samples,
            max_plate_nesting=info.max_plate_nesting,
            chunk_size=chunk_size_for(x.shape[0], x[0].numel()),
            vectorize=info.vectorizable,
            data_plate=info.data_plate,
            trace_fn=compiled,
        )
    return {
        "elbo": log_weights.mean(0),
        "log_px": log_mean_exp(log_weights, dim=0),
        "elbo_stderr": log_weights.std(0) / math.sqrt(num_samples),
    }


# ---------------------------------------------------------------------------------------------
# NUTS reference posterior


def check_continuous(latents: Sequence[LatentSite]) -> None:
    """Raise :class:`DiagnoseError` naming the first discrete latent site (NUTS needs
    gradients of log p(x, z) in z)."""
    for latent in latents:
        if latent.discrete:
            raise DiagnoseError(
                f"--nuts needs continuous latent sites; site {latent.name!r} is "
                f"{latent.distribution}. Drop --nuts for this pair."
            )


def nuts_posterior(pair: Any, x: torch.Tensor, latents: Sequence[LatentSite], info: PairInfo, *,
                   num_chains: int = 4, warmup: int = 200, num_samples: int = 200,
                   seed: int = 0, progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Draw from p(z | x) with the decoder fixed by NUTS, ``num_chains`` chains one by one.

    The posterior factorizes over data points, p(z_1..z_B | x_1..x_B) = prod_b p(z_b | x_b),
    so one run over the whole batch is a valid, cheaper reference for every point. Each chain
    is its own single-chain ``MCMC`` (Pyro's ``num_chains > 1`` spawns processes), seeded
    ``seed + chain`` and started from its own draw of q(z|x). Returns ``draws`` per site
    (chains, draws, B, D), ``diverging`` (chains, draws), ``acceptance_rate`` per chain.

    References:
        Hoffman & Gelman (2014), The No-U-Turn Sampler.
    """
    check_continuous(latents)
    num_points = x.shape[0]
    draws: dict[str, list[np.ndarray]] = {latent.name: [] for latent in latents}
    diverging, acceptance = [], []
    with frozen_parameters(pair):
        for chain in range(num_chains):
            pyro.set_rng_seed(seed + chain)
            with torch.no_grad():
                start_trace = poutine.trace(pair.guide).get_trace(x)
                model_trace = poutine.trace(
                    poutine.replay(pair.model, trace=start_trace)
                ).get_trace(x)
            initial = {
                latent.name: biject_to(model_trace.nodes[latent.name]["fn"].support)
                .inv(start_trace.nodes[latent.name]["value"])
                .detach()
                for latent in latents
            }
            kernel = pyro.infer.NUTS(
                pair.model,
                jit_compile=True,
                ignore_jit_warnings=True,
                max_plate_nesting=info.max_plate_nesting,
            )
            mcmc = pyro.infer.MCMC(
                kernel,
                num_samples=num_samples,
                warmup_steps=warmup,
                initial_params=initial,
                disable_progbar=not progress,
            )
            with warnings.catch_warnings():
                # Pyro's jit_compile calls torch.jit.trace, which torch >= 2.9 deprecates;
                # nothing a user of diagnose can act on.
                warnings.filterwarnings(
                    "ignore",
                    message=r".*torch\.jit\.trace.*deprecated",
                    category=DeprecationWarning,
                )
                mcmc.run(x)
            samples = mcmc.get_samples()
            for latent in latents:
                site = model_trace.nodes[latent.name]
                draws[latent.name].append(
                    _per_point(
                        samples[latent.name],
                        site,
                        len(site["fn"].event_shape),
                        num_samples,
                        num_points,
                        info.max_plate_nesting + 1,
                    )
                    .double()
                    .cpu()
                    .numpy()
                )
            stats = mcmc.diagnostics()
            flags = np.zeros(num_samples, dtype=bool)
            flags[[i for i in stats["divergences"]["chain 0"] if 0 <= i < num_samples]] = True
            diverging.append(flags)
            acceptance.append(float(stats["acceptance rate"]["chain 0"]))
    return {
        "draws": {name: np.stack(chains) for name, chains in draws.items()},
        "diverging": np.stack(diverging),
        "acceptance_rate": acceptance,
    }


def inference_data(draws: dict[str, np.ndarray], latents: Sequence[LatentSite],
                   indices: Sequence[int], sample_stats: dict | None = None):  # fmt: skip
    """ArviZ InferenceData of per-point latent draws (chains, draws, B, D) per site, with
    dims ``chain, draw, obs_id, <latent dim>`` and ``obs_id`` = the indices into the split."""
    import arviz as az

    coords: dict[str, Any] = {"obs_id": np.asarray(list(indices), dtype=np.int64)}
    dims = {}
    for latent in latents:
        coords[latent.dim_name] = np.arange(latent.size)
        dims[latent.name] = ["obs_id", latent.dim_name]
    return az.from_dict(posterior=draws, sample_stats=sample_stats, coords=coords, dims=dims)


def _dataset_extreme(dataset: Any, reduce: Any) -> float:
    values = [np.asarray(dataset[name].values, dtype=np.float64) for name in dataset.data_vars]
    values = np.concatenate([v.ravel() for v in values])
    values = values[~np.isnan(values)]
    return float(reduce(values)) if values.size else float("nan")


# ---------------------------------------------------------------------------------------------
# Everything together, for a pair and a batch


@dataclass
class Diagnosis:
    """What :func:`diagnose_pair` found: a summary of arrays and the draws as InferenceData.

    :func:`diagnose` returns a :class:`PosteriorDiagnosis` instead (the same summary as
    JSON-ready dict items, with ``summary()``, ``plot`` and ``to_inference_data``)."""

    summary: dict[str, Any]
    guide: Any  # arviz.InferenceData of q(z|x) draws
    nuts: Any = None  # arviz.InferenceData of NUTS draws, or None


def _check_settings(num_samples, nuts_chains, nuts_warmup, nuts_samples, gap_steps, gap_lr,
                    gap_particles) -> None:  # fmt: skip
    checks = [
        (num_samples >= MIN_KHAT_SAMPLES, "--num-samples", num_samples,
         f"at least {MIN_KHAT_SAMPLES} (PSIS k-hat fits a Pareto tail to the largest "
         "ceil(min(S/5, 3 sqrt S)) weights and needs 5 of them)"),
        (nuts_chains >= 2, "--nuts-chains", nuts_chains, "at least 2 (R-hat compares chains)"),
        (nuts_warmup >= 0, "--nuts-warmup", nuts_warmup, "at least 0"),
        (nuts_samples >= MIN_NUTS_SAMPLES, "--nuts-samples", nuts_samples,
         f"at least {MIN_NUTS_SAMPLES}"),
        (gap_steps >= 0, "--gap-steps", gap_steps, "at least 0"),
        (math.isfinite(gap_lr) and gap_lr > 0, "--gap-lr", gap_lr, "a positive number"),
        (gap_particles >= 1, "--gap-particles", gap_particles, "at least 1"),
    ]  # fmt: skip
    for ok, flag, value, wanted in checks:
        if not ok:
            raise DiagnoseError(f"{flag} {value!r}: must be {wanted}")


def _concat(per_site: dict[str, np.ndarray], latents: Sequence[LatentSite]) -> np.ndarray:
    return np.concatenate([per_site[latent.name] for latent in latents], axis=-1)


def diagnose_pair(
    pair: Any,
    x: torch.Tensor,
    *,
    info: PairInfo | None = None,
    indices: Sequence[int] | None = None,
    num_samples: int = 1000,
    nuts: bool = False,
    nuts_chains: int = 4,
    nuts_warmup: int = 200,
    nuts_samples: int = 200,
    gap_steps: int = 200,
    gap_lr: float = 1e-2,
    gap_particles: int = 8,
    seed: int = 0,
    progress: bool = False,
    compile: bool = False,
) -> Diagnosis | None:
    """Diagnose the amortized posterior q(z|x) of ``pair`` at each point of the batch ``x``.

    Per point: PSIS k-hat of the S log weights log w_s = log p(x, z_s) - log q(z_s|x),
    z_s ~ q(z|x); log p(x) ~= log (1/S) sum_s w_s and the ELBO (1/S) sum_s log w_s; the
    amortization gap L[q*] - L[q] and the approximation gap log p(x) - L[q*] with q* fitted
    to each point alone (:func:`inference_gaps`), where log p(x) is the larger of the two
    importance-sampling estimates with q and with q* as the proposal (each is a stochastic
    lower bound, so the larger is the tighter); with ``nuts``, a NUTS reference posterior and
    q compared with it. Over the points: active units and the KL to the prior per dimension.
    The larger of two noisy estimates can overshoot log p(x) by about the noise of the larger
    one; with S draws that noise is small unless the proposal is much narrower than p(z|x)
    (which the k-hat of that point then shows).
    ``info`` is :func:`~pyro_vae.pairs.check_pair`'s report (computed here if None; that
    needs two points or more); ``indices`` label the points (default 0..B-1). ``compile``:
    the importance-sampling parts (the draws from q and their weights, and q*'s weights) run
    as compiled graphs of the same computations (:class:`~pyro_vae.infer.compiled.CompiledByShape`),
    with the same numbers; ``seconds`` in the summary says how long each part took. Under
    torchrun the draws from q are shared among the ranks (:func:`guide_draws`) and rank 0
    does the rest; the other ranks return None.

    The summary holds arrays and tensors (``khat`` with its infinities); :func:`diagnose`
    on a pair and ``x`` gives the same numbers as a :class:`PosteriorDiagnosis`.

    References:
        Yao, Vehtari, Simpson & Gelman (2018), Yes, but Did It Work?
        Cremer, Li & Duvenaud (2018), Inference Suboptimality in Variational Autoencoders.
        Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
    """
    _check_settings(num_samples, nuts_chains, nuts_warmup, nuts_samples, gap_steps, gap_lr,
                    gap_particles)  # fmt: skip
    if info is None:
        info = check_pair(pair, x)
    with evaluation_mode(pair):
        view = evaluation_view(pair, info, x[:2])
        # estimators see the unscaled programs with global latents held fixed; the per-point
        # diagnostics are about the local latents only
        local_info = replace(
            info, latent_sites=info.local_latent_sites, vectorizable=view.vectorizable
        )
        return _diagnose_pair(
            view, x, local_info, indices, num_samples, nuts, nuts_chains, nuts_warmup,
            nuts_samples, gap_steps, gap_lr, gap_particles, seed, progress, compile,
        )  # fmt: skip


def _diagnose_pair(pair, x, info, indices, num_samples, nuts, nuts_chains, nuts_warmup,
                   nuts_samples, gap_steps, gap_lr, gap_particles, seed, progress,
                   compile=False) -> Diagnosis | None:  # fmt: skip
    """The steps of :func:`diagnose_pair` in order, each seeded as before: the draws from q
    (``seed``), q* (``seed + 2``), NUTS (``seed + 100 + chain``)."""
    num_points = x.shape[0]
    indices = list(range(num_points)) if indices is None else [int(i) for i in indices]
    if len(indices) != num_points:
        raise ValueError(f"{len(indices)} indices for {num_points} points")
    latents = latent_sites(pair, x, info)
    if nuts:
        check_continuous(latents)  # before the long parts, not after them
    notes = _pair_notes(info)
    seconds: dict[str, float] = {}
    compiled = CompiledByShape(on_note=partial(print, file=sys.stderr)) if compile else None

    # S draws from q: PSIS k-hat, log p(x), ELBO from their weights; moments, KL per
    # dimension and the InferenceData from the same draws
    started = time.perf_counter()
    pyro.set_rng_seed(seed)
    ranks = world()
    q = guide_draws(pair, x, latents, info, num_samples, progress=progress, compiled=compiled,
                    seed=seed, ranks=ranks)  # fmt: skip
    if not ranks.is_main:  # the other ranks shared the draws; rank 0 does the rest
        return None
    seconds["importance_sampling"] = time.perf_counter() - started
    weights, weight_notes = _weight_diagnostics(q.log_weights)
    notes += weight_notes
    q_mean, q_sd = _concat(q.mean, latents), _concat(q.sd, latents)
    labels = [label for latent in latents for label in latent.labels()]
    summary: dict[str, Any] = {
        "indices": indices,
        "num_points": num_points,
        "num_samples": num_samples,
        "latent_sites": [latent.name for latent in latents],
        **evaluation_notes(pair),
        "latent_dims": labels,
        **_weight_summary(weights),
    }

    started = time.perf_counter()
    gaps, gap_notes = _gap_diagnostics(
        pair, x, latents, info, q, weights["log_px"], weights["elbo"], num_samples=num_samples,
        steps=gap_steps, lr=gap_lr, particles=gap_particles, seed=seed, progress=progress,
        compiled=compiled,
    )  # fmt: skip
    summary.update(gaps)
    notes += gap_notes
    seconds["gaps"] = time.perf_counter() - started

    usage, usage_notes = _latent_usage(latents, labels, q_mean, q_sd, q.kl, q.kl_method)
    summary.update(usage)
    notes += usage_notes
    guide_idata = inference_data({n: v[None] for n, v in q.draws.items()}, latents, indices)

    nuts_idata = None
    summary["nuts"] = None
    if nuts:
        started = time.perf_counter()
        summary["nuts"], nuts_idata = _nuts_comparison(
            pair, x, latents, info, indices, q_mean, q_sd, num_chains=nuts_chains,
            warmup=nuts_warmup, num_samples=nuts_samples, seed=seed + 100, progress=progress,
        )  # fmt: skip
        seconds["nuts"] = time.perf_counter() - started
    summary["notes"] = notes
    summary["seconds"] = seconds
    return Diagnosis(summary=summary, guide=guide_idata, nuts=nuts_idata)


def _pair_notes(info: PairInfo) -> list[str]:
    """What the per-point diagnostics leave out of this pair: global latents, scales."""
    notes = []
    if info.global_sites:
        notes.append(
            f"global latent site(s) {list(info.global_sites)} (outside the data plate) are "
            "skipped: they are held at the guide's mean, and every per-point diagnostic is of "
            "p(z_i | x_i, globals)"
        )
    if info.scaled_sites:
        notes.append(
            f"site(s) {list(info.scaled_sites)} carry a poutine.scale in the pair; every "
            "density here is the unscaled one"
        )
    return notes


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


def _gap_diagnostics(pair: Any, x: torch.Tensor, latents: Sequence[LatentSite], info: PairInfo,
                     q: GuideDraws, log_px: torch.Tensor, elbo: torch.Tensor, *,
                     num_samples: int, steps: int, lr: float, particles: int, seed: int,
                     progress: bool, compiled: CompiledByShape | None
                     ) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """The amortization gap L[q*] - L[q] and the approximation gap log p(x) - L[q*] per
    point, q* fitted from ``seed + 2`` (:func:`inference_gaps`); log p(x) is the larger of
    the estimates with q and with q* as the proposal. The summary's gap keys (None, with
    ``gap_reason``, where no q* fits the latents) and the notes on q*'s family.

    References:
        Cremer, Li & Duvenaud (2018), Inference Suboptimality in Variational Autoencoders.
    """
    settings = {"gap_settings": {"steps": steps, "lr": lr, "particles": particles}}
    reason = gaps_unavailable(latents, x.shape[0])
    if reason is not None:
        return {
            "amortization_gap": None,
            "approximation_gap": None,
            "elbo_q_star": None,
            "amortization_gap_per_point": None,
            "approximation_gap_per_point": None,
            "gap_reason": reason,
            "q_star_family": None,
            **settings,
        }, []  # fmt: skip
    pyro.set_rng_seed(seed + 2)
    own_family = per_point_guide(pair, x)
    star_compiled = None if compiled is None else CompiledLogWeights(compiled.on_note)
    fitted = inference_gaps(pair, x, latents, info, q.mean, q.sd, num_samples=num_samples,
                            steps=steps, lr=lr, particles=particles, progress=progress,
                            compiled=star_compiled, q_star=own_family)  # fmt: skip
    log_px_best = torch.maximum(log_px, fitted["log_px"])
    amortization = fitted["elbo"] - elbo
    approximation = log_px_best - fitted["elbo"]
    gaps = {
        "amortization_gap": amortization.mean(),
        "approximation_gap": approximation.mean(),
        "elbo_q_star": fitted["elbo"].mean(),
        "amortization_gap_per_point": amortization,
        "approximation_gap_per_point": approximation,
        "elbo_q_star_per_point": fitted["elbo"],
        "elbo_q_star_stderr_per_point": fitted["elbo_stderr"],
        "log_px_q_star_per_point": fitted["log_px"],
        "log_px_best_per_point": log_px_best,
        "gap_reason": None,
        "q_star_family": FLOW_FAMILY if own_family is not None else GAUSSIAN_FAMILY,
        **settings,
    }
    conditional = any(q.conditional.values())
    return gaps, _q_star_notes(_guide_fns(pair, x, latents), own_family, conditional)


def _q_star_notes(guide_fns: Sequence[Any], own_family: Any, conditional: bool) -> list[str]:
    """When q* (the guide's own family per point, or a factorized Gaussian) is not q's
    family, the amortization gap also holds the difference of the families: say so.
    ``guide_fns`` are the guide's distributions at the latent sites, ``conditional`` whether
    q at some site moves with the other latents."""
    if own_family is not None:
        notes = [
            "q* is the guide's own flow family fitted to each point (its Gaussian base "
            "and the flow's context free per point, the flow's networks fixed), started at "
            "q: the amortization gap is what the encoder's choice costs within the family"
        ]
        if conditional:
            notes.append(
                "q* fits each latent site's flow separately per point, without q's "
                "dependence of one site on another: the amortization gap then also holds "
                "that difference and can be negative"
            )
        return notes
    if any(isinstance(fn, torch.distributions.TransformedDistribution) for fn in guide_fns):
        return [
            "the guide is a transformed (flow) distribution with no per-point family to fit "
            "(a pair method per_point_guide(x)); q* falls back to a factorized Gaussian, so "
            "the amortization gap also holds the difference of the two families and can be "
            "negative"
        ]
    gaussian = all(isinstance(_base_distribution(fn), dist.Normal) for fn in guide_fns)
    if not gaussian or conditional:
        return [
            "the guide is not a fully factorized Gaussian given x (as q* is): the "
            "amortization gap then also holds the difference of the two families and can "
            "be negative"
        ]
    return []


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


def _nuts_comparison(pair: Any, x: torch.Tensor, latents: Sequence[LatentSite], info: PairInfo,
                     indices: Sequence[int], q_mean: np.ndarray, q_sd: np.ndarray, *,
                     num_chains: int, warmup: int, num_samples: int, seed: int,
                     progress: bool) -> tuple[dict[str, Any], Any]:  # fmt: skip
    """A NUTS reference p(z|x) (:func:`nuts_posterior`, chains seeded ``seed + chain``), its
    convergence (R-hat, bulk and tail ESS, divergences), and q compared with it per point and
    dimension: the standardized mean difference (E_q[z] - E_nuts[z]) / sd_nuts[z] and the
    scale ratio sd_q[z] / sd_nuts[z]. Returns the summary's ``nuts`` and the draws as
    InferenceData.

    References:
        Hoffman & Gelman (2014), The No-U-Turn Sampler.
        Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), Rank-Normalization, Folding,
            and Localization: An Improved R-hat.
    """
    import arviz as az

    reference = nuts_posterior(pair, x, latents, info, num_chains=num_chains, warmup=warmup,
                               num_samples=num_samples, seed=seed, progress=progress)  # fmt: skip
    draws = reference["draws"]
    idata = inference_data(draws, latents, indices, {"diverging": reference["diverging"]})
    nuts_mean = _concat({n: d.mean(axis=(0, 1)) for n, d in draws.items()}, latents)
    nuts_sd = _concat(
        {n: d.reshape(-1, *d.shape[2:]).std(axis=0, ddof=1) for n, d in draws.items()}, latents
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        std_mean_diff = (q_mean - nuts_mean) / nuts_sd
        scale_ratio = q_sd / nuts_sd
    comparison = {
        "num_chains": num_chains,
        "num_warmup": warmup,
        "num_samples": num_samples,
        "rhat_max": _dataset_extreme(az.rhat(idata), np.nanmax),
        "ess_bulk_min": _dataset_extreme(az.ess(idata, method="bulk"), np.nanmin),
        "ess_tail_min": _dataset_extreme(az.ess(idata, method="tail"), np.nanmin),
        "divergences": int(reference["diverging"].sum()),
        "acceptance_rate": reference["acceptance_rate"],
        "mean": nuts_mean,
        "sd": nuts_sd,
        "std_mean_diff": std_mean_diff,
        "scale_ratio": scale_ratio,
        "std_mean_diff_abs_max": float(np.nanmax(np.abs(std_mean_diff))),
        "std_mean_diff_abs_mean_per_dim": np.nanmean(np.abs(std_mean_diff), axis=0),
        "scale_ratio_median": float(np.nanmedian(scale_ratio)),
        "scale_ratio_median_per_dim": np.nanmedian(scale_ratio, axis=0),
    }
    return comparison, idata


def _splits(latents: Sequence[LatentSite]) -> list[int]:
    return list(np.cumsum([latent.size for latent in latents])[:-1])


def _guide_fns(pair: Any, x: torch.Tensor, latents: Sequence[LatentSite]) -> list[Any]:
    with torch.no_grad():
        trace = poutine.trace(pair.guide).get_trace(x)
    return [trace.nodes[latent.name]["fn"] for latent in latents]


# ---------------------------------------------------------------------------------------------
# What a user holds: select points, diagnose, and the result that prints, plots and saves


def select_indices(num_available: int, split: str | None, points: int | None,
                   indices: Sequence[int] | None) -> list[int]:  # fmt: skip
    """The indices into the split (or, for ``split=None``, the rows of ``x``) that
    ``--points`` or ``--indices`` select, checked."""
    where = f"the {split} split" if split is not None else "x"
    if points is not None and indices is not None:
        raise DiagnoseError("give --points or --indices, not both")
    if indices is not None:
        indices = [int(i) for i in indices]
        if not indices:
            raise DiagnoseError("--indices is empty; give comma-separated indices like 0,5,9")
        bad = [i for i in indices if not 0 <= i < num_available]
        if bad:
            raise DiagnoseError(
                f"--indices {','.join(map(str, bad))} out of range: {where} has "
                f"{num_available} points (indices 0 to {num_available - 1})"
            )
        if len(set(indices)) != len(indices):
            raise DiagnoseError(f"--indices repeats an index: {indices}")
        return indices
    if points is None:
        return list(range(min(DEFAULT_POINTS, num_available)))
    if not 1 <= points <= num_available:
        raise DiagnoseError(
            f"--points {points}: must be between 1 and {num_available}, the size of {where}"
        )
    return list(range(points))


#: The figures :meth:`PosteriorDiagnosis.plot` draws (those that apply to the diagnosis).
FIGURES = ("khat.png", "kl_per_dim.png", "forest.png", "pair.png")


class PosteriorDiagnosis(Result):
    """What :func:`diagnose` found: the JSON summary as dict items (``result["khat"]``,
    ``result["amortization_gap"]``, ``result["nuts"]``, ...), and the draws as ArviZ
    InferenceData: ``guide`` (q(z|x)) and ``nuts`` (the NUTS reference, or None).

    ``summary()`` reads it in a few lines, ``to_dict()`` is the JSON ``pyro-vae diagnose
    --json`` prints, ``to_inference_data()`` the draws for ArviZ, ``plot(folder)`` the
    figures and ``save(folder)`` every file the command line writes."""

    kind = "diagnosis"

    def __init__(self, summary: dict[str, Any], guide: Any, nuts: Any = None):
        super().__init__(summary)
        self.guide = guide
        self.nuts = nuts

    def summary(self) -> str:
        return format_summary(self)

    def to_inference_data(self, which: str = "guide") -> Any:
        """The draws as ``arviz.InferenceData``: ``"guide"`` the S draws from q(z|x) (one
        chain), ``"nuts"`` the NUTS reference p(z|x) (its chains, ``sample_stats.diverging``).

        Group ``posterior``, one variable per latent site with dims ``chain, draw, obs_id,
        <latent dim>`` (``latent_dim`` for a single site, else ``<site>_dim``); ``obs_id``
        are the diagnosed points' indices. Both have the same coordinates, so ArviZ compares
        them directly: ``az.plot_forest([d.to_inference_data(), d.to_inference_data("nuts")],
        model_names=["q(z|x)", "NUTS"])``, ``az.summary(d.to_inference_data("nuts"))``."""
        if which == "guide":
            return self.guide
        if which == "nuts":
            if self.nuts is None:
                raise DiagnoseError(
                    "this diagnosis has no NUTS reference; run diagnose(..., nuts=True)"
                )
            return self.nuts
        raise ValueError(f"to_inference_data({which!r}): give 'guide' or 'nuts'")

    def plot(self, path: str | os.PathLike) -> list[Path]:
        """Draw the figures into the folder ``path`` (made if missing) and return their paths:
        ``khat.png`` (k-hat per point), ``kl_per_dim.png`` (KL to the prior per dimension,
        where it is known), ``forest.png`` (q against NUTS, if run, for a few points and
        dims) and ``pair.png`` (the worst point's first dims, with two dims or more)."""
        folder = Path(path)
        if folder.suffix.lower() == ".png":
            raise DiagnoseError(
                f"plot({str(path)!r}): a diagnosis draws several figures "
                f"({', '.join(FIGURES)}); give a folder"
            )
        folder.mkdir(parents=True, exist_ok=True)
        return [folder / name for name in write_figures(self, self, folder)]

    def save(self, path: str | os.PathLike) -> list[Path]:
        """Write every file the command line writes into the folder ``path``:
        ``guide.nc`` (and ``nuts.nc``) as ArviZ netcdf, the figures of :meth:`plot`, and
        ``diagnose.json`` last; records ``out``, ``files`` and ``seconds["outputs"]`` in the
        summary as well. Returns the paths written."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self["out"] = str(out)
        self["files"] = write_outputs(self, self, out)
        self["seconds"]["outputs"] = time.perf_counter() - started
        atomic_write_bytes(out / "diagnose.json", json_bytes(self))
        return [out / name for name in self["files"]]


def diagnose(
    source: Any,
    x: torch.Tensor | None = None,
    *,
    labels: Any = None,
    guide: Any = None,
    points: int | None = None,
    indices: Sequence[int] | None = None,
    num_samples: int = 1000,
    nuts: bool = False,
    split: str = "test",
    out: str | os.PathLike | None = None,
    checkpoint: str = BEST,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
    nuts_chains: int = 4,
    nuts_warmup: int = 200,
    nuts_samples: int = 200,
    gap_steps: int = 200,
    gap_lr: float = 1e-2,
    gap_particles: int = 8,
    progress: bool | None = None,
    save: bool | None = None,
    seed: int = 0,
    compile: bool = False,
) -> PosteriorDiagnosis:
    """Diagnose an amortized posterior q(z|x) at selected points: can it be trusted there?

    ``source`` is what you hold: a pair (an object with ``model`` and ``guide``; or a model
    with ``guide=``, or a ``(model, guide)`` tuple) with its data ``x``; or a
    :class:`~pyro_vae.runs.reopen.Run`, or a run directory's path, whose split ``split`` is used
    when ``x`` is None (``checkpoint``, ``device``, ``data_dir`` and ``pair`` say how to
    reopen a path). ``indices`` selects rows of ``x`` (or points of the split); else the
    first ``points`` (default 20, or all of them if fewer); not both. A pair that needs
    labels on every call (``model(x, y)``) is refused.

    Measured (see :func:`diagnose_pair`): PSIS k-hat per point, log p(x) ~= log (1/S)
    sum_s p(x, z_s)/q(z_s|x) and the ELBO from S = ``num_samples`` draws, the amortization
    and approximation gaps (q* fitted by ``gap_steps`` Adam steps), active units, KL per
    dimension, and with ``nuts`` a NUTS reference posterior. ``seed`` seeds every part: the
    same seed gives the same numbers for a pair in memory and for its run directory.
    ``compile`` runs the importance-sampling parts as compiled graphs (the same numbers).

    Returns a :class:`PosteriorDiagnosis` (the JSON summary as dict items; ``summary()``,
    ``to_inference_data()``, ``plot(folder)``, ``save(folder)``). With ``save`` (the default
    for a path, or when ``out`` is given), writes into ``out`` (default RUN_DIR/diagnose):
    ``diagnose.json``, ``guide.nc`` (and ``nuts.nc``) and the PNGs ``khat.png``,
    ``kl_per_dim.png``, ``forest.png``, ``pair.png``. Under torchrun (a path) the draws from
    q are shared among the ranks; rank 0 returns the diagnosis, the others only their rank.

    References:
        Yao, Vehtari, Simpson & Gelman (2018), Yes, but Did It Work?
        Cremer, Li & Duvenaud (2018), Inference Suboptimality in Variational Autoencoders.
        Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
    """
    _check_settings(num_samples, nuts_chains, nuts_warmup, nuts_samples, gap_steps, gap_lr,
                    gap_particles)  # fmt: skip
    ranks = world()
    if is_run_source(source):
        ranks, rank_device = current_world(device or "auto")
        if ranks.distributed:
            device = rank_device
    held = subject(source, x, labels=labels, guide=guide, split=split, checkpoint=checkpoint,
                   device=device, data_dir=data_dir, pair=pair)  # fmt: skip
    refuse_conditional_pair(held, "diagnose")
    if save is None:
        save = isinstance(source, str | os.PathLike) or out is not None
    if save and out is None and held.run is None:
        raise ConfigError(
            "save=True writes into RUN_DIR/diagnose; this pair has no run directory. Give "
            "out=FOLDER, or keep the result (result.to_dict(), result.plot(FOLDER), "
            "result.save(FOLDER))"
        )
    if progress is None:
        progress = sys.stderr.isatty()
    progress = progress and ranks.is_main
    chosen = select_indices(held.x.shape[0], held.context["split"], points, indices)
    result = _diagnose(
        held, chosen, ranks, num_samples=num_samples, nuts=nuts, nuts_chains=nuts_chains,
        nuts_warmup=nuts_warmup, nuts_samples=nuts_samples, gap_steps=gap_steps,
        gap_lr=gap_lr, gap_particles=gap_particles, seed=seed, progress=progress,
        compile=compile,
    )  # fmt: skip
    if save and ranks.is_main:
        result.save(Path(out) if out is not None else held.run.path / DIAGNOSE_DIR)
    return result


def _diagnose(held: Subject, chosen: list[int], ranks: World, *, seed: int,
              **settings: Any) -> PosteriorDiagnosis | Result:  # fmt: skip
    """:func:`diagnose_pair` on the rows ``chosen`` of ``held``'s points, with the summary's
    keys that say where they came from; a rank other than 0 gets only its rank."""
    x = held.x[torch.as_tensor(chosen, device=held.x.device)]
    diagnosis = diagnose_pair(held.pair, x, info=held.info, indices=chosen, seed=seed,
                              **settings)  # fmt: skip
    if diagnosis is None:  # a rank other than 0: its share of the draws went to rank 0
        return Result({"rank": ranks.rank, "ranks": ranks.size})
    context = held.context
    summary = {
        "run_dir": None if held.run is None else str(held.run.path),
        "split": context["split"],
        "checkpoint": context["checkpoint"],
        "epoch": context["epoch"],
        "dataset": context["dataset"],
        "pair": None if held.run is None else held.run.config.pair,
        "device": context["device"],
        "ranks": ranks.size,
        "seed": seed,
        **diagnosis.summary,
    }
    return PosteriorDiagnosis(jsonable(summary), diagnosis.guide, diagnosis.nuts)


def write_outputs(diagnosis: Any, summary: dict[str, Any], out: Path) -> list[str]:
    """Write guide.nc, nuts.nc and the figures (:func:`write_figures`) into ``out``; return
    the file names written (``diagnose.json`` included, which the caller writes last).
    ``diagnosis`` has ``guide`` and ``nuts`` InferenceData (a :class:`Diagnosis` or a
    :class:`PosteriorDiagnosis`)."""
    written = ["diagnose.json"]
    diagnosis.guide.to_netcdf(str(out / "guide.nc"))
    written.append("guide.nc")
    if diagnosis.nuts is not None:
        diagnosis.nuts.to_netcdf(str(out / "nuts.nc"))
        written.append("nuts.nc")
    return written + write_figures(diagnosis, summary, out)


def _khat_values(summary: dict[str, Any]) -> np.ndarray:
    """k-hat per point with its infinities, also from JSON (null, told apart by status)."""
    khat = np.array([np.nan if k is None else k for k in summary["khat"]], dtype=np.float64)
    status = np.asarray(summary["khat_status"])
    khat[np.isnan(khat) & (status == "unreliable")] = np.inf
    khat[np.isnan(khat) & (status == "good")] = -np.inf
    return khat


def write_figures(diagnosis: Any, summary: dict[str, Any], out: Path) -> list[str]:
    """Draw khat.png, kl_per_dim.png (where the KL per dimension is known), forest.png and
    pair.png (with two latent dims or more) into ``out``; return the names written."""
    from pyro_vae.analysis.plots import forest_figure, khat_figure, kl_per_dim_figure, pair_figure

    khat = _khat_values(summary)
    khat_figure(khat, summary["indices"], out / "khat.png")
    written = ["khat.png"]
    if summary["kl_per_dim"] is not None:
        kl_per_dim_figure(summary["kl_per_dim"], summary["latent_dims"], out / "kl_per_dim.png")
        written.append("kl_per_dim.png")
    datasets = {"q(z|x)": diagnosis.guide}
    if diagnosis.nuts is not None:
        datasets["NUTS"] = diagnosis.nuts
    first = diagnosis.guide.posterior[summary["latent_sites"][0]]
    dim_name = first.dims[-1]
    # the point whose k-hat is worst; inf (null in JSON, status "unreliable") counts as worst
    worst = int(np.argmax(np.nan_to_num(khat, nan=-np.inf))) if len(khat) else 0
    forest_figure(
        datasets,
        out / "forest.png",
        var_name=first.name,
        coords={
            "obs_id": list(summary["indices"][:3]),
            dim_name: list(range(min(3, first.sizes[dim_name]))),
        },
    )
    written.append("forest.png")
    if first.sizes[dim_name] >= 2:
        pair_figure(
            datasets,
            out / "pair.png",
            var_name=first.name,
            coords={
                "obs_id": [summary["indices"][worst]],
                dim_name: list(range(min(4, first.sizes[dim_name]))),
            },
        )
        written.append("pair.png")
    return written


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few readable lines."""

    def number(value: Any, spec: str = ".3f") -> str:
        return "n/a" if value is None else format(value, spec)

    khat_max = summary["khat_max"]
    khat_max = "inf" if khat_max == "inf" else number(khat_max, ".2f")
    if khat_max == "n/a" and summary["num_points"]:
        khat_max = "-inf"  # every point has all-equal weights (see the notes)
    indices = summary["indices"]
    shown = ",".join(map(str, indices[:10])) + ("..." if len(indices) > 10 else "")
    lines = [
        f"{summary.get('split') or 'x'}: {summary['num_points']} points ({shown}), "
        f"S={summary['num_samples']} draws from q(z|x)",
        f"  PSIS k-hat   max {khat_max}: "
        f"{summary['khat_count_below_0_5']} good (< 0.5), "
        f"{summary['khat_count_0_5_to_0_7']} usable (0.5-0.7), "
        f"{summary['khat_count_above_0_7']} unreliable (> 0.7)",
        f"  log p(x) ~ {number(summary['log_px'])}  ELBO {number(summary['elbo'])}  "
        f"gap {number(summary['gap'])} nats",
    ]
    if summary["gap_reason"] is None:
        lines.append(
            f"  amortization gap {number(summary['amortization_gap'])}  approximation gap "
            f"{number(summary['approximation_gap'])} nats  (q*: "
            f"{summary.get('q_star_family') or GAUSSIAN_FAMILY}, "
            f"{summary['gap_settings']['steps']} Adam steps)"
        )
    else:
        lines.append(f"  gaps: n/a ({summary['gap_reason']})")
    total = len(summary["latent_dims"])
    if summary["active_units"] is not None:
        lines.append(
            f"  active units {summary['active_units']} of {total} "
            f"(Var_x E_q[z_d|x] > {ACTIVE_UNIT_THRESHOLD})"
        )
    if summary["kl_per_dim"] is not None:
        collapsed = summary["collapsed_dims"]
        listed = ", ".join(collapsed[:12]) + (" ..." if len(collapsed) > 12 else "")
        lines.append(
            f"  KL to the prior {number(summary['kl_total'])} nats, summed over {total} dims; "
            f"collapsed (KL < {COLLAPSED_KL}): {listed or 'none'}"
        )
    nuts = summary.get("nuts")
    if nuts:
        lines.append(
            f"  NUTS {nuts['num_chains']} chains x {nuts['num_samples']} draws: R-hat max "
            f"{number(nuts['rhat_max'])}, ESS bulk min {number(nuts['ess_bulk_min'], '.0f')}, "
            f"tail min {number(nuts['ess_tail_min'], '.0f')}, {nuts['divergences']} divergences"
        )
        lines.append(
            f"  q vs NUTS: |standardized mean difference| max "
            f"{number(nuts['std_mean_diff_abs_max'], '.2f')}, sd_q / sd_nuts median "
            f"{number(nuts['scale_ratio_median'], '.2f')}"
        )
    for note in summary.get("notes", []):
        lines.append(f"  note: {note}")
    if summary.get("files"):
        lines.append(f"  wrote {', '.join(summary['files'])} in {summary['out']}")
    return "\n".join(lines)
