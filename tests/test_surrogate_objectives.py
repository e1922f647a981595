"""STL, DReG and VIMCO against exact answers: the linear-Gaussian pair's exact posterior, the
IWAE gradient's expectation, and a small discrete model summed over every draw."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import cli
from pyro_vae.infer.compiled import CompiledSVI
from pyro_vae.infer.objectives import make_objective
from pyro_vae.infer.surrogate_elbos import STL_ELBO, VIMCO, IWAE_DReG
from pyro_vae.pairs import PAIRS, PairError


def linear_gaussian(exact=True, seed=0):
    """The builtin linear-Gaussian pair (z: 2 dims, x: 5), in float64; its guide set to the
    exact posterior, or to the exact posterior with its mean's weights perturbed (the
    covariance stays exact: where q's is far narrower than the posterior's, the path
    derivative of log q is the noisier term, and DReG loses its edge)."""
    torch.manual_seed(seed)
    pair = PAIRS["linear-gaussian"].factory((1, 1, 5), z_dim=2, covariance="full").double()
    with torch.no_grad():
        pair.decoder.linear.weight.normal_(0, 1)
    pair.encoder.set_to_exact_posterior(pair.decoder)
    if not exact:
        with torch.no_grad():
            for param in pair.encoder.linear.parameters():
                param.add_(0.1 * torch.randn_like(param))
    return pair, torch.randn(6, 5, dtype=torch.float64)


def gradient_draws(elbo, pair, x, num_draws, guide=None):
    """(encoder draws, decoder draws), each (num_draws, P), of ``elbo``'s gradient."""
    encoder, decoder = [], []
    for _ in range(num_draws):
        pair.zero_grad()
        elbo.loss_and_grads(pair.model, guide or pair.guide, x)
        encoder.append(torch.cat([p.grad.flatten() for p in pair.encoder.parameters()]))
        decoder.append(torch.cat([p.grad.flatten() for p in pair.decoder.parameters()]))
    return torch.stack(encoder), torch.stack(decoder)


@pytest.mark.parametrize("name, num_particles", [("stl", 1), ("stl", 3), ("iwae-dreg", 4)])
def test_stopped_guide_gradient_has_zero_variance_at_the_exact_posterior(name, num_particles):
    """q = p(z|x): log w = log p(x) for every z, and with q's parameters stopped nothing is
    left to vary; the reparameterized gradient of the same bound keeps the score term."""
    pair, x = linear_gaussian()
    pyro.set_rng_seed(0)
    stopped, _ = gradient_draws(make_objective(name, num_particles), pair, x, 20)
    plain = "elbo" if name == "stl" else "iwae"
    reparameterized, _ = gradient_draws(make_objective(plain, num_particles), pair, x, 20)
    assert stopped.var(0).max().item() < 1e-20
    assert reparameterized.var(0).mean().item() > 1e-2


def test_dreg_has_the_iwae_gradients_expectation_and_less_guide_variance():
    """Away from the posterior: the decoder's gradient is IWAE's on every draw; the
    encoder's has IWAE's expectation (every coordinate within 4.5 standard errors of the
    difference; 300 draws, each over 10 copies of the 6 points) with a lower variance."""
    pair, x = linear_gaussian(exact=False)
    x = x.repeat(10, 1)
    pyro.set_rng_seed(1)
    iwae_enc, iwae_dec = gradient_draws(make_objective("iwae", 4), pair, x, 300)
    pyro.set_rng_seed(1)
    dreg_enc, dreg_dec = gradient_draws(make_objective("iwae-dreg", 4), pair, x, 300)
    torch.testing.assert_close(dreg_dec, iwae_dec)  # the same draws, the same estimator
    error = (iwae_enc.var(0) / 300 + dreg_enc.var(0) / 300).sqrt()
    moving = error > 0  # the scale's fixed upper triangle gets no gradient from either
    torch.testing.assert_close(dreg_enc[:, ~moving], iwae_enc[:, ~moving])
    z = (dreg_enc.mean(0) - iwae_enc.mean(0)).abs()[moving] / error[moving]
    assert z.max().item() < 4.5, z
    assert dreg_enc.var(0).sum() < 0.5 * iwae_enc.var(0).sum()


class TinyBinary(nn.Module):
    """Two binary latents, three Gaussian observations: a model whose IWAE bound's
    expectation can be summed over every draw of K particles."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.prior_logits = nn.Parameter(torch.tensor([0.3, -0.5], dtype=torch.float64))
        self.weight = nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
        self.encoder = nn.Linear(3, 2).double()

    def model(self, x):
        pyro.module("tiny", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(logits=self.prior_logits).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.weight.T, 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("tiny", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=self.encoder(x)).to_event(1))

    def exact_bound(self, x, num_particles):
        """E_q[log (1/K) sum_k w_k] summed over points, as a sum over all 4^K draws."""
        states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2)), dtype=x.dtype)
        prior = dist.Bernoulli(logits=self.prior_logits).log_prob(states).sum(-1)  # (4,)
        like = dist.Normal(states @ self.weight.T, 1.0).log_prob(x.unsqueeze(1)).sum(-1)
        q = dist.Bernoulli(logits=self.encoder(x).unsqueeze(1)).log_prob(states).sum(-1)
        log_w = prior + like - q  # (N, 4)
        total = 0.0
        for draw in itertools.product(range(4), repeat=num_particles):
            index = list(draw)
            bound = torch.logsumexp(log_w[:, index], -1) - math.log(num_particles)
            total = total + (q[:, index].sum(-1).exp() * bound).sum()
        return total


def test_vimco_is_unbiased_on_a_discrete_model_summed_exhaustively():
    """The exact gradient of E[L_3], every parameter of model and guide, against the mean of
    VIMCO's draws: within 4.5 standard errors per coordinate. Its loss is -L_K on average."""
    pair = TinyBinary()
    x = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.2, -0.3]], dtype=torch.float64)
    params = list(pair.parameters())
    exact = pair.exact_bound(x, 3)
    wanted = torch.cat([g.flatten() for g in torch.autograd.grad(exact, params)])
    repeats, calls = 400, 60  # each call: 400 independent copies of the 2 points
    batch = x.repeat(repeats, 1)
    elbo = VIMCO(num_particles=3)
    pyro.set_rng_seed(4)
    draws, losses = [], []
    for _ in range(calls):
        pair.zero_grad()
        losses.append(elbo.loss_and_grads(pair.model, pair.guide, batch) / repeats)
        draws.append(torch.cat([p.grad.flatten() for p in params]) / repeats)
    draws = torch.stack(draws)
    z = (draws.mean(0) + wanted).abs() / (draws.std(0) / math.sqrt(calls))  # grads of -L
    assert z.max().item() < 4.5, (draws.mean(0), -wanted)
    loss_error = torch.tensor(losses).std().item() / math.sqrt(calls)
    assert sum(losses) / calls == pytest.approx(-exact.item(), abs=4.5 * loss_error)


def test_a_compiled_dreg_step_follows_the_eager_one():
    """The traced graph of the DReG surrogate (hooks included), run as it is, steps as SVI
    with IWAE_DReG does, step for step."""
    pair, x = linear_gaussian(exact=False)
    start = {k: v.clone() for k, v in pair.state_dict().items()}
    results = []
    for mode in ("eager", "graph"):
        pyro.clear_param_store()
        pair.load_state_dict(start)
        optimizer = pyro.optim.Adam({"lr": 1e-2})
        svi = pyro.infer.SVI(pair.model, pair.guide, optimizer, loss=IWAE_DReG(num_particles=3))
        if mode == "graph":
            svi = CompiledSVI(pair.model, pair.guide, optimizer, objective="iwae-dreg",
                              num_particles=3, modules=[pair], eager=svi,
                              compiler=None)  # fmt: skip
        pyro.set_rng_seed(5)
        losses = [svi.step(x) for _ in range(4)]
        results.append((losses, [p.detach().clone() for p in pair.parameters()]))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-9)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b)


encoder = nn.Linear(5, 4).double()  # a network the guide registers with pyro.module only


def function_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        loc = z.sum(-1, keepdim=True).expand(z.shape[:-1] + x.shape[-1:])
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def function_guide(x):
    pyro.module("encoder", encoder)
    with pyro.plate("data", x.shape[0]):
        loc, log_scale = encoder(x).chunk(2, -1)
        pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_guides_the_objectives_cannot_train_are_refused_by_site():
    x = torch.randn(4, 5, dtype=torch.float64)
    pyro.clear_param_store()
    with pytest.raises(PairError, match="could not all be stopped: site 'z'.*modules="):
        STL_ELBO().loss(function_model, function_guide, x)
    # told the networks, it trains
    assert math.isfinite(STL_ELBO(modules=[encoder]).loss(function_model, function_guide, x))
    # on a batch with no score-function site VIMCO is the IWAE bound (training refuses such
    # a guide on its probe batch: the CLI test below)
    pyro.set_rng_seed(0)
    vimco = VIMCO(num_particles=2).loss(function_model, function_guide, x)
    pyro.set_rng_seed(0)
    iwae = make_objective("iwae", 2).loss(function_model, function_guide, x)
    assert vimco == pytest.approx(iwae, rel=1e-9)
    pair = TinyBinary()
    with pytest.raises(PairError, match="stl: guide site 'z' \\(Independent\\) is not reparam"):
        STL_ELBO().loss(pair.model, pair.guide, x[:, :3])
    with pytest.raises(PairError, match="iwae-dreg: guide site 'z'.*--objective vimco"):
        IWAE_DReG(num_particles=2).loss(pair.model, pair.guide, x[:, :3])


@pytest.mark.parametrize("args, expected", [
    (["--objective", "vimco", "--num-particles", "1", "--pair", "sbn"],
     "--objective vimco needs --num-particles >= 2"),
    (["--objective", "stl", "--pair", "sbn"], "guide site 'z' (Independent) is not reparam"),
    (["--objective", "vimco", "--num-particles", "3"], "every latent site of the guide is rep"),
    (["--objective", "iwae-dreg", "--score-function"], "--score-function cannot train with"),
])  # fmt: skip
def test_the_cli_refuses_a_pair_an_objective_cannot_train(tmp_path, monkeypatch, capsys, args,
                                                          expected):  # fmt: skip
    monkeypatch.setattr("pyro_vae.cli.signal.signal", lambda *a: None)  # pytest's SIGTERM
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "digits", "--train-limit", "100", "--epochs", "1", *args,
            "--out", "r"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-vae train: error: ") and expected in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("args", [
    ["--objective", "stl"],
    ["--objective", "iwae-dreg", "--num-particles", "4"],
    ["--objective", "vimco", "--num-particles", "4", "--pair", "sbn", "--pair-kwargs",
     '{"z_dim": 10}', "--binarize", "static"],
    # M2: y is sampled on unlabelled batches only; a labelled batch is the IWAE bound
    ["--objective", "vimco", "--num-particles", "2", "--pair", "ss-m2", "--num-labelled", "50"],
])  # fmt: skip
def test_each_objective_trains_from_the_cli(tmp_path, monkeypatch, args):
    monkeypatch.setattr("pyro_vae.cli.signal.signal", lambda *a: None)
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "digits", "--train-limit", "200", "--epochs", "2",
            "--batch-size", "50", "--no-progress", *args, "--out", "r"]  # fmt: skip
    assert cli.main(argv) == 0
    config = (tmp_path / "r" / "config.toml").read_text()
    assert f'objective = "{args[1]}"' in config
    rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3
