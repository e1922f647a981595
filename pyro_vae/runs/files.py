"""Files of a run directory written safely: atomic writes, strict JSON."""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.runs.faults import fault_point


class WriteError(OSError):
    """A file that could not be written (full disk, read-only place); names file and remedy.

    An ``OSError`` still, with the original ``errno``, so handlers of ``OSError`` keep working.
    """


# Why a write failed, by errno, and what to do about it.
_WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full: free some space, or write elsewhere (another --out) on a disk "
    "with room",
    errno.EFBIG: "the file is larger than this file system or the file-size limit (ulimit -f) "
    "allows: raise the limit, or write elsewhere (another --out)",
    errno.EDQUOT: "the disk quota is used up: free some space, or write elsewhere (another --out)",
    errno.EROFS: "the file system is read-only: write elsewhere (another --out)",
    errno.EACCES: "permission denied: write to a folder you can write to (another --out)",
    errno.EPERM: "not permitted there: write to a folder you can write to (another --out)",
}


def _write_error(path: Path, error: OSError) -> WriteError:
    """The :class:`WriteError` for ``error`` on ``path`` (an errno in ``_WRITE_FAILURES``)."""
    advice = _WRITE_FAILURES[error.errno]
    failure = WriteError(f"could not write {str(path)!r} ({error.strerror}): {advice}")
    failure.errno = error.errno  # strerror and filename stay unset: str() is the message
    return failure


def _file_mode(path: Path) -> int:
    """The permission bits a plain ``open(path, "w")`` would give (mkstemp's are 0600): the
    file's own where it exists, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a crash of the machine, not only the process)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename itself is atomic
    finally:
        os.close(handle)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file in the same folder and a rename.

    A full disk, a quota, a size limit or a read-only place raises :class:`WriteError`, and
    no temporary file is left behind.
    """
    path = Path(path)
    tmp = None
    try:
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            view = memoryview(payload)
            while view:  # os.write may write less than asked
                view = view[os.write(handle, view) :]
            os.fsync(handle)
        finally:
            os.close(handle)
        os.chmod(tmp, _file_mode(path))
        fault_point(f"written:{path.name}")
        os.replace(tmp, path)
        fault_point(f"renamed:{path.name}")
        _sync_folder(path.parent)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.errno in _WRITE_FAILURES:
            raise _write_error(path, error) from error
        raise


def jsonable(value: Any) -> Any:
    """Tensors and arrays to lists, non-finite floats to None: strict JSON."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def json_bytes(value: Any) -> bytes:
    """``value`` as indented, strict JSON (:func:`jsonable`), for :func:`atomic_write_bytes`."""
    return (json.dumps(jsonable(value), indent=2) + "\n").encode()
