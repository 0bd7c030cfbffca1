"""X-Syndicate-Signature: ``t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`` with a 300 s tolerance."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from syndicate.signing import DEFAULT_TOLERANCE, SignatureError, sign, verify

SECRET = "s3cret"
BODY = '{"event":"publish","story":{"headline":"上海16区融媒体中心"}}'.encode()
T = 1_700_000_000


def test_sign_matches_the_documented_scheme() -> None:
    # Computed independently of syndicate.signing: HMAC-SHA256 over "<t>.<raw body>", hex, in "t=..,v1=..".
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, timestamp=T) == f"t={T},v1={expected}"


def test_round_trip_returns_the_timestamp() -> None:
    header = sign(SECRET, BODY, timestamp=T)
    assert verify(SECRET, BODY, header, now=T + 10) == T


def test_sign_without_timestamp_uses_now() -> None:
    before = int(time.time())
    header = sign(SECRET, BODY)
    t = verify(SECRET, BODY, header)  # default now = time.time()
    assert before <= t <= int(time.time())


def test_wrong_secret() -> None:
    header = sign("another-secret", BODY, timestamp=T)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, BODY, header, now=T)


def test_tampered_body() -> None:
    header = sign(SECRET, BODY, timestamp=T)
    with pytest.raises(SignatureError, match="does not match the body"):
        verify(SECRET, BODY + b" ", header, now=T)
    with pytest.raises(SignatureError, match="does not match the body"):
        verify(SECRET, BODY.replace(b"publish", b"retract"), header, now=T)


def test_tampered_timestamp_breaks_the_signature() -> None:
    # The timestamp is inside the signed text: moving it forward to dodge the window must not verify.
    header = sign(SECRET, BODY, timestamp=T)
    forged = header.replace(f"t={T}", f"t={T + 1000}")
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, BODY, forged, now=T + 1000)


@pytest.mark.parametrize("offset", [DEFAULT_TOLERANCE + 1, -(DEFAULT_TOLERANCE + 1), 86_400, -86_400])
def test_stale_or_future_timestamp(offset: float) -> None:
    header = sign(SECRET, BODY, timestamp=T)
    with pytest.raises(SignatureError, match=r"outside the 300 s tolerance"):
        verify(SECRET, BODY, header, now=T + offset)


@pytest.mark.parametrize("offset", [DEFAULT_TOLERANCE, -DEFAULT_TOLERANCE, 0])
def test_edges_of_the_window_are_accepted(offset: float) -> None:
    header = sign(SECRET, BODY, timestamp=T)
    assert verify(SECRET, BODY, header, now=T + offset) == T


def test_custom_tolerance() -> None:
    header = sign(SECRET, BODY, timestamp=T)
    with pytest.raises(SignatureError, match="outside the 5 s tolerance"):
        verify(SECRET, BODY, header, now=T + 6, tolerance=5)
    assert verify(SECRET, BODY, header, now=T + 5, tolerance=5) == T


def test_window_is_checked_before_the_mac() -> None:
    # A stale, wrong signature is reported as stale (the cheaper, clearer reason).
    with pytest.raises(SignatureError, match="tolerance"):
        verify(SECRET, BODY, f"t={T},v1={'0' * 64}", now=T + 10_000)


@pytest.mark.parametrize("header", [None, ""])
def test_missing_header(header: str | None) -> None:
    with pytest.raises(SignatureError, match="missing X-Syndicate-Signature header"):
        verify(SECRET, BODY, header, now=T)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("garbage", "malformed X-Syndicate-Signature header"),
        (f"t={T};v1=abc", "no valid t="),  # wrong separator: one item, t's value is not an int
        (f"t={T},v1abc", "malformed"),
        (f"t={T},", "malformed"),
        ("v1=abcdef", "no valid t="),
        (f"t=soon,v1={'0' * 64}", "no valid t="),
        (f"t={T}.5,v1={'0' * 64}", "no valid t="),
        (f"t={T}", "no v1=<hex> signature"),
        (f"t={T},v0=abcdef", "no v1=<hex> signature"),
    ],
)
def test_malformed_headers(header: str, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(SECRET, BODY, header, now=T)


@pytest.mark.parametrize("candidate", ["é" * 64, "签名", "\udcff"], ids=["latin1", "cjk", "surrogate"])
def test_non_ascii_signature_is_a_signature_error(candidate: str) -> None:
    # The header is attacker-controlled: a non-ASCII v1 must be refused as a bad signature, not crash with
    # TypeError (hmac.compare_digest refuses non-ASCII str).
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, BODY, f"t={T},v1={candidate}", now=T)


def test_any_of_several_v1_signatures_may_match() -> None:
    # Secret rotation: the sender signs with old and new secret; either one verifies.
    good = sign(SECRET, BODY, timestamp=T).split(",v1=")[1]
    assert verify(SECRET, BODY, f"t={T},v1={'0' * 64},v1={good}", now=T) == T
    assert verify(SECRET, BODY, f" t={T} , v1={good} ", now=T) == T
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, BODY, f"t={T},v1={'0' * 64},v1={'1' * 64}", now=T)


def test_signature_error_is_a_value_error() -> None:
    assert issubclass(SignatureError, ValueError)
