"""Checks of a data file's bytes before they are read: checksums (md5 or sha256), gzip
integrity, and the magic bytes an .npy or .npz file starts with."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

from pyro_vae.data.errors import DataError

_CHUNK_BYTES = 1 << 20


def _hash_name(checksum: str) -> str:
    """The hashlib algorithm of a hex checksum, told by its length."""
    algorithms = {32: "md5", 64: "sha256"}
    if len(checksum) not in algorithms:
        raise DataError(f"checksum {checksum!r} is neither an md5 nor a sha256 hex digest")
    return algorithms[len(checksum)]


def file_checksum(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, checksum: str, *, downloaded: bool = False) -> None:
    """Raise DataError when the file's checksum differs from the expected one."""
    algorithm = _hash_name(checksum)
    actual = file_checksum(path, algorithm)
    if actual == checksum:
        return
    advice = (
        "The server sent different bytes; check --base-url or place the file by hand."
        if downloaded
        else "The file is truncated, corrupt or a different version: delete it and fetch it "
        "again (--download), or copy in a good copy."
    )
    raise DataError(
        f"checksum mismatch for {path}: expected {algorithm} {checksum}, got {actual}. {advice}"
    )


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when its name ends in .gz."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"{path} is not a valid gzip file ({error}); it is truncated or corrupt. "
            "Delete it and fetch it again (--download), or copy in a good copy."
        ) from error


# The first bytes of each array file format: numpy.save's magic string, a zip archive.
_ARRAY_FILE_MAGIC = {
    ".npy": (b"\x93NUMPY", "a NumPy array file", "numpy.save(path, array)"),
    ".npz": (b"PK", "a NumPy .npz archive", "numpy.savez(path, train=..., test=...)"),
}


def _check_array_file_magic(path: Path) -> None:
    """Raise DataError unless ``path`` starts as its suffix's format must (``_ARRAY_FILE_MAGIC``).

    Without this check numpy takes any other file for a pickle and advises allow_pickle=True,
    which would run code from the file.
    """
    magic, what, how = _ARRAY_FILE_MAGIC[path.suffix.lower()]
    try:
        with path.open("rb") as handle:
            start = handle.read(len(magic))
    except OSError as error:
        raise DataError(f"{path} could not be opened ({error.strerror})") from error
    if start != magic:
        found = f"it starts with {start!r}, not {magic!r}" if start else "it is empty"
        raise DataError(
            f"{path} is not {what}: {found} (a text file, or another format given a "
            f"{path.suffix} name?). Save the data with {how}."
        )
