"""What a sweep leaves in its folder: the best trial, the table of trials (CSV and aligned
text) and Optuna's plots (optimization history, parameter importances) as PNG."""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from typing import Any

from pyro_vae.runs.files import atomic_write_bytes
from pyro_vae.sweeps.errors import require_optuna

TABLE_CSV = "trials.csv"
TABLE_TEXT = "trials.txt"
BEST = "best.json"
HISTORY_PNG = "optimization_history.png"
IMPORTANCES_PNG = "param_importances.png"
COLUMNS = ("number", "state", "value", "epochs", "seconds")


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, each param, epochs, seconds, run_dir."""
    names = sorted({name for t in study.trials for name in t.params})
    rows = []
    for trial in study.trials:
        row = {
            "number": trial.number,
            "state": trial.state.name,
            "value": trial.value,
            **{name: trial.params.get(name) for name in names},
            "epochs": trial.user_attrs.get("epochs", 0),
            "seconds": trial.user_attrs.get("seconds"),
            "run_dir": trial.user_attrs.get("run_dir", ""),
        }
        rows.append(row)
    return rows


def best_trial(study: Any) -> dict[str, Any] | None:
    """The complete trial with the highest value, or None before one completed."""
    optuna = require_optuna()
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return None
    best = max(complete, key=lambda t: t.value)
    return {"number": best.number, "value": best.value, "params": dict(best.params),
            "run_dir": best.user_attrs.get("run_dir", "")}  # fmt: skip


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def text_table(rows: list[dict[str, Any]]) -> str:
    """The rows as aligned columns (run_dir last, unpadded)."""
    if not rows:
        return "no trials yet\n"
    columns = [c for c in rows[0] if c != "run_dir"]
    cells = [[_shown(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)) + "  run_dir"]
    for row, line in zip(rows, cells):
        lines.append("  ".join(v.ljust(w) for v, w in zip(line, widths)) + f"  {row['run_dir']}")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict[str, Any]], best: dict | None, sweep_dir: Path) -> dict:
    """``trials.csv``, ``trials.txt`` and ``best.json`` in ``sweep_dir``; returns their paths."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    paths = {"csv": sweep_dir / TABLE_CSV, "text": sweep_dir / TABLE_TEXT, "best": sweep_dir / BEST}
    atomic_write_bytes(paths["csv"], buffer.getvalue().encode())
    atomic_write_bytes(paths["text"], text_table(rows).encode())
    atomic_write_bytes(paths["best"], (json.dumps(best, indent=2) + "\n").encode())
    return paths


def importances_note(study: Any) -> str | None:
    """Why parameter importances cannot be drawn yet, or None when they can: they need two
    complete trials and a parameter that took two values among them."""
    optuna = require_optuna()
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varied = [name for name in {n for t in complete for n in t.params}
              if len({json.dumps(t.params.get(name)) for t in complete}) > 1]  # fmt: skip
    if len(complete) < 2 or not varied:
        return (
            f"parameter importances need at least 2 complete trials with a parameter that "
            f"varies among them (have {len(complete)} complete, {len(varied)} varied); "
            f"{IMPORTANCES_PNG} is not drawn"
        )
    return None


def draw_plots(study: Any, sweep_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """Optuna's history and importance plots as PNG; returns the paths and notes on the plots
    that could not be drawn."""
    optuna = require_optuna()
    from optuna.visualization import matplotlib as plots

    from pyro_vae.runs.figures import save_figure  # matplotlib only when plots are drawn

    paths, notes = {}, []
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    wanted = [("history", HISTORY_PNG, plots.plot_optimization_history,
               None if complete else f"no complete trial yet; {HISTORY_PNG} is not drawn"),
              ("importances", IMPORTANCES_PNG, plots.plot_param_importances,
               importances_note(study))]  # fmt: skip
    for name, file, plot, note in wanted:
        if note is not None:
            notes.append(note)
            continue
        with warnings.catch_warnings():  # the matplotlib plots are experimental in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = plot(study)
        paths[name] = save_figure(axes.figure, sweep_dir / file)
    return paths, notes
