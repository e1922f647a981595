"""A sparse gamma deep exponential family, written the way Pyro's example writes one.

Three layers of gamma latents per data point, z_top -> z_mid -> z_bottom, each the mean of
the next through gamma weights shared by all points (global latents, sampled outside the
data plate), and a Poisson likelihood for count data. The guide is mean-field and not
amortized: every data point has its own variational parameters, ``pyro.param``s of shape
(num_points, width) constrained positive, as in Ranganath et al. (2015).

``num_points`` is the number of training points; left out, it is the size of the first
batch the guide sees (Pyro's example makes its parameters that way).
"""

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints


class SparseGammaDEF:
    """p(W) prod_i p(z_top_i) p(z_mid_i | z_top_i, W) p(z_bottom_i | z_mid_i, W) p(x_i | ...)."""

    def __init__(self, x_dim, num_points=None, widths=(3, 6, 10), alpha_z=0.1, beta_z=0.1,
                 alpha_w=0.1, beta_w=0.3):  # fmt: skip
        self.x_dim, self.num_points, self.widths = x_dim, num_points, tuple(widths)
        self.alpha_z, self.beta_z = alpha_z, beta_z
        self.alpha_w, self.beta_w = alpha_w, beta_w

    def _weight_shapes(self):
        top, mid, bottom = self.widths
        return {"w_top": (top, mid), "w_mid": (mid, bottom), "w_bottom": (bottom, self.x_dim)}

    def model(self, x):
        weights = {}
        for name, (rows, cols) in self._weight_shapes().items():
            with pyro.plate(f"{name}_plate", rows * cols):
                prior = dist.Gamma(x.new_tensor(self.alpha_w), x.new_tensor(self.beta_w))
                flat = pyro.sample(name, prior)
                weights[name] = flat.reshape(flat.shape[:-1] + (rows, cols))  # particles left
        top = self.widths[0]
        with pyro.plate("data", x.shape[0]):
            z_top = pyro.sample(
                "z_top",
                dist.Gamma(
                    x.new_full((top,), self.alpha_z), x.new_full((top,), self.beta_z)
                ).to_event(1),
            )
            # each layer's mean is the layer above times its weights
            mean_mid = z_top @ weights["w_top"]
            z_mid = pyro.sample(
                "z_mid", dist.Gamma(self.alpha_z, self.alpha_z / mean_mid).to_event(1)
            )
            mean_bottom = z_mid @ weights["w_mid"]
            z_bottom = pyro.sample(
                "z_bottom", dist.Gamma(self.alpha_z, self.alpha_z / mean_bottom).to_event(1)
            )
            rate = z_bottom @ weights["w_bottom"] + 1e-3
            pyro.sample("x", dist.Poisson(rate).to_event(1), obs=x)

    def guide(self, x):
        num_points = self.num_points or x.shape[0]
        for name, (rows, cols) in self._weight_shapes().items():
            shape_q = _positive_param(f"alpha_{name}_q", (rows * cols,), 2.0)
            mean_q = _positive_param(f"mean_{name}_q", (rows * cols,), 0.4)
            with pyro.plate(f"{name}_plate", rows * cols):
                pyro.sample(name, dist.Gamma(shape_q, shape_q / mean_q))
        with pyro.plate("data", x.shape[0]):
            for layer, width in zip(("top", "mid", "bottom"), self.widths, strict=True):
                # one row of variational parameters per data point
                shape_q = _positive_param(f"alpha_z_{layer}_q", (num_points, width), 2.0)
                mean_q = _positive_param(f"mean_z_{layer}_q", (num_points, width), 1.0)
                pyro.sample(f"z_{layer}", dist.Gamma(shape_q, shape_q / mean_q).to_event(1))


def _positive_param(name, shape, mean):
    """A positive ``pyro.param`` starting near ``mean``, with a little noise so the points
    start apart."""
    return pyro.param(name, lambda: mean * (1.0 + 0.1 * torch.rand(shape)),
                      constraint=constraints.positive)  # fmt: skip
