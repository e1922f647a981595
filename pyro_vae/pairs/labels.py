"""Class labels in training and evaluation: how a pair takes them, which points keep them,
how labelled and unlabelled batches interleave, and how well a guide's q(y|x) classifies.

A pair *takes labels* when its programs accept a second positional argument that defaults
to None, ``model(x, y=None)`` and ``guide(x, y=None)`` as in Pyro's semi-supervised VAE
example: labelled batches call them with ``y``, unlabelled batches with ``x`` alone. A pair
*needs labels* when that argument has no default (a conditional VAE, ``model(x, y)``): every
batch then carries its labels. A second argument with another default is a setting of the
program, not labels.

The *label site* of a pair is the model site that is observed when ``y`` is given and latent
when it is not (M2's ``y``); the guide's distribution there is q(y|x), whose argmax is the
pair's classifier.

References:
    Kingma, Rezende, Mohamed & Welling (2014), Semi-supervised Learning with Deep Generative
    Models (M2; alpha = 0.1 N weighs the classification loss).
    Sohn, Lee & Yan (2015), Learning Structured Output Representation using Deep Conditional
    Generative Models.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pyro import poutine

#: ``--label-encoding`` values: class indices of shape (B,), or one-hot rows of shape (B, C).
LABEL_ENCODINGS = ("index", "onehot")


class LabelError(ValueError):
    """Labels that cannot be used as asked; the message names the flag or the program."""


# ------------------------------------------------------------------------------------------
# The pair's signature


@dataclass(frozen=True)
class LabelArguments:
    """Whether a pair's programs take labels (a second argument) and whether they need them
    (that argument has no default)."""

    takes: bool
    needs: bool
    classifier: bool  # the pair defines model_classify and guide_classify


def _second_argument(program: Callable) -> inspect.Parameter | None:
    """The labels parameter of ``program``: its second positional parameter when that has no
    default (labels needed) or defaults to None (labels optional), else None. A second
    parameter with another default (``latent="z"``) is a setting, not labels; a wrapper
    taking ``*args`` (a handler around a program) says nothing, so it takes ``x`` alone."""
    try:
        parameters = list(inspect.signature(program).parameters.values())
    except (TypeError, ValueError):  # a builtin or a C callable: x only
        return None
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 or positional[1].default not in (inspect.Parameter.empty, None):
        return None
    return positional[1]


def label_arguments(pair: Any) -> LabelArguments:
    """How ``pair.model`` and ``pair.guide`` take labels, from their signatures.

    Both must agree: a model that takes ``y`` with a guide that does not (or the reverse) is
    a :class:`LabelError` naming the programs, since one of them would never see the labels.
    """
    seconds = {name: _second_argument(getattr(pair, name)) for name in ("model", "guide")}
    takes = {name: p is not None for name, p in seconds.items()}
    if takes["model"] != takes["guide"]:
        has, lacks = ("model", "guide") if takes["model"] else ("guide", "model")
        raise LabelError(
            f"the pair's {has} takes a second argument (labels) but its {lacks} does not: "
            f"give both the same signature, ({has}(x, y=None) and {lacks}(x, y=None) for "
            "labels that may be missing, (x, y) for labels every batch has)"
        )
    if not takes["model"]:
        return LabelArguments(False, False, False)
    needs = any(p.default is inspect.Parameter.empty for p in seconds.values())
    classifier = callable(getattr(pair, "model_classify", None)) and callable(
        getattr(pair, "guide_classify", None)
    )
    return LabelArguments(True, needs, classifier)


def program_args(x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The arguments of a pair's programs for one batch: ``(x,)`` or ``(x, y)``."""
    return (x,) if y is None else (x, y)


def with_labels(program: Callable, y: torch.Tensor) -> Callable:
    """``program(x, y)`` as a program of ``x`` alone, for one fixed batch whose labels are
    ``y``: tools that only ever call ``program(x)`` (``gradvar``) then work on a pair that
    needs labels. Only valid for the ``x`` that ``y`` belongs to."""

    def given_labels(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if x.shape[0] != y.shape[0]:
            raise LabelError(
                f"labels for {y.shape[0]} points were bound to the program, "
                f"but it was called with {x.shape[0]}"
            )
        return program(x, y, *args, **kwargs)

    return given_labels


# ------------------------------------------------------------------------------------------
# Encoding and choosing labels


def check_label_encoding(encoding: str) -> str:
    if encoding not in LABEL_ENCODINGS:
        raise LabelError(
            f"--label-encoding {encoding!r} is unknown; choose from {', '.join(LABEL_ENCODINGS)}"
        )
    return encoding


def encode_labels(
    labels: torch.Tensor, encoding: str, num_classes: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Class indices ``labels`` (N,) as the pair receives them: unchanged (``index``) or as
    one-hot rows of ``dtype`` (``onehot``, shape (N, num_classes))."""
    check_label_encoding(encoding)
    if encoding == "index":
        return labels
    return F.one_hot(labels, num_classes).to(dtype)


def select_labelled(
    labels: torch.Tensor, num_labelled: int, num_classes: int, seed: int
) -> torch.Tensor:
    """Indices of ``num_labelled`` points, the same number from every class, chosen at random
    with ``seed`` (the global RNG is not touched), sorted.

    ``num_labelled`` must be a multiple of ``num_classes`` and at most the size of the set,
    and every class must have enough points; otherwise a :class:`LabelError` says what fits.
    """
    num_points = labels.shape[0]
    if num_labelled < 1:
        raise LabelError(f"--num-labelled {num_labelled}: must be at least 1")
    if num_labelled > num_points:
        raise LabelError(
            f"--num-labelled {num_labelled}: the training set has only {num_points} points; "
            f"choose at most {num_points}"
        )
    if num_labelled % num_classes:
        lower = num_labelled - num_labelled % num_classes
        raise LabelError(
            f"--num-labelled {num_labelled}: the labelled points are balanced over the "
            f"{num_classes} classes, so the number must divide among them; try "
            f"{lower or num_classes} or {lower + num_classes}"
        )
    per_class = num_labelled // num_classes
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    cpu_labels = labels.cpu()
    for label in range(num_classes):
        members = torch.nonzero(cpu_labels == label).flatten()
        if members.numel() < per_class:
            raise LabelError(
                f"--num-labelled {num_labelled}: {per_class} labels per class are needed, but "
                f"class {label} has only {members.numel()} training points; choose at most "
                f"{members.numel() * num_classes}"
            )
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


# ------------------------------------------------------------------------------------------
# The epoch: unlabelled and labelled batches interleaved


@dataclass(frozen=True)
class EpochPlan:
    """How a training epoch walks the training points: every unlabelled point once, in
    batches of ``batch_size`` (shuffled by the caller, as ever), and ``labelled_batches``
    labelled batches spread evenly among them.

    Step t of an epoch of T = U + L steps (U unlabelled and L labelled batches) is labelled
    when floor((t + 1) L / T) > floor(t L / T): the labelled batches fall at even intervals,
    one every T / L steps (Pyro's semi-supervised example puts one every
    ``periodic_interval_batches``). Labelled batches hold min(batch_size, #labelled) points
    and walk the labelled points in passes, each pass in a fresh order drawn from its own
    seeded generator, so a resumed run draws the same batches without saving an order.
    """

    unlabelled: torch.Tensor  # indices into the training set
    labelled: torch.Tensor
    batch_size: int
    drop_last: bool
    labelled_batches: int
    seed: int

    @property
    def unlabelled_batches(self) -> int:
        count = self.unlabelled.numel()
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    @property
    def labelled_batch_size(self) -> int:
        return min(self.batch_size, self.labelled.numel())

    @property
    def batches_per_pass(self) -> int:
        """Labelled batches in one pass over the labelled points."""
        count, size = self.labelled.numel(), self.labelled_batch_size
        if size == 0:
            return 0
        return count // size if self.drop_last else math.ceil(count / size)

    @property
    def steps(self) -> int:
        return self.unlabelled_batches + self.labelled_batches

    def labelled_before(self, step: int) -> int:
        """How many of the epoch's first ``step`` steps are labelled."""
        if self.labelled_batches == 0:
            return 0
        return step * self.labelled_batches // self.steps

    def is_labelled(self, step: int) -> bool:
        return self.labelled_before(step + 1) > self.labelled_before(step)

    def labelled_indices(self, index: int) -> torch.Tensor:
        """The training points of the run's ``index``-th labelled batch (counted over all
        epochs from 0)."""
        number, within = divmod(index, self.batches_per_pass)
        order = _pass_order(self.seed, number, self.labelled.numel())
        size = self.labelled_batch_size
        chosen = order[within * size : (within + 1) * size].to(self.labelled.device)
        return self.labelled[chosen]


@functools.lru_cache(maxsize=2)
def _pass_order(seed: int, number: int, count: int) -> torch.Tensor:
    """The order of pass ``number`` over ``count`` labelled points: its own generator, so
    drawing it never moves the global RNG (cached: every batch of a pass reads it)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + number + 1)
    return torch.randperm(count, generator=generator)


def epoch_plan(
    num_points: int,
    labelled: torch.Tensor | None,
    batch_size: int,
    *,
    drop_last: bool,
    labelled_batches: int | None,
    seed: int,
    device: torch.device | str = "cpu",
) -> EpochPlan:
    """The :class:`EpochPlan` of a training set of ``num_points`` of which the points
    ``labelled`` (indices; None: none) keep their labels. ``labelled_batches`` per epoch
    defaults to one pass over the labelled points; all points labelled means every batch is
    (one pass per epoch, whatever ``labelled_batches`` says)."""
    everything = torch.arange(num_points, device=device)
    if labelled is None or labelled.numel() == 0:
        empty = everything[:0]
        return EpochPlan(everything, empty, batch_size, drop_last, 0, seed)
    labelled = labelled.to(device)
    mask = torch.ones(num_points, dtype=torch.bool, device=device)
    mask[labelled] = False
    unlabelled = everything[mask]
    plan = EpochPlan(unlabelled, labelled, batch_size, drop_last, 0, seed)
    if labelled_batches is None or unlabelled.numel() == 0:
        labelled_batches = plan.batches_per_pass
    if labelled_batches < 1:
        raise LabelError(
            f"--labelled-batches {labelled_batches}: must be at least 1 (labelled batches "
            "per epoch)"
        )
    if plan.batches_per_pass == 0:
        raise LabelError(
            f"--drop-last with {labelled.numel()} labelled points leaves no labelled batch; "
            "drop --drop-last or label more points"
        )
    return EpochPlan(unlabelled, labelled, batch_size, drop_last, labelled_batches, seed)


# ------------------------------------------------------------------------------------------
# The label site and the classifier q(y|x)


def find_label_site(model: Callable, x: torch.Tensor, y: torch.Tensor) -> str | None:
    """The model site observed when the model is called with labels and latent without them
    (M2's ``y``), or None (a conditional pair, where ``y`` is an input, not a site)."""
    with torch.no_grad():
        labelled = poutine.trace(model).get_trace(x, y)
        try:
            unlabelled = poutine.trace(model).get_trace(x)
        except Exception:
            return None
    for name, site in labelled.nodes.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        other = unlabelled.nodes.get(name)
        if other is not None and other["type"] == "sample" and not other["is_observed"]:
            return name
    return None


def class_probabilities(fn: Any) -> torch.Tensor:
    """The class probabilities (..., C) of a guide's distribution at a discrete site:
    ``probs`` of a Categorical or OneHotCategorical, else normalized over its support."""
    base = fn
    while hasattr(base, "base_dist"):  # Independent, MaskedDistribution, ...
        base = base.base_dist
    probs = getattr(base, "probs", None)
    if probs is not None and probs.dim() >= 1:
        return probs
    support = fn.enumerate_support(expand=False)
    log_probs = fn.log_prob(support)  # (C, ...)
    return torch.softmax(log_probs, dim=0).movedim(0, -1)


def guide_class_probabilities(
    guide: Callable, x: torch.Tensor, site: str, batch_size: int = 500
) -> torch.Tensor:
    """q(y|x) at the guide's discrete ``site`` for every row of ``x``, shape (N, C): the
    guide is traced without labels, ``batch_size`` points at a time, under no_grad (put the
    pair's modules in eval mode around it)."""
    parts = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            trace = poutine.trace(guide).get_trace(x[start : start + batch_size])
            if site not in trace.nodes:
                raise LabelError(
                    f"the guide, called without labels, has no site {site!r}: it cannot "
                    "classify; sample the label site in the guide when y is None"
                )
            probs = class_probabilities(trace.nodes[site]["fn"])
            parts.append(probs.reshape(-1, probs.shape[-1]))
    return torch.cat(parts)


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of points whose most probable class is their label."""
    return float((probs.argmax(-1) == labels.to(probs.device)).double().mean())


def cluster_accuracy(clusters: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Unsupervised cluster accuracy: clusters mapped to classes, then the fraction right.

    With no more clusters than classes, each cluster gets its own class by the best
    one-to-one matching (Hungarian algorithm on the contingency table); with more clusters,
    each cluster gets its majority class (several clusters may share one), the usual rule
    for over-clustering.
    """
    from scipy.optimize import linear_sum_assignment

    clusters, labels = np.asarray(clusters, dtype=int), np.asarray(labels, dtype=int)
    num_clusters = int(max(clusters.max(initial=0) + 1, 1))
    num_classes = int(max(labels.max(initial=0) + 1, 1))
    table = np.zeros((num_clusters, num_classes), dtype=np.int64)
    np.add.at(table, (clusters, labels), 1)
    if num_clusters <= num_classes:
        rows, cols = linear_sum_assignment(-table)
        mapping = dict(zip(rows.tolist(), cols.tolist()))
        rule = "one-to-one (Hungarian)"
    else:
        mapping = {c: int(table[c].argmax()) for c in range(num_clusters)}
        rule = "majority class per cluster"
    predicted = np.array([mapping.get(c, -1) for c in clusters])
    return {
        "cluster_accuracy": float((predicted == labels).mean()),
        "cluster_to_class": {str(c): int(k) for c, k in sorted(mapping.items())},
        "matching": rule,
    }


# ------------------------------------------------------------------------------------------
# The labels of a training run


@dataclass(frozen=True)
class TrainingLabels:
    """The labels a run trains and validates with, as its pair receives them.

    ``train`` holds the encoded labels of every training point (only those in ``labelled``
    are ever used), ``valid`` those of the validation split and ``valid_classes`` its class
    indices (for accuracy). All None for a pair that takes no labels, or trains without them.
    """

    train: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    valid_classes: torch.Tensor | None = None
    labelled: torch.Tensor | None = None
    num_labelled: int | None = None
    num_classes: int | None = None

    @property
    def used(self) -> bool:
        return self.train is not None

    def encoded(self, encoding: str, dtype: torch.dtype) -> TrainingLabels:
        """These labels, made from class indices (``index``), as ``encoding`` gives them to
        the pair (see :func:`encode_labels`)."""
        if not self.used or encoding == "index":
            return self
        return replace(
            self,
            train=encode_labels(self.train, encoding, self.num_classes, dtype),
            valid=encode_labels(self.valid_classes, encoding, self.num_classes, dtype),
        )


def training_labels(
    data: Any,
    arguments: LabelArguments,
    *,
    num_labelled: int | None,
    encoding: str,
    train_count: int,
    seed: int,
    log: Callable[[str], None],
) -> TrainingLabels:
    """Which labels a run trains with: all of the first ``train_count`` training points'
    (``num_labelled`` None), or ``num_labelled`` of them, balanced over the classes; 0 trains
    a pair whose labels are optional unsupervised (the validation labels then only measure
    its q(y|x)).

    ``data`` is a :class:`~pyro_vae.data.Dataset`. Labels asked for where the pair takes
    none, or where the data set has none, are an error naming the flag; a pair whose labels
    are optional trains unsupervised on a data set without labels, with a note.
    """
    if not arguments.takes:
        if num_labelled is not None:
            raise LabelError(
                f"--num-labelled {num_labelled}: the pair's programs take no labels (they are "
                "model(x) and guide(x)); a pair uses labels through a second argument, "
                "model(x, y=None) and guide(x, y=None), as in Pyro's semi-supervised VAE"
            )
        return TrainingLabels()
    if data.labels is None and not arguments.needs and num_labelled in (None, 0):
        log(
            f"note: data set {data.name!r} has no labels: the pair's programs are called "
            "without y, so it trains unsupervised"
        )
        return TrainingLabels()
    classes = data.split_labels("train")[:train_count]  # a DataError where there are none
    count = train_count if num_labelled is None else num_labelled
    if count > train_count:
        raise LabelError(
            f"--num-labelled {count}: the training set has only {train_count} points; "
            f"choose at most {train_count}"
        )
    if arguments.needs and count < train_count:
        raise LabelError(
            f"--num-labelled {count}: the pair needs labels on every batch (its programs "
            "take y without a default), so every training point must keep its label; drop "
            "--num-labelled, or give y a default of None so that unlabelled batches can run"
        )
    if count == train_count:
        labelled = torch.arange(train_count, device=classes.device)
    elif count == 0:  # unsupervised: the labels only measure q(y|x) on the validation split
        labelled = torch.arange(0, device=classes.device)
    else:
        labelled = select_labelled(classes, count, data.num_classes, seed).to(classes.device)
    dtype = data.train.dtype
    valid_classes = data.split_labels("valid")
    return TrainingLabels(
        train=encode_labels(classes, encoding, data.num_classes, dtype),
        valid=encode_labels(valid_classes, encoding, data.num_classes, dtype),
        valid_classes=valid_classes,
        labelled=labelled,
        num_labelled=count,
        num_classes=data.num_classes,
    )
