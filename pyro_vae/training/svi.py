"""What the loop's SVI step differentiates: the objective, the guide as trained (score
function, baselines, enumeration), the learning rate of each parameter, the minibatch's
scale, and the step compiled where the pair allows it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyro
import torch
from pyro import poutine
from torch import nn

from pyro_vae.infer.compiled import CompiledSVI, untraceable_reason
from pyro_vae.infer.gradients import (
    BASELINE_MODULE,
    BASELINES,
    neural_baselines,
    non_reparameterized_sites,
    score_function,
    with_baseline,
)
from pyro_vae.infer.handlers import TrainingScales
from pyro_vae.infer.objectives import OBJECTIVES, enumerated_guide, make_objective
from pyro_vae.infer.surrogate_elbos import SurrogateELBO
from pyro_vae.infer.surrogates import check_sites
from pyro_vae.pairs import PairError, PairInfo, evaluation_mode, pair_modules
from pyro_vae.pairs.local_params import LocalParams
from pyro_vae.runs.config import ConfigError, TrainConfig
from pyro_vae.training.outputs import _log


def _objective(config: TrainConfig, info: PairInfo, modules: list[nn.Module]):
    """The loss of ``--objective`` with ``--num-particles``, as the checked pair allows it
    (particles vectorized where the pair vectorizes, its plate nesting; ``modules``, the
    pair's networks, for the objectives that stop the guide's parameters)."""
    if config.num_particles > 1 and not info.vectorizable:
        _log("note: the pair does not vectorize over particles; particles run in a loop")
    elbo = make_objective(
        config.objective,
        config.num_particles,
        vectorize=info.vectorizable,
        max_plate_nesting=info.max_plate_nesting,
        alpha=config.alpha,
        modules=modules,
    )
    _recommend_enumeration(config, info)
    return elbo


def _recommend_enumeration(config: TrainConfig, info: PairInfo) -> None:
    if info.enumerable_sites and not OBJECTIVES[config.objective].enumerates:
        _log(
            f"note: guide site(s) {list(info.enumerable_sites)} are discrete with a finite "
            f"support, which --objective {config.objective} samples; --objective enum sums "
            "them out exactly (no score-function variance)"
        )


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


def check_objective(elbo, config: TrainConfig, model, guide, args: tuple) -> None:
    """Refuse, before training, a guide the objective cannot train: ``--objective iwae``
    with a site that is not reparameterized (Pyro's ``RenyiELBO`` scales that site's score
    term by alpha / (1 - alpha), which is 0 at alpha = 0: its encoder would get no gradient at
    all), and for the objectives of :mod:`pyro_vae.infer.surrogate_elbos` one loss on the
    probe batch (its random draws undone): a site that is not reparameterized for
    stl/iwae-dreg, none that is for vimco, a network it cannot stop."""
    if config.objective == "iwae":
        sites = non_reparameterized_sites(guide, *args)
        if sites:
            raise PairError(
                f"--objective iwae: guide site {sites[0]!r} is not reparameterized, and Pyro's "
                "RenyiELBO(alpha=0) gives such a site no gradient (its score term is scaled by "
                "alpha / (1 - alpha) = 0), so the guide would not train. Use --objective vimco "
                "(the IWAE bound with leave-one-out baselines) for the same bound"
            )
    if not isinstance(elbo, SurrogateELBO):
        return
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        if config.objective == "vimco":
            check_sites("vimco", poutine.trace(guide).get_trace(*args), require_score=True)
        elbo.loss(model, guide, *args)


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
    if data_sites & set(info.scaled_sites):
        return None
    if info.local_params and not info.global_sites:
        return lambda x: num_train  # per-point params: the loss is a sum over all N points
    if not info.global_sites:
        return None
    _log(
        f"note: global latent site(s) {list(info.global_sites)}: each minibatch's local "
        f"sites are scaled by N/B (N = {num_train}), so the loss estimates the whole "
        "training set's"
    )
    return lambda x: num_train


def local_params(info: PairInfo, num_train: int, batch_size: int, labelled_batches: int,
                 distributed: bool) -> LocalParams | None:  # fmt: skip
    """The handler that lines up a guide's per-point params with each batch (None for an
    amortized guide), and the note on stderr of how the run trains them: on the full set
    (one batch of all N points, in order) where ``--batch-size`` >= N, else by index
    subsampling (each batch selects its rows of them; the loss is scaled N/B)."""
    if not info.local_params:
        return None
    if distributed:
        raise ConfigError(
            f"the guide's parameters {list(info.local_params)} hold one row per training "
            "point (it is not amortized), and a data-parallel run gives each rank a shard "
            "of the points in another order; train it on one process"
        )
    names = ", ".join(info.local_params)
    if batch_size >= num_train and labelled_batches == 0:
        _log(
            f"note: the guide is not amortized (per-point params {names}): training on the "
            f"full set, one batch of all {num_train} points in order; no validation ELBO "
            "per epoch (its points have no params of their own; `pyro-vae evaluate` fits them)"
        )
        return LocalParams(info.local_params, mode="full")
    _log(
        f"note: the guide is not amortized (per-point params {names}): training by index "
        f"subsampling, each batch of {batch_size} points selects the same rows of them and "
        f"the loss is scaled by N/B (N = {num_train}); no validation ELBO per epoch (its "
        "points have no params of their own; `pyro-vae evaluate` fits them)"
    )
    return LocalParams(info.local_params, mode="subsample")


@contextmanager
def at_probe_rows(local: LocalParams | None, count: int) -> Iterator[None]:
    """Inside: the per-point params (if any) at the rows of the probe batch, the first
    ``count`` training points, for the traces made before training."""
    if local is None:
        yield
        return
    with local.at(torch.arange(count)), local:
        yield


def _compiled(svi, pair, guide, scales, optimizer, info, args, config):
    """``--compile``: the step as a compiled graph of the pair's loss
    (:class:`~pyro_vae.infer.compiled.CompiledSVI`), falling back to ``svi``; a pair that cannot be
    traced trains eagerly with a one-line note naming why (an error under ``strict``)."""
    modules = pair_modules(pair)
    reason = None
    if config.num_particles > 1 and not info.vectorizable:
        reason = "the pair does not vectorize over particles"
    if info.local_params:
        reason = "its guide's per-point params are selected by each batch's indices"
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
