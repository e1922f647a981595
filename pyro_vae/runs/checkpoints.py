"""Checkpoints of a run: what they hold, how they are written and read back.

A checkpoint is one ``torch.save`` of a dict of tensors, numbers, strings, ``None`` and plain
containers, and nothing else, so that it loads with ``torch.load(weights_only=True)``: reading
a run directory never unpickles an object, so a checkpoint cannot run code. The keys:

- ``epoch``, ``step``: the last finished epoch and the SVI step count;
- ``config``: the run's configuration (:meth:`TrainConfig.to_dict`);
- ``module``: the pair's ``state_dict`` (``None`` for a pair that is not an ``nn.Module``);
- ``params``: Pyro's param store, ``{"params": {name: tensor}, "constraints": {name: C}}``
  with each constraint ``C`` stored by name (:func:`encode_constraint`);
- ``optimizer``: the run's optimizer (:class:`~pyro_vae.infer.optimizers.RunOptimizer`): its
  torch ``state_dict`` and the param-store name of each of its tensors (an older
  checkpoint's per-parameter state dicts still load);
- ``scheduler``: the learning-rate schedule's ``state_dict`` (its last epoch);
- ``rng``: the torch (and CUDA) generator states as tensors, Python's ``random`` state as
  tuples of ints, numpy's as a tensor and plain values (:func:`rng_state`);
- ``history``: one dict of numbers per finished epoch;
- ``torch_version``, ``pyro_version``: strings.

It is written to a temporary file and renamed (:func:`save_checkpoint`), so an interrupted
write never leaves a broken one.
"""

from __future__ import annotations

import io
import random
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions.constraints as constraints
import torch
from torch import nn
from torch.distributions.constraints import Constraint

from pyro_vae.runs.files import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, cannot be read, or does not fit the run; the message
    names the file."""


# ------------------------------------------------------------------------------------------
# Constraints by name
#
# Pyro's param store keeps a constraint object per parameter. A checkpoint stores its name
# instead: a library singleton as its name ("real", "positive", "unit_interval", "simplex",
# "lower_cholesky", ...), any other instance of a torch or Pyro constraint class as that
# class's name and the instance's attributes ({"name": "interval", "state": {"lower_bound":
# -1.0, "upper_bound": 2.0}}). Only classes of torch.distributions.constraints and
# pyro.distributions.constraints are known. A constraint class of a user's own is refused at
# save time (CheckpointError naming the parameter) rather than allowlisted with
# torch.serialization.add_safe_globals: to allowlist it, the loader would have to import the
# module that the checkpoint names, so the file would choose which code is imported, and an
# allowlisted class's __setstate__ runs while loading. Such constraints are rare in a
# pyro.param; the refusal says what to use instead.

#: Library constraint singletons by name (pyro.distributions.constraints re-exports torch's).
CONSTRAINTS: dict[str, Constraint] = {
    name: getattr(constraints, name)
    for name in sorted(constraints.__all__)
    if isinstance(getattr(constraints, name), Constraint)
}


def _constraint_classes() -> dict[str, type]:
    """Library constraint classes by name: the public factories (``interval``,
    ``greater_than``, ``independent``, ...), then the classes of the singletons that have no
    public factory (``_IntegerGreaterThan``, ``_SoftplusPositive``, ...)."""
    classes: dict[str, type] = {}
    for name in sorted(constraints.__all__):
        value = getattr(constraints, name)
        if isinstance(value, type) and issubclass(value, Constraint) and value is not Constraint:
            classes[name] = value
    for value in CONSTRAINTS.values():
        if type(value) not in classes.values():
            classes[type(value).__name__] = type(value)
    return classes


CONSTRAINT_CLASSES: dict[str, type] = _constraint_classes()

_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _encode_constraint_value(value: Any) -> Any:
    if isinstance(value, Constraint):
        return {"constraint": encode_constraint(value)}
    if isinstance(value, (torch.Tensor, *_PLAIN_SCALARS)):
        return value
    if isinstance(value, list | tuple):
        return type(value)(_encode_constraint_value(v) for v in value)
    raise TypeError(f"attribute value {value!r} is not a tensor, number or string")


def _decode_constraint_value(value: Any) -> Any:
    if isinstance(value, dict):
        return decode_constraint(value["constraint"])
    if isinstance(value, list | tuple):
        return type(value)(_decode_constraint_value(v) for v in value)
    return value


def encode_constraint(constraint: Constraint) -> str | dict[str, Any]:
    """A constraint as a name (a library singleton) or ``{"name", "state"}`` (an instance of
    a library class); :class:`TypeError` for a class that is not torch's or Pyro's."""
    for name, singleton in CONSTRAINTS.items():
        if constraint is singleton:
            return name
    state = vars(constraint)
    plain = all(isinstance(v, _PLAIN_SCALARS) for v in state.values())
    for name, singleton in CONSTRAINTS.items():
        # a fresh constraints.real, or interval(0., 1.) == unit_interval: the same transform
        if plain and type(constraint) is type(singleton) and state == vars(singleton):
            return name
    for name, cls in CONSTRAINT_CLASSES.items():
        if type(constraint) is cls:
            return {
                "name": name,
                "state": {k: _encode_constraint_value(v) for k, v in state.items()},
            }
    kind = type(constraint)
    raise TypeError(
        f"constraint {kind.__module__}.{kind.__qualname__} is not one of "
        "torch.distributions.constraints or pyro.distributions.constraints"
    )


def decode_constraint(encoded: str | dict[str, Any]) -> Constraint:
    """The constraint :func:`encode_constraint` stored; no code but the library's own
    ``__new__`` runs, and only for the classes in :data:`CONSTRAINT_CLASSES`."""
    if isinstance(encoded, str):
        if encoded not in CONSTRAINTS:
            raise KeyError(f"unknown constraint {encoded!r}")
        return CONSTRAINTS[encoded]
    cls = CONSTRAINT_CLASSES.get(encoded.get("name"))
    if cls is None:
        raise KeyError(f"unknown constraint class {encoded.get('name')!r}")
    constraint = cls.__new__(cls)
    constraint.__dict__.update(
        {k: _decode_constraint_value(v) for k, v in encoded.get("state", {}).items()}
    )
    return constraint


def param_store_state() -> dict[str, Any]:
    """Pyro's param store as ``{"params": {name: tensor}, "constraints": {name: name}}``."""
    state = pyro.get_param_store().get_state()
    encoded = {}
    for name, constraint in state["constraints"].items():
        try:
            encoded[name] = encode_constraint(constraint)
        except TypeError as error:
            raise CheckpointError(
                f"parameter {name!r}: {error}, so the checkpoint cannot hold it. Checkpoints "
                "hold only tensors, numbers and strings (they load with torch.load("
                "weights_only=True), so reading one never runs code) and store constraints "
                "by name. Give pyro.param a constraint from torch.distributions.constraints "
                "or pyro.distributions.constraints (e.g. constraints.positive, "
                "constraints.interval(a, b)), or keep the parameter unconstrained and "
                "transform it in the model."
            ) from None
    return {"params": dict(state["params"]), "constraints": encoded}


# ------------------------------------------------------------------------------------------
# RNG states as tensors and plain values


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG a run draws from: torch's (and CUDA's) generator state as a uint8 tensor,
    Python's ``random`` state as tuples of ints, numpy's MT19937 state as ``{"bit_generator",
    "key" (int64 tensor of the 624 uint32 words), "pos", "has_gauss", "cached_gaussian"}``."""
    numpy_state = np.random.get_state()  # noqa: NPY002 -- the global state pyro seeds
    bit_generator, key, pos, has_gauss, cached_gaussian = numpy_state
    state = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": {
            "bit_generator": str(bit_generator),
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Put back the RNG states :func:`rng_state` stored, bit for bit."""
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss_next = state["random"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy = state["numpy"]
    np.random.set_state((  # noqa: NPY002 -- the global state pyro seeds
        numpy["bit_generator"],
        numpy["key"].cpu().numpy().astype(np.uint32),
        numpy["pos"],
        numpy["has_gauss"],
        numpy["cached_gaussian"],
    ))  # fmt: skip
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


# ------------------------------------------------------------------------------------------
# Writing and reading

#: What ``torch.load(weights_only=True)`` reads back without unpickling an object.
_PLAIN_LEAVES = (torch.Tensor, str, bytes, int, float, complex, bool, type(None),
                 torch.Size, torch.dtype, torch.device)  # fmt: skip


def _not_plain(value: Any, where: str) -> str | None:
    """The first place in ``value`` that is not a tensor, number, string or plain container."""
    if isinstance(value, _PLAIN_LEAVES):
        return None
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if not isinstance(key, str | int):
                return f"{where} (key {key!r})"
            found = _not_plain(item, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            found = _not_plain(item, f"{where}[{index}]")
            if found:
                return found
        return None
    return f"{where} ({type(value).__module__}.{type(value).__qualname__})"


def save_checkpoint(state: dict[str, Any], *paths: Path) -> None:
    """``torch.save`` once, then write the bytes to each path atomically (temp file, rename).

    A state holding anything but tensors, numbers, strings and plain containers is refused
    before anything is written, since ``weights_only=True`` could not read it back."""
    found = _not_plain(state, "checkpoint")
    if found:
        raise CheckpointError(
            f"cannot write {', '.join(str(p) for p in paths)}: {found} is not a tensor, number, "
            "string or plain container, and checkpoints hold only those (they are loaded with "
            "torch.load(weights_only=True))"
        )
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for path in paths:
        atomic_write_bytes(path, buffer.getvalue())


#: Globals an older pyro_vae pickled into its checkpoints (numpy's RNG arrays, TorchVersion,
#: constraint objects): a refusal naming one of them is an old-format checkpoint.
_OLD_FORMAT_GLOBALS = ("numpy.", "torch.torch_version.", "torch.distributions.constraints.",
                       "pyro.distributions.constraints.", "_codecs.encode")  # fmt: skip


def _refusal(path: Path, error: Exception) -> CheckpointError:
    """The message for a checkpoint that ``weights_only=True`` refused to unpickle."""
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    found = match.group(1) if match else None
    never = (
        "pyro_vae loads checkpoints with torch.load(weights_only=True) and never unpickles "
        "arbitrary objects, so the file was not loaded and nothing in it was run"
    )
    if found and found.startswith(_OLD_FORMAT_GLOBALS):
        return CheckpointError(
            f"checkpoint {str(path)!r} was written by an older pyro_vae: it holds a pickled "
            f"{found}, which torch.load(weights_only=True) refuses; {never}. If you trust the "
            "file (you wrote it yourself), convert it once; this unpickles it with "
            'weights_only=False: python -c "from pyro_vae.runs.checkpoints import '
            f'upgrade_checkpoint; upgrade_checkpoint({str(path)!r})"'
        )
    if not found:
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)\n", str(error))
        return CheckpointError(
            f"checkpoint {str(path)!r} cannot be read: torch.load(weights_only=True) refused "
            f"it ({reason.group(1) if reason else 'not tensors and plain containers'}); "
            f"{never}. The file is damaged, or it is not a pyro_vae checkpoint."
        )
    return CheckpointError(
        f"checkpoint {str(path)!r} holds a pickled {found}, which torch.load(weights_only=True) "
        f"refuses; {never}. A pyro_vae checkpoint holds only tensors, numbers, strings and "
        "plain containers: this file was not written by pyro_vae, or was altered. Do not load it."
    )


def load_checkpoint(path: Path, device: torch.device | str = "cpu", *,
                    config: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None,
                    may_differ: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    """Read a checkpoint written by :func:`save_checkpoint` onto ``device``.

    ``weights_only=True``: only tensors, numbers, strings and plain containers are read, so
    loading a checkpoint never runs code; a file holding anything else is refused with a
    :class:`CheckpointError` saying what it held (an older pyro_vae's checkpoint: how to
    convert it). With ``config`` (a run's ``config.toml`` as a dict), the configuration
    stored in the checkpoint must agree with it but for the keys ``may_differ``
    (:func:`config_differences`; a key the checkpoint lacks counts as its ``defaults``
    value); a mismatch is refused naming the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        with warnings.catch_warnings():
            # a plain pickle (not torch's zip format) of protocol > 2; refused or read anyway
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        if "Weights only load failed" in str(error):
            raise _refusal(path, error) from None
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read ({type(error).__name__}: {error}); the "
            "file is damaged, or it is not a pyro_vae checkpoint"
        ) from error
    if not isinstance(state, dict) or not {"config", "params", "rng"} <= set(state):
        raise CheckpointError(
            f"{str(path)!r} is not a pyro_vae checkpoint (it lacks the keys config, params, rng)"
        )
    if config is not None:
        differences = config_differences(config, state["config"], defaults or {}, may_differ)
        if differences:
            raise CheckpointError(
                f"the run's config.toml does not match the configuration stored in checkpoint "
                f"{str(path)!r}: " + "; ".join(differences) + ". Either config.toml was "
                "edited or the checkpoint comes from another run; nothing was built or run. "
                "Restore the run's config.toml, or put that run's own checkpoint back."
            )
    return state


def _upgraded(state: dict[str, Any]) -> dict[str, Any]:
    """An older pyro_vae's checkpoint in the plain format (RNG, constraints, versions)."""
    state = dict(state)
    rng = dict(state["rng"])
    if isinstance(rng.get("numpy"), tuple):
        bit_generator, key, pos, has_gauss, cached_gaussian = rng["numpy"]
        rng["numpy"] = {
            "bit_generator": str(bit_generator),
            "key": torch.from_numpy(np.asarray(key).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        }
    state["rng"] = rng
    params = state["params"]
    state["params"] = {
        "params": dict(params["params"]),
        "constraints": {
            name: c if isinstance(c, str | dict) else encode_constraint(c)
            for name, c in params["constraints"].items()
        },
    }
    for key in ("torch_version", "pyro_version"):
        if key in state:
            state[key] = str(state[key])
    return state


def upgrade_checkpoint(path: str | Path) -> Path:
    """Rewrite a checkpoint of an older pyro_vae in the plain format ``weights_only=True``
    reads. It unpickles the file with ``weights_only=False``, which can run code: call it
    only on a checkpoint you trust (one you wrote yourself)."""
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=False)  # the caller trusts it
    try:
        upgraded = _upgraded(state)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{str(path)!r} cannot be converted: {error}") from error
    save_checkpoint(upgraded, path)
    return path


# ------------------------------------------------------------------------------------------
# Contents


def checkpoint_state(pair: Any, optimizer: Any, epoch: int, history: list, config, device,
                     step: int = 0, scheduler: Any = None):  # fmt: skip
    """What a checkpoint holds after ``epoch`` (see the module docstring, key by key)."""
    return {
        "epoch": epoch,
        "step": step,
        "config": config.to_dict(),
        "module": pair.state_dict() if isinstance(pair, nn.Module) else None,
        "params": param_store_state(),
        "optimizer": optimizer.get_state() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(device),
        "history": list(history),
        "torch_version": str(torch.__version__),
        "pyro_version": str(pyro.__version__),
    }


def _normalized(value: Any) -> Any:
    """Tuples as lists, recursively: TOML and the checkpoint spell sequences differently."""
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalized(v) for v in value]
    return value


def config_differences(run_config: dict[str, Any], saved_config: dict[str, Any],
                       defaults: dict[str, Any], may_differ=()) -> list[str]:  # fmt: skip
    """The keys (but ``may_differ``) whose value in a run's ``config.toml`` differs from the
    checkpoint's config, each as ``key (config.toml: A, checkpoint: B)``; a key the
    checkpoint lacks (written before the key existed) counts as its default."""
    differences = []
    for key, value in run_config.items():
        if key in may_differ:
            continue
        saved = saved_config.get(key, defaults.get(key))
        if _normalized(value) != _normalized(saved):
            differences.append(f"{key} (config.toml: {value!r}, checkpoint: {saved!r})")
    return differences


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _fit_problems(pair: Any, state: dict[str, Any]) -> list[str]:
    """How the checkpoint's parameters do not fit ``pair`` (its ``state_dict`` and the
    params it registered): shapes that differ, names on one side only."""
    problems = []
    pairs_of_tables = []
    saved_module = state.get("module")
    if isinstance(pair, nn.Module):
        if saved_module is None:
            problems.append("the checkpoint holds no module state_dict, the pair is a module")
        else:
            pairs_of_tables.append(("", saved_module, pair.state_dict(), True))
    elif saved_module is not None:
        problems.append("the checkpoint holds a module state_dict, the pair is not a module")
    registered = dict(pyro.get_param_store().named_parameters())
    # saved params the pair has not registered are fine (a decaying-average baseline that
    # TraceGraph_ELBO creates in its first step); registered ones the checkpoint lacks are not
    pairs_of_tables.append(("param ", state["params"]["params"], registered, False))
    for label, saved, own, strict in pairs_of_tables:
        shapes = [
            f"{label}{name!r} is {_shape(saved[name])} in the checkpoint, "
            f"{_shape(own[name])} in the pair"
            for name in own
            if name in saved and _shape(saved[name]) != _shape(own[name])
        ]
        problems += shapes[:5] + ([f"... {len(shapes) - 5} more"] if len(shapes) > 5 else [])
        missing = [name for name in own if name not in saved]
        if missing:
            problems.append(f"{label}names of the pair missing from the checkpoint: {missing[:5]}")
        unexpected = [name for name in saved if name not in own]
        if strict and unexpected:
            problems.append(f"{label}names in the checkpoint the pair lacks: {unexpected[:5]}")
    return problems


def restore_params(pair: Any, state: dict[str, Any], device: torch.device,
                   path: Path | None = None) -> None:  # fmt: skip
    """Put a checkpoint's parameters into a pair whose params are already registered.

    Values are copied *into* the registered tensors, because ``pyro.module`` keeps a module's
    own parameters in the param store; replacing them would silently detach the module. A
    checkpoint whose parameters do not fit the pair (another pair's) is refused with a
    :class:`CheckpointError` naming both shapes.
    """
    problems = _fit_problems(pair, state)
    if problems:
        where = f"checkpoint {str(path)!r}" if path is not None else "the checkpoint"
        raise CheckpointError(
            f"{where} does not fit the pair: the run directory holds a checkpoint of another "
            "pair (or the pair's code changed since training). " + "; ".join(problems) + ". "
            "Evaluate it with the pair it was trained with, or put that run's checkpoint back."
        )
    if isinstance(pair, nn.Module) and state.get("module") is not None:
        pair.load_state_dict(state["module"])
    store = pyro.get_param_store()
    registered = dict(store.named_parameters())
    saved = state["params"]
    missing = {}
    with torch.no_grad():
        for name, value in saved["params"].items():
            if name in registered:
                registered[name].copy_(value.to(device))
            else:
                missing[name] = value.to(device).detach().requires_grad_()
    if missing:
        store.set_state({
            "params": missing,
            "constraints": {k: decode_constraint(saved["constraints"][k]) for k in missing},
        })  # fmt: skip
