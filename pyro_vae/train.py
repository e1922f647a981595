"""Training by SVI: data on the device, a checked pair, atomic checkpoints, exact resume.

A run directory holds:

- ``config.toml``: the resolved configuration,
- ``metrics.csv``: epoch, train loss and validation ELBO per data point, seconds (all, and
  the SVI steps alone),
- ``checkpoint.pt``: the last finished epoch (model, guide, param store, optimizer, RNG),
- ``best.pt``: the checkpoint with the highest validation ELBO,
- ``metrics.png``: the learning curves, drawn when the run finishes.

Checkpoints are written to a temporary file and renamed, so an interrupted write never
leaves a broken one. ``resume=True`` restores the last checkpoint, RNG included, and ends
exactly where an uninterrupted run with the same seed and device would have.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.optim
import torch
from torch import nn
from tqdm.auto import tqdm

from pyro_vae.config import FIELDS, ConfigError, TrainConfig, dumps_toml, load_toml
from pyro_vae.data import DATASETS, Dataset, binarize_static, load_dataset, minibatches
from pyro_vae.estimators import evaluation_view, log_importance_weights
from pyro_vae.gradients import (
    BASELINE_MODULE,
    BASELINES,
    forget_stale_optimizers,
    neural_baselines,
    non_reparameterized_sites,
    score_function,
    with_baseline,
)
from pyro_vae.handlers import TrainingScales, kl_weight
from pyro_vae.objectives import make_objective
from pyro_vae.pairs import (
    PAIRS,
    PairError,
    PairInfo,
    build_pair,
    check_pair,
    evaluation_mode,
    pair_to,
    parameter_shapes,
    record_pair,
    resolve_spec,
    set_training_mode,
)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CONFIG = "config.toml"
METRICS = "metrics.csv"
CURVES = "metrics.png"
METRIC_COLUMNS = ("epoch", "train_loss", "valid_elbo", "seconds", "train_seconds", "beta")
#: Seed of the fixed binarization of validation and test points (dynamic binarization
#: trains on fresh draws; evaluation needs one fixed draw so numbers are comparable).
EVAL_BINARIZE_SEED = 12345
#: Seed of the Monte-Carlo noise in the validation ELBO, so epochs are compared fairly and
#: validation never moves the training RNG.
VALID_SEED = 2024


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, no checkpoint to resume, ...)."""


@dataclass
class RunResult:
    """What a finished (or resumed) run produced."""

    run_dir: Path
    config: TrainConfig
    history: list[dict[str, float]] = field(default_factory=list)
    pair: Any = None

    @property
    def best_valid_elbo(self) -> float:
        return max(row["valid_elbo"] for row in self.history)


def resolve_device(name: str, *, fall_back_to_cpu: bool = False) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is a clear error, or
    cpu with ``fall_back_to_cpu`` (a run trained on a GPU, evaluated on a laptop)."""
    if name.startswith("cuda") and fall_back_to_cpu and not torch.cuda.is_available():
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"--device {name}: not a device name ({error})") from error
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def defaults_for(config: TrainConfig) -> TrainConfig:
    """Fill ``None`` choices (pair, binarization) from the data set's defaults."""
    spec = DATASETS.get(config.dataset)
    if config.pair is None and config.model is None:
        config.pair = spec.default_pair if spec else "mlp"
    if config.binarize is None:
        if spec is not None:
            config.binarize = spec.default_binarize
        else:
            likelihood = PAIRS[config.pair].likelihood if config.pair in PAIRS else None
            config.binarize = "dynamic" if likelihood == "bernoulli" else "none"
    if config.pair is not None:
        config.pair = resolve_spec(config.pair)
    for key in ("model", "guide"):
        if getattr(config, key):
            setattr(config, key, resolve_spec(getattr(config, key)))
    if config.dataset.endswith((".npy", ".npz")):
        config.dataset = str(Path(config.dataset).expanduser().resolve())
    if BASELINES[config.baseline].fixed_batch_size and not config.drop_last:
        # Pyro keeps the decaying average per data point with the first batch's shape.
        _log(f"note: --baseline {config.baseline} needs equal batches: --drop-last is set")
        config.drop_last = True
    if BASELINES[config.baseline].needs_module and config.baseline_lr is None:
        config.baseline_lr = 10 * config.lr
    return config


def training_guide(
    pair: Any, config: TrainConfig, x: torch.Tensor, device: torch.device
) -> tuple[Callable, nn.Module | None]:
    """The guide SVI differentiates, and its neural baselines (or ``None``).

    ``pair.guide``, made non-reparameterized by ``--score-function``, with the
    ``--baseline`` at its non-reparameterized sites (found by tracing it on ``x``); the
    neural baselines, one per such site, are registered as ``pyro.module("baseline")``
    so that a resume restores them in place. Evaluation always uses the plain ``pair.guide``.
    """
    guide = score_function(pair.guide) if config.score_function else pair.guide
    if config.baseline == "none":
        return guide, None
    sites = non_reparameterized_sites(guide, x)
    if not sites:
        raise ConfigError(
            f"--baseline {config.baseline}: every latent site of the guide is "
            "reparameterized, so TraceGraph_ELBO has no score-function term to apply a "
            "baseline to; add --score-function to train by the score function, or drop "
            "--baseline"
        )
    baselines = None
    if BASELINES[config.baseline].needs_module:
        baselines = neural_baselines(x[0].numel(), sites, config.baseline_hidden).to(device)
        pyro.module(BASELINE_MODULE, baselines)
    return with_baseline(
        guide, config.baseline, beta=config.baseline_beta, module=baselines
    ), baselines


def optimizer_args(config: TrainConfig) -> Callable[[str], dict[str, float]]:
    """Adam's arguments per parameter: ``--baseline-lr`` for the neural baseline's
    parameters (``baseline.*``), ``--lr`` for all others."""

    def args(name: str) -> dict[str, float]:
        if config.baseline_lr is not None and name.startswith(BASELINE_MODULE + "."):
            return {"lr": config.baseline_lr}
        return {"lr": config.lr}

    return args


def load_data(config: TrainConfig, device: torch.device, data_dir: str | None = None) -> Dataset:
    """The run's data set on ``device``, checked against its binarization."""
    data = load_dataset(
        config.dataset,
        data_dir if data_dir is not None else config.data_dir,
        download=config.download,
        base_url=config.base_url,
        binarize="static" if config.binarize == "static" else "none",
        seed=config.seed,
        pixel_scale=config.pixel_scale,
    )
    if config.binarize == "dynamic":
        low, high = data.train.min().item(), data.train.max().item()
        if low < 0 or high > 1:
            raise ConfigError(
                f"--binarize dynamic needs data in [0, 1], but data set {config.dataset!r} "
                f"has values in [{low:.3g}, {high:.3g}]; use --binarize none with a "
                "Gaussian-likelihood pair (or, for 0-255 pixels in a file, --pixel-scale 255)"
            )
    return data.to(device)


def eval_split(data: Dataset, split: str, binarize: str) -> torch.Tensor:
    """A split as evaluated: dynamically binarized data get one fixed Bernoulli draw."""
    x = data.split(split)
    if binarize == "dynamic":
        x = binarize_static(x, EVAL_BINARIZE_SEED)
    return x


def make_pair(config: TrainConfig, image_shape: tuple, device: torch.device, pair: Any = None):
    """Build (or take) the pair and move it to ``device``; clears Pyro's global param store
    first, so parameters of an earlier pair in this process cannot leak in."""
    pyro.clear_param_store()
    if pair is None:
        try:
            pair = build_pair(
                image_shape, config.pair, config.pair_kwargs, config.model, config.guide
            )
        except PairError as error:
            if config.pair_note:
                raise PairError(f"{error}\n{config.pair_note}") from error
            raise
    return pair_to(pair, device)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 -- the global state pyro seeds
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])  # noqa: NPY002 -- the global state pyro seeds
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file in the same folder and a rename."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def jsonable(value: Any) -> Any:
    """Tensors and arrays to lists, non-finite floats to None: strict JSON."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def json_bytes(value: Any) -> bytes:
    """``value`` as indented, strict JSON (:func:`jsonable`), for :func:`atomic_write_bytes`."""
    return (json.dumps(jsonable(value), indent=2) + "\n").encode()


def save_checkpoint(state: dict[str, Any], *paths: Path) -> None:
    """``torch.save`` once, then write the bytes to each path atomically (temp file, rename)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for path in paths:
        atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto ``device``.

    ``weights_only=False``: a checkpoint holds RNG states and constraint objects; only load
    checkpoints from run directories you trust (your own).
    """
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {str(path)!r}")
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as error:
        raise TrainingError(f"checkpoint {str(path)!r} cannot be read: {error}") from error


def checkpoint_state(pair: Any, optimizer: Any, epoch: int, history: list, config, device,
                     step: int = 0):  # fmt: skip
    return {
        "epoch": epoch,
        "step": step,
        "config": config.to_dict(),
        "module": pair.state_dict() if isinstance(pair, nn.Module) else None,
        "params": pyro.get_param_store().get_state(),
        "optimizer": optimizer.get_state() if optimizer is not None else None,
        "rng": _rng_state(device),
        "history": list(history),
        "torch_version": torch.__version__,
        "pyro_version": pyro.__version__,
    }


def restore_params(pair: Any, state: dict[str, Any], device: torch.device) -> None:
    """Put a checkpoint's parameters into a pair whose params are already registered.

    Values are copied *into* the registered tensors, because ``pyro.module`` keeps a module's
    own parameters in the param store; replacing them would silently detach the module.
    """
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
        constraints = {k: v for k, v in saved["constraints"].items() if k in missing}
        store.set_state({"params": missing, "constraints": constraints})


def restore_pair(run_dir: Path, config: TrainConfig, device: torch.device, pair=None,
                 checkpoint: str = BEST) -> tuple[Any, PairInfo, Dataset, dict]:  # fmt: skip
    """Rebuild a run's pair on ``device`` from a checkpoint (``best.pt`` or ``checkpoint.pt``)."""
    path = run_dir / checkpoint
    if not path.exists() and checkpoint == BEST:
        path = run_dir / CHECKPOINT
    state = load_checkpoint(path, device)
    data = load_data(config, device)
    pair = make_pair(config, data.image_shape, device, pair)
    info = check_pair(pair, _probe_batch(data, config))
    restore_params(pair, state, device)
    return pair, info, data, state


def _probe_batch(data: Dataset, config: TrainConfig) -> torch.Tensor:
    x = data.train[: max(2, min(config.batch_size, 16))]
    if config.binarize == "dynamic":
        x = torch.bernoulli(x)
    return x


def validation_elbo(pair: Any, x: torch.Tensor, info: PairInfo, batch_size: int) -> float:
    """Mean single-sample ELBO per data point over ``x``, with its own fixed seed: the true
    ELBO (every site unscaled, so beta = 1; global latents at the guide's mean; modules in
    eval mode), whatever the training objective weighs."""
    devices = [x.device] if x.device.type == "cuda" else []
    total = 0.0
    with torch.random.fork_rng(devices=devices), evaluation_mode(pair):
        torch.manual_seed(VALID_SEED)
        view = evaluation_view(pair, info, x[:2])
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size]
            log_weights = log_importance_weights(
                view.model,
                view.guide,
                batch,
                1,
                max_plate_nesting=info.max_plate_nesting,
                vectorize=view.vectorizable,
                data_plate=info.data_plate,
            )
            total += log_weights.sum().item()
    return total / x.shape[0]


def write_metrics(run_dir: Path, history: list[dict[str, float]]) -> None:
    """Rewrite ``metrics.csv`` from the history kept in the checkpoint (never out of step)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in METRIC_COLUMNS})
    atomic_write_bytes(run_dir / METRICS, buffer.getvalue().encode())


def read_config(run_dir: Path) -> TrainConfig:
    """The resolved configuration a run directory was trained with."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ConfigError(
            f"{str(run_dir)!r} is not a pyro-vae run directory: {CONFIG} is missing "
            "(train one with `pyro-vae train --out DIR`)"
        )
    return TrainConfig(**load_toml(path))


#: Settings that may change when a run is resumed; any other change would make the resumed
#: run differ from an uninterrupted one.
RESUMABLE_CHANGES = ("epochs", "out", "data_dir", "download", "base_url")


def _check_resumable(config: TrainConfig, trained: TrainConfig, epoch: int) -> None:
    changed = [
        f"{key} (run: {getattr(trained, key)!r}, now: {getattr(config, key)!r})"
        for key in FIELDS
        if key not in RESUMABLE_CHANGES and getattr(config, key) != getattr(trained, key)
    ]
    if changed:
        raise ConfigError(
            "--resume continues a run as it was configured, but these settings differ: "
            + "; ".join(changed)
            + ". Drop those flags, or start a new run with another --out."
        )
    if config.epochs <= epoch:
        raise ConfigError(
            f"--resume: the run already finished epoch {epoch}; pass --epochs N with N > {epoch}"
        )


def record_pair_object(pair: Any, config: TrainConfig, image_shape: tuple) -> None:
    """Write a pair object given from Python into ``config`` (``pair``, ``pair_kwargs``) so
    that ``pyro-vae evaluate`` can rebuild it, and check that the record rebuilds the same
    parameters; where it does not, ``config.pair_note`` says what to pass."""
    record = record_pair(pair)
    config.pair = record.spec or f"{type(pair).__module__}:{type(pair).__qualname__}"
    config.pair_kwargs = {**record.kwargs, **config.pair_kwargs}
    problem = None
    if record.spec is None:
        problem = (
            f"its class {type(pair).__qualname__} is defined where it cannot be imported "
            "(inside a function, or in a notebook)"
        )
    elif record.missing:
        problem = (
            f"constructor argument(s) {list(record.missing)} were not found as attributes of "
            "the same name"
        )
    elif type(pair).__module__ == "__main__":
        problem = None  # re-importing a script would run it: recorded, not tried here
    else:
        problem = _rebuild_problem(pair, config, image_shape)
    if problem is None:
        return
    config.pair_note = (
        f"note: the pair object {type(pair).__qualname__} was recorded as --pair "
        f"{config.pair!r} --pair-kwargs {json.dumps(config.pair_kwargs)}, but {problem}. To "
        "evaluate the run, pass the pair again from Python (pyro_vae.evaluate(run_dir, "
        "pair=...)), or move the class into a .py file, store each constructor argument as "
        "an attribute of the same name, and put its arguments into config.toml's "
        "pair_kwargs"
    )
    _log(config.pair_note)


def _rebuild_problem(pair: Any, config: TrainConfig, image_shape: tuple) -> str | None:
    """Why ``config.pair``/``pair_kwargs`` do not rebuild ``pair`` (same parameter names and
    shapes), or None; the global RNG is left as it was."""
    try:
        with torch.random.fork_rng(devices=[]):
            rebuilt = build_pair(image_shape, config.pair, config.pair_kwargs)
    except PairError as error:
        return f"rebuilding it failed: {error}"
    if parameter_shapes(rebuilt) != parameter_shapes(pair):
        return "the rebuilt pair has other parameters (names or shapes) than the one given"
    return None


def _steps_per_epoch(train_x: torch.Tensor, config: TrainConfig) -> int:
    if config.drop_last:
        return train_x.shape[0] // config.batch_size
    return math.ceil(train_x.shape[0] / config.batch_size)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(
    config: TrainConfig,
    *,
    pair: Any = None,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> RunResult:
    """Train a pair by SVI as ``config`` says, writing the run directory ``config.out``.

    ``pair`` may be given as an object (from Python); otherwise it is built from
    ``config.pair`` or ``config.model``/``config.guide``. ``resume=True`` continues from the
    run directory's last checkpoint up to ``config.epochs``.
    """
    record_object = pair is not None and config.pair is None and config.model is None
    if record_object:
        config.pair = "<pair object>"  # replaced once the data set's shape is known
    config = defaults_for(config.validate())
    if config.out is None:
        raise ConfigError("--out RUN_DIR is required: the run directory to write")
    run_dir = Path(config.out)
    checkpoint_path = run_dir / CHECKPOINT
    state = None
    if resume:
        if not checkpoint_path.exists():
            raise TrainingError(
                f"--resume: no checkpoint in {str(run_dir)!r} ({CHECKPOINT} is missing); "
                "start the run without --resume"
            )
    elif checkpoint_path.exists():
        raise TrainingError(
            f"{str(run_dir)!r} already holds a run; pass --resume to continue it, "
            "or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    config.device = str(device)
    if resume:
        state = load_checkpoint(checkpoint_path, device)
        trained = TrainConfig(**state["config"])
        if record_object:  # the object's record is the run's own
            config.pair, config.pair_kwargs = trained.pair, trained.pair_kwargs
            config.pair_note = trained.pair_note
        _check_resumable(config, trained, state["epoch"])
    if progress is None:
        progress = sys.stderr.isatty()

    pyro.set_rng_seed(config.seed)
    data = load_data(config, device)
    train_x = data.train if config.train_limit is None else data.train[: config.train_limit]
    valid_x = eval_split(data, "valid", config.binarize)
    if record_object and not resume:
        record_pair_object(pair, config, data.image_shape)
    pair = make_pair(config, data.image_shape, device, pair)
    info = check_pair(pair, _probe_batch(data, config))
    scales = TrainingScales(data_plate=info.data_plate)
    # With global latents a minibatch stands for the whole training set, as under Pyro's
    # plate(size=N, subsample_size=B): local sites weigh N/B. A pair that subsamples its own
    # data plate has said so already.
    scale_data = bool(info.global_sites) and not info.data_subsampled
    if scale_data:
        _log(
            f"note: global latent site(s) {list(info.global_sites)}: each minibatch's local "
            f"sites are scaled by N/B (N = {train_x.shape[0]}), so the loss estimates the "
            "whole training set's"
        )
    if config.num_particles > 1 and not info.vectorizable:
        _log("note: the pair does not vectorize over particles; particles run in a loop")
    elbo = make_objective(
        config.objective,
        config.num_particles,
        vectorize=info.vectorizable,
        max_plate_nesting=info.max_plate_nesting,
        alpha=config.alpha,
    )
    guide, _ = training_guide(pair, config, train_x[:2], device)
    optimizer = pyro.optim.Adam(optimizer_args(config))
    svi = pyro.infer.SVI(scales(pair.model), scales(guide), optimizer, loss=elbo)
    atomic_write_bytes(run_dir / CONFIG, dumps_toml(config.to_dict()).encode())

    history: list[dict[str, float]] = []
    start_epoch = 0
    global_step = 0
    best = -math.inf
    if resume:
        restore_params(pair, state, device)
        optimizer.set_state(state["optimizer"])
        _set_rng_state(state["rng"], device)
        history = state["history"]
        start_epoch = state["epoch"]
        global_step = state.get("step", start_epoch * _steps_per_epoch(train_x, config))
        best = max((row["valid_elbo"] for row in history), default=-math.inf)
        _log(f"resuming {run_dir} after epoch {start_epoch} of {config.epochs}")

    num_batches = _steps_per_epoch(train_x, config)
    num_train = train_x.shape[0]
    for epoch in range(start_epoch + 1, config.epochs + 1):
        set_training_mode(pair, True)
        started = time.perf_counter()
        total, seen = 0.0, 0
        batches = minibatches(
            train_x, config.batch_size, binarize=config.binarize, drop_last=config.drop_last
        )
        bar = tqdm(batches, total=num_batches, desc=f"epoch {epoch}/{config.epochs}",
                   disable=not progress, leave=False, unit="step")  # fmt: skip
        for step, x in enumerate(bar, start=1):
            beta = kl_weight(global_step, config.beta, config.kl_warmup, config.kl_warmup_start)
            scales.beta = beta
            scales.data_scale = num_train / x.shape[0] if scale_data else 1.0
            loss = svi.step(x)
            global_step += 1
            if config.baseline != "none":
                forget_stale_optimizers(optimizer)
            if not math.isfinite(loss):
                kept = (
                    f"the checkpoint of epoch {history[-1]['epoch']} in {str(run_dir)!r} is kept"
                    if history
                    else "no checkpoint was written yet"
                )
                raise TrainingError(
                    f"loss is {loss} at epoch {epoch}, step {step}: training stopped; {kept}. "
                    "Try a smaller --lr, or check the data and the pair."
                )
            # per point: with the N/B scale the step's loss stands for all N points
            total += loss * x.shape[0] / num_train if scale_data else loss
            seen += x.shape[0]
            if progress and step % 10 == 0:
                bar.set_postfix(loss=f"{total / seen:.2f}")
        bar.close()
        train_seconds = time.perf_counter() - started
        valid = validation_elbo(pair, valid_x, info, max(config.batch_size, 500))
        row = {
            "epoch": epoch,
            "train_loss": total / seen,
            "valid_elbo": valid,
            "seconds": time.perf_counter() - started,
            "train_seconds": train_seconds,
            "beta": beta,
        }
        history.append(row)
        state = checkpoint_state(pair, optimizer, epoch, history, config, device, global_step)
        paths = [checkpoint_path]
        if valid > best:
            best = valid
            paths.append(run_dir / BEST)
        save_checkpoint(state, *paths)
        write_metrics(run_dir, history)
        _log(
            f"epoch {epoch}/{config.epochs}  train loss {row['train_loss']:.3f}  "
            f"valid ELBO {valid:.3f}  {row['seconds']:.1f}s"
            + (f"  beta {beta:.3g}" if config.beta != 1 or config.kl_warmup else "")
        )
        if on_epoch is not None:
            on_epoch(row)
    if history:
        from pyro_vae.plots import training_curves  # matplotlib only when a run finishes

        training_curves(history, run_dir / CURVES)
    return RunResult(run_dir=run_dir, config=config, history=history, pair=pair)
