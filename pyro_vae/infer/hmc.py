"""Hamiltonian Monte Carlo transitions for many chains at once, one step size per chain.

The state of a batch is a dict of unconstrained latent tensors, one per site, each laid out
as ``(C, ..., B, ...)``: C chains, B data points, and whatever plate and event dims the site
has. Every (chain, point) pair is an independent Markov chain: its step size, its momentum
and its accept/reject decision are its own. The target density is

    log pi_beta(u) = beta * log_p(u) + (1 - beta) * log_r(u) + log |det J(u)|,

the geometric bridge between a proposal r and the joint p(x, z) in unconstrained space (the
annealing path of :mod:`pyro_vae.infer.ais`), and :class:`Point` holds its parts at one
position so that the same evaluation serves every beta.

References:
    Neal (2011), MCMC Using Hamiltonian Dynamics, in the Handbook of Markov Chain Monte Carlo.
    Wu, Burda, Salakhutdinov & Grosse (2017), On the Quantitative Analysis of Decoder-Based
        Generative Models (per-chain step sizes adapted toward an acceptance rate of 0.65).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

#: Acceptance rate the step sizes are adapted toward (Wu et al. 2017 use 0.65).
TARGET_ACCEPTANCE = 0.65
#: Each step, a chain's step size is multiplied by this when its acceptance probability was
#: above the target, and divided by it otherwise.
ADAPT_FACTOR = 1.02
#: The adapted step sizes stay within these bounds.
STEP_SIZE_BOUNDS = (1e-5, 10.0)


@dataclass
class Point:
    """The annealing target's parts at one position ``u``, each of shape (C, B), with the
    gradients in ``u`` of log p + log|J| (``grad_p``) and of log r + log|J| (``grad_r``)."""

    u: dict[str, Tensor]
    log_p: Tensor
    log_r: Tensor
    log_det: Tensor
    grad_p: dict[str, Tensor]
    grad_r: dict[str, Tensor]

    def log_target(self, beta: float) -> Tensor:
        """log pi_beta at this point, shape (C, B)."""
        return beta * self.log_p + (1.0 - beta) * self.log_r + self.log_det

    def grad_target(self, beta: float) -> dict[str, Tensor]:
        """d log pi_beta / du, per site (beta g_p + (1 - beta) g_r: the log|J| is in both)."""
        return {name: beta * self.grad_p[name] + (1.0 - beta) * self.grad_r[name]
                for name in self.u}  # fmt: skip


@dataclass(frozen=True)
class SiteLayout:
    """Where the chain and point axes sit in a site's unconstrained tensor: ``view`` reshapes a
    (C, B) tensor to broadcast against it; ``data_axis`` is the axis of the B points."""

    view: tuple[int, ...]
    data_axis: int

    def per_point(self, values: Tensor) -> Tensor:
        """``values`` (laid out as the site, or its first dims) summed to shape (C, B)."""
        others = [d for d in range(values.dim()) if d not in (0, self.data_axis)]
        return values.sum(dim=others) if others else values


def kinetic_energy(momentum: dict[str, Tensor], layouts: dict[str, SiteLayout]) -> Tensor:
    """sum p^2 / 2 per chain and point (unit mass matrix), shape (C, B)."""
    total = 0.0
    for name, p in momentum.items():
        total = total + layouts[name].per_point(0.5 * p.square())
    return total


def hmc_transition(
    point: Point,
    beta: float,
    step_size: Tensor,
    leapfrog_steps: int,
    evaluate: Callable[[dict[str, Tensor]], Point],
    layouts: dict[str, SiteLayout],
) -> tuple[Point, Tensor]:
    """One HMC transition of every chain, leaving pi_beta invariant: a fresh momentum
    p ~ N(0, I), ``leapfrog_steps`` leapfrog steps of size ``step_size`` (shape (C, B), one
    per chain), then a Metropolis accept or reject per chain. A proposal whose energy is not
    finite is rejected. ``evaluate(u)`` gives the :class:`Point` at a position.

    Returns the new point and the acceptance probabilities, shape (C, B)."""
    momentum = {name: torch.randn_like(u) for name, u in point.u.items()}
    energy = -point.log_target(beta) + kinetic_energy(momentum, layouts)
    sizes = {name: step_size.reshape(layouts[name].view) for name in point.u}
    grad = point.grad_target(beta)
    momentum = {n: p + 0.5 * sizes[n] * grad[n] for n, p in momentum.items()}
    position, proposal = point.u, point
    for step in range(leapfrog_steps):
        position = {n: u + sizes[n] * momentum[n] for n, u in position.items()}
        proposal = evaluate(position)
        grad = proposal.grad_target(beta)
        half = 0.5 if step == leapfrog_steps - 1 else 1.0
        momentum = {n: p + half * sizes[n] * grad[n] for n, p in momentum.items()}
    new_energy = -proposal.log_target(beta) + kinetic_energy(momentum, layouts)
    log_accept = (energy - new_energy).clamp(max=0.0)
    log_accept = torch.where(
        torch.isfinite(log_accept), log_accept, torch.full_like(energy, -torch.inf)
    )
    accept_prob = log_accept.exp()
    accept = torch.rand_like(accept_prob) < accept_prob
    return _choose(accept, proposal, point, layouts), accept_prob


def adapt_step_size(step_size: Tensor, accept_prob: Tensor,
                    target: float = TARGET_ACCEPTANCE) -> Tensor:  # fmt: skip
    """Each chain's next step size from its last acceptance probability alone: times
    :data:`ADAPT_FACTOR` above ``target``, divided by it below (Wu et al. 2017)."""
    factor = torch.where(accept_prob > target, ADAPT_FACTOR, 1.0 / ADAPT_FACTOR)
    return (step_size * factor).clamp(*STEP_SIZE_BOUNDS)


def _choose(accept: Tensor, new: Point, old: Point, layouts: dict[str, SiteLayout]) -> Point:
    def pick(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, Tensor]:
        return {n: torch.where(accept.reshape(layouts[n].view), a[n], b[n]) for n in a}

    return Point(
        pick(new.u, old.u),
        torch.where(accept, new.log_p, old.log_p),
        torch.where(accept, new.log_r, old.log_r),
        torch.where(accept, new.log_det, old.log_det),
        pick(new.grad_p, old.grad_p),
        pick(new.grad_r, old.grad_r),
    )


__all__ = [
    "ADAPT_FACTOR",
    "Point",
    "SiteLayout",
    "STEP_SIZE_BOUNDS",
    "TARGET_ACCEPTANCE",
    "adapt_step_size",
    "hmc_transition",
    "kinetic_energy",
]
