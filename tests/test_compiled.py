"""The traced loss (pyro_vae.infer.compiled) against Pyro's own estimators, and ``--compile``.

The loss built from the traces must equal Pyro's ELBO estimators on the same draws, in value
and in gradients; the graph captured from it must step exactly as ``pyro.infer.SVI`` does;
a pair that cannot be traced must say why. The compiled run (torch.compile with
``fallback_random``) must follow the eager run of the same seed and resume exactly.
"""

import importlib.util
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.infer.compiled import (
    TRACEABLE_OBJECTIVES,
    CompiledSVI,
    UntraceableError,
    log_weights,
    traced_loss,
    untraceable_reason,
)
from pyro_vae.infer.gradients import score_function
from pyro_vae.infer.handlers import TrainingScales
from pyro_vae.infer.surrogate_elbos import STL_ELBO, VIMCO, IWAE_DReG
from pyro_vae.runs.config import TrainConfig
from pyro_vae.training.train import train

PAIRS_DIR = Path(__file__).parent / "pairs"


class TutorialVAE(nn.Module):
    """A pair as Pyro's VAE tutorial writes one: encoder and decoder registered by
    ``pyro.module`` inside the programs, an unsized data plate."""

    def __init__(self, x_dim=12, z_dim=3, hidden=10):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = nn.Sequential(
            nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * z_dim)
        )
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(x.shape[:-1] + (self.z_dim,))
            z = pyro.sample("z", dist.Normal(z_loc, 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_log_scale = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(z_loc, z_log_scale.exp()).to_event(1))


def _load(spec):
    path, name = spec.split(":")
    module_spec = importlib.util.spec_from_file_location(f"_pairs_{name}", PAIRS_DIR / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def _pyro_elbo(objective, num_particles):
    vectorized = dict(num_particles=num_particles, vectorize_particles=num_particles > 1,
                      max_plate_nesting=1)  # fmt: skip
    return {
        "elbo": lambda: pyro.infer.Trace_ELBO(**vectorized),
        "meanfield": lambda: pyro.infer.TraceMeanField_ELBO(**vectorized),
        "iwae": lambda: pyro.infer.RenyiELBO(alpha=0.0, **vectorized),
        "renyi": lambda: pyro.infer.RenyiELBO(alpha=0.5, **vectorized),
        # pyro_vae's own: the eager ELBO objects that train without --compile
        "stl": lambda: STL_ELBO(**vectorized),
        "iwae-dreg": lambda: IWAE_DReG(**vectorized),
        "vimco": lambda: VIMCO(**vectorized),
    }[objective]()


def _data(num=8, x_dim=12):
    generator = torch.Generator().manual_seed(7)
    return (torch.rand(num, x_dim, generator=generator) < 0.4).float()


@pytest.mark.parametrize("num_particles", [1, 4])
@pytest.mark.parametrize("objective", TRACEABLE_OBJECTIVES)
def test_traced_loss_equals_pyros_estimator_on_the_same_draws(objective, num_particles):
    x = _data()
    pair = TutorialVAE()
    guide = pair.guide
    if objective == "vimco":  # the score function, with the other particles as baselines
        guide, num_particles = score_function(pair.guide), max(num_particles, 2)
    pyro.set_rng_seed(1)
    expected = _pyro_elbo(objective, num_particles).loss_and_grads(pair.model, guide, x)
    expected_grads = [p.grad.clone() for p in pair.parameters()]
    pair.zero_grad()
    pyro.set_rng_seed(1)
    loss = traced_loss(pair.model, guide, (x,), objective=objective,
                       num_particles=num_particles, alpha=0.5)  # fmt: skip
    loss.backward()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    for grad, wanted in zip([p.grad for p in pair.parameters()], expected_grads, strict=True):
        torch.testing.assert_close(grad, wanted, rtol=1e-5, atol=1e-5)


def test_log_weights_keep_one_weight_per_particle_and_point():
    """The IWAE bound is per point: log w has shape (K, B), and with the encoder equal to
    the prior, log w = log p(x|z) exactly."""
    x = _data(num=5)
    pair = TutorialVAE()
    with torch.no_grad():  # q(z|x) = N(0, 1) = p(z)
        pair.encoder[-1].weight.zero_()
        pair.encoder[-1].bias.zero_()
    pyro.set_rng_seed(2)
    weights = log_weights(pair.model, pair.guide, (x,), num_particles=3)
    assert weights.shape == (3, 5)
    pyro.set_rng_seed(2)
    z = torch.randn(3, 5, pair.z_dim)  # the draws the guide made, in the same order
    expected = dist.Bernoulli(logits=pair.decoder(z)).log_prob(x).sum(-1)
    torch.testing.assert_close(weights, expected)


def test_the_graph_steps_exactly_as_svi_with_globals_scales_and_warm_up():
    """A pair with global latents and constrained pyro.params (the Bayesian decoder), with
    the training scales of a minibatch (N/B) and a moving beta: the traced graph, run as it
    is, gives SVI's losses and parameters step for step."""
    x = _data(num=6, x_dim=10)
    results = []
    for mode in ("eager", "graph"):
        pyro.clear_param_store()
        torch.manual_seed(3)
        pair = _load("bayesian_decoder.py:BayesianDecoderVAE")(x_dim=10)
        scales = TrainingScales(data_plate="data")
        scales.beta, scales.data_scale = 0.5, 4.0
        optimizer = pyro.optim.Adam({"lr": 1e-2})
        model, guide = scales(pair.model), scales(pair.guide)
        svi = pyro.infer.SVI(model, guide, optimizer, loss=pyro.infer.Trace_ELBO())
        if mode == "graph":
            svi = CompiledSVI(model, guide, optimizer, modules=[pair], scales=scales,
                              eager=svi, compiler=None)  # fmt: skip
        pyro.set_rng_seed(5)
        losses = []
        for step in range(6):
            scales.beta = 0.5 + 0.1 * step  # KL warm-up: an input of the graph, not a retrace
            losses.append(svi.step(x))
        store = pyro.get_param_store()
        results.append((losses, {name: store[name].detach().clone() for name in store}))
        if mode == "graph":
            # the first step creates the guide's pyro.params: it runs eagerly, as SVI's does;
            # beta 0.6 .. 0.9 share one graph; beta 1 (the last step) drops the factor: another
            assert svi.num_graphs == 2 and svi.eager_steps == 1
    (eager_losses, eager_params), (graph_losses, graph_params) = results
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5)
    assert set(graph_params) == set(eager_params)
    for name, value in eager_params.items():
        torch.testing.assert_close(graph_params[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_a_graph_per_batch_shape_up_to_the_bound_then_eager_steps():
    pair = TutorialVAE()
    optimizer = pyro.optim.Adam({"lr": 1e-3})
    eager = pyro.infer.SVI(pair.model, pair.guide, optimizer, loss=pyro.infer.Trace_ELBO())
    notes = []
    svi = CompiledSVI(pair.model, pair.guide, optimizer, modules=[pair], eager=eager,
                      compiler=None, max_graphs=2, on_note=notes.append)  # fmt: skip
    for num in (8, 8, 5, 3, 8):
        assert math.isfinite(svi.step(_data(num=num)))
    # eager: the first step (it creates the parameters) and the batch of 3 (past the bound)
    assert svi.num_graphs == 2 and svi.eager_steps == 2
    assert [line for line in notes if "traced the loss" in line] == [
        "note: --compile: traced the loss for batch (8, 12) (graph 1 of at most 2)",
        "note: --compile: traced the loss for batch (5, 12) (graph 2 of at most 2)",
    ]


class ItemVAE(TutorialVAE):
    """Data-dependent Python control flow: the model branches on a value of the batch."""

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(x.shape[:-1] + (self.z_dim,))
            z = pyro.sample("z", dist.Normal(z_loc, 1.0).to_event(1))
            logits = self.decoder(z)
            if z.mean().item() > 10.0:  # never true; tracing cannot know that
                logits = logits * 2
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def test_a_pair_that_cannot_be_traced_falls_back_with_a_note_or_fails_strictly():
    pair = ItemVAE()
    optimizer = pyro.optim.Adam({"lr": 1e-3})
    eager = pyro.infer.SVI(pair.model, pair.guide, optimizer, loss=pyro.infer.Trace_ELBO())
    notes = []
    svi = CompiledSVI(pair.model, pair.guide, optimizer, modules=[pair], eager=eager,
                      compiler=None, on_note=notes.append)  # fmt: skip
    pyro.set_rng_seed(4)
    fallen_back = [svi.step(_data()) for _ in range(2)]
    assert svi.num_graphs == 0 and svi.eager_steps == 2
    assert len(notes) == 1 and "tracing the loss failed" in notes[0] and "eagerly" in notes[0]
    strict = CompiledSVI(pair.model, pair.guide, optimizer, modules=[pair], eager=eager,
                         compiler=None, strict=True)  # fmt: skip
    with pytest.raises(UntraceableError, match="--compile strict: tracing the loss failed"):
        strict.step(_data())
    assert all(math.isfinite(loss) for loss in fallen_back)


def test_untraceable_reasons_name_the_site_or_module():
    x = _data()
    pair = TutorialVAE()
    assert untraceable_reason(pair.model, pair.guide, (x,), [pair], "elbo") is None
    assert "tracegraph is not traced" in untraceable_reason(
        pair.model, pair.guide, (x,), [pair], "tracegraph"
    )
    enum = untraceable_reason(pair.model, pair.guide, (x,), [pair], "enum")
    assert "enum is not traced" in enum and "mask.all()" in enum

    def discrete_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(x.new_full((x.shape[0],), 0.5)))

    reason = untraceable_reason(pair.model, discrete_guide, (x,), [pair], "elbo")
    assert "'c' (Bernoulli) is not reparameterized" in reason
    enumerated = pyro.infer.config_enumerate(discrete_guide)
    assert "'c' is enumerated" in untraceable_reason(pair.model, enumerated, (x,), [], "elbo")
    with_batchnorm = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    assert "BatchNorm in training mode" in untraceable_reason(
        pair.model, pair.guide, (x,), [with_batchnorm], "elbo"
    )
    state = torch.random.get_rng_state()
    untraceable_reason(pair.model, pair.guide, (x,), [pair], "elbo")
    assert torch.equal(torch.random.get_rng_state(), state), "the check draws nothing"


# ------------------------------------------------------------------------------------------
# --compile in training (torch.compile: these compile small graphs, a few seconds each)

SMALL = dict(dataset="digits", pair="mlp", pair_kwargs={"hidden": [16], "z_dim": 4},
             batch_size=100, train_limit=250, seed=0, device="cpu")  # fmt: skip


def _params():
    store = pyro.get_param_store()
    return {name: store[name].detach().clone() for name in store}


def test_compile_follows_the_eager_run_and_resumes_exactly(tmp_path, capsys):
    eager = train(TrainConfig(epochs=2, out=str(tmp_path / "eager"), **SMALL), progress=False)
    eager_params = _params()
    pyro.clear_param_store()
    compiled = train(TrainConfig(epochs=2, out=str(tmp_path / "compiled"), compile="on",
                                 **SMALL), progress=False)  # fmt: skip
    compiled_params = _params()
    err = capsys.readouterr().err
    # 250 points in batches of 100: a graph for 100 and one for the last 50
    assert "traced the loss for batch (100, 64) (graph 1" in err
    assert "traced the loss for batch (50, 64) (graph 2" in err
    for row, wanted in zip(compiled.history, eager.history, strict=True):
        assert row["train_loss"] == pytest.approx(wanted["train_loss"], rel=1e-5)
        assert row["valid_elbo"] == pytest.approx(wanted["valid_elbo"], rel=1e-5)
    for name, value in eager_params.items():
        torch.testing.assert_close(compiled_params[name], value, rtol=1e-4, atol=1e-5)

    # an eager checkpoint resumed under --compile, then that run's checkpoint resumed again
    # under --compile: the same parameters as the uninterrupted compiled run, bit for bit
    pyro.clear_param_store()
    resumed_dir = str(tmp_path / "resumed")
    train(TrainConfig(epochs=1, out=resumed_dir, **SMALL), progress=False)
    pyro.clear_param_store()
    train(TrainConfig(epochs=2, out=resumed_dir, compile="on", **SMALL), resume=True,
          progress=False)  # fmt: skip
    resumed = _params()
    pyro.clear_param_store()
    twice_dir = str(tmp_path / "twice")
    train(TrainConfig(epochs=1, out=twice_dir, compile="on", **SMALL), progress=False)
    pyro.clear_param_store()
    train(TrainConfig(epochs=2, out=twice_dir, compile="on", **SMALL), resume=True,
          progress=False)  # fmt: skip
    twice = _params()
    for name, value in compiled_params.items():
        assert torch.equal(twice[name], value), name
        torch.testing.assert_close(resumed[name], value, rtol=1e-4, atol=1e-5)


def test_compile_on_an_untraceable_run_trains_eagerly_or_stops_strictly(run_cli, tmp_path):
    common = ["--dataset", "digits", "--train-limit", "200", "--epochs", "1",
              "--pair-kwargs", '{"hidden": [16], "z_dim": 3}', "--objective", "tracegraph",
              "--score-function", "--baseline", "avg"]  # fmt: skip
    out = run_cli("train", *common, "--compile", "--out", "eager", cwd=tmp_path)
    assert "note: --compile: the pair trains eagerly: --objective tracegraph is not traced" in (
        out.stderr
    )
    assert (tmp_path / "eager" / "best.pt").exists()
    refused = run_cli("train", *common, "--compile", "strict", "--out", "strict",
                      cwd=tmp_path, check=False)  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--compile strict: the pair's loss cannot be traced" in refused.stderr
    bad = run_cli("train", "--compile", "fast", "--out", "bad", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "--compile" in bad.stderr and "fast" in bad.stderr


def test_evaluate_compile_gives_the_eager_numbers(tmp_path, capsys):
    from pyro_vae import cli
    from pyro_vae.analysis.evaluate import evaluate

    run_dir = tmp_path / "run"
    train(TrainConfig(epochs=1, out=str(run_dir), **SMALL), progress=False)
    eager = evaluate(run_dir, num_samples=30, limit=120, batch_size=50, save=False,
                     progress=False)  # fmt: skip
    compiled = evaluate(run_dir, num_samples=30, limit=120, batch_size=50, save=False,
                        progress=False, compile=True)  # fmt: skip
    # batches of 50, 50 and 20: two graphs; the same draws, so the same estimates
    assert compiled["compiled"] == {"graphs": 2, "fallback": None}
    assert eager["compiled"] is None
    for key in ("log_px", "elbo", "ess_mean"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-6), key
    assert "traced the log weights of 30 samples for batch (50, 64)" in capsys.readouterr().err
    assert cli.main(["evaluate", str(run_dir), "--num-samples", "5", "--limit", "10",
                     "--compile", "--json"]) == 0  # fmt: skip

    from pyro_vae.analysis.convergence import convergence_study

    studies = [
        convergence_study(run_dir, ks=[4], estimators=["is", "prior"], num_points=3, repeats=2,
                          save=False, progress=False, compile=compile)
        for compile in (False, True)
    ]  # fmt: skip
    for eager_row, compiled_row in zip(studies[0]["results"], studies[1]["results"], strict=True):
        assert compiled_row["estimate"] == pytest.approx(eager_row["estimate"], rel=1e-6)


def test_pair_loss_is_a_module_that_torch_optim_steps_as_svi_does():
    """PairLoss(pair) with one torch.optim.Adam over its parameters takes the steps SVI takes
    with Pyro's per-parameter Adam (Adam is elementwise): the same parameters after five."""
    from pyro_vae.infer.compiled import PairLoss

    x = _data()
    results = []
    for mode in ("svi", "module"):
        pyro.clear_param_store()
        torch.manual_seed(11)
        pair = TutorialVAE()
        pyro.set_rng_seed(12)
        if mode == "svi":
            svi = pyro.infer.SVI(pair.model, pair.guide, pyro.optim.Adam({"lr": 1e-2}),
                                 loss=pyro.infer.Trace_ELBO(num_particles=2, max_plate_nesting=1,
                                                            vectorize_particles=True))  # fmt: skip
            losses = [svi.step(x) for _ in range(5)]
        else:
            loss_module = PairLoss(pair, num_particles=2)
            assert {id(p) for p in loss_module.parameters()} == {id(p) for p in pair.parameters()}
            optimizer = torch.optim.Adam(loss_module.parameters(), lr=1e-2)
            losses = []
            for _ in range(5):
                optimizer.zero_grad()
                loss = loss_module(x)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        results.append((losses, [p.detach().clone() for p in pair.parameters()]))
    (svi_losses, svi_params), (module_losses, module_params) = results
    assert module_losses == pytest.approx(svi_losses, rel=1e-5)
    for got, wanted in zip(module_params, svi_params, strict=True):
        torch.testing.assert_close(got, wanted, rtol=1e-5, atol=1e-6)
    with pytest.raises(UntraceableError, match="'tracegraph' is not one of"):
        PairLoss(TutorialVAE(), objective="tracegraph")
