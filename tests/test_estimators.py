"""Estimators of log p(x) and the ELBO against the linear-Gaussian VAE's exact log p(x)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints, transform_to

from pyro_vae.infer.estimators import (
    ESTIMATORS,
    EstimatorError,
    elbo_estimate,
    estimate_log_px,
    evaluation_view,
    iwae_bound,
    log_importance_weights,
    log_mean_exp,
    prior_proposal,
)
from pyro_vae.pairs import PAIRS, PairError, check_pair


def linear_gaussian(x_dim=4, z_dim=2, covariance="diagonal", seed=1, correlation=0.3):
    """A linear-Gaussian pair and its data, in float64; a small ``correlation`` spread makes
    the columns of W nearly parallel, so p(z|x) is strongly correlated."""
    torch.manual_seed(seed)
    pair = PAIRS["linear-gaussian"].factory((1, 1, x_dim), z_dim=z_dim, covariance=covariance)
    pair = pair.double()
    with torch.no_grad():
        weight = torch.randn(x_dim, 1, dtype=torch.float64)
        # nearly parallel columns of W: a strongly correlated posterior p(z|x)
        pair.decoder.linear.weight.copy_(weight + correlation * torch.randn(x_dim, z_dim).double())
        pair.decoder.linear.bias.normal_(0, 1)
    x = torch.randn(16, x_dim, dtype=torch.float64) * 1.5
    return pair, x


def test_log_mean_exp_is_stable_and_exact():
    log_weights = torch.tensor(
        [[1000.0, -1000.0], [1000.0 + math.log(3.0), -1000.0]], dtype=torch.float64
    )
    result = log_mean_exp(log_weights, dim=0)
    assert result[0].item() == pytest.approx(1000.0 + math.log(2.0), abs=1e-9)
    assert result[1].item() == pytest.approx(-1000.0, abs=1e-9)
    assert torch.equal(iwae_bound(log_weights), result)
    assert elbo_estimate(log_weights)[0].item() == pytest.approx(1000.0 + math.log(3.0) / 2)


def test_log_weights_are_per_datapoint_and_exact_at_the_true_posterior():
    """With q = p(z|x) exactly, every weight equals p(x): log w is constant and exact."""
    pair, x = linear_gaussian(covariance="full")
    pair.encoder.set_to_exact_posterior(pair.decoder)
    exact = pair.decoder.exact_log_marginal(x)
    log_weights = log_importance_weights(pair.model, pair.guide, x, 7)
    assert log_weights.shape == (7, x.shape[0])
    torch.testing.assert_close(log_weights, exact.expand(7, -1), atol=1e-9, rtol=0)


def test_elbo_below_is_estimate_below_exact_and_gap_shrinks_with_k():
    """ELBO <= L_K <= log p(x) in expectation; L_K -> log p(x) as K grows (Burda et al.)."""
    pair, x = linear_gaussian(covariance="diagonal")
    pair.encoder.set_to_exact_posterior(pair.decoder)  # optimal mean-field: q != p(z|x)
    exact = pair.decoder.exact_log_marginal(x)
    pyro.set_rng_seed(3)
    # 50 independent repetitions of L_K for each K: their mean estimates E[L_K].
    gaps = {}
    for k in (1, 10, 100, 1000):
        log_weights = log_importance_weights(pair.model, pair.guide, x.repeat(50, 1), k)
        bounds = iwae_bound(log_weights).reshape(50, -1).mean(0)
        gaps[k] = (exact - bounds).mean().item()
    elbo = elbo_estimate(
        log_importance_weights(pair.model, pair.guide, x, 20000)
    )  # E[log w] to about 1e-2
    kl_gap = (exact - elbo).mean().item()
    assert kl_gap > 0.05, "a diagonal guide cannot match a correlated posterior"
    assert gaps[1] == pytest.approx(kl_gap, abs=0.05)
    assert gaps[1] > gaps[10] > gaps[100] > gaps[1000] > -0.01
    assert gaps[1000] < 0.1 * kl_gap  # measured 0.010-0.023 of a 0.38-nat KL gap


def test_estimate_log_px_matches_exact_at_large_k():
    pair, x = linear_gaussian(covariance="diagonal", seed=2, correlation=1.0)
    pair.encoder.set_to_exact_posterior(pair.decoder)
    out = estimate_log_px(pair, x, 5000, max_elements=2000)  # forces several chunks
    exact = pair.decoder.exact_log_marginal(x)
    # IS error at K=5000 with a mean-field proposal: <= 0.05 nats per point, 0.02 on average
    torch.testing.assert_close(out["log_px"], exact, atol=0.05, rtol=0)
    assert (out["log_px"] - exact).abs().mean() < 0.02
    assert (out["elbo"] <= out["log_px"]).all()
    assert (out["ess"] > 1).all() and (out["ess"] <= 5000).all()


def test_vectorized_and_looped_samples_agree():
    """The loop fallback computes the same per-point weights as the vectorized path."""
    pair, x = linear_gaussian(covariance="full", correlation=1.0)
    pair.encoder.set_to_exact_posterior(pair.decoder)
    exact = pair.decoder.exact_log_marginal(x).expand(3, -1)
    for vectorize in (True, False):
        log_weights = log_importance_weights(pair.model, pair.guide, x, 3, vectorize=vectorize)
        torch.testing.assert_close(log_weights, exact, atol=1e-9, rtol=0)
    pair, x = linear_gaussian(covariance="diagonal", correlation=1.0)
    pair.encoder.set_to_exact_posterior(pair.decoder)
    vectorized = log_importance_weights(pair.model, pair.guide, x, 4000, vectorize=True)
    looped = log_importance_weights(pair.model, pair.guide, x, 4000, vectorize=False)
    # both ELBO estimates have a Monte-Carlo standard error of about 0.01 here
    torch.testing.assert_close(elbo_estimate(vectorized), elbo_estimate(looped), atol=0.05, rtol=0)


def _non_broadcasting_pair():
    """A pair whose decoder insists on a 2-D z, as hand-written code often does."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            loc = z.view(x.shape[0], 2).sum(-1, keepdim=True).expand(x.shape[0], x.shape[1])
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))

    class Pair:
        pass

    pair = Pair()
    pair.model, pair.guide = model, guide
    return pair


def test_non_vectorizable_pair_falls_back_to_a_loop_with_a_warning():
    pair = _non_broadcasting_pair()
    x = torch.randn(5, 3)
    info = check_pair(pair, x)
    assert not info.vectorizable
    with pytest.warns(RuntimeWarning, match="falling back to one trace per sample"):
        log_weights = log_importance_weights(pair.model, pair.guide, x, 6)
    assert log_weights.shape == (6, 5)
    # prior = guide here, so log w = log p(x|z): check one against a direct computation
    assert torch.isfinite(log_weights).all()


def test_a_global_site_is_found_and_must_be_held_fixed_to_estimate_per_point():
    def model(x):
        scale = pyro.sample("global_scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, scale).expand([x.shape[0], x.shape[1]]).to_event(1),
                        obs=x)  # fmt: skip

    def guide(x):
        pyro.sample("global_scale", dist.LogNormal(0.0, 0.5))

    class Pair:
        pass

    pair = Pair()
    pair.model, pair.guide = model, guide
    x = torch.randn(4, 3)
    info = check_pair(pair, x)
    assert info.global_sites == ("global_scale",) and info.latent_sites == ("global_scale",)
    # raw programs: a per-point weight cannot hold a global site's density
    with pytest.raises(PairError, match="'global_scale' is not in a plate over the 4 data"):
        log_importance_weights(pair.model, pair.guide, x, 3, vectorize=False)
    # held at the guide's mean (LogNormal(0, 0.5): exp(0.125)), x_i's weight is log p(x_i|s)
    view = evaluation_view(pair, info, x)
    assert view.conditioned_on["sites"] == {"global_scale": "guide mean"}
    log_weights = log_importance_weights(view.model, view.guide, x, 3)
    expected = dist.Normal(0.0, math.exp(0.125)).log_prob(x).sum(-1)
    assert torch.allclose(log_weights, expected.expand(3, 4), atol=1e-5)


# ----------------------------------------------------------------------------------------
# The prior as proposal (naive Monte Carlo) beside importance sampling with the guide.


def linear_gaussian_data(x_dim, z_dim, noise_scale, num_points=16, seed=0, inflate=1.1):
    """A float64 linear-Gaussian pair, data drawn from it, and a full-covariance guide at the
    exact posterior mean with its scale inflated by ``inflate`` (a good, not perfect, proposal:
    E_q[w^2] / p(x)^2 = (s^2 / sqrt(2 s^2 - 1))^z_dim, 1.2 for s=1.1, z_dim=12)."""
    torch.manual_seed(seed)
    pair = (
        PAIRS["linear-gaussian"]
        .factory((1, 1, x_dim), z_dim=z_dim, noise_scale=noise_scale, covariance="full")
        .double()
    )
    with torch.no_grad():
        pair.decoder.linear.weight.normal_(0, 1)
        pair.decoder.linear.bias.normal_(0, 1)
        z = torch.randn(num_points, z_dim, dtype=torch.float64)
        x = pair.decoder(z) + noise_scale * torch.randn(num_points, x_dim, dtype=torch.float64)
    pair.encoder.set_to_exact_posterior(pair.decoder)
    with torch.no_grad():
        to_lower = transform_to(constraints.lower_cholesky)
        pair.encoder.unconstrained_scale_tril.copy_(to_lower.inv(inflate * pair.encoder.scale_tril))
    return pair, x, pair.decoder.exact_log_marginal(x)


def test_prior_weights_are_exactly_the_log_likelihood():
    """log w = log p(x, z) - log p(z) must be log p(x|z) to the last bit, not up to the
    rounding of adding and subtracting a 50-dim log p(z) (about 4e-6 nats in float32)."""
    pair = PAIRS["linear-gaussian"].factory((1, 1, 7), z_dim=50, noise_scale=0.7)
    with torch.no_grad():
        pair.decoder.linear.weight.zero_()  # p(x|z) = N(b, sigma^2 I) whatever z is
        pair.decoder.linear.bias.normal_(0, 1)
    x = torch.randn(9, 7) * 3
    noise = pair.decoder.noise_scale.detach().expand(9, 7)
    expected = dist.Normal(pair.decoder.linear.bias.detach().expand(9, 7), noise).to_event(1)
    expected = expected.log_prob(x).expand(13, 9)
    proposal = prior_proposal(pair.model)
    for vectorize in (True, False):
        log_weights = log_importance_weights(
            pair.model, proposal, x, 13, chunk_size=5, vectorize=vectorize
        )
        assert torch.equal(log_weights, expected)


def test_the_prior_proposal_runs_the_model_once_with_the_same_weights():
    """particle_traces runs the model once for a PriorProposal; wrapped in a plain function
    the same proposal goes the general way (proposal, then the model replayed on it)."""
    pair = PAIRS["mlp"].factory((1, 8, 8), hidden=[16], z_dim=3)
    x = torch.bernoulli(torch.full((6, 64), 0.3))
    proposal = prior_proposal(pair.model)
    calls = []
    decoder_forward = pair.decoder.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return decoder_forward(*args, **kwargs)

    pair.decoder.forward = counting
    pyro.set_rng_seed(3)
    once = log_importance_weights(pair.model, proposal, x, 11, chunk_size=4)
    runs_once = len(calls)
    pyro.set_rng_seed(3)
    general = log_importance_weights(pair.model, lambda x: proposal(x), x, 11, chunk_size=4)
    assert torch.equal(once, general)
    assert runs_once == 3 and len(calls) == 3 + 6  # 3 chunks of samples; twice as many


def test_prior_estimator_agrees_where_the_prior_is_a_good_proposal():
    """z_dim 1 and a broad likelihood (noise 3): the posterior is nearly the prior."""
    pair, x, exact = linear_gaussian_data(x_dim=5, z_dim=1, noise_scale=3.0)
    pyro.set_rng_seed(0)
    prior = estimate_log_px(pair, x, 5000, estimator="prior")
    guide = estimate_log_px(pair, x, 5000, estimator="is")
    # measured over 3 seeds: prior error <= 0.026 per point, |mean| <= 0.003; ESS >= 2200
    torch.testing.assert_close(prior["log_px"], exact, atol=0.06, rtol=0)
    assert (prior["log_px"] - exact).mean().abs() < 0.02
    torch.testing.assert_close(guide["log_px"], exact, atol=0.01, rtol=0)
    assert (prior["ess"] > 1500).all()


def test_prior_estimator_is_many_nats_low_where_the_posterior_is_narrow():
    """z_dim 12, noise 0.3, x_dim 30: almost no prior draw explains x; the guide does."""
    pair, x, exact = linear_gaussian_data(x_dim=30, z_dim=12, noise_scale=0.3)
    pyro.set_rng_seed(0)
    prior = estimate_log_px(pair, x, 1000, estimator="prior")
    guide = estimate_log_px(pair, x, 1000, estimator="is")
    # measured: prior 140-1450 nats below exact on every point, ESS about 1
    assert (exact - prior["log_px"] > 20).all(), exact - prior["log_px"]
    assert (prior["ess"] < 2).all()
    # a 1.1-times inflated exact posterior: measured error <= 0.04 nats over 10 seeds, ESS
    # >= 800 of 1000
    torch.testing.assert_close(guide["log_px"], exact, atol=0.08, rtol=0)
    assert (guide["ess"] > 500).all()
    # the prior's mean log weight E_p(z)[log p(x|z)] is far below, a useless bound
    assert (prior["elbo"] < prior["log_px"]).all()


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_every_estimator_returns_the_same_keys_and_bounds_exact_log_px(estimator):
    pair, x, exact = linear_gaussian_data(x_dim=5, z_dim=2, noise_scale=1.0)
    pyro.set_rng_seed(0)
    out = estimate_log_px(pair, x, 200, estimator=estimator, max_elements=500)  # chunks
    assert set(out) == {"log_px", "elbo", "ess"}
    assert all(value.shape == (x.shape[0],) for value in out.values())
    assert (out["elbo"] <= out["log_px"]).all()
    # a stochastic lower bound: on average not above exact (measured, 20 seeds: mean error
    # <= 0.005 for is, <= 0.1 for prior; the worst point 0.04 and 3.3 nats off)
    assert (out["log_px"] - exact).mean() < 0.2
    assert ((out["log_px"] - exact).abs() < 5).all()
    assert ((out["ess"] >= 1) & (out["ess"] <= 200)).all()


def test_unknown_estimator_names_the_flag_and_the_choices():
    pair, x, _ = linear_gaussian_data(x_dim=5, z_dim=2, noise_scale=1.0)
    with pytest.raises(EstimatorError, match="--estimator 'importance' is unknown.*is, prior"):
        estimate_log_px(pair, x, 10, estimator="importance")
