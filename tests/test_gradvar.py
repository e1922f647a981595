"""Gradient variance and SNR of estimators (pyro_vae.analysis.gradvar) and `pyro-vae gradvar`."""

import inspect
import json
import math
import os

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroParam
from torch import nn

import pyro_vae
from pyro_vae.analysis.gradvar import (
    DEFAULT_BASELINE_LR,
    DEFAULT_NUM_PARTICLES,
    GradientVariance,
    format_table,
    gradient_draws,
    gradient_statistics,
    gradient_variance,
    pair_parameters,
)
from pyro_vae.analysis.snr_k import SNRAgainstK, snr_against_k
from pyro_vae.infer.gradients import GRADIENT_ESTIMATORS
from pyro_vae.pairs import PAIRS
from pyro_vae.runs.config import ConfigError, TrainConfig
from pyro_vae.runs.reopen import load_run
from pyro_vae.training.train import train


def test_gradient_statistics_exact_answers():
    draws = torch.tensor([[1.0, 2.0, 0.0], [3.0, 2.0, 0.0], [5.0, 2.0, 0.0]])
    stats = gradient_statistics(draws)
    # per coordinate: mean (3, 2, 0), unbiased variance (4, 0, 0); std-0 coordinates are
    # left out of the SNR: |3| / 2
    assert stats["variance"] == pytest.approx(4 / 3)
    assert stats["snr"] == pytest.approx(1.5)
    assert stats["mean_norm"] == pytest.approx(math.sqrt(13))
    assert stats["size"] == 3
    assert gradient_statistics(torch.ones(4, 2))["snr"] is None
    with pytest.raises(ConfigError, match="--num-draws"):
        gradient_statistics(torch.ones(1, 2))


def test_gradient_draws_read_grads_without_changing_params():
    """A guide q(z) = N(mu, 1), model p(z) = N(0, 1), no data term: the loss is
    E_q[log q(z) - log p(z)], and its reparameterized draw is d/dmu = z = mu + eps, so the
    draws have mean mu and variance 1 (each within 4.5 standard errors)."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))

    def guide(x):
        pyro.param("unused", torch.ones(2))
        mu = pyro.param("mu", torch.tensor(0.5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(mu.expand(x.shape[0]), 1.0))

    x = torch.zeros(1, 1)
    found = pair_parameters(model, guide, x)
    assert {name: entry["part"] for name, entry in found.items()} == {
        "unused": "encoder", "mu": "encoder"
    }  # fmt: skip
    params = [found["mu"]["param"], found["unused"]["param"]]
    num_draws = 1000
    draws = gradient_draws(model, guide, x, pyro.infer.Trace_ELBO(), params, num_draws)
    assert draws.shape == (num_draws, 3)
    assert torch.equal(draws[:, 1:], torch.zeros(num_draws, 2))  # never differentiated
    assert pyro.param("mu").item() == 0.5 and params[0].grad is None
    stderr = 1 / math.sqrt(num_draws)
    assert draws[:, 0].mean().item() == pytest.approx(0.5, abs=4.5 * stderr)
    assert draws[:, 0].var().item() == pytest.approx(1.0, abs=4.5 * math.sqrt(2) * stderr)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny digits run trained by the score function with a neural baseline, so its
    checkpoint also holds baseline parameters that gradvar must leave aside."""
    out = tmp_path_factory.mktemp("gradvar") / "run"
    config = TrainConfig(
        dataset="digits", pair="mlp", pair_kwargs={"hidden": [16], "z_dim": 2},
        epochs=1, batch_size=50, train_limit=100, device="cpu", out=str(out),
        objective="tracegraph", score_function=True, baseline="nn",
    )  # fmt: skip
    train(config)
    return out


def test_gradient_variance_of_a_run(run_dir, tmp_path):
    out = tmp_path / "out"
    result = gradient_variance(
        run_dir, num_draws=30, batch_size=20, baseline_steps=60, out=out, progress=False
    )
    # every row but vimco, which needs a guide site that is not reparameterized
    assert list(result["estimators"]) == [name for name in GRADIENT_ESTIMATORS if name != "vimco"]
    assert any(note.startswith("vimco skipped: every guide site") for note in result["notes"])
    particles = {name: s["num_particles"] for name, s in result["estimators"].items()}
    assert particles == {**dict.fromkeys(particles, 1), "iwae": DEFAULT_NUM_PARTICLES,
                         "iwae-dreg": DEFAULT_NUM_PARTICLES}  # fmt: skip
    assert result["num_draws"] == 30 and result["batch_size"] == 20 and result["split"] == "train"
    # mlp hidden [16], z 2 on 64 pixels: encoder 64*16+16 + 16*4+4, decoder 2*16+16 + 16*64+64
    assert result["num_parameters"] == (64 * 16 + 16 + 16 * 4 + 4) + (2 * 16 + 16 + 16 * 64 + 64)
    for name, summary in result["estimators"].items():
        assert summary["variance"] > 0 and summary["snr"] > 0 and summary["seconds"] > 0
        assert set(summary["parts"]) == {"encoder", "decoder"}
        sizes = [group["size"] for group in summary["groups"].values()]
        assert sum(sizes) == result["num_parameters"], name
        assert not any(n.startswith("baseline") for n in summary["groups"])
        # the overall variance is the size-weighted mean of the parts'
        parts = summary["parts"].values()
        weighted = sum(p["variance"] * p["size"] for p in parts) / result["num_parameters"]
        assert summary["variance"] == pytest.approx(weighted, rel=1e-9)
    encoder = {name: s["parts"]["encoder"]["variance"] for name, s in result["estimators"].items()}
    assert encoder["reparam"] < encoder["score"]
    # warmed-up baselines remove most of the score function's noise (measured: ~1000x)
    assert encoder["score+avg"] < 0.1 * encoder["score"]
    assert encoder["score+nn"] < 0.1 * encoder["score"]
    # the decoder's gradient does not go through the sample: same law under both estimators
    decoder = {name: s["parts"]["decoder"]["variance"] for name, s in result["estimators"].items()}
    assert 0.5 < decoder["score"] / decoder["reparam"] < 2
    # STL and DReG change only the guide's gradient: same z (same seed), same decoder draws
    assert decoder["stl"] == pytest.approx(decoder["reparam"], rel=1e-6)
    assert decoder["iwae-dreg"] == pytest.approx(decoder["iwae"], rel=1e-6)
    saved = json.loads((out / "gradvar.json").read_text())
    assert saved["estimators"]["score"]["groups"] == result["estimators"]["score"]["groups"]
    assert (out / "gradvar.png").read_bytes()[:4] == b"\x89PNG"
    assert "reparam" in format_table(result) and "enc. var" in format_table(result)
    # seeded: the same call gives the same numbers
    again = gradient_variance(
        run_dir, estimators=["score"], num_draws=30, batch_size=20, save=False, progress=False
    )
    assert again["estimators"]["score"]["variance"] == result["estimators"]["score"]["variance"]


def test_unknown_estimators_and_bad_counts_are_refused(run_dir):
    with pytest.raises(ConfigError, match="reparam, score, score\\+avg, score\\+nn"):
        gradient_variance(run_dir, estimators=["reinforce"], save=False)
    with pytest.raises(ConfigError, match="--num-draws"):
        gradient_variance(run_dir, num_draws=1, save=False)
    with pytest.raises(ConfigError, match="--num-particles must be >= 1"):
        gradient_variance(run_dir, num_particles=0, save=False)
    # a row asked for alone that cannot run on the pair: the reason, not an empty table
    with pytest.raises(ConfigError, match="vimco: every guide site is reparameterized"):
        gradient_variance(run_dir, estimators=["vimco"], save=False)


def test_pair_parameters_splits_encoder_and_decoder():
    from pyro_vae.pairs import PAIRS

    pair = PAIRS["mlp"].factory((1, 8, 8), hidden=[16], z_dim=2)
    found = pair_parameters(pair.model, pair.guide, torch.zeros(3, 64))
    parts = {name.split("$$$")[0]: entry["part"] for name, entry in found.items()}
    assert parts == {"encoder": "encoder", "decoder": "decoder"}


def test_cli_gradvar_json(run_cli, run_dir, tmp_path):
    out = tmp_path / "cli"
    done = run_cli(
        "gradvar", str(run_dir), "--estimators", "reparam,score", "--num-draws", "10",
        "--batch-size", "10", "--out", str(out), "--json", "--no-progress",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # exactly one JSON object on stdout
    assert set(result["estimators"]) == {"reparam", "score"}
    for summary in result["estimators"].values():
        assert {"variance", "snr", "seconds", "parts"} <= set(summary)
    assert (out / "gradvar.json").is_file() and (out / "gradvar.png").is_file()
    done = run_cli("gradvar", str(run_dir), "--estimators", "reparam,bogus", "--json",
                   cwd=tmp_path, check=False)  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert "bogus" in done.stderr and "score+avg" in done.stderr
    done = run_cli(
        "gradvar", str(run_dir), "--snr-vs-k", "--ks", "1,3", "--num-draws", "5",
        "--batch-size", "10", "--out", str(out), "--json", "--no-progress",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ks"] == [1, 3] and list(result["estimators"]) == ["iwae", "iwae-dreg"]
    assert (out / "gradvar_snr_k.json").is_file() and (out / "gradvar_snr_k.png").is_file()


# ------------------------------------------------------------------------------------------
# on the objects a user holds; parameters that belong to the pair, not to Pyro's param store


class TutorialPair:
    """A pair written the tutorial way: a plain object holding two networks, each registered
    by pyro.module in the program that uses it; beta scales the latent site (a beta-VAE)."""

    def __init__(self, x_dim=64, z_dim=2, hidden=16, beta=1.0):
        self.z_dim = z_dim
        self.beta = beta
        self.encoder = nn.Sequential(
            nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * z_dim)
        )
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1)
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", prior)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_log_scale = self.encoder(x).chunk(2, dim=-1)
            with poutine.scale(scale=self.beta):
                pyro.sample("z", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))


#: A user's pair file that is a script: no main guard, so every import builds and trains an
#: instance, whose tensors the param store then holds under the pair's own names.
UNGUARDED_SCRIPT = """\
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn


{source}

vae = TutorialPair()
svi = SVI(vae.model, vae.guide, Adam({{"lr": 0.01}}), Trace_ELBO())
data = torch.bernoulli(torch.full((20, 64), 0.3))
for _ in range(2):
    svi.step(data)
"""

FAST = dict(estimators=["reparam", "score"], num_draws=5, batch_size=20, baseline_steps=0,
            progress=False)  # fmt: skip


def variances(result) -> dict[str, float]:
    return {name: summary["variance"] for name, summary in result["estimators"].items()}


def registered(pair, x) -> None:
    """Run both programs once, as an SVI step would: their modules go into the param store."""
    with torch.no_grad(), poutine.trace(param_only=True):
        pair.guide(x)
        pair.model(x)


def touched(path) -> None:
    """Move the file's modification time on, so that the next reopening imports it again."""
    status = os.stat(path)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))


@pytest.fixture(scope="module")
def binary_points():
    """20 binarized training digits (64 pixels)."""
    data = pyro_vae.load_dataset("digits")
    return torch.bernoulli(data.train[:20], generator=torch.Generator().manual_seed(1))


def test_an_unguarded_pair_script_is_differentiated_through_its_own_modules(tmp_path):
    """Reopening the run imports the script again: its throwaway instance fills the param
    store under the pair's names. The gradient w.r.t. the store's tensors was exactly zero
    (variance 0 for every estimator, exit 0); the store is now cleared once the pair is built
    (pyro_vae.runs.reopen.make_pair) and the parameters are the pair's own, so the reopened
    run gives the numbers of the same pair on a clean store."""
    path = tmp_path / "tutorial_script.py"
    path.write_text(UNGUARDED_SCRIPT.format(source=inspect.getsource(TutorialPair)))
    run_dir = tmp_path / "run"
    config = TrainConfig(dataset="digits", epochs=1, train_limit=100, device="cpu",
                         pair=f"{path}:TutorialPair", out=str(run_dir))  # fmt: skip
    train(config, progress=False)
    touched(path)
    result = gradient_variance(run_dir, save=False, **FAST)
    for name, variance in variances(result).items():
        assert 0 < variance < math.inf, name
    # the same pair (the same import, the same seed) on a store that holds only its own
    touched(path)
    run = load_run(run_dir)
    pyro.clear_param_store()
    x = run.split("train")[:20]
    registered(run.pair, x)
    clean = gradient_variance(run.pair, x, **FAST)
    assert not any("stale" in note for note in clean["notes"])
    assert clean["num_parameters"] == result["num_parameters"]
    for name, summary in result["estimators"].items():
        assert summary["variance"] == pytest.approx(clean["estimators"][name]["variance"])
        assert summary["groups"].keys() == clean["estimators"][name]["groups"].keys()


def test_a_twin_registered_first_does_not_stand_in_for_the_pair(binary_points):
    """The stale store built by hand: twin A registered, then twin B analysed. B's numbers
    are B's alone; its parameters are its own tensors, named as pyro.module names them."""
    x = binary_points
    pyro.set_rng_seed(1)
    first, second = TutorialPair(), TutorialPair()
    pyro.clear_param_store()
    registered(first, x)
    stale = gradient_variance(second, x, **FAST)
    assert any("'encoder$$$0.weight'" in note for note in stale["notes"])
    found = pair_parameters(second.model, second.guide, x, [second.encoder, second.decoder])
    assert found["decoder$$$2.bias"]["param"] is second.decoder[2].bias
    assert found["decoder$$$2.bias"]["stale"] and found["encoder$$$0.weight"]["part"] == "encoder"
    assert {entry["part"] for name, entry in found.items() if name.startswith("decoder")} == {
        "decoder"
    }  # fmt: skip
    pyro.clear_param_store()
    alone = gradient_variance(second, x, **FAST)
    assert variances(stale) == variances(alone) and min(variances(alone).values()) > 0
    assert stale["estimators"]["score"]["groups"] == alone["estimators"]["score"]["groups"]


def test_two_pairs_with_the_same_parameter_names_keep_their_own_numbers(binary_points):
    """A notebook's beta=1 and beta=4 twins of one class share every parameter name; each,
    analysed after the other in one process, gives its own numbers (those it gives alone)."""
    x = binary_points
    pyro.set_rng_seed(2)
    plain, beta4 = TutorialPair(beta=1.0), TutorialPair(beta=4.0)
    alone = {}
    for name, pair in (("plain", plain), ("beta4", beta4)):
        pyro.clear_param_store()
        alone[name] = variances(gradient_variance(pair, x, **FAST))
    assert alone["plain"] != alone["beta4"]  # different weights, different gradients
    pyro.clear_param_store()
    together = {}
    for name, pair in (("plain", plain), ("beta4", beta4), ("plain", plain)):
        together[name] = gradient_variance(pair, x, **FAST)
        assert variances(together[name]) == alone[name], name
    assert together["beta4"]["scaled_sites"] == ["z"] and together["plain"]["scaled_sites"] == []


def test_a_function_pair_trained_by_svi(binary_points):
    """Plain model/guide functions whose parameters are pyro.params in the store: those are
    what the programs read. A parameter the programs never compute with is named in a note."""

    def model(x):
        weight = pyro.param("weight", torch.zeros(2, 64))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z @ weight).to_event(1), obs=x)

    def guide(x):
        pyro.param("unused", torch.ones(3))
        projection = pyro.param("projection", torch.zeros(64, 2))
        z_scale = pyro.param("z_scale", torch.ones(2), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ projection, z_scale).to_event(1))

    x = binary_points
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO())
    for _ in range(5):
        svi.step(x)
    result = gradient_variance(model, x, guide=guide, **FAST)
    groups = result["estimators"]["reparam"]["groups"]
    assert set(groups) == {"unused", "projection", "z_scale", "weight"}
    assert result["num_parameters"] == 3 + 64 * 2 + 2 + 2 * 64
    assert groups["unused"]["variance"] == 0 and groups["projection"]["variance"] > 0
    assert any("'unused'" in note and "exactly zero" in note for note in result["notes"])
    assert (result["split"], result["epoch"], result["checkpoint"]) == (None, None, None)
    assert "gradient variance on 20 x points" in result.summary()
    # the same in the order the tuple gives, and with the same seed the same numbers
    assert variances(gradient_variance((model, guide), x, **FAST)) == variances(result)


class PyroModulePair(PyroModule):
    """A pair as a PyroModule: layers that register their parameters by their dotted names
    when called, and a constrained PyroParam read by the model outside any layer call."""

    def __init__(self, x_dim=64, z_dim=2):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = PyroModule[nn.Linear](x_dim, 2 * z_dim)
        self.decoder = PyroModule[nn.Linear](z_dim, x_dim)
        self.prior_scale = PyroParam(torch.ones(z_dim), constraint=dist.constraints.positive)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(x.shape[0], self.z_dim), self.prior_scale)
            z = pyro.sample("z", prior.to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            z_loc, z_log_scale = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))


def test_a_pyro_module_pair(binary_points):
    """Every tensor the PyroModule computes with is differentiated: its layers' (traced by
    dotted name) and the PyroParam the model reads (untraced: found through the module,
    a decoder parameter since only the model reaches it). A twin registered first changes
    nothing."""
    x = binary_points
    pyro.set_rng_seed(3)
    first, pair = PyroModulePair(), PyroModulePair()
    result = gradient_variance(pair, x, **FAST)
    groups = result["estimators"]["reparam"]["groups"]
    assert set(groups) == {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias",
                           "prior_scale_unconstrained"}  # fmt: skip
    assert result["num_parameters"] == sum(p.numel() for p in pair.parameters())
    assert all(group["variance"] > 0 for group in groups.values())
    found = pair_parameters(pair.model, pair.guide, x, {"": pair})
    parts = {name: entry["part"] for name, entry in found.items()}
    assert parts["encoder.weight"] == "encoder" and parts["decoder.bias"] == "decoder"
    assert parts["prior_scale_unconstrained"] == "decoder"
    pyro.clear_param_store()
    registered(first, x)
    after_twin = gradient_variance(pair, x, **FAST)
    assert variances(after_twin) == variances(result)
    assert any("stale same-named tensor" in note for note in after_twin["notes"])


class UnregisteredPair:
    """Networks the programs use without registering them: Pyro's ELBO never differentiates
    a program that traces no param site."""

    def __init__(self):
        self.encoder = nn.Linear(64, 4)
        self.decoder = nn.Linear(2, 64)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            z_loc, z_log_scale = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))


def test_a_gradient_that_is_zero_on_every_draw_is_refused(binary_points, monkeypatch):
    with pytest.raises(ConfigError, match="exactly zero on all 5 draws") as refused:
        gradient_variance(UnregisteredPair(), binary_points, **FAST)
    assert "stale same-named entry" in str(refused.value)
    assert "pyro.module(name, network)" in str(refused.value)
    # the same wherever the zeros come from: draws that never see a gradient
    import pyro_vae.analysis.gradvar as gradvar

    monkeypatch.setattr(gradvar, "gradient_draws", lambda *args, **kwargs: torch.zeros(5, 3))
    with pytest.raises(ConfigError, match="estimator reparam: the gradient w.r.t. every one"):
        gradient_variance(TutorialPair(), binary_points, **FAST)


def test_a_pair_in_memory_gives_the_numbers_of_its_run_directory(run_dir, tmp_path):
    settings = dict(estimators=["reparam", "score+avg", "score+nn"], num_draws=5,
                    batch_size=20, baseline_steps=5, progress=False)  # fmt: skip
    from_dir = gradient_variance(run_dir, save=False, **settings)
    assert isinstance(from_dir, GradientVariance) and from_dir["split"] == "train"
    run = load_run(run_dir)
    in_memory = gradient_variance(run.pair, run.split("train")[:20], **settings)
    assert in_memory["split"] is None and in_memory["epoch"] is None
    # an in-memory pair takes TrainConfig's baseline settings, here the run's too
    for key in ("baseline_lr", "baseline_hidden", "baseline_beta", "num_parameters"):
        assert in_memory[key] == from_dir[key], key
    assert in_memory["baseline_lr"] == DEFAULT_BASELINE_LR
    for name, summary in from_dir["estimators"].items():
        other = in_memory["estimators"][name]
        for key in ("variance", "snr", "mean_norm"):
            assert other[key] == summary[key], (name, key)
        assert other["parts"] == summary["parts"] and other["groups"] == summary["groups"]
    # the result prints, converts and draws itself
    assert in_memory.summary() == format_table(in_memory) and "score+nn" in str(in_memory)
    plain = in_memory.to_dict()
    assert json.loads(json.dumps(plain)) == plain and "groups" in plain["estimators"]["reparam"]
    assert in_memory.plot(tmp_path).read_bytes()[:4] == b"\x89PNG"
    assert in_memory.plot(tmp_path / "g.png") == tmp_path / "g.png"
    with pytest.raises(ConfigError, match="Pass out=FOLDER"):
        gradient_variance(run.pair, run.split("train")[:20], save=True, **settings)
    gradient_variance(run.pair, run.split("train")[:20], out=tmp_path / "out", save=True,
                      **settings)  # fmt: skip
    assert (tmp_path / "out" / "gradvar.json").is_file()
    assert (tmp_path / "out" / "gradvar.png").is_file()


# ------------------------------------------------------------------------------------------
# STL, IWAE, DReG and VIMCO rows; SNR against K


def test_stl_and_dreg_guide_gradients_vanish_at_the_exact_posterior():
    """Linear-Gaussian pair, guide = p(z|x) exactly: log w = log p(x) whatever z is, so the
    STL and DReG guide gradients are 0 on every draw (float64 round-off), while the
    reparameterized ELBO gradient and the IWAE gradient keep the score term's noise."""
    torch.manual_seed(1)
    pair = PAIRS["linear-gaussian"].factory((1, 1, 4), z_dim=2, covariance="full").double()
    with torch.no_grad():
        pair.decoder.linear.weight.normal_(0, 1)
        pair.decoder.linear.bias.normal_(0, 1)
    pair.encoder.set_to_exact_posterior(pair.decoder)
    x = torch.randn(16, 4, dtype=torch.float64) * 1.5
    result = gradient_variance(pair, x, estimators=["reparam", "stl", "iwae", "iwae-dreg"],
                               num_draws=20, num_particles=5, progress=False)  # fmt: skip
    encoder = {name: s["parts"]["encoder"] for name, s in result["estimators"].items()}
    decoder = {name: s["parts"]["decoder"] for name, s in result["estimators"].items()}
    for name in ("stl", "iwae-dreg"):
        assert encoder[name]["variance"] < 1e-20 and encoder[name]["mean_norm"] < 1e-9, name
    for name in ("reparam", "iwae"):
        assert encoder[name]["variance"] > 1e-3, name
    for name in ("reparam", "stl", "iwae", "iwae-dreg"):
        assert decoder[name]["variance"] > 1e-3, name


def test_vimco_row_on_a_binary_guide_and_the_rows_that_skip_it(binary_points):
    """The sigmoid belief net's guide samples Bernoulli sites: vimco runs (K >= 2), stl and
    iwae-dreg are left out naming the site, iwae too (Pyro's RenyiELBO gives a score site's
    parameters no gradient); each asked for alone is refused with its reason."""
    sbn = PAIRS["sbn"].factory((1, 8, 8))
    names = ["reparam", "stl", "iwae", "iwae-dreg", "vimco"]
    result = gradient_variance(sbn, binary_points, estimators=names, num_draws=5,
                               num_particles=4, progress=False)  # fmt: skip
    assert list(result["estimators"]) == ["reparam", "vimco"]
    vimco = result["estimators"]["vimco"]
    assert vimco["num_particles"] == 4 and set(vimco["parts"]) == {"encoder", "decoder"}
    assert vimco["parts"]["encoder"]["variance"] > 0 and vimco["parts"]["decoder"]["variance"] > 0
    notes = "\n".join(result["notes"])
    for name in ("stl", "iwae-dreg"):
        assert f"{name} skipped: guide site(s) ['z'] have no rsample" in notes
    assert "iwae skipped" in notes and "RenyiELBO" in notes
    with pytest.raises(ConfigError, match="stl: guide site\\(s\\) \\['z'\\] have no rsample"):
        gradient_variance(sbn, binary_points, estimators=["stl"], num_draws=2, progress=False)
    with pytest.raises(ConfigError, match="--num-particles 1: VIMCO"):
        gradient_variance(sbn, binary_points, estimators=["vimco"], num_draws=2,
                          num_particles=1, progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """A tiny digits VAE trained 10 epochs on 500 points: far enough from its start that the
    IWAE encoder gradient's signal fades with K (Rainforth et al. 2018)."""
    out = tmp_path_factory.mktemp("snr_k") / "run"
    config = TrainConfig(
        dataset="digits", pair="mlp", pair_kwargs={"hidden": [16], "z_dim": 2},
        epochs=10, batch_size=50, train_limit=500, device="cpu", out=str(out),
    )  # fmt: skip
    train(config, progress=False)
    return out


def test_snr_against_k_has_rainforths_shape(trained_dir, tmp_path):
    """Seeded, 100 draws per K on 20 points. Measured encoder SNR (K = 1 -> 100): iwae 0.164
    -> 0.129, iwae-dreg 0.34 -> 0.49; decoder 10 -> 76 for both. At K = 1 IWAE is the
    reparameterized ELBO gradient and DReG is STL: the same draws."""
    result = snr_against_k(trained_dir, ks=(100, 1), num_draws=100, batch_size=20, out=tmp_path,
                           progress=False)  # fmt: skip
    assert isinstance(result, SNRAgainstK) and result["ks"] == [1, 100]
    series = result["estimators"]
    assert list(series) == ["iwae", "iwae-dreg"]
    for name in series:
        assert all(len(values) == 2 for values in series[name].values()), name
    iwae, dreg = series["iwae"], series["iwae-dreg"]
    assert iwae["encoder_snr"][1] < iwae["encoder_snr"][0]
    assert dreg["encoder_snr"][1] > 1.2 * dreg["encoder_snr"][0]
    assert dreg["encoder_snr"][1] > 2 * iwae["encoder_snr"][1]
    # the same estimator for the decoder (float32 sums in another order: 1e-6 apart)
    assert iwae["decoder_snr"] == pytest.approx(dreg["decoder_snr"], rel=1e-4)
    assert iwae["decoder_snr"][1] > 3 * iwae["decoder_snr"][0]
    single = gradient_variance(trained_dir, estimators=["reparam", "stl"], num_draws=100,
                               batch_size=20, save=False, progress=False)  # fmt: skip
    for multi, one in (("iwae", "reparam"), ("iwae-dreg", "stl")):
        for part in ("encoder", "decoder"):
            expected = single["estimators"][one]["parts"][part]["snr"]
            assert series[multi][f"{part}_snr"][0] == pytest.approx(expected, rel=1e-6)
    saved = json.loads((tmp_path / "gradvar_snr_k.json").read_text())
    assert saved["estimators"]["iwae"]["encoder_snr"] == iwae["encoder_snr"]
    assert (tmp_path / "gradvar_snr_k.png").read_bytes()[:4] == b"\x89PNG"
    assert "iwae-dreg enc. SNR" in result.summary()
    with pytest.raises(ConfigError, match="vimco needs K >= 2"):
        snr_against_k(trained_dir, ks=(1, 10), estimators=["vimco"], save=False)
    with pytest.raises(ConfigError, match="--estimators stl: SNR against K is for the K-particle"):
        snr_against_k(trained_dir, estimators=["stl"], save=False)
