"""Draws of a gradient estimator on one minibatch, and their variance and SNR per coordinate.

Each draw g_n = grad_theta surrogate(theta; z_n), z_n ~ q(z|x), is summarized per coordinate j
of theta by

    Var_j = (1/(N-1)) sum_n (g_nj - mean_j)^2,      SNR_j = |mean_j| / sqrt(Var_j),

averaged over coordinates; a baseline first warms up on the same minibatch.

References:
    Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh (2018), Tighter Variational Bounds
    are Not Necessarily Better.
    Mnih & Gregor (2014), Neural Variational Inference and Learning in Belief Networks.
    Schulman, Heess, Weber & Abbeel (2015), Gradient Estimation Using Stochastic
    Computation Graphs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import pyro
import torch
from pyro import poutine
from torch import Tensor, nn

from pyro_vae.runs.config import ConfigError


def _zero_grads(params: Iterable[Tensor]) -> None:
    for param in params:
        param.grad = None


def gradient_draws(
    model: Callable,
    guide: Callable,
    x: Tensor,
    elbo: pyro.infer.ELBO,
    params: Sequence[Tensor],
    num_draws: int,
    *,
    on_draw: Callable[[], None] | None = None,
) -> Tensor:
    """``num_draws`` independent estimates of grad_theta loss, flattened: shape (N, P).

    Each draw zeroes the gradients, runs ``elbo.loss_and_grads(model, guide, x)`` (the
    surrogate loss whose gradient is the estimator; baselines included) and reads
    ``.grad`` of ``params`` (zeros where a parameter got none). The parameters are not
    changed; a decaying-average baseline does move, as it does in training.

        g_n = grad_theta surrogate(theta; z_n),  z_n ~ q(z|x)

    References:
        Schulman, Heess, Weber & Abbeel (2015), Gradient Estimation Using Stochastic
        Computation Graphs.
    """
    if num_draws < 1:
        raise ConfigError(f"--num-draws must be >= 1, got {num_draws}")
    draws = []
    for _ in range(num_draws):
        _zero_grads(params)
        elbo.loss_and_grads(model, guide, x)
        draws.append(
            torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
                    for p in params
                ]
            )
        )
        if on_draw is not None:
            on_draw()
    _zero_grads(params)
    return torch.stack(draws)


def gradient_statistics(draws: Tensor) -> dict[str, float]:
    """Per-coordinate variance and SNR of gradient draws (N, P), averaged over coordinates.

        variance = (1/P) sum_j Var_n(g_nj),   snr = mean_j |mean_n g_nj| / std_n g_nj,
        mean_norm = || mean_n g_n ||_2

    Coordinates whose draws are all equal (std 0: a deterministic or unused coordinate) are
    left out of ``snr``; ``snr`` is ``None`` if no coordinate is left. Needs N >= 2.

    References:
        Rainforth et al. (2018), Tighter Variational Bounds are Not Necessarily Better.
    """
    if draws.dim() != 2 or draws.shape[0] < 2:
        raise ConfigError(
            f"gradient statistics need at least 2 draws of shape (N, P), got {tuple(draws.shape)}"
            " (--num-draws)"
        )
    draws = draws.double()
    mean = draws.mean(0)
    variance = draws.var(0, unbiased=True)
    std = variance.sqrt()
    noisy = std > 0
    snr = (mean[noisy].abs() / std[noisy]).mean().item() if bool(noisy.any()) else None
    return {
        "variance": variance.mean().item(),
        "snr": snr,
        "mean_norm": mean.norm().item(),
        "size": draws.shape[1],
    }


def warm_up_baseline(
    model: Callable,
    guide: Callable,
    x: Tensor,
    elbo: pyro.infer.ELBO,
    steps: int,
    *,
    module: nn.Module | None = None,
    lr: float = 1e-2,
    params: Iterable[Tensor] = (),
    on_step: Callable[[], None] | None = None,
) -> None:
    """Let a baseline learn on ``x`` for ``steps`` draws, with the pair's parameters frozen.

    Every step runs ``elbo.loss_and_grads``: a decaying average moves towards the learning
    signal, b <- beta b + (1 - beta) signal; a neural baseline ``module`` takes an Adam step
    on sum_i (signal_i - b_psi(x_i))^2. Only the baseline changes; the gradients the step
    leaves are cleared: on the traced param sites and on ``params`` (the pair's own tensors,
    see :func:`pair_parameters`).

    References:
        Mnih & Gregor (2014), Neural Variational Inference and Learning in Belief Networks.
    """
    params = list(params)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr) if module is not None else None
    for _ in range(steps):
        with poutine.trace(param_only=True) as captured:
            elbo.loss_and_grads(model, guide, x)
        if optimizer is not None:
            optimizer.step()
        _zero_grads(site["value"].unconstrained() for site in captured.trace.nodes.values())
        _zero_grads(params)
        if module is not None:
            _zero_grads(module.parameters())
        if on_step is not None:
            on_step()
