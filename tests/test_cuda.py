"""GPU end to end: data, priors, guides and training on CUDA; checkpoints load on CPU."""

import pytest

from pyro_vae.config import TrainConfig
from pyro_vae.evaluate import evaluate
from pyro_vae.train import load_checkpoint, train

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
