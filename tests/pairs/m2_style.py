"""A semi-supervised M2 VAE written the way Pyro's examples/vae/ss_vae_M2.py writes its class,
for tests that run it with its default constructor arguments.

As there: one-hot labels ``ys`` observed through ``OneHotCategorical``, ``model(xs, ys=None)``
and ``guide(xs, ys=None)`` with an unsized ``pyro.plate("data")``, the networks registered by
``pyro.module("ss_vae", self)``, and the auxiliary classification loss in
``model_classify``/``guide_classify`` scaled by ``poutine.scale(scale=aux_loss_multiplier)``.
``aux_loss_multiplier`` defaults to None, as in the example (whose command line passes 46), so
the classification loss fails unless a multiplier is given. Integer labels fail too: the
guide joins ``xs`` (B, D) and ``ys`` along the last dim.

Sites: "y" (OneHotCategorical, observed when ys is given), "z" (Normal, event 1), "x"
(Bernoulli, event 1) in plate "data"; "y_aux" in model_classify.

Reference: Kingma, Rezende, Mohamed & Welling (2014), Semi-supervised Learning with Deep
Generative Models.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn


def _layers(sizes, last_activation):
    """Linear layers of ``sizes`` with softplus between them and ``last_activation`` (a
    module or None) at the end."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Softplus())
    if last_activation is not None:
        layers.append(last_activation)
    return nn.Sequential(*layers)


def _joined(*inputs):
    """Inputs concatenated along the last dim, the leading dims broadcast (an enumerated y is
    (C, 1, C) while xs is (B, D))."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in inputs))
    return torch.cat([t.expand(*shape, t.shape[-1]) for t in inputs], dim=-1)


class SSVAE(nn.Module):
    """M2: p(y) p(z) p(x|y,z) with q(y|x) q(z|x,y); q(y|x) doubles as the classifier."""

    def __init__(
        self,
        output_size=10,
        input_size=784,
        z_dim=50,
        hidden_layers=(500,),
        config_enum=None,
        use_cuda=False,
        aux_loss_multiplier=None,
    ):
        super().__init__()
        self.output_size = output_size
        self.input_size = input_size
        self.z_dim = z_dim
        self.hidden_layers = list(hidden_layers)
        self.allow_broadcast = config_enum == "parallel"
        self.use_cuda = use_cuda
        self.aux_loss_multiplier = aux_loss_multiplier
        hidden = self.hidden_layers
        self.encoder_y = _layers([input_size, *hidden, output_size], nn.Softmax(dim=-1))
        self.encoder_z = _layers([input_size + output_size, *hidden, 2 * z_dim], None)
        self.decoder = _layers([z_dim + output_size, *hidden, input_size], nn.Sigmoid())
        if use_cuda:
            self.cuda()

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        options = dict(dtype=xs.dtype, device=xs.device)
        with pyro.plate("data"):
            prior_loc = torch.zeros(batch_size, self.z_dim, **options)
            prior_scale = torch.ones(batch_size, self.z_dim, **options)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            alpha_prior = torch.ones(batch_size, self.output_size, **options) / self.output_size
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            loc = self.decoder(_joined(zs, ys)).clamp(1e-6, 1 - 1e-6)
            pyro.sample("x", dist.Bernoulli(loc).to_event(1), obs=xs)
            return loc

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                alpha = self.encoder_y(xs)
                ys = pyro.sample("y", dist.OneHotCategorical(alpha))
            hidden = self.encoder_z(_joined(xs, ys))
            loc, raw_scale = hidden[..., : self.z_dim], hidden[..., self.z_dim :]
            scale = nn.functional.softplus(raw_scale) + 1e-3
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def classifier(self, xs):
        """One-hot rows of the most probable class under q(y|x)."""
        alpha = self.encoder_y(xs)
        _, index = torch.topk(alpha, 1)
        return torch.zeros_like(alpha).scatter_(1, index, 1.0)

    def model_classify(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data"):
            if ys is not None:
                alpha = self.encoder_y(xs)
                with poutine.scale(scale=self.aux_loss_multiplier):
                    pyro.sample("y_aux", dist.OneHotCategorical(alpha), obs=ys)

    def guide_classify(self, xs, ys=None):
        """Nothing is latent in the classification loss."""
