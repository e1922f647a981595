"""A VAE with a Bayesian decoder: PyroModule layers whose weights carry PyroSample priors.

Imitates Pyro's Bayesian regression tutorial (``PyroModule`` + ``PyroSample`` weight priors,
a mean-field Normal guide built from ``pyro.param`` loc/scale) combined with the tutorial VAE
(an amortized Normal encoder for the local latent "z").

For tests: a pair with *global* latent sites, sampled once per batch outside the data plate
(``cond_indep_stack`` empty), next to the local site "z" inside it. Its per-point log p(x) is
not a sum of independent per-point terms; anything that assumes every site sits in the data
plate must treat the global sites on their own.

Model sites: "decoder.fc1.weight" (hidden, z_dim; event 2), "decoder.fc1.bias" (hidden;
event 1), "decoder.fc2.weight" (x_dim, hidden; event 2), "decoder.fc2.bias" (x_dim; event 1),
all outside any plate; "z" (latent, event 1) and "x" (observed, event 1) in plate "data"
(dim -1). The guide samples the same four global sites, outside the plate, and "z" inside it.

The layers multiply with ``weight @ input`` rather than ``F.linear``, so a weight drawn in an
outer particle plate, shape (particles, 1, out, in), broadcasts against the batch.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroSample
from torch import nn


# Priors as functions of the layer (PyroSample calls them with the module), built from the
# layer's buffers so that they follow the module to its device.
def _weight_prior(layer):
    shape = [layer.out_features, layer.in_features]
    return dist.Normal(layer.prior_loc, layer.prior_scale).expand(shape).to_event(2)


def _bias_prior(layer):
    shape = [layer.out_features]
    return dist.Normal(layer.prior_loc, layer.prior_scale).expand(shape).to_event(1)


class BayesianLinear(PyroModule):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("prior_loc", torch.tensor(0.0), persistent=False)
        self.register_buffer("prior_scale", torch.tensor(1.0), persistent=False)
        self.weight = PyroSample(_weight_prior)
        self.bias = PyroSample(_bias_prior)

    def forward(self, inputs):
        weight, bias = self.weight, self.bias  # each access in one call reuses the draw
        return (weight @ inputs.unsqueeze(-1)).squeeze(-1) + bias


class BayesianDecoder(PyroModule):
    def __init__(self, x_dim, z_dim, hidden):
        super().__init__(name="decoder")  # site names "decoder.fc1.weight", ...
        self.fc1 = BayesianLinear(z_dim, hidden)
        self.fc2 = BayesianLinear(hidden, x_dim)

    def forward(self, z):
        return self.fc2(nn.functional.softplus(self.fc1(z)))  # Bernoulli logits


class BayesianDecoderVAE(nn.Module):
    def __init__(self, x_dim, z_dim=4, hidden=16):
        super().__init__()
        self.x_dim = x_dim
        self.z_dim = z_dim
        self.hidden = hidden
        self.decoder = BayesianDecoder(x_dim, z_dim, hidden)
        self.encoder = nn.Sequential(
            nn.Linear(x_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z_dim)
        )

    def _global_shapes(self):
        shapes = {}
        for name, layer in (("fc1", self.decoder.fc1), ("fc2", self.decoder.fc2)):
            shapes[f"decoder.{name}.weight"] = (layer.out_features, layer.in_features)
            shapes[f"decoder.{name}.bias"] = (layer.out_features,)
        return shapes

    def model(self, x):
        # one plate object entered twice: a second pyro.plate("data", ...) would record its
        # subsample site "data" again ("Multiple sample sites named 'data'")
        data = pyro.plate("data", x.shape[0])
        with data:
            z_loc = x.new_zeros(x.shape[0], self.z_dim)
            z_scale = x.new_ones(x.shape[0], self.z_dim)
            z = pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
        # The decoder's weight sites are sampled when it is called: call it outside the plate,
        # or each weight would be a (batch, ...) stack of per-point weights inside "data".
        logits = self.decoder(z)
        with data:
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x):
        # mean-field Normal over every decoder weight, outside the data plate
        for name, shape in self._global_shapes().items():
            loc = pyro.param(f"{name}_loc", lambda shape=shape: 0.1 * torch.randn(shape).to(x))
            scale = pyro.param(
                f"{name}_scale",
                lambda shape=shape: x.new_full(shape, 0.1),
                constraint=constraints.positive,
            )
            pyro.sample(name, dist.Normal(loc, scale).to_event(len(shape)))
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_log_scale = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))
