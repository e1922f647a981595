"""Guides that are not amortized: per-point ``pyro.param``s and the handler that lines them
up with a batch.

A guide such as the sparse gamma deep exponential family's keeps one row of variational
parameters per training point, ``pyro.param("alpha_z_q", init, constraint=positive)`` of
shape ``(N, K)``, and uses them inside ``with pyro.plate("data", x.shape[0]):``. Such a
guide traces only on a batch of all N points, in order. :class:`LocalParams` makes it trace
on any batch: given the batch's indices into the N points, it selects the same rows of every
per-point parameter, as ``pyro.plate("data", N, subsample=idx)`` does for a
``pyro.param(..., event_dim=...)`` inside it; gradients flow into those rows only.

References:
    Hoffman, Blei, Wang & Paisley (2013), Stochastic Variational Inference.
    Ranganath, Tang, Charlin & Blei (2015), Deep Exponential Families.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from pyro.poutine.messenger import Messenger

#: Marks a param-store name as a module's parameter (``pyro.module``), never per point.
MODULE_SEPARATOR = "$$$"


def per_point_params(trace, num_points: int) -> tuple[str, ...]:
    """The ``pyro.param`` sites of ``trace`` whose leading dim has ``num_points`` rows, one
    per data point (module parameters, registered by ``pyro.module``, never count)."""
    names = []
    for name, site in trace.nodes.items():
        value = site.get("value")
        if site["type"] != "param" or MODULE_SEPARATOR in name or value is None:
            continue
        if value.dim() >= 1 and value.shape[0] == num_points and num_points > 1:
            names.append(name)
    return tuple(dict.fromkeys(names))


def rows_of_points(guide, args: tuple, names: tuple[str, ...], num_points: int,
                   data_plate: str | None = None) -> tuple[str, ...]:  # fmt: skip
    """Those of ``names`` (params with ``num_points`` rows) whose rows are the points': the
    guide's draws of point 0 and their log density, at its sites in the data plate (named
    ``data_plate``), depend on row 0 of them and on no other row (a global param that merely
    has as many entries, such as a weight matrix of N entries, does not)."""
    from pyro import poutine

    from pyro_vae.pairs.sites import data_plate_dim, is_sample_site

    with torch.enable_grad():
        trace = poutine.trace(guide).get_trace(*args)
        tensors = {
            name: trace.nodes[name]["value"].unconstrained()
            for name in names
            if name in trace.nodes and hasattr(trace.nodes[name]["value"], "unconstrained")
        }
        first = torch.zeros(())
        for site in trace.nodes.values():
            found = data_plate_dim(site, num_points, data_plate) if is_sample_site(site) else None
            if found is None or site["is_observed"]:
                continue
            # the draw and its density (a location moves the one, not the other)
            log_prob = site["fn"].log_prob(site["value"])
            event_dim = len(site["fn"].event_shape)
            for term, dim in ((log_prob, found[1]), (site["value"], found[1] - event_dim)):
                if term.dim() >= -dim and term.is_floating_point():
                    first = first + term.select(term.dim() + dim, 0).sum()
        if not tensors or not first.requires_grad:
            return ()
        grads = torch.autograd.grad(first, list(tensors.values()), allow_unused=True)
    return tuple(
        name
        for name, grad in zip(tensors, grads, strict=True)
        if grad is not None and bool(grad[0].any()) and not bool(grad[1:].any())
    )


class LocalParams(Messenger):
    """Selects the rows ``indices`` (a batch's indices into the training points) of the
    per-point parameters ``names`` wherever a program reads them; ``indices=None`` leaves
    them whole. Put it around model and guide (one instance for both) and set ``indices``
    before each step, or use :meth:`at`.

    A value that a subsampled plate of the pair's own has selected already is left as it
    is. The selected rows stay tied to the stored parameter (``.unconstrained()``), so
    ``pyro.infer.SVI`` finds and steps it.
    """

    def __init__(self, names: Iterable[str], mode: str = "subsample") -> None:
        super().__init__()
        self.names = tuple(names)
        self.mode = mode  # "full": one batch of all points in order; "subsample": index batches
        self.indices: torch.Tensor | None = None

    @contextmanager
    def at(self, indices: torch.Tensor | None) -> Iterator[LocalParams]:
        """Read the rows ``indices`` inside the block (then as before)."""
        previous, self.indices = self.indices, indices
        try:
            yield self
        finally:
            self.indices = previous

    def use_rows(self, rows: torch.Tensor, num_points: int) -> None:
        """Set the rows of the next step's batch: none to select where the batch is all
        ``num_points`` points in order."""
        whole = rows.numel() == num_points and bool(
            torch.equal(rows, torch.arange(num_points, device=rows.device))
        )
        self.indices = None if whole else rows

    def _postprocess_message(self, msg) -> None:
        if msg["type"] != "param" or self.indices is None or msg["name"] not in self.names:
            return
        value = msg["value"]
        if not hasattr(value, "unconstrained"):  # a selection already (the pair's own plate)
            return
        selected = value.index_select(0, self.indices.to(value.device))
        selected.unconstrained = value.unconstrained
        msg["value"] = selected
