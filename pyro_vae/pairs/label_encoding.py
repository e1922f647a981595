"""How a pair takes its labels, tried on the probe batch before training: the label encoding
(``--label-encoding auto`` tries class indices, then one-hot rows, and keeps the first that
the pair's programs accept) and the pair's classification loss (``model_classify`` and
``guide_classify``, run once, so that a failure names the method and the way out before the
first step instead of at the first labelled batch).

Pyro's semi-supervised example (``examples/vae/ss_vae_M2.py``) observes one-hot labels and
adds its classification loss only when given ``--aux-loss``, scaled by
``aux_loss_multiplier`` (None by default, which ``poutine.scale`` refuses); a pair written
that way trains here with ``--classify-loss off``, or with a multiplier in ``--pair-kwargs``.

References:
    Kingma, Rezende, Mohamed & Welling (2014), Semi-supervised Learning with Deep Generative
    Models (M2; the classification loss weighed by alpha = 0.1 N).
"""

from __future__ import annotations

import inspect
import json
import traceback
from collections.abc import Callable
from typing import Any

import pyro
import pyro.util
import torch
from pyro import poutine

from pyro_vae.pairs.check import PairInfo, check_pair
from pyro_vae.pairs.errors import PairError
from pyro_vae.pairs.labels import LABEL_ENCODINGS, LabelError, encode_labels
from pyro_vae.pairs.networks import evaluation_mode

#: ``--label-encoding`` values: ``auto`` (the default) chooses one of :data:`LABEL_ENCODINGS`.
LABEL_ENCODING_CHOICES = ("auto", *LABEL_ENCODINGS)

#: ``--classify-loss`` values; unset, it is ``on`` for a pair that defines ``model_classify``
#: and ``guide_classify`` and trains with labelled points.
CLASSIFY_LOSS_CHOICES = ("on", "off")

#: The multiplier a message suggests for a classification loss left without one: the value
#: Pyro's semi-supervised example passes on MNIST.
SUGGESTED_MULTIPLIER = 46

_SHAPES = {"index": "class indices of shape {index}", "onehot": "one-hot rows of shape {onehot}"}


def describe_encoding(encoding: str, batch: int, num_classes: int) -> str:
    """``index`` -> 'class indices of shape (B,)', ``onehot`` -> 'one-hot rows of shape
    (B, C)', for a batch of ``batch`` points and ``num_classes`` classes."""
    return _SHAPES[encoding].format(index=(batch,), onehot=(batch, num_classes))


def resolve_classify_loss(
    requested: str | None, classifier: bool, labels_used: bool, num_labelled: int | None
) -> str | None:
    """Whether a run trains the pair's classification loss: ``requested`` (``on``, ``off``,
    or None for the default) for a pair that defines ``model_classify``/``guide_classify``
    (``classifier``) and trains with ``num_labelled`` labelled points (``labels_used``).

    The default is ``on`` where the loss can train and ``off`` where the pair defines it but
    no point keeps its label; None where the pair has none. ``on`` where it cannot train is a
    :class:`~pyro_vae.pairs.labels.LabelError` that says why.
    """
    if requested not in (None, *CLASSIFY_LOSS_CHOICES):
        raise LabelError(
            f"--classify-loss {requested!r}: choose from {', '.join(CLASSIFY_LOSS_CHOICES)}"
        )
    if requested == "on" and not classifier:
        raise LabelError(
            "--classify-loss on: the pair defines no classification loss (methods "
            "model_classify(x, y) and guide_classify(x, y), as in Pyro's semi-supervised "
            "example); define both, or drop --classify-loss"
        )
    trainable = classifier and labels_used and num_labelled != 0
    if requested == "on" and not trainable:
        why = (
            "--num-labelled 0 leaves no labelled batch to train it on"
            if num_labelled == 0
            else "the run has no labels to train it on (a data set without labels)"
        )
        raise LabelError(f"--classify-loss on: {why}; drop --classify-loss or give labels")
    if requested is not None:
        return requested
    if not classifier:
        return None
    return "on" if trainable else "off"


# ------------------------------------------------------------------------------------------
# The classification loss, run once


def check_classifier(
    pair: Any, x: torch.Tensor, y: torch.Tensor, encoding: str, num_classes: int
) -> None:
    """Run ``guide_classify(x, y)`` and ``model_classify(x, y)`` once as Trace_ELBO runs them
    (the model replayed on the guide's trace, log-densities computed), in eval mode, without
    gradients and with the RNG left as it was. A failure is a :class:`PairError` naming the
    method, the error, and the way out: ``--classify-loss off``, or, for a ``poutine.scale``
    given no scale (Pyro's M2 with ``aux_loss_multiplier=None``), a multiplier in
    ``--pair-kwargs``."""
    state = _rng_state(x)
    try:
        with evaluation_mode(pair), torch.no_grad():
            method = "guide_classify"
            guide_trace = poutine.trace(pair.guide_classify).get_trace(x, y)
            guide_trace.compute_log_prob()
            method = "model_classify"
            replayed = poutine.replay(pair.model_classify, trace=guide_trace)
            model_trace = poutine.trace(replayed).get_trace(x, y)
            model_trace.compute_log_prob()
    except Exception as error:
        labels = describe_encoding(encoding, x.shape[0], num_classes)
        raise PairError(_classifier_message(pair, method, error, x, labels)) from error
    finally:
        _set_rng_state(state)
    for name, site in model_trace.nodes.items():
        log_prob = site.get("log_prob") if site["type"] == "sample" else None
        if log_prob is not None and not torch.isfinite(log_prob).all():
            raise PairError(
                f"model_classify site {name!r}: log-density is not finite on the probe batch "
                f"(labels as {describe_encoding(encoding, x.shape[0], num_classes)}); fix "
                "the classifier's outputs, or train without the classification loss: "
                "--classify-loss off"
            )


def _classifier_message(pair: Any, method: str, error: Exception, x: torch.Tensor,
                        labels: str) -> str:  # fmt: skip
    message = (
        f"{method} failed on the probe batch ({x.shape[0]} labelled points, labels as "
        f"{labels}): {type(error).__name__}: {_first_part(str(error))}. The pair defines "
        "model_classify and guide_classify, so its classification loss trains on every "
        "labelled batch (--classify-loss on is the default for such a pair)"
    )
    scale = _scale_given(error)
    if scale is not _NOT_SCALE:
        unset = _unset_arguments(pair)
        if unset:
            name = unset[0]
            example = json.dumps({name: SUGGESTED_MULTIPLIER})
            named = " or ".join(unset)
            return (
                f"{message}. The error is poutine.scale refusing scale={scale!r}: the pair's "
                f"{named} is None, as its constructor leaves it. Pass a multiplier in "
                f"--pair-kwargs, e.g. '{example}' ({SUGGESTED_MULTIPLIER} is what Pyro's "
                "semi-supervised example passes), or train without the classification "
                "loss: --classify-loss off"
            )
        return (
            f"{message}. The error is poutine.scale refusing scale={scale!r} (it needs a "
            f"number > 0): give {method}'s scale a value, or train without the classification "
            "loss: --classify-loss off"
        )
    return f"{message}. Fix {method}, or train without the classification loss: --classify-loss off"


_NOT_SCALE = object()


def _scale_given(error: Exception) -> Any:
    """The ``scale`` that ``poutine.scale`` refused, where ``error`` was raised there (None,
    0, a negative number), else ``_NOT_SCALE``."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_filename.endswith("scale_messenger.py") and "scale" in frame.f_locals:
            return frame.f_locals["scale"]
    return _NOT_SCALE


def _unset_arguments(pair: Any) -> list[str]:
    """The pair's constructor arguments that default to None and are still None on the pair
    (``self.name``): the likely source of a missing scale. Names of a multiplier, scale or
    weight first (only the order of the advice depends on the names)."""
    try:
        parameters = inspect.signature(type(pair)).parameters.values()
    except (TypeError, ValueError):
        return []
    unset = [
        p.name
        for p in parameters
        if p.default is None and p.name in vars(pair) and getattr(pair, p.name) is None
    ]
    weighty = ("multiplier", "scale", "weight")
    return sorted(unset, key=lambda name: not any(word in name for word in weighty))


def _first_part(message: str) -> str:
    """An error message without the trace-shape table Pyro appends to it."""
    return message.split("\nTrace Shapes:")[0].strip().rstrip(":")


def _rng_state(x: torch.Tensor) -> dict[str, Any]:
    state = pyro.util.get_rng_state()
    if x.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(x.device)
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    pyro.util.set_rng_state(state)
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


# ------------------------------------------------------------------------------------------
# The label encoding


def choose_label_encoding(
    pair: Any,
    x: torch.Tensor,
    classes: torch.Tensor,
    num_classes: int,
    *,
    requested: str,
    classify: bool,
    log: Callable[[str], None],
    points: Any = None,
    point_classes: torch.Tensor | None = None,
) -> tuple[str, PairInfo]:
    """The label encoding a pair's programs take, and :func:`check_pair`'s report with it.

    ``x`` is the probe batch and ``classes`` its class indices. ``requested`` ``auto`` tries
    ``index``, then ``onehot``, with :func:`check_pair` (model and guide, with and without
    labels) and keeps the first that passes, with a note on ``log``; a failed try leaves the
    RNG as it was, so the run is the one the chosen encoding would give when named. Where
    ``classify``, the classification loss is then run with the chosen labels
    (:func:`check_classifier`). Neither encoding passing is a :class:`PairError` that shows
    both failures; a named encoding that fails where the other passes says so. ``points``
    and ``point_classes`` (class indices) go to :func:`check_pair` as ``points`` and
    ``point_labels``, encoded as tried (a guide that is not amortized).
    """
    if requested not in LABEL_ENCODING_CHOICES:
        raise LabelError(
            f"--label-encoding {requested!r}: choose from {', '.join(LABEL_ENCODING_CHOICES)}"
        )
    candidates = LABEL_ENCODINGS if requested == "auto" else (requested,)
    failures: dict[str, PairError] = {}

    def options(encoding: str) -> dict[str, Any]:
        if points is None:
            return {}
        labels = None
        if point_classes is not None:
            labels = encode_labels(point_classes, encoding, num_classes, x.dtype)
        return {"points": points, "point_labels": labels}

    for encoding in candidates:
        y = encode_labels(classes, encoding, num_classes, x.dtype)
        info = _try(pair, x, y, options(encoding))
        if isinstance(info, PairError):
            failures[encoding] = info
            continue
        if requested == "auto":
            log(_choice_note(encoding, failures, x.shape[0], num_classes))
        if classify:
            check_classifier(pair, x, y, encoding, num_classes)
        return encoding, info
    if requested == "auto":
        raise _neither(failures, x.shape[0], num_classes)
    (other,) = (e for e in LABEL_ENCODINGS if e != requested)
    error = failures[requested]
    other_labels = encode_labels(classes, other, num_classes, x.dtype)
    if isinstance(_try(pair, x, other_labels, options(other)), PairInfo):
        raise PairError(
            f"--label-encoding {requested}: the pair's programs fail with labels as "
            f"{describe_encoding(requested, x.shape[0], num_classes)}: {_first_part(str(error))}. "
            f"With {describe_encoding(other, x.shape[0], num_classes)} they run: pass "
            f"--label-encoding {other} (or auto, the default, which tries both)"
        ) from error
    raise error


def _try(pair: Any, x: torch.Tensor, y: torch.Tensor, options: dict) -> PairInfo | PairError:
    """:func:`check_pair` with labels ``y``, or its error; a failure leaves the RNG as it was
    (a pass draws what the check always drew)."""
    state = _rng_state(x)
    try:
        return check_pair(pair, x, y, **options)
    except PairError as error:
        _set_rng_state(state)
        return error


def _choice_note(encoding: str, failures: dict[str, PairError], batch: int, classes: int) -> str:
    note = (
        f"note: --label-encoding auto chose {encoding}: the pair's programs take labels as "
        f"{describe_encoding(encoding, batch, classes)}"
    )
    for tried, error in failures.items():
        note += f", not as {describe_encoding(tried, batch, classes)} ({_first_line(error)})"
    return note + "; recorded in config.toml"


def _first_line(error: Exception) -> str:
    return _first_part(str(error)).splitlines()[0]


def _neither(failures: dict[str, PairError], batch: int, num_classes: int) -> PairError:
    """The error of a pair that takes neither encoding: one error where both are the same
    (the failure is not about labels), else both."""
    messages = {encoding: _first_part(str(error)) for encoding, error in failures.items()}
    if len(set(messages.values())) == 1:
        return failures["index"]
    tried = "; ".join(
        f"with {describe_encoding(encoding, batch, num_classes)}: {message}"
        for encoding, message in messages.items()
    )
    return PairError(
        "--label-encoding auto: the pair's programs take neither label encoding on the probe "
        f"batch of {batch} points ({tried}). Make model(x, y) and guide(x, y) take y in one "
        "of these forms; --label-encoding index or onehot shows one failure alone"
    )
