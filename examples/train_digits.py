"""Train, evaluate and draw a VAE from Python: the same run as `pyro-vae train` on digits.

    python examples/train_digits.py [RUN_DIR]

With PYRO_VAE_SMOKE=1 it runs a tiny version (the test suite does this).
"""

import os
import sys
from pathlib import Path

import pyro_vae
from pyro_vae.analysis.sampling import sample_figure

SMOKE = os.environ.get("PYRO_VAE_SMOKE") == "1"


def main(run_dir: Path) -> dict:
    config = pyro_vae.TrainConfig(
        dataset="digits",  # scikit-learn's 8x8 digits: works offline
        pair="mlp",
        pair_kwargs={"hidden": [200, 200], "z_dim": 10, "activation": "tanh"},
        binarize="dynamic",
        objective="elbo",
        epochs=2 if SMOKE else 50,
        batch_size=100,
        lr=1e-3,
        train_limit=300 if SMOKE else None,
        device="auto",
        out=str(run_dir),
    )
    result = pyro_vae.train(config, resume=(run_dir / "checkpoint.pt").exists())
    print(f"best validation ELBO {result.best_valid_elbo:.2f} nats")
    summary = pyro_vae.evaluate(run_dir, num_samples=50 if SMOKE else 1000)
    print(f"test log p(x) ~ {summary['log_px']:.2f} nats, ELBO {summary['elbo']:.2f}, "
          f"gap {summary['gap']:.2f}")  # fmt: skip
    print("wrote", sample_figure(run_dir, run_dir / "samples.png"))
    return summary


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/digits-python"))
