"""A linear-Gaussian model with a guide that is not amortized: one Gaussian per data point.

    z_i ~ N(0, I_2),   x_i | z_i ~ N(W z_i, sigma^2 I_4),

with W fixed and its columns orthogonal, so the posterior p(z_i | x_i) is a diagonal
Gaussian: the guide's family holds it, and log p(x_i) = log N(x_i; 0, W W^T + sigma^2 I) is
known exactly. The guide's ``pyro.param``s ``z_loc`` and ``z_scale`` have one row per
training point; ``last_x`` keeps the batch the guide last saw.
"""

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

#: Orthogonal columns: W^T W = diag(2, 5).
WEIGHTS = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, -1.0]])
NOISE = 0.5


class PerPointGaussian:
    def __init__(self, x_dim=4, num_points=None):
        self.x_dim, self.num_points = x_dim, num_points
        self.last_x = None

    def model(self, x):
        weights = WEIGHTS.to(x.device)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ weights.T, NOISE).to_event(1), obs=x)

    def guide(self, x):
        self.last_x = x
        num_points = self.num_points or x.shape[0]
        z_loc = pyro.param("z_loc", lambda: torch.zeros(num_points, 2))
        z_scale = pyro.param("z_scale", lambda: torch.ones(num_points, 2),
                             constraint=constraints.positive)  # fmt: skip
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))


def exact_log_px(x):
    """log N(x; 0, W W^T + sigma^2 I) per row of ``x``."""
    covariance = WEIGHTS @ WEIGHTS.T + NOISE**2 * torch.eye(4)
    return dist.MultivariateNormal(torch.zeros(4), covariance).log_prob(x)


def draw(num_points, seed):
    """Points drawn from the model."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(num_points, 2, generator=generator)
    return z @ WEIGHTS.T + NOISE * torch.randn(num_points, 4, generator=generator)
