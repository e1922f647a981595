"""The semi-supervised M2 VAE as Pyro's ss-vae example writes it, for tests: a class with
``model(xs, ys=None)`` and ``guide(xs, ys=None)``, one-hot labels observed with
``OneHotCategorical``, an unsized ``pyro.plate("data")``, the classifier's extra loss as
``model_classify``/``guide_classify``, ``pyro.module("ss_vae", self)`` and the MLP helper
imported from a sibling module. Its constructor names the sizes Pyro's way: ``output_size``
(the classes), ``input_size`` (the pixels), ``aux_loss_multiplier``.

Sites: "y" (OneHotCategorical, observed when ys is given, sampled by the guide otherwise),
"z" (Normal, event 1), "x" (Bernoulli, event 1), all in plate "data" (dim -1, no size).
"""

import pyro
import pyro.distributions as dist
import torch
from networks import MLP
from torch import nn


class SSVAE(nn.Module):
    def __init__(
        self,
        output_size=10,
        input_size=784,
        z_dim=50,
        hidden_layers=(500,),
        aux_loss_multiplier=None,
    ):
        super().__init__()
        self.output_size = output_size
        self.input_size = input_size
        self.z_dim = z_dim
        self.hidden_layers = hidden_layers
        self.aux_loss_multiplier = aux_loss_multiplier
        hidden = list(hidden_layers)
        self.encoder_y = MLP([input_size, *hidden, output_size], output_activation=nn.Softmax)
        self.encoder_z = MLP(
            [input_size + output_size, *hidden, [z_dim, z_dim]],
            output_activation=[None, nn.Softplus],
        )
        self.decoder = MLP([z_dim + output_size, *hidden, input_size], output_activation=nn.Sigmoid)

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
            loc = self.decoder([zs, ys]).clamp(1e-6, 1 - 1e-6)
            pyro.sample("x", dist.Bernoulli(loc).to_event(1), obs=xs)
            return loc

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                alpha = self.encoder_y(xs)
                ys = pyro.sample("y", dist.OneHotCategorical(alpha))
            loc, scale = self.encoder_z([xs, ys])
            pyro.sample("z", dist.Normal(loc, scale + 1e-3).to_event(1))

    def classifier(self, xs):
        alpha = self.encoder_y(xs)
        res, ind = torch.topk(alpha, 1)
        return torch.zeros_like(alpha).scatter_(1, ind, 1.0)

    def model_classify(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data"):
            if ys is not None:
                alpha = self.encoder_y(xs)
                with pyro.poutine.scale(scale=self.aux_loss_multiplier or 1.0):
                    pyro.sample("y_aux", dist.OneHotCategorical(alpha), obs=ys)

    def guide_classify(self, xs, ys=None):
        pass
