"""Every example script and notebook runs in smoke mode; a new one must be listed here."""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import nbclient
import pytest

ROOT = Path(__file__).resolve().parents[1]
#: example scripts, run as `python FILE RUN_DIR` with PYRO_VAE_SMOKE=1
EXAMPLES = ["train_digits.py", "tutorial_vae.py"]
#: notebooks (jupytext MyST .md), executed in a Jupyter kernel with PYRO_VAE_SMOKE=1
NOTEBOOKS = [
    "01_quickstart.md",
    "02_custom_pair.md",
    "03_elbo_tightness.md",
    "04_posterior_diagnostics.md",
    "05_gradient_estimators.md",
    "06_semi_supervised.md",
    "07_flows_and_priors.md",
    "08_gradients_and_likelihoods.md",
]
#: seconds one notebook cell may run in smoke mode before the test fails
NOTEBOOK_CELL_TIMEOUT = 300


def test_every_example_and_notebook_is_listed():
    found = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
    assert found == sorted(EXAMPLES), "list new example scripts in EXAMPLES so they are run"
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.md") if p.name != "README.md")
    notebooks += sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks == sorted(NOTEBOOKS), "list new notebooks in NOTEBOOKS so they are run"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_in_smoke_mode(name, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), str(tmp_path / "run")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYRO_VAE_SMOKE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    if name == "train_digits.py":
        assert "test log p(x) ~" in result.stdout
        assert (tmp_path / "run" / "samples.png").is_file()


def test_benchmark_reference_runs_in_smoke_mode(real_data_dir, tmp_path):
    """benchmarks/iwae_reference.py --smoke trains and evaluates on a slice of real MNIST."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "iwae_reference.py"), "--smoke",
         "--json-out", str(tmp_path / "out.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYRO_VAE_DATA_DIR": str(real_data_dir)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out.json").read_text())
    # one epoch on 2000 images: far from trained, but far better than 784 log 2 = 543 nats
    assert -300 < summary["log_px"] < -100 and summary["elbo"] <= summary["log_px"]


def test_step_speed_benchmark_runs_and_reports_every_way(tmp_path):
    """benchmarks/step_speed.py, as small as it goes: every way of stepping, a median each."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_speed.py"), "--batch-sizes", "4",
         "--repeats", "2", "--steps", "2", "--warmup", "2", "--eval-points", "8",
         "--eval-samples", "6", "--eval-repeats", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    rows = summary["batch_sizes"]["4"]
    ways = ("hand eager", "hand compiled", "hand eager, fused", "hand compiled, fused",
            "pyro_vae eager", "pyro_vae --compile")  # fmt: skip
    assert set(rows) == set(ways)
    assert rows["hand eager"]["ratio"] == 1.0
    assert all(row["ms_per_step"] > 0 for row in rows.values())
    compiled = rows["pyro_vae --compile"]
    assert compiled["fallback"] is None and compiled["graphs"] == 1, compiled
    evaluation = summary["evaluation"]
    assert evaluation["fallback"] is None and evaluation["graphs"] == 1
    assert evaluation["hand eager"]["ratio"] == 1.0 and evaluation["pyro_vae eager"]["seconds"] > 0


def test_eval_gemm_benchmark_runs_in_smoke_mode(tmp_path):
    """benchmarks/eval_gemm.py --smoke: the compiled evaluation's FLOP rate against torch.mm's,
    with its profile, at the old chunk bound (2**24) and today's (2**22 on the CPU)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "eval_gemm.py"), "--smoke"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    configs = summary["configs"]
    assert summary["fallback"] is None and set(configs) == {str(2**24), "default"}
    assert configs["default"]["max_elements"] == 2**22
    for row in configs.values():
        assert row["chunk_samples"] == 64
        # 20 points x 64 samples x the decoder's 2 * (50*200 + 200*200 + 200*784) FLOPs, and
        # the encoder's 2 * (784*200 + 200*200 + 2 * 200*50) once per point and chunk
        assert row["matmul_gflop"] == pytest.approx((20 * 64 * 413_600 + 20 * 433_600) / 1e9)
        assert row["achieved_gflops"] > 0 and row["gemm_gflops_at_eval_shapes"] > 0
        assert any("binary_cross_entropy" in name for name in row["profile_seconds"]["kernels"])


def test_data_parallel_benchmark_runs_one_and_two_ranks(tmp_path):
    """benchmarks/data_parallel.py on the digits: 1 and 2 ranks, one epoch, evaluation on
    1 and 2 ranks with the same per-batch seeds, so the same log p(x)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "data_parallel.py"), "--dataset", "digits",
         "--epochs", "1", "--ranks", "1", "2", "--eval-samples", "4", "--eval-points", "40",
         "--out", str(tmp_path / "runs")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert set(summary["runs"]) == {"1", "2"} and summary["runs"]["1"]["speedup"] == 1.0
    assert summary["runs"]["2"]["efficiency"] > 0
    evaluation = summary["evaluation"]
    assert evaluation["1"]["log_px"] == pytest.approx(evaluation["2"]["log_px"], rel=1e-6)


PAPER_ROWS = ("burda-vae", "burda-iwae-dreg-k5", "pythae-vae", "pythae-vampprior")


def test_paper_rows_benchmark_runs_in_smoke_mode(tmp_path):
    """benchmarks/paper_rows.py --smoke, without a data folder: every row trained 2 epochs on
    the digits and evaluated (K=10, 50 test points), one row.json each; a rerun skips them,
    --table reads them back beside the papers' figures, --list states every protocol."""
    script = str(ROOT / "benchmarks" / "paper_rows.py")
    env = {key: value for key, value in os.environ.items() if key != "PYRO_VAE_DATA_DIR"}
    out = tmp_path / "paper"

    def paper_rows(*args):
        result = subprocess.run([sys.executable, script, *args], cwd=tmp_path,
                                capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    paper_rows("--smoke", "--out", str(out))
    rows = {name: json.loads((out / name / "row.json").read_text()) for name in PAPER_ROWS}
    for name, row in rows.items():
        assert row["epochs"] == 2 and row["eval_points"] == 50 and row["eval_samples"] == 10
        # 64 binary pixels: better than 64 log 2 = 44.4 nats, and the ELBO below log p(x)
        assert -64 * math.log(2) < row["test_elbo"] <= row["test_log_px"] < 0, name
        assert row["test_log_px_stderr"] > 0 and row["deviations"] and row["protocol"]
        assert row["train_wall_seconds"] > 0 and row["train_cpu_seconds"] > 0
        assert row["machine"]["cores"] >= 1 and row["machine"]["threads"] == 1
        assert row["machine"]["gemm_gflops_before_eval"] > 0
        fastest, median, slowest = row["epoch_seconds_range"]
        assert 0 < fastest <= median <= slowest <= row["train_step_seconds"]
    assert rows["burda-vae"]["paper_nll"] == {"VAE k=1": 86.76}
    assert rows["pythae-vampprior"]["paper_nll"] == {"pythae VampPrior": 85.79}

    before = {name: (out / name / "row.json").stat().st_mtime_ns for name in PAPER_ROWS}
    paper_rows("--smoke", "--out", str(out))  # every row.json exists: nothing is redone
    assert before == {name: (out / name / "row.json").stat().st_mtime_ns for name in PAPER_ROWS}
    table = paper_rows("--table", "--out", str(out))
    for name, row in rows.items():
        assert f"| {name} |" in table and f"{-row['test_log_px']:.2f}" in table
    assert "86.76" in table and "batch 100 (paper 20)" in table
    listing = paper_rows("--list")
    assert all(f"{name} (paper test NLL" in listing for name in PAPER_ROWS)


def test_a_table_benchmark_stopped_by_sigterm_stops_its_trainer_too(tmp_path):
    """SIGTERM to paper_rows.py (or flows_priors.py) reaches the trainer it runs, which saves
    and stops, rather than killing the script and leaving the trainer running unwatched."""
    ready, saved = tmp_path / "ready", tmp_path / "saved"
    trainer = (
        "import pathlib, signal, sys, time\n"
        f"def save(signum, frame):\n    pathlib.Path({str(saved)!r}).write_text('saved')\n"
        "    sys.exit(130)\n"
        "signal.signal(signal.SIGTERM, save)\n"
        f"pathlib.Path({str(ready)!r}).write_text('ready')\n"
        "time.sleep(60)\n"
    )
    script = tmp_path / "row.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "from pathlib import Path\n"
        "from _rows import exit_on_sigterm, train_until\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "exit_on_sigterm()\n"
        "def row():\n"
        f"    train_until([sys.executable, '-c', {trainer!r}], dict(os.environ),\n"
        f"                Path({str(tmp_path / 'log')!r}), lambda cpu, wall: False)\n"
        "with ThreadPoolExecutor(max_workers=1) as pool:  # as the scripts run their rows\n"
        "    list(pool.map(lambda _: row(), [0]))\n"
    )
    # its own process group: whatever the outcome, nothing of it outlives the test
    process = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
    try:
        for _ in range(300):
            if ready.exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), "the trainer never started"
        process.terminate()
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
        assert saved.read_text() == "saved"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_myst_markdown_without_outputs(name):
    """A jupytext MyST header, a python3 kernel, no outputs, one cell reading the smoke switch."""
    path = ROOT / "notebooks" / name
    text = path.read_text()
    assert text.startswith("---\njupytext:\n"), f"{name}: no jupytext YAML front matter"
    notebook = jupytext.read(path)
    representation = notebook.metadata["jupytext"]["text_representation"]
    assert representation["format_name"] == "myst", f"{name}: not jupytext MyST markdown"
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells, f"{name}: no code cells (is each one a ```{{code-cell}} ipython3 block?)"
    for cell in code_cells:
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs committed"
        lines = cell.source.splitlines()
        assert not any(line.lstrip().startswith(("!", "%")) for line in lines), (
            f"{name}: no shell escapes or magics; show commands in markdown"
        )
    readers = [cell for cell in code_cells if "PYRO_VAE_SMOKE" in cell.source]
    assert len(readers) == 1, f"{name}: exactly one cell should read PYRO_VAE_SMOKE"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, tmp_path):
    """Execute every cell in a fresh python3 kernel, working directory ``tmp_path``.

    A cell that raises fails the test with the cell and its traceback (CellExecutionError);
    warnings inside the kernel do not. Every notebook draws at least one inline figure.
    """
    notebook = jupytext.read(ROOT / "notebooks" / name)
    client = nbclient.NotebookClient(
        notebook,
        timeout=NOTEBOOK_CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    # without MPLBACKEND the kernel picks its inline backend, whatever the calling shell set
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    client.execute(env={**env, "PYRO_VAE_SMOKE": "1"})
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert any("image/png" in output.get("data", {}) for output in outputs), (
        f"{name}: no inline figure was shown (is matplotlib's inline backend switched off?)"
    )
    assert not any(output.output_type == "error" for output in outputs)
