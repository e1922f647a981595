"""Small neural-network building blocks shared by the models and guides.

Every helper here accepts inputs with arbitrary leading batch dimensions, because Pyro's
vectorized particles (``Trace_ELBO(vectorize_particles=True)``) hand decoders latents of
shape ``(num_particles, batch, z_dim)`` while the data keep shape ``(batch, x_dim)``, and
parallel enumeration (``TraceEnum_ELBO``) hands them discrete values with extra dims on the
left, e.g. a one-hot label of shape ``(C, 1, C)``; `broadcast_cat` joins such inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "CropImage",
    "GaussianHead",
    "activation_layer",
    "apply_flat",
    "broadcast_cat",
    "check_flat_data",
    "labels_for_batch",
    "mlp",
    "one_hot_labels",
]

#: Activation name -> module class; the one table that `mlp` and the conv nets read.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module looked up by name in `ACTIVATIONS`."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        choices = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"unknown activation {name!r}; choose one of: {choices}") from None


def mlp(
    sizes: Sequence[int], activation: str = "tanh", final_activation: bool = False
) -> nn.Sequential:
    """A multilayer perceptron ``Linear -> act -> ... -> Linear`` through the given widths.

    ``sizes = (784, 200, 200, 50)`` gives three linear layers with the activation between
    them; ``final_activation=True`` appends one more activation after the last layer (for a
    trunk that feeds separate output heads).
    """
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least an input and an output size, got sizes={sizes}")
    activation_layer(activation)  # fail early, with the list of choices
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(activation_layer(activation))
    return nn.Sequential(*layers)


def apply_flat(net: nn.Module, inputs: Tensor, event_dim: int = 1) -> Tensor:
    """Run ``net`` over the last ``event_dim`` dims of ``inputs``, any leading dims kept.

    Conv layers accept exactly one batch dim, so the leading dims ``(..., )`` are flattened
    into one, the net is run, and the output is reshaped to ``(..., *net_output_event)``.
    """
    if inputs.dim() < event_dim:
        raise ValueError(
            f"apply_flat: input of shape {tuple(inputs.shape)} has fewer than "
            f"event_dim={event_dim} dims"
        )
    batch_shape = inputs.shape[: inputs.dim() - event_dim]
    event_shape = inputs.shape[inputs.dim() - event_dim :]
    outputs = net(inputs.reshape(-1, *event_shape))
    return outputs.reshape(*batch_shape, *outputs.shape[1:])


class GaussianHead(nn.Module):
    """Linear map to the location and positive scale of a diagonal Gaussian.

    ``loc = W_1 h + b_1``, ``scale = softplus(W_2 h + b_2) + min_scale``.

    Softplus rather than exp keeps the scale from overflowing early in training, and the
    floor ``min_scale`` stops a Gaussian density from collapsing onto a single point.
    """

    def __init__(self, in_features: int, out_features: int, min_scale: float = 1e-3) -> None:
        super().__init__()
        if min_scale < 0:
            raise ValueError(f"GaussianHead: min_scale must be >= 0, got {min_scale}")
        self.loc = nn.Linear(in_features, out_features)
        self.raw_scale = nn.Linear(in_features, out_features)
        self.min_scale = min_scale

    def forward(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        return self.loc(hidden), F.softplus(self.raw_scale(hidden)) + self.min_scale


class CropImage(nn.Module):
    """Keep the top-left ``height x width`` pixels of an image batch ``(N, C, H', W')``."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height = height
        self.width = width

    def forward(self, images: Tensor) -> Tensor:
        return images[..., : self.height, : self.width]


def check_flat_data(x: Tensor, x_dim: int, owner: str) -> None:
    """Raise a readable error unless ``x`` is a flattened data batch of shape ``(B, x_dim)``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[-1] != x_dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"{owner} expects data x of shape (batch, {x_dim}) (images flattened to one "
            f"dim), got {shape}; reshape with x.reshape(x.shape[0], -1) or build the "
            f"network with the data's x_dim"
        )


def broadcast_cat(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate along the last dim after broadcasting all the other dims against each other.

    ``torch.cat`` needs equal leading dims; the inputs of a network that meet inside a Pyro
    program do not have them. Data ``x`` of shape ``(B, D)`` and a label ``y`` enumerated in
    parallel, of shape ``(C, 1, C)``, give ``(C, B, D + C)``: entry ``[k, b]`` is
    ``[x[b], y[k, 0]]``. Likewise latents ``(P, B, Z)`` from vectorized particles with
    ``(B, C)`` labels give ``(P, B, Z + C)``. Leading dims follow ``torch.broadcast_shapes``.
    """
    tensors = list(tensors)
    if not tensors:
        raise ValueError("broadcast_cat needs at least one tensor")
    if any(tensor.dim() == 0 for tensor in tensors):
        raise ValueError("broadcast_cat: every input needs a last dim to concatenate along")
    shapes = [tuple(tensor.shape) for tensor in tensors]
    try:
        batch_shape = torch.broadcast_shapes(*(shape[:-1] for shape in shapes))
    except RuntimeError:
        raise ValueError(
            f"broadcast_cat: leading dims of the shapes {shapes} do not broadcast"
        ) from None
    return torch.cat([tensor.expand(*batch_shape, tensor.shape[-1]) for tensor in tensors], -1)


def one_hot_labels(y: Tensor, num_classes: int, dtype: torch.dtype, owner: str) -> Tensor:
    """Class labels as one-hot floats of shape ``(..., num_classes)`` and the given dtype.

    ``y`` holds either integer class indices, shape ``(...)``, or one-hot (or soft) floats,
    shape ``(..., num_classes)``, which pass through cast to ``dtype``.
    """
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{owner} expects labels y as a tensor, got {type(y).__name__}")
    if torch.is_floating_point(y):
        if y.dim() == 0 or y.shape[-1] != num_classes:
            raise ValueError(
                f"{owner}: floating-point labels y must be one-hot of shape (..., {num_classes}), "
                f"got {tuple(y.shape)}; pass class indices as an integer tensor instead"
            )
        return y.to(dtype)
    if y.dtype == torch.bool or y.is_complex():
        raise ValueError(
            f"{owner}: labels y must be integer class indices or one-hot floats, got {y.dtype}"
        )
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"{owner}: class indices y must lie in [0, {num_classes}), got values from "
            f"{int(y.min())} to {int(y.max())}; build the network with num_classes set to the "
            f"data's number of classes"
        )
    return F.one_hot(y.long(), num_classes).to(dtype)


def labels_for_batch(y: Tensor, x: Tensor, num_classes: int, owner: str) -> Tensor:
    """The labels of the data batch ``x`` (B, D) as one-hot floats (B, num_classes), x's dtype.

    Accepts int class indices of shape ``(B,)`` or one-hot floats of shape
    ``(B, num_classes)``; anything else raises an error that names ``owner``.
    """
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{owner} expects labels y as a tensor, got {type(y).__name__}")
    expected = (x.shape[0], num_classes) if torch.is_floating_point(y) else (x.shape[0],)
    if tuple(y.shape) != expected:
        raise ValueError(
            f"{owner} expects labels y for a batch of {x.shape[0]}: int class indices of shape "
            f"({x.shape[0]},) or one-hot floats of shape ({x.shape[0]}, {num_classes}), "
            f"got {tuple(y.shape)}"
        )
    return one_hot_labels(y, num_classes, x.dtype, owner)
