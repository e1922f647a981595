"""How noisy is a gradient estimator? Variance and signal-to-noise ratio of ELBO gradients.

On one fixed minibatch x and fixed parameters theta, every estimator of
:data:`~pyro_vae.gradients.GRADIENT_ESTIMATORS` is drawn many times, g_1 .. g_N, and
summarized per coordinate j of theta by

    Var_j = (1/(N-1)) sum_n (g_nj - mean_j)^2,      SNR_j = |mean_j| / sqrt(Var_j),

then averaged over coordinates (Rainforth et al. 2018 use the same SNR to compare estimators).
All estimators are unbiased, so they differ only in this noise: the reparameterized gradient
is usually far less noisy than the score function, and baselines close part of that gap
(Mnih & Gregor 2014).

References:
    Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh (2018), Tighter Variational Bounds
    are Not Necessarily Better.
    Mnih & Gregor (2014), Neural Variational Inference and Learning in Belief Networks.
    Kingma & Welling (2014), Auto-Encoding Variational Bayes.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyro_vae.checkpoints import BEST
from pyro_vae.config import ConfigError
from pyro_vae.evaluate import restore_run
from pyro_vae.files import atomic_write_bytes, json_bytes
from pyro_vae.gradients import (
    GRADIENT_ESTIMATORS,
    forget_baselines,
    non_reparameterized_sites,
    score_function_blocker,
)
from pyro_vae.handlers import unscaled
from pyro_vae.labels import with_labels
from pyro_vae.pairs import FunctionPair

#: Files written into the output folder.
GRADVAR_JSON = "gradvar.json"
GRADVAR_PNG = "gradvar.png"
#: The role of a parameter: read by the guide (encoder) or only by the model (decoder).
PARTS = ("encoder", "decoder")


def _zero_grads(params: Iterable[Tensor]) -> None:
    for param in params:
        param.grad = None


def gradient_draws(
    model: Callable,
    guide: Callable,
    x: Tensor,
    elbo: pyro.infer.ELBO,
    params: Sequence[Tensor],
    num_draws: int,
    *,
    on_draw: Callable[[], None] | None = None,
) -> Tensor:
    """``num_draws`` independent estimates of grad_theta loss, flattened: shape (N, P).

    Each draw zeroes the gradients, runs ``elbo.loss_and_grads(model, guide, x)`` (the
    surrogate loss whose gradient is the estimator; baselines included) and reads
    ``.grad`` of ``params`` (zeros where a parameter got none). The parameters are not
    changed; a decaying-average baseline does move, as it does in training.

        g_n = grad_theta surrogate(theta; z_n),  z_n ~ q(z|x)

    References:
        Schulman, Heess, Weber & Abbeel (2015), Gradient Estimation Using Stochastic
        Computation Graphs.
    """
    if num_draws < 1:
        raise ConfigError(f"--num-draws must be >= 1, got {num_draws}")
    draws = []
    for _ in range(num_draws):
        _zero_grads(params)
        elbo.loss_and_grads(model, guide, x)
        draws.append(
            torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
                    for p in params
                ]
            )
        )
        if on_draw is not None:
            on_draw()
    _zero_grads(params)
    return torch.stack(draws)


def gradient_statistics(draws: Tensor) -> dict[str, float]:
    """Per-coordinate variance and SNR of gradient draws (N, P), averaged over coordinates.

        variance = (1/P) sum_j Var_n(g_nj),   snr = mean_j |mean_n g_nj| / std_n g_nj,
        mean_norm = || mean_n g_n ||_2

    Coordinates whose draws are all equal (std 0: a deterministic or unused coordinate) are
    left out of ``snr``; ``snr`` is ``None`` if no coordinate is left. Needs N >= 2.

    References:
        Rainforth et al. (2018), Tighter Variational Bounds are Not Necessarily Better.
    """
    if draws.dim() != 2 or draws.shape[0] < 2:
        raise ConfigError(
            f"gradient statistics need at least 2 draws of shape (N, P), got {tuple(draws.shape)}"
            " (--num-draws)"
        )
    draws = draws.double()
    mean = draws.mean(0)
    variance = draws.var(0, unbiased=True)
    std = variance.sqrt()
    noisy = std > 0
    snr = (mean[noisy].abs() / std[noisy]).mean().item() if bool(noisy.any()) else None
    return {
        "variance": variance.mean().item(),
        "snr": snr,
        "mean_norm": mean.norm().item(),
        "size": draws.shape[1],
    }


def pair_parameters(model: Callable, guide: Callable, x: Tensor) -> dict[str, dict]:
    """The param-store parameters the guide and the model read on ``x``, by name, each
    ``{"param": unconstrained tensor, "part": "encoder" | "decoder"}``: ``encoder`` for those
    the guide reads, ``decoder`` for those only the model reads. Baselines are not among
    them (the plain guide never reads them)."""
    with torch.no_grad(), poutine.trace(param_only=True) as guide_params:
        guide(x)
    with torch.no_grad(), poutine.trace(param_only=True) as model_params:
        model(x)
    found: dict[str, dict] = {}
    for part, trace in (("encoder", guide_params.trace), ("decoder", model_params.trace)):
        for name, site in trace.nodes.items():
            if name not in found:
                found[name] = {"param": site["value"].unconstrained(), "part": part}
    return found


def warm_up_baseline(
    model: Callable,
    guide: Callable,
    x: Tensor,
    elbo: pyro.infer.ELBO,
    steps: int,
    *,
    module: nn.Module | None = None,
    lr: float = 1e-2,
    on_step: Callable[[], None] | None = None,
) -> None:
    """Let a baseline learn on ``x`` for ``steps`` draws, with the pair's parameters frozen.

    Every step runs ``elbo.loss_and_grads``: a decaying average moves towards the learning
    signal, b <- beta b + (1 - beta) signal; a neural baseline ``module`` takes an Adam step
    on sum_i (signal_i - b_psi(x_i))^2. Only the baseline changes.

    References:
        Mnih & Gregor (2014), Neural Variational Inference and Learning in Belief Networks.
    """
    optimizer = torch.optim.Adam(module.parameters(), lr=lr) if module is not None else None
    for _ in range(steps):
        with poutine.trace(param_only=True) as captured:
            elbo.loss_and_grads(model, guide, x)
        if optimizer is not None:
            optimizer.step()
        _zero_grads(site["value"].unconstrained() for site in captured.trace.nodes.values())
        if module is not None:
            _zero_grads(module.parameters())
        if on_step is not None:
            on_step()


def _check_arguments(estimators, num_draws, batch_size, baseline_steps) -> list[str]:
    names = [estimators] if isinstance(estimators, str) else list(estimators)
    unknown = [name for name in names if name not in GRADIENT_ESTIMATORS]
    if unknown or not names:
        raise ConfigError(
            f"--estimators: unknown estimator(s) {unknown}; choose from "
            f"{', '.join(GRADIENT_ESTIMATORS)}"
        )
    if num_draws < 2:
        raise ConfigError(f"--num-draws must be >= 2 (a variance needs two), got {num_draws}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if baseline_steps < 0:
        raise ConfigError(f"--baseline-steps must be >= 0, got {baseline_steps}")
    return names


def gradient_variance(
    run_dir: str | os.PathLike,
    *,
    estimators: Sequence[str] = ("reparam", "score", "score+avg", "score+nn"),
    num_draws: int = 100,
    batch_size: int = 100,
    split: str = "train",
    checkpoint: str = BEST,
    baseline_steps: int = 200,
    baseline_lr: float | None = None,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
    save: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Variance and SNR of each gradient estimator of a trained run's loss, on one minibatch.

    The run's pair is restored from ``checkpoint``; the minibatch is the first
    ``batch_size`` points of ``split`` (dynamically binarized data get the fixed draw of
    evaluation). For each estimator, ``num_draws`` draws of the gradient w.r.t. the pair's
    own parameters (encoder and decoder, not a baseline's) are summarized by
    :func:`gradient_statistics`, overall, per part (encoder: read by the guide; decoder:
    read only by the model) and per parameter. A baseline first warms up on the minibatch
    for ``baseline_steps`` draws (:func:`warm_up_baseline`): the decaying average from zero,
    fresh neural baselines, one per site (the run's ``baseline_hidden``), by Adam at
    ``baseline_lr`` (default: the run's, else 10 x its lr).

        Var = mean_j Var_n(g_nj),   SNR = mean_j |mean_n g_nj| / std_n g_nj

    Pyro keeps the decaying average per *position* in the batch: on this one fixed
    minibatch that is each point's own mean signal, a better baseline than it can be in
    training, where every position holds a new point at each step.

    With ``save``, writes ``gradvar.json`` and ``gradvar.png`` into ``out`` (default: the
    run directory). Memory: the draws of one estimator, num_draws x num_parameters floats.

    References:
        Rainforth et al. (2018), Tighter Variational Bounds are Not Necessarily Better.
        Mnih & Gregor (2014), Neural Variational Inference and Learning in Belief Networks.
    """
    names = _check_arguments(estimators, num_draws, batch_size, baseline_steps)
    run_dir = Path(run_dir)
    restored = restore_run(run_dir, split=split, checkpoint=checkpoint, device=device,
                           data_dir=data_dir, pair=pair)  # fmt: skip
    pair, info, state, config = restored.pair, restored.info, restored.state, restored.config
    torch_device = restored.device
    x = restored.x[:batch_size]
    # gradients of the pair's own ELBO: every site unscaled, whatever poutine.scale it declares
    pair = FunctionPair(unscaled(pair.model), unscaled(pair.guide))
    if restored.y is not None:  # a pair that needs labels: the minibatch's own, bound in
        y = restored.y[:batch_size]
        pair = FunctionPair(with_labels(pair.model, y), with_labels(pair.guide, y))
    found = pair_parameters(pair.model, pair.guide, x)
    names_in_order = list(found)
    params = [found[name]["param"] for name in names_in_order]
    sizes = [p.numel() for p in params]
    lr = baseline_lr if baseline_lr is not None else (config.baseline_lr or 10 * config.lr)
    if progress is None:
        progress = sys.stderr.isatty()

    results: dict[str, Any] = {}
    skipped = _skip_score_estimators(pair.guide, x, names)
    names = [name for name in names if name not in skipped]
    started = time.perf_counter()
    for name in names:
        spec = GRADIENT_ESTIMATORS[name]
        forget_baselines()
        pyro.set_rng_seed(seed)
        module = spec.make_baselines(pair.guide, x, config.baseline_hidden)
        guide = spec.make_guide(pair.guide, beta=config.baseline_beta, module=module)
        elbo = spec.make_elbo(max_plate_nesting=info.max_plate_nesting)
        warm = baseline_steps if spec.baseline != "none" else 0
        bar = tqdm(total=warm + num_draws, desc=f"gradvar {name}", disable=not progress,
                   unit="draw", leave=False)  # fmt: skip
        warm_up_baseline(pair.model, guide, x, elbo, warm, module=module, lr=lr,
                         on_step=bar.update)  # fmt: skip
        began = time.perf_counter()
        draws = gradient_draws(pair.model, guide, x, elbo, params, num_draws, on_draw=bar.update)
        seconds = (time.perf_counter() - began) / num_draws
        bar.close()
        summary = gradient_statistics(draws)
        summary["seconds"] = seconds
        chunks = dict(zip(names_in_order, draws.split(sizes, dim=1), strict=True))
        summary["parts"] = {
            part: gradient_statistics(
                torch.cat([chunks[n] for n in names_in_order if found[n]["part"] == part], 1)
            )
            for part in PARTS
            if any(found[n]["part"] == part for n in names_in_order)
        }
        summary["groups"] = {n: gradient_statistics(chunks[n]) for n in names_in_order}
        summary["baseline"] = spec.baseline
        summary["description"] = spec.description
        results[name] = summary
        del draws, chunks
    forget_baselines()

    out_dir = Path(out) if out is not None else run_dir
    result = {
        "estimators": results,
        "num_draws": num_draws,
        "batch_size": int(x.shape[0]),
        "num_parameters": int(sum(sizes)),
        "split": split,
        "checkpoint": checkpoint,
        "epoch": state["epoch"],
        "dataset": config.dataset,
        "baseline_steps": baseline_steps,
        "baseline_lr": lr,
        "seed": seed,
        "device": str(torch_device),
        "seconds": time.perf_counter() - started,
        "notes": _notes(pair.guide, x, names) + _site_notes(info) + list(skipped.values()),
        "scaled_sites": list(info.scaled_sites),
    }
    if save:
        from pyro_vae.plots import gradient_variance_figure  # matplotlib only when saving

        out_dir.mkdir(parents=True, exist_ok=True)
        payload = json_bytes(result)
        atomic_write_bytes(out_dir / GRADVAR_JSON, payload)
        gradient_variance_figure(result, out_dir / GRADVAR_PNG)
    return result


def _skip_score_estimators(guide: Any, x: Tensor, names: list[str]) -> dict[str, str]:
    """The score-function estimators among ``names`` that cannot run on this guide (a flow
    without an inverse), each with the note saying so; all of them refused: ConfigError."""
    scored = [name for name in names if GRADIENT_ESTIMATORS[name].score_function]
    reason = score_function_blocker(guide, x) if scored else None
    if reason is None:
        return {}
    if len(scored) == len(names):
        raise ConfigError(
            f"--estimators {','.join(names)}: every one takes the score function, and {reason}; "
            "add reparam, or train the guide with an IAF flow"
        )
    return {name: f"{name} skipped: {reason}" for name in scored}


def _notes(guide: Any, x: Tensor, names: list[str]) -> list[str]:
    """What a reader of the table must know about this guide: sites without ``rsample``
    (discrete ones) are differentiated by the score function under every estimator."""
    discrete = non_reparameterized_sites(guide, x)
    if not discrete or "reparam" not in names:
        return []
    return [
        f"'reparam' is not reparameterized here: the guide's sites {discrete} have no rsample, "
        "so Trace_ELBO takes the score function there, without Rao-Blackwellization or a "
        "baseline"
    ]


def _site_notes(info: Any) -> list[str]:
    notes = []
    if info.scaled_sites:
        notes.append(
            f"site(s) {list(info.scaled_sites)} carry a poutine.scale in the pair: the "
            "gradients here are of the unscaled ELBO"
        )
    if info.global_sites:
        notes.append(
            f"global latent site(s) {list(info.global_sites)}: the loss is the ELBO of this "
            "minibatch alone (global terms once, local terms unscaled by N/B)"
        )
    return notes


def without_groups(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the per-parameter ``groups`` left out (short enough for stdout)."""
    estimators = {
        name: {k: v for k, v in summary.items() if k != "groups"}
        for name, summary in result["estimators"].items()
    }
    return {**result, "estimators": estimators}


def format_table(result: dict[str, Any]) -> str:
    """An aligned text table: one row per estimator."""
    header = ("estimator", "variance", "SNR", "enc. var", "dec. var", "ms/draw")
    rows = [header]
    for name, summary in result["estimators"].items():
        parts = summary.get("parts", {})

        def number(value):
            return "-" if value is None or not math.isfinite(value) else f"{value:.3g}"

        rows.append(
            (
                name,
                number(summary["variance"]),
                number(summary["snr"]),
                number(parts.get("encoder", {}).get("variance")),
                number(parts.get("decoder", {}).get("variance")),
                f"{1000 * summary['seconds']:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                  enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]  # fmt: skip
    title = (
        f"gradient variance on {result['batch_size']} {result['split']} points, "
        f"{result['num_draws']} draws, {result['num_parameters']} parameters"
    )
    notes = [f"note: {note}" for note in result.get("notes", [])]
    return "\n".join([title, *lines, *notes])


__all__ = [
    "GRADVAR_JSON",
    "GRADVAR_PNG",
    "format_table",
    "gradient_draws",
    "gradient_statistics",
    "gradient_variance",
    "pair_parameters",
    "warm_up_baseline",
    "without_groups",
]
