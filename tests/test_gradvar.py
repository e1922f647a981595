"""Gradient variance and SNR of estimators (pyro_vae.gradvar) and `pyro-vae gradvar`."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.config import ConfigError, TrainConfig
from pyro_vae.gradients import GRADIENT_ESTIMATORS
from pyro_vae.gradvar import (
    format_table,
    gradient_draws,
    gradient_statistics,
    gradient_variance,
    pair_parameters,
)
from pyro_vae.train import train


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
    assert list(result["estimators"]) == list(GRADIENT_ESTIMATORS)
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
