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
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch
from pyro import poutine
from torch import nn
from tqdm.auto import tqdm

from pyro_vae.data import DATASETS, Dataset
from pyro_vae.infer.compiled import CompiledSVI, untraceable_reason
from pyro_vae.infer.distributed import (
    DistributedError,
    World,
    check_batch_divides,
    check_same_config,
    current_world,
    rank_seed,
    shard_rows,
    world,
)
from pyro_vae.infer.estimators import evaluation_view, log_importance_weights
from pyro_vae.infer.gradients import (
    BASELINE_MODULE,
    BASELINES,
    forget_stale_optimizers,
    neural_baselines,
    non_reparameterized_sites,
    score_function,
    with_baseline,
)
from pyro_vae.infer.handlers import TrainingScales, kl_weight
from pyro_vae.infer.objectives import OBJECTIVES, enumerated_guide, make_objective
from pyro_vae.infer.optimizers import EpochScheduler, lr_factor, make_optimizer
from pyro_vae.pairs import (
    PAIRS,
    PairError,
    PairInfo,
    build_pair,
    check_pair,
    evaluation_mode,
    pair_modules,
    parameter_shapes,
    record_pair,
    resolve_spec,
    set_training_mode,
)
from pyro_vae.pairs.labels import (
    LabelError,
    accuracy,
    epoch_plan,
    guide_class_probabilities,
    label_arguments,
    program_args,
    training_labels,
)
from pyro_vae.runs.checkpoints import (
    BEST,
    CHECKPOINT,
    CheckpointError,
    checkpoint_state,
    load_checkpoint,
    restore_params,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pyro_vae.runs.config import FIELDS, ConfigError, TrainConfig, dumps_toml
from pyro_vae.runs.faults import fault_point
from pyro_vae.runs.files import atomic_write_bytes
from pyro_vae.runs.lock import StopSignals, remove_stale_temporaries, run_lock
from pyro_vae.runs.reopen import (
    CONFIG,
    RESUMABLE_CHANGES,
    eval_split,
    load_data,
    make_pair,
    probe_batch,
    read_config,  # noqa: F401 -- importable from here as before
    resolve_device,
    restore_pair,  # noqa: F401 -- importable from here as before
    split_labels,  # noqa: F401 -- importable from here as before
)

METRICS = "metrics.csv"
CURVES = "metrics.png"
#: The files a trainer writes (see :func:`pyro_vae.runs.lock.remove_stale_temporaries`).
RUN_FILES = (CONFIG, METRICS, CURVES, CHECKPOINT, BEST, "write-test")
METRIC_COLUMNS = (
    "epoch", "train_loss", "valid_elbo", "seconds", "train_seconds", "beta", "lr",
)  # fmt: skip
#: Columns written only for runs that have them (a pair with a label site, a classifier).
LABEL_METRIC_COLUMNS = ("valid_accuracy", "classify_loss")
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
        """The best validation ELBO; NaN for a run without a validation split."""
        return max((row["valid_elbo"] for row in self.history), key=_best_key)


def _best_key(valid_elbo: float) -> float:
    """Order of validation ELBOs for best.pt: NaN (no validation split) counts as -inf."""
    return -math.inf if math.isnan(valid_elbo) else valid_elbo


def best_epoch(history: list[dict[str, float]]) -> int:
    """The epoch best.pt holds: the best validation ELBO (the first of equals), or the last
    epoch for a run without a validation split (``--valid-size 0``)."""
    if all(math.isnan(row["valid_elbo"]) for row in history):
        return history[-1]["epoch"]
    return max(history, key=lambda row: _best_key(row["valid_elbo"]))["epoch"]


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
    pair: Any, config: TrainConfig, args: tuple[torch.Tensor, ...], device: torch.device
) -> tuple[Callable, nn.Module | None]:
    """The guide SVI differentiates, and its neural baselines (or ``None``).

    ``pair.guide``, made non-reparameterized by ``--score-function``, with the
    ``--baseline`` at its non-reparameterized sites (found by tracing it on ``args``, a
    probe batch ``(x,)`` or ``(x, y)``), its discrete sites enumerated under ``enum``; the
    neural baselines, one per such site, are registered as ``pyro.module("baseline")``
    so that a resume restores them in place. Evaluation always uses the plain ``pair.guide``.
    """
    guide = score_function(pair.guide) if config.score_function else pair.guide
    if OBJECTIVES[config.objective].enumerates:
        guide = enumerated_guide(guide, config.enumerate)
    if config.baseline == "none":
        return guide, None
    x = args[0]
    sites = non_reparameterized_sites(guide, *args)
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


def base_rates(config: TrainConfig) -> Callable[[str], float]:
    """The base learning rate of each parameter, by param-store name: ``--baseline-lr`` for
    the neural baseline's parameters (``baseline.*``, or ``baseline$$$*`` as the param store
    names them), ``--lr`` for all others. The schedule multiplies both by its factor."""

    def lr_for(name: str) -> float:
        in_baseline = name.replace("$$$", ".").startswith(BASELINE_MODULE + ".")
        if config.baseline_lr is not None and in_baseline:
            return config.baseline_lr
        return config.lr

    return lr_for


def validation_elbo(
    pair: Any, x: torch.Tensor, info: PairInfo, batch_size: int, y: torch.Tensor | None = None
) -> float:
    """Mean single-sample ELBO per data point over ``x``, with its own fixed seed: the true
    ELBO (every site unscaled, so beta = 1; global latents at the guide's mean; modules in
    eval mode), whatever the training objective weighs. ``y``: the labels of a pair that
    needs them (its ELBO is then that of log p(x | y))."""
    devices = [x.device] if x.device.type == "cuda" else []
    total = 0.0
    with torch.random.fork_rng(devices=devices), evaluation_mode(pair):
        torch.manual_seed(VALID_SEED)
        view = evaluation_view(pair, info, x[:2], None if y is None else y[:2])
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
                y=None if y is None else y[start : start + batch_size],
            )
            total += log_weights.sum().item()
    return total / x.shape[0]


def guide_accuracy(
    pair: Any, x: torch.Tensor, classes: torch.Tensor, label_site: str, batch_size: int
) -> float:
    """The fraction of points of ``x`` whose most probable class under the guide's q(y|x)
    at ``label_site`` is their class (modules in eval mode; the RNG is left as it was)."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), evaluation_mode(pair):
        probs = guide_class_probabilities(pair.guide, x, label_site, max(batch_size, 500))
    return accuracy(probs, classes)


def write_metrics(run_dir: Path, history: list[dict[str, float]]) -> None:
    """Rewrite ``metrics.csv`` from the history kept in the checkpoint (never out of step);
    the label columns only where some epoch has them."""
    extra = [c for c in LABEL_METRIC_COLUMNS if any(c in row for row in history)]
    columns = [*METRIC_COLUMNS, *extra]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in columns})
    atomic_write_bytes(run_dir / METRICS, buffer.getvalue().encode())


def prepare_run_dir(path: str | Path) -> Path:
    """Make the folder ``path`` (``--out``) and check a file can be created in it.

    An existing file, a path under a file, or a place that cannot be written (read-only,
    no permission, a virtual file system such as /proc) raises :class:`ConfigError` naming
    the path, before any data are read or training starts. The check creates and removes an
    empty file, since permission bits say nothing when running as root.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test.{time.time_ns()}.tmp"
        probe.touch()
        probe.unlink()
    except FileExistsError as error:
        raise ConfigError(
            f"--out {str(path)!r} is an existing file, not a folder; choose another --out"
        ) from error
    except NotADirectoryError as error:
        blocking = next((p for p in reversed((path, *path.parents)) if p.is_file()), path)
        raise ConfigError(
            f"--out {str(path)!r}: {str(blocking)!r} is a file, so no folder can be made "
            "inside it; choose another --out"
        ) from error
    except OSError as error:
        raise ConfigError(
            f"--out {str(path)!r}: cannot make or write to this folder ({error.strerror}); "
            "choose another --out, a folder you can write to"
        ) from error
    return path


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
    if config.epochs < epoch:
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
    assumed = [name for name in record.assumed if name not in config.pair_kwargs]
    if assumed:
        _log(
            f"note: the pair object {type(pair).__qualname__} keeps no attribute named "
            f"{', '.join(assumed)}, so the run records the default value(s) of those "
            "constructor arguments; if you passed others, give them in TrainConfig's "
            "pair_kwargs (or config.toml's) so that pyro-vae evaluate rebuilds the same pair"
        )
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
    if world().is_main:  # one voice for the ranks of a distributed run
        print(message, file=sys.stderr, flush=True)


def train(
    config: TrainConfig,
    *,
    pair: Any = None,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> RunResult:
    """Train a pair by SVI as ``config`` says, writing the run directory ``config.out``.

    ``pair`` may be given as an object (from Python); otherwise it is built from
    ``config.pair`` or ``config.model``/``config.guide``. ``resume=True`` continues from the
    run directory's last checkpoint (the end of an epoch, or the step a signal or
    ``checkpoint_every`` saved) up to ``config.epochs``; a finished run only gets its
    finishing steps (metrics, learning curves). One trainer at a time holds the directory's
    lock; SIGINT/SIGTERM stop the run after the current step, with that step saved.
    ``on_epoch(row)`` receives each epoch's row of ``metrics.csv``; ``on_step(metrics)`` the
    ``epoch``, ``step``, ``loss`` (of this step's batch) and ``beta`` after every SVI step.

    Under torchrun (``WORLD_SIZE`` > 1) this process is one rank of a data-parallel run
    (:mod:`pyro_vae.distributed`): every rank trains on its shard with ``batch_size / R``
    points per step, gradients are summed before each optimizer step, and rank 0 alone
    holds the lock and writes the run directory.
    """
    record_object = pair is not None and config.pair is None and config.model is None
    if record_object:
        config.pair = "<pair object>"  # replaced once the data set's shape is known
    config = defaults_for(config.validate())
    if config.out is None:
        raise ConfigError("--out RUN_DIR is required: the run directory to write")
    ranks, config.device = current_world(config.device)
    run_dir = Path(config.out)
    if ranks.is_main:
        run_dir = prepare_run_dir(run_dir)
    ranks.barrier("rank 0 prepared the run directory")
    with run_lock(run_dir) if ranks.is_main else nullcontext(), StopSignals() as stop:
        if ranks.is_main:
            remove_stale_temporaries(run_dir, own=RUN_FILES)
        return _train(config, run_dir, pair, record_object, resume, progress, (on_epoch, on_step),
                      stop)  # fmt: skip


@dataclass
class _Progress:
    """Where a run stands: finished epochs, SVI steps, and the epoch in progress (its data
    order, the batches done and the running sums), all of it in every checkpoint."""

    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0
    epoch: int = 0  # the last finished epoch
    order: torch.Tensor | None = None
    batches_done: int = 0
    total: float = 0.0
    seen: int = 0
    train_seconds: float = 0.0
    beta: float = 1.0
    classify_total: float = 0.0  # model_classify/guide_classify loss over the epoch
    labelled_seen: int = 0

    def in_progress(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch + 1,
            "order": None if self.order is None else self.order.cpu(),
            "batches_done": self.batches_done,
            "total": self.total,
            "seen": self.seen,
            "train_seconds": self.train_seconds,
            "beta": self.beta,
            "classify_total": self.classify_total,
            "labelled_seen": self.labelled_seen,
        }


def _train(config, run_dir, pair, record_object, resume, progress, callbacks, stop) -> RunResult:
    on_epoch, on_step = callbacks
    checkpoint_path = run_dir / CHECKPOINT
    if resume and not checkpoint_path.exists():
        raise TrainingError(
            f"--resume: no checkpoint in {str(run_dir)!r} ({CHECKPOINT} is missing); "
            "start the run without --resume"
        )
    if not resume and checkpoint_path.exists():
        raise TrainingError(
            f"{str(run_dir)!r} already holds a run; pass --resume to continue it, "
            "or choose another --out"
        )
    device = resolve_device(config.device)
    config.device = str(device)
    state, trained = None, None
    if resume:
        state = load_checkpoint(checkpoint_path, device)
        trained = TrainConfig(**state["config"])
        if record_object:  # the object's record is the run's own
            config.pair, config.pair_kwargs = trained.pair, trained.pair_kwargs
            config.pair_note = trained.pair_note
        if config.num_labelled is None:  # resolved when the run started
            config.num_labelled = trained.num_labelled
        _check_resumable(config, trained, state["epoch"])
    ranks = world()
    check_same_config(ranks, config.to_dict(), ignore=("device",))
    check_batch_divides(config.batch_size, ranks.size, f"{ranks.size} ranks")
    if progress is None:
        progress = sys.stderr.isatty()
    progress = progress and ranks.is_main

    pyro.set_rng_seed(config.seed)
    data = load_data(config, device)
    train_x = data.train if config.train_limit is None else data.train[: config.train_limit]
    valid_x = eval_split(data, "valid", config.binarize)
    num_train, num_valid = train_x.shape[0], valid_x.shape[0]
    if record_object and not resume:
        record_pair_object(pair, config, data.image_shape)
    pair = make_pair(config, data.image_shape, device, pair, data.num_classes)
    labels = _training_labels(config, data, pair, train_x.shape[0])
    batch_size = config.batch_size // ranks.size  # each rank's share of the global batch
    if ranks.distributed:
        _check_distributable(labels, config, ranks)
        rows = shard_rows(num_train, ranks.rank, ranks.size, config.seed).to(train_x.device)
        train_x, valid_x = train_x[rows], valid_x[ranks.rank :: ranks.size]
    plan = epoch_plan(train_x.shape[0], labels.labelled, batch_size,
                      drop_last=config.drop_last, labelled_batches=config.labelled_batches,
                      seed=config.seed, device=train_x.device)  # fmt: skip
    if plan.steps == 0:
        raise ConfigError(
            f"--drop-last with --batch-size {config.batch_size} leaves no batch of the "
            f"{train_x.shape[0]} training points; lower --batch-size"
        )
    probe = probe_batch(data, config)
    del data  # a rank of a distributed run keeps its shard only (train_x, valid_x)
    info = check_pair(pair, probe, _probe_labels(labels, probe))
    scales = TrainingScales(data_plate=info.data_plate)
    if ranks.distributed and info.data_plate_size is not None:
        raise ConfigError(
            "the pair subsamples its own data plate (pyro.plate(..., subsample=...)), so each "
            "rank's loss is scaled by N over the rank's share of the batch and the sum over "
            f"{ranks.size} ranks would count every point {ranks.size} times; drop the subsample "
            "from the pair's plate (pyro_vae scales minibatches itself) or train on one process"
        )
    points_per_step = _minibatch_scaling(info, num_train, scales)
    if config.num_particles > 1 and not info.vectorizable:
        _log("note: the pair does not vectorize over particles; particles run in a loop")
    elbo = make_objective(
        config.objective,
        config.num_particles,
        vectorize=info.vectorizable,
        max_plate_nesting=info.max_plate_nesting,
        alpha=config.alpha,
    )
    _recommend_enumeration(config, info)
    # a pair whose labels are optional is probed unlabelled: its discrete sites show there
    probe_args = program_args(probe[:2], _probe_labels(labels, probe[:2]) if info.needs_labels
                              else None)  # fmt: skip
    with evaluation_mode(pair):  # the probe trace must not move BatchNorm statistics
        guide, _ = training_guide(pair, config, probe_args, device)
        if OBJECTIVES[config.objective].enumerates:
            _check_enumeration(elbo, pair.model, guide, probe_args, config)
    optimizer = make_optimizer(config, base_rates(config))
    scheduler = EpochScheduler(optimizer, config)
    svi = pyro.infer.SVI(scales(pair.model), scales(guide), optimizer, loss=elbo)
    classify = None
    if info.has_classifier and labels.used:
        classify = pyro.infer.SVI(pair.model_classify, pair.guide_classify, optimizer,
                                  loss=pyro.infer.Trace_ELBO(max_plate_nesting=1))  # fmt: skip
    if config.compile != "off":
        svi = _compiled(svi, pair, guide, scales, optimizer, info, probe_args, config)
    if ranks.is_main:
        atomic_write_bytes(run_dir / CONFIG, dumps_toml(config.to_dict()).encode())
    if ranks.distributed:
        optimizer.reduce_gradients = ranks.sum_gradients
        _same_start(ranks, scales(pair.model), scales(guide), probe_args, pair)

    run = _Progress()
    if resume:
        run = _resume(pair, optimizer, scheduler, state, trained, config, device, run_dir, train_x)
    elif ranks.distributed:  # the same parameters everywhere; from here, a stream per rank
        pyro.set_rng_seed(rank_seed(config.seed, ranks.rank))
    saved = _saved_at(run)

    for epoch in range(run.epoch + 1, config.epochs + 1):
        scheduler.step(epoch)
        set_training_mode(pair, True)
        started = time.perf_counter() - run.train_seconds
        if run.batches_done == 0 and plan.unlabelled.numel():
            run.order = torch.randperm(plan.unlabelled.numel(), device=train_x.device)
        bar = tqdm(range(run.batches_done, plan.steps), total=plan.steps,
                   initial=run.batches_done, desc=f"epoch {epoch}/{config.epochs}",
                   disable=not progress, leave=False, unit="step")  # fmt: skip
        for step_in_epoch in bar:
            where = f"epoch {epoch}, step {run.batches_done + 1}"
            x, y = _batch(train_x, labels, plan, run, epoch, step_in_epoch, config, batch_size)
            run.beta = kl_weight(run.step, config.beta, config.kl_warmup, config.kl_warmup_start)
            scales.beta = run.beta
            global_batch = x.shape[0] * ranks.size
            scales.data_scale = num_train / global_batch if points_per_step else 1.0
            loss = _svi_step(svi, program_args(x, y), pair, where, saved, run_dir, config,
                             stop)  # fmt: skip
            if classify is not None and y is not None:
                run.classify_total += _svi_step(classify, (x, y), pair, where, saved, run_dir,
                                                config, stop)  # fmt: skip
                run.labelled_seen += global_batch
            if config.baseline != "none":
                forget_stale_optimizers(optimizer)
            run.step += 1
            run.batches_done += 1
            # per point: a step whose data sites are scaled by N/B stands for N points
            run.total += loss * global_batch / points_per_step(x) if points_per_step else loss
            run.seen += global_batch
            run.train_seconds = time.perf_counter() - started
            fault_point("step")
            if on_step is not None:
                on_step({"epoch": epoch, "step": run.step, "loss": loss, "beta": run.beta})
            if progress and run.batches_done % 10 == 0:
                bar.set_postfix(loss=f"{run.total / run.seen:.2f}")
            last = run.batches_done == plan.steps
            every = config.checkpoint_every and run.step % config.checkpoint_every == 0
            if not last and (stop.requested or every):
                _save_in_progress(
                    pair, (optimizer, scheduler), run, config, device, checkpoint_path, where
                )
                saved = _saved_at(run)
                if stop.requested:
                    raise KeyboardInterrupt(
                        f"{stop.requested}: stopped after {where}, which is saved in "
                        f"{str(checkpoint_path)!r}; resume with: pyro-vae train --out "
                        f"{run_dir} --resume"
                    )
        bar.close()
        train_seconds = run.train_seconds
        _check_finite(pair, f"the end of epoch {epoch}", saved, run_dir, config)
        valid_y = labels.valid if info.needs_labels else None
        valid = math.nan  # --valid-size 0: no validation split, best.pt follows the last epoch
        if num_valid:
            valid = _validate(pair, valid_x, valid_y, info, config, epoch, saved, run_dir,
                              num_valid)  # fmt: skip
        row = {
            "epoch": epoch,
            "train_loss": run.total / run.seen,
            "valid_elbo": valid,
            "seconds": time.perf_counter() - started,
            "train_seconds": train_seconds,
            "beta": run.beta,
            "lr": config.lr * lr_factor(config, epoch - 1),
        }
        if classify is not None:
            row["classify_loss"] = run.classify_total / max(run.labelled_seen, 1)
        if info.label_site is not None and labels.valid_classes is not None and num_valid:
            classes = labels.valid_classes[ranks.rank :: ranks.size]
            right = guide_accuracy(pair, valid_x, classes, info.label_site,
                                   config.batch_size) * classes.shape[0]  # fmt: skip
            row["valid_accuracy"] = ranks.sum([right])[0] / num_valid
        best = max((_best_key(r["valid_elbo"]) for r in run.history), default=-math.inf)
        improved = valid > best or math.isnan(valid)
        run.history.append(row)
        run = _Progress(history=run.history, step=run.step, epoch=epoch, beta=run.beta)
        state = checkpoint_state(
            pair, optimizer, epoch, run.history, config, device, run.step, scheduler=scheduler
        )
        _add_rank_states(state, ranks, device, None)
        # best.pt first: a kill between the two writes leaves checkpoint.pt one epoch behind,
        # and the resumed run redoes that epoch and writes best.pt again, bit for bit
        if ranks.is_main:
            save_checkpoint(state, *([run_dir / BEST] if improved else []), checkpoint_path)
            write_metrics(run_dir, run.history)
        saved = _saved_at(run)
        _log(
            f"epoch {epoch}/{config.epochs}  train loss {row['train_loss']:.3f}  "
            + (f"valid ELBO {valid:.3f}" if not math.isnan(valid) else "no validation split")
            + f"  {row['seconds']:.1f}s"
            + (f"  beta {run.beta:.3g}" if config.beta != 1 or config.kl_warmup else "")
            + (f"  valid accuracy {row['valid_accuracy']:.4f}" if "valid_accuracy" in row else "")
        )
        if on_epoch is not None:
            on_epoch(row)
        _agree_on_stop(stop, ranks)
        if stop.requested and epoch < config.epochs:
            raise KeyboardInterrupt(
                f"{stop.requested}: stopped after epoch {epoch}, which is saved in "
                f"{str(checkpoint_path)!r}; resume with: pyro-vae train --out {run_dir} --resume"
            )
    if ranks.is_main:
        _finish(run_dir, run.history)
    return RunResult(run_dir=run_dir, config=config, history=run.history, pair=pair)


def _check_distributable(labels, config: TrainConfig, ranks: World) -> None:
    """What a data-parallel run cannot do yet, refused before any work."""
    if labels.used:
        raise ConfigError(
            f"--nproc-per-node {ranks.size}: training with labels (labelled batches, "
            "model_classify) is not data-parallel yet: each rank would hold another number of "
            "labelled points and take another number of steps; train it on one process"
        )


def _same_start(ranks: World, model, guide, args: tuple, pair: Any) -> None:
    """Create every parameter the programs make at their first call, then give all ranks
    rank 0's values of the param store and the pair's buffers: the ranks start equal."""
    with torch.no_grad(), evaluation_mode(pair):
        guide_trace = poutine.trace(guide).get_trace(*args)
        poutine.replay(model, trace=guide_trace)(*args)
    store = pyro.get_param_store()
    tensors = [store._params[name] for name in sorted(store.keys())]
    if isinstance(pair, torch.nn.Module):
        tensors += [b for _, b in sorted(pair.named_buffers(), key=lambda item: item[0])]
    ranks.broadcast_tensors(tensors, "sharing rank 0's initial parameters")


def _agree_on_stop(stop: StopSignals, ranks: World) -> None:
    """A signal at one rank stops every rank (at the same step or epoch end)."""
    if ranks.distributed:
        _note_stops(stop, ranks.sum([1.0 if stop.requested else 0.0])[0])


def _note_stops(stop: StopSignals | None, stops: float) -> None:
    """``stops``: the ranks' stop flags summed; one set anywhere stops this rank too."""
    if stops and stop is not None and not stop.requested:
        stop.requested = "a stop at another rank"


def _add_rank_states(state: dict, ranks: World, device, run: _Progress | None) -> None:
    """Every rank's random state (and, mid-epoch, its data order) into rank 0's checkpoint:
    a resume on the same number of ranks continues each stream exactly."""
    if not ranks.distributed:
        return
    mine = {"rng": rng_state(device),
            "order": None if run is None or run.order is None else run.order.cpu()}  # fmt: skip
    state["world_size"] = ranks.size
    state["ranks"] = ranks.gather(mine, "saving the checkpoint")


def _training_labels(config: TrainConfig, data: Dataset, pair: Any, train_count: int):
    """The run's :class:`~pyro_vae.pairs.labels.TrainingLabels`; records ``num_labelled``."""
    try:
        arguments = label_arguments(pair)
    except LabelError as error:
        raise PairError(str(error)) from error
    labels = training_labels(data, arguments, num_labelled=config.num_labelled,
                             encoding=config.label_encoding, train_count=train_count,
                             seed=config.seed, log=_log)  # fmt: skip
    if labels.used:
        config.num_labelled = labels.num_labelled
        if labels.num_labelled < train_count:
            _log(
                f"note: {labels.num_labelled} of {train_count} training points keep their "
                f"labels ({labels.num_labelled // labels.num_classes} per class)"
            )
    return labels


def _probe_labels(labels, x: torch.Tensor) -> torch.Tensor | None:
    """The labels of the probe batch (the first training points), or None."""
    return None if labels.train is None else labels.train[: x.shape[0]]


def _batch(train_x, labels, plan, run, epoch: int, step: int, config: TrainConfig,
           batch_size: int):  # fmt: skip
    """Step ``step`` of epoch ``epoch``: a labelled batch ``(x, y)`` or an unlabelled one
    ``(x, None)`` (see :class:`~pyro_vae.pairs.labels.EpochPlan`) of ``batch_size`` points (this
    rank's share of ``--batch-size``), binarized afresh if dynamic."""
    if plan.is_labelled(step):
        index = (epoch - 1) * plan.labelled_batches + plan.labelled_before(step)
        rows = plan.labelled_indices(index)
        x, y = train_x[rows], labels.train[rows]
    else:
        start = (step - plan.labelled_before(step)) * batch_size
        rows = run.order[start : start + batch_size]
        if plan.labelled.numel():
            rows = plan.unlabelled[rows]
        x, y = train_x[rows], None
    if config.binarize == "dynamic":
        x = torch.bernoulli(x)
    return x, y


def _recommend_enumeration(config: TrainConfig, info: PairInfo) -> None:
    if info.enumerable_sites and not OBJECTIVES[config.objective].enumerates:
        _log(
            f"note: guide site(s) {list(info.enumerable_sites)} are discrete with a finite "
            f"support, which --objective {config.objective} samples; --objective enum sums "
            "them out exactly (no score-function variance)"
        )


def _compiled(svi, pair, guide, scales, optimizer, info, args, config):
    """``--compile``: the step as a compiled graph of the pair's loss
    (:class:`~pyro_vae.infer.compiled.CompiledSVI`), falling back to ``svi``; a pair that cannot be
    traced trains eagerly with a one-line note naming why (an error under ``strict``)."""
    modules = pair_modules(pair)
    reason = None
    if config.num_particles > 1 and not info.vectorizable:
        reason = "the pair does not vectorize over particles"
    if reason is None:
        with evaluation_mode(pair):  # the check's trace must not move BatchNorm statistics
            reason = untraceable_reason(scales(pair.model), scales(guide), args, modules,
                                        config.objective)  # fmt: skip
    if reason is not None:
        if config.compile == "strict":
            raise ConfigError(
                f"--compile strict: the pair's loss cannot be traced: {reason}; pass --compile "
                "to train it eagerly instead"
            )
        _log(f"note: --compile: the pair trains eagerly: {reason}")
        return svi
    return CompiledSVI(scales(pair.model), scales(guide), optimizer, objective=config.objective,
                       num_particles=config.num_particles, alpha=config.alpha,
                       max_plate_nesting=info.max_plate_nesting, modules=modules, scales=scales,
                       eager=svi, strict=config.compile == "strict",
                       on_note=_log)  # fmt: skip


def _check_enumeration(elbo, model, guide, args: tuple, config: TrainConfig) -> None:
    """One loss of TraceEnum_ELBO on the probe batch, so a pair whose networks do not
    broadcast over the enumerated values fails here with advice, not deep inside a step."""
    try:
        with torch.no_grad():
            elbo.loss(model, guide, *args)
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else ""
        advice = (
            "the networks must broadcast over extra dims on the left, where parallel "
            "enumeration puts each discrete site's values; fix that, or pass --enumerate "
            "sequential (one pass per value, slower)"
            if config.enumerate == "parallel"
            else "check the pair's discrete sites"
        )
        raise PairError(
            f"--objective enum --enumerate {config.enumerate}: the pair fails under "
            f"TraceEnum_ELBO ({type(error).__name__}: {first}); {advice}"
        ) from error


def _minibatch_scaling(info: PairInfo, num_train: int, scales: TrainingScales):
    """How many points one step's loss stands for, as a function of the batch (None: the
    batch itself). With global latents and data sites the pair does not scale itself, the
    data plate's sites weigh N/B (as under Pyro's ``plate(size=N, subsample_size=B)``), so
    the minibatch loss is an unbiased estimate of the whole training set's."""
    data_sites = set(info.local_latent_sites) | set(info.observed_sites)
    if info.data_plate_size is not None:  # the pair subsamples its own data plate
        return lambda x: info.data_plate_size
    if not info.global_sites or data_sites & set(info.scaled_sites):
        return None
    _log(
        f"note: global latent site(s) {list(info.global_sites)}: each minibatch's local "
        f"sites are scaled by N/B (N = {num_train}), so the loss estimates the whole "
        "training set's"
    )
    return lambda x: num_train


def _resume(pair, optimizer, scheduler, state, trained, config, device, run_dir,
            train_x) -> _Progress:  # fmt: skip
    """Put a checkpoint back: parameters, optimizer (at a new ``--lr`` if one was given),
    RNG, history and the epoch in progress; make ``metrics.csv`` and ``best.pt`` agree with
    the checkpoint's history."""
    restore_params(pair, state, device, run_dir / CHECKPOINT)
    if (trained.lr, trained.baseline_lr) != (config.lr, config.baseline_lr):
        _log(
            f"note: --lr {trained.lr:g} -> {config.lr:g} from epoch {state['epoch'] + 1} on "
            "(the lr column of metrics.csv records it)"
        )
    # the saved groups carry the rates they were saved with: the run's base rates replace
    # them (a new --lr), and the schedule sets the resumed epoch's factor
    optimizer.set_state(state["optimizer"])
    scheduler.load_state_dict(state.get("scheduler") or {"last_epoch": state["epoch"] + 1})
    ranks, saved_size = world(), int(state.get("world_size", 1))
    partial = state.get("in_progress")
    order = None if partial is None else partial["order"]
    if saved_size == ranks.size:
        mine = state["ranks"][ranks.rank] if ranks.distributed else {"rng": state["rng"]}
        set_rng_state(mine["rng"], device)
        order = mine.get("order", order) if ranks.distributed else order
    elif partial is not None:
        raise ConfigError(
            f"{CHECKPOINT} was saved in the middle of epoch {state['epoch'] + 1} by "
            f"{saved_size} rank(s); resume it on {saved_size} (--nproc-per-node {saved_size}), "
            "or from the end of an epoch on any number"
        )
    else:
        _log(
            f"note: the checkpoint was saved by {saved_size} rank(s) and the run resumes on "
            f"{ranks.size}: each rank's data shard and random stream change, so the run goes "
            "on correctly but not bit for bit as it would have"
        )
        pyro.set_rng_seed(rank_seed(config.seed + state["epoch"], ranks.rank))
    history = list(state["history"])
    step = state.get("step", state["epoch"] * _steps_per_epoch(train_x, config))
    run = _Progress(history=history, epoch=state["epoch"], step=step)
    if partial is not None:
        run.order = None if order is None else order.to(train_x.device)
        run.batches_done = int(partial["batches_done"])
        run.total, run.seen = float(partial["total"]), int(partial["seen"])
        run.train_seconds = float(partial["train_seconds"])
        run.beta = float(partial["beta"])
        run.classify_total = float(partial.get("classify_total", 0.0))
        run.labelled_seen = int(partial.get("labelled_seen", 0))
    if ranks.is_main:
        write_metrics(run_dir, history)
        _repair_best(run_dir, history, state, partial is not None)
    where = f"step {run.batches_done} of epoch {run.epoch + 1}" if partial else f"epoch {run.epoch}"
    _log(f"resuming {run_dir} after {where} (of {config.epochs} epochs)")
    return run


def _repair_best(run_dir: Path, history: list, state: dict, mid_epoch: bool) -> None:
    """``best.pt`` must hold the epoch the history calls best. It can be one epoch ahead of
    ``checkpoint.pt`` (killed between the two writes): the resumed run redoes and rewrites
    it. Missing or behind while the checkpoint holds the best epoch: copied from it."""
    if not history:
        return
    best = best_epoch(history)
    path = run_dir / BEST
    held = None
    if path.exists():
        try:
            held = load_checkpoint(path)["epoch"]
        except CheckpointError:
            held = None
    if held == best or (held is not None and held > state["epoch"]):
        return
    if best == state["epoch"] and not mid_epoch:
        atomic_write_bytes(path, (run_dir / CHECKPOINT).read_bytes())
        _log(f"note: {BEST} did not hold the best epoch {best}; copied from {CHECKPOINT}")
    else:
        _log(
            f"warning: {BEST} holds epoch {held}, but the history's best is epoch {best}, "
            "whose parameters were not kept; it is replaced when a later epoch beats it"
        )


def _save_in_progress(pair, optimizers, run: _Progress, config, device, path, where) -> None:
    """A checkpoint in the middle of an epoch: the last finished epoch's history, the state
    after this step, and the epoch in progress. ``best.pt`` and ``metrics.csv`` stay."""
    _check_finite(pair, where, _saved_at(run), path.parent, config)
    optimizer, scheduler = optimizers
    state = checkpoint_state(
        pair, optimizer, run.epoch, run.history, config, device, run.step, scheduler=scheduler
    )
    state["in_progress"] = run.in_progress()
    ranks = world()
    _add_rank_states(state, ranks, device, run)
    if ranks.is_main:
        save_checkpoint(state, path)


def _saved_at(run: _Progress) -> str:
    if run.batches_done:
        return f"the checkpoint of epoch {run.epoch + 1}, step {run.batches_done}"
    if run.epoch:
        return f"the checkpoint of epoch {run.epoch}"
    return ""


def _diverged(cause: str, where: str, saved: str, run_dir: Path, config) -> TrainingError:
    if saved:
        kept = f"{saved} in {str(run_dir)!r} is kept (its parameters are finite)"
        advice = (
            "Resume it with a smaller learning rate (pyro-vae train --out "
            f"{run_dir} --resume --lr {config.lr / 10:g})"
        )
    else:
        kept = "no checkpoint was written yet"
        advice = f"Start again with a smaller --lr (now {config.lr:g})"
    return TrainingError(
        f"{cause} at {where}: training stopped; {kept}. {advice}, or check the data and the pair."
    )


def _parameters_finite(pair: Any) -> bool:
    tensors = [value for _, value in pyro.get_param_store().named_parameters()]
    tensors += [p for module in pair_modules(pair) for p in module.parameters()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _check_finite(pair: Any, where: str, saved: str, run_dir: Path, config) -> None:
    """Never save non-finite parameters over a good checkpoint."""
    if not _parameters_finite(pair):
        raise _diverged("a parameter is not finite", where, saved, run_dir, config)


def _svi_step(svi, args: tuple, pair: Any, where: str, saved: str, run_dir, config,
              stop: StopSignals | None = None) -> float:  # fmt: skip
    """One SVI step; a non-finite loss, or a failure from non-finite values (Pyro's
    validation of a distribution's parameters, NaN parameters), becomes a TrainingError
    that says what was kept; any other failure one naming the step and the batch.

    In a distributed run the loss returned is the sum over the ranks (with the stop flags:
    one all-reduce), so a NaN or a stop at any rank is seen by every rank at this step."""
    x = args[0]
    try:
        loss = svi.step(*args)
    except DistributedError:  # a peer died mid-step: its own message, not a step failure
        raise
    except Exception as error:
        message = str(error)
        if not _parameters_finite(pair) or _invalid_values(error):
            what = "non-finite parameters" if not _parameters_finite(pair) else "invalid values"
            first = message.splitlines()[0].rstrip(":")
            cause = f"the run diverged: {what} ({type(error).__name__}: {first})"
            raise _diverged(cause, where, saved, run_dir, config) from error
        hint = ""
        if x.shape[0] == 1:
            hint = (
                " A batch of one point: BatchNorm cannot train on it; pass --drop-last, or a "
                "--batch-size that divides the training set"
            )
        raise TrainingError(
            f"the SVI step failed at {where} on a batch of shape {tuple(x.shape)}: "
            f"{type(error).__name__}: {message}.{hint}"
        ) from error
    ranks = world()
    if ranks.distributed:
        requested = stop is not None and stop.requested
        loss, stops = ranks.sum([loss, 1.0 if requested else 0.0])
        _note_stops(stop, stops)
    if not math.isfinite(loss):
        at = " (summed over the ranks)" if ranks.distributed else ""
        raise _diverged(f"loss is {loss}{at}", where, saved, run_dir, config)
    return loss


def _validate(pair, valid_x, valid_y, info, config, epoch, saved, run_dir,
              num_valid: int) -> float:  # fmt: skip
    """The validation ELBO of an epoch; a failure from invalid values in the pair's
    distributions, or a non-finite ELBO, is a divergence (kept checkpoint named). In a
    distributed run each rank holds ``valid_x``, its share of the ``num_valid`` points."""
    where = f"the validation of epoch {epoch}"
    ranks = world()
    try:
        valid = 0.0
        if valid_x.shape[0]:
            valid = validation_elbo(pair, valid_x, info, max(config.batch_size, 500), valid_y)
        if ranks.distributed:
            valid = ranks.sum([valid * valid_x.shape[0]])[0] / num_valid
    except ValueError as error:
        if not _invalid_values(error):
            raise
        first = str(error).splitlines()[0].rstrip(":")
        cause = f"the run diverged: invalid values (ValueError: {first})"
        raise _diverged(cause, where, saved, run_dir, config) from error
    if not math.isfinite(valid):
        raise _diverged(f"the validation ELBO is {valid}", where, saved, run_dir, config)
    return valid


def _invalid_values(error: Exception) -> bool:
    """Pyro's (torch.distributions') argument validation refusing a parameter's values."""
    message = str(error)
    return (
        isinstance(error, ValueError)
        and "Expected parameter" in message
        and "invalid values" in message
    )


def _finish(run_dir: Path, history: list) -> None:
    """The finishing steps of a run (again on a resume of a finished run): the curves."""
    if history:
        from pyro_vae.runs.figures import training_curves  # matplotlib only when a run finishes

        training_curves(history, run_dir / CURVES)
