"""Plain-PyTorch yardstick: the 1-stochastic-layer MNIST VAE of Burda et al. (2016).

Trains with the single-sample ELBO and reports test log p(x) by importance sampling,

    log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k | x),    z_k ~ q(z | x),

together with seconds per epoch, so the Pyro implementation in ``pyro_vae`` can be compared
against it for speed and quality. No Pyro here on purpose: this is the reference.

Run ``python benchmarks/iwae_reference.py --help``; the last line printed is one JSON object.

References:
    Kingma & Welling (2014), Auto-Encoding Variational Bayes.
    Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

IMAGE_SIZE = 784
HIDDEN_SIZE = 200
Z_DIM = 50
NUM_TRAIN = 50_000  # the last 10000 of the 60000 training images are validation in pyro_vae
IDX_IMAGES_MAGIC = 2051
LOG_2PI = math.log(2 * math.pi)


def default_data_dir() -> Path:
    """``$PYRO_VAE_DATA_DIR``, else ``../shared/data`` relative to the repository root."""
    if "PYRO_VAE_DATA_DIR" in os.environ:
        return Path(os.environ["PYRO_VAE_DATA_DIR"])
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_idx_images(path: Path) -> np.ndarray:
    """Read a gzipped IDX image file into a ``uint8`` array of shape ``(num_images, 784)``."""
    if not path.is_file():
        raise FileNotFoundError(
            f"MNIST file {path} not found; put the IDX .gz files in <data dir>/mnist/ "
            "or set PYRO_VAE_DATA_DIR to the data directory."
        )
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, num_images, rows, cols = np.frombuffer(raw, dtype=">u4", count=4)
    if magic != IDX_IMAGES_MAGIC:
        raise ValueError(f"{path} is not an IDX image file (magic {magic}, expected 2051)")
    images = np.frombuffer(raw, dtype=np.uint8, offset=16)
    return images.reshape(int(num_images), int(rows) * int(cols))


def load_mnist(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey-level MNIST in [0, 1]: the first 50000 training images and the 10000 test images."""
    mnist_dir = data_dir / "mnist"
    train = load_idx_images(mnist_dir / "train-images-idx3-ubyte.gz")[:NUM_TRAIN]
    test = load_idx_images(mnist_dir / "t10k-images-idx3-ubyte.gz")
    to_unit = lambda images: torch.from_numpy(images.astype(np.float32) / 255.0)  # noqa: E731
    return to_unit(train), to_unit(test)


class Encoder(nn.Module):
    """q(z | x) = Normal(z_loc, z_scale), 784-200-200 tanh, z_scale = exp(linear output)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(IMAGE_SIZE, HIDDEN_SIZE),
            nn.Tanh(),
            nn.Linear(HIDDEN_SIZE, HIDDEN_SIZE),
            nn.Tanh(),
        )
        self.z_loc = nn.Linear(HIDDEN_SIZE, Z_DIM)
        self.z_log_scale = nn.Linear(HIDDEN_SIZE, Z_DIM)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.body(x)
        return self.z_loc(hidden), self.z_log_scale(hidden).exp()


def build_decoder() -> nn.Module:
    """p(x | z) = Bernoulli(logits), 50-200-200-784 tanh."""
    return nn.Sequential(
        nn.Linear(Z_DIM, HIDDEN_SIZE),
        nn.Tanh(),
        nn.Linear(HIDDEN_SIZE, HIDDEN_SIZE),
        nn.Tanh(),
        nn.Linear(HIDDEN_SIZE, IMAGE_SIZE),
    )


def standard_normal_log_prob(eps: torch.Tensor) -> torch.Tensor:
    """sum_d log N(eps_d | 0, 1) over the last dimension."""
    return -0.5 * (eps.pow(2) + LOG_2PI).sum(-1)


def log_weights(
    encoder: Encoder, decoder: nn.Module, x: torch.Tensor, num_samples: int
) -> torch.Tensor:
    """Importance log weights log p(x, z_k) - log q(z_k | x), shape ``(num_samples, batch)``.

    z_k = z_loc + z_scale * eps_k is reparameterised, so the mean over k is a differentiable
    Monte-Carlo ELBO (the estimator of Pyro's ``Trace_ELBO``) when ``num_samples == 1``.
    """
    z_loc, z_scale = encoder(x)
    eps = torch.randn((num_samples,) + z_loc.shape, dtype=z_loc.dtype, device=z_loc.device)
    z = z_loc + z_scale * eps
    # log q(z | x) from eps directly: log N(z | loc, scale) = log N(eps | 0, 1) - sum log scale.
    log_q = standard_normal_log_prob(eps) - z_scale.log().sum(-1)
    log_prior = standard_normal_log_prob(z)
    logits = decoder(z)
    log_likelihood = -F.binary_cross_entropy_with_logits(
        logits, x.expand_as(logits), reduction="none"
    ).sum(-1)
    return log_likelihood + log_prior - log_q


def log_mean_exp(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) sum_k exp(values_k) along ``dim``, computed stably."""
    return torch.logsumexp(values, dim) - math.log(values.shape[dim])


def train_epoch(
    encoder: Encoder,
    decoder: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_images: torch.Tensor,
    batch_size: int,
) -> float:
    """One pass over shuffled, freshly binarised batches; returns the mean loss per data point."""
    permutation = torch.randperm(train_images.shape[0], device=train_images.device)
    total_loss = torch.zeros((), device=train_images.device)
    for start in range(0, train_images.shape[0], batch_size):
        # Dynamic binarisation: a new Bernoulli draw each time an image is used.
        x = torch.bernoulli(train_images[permutation[start : start + batch_size]])
        loss = -log_weights(encoder, decoder, x, num_samples=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * x.shape[0]
    return total_loss.item() / train_images.shape[0]


@torch.no_grad()
def evaluate(
    encoder: Encoder,
    decoder: nn.Module,
    test_images: torch.Tensor,
    num_samples: int,
    points_per_chunk: int,
    samples_per_chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point importance-sampled log p(x) and ELBO, each from the same ``num_samples`` weights.

    Chunked over points and samples so memory stays bounded whatever ``num_samples`` is.
    """
    log_px, elbo = [], []
    for start in range(0, test_images.shape[0], points_per_chunk):
        x = test_images[start : start + points_per_chunk]
        weights = torch.cat(
            [
                log_weights(encoder, decoder, x, min(samples_per_chunk, num_samples - done))
                for done in range(0, num_samples, samples_per_chunk)
            ]
        ).double()
        log_px.append(log_mean_exp(weights, dim=0))
        elbo.append(weights.mean(0))
    return torch.cat(log_px), torch.cat(elbo)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch.cuda.is_available() is False")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=5000, help="K for test log p(x)")
    parser.add_argument("--limit", type=int, default=1000, help="evaluate the first N test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--points-per-chunk", type=int, default=20)
    parser.add_argument("--samples-per-chunk", type=int, default=500)
    parser.add_argument("--data-dir", type=Path, default=None, help="default $PYRO_VAE_DATA_DIR")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument(
        "--smoke", action="store_true", help="1 epoch on 2000 images, K=50, 50 test points"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    num_train = NUM_TRAIN
    if args.smoke:
        num_train, args.epochs, args.num_samples, args.limit = 2000, 1, 50, 50
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)

    train_images, test_images = load_mnist(args.data_dir or default_data_dir())
    train_images = train_images[:num_train].to(device)
    # The test set is binarised once, with its own fixed seed, so every run scores the same bits.
    test_images = test_images[: args.limit]
    test_images = torch.bernoulli(test_images, generator=torch.Generator().manual_seed(0))
    test_images = test_images.to(device)

    encoder, decoder = Encoder().to(device), build_decoder().to(device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=args.lr)

    seconds_per_epoch, train_loss = [], []
    for epoch in range(1, args.epochs + 1):
        synchronize(device)
        start = time.perf_counter()
        loss = train_epoch(encoder, decoder, optimizer, train_images, args.batch_size)
        synchronize(device)
        seconds_per_epoch.append(time.perf_counter() - start)
        train_loss.append(loss)
        print(f"epoch {epoch:3d}  loss {loss:9.3f}  seconds {seconds_per_epoch[-1]:7.2f}")

    encoder.eval()
    decoder.eval()
    synchronize(device)
    start = time.perf_counter()
    log_px, elbo = evaluate(
        encoder,
        decoder,
        test_images,
        args.num_samples,
        args.points_per_chunk,
        args.samples_per_chunk,
    )
    synchronize(device)
    eval_seconds = time.perf_counter() - start
    print(f"test log p(x) {log_px.mean().item():.3f}  elbo {elbo.mean().item():.3f}")

    result = {
        "seconds_per_epoch": seconds_per_epoch,
        "median_seconds_per_epoch": statistics.median(seconds_per_epoch),
        "eval_seconds": eval_seconds,
        "log_px": log_px.mean().item(),
        "elbo": elbo.mean().item(),
        "num_points": int(test_images.shape[0]),
        "num_samples": args.num_samples,
        "epochs": args.epochs,
        "device": str(device),
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "train_loss": train_loss,
        "seed": args.seed,
        "num_train": num_train,
    }
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
