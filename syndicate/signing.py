"""The one signature scheme syndicate speaks: ``t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``.

Used to sign what we send (signed pushes) and to verify what the CMS sends us (the publish hook). The timestamp
inside the signed text is what makes a captured request useless after the tolerance window.
"""

from __future__ import annotations

import hmac
import time

SIGNATURE_HEADER = "X-Syndicate-Signature"
DEFAULT_TOLERANCE = 300.0


class SignatureError(ValueError):
    """The signature is missing, malformed, wrong or outside the tolerance window (the message says which)."""


def sign(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    """The header value for ``body`` signed at ``timestamp`` (now when omitted)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(secret, t, body)}"


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    # hmac.digest: OpenSSL's one-shot HMAC, without building an HMAC object per message.
    return hmac.digest(secret.encode(), b"%d." % timestamp + body, "sha256").hex()


def verify(
    secret: str,
    body: bytes,
    header: str | None,
    *,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> int:
    """Check ``header`` against ``body``; return its timestamp. Raises SignatureError saying what is wrong."""
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {SIGNATURE_HEADER} header: expected t=<unix>,v1=<hex>")
        parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        raise SignatureError(f"{SIGNATURE_HEADER} header has no valid t=<unix seconds>") from None
    candidates = parts.get("v1", [])
    if not candidates:
        raise SignatureError(f"{SIGNATURE_HEADER} header has no v1=<hex> signature")
    current = time.time() if now is None else now
    if abs(current - t) > tolerance:
        raise SignatureError(f"signature timestamp is outside the {int(tolerance)} s tolerance (stale or replayed)")
    expected = _mac(secret, t, body)
    # Compare bytes: compare_digest raises TypeError on non-ASCII str, and the header is attacker-controlled.
    if not any(hmac.compare_digest(expected.encode(), c.encode("utf-8", "replace")) for c in candidates):
        raise SignatureError("signature does not match the body")
    return t
