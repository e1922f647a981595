"""DataError, what loading data raises for anything the user must fix, and the logger that
reports the rest (downloads, label files not found, values kept as stored)."""

from __future__ import annotations

import logging

logger = logging.getLogger("pyro_vae.data")


class DataError(ValueError):
    """Bad or missing data; the message says what was wrong and what to do, naming file/flag."""
