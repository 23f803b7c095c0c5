"""The one exception type a user mistake raises, so the CLI can print it as a single line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PlaitError(Exception):
    """A mistake the user can fix (bad config, missing file, NaN loss): the message says how."""


class ConfigError(PlaitError, ValueError):
    """A config key or value that is not allowed; raised before any process group exists."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean '{by_lower[close[0]]}'?)" if close else ""
