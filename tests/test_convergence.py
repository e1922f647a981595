"""The convergence study of log p(x) estimators, and `evaluate --estimator`, on tiny runs."""

import json
import math

import numpy as np
import pytest

from pyro_vae.analysis.convergence import CONVERGENCE_COLUMNS, convergence_study, format_table
from pyro_vae.analysis.evaluate import evaluate
from pyro_vae.infer.estimators import EstimatorError
from pyro_vae.runs.config import ConfigError, TrainConfig
from pyro_vae.training.train import train


def tiny_run(out, **overrides):
    values = dict(
        dataset="digits", pair="mlp", pair_kwargs={"hidden": [32], "z_dim": 4}, epochs=2,
        batch_size=50, train_limit=300, device="cpu", out=str(out),
    )  # fmt: skip
    values.update(overrides)
    return train(TrainConfig(**values), progress=False).run_dir


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One tiny digits run (MLP VAE, z_dim 4) shared by the tests here."""
    return tiny_run(tmp_path_factory.mktemp("convergence") / "run")


def by_cell(summary):
    return {(row["estimator"], row["num_samples"]): row for row in summary["results"]}


def test_cli_convergence_prints_one_json_object_and_writes_the_files(run_cli, digits_run, tmp_path):
    out = run_cli("convergence", digits_run, "--ks", "100,1,10", "--points", "5",
                   "--repeats", "8", "--out", tmp_path / "study", "--json", "--no-progress",
                   cwd=tmp_path)  # fmt: skip
    summary = json.loads(out.stdout)  # fails unless stdout is exactly one JSON value
    assert summary["ks"] == [1, 10, 100] and summary["estimators"] == ["is", "prior"]
    assert summary["num_points"] == 5 and summary["repeats"] == 8
    assert summary["reference_kind"] == "is"  # an MLP VAE has no closed-form log p(x)
    cells = by_cell(summary)
    assert set(cells) == {(e, k) for e in ("is", "prior") for k in (1, 10, 100)}
    reference = summary["reference"]
    assert reference == cells["is", 100]["estimate"]
    # the noise of one IS estimate falls with K (measured 0.61, 0.35, 0.10 nats)
    stderrs = [cells["is", k]["stderr"] for k in (1, 10, 100)]
    assert stderrs[0] > stderrs[1] > stderrs[2] > 0, stderrs
    for (_, k), row in cells.items():
        assert row["difference"] == pytest.approx(row["estimate"] - reference)
        assert 1 <= row["ess"] <= k and row["elbo"] <= row["estimate"] + 1e-6
        assert -60 < row["estimate"] < -15  # about 64 pixels * log 2 = 44 nats, a little better
        # each estimate is a stochastic lower bound: not above the reference beyond the noise
        # of one estimate (the study's means average 40 of them)
        assert row["estimate"] <= reference + row["stderr"] + cells["is", 100]["stderr"]
    # K=1 IS and prior estimates sit below their K=100 values (Jensen), by more than noise
    for estimator in ("is", "prior"):
        assert cells[estimator, 1]["estimate"] < cells[estimator, 100]["estimate"]
    files = {p.name for p in (tmp_path / "study").iterdir()}
    assert files == {"convergence.json", "convergence.csv", "convergence.png"}
    assert json.loads((tmp_path / "study" / "convergence.json").read_text()) == summary
    lines = (tmp_path / "study" / "convergence.csv").read_text().splitlines()
    assert lines[0] == ",".join(CONVERGENCE_COLUMNS) and len(lines) == 1 + 6
    assert (tmp_path / "study" / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (digits_run / "convergence.json").exists(), "--out DIR, not the run directory"


def test_evaluate_with_the_prior_keeps_the_importance_sampled_files(run_cli, digits_run, tmp_path):
    is_summary = evaluate(digits_run, num_samples=64, limit=30)
    out = run_cli("evaluate", digits_run, "--estimator", "prior", "--num-samples", "64",
                   "--limit", "30", "--json", cwd=tmp_path)  # fmt: skip
    prior_summary = json.loads(out.stdout)
    assert prior_summary["estimator"] == "prior" and is_summary["estimator"] == "is"
    assert set(prior_summary) == set(is_summary)
    saved_is = json.loads((digits_run / "evaluation_test.json").read_text())
    saved_prior = json.loads((digits_run / "evaluation_test_prior.json").read_text())
    assert saved_is == is_summary and saved_prior == prior_summary
    per_point = np.load(digits_run / "evaluation_test_prior.npz")
    assert per_point["log_px"].mean() == pytest.approx(prior_summary["log_px"], rel=1e-6)
    # for the prior, "elbo" is E_p(z)[log p(x|z)], below its log-mean-exp
    assert prior_summary["elbo"] < prior_summary["log_px"] < 0
    assert prior_summary["gap"] == pytest.approx(
        prior_summary["log_px"] - prior_summary["elbo"], abs=1e-4
    )


def test_bad_convergence_arguments_name_the_flag(run_cli, digits_run, tmp_path):
    result = run_cli("convergence", digits_run, "--estimators", "is,bogus", cwd=tmp_path,
                      check=False)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--estimators 'is,bogus': unknown ['bogus']; choose from is, prior, ais" in result.stderr
    result = run_cli("convergence", digits_run, "--estimators", "ais", "--ais-chains", "0",
                      cwd=tmp_path, check=False)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--ais-chains must be an integer >= 1, got 0" in result.stderr
    with pytest.raises(ConfigError, match="--repeats must be >= 2"):
        convergence_study(digits_run, repeats=1)
    with pytest.raises(ConfigError, match=r"--ks must be sample counts >= 1, got \[0, 5\]"):
        convergence_study(digits_run, ks=(0, 5))
    with pytest.raises(EstimatorError, match="--estimator 'bogus' is unknown"):
        evaluate(digits_run, estimator="bogus")


def test_reference_is_the_exact_log_px_for_the_linear_gaussian_pair(tmp_path):
    run_dir = tiny_run(
        tmp_path / "lg", dataset="digits", binarize="none", pair="linear-gaussian",
        pair_kwargs={"z_dim": 2, "covariance": "full"}, lr=0.01,
    )  # fmt: skip
    summary = convergence_study(run_dir, ks=(1, 10, 1000), num_points=5, repeats=8, save=False)
    assert summary["reference_kind"] == "exact"
    cells = by_cell(summary)
    # K=1000: 40 estimates per cell, each with noise about 0.05 nats (measured -0.011 and
    # +0.006 from exact for is and prior); K=1: the ELBO, about 6 nats below
    assert abs(cells["is", 1000]["difference"]) < 0.1
    assert abs(cells["prior", 1000]["difference"]) < 0.1
    assert cells["is", 1]["difference"] < -1 and cells["prior", 1]["difference"] < -1
    assert not math.isnan(cells["prior", 10]["stderr"])
    assert not (run_dir / "convergence.json").exists()  # save=False writes nothing
    lines = []
    format_table(summary, lines.append)
    assert "(exact log p(x))" in lines[0] and len(lines) == 2 + 6


# ------------------------------------------------------------------------------------------
# The study as a function of the objects a user holds


def test_convergence_of_a_pair_in_memory_equals_its_run_directory(digits_run, tmp_path):
    from pyro_vae.analysis.convergence import Convergence, convergence
    from pyro_vae.runs.reopen import load_run

    settings = dict(ks=(1, 5), num_points=4, repeats=2, seed=3, progress=False)
    from_dir = convergence(digits_run, save=False, **settings)
    run = load_run(digits_run)
    in_memory = convergence(run.pair, run.split("test")[:4], **settings)
    from_run = convergence(run, **settings)  # a Run: no files unless asked
    assert isinstance(in_memory, Convergence) and in_memory["run_dir"] is None
    assert in_memory["split"] is None and from_run["run_dir"] == str(digits_run)
    for other in (in_memory, from_run):
        assert other["reference"] == from_dir["reference"]
        for mine, theirs in zip(other["results"], from_dir["results"], strict=True):
            for key in ("estimator", "num_samples", "estimate", "stderr", "ess", "elbo"):
                assert mine[key] == theirs[key], key
    # the old name keeps its keys and numbers
    old = convergence_study(digits_run, save=False, **settings)
    assert (
        set(old) == set(from_dir)
        and old["results"][0]["estimate"] == from_dir["results"][0]["estimate"]
    )
    lines = []
    format_table(from_dir, lines.append)
    assert from_dir.summary() == "\n".join(lines) and str(from_dir) == from_dir.summary()
    assert in_memory.summary().startswith("x: 4 points x 2 repeats; reference")
    png = in_memory.plot(tmp_path / "x.png")
    assert png == tmp_path / "x.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert in_memory.plot(tmp_path / "figures").name == "convergence.png"
    with pytest.raises(ConfigError, match="this pair has none. Pass out=FOLDER"):
        convergence(run.pair, run.split("test")[:4], save=True, **settings)
    written = convergence(run.pair, run.split("test")[:4], out=tmp_path / "study", **settings)
    assert json.loads((tmp_path / "study" / "convergence.json").read_text()) == json.loads(
        json.dumps(written.to_dict())
    )
    assert {p.name for p in (tmp_path / "study").iterdir()} == {
        "convergence.json", "convergence.csv", "convergence.png"
    }  # fmt: skip


def test_convergence_of_a_linear_gaussian_pair_trained_by_svi_has_the_exact_reference():
    """A user's loop: build the pair, SVI(model, guide, Adam, Trace_ELBO).step(x), then study
    it with no run directory; its closed-form log p(x) is the reference."""
    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam

    import pyro_vae
    from pyro_vae.analysis.convergence import convergence, exact_log_marginal

    x = pyro_vae.load_dataset("digits").test[:100]
    pair = pyro_vae.build_pair((1, 8, 8), "linear-gaussian", {"z_dim": 2})
    svi = SVI(pair.model, pair.guide, Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(30):
        svi.step(x)
    pyro.set_rng_seed(0)
    study = convergence(pair, x, ks=(1, 200), num_points=5, repeats=2, progress=False)
    assert study["reference_kind"] == "exact" and study["num_points"] == 5
    assert study["reference"] == pytest.approx(float(exact_log_marginal(pair, x[:5]).mean()))
    cells = by_cell(study)
    # K=200 from the guide lands on log p(x) within the noise of one estimate (0.06 nats; a
    # 2-dim latent: measured 0.000), K=1, the ELBO, below it (measured -1.7 nats)
    assert abs(cells["is", 200]["difference"]) < 0.2
    assert cells["is", 1]["difference"] < -0.5
    assert torch.isfinite(torch.tensor([row["estimate"] for row in study["results"]])).all()
    assert "(exact log p(x))" in study.summary()


# ------------------------------------------------------------------------------------------
# AIS beside importance sampling, at matched compute


def test_ais_steps_for_is_the_most_steps_whose_compute_fits():
    from pyro_vae.analysis.convergence import ais_steps_for
    from pyro_vae.infer.ais import density_evaluations

    for chains, leapfrog in ((1, 1), (4, 5), (16, 10)):
        for k in (1, 3, 16, 99, 100, 1000, 5000):
            steps = ais_steps_for(k, chains, leapfrog)
            assert steps >= 1 and density_evaluations(steps + 1, leapfrog, chains) > k
            assert steps == 1 or density_evaluations(steps, leapfrog, chains) <= k
    # 16 chains + a pilot of 4, 10 leapfrog steps: 20 (1 + 10 (S - 1)) <= 5000 -> S = 25
    assert ais_steps_for(5000, 16, 10) == 25 and ais_steps_for(100, 16, 10) == 1


def test_cli_convergence_with_ais_rows_carries_their_compute(run_cli, digits_run, tmp_path):
    out = run_cli("convergence", digits_run, "--ks", "1,300", "--points", "3", "--repeats",
                   "2", "--estimators", "is,ais", "--ais-chains", "2", "--leapfrog-steps", "2",
                   "--out", tmp_path / "study", "--json", "--no-progress",
                   cwd=tmp_path)  # fmt: skip
    summary = json.loads(out.stdout)
    assert summary["estimators"] == ["is", "ais"] and summary["ais"]["chains"] == 2
    cells = by_cell(summary)
    # 2 chains + a pilot of 1, 2 leapfrog steps: 3 (1 + 2 (S - 1)) <= 300 -> S = 50, 297
    assert cells["ais", 300]["ais_steps"] == 50 and cells["ais", 300]["compute"] == 297
    assert cells["ais", 1]["ais_steps"] == 1 and cells["ais", 1]["compute"] == 2  # IS, 2 chains
    assert cells["is", 300]["compute"] == 300 and cells["is", 300]["ais_steps"] is None
    for row in summary["results"]:
        assert math.isfinite(row["estimate"]) and row["seconds"] > 0
    assert 0 < cells["ais", 300]["acceptance"] <= 1
    # this VAE's ELBO is within half a nat of log p(x): AIS lands on the IS reference (K=300)
    # within the noise of 6 estimates of 2 chains (measured +0.08 nats, stderr 0.4)
    assert summary["reference_kind"] == "is" and abs(cells["ais", 300]["difference"]) < 1.0
    lines = (tmp_path / "study" / "convergence.csv").read_text().splitlines()
    assert lines[0] == ",".join(CONVERGENCE_COLUMNS) and len(lines) == 1 + 4
    assert "compute" in CONVERGENCE_COLUMNS and lines[-1].split(",")[-2:] == ["297", "50"]


def test_ais_at_the_largest_compute_reaches_the_exact_log_px_of_the_linear_gaussian_pair():
    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam

    import pyro_vae
    from pyro_vae.analysis.convergence import convergence
    from pyro_vae.infer.ais import density_evaluations

    x = pyro_vae.load_dataset("digits").test[:100]
    pyro.set_rng_seed(0)
    pair = pyro_vae.build_pair((1, 8, 8), "linear-gaussian", {"z_dim": 2})
    svi = SVI(pair.model, pair.guide, Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(30):
        svi.step(x)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        study = convergence(pair, x, ks=(1, 4000), estimators=("is", "ais"), num_points=5,
                            repeats=4, progress=False, ais_chains=8, leapfrog_steps=2)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert study["reference_kind"] == "exact"
    cells = by_cell(study)
    largest = cells["ais", 4000]
    # 8 chains + a pilot of 2, 2 leapfrog steps: 200 steps, 3990 evaluations per point
    assert largest["ais_steps"] == 200 and largest["compute"] == density_evaluations(200, 2, 8)
    # 20 estimates of 8 chains each, one estimate's noise about 0.06 nats: measured +0.026
    # from the exact value. At K=1 one AIS step is IS with the 8 chains: its estimates spread
    # wider (measured 0.32 against 0.08 nats)
    assert abs(largest["difference"]) < 0.15
    assert largest["stderr"] < cells["ais", 1]["stderr"]
    lines = study.summary().splitlines()
    assert "compute" in lines[1] and len(lines) == 2 + 4
