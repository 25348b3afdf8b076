"""The one exception type gapfit raises for bad user input."""

from __future__ import annotations


class GapfitError(ValueError):
    """Bad input: the message says what was found, where, and what to do."""
