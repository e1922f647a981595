"""Pairs written the way Pyro users write them (tests/pairs/): β-VAEs under poutine.scale,
dropout and BatchNorm, unsized plates, sibling imports, global latents, several observed
sites, count data, a guide too narrow for importance sampling."""

import csv
import json
import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pyro_vae
from pyro_vae.analysis.diagnose import diagnose
from pyro_vae.analysis.evaluate import evaluate
from pyro_vae.infer.estimators import (
    estimate_log_px,
    evaluation_view,
    log_importance_weights,
    low_ess_warnings,
)
from pyro_vae.infer.handlers import TrainingScales, kl_weight
from pyro_vae.pairs import (
    INPUT_SIZE_NAMES,
    PairError,
    build_pair,
    check_pair,
    evaluation_mode,
    input_arguments,
    record_pair,
)
from pyro_vae.runs.config import TrainConfig
from pyro_vae.training.train import load_checkpoint, train

PAIRS_DIR = Path(__file__).resolve().parent / "pairs"
DIGITS_SHAPE = (1, 8, 8)


def spec(name: str) -> str:
    """``FILE.py:NAME`` of a pair in tests/pairs/, e.g. ``beta_vae.py:BetaVAE``."""
    return f"{PAIRS_DIR}/{name}"


def build(name: str, image_shape=DIGITS_SHAPE, **kwargs):
    return build_pair(image_shape, spec(name), kwargs)


def digits_batch(num_points: int = 40, seed: int = 0) -> torch.Tensor:
    data = pyro_vae.load_dataset("digits")
    return torch.bernoulli(data.test[:num_points], generator=torch.Generator().manual_seed(seed))


def small_config(tmp_path, pair: str | None, **overrides) -> TrainConfig:
    values = dict(
        dataset="digits", pair=pair, epochs=2, batch_size=50, train_limit=200, device="cpu",
        out=str(tmp_path / "run"),
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


# ---------------------------------------------------------------------------------------------
# log p(x) is the model's, whatever the pair scales


def test_beta_pair_and_its_twin_give_identical_log_px_and_elbo():
    beta4 = build("beta_vae.py:BetaVAE", beta=4.0)
    twin = build("beta_vae.py:BetaVAE", beta=1.0)
    twin.load_state_dict(beta4.state_dict())
    x = digits_batch()
    results = {}
    for name, pair in (("beta4", beta4), ("twin", twin)):
        info = check_pair(pair, x)
        pyro.set_rng_seed(3)
        results[name] = estimate_log_px(evaluation_view(pair, info, x), x, 200)
        results[name + "_info"] = info
    assert results["beta4_info"].scaled_sites == ("z",)
    assert results["twin_info"].scaled_sites == ()
    for key in ("log_px", "elbo", "ess"):
        assert torch.equal(results["beta4"][key], results["twin"][key]), key
    # the scaled densities Pyro's own traces hold differ: the test would catch them
    pyro.set_rng_seed(3)
    guide_trace = poutine.trace(beta4.guide).get_trace(x)
    guide_trace.compute_log_prob()
    assert guide_trace.nodes["z"]["scale"] == 4.0
    unscaled = guide_trace.nodes["z"]["fn"].log_prob(guide_trace.nodes["z"]["value"])
    assert torch.allclose(guide_trace.nodes["z"]["log_prob"], 4.0 * unscaled)


def test_a_scaled_linear_gaussian_pair_still_estimates_its_exact_log_px():
    """poutine.scale around the whole model and guide: IS still converges to the closed form."""
    pair = pyro_vae.pairs.PAIRS["linear-gaussian"].factory(
        (1, 1, 5), z_dim=2, noise_scale=0.5, covariance="full"
    )
    pair.double()
    pair.encoder.set_to_exact_posterior(pair.decoder)  # q(z|x) = p(z|x): every weight is p(x)
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    scaled = pyro_vae.pairs.FunctionPair(
        poutine.scale(pair.model, scale=3.0), poutine.scale(pair.guide, scale=3.0)
    )
    info = check_pair(scaled, x)
    assert set(info.scaled_sites) == {"z", "x"}
    exact = pair.decoder.exact_log_marginal(x)
    pyro.set_rng_seed(0)
    out = estimate_log_px(evaluation_view(scaled, info, x), x, 50)
    assert torch.allclose(out["log_px"], exact, atol=1e-8)
    assert torch.allclose(out["elbo"], exact, atol=1e-8)  # the bound is tight at q = p(z|x)


def test_evaluate_reports_the_scaled_sites_and_the_same_numbers_for_the_twin(tmp_path):
    result = train(small_config(tmp_path, spec("beta_vae.py:BetaVAE"), epochs=1))
    assert result.config.pair_kwargs == {}
    beta4 = evaluate(result.run_dir, num_samples=50, save=False)
    twin = evaluate(
        result.run_dir, num_samples=50, save=False, pair=build("beta_vae.py:BetaVAE", beta=1.0)
    )
    assert beta4["scaled_sites"] == ["z"] and twin["scaled_sites"] == []
    assert beta4["log_px"] == twin["log_px"] and beta4["elbo"] == twin["elbo"]


# ---------------------------------------------------------------------------------------------
# β and KL warm-up


def test_kl_weight_rises_linearly_then_stays():
    assert kl_weight(0, beta=2.0, warmup_steps=4) == 0.0
    assert kl_weight(1, beta=2.0, warmup_steps=4) == 0.5
    assert kl_weight(3, beta=2.0, warmup_steps=4, start=1.0) == 1.75
    assert kl_weight(4, beta=2.0, warmup_steps=4) == 2.0
    assert kl_weight(100, beta=2.0, warmup_steps=4) == 2.0
    assert kl_weight(0, beta=0.5) == 0.5  # no warm-up


def test_training_scales_weigh_the_kl_term_by_beta():
    """Trace_ELBO under TrainingScales(beta) = -(E log p(x|z) - beta (log q - log p(z)))."""
    pair = build("unsized_plate.py:UnsizedPlateVAE")
    x = digits_batch(16)
    scales = TrainingScales(data_plate="data")
    scales.beta = 2.5
    pyro.set_rng_seed(7)
    loss = pyro.infer.Trace_ELBO().loss(scales(pair.model), scales(pair.guide), x)
    pyro.set_rng_seed(7)
    guide_trace = poutine.trace(pair.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    reconstruction = model_trace.nodes["x"]["log_prob"].sum()
    kl = guide_trace.nodes["z"]["log_prob"].sum() - model_trace.nodes["z"]["log_prob"].sum()
    assert loss == pytest.approx(-(reconstruction - 2.5 * kl).item(), rel=1e-5)


def test_kl_warmup_resumes_bit_exact_mid_warmup(tmp_path):
    # 200 points, batch 50: 4 steps an epoch; the warm-up lasts 10 steps, so it is still
    # going on when the run is interrupted after epoch 1
    kwargs = dict(epochs=3, kl_warmup=10, beta=2.0, kl_warmup_start=0.5,
                  pair="mlp", pair_kwargs={"hidden": [16], "z_dim": 3})  # fmt: skip
    whole = train(small_config(tmp_path / "whole", **kwargs))
    train(small_config(tmp_path / "parts", **{**kwargs, "epochs": 1}))
    parts = train(small_config(tmp_path / "parts", **kwargs), resume=True)
    assert [r["train_loss"] for r in parts.history] == [r["train_loss"] for r in whole.history]
    assert [r["beta"] for r in whole.history] == [
        kl_weight(step, 2.0, 10, 0.5) for step in (3, 7, 11)
    ]
    a = load_checkpoint(whole.run_dir / "checkpoint.pt")
    b = load_checkpoint(parts.run_dir / "checkpoint.pt")
    assert a["step"] == b["step"] == 12
    assert all(torch.equal(a["module"][k], b["module"][k]) for k in a["module"])
    header = (parts.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "beta" in header.split(",")
    # validation reports the true ELBO (beta = 1): an evaluation at K=1 agrees in size
    assert all(r["valid_elbo"] < 0 for r in whole.history)


def test_beta_changes_training_but_not_what_validation_measures(tmp_path):
    common = dict(epochs=1, pair="mlp", pair_kwargs={"hidden": [16], "z_dim": 3})
    plain = train(small_config(tmp_path / "plain", **common))
    heavy = train(small_config(tmp_path / "heavy", beta=8.0, **common))
    assert heavy.history[0]["beta"] == 8.0 and plain.history[0]["beta"] == 1.0
    # the training objective weighs the KL 8x, so its loss is larger...
    assert heavy.history[0]["train_loss"] > plain.history[0]["train_loss"]
    # ...while both validation ELBOs are true ELBOs of models that started alike
    assert abs(heavy.history[0]["valid_elbo"] - plain.history[0]["valid_elbo"]) < 10


# ---------------------------------------------------------------------------------------------
# train and eval modes


def test_dropout_batchnorm_log_px_does_not_depend_on_the_evaluation_batch_size(tmp_path):
    result = train(
        small_config(
            tmp_path,
            spec("dropout_batchnorm.py:DropoutBatchNormVAE"),
            pair_kwargs={"hidden": 32, "z_dim": 4},
            epochs=2,
        )  # fmt: skip
    )
    per_point = {}
    for batch_size in (1, 20, 200):
        summary = evaluate(result.run_dir, num_samples=100, limit=20, batch_size=batch_size)
        per_point[batch_size] = np.load(result.run_dir / "evaluation_test.npz")["log_px"]
        assert summary["num_points"] == 20
    # the same points with fresh draws: per-point differences are Monte-Carlo noise only
    for batch_size in (1, 20):
        difference = per_point[batch_size] - per_point[200]
        noise = difference.std(ddof=1) / math.sqrt(difference.size)
        assert abs(difference.mean()) < 4 * noise + 0.02, (batch_size, difference.mean(), noise)
    # modules are back in training mode after an evaluation from Python
    pair = build("dropout_batchnorm.py:DropoutBatchNormVAE", hidden=32, z_dim=4)
    with evaluation_mode(pair):
        assert not any(m.training for m in pair.modules())
    assert all(m.training for m in pair.modules())


def test_in_evaluation_mode_a_point_is_encoded_alone_as_in_a_batch():
    pair = build("dropout_batchnorm.py:DropoutBatchNormVAE", hidden=32, z_dim=4)
    x = digits_batch(30)
    pair.train()
    for _ in range(3):  # some running statistics
        pair.encoder(x)
    with evaluation_mode(pair), torch.no_grad():
        alone = pair.encoder(x[:1])
        together = [t[:1] for t in pair.encoder(x)]
    assert [torch.allclose(a, b, atol=1e-6) for a, b in zip(alone, together)] == [True, True]
    with torch.no_grad():  # in training mode the batch moves every point's code
        assert not torch.allclose(pair.encoder(x[:2])[0], pair.encoder(x)[0][:2])


# ---------------------------------------------------------------------------------------------
# plates as Pyro allows them


def test_an_unsized_data_plate_is_accepted_and_evaluated(tmp_path):
    pair = build("unsized_plate.py:UnsizedPlateVAE")
    info = check_pair(pair, digits_batch(8))
    assert info.data_plate == "data" and info.data_plate_dim == -1 and info.global_sites == ()
    result = train(small_config(tmp_path, spec("unsized_plate.py:UnsizedPlateVAE"), epochs=1))
    summary = evaluate(result.run_dir, num_samples=20, limit=10, save=False)
    assert math.isfinite(summary["log_px"]) and summary["elbo"] <= summary["log_px"]


def _unsized_broadcasting_pair():
    def model(x):
        with pyro.plate("data"):
            z = pyro.sample("z", dist.Normal(x.new_zeros(1, 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data"):
            pyro.sample("z", dist.Normal(x.new_zeros(1, 2), 1.0).to_event(1))

    return pyro_vae.pairs.FunctionPair(model, guide)


def test_plate_messages_say_which_plate_dim_and_size_was_found():
    x = torch.randn(5, 1)
    with pytest.raises(PairError) as raised:
        check_pair(_unsized_broadcasting_pair(), x)
    message = str(raised.value)
    assert "plate 'data' (dim -1, no size, batch dim there 1)" in message
    assert "model site 'x' observes data outside a plate over the 5 data points" in message

    def model(x):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))

    # a forgotten plate: z's shape follows the batch, so it is no global latent
    with pytest.raises(PairError, match=r"site 'z' is not inside a plate .*no plate.*follows"):
        check_pair(pyro_vae.pairs.FunctionPair(model, guide), x)


def test_a_pair_that_subsamples_its_own_data_plate_is_recognized():
    def model(x):
        with pyro.plate("data", 1000, subsample_size=x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([x.shape[0], 2]).to_event(1), obs=x)

    def guide(x):
        pass

    info = check_pair(pyro_vae.pairs.FunctionPair(model, guide), torch.randn(4, 2))
    assert info.data_subsampled and info.scaled_sites == ("x",)  # scale 1000 / 4


# ---------------------------------------------------------------------------------------------
# pair files import their siblings; constructor arguments


@pytest.mark.parametrize(
    "name", ["vae_with_sibling.py:SiblingVAE", "vae_with_package.py:PackageVAE"]
)
def test_pair_files_import_their_siblings(name):
    folder = str(PAIRS_DIR / "sibling_import")
    for module in ("modules", "utils", "utils.custom_mlp"):
        sys.modules.pop(module, None)
    pair = build_pair(DIGITS_SHAPE, f"{folder}/{name}", {})
    assert folder not in sys.path  # only while the file is imported
    assert check_pair(pair, digits_batch(4)).observed_sites == ("x",)


def test_a_missing_sibling_names_the_folder_searched(tmp_path):
    (tmp_path / "pair.py").write_text("from no_such_sibling import Encoder\n")
    with pytest.raises(PairError, match=r"looked up in the file's folder .*is the module there"):
        build_pair(DIGITS_SHAPE, f"{tmp_path}/pair.py:Pair", {})


def test_input_size_arguments_are_filled_in_by_their_usual_names():
    def factory(vocab_size, image_shape, hidden=3):
        return None

    assert input_arguments(factory, (1, 8, 8)) == {"vocab_size": 64, "image_shape": (1, 8, 8)}
    assert {"x_dim", "input_dim", "input_size", "vocab_size", "num_features"} <= set(
        INPUT_SIZE_NAMES
    )


def test_a_pair_object_records_its_constructor_arguments(tmp_path, run_cli):
    pair = build("beta_vae.py:BetaVAE", z_dim=5, hidden=24, beta=2.0)
    record = record_pair(pair)
    assert record.spec == spec("beta_vae.py:BetaVAE") and record.missing == ()
    assert record.kwargs == {"z_dim": 5, "hidden": 24, "beta": 2.0}
    result = train(small_config(tmp_path, None, epochs=1), pair=pair)
    assert result.config.pair_note is None
    resumed = train(small_config(tmp_path, None, epochs=2), pair=pair, resume=True)
    assert resumed.config.pair == record.spec and len(resumed.history) == 2
    # the command line rebuilds it from the run directory alone
    shown = run_cli("evaluate", result.run_dir, "--num-samples", "5", "--limit", "4",
                    "--json", cwd=tmp_path)  # fmt: skip
    assert json.loads(shown.stdout)["scaled_sites"] == ["z"]


def test_optional_arguments_kept_in_no_attribute_are_recorded_as_defaults_and_said(tmp_path, capfd):
    (tmp_path / "pair.py").write_text(
        textwrap.dedent("""
        import torch
        from pyro_vae.pairs import PAIRS

        class Wrapped(torch.nn.Module):
            def __init__(self, x_dim, width=16, activation="tanh"):
                super().__init__()
                self.width = width  # activation is used, never stored
                self.inner = PAIRS["mlp"].factory((1, 8, 8), hidden=[width], z_dim=2,
                                                  activation=activation)

            def model(self, x):
                self.inner.model(x)

            def guide(self, x):
                self.inner.guide(x)
    """)
    )
    pair = build_pair(DIGITS_SHAPE, f"{tmp_path}/pair.py:Wrapped", {"activation": "relu"})
    record = record_pair(pair)
    assert record.kwargs == {"width": 16} and record.assumed == ("activation",)
    capfd.readouterr()
    result = train(small_config(tmp_path, None, epochs=1), pair=pair)
    said = capfd.readouterr().err
    assert "keeps no attribute named activation" in said and "pair_kwargs" in said
    assert result.config.pair_kwargs == {"width": 16}


def test_a_pair_that_cannot_be_rebuilt_says_how_to_pass_it(tmp_path, run_cli):
    class LocalVAE(torch.nn.Module):  # defined in a function: not importable
        def __init__(self, x_dim, width):
            super().__init__()
            self.inner = build("beta_vae.py:BetaVAE", hidden=width)

        def model(self, x):
            self.inner.model(x)

        def guide(self, x):
            self.inner.guide(x)

    result = train(small_config(tmp_path, None, epochs=1), pair=LocalVAE(64, 16))
    note = result.config.pair_note
    assert "cannot be imported" in note and "pair_kwargs" in note and "pair=" in note
    shown = run_cli("evaluate", result.run_dir, cwd=tmp_path, check=False)
    assert shown.returncode == 2 and "cannot be imported" in shown.stderr
    assert "Traceback" not in shown.stderr


# ---------------------------------------------------------------------------------------------
# global latents


def test_a_bayesian_decoder_pair_trains_and_evaluates_conditioned_on_its_globals(tmp_path, capsys):
    globals_ = ["decoder.fc1.weight", "decoder.fc1.bias", "decoder.fc2.weight", "decoder.fc2.bias"]
    pair = build("bayesian_decoder.py:BayesianDecoderVAE")
    info = check_pair(pair, digits_batch(8))
    assert list(info.global_sites) == globals_ and info.local_latent_sites == ("z",)
    assert not info.data_subsampled
    result = train(small_config(tmp_path, spec("bayesian_decoder.py:BayesianDecoderVAE")))
    assert "scaled by N/B (N = 200)" in capsys.readouterr().err
    # per point: the N/B-scaled minibatch loss divided by N = the negative ELBO per point plus
    # KL(q(W) || p(W)) / N, about 1.8 nats for each of the 1,444 weights at the start: 13
    row = result.history[-1]
    assert 0 < row["train_loss"] + row["valid_elbo"] < 25
    summary = evaluate(result.run_dir, num_samples=50, limit=20, save=False)
    assert summary["conditioned_on"]["sites"] == {name: "guide mean" for name in globals_}
    assert summary["elbo"] <= summary["log_px"] < 0
    diagnosis = diagnose(result.run_dir, points=4, num_samples=50, gap_steps=5, save=False)
    assert diagnosis["latent_sites"] == ["z"]
    assert any("global latent site(s)" in note for note in diagnosis["notes"])


def test_global_latents_make_the_minibatch_loss_stand_for_the_whole_set():
    """TrainingScales(data_scale=N/B): global terms once, local terms N/B times."""
    pair = build("bayesian_decoder.py:BayesianDecoderVAE")
    x = digits_batch(10)
    scales = TrainingScales(data_plate="data")
    scales.data_scale = 30.0
    pair.guide(x)  # the guide's params are initialized by their first call
    pyro.set_rng_seed(2)
    loss = pyro.infer.Trace_ELBO().loss(scales(pair.model), scales(pair.guide), x)
    pyro.set_rng_seed(2)
    guide_trace = poutine.trace(pair.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(x)
    local, global_ = 0.0, 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        trace.compute_log_prob()
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or name == "data":
                continue
            if name in ("z", "x"):
                local += sign * site["log_prob"].sum().item()
            else:
                global_ += sign * site["log_prob"].sum().item()
    assert loss == pytest.approx(-(global_ + 30.0 * local), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# several observed sites


def test_every_observed_site_counts_in_the_log_weights():
    pair = build("sequence.py:RowSequenceVAE")
    x = digits_batch(6)
    info = check_pair(pair, x)
    assert info.observed_sites == tuple(f"x_{t}" for t in range(8))
    pyro.set_rng_seed(5)
    log_weights = log_importance_weights(pair.model, pair.guide, x, 1, vectorize=False)
    pyro.set_rng_seed(5)
    guide_trace = poutine.trace(pair.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(x)
    by_hand = sum(
        model_trace.nodes[name]["fn"].log_prob(model_trace.nodes[name]["value"])
        for name in info.observed_sites + ("z",)
    ) - guide_trace.nodes["z"]["fn"].log_prob(guide_trace.nodes["z"]["value"])
    assert torch.allclose(log_weights[0], by_hand, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["sequence.py:RowSequenceVAE", "partial_image.py:ConditionalCompletionVAE"]
)
def test_sequence_and_partial_image_pairs_evaluate_and_sample(tmp_path, run_cli, name):
    run_dir = tmp_path / "run"
    run_cli("train", "--pair", spec(name), "--epochs", "1", "--train-limit", "100",
            "--out", run_dir, cwd=tmp_path)  # fmt: skip
    shown = run_cli("evaluate", run_dir, "--num-samples", "10", "--limit", "20", "--json",
                    cwd=tmp_path)  # fmt: skip
    assert math.isfinite(json.loads(shown.stdout)["log_px"])
    drawn = run_cli("sample", run_dir, "--out", tmp_path / "grid.png", cwd=tmp_path)
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    # every row is drawn: the completion pair's lower halves beside their upper halves
    assert "skipped" not in drawn.stderr


# ---------------------------------------------------------------------------------------------
# count data; likelihood support; low ESS


@pytest.fixture
def counts_npz(tmp_path):
    generator = np.random.default_rng(0)
    topics = generator.dirichlet(np.full(30, 0.3), size=3)
    mixes = generator.dirichlet(np.ones(3), size=300)
    counts = np.stack([generator.multinomial(40, mix @ topics) for mix in mixes])
    path = tmp_path / "bow.npz"
    np.savez(path, train=counts[:240].astype(np.uint8), valid=counts[240:270].astype(np.uint8),
             test=counts[270:].astype(np.uint8))  # fmt: skip
    return path, counts


def test_count_data_stay_counts_and_a_topic_model_trains_on_them(tmp_path, counts_npz):
    path, counts = counts_npz
    data = pyro_vae.load_dataset(str(path))
    assert torch.equal(data.test, torch.from_numpy(counts[270:]).float())
    config = small_config(tmp_path, spec("prodlda.py:ProdLDA"), dataset=str(path))
    result = train(config)
    assert result.config.binarize == "none" and result.config.pixel_scale == "auto"
    summary = evaluate(result.run_dir, num_samples=20, save=False)
    assert summary["elbo"] <= summary["log_px"] < 0


def test_values_outside_a_likelihood_support_name_that_likelihood():
    pair = build("prodlda.py:ProdLDA", image_shape=(1, 1, 30))
    grey = torch.rand(8, 30)
    with pytest.raises(PairError, match=r"the Multinomial likelihood got values outside"):
        check_pair(pair, grey)
    bernoulli = build("beta_vae.py:BetaVAE")
    with pytest.raises(PairError, match=r"Bernoulli likelihood .*--binarize dynamic"):
        check_pair(bernoulli, torch.rand(8, 64))


def test_low_ess_is_reported_for_a_guide_far_too_narrow(tmp_path, capsys):
    result = train(small_config(tmp_path, spec("narrow_guide.py:NarrowGuideVAE"), epochs=1))
    summary = evaluate(result.run_dir, num_samples=100, limit=20, save=False)
    assert summary["ess_mean"] < 10
    assert len(summary["warnings"]) == 1 and "low effective sample size" in summary["warnings"][0]
    assert "pyro-vae diagnose" in capsys.readouterr().err


def test_low_ess_thresholds():
    assert low_ess_warnings(9.9, 100) and not low_ess_warnings(10.5, 100)
    assert low_ess_warnings(49.0, 5000) and not low_ess_warnings(51.0, 5000)
    assert not low_ess_warnings(1.0, 10)  # too few draws to judge


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "args, message",
    [
        (["--beta", "-1"], "--beta -1.0: must be a number > 0"),
        (["--kl-warmup", "-3"], "--kl-warmup -3: must be a number of steps >= 0"),
        (["--kl-warmup-start", "nan"], "--kl-warmup-start nan: must be a number >= 0"),
        (["--pair", "PAIRS/nowhere.py:X"], "does not exist"),
        (["--pixel-scale", "none"], "--pixel-scale none: the named data set 'digits'"),
    ],
)
def test_bad_input_gets_a_clear_message_and_exit_2(run_cli, tmp_path, args, message):
    args = [a.replace("PAIRS", str(PAIRS_DIR)) for a in args]
    shown = run_cli("train", "--out", tmp_path / "run", "--epochs", "1", *args, cwd=tmp_path,
                    check=False)  # fmt: skip
    assert shown.returncode == 2, shown.stderr
    assert message in shown.stderr and "Traceback" not in shown.stderr


def test_a_sibling_importing_pair_file_is_reopened_by_the_command_line(run_cli, tmp_path):
    pair = f"{PAIRS_DIR}/sibling_import/vae_with_sibling.py:SiblingVAE"
    run_dir = tmp_path / "run"
    run_cli("train", "--pair", pair, "--epochs", "1", "--train-limit", "100", "--out", run_dir,
            cwd=tmp_path)  # fmt: skip
    shown = run_cli("evaluate", run_dir, "--num-samples", "5", "--limit", "10", cwd=tmp_path)
    assert "log p(x) ~" in shown.stdout


def test_gradvar_and_convergence_of_the_beta_pair_equal_its_twins(tmp_path):
    from pyro_vae.analysis.convergence import convergence_study
    from pyro_vae.analysis.gradvar import gradient_variance

    result = train(small_config(tmp_path, spec("beta_vae.py:BetaVAE"), epochs=1))
    outputs = {}
    for name, beta in (("beta4", 4.0), ("twin", 1.0)):
        pair = build("beta_vae.py:BetaVAE", beta=beta)
        grads = gradient_variance(result.run_dir, estimators=["reparam"], num_draws=4,
                                  batch_size=10, pair=pair, save=False)  # fmt: skip
        study = convergence_study(result.run_dir, ks=[1, 10], estimators=["is"], num_points=4,
                                  repeats=2, pair=pair, save=False)  # fmt: skip
        outputs[name] = (grads, study)
    (g4, s4), (g1, s1) = outputs["beta4"], outputs["twin"]
    assert g4["estimators"]["reparam"]["variance"] == g1["estimators"]["reparam"]["variance"]
    assert g4["scaled_sites"] == ["z"] and g1["scaled_sites"] == []
    assert [r["estimate"] for r in s4["results"]] == [r["estimate"] for r in s1["results"]]
    assert s4["scaled_sites"] == ["z"] and s4["conditioned_on"] is None


def test_prior_samples_of_a_bayesian_decoder_keep_the_global_weights_fixed():
    from pyro_vae.analysis.sampling import prior_samples

    pair = build("bayesian_decoder.py:BayesianDecoderVAE")
    x = digits_batch(6)
    info = check_pair(pair, x)
    view = evaluation_view(pair, info, x)
    trace = poutine.trace(view.prior_model()).get_trace(x)
    for name in info.global_sites:
        assert torch.equal(trace.nodes[name]["value"], view.fixed_values[name])
    assert not torch.equal(trace.nodes["x"]["value"], x)  # x itself is drawn
    means = prior_samples(view, x, info.observed_sites, info.data_plate)
    assert means["x"].shape == (6, 64)


def test_beta_and_kl_warmup_from_the_command_line(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    run_cli("train", "--beta", "2", "--kl-warmup", "6", "--kl-warmup-start", "1",
            "--epochs", "2", "--train-limit", "200", "--batch-size", "50", "--out", run_dir,
            cwd=tmp_path)  # fmt: skip
    config = (run_dir / "config.toml").read_text()
    assert "beta = 2.0" in config and "kl_warmup = 6" in config
    with (run_dir / "metrics.csv").open() as handle:
        betas = [float(row["beta"]) for row in csv.DictReader(handle)]
    assert betas == [kl_weight(3, 2.0, 6, 1.0), 2.0]
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 8


def test_pixel_scale_choices_of_the_config_are_those_of_the_data_module():
    from pyro_vae.data import PIXEL_SCALES
    from pyro_vae.runs.config import PIXEL_SCALE_CHOICES

    assert PIXEL_SCALE_CHOICES == PIXEL_SCALES
    assert TrainConfig(pixel_scale=255).validate().pixel_scale == "255"  # a TOML number
