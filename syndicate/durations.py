"""Durations as people write them (``90s``, ``30m``, ``2h``, ``1d``, ``1w``): the config's reach ages, the CLI's and
the API's periods and pauses. A module of its own so the config can read them without importing the engine."""

from __future__ import annotations

import re

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
MAX_DURATION = 3650 * 86400.0
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``90s`` / ``30m`` / ``2h`` / ``1d`` / ``1w``; ValueError saying what is accepted."""
    match = DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration: use 90s, 30m, 2h, 1d or 1w")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if seconds > MAX_DURATION:
        raise ValueError(f"{text!r} is too long: at most 3650d (ten years)")
    return seconds
