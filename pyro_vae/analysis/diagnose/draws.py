"""The latent sites of a pair and S draws from q(z|x) per point: moments and KL per dimension.

Draws come in blocks of points, each from its own seed (the same on one process and on any
rank of several), and in chunks of draws that can run as compiled graphs; per point and site
they give E_q[z|x], sd_q[z|x], the KL to the prior per dimension and the log weights, and as
ArviZ InferenceData the draws themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pyro import poutine
from torch.distributions import constraints
from tqdm.auto import tqdm

from pyro_vae.infer.compiled import CompiledByShape
from pyro_vae.infer.distributed import World
from pyro_vae.infer.estimators import (
    chunk_size_for,
    default_max_elements,
    log_weights_of_traces,
    particle_traces,
)
from pyro_vae.infer.pair_draws import base_distribution as _base_distribution
from pyro_vae.infer.pair_draws import site_kl
from pyro_vae.pairs import PairInfo, data_plate_dim

#: Points per block of draws from q(z|x); block j of a diagnosis with ``seed`` draws from
#: ``seed * BLOCK_SEEDS + j`` (the same on one process and on any rank of several).
POINT_BLOCK = 25
BLOCK_SEEDS = 1_000_003


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
    bound = default_max_elements(x.device)
    chunk = chunk_size_for(num_points, x[0].numel(), bound) if info.vectorizable else 1
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
        per_draw, method = site_kl(guide_site["fn"], model_site["fn"], value)
        if per_draw is None:
            kl_method[latent.name] = None
        else:
            kl_method.setdefault(latent.name, method)
            kl = flat(per_draw).sum(0)
        # a site whose q depends on x only has one mean for all draws, bit for bit
        moved = (flat(mean) != flat(mean)[:1]).any()
        outputs += [flat(value), flat(mean).sum(0), flat(variance).sum(0),
                    flat(mean).pow(2).sum(0), kl, moved]  # fmt: skip
    return tuple(outputs)


def _concat(per_site: dict[str, np.ndarray], latents: Sequence[LatentSite]) -> np.ndarray:
    return np.concatenate([per_site[latent.name] for latent in latents], axis=-1)


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
