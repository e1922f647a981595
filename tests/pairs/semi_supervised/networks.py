"""The small network helpers that ss_vae.py imports from its sibling module, written the way
Pyro's semi-supervised example keeps its MLP in a utils file: a list of inputs is joined
along the last dim after broadcasting the others (an enumerated one-hot y is (C, 1, C) while
x is (B, D)), hidden layers, and an output layer that may split into several heads."""

import torch
from torch import nn


def join(inputs):
    """Concatenate tensors along the last dim, broadcasting every dim but that one."""
    if not isinstance(inputs, (list, tuple)):
        return inputs
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in inputs))
    return torch.cat([t.expand(*shape, t.shape[-1]) for t in inputs], dim=-1)


class MLP(nn.Module):
    """sizes = [input, hidden..., output]; output an int (one head) or a list (several);
    output activations per head: None, nn.Softmax, nn.Sigmoid or nn.Softplus."""

    def __init__(self, sizes, activation=nn.Softplus, output_activation=None):
        super().__init__()
        *body, output = sizes
        layers = []
        for a, b in zip(body[:-1], body[1:]):
            layers += [nn.Linear(a, b), activation()]
        self.body = nn.Sequential(*layers)
        outputs = output if isinstance(output, (list, tuple)) else [output]
        self.heads = nn.ModuleList(nn.Linear(body[-1], size) for size in outputs)
        if not isinstance(output_activation, (list, tuple)):
            output_activation = [output_activation] * len(outputs)
        self.output_activation = [
            None if act is None else (act(dim=-1) if act is nn.Softmax else act())
            for act in output_activation
        ]
        self.single = not isinstance(output, (list, tuple))

    def forward(self, inputs):
        hidden = self.body(join(inputs))
        results = []
        for head, act in zip(self.heads, self.output_activation):
            value = head(hidden)
            results.append(value if act is None else act(value))
        return results[0] if self.single else results
