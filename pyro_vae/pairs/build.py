"""`build_pair`: a pair built from a built-in name, a ``FILE.py:NAME`` or
``package.module:NAME`` spec, or two program specs, its --pair-kwargs checked against what
the pair takes."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from pyro_vae.guides.flows import FLOWS
from pyro_vae.models.priors import PRIORS
from pyro_vae.pairs.arguments import (
    NUM_CLASSES_NAMES,
    _call_with_shape,
    _signature,
    input_arguments,
)
from pyro_vae.pairs.builtin import PAIRS
from pyro_vae.pairs.errors import PairError
from pyro_vae.pairs.loading import check_pair_factory, check_program, load_object
from pyro_vae.pairs.networks import FunctionPair

#: --pair-kwargs that choose a flow on the guide, and those that choose the model's prior.
FLOW_KWARGS = ("flow", "flow_steps", "flow_hidden")
PRIOR_KWARGS = ("prior", "prior_components")


def _taking(names: Sequence[str]) -> list[str]:
    """The built-in pairs whose factories take every argument of ``names``."""
    return [
        name for name, spec in PAIRS.items()
        if all(n in inspect.signature(spec.factory).parameters for n in names)
    ]  # fmt: skip


def _check_guide_and_prior_kwargs(pair: str, factory: Callable, pair_kwargs: dict) -> None:
    """A flow or prior setting given to a built-in pair whose guide or model has no such
    choice: say so, and which pairs do take it (instead of Python's unexpected keyword)."""
    taken = inspect.signature(factory).parameters
    for names, what in ((FLOW_KWARGS, f"normalizing flow on its guide ({', '.join(FLOWS)})"),
                        (PRIOR_KWARGS, f"choice of prior ({', '.join(PRIORS)})")):  # fmt: skip
        given = [name for name in names if name in pair_kwargs and name not in taken]
        if given:
            raise PairError(
                f"--pair {pair} does not take {given[0]!r} in --pair-kwargs: it has no {what}. "
                f"The pairs that take {given[0]!r}: {', '.join(_taking([given[0]]))}"
            )


#: --pair-kwargs of the built-in pairs whose default is None but that take a size when given.
_OPTIONAL_SIZES = {"prior_components": int, "flow_hidden": tuple}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_sizes(pair: str, factory: Callable, pair_kwargs: dict) -> None:
    """The sizes among a built-in pair's --pair-kwargs: an argument whose default is an
    integer (``z_dim``, ``num_classes``) takes an integer >= 1, one whose default is a tuple
    of widths (``hidden``, ``channels``) a list of integers >= 1. Else torch's message from
    deep in a layer (a negative dimension), or a model with no latent dimensions."""
    parameters = inspect.signature(factory).parameters
    for name, value in pair_kwargs.items():
        if name not in parameters:
            continue
        default = parameters[name].default
        kind = _OPTIONAL_SIZES.get(name) if default is None else type(default)
        if value is None and default is None:
            continue
        if kind is int and not isinstance(default, bool) and not _is_count(value):
            what = ("the number of latent dimensions" if name.endswith("_dim")
                    else "a layer width" if name.startswith("hidden") else "a count")  # fmt: skip
            raise PairError(
                f"--pair {pair} --pair-kwargs: {name} must be an integer >= 1 ({what}), got "
                f'{value!r}; e.g. {{"{name}": {default if default is not None else 10}}}'
            )
        if kind is tuple and not (
            isinstance(value, list | tuple) and all(_is_count(width) for width in value)
        ):
            example = list(default) if default else [200]
            raise PairError(
                f"--pair {pair} --pair-kwargs: {name} must be a list of layer widths, each an "
                f'integer >= 1, got {value!r}; e.g. {{"{name}": {example}}}'
                + (" ([] for none)" if default == () else "")
            )


def build_pair(
    image_shape: tuple[int, ...],
    pair: str | None = None,
    pair_kwargs: dict | None = None,
    model: str | None = None,
    guide: str | None = None,
    num_classes: int | None = None,
) -> Any:
    """Build a pair from a built-in name, a ``FILE.py:NAME``/``module:NAME`` spec, or two
    function specs ``model``/``guide``. ``num_classes`` (the data set's, if labelled) fills
    a factory argument of :data:`NUM_CLASSES_NAMES` that ``pair_kwargs`` does not give."""
    pair_kwargs = dict(pair_kwargs or {})
    if model or guide:
        if pair:
            raise PairError("give either --pair or --model/--guide, not both")
        if not (model and guide):
            missing = "--guide" if model else "--model"
            raise PairError(f"--model and --guide go together; {missing} is missing")
        model_fn = load_object(model, flag="--model")
        check_program(model_fn, model, "--model")
        guide_fn = load_object(guide, flag="--guide")
        check_program(guide_fn, guide, "--guide")
        return FunctionPair(model_fn, guide_fn)
    if pair is None:
        raise PairError(f"no pair given: use --pair NAME (built-in: {', '.join(PAIRS)})")
    if pair in PAIRS:
        factory = PAIRS[pair].factory
        filled = input_arguments(factory, image_shape, num_classes)
        pair_kwargs = {**{k: v for k, v in filled.items() if k in NUM_CLASSES_NAMES},
                       **pair_kwargs}  # fmt: skip
        _check_guide_and_prior_kwargs(pair, factory, pair_kwargs)
        _check_sizes(pair, factory, pair_kwargs)
        try:
            return factory(tuple(image_shape), **pair_kwargs)
        except ValueError as error:
            raise PairError(f"--pair {pair} --pair-kwargs {pair_kwargs}: {error}") from error
        except TypeError as error:
            raise PairError(
                f"--pair {pair} does not take --pair-kwargs {pair_kwargs}: {error}. "
                f"It takes {_signature(factory)}"
            ) from error
    if ":" not in pair:
        raise PairError(
            f"unknown pair {pair!r}: built-in pairs are {', '.join(PAIRS)}; "
            "a pair of your own is FILE.py:NAME or package.module:NAME"
        )
    obj = load_object(pair)
    check_pair_factory(obj, pair)
    built = (
        _call_with_shape(obj, pair_kwargs, image_shape, pair, num_classes) if callable(obj) else obj
    )
    if not (callable(getattr(built, "model", None)) and callable(getattr(built, "guide", None))):
        raise PairError(
            f"--pair {pair!r} built a {type(built).__name__}, which lacks methods model(x) and "
            "guide(x); a pair is a class or factory whose instance has both"
        )
    return built
