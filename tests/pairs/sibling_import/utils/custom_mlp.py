"""A small configurable MLP, in the spirit of the ``utils.custom_mlp.MLP`` of Pyro's ss-vae.

``MLP([in, hidden, ..., out], activation=nn.Softplus)`` stacks Linear layers with the
activation between them (none after the last); ``split`` cuts the output in equal parts.
"""

from torch import nn


class MLP(nn.Module):
    def __init__(self, sizes, activation=nn.Softplus, split=1):
        super().__init__()
        self.sizes = sizes
        self.split = split
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(activation())
        self.net = nn.Sequential(*layers)

    def forward(self, inputs):
        out = self.net(inputs)
        return out if self.split == 1 else out.chunk(self.split, dim=-1)
