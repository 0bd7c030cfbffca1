"""The app channel: rendering, JPush pushes against the sandbox stand-in, quiet hours on a fake clock, and the
content API served through `syndicate serve`'s app with an Engine delivering to the sandbox."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

import adapters.app.adapter as app_module
from adapters.app.adapter import (
    ALERT_MAX_CHARS,
    CID_REUSE_SECONDS,
    AppAdapter,
    AppDocument,
    AppOptions,
    ImageBlock,
    PushExtras,
    QuietHours,
    RetractedStory,
    TextBlock,
    is_urgent,
)
from adapters.app.standin import DEFAULT_APP_KEY, DEFAULT_MASTER_SECRET, SandboxApp, pushes, register_app
from syndicate.channel import register
from syndicate.config import ConfigError, Settings
from syndicate.delivery import (
    Action,
    AuthRevoked,
    OutcomeUnknown,
    Payload,
    Permanent,
    RateLimited,
    RenderError,
    Retryable,
)
from syndicate.engine import Engine
from syndicate.httputil import HttpAnswer
from syndicate.sandbox import ReceiverStats, RunningSandbox
from syndicate.server import create_app
from syndicate.store import open_store
from syndicate.store.base import ChannelAccess, DeliveryFilter, State, Store
from syndicate.story import Story
from tests.support import FakeClock, example_stories, make_settings, make_story, started
from tests.support import ctx_for as support_ctx

ctx_for = functools.partial(support_ctx, channel="app")

register(AppAdapter)

SHANGHAI = dt.timezone(dt.timedelta(hours=8))
FAST_RETRY = [0, 0.05, 0.1, 0.2, 0.5]
#: Short enough that the sandbox's 3 s hold always trips it.
SHORT_TIMEOUT = 0.3


def at_shanghai(hour: int, minute: int = 0) -> float:
    return dt.datetime(2019, 9, 18, hour, minute, tzinfo=SHANGHAI).timestamp()


def app_channel(sandbox_url: str, **kw: Any) -> dict[str, Any]:
    return {
        "kind": "app",
        "api_base": sandbox_url,
        "app_key": DEFAULT_APP_KEY,
        "master_secret": DEFAULT_MASTER_SECRET,
        "timeout": 2,
        "retry": FAST_RETRY,
        **kw,
    }


AdapterFactory = Callable[..., AppAdapter]


@pytest.fixture
async def make_adapter(sandbox: RunningSandbox) -> AsyncIterator[AdapterFactory]:
    made: list[AppAdapter] = []

    def factory(timeout: float = 2.0, **options: Any) -> AppAdapter:
        raw = {"api_base": sandbox.url, "app_key": DEFAULT_APP_KEY, "master_secret": DEFAULT_MASTER_SECRET}
        adapter = AppAdapter("app", AppOptions.model_validate({**raw, **options}), timeout=timeout)
        made.append(adapter)
        return adapter

    yield factory
    for adapter in made:
        await adapter.close()


def push_requests(sandbox: RunningSandbox) -> list[Any]:
    return [r for r in sandbox.sandbox.received("jpush") if r.path == "/v3/push"]


# --- configuration ---------------------------------------------------------------------------------------------


def test_quiet_hours_windows() -> None:
    night = QuietHours.parse("22:00-07:00")
    noon = QuietHours.parse(" 12:00 - 14:30 ")
    assert str(night) == "22:00-07:00" and str(noon) == "12:00-14:30"
    assert night.contains(dt.time(23, 59)) and night.contains(dt.time(0, 0)) and night.contains(dt.time(6, 59))
    assert not night.contains(dt.time(7, 0)) and not night.contains(dt.time(21, 59))
    assert noon.contains(dt.time(12, 0)) and not noon.contains(dt.time(14, 30))
    local = dt.datetime(2019, 9, 18, 23, 0, tzinfo=SHANGHAI)
    assert night.seconds_left(local) == 8 * 3600
    assert night.seconds_left(local.replace(hour=6, minute=30)) == 1800
    assert night.seconds_left(local.replace(hour=12)) is None
    assert noon.seconds_left(local.replace(hour=13, minute=30)) == 3600
    for bad in ("22-07", "24:00-07:00", "22:00-22:00", "22:00 to 07:00"):
        with pytest.raises(ValueError):
            QuietHours.parse(bad)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("quiet_hours", "10pm-7am", "quiet_hours"),
        ("quiet_hours", 22, "quiet_hours"),
        ("timezone", "Mars/Olympus_Mons", "timezone"),
        ("platform", ["android", "symbian"], "platform"),
        ("platform", [], "platform"),
        ("master_secret", "", "master_secret"),
        ("apns", True, "apns"),
        ("api_prefix", "app/v1", "api_prefix"),
        ("api_prefix", "/app/v1/", "api_prefix"),
        ("api_prefix", "/app v1", "api_prefix"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, key: str, value: Any, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, {"app": app_channel("http://127.0.0.1:9", **{key: value})})
    assert caught.value.key is not None and caught.value.key.startswith(named)
    assert "[channels.app]" in str(caught.value)


def test_config_defaults(tmp_path: Path) -> None:
    raw = app_channel("http://127.0.0.1:9")
    del raw["api_base"]
    options = make_settings(tmp_path, {"app": raw}).channels["app"].options
    assert isinstance(options, AppOptions)
    assert str(options.api_base) == "https://api.jpush.cn/"
    assert options.quiet_hours is None and options.timezone == "Asia/Shanghai" and options.platform == "all"
    assert options.api_prefix == "/app/v1"


def test_two_app_channels_serve_their_content_apis_at_their_own_prefixes(tmp_path: Path, store: Store) -> None:
    from aiohttp import web

    settings = make_settings(
        tmp_path,
        {
            "app": app_channel("http://127.0.0.1:9"),
            "app-en": app_channel("http://127.0.0.1:9", api_prefix="/app-en/v1"),
        },
    )
    paths = {
        name: {
            r.path for r in ch.create_adapter().web_routes(ChannelAccess.of(store, name)) if isinstance(r, web.RouteDef)
        }
        for name, ch in settings.channels.items()
    }
    assert paths == {
        "app": {"/app/v1/stories", "/app/v1/stories/{story_id}"},
        "app-en": {"/app-en/v1/stories", "/app-en/v1/stories/{story_id}"},
    }
    assert set(settings.channels["app-en"].create_adapter().openapi_paths()) == paths["app-en"]


# --- rendering -------------------------------------------------------------------------------------------------


def test_publish_renders_the_app_document_and_the_push(make_adapter: AdapterFactory) -> None:
    adapter = make_adapter()
    story = example_stories()[0]
    payload = adapter.render(story, Action.PUBLISH)
    assert payload == adapter.render(story, Action.PUBLISH)  # deterministic
    assert json.loads(json.dumps(payload.to_json())) == payload.to_json()  # storable
    assert adapter.load_payload(Payload.from_json(json.loads(json.dumps(payload.to_json())))) == payload
    doc = payload.data.story
    assert isinstance(doc, AppDocument)
    assert doc.id == story.id and doc.version == 1
    assert doc.headline == story.headline and doc.byline == "轩召强 葛俊俊"
    assert doc.section == "shanghai" and doc.tags == ["融媒体", "宝山汇", "上海"]
    assert doc.published_at == "2019-09-18T18:30:00+08:00"
    assert doc.share_url == story.url
    assert doc.cover is not None
    assert doc.cover.href.endswith("story-amber-1200x675.png") and doc.cover.role == "cover"
    assert doc.cover.model_dump(mode="json")["renditions"] == [
        {"name": "original", "href": doc.cover.href, "width": 1200, "height": 675}
    ]
    assert [image.width for image in doc.images] == [640, 1200, 800]
    kinds = [block.type for block in doc.blocks]
    assert kinds[:3] == ["paragraph", "paragraph", "image"] and "heading" in kinds
    first_image = next(block for block in doc.blocks if isinstance(block, ImageBlock))
    assert first_image.caption == "上海16区融媒体客户端入驻人民号 (主办方供图)"
    assert (first_image.width, first_image.height) == (640, 360)
    assert not any("<" in block.text for block in doc.blocks if isinstance(block, TextBlock))

    push = payload.data.push
    assert push is not None
    assert push.platform == "all" and push.audience == "all"
    notification = payload.to_json()["data"]["push"]["notification"]  # the wire JSON JPush gets
    assert notification["alert"] == story.headline
    assert notification["android"]["title"] == story.headline
    assert notification["android"]["alert"] == story.summary
    assert notification["android"]["extras"] == {"story_id": story.id, "url": story.url}
    assert notification["ios"]["extras"] == {"story_id": story.id, "url": story.url}
    assert notification["ios"]["alert"]["title"] == story.headline
    assert push.options.apns_production is True and push.options.time_to_live == 86400
    assert 0 <= push.options.sendno < 2**31
    # Apps on APNs' development certificate get pushes only through the development environment.
    development = make_adapter(apns_production=False).render(story, Action.PUBLISH).data.push
    assert development is not None and development.options.apns_production is False
    assert payload.warnings == () and payload.text_length == len(story.summary or "")


def test_long_push_texts_are_cut_with_a_warning(make_adapter: AdapterFactory) -> None:
    payload = make_adapter().render(make_story(headline="快" * 200, summary="讯" * 300), Action.PUBLISH)
    assert payload.data.push is not None
    android = payload.data.push.notification.android
    assert android is not None
    assert android.title == "快" * (ALERT_MAX_CHARS - 1) + "…"
    assert android.alert == "讯" * (ALERT_MAX_CHARS - 1) + "…"
    assert isinstance(payload.data.story, AppDocument)
    assert payload.data.story.headline == "快" * 200  # the app itself shows the whole headline
    assert payload.warnings == (
        f"push title cut to {ALERT_MAX_CHARS} characters",
        f"push text cut to {ALERT_MAX_CHARS} characters",
    )
    assert payload.text_length == ALERT_MAX_CHARS


@pytest.mark.parametrize(
    ("urgency", "pushes_again"),
    [(None, False), (1, True), (2, True), (3, False), (9, False)],
)
def test_updates_push_only_when_urgent(make_adapter: AdapterFactory, urgency: int | None, pushes_again: bool) -> None:
    story = make_story(version=2, urgency=urgency)
    payload = make_adapter().render(story, Action.UPDATE)
    assert is_urgent(story) is pushes_again
    assert (payload.data.push is not None) is pushes_again
    assert isinstance(payload.data.story, AppDocument)
    assert payload.data.story.version == 2  # the content updates either way
    if not pushes_again:
        assert "update without urgency" in payload.data.push_note


def test_retract_never_pushes(make_adapter: AdapterFactory) -> None:
    payload = make_adapter().render(make_story(version=3, pubstatus="canceled", urgency=1), Action.RETRACT)
    assert payload.to_json()["data"] == {
        "action": "retract",
        "story": {"id": "story-1", "version": 3},
        "push": None,
        "push_note": "a retraction never pushes",
    }


def test_overrides_share_base_url_and_platform(make_adapter: AdapterFactory) -> None:
    adapter = make_adapter(share_base_url="https://app.example.cn/s/", platform=["android"])
    story = make_story(
        id="沪/2019-001",
        url=None,
        overrides={"app": {"headline": "App 标题", "text": "推送正文"}, "web": {"headline": "Web only"}},
    )
    payload = adapter.render(story, Action.PUBLISH)
    doc, push = payload.data.story, payload.to_json()["data"]["push"]
    assert isinstance(doc, AppDocument)
    assert doc.headline == "App 标题"
    assert doc.share_url == "https://app.example.cn/s/%E6%B2%AA%2F2019-001"
    assert push["platform"] == ["android"] and "ios" not in push["notification"]
    assert push["notification"]["android"] == {
        "alert": "推送正文",
        "title": "App 标题",
        "extras": {"story_id": "沪/2019-001", "url": doc.share_url},
    }


def test_a_headline_that_is_only_markup_cannot_be_rendered(make_adapter: AdapterFactory) -> None:
    # Intake refuses such a headline; a story stored before it did still fails its render, not the channel.
    story = make_story().model_copy(update={"headline": "<script>alert(1)</script>"})
    with pytest.raises(RenderError, match="headline"):
        make_adapter().render(story, Action.PUBLISH)


def test_an_oversized_ios_push_drops_the_url_then_refuses(make_adapter: AdapterFactory) -> None:
    long_url = "https://news.example.cn/" + "a" * 1900
    payload = make_adapter().render(make_story(url=long_url), Action.PUBLISH)
    assert payload.to_json()["data"]["push"]["notification"]["ios"]["extras"] == {"story_id": "story-1"}
    assert payload.data.push is not None and payload.data.push.notification.ios is not None
    assert payload.data.push.notification.ios.extras == PushExtras(story_id="story-1")
    assert any("share url left out" in w for w in payload.warnings)
    assert payload.data.share_url == long_url


# --- pushing against the stand-in ------------------------------------------------------------------------------


async def test_publish_pushes_once_with_basic_auth_and_a_cid(
    make_adapter: AdapterFactory, sandbox: RunningSandbox
) -> None:
    adapter = await started(make_adapter())
    story = make_story()
    payload = adapter.render(story, Action.PUBLISH)
    ctx = ctx_for()
    receipt = await adapter.publish(payload, ctx)
    [made] = pushes(sandbox.sandbox)
    assert receipt.remote_id == made["msg_id"] and receipt.url == story.url
    assert payload.data.push is not None
    assert receipt.raw["sendno"] == str(payload.data.push.options.sendno)
    [request] = push_requests(sandbox)
    token = base64.b64encode(f"{DEFAULT_APP_KEY}:{DEFAULT_MASTER_SECRET}".encode()).decode()
    assert request.header("Authorization") == f"Basic {token}"
    assert request.body == {**payload.to_json()["data"]["push"], "cid": ctx.state["cid"]}
    assert ctx.state["msg_id"] == made["msg_id"] and ctx.state["cid_unanswered"] is False

    # A retry of a delivery whose push was checkpointed sends nothing at all.
    again = await adapter.publish(payload, ctx_for(state=dict(ctx.state)))
    assert again.remote_id == receipt.remote_id
    assert len(sandbox.sandbox.received("jpush")) == 2  # the cid request and the push


async def test_update_without_urgency_and_retract_send_nothing(
    make_adapter: AdapterFactory, sandbox: RunningSandbox
) -> None:
    adapter = await started(make_adapter())
    update = adapter.render(make_story(version=2), Action.UPDATE)
    receipt = await adapter.update(update, ctx_for(version=2, action=Action.UPDATE))
    assert receipt.remote_id is None and receipt.raw["push"] is None
    retract = adapter.render(make_story(version=3, pubstatus="canceled"), Action.RETRACT)
    await adapter.retract(retract, ctx_for(version=3, action=Action.RETRACT))
    assert sandbox.sandbox.received("jpush") == []


async def test_a_timeout_after_sending_is_unknown_and_the_retry_reuses_the_cid(
    make_adapter: AdapterFactory, sandbox: RunningSandbox
) -> None:
    adapter = await started(make_adapter(timeout=SHORT_TIMEOUT))
    payload = adapter.render(make_story(), Action.PUBLISH)
    sandbox.sandbox.set_faults("jpush", [{"fault": "timeout_after", "methods": ["POST"]}])
    ctx = ctx_for()
    with pytest.raises(OutcomeUnknown, match="same cid"):
        await adapter.publish(payload, ctx)
    assert len(pushes(sandbox.sandbox)) == 1  # it did land; only the answer was lost
    assert ctx.state["cid_unanswered"] is True
    sandbox.sandbox.clear_faults()
    receipt = await adapter.publish(payload, ctx_for(state=dict(ctx.state)))
    [made] = pushes(sandbox.sandbox)
    assert receipt.remote_id == made["msg_id"]
    assert [r.idempotency_key for r in push_requests(sandbox)] == [ctx.state["cid"]] * 2


async def test_an_expired_cid_that_may_have_landed_is_not_resent(
    make_adapter: AdapterFactory, sandbox: RunningSandbox
) -> None:
    clock = FakeClock()
    adapter = await started(make_adapter())
    adapter.clock = clock.now
    payload = adapter.render(make_story(), Action.PUBLISH)
    old = {"cid": f"{DEFAULT_APP_KEY}-old", "cid_at": clock.now() - CID_REUSE_SECONDS - 1}
    receipt = await adapter.publish(payload, ctx_for(state={**old, "cid_unanswered": True}))
    assert receipt.remote_id is None and receipt.raw["push"] == "not_resent"
    assert "sendno" in receipt.raw["note"] and sandbox.sandbox.received("jpush") == []

    # The same old cid whose attempt JPush answered (it did not push) is simply replaced by a new one.
    ctx = ctx_for(state={**old, "cid_unanswered": False})
    receipt = await adapter.publish(payload, ctx)
    assert receipt.remote_id == pushes(sandbox.sandbox)[0]["msg_id"] and ctx.state["cid"] != old["cid"]


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        ("status:401", AuthRevoked, "401"),
        ("status:403", AuthRevoked, "403"),
        ("status:400", Permanent, "400"),
        ("status:500", Retryable, "500"),
        ("status:503", Retryable, "503"),
        ("reset", OutcomeUnknown, None),
    ],
)
async def test_http_failures_of_the_push_map_onto_the_taxonomy(
    make_adapter: AdapterFactory, sandbox: RunningSandbox, fault: str, error: type[Exception], code: str | None
) -> None:
    adapter = await started(make_adapter())
    sandbox.sandbox.set_faults("jpush", [{"fault": fault, "methods": ["POST"]}])
    with pytest.raises(error) as caught:
        await adapter.publish(adapter.render(make_story(), Action.PUBLISH), ctx_for())
    assert getattr(caught.value, "platform_code", None) == code
    assert pushes(sandbox.sandbox) == []


async def test_a_429_pauses_until_retry_after(make_adapter: AdapterFactory, sandbox: RunningSandbox) -> None:
    adapter = await started(make_adapter())
    sandbox.sandbox.set_faults("jpush", [{"fault": "rate_limit:30", "methods": ["POST"]}])
    before = time.time()
    with pytest.raises(RateLimited) as caught:
        await adapter.publish(adapter.render(make_story(), Action.PUBLISH), ctx_for())
    assert before + 29 <= caught.value.until.timestamp() <= time.time() + 31


async def test_jpush_2002_pauses_until_the_rate_window_resets(
    make_adapter: AdapterFactory, sandbox: RunningSandbox
) -> None:
    register_app(sandbox.sandbox, SandboxApp("tiny-app", "tiny-secret", rate_limit=1))
    adapter = await started(make_adapter(app_key="tiny-app", master_secret="tiny-secret"))
    before = time.time()
    with pytest.raises(RateLimited) as caught:  # the cid request used the window's one call
        await adapter.publish(adapter.render(make_story(), Action.PUBLISH), ctx_for())
    assert caught.value.platform_code == "2002"
    assert before + 1 <= caught.value.until.timestamp() <= time.time() + 61


@pytest.mark.parametrize(
    ("app_key", "secret", "code"),
    [(DEFAULT_APP_KEY, "wrong-secret", "1004"), ("no-such-app", "whatever", "1008")],
)
async def test_wrong_credentials_pause_the_channel(
    make_adapter: AdapterFactory, sandbox: RunningSandbox, app_key: str, secret: str, code: str
) -> None:
    adapter = await started(make_adapter(app_key=app_key, master_secret=secret))
    with pytest.raises(AuthRevoked, match="check app_key and master_secret") as caught:
        await adapter.publish(adapter.render(make_story(), Action.PUBLISH), ctx_for())
    assert caught.value.platform_code == code
    with pytest.raises(AuthRevoked):
        await adapter.check()
    assert pushes(sandbox.sandbox) == []


async def test_a_refused_push_is_permanent_with_jpush_code_and_message(
    make_adapter: AdapterFactory, sandbox: RunningSandbox
) -> None:
    adapter = await started(make_adapter())
    good = adapter.render(make_story(), Action.PUBLISH)
    stored = good.to_json()
    stored["data"]["push"]["platform"] = ["android"]  # and the notification still has its ios section
    ctx = ctx_for()
    with pytest.raises(
        Permanent, match=r"JPush 1003: notification\.ios is given but platform does not include"
    ) as caught:
        await adapter.publish(adapter.load_payload(Payload.from_json(stored)), ctx)
    assert caught.value.platform_code == "1003"
    assert ctx.state["cid_unanswered"] is False  # JPush answered: nothing went out with that cid


async def test_no_device_to_push_to_still_delivers_the_story(
    make_adapter: AdapterFactory, sandbox: RunningSandbox
) -> None:
    register_app(sandbox.sandbox, SandboxApp("fresh-app", "fresh-secret", devices=False))
    adapter = await started(make_adapter(app_key="fresh-app", master_secret="fresh-secret"))
    receipt = await adapter.publish(adapter.render(make_story(), Action.PUBLISH), ctx_for())
    assert receipt.remote_id is None and receipt.raw["push"] == "no_target" and "1011" in receipt.raw["note"]


async def test_check_proves_credentials_without_pushing(make_adapter: AdapterFactory, sandbox: RunningSandbox) -> None:
    adapter = await started(make_adapter())
    assert "accepted the credentials" in await adapter.check()
    assert pushes(sandbox.sandbox) == []


async def test_connection_refused_is_retryable(make_adapter: AdapterFactory) -> None:
    adapter = await started(make_adapter(api_base="http://127.0.0.1:9"))
    with pytest.raises(Retryable, match="cid"):
        await adapter.publish(adapter.render(make_story(), Action.PUBLISH), ctx_for())


# --- payloads stored before the payload model ------------------------------------------------------------------

#: An urgent update (document and push) and a retraction as deliveries queued before the payload model stored them
#: (rendered by the untyped channel, named "app").
STORED_UPDATE: dict[str, Any] = {
    "data": {
        "action": "update",
        "story": {
            "id": "shape-1",
            "version": 2,
            "headline": "宝山汇 上线",
            "subheadline": None,
            "summary": "摘要",
            "byline": "记者 王",
            "section": "本地",
            "tags": [
                "宝山",
            ],
            "language": "zh-CN",
            "urgency": 1,
            "published_at": "2026-11-30T08:00:00+08:00",
            "updated_at": None,
            "share_url": "https://news.example.cn/shape-1.html",
            "cover": {
                "href": "https://cdn.example/a.png",
                "width": 640,
                "height": 360,
                "alt": "图",
                "caption": None,
                "role": "cover",
                "renditions": [
                    {
                        "name": "original",
                        "href": "https://cdn.example/a.png",
                        "width": 640,
                        "height": 360,
                    },
                ],
            },
            "images": [
                {
                    "href": "https://cdn.example/a.png",
                    "width": 640,
                    "height": 360,
                    "alt": "图",
                    "caption": None,
                    "role": "cover",
                    "renditions": [
                        {
                            "name": "original",
                            "href": "https://cdn.example/a.png",
                            "width": 640,
                            "height": 360,
                        },
                    ],
                },
            ],
            "blocks": [
                {
                    "type": "heading",
                    "text": "小标题",
                },
                {
                    "type": "paragraph",
                    "text": "第一段",
                },
                {
                    "type": "image",
                    "src": "https://cdn.example/a.png",
                    "alt": "图",
                    "caption": "说明",
                    "width": 640,
                    "height": 360,
                },
            ],
        },
        "push": {
            "platform": "all",
            "audience": "all",
            "notification": {
                "alert": "宝山汇 上线",
                "android": {
                    "alert": "摘要",
                    "title": "宝山汇 上线",
                    "extras": {
                        "story_id": "shape-1",
                        "url": "https://news.example.cn/shape-1.html",
                    },
                },
                "ios": {
                    "alert": {
                        "title": "宝山汇 上线",
                        "body": "摘要",
                    },
                    "sound": "default",
                    "extras": {
                        "story_id": "shape-1",
                        "url": "https://news.example.cn/shape-1.html",
                    },
                },
            },
            "options": {
                "sendno": 270462792,
                "time_to_live": 86400,
                "apns_production": True,
                "apns_collapse_id": "shape-1",
            },
        },
        "push_note": "urgent update (urgency 1): push",
    },
    "text_length": 2,
    "warnings": [],
}
STORED_RETRACT: dict[str, Any] = {
    "data": {
        "action": "retract",
        "story": {
            "id": "shape-1",
            "version": 3,
        },
        "push": None,
        "push_note": "a retraction never pushes",
    },
    "text_length": None,
    "warnings": [],
}


async def test_payloads_stored_before_the_payload_model_still_load_and_push_the_same_bytes(
    make_adapter: AdapterFactory, sandbox: RunningSandbox
) -> None:
    adapter = await started(make_adapter())
    update = adapter.load_payload(Payload.from_json(STORED_UPDATE))
    retract = adapter.load_payload(Payload.from_json(STORED_RETRACT))
    assert update.to_json() == STORED_UPDATE and retract.to_json() == STORED_RETRACT
    assert isinstance(update.data.story, AppDocument) and isinstance(retract.data.story, RetractedStory)

    sent: list[bytes] = []
    transmit = adapter.request

    async def recording(method: str, url: str, **kwargs: Any) -> HttpAnswer:
        if method == "POST":
            sent.append(kwargs["data"])
        return await transmit(method, url, **kwargs)

    adapter.request = recording  # type: ignore[method-assign]
    ctx = ctx_for(version=2, action=Action.UPDATE, story_id="shape-1")
    receipt = await adapter.update(update, ctx)
    assert receipt.url == "https://news.example.cn/shape-1.html" and receipt.remote_id == ctx.state["msg_id"]
    # What the untyped channel sent for this stored payload: the stored push object with the attempt's cid.
    push = {**STORED_UPDATE["data"]["push"], "cid": ctx.state["cid"]}
    assert sent == [json.dumps(push, ensure_ascii=False, separators=(",", ":")).encode()]
    assert (await adapter.retract(retract, ctx_for(version=3, action=Action.RETRACT))).raw["push"] is None


def test_a_stored_payload_of_the_wrong_shape_is_refused_on_load(make_adapter: AdapterFactory) -> None:
    adapter = make_adapter()
    data = STORED_UPDATE["data"]
    retract_with_document = {**data, "action": "retract", "push": None}
    without_extras = json.loads(json.dumps(data))
    del without_extras["push"]["notification"]["android"]["extras"]
    for broken in (retract_with_document, without_extras, {**data, "push": {**data["push"], "cid": "c"}}):
        with pytest.raises(Permanent, match="app' payload model"):
            adapter.load_payload(Payload.from_json({"data": broken}))


# --- through the engine ----------------------------------------------------------------------------------------


async def open_migrated(settings: Settings) -> Store:
    store = open_store(settings.store.url)
    await store.migrate()
    return store


async def wait_until(check: Callable[[], Awaitable[bool]], deadline: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while loop.time() < end:
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{check.__name__} did not happen within {deadline} s")


async def get_json(client: TestClient, path: str, **headers: str) -> tuple[int, Any, Any]:
    resp = await client.get(path, headers=headers)
    raw = await resp.read()
    return resp.status, (json.loads(raw) if raw else None), resp


async def test_push_on_first_publish_only_then_urgent_updates_and_no_push_on_retract(
    tmp_path: Path, sandbox: RunningSandbox
) -> None:
    settings = make_settings(tmp_path, {"app": app_channel(sandbox.url)})
    store = await open_migrated(settings)
    stories = example_stories()
    try:
        async with Engine(settings, store) as engine:
            for story in stories:
                await engine.accept(story)
            await engine.run(until_idle=True, idle_horizon=2)
            made = pushes(sandbox.sandbox)
            assert sorted(p["body"]["notification"]["android"]["extras"]["story_id"] for p in made) == sorted(
                s.id for s in stories
            )

            first = stories[0]
            await engine.accept(first.model_copy(update={"version": 2, "headline": "更正:上海16区融媒体中心"}))
            await engine.run(until_idle=True, idle_horizon=2)
            assert len(pushes(sandbox.sandbox)) == 3  # a plain update does not push

            await engine.accept(first.model_copy(update={"version": 3, "urgency": 1}))
            await engine.run(until_idle=True, idle_horizon=2)
            urgent = pushes(sandbox.sandbox)[3:]
            assert [p["body"]["notification"]["ios"]["extras"]["story_id"] for p in urgent] == [first.id]

            await engine.accept(Story.from_dict({"id": first.id, "version": 4, "pubstatus": "canceled"}))
            await engine.run(until_idle=True, idle_horizon=2)
            assert len(pushes(sandbox.sandbox)) == 4  # a retraction never pushes

            rows = await store.list_deliveries(DeliveryFilter(channels=["app"]))
            assert {d.state for d in rows} == {State.DELIVERED}
            assert [d.action for d in rows if d.story_id == first.id] == [
                Action.PUBLISH,
                Action.UPDATE,
                Action.UPDATE,
                Action.RETRACT,
            ]

            async with TestClient(TestServer(create_app(settings, engine))) as client:
                status, body, resp = await get_json(client, f"/app/v1/stories/{first.id}")
                assert status == 410 and body["error"] == "gone" and body["version"] == 4
                assert resp.headers["Cache-Control"] == "public, max-age=300"
                status, body, _ = await get_json(client, "/app/v1/stories")
                assert [s["id"] for s in body["stories"]] == [s.id for s in reversed(stories[1:])]
    finally:
        await store.close()


async def test_a_push_whose_answer_was_lost_is_retried_by_the_engine_and_lands_once(
    tmp_path: Path, sandbox: RunningSandbox
) -> None:
    """The channel is idempotent through JPush's cid: the engine re-sends instead of parking it as unknown."""
    settings = make_settings(tmp_path, {"app": app_channel(sandbox.url, timeout=SHORT_TIMEOUT)})
    store = await open_migrated(settings)
    sandbox.sandbox.set_faults("jpush", [{"fault": "timeout_after", "methods": ["POST"]}])
    stop = asyncio.Event()
    try:
        async with Engine(settings, store) as engine:
            await engine.accept(make_story())
            runner = asyncio.create_task(engine.run(stop=stop))

            async def fault_fired() -> bool:
                return bool(sandbox.sandbox.stats("jpush").get(DEFAULT_APP_KEY, ReceiverStats()).faults)

            async def delivered() -> bool:
                return (await store.list_deliveries(DeliveryFilter()))[0].state is State.DELIVERED

            await wait_until(fault_fired)
            sandbox.sandbox.clear_faults()
            await wait_until(delivered)
            stop.set()
            await runner
        [delivery] = await store.list_deliveries(DeliveryFilter())
        [made] = pushes(sandbox.sandbox)
        assert delivery.receipt is not None and delivery.receipt.remote_id == made["msg_id"]
        first_attempt, *_ = await store.attempts(delivery.id)
        assert first_attempt.error_class == "OutcomeUnknown"
        assert len(push_requests(sandbox)) >= 2  # re-sent with the same cid, pushed once
        assert {r.idempotency_key for r in push_requests(sandbox)} == {made["cid"]}
    finally:
        await store.close()


async def test_quiet_hours_defer_the_push_but_not_the_story(tmp_path: Path, sandbox: RunningSandbox) -> None:
    clock = FakeClock(start=at_shanghai(21, 0))
    settings = make_settings(tmp_path, {"app": app_channel(sandbox.url, quiet_hours="22:00-07:00")})
    store = await open_migrated(settings)
    early, late = make_story(id="early"), make_story(id="late", headline="深夜快讯")
    try:
        async with Engine(settings, store, clock=clock) as engine:
            engine.channels["app"].adapter.clock = clock.now  # type: ignore[attr-defined]
            await engine.accept(early)
            await engine.run(until_idle=True, idle_horizon=0)
            assert len(pushes(sandbox.sandbox)) == 1  # 21:00: outside the quiet hours

            clock.t = at_shanghai(23, 0)
            await engine.accept(late)
            await engine.accept(early.model_copy(update={"version": 2, "urgency": 1, "headline": "更新:早间快讯"}))
            await engine.run(until_idle=True, idle_horizon=0)
            assert len(pushes(sandbox.sandbox)) == 1
            waiting = await store.list_deliveries(DeliveryFilter(states=[State.RETRY_WAIT]))
            assert sorted(d.story_id for d in waiting) == ["early", "late"]
            for d in waiting:
                assert d.last_error_class == "Retryable"
                assert d.last_error is not None and "quiet hours 22:00-07:00 (Asia/Shanghai)" in d.last_error
                assert d.due_at == at_shanghai(23, 0) + 8 * 3600

            async with TestClient(TestServer(create_app(settings, engine))) as client:
                _, listing, _ = await get_json(client, "/app/v1/stories")
                assert [(s["id"], s["version"]) for s in listing["stories"]] == [("early", 2), ("late", 1)]
                status, doc, _ = await get_json(client, "/app/v1/stories/late")
                assert status == 200 and doc["headline"] == "深夜快讯"

                clock.t = at_shanghai(7, 0) + 86400
                await engine.run(until_idle=True, idle_horizon=0)
                made = pushes(sandbox.sandbox)
                assert sorted(p["body"]["notification"]["android"]["extras"]["story_id"] for p in made[1:]) == [
                    "early",
                    "late",
                ]
                rows = await store.list_deliveries(DeliveryFilter())
                assert {d.state for d in rows} == {State.DELIVERED}
                _, after, _ = await get_json(client, "/app/v1/stories")
                assert after == listing
    finally:
        await store.close()


# --- the content API -------------------------------------------------------------------------------------------

XSS_STORY = {
    "id": "xss-1",
    "headline": "Breaking <script>alert(1)</script>news",
    "summary": "<img src=x onerror=alert(2)>summary",
    "body_html": (
        '<p onclick="steal()">hi<script>alert(3)</script></p>'
        '<img src="https://evil.example/x.png" onerror="alert(4)">'
        "<p>&lt;script&gt;alert(5)&lt;/script&gt;</p>"
        '<iframe src="https://evil.example/"></iframe><a href="javascript:alert(6)">link</a>'
    ),
    "section": "shanghai",
}


@pytest.fixture
async def content_api(tmp_path: Path, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    monkeypatch.setattr(app_module, "_PAGE", 2)  # make paging fetch several store pages
    settings = make_settings(tmp_path, {"app": app_channel(sandbox.url)})
    store = await open_migrated(settings)
    try:
        async with Engine(settings, store) as engine:
            for story in [*example_stories(), make_story(**XSS_STORY)]:
                await engine.accept(story)
            await engine.run(until_idle=True, idle_horizon=2)
            async with TestClient(TestServer(create_app(settings, engine))) as client:
                yield client
    finally:
        await store.close()


NEWEST_FIRST = ["xss-1", "sh-rmt-20190918-003", "sh-rmt-20190918-002", "sh-rmt-20190918-001"]


async def test_list_is_newest_first_cached_and_etagged(content_api: TestClient) -> None:
    status, body, resp = await get_json(content_api, "/app/v1/stories")
    assert status == 200
    assert [s["id"] for s in body["stories"]] == NEWEST_FIRST and body["next_cursor"] is None
    assert resp.headers["Cache-Control"] == "public, max-age=60"
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    teaser = body["stories"][3]
    assert teaser["headline"].startswith("上海16区融媒体中心全部建成") and "blocks" not in teaser
    assert teaser["cover"]["width"] == 1200
    etag = resp.headers["ETag"]
    status, body, resp = await get_json(content_api, "/app/v1/stories", **{"If-None-Match": etag})
    assert status == 304 and body is None and resp.headers["ETag"] == etag
    status, _, _ = await get_json(content_api, "/app/v1/stories", **{"If-None-Match": '"something-else"'})
    assert status == 200
    status, _, resp = await get_json(content_api, "/app/v1/stories?limit=2", **{"If-None-Match": etag})
    assert status == 200 and resp.headers["ETag"] != etag


async def test_cursor_paging_visits_every_story_once(content_api: TestClient) -> None:
    seen: list[str] = []
    path = "/app/v1/stories?limit=1"
    while True:
        _, body, _ = await get_json(content_api, path)
        seen += [s["id"] for s in body["stories"]]
        if body["next_cursor"] is None:
            break
        path = f"/app/v1/stories?limit=1&cursor={body['next_cursor']}"
    assert seen == NEWEST_FIRST


async def test_section_filter_keeps_paging_right(content_api: TestClient) -> None:
    _, body, _ = await get_json(content_api, "/app/v1/stories?section=shanghai")
    assert [s["id"] for s in body["stories"]] == ["xss-1", "sh-rmt-20190918-003", "sh-rmt-20190918-001"]
    _, first, _ = await get_json(content_api, "/app/v1/stories?section=shanghai&limit=2")
    assert [s["id"] for s in first["stories"]] == ["xss-1", "sh-rmt-20190918-003"]
    _, second, _ = await get_json(
        content_api, f"/app/v1/stories?section=shanghai&limit=2&cursor={first['next_cursor']}"
    )
    assert [s["id"] for s in second["stories"]] == ["sh-rmt-20190918-001"] and second["next_cursor"] is None
    _, none, _ = await get_json(content_api, "/app/v1/stories?section=sports")
    assert none == {"stories": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("query", "parameter"),
    [("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"), ("cursor=abc", "cursor")],
)
async def test_bad_list_parameters_are_named(content_api: TestClient, query: str, parameter: str) -> None:
    status, body, _ = await get_json(content_api, f"/app/v1/stories?{query}")
    assert status == 400
    assert body["error"] == "invalid_parameter" and body["parameter"] == parameter and parameter in body["message"]


async def test_item_is_the_structured_story(content_api: TestClient) -> None:
    status, doc, resp = await get_json(content_api, "/app/v1/stories/sh-rmt-20190918-002")
    assert status == 200 and resp.headers["Cache-Control"] == "public, max-age=300"
    assert doc["headline"] == "“宝山汇”APP已正式上线" and doc["byline"] == "轩召强 葛俊俊"
    assert doc["share_url"] == "https://news.example.cn/baoshan/2019/09/sh-rmt-20190918-002.html"
    assert [b["type"] for b in doc["blocks"]] == ["paragraph", "image", "paragraph"]
    assert doc["blocks"][1]["caption"] == "“宝山汇”APP已正式上线" and doc["blocks"][1]["width"] == 800
    assert "“宝山汇”".encode() in await resp.read()  # UTF-8, not \\u escapes
    status, _, again = await get_json(content_api, "/app/v1/stories/sh-rmt-20190918-002", **{"If-None-Match": "*"})
    assert status == 304 and again.headers["ETag"] == resp.headers["ETag"]
    weak = f"W/{resp.headers['ETag']}"
    assert (await get_json(content_api, "/app/v1/stories/sh-rmt-20190918-002", **{"If-None-Match": weak}))[0] == 304
    status, body, _ = await get_json(content_api, "/app/v1/stories/no-such-story")
    assert status == 404 and body["error"] == "not_found"


async def test_an_xss_story_reaches_the_app_without_markup(content_api: TestClient, sandbox: RunningSandbox) -> None:
    resp = await content_api.get("/app/v1/stories/xss-1")
    raw = await resp.read()
    for needle in (b"<script", b"<img", b"<", b"onclick", b"onerror", b"javascript:", b"alert(3)", b"iframe"):
        assert needle not in raw
    doc = json.loads(raw)
    assert doc["headline"] == "Breaking news" and doc["summary"] == "summary"
    assert doc["blocks"] == [
        {"type": "paragraph", "text": "hi"},
        {
            "type": "image",
            "src": "https://evil.example/x.png",
            "alt": None,
            "caption": None,
            "width": None,
            "height": None,
        },
        {"type": "paragraph", "text": "<script>alert(5)</script>"},  # the author's text, shown as text
        {"type": "paragraph", "text": "link"},
    ]
    [push] = [
        p for p in pushes(sandbox.sandbox) if p["body"]["notification"]["android"]["extras"]["story_id"] == "xss-1"
    ]
    assert "<" not in json.dumps(push["body"], ensure_ascii=False)


class _ZeroDigest:
    def digest(self) -> bytes:
        return bytes(32)


async def test_the_sendno_is_never_zero_and_the_cid_count_is_one_every_app_may_ask(
    make_adapter: AdapterFactory, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JPush reads sendno 0 as "no sendno" (its range is a non-zero int) and the stand-in refuses it: a key whose
    hash starts with four zero bytes must still get a sendno the console can show. The cid request asks for one:
    an app without VIP may ask for 1 to 10."""

    class ZeroHashlib:
        @staticmethod
        def sha256(data: bytes = b"") -> Any:
            return _ZeroDigest()

        def __getattr__(self, name: str) -> Any:
            return getattr(hashlib, name)

    adapter = await started(make_adapter())
    with monkeypatch.context() as patched:
        patched.setattr("adapters.app.adapter.hashlib", ZeroHashlib())
        payload = adapter.render(make_story(), Action.PUBLISH)
    assert payload.data.push is not None and payload.data.push.options.sendno == 1
    receipt = await adapter.publish(payload, ctx_for())
    assert receipt.raw["sendno"] == "1"
    [cid_request] = [r for r in sandbox.sandbox.received("jpush") if r.path == "/v3/push/cid"]
    assert cid_request.query["count"] == "1"


async def test_each_story_the_app_reads_counts_once_for_its_reach(tmp_path: Path, sandbox: RunningSandbox) -> None:
    settings = make_settings(tmp_path, {"app": app_channel(sandbox.url)})
    store = await open_migrated(settings)
    try:
        async with Engine(settings, store) as engine:
            for story in example_stories():
                await engine.accept(story)
            await engine.run(until_idle=True, idle_horizon=2)
            async with TestClient(TestServer(create_app(settings, engine))) as client:
                status, _, _ = await get_json(client, "/app/v1/stories/sh-rmt-20190918-002")
                assert status == 200
                again = await get_json(client, "/app/v1/stories/sh-rmt-20190918-002", **{"If-None-Match": "*"})
                assert again[0] == 304  # the app showed the copy it holds: a read all the same
                assert (await get_json(client, "/app/v1/stories"))[0] == 200  # a list is no read of a story
                assert (await get_json(client, "/app/v1/stories/no-such-story"))[0] == 404
        reach = await store.story_reach("sh-rmt-20190918-002")
        assert [(p.channel, p.metric.value, p.value) for p in reach.points] == [("app", "reads", 2)]
        assert (await store.story_reach("sh-rmt-20190918-001")).points == []
        assert (await store.story_reach("no-such-story")).points == []
    finally:
        await store.close()
