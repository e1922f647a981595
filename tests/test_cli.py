"""The ``pyro-vae`` command line, run as a user runs it: in a subprocess."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = ["--pair-kwargs", '{"hidden": [32], "z_dim": 4}', "--batch-size", "50",
         "--train-limit", "300", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def digits_run(run_cli, tmp_path_factory):
    """One small digits run shared by the evaluate and sample tests."""
    cwd = tmp_path_factory.mktemp("cli")
    run_cli("train", "--epochs", "2", "--out", "run", *SMALL, cwd=cwd)
    return cwd / "run"


def test_train_writes_a_run_and_prints_a_summary(digits_run):
    assert (digits_run / "checkpoint.pt").is_file() and (digits_run / "best.pt").is_file()
    lines = (digits_run / "metrics.csv").read_text().splitlines()
    assert (
        lines[0] == "epoch,train_loss,valid_elbo,seconds,train_seconds,beta,lr" and len(lines) == 3
    )


def test_resume_from_the_cli_matches_an_uninterrupted_run(run_cli, tmp_path, digits_run):
    run_cli("train", "--epochs", "1", "--out", "run", *SMALL, cwd=tmp_path)
    out = run_cli("train", "--epochs", "2", "--out", "run", "--resume", cwd=tmp_path)
    assert "resuming" in out.stderr and "epoch 2/2" in out.stderr
    assert (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:][-1].split(",")[:3] == (
        (digits_run / "metrics.csv").read_text().splitlines()[-1].split(",")[:3]
    )


def test_evaluate_json_prints_exactly_one_object(run_cli, digits_run):
    out = run_cli("evaluate", digits_run, "--num-samples", "64", "--limit", "40", "--json",
                   cwd=digits_run.parent)  # fmt: skip
    summary = json.loads(out.stdout)  # fails unless stdout is exactly one JSON value
    assert {"log_px", "elbo", "gap", "num_points", "num_samples"} <= set(summary)
    assert summary["num_points"] == 40 and summary["num_samples"] == 64
    assert summary["elbo"] <= summary["log_px"] < 0
    assert summary["gap"] == pytest.approx(summary["log_px"] - summary["elbo"], abs=1e-4)
    # about 64 pixels * log 2 = 44 nats before training; a little better after
    assert -60 < summary["log_px"] < -15
    saved = json.loads((digits_run / "evaluation_test.json").read_text())
    assert saved["log_px"] == summary["log_px"]
    again = json.loads(run_cli("evaluate", digits_run, "--num-samples", "64", "--limit", "40",
                                "--json", cwd=digits_run.parent).stdout)  # fmt: skip
    assert again["log_px"] == summary["log_px"], "evaluation is seeded"


def test_sample_writes_a_png(run_cli, digits_run, tmp_path):
    run_cli("sample", digits_run, "--out", tmp_path / "grid.png", "--num", "6", cwd=tmp_path)
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def blobs_npz(tmp_path_factory):
    """A 28x28 data set of smooth blobs in [0, 1], saved as npz with train/valid/test."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(28), np.arange(28), indexing="ij"), -1)
    centres = rng.uniform(6, 22, size=(260, 1, 1, 2))
    images = np.exp(-((grid - centres) ** 2).sum(-1) / 18.0).astype(np.float32)
    path = tmp_path_factory.mktemp("npz") / "blobs.npz"
    np.savez(path, train=images[:200], valid=images[200:230], test=images[230:])
    return path


def test_pyro_tutorial_vae_trains_unchanged_through_pair(run_cli, tmp_path, blobs_npz):
    """examples/tutorial_vae.py is Pyro's tutorial VAE, which knows nothing of pyro_vae."""
    run_cli("train", "--dataset", blobs_npz, "--binarize", "dynamic",
             "--pair", EXAMPLES / "tutorial_vae.py:VAE",
             "--pair-kwargs", '{"z_dim": 4, "hidden_dim": 64}', "--epochs", "3",
             "--batch-size", "50", "--lr", "3e-3", "--out", "run", cwd=tmp_path)  # fmt: skip
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(line.split(",")[1]) for line in lines]
    assert losses[-1] < losses[0] - 5, losses
    out = run_cli("evaluate", "run", "--num-samples", "32", "--json", cwd=tmp_path)
    summary = json.loads(out.stdout)
    assert summary["num_points"] == 30 and summary["elbo"] <= summary["log_px"]


MODEL_FILE = """
import pyro, pyro.distributions as dist, torch

def model(x):
    w = pyro.param("w", torch.zeros(x.shape[1]))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=w + z).to_event(1), obs=x)

def guide(x):
    loc = pyro.param("loc", torch.zeros(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc.expand(x.shape[0], 1), 1.0).to_event(1))

def bad_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("u", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
"""


def test_model_and_guide_functions_train_and_resume(run_cli, tmp_path):
    (tmp_path / "fns.py").write_text(MODEL_FILE)
    args = ["--model", "fns.py:model", "--guide", "fns.py:guide", "--train-limit", "200",
            "--batch-size", "100", "--lr", "0.05", "--out", "run"]  # fmt: skip
    run_cli("train", "--epochs", "1", *args, cwd=tmp_path)
    run_cli("train", "--epochs", "2", "--out", "run", "--resume", cwd=tmp_path)
    # from inside the run directory: the config holds the function file's absolute path
    out = run_cli("evaluate", ".", "--num-samples", "16", "--limit", "20", "--json",
                   cwd=tmp_path / "run")  # fmt: skip
    assert json.loads(out.stdout)["num_points"] == 20


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "mnits"], "unknown data set 'mnits'"),
        (["--pair", "mpl"], "unknown pair 'mpl'"),
        (["--pair", "fns.py:Nope"], "has no 'Nope'"),
        (["--model", "fns.py:model", "--guide", "fns.py:bad_guide"],
         r"latent site\(s\) \['z'\] of the model are not sampled by the guide"),
        (["--dataset", "mnist", "--data-dir", "empty"],
         r"file\(s\) not found: train-images-idx3-ubyte.gz(.|\n)*empty/mnist/(.|\n)*--download"),
        (["--dataset", "grey.npy", "--binarize", "none"], "--binarize dynamic or static"),
        (["--dataset", "nan.npy"], "nan.npy"),
        (["--lr", "0"], "--lr 0.0: must be a positive number"),
        (["--device", "cuda:7"], "cuda:7"),  # no GPU: not available; a GPU: no device 7
        (["--pair-kwargs", "[1]"], "must be a JSON object"),
        (["--config", "missing.toml"], "--config 'missing.toml': no such file"),
    ],
)  # fmt: skip
def test_bad_input_gets_a_clear_message_and_exit_2(run_cli, tmp_path, args, message):
    (tmp_path / "fns.py").write_text(MODEL_FILE)
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "grey.npy", np.full((50, 4, 4), 0.5, dtype=np.float32))
    bad = np.zeros((50, 4, 4), dtype=np.float32)
    bad[3, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    # no other data root: a missing file must stay missing
    isolated = {"PYRO_VAE_DATA_DIR": "", "PYRO_VAE_CACHE": str(tmp_path / "cache")}
    result = run_cli("train", "--epochs", "1", "--out", "run", *args, cwd=tmp_path,
                      check=False, env=isolated)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(message, result.stderr), result.stderr


def test_evaluate_on_a_folder_that_is_not_a_run(run_cli, tmp_path):
    result = run_cli("evaluate", tmp_path, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "config.toml is missing" in result.stderr


def test_list_names_every_registry_entry(run_cli, tmp_path):
    from pyro_vae.data import DATASETS
    from pyro_vae.infer.objectives import OBJECTIVES
    from pyro_vae.pairs import PAIRS

    out = run_cli("list", cwd=tmp_path).stdout
    for name in [*DATASETS, *PAIRS, *OBJECTIVES]:
        assert f"  {name} " in out


def test_the_readme_pair_example_trains_and_evaluates(run_cli, tmp_path):
    """The complete `my_vae.py` shown in README.md is real code that works as documented."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("A complete file, `my_vae.py`:")
    code = readme[start:].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_vae.py").write_text(code)
    run_cli("train", "--pair", "my_vae.py:MyVAE", "--pair-kwargs", '{"z_dim": 8}', "--epochs",
             "1", "--train-limit", "200", "--out", "runs/mine", cwd=tmp_path)  # fmt: skip
    out = run_cli("evaluate", "runs/mine", "--num-samples", "20", "--limit", "10", "--json",
                   cwd=tmp_path)  # fmt: skip
    assert json.loads(out.stdout)["num_points"] == 10


def test_config_file_with_a_flag_overriding_it(run_cli, tmp_path):
    (tmp_path / "run.toml").write_text(
        "[train]\nepochs = 5\nbatch_size = 50\ntrain_limit = 200\nlr = 0.002\n"
        "pair_kwargs = {hidden = [16], z_dim = 3}\n"
    )
    run_cli("train", "--config", "run.toml", "--epochs", "1", "--out", "run", cwd=tmp_path)
    resolved = tomllib.loads((tmp_path / "run" / "config.toml").read_text())["train"]
    assert resolved["epochs"] == 1 and resolved["lr"] == 0.002  # flag wins, file fills in
    assert resolved["pair_kwargs"] == {"hidden": [16], "z_dim": 3}
    assert resolved["pair"] == "mlp" and resolved["binarize"] == "dynamic"  # data set defaults


def test_sigterm_keeps_the_last_epoch_and_the_run_resumes(run_cli, tmp_path):
    """A run stopped by a signal exits 130, keeps its last checkpoint, and resumes from it."""
    script = shutil.which("pyro-vae")
    command = [script] if script else [sys.executable, "-m", "pyro_vae"]
    process = subprocess.Popen(
        [*command, "train", "--epochs", "500", "--out", "run", *SMALL],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), "no checkpoint within 120 s"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "SIGTERM: stopped after epoch" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    state = torch.load(checkpoint, weights_only=True)
    done = state["epoch"]
    assert done >= 1
    out = run_cli("train", "--epochs", str(done + 1), "--out", "run", "--resume", cwd=tmp_path)
    partial = state.get("in_progress")
    saved = f"step {partial['batches_done']} of epoch" if partial else "epoch"
    assert f"resuming run after {saved}" in out.stderr
