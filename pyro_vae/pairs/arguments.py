"""Constructor arguments filled in from the data set (the size or shape of one data point,
the number of classes) and a user's pair factory called with them."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from pyro_vae.pairs.errors import PairError

#: Constructor arguments that name the number of classes of the labels; filled in from the
#: data set when a factory takes one and --pair-kwargs does not give it.
NUM_CLASSES_NAMES = ("num_classes", "n_classes", "num_labels", "label_dim", "y_dim")


#: Constructor arguments that name the size of one data point; filled in from the data set
#: when a user's pair asks for them and they are not in ``--pair-kwargs``.
INPUT_SIZE_NAMES = (
    "x_dim",
    "input_dim",
    "input_size",
    "in_features",
    "data_dim",
    "obs_dim",
    "vocab_size",
    "num_features",
    "num_pixels",
)
#: Constructor arguments that name the (C, H, W) shape of one data point.
INPUT_SHAPE_NAMES = ("image_shape", "input_shape", "x_shape")


def input_arguments(
    factory: Callable, image_shape: tuple, num_classes: int | None = None
) -> dict[str, Any]:
    """The arguments of :data:`INPUT_SIZE_NAMES` / :data:`INPUT_SHAPE_NAMES` (and, for
    labelled data, :data:`NUM_CLASSES_NAMES`) that ``factory`` takes, with their values for
    data of ``image_shape``."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    filled: dict[str, Any] = {}
    for name in parameters:
        if name in INPUT_SIZE_NAMES:
            filled[name] = math.prod(image_shape)
        elif name in INPUT_SHAPE_NAMES:
            filled[name] = tuple(image_shape)
        elif name in NUM_CLASSES_NAMES and num_classes is not None:
            filled[name] = int(num_classes)
    return filled


def _call_with_shape(
    factory: Callable, kwargs: dict, image_shape: tuple, spec: str, num_classes: int | None = None
) -> Any:
    """Call a user factory, filling the input-size arguments it asks for (see
    :data:`INPUT_SIZE_NAMES`) unless ``kwargs`` gives them."""
    kwargs = {**input_arguments(factory, image_shape, num_classes), **kwargs}
    try:
        return factory(**kwargs)
    except TypeError as error:
        raise PairError(
            f"--pair {spec!r} with --pair-kwargs {kwargs}: {error}. "
            f"Its signature is {spec.rpartition(':')[2]}{_signature(factory)}"
        ) from error


def _signature(obj: Callable) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"
