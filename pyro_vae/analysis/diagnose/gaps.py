"""The amortization and approximation gaps: q* fitted to each point alone.

A fully factorized Gaussian q*(z|x) per point, or the guide's own family per point where the
pair offers one (``per_point_guide(x)``), fitted with the decoder fixed: L[q*] - L[q] is what
amortization costs, log p(x) - L[q*] what the family costs.

References:
    Cremer, Li & Duvenaud (2018), Inference Suboptimality in Variational Autoencoders.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from tqdm.auto import tqdm

from pyro_vae.analysis.diagnose.draws import GuideDraws, LatentSite, _base_distribution
from pyro_vae.analysis.diagnose.errors import DiagnoseError
from pyro_vae.infer.compiled import CompiledByShape, CompiledLogWeights
from pyro_vae.infer.estimators import (
    chunk_size_for,
    default_max_elements,
    log_importance_weights,
    log_mean_exp,
)
from pyro_vae.pairs import PairInfo, pair_modules


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
            chunk_size=chunk_size_for(x.shape[0], x[0].numel(), default_max_elements(x.device)),
            vectorize=info.vectorizable,
            data_plate=info.data_plate,
            trace_fn=compiled,
        )
    return {
        "elbo": log_weights.mean(0),
        "log_px": log_mean_exp(log_weights, dim=0),
        "elbo_stderr": log_weights.std(0) / math.sqrt(num_samples),
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


def _guide_fns(pair: Any, x: torch.Tensor, latents: Sequence[LatentSite]) -> list[Any]:
    with torch.no_grad():
        trace = poutine.trace(pair.guide).get_trace(x)
    return [trace.nodes[latent.name]["fn"] for latent in latents]
