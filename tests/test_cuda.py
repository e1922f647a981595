"""GPU end to end: data, priors, guides and training on CUDA; checkpoints load on CPU."""

import pytest

from pyro_vae.analysis.evaluate import evaluate
from pyro_vae.runs.config import TrainConfig
from pyro_vae.training.train import load_checkpoint, train

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("pair", ["mlp", "conv", "two-layer"])
def test_train_and_evaluate_on_cuda_then_load_on_cpu(tmp_path, pair):
    config = TrainConfig(dataset="digits", pair=pair, epochs=1, batch_size=50, train_limit=200,
                         device="cuda", out=str(tmp_path / "run"))  # fmt: skip
    result = train(config)
    assert result.config.device.startswith("cuda")
    assert all(p.device.type == "cuda" for p in result.pair.parameters())
    on_gpu = evaluate(tmp_path / "run", num_samples=32, limit=20)
    on_cpu = evaluate(tmp_path / "run", num_samples=32, limit=20, device="cpu")
    assert on_gpu["device"].startswith("cuda") and on_cpu["device"] == "cpu"
    assert on_cpu["log_px"] == pytest.approx(on_gpu["log_px"], abs=0.5)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt", "cpu")
    assert all(t.device.type == "cpu" for t in state["module"].values())


def test_score_function_training_with_a_neural_baseline_on_cuda(tmp_path):
    """The SBN pair (Bernoulli latents) by TraceGraph_ELBO with b(x) on CUDA; IS on CUDA."""
    config = TrainConfig(dataset="digits", binarize="static", pair="sbn",
                         pair_kwargs={"z_dim": 16}, objective="tracegraph", baseline="nn",
                         epochs=1, batch_size=50, train_limit=200, device="cuda",
                         out=str(tmp_path / "run"))  # fmt: skip
    result = train(config)
    assert all(p.device.type == "cuda" for p in result.pair.parameters())
    summary = evaluate(tmp_path / "run", num_samples=32, limit=20)
    assert summary["device"].startswith("cuda") and summary["log_px"] >= summary["elbo"]


def test_gradvar_and_diagnose_on_cuda(tmp_path):
    from pyro_vae.analysis.diagnose import diagnose
    from pyro_vae.analysis.gradvar import gradient_variance

    config = TrainConfig(dataset="digits", pair="mlp", pair_kwargs={"hidden": [16], "z_dim": 3},
                         epochs=1, batch_size=50, train_limit=200, device="cuda",
                         out=str(tmp_path / "run"))  # fmt: skip
    train(config)
    result = gradient_variance(tmp_path / "run", num_draws=10, batch_size=20, baseline_steps=10,
                               out=tmp_path / "gradvar")  # fmt: skip
    assert result["device"].startswith("cuda")
    assert result["estimators"]["reparam"]["variance"] < result["estimators"]["score"]["variance"]
    summary = diagnose(tmp_path / "run", points=3, num_samples=64, nuts=True, nuts_chains=2,
                       nuts_warmup=20, nuts_samples=20, gap_steps=5,
                       out=tmp_path / "diag")  # fmt: skip
    assert len(summary["khat"]) == 3 and summary["nuts"]["divergences"] >= 0


@pytest.mark.parametrize(
    "name, kwargs",
    [("bayesian_decoder.py:BayesianDecoderVAE", {}), ("beta_vae.py:BetaVAE", {"beta": 4.0}),
     ("dropout_batchnorm.py:DropoutBatchNormVAE", {})],
)  # fmt: skip
def test_users_pairs_with_globals_scales_and_batchnorm_on_cuda(tmp_path, name, kwargs):
    """Global latents fixed at the guide's mean, unscaled densities and eval mode on CUDA."""
    from pathlib import Path

    pair = f"{Path(__file__).resolve().parent / 'pairs'}/{name}"
    config = TrainConfig(dataset="digits", pair=pair, pair_kwargs=kwargs, epochs=1,
                         batch_size=50, train_limit=200, device="cuda", beta=2.0,
                         kl_warmup=3, out=str(tmp_path / "run"))  # fmt: skip
    train(config)
    on_gpu = evaluate(tmp_path / "run", num_samples=16, limit=10)
    on_cpu = evaluate(tmp_path / "run", num_samples=16, limit=10, device="cpu")
    assert on_gpu["device"].startswith("cuda") and on_gpu["elbo"] <= on_gpu["log_px"]
    assert on_cpu["log_px"] == pytest.approx(on_gpu["log_px"], abs=1.0)


def test_compiled_training_and_evaluation_on_cuda_follow_eager(tmp_path):
    """--compile on CUDA: the step's graph replays as a CUDA graph; the run follows the
    eager one of the same seed (CUDA kernels may round differently: a tolerance), and
    evaluate --compile gives the eager estimate."""
    settings = dict(dataset="digits", pair="mlp", pair_kwargs={"hidden": [32], "z_dim": 4},
                    epochs=2, batch_size=50, train_limit=300, device="cuda", seed=0)  # fmt: skip
    eager = train(TrainConfig(out=str(tmp_path / "eager"), **settings))
    compiled = train(TrainConfig(out=str(tmp_path / "compiled"), compile="strict", **settings))
    for a, b in zip(eager.history, compiled.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["valid_elbo"] == pytest.approx(a["valid_elbo"], rel=1e-3)
    plain = evaluate(tmp_path / "compiled", num_samples=64, limit=40, save=False)
    fast = evaluate(tmp_path / "compiled", num_samples=64, limit=40, save=False, compile=True)
    assert fast["compiled"]["fallback"] is None and fast["compiled"]["graphs"] >= 1
    assert fast["log_px"] == pytest.approx(plain["log_px"], abs=1e-3)


def test_two_ranks_on_two_gpus_train_and_evaluate(tmp_path, run_cli):
    """nccl, one GPU per rank (cuda:LOCAL_RANK); sharded evaluation equals one process."""
    import json

    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    flags = ["--dataset", "digits", "--pair", "mlp", "--batch-size", "50", "--train-limit",
             "300", "--epochs", "2", "--device", "cuda"]  # fmt: skip
    run_cli("train", *flags, "--out", "run", "--nproc-per-node", "2", cwd=tmp_path)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt", "cpu")
    assert state["world_size"] == 2
    args = ["evaluate", "run", "--num-samples", "16", "--limit", "200", "--json"]
    one = json.loads(run_cli(*args, cwd=tmp_path).stdout)
    two = run_cli(*args, "--nproc-per-node", "2", cwd=tmp_path).stdout
    sharded = json.loads(two.strip().splitlines()[-1])
    assert sharded["log_px"] == pytest.approx(one["log_px"], rel=1e-5)
