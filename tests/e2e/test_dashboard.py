"""The dashboard, server side, through aiohttp's test client on the real app (`create_app`) and a real Engine:
login and the session cookie, CSRF and origin checks, escaping of story text, every page, every action."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from syndicate.config import Settings, parse_config
from syndicate.delivery import OutcomeUnknown, Permanent
from syndicate.engine import Engine
from syndicate.server import create_app
from syndicate.store import open_store
from syndicate.store.base import DeliveryFilter, State
from tests.support import ScriptedAdapter, make_story, scripted

API_TOKEN = "dash-token-0123456789abcdef"
EVIL = "<script>alert('x')</script>"


def dashboard_settings(tmp_path: Path, **server: Any) -> Settings:
    raw = {
        "store": {"url": f"sqlite:///{tmp_path / 'dash.db'}"},
        "engine": {"lease_seconds": 5, "poll_interval": 0.05, "retry_jitter": 0},
        "server": {"api_token": API_TOKEN, **server},
        "channels": {"web": scripted(), "app": scripted(retry=[0])},
    }
    return parse_config(raw, source="dashboard-test.toml", env={})


@dataclass
class Dash:
    client: TestClient
    engine: Engine

    async def login(self, token: str = API_TOKEN) -> int:
        return (await self.login_response(token)).status

    async def login_response(self, token: str = API_TOKEN) -> ClientResponse:
        page = await self.client.get("/dashboard/login")
        csrf = _hidden(await page.text(), "csrf")
        return await self.client.post(
            "/dashboard/login", data={"csrf": csrf, "token": token, "next": "/"}, allow_redirects=False
        )

    async def csrf(self, path: str = "/dashboard/channels") -> str:
        resp = await self.client.get(path)
        assert resp.status == 200
        return _hidden(await resp.text(), "csrf")

    async def settle(self) -> None:
        await self.engine.run(until_idle=True, idle_horizon=0.5)


def _hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden {name} field"
    return match.group(1)


@pytest.fixture
async def dash(tmp_path: Path) -> AsyncIterator[Dash]:
    settings = dashboard_settings(tmp_path)
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            async with TestClient(TestServer(create_app(settings, engine))) as client:
                yield Dash(client, engine)
    finally:
        await store.close()


async def test_no_page_or_action_works_without_logging_in(dash: Dash) -> None:
    for path in ["/", "/dashboard/failures", "/dashboard/channels", "/dashboard/stories/x"]:
        resp = await dash.client.get(path, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"].startswith("/dashboard/login?next="), path
    assert (await dash.client.get("/dashboard/board.json")).status == 401
    for path in ["/dashboard/replay", "/dashboard/channels/web/pause", "/dashboard/deliveries/1/landed"]:
        resp = await dash.client.post(path, data={"csrf": "x"}, allow_redirects=False)
        assert resp.status == 303 and "/dashboard/login" in resp.headers["Location"], path
    assert "web" not in await dash.engine.store.channel_states()


async def test_login_sets_a_strict_httponly_cookie_without_the_token(dash: Dash) -> None:
    assert await dash.login("wrong-token-0123456789abc") == 401
    assert (await dash.client.get("/", allow_redirects=False)).status == 303
    resp = await dash.login_response()
    assert resp.status == 303 and resp.headers["Location"] == "/"
    [set_cookie] = [h for h in resp.headers.getall("Set-Cookie") if h.startswith("syndicate_session=")]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Path=/;" in set_cookie + ";"
    assert "Secure" not in set_cookie  # plain http in the test; https requests get Secure
    cookie = dash.client.session.cookie_jar.filter_cookies(dash.client.make_url("/"))["syndicate_session"]
    assert API_TOKEN not in cookie.value
    page = await dash.client.get("/")
    assert page.status == 200 and "最新稿件" in await page.text()
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    # A forged or tampered cookie is no session.
    tampered = cookie.value[:-2] + ("00" if not cookie.value.endswith("00") else "11")
    dash.client.session.cookie_jar.clear()
    dash.client.session.cookie_jar.update_cookies({"syndicate_session": tampered}, dash.client.make_url("/"))
    assert (await dash.client.get("/", allow_redirects=False)).status == 303


async def test_login_form_itself_is_csrf_protected(dash: Dash) -> None:
    await dash.client.get("/dashboard/login")
    resp = await dash.client.post("/dashboard/login", data={"csrf": "guess", "token": API_TOKEN})
    assert resp.status == 403
    assert (await dash.client.get("/", allow_redirects=False)).status == 303


async def test_dashboard_is_off_without_an_api_token(tmp_path: Path) -> None:
    settings = dashboard_settings(tmp_path, api_token=None)
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine, TestClient(TestServer(create_app(settings, engine))) as client:
            resp = await client.get("/dashboard/login")
            assert resp.status == 503 and "[server] api_token" in await resp.text()
            resp = await client.post("/dashboard/login", data={"token": ""})
            assert resp.status == 503
    finally:
        await store.close()


async def test_actions_refuse_a_missing_csrf_token_or_a_foreign_origin(dash: Dash) -> None:
    await dash.login()
    csrf = await dash.csrf()
    resp = await dash.client.post("/dashboard/channels/web/pause", data={"for": "1h"})
    assert resp.status == 403 and "安全校验" in await resp.text()
    resp = await dash.client.post(
        "/dashboard/channels/web/pause", data={"for": "1h", "csrf": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert resp.status == 403
    assert "web" not in await dash.engine.store.channel_states()
    resp = await dash.client.post("/dashboard/channels/web/pause", data={"for": "1h", "csrf": csrf})
    assert resp.status == 200  # followed the redirect back to the channels page
    assert (await dash.engine.store.channel_states())["web"].paused_at(dash.engine.clock.now())


async def test_story_text_is_escaped_on_every_page(dash: Dash) -> None:
    ScriptedAdapter.scripts["app"] = [Permanent(EVIL, platform_code="<b>40001</b>")]
    # Words beside the script: intake refuses a headline that is only markup.
    evil = make_story(id="evil", headline=f"{EVIL}标题", summary=EVIL, body_html=f"<p>{EVIL}</p>")
    await dash.engine.accept(evil)
    await dash.settle()
    await dash.login()
    pages = ["/", "/dashboard/stories/evil", "/dashboard/failures", "/dashboard/channels"]
    for path in pages:
        html = await (await dash.client.get(path)).text()
        assert "<script>alert" not in html, path
    board = await (await dash.client.get("/")).text()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in board
    fragment = (await (await dash.client.get("/dashboard/board.json")).json())["rows"]
    assert "<script>" not in fragment and "&lt;script&gt;" in fragment
    story = await (await dash.client.get("/dashboard/stories/evil")).text()
    assert "&lt;b&gt;40001&lt;/b&gt;" in story  # the platform code, too


async def test_board_shows_each_channel_state_as_a_word_and_a_colour(dash: Dash) -> None:
    ScriptedAdapter.scripts["app"] = [Permanent("标题过长")]
    await dash.engine.accept(make_story(id="s1"))
    await dash.login()
    html = await (await dash.client.get("/")).text()
    assert html.count('data-state="queued"') == 2 and "排队中" in html
    await dash.settle()
    data = await (await dash.client.get("/dashboard/board.json?lang=en")).json()
    assert 'data-channel="web" data-state="delivered"' in data["rows"] and "delivered" in data["rows"]
    assert 'class="cell s-bad" data-channel="app" data-state="failed"' in data["rows"]
    english = await (await dash.client.get("/?lang=en")).text()
    assert "Newest stories" in english and 'href="/dashboard/stories/s1?lang=en"' in english


async def test_story_page_shows_payload_receipt_and_attempts(dash: Dash) -> None:
    ScriptedAdapter.scripts["web"] = [OutcomeUnknown("timeout after send", platform_code="504")]
    await dash.engine.accept(make_story(id="s2", headline="宝山汇APP上线"))
    await dash.settle()
    await dash.login()
    html = await (await dash.client.get("/dashboard/stories/s2")).text()
    assert "宝山汇APP上线" in html
    assert "&#34;headline&#34;: &#34;宝山汇APP上线&#34;" in html  # the payload as sent, pretty-printed
    assert "app-" in html  # the app channel's receipt remote id
    assert "timeout after send" in html and ">504<" in html and 'class="outcome">unknown<' in html
    assert "/dashboard/deliveries/" in html and "确认已发布" in html  # the unknown one offers its actions
    missing = await dash.client.get("/dashboard/stories/nope")
    assert missing.status == 404 and "没有这篇稿件" in await missing.text()


async def test_failures_filter_confirm_and_replay(dash: Dash) -> None:
    ScriptedAdapter.scripts["app"] = [Permanent("坏了"), Permanent("坏了")]
    ScriptedAdapter.scripts["web"] = [Permanent("refused")]
    await dash.engine.accept(make_story(id="f1"))
    await dash.engine.accept(make_story(id="f2"))
    await dash.settle()
    await dash.login()
    html = await (await dash.client.get("/dashboard/failures?channel=app")).text()
    assert html.count('class="failure card"') == 2
    html = await (await dash.client.get("/dashboard/failures")).text()
    assert html.count('class="failure card"') == 3
    bad = await (await dash.client.get("/dashboard/failures?since=yesterday")).text()
    assert "is not a time" in bad

    csrf = _hidden(html, "csrf")
    confirm = await dash.client.post("/dashboard/replay", data={"csrf": csrf, "scope": "all", "channel": "app"})
    text = await confirm.text()
    assert confirm.status == 200 and "将重发 2 条投递，渠道：app。" in text
    app_rows = await dash.engine.store.list_deliveries(DeliveryFilter(channels=["app"]))
    assert [d.state for d in app_rows] == [State.FAILED, State.FAILED]  # nothing happens before confirming
    ids = re.findall(r'name="id" value="(\d+)"', text)
    resp = await dash.client.post(
        "/dashboard/replay",
        data=[("csrf", csrf), ("scope", "selected"), ("confirm", "yes"), *[("id", i) for i in ids]],
    )
    assert resp.status == 200 and "已重新排队 2 条投递" in await resp.text()
    await dash.settle()
    states = {(d.story_id, d.channel): d.state for d in await dash.engine.store.list_deliveries(DeliveryFilter())}
    assert states == {
        ("f1", "app"): State.DELIVERED,
        ("f2", "app"): State.DELIVERED,
        ("f1", "web"): State.FAILED,
        ("f2", "web"): State.DELIVERED,
    }


async def test_unknown_delivery_it_did_land_and_resend(dash: Dash) -> None:
    ScriptedAdapter.scripts["web"] = [OutcomeUnknown("lost answer"), OutcomeUnknown("lost answer")]
    await dash.engine.accept(make_story(id="u1"))
    await dash.engine.accept(make_story(id="u2"))
    await dash.settle()
    await dash.login()
    unknown = await dash.engine.store.list_deliveries(DeliveryFilter(states=[State.UNKNOWN]))
    assert [d.story_id for d in unknown] == ["u1", "u2"]
    csrf = await dash.csrf("/dashboard/failures")
    calls_before = len(ScriptedAdapter.calls)

    resp = await dash.client.post(f"/dashboard/deliveries/{unknown[0].id}/landed", data={"csrf": csrf, "remote": ""})
    assert "输入有误" in await resp.text()
    resp = await dash.client.post(
        f"/dashboard/deliveries/{unknown[0].id}/landed",
        data={"csrf": csrf, "remote": "https://example.cn/p/1", "back": "/dashboard/failures"},
    )
    assert "已标记为已发布" in await resp.text()
    landed = await dash.engine.store.get_delivery(unknown[0].id)
    assert landed.state is State.DELIVERED and landed.receipt and landed.receipt.url == "https://example.cn/p/1"
    assert (await dash.engine.store.attempts(landed.id))[-1].outcome == "landed_by_operator"
    board = await (await dash.client.get("/")).text()
    assert 'href="https://example.cn/p/1"' in board  # delivered links to the post
    again = await dash.client.post(f"/dashboard/deliveries/{unknown[0].id}/landed", data={"csrf": csrf, "remote": "x"})
    assert "未作更改" in await again.text()

    resp = await dash.client.post(f"/dashboard/deliveries/{unknown[1].id}/resend", data={"csrf": csrf})
    assert "已重新排队 1 条投递" in await resp.text()
    await dash.settle()
    assert (await dash.engine.store.get_delivery(unknown[1].id)).state is State.DELIVERED
    # Resend sends again without asking the platform first; "it did land" sent nothing.
    assert [c[1] for c in ScriptedAdapter.calls[calls_before:]] == ["publish"]


async def test_channels_page_pause_and_resume(dash: Dash) -> None:
    ScriptedAdapter.scripts["app"] = [Permanent("no")]
    await dash.engine.accept(make_story(id="c1"))
    await dash.settle()
    await dash.login()
    html = await (await dash.client.get("/dashboard/channels")).text()
    assert 'data-channel="web" data-paused="no"' in html and "畅通" in html
    assert '成功率 <strong class="rate">100%' in html and '成功率 <strong class="rate">0%' in html
    assert html.count('class="bar ') == 2
    csrf = _hidden(html, "csrf")
    resp = await dash.client.post(
        "/dashboard/channels/web/pause", data={"csrf": csrf, "for": "", "reason": "凭证更换中"}
    )
    html = await resp.text()
    assert 'data-channel="web" data-paused="yes"' in html and "凭证更换中" in html and "暂停至人工恢复" in html
    resp = await dash.client.post("/dashboard/channels/web/pause", data={"csrf": csrf, "for": "99y"})
    assert "输入有误" in await resp.text()
    resp = await dash.client.post("/dashboard/channels/nowhere/pause", data={"csrf": csrf, "for": "1h"})
    assert resp.status == 404
    resp = await dash.client.post("/dashboard/channels/web/resume", data={"csrf": csrf, "lang": "en"})
    html = await resp.text()
    assert 'data-channel="web" data-paused="no"' in html and "Channel resumed." in html


async def test_logout_ends_the_session_and_redirects_stay_on_site(dash: Dash) -> None:
    await dash.login()
    csrf = await dash.csrf()
    resp = await dash.client.post(
        "/dashboard/channels/web/resume", data={"csrf": csrf, "back": "//evil.example/x"}, allow_redirects=False
    )
    assert resp.headers["Location"].startswith("/dashboard/channels")
    resp = await dash.client.post("/dashboard/logout", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    assert (await dash.client.get("/", allow_redirects=False)).status == 303


async def test_static_files_are_served_from_the_package(dash: Dash) -> None:
    await dash.login()
    html = await (await dash.client.get("/")).text()
    script = re.search(r'src="(/dashboard/static/dashboard\.js[^"]*)"', html)
    assert script
    resp = await dash.client.get(script.group(1).replace("&amp;", "&"))
    assert resp.status == 200 and "refreshBoard" in await resp.text()
