"""The dashboard, server side, through aiohttp's test client on the real app (`create_app`) and a real Engine:
login and the session cookie, CSRF and origin checks, escaping of story text, every page, every action."""

from __future__ import annotations

import contextlib
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from syndicate.config import ConfigError, Settings, parse_config
from syndicate.dashboard.throttle import OVERALL, PER_CLIENT, WINDOW_SECONDS, LoginThrottle, Refusal
from syndicate.delivery import OutcomeUnknown, Permanent, ReachMetric
from syndicate.engine import Engine
from syndicate.server import create_app
from syndicate.store import open_store
from syndicate.store.base import DeliveryFilter, State
from tests.support import FakeClock, ScriptedAdapter, closed_port, make_story, run_cli, scripted

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
    await dash.engine.store.add_reach_count("evil", "web", ReachMetric.READS, now=dash.engine.clock.now())
    pages = ["/", "/dashboard/stories/evil", "/dashboard/failures", "/dashboard/channels", "/dashboard/reach"]
    for path in pages:
        html = await (await dash.client.get(path)).text()
        assert "<script>alert" not in html, path
    board = await (await dash.client.get("/")).text()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in board
    fragment = (await (await dash.client.get("/dashboard/board.json")).json())["rows"]
    assert "<script>" not in fragment and "&lt;script&gt;" in fragment
    story = await (await dash.client.get("/dashboard/stories/evil")).text()
    assert "&lt;b&gt;40001&lt;/b&gt;" in story  # the platform code, too
    reach = await (await dash.client.get("/dashboard/reach")).text()
    assert 'data-story="evil"' in reach and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;标题" in reach


async def test_reach_page_filters_name_bad_input_and_export_needs_a_session(dash: Dash) -> None:
    for path in ["/dashboard/reach", "/dashboard/reach.csv"]:
        resp = await dash.client.get(path, allow_redirects=False)
        assert resp.status == 303 and "/dashboard/login" in resp.headers["Location"], path
    await dash.engine.accept(make_story(id="r1", section="时政"))
    await dash.settle()
    for _ in range(2):
        assert await dash.engine.store.add_reach_count("r1", "web", ReachMetric.READS, now=dash.engine.clock.now())
    await dash.login()
    html = await (await dash.client.get("/dashboard/reach")).text()
    assert 'data-story="r1"' in html and 'data-channel="web"' in html and 'data-section="时政"' in html
    english = await (await dash.client.get("/dashboard/reach?lang=en")).text()
    assert "Reach ranking" in english and 'href="/dashboard/reach.csv?since=7d"' in english
    bad = await (await dash.client.get("/dashboard/reach?since=forever&channel=nope")).text()
    assert "channel: &#39;nope&#39;" in bad and 'data-story="r1"' in bad  # defaults used, the mistake named
    other = await (await dash.client.get("/dashboard/reach?section=体育")).text()
    assert 'id="reach-empty"' in other
    csv_resp = await dash.client.get("/dashboard/reach.csv?since=1d&channel=web")
    assert csv_resp.status == 200 and csv_resp.content_type == "text/csv"
    assert csv_resp.headers["Content-Disposition"] == 'attachment; filename="reach-1d.csv"'
    assert (await csv_resp.text()).splitlines()[1].endswith(",时政,web,2,,,")
    story = await (await dash.client.get("/dashboard/stories/r1")).text()
    assert 'id="reach"' in story and '<tr data-channel="web">' in story and "自有计数" in story


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


async def test_story_page_shows_a_webhook_body_as_the_json_it_is(tmp_path: Path) -> None:
    """A webhook payload keeps its request body as text: the page shows that body as JSON, not as one escaped line."""
    hook = {"kind": "webhook", "url": f"http://127.0.0.1:{closed_port()}/hook", "secret": "s"}
    settings = dashboard_settings(tmp_path)
    settings = parse_config(
        {
            "store": {"url": settings.store.url},
            "server": {"api_token": API_TOKEN},
            "channels": {"hook": hook},
        },
        source="dashboard-test.toml",
        env={},
    )
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            await engine.accept(make_story(id="w1", headline="宝山汇APP上线"))  # queued: nothing is sent
            async with TestClient(TestServer(create_app(settings, engine))) as client:
                dash = Dash(client, engine)
                await dash.login()
                html = await (await client.get("/dashboard/stories/w1")).text()
    finally:
        await store.close()
    assert "&#34;event&#34;: &#34;publish&#34;" in html and "&#34;story&#34;: {" in html
    assert "&#34;headline&#34;: &#34;宝山汇APP上线&#34;" in html
    assert "&#34;body&#34;" not in html and "\\&#34;" not in html  # no escaped body string


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


# --- issue 14 (2): ids past int64, non-ASCII cookies and CSRF fields -----------------------------------------------

PAST_INT64 = [str(2**63), str(2**64), "9" * 40]


@pytest.mark.parametrize("delivery_id", PAST_INT64)
async def test_delivery_ids_past_int64_are_a_4xx_in_every_dashboard_action(dash: Dash, delivery_id: str) -> None:
    await dash.login()
    csrf = await dash.csrf("/dashboard/failures")
    for action in ("landed", "resend"):
        resp = await dash.client.post(
            f"/dashboard/deliveries/{delivery_id}/{action}", data={"csrf": csrf, "remote": "x"}, allow_redirects=False
        )
        assert resp.status == 404, action
        assert "no delivery" in (await resp.json())["message"]
    for scope in ("selected", None):
        data = {"csrf": csrf, "id": delivery_id, "confirm": "yes", **({"scope": scope} if scope else {})}
        resp = await dash.client.post("/dashboard/replay", data=data, allow_redirects=False)
        text = await resp.text()
        assert resp.status == 400 and "id" in text and "9223372036854775807" in text


async def test_a_non_ascii_csrf_field_is_refused_not_a_500(dash: Dash) -> None:
    await dash.login()
    await dash.csrf()
    resp = await dash.client.post("/dashboard/channels/web/pause", data={"csrf": "令牌é", "for": "1h"})
    assert resp.status == 403
    dash.client.session.cookie_jar.clear()
    page = await dash.client.get("/dashboard/login")
    assert page.status == 200
    resp = await dash.client.post("/dashboard/login", data={"csrf": "令牌é", "token": API_TOKEN})
    assert resp.status == 403


@pytest.mark.parametrize(
    "cookie",
    ["é.9999999999.é", "nonce.9999999999.令牌", "nonce.١٢٣٤٥٦٧٨٩٠١.abc", "é", "..", "a.b.c.d"],
)
async def test_a_non_ascii_or_malformed_session_cookie_is_no_session(dash: Dash, cookie: str) -> None:
    raw = f"syndicate_session={cookie}".encode().decode("latin-1")
    resp = await dash.client.get("/", headers={"Cookie": raw}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/dashboard/login")
    resp = await dash.client.get("/dashboard/login", headers={"Cookie": raw}, allow_redirects=False)
    assert resp.status == 200


# --- issue 14 (4): no open redirect, however `next` or `back` is spelled ------------------------------------------

#: Values of `next` / `back` (as the server reads them, after the query or form decoding) that a browser would
#: follow off the site, or off the dashboard.
OFF_SITE = [
    "//evil.example/",
    "/\t/evil.example/",
    "/\n/evil.example/",
    "/\r\n/evil.example/",
    "\t//evil.example/",
    " //evil.example/",
    "\x00//evil.example/",
    "/\\evil.example/",
    "\\\\evil.example/",
    "\\/evil.example/",
    "/\\/evil.example/",
    "/%09/evil.example/",
    "/%0a/evil.example/",
    "/%2F/evil.example/",
    "%2F%2Fevil.example/",
    "/%5Cevil.example/",
    "/%5C%5Cevil.example/",
    "/%252F/evil.example/",
    "/%25%30%39/evil.example/",
    "https://evil.example/",
    "HTTPS://evil.example/dashboard/",
    "http:evil.example",
    "https:/\\evil.example",
    "javascript:alert(1)",
    "JavaScript:alert(document.cookie)",
    "\tjavascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "evil.example",
    "//evil.example@127.0.0.1/",
    "/dashboard/../../evil",
    "/dashboard/%2e%2e/%2e%2e/v1/replay",
    "/v1/replay",
    "/healthz",
]
ON_SITE = {
    "/": "/",
    "/dashboard/failures?channel=web": "/dashboard/failures?channel=web",
    "/dashboard/stories/s%3F1": "/dashboard/stories/s%3F1",
    "/dashboard/stories/稿件": "/dashboard/stories/%E7%A8%BF%E4%BB%B6",
    "/dash\tboard/channels": "/dashboard/channels",
}


def _leaves_the_dashboard(location: str) -> bool:
    read = location.translate(str.maketrans("", "", "\t\n\r")).strip().replace("\\", "/")
    return not read.startswith("/") or read.startswith("//") or ":" in read.split("?")[0]


@pytest.mark.parametrize("target", OFF_SITE)
async def test_next_and_back_never_lead_off_the_dashboard(dash: Dash, target: str) -> None:
    page = await dash.client.get("/dashboard/login", params={"next": target})
    html = await page.text()
    assert _hidden(html, "next") == "/"
    resp = await dash.client.post(
        "/dashboard/login",
        data={"csrf": _hidden(html, "csrf"), "token": API_TOKEN, "next": target},
        allow_redirects=False,
    )
    assert resp.status == 303 and resp.headers["Location"] == "/", target
    resp = await dash.client.get("/dashboard/login", params={"next": target}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/", target
    csrf = await dash.csrf()
    resp = await dash.client.post(
        "/dashboard/channels/web/resume", data={"csrf": csrf, "back": target}, allow_redirects=False
    )
    assert resp.status == 303 and resp.headers["Location"] == "/dashboard/channels?flash=resumed", target
    resp = await dash.client.post(
        "/dashboard/replay", data={"csrf": csrf, "scope": "all", "back": target}, allow_redirects=False
    )
    assert 'href="/dashboard/failures"' in await resp.text()  # the confirmation page's way back
    assert not _leaves_the_dashboard(resp.headers.get("Location", "/"))


@pytest.mark.parametrize(("target", "location"), ON_SITE.items())
async def test_next_and_back_keep_a_dashboard_path(dash: Dash, target: str, location: str) -> None:
    await dash.login()
    resp = await dash.client.get("/dashboard/login", params={"next": target}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == location
    csrf = await dash.csrf()
    resp = await dash.client.post(
        "/dashboard/channels/web/resume", data={"csrf": csrf, "back": target}, allow_redirects=False
    )
    expected = urllib.parse.urlsplit(location)
    got = urllib.parse.urlsplit(resp.headers["Location"])
    assert got.path == expected.path and "flash=resumed" in got.query


async def test_the_login_redirect_keeps_a_story_id_with_a_question_mark(dash: Dash) -> None:
    resp = await dash.client.get("/dashboard/stories/a%3Fb", allow_redirects=False)
    assert resp.headers["Location"] == "/dashboard/login?next=/dashboard/stories/a%253Fb"


# --- issue 14 (5): behind a TLS-terminating proxy -----------------------------------------------------------------

PUBLIC = "https://syndicate.newsroom.example"


@contextlib.asynccontextmanager
async def dash_with(tmp_path: Path, **server: Any) -> AsyncIterator[Dash]:
    settings = dashboard_settings(tmp_path, **server)
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            async with TestClient(TestServer(create_app(settings, engine))) as client:
                yield Dash(client, engine)
    finally:
        await store.close()


async def _login_from(dash: Dash, headers: dict[str, str]) -> ClientResponse:
    page = await dash.client.get("/dashboard/login", headers=headers)
    # Sent by hand: the test client keeps a Secure cookie for https only.
    login_csrf = _set_cookie(page, "syndicate_login_csrf").split(";", 1)[0]
    return await dash.client.post(
        "/dashboard/login",
        data={"csrf": _hidden(await page.text(), "csrf"), "token": API_TOKEN, "next": "/dashboard/failures"},
        headers={**headers, "Cookie": login_csrf},
        allow_redirects=False,
    )


def _set_cookie(resp: ClientResponse, name: str) -> str:
    [header] = [h for h in resp.headers.getall("Set-Cookie") if h.startswith(name + "=")]
    return header


async def test_behind_a_tls_proxy_public_url_sets_the_origin_the_secure_cookie_and_absolute_links(
    tmp_path: Path,
) -> None:
    async with dash_with(tmp_path, public_url=PUBLIC + "/") as dash:
        page = await dash.client.get("/dashboard/login")
        assert "Secure" in _set_cookie(page, "syndicate_login_csrf")
        # What this process sees (http://127.0.0.1:port) is not where the browser is.
        direct = f"http://{dash.client.host}:{dash.client.port}"
        assert (await _login_from(dash, {"Origin": direct})).status == 403
        resp = await _login_from(dash, {"Origin": PUBLIC})
        assert resp.status == 303 and resp.headers["Location"] == PUBLIC + "/dashboard/failures"
        cookie = _set_cookie(resp, "syndicate_session")
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        session = {"Cookie": cookie.split(";", 1)[0]}  # the test client keeps Secure cookies for https only
        page = await dash.client.get("/dashboard/channels", headers=session)
        assert page.status == 200
        csrf = _hidden(await page.text(), "csrf")
        resp = await dash.client.post(
            "/dashboard/channels/web/pause",
            data={"csrf": csrf, "for": "1h"},
            headers={**session, "Origin": PUBLIC},
            allow_redirects=False,
        )
        assert resp.status == 303 and resp.headers["Location"] == PUBLIC + "/dashboard/channels?flash=paused"
        resp = await dash.client.post(
            "/dashboard/channels/web/resume", data={"csrf": csrf}, headers={**session, "Origin": direct}
        )
        assert resp.status == 403
        fragment = await dash.client.get("/dashboard/board.json")
        assert (await fragment.json())["login"] == PUBLIC + "/dashboard/login"


async def test_forwarded_headers_are_ignored_unless_the_proxy_is_trusted(tmp_path: Path) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "syndicate.newsroom.example", "Origin": PUBLIC}
    async with dash_with(tmp_path) as dash:
        assert (await _login_from(dash, forwarded)).status == 403
        resp = await _login_from(dash, {})
        assert resp.status == 303 and "Secure" not in _set_cookie(resp, "syndicate_session")
    async with dash_with(tmp_path, trusted_proxies=["127.0.0.1/32", "::1"]) as dash:
        resp = await _login_from(dash, forwarded)
        assert resp.status == 303 and "Secure" in _set_cookie(resp, "syndicate_session")
        assert resp.headers["Location"] == "/dashboard/failures"
        plain = {"X-Forwarded-Proto": "http", "X-Forwarded-Host": "syndicate.newsroom.example"}
        resp = await _login_from(dash, {**plain, "Origin": "http://syndicate.newsroom.example"})
        assert resp.status == 303 and "Secure" not in _set_cookie(resp, "syndicate_session")


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("public_url", "syndicate.newsroom.example", "not an absolute http(s) URL"),
        ("public_url", "ftp://syndicate.newsroom.example", "not an absolute http(s) URL"),
        ("public_url", "https://syndicate.newsroom.example/desk", "origin only"),
        ("public_url", "https://syndicate.newsroom.example/?x=1", "origin only"),
        ("public_url", "https://ops:pw@syndicate.newsroom.example", "user name or password"),
        ("public_url", "https://syndicate.newsroom.example:99999", "invalid port"),
        ("trusted_proxies", ["10.0.0.0/8", "proxy.local"], "not an IP address or network"),
    ],
)
def test_public_url_and_trusted_proxies_are_validated_at_load(
    tmp_path: Path, key: str, value: Any, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        dashboard_settings(tmp_path, **{key: value})
    assert f"[server] {key}" in str(caught.value) and problem in str(caught.value)


# --- issue 14 (6): login throttling, logout and revoke-all ----------------------------------------------------------


def test_the_throttle_counts_failures_per_client_and_overall_in_a_sliding_window() -> None:
    throttle = LoginThrottle(per_client=3, overall=5, window=60)
    for i in range(3):
        assert throttle.check("10.0.0.1", now=100 + i) is None
        throttle.failed("10.0.0.1", now=100 + i)
    assert throttle.check("10.0.0.1", now=103) == Refusal("client", 57)  # until the first failure leaves
    assert throttle.check("10.0.0.2", now=103) is None  # another address is not held up
    assert throttle.check("10.0.0.1", now=160.5) is None  # the first left the window: one more try
    throttle.failed("10.0.0.1", now=160.5)
    assert throttle.check("10.0.0.1", now=160.5) == Refusal("client", 1)  # 101, 102 and 160.5 in the window
    throttle.succeeded("10.0.0.1")
    assert throttle.check("10.0.0.1", now=160.5) is None
    # Many addresses guessing together: the overall limit (5 in the window: 160.5 and these four).
    for n in range(4):
        throttle.failed(f"10.1.0.{n}", now=170)
    assert throttle.check("10.9.9.9", now=171) == Refusal("overall", 50)  # 101 and 102 were pruned on the way
    assert throttle.check("10.9.9.9", now=230.5) is None
    small = LoginThrottle(per_client=1, overall=10**6, window=60, max_clients=100)
    for n in range(1000):
        small.failed(f"client-{n}", now=1)
    assert len(small._clients) == 100  # bounded memory under a flood of addresses


@contextlib.asynccontextmanager
async def dash_clocked(tmp_path: Path, clock: FakeClock, **server: Any) -> AsyncIterator[Dash]:
    settings = dashboard_settings(tmp_path, **server)
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            async with TestClient(TestServer(create_app(settings, engine, clock=clock.now))) as client:
                yield Dash(client, engine)
    finally:
        await store.close()


async def test_wrong_tokens_are_throttled_per_address_and_overall_with_retry_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    async with dash_clocked(tmp_path, clock, trusted_proxies=["127.0.0.1", "::1"]) as dash:

        async def attempt(token: str, client: str) -> ClientResponse:
            dash.client.session.cookie_jar.clear()  # a fresh login form each time, as a script would
            page = await dash.client.get("/dashboard/login")
            csrf = _hidden(await page.text(), "csrf")
            return await dash.client.post(
                "/dashboard/login",
                data={"csrf": csrf, "token": token, "next": "/"},
                headers={"X-Forwarded-For": client},
                allow_redirects=False,
            )

        guesses = [f"guess-{n:04d}-0123456789abcdef" for n in range(PER_CLIENT)]
        with caplog.at_level(logging.WARNING, logger="syndicate.dashboard"):
            for guess in guesses:
                assert (await attempt(guess, "203.0.113.7")).status == 401
            refused = await attempt(API_TOKEN, "203.0.113.7")  # even the right token: it is not even checked
        assert refused.status == 429 and int(refused.headers["Retry-After"]) == int(WINDOW_SECONDS)
        assert "请 300 秒后再试" in await refused.text()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == PER_CLIENT + 1 and all("203.0.113.7" in w for w in warnings)
        assert not any(g in w or API_TOKEN in w for g in guesses for w in warnings)
        assert (await attempt(API_TOKEN, "198.51.100.1")).status == 303  # another address is not held up
        clock.advance(WINDOW_SECONDS + 1)
        assert (await attempt(API_TOKEN, "203.0.113.7")).status == 303

        # Overall: many addresses, a few guesses each.
        for n in range(OVERALL):
            assert (await attempt(f"guess-{n:04d}-0123456789abcdef", f"192.0.2.{n % 50}")).status == 401
        refused = await attempt(API_TOKEN, "198.51.100.99")
        assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1


async def _fresh_session(dash: Dash) -> str:
    """Log in as a new browser would; the session cookie's value."""
    dash.client.session.cookie_jar.clear()
    cookie = (await dash.login_response()).cookies["syndicate_session"].value
    dash.client.session.cookie_jar.clear()
    return cookie


async def _page_with(dash: Dash, cookie: str, path: str = "/") -> ClientResponse:
    return await dash.client.get(path, headers={"Cookie": f"syndicate_session={cookie}"}, allow_redirects=False)


async def test_logout_revokes_the_session_on_the_server(dash: Dash) -> None:
    mine, other = await _fresh_session(dash), await _fresh_session(dash)
    page = await _page_with(dash, mine, "/dashboard/channels")
    csrf = _hidden(await page.text(), "csrf")
    resp = await dash.client.post(
        "/dashboard/logout",
        data={"csrf": csrf},
        headers={"Cookie": f"syndicate_session={mine}"},
        allow_redirects=False,
    )
    assert resp.status == 303
    # The cookie, replayed after the logout (as a copy of it would be), is no session any more...
    resp = await _page_with(dash, mine)
    assert resp.status == 303 and resp.headers["Location"].startswith("/dashboard/login")
    assert (await _page_with(dash, mine, "/dashboard/board.json")).status == 401
    # ...and another browser's session is untouched.
    assert (await _page_with(dash, other)).status == 200


async def test_sessions_revoke_all_ends_every_session(dash: Dash, tmp_path: Path) -> None:
    cookies = [await _fresh_session(dash), await _fresh_session(dash)]
    for cookie in cookies:
        assert (await _page_with(dash, cookie)).status == 200
    config = tmp_path / "ops.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "dash.db"}"\n', encoding="utf-8")
    run = await run_cli("sessions", "revoke-all", "--config", config, cwd=tmp_path)
    assert run.code == 0 and "revoked" in run.out, run.err
    for cookie in cookies:
        assert (await _page_with(dash, cookie)).status == 303
    assert await dash.login() == 303  # a new login works at once
    assert (await dash.client.get("/", allow_redirects=False)).status == 200
