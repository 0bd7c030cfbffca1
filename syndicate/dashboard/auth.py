"""Dashboard sessions and CSRF tokens: signed cookies naming a session the store keeps.

The cookie holds ``<id>.<expiry>.<mac>`` where ``mac = HMAC(api_token, "session|id|expiry")``: never the token
itself, void as soon as the token changes, and a forged cookie is refused without a store read. The session
itself is a kv entry (``dashboard-session:<sha256 of id>``, expiring with the cookie) shared by every ``syndicate
serve`` process on the store: logging out deletes it, so the old cookie is worth nothing from then on. The entry
holds the sessions *epoch* it was made in; ``revoke_all`` (``syndicate sessions revoke-all``) starts a new epoch,
which voids every session at once. The CSRF token of a session is ``HMAC(api_token, "csrf|id")``: a page from
another origin can neither read it nor guess it. The login form, which has no session yet, uses a double-submit
cookie instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Protocol

SESSION_COOKIE = "syndicate_session"
LOGIN_CSRF_COOKIE = "syndicate_login_csrf"
#: A shift and a half: the person on duty logs in once per shift.
SESSION_SECONDS = 12 * 3600
#: kv keys. The session key holds a hash of the id: a copy of the store does not hand out live cookies.
SESSION_KEY = "dashboard-session:"
EPOCH_KEY = "dashboard-sessions:epoch"
_FIRST_EPOCH = "0"


class KeyValue(Protocol):
    """The part of the store sessions live in (``syndicate.store.base.ChannelControl``'s kv entries)."""

    async def kv_get(self, key: str, *, now: float) -> str | None: ...

    async def kv_set(self, key: str, value: str, *, expires_at: float | None, now: float) -> None: ...


@dataclass(frozen=True)
class Session:
    id: str
    expires: int
    csrf: str


def _mac(token: str, message: str) -> str:
    return hmac.new(token.encode(), message.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    """Constant-time equality of two texts. As bytes: ``compare_digest`` raises TypeError on a ``str`` with
    non-ASCII characters, and a cookie or form field is whatever the client sent."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def _key(session_id: str) -> str:
    return SESSION_KEY + hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison of what the operator typed with the configured token."""
    return bool(token) and hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"), token.encode())


def signed_session(cookie: str | None, token: str, *, now: float) -> Session | None:
    """The session a cookie names when its signature and expiry hold (not yet whether the store still has it)."""
    if not cookie or not token:
        return None
    parts = cookie.split(".")
    if len(parts) != 3:
        return None
    session_id, expires_text, mac = parts
    if not (expires_text.isascii() and expires_text.isdigit()) or len(expires_text) > 12:
        return None
    if not _same(mac, _mac(token, f"session|{session_id}|{expires_text}")):
        return None
    expires = int(expires_text)
    if expires <= now:
        return None
    return Session(id=session_id, expires=expires, csrf=_mac(token, f"csrf|{session_id}"))


async def _epoch(kv: KeyValue, *, now: float) -> str:
    return await kv.kv_get(EPOCH_KEY, now=now) or _FIRST_EPOCH


async def new_session(kv: KeyValue, token: str, *, now: float) -> str:
    """Start a session; the cookie value that names it."""
    session_id = secrets.token_urlsafe(18)
    expires = int(now + SESSION_SECONDS)
    await kv.kv_set(_key(session_id), await _epoch(kv, now=now), expires_at=expires, now=now)
    return f"{session_id}.{expires}.{_mac(token, f'session|{session_id}|{expires}')}"


async def read_session(kv: KeyValue, cookie: str | None, token: str, *, now: float) -> Session | None:
    """The session a cookie proves, or None when it is missing, forged, expired, made with another token, logged
    out or revoked."""
    session = signed_session(cookie, token, now=now)
    if session is None:
        return None
    made_in = await kv.kv_get(_key(session.id), now=now)
    if made_in is None or made_in != await _epoch(kv, now=now):
        return None
    return session


async def end_session(kv: KeyValue, session: Session, *, now: float) -> None:
    """Log out: the entry expires now (the kv purge removes it), so the cookie names nothing any more."""
    await kv.kv_set(_key(session.id), "", expires_at=now, now=now)


async def revoke_all(kv: KeyValue, *, now: float) -> None:
    """Void every session on every process: a new epoch, which no existing session was made in."""
    await kv.kv_set(EPOCH_KEY, secrets.token_hex(16), expires_at=None, now=now)


def csrf_matches(given: str | None, expected: str) -> bool:
    return bool(given) and bool(expected) and _same(str(given), expected)
