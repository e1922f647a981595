"""Where data files are looked for: the search roots (--data-dir, $PYRO_VAE_DATA_DIR, the
cache) and the download cache."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Download cache: $PYRO_VAE_CACHE, else $XDG_CACHE_HOME/pyro_vae, else ~/.cache/pyro_vae."""
    if os.environ.get("PYRO_VAE_CACHE"):
        return Path(os.environ["PYRO_VAE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "pyro_vae"
    return Path.home() / ".cache" / "pyro_vae"


def search_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Data roots in lookup order: `data_dir` (--data-dir), $PYRO_VAE_DATA_DIR, the cache."""
    candidates = [data_dir, os.environ.get("PYRO_VAE_DATA_DIR") or None, cache_dir()]
    roots: list[Path] = []
    for candidate in candidates:
        if candidate is not None and Path(candidate).expanduser() not in roots:
            roots.append(Path(candidate).expanduser())
    return roots
