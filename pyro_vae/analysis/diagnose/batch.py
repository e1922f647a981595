"""Every part of a diagnosis in order, for a pair and a batch: :func:`diagnose_pair`.

Each part is seeded from the diagnosis's seed: the draws from q (``seed``), q* (``seed + 2``),
NUTS (``seed + 100 + chain``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import pyro
import torch

from pyro_vae.analysis.diagnose.draws import _concat, guide_draws, inference_data, latent_sites
from pyro_vae.analysis.diagnose.errors import DiagnoseError
from pyro_vae.analysis.diagnose.gaps import _gap_diagnostics
from pyro_vae.analysis.diagnose.khat import MIN_KHAT_SAMPLES, _weight_diagnostics, _weight_summary
from pyro_vae.analysis.diagnose.nuts import MIN_NUTS_SAMPLES, _nuts_comparison, check_continuous
from pyro_vae.analysis.diagnose.usage import _latent_usage
from pyro_vae.infer.compiled import CompiledByShape
from pyro_vae.infer.distributed import world
from pyro_vae.infer.estimators import evaluation_notes, evaluation_view
from pyro_vae.pairs import PairInfo, check_pair, evaluation_mode


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
