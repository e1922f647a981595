"""A diagnosis read and drawn: its summary in a few lines, its figures and its files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pyro_vae.analysis.diagnose.gaps import GAUSSIAN_FAMILY
from pyro_vae.analysis.diagnose.khat import _khat_values
from pyro_vae.analysis.diagnose.usage import ACTIVE_UNIT_THRESHOLD, COLLAPSED_KL

#: The figures :meth:`PosteriorDiagnosis.plot` draws (those that apply to the diagnosis).
FIGURES = ("khat.png", "kl_per_dim.png", "forest.png", "pair.png")


def write_outputs(diagnosis: Any, summary: dict[str, Any], out: Path) -> list[str]:
    """Write guide.nc, nuts.nc and the figures (:func:`write_figures`) into ``out``; return
    the file names written (``diagnose.json`` included, which the caller writes last).
    ``diagnosis`` has ``guide`` and ``nuts`` InferenceData (a :class:`Diagnosis` or a
    :class:`PosteriorDiagnosis`)."""
    written = ["diagnose.json"]
    diagnosis.guide.to_netcdf(str(out / "guide.nc"))
    written.append("guide.nc")
    if diagnosis.nuts is not None:
        diagnosis.nuts.to_netcdf(str(out / "nuts.nc"))
        written.append("nuts.nc")
    return written + write_figures(diagnosis, summary, out)


def write_figures(diagnosis: Any, summary: dict[str, Any], out: Path) -> list[str]:
    """Draw khat.png, kl_per_dim.png (where the KL per dimension is known), forest.png and
    pair.png (with two latent dims or more) into ``out``; return the names written."""
    from pyro_vae.analysis.plots import forest_figure, khat_figure, kl_per_dim_figure, pair_figure

    khat = _khat_values(summary)
    khat_figure(khat, summary["indices"], out / "khat.png")
    written = ["khat.png"]
    if summary["kl_per_dim"] is not None:
        kl_per_dim_figure(summary["kl_per_dim"], summary["latent_dims"], out / "kl_per_dim.png")
        written.append("kl_per_dim.png")
    datasets = {"q(z|x)": diagnosis.guide}
    if diagnosis.nuts is not None:
        datasets["NUTS"] = diagnosis.nuts
    first = diagnosis.guide.posterior[summary["latent_sites"][0]]
    dim_name = first.dims[-1]
    # the point whose k-hat is worst; inf (null in JSON, status "unreliable") counts as worst
    worst = int(np.argmax(np.nan_to_num(khat, nan=-np.inf))) if len(khat) else 0
    forest_figure(
        datasets,
        out / "forest.png",
        var_name=first.name,
        coords={
            "obs_id": list(summary["indices"][:3]),
            dim_name: list(range(min(3, first.sizes[dim_name]))),
        },
    )
    written.append("forest.png")
    if first.sizes[dim_name] >= 2:
        pair_figure(
            datasets,
            out / "pair.png",
            var_name=first.name,
            coords={
                "obs_id": [summary["indices"][worst]],
                dim_name: list(range(min(4, first.sizes[dim_name]))),
            },
        )
        written.append("pair.png")
    return written


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few readable lines."""

    def number(value: Any, spec: str = ".3f") -> str:
        return "n/a" if value is None else format(value, spec)

    khat_max = summary["khat_max"]
    khat_max = "inf" if khat_max == "inf" else number(khat_max, ".2f")
    if khat_max == "n/a" and summary["num_points"]:
        khat_max = "-inf"  # every point has all-equal weights (see the notes)
    indices = summary["indices"]
    shown = ",".join(map(str, indices[:10])) + ("..." if len(indices) > 10 else "")
    lines = [
        f"{summary.get('split') or 'x'}: {summary['num_points']} points ({shown}), "
        f"S={summary['num_samples']} draws from q(z|x)",
        f"  PSIS k-hat   max {khat_max}: "
        f"{summary['khat_count_below_0_5']} good (< 0.5), "
        f"{summary['khat_count_0_5_to_0_7']} usable (0.5-0.7), "
        f"{summary['khat_count_above_0_7']} unreliable (> 0.7)",
        f"  log p(x) ~ {number(summary['log_px'])}  ELBO {number(summary['elbo'])}  "
        f"gap {number(summary['gap'])} nats",
    ]
    if summary["gap_reason"] is None:
        lines.append(
            f"  amortization gap {number(summary['amortization_gap'])}  approximation gap "
            f"{number(summary['approximation_gap'])} nats  (q*: "
            f"{summary.get('q_star_family') or GAUSSIAN_FAMILY}, "
            f"{summary['gap_settings']['steps']} Adam steps)"
        )
    else:
        lines.append(f"  gaps: n/a ({summary['gap_reason']})")
    total = len(summary["latent_dims"])
    if summary["active_units"] is not None:
        lines.append(
            f"  active units {summary['active_units']} of {total} "
            f"(Var_x E_q[z_d|x] > {ACTIVE_UNIT_THRESHOLD})"
        )
    if summary["kl_per_dim"] is not None:
        collapsed = summary["collapsed_dims"]
        listed = ", ".join(collapsed[:12]) + (" ..." if len(collapsed) > 12 else "")
        lines.append(
            f"  KL to the prior {number(summary['kl_total'])} nats, summed over {total} dims; "
            f"collapsed (KL < {COLLAPSED_KL}): {listed or 'none'}"
        )
    nuts = summary.get("nuts")
    if nuts:
        lines.append(
            f"  NUTS {nuts['num_chains']} chains x {nuts['num_samples']} draws: R-hat max "
            f"{number(nuts['rhat_max'])}, ESS bulk min {number(nuts['ess_bulk_min'], '.0f')}, "
            f"tail min {number(nuts['ess_tail_min'], '.0f')}, {nuts['divergences']} divergences"
        )
        lines.append(
            f"  q vs NUTS: |standardized mean difference| max "
            f"{number(nuts['std_mean_diff_abs_max'], '.2f')}, sd_q / sd_nuts median "
            f"{number(nuts['scale_ratio_median'], '.2f')}"
        )
    for note in summary.get("notes", []):
        lines.append(f"  note: {note}")
    if summary.get("files"):
        lines.append(f"  wrote {', '.join(summary['files'])} in {summary['out']}")
    return "\n".join(lines)
