"""Surrogate losses for the gradient estimators Pyro does not ship: STL, DReG and VIMCO.

Each is a differentiable tensor formed from the traces of one call of the programs with K
particles (vectorized in a particle plate, or in a loop), whose *value* is minus the bound it
trains and whose *gradient* is the estimator's:

- ``stl`` (sticking the landing; Roeder, Wu & Duvenaud 2017): the ELBO
  (1/K) sum_k log w_k with log w_k = log p(x, z_k) - log q_sg(z_k | x), where q_sg is the
  guide with its parameters stopped. z_k keeps its reparameterized path, so the gradient
  drops only the score term grad_phi log q(z) at fixed z, whose expectation is zero. When q
  equals the posterior, every draw of the guide's gradient is exactly zero.
- ``iwae-dreg`` (doubly reparameterized gradients; Tucker, Lawson, Gu & Maddison 2019): the
  IWAE bound log (1/K) sum_k w_k. The model's parameters get the IWAE gradient
  sum_k w~_k grad_theta log w_k (w~ the normalized weights); the guide's get
  sum_k w~_k^2 d log w_k / d z_k * d z_k / d phi, with log w_k at q_sg as in ``stl``.
  Same expectation as the IWAE gradient, and its signal-to-noise ratio grows with K where
  IWAE's falls (Rainforth et al. 2018).
- ``vimco`` (Mnih & Rezende 2016): the same IWAE bound for guides with sites that are not
  reparameterized; each such site's log q(z_k) is weighted by the learning signal
  L - L_{-k}, where L_{-k} replaces log w_k by the mean of the other K - 1 (the geometric
  mean of their weights): a baseline per particle that uses none of its own sample.

The stopped guide q_sg is the guide run a second time, replayed at the drawn values, with
every parameter detached: the ``nn.Module`` parameters of ``modules`` (the pair's networks,
found from a bound method's owner when not given) and every ``pyro.param`` value. For DReG,
the replayed values are copies of z_k whose gradient a hook multiplies by w~_k, so the model's
parameters see w~_k and the guide's w~_k^2 from one backward pass.

The surrogates have no ``.item()`` calls or value-dependent branches: ``--compile`` traces
them like the other objectives (``pyro_vae.infer.compiled.tracing.traced_loss``).

References:
    Roeder, Wu & Duvenaud (2017), Sticking the Landing: Simple, Lower-Variance Gradient
    Estimators for Variational Inference.
    Tucker, Lawson, Gu & Maddison (2019), Doubly Reparameterized Gradient Estimators for Monte
    Carlo Objectives.
    Mnih & Rezende (2016), Variational Inference for Monte Carlo Objectives.
    Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.util import get_dependent_plate_dims
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch import Tensor, nn
from torch.nn.utils.stateless import _reparametrize_module

from pyro_vae.pairs import PairError

#: The objectives whose surrogate is formed here.
SURROGATE_OBJECTIVES = ("stl", "iwae-dreg", "vimco")

#: Objectives that stop the guide's parameters (and so need every guide site reparameterized).
STOPPED = ("stl", "iwae-dreg")

PARTICLE_PLATE = "num_particles_vectorized"


@dataclass
class Surrogate:
    """What one call gives: ``loss`` (differentiate it; its value is ``-bound``), ``bound``
    (the ELBO for ``stl``, the IWAE bound otherwise, summed over points) and ``log_weights``
    (shape ``(K, ...)``, one per particle and point of the independent plates, detached)."""

    loss: Tensor
    bound: Tensor
    log_weights: Tensor


class _DetachParams(Messenger):
    """Every ``pyro.param`` value detached (PyroModule parameters included)."""

    def _pyro_post_param(self, msg: dict) -> None:
        msg["value"] = msg["value"].detach()


@contextmanager
def stopped_parameters(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Inside: each module computes with detached copies of its own parameters, so nothing
    computed reaches them; outside, the parameters are the modules' again."""
    with ExitStack() as stack:
        for module in modules:
            detached = {name: p.detach() for name, p in module.named_parameters()}
            if detached:
                stack.enter_context(_reparametrize_module(module, detached))
        yield


def guide_modules(guide: Callable, modules: Sequence[nn.Module] = ()) -> list[nn.Module]:
    """``modules``, and the module a guide is a method of (``pair.guide``) or is (an
    ``AutoGuide``, a ``PyroModule``): the networks whose parameters :func:`stopped_parameters`
    detaches."""
    found = list(modules)
    for candidate in (guide, getattr(guide, "__self__", None)):
        if isinstance(candidate, nn.Module) and all(candidate is not m for m in found):
            found.append(candidate)
    return found


def stopped_guide(guide: Callable, modules: Sequence[nn.Module]) -> Callable:
    """The guide with every parameter stopped: its modules' and its ``pyro.param`` values,
    hidden from outer handlers (SVI's parameter capture sees the first, live run only).
    Call it inside :func:`stopped_parameters` (as :func:`stopped_trace` does), which must
    also hold while its log densities are computed: a flow runs its networks then."""

    def run(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            # pyro.module sees the detached (requires_grad=False) copies and says so
            warnings.filterwarnings("ignore", message=".*not registered in the param store")
            return poutine.block(_DetachParams()(guide), hide_types=["param"])(*args, **kwargs)

    return run


def stopped_trace(guide: Callable, replayed: Any, args: Sequence[Any],
                  modules: Sequence[nn.Module], objective: str) -> Any:  # fmt: skip
    """The trace of the stopped guide replayed at the values of ``replayed``, subsample sites
    pruned, with every site's log q computed, all with the parameters stopped. A site whose
    log q at a given z cannot be computed (a flow without an inverse) is refused by name."""
    with stopped_parameters(modules):
        trace = poutine.trace(poutine.replay(stopped_guide(guide, modules), trace=replayed))
        trace = prune_subsample_sites(trace.get_trace(*args))
        for name, site in latent_sites(trace):
            try:
                site["fn"].log_prob(site["value"])
            except (KeyError, NotImplementedError) as error:
                fn = site["fn"]
                parts = [type(t).__name__ for t in getattr(fn, "transforms", [])]
                raise PairError(
                    f"--objective {objective}: guide site {name!r} ({type(fn).__name__}"
                    f"{' through ' + ', '.join(parts) if parts else ''}) cannot give log q at a "
                    f"given z ({type(error).__name__}: {error}); {objective} evaluates log q "
                    "at the drawn z with the guide's parameters stopped, which needs the "
                    "flow's inverse. Use a flow with an inverse (iaf), or --objective elbo / "
                    "iwae"
                ) from error
        trace.compute_log_prob()
    return trace


def latent_sites(trace: Any) -> list[tuple[str, dict]]:
    """The guide's sampled sites (no observed or subsample sites), in order."""
    return [
        (name, site)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


def check_sites(objective: str, guide_trace: Any, require_score: bool = False) -> list[str]:
    """The guide's sites that are not reparameterized, after refusing a guide ``objective``
    cannot train: a site without ``rsample`` (or enumerated) for ``stl`` and ``iwae-dreg``;
    with ``require_score``, a guide with none for ``vimco`` (training checks its probe batch
    so; a single batch without one, a labelled batch of a semi-supervised pair, is the IWAE
    bound with its reparameterized gradient). The message names the site and what to use
    instead."""
    scored = []
    for name, site in latent_sites(guide_trace):
        if site["infer"].get("enumerate"):
            raise PairError(
                f"--objective {objective}: guide site {name!r} is enumerated; train it with "
                "--objective enum"
            )
        if not getattr(site["fn"], "has_rsample", False):
            scored.append(name)
    if objective in STOPPED and scored:
        raise PairError(
            f"--objective {objective}: guide site {scored[0]!r} "
            f"({type(guide_trace.nodes[scored[0]]['fn']).__name__}) is not reparameterized, "
            f"and {objective} differentiates through the guide's draws; train it with "
            "--objective vimco (multi-sample score function) or tracegraph (baselines)"
            + ("" if len(scored) == 1 else f" (also: {', '.join(scored[1:])})")
        )
    if objective == "vimco" and require_score and not scored:
        raise PairError(
            "--objective vimco: every latent site of the guide is reparameterized, so there "
            "is no score-function term for VIMCO's baselines; train it with --objective "
            "iwae-dreg (or iwae), or add --score-function to train it by the score function"
        )
    return scored


def _sum_keep(tensor: Tensor, dims: Sequence[int]) -> Tensor:
    dims = [d for d in dims if -tensor.dim() <= d]
    return tensor.sum(dims, keepdim=True) if dims else tensor


def _site_total(trace: Any, names: Sequence[str], sum_dims: Sequence[int]) -> Tensor | float:
    total: Tensor | float = 0.0
    for name in names:
        total = total + _sum_keep(trace.nodes[name]["log_prob"], sum_dims)
    return total


def _replayable(guide_trace: Any, values: dict[str, Tensor]) -> Any:
    trace = guide_trace.copy()
    for name, value in values.items():
        trace.nodes[name] = {**trace.nodes[name], "value": value}
    return trace


def _gradient_scaled(value: Tensor, holder: dict, index: int | None) -> Tensor:
    """A copy of ``value`` whose incoming gradient is multiplied by the weights that
    ``holder`` will hold by the time of the backward pass (DReG's extra w~)."""
    copy = value.view_as(value)
    if copy.requires_grad:

        def scale(grad: Tensor) -> Tensor:
            weight = holder["weights"] if index is None else holder["weights"][index]
            return grad * weight.reshape(weight.shape + (1,) * holder["event_dims"][id(copy)])

        copy.register_hook(scale)
    return copy


def _one_particle(objective: str, model: Callable, guide: Callable, args: Sequence[Any],
                  modules: Sequence[nn.Module], holder: dict,
                  index: int | None) -> tuple[Tensor, Tensor | float]:  # fmt: skip
    """log w (and, for vimco, the summed log q of the score sites) of one call, with its
    plate dims kept (summed dims of plates not common to all sites kept as size 1)."""
    guide_trace = poutine.trace(guide).get_trace(*args)
    scored = check_sites(objective, guide_trace)
    latents = [name for name, _ in latent_sites(guide_trace)]
    if objective in STOPPED:
        values = {}
        for name in latents:
            site = guide_trace.nodes[name]
            value = site["value"]
            if objective == "iwae-dreg":
                value = _gradient_scaled(value, holder, index)
                holder["event_dims"][id(value)] = len(site["fn"].event_shape)
            values[name] = value
        replayed = _replayable(guide_trace, values)
        q_trace = stopped_trace(guide, replayed, args, modules, objective)
    else:
        replayed, q_trace = guide_trace, prune_subsample_sites(guide_trace)
        q_trace.compute_log_prob()
    model_trace = poutine.trace(poutine.replay(model, trace=replayed)).get_trace(*args)
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
    model_sites = [n for n, s in model_trace.nodes.items() if s["type"] == "sample"]
    q_sites = [n for n, _ in latent_sites(q_trace)]
    log_w = _site_total(model_trace, model_sites, sum_dims) - _site_total(
        q_trace, q_sites, sum_dims
    )
    if objective == "iwae-dreg":
        _check_weights_fit(torch.as_tensor(log_w).shape, guide_trace, latents)
    score = _site_total(q_trace, scored, sum_dims) if scored else 0.0
    return torch.as_tensor(log_w), score


def _check_weights_fit(shape: torch.Size, guide_trace: Any, latents: Sequence[str]) -> None:
    """DReG scales each draw's gradient by its own weight: the weights must have no dim the
    site's batch shape lacks (a site shared by all points while each point has a weight)."""
    for name in latents:
        batch = tuple(guide_trace.nodes[name]["fn"].batch_shape)
        if torch.broadcast_shapes(tuple(shape), batch) != torch.Size(batch):
            raise PairError(
                f"--objective iwae-dreg: guide site {name!r} (batch shape {batch}) is shared "
                f"by points that each have an importance weight (shape {tuple(shape)}): DReG "
                "weights each draw's gradient by its own point's weight; train it with "
                "--objective iwae or stl"
            )


def surrogate(objective: str, model: Callable, guide: Callable, args: Sequence[Any], *,
              num_particles: int = 1, max_plate_nesting: int = 1, vectorize: bool = True,
              modules: Sequence[nn.Module] = ()) -> Surrogate:  # fmt: skip
    """The surrogate of ``objective`` (one of :data:`SURROGATE_OBJECTIVES`) on one batch
    ``args``, with ``num_particles`` particles (vectorized in a plate at dim
    ``-max_plate_nesting - 1`` where ``vectorize``, else in a loop)."""
    if objective not in SURROGATE_OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {SURROGATE_OBJECTIVES}")
    if objective == "vimco" and num_particles < 2:
        raise PairError(
            "--objective vimco needs --num-particles >= 2: its baseline for each particle is "
            f"formed from the other particles (got {num_particles})"
        )
    modules = guide_modules(guide, modules) if objective in STOPPED else []
    holder: dict[str, Any] = {"event_dims": {}}
    if vectorize and num_particles > 1:
        plate = pyro.plate(PARTICLE_PLATE, num_particles, dim=-max_plate_nesting - 1)
        log_w, score = _one_particle(objective, plate(model), plate(guide), args, modules,
                                     holder, None)  # fmt: skip
        log_w = log_w.reshape(log_w.shape[max(log_w.dim() - max_plate_nesting - 1, 0) :])
        if isinstance(score, Tensor):
            score = score.reshape(score.shape[max(score.dim() - max_plate_nesting - 1, 0) :])
    else:
        draws = [_one_particle(objective, model, guide, args, modules, holder, k)
                 for k in range(num_particles)]  # fmt: skip
        log_w = torch.stack(torch.broadcast_tensors(*[w for w, _ in draws]))
        score = (torch.stack(torch.broadcast_tensors(*[torch.as_tensor(s) for _, s in draws]))
                 if objective == "vimco" else 0.0)  # fmt: skip
    return _surrogate_of(objective, log_w, score, holder)


def _surrogate_of(objective: str, log_w: Tensor, score: Tensor | float,
                  holder: dict) -> Surrogate:  # fmt: skip
    num = log_w.shape[0]
    if objective == "stl":
        bound = log_w.sum() / num
        return Surrogate(-bound, bound.detach(), log_w.detach())
    bound = (torch.logsumexp(log_w, 0) - math.log(num)).sum()
    if objective == "iwae-dreg":
        weights = torch.softmax(log_w.detach(), 0)
        holder["weights"] = weights
        weighted = (weights * log_w).sum()
        return Surrogate(-(bound.detach() + weighted - weighted.detach()), bound.detach(),
                         log_w.detach())  # fmt: skip
    signal = learning_signals(log_w.detach())
    scored = (signal * score).sum()
    return Surrogate(-(bound + scored - scored.detach()), bound.detach(), log_w.detach())


def learning_signals(log_w: Tensor) -> Tensor:
    """VIMCO's per-particle learning signal L - L_{-k} (Mnih & Rezende 2016, eq. 10), with
    L = log (1/K) sum_j w_j and L_{-k} the same with log w_k replaced by the mean of the other
    particles' log weights: shape of ``log_w``, particles along dim 0."""
    num = log_w.shape[0]
    others_mean = (log_w.sum(0, keepdim=True) - log_w) / (num - 1)
    eye = torch.eye(num, dtype=log_w.dtype, device=log_w.device)
    eye = eye.reshape((num, num) + (1,) * (log_w.dim() - 1))
    # row k: the weights with particle k's replaced by the mean of the others
    replaced = log_w.unsqueeze(0) * (1 - eye) + others_mean.unsqueeze(1) * eye
    bound = torch.logsumexp(log_w, 0)
    return bound.unsqueeze(0) - torch.logsumexp(replaced, 1)


def check_stopped(guide: Callable, args: Sequence[Any], modules: Sequence[nn.Module],
                  objective: str = "stl") -> None:  # fmt: skip
    """Refuse a guide whose stopped run still reaches a parameter: a network registered with
    ``pyro.module`` that is not among ``modules`` and not the guide's owner. Then STL and DReG
    would silently keep the score term. Its draws leave the random state as it was."""
    devices = sorted({a.device.index or 0 for a in args
                      if isinstance(a, Tensor) and a.device.type == "cuda"})  # fmt: skip
    with torch.random.fork_rng(devices=devices):
        _check_stopped(guide, args, modules, objective)


def _check_stopped(guide: Callable, args: Sequence[Any], modules: Sequence[nn.Module],
                   objective: str) -> None:  # fmt: skip
    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(*args)
    values = {name: site["value"].detach() for name, site in latent_sites(guide_trace)}
    with torch.enable_grad():
        q_trace = stopped_trace(guide, _replayable(guide_trace, values), args, modules, objective)
        for name, site in latent_sites(q_trace):
            if site["log_prob"].requires_grad:
                raise PairError(
                    f"the guide's parameters could not all be stopped: site {name!r}'s log q "
                    "still depends on a parameter of a network the objective cannot find. "
                    "Pass the pair's networks: make_objective(..., modules=[...]) or "
                    "STL_ELBO(modules=[...]) (a guide that is a method of an nn.Module is "
                    "found by itself)"
                )


__all__ = [
    "STOPPED",
    "SURROGATE_OBJECTIVES",
    "Surrogate",
    "check_sites",
    "check_stopped",
    "guide_modules",
    "learning_signals",
    "stopped_guide",
    "stopped_parameters",
    "stopped_trace",
    "surrogate",
]
