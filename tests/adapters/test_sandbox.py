"""The sandbox against a real server on a free port, driven by a real aiohttp client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from syndicate.sandbox import (
    Call,
    FaultRule,
    FaultRuleError,
    RunningSandbox,
    Sandbox,
    Standin,
    read_form,
    running_sandbox,
    standins,
)

HOLD = 0.5


@pytest.fixture
async def sb() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(port=0, seed=1234, hold_seconds=HOLD) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def post(
    http: aiohttp.ClientSession, url: str, body: Any = None, key: str | None = None, **kw: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    headers = {"Idempotency-Key": key} if key else {}
    async with http.post(url, json={} if body is None else body, headers=headers, **kw) as resp:
        return resp.status, await resp.json(), resp


async def set_faults(http: aiohttp.ClientSession, sb: RunningSandbox, *rules: dict[str, Any]) -> None:
    async with http.post(sb.url_for("/_sandbox/faults"), json={"platform": "webhook", "rules": list(rules)}) as r:
        assert r.status == 200, await r.text()


# ------------------------------------------------------------------------------------------ basics


async def test_health_and_real_port(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    assert sb.url.startswith("http://127.0.0.1:") and not sb.url.endswith(":0")
    async with http.get(sb.url_for("/_sandbox/health")) as resp:
        assert resp.status == 200
        assert await resp.json() == {"ok": True}


async def test_webhook_post_and_lookup(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    status, body, _ = await post(http, sb.url_for("/webhook/news"), {"headline": "Hi"}, key="k-1")
    assert status == 200 and body["id"].startswith("wh-")

    async with http.get(sb.url_for("/webhook/news"), params={"key": "k-1"}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"id": body["id"], "idempotency_key": "k-1"}
    async with http.get(sb.url_for("/webhook/news"), params={"key": "nope"}) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"
    async with http.get(sb.url_for("/webhook/other"), params={"key": "k-1"}) as resp:
        assert resp.status == 404  # each webhook name is its own keyspace
    async with http.get(sb.url_for("/webhook/news")) as resp:
        assert resp.status == 400

    # Lookups change nothing: not recorded, but counted.
    assert len(sb.sandbox.received("webhook")) == 1
    assert sb.sandbox.stats("webhook")["news"].requests == 4


async def test_webhook_without_key_gets_fresh_ids(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    ids = {(await post(http, sb.url_for("/webhook/news"), {"n": i}))[1]["id"] for i in range(3)}
    assert len(ids) == 3
    assert [r.idempotency_key for r in sb.sandbox.received()] == [None, None, None]


async def test_duplicate_idempotency_key_same_id_recorded_twice(
    sb: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _, first, _ = await post(http, sb.url_for("/webhook/news"), {"v": 1}, key="dup")
    status, second, resp = await post(http, sb.url_for("/webhook/news"), {"v": 2}, key="dup")
    assert status == 200 and second == first
    assert resp.headers["Idempotent-Replayed"] == "true"

    records = sb.sandbox.received("webhook")
    assert [r.body for r in records] == [{"v": 1}, {"v": 2}]
    assert [r.idempotency_key for r in records] == ["dup", "dup"]


async def test_non_json_body_is_400_and_not_recorded(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    async with http.post(sb.url_for("/webhook/news"), data=b"not json{") as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"
        assert (await resp.json())["error"] == "invalid_json"
    assert sb.sandbox.received() == []


async def test_received_over_http_and_clear(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    await post(http, sb.url_for("/webhook/a"), {"x": [1, 2]}, key="k")
    await post(http, sb.url_for("/webhook/b"), {"y": None})

    async with http.get(sb.url_for("/_sandbox/received"), params={"platform": "webhook"}) as resp:
        records = await resp.json()
    assert [r["path"] for r in records] == ["/webhook/a", "/webhook/b"]
    first = records[0]
    assert {"platform", "method", "path", "headers", "body", "idempotency_key", "at"} <= set(first)
    assert first["platform"] == "webhook" and first["method"] == "POST"
    assert first["body"] == {"x": [1, 2]} and first["idempotency_key"] == "k"
    assert first["headers"]["Idempotency-Key"] == "k"
    assert abs(first["at"] - time.time()) < 5
    async with http.get(sb.url_for("/_sandbox/received"), params={"platform": "media"}) as resp:
        assert await resp.json() == []

    async with http.delete(sb.url_for("/_sandbox/received")) as resp:
        assert resp.status == 200
    async with http.get(sb.url_for("/_sandbox/received")) as resp:
        assert await resp.json() == []
    async with http.get(sb.url_for("/_sandbox/stats"), params={"platform": "webhook"}) as resp:
        assert await resp.json() == {}

    # Clearing keeps remote state: the receipt still answers lookups.
    async with http.get(sb.url_for("/webhook/a"), params={"key": "k"}) as resp:
        assert resp.status == 200


async def test_python_clear_one_platform(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    await post(http, sb.url_for("/webhook/a"))
    async with http.get(sb.url_for("/media/story-blue-640x360.png")) as resp:
        assert resp.status == 200
    assert sb.sandbox.clear("webhook") == 1
    assert sb.sandbox.stats("webhook") == {}
    assert sb.sandbox.stats("media")["story-blue-640x360.png"].requests == 1


# ------------------------------------------------------------------------------------------ faults


async def test_status_fault(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    await set_faults(http, sb, {"fault": "status:503", "probability": 1})
    status, body, _ = await post(http, sb.url_for("/webhook/news"))
    assert status == 503 and body["error"] == "injected_fault"
    assert sb.sandbox.received() == []

    async with http.get(sb.url_for("/_sandbox/stats"), params={"platform": "webhook"}) as resp:
        stats = await resp.json()
    assert stats == {
        "news": {
            "requests": 1,
            "processed": 0,
            "faults": {"status:503": 1},
            "peak_concurrency": 1,
            "in_flight": 0,
        }
    }


async def test_rate_limit_fault(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    await set_faults(http, sb, {"fault": "rate_limit:7", "probability": 1.0})
    status, body, resp = await post(http, sb.url_for("/webhook/news"))
    assert status == 429 and resp.headers["Retry-After"] == "7"
    assert body["error"] == "rate_limited"
    assert sb.sandbox.received() == []


async def test_timeout_before_is_never_processed(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    await set_faults(http, sb, {"fault": "timeout_before", "probability": 1})
    with pytest.raises(TimeoutError):
        await post(http, sb.url_for("/webhook/news"), key="t1", timeout=aiohttp.ClientTimeout(total=0.2))
    assert sb.sandbox.stats("webhook")["news"].in_flight == 1  # still held server-side

    started = time.monotonic()
    status, body, _ = await post(http, sb.url_for("/webhook/news"), key="t2")
    assert status == 504 and body["error"] == "timeout"
    assert time.monotonic() - started >= HOLD * 0.9
    assert sb.sandbox.received() == []
    async with http.get(sb.url_for("/_sandbox/faults")) as resp:
        assert (await resp.json())["webhook"][0]["fault"] == "timeout_before"


async def test_timeout_after_is_processed_but_unanswered(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    await set_faults(http, sb, {"fault": "timeout_after", "methods": ["POST"]})
    with pytest.raises(TimeoutError):
        await post(http, sb.url_for("/webhook/news"), {"a": 1}, key="ta", timeout=aiohttp.ClientTimeout(total=0.2))

    # The dangerous case: the client saw a timeout, yet the delivery landed.
    assert [r.body for r in sb.sandbox.received("webhook")] == [{"a": 1}]
    async with http.get(sb.url_for("/webhook/news"), params={"key": "ta"}) as resp:
        assert resp.status == 200  # GET is not faulted (methods=["POST"])
        landed = (await resp.json())["id"]

    started = time.monotonic()
    status, body, _ = await post(http, sb.url_for("/webhook/news"), {"a": 1}, key="ta")
    assert status == 200 and body["id"] == landed
    assert time.monotonic() - started >= HOLD * 0.9


async def test_status_after_processes_the_request_then_answers_the_error(
    sb: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    """The dangerous 5xx: the platform did the work and a gateway answered an error; a blind resend duplicates."""
    await set_faults(http, sb, {"fault": "status_after:502", "methods": ["POST"]})
    status, body, _ = await post(http, sb.url_for("/webhook/news"), {"a": 1}, key="sa")
    assert status == 502 and body["error"] == "injected_fault"
    assert [r.body for r in sb.sandbox.received("webhook")] == [{"a": 1}]  # it landed all the same
    async with http.get(sb.url_for("/webhook/news"), params={"key": "sa"}) as resp:
        assert resp.status == 200
    assert sb.sandbox.stats("webhook")["news"].faults == {"status_after:502": 1}
    with pytest.raises(FaultRuleError, match=r"status must be 200\.\.599"):
        FaultRule("status_after:99")


async def test_reset_fault(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    await set_faults(http, sb, {"fault": "reset"})
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(http, sb.url_for("/webhook/news"))
    assert sb.sandbox.received() == []
    await set_faults(http, sb)  # no rules: the server still works after the reset
    status, _, _ = await post(http, sb.url_for("/webhook/news"))
    assert status == 200
    assert sb.sandbox.stats("webhook")["news"].faults == {"reset": 1}


async def test_slow_fault_and_peak_concurrency(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    await set_faults(http, sb, {"fault": "slow:200"})
    started = time.monotonic()
    results = await asyncio.gather(*(post(http, sb.url_for("/webhook/news"), {"i": i}) for i in range(5)))
    elapsed = time.monotonic() - started
    assert [status for status, _, _ in results] == [200] * 5
    assert 0.19 <= elapsed < 1.0  # concurrent, not serialised
    assert len(sb.sandbox.received()) == 5

    async with http.get(sb.url_for("/_sandbox/stats"), params={"platform": "webhook"}) as resp:
        news = (await resp.json())["news"]
    assert news == {
        "requests": 5,
        "processed": 5,
        "faults": {"slow:200": 5},
        "peak_concurrency": 5,
        "in_flight": 0,
    }


async def test_probability_zero_never_one_always(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    await set_faults(http, sb, {"fault": "status:500", "probability": 0})
    assert {(await post(http, sb.url_for("/webhook/z")))[0] for _ in range(20)} == {200}
    await set_faults(http, sb, {"fault": "status:500", "probability": 1})
    assert {(await post(http, sb.url_for("/webhook/o")))[0] for _ in range(20)} == {500}
    stats = sb.sandbox.stats("webhook")
    assert stats["z"].faults == {} and stats["o"].faults == {"status:500": 20}


async def test_rules_tried_in_order_with_filters(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    await set_faults(
        http,
        sb,
        {"fault": "status:502", "name": "flaky"},
        {"fault": "status:418", "methods": ["get"]},
        {"fault": "status:503", "probability": 0},
    )
    assert (await post(http, sb.url_for("/webhook/flaky")))[0] == 502
    assert (await post(http, sb.url_for("/webhook/solid")))[0] == 200
    async with http.get(sb.url_for("/webhook/solid"), params={"key": "x"}) as resp:
        assert resp.status == 418


async def test_seeded_probability_is_reproducible() -> None:
    async def pattern() -> list[int]:
        async with (
            running_sandbox(seed=7, hold_seconds=HOLD) as running,
            aiohttp.ClientSession() as http,
        ):
            running.sandbox.set_faults("webhook", [FaultRule("status:503", probability=0.5)])
            return [(await post(http, running.url_for("/webhook/r")))[0] for _ in range(16)]

    first = await pattern()
    assert first == await pattern()
    assert set(first) == {200, 503}


async def test_invalid_rules_name_the_field(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    cases = [
        ({"platform": "webhook", "rules": [{"fault": "boom"}]}, "rules[0].fault"),
        ({"platform": "webhook", "rules": [{"fault": "status:abc"}]}, "rules[0].fault"),
        ({"platform": "webhook", "rules": [{"fault": "reset:1"}]}, "rules[0].fault"),
        (
            {"platform": "webhook", "rules": [{"fault": "reset"}, {"fault": "slow:1", "probability": 2}]},
            "rules[1].probability",
        ),
        ({"platform": "webhook", "rules": [{"fault": "reset", "methods": "POST"}]}, "rules[0].methods"),
        ({"platform": "webhook", "rules": [{"fault": "reset", "nmae": "x"}]}, "rules[0].nmae"),
        ({"platform": "webhook", "rules": [{"probability": 1}]}, "rules[0].fault"),
        ({"platform": "webhook", "rules": ["reset"]}, "rules[0]"),
        ({"platform": "webhook", "rules": {"fault": "reset"}}, "rules"),
        ({"platform": "nowhere", "rules": []}, "platform"),
    ]
    for payload, field in cases:
        async with http.post(sb.url_for("/_sandbox/faults"), json=payload) as resp:
            assert resp.status == 400, payload
            body = await resp.json()
            assert body["field"] == field, (payload, body)
            assert field in body["message"]
    assert sb.sandbox.faults() == {}  # a rejected request leaves the old rules alone

    with pytest.raises(FaultRuleError) as excinfo:
        sb.sandbox.set_faults("webhook", [{"fault": "slow:-5"}])
    assert excinfo.value.field == "rules[0].fault"


async def test_faults_get_and_delete(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    await set_faults(http, sb, {"fault": "slow:5", "probability": 0.25, "methods": ["post"], "name": "a"})
    async with http.get(sb.url_for("/_sandbox/faults"), params={"platform": "webhook"}) as resp:
        assert await resp.json() == {
            "webhook": [{"fault": "slow:5", "probability": 0.25, "methods": ["POST"], "name": "a"}]
        }
    async with http.delete(sb.url_for("/_sandbox/faults")) as resp:
        assert resp.status == 200
    async with http.get(sb.url_for("/_sandbox/faults")) as resp:
        assert await resp.json() == {}


async def test_shutdown_does_not_wait_for_holds(http: aiohttp.ClientSession) -> None:
    sandbox = Sandbox(hold_seconds=30)
    sandbox.set_faults("webhook", [{"fault": "timeout_before"}])  # rules can be preset before the app exists
    started = time.monotonic()
    async with running_sandbox(sandbox=sandbox) as running:
        pending = asyncio.create_task(post(http, running.url_for("/webhook/held")))
        await asyncio.sleep(0.2)
        assert sandbox.stats("webhook")["held"].in_flight == 1
    status, _, _ = await pending  # released with the 504, not after 30 s
    assert status == 504
    assert time.monotonic() - started < 3


# ------------------------------------------------------------------------------------------ media


async def test_media_listed_and_served(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    async with http.get(sb.url_for("/media/")) as resp:
        assert resp.status == 200
        listing = await resp.json()
    pngs = [m for m in listing if m["content_type"] == "image/png"]
    assert len(pngs) >= 3
    assert {(m["width"], m["height"]) for m in pngs} >= {(640, 360), (1200, 675)}

    signatures = {"image/png": b"\x89PNG\r\n\x1a\n", "image/gif": b"GIF89a"}
    for item in listing:
        async with http.get(item["url"]) as resp:
            assert resp.status == 200
            assert resp.content_type == item["content_type"]
            assert resp.content_type.startswith("image/")
            data = await resp.read()
        assert len(data) == item["size"]
        assert data.startswith(signatures[item["content_type"]])

    async with http.get(sb.url_for("/media/missing.png")) as resp:
        assert resp.status == 404
    async with http.get(sb.url_for("/media/..%2Fcore.py")) as resp:
        assert resp.status == 404


# ------------------------------------------------------------------------------------------ framework


async def test_new_platform_reuses_the_shared_wrapper(
    monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession
) -> None:
    """A later platform module only writes a handler; faults, stats and recording come from the wrapper."""

    async def accept_form(request: web.Request, call: Call) -> web.Response:
        call.record(await read_form(request))
        return web.json_response({"ok": True, "id": call.next_id("pt")})

    def setup(app: web.Application, sandbox: Sandbox) -> None:
        app.router.add_post("/partner/inbox", sandbox.handler("partner", receiver="inbox")(accept_form))

    async with running_sandbox(
        hold_seconds=HOLD, platforms={**standins(), "inbox": Standin("partner", setup)}
    ) as running:
        form = aiohttp.FormData()
        form.add_field("title", "Hello")
        form.add_field("tag", "a")
        form.add_field("tag", "b")
        form.add_field("image", b"\x89PNG....", filename="x.png", content_type="image/png")
        async with http.post(running.url_for("/partner/inbox"), data=form) as resp:
            assert resp.status == 200 and (await resp.json())["id"] == "pt-1"
        [record] = running.sandbox.received("partner")
        assert record.receiver == "inbox"
        assert record.body == {
            "title": "Hello",
            "tag": ["a", "b"],
            "image": {"filename": "x.png", "content_type": "image/png", "size": 8},
        }

        running.sandbox.set_faults("partner", [{"fault": "status:500", "name": "inbox"}])
        async with http.post(running.url_for("/partner/inbox"), data={"title": "x"}) as resp:
            assert resp.status == 500
        assert running.sandbox.stats("partner")["inbox"].faults == {"status:500": 1}
        assert running.sandbox.stats("webhook") == {}
