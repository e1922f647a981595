"""``pyro-vae sweep``: an Optuna study over a space file, each trial a run directory.

A 6-trial sweep with 2 worker processes on digits into SQLite, a sweep killed (SIGKILL) in
its second trial and resumed, pruning by epoch, and the messages of bad space files, a
storage that cannot be opened and a missing optuna.
"""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import pyro_vae
from pyro_vae import cli
from pyro_vae.sweeps import SweepError, load_space, sweep
from pyro_vae.sweeps.objective import Trial

optuna = pytest.importorskip("optuna")

#: Tiny digits runs: 100 training points, 4 steps an epoch.
TRAIN = """\
[train]
dataset = "digits"
epochs = {epochs}
train-limit = 100
batch_size = 25
device = "cpu"
pair_kwargs = {{hidden = [16]}}
"""
PARAMS = """\
[params]
lr = {low = 1e-3, high = 3e-2, log = true}

[params.pair_kwargs]
z_dim = {choices = [2, 4]}
"""


def write_space(folder: Path, epochs: int = 2, params: str = PARAMS) -> Path:
    path = folder / "space.toml"
    path.write_text(TRAIN.format(epochs=epochs) + params)
    return path


def metrics(run_dir: str | Path) -> list[dict[str, float]]:
    with open(Path(run_dir) / "metrics.csv") as handle:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(handle)]


def load(sweep_dir: Path):
    return optuna.load_study(study_name=sweep_dir.name, storage=f"sqlite:///{sweep_dir}/sweep.db")


def test_six_trials_two_workers_into_sqlite(tmp_path):
    result = sweep(write_space(tmp_path, epochs=3), trials=6, workers=2, out=tmp_path / "s")
    study = load(tmp_path / "s")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    # the gate starts no extra trial (a trial whose training failed would not count)
    assert len(finished) == 6
    assert len([t for t in study.trials if "error" not in t.user_attrs]) == 6
    run_dirs = {t.user_attrs["run_dir"] for t in finished}
    assert run_dirs == {str(tmp_path / "s" / f"trial-{t.number:04d}") for t in finished}
    for trial in finished:  # the pruner saw every epoch's valid ELBO of every trial
        rows = metrics(trial.user_attrs["run_dir"])
        assert trial.intermediate_values == {int(r["epoch"]): r["valid_elbo"] for r in rows}
        assert len(rows) == (3 if trial.state.name == "COMPLETE" else trial.user_attrs["epochs"])
        config = (Path(trial.user_attrs["run_dir"]) / "config.toml").read_text()
        assert f"lr = {trial.params['lr']!r}" in config and "train_limit = 100" in config
    best = result.best
    complete = [t for t in finished if t.state.name == "COMPLETE"]
    assert best["value"] == max(t.value for t in complete)
    assert best["value"] == max(r["valid_elbo"] for r in metrics(best["run_dir"]))
    assert json.loads((tmp_path / "s" / "best.json").read_text()) == best
    with open(tmp_path / "s" / "trials.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["number"]) for r in table] == [t.number for t in study.trials]
    assert set(table[0]) >= {"state", "value", "lr", "pair_kwargs.z_dim", "epochs", "seconds"}
    text = (tmp_path / "s" / "trials.txt").read_text().splitlines()
    assert len(text) == len(study.trials) + 1
    assert text[0].split()[:3] == ["number", "state", "value"]
    assert (tmp_path / "s" / "optimization_history.png").stat().st_size > 1000
    if len(complete) >= 2:  # importances need two complete trials (the pruner may leave one)
        assert (tmp_path / "s" / "param_importances.png").stat().st_size > 1000
    else:
        assert "importances need at least 2 complete trials" in " ".join(result.notes)
    assert f"best: trial {best['number']}" in result.summary()


def test_a_killed_sweep_resumes(tmp_path):
    """SIGKILL in the second trial's second epoch (step 12: 8 steps of trial 0, 4 of trial 1's
    first epoch); running the command again fails that trial, retries it from its
    checkpoint, keeps trial 0 as it was, and ends with 3 finished trials."""
    space = write_space(tmp_path)
    command = [sys.executable, "-m", "pyro_vae", "sweep", str(space), "--trials", "3", "--out",
               str(tmp_path / "s")]  # fmt: skip
    root = str(Path(pyro_vae.__file__).resolve().parents[1])  # the package these tests import
    env = {**os.environ, "PYRO_VAE_FAULT": "step:14",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    killed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "trial    0  complete" in killed.stdout
    study = load(tmp_path / "s")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]
    first = tmp_path / "s" / "trial-0000"
    before = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    assert [r["epoch"] for r in metrics(tmp_path / "s" / "trial-0001")] == [1]

    code = cli.main(["sweep", str(space), "--trials", "3", "--out", str(tmp_path / "s")])
    assert code == 0
    study = load(tmp_path / "s")
    states = [t.state.name for t in study.trials]
    assert states[:2] == ["COMPLETE", "FAIL"] and len(states) == 4
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 3
    retry = study.trials[2]
    assert retry.system_attrs["failed_trial"] == 1 and retry.params == study.trials[1].params
    assert retry.user_attrs["run_dir"] == str(tmp_path / "s" / "trial-0001")
    rows = metrics(tmp_path / "s" / "trial-0001")  # epoch 1 from before the kill, 2 resumed
    assert [r["epoch"] for r in rows] == [1, 2] and retry.intermediate_values.keys() == {2}
    if retry.state.name == "COMPLETE":
        assert retry.value == max(r["valid_elbo"] for r in rows)
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == before
    assert not (tmp_path / "s" / "trial-0002").exists()  # the retry took trial 1's folder


def test_a_trial_is_pruned_by_epoch_and_keeps_its_checkpoint(tmp_path):
    """A pruner that prunes every trial after its first epoch: the trial stops there."""
    space = load_space(write_space(tmp_path, epochs=3))
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=0.0))  # fmt: skip
    study.optimize(Trial(space, tmp_path), n_trials=1)
    (trial,) = study.trials
    rows = metrics(tmp_path / "trial-0000")
    assert trial.state.name == "PRUNED" and [r["epoch"] for r in rows] == [1]
    assert trial.intermediate_values == {1: rows[0]["valid_elbo"]}
    assert (tmp_path / "trial-0000" / "checkpoint.pt").is_file()


def test_the_first_half_of_a_trials_epochs_is_never_pruned(tmp_path):
    """By default (the sweep's) a trial is not pruned in the first half of its epochs, so a
    slow starter is not cut by a median of fast starters: pruned after epoch 3 of 4."""
    space = load_space(write_space(tmp_path, epochs=4))
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=0.0))  # fmt: skip
    study.optimize(Trial(space, tmp_path, prune_warmup=None), n_trials=1)
    (trial,) = study.trials
    rows = metrics(tmp_path / "trial-0000")
    assert trial.state.name == "PRUNED" and [r["epoch"] for r in rows] == [1, 2, 3]
    assert sorted(trial.intermediate_values) == [1, 2, 3]


BAD_SPACES = [
    ("[params]\nlr = {low = 1e-3, high = 3e-2\n", ["not valid TOML", "line 2"]),
    ("[params]\nzdim = {choices = [2, 8]}\n", ["[params] zdim", "not a setting of pyro-vae"]),
    ("[params]\nlr = {low = 1e-3, hgh = 3e-2}\n", ["[params] lr", "unknown field(s) ['hgh']"]),
    ("[params]\nlr = {low = 0.0, high = 1e-2, log = true}\n", ["[params] lr", "low > 0"]),
    ("[params]\nepochs = {low = 0.5, high = 4.0}\n", ["[params] epochs", "integer"]),
    ("[params]\nlr = {low = -1.0, high = 1.0}\n", ["[params] lr = -1.0", "--lr"]),
    ("[params]\nbeta = 2.0\n", ["[params] beta", "a fixed value goes under [train]"]),
    ("[train]\nepoch = 3\n[params]\nbeta = {low = 1.0, high = 2.0}\n", ["[train]", "'epoch'"]),
    ("[params.pair_kwargs]\nz_dim = {choices = []}\n", ["[params.pair_kwargs] z_dim"]),
]


@pytest.mark.parametrize("text, words", BAD_SPACES, ids=[w[0] for _, w in BAD_SPACES])
def test_a_bad_space_file_gets_one_clear_message(tmp_path, capsys, text, words):
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(SweepError) as error:
        load_space(tmp_path / "bad.toml")
    for word in [str(tmp_path / "bad.toml"), *words]:
        assert word in str(error.value), (word, str(error.value))
    code = cli.main(["sweep", str(tmp_path / "bad.toml"), "--trials", "2", "--out",
                     str(tmp_path / "s")])  # fmt: skip
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.startswith("pyro-vae sweep: error: space file")
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def test_a_storage_that_cannot_be_opened_names_the_flag(tmp_path, capsys):
    space = write_space(tmp_path)
    argv = ["sweep", str(space), "--trials", "2", "--out", str(tmp_path / "s")]
    assert cli.main([*argv, "--storage", "nosuchdb://x/y"]) == 2
    assert "--storage 'nosuchdb://x/y' cannot be opened" in capsys.readouterr().err
    assert cli.main([*argv, "--storage", f"journal:{tmp_path}/none/j.log"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_without_optuna_the_message_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    space = write_space(tmp_path)
    assert cli.main(["sweep", str(space), "--trials", "2", "--out", str(tmp_path / "s")]) == 2
    stderr = capsys.readouterr().err
    assert 'pip install "pyro-vae[optuna]"' in stderr and "Traceback" not in stderr


def test_the_help_documents_the_space_file():
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["sweep"].format_help()
    assert (
        "[params.pair_kwargs]" in help_text and "{low = 0.5, high = 4.0, log = true}" in help_text
    )
