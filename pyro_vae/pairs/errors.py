"""PairError: what loading, building, checking or running a model/guide pair raises."""

from __future__ import annotations


class PairError(ValueError):
    """A model/guide pair that cannot be loaded, built or run; the message names the site."""
