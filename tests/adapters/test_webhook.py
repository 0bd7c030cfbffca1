"""The webhook adapter against the real sandbox (and a raw-bytes capture server), then through the engine."""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.webhook.adapter import WebhookAdapter, WebhookOptions
from syndicate.delivery import Action, AuthRevoked, OutcomeUnknown, Payload, Permanent, RateLimited, Receipt, Retryable
from syndicate.httputil import DEFAULT_RATE_LIMIT_PAUSE, HttpAnswer, retry_after_seconds
from syndicate.sandbox import RunningSandbox
from syndicate.signing import SIGNATURE_HEADER, verify
from syndicate.store.base import State, StoredPayload
from tests.support import closed_port, make_settings, make_story, run_engine, started
from tests.support import ctx_for as support_ctx

ctx_for = functools.partial(support_ctx, channel="x")

SECRET = "s3cret"
#: Short enough that the sandbox's 3 s hold always trips it.
SHORT_TIMEOUT = 0.3

AdapterFactory = Callable[..., WebhookAdapter]


def wire_body(recorded: Any) -> bytes:
    """The bytes the adapter sends for a (sandbox-parsed) body: canonical compact JSON, sorted keys, UTF-8."""
    return json.dumps(recorded, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


@pytest.fixture
async def make_adapter(sandbox: RunningSandbox) -> AsyncIterator[AdapterFactory]:
    started: list[WebhookAdapter] = []

    def factory(
        *,
        url: str | None = None,
        lookup: bool = True,
        timeout: float = 2.0,
        headers: dict[str, str] | None = None,
    ) -> WebhookAdapter:
        target = url or f"{sandbox.url}/webhook/x"
        options = WebhookOptions(
            url=target, secret=SECRET, lookup_url=target if lookup else None, headers=headers or {}
        )
        adapter = WebhookAdapter("x", options, timeout=timeout)
        started.append(adapter)
        return adapter

    yield factory
    for adapter in started:
        await adapter.close()


def publish_payload(adapter: WebhookAdapter, **story: Any) -> Payload:
    return adapter.render(make_story(**story), Action.PUBLISH)


# ------------------------------------------------------------------------------------------ render


def test_render_is_deterministic_and_json_ready() -> None:
    adapter = WebhookAdapter("x", WebhookOptions(url="http://127.0.0.1:9/x", secret=SECRET), timeout=1)
    a = adapter.render(make_story(), Action.PUBLISH)
    b = adapter.render(make_story(), Action.PUBLISH)
    assert a == b
    assert wire_body(a.to_json()["data"]) == wire_body(b.to_json()["data"])
    assert a.data.event == "publish"
    story = a.data.readable_json()["story"]
    assert story["id"] == "story-1" and story["headline"] == make_story().headline
    # The body is made once, at render time: what every send posts, canonical (sorted, compact, UTF-8).
    assert a.data.request_body() == wire_body({"event": "publish", "story": story})
    assert a.data.story is None
    assert adapter.render(make_story(), Action.RETRACT).data.event == "retract"
    assert adapter.render(make_story(headline="Another"), Action.PUBLISH) != a
    # The payload survives the store's JSON round trip unchanged, so every retry sends the same bytes.
    stored = adapter.load_payload(Payload.from_json(json.loads(json.dumps(a.to_json()))))
    assert stored == a


def test_a_payload_stored_before_the_body_was_rendered_still_sends_the_same_bytes() -> None:
    """Deliveries queued by an older version carry the story as a JSON object, not the body: they load and post
    the canonical body they always did, so an upgrade with a backlog neither fails nor changes what is signed."""
    adapter = WebhookAdapter("x", WebhookOptions(url="http://127.0.0.1:9/x", secret=SECRET), timeout=1)
    story = adapter.render(make_story(), Action.UPDATE).data.readable_json()["story"]
    older = StoredPayload(json.dumps({"data": {"event": "update", "story": story}, "text_length": None}))
    loaded = adapter.load_payload(older)
    assert loaded.data.body is None and loaded.data.story == story
    assert loaded.data.request_body() == wire_body({"event": "update", "story": story})
    assert loaded.data.request_body() == adapter.render(make_story(), Action.UPDATE).data.request_body()


@pytest.mark.parametrize("data", [{"event": "publish"}, {"event": "publish", "body": "{}", "story": {}}])
def test_a_stored_payload_with_neither_or_both_forms_is_refused_on_load(data: dict[str, Any]) -> None:
    adapter = WebhookAdapter("x", WebhookOptions(url="http://127.0.0.1:9/x", secret=SECRET), timeout=1)
    with pytest.raises(Permanent, match="either body or story"):
        adapter.load_payload(StoredPayload(json.dumps({"data": data})))


def test_adapter_capabilities() -> None:
    with_lookup = WebhookAdapter(
        "x", WebhookOptions(url="http://127.0.0.1:9/x", secret=SECRET, lookup_url="http://127.0.0.1:9/x"), timeout=1
    )
    without = WebhookAdapter("x", WebhookOptions(url="http://127.0.0.1:9/x", secret=SECRET), timeout=1)
    assert with_lookup.supports_lookup is True and without.supports_lookup is False
    assert WebhookAdapter.idempotent is False  # receivers are not assumed to honour Idempotency-Key
    assert WebhookAdapter.actions == frozenset(Action)


# ------------------------------------------------------------------------------------------ success


async def test_2xx_gives_a_receipt_with_the_remote_id(sandbox: RunningSandbox, make_adapter: AdapterFactory) -> None:
    adapter = await started(make_adapter(headers={"X-Newsroom": "baoshan"}))
    payload = publish_payload(adapter)
    receipt = await adapter.publish(payload, ctx_for())
    assert isinstance(receipt, Receipt)
    assert receipt.remote_id is not None and receipt.remote_id.startswith("wh-")
    assert receipt.raw == {"id": receipt.remote_id}

    [rec] = sandbox.sandbox.received("webhook", "x")
    assert rec.method == "POST" and rec.path == "/webhook/x"
    assert rec.idempotency_key == "story-1:1:x:publish"
    assert rec.header("Idempotency-Key") == "story-1:1:x:publish"
    assert rec.header("Content-Type") == "application/json; charset=utf-8"
    assert rec.header("X-Newsroom") == "baoshan"
    assert rec.body == json.loads(payload.data.request_body())
    # The signature covers exactly the bytes sent, with the shared secret, and is fresh.
    t = verify(SECRET, wire_body(rec.body), rec.header(SIGNATURE_HEADER))
    assert abs(t - time.time()) < 5
    with pytest.raises(ValueError):
        verify("wrong", wire_body(rec.body), rec.header(SIGNATURE_HEADER))


@pytest.mark.parametrize("action", list(Action))
async def test_every_action_posts_with_its_own_idempotency_key(
    sandbox: RunningSandbox, make_adapter: AdapterFactory, action: Action
) -> None:
    adapter = await started(make_adapter())
    payload = adapter.render(make_story(id="s-42", version=3), action)
    ctx = ctx_for(story_id="s-42", version=3, channel="x", action=action)
    receipt = await adapter.send(payload, ctx)
    assert receipt.remote_id
    [rec] = sandbox.sandbox.received("webhook")
    assert rec.idempotency_key == f"s-42:3:x:{action.value}"
    assert rec.body["event"] == action.value


async def test_same_payload_twice_sends_identical_bytes(sandbox: RunningSandbox, make_adapter: AdapterFactory) -> None:
    adapter = await started(make_adapter())
    payload = publish_payload(adapter)
    first = await adapter.publish(payload, ctx_for())
    second = await adapter.publish(payload, ctx_for())
    assert first.remote_id == second.remote_id  # the sandbox honours the key and answers with the original id
    a, b = sandbox.sandbox.received("webhook")
    assert wire_body(a.body) == wire_body(b.body)
    assert a.idempotency_key == b.idempotency_key


async def test_raw_bytes_are_signed_and_deterministic(make_adapter: AdapterFactory) -> None:
    """An independent receiver that keeps the raw request bytes, so nothing depends on re-serialising."""
    seen: list[tuple[bytes, dict[str, str]]] = []

    async def capture(request: web.Request) -> web.Response:
        seen.append((await request.read(), dict(request.headers)))
        return web.json_response({"id": f"raw-{len(seen)}", "url": "https://mirror.example/p/1"})

    app = web.Application()
    app.router.add_post("/hook", capture)
    async with TestServer(app, host="127.0.0.1") as server:
        adapter = await started(make_adapter(url=str(server.make_url("/hook"))))
        payload = publish_payload(adapter)
        receipt = await adapter.publish(payload, ctx_for())
        await adapter.publish(payload, ctx_for())
        # A payload re-read from the store (as a retry would) sends the same bytes too.
        stored = Payload.from_json(json.loads(json.dumps(payload.to_json())))
        await adapter.publish(adapter.load_payload(stored), ctx_for())

    assert receipt == Receipt(
        remote_id="raw-1", url="https://mirror.example/p/1", raw={"id": "raw-1", "url": "https://mirror.example/p/1"}
    )
    assert len(seen) == 3
    bodies = {raw for raw, _ in seen}
    assert len(bodies) == 1
    raw = seen[0][0]
    assert raw == payload.data.request_body()  # the very bytes rendered and stored
    assert make_story().headline.encode() in raw  # UTF-8, not \\u escapes
    for body, headers in seen:
        verify(SECRET, body, headers[SIGNATURE_HEADER])
        assert headers["Idempotency-Key"] == "story-1:1:x:publish"


# ------------------------------------------------------------------------------------------ error mapping


async def test_503_is_retryable(sandbox: RunningSandbox, make_adapter: AdapterFactory) -> None:
    adapter = await started(make_adapter())
    sandbox.sandbox.set_faults("webhook", [{"fault": "status:503"}])
    with pytest.raises(Retryable) as info:
        await adapter.publish(publish_payload(adapter), ctx_for())
    assert info.value.platform_code == "503"
    assert info.value.reason.startswith("HTTP 503 from the receiver: ")
    assert info.value.retry_after is None
    assert sandbox.sandbox.received("webhook") == []


async def test_429_rate_limits_until_retry_after(sandbox: RunningSandbox, make_adapter: AdapterFactory) -> None:
    adapter = await started(make_adapter())
    sandbox.sandbox.set_faults("webhook", [{"fault": "rate_limit:7"}])
    before = time.time()
    with pytest.raises(RateLimited) as info:
        await adapter.publish(publish_payload(adapter), ctx_for())
    after = time.time()
    err = info.value
    assert err.platform_code == "429"
    assert err.until.tzinfo is not None
    assert before + 7 - 0.01 <= err.until.timestamp() <= after + 7 + 0.01


async def test_400_is_permanent(sandbox: RunningSandbox, make_adapter: AdapterFactory) -> None:
    adapter = await started(make_adapter())
    sandbox.sandbox.set_faults("webhook", [{"fault": "status:400"}])
    with pytest.raises(Permanent) as info:
        await adapter.publish(publish_payload(adapter), ctx_for())
    assert info.value.platform_code == "400" and "HTTP 400" in info.value.reason


@pytest.mark.parametrize("status", [401, 403])
async def test_401_and_403_revoke_auth(sandbox: RunningSandbox, make_adapter: AdapterFactory, status: int) -> None:
    adapter = await started(make_adapter())
    sandbox.sandbox.set_faults("webhook", [{"fault": f"status:{status}"}])
    with pytest.raises(AuthRevoked) as info:
        await adapter.publish(publish_payload(adapter), ctx_for())
    assert info.value.platform_code == str(status) and "credentials" in info.value.reason


async def test_connection_refused_is_retryable(make_adapter: AdapterFactory) -> None:
    adapter = await started(make_adapter(url=f"http://127.0.0.1:{closed_port()}/webhook/x"))
    with pytest.raises(Retryable) as info:
        await adapter.publish(publish_payload(adapter), ctx_for())
    assert "could not connect" in info.value.reason


async def test_not_started_is_a_clear_error(make_adapter: AdapterFactory) -> None:
    adapter = make_adapter()
    with pytest.raises(RuntimeError, match="not started"):
        await adapter.publish(publish_payload(adapter), ctx_for())


# ------------------------------------------------------------------------------------------ unknown outcomes


async def test_timeout_after_is_unknown_and_lookup_finds_it(
    sandbox: RunningSandbox, make_adapter: AdapterFactory
) -> None:
    adapter = await started(make_adapter(timeout=SHORT_TIMEOUT))
    sandbox.sandbox.set_faults("webhook", [{"fault": "timeout_after", "methods": ["POST"]}])
    payload = publish_payload(adapter)
    started_at = time.monotonic()
    with pytest.raises(OutcomeUnknown):
        await adapter.publish(payload, ctx_for())
    assert time.monotonic() - started_at < 2  # the adapter's timeout, not the sandbox's 3 s hold
    assert len(sandbox.sandbox.received("webhook")) == 1  # it was processed

    receipt = await adapter.lookup(payload, ctx_for())
    assert receipt is not None and receipt.remote_id is not None and receipt.remote_id.startswith("wh-")
    assert receipt.raw["idempotency_key"] == "story-1:1:x:publish"
    # Another key (or another channel's keyspace) is not found.
    assert await adapter.lookup(payload, ctx_for(action=Action.UPDATE)) is None


async def test_timeout_before_is_unknown_and_lookup_finds_nothing(
    sandbox: RunningSandbox, make_adapter: AdapterFactory
) -> None:
    adapter = await started(make_adapter(timeout=SHORT_TIMEOUT))
    sandbox.sandbox.set_faults("webhook", [{"fault": "timeout_before", "methods": ["POST"]}])
    payload = publish_payload(adapter)
    with pytest.raises(OutcomeUnknown):
        await adapter.publish(payload, ctx_for())
    assert sandbox.sandbox.received("webhook") == []
    assert await adapter.lookup(payload, ctx_for()) is None


async def test_reset_is_unknown_and_lookup_finds_nothing(sandbox: RunningSandbox, make_adapter: AdapterFactory) -> None:
    """A reset after the request went out is OutcomeUnknown (not Retryable): the adapter cannot know that the
    receiver dropped it before processing, so it must reconcile rather than resend blindly."""
    adapter = await started(make_adapter())
    sandbox.sandbox.set_faults("webhook", [{"fault": "reset", "methods": ["POST"]}])
    payload = publish_payload(adapter)
    with pytest.raises(OutcomeUnknown) as info:
        await adapter.publish(payload, ctx_for())
    assert "no answer after sending" in info.value.reason
    assert sandbox.sandbox.received("webhook") == []
    assert await adapter.lookup(payload, ctx_for()) is None


async def test_lookup_on_503_is_retryable(sandbox: RunningSandbox, make_adapter: AdapterFactory) -> None:
    adapter = await started(make_adapter())
    sandbox.sandbox.set_faults("webhook", [{"fault": "status:503", "methods": ["GET"]}])
    with pytest.raises(Retryable, match="lookup answered HTTP 503"):
        await adapter.lookup(publish_payload(adapter), ctx_for())


async def test_lookup_that_times_out_is_retryable(sandbox: RunningSandbox, make_adapter: AdapterFactory) -> None:
    adapter = await started(make_adapter(timeout=SHORT_TIMEOUT))
    sandbox.sandbox.set_faults("webhook", [{"fault": "timeout_before", "methods": ["GET"]}])
    with pytest.raises(Retryable, match="lookup failed"):
        await adapter.lookup(publish_payload(adapter), ctx_for())


async def test_lookup_rate_limited(sandbox: RunningSandbox, make_adapter: AdapterFactory) -> None:
    adapter = await started(make_adapter())
    sandbox.sandbox.set_faults("webhook", [{"fault": "rate_limit:3", "methods": ["GET"]}])
    with pytest.raises(RateLimited):
        await adapter.lookup(publish_payload(adapter), ctx_for())


# ------------------------------------------------------------------------------------------ Retry-After


NOW = 1_445_412_480.0  # 2015-10-21 07:28:00 UTC


@pytest.fixture
def non_utc_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with a local zone 8 h east of UTC, so any date read as local time is visibly off."""
    monkeypatch.setenv("TZ", "CST-8")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("7", 7.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),  # IMF-fixdate
        ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),  # obsolete RFC 850 form
        ("Wed Oct 21 07:30:00 2015", 120.0),  # obsolete asctime form: no zone, but GMT by definition
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # in the past: at once
        ("99999999999", 86400.0),  # absurd waits are capped at a day (found by fuzzing: a pause past year 9999)
        ("²", None),  # str.isdigit() says yes; float() would raise
        ("Fri, 31 Dec 9999 23:59:59 GMT", 86400.0),
    ],
)
def test_retry_after_seconds(non_utc_local_time: None, value: str | None, expected: float | None) -> None:
    assert retry_after_seconds(value, now=NOW) == expected


def test_fixdate_matches_email_utils() -> None:
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    header = email.utils.format_datetime(when, usegmt=True)
    assert retry_after_seconds(header, now=when.timestamp() - 90) == 90.0


def test_503_with_retry_after_carries_it() -> None:
    adapter = WebhookAdapter("x", WebhookOptions(url="http://127.0.0.1:9/x", secret=SECRET), timeout=1)
    with pytest.raises(Retryable) as info:
        adapter._receipt(HttpAnswer(503, {"Retry-After": "42"}, b'{"error": "busy"}'))
    assert info.value.retry_after == 42.0 and info.value.reason.endswith(": busy")


def test_429_without_retry_after_pauses_for_the_default() -> None:
    adapter = WebhookAdapter("x", WebhookOptions(url="http://127.0.0.1:9/x", secret=SECRET), timeout=1)
    before = time.time()
    with pytest.raises(RateLimited) as info:
        adapter._receipt(HttpAnswer(429, {}, b"slow down"))
    assert (
        before + DEFAULT_RATE_LIMIT_PAUSE - 1
        <= info.value.until.timestamp()
        <= time.time() + DEFAULT_RATE_LIMIT_PAUSE + 1
    )
    assert info.value.reason.endswith(": slow down")


# ------------------------------------------------------------------------------------------ through the engine


def webhook_channel(sandbox: RunningSandbox, *, lookup: bool) -> dict[str, Any]:
    url = f"{sandbox.url}/webhook/mirror"
    channel: dict[str, Any] = {
        "kind": "webhook",
        "url": url,
        "secret": SECRET,
        "retry": [0, 0.05, 0.05, 0.05],
        "timeout": SHORT_TIMEOUT,
    }
    if lookup:
        channel["lookup_url"] = url
    return channel


def recorded_keys(sandbox: RunningSandbox) -> list[str | None]:
    return sorted(r.idempotency_key for r in sandbox.sandbox.received("webhook", "mirror"))


async def test_engine_reconciles_every_timeout_after_without_resending(tmp_path: Path, sandbox: RunningSandbox) -> None:
    # Every POST is processed but its answer withheld; lookups answer normally.
    sandbox.sandbox.set_faults("webhook", [{"fault": "timeout_after", "methods": ["POST"]}])
    stories = [make_story(id=f"story-{i}") for i in range(6)]
    deliveries, outcomes = await run_engine(
        make_settings(tmp_path, {"mirror": webhook_channel(sandbox, lookup=True)}), stories
    )
    assert len(deliveries) == 6
    assert {d.state for d in deliveries} == {State.DELIVERED}
    # First attempt timed out (one step of the schedule), the second asked the receiver instead of resending.
    assert all(outcomes[d.id] == ["retry", "reconciled"] for d in deliveries), outcomes
    assert all(d.receipt is not None and d.receipt.remote_id for d in deliveries)
    assert recorded_keys(sandbox) == sorted(f"story-{i}:1:mirror:publish" for i in range(6))
    assert sandbox.sandbox.stats("webhook")["mirror"].faults == {"timeout_after": 6}


async def test_engine_with_random_timeouts_delivers_each_key_once(tmp_path: Path, sandbox: RunningSandbox) -> None:
    sandbox.sandbox.set_faults("webhook", [{"fault": "timeout_after", "probability": 0.5, "methods": ["POST"]}])
    stories = [make_story(id=f"story-{i}") for i in range(12)]
    deliveries, outcomes = await run_engine(
        make_settings(tmp_path, {"mirror": webhook_channel(sandbox, lookup=True)}), stories
    )
    assert len(deliveries) == 12
    assert {d.state for d in deliveries} == {State.DELIVERED}
    assert {tuple(o) for o in outcomes.values()} <= {("delivered",), ("retry", "reconciled")}
    keys = recorded_keys(sandbox)
    assert keys == sorted(f"story-{i}:1:mirror:publish" for i in range(12))  # each exactly once
    fired = sandbox.sandbox.stats("webhook")["mirror"].faults.get("timeout_after", 0)
    assert 0 < fired < 12  # both paths ran: straight delivery and reconciliation


async def test_engine_without_lookup_parks_timeout_after_as_unknown(tmp_path: Path, sandbox: RunningSandbox) -> None:
    sandbox.sandbox.set_faults("webhook", [{"fault": "timeout_after", "methods": ["POST"]}])
    [delivery], outcomes = await run_engine(
        make_settings(tmp_path, {"mirror": webhook_channel(sandbox, lookup=False)}), [make_story()]
    )
    assert outcomes[delivery.id] == ["unknown"]
    assert delivery.state is State.UNKNOWN
    assert delivery.note is not None and "may have landed" in delivery.note
    assert delivery.last_error_class == "OutcomeUnknown"
    assert delivery.attempts == 1
    assert recorded_keys(sandbox) == ["story-1:1:mirror:publish"]  # no blind resend


async def test_a_redirect_is_never_followed_and_says_what_to_fix(tmp_path: Path) -> None:
    """aiohttp would follow a 301 on POST with a body-less GET; a 200 there must not read as delivered."""
    seen: list[tuple[str, str]] = []

    async def moved(request: web.Request) -> web.Response:
        seen.append((request.method, request.path))
        raise web.HTTPMovedPermanently("/new-home")

    async def new_home(request: web.Request) -> web.Response:
        seen.append((request.method, request.path))
        return web.json_response({"id": "page"})

    app = web.Application()
    app.router.add_post("/hook", moved)
    app.router.add_route("*", "/new-home", new_home)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    adapter = WebhookAdapter("r", WebhookOptions(url=f"http://127.0.0.1:{port}/hook", secret="s3cret"), timeout=5)
    await adapter.start()
    try:
        with pytest.raises(Permanent) as info:
            await adapter.publish(adapter.render(make_story(), Action.PUBLISH), ctx_for(channel="r"))
    finally:
        await adapter.close()
        await runner.cleanup()
    assert "/new-home" in info.value.reason and "url" in info.value.reason
    assert info.value.platform_code == "301"
    assert seen == [("POST", "/hook")]
