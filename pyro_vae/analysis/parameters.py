"""The pair's parameters: the tensors its programs compute with, found through its modules.

Which tensors are "the pair's parameters" is decided by the pair's own modules, not by
Pyro's global param store. ``pyro.module(name, network)`` stores ``network``'s tensors under
``name$$$param`` only if that name is free; when an entry of that name is already there (a
pair file without an ``if __name__ == "__main__":`` guard that builds and trains an instance
when it is imported again, or a notebook's second pair of the same class), the network keeps
computing with its *own* tensors while the store, and every ``poutine.trace``, hold the stale
ones, whose gradient is then exactly zero. A ``PyroModule`` layer's ``nn.Parameter`` fares
the same (``PyroModule.__getattr__`` passes it to ``pyro.param`` and keeps using its own
tensor). Pyro 1.9.2's
``pyro.settings.set(module_local_params=True)`` does not help: only ``PyroModule`` reads it
(``pyro/nn/module.py``), not ``pyro.module(name, nn_module)`` (``pyro/primitives.py``), and it
changes every pair in the process. So :func:`pair_parameters` takes the tensors through
:func:`pyro_vae.pairs.pair_modules` (``named_parameters()`` that require a gradient), names
them by the param sites the programs trace, replaces a traced module-parameter site whose
store tensor is not the module's own by the module's tensor (noted as a stale entry), and
adds the plain ``pyro.param`` sites, which the programs really do read from the store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from pyro import poutine
from pyro.params import user_param_name
from torch import Tensor, nn

from pyro_vae.analysis.subjects import Subject
from pyro_vae.pairs import pair_modules

#: The role of a parameter: read by the guide (encoder) or only by the model (decoder).
PARTS = ("encoder", "decoder")


def pair_parameters(
    model: Callable,
    guide: Callable,
    x: Tensor,
    modules: Sequence[nn.Module] | Mapping[str, nn.Module] | None = None,
) -> dict[str, dict]:
    """The tensors the guide and the model compute with on ``x``, by name, each
    ``{"param": unconstrained tensor, "part": "encoder" | "decoder", "stale": bool}``.

    ``modules`` are the pair's networks (:func:`pyro_vae.pairs.pair_modules`; a mapping
    names them). Their parameters that require a gradient are the pair's, named by the
    param site that registers them (``pyro.module``'s ``name$$$param``, a ``PyroModule``'s
    dotted name) or, where no program traces them, ``module.param``. A traced site is used
    as the param store holds it when it is a plain ``pyro.param`` (the programs read those
    from the store); a module-parameter site whose store tensor is not the network's own
    (a stale same-named entry: ``pyro.module`` kept the network's tensor) gives the
    network's tensor instead, with ``stale`` set. Without ``modules`` only the sites'
    names tell module parameters apart (``name$$$param``).

    ``part``: ``encoder`` for what the guide reads (traced by the guide, or, untraced,
    reached by its computation), ``decoder`` for the rest. Baselines are not among them
    (the plain guide never reads them).
    """
    with torch.no_grad(), poutine.trace(param_only=True) as guide_params:
        guide(x)
    with torch.no_grad(), poutine.trace(param_only=True) as model_params:
        model(x)
    named = _named_parameters(modules)
    own = {id(tensor) for _, tensor in named}
    found: dict[str, dict] = {}
    taken: set[int] = set()
    for part, trace in (("encoder", guide_params.trace), ("decoder", model_params.trace)):
        for name, site in trace.nodes.items():
            if name in found:
                continue
            stored = site["value"].unconstrained()
            given = site["args"][1] if len(site["args"]) > 1 else None
            stale = (
                isinstance(given, Tensor)
                and given is not stored
                and id(stored) not in own
                and (id(given) in own or user_param_name(name) != name)
            )
            tensor = given if stale else stored
            if id(tensor) not in taken:  # one tensor under two names: counted once
                found[name] = {"param": tensor, "part": part, "stale": stale}
                taken.add(id(tensor))
    untraced = [(name, tensor) for name, tensor in named if id(tensor) not in taken]
    if untraced:
        reached = _reached_by(guide, x, [tensor for _, tensor in untraced])
        for (name, tensor), in_guide in zip(untraced, reached, strict=True):
            while name in found:
                name = f"{name}'"
            part = "encoder" if in_guide else "decoder"
            found[name] = {"param": tensor, "part": part, "stale": False}
    return found


def _named_parameters(
    modules: Sequence[nn.Module] | Mapping[str, nn.Module] | None,
) -> list[tuple[str, Tensor]]:
    """Every parameter of ``modules`` that requires a gradient, once, with a dotted name."""
    if modules is None:
        return []
    if not isinstance(modules, Mapping):
        modules = {f"{type(m).__name__.lower()}{i}": m for i, m in enumerate(modules)}
    named, seen = [], set()
    for prefix, module in modules.items():
        for name, tensor in module.named_parameters():
            if tensor.requires_grad and id(tensor) not in seen:
                seen.add(id(tensor))
                named.append((f"{prefix}.{name}" if prefix else name, tensor))
    return named


def _reached_by(program: Callable, x: Tensor, params: Sequence[Tensor]) -> list[bool]:
    """Whether each of ``params`` is reached by ``program(x)``'s sampled values or their
    log-densities: whether the program computes with it."""
    with poutine.trace() as traced:
        program(x)
    terms = []
    for site in traced.trace.nodes.values():
        if site["type"] != "sample":
            continue
        value = site["value"]
        if isinstance(value, Tensor) and value.is_floating_point() and value.requires_grad:
            terms.append(value.sum())
        try:
            terms.append(site["fn"].log_prob(value).sum())
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    total = sum(terms, torch.zeros(()))
    if not total.requires_grad:
        return [False] * len(params)
    grads = torch.autograd.grad(total, list(params), allow_unused=True)
    return [grad is not None for grad in grads]


def _pair_modules_by_name(pair: Any) -> dict[str, nn.Module]:
    """The pair's networks (:func:`pyro_vae.pairs.pair_modules`), each named by the
    attribute that holds it where there is one (the pair itself, a module, by "")."""
    modules = pair_modules(pair)
    if isinstance(pair, nn.Module):
        return {"": pair}
    attributes = vars(pair) if hasattr(pair, "__dict__") else {}
    by_id = {id(value): name for name, value in attributes.items()}
    named: dict[str, nn.Module] = {}
    for index, module in enumerate(modules):
        name = by_id.get(id(module), f"{type(module).__name__.lower()}{index}")
        named[name if name not in named else f"{name}{index}"] = module
    return named


def _stale_notes(found: dict[str, dict], held: Subject) -> list[str]:
    """A note on stale same-named store entries, and, for a reopened run, whether the
    pair's own tensors hold the checkpoint's values."""
    stale = [name for name, entry in found.items() if entry["stale"]]
    if not stale:
        return []
    notes = [
        f"Pyro's param store held a stale same-named tensor for {len(stale)} of the pair's "
        f"parameters (e.g. {stale[0]!r}: another instance's, such as one a pair file without "
        'an `if __name__ == "__main__":` guard built when imported); the programs compute '
        "with the pair's own module tensors, so those are differentiated here"
    ]
    saved = (held.run.state.get("params") or {}).get("params", {}) if held.run else {}
    differ = [
        name
        for name in stale
        if name in saved
        and not torch.equal(saved[name].to(found[name]["param"]), found[name]["param"].detach())
    ]
    if differ:
        notes.append(
            f"the pair's own tensor {differ[0]!r} (and {len(differ) - 1} more) does not hold "
            "the checkpoint's values, which went into the stale store entry: these numbers "
            "are for the pair's parameters as they are in memory, not as trained; guard the "
            'pair file\'s top-level code with `if __name__ == "__main__":`'
        )
    return notes
