"""Training runs: run directory contents, exact resume, interruption, NaN, configuration."""

import csv
import importlib
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.pairs import PAIRS
from pyro_vae.runs.config import ConfigError, TrainConfig, dumps_toml, load_toml, resolve
from pyro_vae.training.train import TrainingError, load_checkpoint, read_config, train


def small_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        dataset="digits", pair="mlp", pair_kwargs={"hidden": [32], "z_dim": 4},
        epochs=2, batch_size=50, train_limit=300, device="cpu", out=str(tmp_path / "run"),
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def read_metrics(run_dir):
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def module_state(run_dir, name="checkpoint.pt"):
    return load_checkpoint(run_dir / name)["module"]


def test_run_directory_holds_config_metrics_and_checkpoints(tmp_path):
    result = train(small_config(tmp_path))
    run_dir = result.run_dir
    assert {p.name for p in run_dir.iterdir()} >= {
        "config.toml", "metrics.csv", "checkpoint.pt", "best.pt", "metrics.png"
    }  # fmt: skip
    assert (run_dir / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    config = read_config(run_dir)
    assert config.binarize == "dynamic" and config.device == "cpu"  # resolved defaults
    rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {
        "epoch", "train_loss", "valid_elbo", "seconds", "train_seconds", "beta", "lr"
    }  # fmt: skip
    assert float(rows[0]["beta"]) == 1.0
    assert 0 < float(rows[0]["train_seconds"]) < float(rows[0]["seconds"])
    # the loss is per data point: about 64 pixels * log 2 = 44 nats at the start
    assert 20 < float(rows[0]["train_loss"]) < 60
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["epoch"] == 2 and set(state) >= {"module", "params", "optimizer", "rng"}
    best = max(result.history, key=lambda r: r["valid_elbo"])
    assert load_checkpoint(run_dir / "best.pt")["epoch"] == best["epoch"]
    assert not list(run_dir.glob("*.tmp"))


def test_same_seed_same_result_and_other_seed_differs(tmp_path):
    a = train(small_config(tmp_path / "a", epochs=1))
    b = train(small_config(tmp_path / "b", epochs=1))
    c = train(small_config(tmp_path / "c", epochs=1, seed=1))
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert a.history[0]["train_loss"] != c.history[0]["train_loss"]


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path, objective):
    kwargs = dict(epochs=3, objective=objective, num_particles=2)
    whole = train(small_config(tmp_path / "whole", **kwargs))
    train(small_config(tmp_path / "parts", **{**kwargs, "epochs": 1}))
    parts = train(small_config(tmp_path / "parts", **kwargs), resume=True)
    assert [r["train_loss"] for r in parts.history] == [r["train_loss"] for r in whole.history]
    a, b = module_state(whole.run_dir), module_state(parts.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = read_metrics(parts.run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


def test_interrupted_run_keeps_the_last_epoch_and_resumes_exactly(tmp_path):
    whole = train(small_config(tmp_path / "whole", epochs=2))

    def interrupt(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_config(tmp_path / "cut", epochs=2), on_epoch=interrupt)
    assert load_checkpoint(tmp_path / "cut" / "run" / "checkpoint.pt")["epoch"] == 1
    resumed = train(small_config(tmp_path / "cut", epochs=2), resume=True)
    a, b = module_state(whole.run_dir), module_state(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_needs_resume_and_resume_needs_a_run(tmp_path):
    train(small_config(tmp_path, epochs=1))
    with pytest.raises(TrainingError, match="already holds a run; pass --resume"):
        train(small_config(tmp_path, epochs=1))
    with pytest.raises(TrainingError, match="--resume: no checkpoint"):
        train(small_config(tmp_path / "new"), resume=True)


class PoisonablePair(torch.nn.Module):
    """A tiny pair whose likelihood turns NaN on demand."""

    def __init__(self):
        super().__init__()
        self.pair = PAIRS["mlp"].factory((1, 8, 8), hidden=[8], z_dim=2)
        self.poisoned = False

    def model(self, x):
        if self.poisoned:
            pyro.module("decoder", self.pair.decoder)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
                loc = z.sum(-1, keepdim=True) * float("nan") + x
                pyro.sample("x", dist.Normal(loc, 1.0, validate_args=False).to_event(1), obs=x)
        else:
            self.pair.model(x)

    def guide(self, x):
        self.pair.guide(x)


# Pyro's validation warns about the NaN before our check stops the run: expected here.
@pytest.mark.filterwarnings("ignore:Encountered NaN:UserWarning")
def test_nan_loss_stops_naming_epoch_and_step_and_keeps_the_checkpoint(tmp_path):
    pair = PoisonablePair()

    def poison(row):
        pair.poisoned = True

    config = small_config(tmp_path, epochs=3, pair=None, pair_kwargs={})
    with pytest.raises(TrainingError, match=r"loss is nan at epoch 2, step 1.*epoch 1 .* is kept"):
        train(config, pair=pair, on_epoch=poison)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(dumps_toml({"epochs": 7, "lr": 0.01, "pair_kwargs": {"z_dim": 3}}))
    config = resolve(load_toml(path), {"epochs": 2, "lr": None})
    assert config.epochs == 2 and config.lr == 0.01 and config.pair_kwargs == {"z_dim": 3}


def test_bad_config_files_and_values_name_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nepochs = 2\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learning_rate'\]"):
        load_toml(path)
    path.write_text("epochs = = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(path)
    with pytest.raises(ConfigError, match="--lr -1.0: must be a positive number"):
        resolve({}, {"lr": -1.0})
    with pytest.raises(ConfigError, match="--device 'tpu': must be auto, cpu or cuda"):
        resolve({}, {"device": "tpu"})


def test_resolved_config_round_trips_through_toml(tmp_path):
    config = small_config(tmp_path, pair_kwargs={"hidden": [3, 4], "activation": "relu"})
    path = tmp_path / "c.toml"
    path.write_text(dumps_toml(config.to_dict()))
    assert TrainConfig(**load_toml(path)) == config


def test_resume_refuses_changed_settings_and_finished_runs(tmp_path):
    train(small_config(tmp_path, epochs=1))
    with pytest.raises(ConfigError, match=r"settings differ: batch_size \(run: 50, now: 25\)"):
        train(small_config(tmp_path, epochs=2, batch_size=25), resume=True)
    train(small_config(tmp_path, epochs=2), resume=True)
    with pytest.raises(ConfigError, match="already finished epoch 2; pass --epochs N with N > 2"):
        train(small_config(tmp_path, epochs=1), resume=True)


def test_resume_at_a_new_learning_rate_records_it(tmp_path):
    whole = train(small_config(tmp_path / "whole", epochs=2))
    train(small_config(tmp_path / "parts", epochs=1))
    slower = train(small_config(tmp_path / "parts", epochs=2, lr=1e-4), resume=True)
    assert [row["lr"] for row in slower.history] == [1e-3, 1e-4]
    assert slower.history[0]["train_loss"] == whole.history[0]["train_loss"]
    assert slower.history[1]["train_loss"] != whole.history[1]["train_loss"]
    state = load_checkpoint(slower.run_dir / "checkpoint.pt")
    groups = state["optimizer"]["state_dict"]["param_groups"]
    assert {g["lr"] for g in groups} == {1e-4}
    assert {g["initial_lr"] for g in groups} == {1e-4}


def test_resume_of_a_finished_run_does_its_finishing_steps(tmp_path):
    first = train(small_config(tmp_path, epochs=1))
    (first.run_dir / "metrics.png").unlink()  # killed before the plot
    again = train(small_config(tmp_path, epochs=1), resume=True)
    assert (first.run_dir / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert again.history == first.history


PAIRS_DIR = Path(__file__).parent / "pairs"


def test_divergence_inside_pyros_validation_is_one_clear_message(run_cli, tmp_path):
    """exp() of an unclamped layer as the encoder's scale, at --lr 10: the run dies inside
    Pyro's argument validation (scale or loc invalid), which must read as a divergence."""
    result = run_cli("train", "--pair", f"{PAIRS_DIR / 'exp_scale.py'}:ExpScaleVAE",
                     "--binarize", "none", "--epochs", "3", "--batch-size", "50", "--lr", "10",
                     "--out", tmp_path / "run", cwd=tmp_path, check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1
    assert "the run diverged" in result.stderr and "Expected parameter" in result.stderr
    assert "training stopped; no checkpoint was written yet" in result.stderr
    assert "Start again with a smaller --lr (now 10)" in result.stderr


class NegativeScalePair(torch.nn.Module):
    """A Gaussian pair whose likelihood scale is a bare parameter; poisoned, it turns
    negative (finite, but invalid for Normal): Pyro's validation refuses it."""

    def __init__(self):
        super().__init__()
        self.pair = PAIRS["mlp"].factory((1, 8, 8), hidden=[8], z_dim=2)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def model(self, x):
        pyro.module("decoder", self.pair.decoder)
        pyro.module("noise", self)
        x = x.reshape(x.shape[0], -1)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            probs = self.pair.decoder(z).reshape(x.shape[0], -1)
            pyro.sample("x", dist.Normal(probs, self.scale).to_event(1), obs=x)

    def guide(self, x):
        self.pair.guide(x)


def test_an_invalid_parameter_in_pyros_validation_keeps_the_checkpoint_and_resume_slower(
    tmp_path,
):
    pair = NegativeScalePair()

    def poison(row):
        if row["epoch"] == 1:
            with torch.no_grad():
                pair.scale.fill_(-1.0)

    config = small_config(tmp_path, epochs=2, pair=None, pair_kwargs={}, binarize="none")
    with pytest.raises(TrainingError) as caught:
        train(config, pair=pair, on_epoch=poison)
    message = str(caught.value)
    assert "the run diverged: invalid values (ValueError: Expected parameter scale" in message
    assert "at epoch 2, step 1" in message and "checkpoint of epoch 1" in message
    assert f"--resume --lr {config.lr / 10:g}" in message
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    # the advice can be followed: the checkpoint holds the good scale
    resumed = train(small_config(tmp_path, epochs=2, pair=None, pair_kwargs={},
                                 binarize="none", lr=1e-4), pair=NegativeScalePair(),
                    resume=True)  # fmt: skip
    assert [row["lr"] for row in resumed.history] == [1e-3, 1e-4]


@pytest.mark.parametrize(
    "checkpoint_every, blown_up_at, where",
    [(0, 12, "at the end of epoch 2"), (2, 10, "at epoch 2, step 4")],
)
def test_a_parameter_turned_infinite_is_never_checkpointed(
    tmp_path, monkeypatch, checkpoint_every, blown_up_at, where
):
    """An optimizer step that leaves an infinite parameter behind a finite loss (a huge
    gradient) stops the run before the next checkpoint, which keeps the good state."""
    training = importlib.import_module("pyro_vae.training.train")

    real_step, steps = training._svi_step, []

    def step_then_blow_up(svi, x, pair, *args):
        loss = real_step(svi, x, pair, *args)
        steps.append(loss)
        if len(steps) == blown_up_at:  # the step before a checkpoint (6 steps an epoch)
            with torch.no_grad():
                next(iter(pyro.get_param_store().values())).view(-1)[0] = float("inf")
        return loss

    monkeypatch.setattr(training, "_svi_step", step_then_blow_up)
    config = small_config(tmp_path, epochs=3, checkpoint_every=checkpoint_every)
    with pytest.raises(TrainingError, match=f"a parameter is not finite {where}"):
        train(config)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert all(torch.isfinite(t).all() for t in state["module"].values())
    if not checkpoint_every:  # the validation of epoch 2 never ran on it
        assert state["epoch"] == 1 and "in_progress" not in state
    else:  # saved at step 8 (epoch 2, step 2); the save at step 10 is refused
        assert state["in_progress"]["batches_done"] == 2
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["epoch"] == 1


def test_divergence_that_shows_first_in_the_validation_is_the_same_message(tmp_path, monkeypatch):
    """The last step of epoch 2 leaves the likelihood scale negative (finite): the epoch's
    validation is where Pyro's argument validation refuses it."""
    training = importlib.import_module("pyro_vae.training.train")
    real_step, steps, pair = training._svi_step, [], NegativeScalePair()

    def step_then_turn_negative(svi, x, the_pair, *args):
        loss = real_step(svi, x, the_pair, *args)
        steps.append(loss)
        if len(steps) == 12:
            with torch.no_grad():
                pair.scale.fill_(-1.0)
        return loss

    monkeypatch.setattr(training, "_svi_step", step_then_turn_negative)
    config = small_config(tmp_path, epochs=3, pair=None, pair_kwargs={}, binarize="none")
    with pytest.raises(TrainingError) as caught:
        train(config, pair=pair)
    message = str(caught.value)
    assert "the run diverged: invalid values (ValueError: Expected parameter scale" in message
    assert "at the validation of epoch 2" in message and "checkpoint of epoch 1" in message
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
