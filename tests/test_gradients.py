"""Gradient estimators against the exact ELBO gradient of a linear-Gaussian VAE; baselines;
training by the score function with baselines (config, checkpoints, resume, evaluation)."""

import importlib.util
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.distributions import MultivariateNormal, kl_divergence

from pyro_vae.analysis.evaluate import evaluate
from pyro_vae.analysis.gradvar import (
    gradient_draws,
    gradient_statistics,
    pair_parameters,
    warm_up_baseline,
)
from pyro_vae.guides import LinearGaussianEncoder
from pyro_vae.infer.gradients import (
    AVG_BASELINE_PREFIX,
    BASELINES,
    GRADIENT_ESTIMATORS,
    NeuralBaseline,
    NonReparameterized,
    forget_stale_optimizers,
    neural_baselines,
    non_reparameterized_sites,
    score_function,
    with_baseline,
)
from pyro_vae.models import LinearGaussianDecoder
from pyro_vae.pairs import VAE
from pyro_vae.runs.config import ConfigError, TrainConfig, dumps_toml
from pyro_vae.training.train import load_checkpoint, read_config, train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# Draws of the unbiasedness test: NUM_CALLS gradient estimates, each the mean of NUM_PARTICLES
# vectorized particles (Pyro's TraceGraph_ELBO costs milliseconds per call, whatever K is).
NUM_CALLS = 100
NUM_PARTICLES = 100
WARM_UP_CALLS = 60
#: Each coordinate of the mean of the draws must lie within Z standard errors of the exact
#: gradient, plus ABS_SLACK (float64 round-off); 20 coordinates x 5 estimators at 4.5 sigma
#: give a false alarm with probability below 1e-3 (and the draws are seeded).
Z = 4.5
ABS_SLACK = 1e-8
#: The estimators of the ELBO's gradient (the K-particle rows estimate the IWAE bound's).
ELBO_ESTIMATORS = [name for name, spec in GRADIENT_ESTIMATORS.items() if not spec.multi_sample]


def linear_gaussian_problem():
    """A tiny linear-Gaussian VAE (x_dim 3, z_dim 2) away from its optimum, and 4 points."""
    torch.manual_seed(1)
    pair = VAE(LinearGaussianDecoder(3, 2), LinearGaussianEncoder(3, 2)).double()
    with torch.no_grad():
        pair.encoder.log_scale.copy_(torch.tensor([-0.3, 0.2]))
        pair.decoder.log_noise_scale.fill_(-0.2)
    x = 2.0 * torch.randn(4, 3, dtype=torch.float64)
    return pair, x


def exact_loss(pair: VAE, x: torch.Tensor) -> torch.Tensor:
    """-sum_i ELBO(x_i), ELBO(x) = log p(x) - KL(q(z|x) || p(z|x)): both Gaussian, exact."""
    q = pair.encoder(x)
    q_full = MultivariateNormal(q.base_dist.loc, scale_tril=torch.diag_embed(q.base_dist.scale))
    kl = kl_divergence(q_full, pair.decoder.exact_posterior(x))
    return -(pair.decoder.exact_log_marginal(x) - kl).sum()


def estimator_draws(name: str, pair: VAE, x: torch.Tensor, params, *, num_calls=NUM_CALLS,
                    num_particles=NUM_PARTICLES, seed=0) -> torch.Tensor:  # fmt: skip
    """Draws of estimator ``name``, its baseline warmed up first as gradvar does."""
    spec = GRADIENT_ESTIMATORS[name]
    pyro.set_rng_seed(seed)
    module = spec.make_baselines(pair.guide, x)
    guide = spec.make_guide(pair.guide, module=module)
    elbo = spec.make_elbo(max_plate_nesting=1, num_particles=num_particles)
    if spec.baseline != "none":
        warm_up_baseline(pair.model, guide, x, elbo, WARM_UP_CALLS, module=module, lr=0.05)
    draws = gradient_draws(pair.model, guide, x, elbo, params, num_calls)
    for name in list(pyro.get_param_store().keys()):
        if name.startswith(AVG_BASELINE_PREFIX):
            del pyro.get_param_store()[name]
    return draws


@pytest.fixture(scope="module")
def problem():
    """The problem, its exact gradient and the draws of every estimator (computed once)."""
    return _problem()


def _problem():
    pyro.clear_param_store()
    pair, x = linear_gaussian_problem()
    found = pair_parameters(pair.model, pair.guide, x)
    params = [entry["param"] for entry in found.values()]
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(exact_loss(pair, x), params)])
    is_encoder = torch.cat(
        [torch.full((e["param"].numel(),), e["part"] == "encoder") for e in found.values()]
    )
    draws = {name: estimator_draws(name, pair, x, params) for name in ELBO_ESTIMATORS}
    # score_function by hand on Trace_ELBO: plain REINFORCE, no Rao-Blackwellization
    pyro.set_rng_seed(1)
    elbo = pyro.infer.Trace_ELBO(
        num_particles=NUM_PARTICLES, vectorize_particles=True, max_plate_nesting=1
    )
    draws["Trace_ELBO+score_function"] = gradient_draws(
        pair.model, score_function(pair.guide), x, elbo, params, NUM_CALLS
    )
    pyro.clear_param_store()
    return {"pair": pair, "x": x, "exact": exact, "draws": draws, "is_encoder": is_encoder}


def test_the_exact_gradient_is_that_of_the_closed_form_elbo(problem):
    """Sanity of the ground truth: the closed-form ELBO equals a 200k-sample average of
    log p(x, z) - log q(z|x) within 4.5 standard errors."""
    pair, x = problem["pair"], problem["x"]
    with torch.no_grad():
        q = pair.encoder(x)
        z = q.sample((200_000,))
        prior = dist.Normal(torch.zeros_like(z), 1.0).to_event(1)
        likelihood = dist.Normal(pair.decoder(z), pair.decoder.noise_scale).to_event(1)
        weights = (prior.log_prob(z) + likelihood.log_prob(x) - q.log_prob(z)).sum(-1)
        exact = -exact_loss(pair, x)
    stderr = weights.std() / weights.shape[0] ** 0.5
    assert abs(weights.mean() - exact) < Z * stderr


@pytest.mark.parametrize("name", [*ELBO_ESTIMATORS, "Trace_ELBO+score_function"])
def test_every_estimator_is_unbiased_for_the_exact_gradient(problem, name):
    """The mean of NUM_CALLS x NUM_PARTICLES draws matches autograd of the closed-form loss
    -sum_i [log p(x_i) - KL(q(z|x_i) || p(z|x_i))] in every coordinate (encoder and decoder),
    within Z = 4.5 standard errors of the mean plus ABS_SLACK."""
    draws, exact = problem["draws"][name], problem["exact"]
    mean = draws.mean(0)
    stderr = draws.std(0) / draws.shape[0] ** 0.5
    error = (mean - exact).abs()
    assert (error <= Z * stderr + ABS_SLACK).all(), (name, error / stderr)
    # and the test has power: the exact gradient is far from zero in units of stderr
    assert (exact.abs() / (stderr + 1e-12)).max() > 20


def test_baselines_lower_the_variance_of_the_encoder_gradient(problem):
    """On the encoder's parameters: Var(score+avg) < Var(score), Var(score+nn) < Var(score),
    and the reparameterized gradient is the least noisy."""
    encoder = problem["is_encoder"]
    variance = {
        name: gradient_statistics(draws[:, encoder])["variance"]
        for name, draws in problem["draws"].items()
    }
    assert variance["score+avg"] < 0.5 * variance["score"]
    assert variance["score+nn"] < 0.5 * variance["score"]
    assert variance["reparam"] < min(variance["score+avg"], variance["score+nn"])


def test_decoder_gradient_is_identical_in_distribution_under_score_function(problem):
    """The decoder's gradient never goes through the sample, so forcing the score function
    leaves its variance unchanged (same draws of z in law): ratio within 30%."""
    decoder = ~problem["is_encoder"]
    variance = {
        name: gradient_statistics(problem["draws"][name][:, decoder])["variance"]
        for name in ("reparam", "score")
    }
    assert 0.7 < variance["score"] / variance["reparam"] < 1.3


# ------------------------------------------------------------------------------------------
# NonReparameterized, score_function, with_baseline


def test_non_reparameterized_delegates_everything_but_rsample():
    base = dist.Normal(torch.zeros(4, 2), torch.ones(4, 2)).to_event(1)
    wrapped = NonReparameterized(base)
    assert not wrapped.has_rsample and base.has_rsample
    assert wrapped.batch_shape == (4,) and wrapped.event_shape == (2,)
    assert repr(wrapped.support) == repr(base.support)
    value = wrapped.sample()
    assert value.shape == (4, 2) and not value.requires_grad
    assert torch.equal(wrapped.log_prob(value), base.log_prob(value))
    assert torch.equal(wrapped.mean, base.mean) and torch.equal(wrapped.variance, base.variance)
    with pytest.raises(NotImplementedError, match="score-function"):
        wrapped.rsample()
    expanded = wrapped.expand((3, 4))
    assert isinstance(expanded, NonReparameterized) and expanded.batch_shape == (3, 4)
    masked = wrapped.mask(torch.tensor([True, False, True, True]))
    assert torch.equal(masked.log_prob(value)[1], torch.tensor(0.0))
    independent = NonReparameterized(dist.Normal(torch.zeros(4, 2), 1.0)).to_event(1)
    assert independent.event_shape == (2,) and not independent.has_rsample
    loc = torch.zeros(2, requires_grad=True)
    parts = NonReparameterized(dist.Normal(loc, 1.0)).score_parts(torch.ones(2))
    assert parts.entropy_term == 0 and torch.equal(parts.score_function, parts.log_prob)


def test_score_function_wraps_latent_sites_only():
    def program(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            c = pyro.sample("c", dist.Bernoulli(x.new_full((x.shape[0],), 0.3)))
            pyro.sample("x", dist.Normal(z.sum(-1) + c, 1.0), obs=x[:, 0])

    x = torch.randn(5, 3)
    trace = poutine.trace(score_function(program)).get_trace(x)
    assert isinstance(trace.nodes["z"]["fn"], NonReparameterized)
    assert not trace.nodes["z"]["fn"].has_rsample
    assert isinstance(trace.nodes["c"]["fn"], dist.Bernoulli)  # already non-reparameterized
    assert isinstance(trace.nodes["x"]["fn"], dist.Normal)  # observed: untouched
    assert not isinstance(poutine.trace(program).get_trace(x).nodes["z"]["fn"], NonReparameterized)


def tutorial_vae():
    spec = importlib.util.spec_from_file_location("_tutorial_vae", EXAMPLES / "tutorial_vae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VAE(z_dim=2, hidden_dim=8)


def test_score_function_and_a_neural_baseline_on_the_pyro_tutorial_vae():
    """A guide written for Pyro's tutorial, unchanged: forced score function, a neural
    baseline, one TraceGraph_ELBO step gives encoder and baseline gradients."""
    vae = tutorial_vae()
    x = torch.bernoulli(torch.full((6, 784), 0.3))
    module = NeuralBaseline(784, (4,))
    guide = with_baseline(score_function(vae.guide), "nn", module=module)
    trace = poutine.trace(guide).get_trace(x)
    site = trace.nodes["latent"]
    assert not site["fn"].has_rsample
    assert site["infer"]["baseline"]["nn_baseline"] is module
    assert site["infer"]["baseline"]["nn_baseline_input"] is x
    assert "baseline$$$net.0.weight" in pyro.get_param_store()
    pyro.infer.TraceGraph_ELBO().loss_and_grads(vae.model, guide, x)
    assert vae.encoder.fc1.weight.grad.abs().sum() > 0
    assert module.net[0].weight.grad.abs().sum() > 0


def test_with_baseline_sets_pyro_options_per_kind():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))

    x = torch.randn(3, 5)
    assert with_baseline(guide, "none") is guide
    site = poutine.trace(with_baseline(guide, "avg", beta=0.8)).get_trace(x).nodes["z"]
    assert site["infer"]["baseline"] == {"use_decaying_avg_baseline": True, "baseline_beta": 0.8}
    assert set(BASELINES) == {"none", "avg", "nn"}
    with pytest.raises(ValueError, match="--baseline 'mean' is unknown; choose from none, avg"):
        with_baseline(guide, "mean")
    with pytest.raises(ValueError, match="needs module=neural_baselines"):
        with_baseline(guide, "nn")
    with pytest.raises(ValueError, match="--baseline-beta"):
        with_baseline(guide, "avg", beta=1.0)


def test_neural_baselines_one_per_non_reparameterized_site():
    """Each site's learning signal differs, so each gets its own regression; a site without
    a baseline of its own (here the reparameterized one) gets no neural-baseline options."""

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", NonReparameterized(dist.Normal(x[:, :2], 1.0).to_event(1)))
            pyro.sample("z2", dist.Normal(z1, 1.0).to_event(1))
            pyro.sample("layer.3", dist.Bernoulli(logits=z1).to_event(1))

    x = torch.randn(3, 5)
    sites = non_reparameterized_sites(guide, x)
    assert sites == ["z1", "layer.3"]
    baselines = neural_baselines(5, sites, (4,))
    assert list(baselines) == ["z1", "layer_3"]
    trace = poutine.trace(with_baseline(guide, "nn", module=baselines)).get_trace(x)
    assert trace.nodes["z1"]["infer"]["baseline"]["nn_baseline"] is baselines["z1"]
    assert trace.nodes["layer.3"]["infer"]["baseline"]["nn_baseline"] is baselines["layer_3"]
    assert "baseline" not in trace.nodes["z2"]["infer"]
    assert "baseline$$$layer_3.net.0.weight" in pyro.get_param_store()


def test_neural_baseline_gives_one_value_per_point():
    module = NeuralBaseline(6, (5, 4))
    assert module(torch.randn(7, 6)).shape == (7,)
    assert [m.out_features for m in module.net if isinstance(m, torch.nn.Linear)] == [5, 4, 1]
    with pytest.raises(ValueError, match="built for data points of 6 values"):
        module(torch.randn(7, 5))


def test_avg_baseline_does_not_grow_the_optimizer():
    """Pyro replaces the decaying average's tensor every step; forget_stale_optimizers
    keeps one torch optimizer per live parameter."""
    pair, x = linear_gaussian_problem()
    spec = GRADIENT_ESTIMATORS["score+avg"]
    optimizer = pyro.optim.Adam({"lr": 1e-3})
    svi = pyro.infer.SVI(pair.model, spec.make_guide(pair.guide), optimizer, spec.make_elbo())
    for _ in range(5):
        svi.step(x)
        forget_stale_optimizers(optimizer)
    live = dict(pyro.get_param_store().named_parameters())
    assert any(name.startswith(AVG_BASELINE_PREFIX) for name in live)
    assert len(optimizer.optim_objs) <= len(live)
    assert {id(p) for p in optimizer.optim_objs} <= {id(p) for p in live.values()}


# ------------------------------------------------------------------------------------------
# Configuration


def test_config_errors_name_the_flag():
    cases = [
        (dict(baseline="avg"), "--baseline avg needs --objective tracegraph"),
        (dict(baseline="nn", objective="iwae"), "RenyiELBO ignore"),
        (dict(baseline="mean", objective="tracegraph"), "--baseline 'mean' is unknown"),
        (dict(baseline="avg", objective="tracegraph", baseline_beta=1.0), "--baseline-beta"),
        (dict(baseline="nn", objective="tracegraph", baseline_lr=-1.0), "--baseline-lr"),
        (dict(baseline="nn", objective="tracegraph", baseline_hidden=[0]), "--baseline-hidden"),
        (dict(score_function=True, objective="meanfield"), "--score-function"),
    ]
    for values, message in cases:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**values).validate()
    TrainConfig(objective="tracegraph", baseline="nn", baseline_hidden=[200, 100]).validate()


def test_old_config_without_the_new_keys_loads_with_defaults(tmp_path):
    (tmp_path / "config.toml").write_text(dumps_toml({"dataset": "digits", "epochs": 3}))
    config = read_config(tmp_path)
    assert (config.baseline, config.baseline_beta, config.baseline_lr) == ("none", 0.9, None)
    assert config.baseline_hidden == [100] and config.score_function is False


# ------------------------------------------------------------------------------------------
# Training


def small_config(out, **overrides) -> TrainConfig:
    values = dict(
        dataset="digits", pair="mlp", pair_kwargs={"hidden": [16], "z_dim": 2},
        epochs=2, batch_size=50, train_limit=200, device="cpu", out=str(out),
        objective="tracegraph", score_function=True, baseline_hidden=[8],
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def baseline_params(run_dir, name="checkpoint.pt"):
    params = load_checkpoint(run_dir / name)["params"]["params"]
    return {k: v for k, v in params.items() if k.startswith(("baseline$$$", AVG_BASELINE_PREFIX))}


@pytest.mark.parametrize("baseline", ["avg", "nn"])
def test_score_function_training_with_a_baseline_resumes_exactly(tmp_path, baseline):
    whole = train(small_config(tmp_path / "whole", baseline=baseline))
    losses = [row["train_loss"] for row in whole.history]
    assert all(20 < loss < 60 for loss in losses)  # ~ 64 pixels x log 2 nats at the start
    config = read_config(whole.run_dir)
    assert config.baseline == baseline and config.score_function
    saved = baseline_params(whole.run_dir)
    if baseline == "avg":
        assert config.drop_last  # set for the decaying average, logged
        assert list(saved) == [AVG_BASELINE_PREFIX + "z"]
        assert saved[AVG_BASELINE_PREFIX + "z"].shape == (50,)  # one value per batch position
    else:
        assert config.baseline_lr == pytest.approx(10 * config.lr)
        # one neural baseline per non-reparameterized site (here the one site z)
        assert {"baseline$$$z.net.0.weight", "baseline$$$z.net.2.bias"} <= set(saved)
        assert saved["baseline$$$z.net.0.weight"].shape == (8, 64)
        optimizer = load_checkpoint(whole.run_dir / "checkpoint.pt")["optimizer"]
        groups = optimizer["state_dict"]["param_groups"]
        lr = {name: group["lr"] for names, group in zip(optimizer["names"], groups)
              for name in names}  # fmt: skip
        assert lr["baseline$$$z.net.0.weight"] == pytest.approx(10 * config.lr)
        assert lr["encoder$$$trunk.0.weight"] == config.lr
    train(small_config(tmp_path / "parts", baseline=baseline, epochs=1))
    parts = train(small_config(tmp_path / "parts", baseline=baseline), resume=True)
    assert [row["train_loss"] for row in parts.history] == losses
    a, b = baseline_params(whole.run_dir), baseline_params(parts.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a = load_checkpoint(whole.run_dir / "checkpoint.pt")["module"]
    b = load_checkpoint(parts.run_dir / "checkpoint.pt")["module"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_with_a_neural_baseline_evaluates_and_refuses_a_changed_baseline(tmp_path):
    run = train(small_config(tmp_path, baseline="nn", epochs=1))
    summary = evaluate(run.run_dir, num_samples=5, limit=20, split="valid", save=False)
    assert summary["elbo"] <= summary["log_px"] + 1e-4
    assert -60 < summary["elbo"] < -20
    with pytest.raises(ConfigError, match="baseline"):
        train(small_config(tmp_path, baseline="avg", epochs=2), resume=True)
    with pytest.raises(ConfigError, match="baseline_hidden"):
        train(small_config(tmp_path, baseline="nn", baseline_hidden=[4], epochs=2), resume=True)


def test_a_baseline_on_a_reparameterized_guide_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="add --score-function"):
        train(small_config(tmp_path, baseline="avg", score_function=False, epochs=1))


def test_score_function_trains_with_trace_elbo_and_num_particles(tmp_path):
    """--score-function works with Trace_ELBO too, and a neural baseline with vectorized
    particles gives one baseline value per particle and point."""
    run = train(small_config(tmp_path / "a", objective="elbo", baseline="none", epochs=1))
    assert 20 < run.history[0]["train_loss"] < 60
    run = train(small_config(tmp_path / "b", baseline="nn", num_particles=3, epochs=1))
    assert 20 < run.history[0]["train_loss"] < 60
