"""Sigmoid belief net: binary latents with a learned factorized Bernoulli prior."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_vae.nn import check_flat_data, mlp

__all__ = ["MAX_ENUMERATED_LATENTS", "SigmoidBeliefNetDecoder"]

#: `exact_log_marginal` sums over all 2^z_dim latent states; beyond this it refuses.
MAX_ENUMERATED_LATENTS = 16


class SigmoidBeliefNetDecoder(nn.Module):
    """Sigmoid belief net (SBN) generative model for binary data.

    ``p(x, z) = prod_j Bernoulli(z_j; sigmoid(a_j)) * prod_d Bernoulli(x_d; sigmoid(f_theta(z))_d)``

    with a learned bias ``a`` (one per latent unit) and ``f_theta`` linear (``hidden=()``, the
    SBN-200 of Mnih & Gregor with ``z_dim=200``) or an MLP with deterministic hidden layers.
    The latents are discrete: train with a score-function objective (``--objective
    tracegraph``) or a straight-through guide (``sbn-st``).

    References:
        Neal (1992), Connectionist Learning of Belief Networks.
        Mnih & Gregor (2014), Neural Variational Inference and Learning in Belief Networks.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int = 200,
        hidden: Sequence[int] = (),
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.prior_logits = nn.Parameter(torch.zeros(z_dim))
        self.net = mlp([z_dim, *hidden, x_dim], activation)

    def forward(self, z: Tensor) -> Tensor:
        """Bernoulli logits of x given binary z, shape ``(..., x_dim)``."""
        return self.net(z)

    def prior(self, x: Tensor) -> dist.TorchDistribution:
        """p(z) = prod_j Bernoulli(sigmoid(a_j)) for each point of the batch ``x``, on x's
        device and dtype."""
        logits = self.prior_logits.to(x).expand(x.shape[0], self.z_dim)
        return dist.Bernoulli(logits=logits).to_event(1)

    def model(self, x: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("decoder", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", dist.Bernoulli(logits=self(z)).to_event(1), obs=x)

    def exact_log_marginal(self, x: Tensor, states_per_chunk: int = 4096) -> Tensor:
        """``log p(x) = logsumexp_z [log p(z) + log p(x | z)]`` over all 2^z_dim binary z.

        Shape ``(B,)`` for binary x of shape ``(B, x_dim)``; differentiable in the parameters.
        Raises ``NotImplementedError`` for ``z_dim > MAX_ENUMERATED_LATENTS``, where the sum
        has too many terms.
        """
        check_flat_data(x, self.x_dim, type(self).__name__)
        if self.z_dim > MAX_ENUMERATED_LATENTS:
            raise NotImplementedError(
                f"exact log p(x) enumerates 2^z_dim states; z_dim={self.z_dim} is more than "
                f"{MAX_ENUMERATED_LATENTS}: estimate it by importance sampling instead"
            )
        if not ((x == 0) | (x == 1)).all():
            raise ValueError("exact_log_marginal: x must be binary (0/1), as the likelihood is")
        prior_logits = self.prior_logits.to(x)
        bits = torch.arange(self.z_dim, device=x.device)
        num_states = 2**self.z_dim
        totals = []
        for start in range(0, num_states, states_per_chunk):
            index = torch.arange(start, min(start + states_per_chunk, num_states), device=x.device)
            z = ((index[:, None] >> bits) & 1).to(x.dtype)  # state number -> its binary digits
            log_prior = (z * prior_logits - F.softplus(prior_logits)).sum(-1)  # (S,)
            logits = self(z)  # (S, D)
            # Bernoulli log-mass x.l - softplus(l), summed over pixels, for all (point, state)
            log_likelihood = x @ logits.T - F.softplus(logits).sum(-1)  # (B, S)
            totals.append(torch.logsumexp(log_likelihood + log_prior, dim=-1))
        return torch.logsumexp(torch.stack(totals, dim=-1), dim=-1)
