"""Library first: evaluate, fit and load_run on the objects a Pyro user holds."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn

import pyro_vae
from pyro_vae.data import load_dataset
from pyro_vae.pairs import PairError, build_pair
from pyro_vae.runs.config import ConfigError


class TutorialVAE(nn.Module):
    """Written as Pyro's VAE tutorial writes it: pyro.module, a data plate, to_event."""

    def __init__(self, x_dim=64, z_dim=3, hidden=32):
        super().__init__()
        self.z_dim, self.hidden = z_dim, hidden
        self.decoder = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim)
        )
        self.encoder = nn.Sequential(
            nn.Linear(x_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z_dim)
        )

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


@pytest.fixture
def digits():
    data = load_dataset("digits")
    x = torch.bernoulli(data.train[:400], generator=torch.Generator().manual_seed(1))
    return x, data.split_labels("train")[:400]


def own_svi_loop(pair, x, steps=60):
    svi = SVI(pair.model, pair.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x[i % 4 * 100 : (i % 4 + 1) * 100]) for i in range(steps)]
    return losses


def test_evaluate_a_pair_trained_by_a_users_own_svi_loop(digits):
    x, _ = digits
    vae = TutorialVAE()
    losses = own_svi_loop(vae, x)
    assert losses[-1] < losses[0]
    result = pyro_vae.evaluate(vae, x[:50], num_samples=200)
    assert isinstance(result, pyro_vae.Evaluation)
    assert result["num_points"] == 50 and result["split"] is None
    # a K-sample importance estimate is above the ELBO in expectation, per point and on average
    assert result["log_px"] > result["elbo"]
    assert 0 < result["gap"] < 10
    assert result.per_point["log_px"].shape == (50,)
    assert math.isclose(float(result.per_point["log_px"].mean()), result["log_px"], rel_tol=1e-6)
    json.dumps(result.to_dict(), allow_nan=False)
    text = result.summary()
    assert "log p(x) ~" in text and "ELBO" in text and repr(result) == text
    # the same seed gives the same numbers, another seed other draws
    again = pyro_vae.evaluate(vae, x[:50], num_samples=200)
    other = pyro_vae.evaluate(vae, x[:50], num_samples=200, seed=1)
    assert again["log_px"] == result["log_px"]
    assert other["log_px"] != result["log_px"]


def test_evaluate_accepts_plain_functions_and_reports_accuracy_with_labels(digits):
    x, classes = digits
    pyro.clear_param_store()

    def model(x):
        loc = pyro.param("decoder_loc", torch.zeros(64))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            logits = loc + z.sum(-1, keepdim=True)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        scale = pyro.param("z_scale", torch.ones(2), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), scale).to_event(1))

    by_keyword = pyro_vae.evaluate(model, x[:20], guide=guide, num_samples=50)
    by_tuple = pyro_vae.evaluate((model, guide), x[:20], num_samples=50)
    assert by_keyword["log_px"] == by_tuple["log_px"]
    assert math.isfinite(by_keyword["log_px"])


def test_evaluate_matches_the_closed_form_of_a_linear_gaussian_pair():
    pair = build_pair((1, 2, 3), "linear-gaussian", {"z_dim": 2})
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = pair.decoder.exact_log_marginal(x)
    result = pyro_vae.evaluate(pair, x, num_samples=2000)
    # an untrained guide is a poor proposal, yet with K = 2000 the estimate is within 0.02 nats
    # of the closed form (measured: 0.003), and the ELBO half a nat below it
    assert abs(result["log_px"] - float(exact.mean())) < 0.02
    assert result["elbo"] < float(exact.mean()) - 0.2


def test_in_memory_pair_and_its_run_directory_give_the_same_evaluation(tmp_path):
    run_dir = tmp_path / "run"
    pyro_vae.train(pyro_vae.TrainConfig(dataset="digits", epochs=1, out=str(run_dir)))
    from_path = pyro_vae.evaluate(run_dir, num_samples=20, limit=30)
    run = pyro_vae.load_run(run_dir)
    assert run.epoch == 1 and len(run.history) == 1 and run.config.dataset == "digits"
    from_objects = pyro_vae.evaluate(run.pair, run.split("test")[:30], num_samples=20)
    from_run = pyro_vae.evaluate(run, num_samples=20, limit=30)
    for key in ("log_px", "elbo", "gap", "log_px_stderr", "ess_mean"):
        assert from_objects[key] == from_path[key] == from_run[key], key
    assert torch.equal(from_objects.per_point["log_px"], from_path.per_point["log_px"])
    assert (run_dir / "evaluation_test.json").exists()
    # a Run is not written into unless asked
    (run_dir / "evaluation_test.json").unlink()
    pyro_vae.evaluate(run, num_samples=5, limit=3)
    assert not (run_dir / "evaluation_test.json").exists()


def test_fit_trains_in_place_and_writes_nothing_without_out(digits, tmp_path, monkeypatch):
    x, _ = digits
    monkeypatch.chdir(tmp_path)
    vae = TutorialVAE()
    before = [p.detach().clone() for p in vae.parameters()]
    epochs, steps = [], []
    result = pyro_vae.fit(vae, x, epochs=2, batch_size=100, on_epoch=epochs.append,
                          on_step=steps.append)  # fmt: skip
    assert result.run_dir is None and result.pair is vae
    assert [row["epoch"] for row in epochs] == [1, 2] and len(steps) == 8
    assert all(not torch.equal(a, b) for a, b in zip(before, vae.parameters(), strict=True))
    assert list(tmp_path.iterdir()) == []
    # the trained object is what an analysis takes
    assert math.isfinite(pyro_vae.evaluate(vae, x[:10], num_samples=10)["log_px"])


def test_fit_with_out_makes_a_run_that_reopens_with_its_data(digits, tmp_path):
    x, classes = digits
    out = tmp_path / "run"
    labels = {"train": classes[:300], "valid": classes[300:350], "test": classes[350:]}
    result = pyro_vae.fit(TutorialVAE(), x[:300], valid=x[300:350], test=x[350:],
                          labels=labels, out=out, epochs=2)  # fmt: skip
    assert result.run_dir == out and (out / "data.npz").exists() and (out / "best.pt").exists()
    run = pyro_vae.load_run(out)
    assert torch.equal(run.split("test"), x[350:])
    assert torch.equal(run.labels("test")[1], classes[350:])
    assert run.history == result.history


def test_bad_sources_and_settings_say_what_to_pass(digits):
    x, _ = digits
    with pytest.raises(PairError, match="give a pair"):
        pyro_vae.evaluate(object(), x)
    with pytest.raises(ConfigError, match="pass the data"):
        pyro_vae.evaluate(TutorialVAE())
    with pytest.raises(ConfigError, match="save=True writes into a run directory"):
        pyro_vae.evaluate(TutorialVAE(), x[:4], save=True)
    with pytest.raises(ConfigError, match="unknown setting"):
        pyro_vae.fit(TutorialVAE(), x, epoch=3)
    with pytest.raises(ConfigError, match="labels"):
        pyro_vae.evaluate(TutorialVAE(), x[:4], labels=torch.zeros(3, dtype=torch.long))
