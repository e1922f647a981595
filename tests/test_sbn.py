"""Sigmoid belief nets: exact log p(x) by enumeration, the straight-through Bernoulli, training.

The tiny SBN has 2^6 latent states, so log p(x) is an exact sum; importance sampling with the
guide and with the prior must converge to it, which checks the estimators on discrete latents.
"""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.analysis.convergence import convergence_study
from pyro_vae.analysis.evaluate import evaluate
from pyro_vae.distributions import StraightThroughBernoulli
from pyro_vae.infer.estimators import elbo_estimate, estimate_log_px, log_importance_weights
from pyro_vae.pairs import PAIRS, build_pair, check_pair
from pyro_vae.runs.config import TrainConfig
from pyro_vae.training.train import train

SBN_PAIRS = ("sbn", "sbn-nonlinear", "sbn-st")


def tiny_sbn(name="sbn", x_dim=10, z_dim=6, num_points=8, seed=0, **kwargs):
    """A tiny SBN pair in float64 with sharp weights, and binary data drawn from it."""
    torch.manual_seed(seed)
    pair = PAIRS[name].factory((1, 1, x_dim), z_dim=z_dim, **kwargs).double()
    with torch.no_grad():
        for parameter in pair.decoder.parameters():
            parameter.normal_(0, 1.5)
    with torch.no_grad():
        trace = pyro.poutine.trace(pyro.poutine.uncondition(pair.model)).get_trace(
            torch.zeros(num_points, x_dim, dtype=torch.float64)
        )
    return pair, trace.nodes["x"]["value"]


def brute_force_log_px(decoder, x):
    """log p(x) = log sum_z p(z) p(x|z) by a Python loop over all states, with Pyro's own
    Bernoulli log-masses (independent of `exact_log_marginal`'s matrix formula)."""
    terms = []
    for state in itertools.product((0.0, 1.0), repeat=decoder.z_dim):
        z = torch.tensor(state, dtype=x.dtype)
        log_prior = dist.Bernoulli(logits=decoder.prior_logits).log_prob(z).sum()
        log_likelihood = dist.Bernoulli(logits=decoder(z)).log_prob(x).sum(-1)
        terms.append(log_prior + log_likelihood)
    return torch.logsumexp(torch.stack(terms), dim=0)


def fit_guide_to_posterior_marginals(pair, x):
    """Set the linear guide's logits near logit p(z_j = 1 | x) (exact marginals, by
    enumeration; least squares over the points): a good mean-field proposal for IS."""
    decoder = pair.decoder
    states = torch.tensor(list(itertools.product((0.0, 1.0), repeat=decoder.z_dim)), dtype=x.dtype)
    with torch.no_grad():
        log_joint = torch.stack([
            dist.Bernoulli(logits=decoder.prior_logits).log_prob(states).sum(-1)
            + dist.Bernoulli(logits=decoder(states)).log_prob(point).sum(-1)
            for point in x
        ])  # fmt: skip
        marginals = torch.softmax(log_joint, -1) @ states
        target = torch.logit(marginals.clamp(1e-6, 1 - 1e-6))
        design = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], -1)
        # the minimum-norm solution by SVD: torch's default CPU driver (gelsy) took this full-
        # rank 8 x 11 design as rank 5 and left residuals near 2 in the logits
        solution = torch.linalg.pinv(design) @ target
        pair.encoder.net[0].weight.copy_(solution[:-1].T)
        pair.encoder.net[0].bias.copy_(solution[-1])


def test_exact_log_marginal_matches_a_brute_force_sum():
    pair, x = tiny_sbn(hidden=[5])
    with torch.no_grad():
        expected = brute_force_log_px(pair.decoder, x)
    exact = pair.decoder.exact_log_marginal(x, states_per_chunk=5)  # chunks of uneven size
    torch.testing.assert_close(exact, expected, atol=1e-10, rtol=0)
    # the sum over all x of p(x) is 1 (x_dim 4: 16 patterns)
    small, _ = tiny_sbn(x_dim=4, z_dim=3)
    patterns = torch.tensor(list(itertools.product((0.0, 1.0), repeat=4)), dtype=torch.float64)
    total = torch.logsumexp(small.decoder.exact_log_marginal(patterns), dim=0)
    assert total.item() == pytest.approx(0.0, abs=1e-12)


def test_exact_log_marginal_refuses_too_many_states():
    decoder = PAIRS["sbn"].factory((1, 1, 10), z_dim=17).decoder
    with pytest.raises(NotImplementedError, match="z_dim=17 is more than 16"):
        decoder.exact_log_marginal(torch.zeros(2, 10))


@pytest.mark.parametrize("estimator", ["is", "prior"])
def test_importance_sampling_converges_to_the_exact_log_px(estimator):
    """IS with a mean-field guide and with the prior, K = 50000, against the exact sum."""
    pair, x = tiny_sbn()
    fit_guide_to_posterior_marginals(pair, x)
    exact = pair.decoder.exact_log_marginal(x)
    pyro.set_rng_seed(1)
    out = estimate_log_px(pair, x, 50000, estimator=estimator, max_elements=2**21)
    # ESS >= 5000 (measured 6000-50000): standard error <= 0.015 nats; measured error over
    # 10 seeds at K=20000 <= 0.035 (prior), 0.02 (is)
    assert (out["ess"] > 5000).all(), out["ess"]
    torch.testing.assert_close(out["log_px"], exact, atol=0.05, rtol=0)
    # the mean log weight (the ELBO for "is") is below log p(x): measured 0.01-0.02 nats for
    # this guide, 0.5-1.5 for the prior
    assert (out["elbo"] < exact).all()


def test_straight_through_guide_has_the_discrete_guide_s_elbo_and_log_px():
    """sbn-st is the same discrete model and q(z|x): same ELBO and log p(x) with the same
    parameters, so runs trained either way are comparable."""
    discrete, x = tiny_sbn("sbn")
    straight, _ = tiny_sbn("sbn-st", temperature=2.0)
    fit_guide_to_posterior_marginals(discrete, x)
    straight.load_state_dict(discrete.state_dict())
    exact = discrete.decoder.exact_log_marginal(x)
    elbos = {}
    for label, pair in (("discrete", discrete), ("straight", straight)):
        pyro.set_rng_seed(2)
        log_weights = log_importance_weights(pair.model, pair.guide, x, 20000)
        elbos[label] = elbo_estimate(log_weights)
        log_px = torch.logsumexp(log_weights, 0) - math.log(20000)
        torch.testing.assert_close(log_px, exact, atol=0.05, rtol=0)
    # Monte-Carlo standard error of each ELBO estimate: about 0.01-0.02 nats
    torch.testing.assert_close(elbos["straight"], elbos["discrete"], atol=0.08, rtol=0)


@pytest.mark.parametrize("temperature", [0.1, 3.0])
def test_straight_through_samples_are_exact_bernoulli_draws(temperature):
    logits = torch.tensor([-3.0, -0.7, 0.0, 0.4, 2.5])
    num = 200_000
    draws = StraightThroughBernoulli(logits, temperature).sample((num,))
    assert ((draws == 0) | (draws == 1)).all()
    probs = torch.sigmoid(logits)
    binomial_sd = (probs * (1 - probs) / num).sqrt()
    assert ((draws.mean(0) - probs).abs() < 4.5 * binomial_sd).all(), draws.mean(0) - probs


def test_straight_through_log_prob_gradient_expand_and_validation():
    logits = torch.tensor([[-1.5, 0.3, 2.0], [0.0, -0.2, 4.0]], requires_grad=True)
    st = StraightThroughBernoulli(logits, 0.5)
    values = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(st.log_prob(values), dist.Bernoulli(logits=logits).log_prob(values))
    torch.testing.assert_close(st.mean, torch.sigmoid(logits))
    torch.testing.assert_close(st.entropy(), dist.Bernoulli(logits=logits).entropy())
    assert st.has_rsample and st.support is dist.constraints.boolean

    # the sample is hard, its gradient is the relaxed sample's: d s / d logits = s(1-s)/T
    torch.manual_seed(5)
    sample = st.rsample((4,))
    torch.manual_seed(5)
    uniform = torch.rand(4, 2, 3).clamp(min=torch.finfo(torch.float32).tiny)
    noisy = logits.detach() + uniform.log() - (-uniform).log1p()
    assert torch.equal(sample.detach(), (noisy > 0).float())
    weights = torch.randn(4, 2, 3)
    (sample * weights).sum().backward()
    soft = torch.sigmoid(noisy / 0.5)
    torch.testing.assert_close(logits.grad, (weights * soft * (1 - soft) / 0.5).sum(0))

    expanded = st.expand((7, 2, 3))
    assert expanded.batch_shape == (7, 2, 3) and expanded.temperature == 0.5
    assert expanded.rsample().shape == (7, 2, 3)
    assert st.to_event(1).rsample((3,)).shape == (3, 2, 3)
    with pytest.raises(ValueError, match="support"):
        StraightThroughBernoulli(logits, 0.5, validate_args=True).log_prob(values * 0.5)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        StraightThroughBernoulli(logits, 0.0)


@pytest.mark.parametrize("name", SBN_PAIRS)
def test_sbn_pairs_have_bernoulli_latents_that_vectorize(name):
    pair = build_pair((1, 8, 8), name, {"z_dim": 5})
    x = torch.bernoulli(torch.full((6, 64), 0.4))
    info = check_pair(pair, x)
    assert info.latent_sites == ("z",) and info.vectorizable
    guide_trace = pyro.poutine.trace(pair.guide).get_trace(x)
    site = guide_trace.nodes["z"]
    assert site["fn"].has_rsample == (name == "sbn-st")
    assert site["value"].shape == (6, 5) and ((site["value"] == 0) | (site["value"] == 1)).all()
    model_trace = pyro.poutine.trace(pair.model).get_trace(x)
    prior = model_trace.nodes["z"]["fn"]
    assert isinstance(prior.base_dist, dist.Bernoulli) and prior.event_shape == (5,)
    log_weights = log_importance_weights(pair.model, pair.guide, x, 3, vectorize=True)
    assert log_weights.shape == (3, 6) and torch.isfinite(log_weights).all()


def test_pair_descriptions_say_which_objective():
    assert "--objective tracegraph" in PAIRS["sbn"].description
    assert "--objective tracegraph" in PAIRS["sbn-nonlinear"].description
    assert "--objective elbo" in PAIRS["sbn-st"].description
    nonlinear = build_pair((1, 8, 8), "sbn-nonlinear", {"z_dim": 3})
    linear = build_pair((1, 8, 8), "sbn", {"z_dim": 3})
    assert len(nonlinear.decoder.net) == 3 and len(linear.decoder.net) == 1  # Linear-tanh-Linear


@pytest.mark.parametrize(
    "name,objective,pair_kwargs",
    [
        ("sbn", "tracegraph", {"z_dim": 8}),
        ("sbn-nonlinear", "tracegraph", {"z_dim": 8, "hidden": [32]}),
        ("sbn-st", "elbo", {"z_dim": 8, "temperature": 0.5}),
    ],
)
def test_sbn_pairs_train_on_digits_and_evaluate(tmp_path, name, objective, pair_kwargs):
    config = TrainConfig(
        dataset="digits", binarize="static", pair=name, pair_kwargs=pair_kwargs,
        objective=objective, epochs=3, batch_size=50, train_limit=300, lr=0.01, device="cpu",
        out=str(tmp_path / "run"),
    )  # fmt: skip
    result = train(config, progress=False)
    losses = [row["train_loss"] for row in result.history]
    # measured: 44.5 -> 37.5 (sbn), 40.6 -> 28.5 (nonlinear), 44.6 -> 35.9 (st) nats
    assert losses[-1] < losses[0] - 3, losses
    summary = evaluate(result.run_dir, num_samples=100, limit=50, save=False)
    assert math.isfinite(summary["log_px"]) and math.isfinite(summary["elbo"])
    assert summary["elbo"] <= summary["log_px"] < 0
    # 2^8 latent states: the convergence study compares with the exact log p(x)
    study = convergence_study(result.run_dir, ks=(1, 1000), estimators=("is",), num_points=5,
                              repeats=2, save=False)  # fmt: skip
    assert study["reference_kind"] == "exact"
    cells = {row["num_samples"]: row for row in study["results"]}
    assert abs(cells[1000]["difference"]) < 0.1  # measured -0.04 to -0.02 nats
    assert cells[1]["difference"] < cells[1000]["difference"]
