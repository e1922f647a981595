"""Labels: how pairs take them, which points keep them, how labelled and unlabelled batches
interleave, enumeration against exact sums, importance sampling with a discrete latent, and
the labelled pairs trained end to end."""

import math
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_vae.infer.estimators import log_importance_weights
from pyro_vae.infer.objectives import enumerated_guide, make_objective
from pyro_vae.pairs import PairError, check_pair
from pyro_vae.pairs.labels import (
    EpochPlan,
    LabelError,
    cluster_accuracy,
    epoch_plan,
    find_label_site,
    label_arguments,
    select_labelled,
    with_labels,
)
from pyro_vae.runs.config import TrainConfig
from pyro_vae.training.train import train

PAIRS_DIR = Path(__file__).parent / "pairs"

# ------------------------------------------------------------------------------------------
# Signatures


def test_with_labels_binds_the_batch_labels_and_refuses_another_batch():
    seen = []

    def model(x, y, scale=1.0):
        seen.append((x, y, scale))
        return x.shape[0]

    x, y = torch.zeros(4, 3), torch.tensor([2, 0, 1, 2])
    bound = with_labels(model, y)
    assert bound(x, scale=2.0) == 4
    assert seen[0][1] is y and seen[0][2] == 2.0
    with pytest.raises(LabelError, match="labels for 4 points were bound.*called with 3"):
        bound(torch.zeros(3, 3))


class _Pair:
    def __init__(self, model, guide):
        self.model, self.guide = model, guide


def test_label_arguments_read_the_signatures():
    assert label_arguments(_Pair(lambda x: None, lambda x: None)).takes is False
    optional = label_arguments(_Pair(lambda x, y=None: None, lambda x, y=None: None))
    assert optional.takes and not optional.needs and not optional.classifier
    needed = label_arguments(_Pair(lambda x, y: None, lambda x, y: None))
    assert needed.takes and needed.needs
    with pytest.raises(LabelError, match="model takes a second argument .* guide does not"):
        label_arguments(_Pair(lambda x, y=None: None, lambda x: None))


# ------------------------------------------------------------------------------------------
# Which points keep their labels


def test_select_labelled_is_balanced_seeded_and_leaves_the_rng_alone():
    labels = torch.arange(10).repeat(30)  # 300 points, 30 per class
    state = torch.get_rng_state()
    chosen = select_labelled(labels, 50, 10, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert chosen.numel() == 50 and chosen.unique().numel() == 50
    assert torch.bincount(labels[chosen], minlength=10).tolist() == [5] * 10
    assert torch.equal(chosen, select_labelled(labels, 50, 10, seed=3))
    assert not torch.equal(chosen, select_labelled(labels, 50, 10, seed=4))


@pytest.mark.parametrize(
    "count, message",
    [
        (55, "must divide among them; try 50 or 60"),
        (301, "the training set has only 300 points"),
        (0, "must be at least 1"),
    ],
)
def test_select_labelled_says_what_fits(count, message):
    with pytest.raises(LabelError, match=message):
        select_labelled(torch.arange(10).repeat(30), count, 10, seed=0)


def test_select_labelled_names_a_class_that_is_too_small():
    labels = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(3, dtype=torch.long)])
    with pytest.raises(LabelError, match="class 1 has only 3 training points; choose at most 6"):
        select_labelled(labels, 10, 2, seed=0)


# ------------------------------------------------------------------------------------------
# The epoch plan: stated counts


def _walk(plan: EpochPlan, epochs: int):
    """(labelled steps, unlabelled steps, labelled points seen) per epoch."""
    out = []
    for epoch in range(epochs):
        labelled = [t for t in range(plan.steps) if plan.is_labelled(t)]
        points = torch.cat(
            [plan.labelled_indices(epoch * plan.labelled_batches + i) for i in range(len(labelled))]
        )
        out.append((labelled, plan.steps - len(labelled), points))
    return out


def test_default_plan_sees_each_labelled_point_once_per_epoch_spread_evenly():
    labelled = torch.arange(0, 1000, 10)  # 100 labelled points of 1000
    plan = epoch_plan(1000, labelled, 30, drop_last=False, labelled_batches=None, seed=0)
    assert plan.unlabelled_batches == math.ceil(900 / 30) == 30
    assert plan.labelled_batches == math.ceil(100 / 30) == 4
    for steps, unlabelled, points in _walk(plan, 2):
        assert unlabelled == 30 and len(steps) == 4
        assert sorted(points.tolist()) == labelled.tolist()  # each once
        gaps = np.diff([-1, *steps, plan.steps - 1 + plan.steps // 4])
        assert gaps.max() - gaps.min() <= 1, steps


def test_more_labelled_batches_cycle_the_labelled_points():
    labelled = torch.arange(40)
    plan = epoch_plan(400, labelled, 20, drop_last=False, labelled_batches=9, seed=1)
    assert plan.steps == 18 + 9
    (steps, unlabelled, points), *_ = _walk(plan, 1)
    assert len(steps) == 9 and unlabelled == 18
    counts = torch.bincount(points, minlength=40)
    assert counts.min() >= 4 and counts.max() <= 5  # 9 batches of 20 over 40 points
    assert plan.labelled_batch_size == 20


def test_all_points_labelled_means_every_batch_is_and_drop_last_is_honoured():
    plan = epoch_plan(105, torch.arange(105), 10, drop_last=True, labelled_batches=None, seed=0)
    assert plan.steps == plan.labelled_batches == 10
    assert all(plan.is_labelled(t) for t in range(plan.steps))
    plan = epoch_plan(105, None, 10, drop_last=False, labelled_batches=None, seed=0)
    assert plan.steps == plan.unlabelled_batches == 11 and plan.labelled_batches == 0


def test_training_delivers_the_planned_batches(tmp_path):
    """A pair that counts its calls: one epoch of 30 labelled points of 300 digits at batch
    size 50 and --labelled-batches 3 calls it with labels 3 times, 150 points."""
    from pyro_vae.pairs import PAIRS

    calls = {"labelled": 0, "unlabelled": 0, "labelled_points": 0}

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = PAIRS["ss-m2"].factory((1, 8, 8), z_dim=2, hidden=[8])

        def model(self, x, y=None):
            self.inner.model(x, y)

        def guide(self, x, y=None):
            if not poutine.runtime.am_i_wrapped() or not torch.is_grad_enabled():
                return self.inner.guide(x, y)
            key = "unlabelled" if y is None else "labelled"
            calls[key] += 1
            calls["labelled_points"] += 0 if y is None else x.shape[0]
            self.inner.guide(x, y)

    config = TrainConfig(out=str(tmp_path / "run"), epochs=1, batch_size=50, train_limit=300,
                         num_labelled=30, labelled_batches=3, device="cpu")  # fmt: skip
    result = train(config, pair=Counting(), progress=False)
    assert calls == {"labelled": 3, "unlabelled": 6, "labelled_points": 90}
    assert result.config.num_labelled == 30
    assert 0 <= result.history[-1]["valid_accuracy"] <= 1


# ------------------------------------------------------------------------------------------
# Enumeration against the exact sum; the score function against it


class Mixture(nn.Module):
    """y ~ Cat(pi), x ~ N(mu_y, 1) in D dims; q(y|x) = softmax(W x + b). Everything exact."""

    def __init__(self, num_classes=3, x_dim=2):
        super().__init__()
        self.logits = nn.Parameter(torch.randn(num_classes, dtype=torch.float64))
        self.locs = nn.Parameter(2 * torch.randn(num_classes, x_dim, dtype=torch.float64))
        self.encoder = nn.Linear(x_dim, num_classes).double()

    def model(self, x):
        pyro.module("mixture", self)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=self.logits))
            pyro.sample("x", dist.Normal(self.locs[y], 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("mixture", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=self.encoder(x)))

    def exact_elbo(self, x):
        log_q = torch.log_softmax(self.encoder(x), -1)  # (B, C)
        log_prior = torch.log_softmax(self.logits, -1)
        log_lik = dist.Normal(self.locs, 1.0).to_event(1).log_prob(x.unsqueeze(-2))  # (B, C)
        return (log_q.exp() * (log_prior + log_lik - log_q)).sum()

    def exact_log_px(self, x):
        log_prior = torch.log_softmax(self.logits, -1)
        log_lik = dist.Normal(self.locs, 1.0).to_event(1).log_prob(x.unsqueeze(-2))
        return torch.logsumexp(log_prior + log_lik, -1)


@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
def test_enum_equals_the_exact_elbo_and_its_gradient(strategy):
    torch.manual_seed(0)
    pair, x = Mixture(), torch.randn(6, 2, dtype=torch.float64)
    elbo = make_objective("enum", max_plate_nesting=1)
    loss = elbo.differentiable_loss(pair.model, enumerated_guide(pair.guide, strategy), x)
    exact = -pair.exact_elbo(x)
    assert loss.item() == pytest.approx(exact.item(), abs=1e-10)
    params = list(pair.parameters())
    got = torch.autograd.grad(loss, params)
    want = torch.autograd.grad(exact, params)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-10)


def test_score_function_is_unbiased_but_noisy_where_enum_is_exact():
    """The score-function gradient of the same ELBO (y sampled) averages to the enumerated
    one within 4.5 standard errors, with a variance enumeration does not have."""
    torch.manual_seed(0)
    pair, x = Mixture(), torch.randn(6, 2, dtype=torch.float64)
    params = list(pair.parameters())
    enum = make_objective("enum", max_plate_nesting=1)
    exact = torch.autograd.grad(
        enum.differentiable_loss(pair.model, enumerated_guide(pair.guide), x), params
    )
    exact = torch.cat([g.flatten() for g in exact])
    sampled = make_objective("elbo", 200, max_plate_nesting=1)
    draws = []
    for _ in range(50):
        loss = sampled.differentiable_loss(pair.model, pair.guide, x)
        draws.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    draws = torch.stack(draws)
    mean, stderr = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert ((mean - exact).abs() <= 4.5 * stderr + 1e-8).all()
    assert draws.std(0).max() > 1e-3  # noisy
    again = torch.autograd.grad(
        enum.differentiable_loss(pair.model, enumerated_guide(pair.guide), x), params
    )
    assert torch.equal(torch.cat([g.flatten() for g in again]), exact)  # not noisy


# ------------------------------------------------------------------------------------------
# Importance sampling with a discrete latent: exact enumeration


class LabelledLinearGaussian(nn.Module):
    """y ~ Cat(pi); z ~ N(0, I); x ~ N(W z + b_y, s^2 I). Given y, x is Gaussian:
    p(x) = sum_y pi_y N(x; b_y, W W^T + s^2 I), and p(z|x,y) = N(S W^T (x - b_y) / s^2, S)
    with S = (I + W^T W / s^2)^-1. The guide: that exact q(z|x,y), and q(y|x) either the
    exact p(y|x) or uniform."""

    def __init__(self, num_classes=3, x_dim=3, z_dim=2):
        super().__init__()
        d = torch.float64
        self.pi_logits = torch.randn(num_classes, dtype=d)
        self.weight = torch.randn(x_dim, z_dim, dtype=d)
        self.offsets = 2 * torch.randn(num_classes, x_dim, dtype=d)
        self.noise = 0.7
        self.z_dim = z_dim
        self.exact_y = True

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=self.pi_logits))
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            loc = z @ self.weight.T + self.offsets[y]
            pyro.sample("x", dist.Normal(loc, self.noise).to_event(1), obs=x)

    def guide(self, x):
        logits = self.class_log_posterior(x) if self.exact_y else torch.zeros(3).double()
        precision = torch.eye(self.z_dim).double() + self.weight.T @ self.weight / self.noise**2
        covariance = torch.linalg.inv(precision)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=logits))
            loc = ((x - self.offsets[y]) @ self.weight / self.noise**2) @ covariance.T
            pyro.sample("z", dist.MultivariateNormal(loc, covariance))

    def marginals(self, x):
        covariance = self.weight @ self.weight.T + self.noise**2 * torch.eye(x.shape[1]).double()
        per_class = dist.MultivariateNormal(self.offsets, covariance).log_prob(x.unsqueeze(-2))
        return torch.log_softmax(self.pi_logits, -1) + per_class  # log p(x, y), (B, C)

    def class_log_posterior(self, x):
        return torch.log_softmax(self.marginals(x), -1)

    def exact_log_px(self, x):
        return torch.logsumexp(self.marginals(x), -1)


def test_importance_sampling_with_a_sampled_discrete_latent_is_exact():
    """With q(y|x) q(z|x,y) = p(y, z|x) every log weight is log p(x), to rounding; with a
    uniform q(y|x) the weights 3 p(x) p(y|x) vary with the sampled y only, with relative
    variance 3 sum_y p(y|x)^2 - 1 <= 2: one standard error of log p(x) at K = 20000 is at
    most sqrt(2 / K) = 0.01 nats, and the test allows 5."""
    torch.manual_seed(1)
    pair = LabelledLinearGaussian()
    x = torch.randn(5, 3, dtype=torch.float64) * 2
    exact = pair.exact_log_px(x)
    with torch.no_grad():
        log_weights = log_importance_weights(pair.model, pair.guide, x, 50)
    assert torch.allclose(log_weights, exact.expand(50, -1), atol=1e-10)
    pair.exact_y = False
    with torch.no_grad():
        log_weights = log_importance_weights(pair.model, pair.guide, x, 20000)
    estimate = torch.logsumexp(log_weights, 0) - math.log(log_weights.shape[0])
    assert torch.allclose(estimate, exact, atol=0.05), (estimate, exact)
    assert (log_weights.mean(0) < exact - 0.01).all()  # the ELBO of a poor q(y|x) is below


# ------------------------------------------------------------------------------------------
# The label site and classification accuracy


def test_find_label_site_and_check_pair_report_labels():
    from pyro_vae.pairs import PAIRS

    x = torch.bernoulli(torch.rand(4, 64))
    y = torch.tensor([0, 1, 2, 3])
    m2 = PAIRS["ss-m2"].factory((1, 8, 8), z_dim=2, hidden=[8])
    assert find_label_site(m2.model, x, y) == "y"
    info = check_pair(m2, x, y)
    assert (info.takes_labels, info.needs_labels, info.label_site) == (True, False, "y")
    assert info.has_classifier and info.enumerable_sites == ("y",)
    cvae = PAIRS["cvae"].factory((1, 8, 8), z_dim=2, hidden=[8])
    info = check_pair(cvae, x, y)
    assert (info.needs_labels, info.label_site) == (True, None)
    with pytest.raises(PairError, match="need labels .* but the data set has none"):
        check_pair(cvae, x)
    gmvae = PAIRS["gmvae"].factory((1, 8, 8), z_dim=2, hidden=[8])
    assert check_pair(gmvae, x).enumerable_sites == ("c",)


def test_cluster_accuracy_matches_clusters_to_classes():
    labels = np.array([0, 0, 1, 1, 2, 2])
    perfect = cluster_accuracy(np.array([2, 2, 0, 0, 1, 1]), labels)
    assert perfect["cluster_accuracy"] == 1.0 and perfect["cluster_to_class"] == {
        "0": 1, "1": 2, "2": 0,
    }  # fmt: skip
    assert cluster_accuracy(np.array([0, 0, 0, 1, 1, 1]), labels)["cluster_accuracy"] == 4 / 6
    over = cluster_accuracy(np.array([0, 1, 2, 3, 4, 4]), labels)  # more clusters: majority
    assert over["cluster_accuracy"] == 1.0 and over["matching"].startswith("majority")


# ------------------------------------------------------------------------------------------
# The command line: the labelled pairs end to end


TINY = ["--dataset", "digits", "--device", "cpu", "--batch-size", "50", "--train-limit", "300",
        "--no-progress"]  # fmt: skip


def test_m2_semi_supervised_trains_evaluates_samples_and_maps(capsys, monkeypatch, tmp_path):
    """The command line's entry point, in this process: train, evaluate --json, sample,
    latents --json."""
    import json

    from pyro_vae import cli

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "m2"
    assert cli.main(["train", *TINY, "--pair", "ss-m2", "--pair-kwargs",
                     '{"hidden": [32], "z_dim": 4}', "--objective", "enum", "--num-labelled",
                     "50", "--epochs", "2", "--out", str(run)]) == 0  # fmt: skip
    metrics = (run / "metrics.csv").read_text().splitlines()
    assert metrics[0].endswith("valid_accuracy,classify_loss") and len(metrics) == 3
    from pyro_vae.runs.reopen import read_config

    recorded = read_config(run)  # --label-encoding auto: the built-in M2 takes class indices
    assert (recorded.label_encoding, recorded.classify_loss) == ("index", "on")
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--num-samples", "20", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_labelled"] == 50 and summary["label_site"] == "y"
    # the accuracy is that of argmax q(y|x) on the test split, recomputed here
    from pyro_vae.analysis.evaluate import restore_run
    from pyro_vae.pairs import evaluation_mode

    restored = restore_run(run)
    with evaluation_mode(restored.pair), torch.no_grad():
        probs = restored.pair.encoder.classify(restored.x)
    expected = (probs.argmax(-1) == restored.classes).double().mean().item()
    assert summary["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert cli.main(["sample", str(run), "--out", str(tmp_path / "m2.png"), "--num", "4"]) == 0
    assert (tmp_path / "m2.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert cli.main(["latents", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_points"] == 300 and info["labelled"] and info["draws"] == 10
    rows = Path(info["csv"]).read_text().splitlines()
    assert rows[0].startswith("index,label,pca_1,pca_2,z_0") and len(rows) == 301


def test_cvae_and_gmvae_train_and_their_samples_render(run_cli, tmp_path):
    from PIL import Image

    from pyro_vae.analysis.convergence import convergence_study
    from pyro_vae.analysis.diagnose import diagnose
    from pyro_vae.analysis.evaluate import evaluate, restore_run
    from pyro_vae.analysis.gradvar import gradient_variance
    from pyro_vae.analysis.sampling import sample_figure
    from pyro_vae.runs.config import ConfigError

    small = dict(dataset="digits", device="cpu", batch_size=50, train_limit=300, epochs=2)
    cvae = tmp_path / "cvae"
    train(TrainConfig(pair="cvae", pair_kwargs={"hidden": [32], "z_dim": 3}, out=str(cvae),
                      **small), progress=False)  # fmt: skip
    summary = evaluate(cvae, num_samples=10, progress=False)
    assert "conditioned_on_labels" in summary and math.isfinite(summary["log_px"])
    sample_figure(cvae, tmp_path / "cvae.png", num=3)
    sample_figure(cvae, tmp_path / "cvae3.png", num=3, label=3)
    with Image.open(tmp_path / "cvae.png") as every, Image.open(tmp_path / "cvae3.png") as one:
        assert every.size[1] > 3 * one.size[1]  # 2 + 10 rows against 2 + 1
    studied = convergence_study(cvae, ks=[1, 5], num_points=4, repeats=2, progress=False)
    assert math.isfinite(studied["reference"])
    with pytest.raises(ConfigError, match="needs labels on every call"):
        diagnose(cvae, points=3, progress=False)
    refused = run_cli("diagnose", cvae, cwd=tmp_path, check=False)  # the CLI: a message, exit 2
    assert refused.returncode == 2 and "needs labels on every call" in refused.stderr
    # gradvar binds the minibatch's own labels: every parameter of q(z|x,y) and p(x|y,z)
    studied = gradient_variance(cvae, estimators=["reparam"], num_draws=20, batch_size=8,
                                save=False, progress=False)  # fmt: skip
    restored = restore_run(cvae)
    parameters = sum(p.numel() for p in restored.pair.parameters())
    assert studied["num_parameters"] == parameters and studied["batch_size"] == 8
    assert 0 < studied["estimators"]["reparam"]["variance"] < math.inf
    gmvae = tmp_path / "gmvae"
    train(TrainConfig(pair="gmvae", pair_kwargs={"hidden": [32], "z_dim": 3}, objective="enum",
                      out=str(gmvae), **small), progress=False)  # fmt: skip
    summary = evaluate(gmvae, num_samples=10, progress=False)
    assert 0.0 <= summary["cluster_accuracy"] <= 1.0 and summary["cluster_site"] == "c"
    sample_figure(gmvae, tmp_path / "gmvae.png")
    assert (tmp_path / "gmvae.png").read_bytes()[:4] == b"\x89PNG"


def test_a_pair_in_the_style_of_pyros_m2_example_runs_unchanged(run_cli, tmp_path):
    """model(xs, ys=None), one-hot labels, an unsized data plate, model_classify, its MLP
    from a sibling module: trained with enum, evaluated, and the note for other objectives."""
    spec = f"{PAIRS_DIR}/semi_supervised/ss_vae.py:SSVAE"
    kwargs = '{"hidden_layers": [32], "z_dim": 4, "aux_loss_multiplier": 20}'
    run = tmp_path / "ssvae"
    result = run_cli("train", *TINY, "--pair", spec, "--pair-kwargs", kwargs, "--objective",
                     "enum", "--num-labelled", "50", "--epochs", "1", "--out", run,
                     cwd=tmp_path)  # fmt: skip
    assert "Traceback" not in result.stderr and "valid accuracy" in result.stderr
    assert "--label-encoding auto chose onehot" in result.stderr  # as the example observes y
    import json

    summary = json.loads(run_cli("evaluate", run, "--num-samples", "10", "--json",
                                 cwd=tmp_path).stdout)  # fmt: skip
    assert 0 <= summary["accuracy"] <= 1 and summary["label_site"] == "y"
    other = run_cli("train", *TINY, "--pair", spec, "--pair-kwargs", kwargs, "--label-encoding",
                    "onehot", "--num-labelled", "50", "--epochs", "1", "--out",
                    tmp_path / "elbo", cwd=tmp_path)  # fmt: skip
    assert "--objective enum sums them out exactly" in other.stderr


def test_a_semi_supervised_run_resumes_mid_epoch_bit_for_bit(run_cli, tmp_path):
    args = [*TINY, "--pair", "ss-m2", "--pair-kwargs", '{"hidden": [16], "z_dim": 2}',
            "--objective", "enum", "--num-labelled", "50", "--labelled-batches", "3",
            "--epochs", "2", "--checkpoint-every", "2"]  # fmt: skip
    run_cli("train", *args, "--out", tmp_path / "whole", cwd=tmp_path)
    stopped = run_cli("train", *args, "--out", tmp_path / "cut", cwd=tmp_path, check=False,
                      env={"PYRO_VAE_FAULT": "step:5"})  # fmt: skip
    assert stopped.returncode != 0
    run_cli("train", *args, "--resume", "--out", tmp_path / "cut", cwd=tmp_path)
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    for key, value in whole["module"].items():
        assert torch.equal(value, cut["module"][key]), key
    assert [r["valid_accuracy"] for r in whole["history"]] == [
        r["valid_accuracy"] for r in cut["history"]
    ]


# ------------------------------------------------------------------------------------------
# Bad input: a message, exit 2


def _npz(path: Path, **labels) -> Path:
    rng = np.random.default_rng(0)
    arrays = {split: (rng.random((n, 16)) > 0.5).astype(np.float32)
              for split, n in (("train", 60), ("valid", 20), ("test", 20))}  # fmt: skip
    np.savez(path, **arrays, **labels)
    return path


LABEL_ERRORS = [
    ("labels where there are none", ["--dataset", "{npz_plain}", "--pair", "cvae"],
     "has no class labels"),
    ("num-labelled on a label-less set", ["--dataset", "{npz_plain}", "--pair", "ss-m2",
     "--num-labelled", "10"], "has no class labels"),
    ("labels of the wrong shape", ["--dataset", "{npz_onehot}", "--pair", "ss-m2"],
     "labels must be class indices of shape"),
    ("negative labels", ["--dataset", "{npz_negative}", "--pair", "ss-m2"], "negative labels"),
    ("num-labelled larger than the set", [*TINY, "--pair", "ss-m2", "--num-labelled", "400"],
     "the training set has only 300 points"),
    ("num-labelled not divisible", [*TINY, "--pair", "ss-m2", "--num-labelled", "55"],
     "must divide among them; try 50 or 60"),
    ("num-labelled for a pair without labels", [*TINY, "--pair", "mlp", "--num-labelled", "50"],
     "take no labels"),
    ("num-labelled below all for a pair that needs labels",
     [*TINY, "--pair", "cvae", "--num-labelled", "50"], "needs labels on every batch"),
    ("labelled-batches zero", [*TINY, "--pair", "ss-m2", "--labelled-batches", "0"],
     "--labelled-batches 0: must be at least 1"),
    ("num-labelled negative", [*TINY, "--pair", "ss-m2", "--num-labelled", "-1"],
     "--num-labelled -1: must be at least 0 (0: no labels)"),
    ("num-labelled 0 for a pair that needs labels",
     [*TINY, "--pair", "cvae", "--num-labelled", "0"], "needs labels on every batch"),
    ("labelled-batches with num-labelled 0",
     [*TINY, "--pair", "ss-m2", "--num-labelled", "0", "--labelled-batches", "2"],
     "--labelled-batches 2 has no effect with --num-labelled 0"),
    ("classify-loss on with num-labelled 0",
     [*TINY, "--pair", "ss-m2", "--num-labelled", "0", "--classify-loss", "on"],
     "--num-labelled 0 leaves no labelled batch"),
    ("classify-loss on for a pair without one", [*TINY, "--pair", "mlp", "--classify-loss", "on"],
     "the pair defines no classification loss"),
    ("classify-loss on for a set without labels",
     ["--dataset", "{npz_plain}", "--pair", "ss-m2", "--classify-loss", "on"],
     "the run has no labels to train it on"),
    ("sample --label without labels", None, "takes no labels"),
]  # fmt: skip


@pytest.mark.parametrize("name, args, message", LABEL_ERRORS, ids=[c[0] for c in LABEL_ERRORS])
def test_bad_label_input_is_a_message(capsys, monkeypatch, tmp_path, name, args, message):
    """Through the command line's own entry point, in this process: exit status 2 and the
    message; an exception escaping ``main`` would fail the test with its traceback."""
    from pyro_vae import cli

    monkeypatch.chdir(tmp_path)
    files = {
        "npz_plain": _npz(tmp_path / "plain.npz"),
        "npz_onehot": _npz(tmp_path / "onehot.npz", y_train=np.eye(3)[np.arange(60) % 3],
                           y_valid=np.eye(3)[np.arange(20) % 3],
                           y_test=np.eye(3)[np.arange(20) % 3]),
        "npz_negative": _npz(tmp_path / "negative.npz", y_train=np.arange(60) % 3 - 1,
                             y_valid=np.arange(20) % 3, y_test=np.arange(20) % 3),
    }  # fmt: skip
    if args is None:  # sample --label on a run whose pair takes no labels
        run = tmp_path / "plain"
        assert cli.main(["train", *TINY, "--pair-kwargs", '{"hidden": [8], "z_dim": 2}',
                         "--epochs", "1", "--out", str(run)]) == 0  # fmt: skip
        capsys.readouterr()
        code = cli.main(["sample", str(run), "--out", str(tmp_path / "s.png"), "--label", "1"])
    else:
        argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
        code = cli.main(["train", *argv, "--epochs", "1", "--out", str(tmp_path / "run")])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert message in " ".join(stderr.split()), stderr
