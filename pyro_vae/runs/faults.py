"""Fault injection for the test suite: kill (or signal) this process at a named point.

``PYRO_VAE_FAULT=POINT:N`` makes the N-th pass through :func:`fault_point` named POINT
send SIGKILL to the process itself, as a crash or ``kill -9`` would at that moment;
``POINT:N:SIGTERM`` (or ``SIGINT``) sends that signal instead, as a user stopping the run
would. Points: ``step`` (after an SVI step), ``written:FILE`` (a temporary file written, not
yet renamed to FILE) and ``renamed:FILE`` (FILE renamed into place). Unset, the check costs
one environment lookup. ``PYRO_VAE_FAULT_RANK=R`` confines the fault to rank R of a
distributed run (torchrun's ``RANK``).
"""

from __future__ import annotations

import os
import signal

ENVIRONMENT = "PYRO_VAE_FAULT"
RANK_ENVIRONMENT = "PYRO_VAE_FAULT_RANK"
_passes: dict[str, int] = {}


def parse_fault(text: str) -> tuple[str, int, signal.Signals]:
    """``POINT:N[:SIGNAL]`` as (point, N, signal); a ValueError names what is wrong."""
    parts = text.split(":")
    signum = signal.SIGKILL
    if len(parts) >= 3 and parts[-1].startswith("SIG"):
        try:
            signum = signal.Signals[parts.pop()]
        except KeyError:
            raise ValueError(f"{ENVIRONMENT}={text!r}: unknown signal") from None
    point, count = ":".join(parts[:-1]), parts[-1]
    if not point or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{ENVIRONMENT}={text!r}: expected POINT:N or POINT:N:SIGNAL, N >= 1")
    return point, int(count), signum


def fault_point(name: str) -> None:
    """Signal this process at the N-th pass through ``name`` if ``PYRO_VAE_FAULT`` says so."""
    wanted = os.environ.get(ENVIRONMENT)
    if not wanted:
        return
    point, count, signum = parse_fault(wanted)
    if point != name:
        return
    only = os.environ.get(RANK_ENVIRONMENT)
    if only is not None and os.environ.get("RANK", "0") != only:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == count:
        os.kill(os.getpid(), signum)
