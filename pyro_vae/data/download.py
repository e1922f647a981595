"""Downloads: a named set's missing file fetched into the cache, atomically and verified
against its checksum."""

from __future__ import annotations

import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from pyro_vae.data.checks import _CHUNK_BYTES, _verify
from pyro_vae.data.errors import DataError, logger
from pyro_vae.data.registry import DataFile, DatasetSpec
from pyro_vae.data.roots import cache_dir

_DOWNLOAD_TIMEOUT_S = 60


def _download_form(spec: DatasetSpec, role: str) -> DataFile:
    """The form of a file that is fetched from the web."""
    for form in spec.files[role]:
        if form.url is not None:
            return form
    raise DataError(f"data set {spec.name!r} has no download source for its {role!r} file")


def download_file(url: str, target: Path, checksum: str) -> Path:
    """Fetch `url` to `target` atomically: temp file in the same folder, verify, os.replace."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    temp_path = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as sink:
            _copy_url(url, sink, target.name)
        _verify(temp_path, checksum, downloaded=True)
        os.replace(temp_path, target)
    except (OSError, http.client.HTTPException) as error:
        raise DataError(
            f"download of {url} failed ({error}). Fetch it by hand and place it at {target} "
            "(or in DIR and pass --data-dir DIR / set PYRO_VAE_DATA_DIR=DIR), "
            "or pass --base-url with a mirror."
        ) from error
    finally:
        temp_path.unlink(missing_ok=True)
    return target


def _copy_url(url: str, sink: BinaryIO, label: str) -> None:
    """Stream the body of `url` into `sink`, with a progress bar when stderr is a terminal."""
    from tqdm import tqdm

    try:
        response = urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        error.close()  # it holds the connection open; its status and reason are all we need
        raise
    with response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=label, disable=not sys.stderr.isatty()
        ) as bar:
            for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                sink.write(chunk)
                bar.update(len(chunk))


def _fetch(spec: DatasetSpec, role: str, base_url: str | None) -> Path:
    """Download one file of a data set into `cache_dir()/<folder>/`."""
    form = _download_form(spec, role)
    url = f"{base_url.rstrip('/')}/{form.filename}" if base_url else form.url
    target = cache_dir() / spec.folder / form.filename
    logger.info("downloading %s to %s", url, target)
    return download_file(url, target, form.checksum)
