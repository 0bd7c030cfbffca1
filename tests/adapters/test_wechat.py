"""The WeChat Official Account channel against the sandbox stand-in, through the Engine."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from adapters.reach_curve import set_standin_clock
from adapters.wechat import standin as wx
from adapters.wechat.adapter import (
    WeChatAdapter,
    WeChatArticle,
    WeChatPayload,
    WeChatRetraction,
    article_reach,
    body_image_sources,
    wechat_html,
)
from syndicate.channel import register
from syndicate.config import Settings
from syndicate.delivery import Action, Payload, Permanent, RateLimited, ReachMetric, Receipt, RenderError, Retryable
from syndicate.engine import Engine
from syndicate.sandbox import RunningSandbox
from syndicate.store.base import ChannelAccess, DeliveryFilter, DeliveryRecord, SharedKeys, State, Store
from syndicate.story import Story
from tests.support import ctx_for, make_settings, make_story

register(WeChatAdapter)

CALLBACK_TOKEN = "callback-token-1"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
TITLE = "上海16区融媒体中心全部建成并挂牌"


def channel(sandbox: RunningSandbox, **kw: Any) -> dict[str, Any]:
    return {
        "kind": "wechat",
        "api_base": sandbox.url,
        "app_id": wx.DEFAULT_APP_ID,
        "app_secret": wx.DEFAULT_APP_SECRET,
        "token": CALLBACK_TOKEN,
        "timeout": 0.5,
        "retry": [0, 0.05, 0.05, 0.05, 0.05, 0.05],
        **kw,
    }


def story(sandbox: RunningSandbox, **fields: Any) -> Story:
    media = f"{sandbox.url}/media"
    base: dict[str, Any] = {
        "by": "轩召强 葛俊俊",
        "body_html": (
            f'<p>宝山汇<script>alert(1)</script></p><iframe src="https://evil.example"></iframe>'
            f'<p><a href="https://elsewhere.example">外链</a></p><img src="{media}/story-blue-640x360.png" alt="a">'
            f'<p style="color:red">正文</p><img src="{media}/story-green-800x800.png" alt="b">'
        ),
        "images": [
            {"href": f"{media}/story-amber-1200x675.png", "role": "cover"},
            {"href": f"{media}/story-blue-640x360.png", "role": "inline"},
        ],
    }
    base.update(fields)
    return make_story(**base)


async def start(settings: Settings, store: Store, **kw: Any) -> Engine:
    engine = Engine(settings, store, **kw)
    await engine.start()
    return engine


async def deliveries(store: Store) -> list[DeliveryRecord]:
    return await store.list_deliveries(DeliveryFilter(channels=["wechat"]))


async def run_once(settings: Settings, store: Store, *stories: Story, horizon: float = 1.0) -> list[DeliveryRecord]:
    engine = await start(settings, store)
    try:
        for s in stories:
            await engine.accept(s)
        await engine.run(until_idle=True, idle_horizon=horizon)
    finally:
        await engine.close()
    return await deliveries(store)


# ---- rendering


def test_render_reduces_the_body_and_trims_to_wechat_limits(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, {"wechat": channel_stub()})
    adapter = settings.channels["wechat"].create_adapter()
    long = make_story(
        headline="标" * 40,
        by="作" * 20,
        summary="摘" * 200,
        body_html='<p onclick="x()">正文<script>alert(1)</script></p><iframe src="https://e.example"></iframe>'
        '<p><a href="https://e.example">链接</a></p><img src="https://img.example/a.png"><img src="/relative.png">',
        images=[{"href": "https://img.example/cover.png", "role": "cover"}],
    )
    payload = adapter.render(long, Action.PUBLISH)
    data = payload.data.root
    assert isinstance(data, WeChatArticle)
    assert len(data.title) == 32 and data.title.endswith("…")
    assert len(data.author) == 16 and len(data.digest) == 128
    content = data.content
    for banned in ("<script", "<iframe", "onclick", "<a ", "relative.png"):
        assert banned not in content
    assert "链接" in content  # a link's text stays
    assert data.body_images == ["https://img.example/a.png"]
    assert any("title cut" in w for w in payload.warnings)
    assert any("relative.png" in w for w in payload.warnings)
    with pytest.raises(RenderError, match="cover"):
        adapter.render(make_story(images=[]), Action.PUBLISH)
    with pytest.raises(RenderError, match="20000"):
        adapter.render(
            make_story(body_html="<p>" + "字" * 20_001 + "</p>", images=[{"href": "https://i.example/c.png"}]),
            Action.PUBLISH,
        )


def test_body_html_helpers_keep_what_wechat_keeps() -> None:
    cleaned = wechat_html(
        '<p style="x">a</p><img src="https://i.example/a.png?x=1&amp;y=2"><img src="https://i.example/a.png?x=1&amp;y=2">'
    )
    assert "style" not in cleaned
    assert body_image_sources(cleaned) == ["https://i.example/a.png?x=1&y=2"]


def channel_stub() -> dict[str, Any]:
    return {"kind": "wechat", "app_id": "wx1", "app_secret": "s"}


# ---- the whole flow


async def test_whole_flow_publishes_once_with_wechat_images(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    [d] = await run_once(settings, store, story(sandbox))
    assert d.state is State.DELIVERED, d.last_error
    assert wx.counts(sandbox.sandbox) == {TITLE: {"drafts": 1, "submits": 1}}
    [article] = wx.articles(sandbox.sandbox).values()
    assert d.receipt is not None and d.receipt.url == article["url"]
    content = article["articles"][0]["content"]
    sources = re.findall(r'<img[^>]*src="([^"]+)"', content)
    assert len(sources) == 2 and all(s.startswith("http://mmbiz.qpic.cn/") for s in sources)
    assert "<script" not in content and "<iframe" not in content and "elsewhere.example" not in content
    sent = article["articles"][0]
    assert sent["content_source_url"] == "https://news.example.cn/shanghai/story-1.html"
    assert sent["author"] == "轩召强 葛俊俊"
    uploads = [r for r in sandbox.sandbox.received("wechat") if r.receiver == "media/uploadimg"]
    assert len(uploads) == 2  # the two distinct body images, each once
    assert wx.tokens_issued(sandbox.sandbox) == 1
    # freepublish/submit's msg_data_id is kept with publish_id: article statistics are keyed by it.
    assert article["msg_data_id"] and d.checkpoint["msg_data_id"] == article["msg_data_id"]
    assert d.receipt.raw["msg_data_id"] == article["msg_data_id"]
    assert d.receipt.raw["publish_id"] == article["publish_id"] and d.receipt.remote_id in wx.articles(sandbox.sandbox)


async def test_a_success_event_without_article_id_is_confirmed_with_freepublish_get(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    """A PUBLISHJOBFINISH success that carries no article_id used to make the receipt's remote id the string "None":
    nothing a retraction could delete."""
    wx.configure(sandbox.sandbox, publish_delay=0.5)
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    engine = await start(settings, store)
    try:
        await engine.accept(story(sandbox))
        await engine.run(until_idle=True, idle_horizon=0)
        [d] = await deliveries(store)
        assert d.state is State.RETRY_WAIT and d.checkpoint.get("publish_id")
        key = f"wechat:publish-event:{wx.DEFAULT_APP_ID}:{d.checkpoint['publish_id']}"
        event = {"publish_status": 0, "article_id": None, "article_url": None}
        await store.kv_set(key, json.dumps(event), expires_at=time.time() + 600, now=time.time())
        await engine.run(until_idle=True, idle_horizon=3)
    finally:
        await engine.close()
    [d] = await deliveries(store)
    assert d.state is State.DELIVERED, d.last_error
    [article_id] = wx.articles(sandbox.sandbox)
    assert d.receipt is not None and d.receipt.remote_id == article_id
    assert d.checkpoint["confirmed_by"] == "freepublish/get"


async def test_still_publishing_waits_honestly_then_delivers(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    wx.configure(sandbox.sandbox, publish_delay=1.5)
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    engine = await start(settings, store)
    try:
        await engine.accept(story(sandbox))
        await engine.run(until_idle=True, idle_horizon=0)
        [d] = await deliveries(store)
        assert d.state is State.RETRY_WAIT
        assert d.last_error is not None and "still publishing" in d.last_error
        await engine.run(until_idle=True, idle_horizon=5)
    finally:
        await engine.close()
    [d] = await deliveries(store)
    assert d.state is State.DELIVERED, d.last_error
    assert wx.counts(sandbox.sandbox)[TITLE] == {"drafts": 1, "submits": 1}


async def test_failed_review_is_permanent_with_wechats_reason(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    wx.set_outcome(sandbox.sandbox, TITLE, 4)
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    [d] = await run_once(settings, store, story(sandbox))
    assert d.state is State.FAILED
    assert d.last_platform_code == "4" and "rejected by WeChat's review" in (d.last_error or "")


# ---- the token


async def test_token_expiring_mid_flow_is_refreshed_and_the_flow_resumes(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    engine = await start(settings, store)
    adapter = engine.channels["wechat"].adapter
    assert isinstance(adapter, WeChatAdapter)
    original = adapter._make_draft

    async def expire_then_draft(*args: Any) -> None:
        wx.expire_tokens(sandbox.sandbox)  # the token runs out between the uploads and the draft
        await original(*args)

    adapter._make_draft = expire_then_draft  # type: ignore[method-assign]
    try:
        await engine.accept(story(sandbox))
        await engine.run(until_idle=True, idle_horizon=1)
    finally:
        await engine.close()
    [d] = await deliveries(store)
    assert d.state is State.DELIVERED, d.last_error
    assert d.attempts == 1  # refreshed inside the attempt, nothing repeated
    assert wx.tokens_issued(sandbox.sandbox) == 2
    assert wx.forced_refreshes(sandbox.sandbox) == 0  # an expired token is replaced by normal mode
    assert wx.counts(sandbox.sandbox)[TITLE] == {"drafts": 1, "submits": 1}
    covers = [r for r in sandbox.sandbox.received("wechat") if r.receiver == "material/add_material"]
    assert len(covers) == 1


def token_calls(sandbox: RunningSandbox) -> list[tuple[str, Any]]:
    """Every token request the stand-in got: (endpoint, force_refresh)."""
    return [
        (r.receiver, (r.body or {}).get("force_refresh"))
        for r in sandbox.sandbox.received("wechat")
        if r.receiver in ("token", "stable_token")
    ]


async def test_tokens_come_from_stable_token_in_normal_mode(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    """cgi-bin/token ends the previous token five minutes after each call; stable_token's normal mode does not."""
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    [d] = await run_once(settings, store, story(sandbox))
    assert d.state is State.DELIVERED, d.last_error
    assert token_calls(sandbox) == [("stable_token", False)]


async def test_a_refused_token_wechat_still_hands_out_is_force_refreshed_once(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    """40001 from an API call: normal mode first (another worker may have the next token already); only when it hands
    back the refused token does the adapter force a refresh, which WeChat allows 20 times a day."""
    wx.inject(sandbox.sandbox, "draft/add", errcode=40001)
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    [d] = await run_once(settings, store, story(sandbox))
    assert d.state is State.DELIVERED, d.last_error
    assert d.attempts == 1
    assert token_calls(sandbox) == [("stable_token", False), ("stable_token", False), ("stable_token", True)]
    assert wx.forced_refreshes(sandbox.sandbox) == 1 and wx.tokens_issued(sandbox.sandbox) == 2
    assert wx.counts(sandbox.sandbox)[TITLE] == {"drafts": 1, "submits": 1}


@pytest.mark.parametrize(("errcode", "error", "pause"), [(89507, "RateLimited", 3600.0), (89503, "AuthRevoked", None)])
async def test_stable_token_ip_refusals_pause_the_channel(
    sandbox: RunningSandbox, store: Store, tmp_path: Path, errcode: int, error: str, pause: float | None
) -> None:
    wx.inject(sandbox.sandbox, "stable_token", errcode=errcode)
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    [d] = await run_once(settings, store, story(sandbox), horizon=0)
    assert d.state is State.RETRY_WAIT and d.last_error_class == error and d.last_platform_code == str(errcode)
    paused = (await store.channel_states())["wechat"].paused_until
    assert paused is not None
    if pause is not None:
        assert abs(paused - (time.time() + pause)) < 60
    else:
        assert paused > time.time() + 3600 and "confirm" in (d.last_error or "")


@pytest.mark.parametrize("errcode", [40125, 40001])
async def test_wrong_secret_pauses_the_channel(
    sandbox: RunningSandbox, store: Store, tmp_path: Path, errcode: int
) -> None:
    """WeChat's token page gives 40001 for a wrong AppSecret too: from the token call it is no stale token."""
    wx.configure(sandbox.sandbox, wrong_secret_errcode=errcode)
    settings = make_settings(tmp_path, {"wechat": channel(sandbox, app_secret="wrong")})
    [d] = await run_once(settings, store, story(sandbox), horizon=0)
    assert d.state is State.RETRY_WAIT and d.last_error_class == "AuthRevoked"
    assert "app_secret" in (d.last_error or "")
    states = await store.channel_states()
    assert states["wechat"].paused_until is not None and states["wechat"].paused_until > time.time() + 3600


async def test_stand_in_stable_token_follows_the_documented_modes(sandbox: RunningSandbox) -> None:
    """Normal mode repeats the token; force_refresh ends it at once (30 s apart, 20 a day); the last five minutes
    hand over to a new one with the old still working; cgi-bin/token's tokens and stable_token's are isolated."""
    base = f"{sandbox.url}/cgi-bin"
    creds = {"grant_type": "client_credential", "appid": wx.DEFAULT_APP_ID, "secret": wx.DEFAULT_APP_SECRET}

    async with aiohttp.ClientSession() as session:

        async def stable(**body: Any) -> dict[str, Any]:
            async with session.post(f"{base}/stable_token", json={**creds, **body}) as resp:
                assert resp.status == 200
                answer: dict[str, Any] = await resp.json()
                return answer

        async def works(token: str) -> int:
            async with session.get(f"{base}/draft/count", params={"access_token": token}) as resp:
                return int((await resp.json()).get("errcode", 0))

        first = await stable()
        assert first["expires_in"] == 7200 and (await stable())["access_token"] == first["access_token"]
        assert (await stable(force_refresh=False))["access_token"] == first["access_token"]
        async with session.get(f"{base}/token", params=creds) as resp:  # the other interface
            assert "access_token" in await resp.json()
        wx.configure(sandbox.sandbox, token_grace=0)
        async with session.get(f"{base}/token", params=creds) as resp:
            plain = (await resp.json())["access_token"]
        assert await works(first["access_token"]) == 0  # cgi-bin/token never ends a stable token...

        forced = await stable(force_refresh=True)
        assert forced["access_token"] != first["access_token"]
        assert await works(first["access_token"]) == 40001 and await works(forced["access_token"]) == 0
        assert await works(plain) == 0  # ...nor a forced stable_token a cgi-bin/token one
        again = await stable(force_refresh=True)  # within 30 s: no refresh
        assert again["access_token"] == forced["access_token"] and wx.forced_refreshes(sandbox.sandbox) == 1

        wx.configure(sandbox.sandbox, stable_renew_before=7200)  # every token is now in its last minutes
        handed_over = await stable()
        assert handed_over["access_token"] != forced["access_token"]
        assert await works(forced["access_token"]) == 0 and await works(handed_over["access_token"]) == 0
        wx.configure(sandbox.sandbox, stable_renew_before=300, force_spacing=0, force_per_day=2)
        await stable(force_refresh=True)
        assert (await stable(force_refresh=True))["errcode"] == 45009  # the third of the day

        refusals = {
            "grant_type": ({"grant_type": "password"}, 40002),
            "appid": ({"appid": ""}, 41002),
            "secret": ({"secret": ""}, 41004),
            "unknown app": ({"appid": "wx-nobody"}, 40013),
            "wrong secret": ({"secret": "wrong"}, 40125),
            "force_refresh": ({"force_refresh": "yes"}, 40097),
        }
        for what, (change, errcode) in refusals.items():
            assert (await stable(**change)).get("errcode") == errcode, what
        async with session.post(f"{base}/stable_token", data=b"grant_type=client_credential") as resp:
            assert (await resp.json())["errcode"] == 47001  # POST JSON only
        secrets_seen = [r.body for r in sandbox.sandbox.received("wechat") if r.receiver == "stable_token"]
        assert all("secret" not in (body or {}) for body in secrets_seen)


# ---- errors


async def test_daily_quota_pauses_the_channel_and_resumes_at_submit(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    wx.inject(sandbox.sandbox, "freepublish/submit", errcode=45009)
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    [d] = await run_once(settings, store, story(sandbox), horizon=0)
    assert d.state is State.RETRY_WAIT and d.last_error_class == "RateLimited" and d.last_platform_code == "45009"
    paused = (await store.channel_states())["wechat"].paused_until
    assert paused is not None and paused > time.time() + 60
    assert d.checkpoint.get("draft_media_id") and not d.checkpoint.get("submit_pending")
    assert wx.counts(sandbox.sandbox)[TITLE] == {"drafts": 1, "submits": 0}


async def test_invalid_media_id_makes_the_cover_again(sandbox: RunningSandbox, store: Store, tmp_path: Path) -> None:
    wx.inject(sandbox.sandbox, "draft/add", errcode=40007)
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    [d] = await run_once(settings, store, story(sandbox))
    assert d.state is State.DELIVERED, d.last_error
    covers = [r for r in sandbox.sandbox.received("wechat") if r.receiver == "material/add_material"]
    assert len(covers) == 2
    assert wx.counts(sandbox.sandbox)[TITLE] == {"drafts": 1, "submits": 1}


@pytest.mark.parametrize(
    "endpoint",
    ["material/add_material", "media/uploadimg", "draft/add", "freepublish/submit", "freepublish/get"],
)
async def test_timeout_after_each_step_still_makes_one_draft_and_one_submit(
    sandbox: RunningSandbox, store: Store, tmp_path: Path, endpoint: str
) -> None:
    wx.inject(sandbox.sandbox, endpoint, hang_after=True)
    settings = make_settings(tmp_path, {"wechat": channel(sandbox, timeout=0.3)})
    [d] = await run_once(settings, store, story(sandbox), horizon=3)
    assert d.state is State.DELIVERED, d.last_error
    assert d.attempts >= 2
    assert wx.counts(sandbox.sandbox)[TITLE] == {"drafts": 1, "submits": 1}
    assert len(wx.articles(sandbox.sandbox)) == 1


async def test_worker_killed_between_submit_and_confirm_confirms_after_restart(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    first = await start(settings, store, worker_id="A")
    adapter = first.channels["wechat"].adapter
    assert isinstance(adapter, WeChatAdapter)
    reached = asyncio.Event()

    async def hang(ctx: Any) -> Any:
        reached.set()
        await asyncio.Event().wait()  # the worker dies here: never confirms

    adapter._confirm = hang  # type: ignore[method-assign]
    stop = asyncio.Event()
    try:
        await first.accept(story(sandbox))
        runner = asyncio.create_task(first.run(stop=stop, grace=0.05))
        await asyncio.wait_for(reached.wait(), 5)
        stop.set()
        await asyncio.wait_for(runner, 5)
    finally:
        await first.close()
    [d] = await deliveries(store)
    assert d.state is not State.DELIVERED and d.reconcile
    assert d.checkpoint.get("publish_id")

    second = await start(settings, store, worker_id="B")
    try:
        await second.run(until_idle=True, idle_horizon=1)
    finally:
        await second.close()
    [d] = await deliveries(store)
    assert d.state is State.DELIVERED, d.last_error
    assert wx.counts(sandbox.sandbox)[TITLE] == {"drafts": 1, "submits": 1}
    assert d.receipt is not None and d.receipt.remote_id in wx.articles(sandbox.sandbox)


# ---- reconciliation pages back through freepublish/batchget


async def reconcile(sandbox: RunningSandbox, tmp_path: Path, *, queued_at: float | None) -> tuple[Any, list[int]]:
    """Look up an unanswered submit of this channel's story (cover ``thumb-ours``) the way a retry does; answers
    (receipt or the error raised, the batchget offsets read)."""
    adapter = make_settings(tmp_path, {"wechat": channel(sandbox)}).channels["wechat"].create_adapter()
    assert isinstance(adapter, WeChatAdapter)
    payload = adapter.render(story(sandbox), Action.PUBLISH)
    state = {"thumb_media_id": "thumb-ours", "draft_media_id": "draft-ours", "submit_pending": time.time() - 5}
    ctx = ctx_for(channel="wechat", state=state, queued_at=queued_at)
    await adapter.start()
    try:
        outcome: Any = await adapter.lookup(payload, ctx)
    except Exception as exc:  # the test asserts which
        outcome = exc
    finally:
        await adapter.close()
    offsets = [
        int(r.body["offset"]) for r in sandbox.sandbox.received("wechat") if r.receiver == "freepublish/batchget"
    ]
    return outcome, offsets


async def test_reconciliation_finds_the_article_beyond_the_first_page(sandbox: RunningSandbox, tmp_path: Path) -> None:
    now = time.time()
    ours = wx.add_article(sandbox.sandbox, TITLE, thumb_media_id="thumb-ours", update_time=now - 30)
    for n in range(25):  # editors published more than a page since
        wx.add_article(sandbox.sandbox, f"控制台发布 {n}", update_time=now - 20 + n / 10)
    receipt, offsets = await reconcile(sandbox, tmp_path, queued_at=now - 60)
    assert isinstance(receipt, Receipt) and receipt.remote_id == ours, receipt
    assert receipt.url == wx.articles(sandbox.sandbox)[ours]["url"]
    assert offsets == [0, 20]


async def test_reconciliation_stops_paging_at_the_deliverys_queueing(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """Nothing this delivery made is older than its queueing: pages past it are not read (WeChat bills every call)."""
    now = time.time()
    queued_at = now - 60
    for n in range(45):  # last month's articles, three pages of them
        wx.add_article(sandbox.sandbox, f"上月 {n}", update_time=queued_at - 86400 + n)
    for n in range(25):  # and a page and a bit published since the queueing, none of them ours
        wx.add_article(sandbox.sandbox, f"控制台发布 {n}", update_time=now - 20 + n / 10)
    outcome, offsets = await reconcile(sandbox, tmp_path, queued_at=queued_at)
    assert isinstance(outcome, Retryable) and outcome.pending, outcome  # WeChat may still be publishing it
    assert offsets == [0, 20]
    sandbox.sandbox.clear("wechat")  # the log only: the articles stay
    _, unbounded = await reconcile(sandbox, tmp_path, queued_at=None)  # without a queueing time: the whole list
    assert unbounded == [0, 20, 40, 60]


# ---- the callback


@pytest.fixture
async def callback_server(store: Store, tmp_path: Path, sandbox: RunningSandbox) -> AsyncIterator[tuple[str, Any]]:
    """The channel's web routes served as `syndicate serve` mounts them; yields (callback URL, settings factory)."""
    servers: list[web.AppRunner] = []

    async def serve(**kw: Any) -> tuple[str, Settings]:
        settings = make_settings(tmp_path, {"wechat": channel(sandbox, **kw)})
        adapter = settings.channels["wechat"].create_adapter()
        app = web.Application()
        app.add_routes(adapter.web_routes(ChannelAccess.of(store, "wechat")))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        servers.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}/wechat/wechat/callback", settings

    yield "", serve
    for runner in servers:
        await runner.cleanup()


@pytest.mark.parametrize("safe_mode", [False, True])
async def test_publishjobfinish_callback_confirms_first(
    sandbox: RunningSandbox, store: Store, callback_server: tuple[str, Any], safe_mode: bool
) -> None:
    extra = {"encoding_aes_key": AES_KEY} if safe_mode else {}
    url, settings = await callback_server[1](**extra)
    wx.configure(
        sandbox.sandbox,
        publish_delay=0.5,
        callback_url=url,
        callback_token=CALLBACK_TOKEN,
        callback_aes_key=AES_KEY if safe_mode else None,
    )
    engine = await start(settings, store)
    try:
        await engine.accept(story(sandbox))
        await engine.run(until_idle=True, idle_horizon=4)
    finally:
        await engine.close()
    [d] = await deliveries(store)
    assert d.state is State.DELIVERED, d.last_error
    assert d.checkpoint["confirmed_by"] == "the PUBLISHJOBFINISH event"
    assert [c["status"] for c in wx.callbacks(sandbox.sandbox)] == [200]
    gets = [r for r in sandbox.sandbox.received("wechat") if r.receiver == "freepublish/get"]
    assert len(gets) == 1  # the first check (still publishing); the second came from the event


async def test_callback_with_a_bad_signature_is_refused_and_stores_nothing(
    sandbox: RunningSandbox, store: Store, callback_server: tuple[str, Any]
) -> None:
    url, _settings = await callback_server[1]()
    cfg = wx.WeChatConfig(callback_token=CALLBACK_TOKEN)
    answer = {
        "publish_status": 0,
        "article_id": "a-1",
        "article_detail": {"count": 1, "item": [{"idx": 1, "article_url": "https://mp.weixin.qq.com/s/a-1"}]},
    }
    xml = wx.publish_event_xml(wx.DEFAULT_APP_ID, "777", answer)
    query, body = wx.signed_callback(cfg, wx.DEFAULT_APP_ID, xml)
    key = f"wechat:publish-event:{wx.DEFAULT_APP_ID}:777"
    async with aiohttp.ClientSession() as session:
        forged = {**query, "signature": "0" * 40}
        async with session.post(url, params=forged, data=body.encode()) as resp:
            assert resp.status == 403
        assert await store.kv_get(key, now=time.time()) is None
        async with session.post(url, params=query, data=body.encode()) as resp:
            assert resp.status == 200 and await resp.text() == "success"
    stored = json.loads(await store.kv_get(key, now=time.time()) or "{}")
    assert stored == {"publish_status": 0, "article_id": "a-1", "article_url": "https://mp.weixin.qq.com/s/a-1"}


# ---- update and retract


async def test_retract_deletes_the_article_and_the_draft(sandbox: RunningSandbox, store: Store, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    first = story(sandbox)
    await run_once(settings, store, first)
    await run_once(settings, store, Story.from_dict({"id": first.id, "version": 2, "pubstatus": "canceled"}))
    _publish, retract = await deliveries(store)
    assert retract.action is Action.RETRACT and retract.state is State.DELIVERED, retract.last_error
    [article] = wx.articles(sandbox.sandbox).values()
    assert article["deleted"] is True
    assert wx.drafts(sandbox.sandbox) == {}


async def test_update_is_skipped_by_default_and_republished_on_request(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    await run_once(settings, store, story(sandbox))
    await run_once(settings, store, story(sandbox, version=2, headline="更正:" + TITLE))
    rows = await deliveries(store)
    assert rows[-1].state is State.SKIPPED and "cannot edit a published article" in (rows[-1].note or "")

    republish = make_settings(tmp_path, {"wechat": channel(sandbox, update_policy="republish")})
    await run_once(republish, store, story(sandbox, version=3, headline="再更正:" + TITLE))
    rows = await deliveries(store)
    assert rows[-1].state is State.DELIVERED, rows[-1].last_error
    live = [a for a in wx.articles(sandbox.sandbox).values() if not a["deleted"]]
    assert [a["articles"][0]["title"] for a in live] == ["再更正:" + TITLE]


# ---- payloads queued before the typed payload model

#: WeChat payloads as deliveries queued before the typed payload model hold them (rendered by the earlier code
#: and saved as JSON): they must still load and send after the upgrade.
STORED_ARTICLE = {
    "data": {
        "action": "publish",
        "title": "上海16区融媒体中心全部建成并挂牌",
        "author": "轩召强 葛俊俊",
        "digest": "上海分两批、共16个区级融媒体中心已全部建成并挂牌。",
        "content": '<p>宝山汇</p><p>外链</p><img src="{media}/story-blue-640x360.png" alt="a"><p>正文</p>'
        '<img src="{media}/story-green-800x800.png" alt="b">',
        "content_source_url": "https://news.example.cn/shanghai/story-1.html",
        "cover": "{media}/story-amber-1200x675.png",
        "body_images": ["{media}/story-blue-640x360.png", "{media}/story-green-800x800.png"],
        "need_open_comment": 0,
        "only_fans_can_comment": 0,
    },
    "text_length": 171,
    "warnings": [],
}
STORED_RETRACTION = {"data": {"action": "retract", "story_id": "story-1"}, "text_length": None, "warnings": []}


def test_payloads_in_the_stored_shape_load_and_dump_back_unchanged(tmp_path: Path) -> None:
    adapter = make_settings(tmp_path, {"wechat": channel_stub()}).channels["wechat"].create_adapter()
    article = adapter.load_payload(Payload.from_json(STORED_ARTICLE))
    retraction = adapter.load_payload(Payload.from_json(STORED_RETRACTION))
    assert isinstance(article.data, WeChatPayload) and isinstance(article.data.root, WeChatArticle)
    assert article.data.root.body_images == STORED_ARTICLE["data"]["body_images"]  # type: ignore[index]
    assert retraction.data.root == WeChatRetraction(action="retract", story_id="story-1")
    assert article.to_json() == STORED_ARTICLE and retraction.to_json() == STORED_RETRACTION
    # Today's renderer writes that very shape.
    rendered = adapter.render(make_story(images=[{"href": "https://i.example/c.png", "role": "cover"}]), Action.RETRACT)
    assert rendered.to_json() == STORED_RETRACTION
    with pytest.raises(Permanent, match=r"'wechat' payload model .*surprise"):
        adapter.load_payload(Payload.from_json({"data": {**STORED_ARTICLE["data"], "surprise": 1}}))  # type: ignore[dict-item]


async def test_an_article_stored_in_the_earlier_shape_is_sent_the_same_way(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    """The engine loads the stored payload through load_payload and runs every step from it."""
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    raw = json.loads(json.dumps(STORED_ARTICLE).replace("{media}", f"{sandbox.url}/media"))
    engine = await start(settings, store)
    adapter = engine.channels["wechat"].adapter
    # Today's renderer writes that very shape for the same story.
    assert adapter.render(story(sandbox), Action.PUBLISH).to_json()["data"] == raw["data"]
    rendered: list[Any] = []

    def stored_shape(story: Story, action: Action) -> Payload[Any]:
        rendered.append(action)
        return Payload.from_json(raw)  # what the earlier version of the channel stored

    adapter.render = stored_shape  # type: ignore[method-assign]
    try:
        await engine.accept(story(sandbox))
        await engine.run(until_idle=True, idle_horizon=1)
    finally:
        await engine.close()
    [d] = await deliveries(store)
    assert rendered == [Action.PUBLISH]
    assert d.state is State.DELIVERED, d.last_error
    assert wx.counts(sandbox.sandbox) == {TITLE: {"drafts": 1, "submits": 1}}
    [article] = wx.articles(sandbox.sandbox).values()
    sent = article["articles"][0]
    assert sent["author"] == "轩召强 葛俊俊" and sent["digest"] == raw["data"]["digest"]
    assert sent["content_source_url"] == raw["data"]["content_source_url"]
    sources = re.findall(r'<img[^>]*src="([^"]+)"', sent["content"])
    assert len(sources) == 2 and all(s.startswith("http://mmbiz.qpic.cn/") for s in sources)
    uploads = [r for r in sandbox.sandbox.received("wechat") if r.receiver == "media/uploadimg"]
    assert len(uploads) == 2


async def test_the_live_check_uses_the_shared_token_and_never_replaces_it(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    """`channels --check` used to fetch a token of its own, which ends the workers' shared one minutes later."""
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    [d] = await run_once(settings, store, story(sandbox))
    assert d.state is State.DELIVERED and wx.tokens_issued(sandbox.sandbox) == 1
    adapter = settings.channels["wechat"].create_adapter()
    await adapter.start()
    try:
        detail = await adapter.check(SharedKeys(store))
    finally:
        await adapter.close()
    assert "shared access token" in detail
    assert wx.tokens_issued(sandbox.sandbox) == 1  # the workers' token still stands


async def test_the_check_without_the_store_leaves_the_shared_token_standing(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    """Without the store the check asks for a token of its own: through stable_token's normal mode that is the
    workers' token again, not a new one that ends theirs (cgi-bin/token's did, five minutes later)."""
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    [d] = await run_once(settings, store, story(sandbox))
    assert d.state is State.DELIVERED
    adapter = settings.channels["wechat"].create_adapter()
    await adapter.start()
    try:
        detail = await adapter.check()
    finally:
        await adapter.close()
    assert "stable_token" in detail and "normal mode" in detail
    assert wx.tokens_issued(sandbox.sandbox) == 1


@pytest.fixture
async def photo_desk() -> AsyncIterator[str]:
    """A newsroom's image server on loopback: a press photo over 1 MB and a WebP, as editors upload them."""
    from tests.adapters.test_wechat_images import press_photo

    photo = press_photo(quality=97)
    webp = io.BytesIO()
    Image.open(io.BytesIO(press_photo(800, 450, "PNG"))).save(webp, "WEBP")
    files = {"photo.jpg": (photo, "image/jpeg"), "cover.webp": (webp.getvalue(), "image/webp")}

    async def serve(request: web.Request) -> web.Response:
        data, kind = files[request.match_info["name"]]
        return web.Response(body=data, content_type=kind)

    app = web.Application()
    app.router.add_get("/{name}", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


async def test_photos_wechat_would_refuse_are_converted_and_a_shared_cover_is_uploaded_once(
    sandbox: RunningSandbox, store: Store, tmp_path: Path, photo_desk: str
) -> None:
    """A 1 MB+ JPEG in the body and a WebP cover used to fail the article; two stories with the same cover made two
    permanent materials (the account's quota is finite), and none was ever removed."""
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    cover = [{"href": f"{photo_desk}/cover.webp", "role": "cover"}]
    body = f'<p>现场</p><img src="{photo_desk}/photo.jpg" alt="现场">'
    one = story(sandbox, id="one", images=cover, body_html=body)
    two = story(sandbox, id="two", headline="第二条：同一张封面", images=cover, body_html=body)
    found = await run_once(settings, store, one, two)
    assert [d.state for d in found] == [State.DELIVERED, State.DELIVERED], [d.last_error for d in found]
    [material] = wx.materials(sandbox.sandbox)
    uploads = [r for r in sandbox.sandbox.received("wechat") if r.receiver == "media/uploadimg"]
    assert uploads and all(r.body["size"] < 1024 * 1024 for r in uploads)

    withdraw = {"version": 2, "pubstatus": "canceled"}
    await run_once(settings, store, Story.from_dict({"id": "one", **withdraw}))
    assert list(wx.materials(sandbox.sandbox)) == [material]  # story two's article still shows it
    await run_once(settings, store, Story.from_dict({"id": "two", **withdraw}))
    assert wx.materials(sandbox.sandbox) == {}
    retractions = [d for d in await deliveries(store) if d.action is Action.RETRACT]
    assert {d.receipt.raw["deleted"]["cover"] for d in retractions if d.receipt} == {
        "kept (another live story shows it)",
        "deleted",
    }


# ---- reach (datacube article statistics)


class Now:
    """One "now" for the adapter and the stand-in's statistics, moved by the test."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def beijing_day(at: float) -> dt.date:
    return dt.datetime.fromtimestamp(at, wx.BEIJING).date()


def beijing_time(day: dt.date, hour: int) -> float:
    return dt.datetime.combine(day, dt.time(hour), wx.BEIJING).timestamp()


async def published(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> tuple[WeChatAdapter, Receipt, str, dict[str, Any], Now]:
    """An article published through the engine, and an adapter whose clock (shared with the stand-in's statistics)
    the test moves."""
    settings = make_settings(tmp_path, {"wechat": channel(sandbox)})
    [d] = await run_once(settings, store, story(sandbox))
    assert d.state is State.DELIVERED and d.receipt is not None, d.last_error
    [(article_id, article)] = wx.articles(sandbox.sandbox).items()
    now = Now(article["published_at"])
    set_standin_clock(sandbox.sandbox, now)
    adapter = settings.channels["wechat"].create_adapter(clock=now)
    assert isinstance(adapter, WeChatAdapter)
    await adapter.start()
    return adapter, d.receipt, article_id, article, now


async def test_a_post_published_today_waits_for_tomorrows_figures(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    adapter, receipt, _, article, now = await published(sandbox, store, tmp_path)
    now.at += 60
    try:
        with pytest.raises(Retryable) as waiting:
            await adapter.read_reach(ctx_for(channel="wechat", receipt=receipt))
    finally:
        await adapter.close()
    day = beijing_day(article["published_at"])
    ready = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(8, 5), wx.BEIJING).timestamp()
    assert waiting.value.pending and waiting.value.retry_after == pytest.approx(max(ready - now.at, 60.0))
    assert not [r for r in sandbox.sandbox.received("wechat") if r.receiver.startswith("datacube/")]


async def test_before_eight_the_next_morning_the_figures_are_waited_for_too(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    """Past midnight the article's day is "yesterday", but WeChat has its figures only from 08:00: no call yet."""
    adapter, receipt, _, article, now = await published(sandbox, store, tmp_path)
    day = beijing_day(article["published_at"])
    now.at = beijing_time(day + dt.timedelta(days=1), 4)  # 04:00 the next day: a 6 h sample of a 22:00 article
    try:
        with pytest.raises(Retryable) as waiting:
            await adapter.read_reach(ctx_for(channel="wechat", receipt=receipt))
    finally:
        await adapter.close()
    assert waiting.value.pending and waiting.value.retry_after == pytest.approx(4 * 3600 + 300)
    assert not [r for r in sandbox.sandbox.received("wechat") if r.receiver.startswith("datacube/")]


async def test_read_reach_adds_up_the_days_getarticletotaldetail_reports(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    adapter, receipt, article_id, article, now = await published(sandbox, store, tmp_path)
    day = beijing_day(article["published_at"])
    now.at = beijing_time(day + dt.timedelta(days=3), 9)  # three days counted: the publication day and two more
    try:
        reading = await adapter.read_reach(ctx_for(channel="wechat", receipt=receipt))
    finally:
        await adapter.close()
    totals = wx.article_figures(article_id, article["published_at"], day + dt.timedelta(days=2))
    assert dict(reading.raw) == {**totals, "stat_days": 3}
    assert dict(reading.metrics) == {
        ReachMetric.READS: totals["read_user"],
        ReachMetric.SHARES: totals["share_user"],
        ReachMetric.LIKES: totals["like_user"],
        ReachMetric.COMMENTS: totals["comment_count"],
    }
    [call] = [r for r in sandbox.sandbox.received("wechat") if r.receiver == "datacube/getarticletotaldetail"]
    assert call.path == "/datacube/getarticletotaldetail"
    assert call.body == {"begin_date": day.isoformat(), "end_date": day.isoformat()}
    assert wx.DEFAULT_APP_SECRET not in repr(reading) and "token" not in repr(reading)


async def test_wechat_figures_grow_day_by_day_and_stop_after_thirty(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    adapter, receipt, _, article, now = await published(sandbox, store, tmp_path)
    day = beijing_day(article["published_at"])
    reads = []
    try:
        for days in (1, 2, 5, 5, 31, 45):
            now.at = beijing_time(day + dt.timedelta(days=days), 10)
            reading = await adapter.read_reach(ctx_for(channel="wechat", receipt=receipt))
            reads.append((reading.metrics[ReachMetric.READS], reading.raw["stat_days"]))
    finally:
        await adapter.close()
    assert reads[0][0] < reads[1][0] < reads[2][0]
    assert reads[2] == reads[3]  # the same post at the same time: the same figures
    assert reads[4][1] == reads[5][1] == 30 and reads[4] == reads[5]  # WeChat counts 30 days from publication


async def test_before_eight_yesterday_is_not_counted_yet(sandbox: RunningSandbox, store: Store, tmp_path: Path) -> None:
    """At 07:00 the publication day is yesterday but not counted yet: the sample waits (it used to store an empty
    reading, using the sample up), and no datacube call is made."""
    adapter, receipt, _, article, now = await published(sandbox, store, tmp_path)
    day = beijing_day(article["published_at"])
    now.at = beijing_time(day + dt.timedelta(days=1), 7)
    try:
        with pytest.raises(Retryable) as waiting:
            await adapter.read_reach(ctx_for(channel="wechat", receipt=receipt))
    finally:
        await adapter.close()
    assert waiting.value.pending and waiting.value.retry_after == pytest.approx(3900)
    assert not [r for r in sandbox.sandbox.received("wechat") if r.receiver.startswith("datacube/")]


async def test_reach_of_a_deleted_article_is_permanent(sandbox: RunningSandbox, store: Store, tmp_path: Path) -> None:
    adapter, receipt, _article_id, article, now = await published(sandbox, store, tmp_path)
    now.at = beijing_time(beijing_day(article["published_at"]) + dt.timedelta(days=2), 9)
    ctx = ctx_for(channel="wechat", receipt=receipt, action=Action.RETRACT)
    try:
        await adapter.retract(adapter.render(story(sandbox), Action.RETRACT), ctx)
        with pytest.raises(Permanent, match="deleted"):
            await adapter.read_reach(ctx_for(channel="wechat", receipt=receipt))
    finally:
        await adapter.close()


async def test_a_receipt_without_msg_data_id_cannot_be_read(sandbox: RunningSandbox, tmp_path: Path) -> None:
    adapter = make_settings(tmp_path, {"wechat": channel(sandbox)}).channels["wechat"].create_adapter()
    receipt = Receipt(remote_id="a-1", raw={"article_id": "a-1", "msg_data_id": None, "confirmed_at": time.time()})
    with pytest.raises(Permanent, match="msg_data_id"):
        await adapter.read_reach(ctx_for(channel="wechat", receipt=receipt))


async def test_reach_quota_and_token_errors_map_onto_the_taxonomy(
    sandbox: RunningSandbox, store: Store, tmp_path: Path
) -> None:
    adapter, receipt, _, article, now = await published(sandbox, store, tmp_path)
    now.at = beijing_time(beijing_day(article["published_at"]) + dt.timedelta(days=2), 9)
    detail = "datacube/getarticletotaldetail"
    try:
        wx.inject(sandbox.sandbox, detail, errcode=45009)
        with pytest.raises(RateLimited) as limited:
            await adapter.read_reach(ctx_for(channel="wechat", receipt=receipt))
        tomorrow = beijing_day(now.at) + dt.timedelta(days=1)
        assert limited.value.until == dt.datetime.combine(tomorrow, dt.time(0, 0, 30), wx.BEIJING)
        wx.inject(sandbox.sandbox, detail, errcode=-1)
        with pytest.raises(Retryable):
            await adapter.read_reach(ctx_for(channel="wechat", receipt=receipt))
        sandbox.sandbox.set_faults("wechat", [{"fault": "status:502", "name": detail}])
        with pytest.raises(Retryable, match="502"):
            await adapter.read_reach(ctx_for(channel="wechat", receipt=receipt))
        sandbox.sandbox.clear_faults("wechat")
        wx.inject(sandbox.sandbox, detail, errcode=42001)  # an expired token is refreshed and the call made again
        reading = await adapter.read_reach(ctx_for(channel="wechat", receipt=receipt))
        assert reading.metrics[ReachMetric.READS] > 0
    finally:
        await adapter.close()


async def test_the_stand_in_refuses_dates_wechat_refuses(sandbox: RunningSandbox, store: Store, tmp_path: Path) -> None:
    adapter, receipt, _, _article, now = await published(sandbox, store, tmp_path)
    today = beijing_day(now.at)
    ctx = ctx_for(channel="wechat", receipt=receipt)
    detail = "/datacube/getarticletotaldetail"
    cases = [
        ({"begin_date": "2026/12/01", "end_date": "2026-12-01"}, "61500"),
        ({"end_date": today.isoformat()}, "61500"),
        ({"begin_date": today.isoformat(), "end_date": today.isoformat()}, "61501"),  # after yesterday
        ({"begin_date": "2026-11-20", "end_date": "2026-11-19"}, "61501"),
    ]
    try:
        for body, code in cases:
            with pytest.raises(Permanent) as refused:
                await adapter._api_call(ctx, "POST", detail, what="datacube", json_body=body)
            assert refused.value.platform_code == code, body
    finally:
        await adapter.close()


def test_an_article_missing_while_wechat_is_late_waits_and_otherwise_is_gone() -> None:
    day = dt.date(2026, 12, 1)
    with pytest.raises(Retryable) as late:
        article_reach({"list": [], "is_delay": True}, "2650000001_1", day)
    assert late.value.pending
    with pytest.raises(Permanent, match="deleted"):
        article_reach({"list": [{"msgid": "2650000002_1", "detail_list": []}], "is_delay": False}, "2650000001_1", day)
