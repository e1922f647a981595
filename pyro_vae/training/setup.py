"""Everything a run does before its first step, in one order (RNG draws included, so a
resume is exact): the checks of ``--resume`` and the configuration, the data and this rank's
shard, the pair and its check, the labels and the epoch plan, the objective, the guide, the
optimizer, the SVI objects (compiled if asked), ``config.toml``, the ranks' common start, and
the checkpoint put back on a resume. :func:`set_up` returns what the loop needs as a
:class:`TrainingSetup`, and where the run stands.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch
from pyro import poutine

from pyro_vae.data import DATASETS, Dataset
from pyro_vae.data.registry import DEFAULT_EPOCHS
from pyro_vae.infer.distributed import (
    World,
    check_batch_divides,
    check_same_config,
    rank_seed,
    shard_rows,
    world,
)
from pyro_vae.infer.gradients import BASELINES
from pyro_vae.infer.handlers import TrainingScales
from pyro_vae.infer.objectives import OBJECTIVES
from pyro_vae.infer.optimizers import EpochScheduler, RunOptimizer, make_optimizer
from pyro_vae.pairs import (
    PAIRS,
    PairError,
    PairInfo,
    check_pair,
    evaluation_mode,
    pair_modules,
    resolve_spec,
)
from pyro_vae.pairs.label_encoding import choose_label_encoding, resolve_classify_loss
from pyro_vae.pairs.labels import (
    EpochPlan,
    LabelError,
    TrainingLabels,
    epoch_plan,
    label_arguments,
    program_args,
    training_labels,
)
from pyro_vae.pairs.local_params import LocalParams
from pyro_vae.runs.config import ConfigError, TrainConfig, dumps_toml
from pyro_vae.runs.files import atomic_write_bytes
from pyro_vae.runs.reopen import (
    CONFIG,
    eval_split,
    load_data,
    make_pair,
    probe_batch,
    read_config,
    resolve_device,
    train_points,
)
from pyro_vae.training.outputs import _log
from pyro_vae.training.progress import _Progress
from pyro_vae.training.records import record_pair_object
from pyro_vae.training.resume import _check_resume_flag, _resume, _resumed_checkpoint
from pyro_vae.training.svi import (
    _check_enumeration,
    _compiled,
    _minibatch_scaling,
    _objective,
    at_probe_rows,
    base_rates,
    check_objective,
    local_params,
    training_guide,
)


@dataclass
class TrainingSetup:
    """What the loop needs, made before its first step."""

    pair: Any
    device: torch.device
    train_x: torch.Tensor  # this rank's shard of the training points
    valid_x: torch.Tensor  # this rank's share of the validation points
    num_train: int  # all ranks together
    num_valid: int
    labels: TrainingLabels
    plan: EpochPlan  # the batches of an epoch (of this rank)
    batch_size: int  # this rank's share of --batch-size
    info: PairInfo  # what the check found in the pair
    scales: TrainingScales  # the KL weight and minibatch scale of each step
    points_per_step: Callable[[torch.Tensor], int] | None  # see _minibatch_scaling
    optimizer: RunOptimizer
    scheduler: EpochScheduler
    svi: Any  # pyro.infer.SVI, or CompiledSVI
    classify: pyro.infer.SVI | None  # model_classify/guide_classify on labelled batches
    progress: bool  # draw a progress bar
    local: LocalParams | None = None  # a guide's per-point params at each batch's rows
    image_shape: tuple[int, ...] | None = None  # one point as an image (C, H, W)


def set_up(config: TrainConfig, run_dir: Path, pair: Any, record_object: bool, resume: bool,
           progress: bool | None) -> tuple[TrainingSetup, _Progress]:  # fmt: skip
    """Everything before the first step of ``config``'s run in ``run_dir`` (see the module's
    docstring); ``pair``: the object given from Python, or None. Returns what the loop needs
    and where the run stands: at its start, or put back from the checkpoint it resumes."""
    _check_resume_flag(run_dir, resume)
    device = resolve_device(config.device)
    config.device = str(device)
    state, trained = None, None
    if resume:
        _recorded_label_choices(config, run_dir)
        state, trained = _resumed_checkpoint(config, run_dir, device, record_object)
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
    plan = _epoch_plan(train_x, labels, batch_size, config)
    _check_checkpoint_every(config, plan)
    probe = probe_batch(data, config)
    points = partial(train_points, data, config)  # for a guide that is not amortized
    image_shape = tuple(data.image_shape)
    del data  # a rank of a distributed run keeps its shard only (train_x, valid_x)
    labels, info = _checked_pair(config, pair, probe, labels, points)
    scales = TrainingScales(data_plate=info.data_plate)
    _check_own_subsample(info, ranks)
    points_per_step = _minibatch_scaling(info, num_train, scales)
    local = local_params(info, num_train, batch_size, plan.labelled_batches, ranks.distributed)
    if local is not None:  # the validation points have no per-point params of their own
        valid_x, num_valid = valid_x[:0], 0

    elbo = _objective(config, info, pair_modules(pair))
    # a pair whose labels are optional is probed unlabelled: its discrete sites show there
    probe_args = program_args(probe[:2], _probe_labels(labels, probe[:2]) if info.needs_labels
                              else None)  # fmt: skip
    # the probe trace must not move BatchNorm statistics
    with evaluation_mode(pair), at_probe_rows(local, probe_args[0].shape[0]):
        guide, _ = training_guide(pair, config, probe_args, device)
        if OBJECTIVES[config.objective].enumerates:
            _check_enumeration(elbo, pair.model, guide, probe_args, config)
        check_objective(elbo, config, pair.model, guide, probe_args)
    optimizer = make_optimizer(config, base_rates(config))
    scheduler = EpochScheduler(optimizer, config)
    model = pair.model if local is None else local(pair.model)
    guide = guide if local is None else local(guide)
    svi = pyro.infer.SVI(scales(model), scales(guide), optimizer, loss=elbo)
    classify = None
    if config.classify_loss == "on":
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
    setup = TrainingSetup(pair=pair, device=device, train_x=train_x, valid_x=valid_x,
                         num_train=num_train, num_valid=num_valid, labels=labels, plan=plan,
                         batch_size=batch_size, info=info, scales=scales,
                         points_per_step=points_per_step, optimizer=optimizer,
                         scheduler=scheduler, svi=svi, classify=classify,
                         progress=progress, local=local, image_shape=image_shape)  # fmt: skip
    return setup, run


def _epoch_plan(train_x: torch.Tensor, labels: TrainingLabels, batch_size: int,
                config: TrainConfig) -> EpochPlan:  # fmt: skip
    """The batches of an epoch on ``train_x`` (see :class:`~pyro_vae.pairs.labels.EpochPlan`);
    ``--drop-last`` must leave one."""
    plan = epoch_plan(train_x.shape[0], labels.labelled, batch_size,
                      drop_last=config.drop_last, labelled_batches=config.labelled_batches,
                      seed=config.seed, device=train_x.device)  # fmt: skip
    if plan.steps == 0:
        raise ConfigError(
            f"--drop-last with --batch-size {config.batch_size} leaves no batch of the "
            f"{train_x.shape[0]} training points; lower --batch-size"
        )
    return plan


def _check_checkpoint_every(config: TrainConfig, plan: EpochPlan) -> None:
    """A warning when ``--checkpoint-every`` never falls inside an epoch: every N steps is
    an epoch's end (N a multiple of the steps per epoch), or N is past the run's last step."""
    every, steps = config.checkpoint_every, plan.steps
    if every and (every % steps == 0 or every >= steps * config.epochs):
        _log(
            f"warning: --checkpoint-every {every} writes no checkpoint inside an epoch: an "
            f"epoch here is {steps} steps and the run {steps * config.epochs}, and the end of "
            f"each epoch is checkpointed anyway; choose a number below {steps}, or drop the "
            "flag"
        )


def _check_own_subsample(info: PairInfo, ranks: World) -> None:
    """A data-parallel run scales each rank's loss itself: a pair that subsamples its own
    data plate would count every point once per rank."""
    if ranks.distributed and info.data_plate_size is not None:
        raise ConfigError(
            "the pair subsamples its own data plate (pyro.plate(..., subsample=...)), so each "
            "rank's loss is scaled by N over the rank's share of the batch and the sum over "
            f"{ranks.size} ranks would count every point {ranks.size} times; drop the subsample "
            "from the pair's plate (pyro_vae scales minibatches itself) or train on one process"
        )


def defaults_for(config: TrainConfig) -> TrainConfig:
    """Fill ``None`` choices (pair, binarization, epochs, KL warm-up) from the data set's
    defaults. A run that names no pair also takes the data set's
    :attr:`~pyro_vae.data.DatasetSpec.default_pair_settings` (the digits': 300 epochs, a KL
    warm-up of 2000 steps, ``z_dim`` 16)."""
    spec = DATASETS.get(config.dataset)
    settings = {}
    if config.pair is None and config.model is None:
        config.pair = spec.default_pair if spec else "mlp"
        settings = dict(spec.default_pair_settings) if spec else {}
        config.pair_kwargs = {**settings.get("pair_kwargs", {}), **config.pair_kwargs}
    if config.epochs is None:
        config.epochs = settings.get("epochs", DEFAULT_EPOCHS)
    if config.kl_warmup is None:
        config.kl_warmup = settings.get("kl_warmup", 0)
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
    if config.dataset.lower().endswith((".npy", ".npz", ".csv")) or (
        spec is None and config.dataset.strip() and Path(config.dataset).expanduser().is_dir()
    ):  # a folder of images
        config.dataset = str(Path(config.dataset).expanduser().resolve())
    if BASELINES[config.baseline].fixed_batch_size and not config.drop_last:
        # Pyro keeps the decaying average per data point with the first batch's shape.
        _log(f"note: --baseline {config.baseline} needs equal batches: --drop-last is set")
        config.drop_last = True
    if BASELINES[config.baseline].needs_module and config.baseline_lr is None:
        config.baseline_lr = 10 * config.lr
    return config


def _training_labels(config: TrainConfig, data: Dataset, pair: Any, train_count: int):
    """The run's :class:`~pyro_vae.pairs.labels.TrainingLabels`; records ``num_labelled``."""
    try:
        arguments = label_arguments(pair)
    except LabelError as error:
        raise PairError(str(error)) from error
    # class indices here; _checked_pair encodes them as the pair takes them
    labels = training_labels(data, arguments, num_labelled=config.num_labelled,
                             encoding="index", train_count=train_count, seed=config.seed,
                             log=_log)  # fmt: skip
    if labels.used:
        config.num_labelled = labels.num_labelled
        if labels.num_labelled == 0:
            _log(
                f"note: --num-labelled 0: none of the {train_count} training points keeps its "
                "label: the pair trains unsupervised, its programs called without y"
            )
        elif labels.num_labelled < train_count:
            _log(
                f"note: {labels.num_labelled} of {train_count} training points keep their "
                f"labels ({labels.num_labelled // labels.num_classes} per class)"
            )
    return labels


def _checked_pair(config: TrainConfig, pair: Any, probe: torch.Tensor, labels: TrainingLabels,
                  points: Any = None) -> tuple[TrainingLabels, PairInfo]:  # fmt: skip
    """:func:`~pyro_vae.pairs.check_pair` on the probe batch, and for a run with labels (held
    as class indices) the encoding its programs take (``--label-encoding``, chosen where
    ``auto``) and its classification loss run once; records both choices in ``config`` and
    returns the labels as the pair takes them. ``points``: check_pair's, all the training
    points (for a guide that is not amortized), or None."""
    classifier = callable(getattr(pair, "model_classify", None)) and callable(
        getattr(pair, "guide_classify", None)
    )
    try:
        config.classify_loss = resolve_classify_loss(config.classify_loss, classifier,
                                                     labels.used, labels.num_labelled)  # fmt: skip
    except LabelError as error:
        raise ConfigError(str(error)) from error
    if config.classify_loss == "off" and not classifier:
        _log("note: --classify-loss off has no effect: the pair defines no model_classify and "
             "guide_classify")  # fmt: skip
    if not labels.used:
        if config.label_encoding != "auto":  # a config file may carry it: noted, not refused
            _log(f"note: --label-encoding {config.label_encoding} has no effect: this run gives "
                 "the pair's programs no labels")  # fmt: skip
        return labels, check_pair(pair, probe, **({} if points is None else {"points": points}))
    classes = labels.train[: probe.shape[0]]
    encoding, info = choose_label_encoding(pair, probe, classes, labels.num_classes,
                                           requested=config.label_encoding,
                                           classify=config.classify_loss == "on", log=_log,
                                           points=points, point_classes=labels.train)  # fmt: skip
    config.label_encoding = encoding
    return labels.encoded(encoding, probe.dtype), info


def _recorded_label_choices(config: TrainConfig, run_dir: Path) -> None:
    """A resumed run keeps the label encoding and classification loss its start chose
    (recorded in its config.toml) where ``config`` leaves them to their defaults."""
    if config.label_encoding != "auto" and config.classify_loss is not None:
        return
    try:
        recorded = read_config(run_dir)
    except ConfigError:
        return  # the checkpoint's own check says what is wrong
    if config.label_encoding == "auto":
        config.label_encoding = recorded.label_encoding
    if config.classify_loss is None:
        config.classify_loss = recorded.classify_loss


def _probe_labels(labels, x: torch.Tensor) -> torch.Tensor | None:
    """The labels of the probe batch (the first training points), or None."""
    return None if labels.train is None else labels.train[: x.shape[0]]


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
