"""Small HTTP facts every platform adapter needs the same way."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import pydantic_core

from syndicate.delivery import AuthRevoked, OutcomeUnknown, Permanent, RateLimited, Retryable
from syndicate.record import record

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


def http_failure(
    status: int,
    headers: Mapping[str, str],
    *,
    source: str,
    refused: str,
    auth: str,
    redirect_fix: str,
    detail: str = "",
    platform_code: str | int | None = None,
    now: float | None = None,
) -> Retryable | RateLimited | AuthRevoked | Permanent:
    """A non-2xx answer of an HTTP receiver mapped onto the taxonomy, the same way for every channel that posts to
    one: redirects are a config mistake (following one would turn the POST into a GET), 408/425 and 5xx retry (with
    Retry-After), 429 pauses the channel, 401/403 pause it until resumed, other 4xx fail for good.

    ``source`` says who answered ("the receiver", "the platform on publish"); ``refused`` what it refused; ``auth``
    what to check when credentials are rejected; ``redirect_fix`` which setting to correct on a redirect.
    """
    code = status if platform_code is None else platform_code
    now = time.time() if now is None else now
    if 300 <= status < 400:
        location = headers.get("Location", "(no Location header)")
        return Permanent(
            f"HTTP {status}: {source} redirects to {location}; set {redirect_fix} to the final address",
            platform_code=status,
        )
    if status in (408, 425):  # request timeout / too early: the receiver did not process it
        return Retryable(f"HTTP {status} from {source}{detail}", platform_code=code)
    if status == 429:
        wait = retry_after_seconds(headers.get("Retry-After"), now=now)
        until = dt.datetime.fromtimestamp(now + (DEFAULT_RATE_LIMIT_PAUSE if wait is None else wait), tz=dt.UTC)
        return RateLimited(f"HTTP 429 from {source}{detail}", until=until, platform_code=code)
    if status >= 500:
        return Retryable(
            f"HTTP {status} from {source}{detail}",
            retry_after=retry_after_seconds(headers.get("Retry-After"), now=now),
            platform_code=code,
        )
    if status in (401, 403):
        # Every delivery would fail the same way: pause the channel rather than fail them all.
        return AuthRevoked(f"HTTP {status}: {auth}{detail}", platform_code=code)
    return Permanent(f"HTTP {status}: {refused}{detail}", platform_code=code)


# --- the transmitter's one mapping of transport failures ------------------------------------------------------


class map_transport_errors:  # lower case: a context manager named as what it does, as contextlib.suppress is
    """Transport failures of one request onto the taxonomy, the same way for every HTTP channel (as httpx's
    ``map_httpcore_exceptions``): no connection means nothing was sent (Retryable); a timeout, reset or protocol
    error after connecting means the request may have been processed, so a request that creates or changes
    something (``may_land``) is OutcomeUnknown (look it up before any resend) and a read is simply Retryable.

    ``doing`` names the step for the message ("publish", "lookup", "upload cover"); ``target`` the host or URL.
    A class, not a generator under contextlib.contextmanager: every request enters it, and the generator's
    machinery cost 0.9 µs more per request.
    """

    __slots__ = ("doing", "may_land", "target")

    def __init__(self, doing: str, *, target: str, may_land: bool) -> None:
        self.doing = doing
        self.target = target
        self.may_land = may_land

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        doing = self.doing
        if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
            raise Retryable(f"{doing}: could not connect to {self.target}: {exc}") from exc
        if isinstance(exc, TimeoutError | aiohttp.ClientError):
            if self.may_land:
                raise OutcomeUnknown(f"{doing}: no answer after sending ({type(exc).__name__}: {exc})") from exc
            raise Retryable(f"{doing} failed: {type(exc).__name__}: {exc}") from exc


def json_object(raw: bytes | str) -> dict[str, Any]:
    """A platform's answer as a JSON object: ``{}`` when it is not JSON (an HTML error page, an empty body),
    ``{"value": v}`` when it is JSON but not an object, so callers read keys without checking types first."""
    try:
        # pydantic-core parses an answer six times faster than json; what it refuses (a byte-order mark, a lone
        # surrogate escape, text that is not JSON) json decides, so every answer reads exactly as json reads it.
        value = pydantic_core.from_json(raw)
    except (ValueError, TypeError):  # TypeError: a str holding a lone surrogate (text decoded with errors=replace)
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return {}
    return value if isinstance(value, dict) else {"value": value}


@record
class HttpAnswer:
    """One answer, read whole: status, headers and body (``HttpAdapter.request``)."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (see ``json_object``)."""
        return json_object(self.body)
