"""Two-stochastic-layer guide q(z1|x) q(z2|z1) of Burda et al. (2016)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
from torch import Tensor, nn

from pyro_vae.guides.flows import (
    DEFAULT_STEPS,
    PerPointFlowGuide,
    gaussian_or_flow,
    make_flow,
)
from pyro_vae.nn import GaussianHead, check_flat_data, mlp

__all__ = ["TwoLayerGaussianEncoder"]


class TwoLayerGaussianEncoder(nn.Module):
    """Amortized guide with two stochastic layers, bottom-up.

    ``q(z1, z2 | x) = N(z1; mu_1(x), diag(sigma_1(x)^2)) * N(z2; mu_2(z1), diag(sigma_2(z1)^2))``

    ``hidden1`` are the deterministic layers between x and z1, ``hidden2`` those between z1
    and z2. The defaults give the paper's 784-100-100-100(z1)-50-50-50(z2) tanh network.
    Because q(z2 | z1) depends on z1 the guide is not mean-field: ``TraceMeanField_ELBO``
    warns about it, and rightly so. With ``flow`` each layer's Gaussian is pushed through
    ``flow_steps`` transforms conditioned on that layer's last hidden layer
    (`pyro_vae.guides.flows`).

    References:
        Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, section 5.
    """

    def __init__(
        self,
        x_dim: int,
        z1_dim: int = 100,
        z2_dim: int = 50,
        hidden1: Sequence[int] = (100, 100),
        hidden2: Sequence[int] = (50, 50),
        activation: str = "tanh",
        *,
        min_scale: float = 1e-3,
        flow: str = "none",
        flow_steps: int = DEFAULT_STEPS,
        flow_hidden: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.x_dim = x_dim
        self.z1_dim = z1_dim
        self.z2_dim = z2_dim
        hidden1 = list(hidden1)
        hidden2 = list(hidden2)
        self.z1_trunk = (
            mlp([x_dim, *hidden1], activation, final_activation=True) if hidden1 else None
        )
        self.z1_head = GaussianHead(hidden1[-1] if hidden1 else x_dim, z1_dim, min_scale)
        self.z2_trunk = (
            mlp([z1_dim, *hidden2], activation, final_activation=True) if hidden2 else None
        )
        self.z2_head = GaussianHead(hidden2[-1] if hidden2 else z1_dim, z2_dim, min_scale)
        owner = type(self).__name__
        context1 = hidden1[-1] if hidden1 else x_dim
        context2 = hidden2[-1] if hidden2 else z1_dim
        self.z1_flow = make_flow(flow, flow_steps, z1_dim, context1, flow_hidden, owner)
        self.z2_flow = make_flow(flow, flow_steps, z2_dim, context2, flow_hidden, owner)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean and scale of the Gaussian of z1 given x and the context of its flow."""
        hidden = self.z1_trunk(x) if self.z1_trunk is not None else x
        loc, scale = self.z1_head(hidden)
        return loc, scale, hidden

    def encode_z2(self, z1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean and scale of the Gaussian of z2 given z1 and the context of its flow."""
        hidden = self.z2_trunk(z1) if self.z2_trunk is not None else z1
        loc, scale = self.z2_head(hidden)
        return loc, scale, hidden

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of the Gaussian q(z1 | x) (a flow's base), each ``(..., z1_dim)``."""
        loc, scale, _ = self.encode(x)
        return loc, scale

    def z2_params(self, z1: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of the Gaussian q(z2 | z1) (a flow's base), each ``(..., z2_dim)``."""
        loc, scale, _ = self.encode_z2(z1)
        return loc, scale

    def guide(self, x: Tensor) -> None:
        check_flat_data(x, self.x_dim, type(self).__name__)
        pyro.module("encoder", self)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", gaussian_or_flow(self.z1_flow, *self.encode(x)))
            pyro.sample("z2", gaussian_or_flow(self.z2_flow, *self.encode_z2(z1)))

    def per_point_guide(self, x: Tensor) -> PerPointFlowGuide | None:
        """With a flow: each layer's flow with a free base and context per point, z2's started
        at the encoder's value for z1 = the mean of z1's base (the q* of the gaps; it drops
        q's dependence of z2 on z1). None without a flow (a factorized Gaussian is q*)."""
        if self.z1_flow is None:
            return None
        with torch.no_grad():
            z1_loc, z1_scale, z1_context = self.encode(x)
            sites = {
                "z1": (self.z1_flow, z1_loc, z1_scale, z1_context),
                "z2": (self.z2_flow, *self.encode_z2(z1_loc)),
            }
            return PerPointFlowGuide(sites, "data")
