"""Small HTTP facts every platform adapter needs the same way."""

from __future__ import annotations

import datetime as dt
import email.utils

#: How long a channel pauses on a 429 that does not say (no Retry-After, no reset header).
DEFAULT_RATE_LIMIT_PAUSE = 60.0


#: A platform asking to wait longer than this (a bug, or "99999999999") is asked again a day later rather than
#: pausing a channel for centuries.
MAX_RETRY_AFTER = 86_400.0


def retry_after_seconds(value: str | None, *, now: float) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date (RFC 9110 section 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() also accepts '²'
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # the asctime form carries no zone; every HTTP date is GMT
        when = when.replace(tzinfo=dt.UTC)
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER)
