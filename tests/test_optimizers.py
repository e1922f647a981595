"""Optimizers, learning-rate schedules and --valid-size: the rates themselves, exact resumes,
clipping and weight decay by the numbers, and the whole training set."""

import copy
import math
import sys

import pyro
import pytest
import torch

from pyro_vae import cli
from pyro_vae.data import DataError, load_dataset
from pyro_vae.infer.optimizers import IWAE_EPOCHS, OPTIMIZERS, SCHEDULES, lr_factor, make_optimizer
from pyro_vae.runs.config import ConfigError, TrainConfig
from pyro_vae.training.train import train

TINY = dict(dataset="digits", pair="mlp", pair_kwargs={"hidden": [16], "z_dim": 3},
            batch_size=100, train_limit=300, seed=0, device="cpu")  # fmt: skip


def _config(**settings):
    return TrainConfig(**{**TINY, **settings}).validate()


def test_the_iwae_schedule_is_burda_et_al_s():
    """3^i epochs at 10^(-i/7), i = 0..7: 3280 epochs from 1e-3 down to 1e-4."""
    config = _config(lr_schedule="iwae", epochs=IWAE_EPOCHS)
    assert IWAE_EPOCHS == 3280
    factors = [lr_factor(config, epoch) for epoch in range(IWAE_EPOCHS)]
    start = 0
    for stage in range(8):
        stage_factors = factors[start : start + 3**stage]
        assert len(stage_factors) == 3**stage
        assert all(f == pytest.approx(10 ** (-stage / 7)) for f in stage_factors), stage
        start += 3**stage
    assert 1e-3 * factors[-1] == pytest.approx(1e-4)
    assert lr_factor(config, IWAE_EPOCHS + 5) == factors[-1]  # past the schedule: its last


def test_step_exponential_and_cosine_factors():
    step = _config(lr_schedule="step", lr_gamma=0.5, lr_step_size=3)
    assert [lr_factor(step, e) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    exponential = _config(lr_schedule="exponential", lr_gamma=0.9)
    assert lr_factor(exponential, 4) == pytest.approx(0.9**4)
    cosine = _config(lr_schedule="cosine", epochs=4, lr=1e-3, lr_min=1e-4)
    factors = [lr_factor(cosine, e) for e in range(4)]
    assert factors[0] == 1 and factors[2] == pytest.approx(0.55)  # e = E/2: the ends' mean
    assert factors[3] == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.5)) / 2)  # last: > lr_min
    assert lr_factor(cosine, 4) == pytest.approx(0.1)  # lr_min once the last epoch is over
    assert lr_factor(_config(), 100) == 1


def test_the_cosine_schedule_is_torchs_cosine_annealing_stepped_per_epoch():
    """What a PyTorch user expects from CosineAnnealingLR(T_max=epochs, eta_min=lr_min)
    stepped after each epoch: the last epoch still trains; lr_min is the rate after it."""
    for epochs, lr_min in ((1, 0.0), (2, 0.0), (5, 1e-4), (7, 2e-4)):
        config = _config(lr_schedule="cosine", epochs=epochs, lr=1e-3, lr_min=lr_min)
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
        torch_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, lr_min)
        for epoch in range(epochs):
            assert 1e-3 * lr_factor(config, epoch) == pytest.approx(
                optimizer.param_groups[0]["lr"], rel=1e-12, abs=1e-15
            ), (epochs, epoch)
            assert 1e-3 * lr_factor(config, epoch) > lr_min
            optimizer.step()
            torch_schedule.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_min, abs=1e-15)


def test_a_two_epoch_cosine_run_trains_its_last_epoch(tmp_path):
    """Notebook 07 in smoke mode: two epochs of cosine down to lr_min = 0. The second epoch
    trains at half the rate (it used to get 0 and leave the parameters as they were)."""
    after_epoch = []
    result = train(_config(epochs=2, lr_schedule="cosine", out=str(tmp_path / "run")),
                   progress=False, on_epoch=lambda row: after_epoch.append(_store()))  # fmt: skip
    assert [row["lr"] for row in result.history] == pytest.approx([1e-3, 5e-4])
    first, second = after_epoch
    assert any(not torch.equal(first[name], second[name]) for name in first)


def _store():
    store = pyro.get_param_store()
    return {name: store[name].detach().clone() for name in store}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_with_a_schedule_resumes_exactly(optimizer, tmp_path):
    """A new rate every epoch; a resume after epoch 1 must land on the same parameters, bit
    for bit, and the lr column must be the schedule."""
    momentum = {"momentum": 0.9} if optimizer == "sgd" else {}
    settings = dict(optimizer=optimizer, lr_schedule="step", lr_gamma=0.5, lr_step_size=1,
                    clip_norm=50.0, **momentum)  # fmt: skip
    straight = train(_config(epochs=3, out=str(tmp_path / "straight"), **settings),
                     progress=False)  # fmt: skip
    expected = _store()
    pyro.clear_param_store()
    train(_config(epochs=1, out=str(tmp_path / "resumed"), **settings), progress=False)
    pyro.clear_param_store()
    resumed = train(_config(epochs=3, out=str(tmp_path / "resumed"), **settings), resume=True,
                    progress=False)  # fmt: skip
    got = _store()
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    assert [row["lr"] for row in straight.history] == [1e-3, 5e-4, 2.5e-4]
    assert [row["lr"] for row in resumed.history] == [1e-3, 5e-4, 2.5e-4]
    assert [row["train_loss"] for row in resumed.history] == [
        row["train_loss"] for row in straight.history
    ]


def test_clip_norm_bounds_each_step_and_adamw_decays_decoupled():
    param = pyro.param("w", torch.ones(4))
    unconstrained = pyro.get_param_store()._params["w"]
    sgd = make_optimizer(_config(optimizer="sgd", lr=1.0, clip_norm=0.5), lambda name: 1.0)
    unconstrained.grad = torch.full((4,), 100.0)  # norm 200, clipped to 0.5
    sgd([unconstrained])
    assert torch.linalg.vector_norm(unconstrained.detach() - 1.0).item() == pytest.approx(0.5)
    pyro.clear_param_store()
    param = pyro.param("v", torch.ones(3))
    unconstrained = pyro.get_param_store()._params["v"]
    adamw = make_optimizer(_config(optimizer="adamw", lr=0.1, weight_decay=0.5),
                           lambda name: 0.1)  # fmt: skip
    unconstrained.grad = torch.zeros(3)  # no gradient: only the decay moves it
    adamw([unconstrained])
    torch.testing.assert_close(unconstrained.detach(), torch.full((3,), 1 - 0.1 * 0.5))
    assert param is not None


def test_valid_size_moves_rows_between_train_and_valid_with_their_labels():
    data = load_dataset("digits")
    pooled = torch.cat([data.train, data.valid])
    pooled_labels = torch.cat([data.labels["train"], data.labels["valid"]])
    everything = data.with_valid_size(0)
    assert everything.valid.shape[0] == 0 and torch.equal(everything.train, pooled)
    assert torch.equal(everything.labels["train"], pooled_labels)
    fifty = data.with_valid_size(50)
    assert torch.equal(fifty.valid, data.valid[-50:]) and fifty.train.shape[0] == 1447
    assert torch.equal(fifty.labels["valid"], data.labels["valid"][-50:])
    assert torch.equal(fifty.test, data.test)
    same = data.with_valid_size(data.valid.shape[0])
    assert torch.equal(same.train, data.train) and torch.equal(same.valid, data.valid)
    with pytest.raises(DataError, match=r"--valid-size 1496: must be in \[0, 1495\]"):
        data.with_valid_size(1496)


def test_valid_size_zero_trains_on_everything_and_keeps_the_last_epoch(tmp_path, capsys):
    run_dir = tmp_path / "all"
    config = _config(epochs=2, valid_size=0, out=str(run_dir))
    config.train_limit = None
    result = train(config, progress=False)
    assert all(math.isnan(row["valid_elbo"]) for row in result.history)
    assert "no validation split" in capsys.readouterr().err
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["epoch"] == 2
    assert cli.main(["evaluate", str(run_dir), "--split", "valid"]) == 2
    assert "the run's valid split is empty" in capsys.readouterr().err


def test_the_iwae_schedule_sets_the_epochs_unless_given(monkeypatch, tmp_path):
    seen = []

    def fake_train(config, **kwargs):
        seen.append(config)
        raise SystemExit(0)

    # pyro_vae.train is also the name of the function the package exports: patch the module's
    monkeypatch.setattr(sys.modules["pyro_vae.training.train"], "train", fake_train)
    for extra, epochs in (([], IWAE_EPOCHS), (["--epochs", "7"], 7)):
        with pytest.raises(SystemExit):
            cli.main(["train", "--lr-schedule", "iwae", "--out", str(tmp_path / "r"), *extra])
        assert seen[-1].epochs == epochs and seen[-1].lr_schedule == "iwae"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--adam-betas", "0.9", "1.5"], "--adam-betas [0.9, 1.5]: two numbers in [0, 1)"),
        (["--lr-min", "0.5"], "--lr-min 0.5: must be in [0, --lr]"),
        (["--momentum", "0.9"], "--momentum is for --optimizer sgd"),
        (["--clip-norm", "0"], "--clip-norm 0.0: must be a number > 0"),
        (["--lr-gamma", "2"], "--lr-gamma 2.0: must be in (0, 1]"),
        (["--valid-size", "-1"], "--valid-size -1: must be a number of rows >= 0"),
        (["--optimizer", "adagrad"], "invalid choice: 'adagrad'"),
        (["--lr-schedule", "linear"], "invalid choice: 'linear'"),
    ],
)
def test_bad_optimizer_settings_are_clear_messages(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        status = cli.main(["train", "--out", str(tmp_path / "r"), *flags])
        raise SystemExit(status)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_every_schedule_and_optimizer_has_a_description():
    assert all(SCHEDULES.values()) and all(spec.description for spec in OPTIMIZERS.values())
    with pytest.raises(ConfigError, match="--lr-schedule 'linear' is unknown"):
        _config(lr_schedule="linear")


def _params_with_grads(*shapes):
    """Param-store tensors named p0, p1, ... with fixed gradients."""
    store = pyro.get_param_store()
    tensors = []
    for index, shape in enumerate(shapes):
        pyro.param(f"p{index}", torch.full(shape, 1.0 + index))
        tensor = store._params[f"p{index}"]
        tensor.grad = torch.linspace(-1, 1, tensor.numel()).reshape(shape)
        tensors.append(tensor)
    return tensors


def test_one_fused_optimizer_steps_like_pyros_per_parameter_adam():
    """The run's optimizer holds every tensor in one torch optimizer (fused on the CPU) and
    gives the numbers of Pyro's own PyroOptim, which keeps one Adam per tensor."""
    tensors = _params_with_grads((3,), (2, 2))
    optimizer = make_optimizer(_config(lr=0.1), lambda name: 0.1)
    pyros = pyro.optim.Adam({"lr": 0.1})
    twins = [t.detach().clone().requires_grad_() for t in tensors]
    grads = [t.grad.clone() for t in tensors]
    for step in range(3):
        for tensor, twin, grad in zip(tensors, twins, grads):
            tensor.grad, twin.grad = grad * (step + 1), grad * (step + 1)
        optimizer(set(tensors))
        pyros(twins)
    assert optimizer.fused and len(optimizer.optimizer.param_groups) == 1
    assert optimizer.names == [["p0", "p1"]]
    for tensor, twin in zip(tensors, twins):
        torch.testing.assert_close(tensor.detach(), twin.detach(), rtol=1e-6, atol=1e-7)


def test_a_step_moves_only_the_parameters_it_is_given():
    """The classifier's SVI steps a subset: the others must not move, although their
    gradients from the last step (Pyro zeroes, not clears, them) are still there."""
    tensors = _params_with_grads((3,), (4,))
    optimizer = make_optimizer(_config(lr=0.1), lambda name: 0.1)
    optimizer(tensors)
    before = [t.detach().clone() for t in tensors]
    tensors[1].grad = torch.zeros(4)
    optimizer([tensors[0]])
    assert torch.equal(tensors[1].detach(), before[1])  # Adam's momentum would move it
    assert not torch.equal(tensors[0].detach(), before[0])
    assert torch.equal(tensors[1].grad, torch.zeros(4))  # held back, then given back


def test_rates_group_the_tensors_and_the_schedule_scales_each_group():
    from pyro_vae.infer.optimizers import EpochScheduler

    config = _config(lr=0.01, lr_schedule="step", lr_gamma=0.5, lr_step_size=1)
    tensors = _params_with_grads((2,), (2,), (2,))
    optimizer = make_optimizer(config, lambda name: 0.1 if name == "p1" else 0.01)
    scheduler = EpochScheduler(optimizer, config)
    scheduler.step(2)  # epoch 2: factor 1/2
    optimizer(tensors)
    assert optimizer.names == [["p0", "p2"], ["p1"]]
    assert scheduler.get_last_lr() == [0.005, 0.05]
    assert [g["initial_lr"] for g in optimizer.optimizer.param_groups] == [0.01, 0.1]
    assert scheduler.state_dict() == {"schedule": "step", "last_epoch": 2}


def test_saved_state_binds_by_name_and_continues_exactly():
    """get_state names each tensor; set_state binds by name at the next step (the tensors
    may be new objects), so the continued steps equal the uninterrupted ones, bit for bit."""
    tensors = _params_with_grads((3,), (2,))
    config = _config(lr=0.1)
    straight = make_optimizer(config, lambda name: 0.1)
    straight(tensors)
    saved = copy.deepcopy(straight.get_state())  # a state_dict holds the live tensors
    values = {f"p{i}": t.detach().clone() for i, t in enumerate(tensors)}
    straight(tensors)
    expected = [t.detach().clone() for t in tensors]
    pyro.clear_param_store()
    resumed = make_optimizer(config, lambda name: 0.1)
    resumed.set_state(saved)
    assert resumed.get_state() is saved  # nothing bound before the next step
    store = pyro.get_param_store()
    fresh = []
    for name, value in values.items():
        pyro.param(name, value.clone())
        fresh.append(store._params[name])
        fresh[-1].grad = torch.linspace(-1, 1, value.numel())
    resumed(fresh)
    for got, want in zip(fresh, expected):
        assert torch.equal(got.detach(), want)


def test_an_older_checkpoints_per_parameter_state_still_loads():
    """Before one optimizer held all tensors, checkpoints held PyroOptim.get_state()."""
    tensors = _params_with_grads((3,), (2,))
    old = pyro.optim.Adam({"lr": 0.1})
    old(tensors)
    state = old.get_state()
    old(tensors)
    expected = [t.detach().clone() for t in tensors]
    pyro.clear_param_store()  # again from the start: one step of Pyro's, then one of ours
    tensors = _params_with_grads((3,), (2,))
    first = pyro.optim.Adam({"lr": 0.1})
    first(tensors)
    new = make_optimizer(_config(lr=0.1), lambda name: 0.1)
    new.set_state(first.get_state())
    new(tensors)
    for got, want in zip(tensors, expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-6, atol=1e-7)
    assert state.keys() == {"p0", "p1"}
    with pytest.raises(Exception, match="--optimizer sgd"):
        make_optimizer(_config(optimizer="sgd"), lambda name: 0.1).set_state(new.get_state())
