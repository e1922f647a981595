"""Per-datapoint estimators of log p(x) and the ELBO from Pyro traces of any pair.

Every estimator here starts from importance log-weights

    log w_k(x) = log p(x, z_k) - log q(z_k | x),    z_k ~ q(z | x),  k = 1..K,

computed per data point (Pyro's ``vectorized_importance_weights`` sums over data points, so
these are written here). From them:

- the ELBO estimate is the mean over k of log w_k,
- the importance-sampled estimate of log p(x) (the IWAE bound L_K) is log-mean-exp over k.

E[L_1] = ELBO <= E[L_K] <= E[L_{K+1}] <= log p(x), and L_K -> log p(x) as K grows.

The proposal is a table entry (:data:`ESTIMATORS`): ``is`` draws z_k from the guide q(z|x);
``prior`` draws them from the model's prior p(z), so log w_k = log p(x | z_k): the naive
Monte Carlo estimator, whose variance explodes when the posterior is far narrower than the
prior.

References:
    Kingma & Welling (2014), Auto-Encoding Variational Bayes, appendix D.
    Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask

from pyro_vae.infer.handlers import fix_sites, is_fixed, unscaled
from pyro_vae.pairs import (
    PARTICLE_PLATE,
    PairError,
    PairInfo,
    data_plate_dim,
    evaluation_mode,
    is_sample_site,
)
from pyro_vae.pairs.labels import program_args
from pyro_vae.pairs.local_params import LocalParams

_PARTICLE_PLATE = PARTICLE_PLATE


class EstimatorError(ValueError):
    """An estimator name that does not exist; the message names the flag and the choices."""


def log_mean_exp(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) sum_k exp(log_weights_k) along ``dim``, computed stably."""
    return torch.logsumexp(log_weights, dim=dim) - math.log(log_weights.shape[dim])


def iwae_bound(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The importance-weighted bound L_K = log (1/K) sum_k w_k (Burda et al. 2016)."""
    return log_mean_exp(log_weights, dim=dim)


def elbo_estimate(log_weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The Monte-Carlo ELBO: the mean of log w_k = log p(x, z_k) - log q(z_k|x)."""
    return log_weights.mean(dim=dim)


def unscaled_log_prob(site: dict) -> torch.Tensor:
    """log p(value) of a sample site, masked as the program says but *not* scaled: the
    model's own density, whatever ``poutine.scale`` (a β, KL annealing) or a subsampling
    plate put on the site. ``poutine.mask`` is kept: it says which values are observed."""
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_prob, 1.0, site["mask"])


def _site_log_prob(site: dict, batch_size: int, rank: int, particle_axis: int | None,
                   data_plate: str | None = None) -> torch.Tensor:  # fmt: skip
    """A site's unscaled log-density summed over every dim but the particle and data dims.

    Returns shape ``(K, B)`` (or ``(1, B)`` when ``particle_axis`` is None).
    """
    log_prob = unscaled_log_prob(site)
    log_prob = log_prob.reshape((1,) * (rank - log_prob.dim()) + tuple(log_prob.shape))
    found = data_plate_dim(site, batch_size, data_plate)
    if found is None:
        raise PairError(
            f"site {site['name']!r} is not in a plate over the {batch_size} data points; "
            "per-datapoint log p(x) needs every local sample site inside "
            "`with pyro.plate('data', x.shape[0]):`, and global latents held fixed "
            "(pyro_vae.infer.estimators.evaluation_view)"
        )
    data_axis = rank + found[1]
    keep = [data_axis] if particle_axis is None else [particle_axis, data_axis]
    others = [d for d in range(rank) if d not in keep]
    if others:
        log_prob = log_prob.sum(dim=others, keepdim=True)
    log_prob = log_prob.reshape(tuple(log_prob.shape[d] for d in keep))
    if particle_axis is None:
        log_prob = log_prob.unsqueeze(0)
    return log_prob


def log_weights_of_traces(
    guide_trace: Any,
    model_trace: Any,
    batch_size: int,
    *,
    max_plate_nesting: int = 1,
    num_samples: int | None = None,
    data_plate: str | None = None,
) -> torch.Tensor:
    """log p(x, z) - log q(z|x) per sample and point, shape ``(K, B)``, from a guide trace
    and the model replayed on it. ``num_samples`` is the size K of the particle plate at dim
    ``-max_plate_nesting - 1`` around both programs, or None for one unvectorized sample.

    Every site counts at its unscaled density (:func:`unscaled_log_prob`); every observed
    site of the model counts (a sequence observed one step at a time, part of an image);
    sites held fixed by :func:`~pyro_vae.infer.handlers.fix_sites` (global latents) are left out,
    so the weights are those of log p(x_i | globals). ``data_plate`` names the plate over
    the points (:attr:`PairInfo.data_plate`); None finds it by size.
    """
    if num_samples is None:
        rank, particle_axis = max_plate_nesting, None
    else:
        rank, particle_axis = max_plate_nesting + 1, 0

    def log_prob(site: dict) -> torch.Tensor:
        return _site_log_prob(site, batch_size, rank, particle_axis, data_plate)

    # Each latent's log p - log q is formed before summing over sites: where the proposal is
    # the prior the two are the same numbers, their difference is exactly 0, and log w is
    # exactly log p(x|z) rather than (log p(z) + log p(x|z)) - log p(z) with rounding.
    guide_sites = {
        name: site
        for name, site in guide_trace.nodes.items()
        if is_sample_site(site) and not site["is_observed"]
    }
    log_weights = 0.0
    for name, site in model_trace.nodes.items():
        if not is_sample_site(site) or is_fixed(site):
            continue
        term = log_prob(site)
        if not site["is_observed"] and name in guide_sites:
            term = term - log_prob(guide_sites.pop(name))
        log_weights = log_weights + term
    for site in guide_sites.values():  # guide sites the model lacks (check_pair forbids them)
        log_weights = log_weights - log_prob(site)
    return log_weights.expand((num_samples or 1, batch_size))


def particle_traces(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int | None,
    max_plate_nesting: int,
    y: torch.Tensor | None = None,
) -> tuple[Any, Any]:
    """A guide trace of ``num_samples`` draws z ~ q(z|x) in one vectorized particle plate
    (dim ``-max_plate_nesting - 1``; None: one draw, no plate), and the model replayed on it.
    ``y``: labels passed to both programs (a pair that needs them, :mod:`pyro_vae.pairs.labels`)."""
    args = program_args(x, y)
    # == not is: two accesses of a bound method (pair.model) are equal, not identical
    from_prior = isinstance(guide, PriorProposal) and guide.model == model
    if num_samples is not None:
        plate = pyro.plate(_PARTICLE_PLATE, num_samples, dim=-max_plate_nesting - 1)
        model, guide = plate(model), plate(guide)
    if from_prior:  # one run of the model: its latent sites are the proposal's
        model_trace = poutine.trace(model).get_trace(*args)
        guide_trace = model_trace.copy()
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample" and site["is_observed"]:
                guide_trace.remove_node(name)
        return guide_trace, model_trace
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    return guide_trace, model_trace


def _trace_log_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int | None,
    max_plate_nesting: int,
    data_plate: str | None = None,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p(x,z) - log q(z|x) per sample and point; ``num_samples=None`` means no particle
    plate (one sample, unvectorized)."""
    guide_trace, model_trace = particle_traces(model, guide, x, num_samples, max_plate_nesting,
                                               y)  # fmt: skip
    return log_weights_of_traces(guide_trace, model_trace, x.shape[0],
                                 max_plate_nesting=max_plate_nesting,
                                 num_samples=num_samples, data_plate=data_plate)  # fmt: skip


def log_importance_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int,
    *,
    max_plate_nesting: int = 1,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    data_plate: str | None = None,
    y: torch.Tensor | None = None,
    trace_fn: Callable | None = None,
) -> torch.Tensor:
    """Per-datapoint log importance weights log p(x, z_k) - log q(z_k|x), shape ``(K, B)``.

    ``guide`` is the proposal program q: the pair's guide, or any other, such as
    :func:`prior_proposal` ``(model)`` for weights p(x|z_k).

    Samples are drawn ``chunk_size`` at a time in one vectorized trace (an outer plate over
    samples, as Pyro vectorizes particles); ``vectorize=None`` tries that and falls back to a
    loop over samples, with a warning, for pairs that do not broadcast. Runs under
    ``torch.no_grad``: the result is for evaluation, not for gradients. ``y``: labels for a
    pair that needs them (both programs get ``(x, y)``).

    A discrete latent (a label q(y|x), a mixture component) is sampled from the guide like
    any other latent, inside each weight: the estimate stays unbiased in p(x), and where
    q(y|x) is close to p(y|x) the sampling costs little variance.

    ``trace_fn``: what computes one chunk of weights, with the arguments of the default,
    ``_trace_log_weights``; :class:`pyro_vae.infer.compiled.CompiledLogWeights` runs a compiled
    graph of it (``--compile``).
    """
    trace = _trace_log_weights if trace_fn is None else trace_fn
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    chunk_size = num_samples if chunk_size is None else max(1, min(chunk_size, num_samples))
    chunks = []
    with torch.no_grad():
        if vectorize is not False:
            try:
                done = 0
                while done < num_samples:
                    k = min(chunk_size, num_samples - done)
                    chunks.append(trace(model, guide, x, k, max_plate_nesting, data_plate, y))
                    done += k
                return torch.cat(chunks, dim=0)
            except PairError:
                raise
            except Exception as error:
                if vectorize:
                    raise
                warnings.warn(
                    "the pair does not run with samples vectorized in an outer plate "
                    f"({type(error).__name__}: {error}); falling back to one trace per sample, "
                    "which is slower",
                    RuntimeWarning,
                    stacklevel=2,
                )
                chunks = []
        for _ in range(num_samples):
            chunks.append(trace(model, guide, x, None, max_plate_nesting, data_plate, y))
        return torch.cat(chunks, dim=0)


def chunk_size_for(num_points: int, x_dim: int, max_elements: int = 2**24) -> int:
    """How many samples fit in one vectorized trace so that K * B * D stays bounded."""
    return max(1, max_elements // max(1, num_points * x_dim))


def default_max_elements(device: torch.device) -> int:
    """K * B * D per chunk: 2**22 on the CPU, where larger buffers are page-faulted at each."""
    return 2**22 if device.type == "cpu" else 2**24


class PriorProposal:
    """The model's prior p(z) as a proposal program: the model run forward with its observed
    sites hidden, so its latents are drawn from p(z) and the weights are p(x,z)/p(z) = p(x|z).

    :func:`particle_traces` recognizes it and runs the model once, not twice (proposal, then
    the model replayed on it): the decoder is the costly part of both runs.
    """

    def __init__(self, model: Callable) -> None:
        self.model = model
        self._forward = poutine.block(model, hide_fn=_is_observed)

    def __call__(self, *args, **kwargs):
        return self._forward(*args, **kwargs)


def _is_observed(msg: dict) -> bool:
    return msg["type"] == "sample" and msg["is_observed"]


def prior_proposal(model: Callable) -> PriorProposal:
    """``model``'s prior p(z) as a proposal (see :class:`PriorProposal`): weights p(x|z)."""
    return PriorProposal(model)


def _guide_proposal(pair: Any) -> Callable:
    return pair.guide


def _prior_proposal(pair: Any) -> Callable:
    return prior_proposal(pair.model)


@dataclass(frozen=True)
class LogPxEstimatorSpec:
    """One estimator of log p(x): ``proposal(pair)`` is the program z_k ~ r(z|x) is drawn
    from; log w_k = log p(x, z_k) - log r(z_k|x) and log p(x) ~= log (1/K) sum_k w_k."""

    proposal: Callable[[Any], Callable]
    description: str


#: The log p(x) estimators by name (``--estimator``); tests iterate over this table.
ESTIMATORS: dict[str, LogPxEstimatorSpec] = {
    "is": LogPxEstimatorSpec(
        _guide_proposal, "importance sampling with the guide: z_k ~ q(z|x) (the IWAE bound)"
    ),
    "prior": LogPxEstimatorSpec(
        _prior_proposal, "naive Monte Carlo with the prior: z_k ~ p(z), mean of p(x|z_k)"
    ),
}


def check_estimator(name: str) -> LogPxEstimatorSpec:
    """The :data:`ESTIMATORS` entry ``name``, or an :class:`EstimatorError` naming the flag."""
    if name not in ESTIMATORS:
        raise EstimatorError(
            f"--estimator {name!r} is unknown; choose from {', '.join(ESTIMATORS)}"
        )
    return ESTIMATORS[name]


def estimate_log_px(
    pair: Any,
    x: torch.Tensor,
    num_samples: int,
    *,
    max_plate_nesting: int = 1,
    max_elements: int | None = None,
    vectorize: bool | None = None,
    estimator: str = "is",
    y: torch.Tensor | None = None,
    trace_fn: Callable | None = None,
) -> dict[str, torch.Tensor]:
    """Importance-sampled log p(x) and the mean log weight for each point of the batch ``x``
    (log p(x | y) for a pair that needs the labels ``y``).

    log p(x) ~= log (1/K) sum_k p(x, z_k) / r(z_k|x),   z_k ~ r(z|x),

    with the proposal r of ``estimator`` (see :data:`ESTIMATORS`): ``"is"``, the guide
    q(z|x); ``"prior"``, the model's prior p(z), where the weights are p(x|z_k).

    ``pair`` is best an :func:`evaluation_view` (unscaled, globals fixed); a raw pair is
    evaluated at unscaled densities too. Its modules run in eval mode.

    Returns a dict of per-point tensors: ``log_px`` (log-mean-exp of the K log weights; for
    ``"is"`` the IWAE bound L_K), ``elbo`` (the mean of the K log weights: for ``"is"`` the
    ELBO; for ``"prior"`` E_p(z)[log p(x|z)], the ELBO of q = p(z), a loose bound) and ``ess``
    (effective sample size of the normalized weights, 1 / sum_k wbar_k^2).

    References:
        Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, eq. 8.
    """
    spec, bound = check_estimator(estimator), max_elements or default_max_elements(x.device)
    with evaluation_mode(pair):
        log_weights = log_importance_weights(
            pair.model,
            spec.proposal(pair),
            x,
            num_samples,
            max_plate_nesting=max_plate_nesting,
            chunk_size=chunk_size_for(x.shape[0], x[0].numel(), bound),
            vectorize=vectorize,
            data_plate=pair.info.data_plate if isinstance(pair, EvaluationPair) else None,
            y=y,
            trace_fn=trace_fn,
        )
    return summarize_log_weights(log_weights)


def summarize_log_weights(log_weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-point ``log_px`` (log-mean-exp), ``elbo`` (mean) and ``ess`` of ``(K, B)`` log
    weights; ESS = 1 / sum_k wbar_k^2 with wbar the normalized weights (Kong 1992)."""
    normalized = log_weights - torch.logsumexp(log_weights, dim=0, keepdim=True)
    return {
        "log_px": iwae_bound(log_weights, dim=0),
        "elbo": elbo_estimate(log_weights, dim=0),
        "ess": torch.exp(-torch.logsumexp(2 * normalized, dim=0)),
    }


def estimate_log_px_in_batches(
    pair: Any,
    x: torch.Tensor,
    num_samples: int,
    *,
    batch_size: int = 100,
    max_plate_nesting: int = 1,
    vectorize: bool | None = None,
    estimator: str = "is",
    progress: Callable[[Iterable], Iterable] | None = None,
    y: torch.Tensor | None = None,
    trace_fn: Callable | None = None,
    batch_seed: int | None = None,
    ranks: Any = None,
) -> dict[str, torch.Tensor]:
    """:func:`estimate_log_px` over the rows of ``x``, ``batch_size`` points at a time.

    Memory stays bounded for any number of points; per-point results come back on the CPU,
    concatenated in the order of ``x``. ``progress`` wraps the iterable of batch starts
    (e.g. a ``tqdm`` partial) to show a progress bar.

    ``batch_seed``: batch i draws from ``torch.manual_seed(batch_seed + i)``, so its numbers
    do not depend on which batches ran before it. ``ranks`` (a
    :class:`~pyro_vae.infer.distributed.World` of several processes): rank r computes the batches
    i with i % R == r, and every rank gets all the per-point results; with ``batch_seed``
    they are those of one process.
    """
    starts: Iterable[int] = range(0, x.shape[0], batch_size)
    if ranks is not None and ranks.distributed:
        starts = range(ranks.rank * batch_size, x.shape[0], batch_size * ranks.size)
    if progress is not None:
        starts = progress(starts)
    parts: dict[str, list[torch.Tensor]] = {"log_px": [], "elbo": [], "ess": []}
    local = getattr(pair, "local", None)  # per-point params: a batch reads its own rows
    for start in starts:
        if batch_seed is not None:
            torch.manual_seed(batch_seed + start // batch_size)
        batch = x[start : start + batch_size]
        rows = torch.arange(start, start + batch.shape[0], device=x.device)
        with nullcontext() if local is None else local.at(rows):
            out = estimate_log_px(
                pair,
                batch,
                num_samples,
                max_plate_nesting=max_plate_nesting,
                vectorize=vectorize,
                estimator=estimator,
                y=None if y is None else y[start : start + batch_size],
                trace_fn=trace_fn,
            )
        for key, values in parts.items():
            values.append(out[key].cpu())
    if ranks is not None and ranks.distributed:
        gathered = ranks.gather(parts, "gathering the per-point estimates")
        # batch i was computed by rank i % R as its (i // R)-th batch
        num_batches = -(-x.shape[0] // batch_size)
        parts = {key: [gathered[i % ranks.size][key][i // ranks.size]
                       for i in range(num_batches)] for key in parts}  # fmt: skip
    return {key: torch.cat(values) for key, values in parts.items()}


# ---------------------------------------------------------------------------------------------
# The pair as every estimator sees it


@dataclass
class EvaluationPair:
    """A pair's programs as the estimators run them: every site at its unscaled density and
    the global latents (outside the data plate) held fixed, so each weight is that of
    log p(x_i | globals) under the model the pair declares, whatever it scales for training.

    ``conditioned_on`` says which global sites were fixed and at what (None: the pair has
    none); ``scaled_sites`` names the sites whose scale was removed; ``base_pair`` is the pair
    itself (its modules are what :func:`~pyro_vae.pairs.evaluation_mode` switches).
    ``local``: for a guide that is not amortized, the handler that gives each batch the rows
    of its points of the per-point params (set by :func:`estimate_log_px_in_batches`).
    """

    base_pair: Any
    model: Callable
    guide: Callable
    info: PairInfo
    conditioned_on: dict[str, Any] | None
    vectorizable: bool
    fixed_values: dict[str, torch.Tensor] = field(default_factory=dict)
    local: LocalParams | None = None

    @property
    def scaled_sites(self) -> list[str]:
        return list(self.info.scaled_sites)

    def prior_model(self) -> Callable:
        """The model with its observations hidden (``poutine.uncondition``): draws x, and the
        local latents, from the prior, while the global latents stay held fixed."""
        return unscaled(fix_sites(poutine.uncondition(self.base_pair.model), self.fixed_values))


def global_values(
    pair: Any,
    x: torch.Tensor,
    info: PairInfo,
    y: torch.Tensor | None = None,
    local: LocalParams | None = None,
) -> dict[str, Any]:
    """The guide's mean of each global latent site (a draw where the distribution has no
    closed-form mean), from one guide trace on ``x`` in eval mode (``local``: its per-point
    params at the rows it holds); the global RNG is left as it was. Returns
    ``{"values": {site: tensor}, "at": {site: "guide mean" | "guide draw"}}``."""
    devices = [x.device] if x.device.type == "cuda" else []
    values, at = {}, {}
    guide = pair.guide if local is None else local(pair.guide)
    with torch.random.fork_rng(devices=devices), evaluation_mode(pair), torch.no_grad():
        trace = poutine.trace(guide).get_trace(*program_args(x, y))
    for name in info.global_sites:
        site = trace.nodes[name]
        try:
            values[name] = site["fn"].mean.expand(site["value"].shape).detach()
            at[name] = "guide mean"
        except NotImplementedError:
            values[name] = site["value"].detach()
            at[name] = "guide draw"
    return {"values": values, "at": at}


def evaluation_view(
    pair: Any,
    info: PairInfo,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    local: LocalParams | None = None,
) -> EvaluationPair:
    """The :class:`EvaluationPair` of ``pair``: unscaled, with its global latents (if any)
    fixed at the guide's mean found on the points ``x`` (with labels ``y``, for a pair that
    needs them). ``local``: the handler of a guide's per-point params (``x`` holds the
    first points, whose rows it reads here)."""
    if isinstance(pair, EvaluationPair):
        return pair
    if local is None:
        return _evaluation_view(pair, info, x, y, None)
    with local.at(torch.arange(x.shape[0], device=x.device)):
        return _evaluation_view(pair, info, x, y, local)


def _evaluation_view(pair: Any, info: PairInfo, x: torch.Tensor, y: torch.Tensor | None,
                     local: LocalParams | None) -> EvaluationPair:  # fmt: skip
    conditioned_on = None
    values: dict[str, torch.Tensor] = {}
    if info.global_sites:
        found = global_values(pair, x, info, y, local)
        values = found["values"]
        conditioned_on = {
            "sites": found["at"],
            "note": "log p(x_i | globals): the global latent sites are held at the guide's "
            "mean (a draw where it has none), not integrated out",
        }
    model = unscaled(fix_sites(pair.model, values))
    guide = unscaled(fix_sites(pair.guide, values))
    if local is not None:
        model, guide = local(model), local(guide)
    vectorizable = info.vectorizable
    if values:
        vectorizable = _runs_vectorized(model, guide, x[:2], info, None if y is None else y[:2])
    return EvaluationPair(pair, model, guide, info, conditioned_on, vectorizable, values, local)


def _runs_vectorized(
    model: Callable, guide: Callable, x: torch.Tensor, info: PairInfo, y: torch.Tensor | None
) -> bool:
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            log_weights = _trace_log_weights(model, guide, x, 2, info.max_plate_nesting, y=y)
    except Exception:
        return False
    return bool(log_weights.shape == (2, x.shape[0]) and torch.isfinite(log_weights).all())


def evaluation_notes(view: EvaluationPair) -> dict[str, Any]:
    """What every estimator's JSON says about the pair: ``scaled_sites`` (their scale was
    removed) and ``conditioned_on`` (global latents held fixed, or None)."""
    return {"scaled_sites": view.scaled_sites, "conditioned_on": view.conditioned_on}


#: Below this fraction of K, or below :data:`LOW_ESS_MIN` draws, the mean effective sample
#: size of the importance weights is reported as too low to trust the estimate.
LOW_ESS_FRACTION = 0.01
LOW_ESS_MIN = 10


def low_ess_warnings(ess_mean: float, num_samples: int, label: str = "") -> list[str]:
    """A warning when the mean ESS is below 1% of K or below 10 draws (judged for K >= 20
    only: with fewer draws the ESS cannot show much either way)."""
    threshold = max(LOW_ESS_FRACTION * num_samples, LOW_ESS_MIN)
    if num_samples < 2 * LOW_ESS_MIN or not ess_mean < threshold:
        return []
    where = f"{label}: " if label else ""
    return [
        f"{where}low effective sample size: mean ESS {ess_mean:.1f} of K={num_samples} draws "
        f"(below {threshold:g}); a few weights carry the estimate, so log p(x) may be far "
        "below its true value. Use more samples (--num-samples), or run `pyro-vae diagnose` "
        "to see at which points q(z|x) is a poor proposal (PSIS k-hat)"
    ]
