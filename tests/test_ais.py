"""Annealed importance sampling and BDMC (`pyro_vae.infer.ais`, `pyro_vae.analysis.bdmc`)
against the exact log p(x) of the linear-Gaussian VAE, and their command line.

The guide is the best mean-field Gaussian, not the exact posterior (with the exact posterior
every AIS weight would be p(x) at any number of steps, and nothing would be tested). Tiny
models run with one torch thread.
"""

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import TrainConfig, bdmc, evaluate, train
from pyro_vae.cli import main
from pyro_vae.guides import LinearGaussianEncoder
from pyro_vae.infer.ais import (
    AIS_STEPS,
    ais_log_px,
    bdmc_log_px,
    density_evaluations,
    make_runner,
    sigmoid_schedule,
    simulate,
)
from pyro_vae.infer.estimators import evaluation_view
from pyro_vae.models import LinearGaussianDecoder
from pyro_vae.pairs import VAE, PairError, check_pair, evaluation_mode

X_DIM, Z_DIM, NOISE = 10, 3, 0.5


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear_gaussian(num_points: int = 16):
    """A linear-Gaussian pair (posterior narrower than the prior, correlated), its guide the
    best diagonal Gaussian, points drawn from it, and their exact log p(x)."""
    torch.manual_seed(0)
    decoder = LinearGaussianDecoder(X_DIM, Z_DIM, noise_scale=NOISE, learn_noise=False)
    encoder = LinearGaussianEncoder(X_DIM, Z_DIM, "diagonal")
    encoder.set_to_exact_posterior(decoder)
    with torch.no_grad():
        x = decoder(torch.randn(num_points, Z_DIM)) + NOISE * torch.randn(num_points, X_DIM)
    pair = VAE(decoder, encoder)
    return pair, x, decoder.exact_log_marginal(x).detach()


def _ais(pair, x, **options):
    view = evaluation_view(pair, check_pair(pair, x), x[:2])
    torch.manual_seed(1)
    with evaluation_mode(pair), pyro.validation_enabled(False):
        return ais_log_px(view, x, runner=make_runner("traced"), **options)


def test_the_sigmoid_schedule_runs_from_0_to_1_and_counts_its_compute():
    betas = sigmoid_schedule(100)
    assert len(betas) == 101 and betas[0] == 0.0 and betas[-1] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(betas, betas[1:], strict=False))
    assert sigmoid_schedule(1) == [0.0, 1.0]
    # 16 chains and a pilot of 4, each: 1 start + 99 transitions x 10 leapfrog steps
    assert density_evaluations(100, 10, 16) == 20 * (1 + 99 * 10)
    assert density_evaluations(100, 10, 16, adapt=False) == 16 * (1 + 99 * 10)


def test_ais_converges_to_the_exact_log_px_as_the_steps_grow():
    pair, x, exact = linear_gaussian()
    few = _ais(pair, x, steps=5)
    many = _ais(pair, x, steps=AIS_STEPS)  # the defaults: 500 steps, 16 chains, 10 leapfrog
    few_error = (few["log_px"] - exact).abs()
    many_error = (many["log_px"] - exact).abs()
    # measured: every point within 0.021 nats at the defaults, mean 0.009; 0.08 at 5 steps
    assert many_error.max() < 0.05
    assert few_error.mean() > 3 * many_error.mean()
    # the stated per-point standard error is the size of the error (delta method)
    assert many_error.mean() < 3 * many["log_px_stderr"].mean()
    assert (many["acceptance"] > 0.4).all() and (many["acceptance"] < 0.9).all()


def test_ais_traced_and_eager_give_the_same_numbers():
    pair, x, _ = linear_gaussian(num_points=4)
    view = evaluation_view(pair, check_pair(pair, x), x[:2])
    outs = []
    for graph in ("eager", "traced"):
        torch.manual_seed(3)
        with evaluation_mode(pair), pyro.validation_enabled(False):
            outs.append(ais_log_px(view, x, steps=4, chains=3, leapfrog_steps=2,
                                   runner=make_runner(graph)))  # fmt: skip
    assert torch.allclose(outs[0]["log_weights"], outs[1]["log_weights"], atol=1e-5)


def test_bdmc_bounds_bracket_the_exact_log_px():
    pair, x, _ = linear_gaussian(num_points=24)
    info = check_pair(pair, x)
    view = evaluation_view(pair, info, x[:2])
    torch.manual_seed(2)
    with evaluation_mode(pair), pyro.validation_enabled(False):
        x_sim, z = simulate(view.prior_model(), x, info.observed_sites[0])
        out = bdmc_log_px(view, x_sim, z, steps=50, chains=8, proposal="prior",
                          runner=make_runner("traced"))  # fmt: skip
    exact = pair.decoder.exact_log_marginal(x_sim).detach()
    n = x.shape[0]
    # the bracket holds in expectation: for the mean over points, up to 3 standard errors
    lower_se = out["lower_stderr"].square().sum().sqrt() / n
    upper_se = out["upper_stderr"].square().sum().sqrt() / n
    assert out["lower"].mean() <= exact.mean() + 3 * lower_se
    assert out["upper"].mean() >= exact.mean() - 3 * upper_se
    assert torch.allclose(out["gap"], out["upper"] - out["lower"])
    # and per point, with 4 standard errors for the noise of each estimate
    assert (out["lower"] <= exact + 4 * out["lower_stderr"] + 1e-3).all()
    assert (out["upper"] >= exact - 4 * out["upper_stderr"] - 1e-3).all()


class MixtureVAE(nn.Module):
    """A Gaussian mixture with a discrete component per point, q(c|x) an encoder."""

    def __init__(self, x_dim: int = 4, components: int = 3):
        super().__init__()
        self.locs = nn.Parameter(torch.randn(components, x_dim))
        self.encoder = nn.Linear(x_dim, components)
        self.components = components

    def model(self, x):
        pyro.module("mixture", self)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("component", dist.Categorical(logits=x.new_zeros(self.components)))
            pyro.sample("x", dist.Normal(self.locs[c], 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("mixture", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("component", dist.Categorical(logits=self.encoder(x)))


def test_ais_refuses_a_discrete_latent_by_name():
    x = torch.randn(8, 4)
    with pytest.raises(PairError, match="AIS needs continuous latents: site 'component'"):
        evaluate(MixtureVAE(), x, estimator="ais", ais_steps=2)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ais") / "run"
    config = TrainConfig(
        dataset="digits",
        pair="mlp",
        pair_kwargs={"hidden": [16], "z_dim": 3},
        epochs=1,
        batch_size=50,
        train_limit=200,
        device="cpu",
        out=str(out),
    )
    return train(config, progress=False).run_dir


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["evaluate", "--estimator", "ais", "--ais-steps", "0"], "--ais-steps"),
        (["evaluate", "--estimator", "ais", "--ais-chains", "0"], "--ais-chains"),
        (["evaluate", "--estimator", "ais", "--leapfrog-steps", "-1"], "--leapfrog-steps"),
        (["evaluate", "--estimator", "ais", "--step-size", "0"], "--step-size"),
        (["evaluate", "--estimator", "ais", "--step-size", "nan"], "--step-size"),
        (["bdmc", "--num-points", "0"], "--num-points"),
        (["bdmc", "--step-size", "inf"], "--step-size"),
    ],
)
def test_bad_ais_flags_are_one_message_naming_the_flag(digits_run, capsys, argv, flag):
    assert main([argv[0], str(digits_run), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_evaluate_ais_and_bdmc_end_to_end_on_a_digits_run(digits_run, capsys):
    assert main(["evaluate", str(digits_run), "--estimator", "ais", "--ais-steps", "20",
                 "--ais-chains", "4", "--limit", "10", "--json"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["estimator"] == "ais" and printed["num_points"] == 10
    assert printed["ais"]["density_evaluations_per_point"] == density_evaluations(20, 10, 4)
    saved = json.loads((digits_run / "evaluation_test_ais.json").read_text())
    assert saved["log_px"] == pytest.approx(printed["log_px"])
    per_point = np.load(digits_run / "evaluation_test_ais.npz")
    assert per_point["log_px"].shape == per_point["log_px_stderr"].shape == (10,)
    assert np.isfinite(per_point["log_px_stderr"]).all()
    # AIS is not below the IS estimate with as many density evaluations, beyond noise
    is_estimate = evaluate(digits_run, num_samples=density_evaluations(20, 10, 4), limit=10,
                           save=False)  # fmt: skip
    assert printed["log_px"] > is_estimate["log_px"] - 0.5

    assert main(["bdmc", str(digits_run), "--num-points", "6", "--ais-steps", "10",
                 "--ais-chains", "2", "--leapfrog-steps", "5", "--json"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert {"bdmc_lower", "bdmc_upper", "bdmc_gap"} <= set(printed)
    gap = printed["bdmc_upper"] - printed["bdmc_lower"]
    assert printed["bdmc_gap"] == pytest.approx(gap, abs=1e-4)
    assert math.isfinite(printed["bdmc_gap"])
    assert (digits_run / "bdmc.json").is_file() and (digits_run / "bdmc.png").is_file()


def test_bdmc_of_a_pair_in_memory_returns_its_simulated_points():
    pair, x, _ = linear_gaussian(num_points=4)
    result = bdmc(pair, x, num_points=6, ais_steps=3, ais_chains=2, leapfrog_steps=2)
    assert result.x.shape == (6, X_DIM) and result.per_point["lower"].shape == (6,)
    assert "BDMC on 6 points" in result.summary()


def test_evaluate_ais_compiled_gives_the_numbers_of_the_traced_graph(digits_run, capsys):
    """`evaluate --estimator ais --compile` runs the densities under torch.compile: the same
    seeded chains, the same estimates up to float rounding."""
    argv = ["evaluate", str(digits_run), "--estimator", "ais", "--ais-steps", "3",
            "--ais-chains", "2", "--leapfrog-steps", "2", "--limit", "4", "--batch-size", "2",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    traced = json.loads(capsys.readouterr().out)
    traced_points = np.load(digits_run / "evaluation_test_ais.npz")["log_px"]
    assert main([*argv, "--compile"]) == 0
    compiled = json.loads(capsys.readouterr().out)
    compiled_points = np.load(digits_run / "evaluation_test_ais.npz")["log_px"]
    assert compiled["ais"]["graph"]["compiled"] and not traced["ais"]["graph"]["compiled"]
    # one graph per shape, shared by the batches: the pilot's (1 chain) and the chains' (2)
    assert traced["ais"]["graph"]["graphs"] == compiled["ais"]["graph"]["graphs"] == 2
    assert compiled["ais"]["graph"]["fallback"] is None
    assert compiled["log_px"] == pytest.approx(traced["log_px"], abs=1e-4)
    np.testing.assert_allclose(compiled_points, traced_points, atol=1e-4)
