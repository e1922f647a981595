"""Tests for the labelled networks: M2 (semi-supervised), the conditional VAE and the GMVAE.

Exact checks draw z with chosen reparameterization noise (`FixedNoise`): the guide's z is
``loc + scale * noise`` for a fixed ``noise``, still a differentiable function of the guide's
outputs, so an ELBO estimate becomes a deterministic number that a hand-written formula over
the same z must match, and sequential enumeration, which reruns the guide once per label,
sees the same z as parallel enumeration. Everything runs in float64 so that a tolerance of
1e-5 on losses of size ~50 is far above rounding error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn

from pyro_vae.guides import ConditionalEncoder, MixturePriorEncoder, SemiSupervisedEncoder
from pyro_vae.models import ConditionalDecoder, MixturePriorDecoder, SemiSupervisedDecoder
from pyro_vae.nn import broadcast_cat, labels_for_batch

X_DIM = 12
NUM_CLASSES = 3
Z_DIM = 2
HIDDEN = (8,)
BATCH = 5
NUM_PARTICLES = 3
LOG_2PI = math.log(2 * math.pi)


class FixedNoise(Messenger):
    """Set the latent site ``"z"`` to ``loc + scale * noise``: a reparameterized draw whose
    standard-normal noise is chosen by the test. ``noise`` broadcasts against the site's
    batch shape, e.g. ``(B, z_dim)``, or ``(P, B, z_dim)`` under vectorized particles."""

    def __init__(self, noise: Tensor) -> None:
        super().__init__()
        self.noise = noise

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] == "z" and not msg["is_observed"]:
            normal = msg["fn"].base_dist
            msg["value"] = normal.loc + normal.scale * self.noise


class LabelledPair(nn.Module):
    """The smallest pair: forwards the Pyro programs to its decoder and encoder."""

    def __init__(self, decoder: nn.Module, encoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self.encoder = encoder

    def model(self, *args: Tensor) -> None:
        self.decoder.model(*args)

    def guide(self, *args: Tensor) -> None:
        self.encoder.guide(*args)

    def model_classify(self, x: Tensor, y: Tensor) -> None:
        self.encoder.model_classify(x, y)

    def guide_classify(self, x: Tensor, y: Tensor) -> None:
        self.encoder.guide_classify(x, y)


def _normal_log_density(value: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """Hand-written diagonal Gaussian log density summed over the last dim."""
    return (-0.5 * ((value - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)


def _bernoulli_log_mass(value: Tensor, logits: Tensor) -> Tensor:
    """Hand-written Bernoulli(logits) log mass summed over the last dim."""
    return (value * logits - F.softplus(logits)).sum(-1)


def _data() -> tuple[Tensor, Tensor]:
    x = torch.bernoulli(torch.full((BATCH, X_DIM), 0.3, dtype=torch.float64))
    y = torch.tensor([0, 2, 1, 2, 0])
    return x, y


def _m2() -> LabelledPair:
    decoder = SemiSupervisedDecoder(X_DIM, NUM_CLASSES, Z_DIM, HIDDEN)
    return LabelledPair(decoder, SemiSupervisedEncoder(X_DIM, NUM_CLASSES, Z_DIM, HIDDEN)).double()


def _cvae() -> LabelledPair:
    decoder = ConditionalDecoder(X_DIM, NUM_CLASSES, Z_DIM, HIDDEN)
    return LabelledPair(decoder, ConditionalEncoder(X_DIM, NUM_CLASSES, Z_DIM, HIDDEN)).double()


def _gmvae() -> LabelledPair:
    decoder = MixturePriorDecoder(X_DIM, NUM_CLASSES, Z_DIM, HIDDEN)
    return LabelledPair(decoder, MixturePriorEncoder(X_DIM, NUM_CLASSES, Z_DIM, HIDDEN)).double()


@dataclass(frozen=True)
class Case:
    """A labelled pair, the arguments of its programs, whether its guide has a discrete site
    to enumerate, and the parameters its ELBO leaves out."""

    build: Callable[[], LabelledPair]
    args: Callable[[Tensor, Tensor], tuple[Tensor, ...]]
    enumerates: bool
    unused_prefixes: tuple[str, ...] = ()


CASES = {
    "m2-unlabelled": Case(_m2, lambda x, y: (x,), enumerates=True),
    # a labelled batch does not run the classifier: its loss is model_classify's
    "m2-labelled": Case(_m2, lambda x, y: (x, y), False, ("encoder.classifier.",)),
    "cvae": Case(_cvae, lambda x, y: (x, y), enumerates=False),
    "gmvae": Case(_gmvae, lambda x, y: (x,), enumerates=True),
}


def _enum_loss(
    pair, args, mode: str, noise: Tensor | None, enumerates: bool = True, **elbo_options
) -> Tensor:
    """TraceEnum_ELBO's loss with the guide enumerated; z from ``noise`` unless it is None.

    ``enumerates=False`` silences Pyro's warning that a guide has no discrete site (labelled
    M2 batches, the conditional VAE): one training loop can then use TraceEnum_ELBO for all.
    """
    guide = config_enumerate(pair.guide, mode)
    if noise is not None:
        guide = FixedNoise(noise)(guide)
    elbo = TraceEnum_ELBO(
        max_plate_nesting=1, strict_enumeration_warning=enumerates, **elbo_options
    )
    return elbo.differentiable_loss(pair.model, guide, *args)


def _gradients(pair: nn.Module, loss: Tensor) -> dict[str, Tensor | None]:
    names, params = zip(*pair.named_parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return dict(zip(names, grads))


@pytest.mark.parametrize("name", list(CASES))
def test_parallel_enumeration_matches_sequential(name):
    case = CASES[name]
    pair = case.build()
    x, y = _data()
    args = case.args(x, y)
    noise = torch.randn(BATCH, Z_DIM, dtype=torch.float64)

    parallel = _enum_loss(pair, args, "parallel", noise, case.enumerates)
    sequential = _enum_loss(pair, args, "sequential", noise, case.enumerates)
    assert torch.isfinite(parallel)
    assert parallel.item() == pytest.approx(sequential.item(), rel=1e-10)

    parallel_grads = _gradients(pair, parallel)
    sequential_grads = _gradients(pair, sequential)
    for param_name, grad in parallel_grads.items():
        if param_name.startswith(case.unused_prefixes):
            assert grad is None, param_name
            continue
        assert grad is not None and torch.isfinite(grad).all(), param_name
        assert grad.abs().sum() > 0, param_name
        torch.testing.assert_close(grad, sequential_grads[param_name], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", list(CASES))
def test_vectorized_particles_average_single_particles(name):
    case = CASES[name]
    pair = case.build()
    x, y = _data()
    args = case.args(x, y)
    noise = torch.randn(NUM_PARTICLES, BATCH, Z_DIM, dtype=torch.float64)

    particles = dict(num_particles=NUM_PARTICLES, vectorize_particles=True)
    vectorized = _enum_loss(pair, args, "parallel", noise, case.enumerates, **particles)
    one_by_one = (
        sum(_enum_loss(pair, args, "parallel", eps, case.enumerates) for eps in noise)
        / NUM_PARTICLES
    )
    assert vectorized.item() == pytest.approx(one_by_one.item(), rel=1e-10)

    # and with Pyro's own draws: enumeration dims and particle dims together
    loss = _enum_loss(pair, args, "parallel", None, case.enumerates, **particles)
    grads = _gradients(pair, loss)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)


def test_m2_unlabelled_elbo_is_the_sum_over_labels():
    """-loss = sum_b sum_y q(y|x)[log p(y) + log p(z_y) + log p(x|y,z_y) - log q(y|x)
    - log q(z_y|x,y)] with z_y = mu(x, y) + sigma(x, y) * noise, the same noise for every y."""
    pair = _m2()
    decoder, encoder = pair.decoder, pair.encoder
    x, _ = _data()
    noise = torch.randn(BATCH, Z_DIM, dtype=torch.float64)
    loss = _enum_loss(pair, (x,), "parallel", noise)

    log_q_y = encoder.class_logits(x).log_softmax(-1)
    elbo = x.new_zeros(())
    for label in range(NUM_CLASSES):
        y = F.one_hot(torch.full((BATCH,), label), NUM_CLASSES).double()
        z_loc, z_scale = encoder(x, y)
        z = z_loc + z_scale * noise
        log_weight = (
            -math.log(NUM_CLASSES)
            + _normal_log_density(z, torch.zeros_like(z), torch.ones_like(z))
            + _bernoulli_log_mass(x, decoder(z, y))
            - log_q_y[:, label]
            - _normal_log_density(z, z_loc, z_scale)
        )
        elbo = elbo + (log_q_y[:, label].exp() * log_weight).sum()
    assert (-loss).item() == pytest.approx(elbo.item(), abs=1e-5)


def test_m2_enumerated_label_site_is_one_hot():
    pair = _m2()
    x, _ = _data()
    guide = pyro.poutine.enum(config_enumerate(pair.guide, "parallel"), first_available_dim=-2)
    trace = pyro.poutine.trace(guide).get_trace(x)
    site = trace.nodes["y"]
    assert isinstance(site["fn"], pyro.distributions.OneHotCategorical)
    assert torch.equal(
        site["value"], torch.eye(NUM_CLASSES).double().reshape(NUM_CLASSES, 1, NUM_CLASSES)
    )
    assert trace.nodes["z"]["value"].shape == (NUM_CLASSES, BATCH, Z_DIM)


def test_m2_labelled_loss_same_for_indices_and_one_hot():
    pair = _m2()
    x, y = _data()
    y_one_hot = F.one_hot(y, NUM_CLASSES).double()
    losses = []
    for labels in (y, y_one_hot):
        pyro.set_rng_seed(1)
        losses.append(Trace_ELBO().loss(pair.model, pair.guide, x, labels))
    assert math.isfinite(losses[0])
    assert losses[0] == losses[1]

    # the model observes the one-hot label whichever encoding came in
    trace = pyro.poutine.trace(pair.model).get_trace(x, y)
    assert trace.nodes["y"]["is_observed"]
    assert torch.equal(trace.nodes["y"]["value"], y_one_hot)


def test_m2_labelled_elbo_by_hand():
    """-loss = sum_b [log p(y) + log p(z) + log p(x|y,z) - log q(z|x,y)], z from fixed noise."""
    pair = _m2()
    decoder, encoder = pair.decoder, pair.encoder
    x, y = _data()
    noise = torch.randn(BATCH, Z_DIM, dtype=torch.float64)
    loss = Trace_ELBO().differentiable_loss(pair.model, FixedNoise(noise)(pair.guide), x, y)

    y_one_hot = F.one_hot(y, NUM_CLASSES).double()
    z_loc, z_scale = encoder(x, y_one_hot)
    z = z_loc + z_scale * noise
    elbo = (
        -math.log(NUM_CLASSES)
        + _normal_log_density(z, torch.zeros_like(z), torch.ones_like(z))
        + _bernoulli_log_mass(x, decoder(z, y_one_hot))
        - _normal_log_density(z, z_loc, z_scale)
    ).sum()
    assert (-loss).item() == pytest.approx(elbo.item(), abs=1e-5)


def test_m2_classification_loss():
    """Trace_ELBO(model_classify, guide_classify) = -classify_weight * sum_b log q(y_b|x_b)."""
    pair = _m2()
    encoder = pair.encoder
    assert encoder.classify_weight == 50.0
    x, y = _data()
    expected = -50.0 * encoder.class_logits(x).log_softmax(-1)[torch.arange(BATCH), y].sum()
    for labels in (y, F.one_hot(y, NUM_CLASSES).double()):
        loss = Trace_ELBO().differentiable_loss(pair.model_classify, pair.guide_classify, x, labels)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-10)

    grads = _gradients(pair, loss)
    for param_name, grad in grads.items():
        # only the classifier q(y|x) is trained by this loss
        assert (grad is not None) == param_name.startswith("encoder.classifier."), param_name

    probs = encoder.classify(x)
    assert probs.shape == (BATCH, NUM_CLASSES)
    torch.testing.assert_close(probs.sum(-1), torch.ones(BATCH, dtype=torch.float64))
    torch.testing.assert_close(probs.log(), encoder.class_logits(x).log_softmax(-1))


def test_cvae_elbo_by_hand_and_decode():
    pair = _cvae()
    decoder, encoder = pair.decoder, pair.encoder
    x, y = _data()
    y_one_hot = F.one_hot(y, NUM_CLASSES).double()
    noise = torch.randn(BATCH, Z_DIM, dtype=torch.float64)
    losses = [
        Trace_ELBO().differentiable_loss(pair.model, FixedNoise(noise)(pair.guide), x, labels)
        for labels in (y, y_one_hot)
    ]
    z_loc, z_scale = encoder(x, y_one_hot)
    z = z_loc + z_scale * noise
    elbo = (
        _normal_log_density(z, torch.zeros_like(z), torch.ones_like(z))
        + _bernoulli_log_mass(x, decoder(z, y_one_hot))
        - _normal_log_density(z, z_loc, z_scale)
    ).sum()
    for loss in losses:
        assert (-loss).item() == pytest.approx(elbo.item(), abs=1e-5)

    # y is an input of the model, not a sample site
    trace = pyro.poutine.trace(pair.model).get_trace(x, y)
    assert [n for n, s in trace.nodes.items() if s["type"] == "sample"] == ["data", "z", "x"]

    # one label decodes many z; indices and one-hot agree with the network by hand
    z = torch.randn(4, Z_DIM, dtype=torch.float64)
    probs = decoder.decode(z, torch.tensor(2))
    by_hand = torch.sigmoid(decoder.net(torch.cat([z, z.new_tensor([0, 0, 1]).expand(4, 3)], -1)))
    torch.testing.assert_close(probs, by_hand)
    torch.testing.assert_close(decoder.decode(z, z.new_tensor([0.0, 0.0, 1.0])), by_hand)


def test_gmvae_enumerated_elbo_by_hand():
    """-loss = sum_b { sum_c q(c|x)[log p(c) + log p(z|c) - log q(c|x)]
    + log p(x|z) - log q(z|x) } with z = mu(x) + sigma(x) * noise."""
    pair = _gmvae()
    decoder, encoder = pair.decoder, pair.encoder
    x, _ = _data()
    noise = torch.randn(BATCH, Z_DIM, dtype=torch.float64)
    loss = _enum_loss(pair, (x,), "parallel", noise)

    z_loc, z_scale = encoder(x)
    z = z_loc + z_scale * noise
    log_q_c = encoder.component_logits(x).log_softmax(-1)
    scales = F.softplus(decoder.raw_prior_scales) + 1e-3
    log_p_z_given_c = torch.stack(
        [_normal_log_density(z, decoder.prior_locs[c], scales[c]) for c in range(NUM_CLASSES)],
        dim=-1,
    )
    discrete_part = (log_q_c.exp() * (-math.log(NUM_CLASSES) + log_p_z_given_c - log_q_c)).sum(-1)
    elbo = (
        discrete_part + _bernoulli_log_mass(x, decoder(z)) - _normal_log_density(z, z_loc, z_scale)
    ).sum()
    assert (-loss).item() == pytest.approx(elbo.item(), abs=1e-5)

    probs = encoder.cluster_probs(x)
    torch.testing.assert_close(probs, log_q_c.exp())
    assert (decoder.prior_scales > 0).all()
    # the components start apart, each with scale 1
    torch.testing.assert_close(decoder.prior_scales, torch.ones_like(scales))
    assert torch.pdist(decoder.prior_locs).min() > 0


def test_broadcast_cat_enumerated_label_with_data():
    x = torch.randn(BATCH, X_DIM)
    y = torch.eye(NUM_CLASSES).reshape(NUM_CLASSES, 1, NUM_CLASSES)
    joined = broadcast_cat([x, y])
    assert joined.shape == (NUM_CLASSES, BATCH, X_DIM + NUM_CLASSES)
    for k in range(NUM_CLASSES):
        for b in range(BATCH):
            assert torch.equal(joined[k, b], torch.cat([x[b], y[k, 0]]))

    # particles and enumeration together: (C, 1, 1, C) with (P, B, Z)
    z = torch.randn(NUM_PARTICLES, BATCH, Z_DIM)
    y = y.unsqueeze(1)
    joined = broadcast_cat([z, y])
    assert joined.shape == (NUM_CLASSES, NUM_PARTICLES, BATCH, Z_DIM + NUM_CLASSES)
    assert torch.equal(joined[2, 1, 4], torch.cat([z[1, 4], y[2, 0, 0]]))

    with pytest.raises(ValueError, match="do not broadcast"):
        broadcast_cat([torch.zeros(4, 2), torch.zeros(3, 2)])


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.tensor([0, 1]), r"int class indices of shape \(5,\)"),
        (torch.zeros(BATCH, 4), r"one-hot floats of shape \(5, 3\)"),
        (torch.tensor([0, 1, 2, 3, 0]), r"must lie in \[0, 3\)"),
        (torch.zeros(BATCH, dtype=torch.bool), "integer class indices or one-hot floats"),
    ],
)
def test_bad_labels_get_a_readable_error(labels, message):
    x, _ = _data()
    with pytest.raises(ValueError, match=message):
        labels_for_batch(labels, x, NUM_CLASSES, "SemiSupervisedDecoder")
    with pytest.raises(ValueError, match="ConditionalEncoder"):
        _cvae().encoder.guide(x, labels)
