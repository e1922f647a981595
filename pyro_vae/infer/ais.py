"""Annealed importance sampling (AIS) of log p(x) per data point, and its reverse for BDMC.

From a proposal r(z|x) (the guide q(z|x), or the prior p(z)) to the posterior p(z|x), AIS
walks the geometric path

    pi_t(z) ∝ r(z|x)^(1 - beta_t) p(x, z)^beta_t,    0 = beta_0 < beta_1 < ... < beta_T = 1,

with z_0 ~ r and one HMC transition leaving pi_t invariant after each increment of the log
weight

    log w = sum_{t=1..T} (beta_t - beta_{t-1}) [log p(x, z_{t-1}) - log r(z_{t-1}|x)],

so E[w] = p(x) and log-mean-exp over C independent chains is a stochastic lower bound of
log p(x) that reaches it as T grows (Neal 2001). Run backwards (beta from 1 to 0) from an
exact posterior draw, which data simulated from the model provides, the same sum estimates
1/p(x): its negation is a stochastic upper bound. The two bracket log p(x): bidirectional
Monte Carlo (BDMC, Grosse et al. 2015), the check Wu et al. (2017) ran on decoder-based
models.

The schedule of betas is sigmoidal (Grosse et al. 2015, as Wu et al. 2017 use it):
beta_t ∝ sigmoid(delta (2t/T - 1)), delta = 4, rescaled to run from 0 to 1. HMC runs in
unconstrained space (``torch.distributions.biject_to`` of each site's support, with its
log |det J|). The step sizes, one per transition and point, come from a pilot run with a
quarter of the chains, each adapting its own step size toward an acceptance rate of 0.65
(:func:`tune_step_sizes`); the chains that estimate log p(x) use that schedule fixed before
they start, so each transition leaves pi_t invariant and the weights are those of a valid AIS
run (a chain that adapts from its own past is biased: by about +0.08 nats on the
linear-Gaussian pair at 500 steps). The pilot's evaluations count in the compute.

The joint log density and its gradient in z, for all chains and points of a batch at once,
are one graph traced from the pair's programs by ``make_fx``
(:class:`~pyro_vae.infer.compiled.CompiledByShape`), run as traced or compiled by
``torch.compile``; a pair that cannot be traced runs eagerly, with a note.

References:
    Neal (2001), Annealed Importance Sampling.
    Grosse, Ghahramani & Adams (2015), Sandwiching the marginal likelihood using
        bidirectional Monte Carlo.
    Wu, Burda, Salakhutdinov & Grosse (2017), On the Quantitative Analysis of Decoder-Based
        Generative Models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from torch import Tensor
from torch.distributions import biject_to

from pyro_vae.infer.compiled import CompiledByShape, compile_graph
from pyro_vae.infer.estimators import (
    PARTICLE_PLATE,
    _site_log_prob,
    log_mean_exp,
    particle_traces,
    prior_proposal,
)
from pyro_vae.infer.handlers import is_fixed
from pyro_vae.infer.hmc import Point, SiteLayout, adapt_step_size, hmc_transition
from pyro_vae.pairs import PairError, data_plate_dim, is_sample_site
from pyro_vae.pairs.labels import program_args

#: Defaults of ``--ais-steps``, ``--ais-chains``, ``--leapfrog-steps`` and ``--step-size``.
AIS_STEPS = 500
AIS_CHAINS = 16
LEAPFROG_STEPS = 10
STEP_SIZE = 0.1
#: ``proposal`` values: where the chains start.
PROPOSALS = ("guide", "prior")
#: How the densities run: Pyro's Python each time, a ``make_fx`` graph, or that graph compiled.
GRAPH_MODES = ("eager", "traced", "compiled")
#: The pilot run that tunes the step sizes has 1/PILOT_FRACTION of the chains.
PILOT_FRACTION = 4
#: Steepness of the sigmoidal schedule (Grosse et al. 2015).
SIGMOID_DELTA = 4.0


def sigmoid_schedule(steps: int, delta: float = SIGMOID_DELTA) -> list[float]:
    """``steps + 1`` betas from 0 to 1: beta_t = (s_t - s_0) / (s_T - s_0), s_t =
    sigmoid(delta (2t/T - 1)), t = 0..T (Grosse et al. 2015). One step is [0, 1]: plain
    importance sampling with r."""
    if steps < 1:
        raise ValueError(f"AIS needs at least one step, got {steps}")
    s = torch.sigmoid(delta * (2 * torch.arange(steps + 1, dtype=torch.float64) / steps - 1))
    betas = ((s - s[0]) / (s[-1] - s[0])).tolist()
    betas[0], betas[-1] = 0.0, 1.0
    return betas


def density_evaluations(steps: int, leapfrog_steps: int, chains: int, adapt: bool = True) -> int:
    """Joint density-and-gradient evaluations AIS spends per point: one at the start, then
    ``leapfrog_steps`` per transition, ``steps - 1`` transitions (none after the last beta),
    for each of ``chains`` chains, and as many for each chain of the pilot run that tunes
    the step sizes (``adapt``, :func:`tune_step_sizes`). Importance sampling with that many
    draws has the same number of decoder passes (without their gradients)."""
    runs = chains + (pilot_chains(chains) if adapt and steps > 1 else 0)
    return runs * (1 + (steps - 1) * leapfrog_steps)


class AnnealingTarget:
    """The annealing path of one batch ``x`` for ``chains`` chains per point: draws from the
    proposal, and the :class:`~pyro_vae.infer.hmc.Point` (log p(x, z), log r(z|x), log|J|
    and gradients, per chain and point) at any unconstrained position.

    ``model`` and ``guide`` are best an :class:`~pyro_vae.infer.estimators.EvaluationPair`'s
    programs (unscaled, global latents fixed); ``from_prior``: r is the model's prior.
    ``runner``: a :class:`CompiledByShape` that runs the densities as a graph, or None for
    eager Pyro. Every latent site must be continuous (a :class:`PairError` names one that is
    not)."""

    def __init__(self, model: Callable, guide: Callable, x: Tensor, chains: int, *,
                 max_plate_nesting: int = 1, data_plate: str | None = None,
                 y: Tensor | None = None, from_prior: bool = False,
                 runner: CompiledByShape | None = None) -> None:  # fmt: skip
        self.model, self.guide, self.x, self.y = model, guide, x, y
        self.chains, self.from_prior, self.runner = chains, from_prior, runner
        self.rank, self.data_plate = max_plate_nesting + 1, data_plate
        self.proposal = prior_proposal(model) if from_prior else guide
        plate = pyro.plate(PARTICLE_PLATE, chains, dim=-max_plate_nesting - 1)
        self._plated_model, self._plated_guide = plate(model), plate(guide)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            _, model_trace = particle_traces(model, self.proposal, x, chains, max_plate_nesting, y)
        self.names: tuple[str, ...] = tuple(
            name for name, site in model_trace.nodes.items()
            if is_sample_site(site) and not site["is_observed"] and not is_fixed(site)
        )  # fmt: skip
        self.transforms, self.layouts, self.shapes = {}, {}, {}
        for name in self.names:
            self._learn_site(name, model_trace.nodes[name])

    def _learn_site(self, name: str, site: dict) -> None:
        fn = site["fn"]
        if fn.support.is_discrete:
            raise PairError(
                f"AIS needs continuous latents: site {name!r} ({type(fn).__name__}) is "
                "discrete, and HMC moves only continuous values. Estimate log p(x) of this "
                "pair by importance sampling (--estimator is), which samples the site"
            )
        value = site["value"]
        batch_shape = tuple(value.shape[: value.dim() - fn.event_dim])
        if len(batch_shape) != self.rank:
            raise PairError(
                f"AIS: site {name!r} has batch shape {batch_shape} under {self.chains} "
                f"chains, more dims than the pair's max_plate_nesting ({self.rank - 1}) plus "
                "the chains' plate; declare its event dims with .to_event"
            )
        found = data_plate_dim(site, self.x.shape[0], self.data_plate)
        if found is None:
            raise PairError(
                f"AIS: latent site {name!r} is not in the plate over the {self.x.shape[0]} data "
                "points; per-point log p(x) needs every local latent inside "
                "`with pyro.plate('data', x.shape[0]):` and global latents held fixed"
            )
        transform = biject_to(fn.support)
        unconstrained = transform.inv(value)
        data_axis = self.rank + found[1]
        view = [1] * unconstrained.dim()
        view[0], view[data_axis] = self.chains, self.x.shape[0]
        self.transforms[name] = transform
        self.layouts[name] = SiteLayout(tuple(view), data_axis)
        self.shapes[name] = tuple(value.shape)

    def draw(self) -> dict[str, Tensor]:
        """Unconstrained positions of fresh draws z ~ r(z|x), ``chains`` per point."""
        with torch.no_grad():
            _, model_trace = particle_traces(self.model, self.proposal, self.x, self.chains,
                                             self.rank - 1, self.y)  # fmt: skip
            return {n: self.transforms[n].inv(model_trace.nodes[n]["value"]) for n in self.names}

    def positions_of(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """The unconstrained positions of given latent values, one per point (no chain dim),
        copied to every chain: the start of reverse AIS from exact posterior draws."""
        positions = {}
        for name in self.names:
            value, shape = values[name], self.shapes[name]
            value = value.reshape((1,) * (len(shape) - value.dim()) + tuple(value.shape))
            positions[name] = self.transforms[name].inv(value.expand(shape)).clone()
        return positions

    def evaluate(self, u: dict[str, Tensor]) -> Point:
        """The annealing target's parts and gradients at ``u`` (see :class:`Point`)."""
        inputs = (*program_args(self.x, self.y), *(u[n] for n in self.names))
        if self.runner is None:
            outputs = self._densities(*inputs)
        else:
            # keyed by what shapes the graph besides the inputs' shapes, not by this target:
            # the targets of every batch (and the pilot's) of one pair share its graphs
            key = ("ais", self.from_prior, self.names, self.data_plate, self.rank)
            outputs = self.runner(self._densities, inputs, key=key,
                                  describe="the AIS densities and gradients")  # fmt: skip
        n = len(self.names)
        log_p, log_r, log_det = outputs[:3]
        grad_p = dict(zip(self.names, outputs[3 : 3 + n], strict=True))
        grad_r = dict(zip(self.names, outputs[3 + n :], strict=True))
        return Point(dict(u), log_p, log_r, log_det, grad_p, grad_r)

    def _densities(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        """log p(x, z), log r(z|x), log|J| (C, B) and the gradients in u of log p + log|J|
        and log r + log|J|: a function of tensors only, so ``make_fx`` can trace it."""
        num_args = len(inputs) - len(self.names)
        args = inputs[:num_args]
        batch_size = args[0].shape[0]
        with torch.enable_grad():
            us = [u.detach().requires_grad_() for u in inputs[num_args:]]
            values, log_det = {}, torch.zeros(())
            for name, u in zip(self.names, us, strict=True):
                value = self.transforms[name](u)
                jacobian = self.transforms[name].log_abs_det_jacobian(u, value)
                log_det = log_det + self.layouts[name].per_point(jacobian)
                values[name] = value
            model_trace = poutine.trace(poutine.condition(self._plated_model, data=values))
            model_trace = model_trace.get_trace(*args)
            log_p = self._sum_log_probs(model_trace, batch_size)
            if self.from_prior:
                log_r = self._sum_log_probs(model_trace, batch_size, self.names)
            else:
                guide = poutine.condition(self._plated_guide, data=values)
                log_r = self._sum_log_probs(poutine.trace(guide).get_trace(*args), batch_size,
                                            self.names)  # fmt: skip
            log_det = log_det.expand(log_p.shape)
            grad_p = torch.autograd.grad((log_p + log_det).sum(), us, retain_graph=True,
                                         allow_unused=True)  # fmt: skip
            grad_r = torch.autograd.grad((log_r + log_det).sum(), us, allow_unused=True)
        grads = [torch.zeros_like(u) if g is None else g
                 for u, g in zip(us + us, grad_p + grad_r, strict=True)]  # fmt: skip
        return (log_p.detach(), log_r.detach(), log_det.detach(), *grads)

    def _sum_log_probs(self, trace: Any, batch_size: int,
                       names: tuple[str, ...] | None = None) -> Tensor:  # fmt: skip
        total = 0.0
        for name, site in trace.nodes.items():
            if not is_sample_site(site) or is_fixed(site) or (names and name not in names):
                continue
            total = total + _site_log_prob(site, batch_size, self.rank, 0, self.data_plate)
        return torch.as_tensor(total).expand(self.chains, batch_size)


def anneal(target: AnnealingTarget, start: dict[str, Tensor], betas: list[float], *,
           leapfrog_steps: int = LEAPFROG_STEPS, step_size: float | Tensor = STEP_SIZE,
           adapt: bool = False, on_step: Callable[[], Any] | None = None,
           ) -> dict[str, Tensor]:  # fmt: skip
    """One AIS run along ``betas`` (increasing: forward; decreasing: reverse) from the
    unconstrained positions ``start``: per chain and point, the log weight
    sum_t (beta_t - beta_{t-1}) [log p(x, z) - log r(z|x)], with an HMC transition of
    ``leapfrog_steps`` leapfrog steps at each beta but the last. ``step_size``: one number,
    or a (T - 1, B) schedule, one per transition and point (:func:`tune_step_sizes`).
    ``adapt``: each chain adapts its own step size from its past acceptance (a pilot run
    only: the weights of such a run are biased, see :func:`tune_step_sizes`). ``on_step`` is
    called once per beta (a progress bar).

    Returns ``log_weights`` (C, B), ``acceptance`` (mean acceptance probability per point)
    and ``step_sizes`` (T - 1, C, B), the step size each transition used."""
    point = target.evaluate(start)
    log_weights = torch.zeros_like(point.log_p)
    transitions = len(betas) - 2
    schedule = torch.as_tensor(step_size, dtype=point.log_p.dtype, device=point.log_p.device)
    schedule = schedule.expand(max(transitions, 0), *point.log_p.shape[1:])
    sizes = schedule[0].expand_as(point.log_p) if transitions > 0 else None
    used, accepted = [], torch.zeros_like(point.log_p)
    for t in range(1, len(betas)):
        log_weights = log_weights + (betas[t] - betas[t - 1]) * (point.log_p - point.log_r)
        if t <= transitions:
            if not adapt:
                sizes = schedule[t - 1].expand_as(point.log_p)
            used.append(sizes)
            point, accept_prob = hmc_transition(point, betas[t], sizes, leapfrog_steps,
                                                target.evaluate, target.layouts)  # fmt: skip
            accepted = accepted + accept_prob
            if adapt:
                sizes = adapt_step_size(sizes, accept_prob)
        if on_step is not None:
            on_step()
    return {
        "log_weights": log_weights,
        "acceptance": (accepted / max(transitions, 1)).mean(0),
        "step_sizes": torch.stack(used) if used else log_weights.new_zeros((0, *log_weights.shape)),
    }


def tune_step_sizes(target: AnnealingTarget, start: dict[str, Tensor], betas: list[float], *,
                    leapfrog_steps: int = LEAPFROG_STEPS, step_size: float = STEP_SIZE,
                    on_step: Callable[[], Any] | None = None) -> Tensor:  # fmt: skip
    """A schedule of step sizes, (T - 1, B), from a pilot AIS run on ``target`` (its own
    chains, whose weights are discarded): each pilot chain adapts its step size toward an
    acceptance rate of 0.65 from its past acceptance probabilities, and transition t of the
    schedule gets the geometric mean over the pilot chains of their step sizes there.

    Why a pilot: a step size adapted from a chain's own past makes its later transitions
    depend on its earlier states, and the weights of the adapted chains are then biased
    (on the linear-Gaussian pair, by about +0.08 nats at 500 steps: above log p(x)). The
    chains that estimate log p(x) use the pilot's schedule, fixed before they start, and stay
    a valid AIS run."""
    pilot = anneal(target, start, betas, leapfrog_steps=leapfrog_steps, step_size=step_size,
                   adapt=True, on_step=on_step)  # fmt: skip
    return pilot["step_sizes"].log().mean(1).exp()


def pilot_chains(chains: int) -> int:
    """Chains of the pilot run that tunes the step sizes: a quarter of ``chains``, at least 1."""
    return max(1, chains // PILOT_FRACTION)


def summarize_ais(log_weights: Tensor) -> dict[str, Tensor]:
    """Per point, from (C, B) AIS log weights: ``log_px`` (log-mean-exp over chains),
    ``log_px_stderr`` (delta method: sd(w) / (sqrt(C) mean(w)); NaN for one chain),
    ``elbo`` (the mean log weight, a looser lower bound) and ``ess`` of the chains' weights."""
    chains = log_weights.shape[0]
    normalized = log_weights - torch.logsumexp(log_weights, dim=0, keepdim=True)
    relative = (normalized + math.log(chains)).exp()  # w / mean(w)
    stderr = relative.std(dim=0, unbiased=True) / math.sqrt(chains) if chains > 1 else (
        torch.full_like(relative[0], math.nan))  # fmt: skip
    return {
        "log_px": log_mean_exp(log_weights, dim=0),
        "log_px_stderr": stderr,
        "elbo": log_weights.mean(0),
        "ess": torch.exp(-torch.logsumexp(2 * normalized, dim=0)),
    }


def steps_per_run(steps: int, adapt: bool = True) -> int:
    """How many times one AIS run calls ``on_step``: once per beta, and again in the pilot."""
    return steps * (2 if adapt and steps > 1 else 1)


def make_runner(graph: str, on_note: Callable[[str], None] | None = None) -> CompiledByShape | None:
    """What runs the densities for ``graph`` (:data:`GRAPH_MODES`): None for eager Pyro, a
    :class:`CompiledByShape` running the ``make_fx`` graph as it is, or compiled. One runner
    serves one pair (its graphs hold the pair's parameters): make a new one for another."""
    if graph not in GRAPH_MODES:
        raise ValueError(f"graph must be one of {', '.join(GRAPH_MODES)}, got {graph!r}")
    if graph == "eager":
        return None
    return CompiledByShape(on_note=on_note, compiler=compile_graph if graph == "compiled" else None)


def ais_log_px(pair: Any, x: Tensor, *, steps: int = AIS_STEPS, chains: int = AIS_CHAINS,
               leapfrog_steps: int = LEAPFROG_STEPS, step_size: float = STEP_SIZE,
               proposal: str = "guide", max_plate_nesting: int = 1, data_plate: str | None = None,
               y: Tensor | None = None, runner: CompiledByShape | None = None,
               adapt: bool = True, on_step: Callable[[], Any] | None = None,
               ) -> dict[str, Tensor]:  # fmt: skip
    """AIS estimates of log p(x) for each point of the batch ``x`` (see the module
    docstring): the :func:`summarize_ais` keys, with ``log_weights`` (C, B) and
    ``acceptance`` and ``step_size`` (the geometric mean of the schedule) per point.
    ``adapt``: the step sizes come from a pilot run (:func:`tune_step_sizes`) started at
    ``step_size``; else every transition uses ``step_size``. ``pair`` is best an
    :func:`~pyro_vae.infer.estimators.evaluation_view`, its modules in eval mode."""
    run = _annealed(
        pair,
        x,
        None,
        steps=steps,
        chains=chains,
        leapfrog_steps=leapfrog_steps,
        step_size=step_size,
        proposal=proposal,
        max_plate_nesting=max_plate_nesting,
        data_plate=data_plate,
        y=y,
        runner=runner,
        adapt=adapt,
        on_step=on_step,
    )
    return {**summarize_ais(run["log_weights"]), **run}


def bdmc_log_px(pair: Any, x: Tensor, z: dict[str, Tensor], *, steps: int = AIS_STEPS,
                chains: int = AIS_CHAINS, leapfrog_steps: int = LEAPFROG_STEPS,
                step_size: float = STEP_SIZE, proposal: str = "guide",
                max_plate_nesting: int = 1, data_plate: str | None = None,
                y: Tensor | None = None, runner: CompiledByShape | None = None,
                adapt: bool = True, on_step: Callable[[], Any] | None = None,
                ) -> dict[str, Tensor]:  # fmt: skip
    """Both BDMC bounds of log p(x) per point of ``x``, simulated from the model with the
    latents ``z`` (an exact posterior draw per point, :func:`simulate`): ``lower`` (forward
    AIS, log-mean-exp of the chains' weights), ``upper`` (reverse AIS from ``z``:
    -log-mean-exp of its log weights, which estimate log 1/p(x)), ``gap`` = upper - lower,
    and the delta-method standard errors ``lower_stderr`` and ``upper_stderr``."""
    options = dict(
        steps=steps,
        chains=chains,
        leapfrog_steps=leapfrog_steps,
        step_size=step_size,
        proposal=proposal,
        max_plate_nesting=max_plate_nesting,
        data_plate=data_plate,
        y=y,
        runner=runner,
        adapt=adapt,
        on_step=on_step,
    )
    forward = _annealed(pair, x, None, **options)
    reverse = _annealed(pair, x, z, **options)
    lower, upper = summarize_ais(forward["log_weights"]), summarize_ais(reverse["log_weights"])
    return {
        "lower": lower["log_px"],
        "upper": -upper["log_px"],
        "gap": -upper["log_px"] - lower["log_px"],
        "lower_stderr": lower["log_px_stderr"],
        "upper_stderr": upper["log_px_stderr"],
        "acceptance": 0.5 * (forward["acceptance"] + reverse["acceptance"]),
    }


def _annealed(pair: Any, x: Tensor, z: dict[str, Tensor] | None, *, steps: int, chains: int,
              leapfrog_steps: int, step_size: float, proposal: str, max_plate_nesting: int,
              data_plate: str | None, y: Tensor | None, runner: CompiledByShape | None,
              adapt: bool, on_step: Callable[[], Any] | None) -> dict[str, Tensor]:  # fmt: skip
    """Forward AIS from r (``z`` None), or reverse AIS from the latents ``z``, with the step
    sizes of a pilot run of its own when ``adapt``."""
    betas = sigmoid_schedule(steps)
    if z is not None:
        betas = betas[::-1]
    options = dict(max_plate_nesting=max_plate_nesting, data_plate=data_plate, y=y,
                   from_prior=_from_prior(proposal), runner=runner)  # fmt: skip

    def start(target: AnnealingTarget) -> dict[str, Tensor]:
        return target.draw() if z is None else target.positions_of(z)

    with torch.no_grad():  # the graph's outputs would carry the parameters' grad otherwise
        return _annealed_run(pair, x, start, betas, options, chains=chains,
                             leapfrog_steps=leapfrog_steps, step_size=step_size, adapt=adapt,
                             on_step=on_step)  # fmt: skip


def _annealed_run(pair: Any, x: Tensor, start: Callable, betas: list[float],
                  options: dict[str, Any], *, chains: int, leapfrog_steps: int,
                  step_size: float, adapt: bool, on_step: Callable[[], Any] | None,
                  ) -> dict[str, Tensor]:  # fmt: skip
    sizes: float | Tensor = step_size
    if adapt and len(betas) > 2:
        pilot = AnnealingTarget(pair.model, pair.guide, x, pilot_chains(chains), **options)
        sizes = tune_step_sizes(pilot, start(pilot), betas, leapfrog_steps=leapfrog_steps,
                                step_size=step_size, on_step=on_step)  # fmt: skip
    target = AnnealingTarget(pair.model, pair.guide, x, chains, **options)
    run = anneal(target, start(target), betas, leapfrog_steps=leapfrog_steps, step_size=sizes,
                 on_step=on_step)  # fmt: skip
    step_sizes = run.pop("step_sizes")
    run["step_size"] = step_sizes.log().mean((0, 1)).exp() if len(step_sizes) else (
        torch.full_like(run["acceptance"], step_size))  # fmt: skip
    return run


def simulate(prior_model: Callable, x: Tensor, observed_site: str,
             y: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """Data drawn from the model: ``prior_model`` (the model with its observations hidden,
    :meth:`~pyro_vae.infer.estimators.EvaluationPair.prior_model`) run on a batch shaped as
    ``x``; returns the draw of ``observed_site`` as the new x and the latents (not fixed)
    drawn with it, each an exact draw from p(z | new x)."""
    with torch.no_grad():
        trace = poutine.trace(prior_model).get_trace(*program_args(x, y))
    site = trace.nodes.get(observed_site)
    if site is None or tuple(site["value"].shape) != tuple(x.shape):
        shape = None if site is None else tuple(site["value"].shape)
        raise PairError(
            f"BDMC simulates x from the model's site {observed_site!r}, which drew shape "
            f"{shape}, not the data's {tuple(x.shape)}: BDMC needs a model whose one observed "
            "site holds the whole of x"
        )
    latents = {name: s["value"] for name, s in trace.nodes.items()
               if is_sample_site(s) and not s["is_observed"] and not is_fixed(s)}  # fmt: skip
    return site["value"].to(x.dtype), latents


def _from_prior(proposal: str) -> bool:
    if proposal not in PROPOSALS:
        raise ValueError(f"proposal must be one of {', '.join(PROPOSALS)}, got {proposal!r}")
    return proposal == "prior"


__all__ = [
    "AIS_CHAINS",
    "AIS_STEPS",
    "AnnealingTarget",
    "GRAPH_MODES",
    "LEAPFROG_STEPS",
    "PROPOSALS",
    "STEP_SIZE",
    "anneal",
    "ais_log_px",
    "bdmc_log_px",
    "density_evaluations",
    "make_runner",
    "pilot_chains",
    "sigmoid_schedule",
    "steps_per_run",
    "simulate",
    "summarize_ais",
    "tune_step_sizes",
]
