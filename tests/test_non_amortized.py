"""Guides that are not amortized: per-point ``pyro.param``s (Pyro's sparse gamma DEF style),
recognised by the pair's check, trained on the full set or by index subsampling, and
evaluated by fitting the evaluated points' own params with the model frozen."""

import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from sklearn.datasets import load_digits

import pyro_vae
from pyro_vae.analysis.evaluate import evaluate
from pyro_vae.pairs import FunctionPair, PairError, build_pair, check_pair
from pyro_vae.runs.config import TrainConfig
from pyro_vae.training.fitting import fit
from pyro_vae.training.train import train

PAIRS_DIR = Path(__file__).resolve().parent / "pairs"
sys.path.insert(0, str(PAIRS_DIR))
from per_point_gaussian import PerPointGaussian, draw, exact_log_px  # noqa: E402

DEF = f"{PAIRS_DIR}/sparse_gamma_def.py:SparseGammaDEF"
Z_PARAMS = tuple(f"{kind}_z_{layer}_q" for layer in ("top", "mid", "bottom")
                 for kind in ("alpha", "mean"))  # fmt: skip


def digit_counts(num_points: int) -> torch.Tensor:
    """scikit-learn's digits as counts: 64 pixels of 0..16."""
    return torch.tensor(load_digits().data[:num_points], dtype=torch.float32)


@pytest.fixture(scope="module")
def counts_file(tmp_path_factory) -> str:
    counts = load_digits().data.astype(np.float32)
    path = tmp_path_factory.mktemp("counts") / "digit_counts.npz"
    np.savez(path, train=counts[:1297], valid=counts[1297:1497], test=counts[1497:])
    return str(path)


def def_config(counts_file: str, out: Path, **overrides) -> TrainConfig:
    values = dict(dataset=counts_file, pixel_scale="none", binarize="none", pair=DEF,
                  train_limit=60, batch_size=60, epochs=2, lr=0.05, device="cpu",
                  out=str(out))  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("num_points", [None, 40])
def test_per_point_params_are_recognised_where_the_probe_alone_fails(num_points):
    """Params made at the first batch's size (Pyro's way) or at a given number of points:
    the probe batch alone is refused as before; with all the training points they are named."""
    x = digit_counts(40)
    pair = build_pair((1, 8, 8), DEF, {"num_points": num_points})
    pyro.clear_param_store()
    with pytest.raises(PairError, match="Shape mismatch inside plate"):
        check_pair(pair, x[:16])
    pyro.clear_param_store()
    info = check_pair(pair, x[:16], points=lambda: x)
    assert info.local_params == Z_PARAMS
    assert info.global_sites == ("w_top", "w_mid", "w_bottom")
    assert pyro.param("alpha_z_top_q").shape == (40, 3)  # none left at the probe's 16 rows
    # a guide without per-point params gets none, and a forgotten plate is still found
    pyro.clear_param_store()
    gaussian = PerPointGaussian()
    info = check_pair(gaussian, x[:16, :4], points=x[:, :4])
    assert info.local_params == ("z_loc", "z_scale") and info.global_sites == ()


def test_a_forgotten_plate_is_refused_even_with_per_point_params():
    """A latent outside the data plate whose shape follows the batch is a forgotten plate,
    also where the guide's params have a row per point and the check runs on all points."""

    def model(x):
        scale = pyro.sample("scale", dist.LogNormal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, scale).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("loc", lambda: torch.zeros(x.shape[0], 1))
        pyro.sample("scale", dist.LogNormal(loc, 1.0).to_event(1))

    x = torch.randn(20, 1)
    pyro.clear_param_store()
    with pytest.raises(PairError, match="Shape mismatch inside plate"):
        check_pair(FunctionPair(model, guide), x[:16], points=x)
    pyro.clear_param_store()
    with pytest.raises(PairError, match="Shape mismatch inside plate"):
        check_pair(FunctionPair(model, guide), x, points=x)


def test_the_def_pair_trains_on_the_full_set_in_order(counts_file, tmp_path, capsys):
    result = train(def_config(counts_file, tmp_path / "full"))
    err = capsys.readouterr().err
    assert "training on the full set, one batch of all 60 points in order" in err
    losses = [row["train_loss"] for row in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert pyro.param("mean_z_bottom_q").shape == (60, 10)
    # the run reopens (its check sees the 60 training points) and resumes
    more = train(def_config(counts_file, tmp_path / "full", epochs=3), resume=True)
    assert [row["train_loss"] for row in more.history[:2]] == losses[:2]
    assert len(more.history) == 3 and np.isfinite(more.history[2]["train_loss"])


def test_subsampled_training_moves_only_the_rows_of_each_batch(tmp_path, capsys):
    """Plain SGD: a row of z_loc moves at a step exactly when its point is in the batch, so
    the rows that moved are the batch's, and an epoch moves every row once."""
    x = draw(40, seed=1)
    pair = PerPointGaussian()
    snapshots, batches = [], []

    def on_step(metrics):
        snapshots.append(pyro.param("z_loc").detach().clone())
        batches.append(pair.last_x.clone())

    fit(pair, x, epochs=1, batch_size=10, lr=0.1, optimizer="sgd", on_step=on_step,
        valid=draw(6, seed=2), test=draw(6, seed=3), progress=False)  # fmt: skip
    assert "training by index subsampling, each batch of 10 points" in capsys.readouterr().err
    assert len(snapshots) == 4
    start = torch.zeros(40, 2)  # where z_loc starts
    moved_all = []
    for before, after, batch in zip([start, *snapshots], snapshots, batches, strict=False):
        moved = (after != before).any(dim=1).nonzero().flatten()
        assert moved.numel() == 10
        assert torch.equal(x[moved].sort(dim=0).values, batch.sort(dim=0).values)
        moved_all += moved.tolist()
    assert sorted(moved_all) == list(range(40))


def test_evaluation_fits_the_test_points_params_and_matches_the_exact_log_px(tmp_path):
    """The linear-Gaussian posterior is in the guide's family, so after the fit importance
    sampling gives log p(x) = log N(x; 0, W W^T + sigma^2 I), and the trained params stay."""
    x, test = draw(30, seed=4), draw(20, seed=5)
    result = fit(PerPointGaussian(), x, out=tmp_path / "gauss", epochs=2, batch_size=30,
                 lr=0.05, valid=draw(6, seed=6), test=test, progress=False)  # fmt: skip
    trained = pyro.param("z_loc").detach().clone()
    summary = evaluate(result.run_dir, num_samples=2000, local_fit_steps=400, local_fit_lr=0.05,
                       save=False)  # fmt: skip
    fit_record = summary["local_fit"]
    assert fit_record["steps"] == 400 and fit_record["num_points"] == 20
    assert fit_record["params"] == ["z_loc", "z_scale"]
    exact = exact_log_px(test)
    assert torch.allclose(summary.per_point["log_px"], exact, atol=0.02)
    assert abs(summary["log_px"] - float(exact.mean())) < 0.005
    assert abs(fit_record["final_elbo"] - float(exact.mean())) < 0.2
    assert summary["ess_mean"] > 1500  # the fitted guide is the posterior
    assert torch.equal(pyro.param("z_loc").detach(), trained)


def test_the_def_pair_evaluates_on_count_data(counts_file, tmp_path):
    result = train(def_config(counts_file, tmp_path / "def", batch_size=20, epochs=1))
    summary = evaluate(result.run_dir, num_samples=20, limit=30, local_fit_steps=30, save=True)
    assert np.isfinite(summary["log_px"]) and summary["elbo"] <= summary["log_px"] < 0
    assert summary["local_fit"]["steps"] == 30 and np.isfinite(summary["local_fit"]["final_elbo"])
    assert set(summary["conditioned_on"]["sites"]) == {"w_top", "w_mid", "w_bottom"}
    assert "per-point guide params fitted on these points: 30 SVI steps" in summary.summary()
    assert (result.run_dir / "evaluation_test.json").is_file()
    # the analyses that do not fit per-point params refuse the run with what can
    analyses = {"diagnose": pyro_vae.diagnose, "convergence": pyro_vae.convergence,
                "gradvar": pyro_vae.gradient_variance, "latents": pyro_vae.latents,
                "sample": pyro_vae.sample}  # fmt: skip
    for name, analysis in analyses.items():
        with pytest.raises(PairError, match=f"{name}: the pair's guide is not amortized"):
            analysis(result.run_dir)
