"""Every example script and notebook runs in smoke mode; a new one must be listed here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: example scripts, run as `python FILE RUN_DIR` with PYRO_VAE_SMOKE=1
EXAMPLES = ["train_digits.py", "tutorial_vae.py"]
#: notebooks (jupytext MyST .md) executed in smoke mode; none yet (see notebooks/README.md)
NOTEBOOKS: list[str] = []


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
