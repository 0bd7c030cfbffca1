"""The JPush stand-in over real HTTP: auth, payload checks, cid replay, rate-limit headers, shared faults."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from adapters.app.standin import (
    DEFAULT_APP_KEY,
    DEFAULT_MASTER_SECRET,
    SandboxApp,
    pushes,
    register_app,
)
from syndicate.sandbox import RunningSandbox, running_sandbox


def basic(app_key: str = DEFAULT_APP_KEY, secret: str = DEFAULT_MASTER_SECRET) -> dict[str, str]:
    token = base64.b64encode(f"{app_key}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def push_object(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "platform": "all",
        "audience": "all",
        "notification": {
            "alert": "上海16区融媒体中心全部建成",
            "android": {"alert": "宝山、闵行挂牌", "title": "上海16区融媒体中心全部建成", "extras": {"story_id": "s1"}},
            "ios": {"alert": "上海16区融媒体中心全部建成", "extras": {"story_id": "s1"}},
        },
        "options": {"sendno": 7, "time_to_live": 86400, "apns_production": True},
    }
    body.update(changes)
    return body


@pytest.fixture
async def sb() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(port=0, seed=3, hold_seconds=0.5) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def send(
    http: aiohttp.ClientSession, sb: RunningSandbox, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.post(sb.url_for("/v3/push"), json=body, headers=basic() if headers is None else headers) as resp:
        return resp.status, await resp.json(), resp


async def cid(http: aiohttp.ClientSession, sb: RunningSandbox, headers: dict[str, str] | None = None) -> str:
    async with http.get(sb.url_for("/v3/push/cid"), headers=headers or basic(), params={"count": "1"}) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["cidlist"][0]


async def test_a_valid_push_is_answered_recorded_and_counted(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    status, answer, resp = await send(http, sb, push_object())
    assert status == 200
    assert answer["sendno"] == "7" and answer["msg_id"].isdigit()
    assert resp.headers["X-Rate-Limit-Limit"] == "600"
    assert resp.headers["X-Rate-Limit-Remaining"] == "599"
    assert 1 <= int(resp.headers["X-Rate-Limit-Reset"]) <= 60
    [record] = sb.sandbox.received("jpush")
    assert record.receiver == DEFAULT_APP_KEY and record.path == "/v3/push"
    assert record.body["notification"]["android"]["extras"] == {"story_id": "s1"}
    [made] = pushes(sb.sandbox)
    assert made["msg_id"] == answer["msg_id"] and made["body"] == push_object()


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, 1004),
        (basic(secret="wrong"), 401, 1004),
        ({"Authorization": "Basic !!!not-base64"}, 401, 1004),
        (basic(app_key="no-such-app"), 400, 1008),
    ],
)
async def test_bad_credentials_get_jpush_errors(
    sb: RunningSandbox, http: aiohttp.ClientSession, headers: dict[str, str], status: int, code: int
) -> None:
    got, answer, _ = await send(http, sb, push_object(), headers)
    assert got == status
    assert answer["error"]["code"] == code and answer["error"]["message"]
    assert pushes(sb.sandbox) == []


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ({k: v for k, v in push_object().items() if k != "platform"}, 1002, "platform"),
        ({k: v for k, v in push_object().items() if k != "audience"}, 1002, "audience"),
        ({"platform": "all", "audience": "all"}, 1002, "notification or message"),
        (push_object(platform=["android", "blackberry"]), 1003, "blackberry"),
        (push_object(audience={"tag": []}), 1003, "audience.tag"),
        (push_object(audience={"city": ["上海"]}), 1009, "city"),
        (push_object(surprise=1), 1009, "surprise"),
        (push_object(notification={"android": {"alert": "x", "title": "t"}}), 1003, "extras"),
        (push_object(notification={"ios": {"alert": "", "extras": {}}}), 1003, "alert"),
        (push_object(notification={"ios": {"alert": "x" * 2100, "extras": {}}}), 1005, "2000 bytes"),
        (push_object(options={"sendno": -1}), 1003, "sendno"),
        (push_object(options={"time_to_live": 10**7}), 1003, "time_to_live"),
        (push_object(cid="made-up-cid"), 1003, "cid"),
        ("not an object", 1003, "JSON object"),
    ],
)
async def test_payload_shape_is_checked(
    sb: RunningSandbox, http: aiohttp.ClientSession, body: Any, code: int, fragment: str
) -> None:
    status, answer, _ = await send(http, sb, body)
    assert status == 400
    assert answer["error"]["code"] == code
    assert fragment in answer["error"]["message"]
    assert pushes(sb.sandbox) == []


async def test_a_repeated_cid_answers_the_first_result_and_pushes_nothing(
    sb: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    issued = await cid(http, sb)
    assert issued.startswith(f"{DEFAULT_APP_KEY}-")
    _, first, _ = await send(http, sb, push_object(cid=issued))
    _, again, _ = await send(http, sb, push_object(cid=issued))
    assert again == first
    assert len(pushes(sb.sandbox)) == 1
    assert [r.idempotency_key for r in sb.sandbox.received("jpush") if r.path == "/v3/push"] == [issued, issued]
    other = await cid(http, sb)
    _, third, _ = await send(http, sb, push_object(cid=other))
    assert third["msg_id"] != first["msg_id"]


async def test_a_cid_belongs_to_its_app_key(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    register_app(sb.sandbox, SandboxApp("other-app", "other-secret"))
    foreign = await cid(http, sb, basic("other-app", "other-secret"))
    status, answer, _ = await send(http, sb, push_object(cid=foreign))
    assert status == 400 and answer["error"]["code"] == 1003


async def test_registered_apps_no_devices_and_rate_limit(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    register_app(sb.sandbox, SandboxApp("empty-app", "s1", devices=False))
    status, answer, _ = await send(http, sb, push_object(), basic("empty-app", "s1"))
    assert status == 400 and answer["error"]["code"] == 1011

    register_app(sb.sandbox, SandboxApp("tiny-app", "s2", rate_limit=1))
    status, _, resp = await send(http, sb, push_object(), basic("tiny-app", "s2"))
    assert status == 200 and resp.headers["X-Rate-Limit-Remaining"] == "0"
    status, answer, resp = await send(http, sb, push_object(), basic("tiny-app", "s2"))
    assert status == 429 and answer["error"]["code"] == 2002
    assert int(resp.headers["X-Rate-Limit-Reset"]) >= 1
    assert [p["app_key"] for p in pushes(sb.sandbox)] == ["tiny-app"]


async def test_reset_forgets_registered_apps_but_keeps_the_default(
    sb: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    register_app(sb.sandbox, SandboxApp("gone-app", "s"))
    sb.sandbox.reset()
    assert (await send(http, sb, push_object(), basic("gone-app", "s")))[0] == 400
    assert (await send(http, sb, push_object()))[0] == 200


async def test_shared_faults_apply_per_app_key(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    sb.sandbox.set_faults("jpush", [{"fault": "status:503", "name": DEFAULT_APP_KEY, "methods": ["POST"]}])
    status, _, _ = await send(http, sb, push_object())
    assert status == 503
    await cid(http, sb)  # GET is not covered by the rule
    assert sb.sandbox.stats("jpush")[DEFAULT_APP_KEY].faults == {"status:503": 1}
    assert pushes(sb.sandbox) == []


async def test_cid_request_checks_count_and_auth(sb: RunningSandbox, http: aiohttp.ClientSession) -> None:
    async with http.get(sb.url_for("/v3/push/cid"), headers=basic(), params={"count": "5000"}) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["code"] == 1003
    async with http.get(sb.url_for("/v3/push/cid"), headers=basic(secret="nope")) as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == 1004
    async with http.get(sb.url_for("/v3/push/cid"), headers=basic(), params={"count": "3"}) as resp:
        assert len(set((await resp.json())["cidlist"])) == 3


async def test_sendno_is_a_non_zero_int_and_an_absent_one_is_answered_as_zero(
    sb: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    # "值为 0 表示该 messageid 无 sendno，所以字段取值范围为非 0 的 int" (push API v3, options.sendno).
    status, answer, _ = await send(http, sb, push_object(options={"sendno": 0}))
    assert status == 400 and answer["error"]["code"] == 1003 and "non-zero" in answer["error"]["message"]
    status, answer, _ = await send(http, sb, push_object(options={"sendno": 2**31}))
    assert status == 400 and answer["error"]["code"] == 1003
    status, answer, _ = await send(http, sb, push_object(options={"time_to_live": 60}))
    assert status == 200 and answer["sendno"] == "0"
    assert [p["sendno"] for p in pushes(sb.sandbox)] == ["0"]


@pytest.mark.parametrize(
    ("vip", "count", "accepted"),
    [
        (False, "1", True),
        (False, "10", True),
        (False, "11", False),  # the most an app without VIP may ask for
        (False, "0", False),
        (False, "-3", False),
        (False, "two", False),
        (True, "1000", True),
        (True, "1001", False),
    ],
)
async def test_cid_counts_outside_the_documented_range_are_refused_in_jpushs_shape(
    sb: RunningSandbox, http: aiohttp.ClientSession, vip: bool, count: str, accepted: bool
) -> None:
    app = SandboxApp("vip-app-key", "vip-secret", vip=True) if vip else SandboxApp("plain-key", "plain-secret")
    register_app(sb.sandbox, app)
    headers = basic(app.app_key, app.master_secret)
    async with http.get(sb.url_for("/v3/push/cid"), headers=headers, params={"count": count}) as resp:
        answer = await resp.json()
        if accepted:
            assert resp.status == 200 and len(set(answer["cidlist"])) == int(count)
        else:
            assert resp.status == 400
            assert set(answer) == {"error"} and answer["error"]["code"] == 1003
            assert "count must be an integer from 1 to" in answer["error"]["message"]
