"""Run by tests/test_distributed.py under torchrun (2 ranks, gloo): one step's gradients.

Each rank computes the ELBO gradient of its half of a fixed global batch of 8 points, with
its own random stream (pyro_vae.infer.distributed.rank_seed), two ways:

- pyro_vae's: Pyro's Trace_ELBO, then World.sum_gradients (what RunOptimizer does before
  each step of a distributed run);
- DistributedDataParallel around PairLoss, PyTorch's own route (it averages).

Rank 0 saves both, by parameter name, to the file named on the command line.
"""

import sys

import pyro
import torch
from torch.nn.parallel import DistributedDataParallel

from pyro_vae.infer.compiled import PairLoss
from pyro_vae.infer.distributed import current_world, rank_seed
from pyro_vae.pairs import build_pair

SEED = 0


def global_batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    return torch.bernoulli(torch.rand(8, 64, generator=generator), generator=generator)


def fresh_pair():
    pyro.clear_param_store()
    torch.manual_seed(SEED)
    return build_pair((8, 8), "mlp", {"hidden": [16], "z_dim": 3})


def pyro_gradients(pair, x, rank: int) -> dict[str, torch.Tensor]:
    """Trace_ELBO's gradient on ``x`` with rank ``rank``'s stream, by parameter name."""
    pyro.set_rng_seed(rank_seed(SEED, rank))
    pyro.infer.Trace_ELBO().loss_and_grads(pair.model, pair.guide, x)
    return {name: p.grad.clone() for name, p in pair.named_parameters()}


def main(out: str) -> None:
    world, _ = current_world("cpu")
    x = global_batch().chunk(world.size)[world.rank]

    pair = fresh_pair()
    pyro.set_rng_seed(rank_seed(SEED, world.rank))
    pyro.infer.Trace_ELBO().loss_and_grads(pair.model, pair.guide, x)
    names, params = zip(*sorted(pair.named_parameters()), strict=True)
    world.sum_gradients(list(params))
    summed = {name: p.grad.clone() for name, p in zip(names, params, strict=True)}

    pair = fresh_pair()
    ddp = DistributedDataParallel(PairLoss(pair))
    pyro.set_rng_seed(rank_seed(SEED, world.rank))
    ddp(x).backward()
    averaged = {name: p.grad.clone() for name, p in pair.named_parameters()}
    if world.is_main:
        torch.save({"summed": summed, "ddp_averaged": averaged, "size": world.size}, out)
    world.close()


if __name__ == "__main__":
    main(sys.argv[1])
