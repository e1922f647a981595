"""Per-point parameters fitted on new points: how a guide that is not amortized is evaluated.

Such a guide (:mod:`pyro_vae.pairs.local_params`) holds variational parameters for the
training points only; the points of another split have none. To importance-sample their
log p(x), each point gets fresh parameters, fitted by SVI on that split with everything else
frozen (the model's parameters, the guide's global parameters, global latents held where the
estimators hold them), and the fitted guide is the proposal:

    phi_i* ~= argmax_phi_i  E_q(z_i; phi_i)[log p(x_i, z_i | globals) - log q(z_i; phi_i)],

then log p(x_i) ~= log (1/K) sum_k p(x_i, z_k) / q(z_k; phi_i*). The trained parameters
are put back afterwards.

References:
    Hoffman, Blei, Wang & Paisley (2013), Stochastic Variational Inference.
    Cremer, Li & Duvenaud (2018), Inference Suboptimality in Variational Autoencoders
    (fitting local variational parameters per point, there to measure the amortization gap).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyro
import torch
from pyro import poutine

from pyro_vae.infer.handlers import is_fixed
from pyro_vae.pairs.labels import program_args

#: SVI steps that fit the per-point parameters of the evaluated points (``--local-fit-steps``).
LOCAL_FIT_STEPS = 500
#: Adam's learning rate for that fit (``--local-fit-lr``).
LOCAL_FIT_LR = 0.05
#: The final ELBO reported is the mean over this many last steps (one draw each).
FINAL_STEPS = 20


@contextmanager
def fresh_local_params(names: tuple[str, ...], num_points: int) -> Iterator[dict]:
    """Inside: each per-point param of ``names`` in Pyro's param store has ``num_points``
    rows, each the mean of its trained rows (in the unconstrained space, where the optimizer
    works), with its constraint; the trained tensors themselves come back on leaving."""
    store = pyro.get_param_store()
    state = store.get_state()
    trained = {name: state["params"][name] for name in names}
    constraints = {name: state["constraints"][name] for name in names}
    fresh = {}
    for name, value in trained.items():
        mean = value.detach().mean(0, keepdim=True)
        fresh[name] = mean.expand((num_points, *value.shape[1:])).clone().requires_grad_()
    try:
        for name in names:
            del store[name]
        store.set_state({"params": fresh, "constraints": constraints})
        yield fresh
    finally:
        for name in names:
            if name in store:
                del store[name]
        store.set_state({"params": trained, "constraints": constraints})


def fit_local_params(
    model: Any,
    guide: Any,
    x: torch.Tensor,
    params: dict[str, torch.Tensor],
    *,
    steps: int = LOCAL_FIT_STEPS,
    lr: float = LOCAL_FIT_LR,
    max_plate_nesting: int = 1,
    y: torch.Tensor | None = None,
) -> dict:
    """Fit ``params`` (per-point params with one row per point of ``x``) by ``steps`` Adam
    steps on Trace_ELBO of ``model``/``guide`` over all of ``x``; every other parameter is
    left as it is, and sites held fixed (global latents) are left out of the objective.

    Returns the record evaluations show: ``params``, ``steps``, ``lr``, ``num_points``,
    ``final_elbo`` (per point, the mean over the last steps' one-draw ELBOs) and ``seconds``.
    """
    started = time.perf_counter()
    elbo = pyro.infer.Trace_ELBO(max_plate_nesting=max_plate_nesting)
    model = poutine.block(model, hide_fn=is_fixed)
    guide = poutine.block(guide, hide_fn=is_fixed)
    tensors = list(params.values())
    optimizer = torch.optim.Adam(tensors, lr=lr)
    args = program_args(x, y)
    losses = []
    for _ in range(steps):
        loss = elbo.differentiable_loss(model, guide, *args)
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        if not torch.isfinite(loss):
            losses.append(loss.item())
            continue  # a draw out of range: no step from it
        for tensor, grad in zip(tensors, grads, strict=True):
            tensor.grad = None if grad is None else grad.detach()
        optimizer.step()
        losses.append(loss.item())
    last = torch.tensor(losses[-FINAL_STEPS:] or [float("nan")])
    return {
        "params": list(params),
        "steps": steps,
        "lr": lr,
        "num_points": x.shape[0],
        "final_elbo": float(-last.mean() / x.shape[0]),
        "seconds": time.perf_counter() - started,
        "note": "the guide is not amortized: its per-point parameters were fitted on these "
        "points by SVI (Adam), the model and the guide's other parameters frozen; log p(x) "
        "is importance-sampled with the fitted guide",
    }
