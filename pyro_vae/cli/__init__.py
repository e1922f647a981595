"""The ``pyro-vae`` command line: train, evaluate, sample, and list data sets, pairs, objectives.

The commands, one idea a module: :mod:`~pyro_vae.cli.train` (``pyro-vae train``),
:mod:`~pyro_vae.cli.analyses` (the commands that read a trained run),
:mod:`~pyro_vae.cli.catalog` (``pyro-vae list``) and :mod:`~pyro_vae.cli.options` (argument
types and launch flags they share). Here: the parser, and :func:`main` with its error handling
(a user's error is a message and exit status 2, never a traceback).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from pyro_vae.analysis.diagnose import DiagnoseError
from pyro_vae.cli.analyses import (
    _add_bdmc,
    _add_convergence,
    _add_diagnose,
    _add_evaluate,
    _add_gradvar,
    _add_latents,
    _add_sample,
)
from pyro_vae.cli.catalog import _add_list
from pyro_vae.cli.sweep import _add_sweep
from pyro_vae.cli.train import _add_train
from pyro_vae.data import DataError
from pyro_vae.infer.distributed import (
    DistributedError,
    check_batch_divides,
    exit_now,
    launch,
    launched_by_torchrun,
    world,
)
from pyro_vae.infer.estimators import EstimatorError
from pyro_vae.infer.objectives import ObjectiveError
from pyro_vae.pairs import PairError
from pyro_vae.pairs.labels import LabelError
from pyro_vae.runs.checkpoints import CheckpointError
from pyro_vae.runs.config import ConfigError
from pyro_vae.runs.files import WriteError
from pyro_vae.runs.lock import RunInUseError
from pyro_vae.sweeps.errors import SweepError
from pyro_vae.training.train import TrainingError

USER_ERRORS = (
    CheckpointError,
    ConfigError,
    DataError,
    DiagnoseError,
    EstimatorError,
    LabelError,
    ObjectiveError,
    PairError,
    RunInUseError,
    SweepError,
    TrainingError,
    WriteError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-vae", description="Variational autoencoders as Pyro programs."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_train,
        _add_evaluate,
        _add_sample,
        _add_list,
        _add_convergence,
        _add_gradvar,
        _add_diagnose,
        _add_latents,
        _add_bdmc,
        _add_sweep,
    ):
        add(subparsers)
    return parser


def _check_launch_flags(args) -> None:
    """The launch flags that have no effect: --nnodes, --node-rank, --master-addr and
    --master-port without --nproc-per-node (no launcher starts), the rendezvous address of
    a single machine; and a port outside 1-65535."""
    if not hasattr(args, "nnodes") or launched_by_torchrun():
        return
    given = [flag for flag, value, default in (
        ("--nnodes", args.nnodes, 1), ("--node-rank", args.node_rank, 0),
        ("--master-addr", args.master_addr, None), ("--master-port", args.master_port, None),
    ) if value != default]  # fmt: skip
    if given and args.nproc_per_node is None:
        raise DistributedError(
            f"{' '.join(given)} {'has' if len(given) == 1 else 'have'} no effect without "
            "--nproc-per-node N, which starts the ranks; add it, or drop "
            f"{'it' if len(given) == 1 else 'them'}"
        )
    port = args.master_port
    if port is not None and not 1 <= port <= 65535:
        raise DistributedError(f"--master-port {port}: must be a port number in 1-65535")
    rendezvous = [flag for flag in given if flag.startswith("--master")]
    if rendezvous and args.nnodes == 1:
        raise DistributedError(
            f"{' '.join(rendezvous)}: one machine (--nnodes 1) rendezvouses on a free port of "
            "its own, so these have no effect; drop them, or pass --nnodes M for M machines"
        )


def _check_launch(args) -> None:
    """What the launcher can refuse before it starts any rank."""
    size = args.nproc_per_node * max(args.nnodes, 1)
    batch_size = getattr(args, "batch_size", None)
    if args.command == "train" and batch_size and size > 0:
        check_batch_divides(batch_size, size, f"{size} ranks (--nproc-per-node "
                            f"{args.nproc_per_node} x --nnodes {args.nnodes})")  # fmt: skip


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-vae`` console script. A rank of a distributed run leaves
    with ``os._exit`` once its output is flushed (:func:`pyro_vae.infer.distributed.exit_now`)."""
    code = _main(argv)
    if world().distributed:
        exit_now(code)
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        _check_launch_flags(args)
        if getattr(args, "nproc_per_node", None) is not None and not launched_by_torchrun():
            _check_launch(args)
            return launch(argv, nproc_per_node=args.nproc_per_node, nnodes=args.nnodes,
                          node_rank=args.node_rank, master_addr=args.master_addr,
                          master_port=args.master_port)  # fmt: skip
        code = args.run(args)
        world().close()
        return code
    except USER_ERRORS as error:
        print(f"pyro-vae {args.command}: error: {error}", file=sys.stderr)
        return 2
    except DistributedError as error:
        print(f"pyro-vae {args.command}: error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    except KeyboardInterrupt as interrupt:
        if interrupt.args:  # train saved where it stopped and says so
            print(f"pyro-vae {args.command}: {interrupt.args[0]}", file=sys.stderr)
            return 130
        out = getattr(args, "out", None)
        hint = f"; resume with: pyro-vae train --out {out} --resume" if out else ""
        kept = "the last checkpoint is kept" if args.command == "train" else "nothing was saved"
        print(f"pyro-vae {args.command}: interrupted; {kept}{hint}", file=sys.stderr)
        return 130
    finally:
        if launched_by_torchrun():  # torchrun's SIGTERM to a rank already on its way out
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
