"""A NUTS reference posterior p(z|x) with the decoder fixed, and q(z|x) compared with it.

References:
    Hoffman & Gelman (2014), The No-U-Turn Sampler.
    Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), Rank-Normalization, Folding, and
        Localization: An Improved R-hat.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from torch.distributions import biject_to

from pyro_vae.analysis.diagnose.draws import LatentSite, _concat, _per_point, inference_data
from pyro_vae.analysis.diagnose.errors import DiagnoseError
from pyro_vae.analysis.diagnose.gaps import frozen_parameters
from pyro_vae.pairs import PairInfo

#: The fewest NUTS draws per chain for which split R-hat and ESS mean something.
MIN_NUTS_SAMPLES = 10


def check_continuous(latents: Sequence[LatentSite]) -> None:
    """Raise :class:`DiagnoseError` naming the first discrete latent site (NUTS needs
    gradients of log p(x, z) in z)."""
    for latent in latents:
        if latent.discrete:
            raise DiagnoseError(
                f"--nuts needs continuous latent sites; site {latent.name!r} is "
                f"{latent.distribution}. Drop --nuts for this pair."
            )


def nuts_posterior(pair: Any, x: torch.Tensor, latents: Sequence[LatentSite], info: PairInfo, *,
                   num_chains: int = 4, warmup: int = 200, num_samples: int = 200,
                   seed: int = 0, progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Draw from p(z | x) with the decoder fixed by NUTS, ``num_chains`` chains one by one.

    The posterior factorizes over data points, p(z_1..z_B | x_1..x_B) = prod_b p(z_b | x_b),
    so one run over the whole batch is a valid, cheaper reference for every point. Each chain
    is its own single-chain ``MCMC`` (Pyro's ``num_chains > 1`` spawns processes), seeded
    ``seed + chain`` and started from its own draw of q(z|x). Returns ``draws`` per site
    (chains, draws, B, D), ``diverging`` (chains, draws), ``acceptance_rate`` per chain.

    References:
        Hoffman & Gelman (2014), The No-U-Turn Sampler.
    """
    check_continuous(latents)
    num_points = x.shape[0]
    draws: dict[str, list[np.ndarray]] = {latent.name: [] for latent in latents}
    diverging, acceptance = [], []
    with frozen_parameters(pair):
        for chain in range(num_chains):
            pyro.set_rng_seed(seed + chain)
            with torch.no_grad():
                start_trace = poutine.trace(pair.guide).get_trace(x)
                model_trace = poutine.trace(
                    poutine.replay(pair.model, trace=start_trace)
                ).get_trace(x)
            initial = {
                latent.name: biject_to(model_trace.nodes[latent.name]["fn"].support)
                .inv(start_trace.nodes[latent.name]["value"])
                .detach()
                for latent in latents
            }
            kernel = pyro.infer.NUTS(
                pair.model,
                jit_compile=True,
                ignore_jit_warnings=True,
                max_plate_nesting=info.max_plate_nesting,
            )
            mcmc = pyro.infer.MCMC(
                kernel,
                num_samples=num_samples,
                warmup_steps=warmup,
                initial_params=initial,
                disable_progbar=not progress,
            )
            with warnings.catch_warnings():
                # Pyro's jit_compile calls torch.jit.trace, which torch >= 2.9 deprecates;
                # nothing a user of diagnose can act on.
                warnings.filterwarnings(
                    "ignore",
                    message=r".*torch\.jit\.trace.*deprecated",
                    category=DeprecationWarning,
                )
                mcmc.run(x)
            samples = mcmc.get_samples()
            for latent in latents:
                site = model_trace.nodes[latent.name]
                draws[latent.name].append(
                    _per_point(
                        samples[latent.name],
                        site,
                        len(site["fn"].event_shape),
                        num_samples,
                        num_points,
                        info.max_plate_nesting + 1,
                    )
                    .double()
                    .cpu()
                    .numpy()
                )
            stats = mcmc.diagnostics()
            flags = np.zeros(num_samples, dtype=bool)
            flags[[i for i in stats["divergences"]["chain 0"] if 0 <= i < num_samples]] = True
            diverging.append(flags)
            acceptance.append(float(stats["acceptance rate"]["chain 0"]))
    return {
        "draws": {name: np.stack(chains) for name, chains in draws.items()},
        "diverging": np.stack(diverging),
        "acceptance_rate": acceptance,
    }


def _dataset_extreme(dataset: Any, reduce: Any) -> float:
    values = [np.asarray(dataset[name].values, dtype=np.float64) for name in dataset.data_vars]
    values = np.concatenate([v.ravel() for v in values])
    values = values[~np.isnan(values)]
    return float(reduce(values)) if values.size else float("nan")


def _nuts_comparison(pair: Any, x: torch.Tensor, latents: Sequence[LatentSite], info: PairInfo,
                     indices: Sequence[int], q_mean: np.ndarray, q_sd: np.ndarray, *,
                     num_chains: int, warmup: int, num_samples: int, seed: int,
                     progress: bool) -> tuple[dict[str, Any], Any]:  # fmt: skip
    """A NUTS reference p(z|x) (:func:`nuts_posterior`, chains seeded ``seed + chain``), its
    convergence (R-hat, bulk and tail ESS, divergences), and q compared with it per point and
    dimension: the standardized mean difference (E_q[z] - E_nuts[z]) / sd_nuts[z] and the
    scale ratio sd_q[z] / sd_nuts[z]. Returns the summary's ``nuts`` and the draws as
    InferenceData.

    References:
        Hoffman & Gelman (2014), The No-U-Turn Sampler.
        Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), Rank-Normalization, Folding,
            and Localization: An Improved R-hat.
    """
    import arviz as az

    reference = nuts_posterior(pair, x, latents, info, num_chains=num_chains, warmup=warmup,
                               num_samples=num_samples, seed=seed, progress=progress)  # fmt: skip
    draws = reference["draws"]
    idata = inference_data(draws, latents, indices, {"diverging": reference["diverging"]})
    nuts_mean = _concat({n: d.mean(axis=(0, 1)) for n, d in draws.items()}, latents)
    nuts_sd = _concat(
        {n: d.reshape(-1, *d.shape[2:]).std(axis=0, ddof=1) for n, d in draws.items()}, latents
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        std_mean_diff = (q_mean - nuts_mean) / nuts_sd
        scale_ratio = q_sd / nuts_sd
    comparison = {
        "num_chains": num_chains,
        "num_warmup": warmup,
        "num_samples": num_samples,
        "rhat_max": _dataset_extreme(az.rhat(idata), np.nanmax),
        "ess_bulk_min": _dataset_extreme(az.ess(idata, method="bulk"), np.nanmin),
        "ess_tail_min": _dataset_extreme(az.ess(idata, method="tail"), np.nanmin),
        "divergences": int(reference["diverging"].sum()),
        "acceptance_rate": reference["acceptance_rate"],
        "mean": nuts_mean,
        "sd": nuts_sd,
        "std_mean_diff": std_mean_diff,
        "scale_ratio": scale_ratio,
        "std_mean_diff_abs_max": float(np.nanmax(np.abs(std_mean_diff))),
        "std_mean_diff_abs_mean_per_dim": np.nanmean(np.abs(std_mean_diff), axis=0),
        "scale_ratio_median": float(np.nanmedian(scale_ratio)),
        "scale_ratio_median_per_dim": np.nanmedian(scale_ratio, axis=0),
    }
    return comparison, idata
