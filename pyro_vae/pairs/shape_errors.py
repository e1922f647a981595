"""The shape errors Pyro and torch raise from inside a pair's programs, retold in terms of the
site, the data and what to change (:func:`~pyro_vae.pairs.check.check_pair` raises them as
:class:`~pyro_vae.pairs.errors.PairError`)."""

from __future__ import annotations

import math
import re
from typing import Any

from pyro_vae.pairs.arguments import INPUT_SIZE_NAMES

_PLATE_MISMATCH = re.compile(
    r"Shape mismatch inside plate\('([^']*)'\) at site (\S+) dim (-?\d+), (\d+) vs (\d+)"
)
_RESHAPE = re.compile(r"shape '\[(-?\d+(?:, ?-?\d+)*)\]' is invalid for input of size (\d+)")
_MATMUL = re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)")


def _site_distribution(error: BaseException, site: str) -> Any:
    """The distribution at ``site`` where Pyro raised ``error``: the ``msg`` of the frame
    (Pyro's broadcast of a plate) that raised it, or None."""
    tb = error.__traceback__
    found = None
    while tb is not None:
        msg = tb.tb_frame.f_locals.get("msg")
        if isinstance(msg, dict) and msg.get("name") == site and msg.get("fn") is not None:
            found = msg["fn"]
        tb = tb.tb_next
    return found


def plate_mismatch_message(label: str, error: BaseException) -> str | None:
    """Pyro's ``Shape mismatch inside plate('data') at site z dim -1, 16 vs 2`` retold: the
    site, the batch and event shapes of its distribution, and the ``.to_event(n)`` that makes
    the extra batch dims one draw's event (the usual cause), else the size the plate wants."""
    found = _PLATE_MISMATCH.search(str(error))
    if found is None:
        return None
    plate, site, dim, size, got = found.group(1), found.group(2), *map(int, found.groups()[2:])
    fn = _site_distribution(error, site)
    if fn is None:
        return (
            f"the {label}'s site {site!r} does not fit plate({plate!r}): at dim {dim} its "
            f"distribution's batch shape has {got} where the plate has {size}. Dims that "
            f"belong to one draw are event dims: add .to_event(n) to the distribution (e.g. "
            f"dist.Normal(loc, scale).to_event(1)). ({str(error).splitlines()[0]})"
        )
    pyro_says = f" (Pyro: {found.group(0)})"
    batch, event = tuple(fn.batch_shape), tuple(fn.event_shape)
    extra = len(batch) + dim  # batch dims to the right of the plate's
    shapes = f"batch shape {batch} and event shape {event}"
    if extra > 0:
        return (
            f"the {label}'s site {site!r} does not fit plate({plate!r}) over {size} points: "
            f"its distribution has {shapes}, so Pyro takes dim {dim} ({got}) for the plate's. "
            f"The {extra} rightmost batch dim(s) {batch[-extra:]} are the values of one draw: "
            f"add .to_event({extra}) to the distribution (e.g. dist.Normal(loc, scale)"
            f".to_event({extra})), which makes it batch shape {batch[:-extra]} and event shape "
            f"{batch[-extra:] + event}; the model's site {site!r} needs the same event "
            f"shape{pyro_says}"
        )
    return (
        f"the {label}'s site {site!r} does not fit plate({plate!r}) over {size} points: its "
        f"distribution has {shapes}, with {got} at dim {dim} where the plate has {size}. "
        f"Its parameters need one row per point of the batch ({size}), e.g. computed from x "
        f"rather than sized for a fixed number of points{pyro_says}"
    )


def width_mismatch_message(label: str, error: BaseException, x: Any) -> str | None:
    """torch's ``mat1 and mat2 shapes cannot be multiplied`` where the layer's input is the
    data itself, or its ``shape '[-1, 784]' is invalid`` where a program reshapes the batch to
    another width per point: say the data's width per point and the argument that sets a
    pair's input width (``x_dim``, ``input_dim``, ...), which pyro_vae fills from the data."""
    if x is None or x.dim() < 2:
        return None
    width = math.prod(x.shape[1:])
    matmul, reshape = _MATMUL.search(str(error)), _RESHAPE.search(str(error))
    if matmul is not None:
        _, given, wanted, _ = map(int, matmul.groups())
        if given != width:
            return None
        what = f"a layer takes {wanted} inputs per point"
    elif reshape is not None:
        shape = [int(size) for size in reshape.group(1).split(",")]
        wanted = math.prod(size for size in shape[1:] if size != -1)
        if int(reshape.group(2)) != x.numel() or -1 not in shape[:1] or wanted == width:
            return None
        what = f"the program reshapes x to {shape}, {wanted} values per point"
    else:
        return None
    names = ", ".join(INPUT_SIZE_NAMES[:4])
    return (
        f"the {label} failed on a batch of shape {tuple(x.shape)}: {what}, but the data have "
        f"{width} values per point "
        f"({type(error).__name__}: {str(error).splitlines()[0]}). Where the "
        f"pair's input width is an argument ({names}, ... in --pair-kwargs or in your own "
        f"code), make it {width}, or leave it out of --pair-kwargs: pyro_vae fills those "
        "arguments from the data when they are not given"
    )
