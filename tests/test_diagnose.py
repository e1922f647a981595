"""Posterior diagnostics (`pyro_vae.analysis.diagnose`) against exact answers of the
linear-Gaussian VAE.

The linear-Gaussian model has a closed-form posterior p(z|x) = N(m(x), P^-1) and log p(x), so
k-hat, the gaps, the NUTS reference, active units and KL per dimension all have values to
check, not just shapes. Tiny models run with one torch thread: intra-op threads only add
synchronization to such small ops (many times slower on a busy 2-core machine).
"""

import json
import math
import signal

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints, transform_to

from pyro_vae import TrainConfig, train
from pyro_vae.analysis.diagnose import (
    DiagnoseError,
    PosteriorDiagnosis,
    diagnose,
    diagnose_pair,
    khat_counts,
    psis_khat,
    select_indices,
)
from pyro_vae.cli import main
from pyro_vae.guides import LinearGaussianEncoder
from pyro_vae.models import LinearGaussianDecoder
from pyro_vae.pairs import VAE
from pyro_vae.runs.reopen import load_run

X_DIM, Z_DIM, NOISE = 5, 2, 1.0
DIGITS_TEST_SIZE = 300


def linear_gaussian(covariance: str, num_points: int = 4, z_dim: int = Z_DIM,
                    zero_columns: tuple[int, ...] = ()):  # fmt: skip
    """A linear-Gaussian pair with random W (columns ``zero_columns`` zeroed: those latent
    dims do not reach x), its guide at the best member of its family, and data from it."""
    decoder = LinearGaussianDecoder(X_DIM, z_dim, noise_scale=NOISE, learn_noise=False)
    with torch.no_grad():
        decoder.linear.weight.normal_(1.0, 0.5)  # columns alike: a correlated posterior
        decoder.linear.weight[:, list(zero_columns)] = 0.0
        decoder.linear.bias.normal_(0.0, 0.5)
    encoder = LinearGaussianEncoder(X_DIM, z_dim, covariance)
    encoder.set_to_exact_posterior(decoder)
    with torch.no_grad():
        x = decoder(torch.randn(num_points, z_dim)) + NOISE * torch.randn(num_points, X_DIM)
    return VAE(decoder, encoder), x


def precision(decoder: LinearGaussianDecoder) -> torch.Tensor:
    weight = decoder.linear.weight.detach().double()
    return torch.eye(weight.shape[1], dtype=weight.dtype) + weight.T @ weight / NOISE**2


def mean_field_kl(decoder: LinearGaussianDecoder) -> float:
    """KL(q_MF || p(z|x)) of the best fully factorized Gaussian, the same for every x:
    q_MF = N(m, diag(1 / P_dd)), so KL = (sum_d log P_dd - log det P) / 2 (Bishop 10.1.2)."""
    p = precision(decoder)
    return float(0.5 * (p.diagonal().log().sum() - torch.logdet(p)))


def gaussian_kl(loc_q, var_q, loc_p, cov_p) -> torch.Tensor:
    """KL(N(loc_q, diag var_q) || N(loc_p, cov_p)) per row, in float64."""
    cov_p = cov_p.double()
    inv = torch.linalg.inv(cov_p)
    diff = (loc_p - loc_q).double()
    return 0.5 * (
        (inv.diagonal() * var_q.double()).sum(-1)
        + torch.einsum("bi,ij,bj->b", diff, inv, diff)
        - var_q.shape[-1]
        + torch.logdet(cov_p)
        - var_q.double().log().sum(-1)
    )


# --- PSIS k-hat ------------------------------------------------------------------------------


def test_psis_khat_recovers_the_shape_of_pareto_weights():
    # w = U^(-k) is Pareto with tail index 1/k, whose generalized-Pareto shape is k
    uniform = np.random.default_rng(0).uniform(size=(20000, 2))
    log_weights = -np.log(uniform) * np.array([0.3, 0.8])
    assert psis_khat(log_weights) == pytest.approx([0.3, 0.8], abs=0.08)
    assert psis_khat(log_weights[:, 1]).shape == (1,)


def test_psis_khat_of_equal_weights_is_minus_inf_and_bad_input_is_refused():
    log_weights = np.zeros((100, 3))
    log_weights[:, 1] = np.random.default_rng(1).normal(size=100)
    log_weights[:, 2] = -40.0 + 1e-5 * np.random.default_rng(2).normal(size=100)  # rounding
    khat = psis_khat(log_weights)
    assert khat[0] == -np.inf and khat[2] == -np.inf and np.isfinite(khat[1])
    counts = khat_counts(np.array([-np.inf, 0.2, 0.5, 0.6, 0.7, 0.71, 1.5]))
    assert (counts["khat_count_below_0_5"], counts["khat_count_0_5_to_0_7"],
            counts["khat_count_above_0_7"]) == (2, 3, 2)  # fmt: skip
    assert counts["khat_fraction_above_0_7"] == pytest.approx(2 / 7)
    with pytest.raises(ValueError, match="at least 21"):
        psis_khat(np.zeros((20, 2)))
    with pytest.raises(ValueError, match="NaN"):
        psis_khat(np.full((50, 1), np.nan))


def test_a_few_draws_carrying_all_the_weight_is_inf_and_reported_as_the_worst():
    """arviz gives k = inf when fewer than 5 weights are within exp(-708) of the largest: the
    worst proposal. In JSON inf is null like -inf, so the status and khat_max tell them apart."""
    log_weights = np.random.default_rng(0).normal(size=(1000, 3))
    log_weights[3:, 1] = -800.0  # 3 draws hold all the weight of point 1
    log_weights[:, 2] = 0.0  # all equal: exact importance sampling, -inf
    khat = psis_khat(log_weights)
    assert np.isfinite(khat[0]) and khat[1] == np.inf and khat[2] == -np.inf
    counts = khat_counts(khat)
    assert counts["khat_status"] == ["good", "unreliable", "good"]
    assert counts["khat_max"] == "inf"
    assert khat_counts(np.array([-np.inf, 0.3]))["khat_max"] == 0.3


def test_khat_is_small_for_the_exact_posterior_and_large_for_a_too_narrow_guide():
    pair, x = linear_gaussian("full")
    exact = diagnose_pair(pair, x, num_samples=1000, gap_steps=0).summary
    assert max(exact["khat"]) < 0.5
    # q = p(z|x): every weight is p(x), so IS is exact and the ELBO equals log p(x)
    exact_log_px = pair.decoder.exact_log_marginal(x).detach()
    assert torch.allclose(torch.as_tensor(exact["log_px_per_point"]).float(), exact_log_px,
                          atol=1e-4)  # fmt: skip
    assert max(map(abs, exact["gap_per_point"])) < 1e-4
    encoder = pair.encoder
    to_tril = transform_to(constraints.lower_cholesky)
    scale_tril = encoder.scale_tril.detach().clone()
    for factor, bound in ((1.5, "below"), (0.1, "above")):
        with torch.no_grad():
            encoder.unconstrained_scale_tril.copy_(to_tril.inv(scale_tril * factor))
        khat = np.array(diagnose_pair(pair, x, num_samples=1000, gap_steps=0).summary["khat"])
        if bound == "below":  # a wider q has bounded weights
            assert (khat < 0.5).all(), khat
        else:  # a 10x too narrow q: w ~ exp(0.495 chi2_2), a Pareto tail with k = 0.99
            assert (khat > 0.7).all(), khat


# --- amortization and approximation gaps -----------------------------------------------------


def _gap_tolerance(summary, b) -> float:
    """Four standard errors of L[q*] - L[q] (two independent Monte-Carlo means), plus 0.02
    nats for q* ending near, not at, its optimum after Adam with noisy gradients."""
    se = math.hypot(summary["elbo_stderr_per_point"][b], summary["elbo_q_star_stderr_per_point"][b])
    return 4 * se + 0.02


def test_gaps_of_an_encoder_at_the_mean_field_optimum():
    # the diagonal family's best member is q* itself: amortization gap 0, approximation gap
    # KL(q_MF || p(z|x)) in closed form
    pair, x = linear_gaussian("diagonal")
    summary = diagnose_pair(pair, x, num_samples=4000, gap_steps=100, gap_lr=1e-2,
                            gap_particles=16).summary  # fmt: skip
    expected = mean_field_kl(pair.decoder)
    assert expected > 0.1
    for b in range(x.shape[0]):
        tol = _gap_tolerance(summary, b)
        assert abs(summary["amortization_gap_per_point"][b]) < tol
        assert summary["approximation_gap_per_point"][b] == pytest.approx(expected, abs=tol)
    assert summary["notes"] == []


def test_gaps_of_a_perturbed_encoder_match_the_closed_form():
    # q off the optimum by a shifted mean and 1.5x the scale: amortization gap
    # KL(q || p) - KL(q_MF || p), approximation gap KL(q_MF || p), both >= 0
    pair, x = linear_gaussian("diagonal")
    with torch.no_grad():
        pair.encoder.linear.bias.add_(torch.tensor([0.4, -0.3]))
        pair.encoder.log_scale.add_(math.log(1.5))
    summary = diagnose_pair(pair, x, num_samples=4000, gap_steps=300, gap_lr=2e-2,
                            gap_particles=16).summary  # fmt: skip
    with torch.no_grad():
        q = pair.encoder(x).base_dist
        posterior = pair.decoder.exact_posterior(x)
        kl_q = gaussian_kl(q.loc, q.scale**2, posterior.loc, posterior.covariance_matrix[0])
    kl_mf = mean_field_kl(pair.decoder)
    for b in range(x.shape[0]):
        tol = _gap_tolerance(summary, b)
        assert summary["amortization_gap_per_point"][b] == pytest.approx(
            float(kl_q[b]) - kl_mf, abs=tol
        )
        assert summary["approximation_gap_per_point"][b] == pytest.approx(kl_mf, abs=tol)
        assert summary["amortization_gap_per_point"][b] > 0.1


def test_a_full_covariance_exact_guide_beats_the_factorized_q_star():
    # q = p(z|x) exactly: L[q] = log p(x), L[q*] = log p(x) - KL_MF, so the "amortization
    # gap" is -KL_MF < 0 (q's family is richer than q*'s), and the summary says why
    pair, x = linear_gaussian("full")
    summary = diagnose_pair(pair, x, num_samples=4000, gap_steps=100,
                            gap_particles=16).summary  # fmt: skip
    kl_mf = mean_field_kl(pair.decoder)
    exact = pair.decoder.exact_log_marginal(x).detach()
    for b in range(x.shape[0]):
        tol = _gap_tolerance(summary, b)
        assert summary["amortization_gap_per_point"][b] == pytest.approx(-kl_mf, abs=tol)
        assert summary["approximation_gap_per_point"][b] == pytest.approx(kl_mf, abs=tol)
        # IS with q is exact here; the larger of it and IS with q* overshoots by at most the
        # noise of the q* estimate (q* is narrower than p(z|x)): a few hundredths at S = 4000
        assert summary["log_px_per_point"][b] == pytest.approx(float(exact[b]), abs=1e-4)
        assert 0 <= summary["log_px_best_per_point"][b] - summary["log_px_per_point"][b] < 0.05
    assert any("can be negative" in note for note in summary["notes"])


# --- NUTS reference --------------------------------------------------------------------------


def test_nuts_matches_the_exact_posterior():
    pair, x = linear_gaussian("full", num_points=3)
    summary = diagnose_pair(pair, x, num_samples=200, gap_steps=0, nuts=True, nuts_chains=4,
                            nuts_warmup=60, nuts_samples=100).summary  # fmt: skip
    nuts = summary["nuts"]
    assert nuts["rhat_max"] < 1.05
    assert nuts["divergences"] == 0
    ess = min(nuts["ess_bulk_min"], nuts["ess_tail_min"])
    assert ess > 100
    posterior = pair.decoder.exact_posterior(x)
    exact_mean = posterior.loc.detach().double().numpy()
    exact_sd = posterior.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt().detach().double()
    exact_sd = np.broadcast_to(exact_sd.numpy(), exact_mean.shape)
    # Monte-Carlo error of a mean is sd / sqrt(ESS); of an sd, about sd / sqrt(2 ESS)
    np.testing.assert_allclose(nuts["mean"], exact_mean, atol=4 * exact_sd.max() / math.sqrt(ess))
    np.testing.assert_allclose(np.array(nuts["sd"]) / exact_sd, 1.0, atol=4 / math.sqrt(2 * ess))
    # q is the exact posterior: standardized mean differences ~0, scale ratios ~1
    assert nuts["std_mean_diff_abs_max"] < 4 / math.sqrt(ess)
    np.testing.assert_allclose(nuts["scale_ratio"], 1.0, atol=4 / math.sqrt(2 * ess))


# --- active units and KL per dimension -------------------------------------------------------


def test_dims_the_decoder_ignores_are_inactive_with_zero_kl():
    # W's columns 1 and 3 are zero: p(z_1, z_3 | x) is the prior, the guide's best member
    # has mean 0 and scale 1 there, so E_q[z_d|x] does not vary and KL = 0 exactly
    pair, x = linear_gaussian("diagonal", num_points=6, z_dim=4, zero_columns=(1, 3))
    summary = diagnose_pair(pair, x, num_samples=50, gap_steps=0).summary
    with torch.no_grad():
        q = pair.encoder(x).base_dist
        loc, var = q.loc.double(), q.scale.double() ** 2
    kl = (0.5 * (loc**2 + var - 1 - var.log())).mean(0).numpy()
    np.testing.assert_allclose(summary["kl_per_dim"], kl, atol=1e-5)
    assert kl[[1, 3]] == pytest.approx([0, 0], abs=1e-6) and (kl[[0, 2]] > 0.1).all()
    assert summary["collapsed_dims"] == ["z[1]", "z[3]"]
    variance = loc.var(0, unbiased=True).numpy()
    np.testing.assert_allclose(summary["posterior_mean_variance"], variance, rtol=1e-4, atol=1e-9)
    assert summary["active_units"] == 2 and summary["active_dims"] == ["z[0]", "z[2]"]
    assert summary["kl_method"] == {"z": "analytic"}


class BernoulliLatentPair:
    """Binary latents z ~ Bernoulli(1/2)^3, x ~ N(W z, I), q(z|x) = Bernoulli(sigmoid(A x))."""

    def __init__(self):
        self.weight = torch.randn(X_DIM, 3)
        self.gain = 0.5 * torch.randn(3, X_DIM)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(x.new_full((x.shape[0], 3), 0.5)).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.weight.T, 1.0).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=x @ self.gain.T).to_event(1))


def test_binary_latents_get_kl_and_active_units_but_no_gaps_and_no_nuts():
    pair = BernoulliLatentPair()
    x = torch.randn(5, X_DIM)
    summary = diagnose_pair(pair, x, num_samples=100).summary
    assert summary["amortization_gap"] is None and summary["approximation_gap"] is None
    assert "'z' is Bernoulli" in summary["gap_reason"]
    probs = torch.sigmoid(x @ pair.gain.T).double()
    kl = (probs * (2 * probs).log() + (1 - probs) * (2 * (1 - probs)).log()).mean(0)
    np.testing.assert_allclose(summary["kl_per_dim"], kl.numpy(), rtol=1e-5)
    np.testing.assert_allclose(summary["posterior_mean_variance"], probs.var(0).numpy(),
                               rtol=1e-5)  # fmt: skip
    assert len(summary["khat"]) == 5
    with pytest.raises(DiagnoseError, match="--nuts needs continuous latent sites; site 'z' is "
                                            "Bernoulli"):  # fmt: skip
        diagnose_pair(pair, x, num_samples=100, nuts=True)


# --- selection of points ---------------------------------------------------------------------


def test_select_indices_checks_its_flags():
    assert select_indices(300, "test", None, None) == list(range(20))
    assert select_indices(7, "test", None, None) == list(range(7))
    assert select_indices(300, "test", 3, None) == [0, 1, 2]
    assert select_indices(300, "test", None, [9, 2]) == [9, 2]
    with pytest.raises(DiagnoseError, match=r"--indices 300 out of range: the test split has 300"):
        select_indices(300, "test", None, [4, 300])
    with pytest.raises(DiagnoseError, match="not both"):
        select_indices(300, "test", 3, [1])
    with pytest.raises(DiagnoseError, match="--points 301"):
        select_indices(300, "test", 301, None)
    with pytest.raises(DiagnoseError, match="repeats"):
        select_indices(300, "test", None, [1, 1])


# --- a trained run, end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diagnose") / "run"
    train(TrainConfig(dataset="digits", epochs=2, batch_size=50, train_limit=200,
                      pair_kwargs={"hidden": [16], "z_dim": 3}, device="cpu",
                      out=str(out)))  # fmt: skip
    return out


def test_diagnose_a_run_from_python(digits_run, tmp_path):
    summary = diagnose(digits_run, indices=[7, 2, 11], num_samples=64, gap_steps=20,
                       out=tmp_path / "d")  # fmt: skip
    import arviz as az

    assert summary["indices"] == [7, 2, 11] and len(summary["khat"]) == 3
    log_px, elbo = np.array(summary["log_px_per_point"]), np.array(summary["elbo_per_point"])
    assert (elbo <= log_px).all(), "log-mean-exp of the same weights is >= their mean"
    np.testing.assert_allclose(summary["gap_per_point"], log_px - elbo, atol=1e-5)
    total = np.array(summary["amortization_gap_per_point"]) + summary["approximation_gap_per_point"]
    np.testing.assert_allclose(total, np.array(summary["log_px_best_per_point"]) - elbo, atol=1e-5)
    assert len(summary["kl_per_dim"]) == 3 and min(summary["kl_per_dim"]) >= 0
    assert summary["nuts"] is None
    assert json.loads((tmp_path / "d" / "diagnose.json").read_text()) == summary
    guide = az.from_netcdf(tmp_path / "d" / "guide.nc")
    assert guide.posterior["z"].dims == ("chain", "draw", "obs_id", "latent_dim")
    assert guide.posterior["z"].shape == (1, 64, 3, 3)
    assert list(guide.posterior["obs_id"].values) == [7, 2, 11]
    assert not (tmp_path / "d" / "nuts.nc").exists()
    again = diagnose(digits_run, indices=[7, 2, 11], num_samples=64, gap_steps=20, save=False)
    assert again["khat"] == summary["khat"], "diagnose is seeded"


def test_diagnose_compile_gives_the_eager_numbers(digits_run, tmp_path, capsys):
    """--compile runs the draws from q, their weights and q*'s weights as compiled graphs
    of the same computations with the same random numbers: the same diagnosis."""
    settings = dict(indices=[7, 2, 11], num_samples=64, gap_steps=20, save=False)
    eager = diagnose(digits_run, **settings)
    compiled = diagnose(digits_run, compile=True, **settings)
    err = capsys.readouterr().err
    assert "traced 64 draws from q(z|x) and their weights" in err
    assert "traced the log weights of 64 samples" in err
    assert "runs eagerly" not in err
    for key in ("khat", "log_px_per_point", "elbo_per_point", "kl_per_dim",
                "amortization_gap_per_point", "approximation_gap_per_point"):  # fmt: skip
        np.testing.assert_allclose(compiled[key], eager[key], rtol=1e-5, atol=1e-5, err_msg=key)
    assert compiled["active_units"] == eager["active_units"]
    assert (
        main(
            [
                "diagnose",
                str(digits_run),
                "--points",
                "3",
                "--num-samples",
                "32",
                "--gap-steps",
                "5",
                "--compile",
                "--json",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["num_samples"] == 32 and len(printed["khat"]) == 3


def test_diagnose_cli_with_nuts_prints_one_json_object(run_cli, digits_run, tmp_path):
    result = run_cli(
        "diagnose", digits_run, "--points", "5", "--nuts", "--nuts-warmup", "50",
        "--nuts-samples", "50", "--num-samples", "100", "--gap-steps", "30", "--out",
        tmp_path / "d", "--json", cwd=tmp_path, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # fails unless stdout is exactly one JSON value
    assert {"indices", "khat", "log_px", "elbo", "amortization_gap", "approximation_gap",
            "active_units", "kl_per_dim", "khat_fraction_above_0_7", "log_px_per_point",
            "nuts"} <= set(summary)  # fmt: skip
    assert summary["indices"] == [0, 1, 2, 3, 4]
    nuts = summary["nuts"]
    assert {"rhat_max", "ess_bulk_min", "ess_tail_min", "divergences", "mean",
            "std_mean_diff", "scale_ratio"} <= set(nuts)  # fmt: skip
    assert np.array(nuts["mean"]).shape == (5, 3)
    assert sum(summary[f"khat_count_{c}"] for c in ("below_0_5", "0_5_to_0_7", "above_0_7")) == 5
    import arviz as az

    reference = az.from_netcdf(tmp_path / "d" / "nuts.nc")
    assert reference.posterior["z"].dims == ("chain", "draw", "obs_id", "latent_dim")
    assert reference.posterior["z"].shape == (4, 50, 5, 3)
    assert reference.sample_stats["diverging"].shape == (4, 50)
    assert int(reference.sample_stats["diverging"].sum()) == nuts["divergences"]
    for name in ("khat.png", "kl_per_dim.png", "forest.png", "pair.png"):
        assert (tmp_path / "d" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.fixture
def keep_sigterm():
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def test_diagnose_cli_bad_input_exits_2_with_a_message(digits_run, capsys, keep_sigterm):
    assert main(["diagnose", str(digits_run), "--indices", "3,5000"]) == 2
    error = capsys.readouterr().err
    assert "--indices 5000" in error and f"has {DIGITS_TEST_SIZE} points" in error
    assert main(["diagnose", str(digits_run), "--num-samples", "10"]) == 2
    assert "--num-samples 10" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["diagnose", str(digits_run), "--points", "3", "--indices", "1,2"])
    assert exit_info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


# --- a pair in memory ------------------------------------------------------------------------

#: Keys that say where a diagnosis came from or how long it took, not what it found.
WHERE_AND_WHEN = {"run_dir", "split", "checkpoint", "epoch", "dataset", "pair", "seconds",
                  "out", "files"}  # fmt: skip


def test_a_pair_in_memory_gives_the_numbers_of_its_run_directory(digits_run):
    settings = dict(indices=[7, 2, 11], num_samples=32, gap_steps=20, seed=5, progress=False)
    from_path = diagnose(digits_run, save=False, **settings)
    run = load_run(digits_run)
    in_memory = diagnose(run.pair, run.split("test"), **settings)
    assert isinstance(in_memory, PosteriorDiagnosis) and isinstance(from_path, PosteriorDiagnosis)
    assert from_path["split"] == "test" and from_path["run_dir"] == str(digits_run)
    context = ("run_dir", "split", "checkpoint", "epoch", "dataset", "pair")
    assert all(in_memory[key] is None for key in context)

    def what_was_found(result):
        return {key: value for key, value in result.to_dict().items() if key not in WHERE_AND_WHEN}

    found, expected = what_was_found(in_memory), what_was_found(from_path)
    assert list(found) == list(expected)
    for key, value in expected.items():
        assert found[key] == value, key  # the same seed: the same numbers, bit for bit
    assert found["indices"] == [7, 2, 11]
    np.testing.assert_array_equal(
        in_memory.to_inference_data().posterior["z"].values,
        from_path.to_inference_data().posterior["z"].values,
    )
    with pytest.raises(DiagnoseError, match=r"--indices 300 out of range: x has 300 points"):
        diagnose(run.pair, run.split("test"), indices=[300], num_samples=32)


class TutorialVAE(torch.nn.Module):
    """Pyro's tutorial VAE as a user writes it: pyro.module, a data plate, a Normal prior."""

    def __init__(self, x_dim: int = 64, z_dim: int = 2, hidden: int = 32):
        super().__init__()
        self.z_dim = z_dim
        self.decoder = torch.nn.Sequential(
            torch.nn.Linear(z_dim, hidden), torch.nn.Softplus(), torch.nn.Linear(hidden, x_dim)
        )
        self.encoder = torch.nn.Sequential(torch.nn.Linear(x_dim, hidden), torch.nn.Softplus())
        self.loc = torch.nn.Linear(hidden, z_dim)
        self.log_scale = torch.nn.Linear(hidden, z_dim)

    def encode(self, x):
        hidden = self.encoder(x)
        return self.loc(hidden), self.log_scale(hidden).exp()

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encode(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def test_a_users_pair_trained_by_plain_svi_is_diagnosed_without_a_run_directory(tmp_path):
    import arviz as az

    from pyro_vae import load_dataset
    from pyro_vae.runs.config import ConfigError

    digits = load_dataset("digits").test[:40]
    x = torch.bernoulli(digits, generator=torch.Generator().manual_seed(0))
    pair = TutorialVAE()
    svi = pyro.infer.SVI(pair.model, pair.guide, pyro.optim.Adam({"lr": 1e-2}),
                         pyro.infer.Trace_ELBO())  # fmt: skip
    for _ in range(30):
        svi.step(x)
    with pytest.raises(ConfigError, match="out=FOLDER"):
        diagnose(pair, x, save=True, num_samples=32)
    result = diagnose(pair, x, points=4, num_samples=32, gap_steps=20, nuts=True, nuts_chains=2,
                      nuts_warmup=10, nuts_samples=10, progress=False)  # fmt: skip
    assert result["run_dir"] is None and result["indices"] == [0, 1, 2, 3]
    assert not any(tmp_path.iterdir()), "nothing is written without save or out"
    # a Gaussian q(z|x) of x alone: its mean and the KL to N(0, I) per dim in closed form
    with torch.no_grad():
        loc, scale = pair.encode(x[:4])
    loc, variance = loc.double().numpy(), scale.double().numpy() ** 2
    np.testing.assert_allclose(result["posterior_mean"], loc, rtol=1e-5, atol=1e-6)
    kl = (0.5 * (loc**2 + variance - 1 - np.log(variance))).mean(0)
    np.testing.assert_allclose(result["kl_per_dim"], kl, rtol=1e-4, atol=1e-6)
    log_px, elbo = np.array(result["log_px_per_point"]), np.array(result["elbo_per_point"])
    assert (elbo <= log_px).all() and result["kl_method"] == {"z": "analytic"}

    guide_draws = result.to_inference_data()
    assert isinstance(guide_draws, az.InferenceData) and "posterior" in guide_draws.groups()
    assert guide_draws.posterior["z"].dims == ("chain", "draw", "obs_id", "latent_dim")
    assert guide_draws.posterior["z"].shape == (1, 32, 4, 2)
    assert list(guide_draws.posterior["obs_id"].values) == [0, 1, 2, 3]
    reference = result.to_inference_data("nuts")
    assert reference.posterior["z"].shape == (2, 10, 4, 2)
    assert int(reference.sample_stats["diverging"].sum()) == result["nuts"]["divergences"]

    written = result.plot(tmp_path / "figures")
    assert [path.name for path in written] == ["khat.png", "kl_per_dim.png", "forest.png",
                                               "pair.png"]  # fmt: skip
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    text = result.summary()
    assert "k-hat" in text and text.startswith("x: 4 points (0,1,2,3)")
    assert "NUTS 2 chains x 10 draws" in text and repr(result) == text
    assert json.loads(json.dumps(result.to_dict()))["khat_status"] == result["khat_status"]
