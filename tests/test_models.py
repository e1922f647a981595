"""Tests for the generative models, the amortized guides and the shared nets.

Every (model, guide) pair is listed once in `PAIRS`; the generic tests iterate over it, so a
new pair is tested the day it is added. The linear-Gaussian pair is checked against exact
answers (numerical integration and independent closed forms).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn

from pyro_vae.guides import (
    ConvGaussianEncoder,
    GaussianMLPEncoder,
    LinearGaussianEncoder,
    TwoLayerGaussianEncoder,
)
from pyro_vae.models import (
    BernoulliMLPDecoder,
    ConvBernoulliDecoder,
    GaussianMLPDecoder,
    LinearGaussianDecoder,
    TwoLayerBernoulliDecoder,
)
from pyro_vae.nn import ACTIVATIONS, apply_flat, mlp

BATCH = 6
LOG_2PI = math.log(2 * math.pi)


def _binary(batch: int, dim: int) -> Tensor:
    return torch.bernoulli(torch.full((batch, dim), 0.3))


def _normal_log_density(value: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """Hand-written diagonal Gaussian log density summed over the last dim."""
    return (-0.5 * ((value - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)


def _bernoulli_log_mass(value: Tensor, logits: Tensor) -> Tensor:
    """Hand-written Bernoulli(logits) log mass summed over the last dim."""
    return (value * logits - F.softplus(logits)).sum(-1)


@dataclass(frozen=True)
class Pair:
    """A model, its guide, a data batch, and the hand-written log p(x | latents)."""

    build: Callable[[], tuple[nn.Module, nn.Module]]
    data: Callable[[], Tensor]
    latent_dims: dict[str, int]  # site name -> event size, in model order
    top_site: str  # the site with the N(0, I) prior
    log_likelihood: Callable[[nn.Module, dict[str, Tensor], Tensor], Tensor]


def _mlp_bernoulli_lik(model, latents, x):
    return _bernoulli_log_mass(x, model(latents["z"]))


def _mlp_gaussian_lik(model, latents, x):
    loc, scale = model(latents["z"])
    return _normal_log_density(x, loc, scale)


def _two_layer_lik(model, latents, x):
    z1_loc, z1_scale = model.z1_params(latents["z2"])
    return _normal_log_density(latents["z1"], z1_loc, z1_scale) + _bernoulli_log_mass(
        x, model(latents["z1"])
    )


def _linear_gaussian_lik(model, latents, x):
    loc = model(latents["z"])
    return _normal_log_density(x, loc, model.noise_scale.expand(loc.shape))


PAIRS: dict[str, Pair] = {
    "mlp_bernoulli": Pair(
        lambda: (BernoulliMLPDecoder(12, 3, (16, 16)), GaussianMLPEncoder(12, 3, (16, 16))),
        lambda: _binary(BATCH, 12),
        {"z": 3},
        "z",
        _mlp_bernoulli_lik,
    ),
    "mlp_gaussian": Pair(
        lambda: (GaussianMLPDecoder(12, 3, (16,)), GaussianMLPEncoder(12, 3, (16,))),
        lambda: torch.rand(BATCH, 12),
        {"z": 3},
        "z",
        _mlp_gaussian_lik,
    ),
    "conv_bernoulli": Pair(
        lambda: (
            ConvBernoulliDecoder((1, 8, 6), 4, (4, 8), 16),
            ConvGaussianEncoder((1, 8, 6), 4, (4, 8), 16),
        ),
        lambda: _binary(BATCH, 48),
        {"z": 4},
        "z",
        _mlp_bernoulli_lik,
    ),
    "two_layer": Pair(
        lambda: (
            TwoLayerBernoulliDecoder(12, 4, 2, (16,), (8,)),
            TwoLayerGaussianEncoder(12, 4, 2, (16,), (8,)),
        ),
        lambda: _binary(BATCH, 12),
        {"z2": 2, "z1": 4},
        "z2",
        _two_layer_lik,
    ),
    "linear_gaussian_diagonal": Pair(
        lambda: (LinearGaussianDecoder(5, 2, 0.5), LinearGaussianEncoder(5, 2, "diagonal")),
        lambda: torch.randn(BATCH, 5),
        {"z": 2},
        "z",
        _linear_gaussian_lik,
    ),
    "linear_gaussian_full": Pair(
        lambda: (LinearGaussianDecoder(5, 2, 0.5), LinearGaussianEncoder(5, 2, "full")),
        lambda: torch.randn(BATCH, 5),
        {"z": 2},
        "z",
        _linear_gaussian_lik,
    ),
}


def _sample_sites(trace: poutine.Trace) -> list[str]:
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    ]


def _traces(model: nn.Module, guide: nn.Module, x: Tensor):
    guide_trace = poutine.trace(guide.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x)
    return guide_trace, model_trace


def _site_log_probs(trace: poutine.Trace) -> dict[str, Tensor]:
    trace.compute_log_prob()
    return {name: trace.nodes[name]["log_prob"] for name in _sample_sites(trace)}


# ----------------------------------------------------------------------------------------
# Every pair: sites, shapes, numbers, vectorized particles, device and dtype.


@pytest.mark.parametrize("name", PAIRS)
def test_trace_sites_shapes_and_log_probs(name):
    pair = PAIRS[name]
    model, guide = pair.build()
    x = pair.data()
    guide_trace, model_trace = _traces(model, guide, x)

    latents = list(pair.latent_dims)
    assert sorted(_sample_sites(guide_trace)) == sorted(latents)
    assert _sample_sites(model_trace) == [*latents, "x"]
    x_site = model_trace.nodes["x"]
    assert x_site["is_observed"] and x_site["value"] is x
    assert x_site["fn"].batch_shape == (BATCH,) and x_site["fn"].event_shape == (x.shape[-1],)
    assert not any(model_trace.nodes[site]["is_observed"] for site in latents)
    values = {}
    for site, size in pair.latent_dims.items():
        value = guide_trace.nodes[site]["value"]
        assert value.shape == (BATCH, size)
        assert torch.equal(model_trace.nodes[site]["value"], value)  # replayed, not resampled
        values[site] = value
    assert torch.isfinite(guide_trace.log_prob_sum())
    assert torch.isfinite(model_trace.log_prob_sum())

    # The numbers, against hand-written densities: a N(0, I) prior on the top site ...
    log_probs = _site_log_probs(model_trace)
    top = values[pair.top_site]
    expected_prior = -0.5 * (top**2).sum(-1) - 0.5 * top.shape[-1] * LOG_2PI
    torch.testing.assert_close(log_probs[pair.top_site], expected_prior)
    # ... and the rest of log p(x, z) from the decoder's own outputs.
    rest = sum(log_prob for site, log_prob in log_probs.items() if site != pair.top_site)
    with torch.no_grad():
        torch.testing.assert_close(rest, pair.log_likelihood(model, values, x))


@pytest.mark.parametrize("name", PAIRS)
def test_vectorized_particles_match_one_particle_at_a_time(name):
    """Under a particle plate, each particle's log-densities equal those of a lone run."""
    pair = PAIRS[name]
    model, guide = pair.build()
    x = pair.data()
    num_particles = 3
    with pyro.plate("particles", num_particles, dim=-2):
        guide_trace, model_trace = _traces(model, guide, x)
    assert model_trace.nodes["x"]["value"].shape == x.shape  # data are not expanded
    guide_log_probs = _site_log_probs(guide_trace)
    model_log_probs = _site_log_probs(model_trace)
    for site, size in pair.latent_dims.items():
        assert guide_trace.nodes[site]["value"].shape == (num_particles, BATCH, size)
    assert model_log_probs["x"].shape == (num_particles, BATCH)

    for k in range(num_particles):
        values = {site: guide_trace.nodes[site]["value"][k] for site in pair.latent_dims}
        lone_guide = poutine.trace(poutine.condition(guide.guide, data=values)).get_trace(x)
        lone_model = poutine.trace(poutine.condition(model.model, data=values)).get_trace(x)
        for site, log_prob in _site_log_probs(lone_guide).items():
            torch.testing.assert_close(guide_log_probs[site][k], log_prob)
        for site, log_prob in _site_log_probs(lone_model).items():
            torch.testing.assert_close(model_log_probs[site][k], log_prob)


@pytest.mark.parametrize("name", PAIRS)
def test_vectorized_elbo_equals_sequential_elbo_statistically(name):
    pair = PAIRS[name]
    model, guide = pair.build()
    x = pair.data()
    num_draws, num_particles = 30, 300  # one-particle draws are slow (Python overhead)
    sequential = torch.tensor(
        [Trace_ELBO().loss(model.model, guide.guide, x) for _ in range(num_draws)]
    )
    vectorized = Trace_ELBO(
        num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1
    ).loss(model.model, guide.guide, x)
    # Difference of two means: sd = sd(one draw) * sqrt(1 / num_draws + 1 / num_particles).
    tolerance = 5 * sequential.std().item() * math.sqrt(1 / num_draws + 1 / num_particles)
    assert abs(vectorized - sequential.mean().item()) < tolerance + 1e-4 * abs(vectorized)


@pytest.mark.parametrize("name", PAIRS)
def test_elbo_gradient_matches_finite_differences(name):
    """With the noise held fixed, d loss / d theta along a random direction, both ways.

    The reparameterized ELBO with a fixed seed is a smooth function of all parameters, so
    Pyro's gradient must equal a central finite difference of the loss: a detached scale or
    a parameter missing from `pyro.module` would break the match.
    """
    pair = PAIRS[name]
    model, guide = pair.build()
    model.double()
    guide.double()
    x = pair.data().double()
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    params = [*model.parameters(), *guide.parameters()]
    directions = [torch.randn_like(p) for p in params]

    def loss_at(step: float) -> float:
        with torch.no_grad():
            for p, direction in zip(params, directions):
                p.add_(step * direction)
        pyro.set_rng_seed(7)
        value = elbo.loss(model.model, guide.guide, x)
        with torch.no_grad():
            for p, direction in zip(params, directions):
                p.sub_(step * direction)
        return value

    pyro.set_rng_seed(7)
    loss = elbo.differentiable_loss(model.model, guide.guide, x)
    grads = torch.autograd.grad(loss, params)
    directional = sum((g * d).sum() for g, d in zip(grads, directions)).item()
    step = 1e-5
    finite_difference = (loss_at(step) - loss_at(-step)) / (2 * step)
    assert loss.item() == pytest.approx(loss_at(0.0), rel=1e-12)
    assert directional == pytest.approx(finite_difference, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", PAIRS)
def test_vectorized_elbo_family_runs(name):
    pair = PAIRS[name]
    model, guide = pair.build()
    x = pair.data()
    options = dict(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    losses = [
        Trace_ELBO(**options).loss(model.model, guide.guide, x),
        RenyiELBO(alpha=0, **options).loss(model.model, guide.guide, x),
    ]
    if name == "two_layer":
        # q(z2 | z1) is not mean-field, and Pyro rightly says so.
        with pytest.warns(UserWarning, match="mean field"):
            losses.append(TraceMeanField_ELBO(**options).loss(model.model, guide.guide, x))
    else:
        losses.append(TraceMeanField_ELBO(**options).loss(model.model, guide.guide, x))
    assert all(math.isfinite(loss) for loss in losses)


@pytest.mark.parametrize("name", PAIRS)
def test_sites_follow_device_and_float64(name, device):
    pair = PAIRS[name]
    model, guide = pair.build()
    model.to(device=device, dtype=torch.float64)
    guide.to(device=device, dtype=torch.float64)
    x = pair.data().to(device=device, dtype=torch.float64)
    guide_trace, model_trace = _traces(model, guide, x)
    prior_trace = poutine.trace(model.model).get_trace(x)  # latents drawn from the prior
    for trace in (guide_trace, model_trace, prior_trace):
        for site in _sample_sites(trace):
            value, fn = trace.nodes[site]["value"], trace.nodes[site]["fn"]
            for tensor in (value, fn.mean, fn.variance):
                assert tensor.dtype == torch.float64 and tensor.device.type == device.type
        log_prob = trace.log_prob_sum()
        assert log_prob.dtype == torch.float64 and torch.isfinite(log_prob)
    loss = Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1).loss(
        model.model, guide.guide, x
    )
    assert math.isfinite(loss)


@pytest.mark.parametrize("name", PAIRS)
def test_wrong_data_shape_is_a_readable_error(name):
    pair = PAIRS[name]
    model, guide = pair.build()
    x = pair.data()
    with pytest.raises(ValueError, match=r"expects data x of shape \(batch, \d+\)"):
        model.model(x[:, :-1])
    with pytest.raises(ValueError, match="expects data x of shape"):
        guide.guide(x.unsqueeze(0))


# ----------------------------------------------------------------------------------------
# Architectures: the paper networks are expressible, the conv nets fit any image shape.


def _linear_count(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _num_params(*modules: nn.Module) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


def test_iwae_one_layer_network_parameter_count():
    """Burda et al. (2016): 784-200-200-50 tanh, mirrored decoder."""
    decoder = BernoulliMLPDecoder(784, 50, (200, 200), "tanh")
    encoder = GaussianMLPEncoder(784, 50, (200, 200), "tanh")
    decoder_count = _linear_count(50, 200) + _linear_count(200, 200) + _linear_count(200, 784)
    encoder_count = (
        _linear_count(784, 200) + _linear_count(200, 200) + 2 * _linear_count(200, 50)
    )  # loc head and scale head
    assert _num_params(decoder) == decoder_count == 207_984
    assert _num_params(encoder) == encoder_count == 217_300
    assert sum(isinstance(m, nn.Tanh) for m in decoder.modules()) == 2
    assert sum(isinstance(m, nn.Tanh) for m in encoder.modules()) == 2


def test_iwae_two_layer_network_parameter_count():
    """Burda et al. (2016): 784-100-100-100(z1)-50-50-50(z2) tanh."""
    decoder = TwoLayerBernoulliDecoder(784)
    encoder = TwoLayerGaussianEncoder(784)
    decoder_count = (
        _linear_count(50, 50) + _linear_count(50, 50) + 2 * _linear_count(50, 100)  # p(z1|z2)
        + _linear_count(100, 100) + _linear_count(100, 100) + _linear_count(100, 784)  # p(x|z1)
    )  # fmt: skip
    encoder_count = (
        _linear_count(784, 100) + _linear_count(100, 100) + 2 * _linear_count(100, 100)
        + _linear_count(100, 50) + _linear_count(50, 50) + 2 * _linear_count(50, 50)
    )  # fmt: skip
    assert _num_params(decoder) == decoder_count
    assert _num_params(encoder) == encoder_count


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (1, 8, 8), (1, 28, 20), (3, 7, 5)])
def test_conv_nets_fit_image_shape_and_leading_dims(image_shape):
    x_dim = math.prod(image_shape)
    decoder = ConvBernoulliDecoder(image_shape, z_dim=4, channels=(4, 8), hidden=16)
    encoder = ConvGaussianEncoder(image_shape, z_dim=4, channels=(4, 8), hidden=16)
    z = torch.randn(2, 3, 4)
    logits = decoder(z)
    assert logits.shape == (2, 3, x_dim)
    torch.testing.assert_close(logits[1], decoder(z[1]))  # leading dims are only a batch
    x = _binary(3, x_dim)
    z_loc, z_scale = encoder(x)
    assert z_loc.shape == z_scale.shape == (3, 4) and bool((z_scale > 0).all())
    guide_trace, model_trace = _traces(decoder, encoder, x)
    assert torch.isfinite(model_trace.log_prob_sum() - guide_trace.log_prob_sum())


def test_conv_decoder_pixels_are_not_scrambled():
    """Only the top-left H x W of the transposed-conv output is kept, row-major."""
    decoder = ConvBernoulliDecoder((1, 7, 5), z_dim=3, channels=(4,), hidden=8)
    z = torch.randn(2, 3)
    full = decoder.net[:-2](z)  # before crop and flatten: (2, 1, 8, 6)
    assert full.shape == (2, 1, 8, 6)
    torch.testing.assert_close(decoder(z), full[:, :, :7, :5].reshape(2, 35))


def test_gaussian_decoder_mean_in_unit_interval_and_scale_floored():
    decoder = GaussianMLPDecoder(6, 2, (8,))
    with torch.no_grad():
        decoder.head.raw_scale.bias.fill_(-80.0)  # softplus underflows to 0
        loc, scale = decoder(100 * torch.randn(50, 2))
    assert bool(((loc >= 0) & (loc <= 1)).all())
    torch.testing.assert_close(scale, torch.full_like(scale, 1e-3))


# ----------------------------------------------------------------------------------------
# pyro_vae.nn


def test_mlp_layers_and_activation_table():
    net = mlp([5, 7, 3], "relu")
    assert [type(m) for m in net] == [nn.Linear, nn.ReLU, nn.Linear]
    assert [type(m) for m in mlp([5, 7], "elu", final_activation=True)] == [nn.Linear, nn.ELU]
    for name in ("tanh", "relu", "softplus", "elu", "sigmoid", "leaky_relu"):
        assert isinstance(mlp([2, 2, 2], name)[1], ACTIVATIONS[name])
    with pytest.raises(ValueError, match="unknown activation 'swish'.*choose one of:.*tanh"):
        mlp([2, 2], "swish")
    with pytest.raises(ValueError, match="at least an input and an output"):
        mlp([2])


def test_apply_flat_runs_conv_net_over_leading_dims():
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(-3))
    images = torch.randn(4, 5, 2, 6, 6)
    out = apply_flat(net, images, event_dim=3)
    assert out.shape == (4, 5, 3 * 36)
    torch.testing.assert_close(out[2, 3], net(images[2, 3].unsqueeze(0))[0])


# ----------------------------------------------------------------------------------------
# Linear-Gaussian: exact log p(x) and p(z | x) against independent computations.


def _linear_gaussian(x_dim: int, z_dim: int, noise_scale: float) -> LinearGaussianDecoder:
    decoder = LinearGaussianDecoder(x_dim, z_dim, noise_scale).double()
    with torch.no_grad():
        decoder.log_noise_scale.fill_(math.log(noise_scale))  # float64-exact, not float32
        decoder.linear.weight.normal_()  # correlated posterior on purpose
        decoder.linear.bias.normal_()
    return decoder


def test_exact_formulas_match_numerical_integration_in_one_dimension():
    decoder = LinearGaussianDecoder(1, 1, noise_scale=0.5).double()
    weight, bias, noise = 1.7, 0.3, 0.5
    with torch.no_grad():
        decoder.log_noise_scale.fill_(math.log(noise))  # float64-exact, not float32
        decoder.linear.weight.fill_(weight)
        decoder.linear.bias.fill_(bias)
    x = torch.tensor([[-1.0], [0.4], [2.5]], dtype=torch.float64)

    z = torch.linspace(-12, 12, 40_001, dtype=torch.float64)
    log_joint = (
        -0.5 * z**2
        - 0.5 * LOG_2PI
        - 0.5 * ((x - weight * z - bias) / noise) ** 2
        - math.log(noise)
        - 0.5 * LOG_2PI
    )  # (3, grid)
    joint = log_joint.exp()
    evidence = torch.trapezoid(joint, z)
    with torch.no_grad():
        torch.testing.assert_close(decoder.exact_log_marginal(x), evidence.log(), rtol=0, atol=1e-9)
        posterior = decoder.exact_posterior(x)
    density = joint / evidence[:, None]
    mean = torch.trapezoid(z * density, z)
    variance = torch.trapezoid((z - mean[:, None]) ** 2 * density, z)
    torch.testing.assert_close(posterior.mean[:, 0], mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(posterior.covariance_matrix[:, 0, 0], variance, rtol=0, atol=1e-9)
    near = z.abs() < 3
    torch.testing.assert_close(
        posterior.log_prob(z[near][:, None, None]).T,
        (log_joint - evidence.log()[:, None])[:, near],
        rtol=0,
        atol=1e-8,
    )


def test_exact_formulas_match_independent_numpy_formulas():
    decoder = _linear_gaussian(x_dim=6, z_dim=3, noise_scale=0.7)
    x = 2 * torch.randn(4, 6, dtype=torch.float64)
    weight = decoder.linear.weight.detach().numpy()
    bias = decoder.linear.bias.detach().numpy()
    x_np = x.numpy()

    covariance = weight @ weight.T + 0.7**2 * np.eye(6)
    residual = x_np - bias
    _, log_det = np.linalg.slogdet(covariance)
    mahalanobis = np.einsum("bi,bi->b", residual, np.linalg.solve(covariance, residual.T).T)
    log_marginal = -0.5 * (6 * np.log(2 * np.pi) + log_det + mahalanobis)
    # Gaussian conditioning on the joint of (z, x), rather than the precision form.
    posterior_mean = residual @ np.linalg.solve(covariance, weight)
    posterior_cov = np.eye(3) - weight.T @ np.linalg.solve(covariance, weight)

    with torch.no_grad():
        posterior = decoder.exact_posterior(x)
        np.testing.assert_allclose(decoder.exact_log_marginal(x).numpy(), log_marginal, atol=1e-10)
    np.testing.assert_allclose(posterior.mean.numpy(), posterior_mean, atol=1e-10)
    for covariance_b in posterior.covariance_matrix.numpy():
        np.testing.assert_allclose(covariance_b, posterior_cov, atol=1e-10)


def _log_weights(decoder, encoder, x: Tensor, z: Tensor) -> Tensor:
    """log p(x, z) - log q(z | x) for given z of shape (K, B, z_dim), from Pyro traces."""
    with pyro.plate("particles", z.shape[0], dim=-2):
        guide_trace = poutine.trace(poutine.condition(encoder.guide, {"z": z})).get_trace(x)
        model_trace = poutine.trace(poutine.condition(decoder.model, {"z": z})).get_trace(x)
    model_log_prob = sum(_site_log_probs(model_trace).values())
    return model_log_prob - _site_log_probs(guide_trace)["z"]


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_log_weight_is_log_marginal_for_every_z_at_exact_posterior(covariance):
    """log p(x, z) - log p(z | x) = log p(x) whatever z is; a mean-field q cannot do that."""
    decoder = _linear_gaussian(x_dim=4, z_dim=2, noise_scale=0.6)
    encoder = LinearGaussianEncoder(4, 2, covariance).double()
    encoder.set_to_exact_posterior(decoder)
    x = 2 * torch.randn(5, 4, dtype=torch.float64)
    z = 3 * torch.randn(200, 5, 2, dtype=torch.float64)  # far outside the posterior too
    with torch.no_grad():
        log_weights = _log_weights(decoder, encoder, x, z)
        log_marginal = decoder.exact_log_marginal(x)
    if covariance == "full":
        torch.testing.assert_close(log_weights, log_marginal.expand(200, 5), rtol=0, atol=1e-9)
    else:
        assert log_weights.std(0).min() > 0.1


def test_estimators_are_exact_at_exact_posterior():
    decoder = _linear_gaussian(x_dim=4, z_dim=2, noise_scale=0.6)
    encoder = LinearGaussianEncoder(4, 2, "full").double()
    encoder.set_to_exact_posterior(decoder)
    x = 2 * torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        neg_log_marginal = -decoder.exact_log_marginal(x).sum().item()
    options = dict(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    for elbo in (Trace_ELBO(**options), RenyiELBO(alpha=0, **options)):
        loss = elbo.loss(decoder.model, encoder.guide, x)
        assert loss == pytest.approx(neg_log_marginal, abs=1e-9)


def test_diagonal_exact_placement_is_the_mean_field_optimum():
    """KL(q || p(z|x)) has zero gradient in every guide parameter there, and is positive."""
    decoder = _linear_gaussian(x_dim=4, z_dim=3, noise_scale=0.6)
    x = 2 * torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        posterior = decoder.exact_posterior(x)
    kls = {}
    for covariance in ("diagonal", "full"):
        encoder = LinearGaussianEncoder(4, 3, covariance).double()
        encoder.set_to_exact_posterior(decoder)
        q_loc = encoder.linear(x)
        q = torch.distributions.MultivariateNormal(q_loc, scale_tril=encoder.scale_tril)
        kl = torch.distributions.kl_divergence(q, posterior).sum()
        kl.backward()
        for name, parameter in encoder.named_parameters():
            torch.testing.assert_close(
                parameter.grad, torch.zeros_like(parameter), rtol=0, atol=1e-9, msg=name
            )
        kls[covariance] = kl.item()
    assert kls["full"] == pytest.approx(0, abs=1e-10)
    assert kls["diagonal"] > 1e-2


def test_guide_placement_checks_dimensions():
    encoder = LinearGaussianEncoder(4, 2, "full")
    with pytest.raises(ValueError, match=r"decoder has \(x_dim, z_dim\) = \(5, 2\)"):
        encoder.set_to_exact_posterior(LinearGaussianDecoder(5, 2))
    with pytest.raises(ValueError, match="unknown covariance 'low_rank'"):
        LinearGaussianEncoder(4, 2, "low_rank")


def test_fixed_noise_is_a_buffer_not_a_parameter():
    decoder = LinearGaussianDecoder(3, 2, noise_scale=0.25, learn_noise=False)
    assert "log_noise_scale" not in dict(decoder.named_parameters())
    assert decoder.noise_scale.item() == pytest.approx(0.25)
    assert "log_noise_scale" in dict(LinearGaussianDecoder(3, 2).named_parameters())


# ----------------------------------------------------------------------------------------
# Gradients point downhill.


def test_one_adam_step_lowers_the_many_particle_loss():
    decoder = BernoulliMLPDecoder(20, 4, (32,))
    encoder = GaussianMLPEncoder(20, 4, (32,))
    x = _binary(32, 20)
    measure = Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)

    def loss() -> float:
        pyro.set_rng_seed(123)  # the same noise before and after: common random numbers
        return measure.loss(decoder.model, encoder.guide, x) / x.shape[0]

    before = loss()
    svi = SVI(
        decoder.model,
        encoder.guide,
        Adam({"lr": 1e-2}),
        Trace_ELBO(num_particles=10, vectorize_particles=True, max_plate_nesting=1),
    )
    svi.step(x)
    after = loss()
    assert after < before - 0.25, (before, after)
