"""Dashboard sessions and CSRF tokens, derived from ``[server] api_token`` with HMAC (no server-side table).

The cookie holds ``<nonce>.<expiry>.<mac>`` where ``mac = HMAC(api_token, "session|nonce|expiry")``: never the
token itself, valid on every ``syndicate serve`` process sharing the config, void as soon as the token changes.
The CSRF token of a session is ``HMAC(api_token, "csrf|nonce")``: a page from another origin can neither read it
nor guess it. The login form, which has no session yet, uses a double-submit cookie instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

SESSION_COOKIE = "syndicate_session"
LOGIN_CSRF_COOKIE = "syndicate_login_csrf"
#: A shift and a half: the person on duty logs in once per shift.
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int
    csrf: str


def _mac(token: str, message: str) -> str:
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison of what the operator typed with the configured token."""
    return bool(token) and hmac.compare_digest(given.strip().encode(), token.encode())


def new_session_cookie(token: str, *, now: float) -> str:
    nonce = secrets.token_urlsafe(18)
    expires = int(now + SESSION_SECONDS)
    return f"{nonce}.{expires}.{_mac(token, f'session|{nonce}|{expires}')}"


def read_session(cookie: str | None, token: str, *, now: float) -> Session | None:
    """The session a cookie proves, or None when it is missing, forged, expired or made with another token."""
    if not cookie or not token:
        return None
    parts = cookie.split(".")
    if len(parts) != 3:
        return None
    nonce, expires_text, mac = parts
    if not (expires_text.isascii() and expires_text.isdigit()):
        return None
    if not _same(mac, _mac(token, f"session|{nonce}|{expires_text}")):
        return None
    expires = int(expires_text)
    if expires <= now:
        return None
    return Session(nonce=nonce, expires=expires, csrf=_mac(token, f"csrf|{nonce}"))


def csrf_matches(given: str | None, expected: str) -> bool:
    return bool(given) and bool(expected) and _same(str(given), expected)


def _same(given: str, expected: str) -> bool:
    """Constant-time equality of two texts. As bytes: ``compare_digest`` raises TypeError on a ``str`` with
    non-ASCII characters, and a cookie or form field is whatever the client sent."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))
