"""Signal-to-noise ratio of the IWAE bound's gradients against the number of particles K.

Rainforth et al. (2018) showed that as K grows, the IWAE gradient of the inference network
(the encoder) loses its signal: its expectation shrinks like 1/K while its noise shrinks only
like 1/sqrt(K), so SNR = |E g| / std g falls like 1/sqrt(K); the generative network's (the
decoder's) SNR rises like sqrt(K). The doubly reparameterized estimator (DReG; Tucker et al.
2019) removes the score terms that carry that noise, and its encoder SNR rises with K too.

:func:`snr_against_k` measures both with :func:`pyro_vae.analysis.gradvar.measure` at each K,
on one fixed minibatch and the same seed: per estimator and K the encoder's and the decoder's
SNR (mean over coordinates of |mean| / std over ``num_draws`` draws) and variance.

References:
    Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh (2018), Tighter Variational Bounds
    are Not Necessarily Better.
    Tucker, Lawson, Gu & Maddison (2019), Doubly Reparameterized Gradient Estimators for Monte
    Carlo Objectives.
    Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from pyro_vae.analysis.gradvar import (
    _check_arguments,
    baseline_settings,
    held_minibatch,
    measure,
)
from pyro_vae.analysis.parameters import PARTS
from pyro_vae.analysis.results import Result, aligned_lines, figure_path, number_cell
from pyro_vae.infer.gradients import GRADIENT_ESTIMATORS
from pyro_vae.runs.checkpoints import BEST
from pyro_vae.runs.config import ConfigError
from pyro_vae.runs.files import atomic_write_bytes, json_bytes

#: Files written into the output folder.
SNR_K_JSON = "gradvar_snr_k.json"
SNR_K_PNG = "gradvar_snr_k.png"
#: Rainforth et al.'s range: K = 1 (the ELBO's gradient), 10, 100.
DEFAULT_KS = (1, 10, 100)
DEFAULT_SNR_ESTIMATORS = ("iwae", "iwae-dreg")
#: What is recorded per estimator and K, each a list over ``ks``.
SERIES = ("encoder_snr", "decoder_snr", "encoder_variance", "decoder_variance", "seconds")


class SNRAgainstK(Result):
    """What :func:`snr_against_k` found: ``ks`` and, per estimator
    (``result["estimators"][name]``), lists over ``ks`` of ``encoder_snr``, ``decoder_snr``,
    ``encoder_variance``, ``decoder_variance`` and ``seconds`` per draw (None where the row
    could not run); the minibatch, the settings and ``notes``."""

    kind = "SNR against K"

    def summary(self) -> str:
        return format_snr_table(self)

    def plot(self, path: str | os.PathLike) -> Path:
        """Encoder and decoder SNR against K, log-log (``gradvar_snr_k.png`` in a folder
        ``path``, or the file ``path``); returns the file written."""
        from pyro_vae.analysis.plots import snr_against_k_figure  # matplotlib only when drawing

        return snr_against_k_figure(self, figure_path(path, SNR_K_PNG))


def _check_ks(ks: Sequence[int], names: Sequence[str]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks) or len(set(ks)) != len(ks):
        raise ConfigError(f"--ks must be distinct particle counts >= 1, got {ks}")
    not_multi = [name for name in names if not GRADIENT_ESTIMATORS[name].multi_sample]
    if not_multi:
        multi = [name for name, spec in GRADIENT_ESTIMATORS.items() if spec.multi_sample]
        raise ConfigError(
            f"--estimators {','.join(not_multi)}: SNR against K is for the K-particle bounds "
            f"({', '.join(multi)}); the other rows draw one z per point whatever K is"
        )
    if "vimco" in names and min(ks) < 2:
        raise ConfigError(
            f"--ks {','.join(map(str, ks))}: vimco needs K >= 2 (its baseline for each "
            "particle is formed from the others); leave K = 1 out, or leave vimco out"
        )
    return sorted(ks)


def snr_against_k(
    source: Any,
    x: Tensor | None = None,
    *,
    labels: Any = None,
    guide: Any = None,
    ks: Sequence[int] = DEFAULT_KS,
    estimators: Sequence[str] = DEFAULT_SNR_ESTIMATORS,
    num_draws: int = 100,
    batch_size: int = 100,
    split: str = "train",
    checkpoint: str = BEST,
    device: str | None = None,
    data_dir: str | None = None,
    pair: Any = None,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
    save: bool | None = None,
    seed: int = 0,
) -> SNRAgainstK:
    """Encoder and decoder SNR of the IWAE bound's gradient estimators at each K in ``ks``.

        SNR(K) = mean_j |mean_n g_nj(K)| / std_n g_nj(K),  over the encoder's (decoder's) j

    ``source``, ``x``, ``labels``, ``guide``, ``split``, ``checkpoint``, ``device``,
    ``data_dir``, ``pair``, ``batch_size``, ``num_draws`` and ``seed`` are as in
    :func:`~pyro_vae.analysis.gradvar.gradient_variance`; ``estimators`` are rows of
    :data:`~pyro_vae.infer.gradients.GRADIENT_ESTIMATORS` that take K (``iwae``,
    ``iwae-dreg``, ``vimco``). Every K uses the same minibatch and seed. A row that cannot
    run on the pair is left out with a note (its numbers are None).

    Expected shape (Rainforth et al. 2018, their figure 1): IWAE's encoder SNR falls with K,
    DReG's rises; the decoder's SNR rises for both (it is the same estimator there).

    Returns a :class:`SNRAgainstK`. With ``save`` (the default for a path), writes
    ``gradvar_snr_k.json`` and ``gradvar_snr_k.png`` into ``out`` (default: the run
    directory). Cost: ``num_draws`` x sum(ks) particles per point and estimator.

    References:
        Rainforth et al. (2018), Tighter Variational Bounds are Not Necessarily Better.
        Tucker et al. (2019), Doubly Reparameterized Gradient Estimators for Monte Carlo
        Objectives.
    """
    names = _check_arguments(estimators, num_draws, batch_size, 0)
    ks = _check_ks(ks, names)
    held = held_minibatch(source, x, batch_size, "gradvar --snr-vs-k", labels=labels,
                          guide=guide, split=split, checkpoint=checkpoint, device=device,
                          data_dir=data_dir, pair=pair)  # fmt: skip
    if save is None:
        save = isinstance(source, str | os.PathLike)
    if save and out is None and held.run is None:
        raise ConfigError(
            "save=True writes gradvar_snr_k.json and .png into a run directory; this pair has "
            "none. Pass out=FOLDER, or use the result (result.to_dict(), result.plot(path))"
        )
    if progress is None:
        progress = sys.stderr.isatty()
    settings = baseline_settings(held, None, None, None)
    started = time.perf_counter()
    series = {name: {key: [] for key in SERIES} for name in names}
    notes: list[str] = []
    num_parameters = None
    for k in ks:
        result = measure(held, names, num_draws, 0, settings, seed, progress, k)
        num_parameters = result["num_parameters"]
        for note in result["notes"]:
            if note not in notes and "particles per point" not in note:
                notes.append(note)
        for name in names:
            row = result["estimators"].get(name)
            parts = row["parts"] if row is not None else {}
            for part in PARTS:
                for key in ("snr", "variance"):
                    series[name][f"{part}_{key}"].append(parts.get(part, {}).get(key))
            series[name]["seconds"].append(row["seconds"] if row is not None else None)
    result = SNRAgainstK(
        {
            "ks": ks,
            "estimators": series,
            "num_draws": num_draws,
            "batch_size": int(held.x.shape[0]),
            "num_parameters": num_parameters,
            **held.context,
            "seed": seed,
            "seconds": time.perf_counter() - started,
            "notes": notes,
        }
    )
    if save:
        out_dir = Path(out) if out is not None else held.run.path
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / SNR_K_JSON, json_bytes(result))
        result.plot(out_dir / SNR_K_PNG)
    return result


def format_snr_table(result: dict[str, Any]) -> str:
    """An aligned text table: one row per K, the encoder and decoder SNR of each estimator."""
    names = list(result["estimators"])
    header = ("K", *[f"{name} {part[:3]}. SNR" for name in names for part in PARTS])
    rows = [header]
    for i, k in enumerate(result["ks"]):
        cells = [str(k)]
        for name in names:
            for part in PARTS:
                cells.append(number_cell(result["estimators"][name][f"{part}_snr"][i]))
        rows.append(tuple(cells))
    lines = aligned_lines(rows)
    title = (
        f"gradient SNR against K on {result['batch_size']} {result.get('split') or 'x'} points, "
        f"{result['num_draws']} draws per K"
    )
    notes = [f"note: {note}" for note in result.get("notes", [])]
    return "\n".join([title, *lines, *notes])


__all__ = [
    "DEFAULT_KS",
    "DEFAULT_SNR_ESTIMATORS",
    "SNR_K_JSON",
    "SNR_K_PNG",
    "SNRAgainstK",
    "format_snr_table",
    "snr_against_k",
]
