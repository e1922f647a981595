"""What several commands share on the command line: argument types (JSON objects, comma
lists) and torchrun's launch flags."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object like '{{\"z_dim\": 20}}': {text!r}"
        )
    return value


def _comma_list(kind: type) -> Callable[[str], list]:
    """An argparse type for ``a,b,c``: each item converted by ``kind``."""

    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {kind.__name__}, got {text!r}"
            ) from None

    return parse


def _add_launch_options(p) -> None:
    """torchrun's launch flags: ``--nproc-per-node N`` starts N ranks of the command."""
    group = p.add_argument_group(
        "data parallel (torchrun)",
        "start the command as several processes (ranks) with torchrun's launcher; the same "
        "as `torchrun --nproc-per-node N -m pyro_vae ...`",
    )
    group.add_argument(
        "--nproc-per-node",
        type=int,
        metavar="N",
        help="ranks on this machine (one per GPU on CUDA) (default: none, one process "
        "without torchrun)",
    )
    group.add_argument(
        "--nnodes",
        type=int,
        default=1,
        metavar="M",
        help="machines in the run (each runs the same command) (default 1)",
    )
    group.add_argument(
        "--node-rank",
        type=int,
        default=0,
        metavar="K",
        help="this machine's number, 0..M-1 (default 0)",
    )
    group.add_argument("--master-addr", metavar="HOST",
                       help="node 0's address, for M > 1 (default: none; one machine needs "
                       "none)")  # fmt: skip
    group.add_argument("--master-port", type=int, metavar="PORT",
                       help="a free port on node 0, 1-65535, for M > 1 (default: none; one "
                       "machine picks its own)")  # fmt: skip
