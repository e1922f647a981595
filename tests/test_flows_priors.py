"""Flow guides (IAF, planar, radial) and learned priors (VampPrior, mixture of Gaussians).

The densities against their definitions: a flow's log q(z) against the change-of-variables
formula with the Jacobian taken by autograd, the VampPrior and the mixture against the
mixture computed term by term. An IAF guide on the linear-Gaussian pair reaches the exact
posterior's ELBO, log p(x), where the diagonal Gaussian cannot. Every estimator runs on the
built-in pairs with a flow and a learned prior, and bad settings are refused clearly.
"""

import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_vae.analysis.diagnose import FLOW_FAMILY, GAUSSIAN_FAMILY, diagnose, diagnose_pair
from pyro_vae.analysis.evaluate import evaluate
from pyro_vae.analysis.gradvar import gradient_variance
from pyro_vae.analysis.sampling import sample_figure
from pyro_vae.guides.flows import ConditionalFlow, PerPointFlowGuide
from pyro_vae.guides.mlp import GaussianMLPEncoder
from pyro_vae.infer.compiled import traced_loss
from pyro_vae.models.linear_gaussian import LinearGaussianDecoder
from pyro_vae.models.priors import MixtureOfGaussiansPrior, VampPrior
from pyro_vae.pairs import PairError, build_pair, check_pair
from pyro_vae.runs.config import TrainConfig
from pyro_vae.training.train import train

PAIRS_DIR = Path(__file__).parent / "pairs"


def _log_normal(z, loc, scale):
    """log N(z; loc, diag(scale^2)) summed over the last dim, written out."""
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


# ------------------------------------------------------------------------------------------
# Densities against their definitions


@pytest.mark.parametrize("kind", ["iaf", "planar", "radial"])
def test_flow_log_density_is_the_change_of_variables_formula(kind):
    """log q(z_K) = log N(z_0) - log |det dz_K/dz_0|, the Jacobian of the whole composed map
    by autograd, per point, at random inputs, contexts and (perturbed) network weights."""
    torch.manual_seed(0)
    z_dim, context_dim, num_points = 3, 4, 6
    flow = ConditionalFlow(kind, z_dim, context_dim, steps=3, hidden=[8]).double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    loc = torch.randn(num_points, z_dim, dtype=torch.float64)
    scale = torch.rand(num_points, z_dim, dtype=torch.float64) + 0.5
    context = torch.randn(num_points, context_dim, dtype=torch.float64)

    # z_0 from the base, z_K through the transforms flow(...) builds, scored by the flow's
    # distribution over those same transforms (Pyro caches each pre-image)
    base = dist.Normal(loc, scale).to_event(1)
    z0 = base.rsample()
    transforms = flow.conditioned(context)
    zk = z0
    for transform in transforms:
        zk = transform(zk)
    scored = dist.TransformedDistribution(base, transforms).log_prob(zk)

    expected = []
    for b in range(num_points):
        per_point = flow.conditioned(context[b : b + 1])

        def composed(v, per_point=per_point):
            out = v[None]
            for transform in per_point:
                out = transform(out)
            return out[0]

        jacobian = torch.autograd.functional.jacobian(composed, z0[b])
        expected.append(base.log_prob(z0)[b] - torch.linalg.slogdet(jacobian).logabsdet)
    expected = torch.stack(expected)
    torch.testing.assert_close(scored, expected, rtol=1e-8, atol=1e-8)

    drawn = flow(loc, scale, context)  # the guide's own draw and its score
    z = drawn.rsample()
    assert z.shape == (num_points, z_dim) and torch.isfinite(drawn.log_prob(z)).all()
    if kind == "iaf":  # an IAF inverts (sequentially): a value it did not draw scores too
        torch.testing.assert_close(
            flow(loc, scale, context).log_prob(zk.detach().clone()), expected, rtol=1e-6,
            atol=1e-6,
        )  # fmt: skip


def test_vamp_prior_is_the_mixture_of_the_encoder_at_the_pseudo_inputs():
    torch.manual_seed(1)
    x_dim, z_dim, components = 12, 3, 7
    encoder = GaussianMLPEncoder(x_dim, z_dim, hidden=(8,))
    prior = VampPrior(encoder, (x_dim,), components)
    with torch.no_grad():  # some pseudo-inputs outside [0, 1]: hardtanh clamps them
        prior.pseudo_inputs.copy_(2 * torch.rand(components, x_dim) - 0.5)
    z = torch.randn(4, 5, z_dim)  # particles x batch
    x = torch.zeros(5, x_dim)
    actual = prior(x).log_prob(z)
    assert actual.shape == (4, 5)
    clamped = prior.pseudo_inputs.detach().clamp(0, 1)
    terms = []
    for k in range(components):
        loc, scale = encoder(clamped[k])
        terms.append(_log_normal(z, loc, scale))
    expected = torch.logsumexp(torch.stack(terms), 0) - math.log(components)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_mixture_prior_is_its_weighted_sum_of_gaussians():
    torch.manual_seed(2)
    prior = MixtureOfGaussiansPrior(z_dim=2, num_components=4)
    with torch.no_grad():
        prior.logits.copy_(torch.randn(4))
        prior.log_scale.copy_(0.3 * torch.randn(4, 2))
    z = torch.randn(6, 2)
    actual = prior(torch.zeros(6, 5)).log_prob(z)
    weights = prior.logits.detach().softmax(0)
    expected = torch.stack([
        weights[k] * _log_normal(z, prior.loc[k], prior.log_scale[k].exp()).exp()
        for k in range(4)
    ]).sum(0).log()  # fmt: skip
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_mixture_draws_have_the_mixture_moments():
    """The prior's draws (``sample`` draws z from p(z)): mean and variance against the
    closed forms, and the batch and sample shapes."""
    torch.manual_seed(8)
    prior = MixtureOfGaussiansPrior(z_dim=3, num_components=4)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5]))
        prior.loc.mul_(3)
    mixture = prior(torch.zeros(5, 2))
    draws = mixture.sample((20000,))
    assert draws.shape == (20000, 5, 3) and mixture.log_prob(draws).shape == (20000, 5)
    flat = draws.reshape(-1, 3)
    torch.testing.assert_close(flat.mean(0), mixture.mean[0], atol=0.05, rtol=0.0)
    torch.testing.assert_close(flat.var(0), mixture.variance[0], atol=0.0, rtol=0.05)


def test_vamp_prior_reaches_the_encoder_without_registering_it_twice():
    """The model's log p(z) moves the encoder (a gradient reaches it), but the encoder's
    parameters are the guide's: the decoder's pyro.module does not register them again."""
    pair = build_pair((1, 8, 8), "mlp", {"hidden": [16], "z_dim": 3, "prior": "vamp",
                                          "prior_components": 5})  # fmt: skip
    x = (torch.rand(10, 64) < 0.5).float()
    pyro.clear_param_store()
    guide_trace = poutine.trace(pair.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(x)
    names = list(pyro.get_param_store().keys())
    assert "decoder$$$prior.pseudo_inputs" in names
    assert not [name for name in names if name.startswith("decoder$$$prior.encode")]
    tensors = [pyro.param(name).unconstrained() for name in names]
    assert len({id(t) for t in tensors}) == len(tensors)
    model_trace.nodes["z"]["fn"].log_prob(model_trace.nodes["z"]["value"].detach()).sum().backward()
    assert pair.encoder.head.loc.weight.grad.abs().sum() > 0
    assert pair.decoder.prior.pseudo_inputs.grad.abs().sum() > 0
    pyro.clear_param_store()


# ------------------------------------------------------------------------------------------
# An IAF guide reaches the exact posterior of the linear-Gaussian pair


def test_iaf_guide_reaches_the_exact_posterior_elbo_of_the_linear_gaussian_pair():
    """Decoder fixed with strongly correlated columns, so p(z|x) is a tilted Gaussian; the
    guide alone is trained. The best diagonal Gaussian stays KL = (sum_i log P_ii -
    log det P) / 2 nats below log p(x) (P the posterior precision); the IAF guide (2 steps,
    conditioned on x) must come within 0.05 nats per point of log p(x) itself."""
    torch.manual_seed(3)
    pyro.set_rng_seed(3)
    pyro.clear_param_store()
    x_dim, z_dim, num_points = 4, 2, 256
    decoder = LinearGaussianDecoder(x_dim, z_dim, noise_scale=0.5, learn_noise=False)
    with torch.no_grad():
        decoder.linear.weight.copy_(torch.tensor([[1.0, 0.9], [1.0, 1.1], [0.5, 0.6],
                                                  [1.0, 0.8]]) * 1.5)  # fmt: skip
        decoder.linear.bias.copy_(torch.tensor([0.5, -0.5, 0.0, 1.0]))
    decoder.requires_grad_(False).train(False)  # fixed: eval mode, as pyro.module asks
    with torch.no_grad():
        z = torch.randn(num_points, z_dim)
        x = decoder(z) + 0.5 * torch.randn(num_points, x_dim)
    kwargs = {"z_dim": z_dim, "flow": "iaf", "flow_steps": 2, "flow_hidden": [32]}
    pair = build_pair((x_dim,), "linear-gaussian", kwargs)
    pair.decoder = decoder
    optimizer = torch.optim.Adam(pair.encoder.parameters(), lr=1e-2)
    elbo = pyro.infer.Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1)
    for step in range(1500):
        if step == 1000:
            for group in optimizer.param_groups:
                group["lr"] = 2e-3
        optimizer.zero_grad()
        loss = elbo.differentiable_loss(pair.model, pair.guide, x) / num_points
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        weights = []
        for _ in range(20):
            guide_trace = poutine.trace(pair.guide).get_trace(x)
            model_trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(x)
            weights.append(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
        iaf_elbo = torch.stack(weights).mean() / num_points
        log_px = decoder.exact_log_marginal(x).mean()
        precision = torch.eye(z_dim) + decoder.linear.weight.T @ decoder.linear.weight / 0.25
        diagonal_gap = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision))
    iaf_gap = (log_px - iaf_elbo).item()
    assert diagonal_gap > 0.5, "the posterior must be far from diagonal for the test to mean much"
    print(f"IAF gap {iaf_gap:.4f} nats, best diagonal Gaussian's {diagonal_gap.item():.4f}")
    assert iaf_gap < 0.05, (iaf_gap, diagonal_gap.item())
    assert iaf_gap > -0.02  # an ELBO above log p(x) would be a density bug
    pyro.clear_param_store()


# ------------------------------------------------------------------------------------------
# Every estimator on the built-in pairs


SMALL = dict(dataset="digits", pair="mlp", batch_size=100, train_limit=250, seed=0, device="cpu")


@pytest.fixture(scope="module")
def flow_vamp_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("flows") / "run"
    kwargs = {"hidden": [16], "z_dim": 4, "flow": "iaf", "flow_steps": 2, "prior": "vamp",
              "prior_components": 10}  # fmt: skip
    train(TrainConfig(epochs=2, out=str(run_dir), pair_kwargs=kwargs, **SMALL), progress=False)
    return run_dir


def test_evaluate_diagnose_gradvar_sample_on_a_flow_guide_with_a_vamp_prior(flow_vamp_run):
    eager = evaluate(flow_vamp_run, num_samples=40, limit=60, save=False, progress=False)
    compiled = evaluate(flow_vamp_run, num_samples=40, limit=60, save=False, progress=False,
                        compile=True)  # fmt: skip
    assert compiled["compiled"]["fallback"] is None
    for key in ("log_px", "elbo"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-5), key
    assert eager["log_px"] >= eager["elbo"]

    summary = diagnose(flow_vamp_run, points=6, num_samples=100, gap_steps=30, save=False,
                       progress=False)  # fmt: skip
    assert summary["q_star_family"] == FLOW_FAMILY
    assert any("own flow family" in note for note in summary["notes"])
    assert math.isfinite(summary["amortization_gap"])
    assert math.isfinite(summary["approximation_gap"])
    assert len(summary["khat"]) == 6

    variance = gradient_variance(flow_vamp_run, estimators=["reparam"], num_draws=5,
                                 batch_size=20, save=False, progress=False)  # fmt: skip
    assert variance["estimators"]["reparam"]["variance"] > 0
    assert sample_figure(flow_vamp_run, flow_vamp_run / "samples.png").exists()


@pytest.mark.parametrize("flow", ["iaf", "planar", "radial"])
@pytest.mark.parametrize("pair_name", ["mlp", "conv", "two-layer"])
def test_the_per_point_flow_q_star_starts_at_q_and_does_not_lose(pair_name, flow):
    """q* of a flow guide is the guide's own family with a free base and context per point:
    before fitting it is q exactly (the same draws, the same log q), and fitting it can only
    raise the ELBO (up to the noise of the estimates). The two-layer guide's q* drops q's
    dependence of z2 on z1, so only its first layer starts at q, and its gap may be < 0."""
    torch.manual_seed(4)
    pyro.clear_param_store()
    kwargs = {"flow": flow, "flow_steps": 2, **{
        "mlp": {"hidden": [16], "z_dim": 3},
        "conv": {"channels": [4], "hidden": 16, "z_dim": 3},
        "two-layer": {"hidden1": [16], "hidden2": [8], "z1_dim": 4, "z2_dim": 2},
    }[pair_name]}  # fmt: skip
    pair = build_pair((1, 8, 8), pair_name, kwargs)
    x = (torch.rand(5, 64) < 0.4).float()
    q_star = pair.per_point_guide(x)
    assert isinstance(q_star, PerPointFlowGuide)
    first = "z1" if pair_name == "two-layer" else "z"
    pyro.set_rng_seed(5)
    guide_trace = poutine.trace(pair.guide).get_trace(x)
    pyro.set_rng_seed(5)
    star_trace = poutine.trace(q_star).get_trace(x)
    guide_trace.compute_log_prob()
    star_trace.compute_log_prob()
    for key in ("value", "log_prob"):
        torch.testing.assert_close(star_trace.nodes[first][key], guide_trace.nodes[first][key])
    summary = diagnose_pair(pair, x, num_samples=400, gap_steps=60, progress=False).summary
    assert summary["q_star_family"] == FLOW_FAMILY
    assert math.isfinite(summary["amortization_gap"])
    if pair_name != "two-layer":
        stderr = summary["elbo_q_star_stderr_per_point"] + summary["elbo_stderr_per_point"]
        assert (summary["amortization_gap_per_point"] > -4 * stderr - 0.05).all()
    else:
        assert any("without q's dependence" in note for note in summary["notes"])
    pyro.clear_param_store()


def test_a_users_transformed_distribution_guide_trains_and_diagnoses_with_a_stated_fallback(
    tmp_path,
):  # fmt: skip
    run_dir = tmp_path / "run"
    config = dict(SMALL, pair=f"{PAIRS_DIR / 'iaf_guide.py'}:IAFGuideVAE")
    train(TrainConfig(epochs=1, out=str(run_dir), **config), progress=False)
    result = evaluate(run_dir, num_samples=20, limit=30, save=False, progress=False)
    assert result["log_px"] >= result["elbo"]
    summary = diagnose(run_dir, points=4, num_samples=60, gap_steps=10, save=False,
                       progress=False)  # fmt: skip
    assert summary["q_star_family"] == GAUSSIAN_FAMILY
    assert any("falls back to a factorized Gaussian" in note for note in summary["notes"])


# ------------------------------------------------------------------------------------------
# Bad settings


def _refused(result, *words):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


TINY = ["--epochs", "1", "--train-limit", "100", "--device", "cpu"]


@pytest.mark.parametrize(
    "pair, kwargs, words",
    [
        ("mlp", '{"flow": "maf"}', ["unknown flow 'maf'", "iaf, planar, radial"]),
        ("mlp", '{"flow": "iaf", "flow_steps": 0}', ["flow_steps must be an integer >= 1"]),
        ("sbn", '{"prior": "vamp"}', ["--pair sbn does not take 'prior'", "mlp"]),
    ],
)  # fmt: skip
def test_bad_flow_and_prior_settings_are_refused_clearly(run_cli, tmp_path, pair, kwargs, words):
    result = run_cli("train", "--pair", pair, "--pair-kwargs", kwargs, *TINY, "--out", "run",
                     cwd=tmp_path, check=False)  # fmt: skip
    _refused(result, *words)


@pytest.mark.parametrize(
    "pair, kwargs, words",
    [
        ("gmvae", {"flow": "iaf"}, ["--pair gmvae does not take 'flow'", "linear-gaussian"]),
        ("linear-gaussian", {"prior": "mog"}, ["does not take 'prior'", "two-layer"]),
        ("mlp", {"prior": "gauss"}, ["unknown prior 'gauss'", "standard, vamp, mog"]),
        ("mlp", {"prior": "vamp", "prior_components": 0}, ["prior_components must be an", ">= 1"]),
        ("mlp", {"prior_components": 3}, ["needs a learned prior"]),
        ("mlp", {"flow": "radial", "flow_steps": 1.5}, ["flow_steps must be an integer"]),
        ("two-layer", {"prior": "vamp"}, ["use \"prior\": \"mog\""]),
        ("linear-gaussian", {"flow": "iaf", "covariance": "full"}, ["diagonal Gaussian"]),
        ("linear-gaussian", {"flow": "iaf", "z_dim": 1}, ["needs z_dim >= 2", "planar"]),
    ],
)  # fmt: skip
def test_every_bad_setting_names_what_to_do(pair, kwargs, words):
    with pytest.raises(PairError) as raised:
        build_pair((1, 8, 8), pair, kwargs)
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))


@pytest.mark.parametrize(
    "pair_name, kwargs",
    [
        ("mlp", {"flow": "iaf"}),
        ("mlp", {"flow": "planar", "prior": "mog"}),
        ("gaussian-mlp", {"flow": "radial", "prior": "vamp", "prior_components": 6}),
        ("conv", {"flow": "iaf", "prior": "vamp", "prior_components": 6}),
        ("two-layer", {"prior": "mog", "prior_components": 3, "flow": "iaf"}),
        ("linear-gaussian", {"flow": "planar"}),
    ],
)  # fmt: skip
def test_traced_loss_of_flow_and_prior_pairs_is_pyros_elbo(pair_name, kwargs):
    """What --compile traces (pyro_vae.infer.compiled.traced_loss) equals Pyro's Trace_ELBO on the
    same draws, in value and gradients, for each flow and prior on the built-in pairs."""
    torch.manual_seed(6)
    pyro.clear_param_store()
    small = {"mlp": {"hidden": [8], "z_dim": 3}, "gaussian-mlp": {"hidden": [8], "z_dim": 3},
             "conv": {"channels": [4], "hidden": 8, "z_dim": 3},
             "two-layer": {"hidden1": [8], "hidden2": [8], "z1_dim": 4, "z2_dim": 2},
             "linear-gaussian": {"z_dim": 2}}[pair_name]  # fmt: skip
    pair = build_pair((1, 8, 8), pair_name, {**small, **kwargs})
    x = (torch.rand(7, 64) < 0.4).float()
    check_pair(pair, x)
    elbo = pyro.infer.Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(7)
    expected = elbo.loss_and_grads(pair.model, pair.guide, x)
    expected_grads = [p.grad.clone() for p in pair.parameters()]
    pair.zero_grad()
    pyro.set_rng_seed(7)
    loss = traced_loss(pair.model, pair.guide, (x,), objective="elbo", num_particles=3)
    loss.backward()
    assert math.isfinite(expected)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    for grad, wanted in zip([p.grad for p in pair.parameters()], expected_grads, strict=True):
        torch.testing.assert_close(grad, wanted, rtol=1e-4, atol=1e-5)
    pyro.clear_param_store()


def test_score_function_estimators_on_flow_guides(flow_vamp_run, tmp_path):
    """An IAF inverts, so the score function runs on it (log q at a draw held fixed); a
    planar flow does not: gradvar skips its score-function rows with a note, refuses a list
    of only those, and training it by the score function stops with the reason."""
    from pyro_vae.runs.config import ConfigError

    both = gradient_variance(flow_vamp_run, estimators=["reparam", "score"], num_draws=4,
                             batch_size=10, save=False, progress=False)  # fmt: skip
    assert set(both["estimators"]) == {"reparam", "score"}
    assert both["estimators"]["score"]["variance"] > 0

    run_dir = tmp_path / "planar"
    kwargs = {"hidden": [16], "z_dim": 3, "flow": "planar", "flow_steps": 2}
    train(TrainConfig(epochs=1, out=str(run_dir), pair_kwargs=kwargs, **SMALL), progress=False)
    result = gradient_variance(run_dir, estimators=["reparam", "score", "score+avg"],
                               num_draws=4, batch_size=10, save=False, progress=False)  # fmt: skip
    assert list(result["estimators"]) == ["reparam"]
    assert sum("skipped" in note and "ConditionedPlanar" in note for note in result["notes"]) == 2
    with pytest.raises(ConfigError, match="every one takes the score function"):
        gradient_variance(run_dir, estimators=["score"], num_draws=4, batch_size=10,
                          save=False, progress=False)  # fmt: skip
    with pytest.raises(Exception, match="has no inverse"):
        train(TrainConfig(epochs=1, out=str(tmp_path / "sf"), pair_kwargs=kwargs,
                          objective="tracegraph", score_function=True, **SMALL),
              progress=False)  # fmt: skip
