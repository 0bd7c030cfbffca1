"""End-to-end tests of the HTTP service: the real server on a free port, the sandbox as every platform."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from syndicate.config import Settings, parse_config
from syndicate.sandbox import RunningSandbox
from syndicate.server import serve
from syndicate.signing import SIGNATURE_HEADER, sign

HOOK_SECRET = "hook-secret-0123456789abcdef"
API_TOKEN = "api-token-0123456789abcdef"
STORY = {
    "id": "srv-1",
    "version": 1,
    "headline": "上海16区融媒体中心全部建成并挂牌",
    "body_html": "<p>宝山、闵行两个区级融媒体中心正式挂牌。</p>",
    "url": "https://news.example.cn/srv-1.html",
}


def server_settings(tmp_path: Path, sandbox_url: str, **server: Any) -> Settings:
    def hook(name: str) -> dict[str, Any]:
        return {
            "kind": "webhook",
            "url": f"{sandbox_url}/webhook/{name}",
            "lookup_url": f"{sandbox_url}/webhook/{name}",
            "secret": "webhook-secret-value",
            "timeout": 2,
            "retry": [0, 0.05, 0.1],
        }

    raw = {
        "store": {"url": f"sqlite:///{tmp_path / 'server.db'}"},
        "engine": {"lease_seconds": 5, "poll_interval": 0.05, "retry_jitter": 0},
        "server": {"hook_secret": HOOK_SECRET, "api_token": API_TOKEN, "max_body_bytes": 64 * 1024, **server},
        "channels": {"web": hook("web"), "app": hook("app")},
    }
    return parse_config(raw, source="server-test.toml", env={})


@dataclass
class Server:
    url: str
    session: aiohttp.ClientSession

    async def hook(
        self,
        body: bytes | dict[str, Any],
        *,
        secret: str = HOOK_SECRET,
        timestamp: int | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        method: str = "POST",
        path: str = "/v1/stories",
    ) -> tuple[int, dict[str, Any]]:
        raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        sent = {"Content-Type": content_type, SIGNATURE_HEADER: sign(secret, raw, timestamp=timestamp)}
        sent.update(headers or {})
        async with self.session.request(method, self.url + path, data=raw, headers=sent) as resp:
            return resp.status, await resp.json()

    async def api(
        self, method: str, path: str, *, token: str | None = API_TOKEN, **kw: Any
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, self.url + path, headers=headers, **kw) as resp:
            return resp.status, await resp.json()

    async def wait_states(self, story_id: str, *states: str, within: float = 20) -> dict[str, Any]:
        end = time.monotonic() + within
        while True:
            status, body = await self.api("GET", f"/v1/stories/{story_id}")
            assert status == 200, body
            latest = [ds[-1]["state"] for ds in body["channels"].values()]
            if latest and all(s in states for s in latest):
                return body
            if time.monotonic() > end:
                raise AssertionError(f"states never became {states}: {latest}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def server(tmp_path: Path, sandbox: RunningSandbox) -> AsyncIterator[Server]:
    settings = server_settings(tmp_path, sandbox.url)
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, host="127.0.0.1", port=0, stop=stop, on_ready=ready.set_result))
    url = await asyncio.wait_for(ready, timeout=10)
    async with aiohttp.ClientSession() as session:
        yield Server(url, session)
    stop.set()
    await asyncio.wait_for(task, timeout=20)


def keys(sandbox: RunningSandbox) -> list[str]:
    return sorted(r.idempotency_key for r in sandbox.sandbox.received("webhook") if r.method == "POST")


async def test_signed_publish_reaches_every_channel(server: Server, sandbox: RunningSandbox) -> None:
    status, body = await server.hook(STORY)
    assert status == 202, body
    assert body["story_id"] == "srv-1" and body["version"] == 1 and body["new"] is True
    assert sorted((d["channel"], d["action"], d["state"]) for d in body["deliveries"]) == [
        ("app", "publish", "queued"),
        ("web", "publish", "queued"),
    ]
    done = await server.wait_states("srv-1", "delivered")
    assert set(done["channels"]) == {"app", "web"}
    web = done["channels"]["web"][0]
    assert web["receipt"]["remote_id"].startswith("wh-") and web["attempt_history"][0]["outcome"] == "delivered"
    assert keys(sandbox) == ["srv-1:1:app:publish", "srv-1:1:web:publish"]


async def test_same_body_twice_is_one_set_of_deliveries(server: Server, sandbox: RunningSandbox) -> None:
    now = int(time.time())
    first_status, first = await server.hook(STORY, timestamp=now)
    again_status, again = await server.hook(STORY, timestamp=now - 1)  # a fresh signature, the same story
    assert (first_status, again_status) == (202, 200)
    assert again["new"] is False
    assert [d["id"] for d in again["deliveries"]] == [d["id"] for d in first["deliveries"]]
    await server.wait_states("srv-1", "delivered")
    assert len(keys(sandbox)) == 2


async def test_signatures_forged_stale_replayed_or_missing_are_refused(server: Server) -> None:
    assert (await server.hook(STORY, secret="not-the-secret-at-all"))[0] == 401
    status, body = await server.hook(STORY, timestamp=int(time.time()) - 301)
    assert (status, body["error"]) == (401, "bad_signature") and "tolerance" in body["message"]
    assert (await server.hook(STORY, timestamp=int(time.time()) + 301))[0] == 401

    raw = json.dumps(STORY).encode()
    header = sign(HOOK_SECRET, raw)
    fixed = {SIGNATURE_HEADER: header}
    assert (await server.hook(raw, headers=fixed))[0] == 202
    status, body = await server.hook(raw, headers=fixed)
    assert (status, body["error"]) == (401, "replayed_signature")

    async with server.session.post(server.url + "/v1/stories", data=raw) as resp:
        assert resp.status == 401 and "missing" in (await resp.json())["message"]
    # The refused attempts created nothing beyond the one accepted request.
    _, listing = await server.api("GET", "/v1/deliveries")
    assert len(listing["deliveries"]) == 2


async def test_bad_input_classes_get_their_status_and_a_named_problem(server: Server) -> None:
    status, body = await server.hook(b'{"id": "x", "headline": ')
    assert (status, body["error"]) == (400, "malformed_json") and "line 1" in body["message"]
    status, body = await server.hook(b"\xff\xfe not utf-8")
    assert status == 400
    status, body = await server.hook({**STORY, "body_html": "x" * 70_000})
    assert (status, body["error"]) == (413, "body_too_large")
    status, body = await server.hook(STORY, content_type="text/plain")
    assert (status, body["error"]) == (415, "unsupported_media_type")
    status, body = await server.hook({"id": "bad", "images": [{"href": "ftp://x/y.png"}], "pubstatus": "maybe"})
    assert status == 422
    paths = {e["path"] for e in body["errors"]}
    assert {"headline", "images[0].href", "pubstatus"} <= paths
    status, body = await server.hook({**STORY, "targets": ["web", "nowhere"]})
    assert status == 422 and body["errors"][0]["path"] == "targets[1]"
    status, body = await server.hook(b"[" * 100_00 + b"]" * 100_00)
    assert status == 400

    assert (await server.hook({**STORY, "version": 2}))[0] == 202
    status, body = await server.hook(STORY)
    assert (status, body["error"]) == (409, "version_conflict") and "older" in body["message"]
    status, body = await server.hook({**STORY, "version": 2, "headline": "另一个版本"})
    assert status == 409 and "different content" in body["message"]


async def test_ninjs_is_accepted(server: Server) -> None:
    ninjs = {
        "uri": "urn:syndicate:story:ninjs-1",
        "version": "1",
        "headlines": [{"role": "main", "value": "宝山汇APP已正式上线"}],
        "bodies": [{"role": "main", "contenttype": "text/html", "value": "<p>正文</p>"}],
    }
    status, body = await server.hook(ninjs, content_type="application/ninjs+json")
    assert status == 202 and body["story_id"] == "ninjs-1"
    status, body = await server.hook(
        {"uri": "urn:syndicate:story:n2", "version": 3}, content_type="application/ninjs+json"
    )
    assert status == 422 and body["errors"][0]["path"] == "version"


async def test_retraction_reaches_the_channels(server: Server, sandbox: RunningSandbox) -> None:
    await server.hook(STORY)
    await server.wait_states("srv-1", "delivered")
    status, body = await server.hook({"id": "srv-1"}, method="DELETE", path="/v1/stories/srv-1")
    assert status == 202 and {d["action"] for d in body["deliveries"]} == {"retract"}
    assert body["version"] == 2
    await server.wait_states("srv-1", "delivered")
    events = {r.body["event"] for r in sandbox.sandbox.received("webhook")}
    assert events == {"publish", "retract"}
    status, body = await server.hook({"id": "nope"}, method="DELETE", path="/v1/stories/nope")
    assert status == 404
    status, body = await server.hook({"id": "srv-2"}, method="DELETE", path="/v1/stories/srv-1")
    assert (status, body["error"]) == (400, "id_mismatch")
    status, body = await server.hook(b"", method="DELETE", path="/v1/stories/srv-1")
    assert status == 200 and body["new"] is False  # an empty body is accepted too; already retracted
    # A canceled pubstatus through the hook works the same way.
    await server.hook({**STORY, "id": "srv-2"})
    await server.wait_states("srv-2", "delivered")
    status, body = await server.hook({**STORY, "id": "srv-2", "version": 2, "pubstatus": "canceled"})
    assert status == 202 and {d["action"] for d in body["deliveries"]} == {"retract"}


async def test_api_needs_the_bearer_token(server: Server) -> None:
    for method, path in [
        ("GET", "/v1/deliveries"),
        ("GET", "/v1/stories/x"),
        ("POST", "/v1/replay"),
        ("POST", "/v1/deliveries/1/replay"),
        ("POST", "/v1/channels/web/pause"),
        ("POST", "/v1/channels/web/resume"),
    ]:
        assert (await server.api(method, path, token=None))[0] == 401, path
        status, body = await server.api(method, path, token="wrong-token-0123456789")
        assert status == 401 and API_TOKEN not in json.dumps(body)


async def test_replay_by_channel_and_time_range(server: Server, sandbox: RunningSandbox) -> None:
    sandbox.sandbox.set_faults("webhook", [{"fault": "status:400", "probability": 1.0, "name": "web"}])
    for i in range(3):
        await server.hook({**STORY, "id": f"r{i}"})
    for i in range(3):
        await server.wait_states(f"r{i}", "delivered", "failed")
    status, failed = await server.api("GET", "/v1/deliveries?state=failed")
    assert status == 200
    assert sorted(d["story_id"] for d in failed["deliveries"]) == ["r0", "r1", "r2"]
    assert {d["channel"] for d in failed["deliveries"]} == {"web"}
    assert failed["deliveries"][0]["platform_code"] == "400"
    sandbox.sandbox.clear_faults()

    # A time range that ends before the failures selects nothing; a dry run changes nothing.
    status, body = await server.api("POST", "/v1/replay", json={"channel": "web", "until": "1h"})
    assert (status, body["selected"], body["requeued"]) == (200, 0, 0)
    status, body = await server.api("POST", "/v1/replay", json={"channel": "web", "since": "10m", "dry_run": True})
    assert (body["selected"], body["requeued"]) == (3, 0)
    status, body = await server.api("POST", "/v1/replay", json={"channel": "app"})
    assert body["selected"] == 0

    status, body = await server.api("POST", "/v1/replay", json={"channel": "web", "since": "10m"})
    assert (status, body["requeued"]) == (200, 3)
    for i in range(3):
        await server.wait_states(f"r{i}", "delivered")
    web_keys = [k for k in keys(sandbox) if k.endswith(":web:publish")]
    assert web_keys == ["r0:1:web:publish", "r1:1:web:publish", "r2:1:web:publish"]

    # One delivery: a delivered one needs force.
    one = failed["deliveries"][0]["id"]
    status, body = await server.api("POST", f"/v1/deliveries/{one}/replay")
    assert status == 409 and "force" in body["message"]
    assert (await server.api("POST", "/v1/deliveries/999999/replay"))[0] == 404
    status, body = await server.api("POST", "/v1/replay", json={"chanel": "web"})
    assert status == 422 and body["errors"][0]["path"] == "chanel"


async def test_pause_and_resume(server: Server, sandbox: RunningSandbox) -> None:
    status, body = await server.api("POST", "/v1/channels/web/pause", json={"for": "1h", "reason": "desk says wait"})
    assert status == 200 and body["paused"] and body["reason"] == "desk says wait"
    await server.hook(STORY)
    await server.wait_states("srv-1", "delivered", "queued")
    assert keys(sandbox) == ["srv-1:1:app:publish"]
    status, body = await server.api("POST", "/v1/channels/web/resume")
    assert status == 200 and not body["paused"]
    await server.wait_states("srv-1", "delivered")
    assert (await server.api("POST", "/v1/channels/nope/pause"))[0] == 404
    status, body = await server.api("POST", "/v1/channels/web/pause", json={"until": "2001-01-01T00:00:00Z"})
    assert status == 422
    # Found by fuzzing: pauses past year 9999 were stored and then broke every answer that showed them (500).
    for absurd in ({"for": "99999999999d"}, {"until": "1e20"}, {"until": "nan"}, {"until": "inf"}):
        status, body = await server.api("POST", "/v1/channels/web/pause", json=absurd)
        assert status == 422, (absurd, body)
        assert any(word in body["message"] for word in ("too long", "9999", "finite")), body


async def test_deliveries_listing_filters_and_pages(server: Server) -> None:
    for i in range(5):
        await server.hook({**STORY, "id": f"p{i}"})
    seen: list[int] = []
    cursor = ""
    while True:
        status, page = await server.api("GET", f"/v1/deliveries?channel=web&limit=2{cursor}")
        assert status == 200
        seen += [d["id"] for d in page["deliveries"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert len(seen) == 5 and seen == sorted(seen)
    status, body = await server.api("GET", "/v1/deliveries?state=bogus")
    assert status == 400 and "state" in body["message"]
    assert (await server.api("GET", "/v1/deliveries?limit=0"))[0] == 400
    assert (await server.api("GET", "/v1/deliveries?since=yesterday-ish"))[0] == 400
    status, body = await server.api("GET", "/v1/deliveries?story=p3")
    assert {d["story_id"] for d in body["deliveries"]} == {"p3"}


async def test_operations_endpoints(server: Server) -> None:
    assert (await server.api("GET", "/healthz", token=None)) == (200, {"ok": True})
    status, body = await server.api("GET", "/readyz", token=None)
    assert status == 200 and body["ready"] is True
    await server.hook(STORY)
    await server.wait_states("srv-1", "delivered")
    async with server.session.get(server.url + "/metrics") as resp:
        text = await resp.text()
    assert resp.status == 200
    assert 'syndicate_deliveries_total{channel="web",outcome="delivered"} 1.0' in text
    assert 'syndicate_queue_depth{channel="web",state="delivered"} 1.0' in text
    assert HOOK_SECRET not in text and API_TOKEN not in text
    status, doc = await server.api("GET", "/openapi.json", token=None)
    assert status == 200 and doc["openapi"].startswith("3.1")
    documented = set(doc["paths"])
    assert documented == {
        "/v1/stories",
        "/v1/stories/{story_id}",
        "/v1/stories/{story_id}/reach",
        "/v1/reach",
        "/reach/b.gif",
        "/v1/deliveries",
        "/v1/deliveries/{delivery_id}/replay",
        "/v1/replay",
        "/v1/channels/{channel}/pause",
        "/v1/channels/{channel}/resume",
        "/openapi.json",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    assert (await server.api("GET", "/nope", token=None))[0] == 404


async def test_two_channels_serving_the_same_path_are_refused_by_name(tmp_path: Path) -> None:
    from syndicate.config import ConfigError
    from syndicate.engine import Engine
    from syndicate.server import create_app
    from syndicate.store import open_store
    from tests.support import make_settings

    feed = {"kind": "rss", "title": "新闻", "link": "https://news.example.cn/"}
    settings = make_settings(
        tmp_path,
        {"feed": {**feed, "root": str(tmp_path / "a")}, "feed-en": {**feed, "root": str(tmp_path / "b")}},
    )
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            with pytest.raises(ConfigError) as refused:
                create_app(settings, engine)
    finally:
        await store.close()
    message = str(refused.value)
    assert "[channels.feed-en] kind" in message
    assert "GET /feeds/rss.xml" in message and "'feed'" in message
