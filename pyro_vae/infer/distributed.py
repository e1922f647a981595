"""Data-parallel training and evaluation over processes: torchrun, ``torch.distributed``.

A run under ``torchrun`` (or ``pyro-vae train --nproc-per-node N``, which starts torchrun's
launcher) is one process per rank. :func:`current_world` reads torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and joins the process group: gloo on the CPU, nccl
on CUDA with one GPU per rank (``cuda:LOCAL_RANK``). Without that environment the world is
one process and nothing here communicates.

How a step is shared (``pyro_vae.training.train``):

- Every rank builds the pair from the same seed, so the parameters start equal; after that
  each rank draws from its own random stream (:func:`rank_seed`): dynamic binarization, the
  guide's draws and the particles differ per rank, as they would for one process drawing the
  whole batch.
- The training set is dealt out once: rank r holds the points ``perm[r::R]`` of a seeded
  permutation (:func:`shard_rows`), on its device, padded to one length so every rank takes
  the same number of steps. ``--batch-size`` is the global batch: each rank's minibatch is
  ``batch_size / R`` of its own points.
- The gradients are summed over the ranks before every optimizer step, as one flat tensor
  (:meth:`World.sum_gradients`); each rank's loss is its own points' sum, so the summed
  gradient is that of the global batch, what one process would compute. The loss and the
  stop flag (a signal at one rank) are summed too, so a NaN or a stop at any rank is seen by
  all at the same step.

Why not ``DistributedDataParallel`` around the step: its gradient hooks fire in an autograd
backward pass that the module's forward started. Pyro's ``SVI`` calls the model and guide
itself and its ``TraceGraph_ELBO``/``TraceEnum_ELBO`` run their own backward passes, and the
compiled step computes its gradients inside the graph with no backward pass at all. One
all-reduce before the optimizer covers all of them. ``DDP(PairLoss(pair))`` remains the route
for a hand-written loop: its averaged gradient equals ours divided by R
(``tests/test_distributed.py``).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

#: How long a rank waits in a collective before it gives up (a peer that died, a peer that
#: never came): seconds. ``PYRO_VAE_DIST_TIMEOUT`` overrides it.
DEFAULT_TIMEOUT = 120.0


class DistributedError(RuntimeError):
    """A rank that cannot join, a peer that died, or ranks that disagree; says which rank.
    ``exit_code``: 2 for what the command line can fix (a launch setting, a rendezvous that
    cannot be reached, ranks started with other flags), 1 for a peer lost mid-run."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class World:
    """This process's place among the ranks of a run (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    closed: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one rank that writes the run directory and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def sum_gradients(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum ``.grad`` of ``tensors`` over the ranks, in place, as one flat all-reduce
        (every rank passes the same tensors in the same order)."""
        if not self.distributed or not tensors:
            return
        grads = [t.grad for t in tensors]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._all_reduce(flat, "summing the gradients")
        for tensor, summed in zip(tensors, _split_like(flat, grads), strict=True):
            tensor.grad = summed

    def sum(self, values: Sequence[float]) -> list[float]:
        """``values`` summed over the ranks (float64; on this rank's GPU under nccl, which
        reduces CUDA tensors only)."""
        if not self.distributed:
            return [float(v) for v in values]
        device = f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"
        tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
        self._all_reduce(tensor, "summing the losses")
        return tensor.tolist()

    def gather(self, obj: Any, what: str) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, at every rank."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.size
        try:
            dist.all_gather_object(gathered, obj)
        except Exception as error:
            raise self.lost(what, error) from error
        return gathered

    def broadcast(self, obj: Any, what: str) -> Any:
        """Rank 0's ``obj`` at every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        try:
            dist.broadcast_object_list(box, src=0)
        except Exception as error:
            raise self.lost(what, error) from error
        return box[0]

    def broadcast_tensors(self, tensors: Sequence[torch.Tensor], what: str) -> None:
        """Rank 0's values of ``tensors`` at every rank, in place (one flat broadcast)."""
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        try:
            dist.broadcast(flat, src=0)
        except Exception as error:
            raise self.lost(what, error) from error
        with torch.no_grad():
            for tensor, value in zip(tensors, _split_like(flat, tensors), strict=True):
                tensor.copy_(value)

    def barrier(self, what: str) -> None:
        if self.distributed:
            try:
                dist.barrier()
            except Exception as error:
                raise self.lost(what, error) from error

    def _all_reduce(self, tensor: torch.Tensor, what: str) -> None:
        try:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        except Exception as error:
            raise self.lost(what, error) from error

    def lost(self, what: str, error: Exception) -> DistributedError:
        first = (str(error).strip().splitlines() or [""])[0][:300]
        return DistributedError(
            f"rank {self.rank} of {self.size}: lost contact with the other ranks while "
            f"{what} ({type(error).__name__}: {first}); another rank has stopped or died "
            "(its own message, or torchrun's summary, names it)",
            exit_code=1,
        )

    def close(self, wait: bool = True) -> None:
        """Leave the run: with ``wait``, the ranks meet at a barrier first, so none leaves
        while another still talks to it; without, at once (when the work left is rank 0's
        alone and might outlast the barrier's timeout). The process group is not torn down:
        gloo's threads can abort a process that destroys it while a peer exits, so the
        command line leaves with ``os._exit`` after it (:func:`exit_now`)."""
        if self.distributed and not self.closed:
            self.closed = True
            if wait:
                self.barrier("leaving together")


def _split_like(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``flat`` (the tensors of ``like`` flattened and concatenated) as views of their shapes."""
    pieces = flat.split([t.numel() for t in like])
    return [piece.view_as(t) for piece, t in zip(pieces, like, strict=True)]


_WORLD = World()


def world() -> World:
    """The world this process joined (:func:`current_world`), or one process."""
    return _WORLD


def exit_now(code: int) -> None:
    """End a rank's process with ``code`` once its output is flushed, without the
    interpreter's teardown (see :meth:`World.close`)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current_world(device_name: str) -> tuple[World, str]:
    """Join torchrun's process group if this process is one of several ranks; returns the
    world and the device this rank trains on (``cuda:LOCAL_RANK`` for ``cuda``/``auto`` on a
    GPU machine). Refuses a world that cannot work, naming what to change."""
    global _WORLD
    if not launched_by_torchrun():
        _WORLD = World()
        return _WORLD, device_name
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as error:
        raise DistributedError(
            f"WORLD_SIZE is {os.environ.get('WORLD_SIZE')} but RANK/LOCAL_RANK are missing "
            f"or not integers ({error}): start the ranks with torchrun (or pyro-vae train "
            "--nproc-per-node N)"
        ) from error
    use_cuda = device_name.startswith("cuda") or (
        device_name == "auto" and torch.cuda.is_available()
    )
    if use_cuda:
        if not torch.cuda.is_available():
            raise DistributedError(f"--device {device_name}: CUDA is not available here")
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"rank {rank} has LOCAL_RANK {local_rank}, but this machine has "
                f"{torch.cuda.device_count()} GPU(s): lower --nproc-per-node"
            )
        torch.cuda.set_device(local_rank)
        device_name, backend = f"cuda:{local_rank}", "nccl"
    else:
        device_name, backend = "cpu", "gloo"
    timeout = timeout_seconds()
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, rank=rank, world_size=size,
                                    timeout=datetime.timedelta(seconds=timeout))  # fmt: skip
        except Exception as error:
            first = (str(error).strip().splitlines() or [""])[0][:300]
            where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
            raise DistributedError(
                f"rank {rank} of {size} could not join the process group at {where} "
                f"({type(error).__name__}: {first}): check that every rank was started, that "
                "--rdzv-endpoint/--master-addr name a reachable host, and that the port is free"
            ) from error
    _WORLD = World(rank=rank, size=size, local_rank=local_rank, backend=backend)
    return _WORLD, device_name


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random stream after setup; rank 0 keeps ``seed`` itself,
    so a one-rank run is the single-process run."""
    return seed if rank == 0 else (seed + 7919 * rank) % (2**63)


def shard_rows(num_points: int, rank: int, size: int, seed: int) -> torch.Tensor:
    """The rows rank ``rank`` of ``size`` holds: ``perm[rank::size]`` of a permutation seeded
    by ``seed`` (classes mix across ranks whatever the file's order), padded at the end by
    its own first rows to ``ceil(num_points / size)`` so that all ranks hold as many. One
    rank holds every row, in order."""
    if size == 1:
        return torch.arange(num_points)
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num_points, generator=generator)
    rows = perm[rank::size]
    length = -(-num_points // size)
    if rows.numel() < length:
        rows = torch.cat([rows, rows[: length - rows.numel()]])
    return rows


def check_batch_divides(batch_size: int, size: int, ranks: str) -> None:
    """Refuse a global ``--batch-size`` that ``size`` ranks (described by ``ranks``) cannot
    share equally."""
    if size > 1 and batch_size % size:
        raise DistributedError(
            f"--batch-size {batch_size} is the global batch, split among {ranks}, and does "
            f"not divide by {size}: use a multiple of {size}, e.g. "
            f"{batch_size - batch_size % size or size}"
        )


def check_same_config(world: World, config: dict[str, Any],
                      ignore: Sequence[str] = ()) -> None:  # fmt: skip
    """Refuse ranks whose configurations differ (a rank started with other flags), naming
    the first rank and key that differ from rank 0's."""
    if not world.distributed:
        return
    mine = json.dumps({k: v for k, v in config.items() if k not in ignore}, sort_keys=True,
                      default=str)  # fmt: skip
    everyone = world.gather(mine, "comparing the configurations")
    reference = json.loads(everyone[0])
    for rank, text in enumerate(everyone):
        theirs = json.loads(text)
        if theirs == reference:
            continue
        key = next(k for k in sorted(set(reference) | set(theirs))
                   if reference.get(k) != theirs.get(k))  # fmt: skip
        raise DistributedError(
            f"rank {rank} was started with another configuration than rank 0: {key} is "
            f"{theirs.get(key)!r} there and {reference.get(key)!r} at rank 0; start every rank "
            "with the same flags"
        )


#: ``pyro-vae`` flags that start torchrun's launcher, with the number of values each takes.
LAUNCH_FLAGS = {"--nproc-per-node": 1, "--nnodes": 1, "--node-rank": 1, "--master-addr": 1,
                "--master-port": 1}  # fmt: skip


def worker_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` without the launcher's flags (``--flag V`` and ``--flag=V`` forms): what each
    rank runs."""
    kept, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_FLAGS:
            skip = 0 if "=" in arg else LAUNCH_FLAGS[name]
            continue
        kept.append(arg)
    return kept


def launch(argv: Sequence[str], *, nproc_per_node: int, nnodes: int = 1, node_rank: int = 0,
           master_addr: str | None = None, master_port: int | None = None) -> int:  # fmt: skip
    """Run ``python -m pyro_vae ARGV`` as ``nproc_per_node`` ranks on this machine with
    torchrun's own launcher (``torch.distributed.run``): one machine by a standalone
    rendezvous on a free port, several by the static rendezvous at ``master_addr:master_port``
    (every machine runs the same command with its ``node_rank``). Returns 0, or 1 after a
    message naming the rank(s) that failed and how; the others are stopped by torchrun."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    if nproc_per_node < 1:
        raise DistributedError(f"--nproc-per-node {nproc_per_node}: must be at least 1")
    if nnodes < 1 or not 0 <= node_rank < nnodes:
        raise DistributedError(
            f"--nnodes {nnodes} --node-rank {node_rank}: need nnodes >= 1 and 0 <= node-rank "
            "< nnodes"
        )
    if nnodes == 1:
        launcher = ["--standalone"]
    else:
        if master_addr is None or master_port is None:
            raise DistributedError(
                f"--nnodes {nnodes}: give --master-addr HOST and --master-port PORT, the "
                "address of node 0 that every machine can reach (the same on all of them)"
            )
        # the static rendezvous waits this long for the other machines, then gives up
        launcher = ["--nnodes", str(nnodes), "--node-rank", str(node_rank),
                    "--master-addr", master_addr, "--master-port", str(master_port),
                    "--rdzv-conf", f"timeout={int(timeout_seconds())}"]  # fmt: skip
    args = get_args_parser().parse_args(
        [
            *launcher,
            "--nproc-per-node",
            str(nproc_per_node),
            "--module",
            "pyro_vae",
            *worker_argv(argv),
        ]  # fmt: skip
    )
    try:
        torchrun(args)
    except ChildFailedError as error:
        print(_failure_message(error, nproc_per_node, node_rank), file=sys.stderr, flush=True)
        return 1
    except Exception as error:  # noqa: BLE001 - torchrun's own: the rendezvous, the port
        first = (str(error).strip().splitlines() or [""])[0][:300]
        where = f"{master_addr}:{master_port}" if nnodes > 1 else "this machine"
        raise DistributedError(
            f"torchrun could not start the {nnodes * nproc_per_node} ranks at {where} "
            f"({type(error).__name__}: {first}): "
            + (
                "check that every machine runs the command with its own --node-rank within "
                f"{int(timeout_seconds())} s (PYRO_VAE_DIST_TIMEOUT), that --master-addr is "
                "node 0's address, reachable from all, and that --master-port is free there"
                if nnodes > 1
                else "check that the machine can open a local port"
            )
        ) from error
    return 0


def timeout_seconds() -> float:
    """How long a rank waits for the others (``PYRO_VAE_DIST_TIMEOUT``, default 120 s)."""
    value = os.environ.get("PYRO_VAE_DIST_TIMEOUT", str(DEFAULT_TIMEOUT))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise DistributedError(f"PYRO_VAE_DIST_TIMEOUT={value!r}: must be a number of seconds > 0")
    return seconds


def _failure_message(error: Any, nproc_per_node: int, node_rank: int) -> str:
    """The failed ranks: those killed by a signal first (the usual root cause: the others
    then lose contact and exit with code 1), then by time and rank."""

    def order(item: tuple[int, Any]) -> tuple:
        rank, failure = item
        return failure.exitcode >= 0, failure.timestamp, rank

    failures = sorted(error.failures.items(), key=order)
    lines = []
    for rank, failure in failures:
        if failure.exitcode < 0:
            how = f"was killed by {failure.signal_name()}"
        else:
            how = f"exited with code {failure.exitcode}"
        lines.append(f"rank {rank} (node {node_rank}, local rank {failure.local_rank}) {how}")
    return (
        "pyro-vae: " + "; then ".join(lines) + ". torchrun stopped the other ranks; the run "
        "directory keeps its last checkpoint (resume with --resume and the same "
        f"--nproc-per-node {nproc_per_node} to continue it bit for bit)"
    )


__all__ = [
    "DEFAULT_TIMEOUT",
    "LAUNCH_FLAGS",
    "launch",
    "worker_argv",
    "DistributedError",
    "World",
    "check_batch_divides",
    "check_same_config",
    "current_world",
    "exit_now",
    "rank_seed",
    "shard_rows",
    "world",
]
