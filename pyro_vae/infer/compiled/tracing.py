"""A pair's training loss traced from its Pyro programs, and why a pair cannot be traced.

The guide runs under ``poutine.trace``, the model is replayed on it, and the loss is formed
from the two traces (:func:`log_weights`, :func:`traced_loss`), with no ``.item()`` calls, so
``make_fx`` can capture it as a graph of tensor operations (:func:`_graph_of`).
:func:`untraceable_reason` says why a pair or objective cannot be captured; :class:`PairLoss`
is the traced loss as a plain PyTorch module.

References:
    Kingma & Welling (2014), Auto-Encoding Variational Bayes.
    Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
    Li & Turner (2016), Rényi Divergence Variational Inference.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch import Tensor, nn

from pyro_vae.infer.surrogates import SURROGATE_OBJECTIVES, surrogate

#: Objectives whose loss is a static function of the traces (``--compile``).
TRACEABLE_OBJECTIVES = ("elbo", "meanfield", "iwae", "renyi", *SURROGATE_OBJECTIVES)

#: Why the other objectives train eagerly under ``--compile`` (the note the run prints).
UNTRACED_OBJECTIVES = {
    "tracegraph": "its score-function surrogate is built by TraceGraph_ELBO's own backward "
    "pass, with the decaying-average baselines updated in Python at every step (Pyro "
    "1.9 gives it no differentiable_loss to capture)",
    "enum": "TraceEnum_ELBO's expectation branches on the values of the enumerated "
    "probabilities (mask.all() and masked_select in pyro.infer.util.compute_expectation), "
    "which a static graph cannot hold",
}


def _objective_reason(objective: str) -> str:
    why = UNTRACED_OBJECTIVES.get(objective, "it is not one of the traced objectives")
    return (f"--objective {objective} is not traced ({why}; traced: "
            f"{', '.join(TRACEABLE_OBJECTIVES)})")  # fmt: skip


PARTICLE_PLATE = "num_particles_vectorized"


class UntraceableError(RuntimeError):
    """A pair or objective whose loss cannot be traced into a static graph; says why."""


def log_weights(
    model: Callable,
    guide: Callable,
    args: Sequence[Any],
    *,
    num_particles: int = 1,
    max_plate_nesting: int = 1,
    analytic_kl: bool = False,
) -> Tensor:
    """log w = log p(x, z_k) - log q(z_k | x) from the traces of one call of the programs,
    for K = ``num_particles`` vectorized draws z_k of the guide: shape ``(K, ...)``, one
    weight per particle and per point of the independent plates (the dimensions that are not
    plates are summed, as Pyro's ``RenyiELBO`` does). With ``analytic_kl``, a latent site whose
    KL(q || p) is known contributes -KL in place of its sampled log p - log q
    (``TraceMeanField_ELBO``)."""
    if num_particles > 1:
        plate = pyro.plate(PARTICLE_PLATE, num_particles, dim=-max_plate_nesting - 1)
        model, guide = plate(model), plate(guide)
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    # a plate's subsample site is not a density; without it the data plate is common to all
    # sites and stays a dimension of the weights (as in Pyro's get_importance_trace)
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
    total: Tensor | float = 0.0
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        guide_site = guide_trace.nodes.get(name)
        if analytic_kl and guide_site is not None and not site["is_observed"]:
            try:
                kl = kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:
                kl = None
            if kl is not None:
                kl = scale_and_mask(kl, site["scale"], site["mask"])
                total = total - torch_sum(kl, sum_dims)
                continue
        total = total + torch_sum(site["log_prob"], sum_dims)
        if guide_site is not None:
            total = total - torch_sum(guide_site["log_prob"], sum_dims)
    # guide sites the model never samples still cost their log q
    for name, guide_site in _latent_sites(guide_trace):
        if name not in model_trace.nodes:
            total = total - torch_sum(guide_site["log_prob"], sum_dims)
    total = torch.as_tensor(total)
    return total if num_particles > 1 else total.unsqueeze(0)


def _latent_sites(trace: Any) -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, site)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    ]


def traced_loss(
    model: Callable,
    guide: Callable,
    args: Sequence[Any],
    *,
    objective: str = "elbo",
    num_particles: int = 1,
    alpha: float = 0.5,
    max_plate_nesting: int = 1,
    modules: Sequence[nn.Module] = (),
) -> Tensor:
    """The differentiable training loss of ``objective`` from the programs' traces: equal in
    value and gradients to Pyro's estimator on the same draws, for a reparameterized guide.

        elbo, meanfield:  -(1/K) sum_k sum_i log w_ki
        iwae, renyi:      -1/(1-alpha) sum_i [logsumexp_k (1-alpha) log w_ki - log K]

    over particles k and the points i of the independent plates (:func:`log_weights`);
    ``stl``, ``iwae-dreg`` and ``vimco`` are the surrogates of
    :func:`pyro_vae.infer.surrogates.surrogate` (``modules``: the networks they stop).
    """
    if objective not in TRACEABLE_OBJECTIVES:
        raise UntraceableError(_objective_reason(objective))
    if objective in SURROGATE_OBJECTIVES:
        return surrogate(objective, model, guide, args, num_particles=num_particles,
                         max_plate_nesting=max_plate_nesting, modules=modules).loss  # fmt: skip
    weights = log_weights(
        model,
        guide,
        args,
        num_particles=num_particles,
        max_plate_nesting=max_plate_nesting,
        analytic_kl=objective == "meanfield",
    )
    if objective in ("elbo", "meanfield"):
        return -weights.sum() / num_particles
    rate = 1.0 - (0.0 if objective == "iwae" else alpha)
    bound = (torch.logsumexp(rate * weights, 0) - math.log(num_particles)).sum() / rate
    return -bound


def untraceable_reason(model: Callable, guide: Callable, args: Sequence[Any],
                       modules: Sequence[nn.Module], objective: str) -> str | None:  # fmt: skip
    """Why the pair's loss cannot be traced into a static graph, or ``None``: an objective
    that is not traced, a guide site without ``rsample``, enumeration, a module that updates
    buffers in training mode (BatchNorm's running statistics)."""
    if objective not in TRACEABLE_OBJECTIVES:
        return _objective_reason(objective)
    for module in modules:
        for name, sub in module.named_modules():
            if sub.training and isinstance(sub, nn.modules.batchnorm._BatchNorm):
                return (
                    f"module {type(module).__name__}.{name or '(root)'} is a BatchNorm in "
                    "training mode: its running statistics change at every step"
                )
    with _kept_rng(args), torch.no_grad():  # the check's draws must not shift the run's
        guide_trace = poutine.trace(guide).get_trace(*args)
    for name, site in _latent_sites(guide_trace):
        if site_is_subsample(site):
            continue
        if site["infer"].get("enumerate"):
            return f"guide site {name!r} is enumerated"
        if not getattr(site["fn"], "has_rsample", False) and objective != "vimco":
            return (
                f"guide site {name!r} ({type(site['fn']).__name__}) is not reparameterized: "
                "its gradient needs the score function"
            )
    return None


class PairLoss(nn.Module):
    """A pair's training loss as a plain PyTorch module: ``loss = PairLoss(pair)(x)`` is the
    differentiable loss of a batch (:func:`traced_loss`), and ``parameters()`` are the pair's
    own, so ``torch.optim``, ``torch.compile`` and ``DistributedDataParallel`` apply as to any
    module: ``DDP(PairLoss(pair))(x).backward()`` averages the gradients over processes.

    It plays the part of Pyro's ``ELBOModule`` (``Trace_ELBO()(model, guide)`` under
    ``pyro.settings.set(module_local_params=True)``) with two differences that matter here:
    the loss is formed from the traces without ``.item()`` calls, so it can be traced and
    compiled, and it covers the IWAE and Rényi bounds of each point, not only the ELBO.
    Parameters must live in modules of the pair (``pyro.module`` / ``PyroModule``); a bare
    ``pyro.param`` is not one of this module's parameters.
    """

    def __init__(self, pair: nn.Module, *, objective: str = "elbo", num_particles: int = 1,
                 alpha: float = 0.5, max_plate_nesting: int = 1) -> None:  # fmt: skip
        super().__init__()
        if objective not in TRACEABLE_OBJECTIVES:
            raise UntraceableError(
                f"PairLoss: objective {objective!r} is not one of {', '.join(TRACEABLE_OBJECTIVES)}"
            )
        self.pair = pair
        self.loss_args = dict(objective=objective, num_particles=num_particles, alpha=alpha,
                              max_plate_nesting=max_plate_nesting, modules=[pair])  # fmt: skip

    def forward(self, *batch: Tensor) -> Tensor:
        return traced_loss(self.pair.model, self.pair.guide, batch, **self.loss_args)


def _graph_of(fn: Callable, inputs: Sequence[Tensor], compiler: Callable | None) -> Callable:
    """``fn`` traced by ``make_fx`` on ``inputs`` into a graph (Pyro's validation off, the
    trace's random draws undone), then compiled by ``compiler`` unless it is None."""
    with warnings.catch_warnings():
        # importing make_fx, and Inductor, touches torch.jit.script_method, which torch >= 2.9
        # deprecates: nothing a user can act on
        warnings.simplefilter("ignore")
        from torch.fx.experimental.proxy_tensor import make_fx

        with _kept_rng(inputs), pyro.validation_enabled(False):
            graph = make_fx(fn)(*inputs)
        return graph if compiler is None else compiler(graph)


def _kept_rng(tensors: Sequence[Any]) -> Any:
    """``torch.random.fork_rng`` over the CPU and the CUDA devices of ``tensors``: the random
    draws inside the block leave the global random state as it was."""
    devices = sorted({t.device.index or 0 for t in tensors
                      if isinstance(t, Tensor) and t.device.type == "cuda"})  # fmt: skip
    return torch.random.fork_rng(devices=devices)


__all__ = [
    "PARTICLE_PLATE",
    "PairLoss",
    "TRACEABLE_OBJECTIVES",
    "UNTRACED_OBJECTIVES",
    "UntraceableError",
    "log_weights",
    "traced_loss",
    "untraceable_reason",
]
