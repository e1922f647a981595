"""Every objective in OBJECTIVES: exact where the weights are constant, and it trains."""

import pyro
import pytest
import torch

from pyro_vae.infer.gradients import score_function
from pyro_vae.infer.objectives import OBJECTIVES, ObjectiveError, make_objective
from pyro_vae.pairs import PAIRS


def exact_pair(covariance="full", seed=0):
    torch.manual_seed(seed)
    pair = PAIRS["linear-gaussian"].factory((1, 1, 5), z_dim=2, covariance=covariance).double()
    with torch.no_grad():
        pair.decoder.linear.weight.normal_(0, 1)
    x = torch.randn(8, 5, dtype=torch.float64)
    return pair, x


@pytest.mark.parametrize("name", [n for n in OBJECTIVES if n != "meanfield"])
@pytest.mark.parametrize("num_particles", [1, 3])
def test_loss_is_minus_exact_log_px_at_the_exact_posterior(name, num_particles):
    """With q(z|x) = p(z|x), log p(x,z) - log q(z|x) = log p(x) for every z, so every
    Monte-Carlo objective equals -sum_n log p(x_n) with no noise at all (vimco: through the
    score function, with K >= 2)."""
    pair, x = exact_pair()
    pair.encoder.set_to_exact_posterior(pair.decoder)
    num_particles = max(num_particles, OBJECTIVES[name].min_particles)
    elbo = make_objective(name, num_particles, alpha=0.5)
    guide = score_function(pair.guide) if name == "vimco" else pair.guide
    expected = -pair.decoder.exact_log_marginal(x).sum().item()
    assert elbo.loss(pair.model, guide, x) == pytest.approx(expected, abs=1e-8)


def test_meanfield_matches_trace_elbo_in_expectation():
    """Analytic KL and Monte-Carlo KL estimate the same ELBO (diagonal, not exact, guide)."""
    pair, x = exact_pair(covariance="diagonal")
    pair.encoder.set_to_exact_posterior(pair.decoder)
    pyro.set_rng_seed(1)
    meanfield = make_objective("meanfield", 4000, max_plate_nesting=1)
    trace = make_objective("elbo", 4000, max_plate_nesting=1)
    a = meanfield.loss(pair.model, pair.guide, x)
    b = trace.loss(pair.model, pair.guide, x)
    assert a == pytest.approx(b, abs=0.05 * x.shape[0])  # per point 0.05 nats
    assert a > -pair.decoder.exact_log_marginal(x).sum().item()  # ELBO < log p(x)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_trains_the_linear_gaussian_model(name):
    """150 SVI steps raise the exact log-likelihood of the data under the decoder."""
    torch.manual_seed(0)
    true_weight = torch.randn(5, 2)
    data = torch.randn(64, 2) @ true_weight.T + 0.3 * torch.randn(64, 5)
    pair = PAIRS["linear-gaussian"].factory((1, 1, 5), z_dim=2)
    before = pair.decoder.exact_log_marginal(data).mean().item()
    elbo = make_objective(name, 4, max_plate_nesting=1, alpha=0.5)
    guide = score_function(pair.guide) if name == "vimco" else pair.guide
    svi = pyro.infer.SVI(pair.model, guide, pyro.optim.Adam({"lr": 0.05}), loss=elbo)
    for _ in range(150):
        svi.step(data)
    after = pair.decoder.exact_log_marginal(data).mean().item()
    assert after > before + 1.0, (before, after)


def test_unknown_objective_and_bad_settings_name_the_flag():
    with pytest.raises(ObjectiveError, match="--objective 'iwea' is unknown; choose from elbo"):
        make_objective("iwea")
    with pytest.raises(ObjectiveError, match="--num-particles must be >= 1"):
        make_objective("elbo", 0)
    with pytest.raises(ObjectiveError, match="--alpha 1 is the ELBO itself"):
        make_objective("renyi", 2, alpha=1.0)
