"""The Weibo channel: rendering (Weibo's counting, safe domain) and delivery through the engine to the stand-in."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from adapters.reach_curve import set_standin_clock
from adapters.textfit import ELLIPSIS, weibo_length
from adapters.weibo.adapter import MIN_WINDOW_PAUSE, RateLimitStatus, WeiboAdapter, WeiboOptions, WeiboPayload
from adapters.weibo.standin import (
    COUNT_PATH,
    DEFAULT_ACCESS_TOKEN,
    REPEATED_TEXT,
    TEXT_TOO_LONG,
    delete_status,
    set_daily_limit,
    set_rate_limit,
    set_token,
    status_counts,
    statuses,
    weibo_count,
)
from syndicate.channel import DeliveryContext, register
from syndicate.delivery import (
    Action,
    AuthExpired,
    Payload,
    Permanent,
    RateLimited,
    ReachMetric,
    Receipt,
    RenderError,
    Retryable,
)
from syndicate.httputil import HttpAnswer
from syndicate.sandbox import RunningSandbox
from syndicate.store.base import DeliveryFilter, DeliveryRecord, State, Store
from syndicate.story import Story
from tests.support import FakeClock, ctx_for, engine_for, example_stories, make_settings, make_story

register(WeiboAdapter)

SHORT_TIMEOUT = 0.3


def channel(sandbox_url: str, **kw: Any) -> dict[str, Any]:
    return {
        "kind": "weibo",
        "api_base": sandbox_url,
        "access_token": DEFAULT_ACCESS_TOKEN,
        "safe_domain": "news.example.cn",
        "rip": "203.0.113.10",
        "timeout": 2,
        "retry": [0, 0.05, 0.05, 0.05],
        **kw,
    }


def adapter(**kw: Any) -> WeiboAdapter:
    values: dict[str, Any] = {"access_token": "t", "safe_domain": "news.example.cn", "rip": "203.0.113.10", **kw}
    return WeiboAdapter("weibo", WeiboOptions(**values), timeout=1)


# ------------------------------------------------------------------------------------------------ render


def test_render_fits_a_chinese_example_within_weibos_140() -> None:
    story = example_stories()[0]
    payload = adapter().render(story, Action.PUBLISH)
    assert payload.data == WeiboPayload(
        status=f"【{story.headline}】{story.summary} {story.url}",
        pic="http://127.0.0.1:8765/media/story-amber-1200x675.png",
        story_url=story.url,
    )
    assert payload.text_length == weibo_length(payload.data.status) == weibo_count(payload.data.status) == 93
    assert payload.warnings == (
        'tags not added as hashtags: Weibo\'s statuses/share refuses a status containing "#topic#"',
    )
    assert adapter().render(story, Action.PUBLISH) == payload  # deterministic


def test_render_english_and_mixed_stories_read_well_and_fit() -> None:
    english = make_story(
        language="en",
        headline="Shanghai opens the last of its 16 district media centres",
        summary=(
            "All sixteen district-level media centres in Shanghai are now open. The Baoshan centre launched its "
            "first product, the Baoshan Hui app, on September 18, two weeks ahead of the plan the city set in "
            "April. Residents can use it for news, government services and local information."
        ),
        url="https://news.example.cn/en/media-centres.html",
    )
    post = adapter().render(english, Action.PUBLISH)
    assert post.data.status == (
        "Shanghai opens the last of its 16 district media centres: All sixteen district-level media centres in "
        "Shanghai are now open. The Baoshan centre launched its first product, the Baoshan Hui app, on September "
        f"18{ELLIPSIS} https://news.example.cn/en/media-centres.html"
    )
    assert post.text_length is not None and post.text_length <= 140
    mixed = make_story(
        headline="“宝山汇”APP正式上线",
        summary="宝山区融媒体中心推出综合性App“宝山汇”,以“新闻+政务+服务+互动”为定位,与KNEWS、澎湃新闻等近20家媒体合作。"
        * 3,
    )
    post = adapter().render(mixed, Action.PUBLISH)
    assert post.data.status.startswith("【“宝山汇”APP正式上线】宝山区融媒体中心推出综合性App")
    assert post.data.status.endswith(f"{ELLIPSIS} https://news.example.cn/shanghai/story-1.html")
    assert post.text_length == weibo_count(post.data.status) <= 140
    assert any("summary cut at a sentence boundary" in w for w in post.warnings)


def test_render_refuses_a_story_off_the_safe_domain_and_one_without_url() -> None:
    with pytest.raises(RenderError, match=r"not on the channel's safe domain news\.example\.cn"):
        adapter().render(make_story(url="https://elsewhere.example.com/a.html"), Action.PUBLISH)
    with pytest.raises(RenderError, match="url: Weibo's statuses/share needs"):
        adapter().render(make_story(url=None), Action.PUBLISH)
    # A subdomain of the safe domain is on it; the override replaces headline and summary.
    story = make_story(url="https://m.news.example.cn/a.html", overrides={"weibo": {"text": "微博专用文字"}})
    assert adapter().render(story, Action.PUBLISH).data.status == "微博专用文字 https://m.news.example.cn/a.html"


def test_capabilities_and_config() -> None:
    weibo = adapter()
    assert weibo.actions == frozenset({Action.PUBLISH}) and weibo.supports_lookup and not weibo.idempotent
    assert "offers no way to delete" in weibo.unsupported_reason(Action.RETRACT)
    with pytest.raises(ValueError, match="bare host name"):
        WeiboOptions(access_token="t", safe_domain="https://news.example.cn/")


# ------------------------------------------------------------------------------------------------ engine


async def deliveries(store: Store) -> list[DeliveryRecord]:
    return await store.list_deliveries(DeliveryFilter())


async def test_publish_shares_text_and_cover_and_skips_update_and_retract(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    story = make_story(images=[{"href": f"{sandbox.url}/media/story-blue-640x360.png", "role": "cover"}])
    async with engine_for(tmp_path, store, {"weibo": channel(sandbox.url)}) as engine:
        await engine.accept(story)
        await engine.run(until_idle=True, idle_horizon=2)
        await engine.accept(make_story(version=2, headline="更正后的标题"))
        await engine.accept(Story.from_dict({"id": "story-1", "version": 3, "pubstatus": "canceled"}))
        await engine.run(until_idle=True, idle_horizon=2)
    publish, update, retract = await deliveries(store)
    assert publish.state is State.DELIVERED and publish.receipt is not None
    [posted] = statuses(sandbox.sandbox)
    assert publish.receipt.remote_id == posted["idstr"]
    assert publish.receipt.url == f"https://weibo.com/1900000001/{posted['idstr']}"
    assert posted["text"].startswith("【上海16区融媒体中心全部建成并挂牌】") and "http://t.cn/" in posted["text"]
    [request] = sandbox.sandbox.received("weibo")
    assert request.path == "/2/statuses/share.json"
    assert request.body["pic"]["content_type"] == "image/png" and request.body["pic"]["size"] > 0
    assert request.body["status"] == publish.payload.data["status"]  # the stored form: the plain JSON object
    for skipped in (update, retract):
        assert skipped.state is State.SKIPPED and "statuses/share API offers no way" in (skipped.note or "")


async def test_story_off_the_safe_domain_fails_at_render_before_any_request(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    async with engine_for(tmp_path, store, {"weibo": channel(sandbox.url)}) as engine:
        await engine.accept(make_story(url="https://elsewhere.example.com/x.html"))
        await engine.run(until_idle=True, idle_horizon=0)
    [delivery] = await deliveries(store)
    assert delivery.state is State.FAILED and "safe domain news.example.cn" in (delivery.note or "")
    assert sandbox.sandbox.received("weibo") == []


def seconds_to_the_next_clock_hour() -> float:
    return 3600 - time.time() % 3600


async def test_a_rate_limit_pauses_until_weibos_window_resets_then_resumes(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    """10024 (30 shares an hour): the pause lasts until rate_limit_status's reset_time_in_seconds, not a fixed hour."""
    set_rate_limit(sandbox.sandbox, 1)
    clock = FakeClock(time.time())
    channels = {"weibo": channel(sandbox.url, rate_limit_pause=7200)}
    async with engine_for(tmp_path, store, channels, clock) as engine:
        await engine.accept(make_story(id="a"))
        await engine.accept(make_story(id="b", headline="第二条新闻"))
        await engine.run(until_idle=True, idle_horizon=0)
        first = {d.story_id: d for d in await deliveries(store)}
        pause = (await store.channel_states())["weibo"]
        reset = max(seconds_to_the_next_clock_hour(), MIN_WINDOW_PAUSE)
        assert pause.paused_until is not None and abs(pause.paused_until - (clock.now() + reset)) < 5
        assert "10024" in (pause.reason or "") and "rate_limit_status" in (pause.reason or "")
        set_rate_limit(sandbox.sandbox, 30)  # Weibo's hourly window has passed
        # Past the pause itself, not past `reset`: the stand-in counted its seconds earlier (on a loaded machine,
        # more than a second earlier), so its pause ends a little later than `reset` says.
        clock.advance(pause.paused_until - clock.now() + 1)
        await engine.run(until_idle=True, idle_horizon=0)
    states = {d.story_id: d for d in await deliveries(store)}
    limited = next(d for d in first.values() if d.state is State.RETRY_WAIT)
    assert limited.last_error_class == "RateLimited" and limited.last_platform_code == "10024"
    assert {d.state for d in states.values()} == {State.DELIVERED}
    assert len(statuses(sandbox.sandbox)) == 2


async def test_the_fixed_pause_is_kept_when_rate_limit_status_cannot_be_read(sandbox: RunningSandbox) -> None:
    set_rate_limit(sandbox.sandbox, 0)
    sandbox.sandbox.set_faults("weibo", [{"fault": "status:502", "methods": ["GET"]}])
    clock = FakeClock(time.time())
    settings = channel(sandbox.url, rate_limit_pause=1800)
    values = {k: v for k, v in settings.items() if k not in ("kind", "retry", "timeout")}
    weibo = WeiboAdapter("weibo", WeiboOptions(**values), timeout=2, clock=clock.now)
    await weibo.start()
    try:
        with pytest.raises(RateLimited) as raised:
            await weibo.publish(weibo.render(make_story(), Action.PUBLISH), ctx())
    finally:
        await weibo.close()
    assert raised.value.platform_code == "10024"
    assert raised.value.until.timestamp() == pytest.approx(clock.now() + 1800)


async def test_a_spent_daily_budget_pauses_until_beijing_midnight(sandbox: RunningSandbox) -> None:
    """10023 while the hour's budget remains: the user's daily total is spent, which the hourly status does not
    report; the pause lasts to the next Beijing midnight rather than an hour of refused calls."""
    set_daily_limit(sandbox.sandbox, 1)
    clock = FakeClock(time.time())
    values = {k: v for k, v in channel(sandbox.url).items() if k not in ("kind", "retry", "timeout")}
    weibo = WeiboAdapter("weibo", WeiboOptions(**values), timeout=2, clock=clock.now)
    await weibo.start()
    try:
        await weibo.publish(weibo.render(make_story(), Action.PUBLISH), ctx())
        with pytest.raises(RateLimited) as raised:
            await weibo.publish(weibo.render(make_story(id="b", headline="第二条新闻"), Action.PUBLISH), ctx())
    finally:
        await weibo.close()
    beijing = dt.timezone(dt.timedelta(hours=8))
    today = dt.datetime.fromtimestamp(clock.now(), beijing).replace(hour=0, minute=0, second=0, microsecond=0)
    midnight = (today + dt.timedelta(days=1)).timestamp()
    assert raised.value.platform_code == "10023" and "daily" in raised.value.reason
    assert raised.value.until.timestamp() == pytest.approx(max(midnight, clock.now() + MIN_WINDOW_PAUSE))


async def test_rate_limit_status_reports_the_stand_ins_own_counters(sandbox: RunningSandbox) -> None:
    set_rate_limit(sandbox.sandbox, 30, user_limit=150)
    url = sandbox.url + "/2/account/rate_limit_status.json"
    params = {"access_token": DEFAULT_ACCESS_TOKEN}
    async with aiohttp.ClientSession() as http:
        async with http.get(url, params=params) as resp:
            before = await resp.json()
        async with http.get(sandbox.url + "/2/statuses/user_timeline.json", params=params) as resp:
            assert resp.status == 200
        async with http.get(url, params=params) as resp:
            after = await resp.json()
        async with http.get(url, params={"access_token": "nope"}) as resp:
            assert resp.status == 401 and (await resp.json())["error_code"] == 21332
    assert set(after) == {
        "ip_limit",
        "limit_time_unit",
        "remaining_ip_hits",
        "remaining_user_hits",
        "reset_time",
        "reset_time_in_seconds",
        "user_limit",
    }
    assert after["limit_time_unit"] == "HOURS" and after["user_limit"] == 150
    # The timeline read counts; asking for the status does not ("Count Limitation: false").
    assert before["remaining_user_hits"] == 150 and after["remaining_user_hits"] == 149
    assert after["remaining_ip_hits"] == before["remaining_ip_hits"] - 1
    assert abs(after["reset_time_in_seconds"] - seconds_to_the_next_clock_hour()) <= 2
    assert after["reset_time"].endswith(":00:00")  # windows are clock hours, as the documented example's reset_time


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        (1415, 1415),  # v2: seconds from now (the documented example)
        (0, 0),
        (1_900_000_600, 600),  # v1's meaning: a unix time
    ],
)
def test_reset_time_in_seconds_reads_both_meanings(reported: float, expected: float) -> None:
    body = json.dumps({"remaining_user_hits": 0, "remaining_ip_hits": 9, "reset_time_in_seconds": reported}).encode()
    status = RateLimitStatus.read(HttpAnswer(200, {}, body))
    assert status is not None and status.seconds_to_reset(1_900_000_000) == expected
    assert RateLimitStatus.read(HttpAnswer(200, {}, b'{"reset_time_in_seconds": "soon"}')) is None


async def test_duplicate_text_fails_and_over_long_text_is_refused_as_weibo_would(sandbox: RunningSandbox) -> None:
    weibo = WeiboAdapter(
        "weibo",
        WeiboOptions(**{k: v for k, v in channel(sandbox.url).items() if k not in ("kind", "timeout", "retry")}),
        timeout=2,
    )
    await weibo.start()
    try:
        payload = weibo.render(make_story(), Action.PUBLISH)
        await weibo.publish(payload, ctx())
        with pytest.raises(Permanent, match="repeated or similar") as duplicate:
            await weibo.publish(payload, ctx())
        assert duplicate.value.platform_code == str(REPEATED_TEXT)
        # Without our fitting, a long status is refused by Weibo's own count (20012)...
        long = "中" * 135 + " https://news.example.cn/a.html"
        with pytest.raises(Permanent, match="over Weibo's 140") as too_long:
            stored = Payload.from_json(
                {"data": {"status": long, "pic": None, "story_url": "https://news.example.cn/a.html"}}
            )
            await weibo.publish(weibo.load_payload(stored), ctx())
        assert too_long.value.platform_code == str(TEXT_TOO_LONG)
        # ...while the same long story rendered through our counting lands.
        fitted = weibo.render(make_story(id="long", headline="长新闻", summary="中" * 300), Action.PUBLISH)
        assert fitted.text_length == 140 == weibo_count(fitted.data.status)
        receipt = await weibo.publish(fitted, ctx("long"))
        assert receipt.remote_id
    finally:
        await weibo.close()


def ctx(story_id: str = "story-1") -> DeliveryContext:
    async def save(data: dict[str, Any]) -> None:
        return None

    async def kv_get(key: str) -> str | None:
        return None

    async def kv_set(key: str, value: str, expires_at: float | None) -> None:
        return None

    return DeliveryContext(
        delivery_id=1,
        story_id=story_id,
        version=1,
        channel="weibo",
        action=Action.PUBLISH,
        attempt=1,
        state={},
        receipt=None,
        save_checkpoint=save,
        kv_get=kv_get,
        kv_set=kv_set,
    )


@pytest.mark.parametrize(
    ("token_state", "error_class", "code", "says"),
    [
        ("revoked", "AuthRevoked", "21332", "check access_token"),
        ("no_permission", "AuthRevoked", "10014", "permissions"),
        ("expired", "AuthRevoked", "21327", "authorise the app again"),
    ],
)
async def test_token_problems_pause_the_channel_and_lose_nothing(
    tmp_path: Path, store: Store, sandbox: RunningSandbox, token_state: str, error_class: str, code: str, says: str
) -> None:
    set_token(sandbox.sandbox, DEFAULT_ACCESS_TOKEN, token_state)
    async with engine_for(tmp_path, store, {"weibo": channel(sandbox.url)}) as engine:
        await engine.accept(make_story())
        await engine.run(until_idle=True, idle_horizon=0)
    [delivery] = await deliveries(store)
    pause = (await store.channel_states())["weibo"]
    assert delivery.state is State.RETRY_WAIT and delivery.last_error_class == error_class
    assert delivery.last_platform_code == code and says in (delivery.last_error or "")
    assert pause.paused_at(time.time()) and statuses(sandbox.sandbox) == []


async def test_a_server_error_on_sharing_is_looked_up_before_sharing_again(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.set_faults("weibo", [{"fault": "status:502", "probability": 1.0}])
    # The retry waits longer than a PostgreSQL round trip, so the first run stops before it is due.
    async with engine_for(tmp_path, store, {"weibo": channel(sandbox.url, retry=[0, 0.5])}) as engine:
        await engine.accept(make_story())
        await engine.run(until_idle=True, idle_horizon=0)
        [first] = await deliveries(store)
        assert first.state is State.RETRY_WAIT and first.last_error_class == "OutcomeUnknown"
        sandbox.sandbox.clear_faults("weibo")
        await engine.run(until_idle=True, idle_horizon=1)
    [delivery] = await deliveries(store)
    assert delivery.state is State.DELIVERED and len(statuses(sandbox.sandbox)) == 1


async def test_a_status_that_landed_behind_a_5xx_is_found_not_posted_twice(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.set_faults("weibo", [{"fault": "status_after:503", "methods": ["POST"]}])
    async with engine_for(tmp_path, store, {"weibo": channel(sandbox.url, retry=[0, 0.5])}) as engine:
        await engine.accept(make_story())
        await engine.run(until_idle=True, idle_horizon=0)
        sandbox.sandbox.clear_faults("weibo")
        await engine.run(until_idle=True, idle_horizon=1)
    [delivery] = await deliveries(store)
    [posted] = statuses(sandbox.sandbox)
    assert delivery.state is State.DELIVERED and delivery.receipt and delivery.receipt.remote_id == posted["idstr"]
    assert [a.outcome for a in await store.attempts(delivery.id)] == ["retry", "reconciled"]


async def test_repeated_content_after_our_own_earlier_attempt_is_that_attempt_landed(sandbox: RunningSandbox) -> None:
    options = {k: v for k, v in channel(sandbox.url).items() if k not in ("kind", "timeout", "retry")}
    weibo = WeiboAdapter("weibo", WeiboOptions(**options), timeout=2)
    await weibo.start()
    try:
        payload = weibo.render(make_story(), Action.PUBLISH)
        first = await weibo.publish(payload, ctx())
        again = await weibo.publish(payload, ctx_for(channel="weibo", attempt=2))
    finally:
        await weibo.close()
    assert again.remote_id == first.remote_id and len(statuses(sandbox.sandbox)) == 1


async def test_a_lost_answer_is_reconciled_through_the_timeline_without_posting_twice(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.set_faults("weibo", [{"fault": "timeout_after", "methods": ["POST"]}])
    channels = {"weibo": channel(sandbox.url, timeout=SHORT_TIMEOUT)}
    async with engine_for(tmp_path, store, channels) as engine:
        for i in range(3):
            await engine.accept(make_story(id=f"s{i}", headline=f"第{i}条新闻"))
        await engine.run(until_idle=True, idle_horizon=5)
    found = await deliveries(store)
    assert {d.state for d in found} == {State.DELIVERED}
    for d in found:
        assert [a.outcome for a in await store.attempts(d.id)] == ["retry", "reconciled"]
    posted = statuses(sandbox.sandbox)
    assert len(posted) == 3
    assert sorted(d.receipt.remote_id for d in found if d.receipt) == sorted(s["idstr"] for s in posted)


#: A Weibo payload as deliveries queued before the typed payload model hold it (rendered by the earlier code and
#: saved as JSON): it must still load and send after the upgrade.
STORED_BEFORE_THE_MODEL = {
    "data": {
        "status": "【上海16区融媒体中心全部建成并挂牌】上海分两批、共16个区级融媒体中心已全部建成并挂牌。 "
        "https://news.example.cn/shanghai/story-1.html",
        "pic": "{media}/story-blue-640x360.png",
        "story_url": "https://news.example.cn/shanghai/story-1.html",
    },
    "text_length": 54,
    "warnings": [],
}


async def test_a_payload_stored_in_the_earlier_shape_loads_and_is_sent_the_same_way(
    tmp_path: Path, sandbox: RunningSandbox
) -> None:
    raw = json.loads(json.dumps(STORED_BEFORE_THE_MODEL).replace("{media}", f"{sandbox.url}/media"))
    weibo = WeiboAdapter(
        "weibo",
        WeiboOptions(**{k: v for k, v in channel(sandbox.url).items() if k not in ("kind", "timeout", "retry")}),
        timeout=2,
    )
    weibo.media_settings = make_settings(tmp_path, {}).media  # the sandbox serves the images on loopback
    loaded = weibo.load_payload(Payload.from_json(raw))
    assert isinstance(loaded.data, WeiboPayload) and loaded.text_length == 54
    assert Payload(data=loaded.data).to_json()["data"] == raw["data"]  # the model's JSON is the stored shape
    # Today's renderer writes that very shape.
    story = make_story(images=[{"href": raw["data"]["pic"], "role": "cover"}])
    assert weibo.render(story, Action.PUBLISH).to_json() == {
        **raw,
        "warnings": list(weibo.render(story, Action.PUBLISH).warnings),
    }
    await weibo.start()
    try:
        receipt = await weibo.publish(loaded, ctx())
    finally:
        await weibo.close()
    [request] = sandbox.sandbox.received("weibo")
    assert request.body["status"] == raw["data"]["status"]
    assert request.body["pic"]["content_type"] == "image/png" and request.body["pic"]["size"] > 0
    [posted] = statuses(sandbox.sandbox)
    assert receipt.remote_id == posted["idstr"]
    with pytest.raises(Permanent, match=r"weibo.*payload model \(surprise: Extra inputs"):
        weibo.load_payload(Payload.from_json({"data": {**raw["data"], "surprise": 1}}))


async def test_the_lookup_pages_back_through_the_timeline(sandbox: RunningSandbox) -> None:
    """A busy account: 150 statuses since ours, more than one timeline page; the lookup still finds ours."""
    set_rate_limit(sandbox.sandbox, 10_000, user_limit=10_000)
    options = {k: v for k, v in channel(sandbox.url).items() if k not in ("kind", "timeout", "retry")}
    weibo = WeiboAdapter("weibo", WeiboOptions(**options), timeout=5)
    queued = time.time()
    ours = weibo.render(make_story(), Action.PUBLISH)
    await weibo.start()
    try:
        landed = await weibo.publish(ours, ctx())
        for i in range(150):
            later = make_story(id=f"later{i}", headline=f"第{i}号稿件：宝山区发布第{i * 7 + 1}期")
            await weibo.publish(weibo.render(later, Action.PUBLISH), ctx())
        found = await weibo.lookup(ours, ctx_for(channel="weibo", attempt=2, queued_at=queued))
        never = weibo.render(make_story(id="never", headline="从未发出的稿件"), Action.PUBLISH)
        missing = await weibo.lookup(never, ctx_for(channel="weibo", attempt=2, queued_at=queued))
    finally:
        await weibo.close()
    assert found is not None and found.remote_id == landed.remote_id
    assert missing is None


async def test_every_share_reports_the_posting_ip_and_weibo_refuses_one_without(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    """statuses/share's ``rip`` is required (open.weibo.com/wiki/2/statuses/share): without it Weibo answers 10016."""
    async with engine_for(tmp_path, store, {"weibo": channel(sandbox.url)}) as engine:
        await engine.accept(make_story())
        await engine.run(until_idle=True, idle_horizon=0)
    [share] = [r for r in sandbox.sandbox.received("weibo") if r.method == "POST"]
    assert share.body["rip"] == "203.0.113.10"
    async with aiohttp.ClientSession() as http:
        form = {"access_token": DEFAULT_ACCESS_TOKEN, "status": "没有IP https://news.example.cn/a.html"}
        async with http.post(sandbox.url_for("/2/statuses/share.json"), data=form) as resp:
            answer = await resp.json()
    assert answer["error_code"] == 10016 and "(rip)" in answer["error"]
    with pytest.raises(ValidationError, match="rip"):
        WeiboOptions(access_token="t", safe_domain="news.example.cn")
    with pytest.raises(ValidationError, match="rip"):
        WeiboOptions(access_token="t", safe_domain="news.example.cn", rip="not-an-ip")


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        *[(code, 401, "AuthRevoked") for code in (21315, 21316, 21317, 21319, 21324, 21325, 21326, 21330, 21332)],
        (10014, 403, "AuthRevoked"),
        (10004, 403, "AuthRevoked"),
        (21327, 401, "AuthExpired"),
        (10001, 400, "OutcomeUnknown"),  # Weibo's own failure, to a share that may have posted: look first
        (10002, 400, "OutcomeUnknown"),
        (21331, 400, "OutcomeUnknown"),
        (20032, 200, "OutcomeUnknown"),  # posted, answer slow: never post it again blindly
        (20019, 400, "Permanent"),
        (10016, 400, "Permanent"),
    ],
)
def test_weibos_error_codes_map_onto_what_fixes_them(code: int, status: int, expected: str) -> None:
    """Weibo's error tables (docs/platforms.md): a credential or app-setting code pauses the channel, never fails
    delivery after delivery; a server code retries (after a lookup for a share)."""
    weibo = adapter()
    body = json.dumps({"error": "from the table", "error_code": code, "request": "/2/statuses/share.json"}).encode()
    error = weibo._error(HttpAnswer(status, {}, body), doing="share", may_land=True)
    assert type(error).__name__ == expected and error.platform_code == str(code)


# ------------------------------------------------------------------------------------------------ reach


async def _shared(sandbox: RunningSandbox) -> tuple[WeiboAdapter, Receipt]:
    """A started adapter against the stand-in and the receipt of a status it shared."""
    values = {k: v for k, v in channel(sandbox.url).items() if k not in ("kind", "retry", "timeout")}
    weibo = WeiboAdapter("weibo", WeiboOptions(**values), timeout=2)
    await weibo.start()
    story = make_story(images=[])
    return weibo, await weibo.publish(weibo.render(story, Action.PUBLISH), ctx())


async def test_read_reach_maps_statuses_count_onto_the_common_metrics(sandbox: RunningSandbox) -> None:
    weibo, receipt = await _shared(sandbox)
    [status] = statuses(sandbox.sandbox)
    at = status["_at"] + 24 * 3600
    set_standin_clock(sandbox.sandbox, lambda: at)
    try:
        reading = await weibo.read_reach(ctx_for(channel="weibo", receipt=receipt))
    finally:
        await weibo.close()
    counts = status_counts(status, at)
    assert dict(reading.raw) == counts  # Weibo's names and figures, as they came
    assert dict(reading.metrics) == {
        ReachMetric.SHARES: counts["reposts"],
        ReachMetric.COMMENTS: counts["comments"],
        ReachMetric.LIKES: counts["attitudes"],
    }
    assert ReachMetric.READS not in reading.metrics  # statuses/count reports no reads: left out, not 0
    call = sandbox.sandbox.received("weibo")[-1]
    assert call.path == COUNT_PATH and call.body == {"ids": receipt.remote_id}
    assert DEFAULT_ACCESS_TOKEN not in repr(reading)


async def test_weibo_counts_grow_with_the_statuss_age(sandbox: RunningSandbox) -> None:
    weibo, receipt = await _shared(sandbox)
    born = statuses(sandbox.sandbox)[0]["_at"]
    likes = []
    try:
        for hours in (1, 6, 24, 72, 72):
            set_standin_clock(sandbox.sandbox, lambda h=hours: born + h * 3600)
            reading = await weibo.read_reach(ctx_for(channel="weibo", receipt=receipt))
            likes.append(reading.metrics[ReachMetric.LIKES])
    finally:
        await weibo.close()
    assert likes[0] < likes[1] < likes[2] < likes[3] == likes[4]


async def test_reach_of_a_deleted_status_is_permanent(sandbox: RunningSandbox) -> None:
    weibo, receipt = await _shared(sandbox)
    assert receipt.remote_id is not None
    delete_status(sandbox.sandbox, receipt.remote_id)
    try:
        with pytest.raises(Permanent, match="deleted"):
            await weibo.read_reach(ctx_for(channel="weibo", receipt=receipt))
    finally:
        await weibo.close()


async def test_reach_rate_limit_pauses_until_weibos_window_resets(sandbox: RunningSandbox) -> None:
    weibo, receipt = await _shared(sandbox)
    set_rate_limit(sandbox.sandbox, 30, user_limit=0)  # no call left this hour
    try:
        with pytest.raises(RateLimited) as limited:
            await weibo.read_reach(ctx_for(channel="weibo", receipt=receipt))
    finally:
        await weibo.close()
    assert limited.value.platform_code == "10023"
    assert "window resets" in limited.value.reason
    hour_end = (int(time.time()) // 3600 + 1) * 3600
    assert limited.value.until.timestamp() == pytest.approx(max(hour_end, time.time() + MIN_WINDOW_PAUSE), abs=2)


async def test_reach_expired_token_and_server_errors_map_onto_the_taxonomy(sandbox: RunningSandbox) -> None:
    weibo, receipt = await _shared(sandbox)
    try:
        sandbox.sandbox.set_faults("weibo", [{"fault": "status:503", "methods": ["GET"]}])
        with pytest.raises(Retryable):
            await weibo.read_reach(ctx_for(channel="weibo", receipt=receipt))
        sandbox.sandbox.clear_faults("weibo")
        set_token(sandbox.sandbox, DEFAULT_ACCESS_TOKEN, "expired")
        with pytest.raises(AuthExpired):
            await weibo.read_reach(ctx_for(channel="weibo", receipt=receipt))
    finally:
        await weibo.close()


async def test_the_stand_in_refuses_statuses_count_without_valid_ids(sandbox: RunningSandbox) -> None:
    async with aiohttp.ClientSession() as http:
        for ids, code in (("", 10016), ("abc", 10017), (",".join(str(n) for n in range(1, 102)), 10017)):
            params = {"access_token": DEFAULT_ACCESS_TOKEN, "ids": ids}
            async with http.get(f"{sandbox.url}{COUNT_PATH}", params=params) as resp:
                assert resp.status == 400 and (await resp.json())["error_code"] == code, ids
        params = {"access_token": DEFAULT_ACCESS_TOKEN, "ids": "4400000000009999"}
        async with http.get(f"{sandbox.url}{COUNT_PATH}", params=params) as resp:
            assert resp.status == 200 and await resp.json() == []  # unknown ids are left out, no error
