"""The X channel: rendering (twitter-text counting, images) and delivery through the engine, with tweepy's real
AsyncClient talking to the stand-in over HTTP."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tweepy
import tweepy.asynchronous
from oauthlib.oauth1 import Client as OAuthClient
from yarl import URL

from adapters.reach_curve import set_standin_clock
from adapters.textfit import ELLIPSIS, x_is_valid, x_weighted_length
from adapters.x.adapter import XAdapter, XOptions, XPayload, _processing_failed, reach_of
from adapters.x.standin import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_ACCESS_TOKEN_SECRET,
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    posts,
    public_metrics,
    set_can_write,
    set_daily_limit,
    set_gif_processing,
    set_lookup_rate_limit,
    set_rate_limit,
    x_state,
)
from syndicate.channel import DeliveryContext, register
from syndicate.delivery import (
    Action,
    AuthRevoked,
    Payload,
    Permanent,
    RateLimited,
    ReachMetric,
    Receipt,
    Retryable,
)
from syndicate.sandbox import RunningSandbox
from syndicate.sandbox.core import MEDIA_DIR
from syndicate.store.base import DeliveryFilter, DeliveryRecord, State, Store
from syndicate.story import Story
from tests.support import FakeClock, ctx_for, engine_for, example_stories, make_settings, make_story, started

register(XAdapter)

SHORT_TIMEOUT = 0.3
CREDENTIALS = {
    "consumer_key": DEFAULT_CONSUMER_KEY,
    "consumer_secret": DEFAULT_CONSUMER_SECRET,
    "access_token": DEFAULT_ACCESS_TOKEN,
    "access_token_secret": DEFAULT_ACCESS_TOKEN_SECRET,
}


def channel(sandbox_url: str, **kw: Any) -> dict[str, Any]:
    return {"kind": "x", "api_base": sandbox_url, **CREDENTIALS, "timeout": 2, "retry": [0, 0.05, 0.05], **kw}


def adapter(**kw: Any) -> XAdapter:
    return XAdapter("x", XOptions(**{**CREDENTIALS, **kw}), timeout=1)


# ------------------------------------------------------------------------------------------------ render


def test_render_chinese_example_with_hashtags_and_images_cover_first() -> None:
    story = example_stories()[0]
    payload = adapter().render(story, Action.PUBLISH)
    assert payload.data.text == f"【{story.headline}】{story.summary} {story.url} #融媒体 #宝山汇 #上海"
    assert payload.text_length == x_weighted_length(payload.data.text) == 209
    assert payload.data.images == [
        "http://127.0.0.1:8765/media/story-amber-1200x675.png",  # the cover
        "http://127.0.0.1:8765/media/story-blue-640x360.png",
        "http://127.0.0.1:8765/media/story-green-800x800.png",
    ]
    assert payload.warnings == ()
    retraction = adapter().render(story, Action.RETRACT)
    assert retraction.data == XPayload() and retraction.to_json()["data"] == {}


def test_render_long_english_and_mixed_stories_fit_280() -> None:
    english = make_story(
        language="en",
        headline="Shanghai opens the last of its 16 district media centres",
        summary=(
            "All sixteen district-level media centres in Shanghai are now open. The Baoshan centre launched its "
            "first product, the Baoshan Hui app, on September 18, two weeks ahead of the plan the city set in "
            "April. Residents can use it for news, government services and local information, from schools to "
            "traffic, and the centre plans to work with twenty media partners."
        ),
        url="https://news.example.cn/en/media-centres.html",
        tags=["media", "Shanghai"],
        images=[{"href": f"https://img.example.cn/{i}.png"} for i in range(6)],
    )
    payload = adapter().render(english, Action.PUBLISH)
    text = payload.data.text
    assert text is not None and text.startswith("Shanghai opens the last of its 16 district media centres: All sixteen")
    assert f"{ELLIPSIS} https://news.example.cn/en/media-centres.html #media #Shanghai" in text
    assert payload.text_length is not None and payload.text_length <= 280 and x_is_valid(text)
    assert len(payload.data.images) == 4 and any("2 of 6 images left out" in w for w in payload.warnings)
    mixed = make_story(
        headline="“宝山汇”APP上线 Baoshan Hui goes live", summary="宝山区融媒体中心推出App,与KNEWS合作。" * 12
    )
    payload = adapter().render(mixed, Action.PUBLISH)
    assert (payload.data.text or "").startswith("【“宝山汇”APP上线 Baoshan Hui goes live】宝山区融媒体中心推出App")
    assert payload.text_length is not None and payload.text_length <= 280


def test_update_policy_decides_whether_updates_are_offered() -> None:
    assert adapter().actions == frozenset({Action.PUBLISH, Action.RETRACT})
    assert "update_policy = skip" in adapter().unsupported_reason(Action.UPDATE)
    assert Action.UPDATE in adapter(update_policy="delete_and_repost").actions


# ------------------------------------------------------------------------------------------------ engine


async def deliveries(store: Store) -> list[DeliveryRecord]:
    return await store.list_deliveries(DeliveryFilter())


async def test_publish_with_images_then_retract_deletes_the_post(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    images = [
        {"href": f"{sandbox.url}/media/story-blue-640x360.png"},
        {"href": f"{sandbox.url}/media/story-amber-1200x675.png", "role": "cover"},
    ]
    async with engine_for(tmp_path, store, {"x": channel(sandbox.url)}) as engine:
        await engine.accept(make_story(images=images, tags=["融媒体"]))
        await engine.run(until_idle=True, idle_horizon=2)
        await engine.accept(make_story(version=2, headline="更正"))  # update_policy skip
        await engine.accept(Story.from_dict({"id": "story-1", "version": 3, "pubstatus": "canceled"}))
        await engine.run(until_idle=True, idle_horizon=2)
    publish, update, retract = await deliveries(store)
    assert publish.state is State.DELIVERED and publish.receipt is not None
    [post] = posts(sandbox.sandbox, include_deleted=True)
    assert publish.receipt.remote_id == post["id"] and post["deleted"]
    assert publish.receipt.url == f"https://x.com/i/web/status/{post['id']}"
    assert post["sent_text"] == publish.payload.data["text"] and post["sent_text"].endswith(" #融媒体")  # type: ignore[union-attr]
    assert len(post["media_ids"]) == 2
    paths = [(r.method, r.path) for r in sandbox.sandbox.received("x")]
    assert paths == [
        ("POST", "/2/media/upload"),
        ("POST", "/2/media/upload"),
        ("POST", "/2/tweets"),
        ("DELETE", f"/2/tweets/{post['id']}"),
    ]
    assert update.state is State.SKIPPED and "update_policy = skip" in (update.note or "")
    assert retract.state is State.DELIVERED


async def test_delete_and_repost_replaces_the_post(tmp_path: Path, store: Store, sandbox: RunningSandbox) -> None:
    channels = {"x": channel(sandbox.url, update_policy="delete_and_repost")}
    async with engine_for(tmp_path, store, channels) as engine:
        await engine.accept(make_story())
        await engine.run(until_idle=True, idle_horizon=2)
        await engine.accept(make_story(version=2, headline="更正:上海16区融媒体中心全部挂牌"))
        await engine.run(until_idle=True, idle_horizon=2)
    publish, update = await deliveries(store)
    assert publish.state is State.DELIVERED
    assert update.state is State.DELIVERED and update.receipt is not None
    first, second = posts(sandbox.sandbox, include_deleted=True)
    assert first["deleted"] and not second["deleted"] and second["id"] == update.receipt.remote_id
    assert second["sent_text"].startswith("【更正:上海16区融媒体中心全部挂牌】")


async def test_rate_limit_pauses_until_the_reset_header_then_resumes(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    set_rate_limit(sandbox.sandbox, 1)
    clock = FakeClock(time.time())
    async with engine_for(tmp_path, store, {"x": channel(sandbox.url)}, clock) as engine:
        await engine.accept(make_story(id="a"))
        await engine.accept(make_story(id="b", headline="第二条"))
        await engine.run(until_idle=True, idle_horizon=0)
        limited = [d for d in await deliveries(store) if d.state is State.RETRY_WAIT]
        pause = (await store.channel_states())["x"]
        reset = float(sandbox.sandbox.store("x")["state"].window.start + 900)
        assert len(limited) == 1 and limited[0].last_error_class == "RateLimited"
        assert pause.paused_at(clock.now()) and not pause.paused_at(reset + 1)
        set_rate_limit(sandbox.sandbox, 100)  # the window passed
        clock.t = reset + 1
        await engine.run(until_idle=True, idle_horizon=0)
    assert {d.state for d in await deliveries(store)} == {State.DELIVERED} and len(posts(sandbox.sandbox)) == 2


async def test_duplicate_content_fails_and_bad_credentials_pause(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    async with engine_for(tmp_path, store, {"x": channel(sandbox.url)}) as engine:
        await engine.accept(make_story(id="a"))
        await engine.accept(make_story(id="b"))  # the same text as a
        await engine.run(until_idle=True, idle_horizon=2)
    by_story = {d.story_id: d for d in await deliveries(store)}
    states = sorted((d.state.value, d.last_platform_code) for d in by_story.values())
    assert states == [("delivered", None), ("failed", "403")]
    failed = next(d for d in by_story.values() if d.state is State.FAILED)
    assert "duplicate content" in (failed.last_error or "")


async def test_wrong_secret_pauses_the_channel(tmp_path: Path, store: Store, sandbox: RunningSandbox) -> None:
    async with engine_for(tmp_path, store, {"x": channel(sandbox.url, consumer_secret="rotated")}) as engine:
        await engine.accept(make_story())
        await engine.run(until_idle=True, idle_horizon=0)
    [delivery] = await deliveries(store)
    assert delivery.state is State.RETRY_WAIT and delivery.last_error_class == "AuthRevoked"
    assert "consumer_secret" in (delivery.last_error or "")
    assert (await store.channel_states())["x"].paused_at(time.time()) and posts(sandbox.sandbox) == []


async def test_a_server_error_on_posting_is_looked_up_before_posting_again(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    """A 5xx to create_tweet says nothing about whether the post went live: the next attempt looks first."""
    sandbox.sandbox.set_faults("x", [{"fault": "status:503"}])
    # The retry waits long enough that a loaded machine cannot reach the next attempt before the first run idles.
    async with engine_for(tmp_path, store, {"x": channel(sandbox.url, retry=[0, 0.5, 0.5])}) as engine:
        await engine.accept(make_story())
        await engine.run(until_idle=True, idle_horizon=0)
        [first] = await deliveries(store)
        assert first.last_error_class == "OutcomeUnknown" and first.last_platform_code == "503"
        sandbox.sandbox.clear_faults("x")
        await engine.run(until_idle=True, idle_horizon=1)
    assert [d.state for d in await deliveries(store)] == [State.DELIVERED]
    assert len(posts(sandbox.sandbox)) == 1


async def test_a_post_that_landed_behind_a_5xx_is_found_not_posted_twice(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.set_faults("x", [{"fault": "status_after:503", "methods": ["POST"]}])
    async with engine_for(tmp_path, store, {"x": channel(sandbox.url)}) as engine:
        await engine.accept(make_story())
        await engine.run(until_idle=True, idle_horizon=0)
        sandbox.sandbox.clear_faults("x")
        await engine.run(until_idle=True, idle_horizon=1)
    [delivery] = await deliveries(store)
    [live] = posts(sandbox.sandbox)
    assert delivery.state is State.DELIVERED and delivery.receipt and delivery.receipt.remote_id == live["id"]
    assert [a.outcome for a in await store.attempts(delivery.id)] == ["retry", "reconciled"]


async def test_duplicate_content_after_our_own_earlier_attempt_is_that_attempt_landed(
    tmp_path: Path, sandbox: RunningSandbox
) -> None:
    """Had the lookup missed it, the platform's "duplicate" answer to the resend is our first post: delivered."""
    options = {k: v for k, v in channel(sandbox.url).items() if k not in ("kind", "timeout", "retry")}
    x = XAdapter("x", XOptions(**options), timeout=2)
    post = x.render(make_story(), Action.PUBLISH)
    await x.start()
    try:
        first = await x.publish(post, ctx(Action.PUBLISH))
        again = await x.publish(post, ctx_for(channel="x", attempt=2))
        with pytest.raises(Permanent, match="duplicate content"):  # a first attempt's duplicate is someone else's
            await x.publish(post, ctx_for(channel="x", attempt=1))
    finally:
        await x.close()
    assert again.remote_id == first.remote_id and len(posts(sandbox.sandbox)) == 1


async def test_a_lost_answer_is_reconciled_through_recent_posts(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.set_faults("x", [{"fault": "timeout_after", "methods": ["POST"]}])
    async with engine_for(tmp_path, store, {"x": channel(sandbox.url, timeout=SHORT_TIMEOUT)}) as engine:
        for i in range(3):
            await engine.accept(make_story(id=f"s{i}", headline=f"第{i}条新闻"))
        await engine.run(until_idle=True, idle_horizon=5)
    found = await deliveries(store)
    assert {d.state for d in found} == {State.DELIVERED}
    for d in found:
        assert [a.outcome for a in await store.attempts(d.id)] == ["retry", "reconciled"]
    assert len(posts(sandbox.sandbox)) == 3


@pytest.mark.parametrize(
    ("header", "expected_wait"),
    [
        (None, 900.0),  # absent: 15 minutes
        ("not-a-number", 900.0),
        ("nan", 900.0),
        ("inf", 900.0),
        ("1699999000", 900.0),  # in the past
        ("1700000600", 600.0),
        ("99999999999", 86400.0),  # absurd: asked again after a day
    ],
)
def test_rate_limit_reset_header_is_bounded(header: str | None, expected_wait: float) -> None:
    from adapters.x.adapter import _reset

    now = 1_700_000_000.0
    assert _reset(header, now).timestamp() - now == expected_wait


#: X payloads as deliveries queued before the typed payload model hold them (rendered by the earlier code and saved
#: as JSON): they must still load and send after the upgrade.
STORED_POST = {
    "data": {
        "text": "【上海16区融媒体中心全部建成并挂牌】上海分两批、共16个区级融媒体中心已全部建成并挂牌。 "
        "https://news.example.cn/shanghai/story-1.html",
        "images": ["{media}/story-amber-1200x675.png", "{media}/story-blue-640x360.png"],
    },
    "text_length": 110,
    "warnings": [],
}
STORED_RETRACTION = {"data": {}, "text_length": None, "warnings": []}


def ctx(action: Action, receipt: Receipt | None = None) -> DeliveryContext:
    async def save(data: dict[str, Any]) -> None:
        return None

    async def kv_get(key: str) -> str | None:
        return None

    async def kv_set(key: str, value: str, expires_at: float | None) -> None:
        return None

    return DeliveryContext(
        delivery_id=1,
        story_id="story-1",
        version=1,
        channel="x",
        action=action,
        attempt=1,
        state={},
        receipt=receipt,
        save_checkpoint=save,
        kv_get=kv_get,
        kv_set=kv_set,
    )


async def test_payloads_stored_in_the_earlier_shape_load_and_are_sent_the_same_way(
    tmp_path: Path, sandbox: RunningSandbox
) -> None:
    raw = json.loads(json.dumps(STORED_POST).replace("{media}", f"{sandbox.url}/media"))
    options = {k: v for k, v in channel(sandbox.url).items() if k not in ("kind", "timeout", "retry")}
    x = XAdapter("x", XOptions(**options), timeout=2)
    x.media_settings = make_settings(tmp_path, {}).media  # the sandbox serves the images on loopback
    post = x.load_payload(Payload.from_json(raw))
    retraction = x.load_payload(Payload.from_json(STORED_RETRACTION))
    assert isinstance(post.data, XPayload) and post.data.images == raw["data"]["images"]
    assert retraction.data == XPayload() and not retraction.data.is_post
    # The model's JSON is the stored shape, and today's renderer writes that very shape.
    assert post.to_json() == raw and retraction.to_json() == STORED_RETRACTION
    story = make_story(images=[{"href": href} for href in raw["data"]["images"]])
    assert x.render(story, Action.PUBLISH).to_json() == raw
    assert x.render(story, Action.RETRACT).to_json() == STORED_RETRACTION
    await x.start()
    try:
        receipt = await x.publish(post, ctx(Action.PUBLISH))
        [sent] = posts(sandbox.sandbox)
        assert sent["sent_text"] == raw["data"]["text"] and len(sent["media_ids"]) == 2
        assert receipt.remote_id == sent["id"]
        await x.retract(retraction, ctx(Action.RETRACT, receipt))
    finally:
        await x.close()
    [gone] = posts(sandbox.sandbox, include_deleted=True)
    assert gone["deleted"]
    paths = [(r.method, r.path) for r in sandbox.sandbox.received("x")]
    assert paths == [
        ("POST", "/2/media/upload"),
        ("POST", "/2/media/upload"),
        ("POST", "/2/tweets"),
        ("DELETE", f"/2/tweets/{receipt.remote_id}"),
    ]
    with pytest.raises(Permanent, match=r"'x' payload model .*images without text"):
        x.load_payload(Payload.from_json({"data": {"images": raw["data"]["images"]}}))


async def test_the_lookup_pages_back_to_the_delivery_not_just_the_newest_posts(sandbox: RunningSandbox) -> None:
    """A busy account: 150 posts since ours. The lookup reads page after page (since the delivery was queued)."""
    set_rate_limit(sandbox.sandbox, 10_000)
    options = {k: v for k, v in channel(sandbox.url).items() if k not in ("kind", "timeout", "retry")}
    x = XAdapter("x", XOptions(**options), timeout=5)
    queued = time.time()
    ours = x.render(make_story(), Action.PUBLISH)
    await x.start()
    try:
        landed = await x.publish(ours, ctx(Action.PUBLISH))
        for i in range(150):
            await x.publish(x.render(make_story(id=f"later{i}", headline=f"后来的第{i}条"), Action.PUBLISH), ctx_for())
        found = await x.lookup(ours, ctx_for(channel="x", attempt=2, queued_at=queued))
        never = x.render(make_story(id="never", headline="从未发出"), Action.PUBLISH)
        missing = await x.lookup(never, ctx_for(channel="x", attempt=2, queued_at=queued))
    finally:
        await x.close()
    assert found is not None and found.remote_id == landed.remote_id
    assert missing is None  # every page read: not posted, so a resend is safe


class _RebasedUnsigned:
    """Sends tweepy's api.twitter.com URLs to the sandbox with tweepy's own signature (over api.twitter.com)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    def request(self, method: str, url: Any, **kwargs: Any) -> Any:
        text = str(url).replace("https://api.twitter.com", self.base, 1)
        return self.session.request(method, URL(text, encoded=True), **kwargs)


async def test_requests_are_signed_over_the_host_they_go_to(sandbox: RunningSandbox) -> None:
    """X checks the signature over the URL called (docs.x.com, Creating a signature): a signature over
    api.twitter.com sent to another host is refused, and the adapter, at any api_base, signs over that base."""
    options = {k: v for k, v in channel(sandbox.url).items() if k not in ("kind", "timeout", "retry")}
    x = XAdapter("x", XOptions(**options), timeout=2)
    await x.start()
    try:
        assert "accepted the credentials" in await x.check()
    finally:
        await x.close()
    client = tweepy.asynchronous.AsyncClient(
        consumer_key=DEFAULT_CONSUMER_KEY,
        consumer_secret=DEFAULT_CONSUMER_SECRET,
        access_token=DEFAULT_ACCESS_TOKEN,
        access_token_secret=DEFAULT_ACCESS_TOKEN_SECRET,
    )
    async with aiohttp.ClientSession() as session:
        client.session = _RebasedUnsigned(session, sandbox.url)
        with pytest.raises(tweepy.Unauthorized):
            await client.get_me(user_auth=True)


async def test_a_spent_daily_cap_pauses_until_its_own_reset_not_the_15_minute_window(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    set_daily_limit(sandbox.sandbox, 1)
    clock = FakeClock(time.time())
    async with engine_for(tmp_path, store, {"x": channel(sandbox.url)}, clock) as engine:
        await engine.accept(make_story(id="a"))
        await engine.accept(make_story(id="b", headline="第二条"))
        await engine.run(until_idle=True, idle_horizon=0)
    [limited] = [d for d in await deliveries(store) if d.state is State.RETRY_WAIT]
    assert "24hour posting cap" in (limited.last_error or "")
    pause = (await store.channel_states())["x"]
    day_reset = float(sandbox.sandbox.store("x")["state"].daily.start + 24 * 3600)
    assert pause.paused_at(clock.now() + 3600) and not pause.paused_at(day_reset + 1)


async def test_a_forbidden_post_pauses_the_channel_with_the_fix(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    """An app with Read permission only: every post would be refused, so the channel pauses instead of failing all."""
    set_can_write(sandbox.sandbox, False)
    async with engine_for(tmp_path, store, {"x": channel(sandbox.url)}) as engine:
        await engine.accept(make_story())
        await engine.run(until_idle=True, idle_horizon=0)
    [delivery] = await deliveries(store)
    assert delivery.state is State.RETRY_WAIT and delivery.last_error_class == "AuthRevoked"
    assert "Read and Write" in (delivery.last_error or "")
    assert (await store.channel_states())["x"].paused_at(time.time())


# ------------------------------------------------------------------------------------------------ GIFs


GIF = "breaking-320x180.gif"  # an animated GIF of the sandbox's sample media (5,478 bytes)


async def test_an_animated_gif_goes_through_the_chunked_upload_alone_and_the_rest_is_left_out(
    tmp_path: Path, store: Store, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs.x.com: GIFs go through initialize (tweet_gif) / append / finalize / STATUS, and a post takes "up to 4
    photos, 1 animated GIF or 1 video". The cover is a GIF: it goes alone; the other image and GIF are left out,
    and the receipt says so."""
    monkeypatch.setattr("adapters.x.adapter.GIF_SEGMENT_BYTES", 2000)  # three segments of the sample GIF
    set_gif_processing(sandbox.sandbox, polls=2, check_after_secs=1)
    images = [
        {"href": f"{sandbox.url}/media/{GIF}", "role": "cover"},
        {"href": f"{sandbox.url}/media/story-blue-640x360.png"},
        {"href": f"{sandbox.url}/media/{GIF}?copy=2"},
    ]
    async with engine_for(tmp_path, store, {"x": channel(sandbox.url)}) as engine:
        await engine.accept(make_story(images=images))
        await engine.run(until_idle=True, idle_horizon=2)
    [delivery] = await deliveries(store)
    assert delivery.state is State.DELIVERED and delivery.receipt is not None
    assert delivery.receipt.raw["media_left_out"] == [images[1]["href"], images[2]["href"]]
    calls = [(r.method, r.path) for r in sandbox.sandbox.received("x")]
    [post] = posts(sandbox.sandbox)
    [gif_id] = post["media_ids"]
    assert calls == [
        ("POST", "/2/media/upload/initialize"),
        ("POST", f"/2/media/upload/{gif_id}/append"),
        ("POST", f"/2/media/upload/{gif_id}/append"),
        ("POST", f"/2/media/upload/{gif_id}/append"),
        ("POST", f"/2/media/upload/{gif_id}/finalize"),
        ("GET", "/2/media/upload"),
        ("GET", "/2/media/upload"),
        ("POST", "/2/tweets"),
    ]
    [init] = [r for r in sandbox.sandbox.received("x") if r.path.endswith("/initialize")]
    assert init.body == {"media_type": "image/gif", "media_category": "tweet_gif", "total_bytes": 5478}
    appended = [r.body for r in sandbox.sandbox.received("x") if r.path.endswith("/append")]
    assert [a["segment_index"] for a in appended] == ["0", "1", "2"]
    assert [a["size"] for a in appended] == [2000, 2000, 1478]


async def test_a_still_cover_takes_the_stills_and_leaves_the_gif_out(
    tmp_path: Path, store: Store, sandbox: RunningSandbox
) -> None:
    images = [
        {"href": f"{sandbox.url}/media/story-amber-1200x675.png", "role": "cover"},
        {"href": f"{sandbox.url}/media/{GIF}"},
        {"href": f"{sandbox.url}/media/story-blue-640x360.png"},
    ]
    async with engine_for(tmp_path, store, {"x": channel(sandbox.url)}) as engine:
        await engine.accept(make_story(images=images))
        await engine.run(until_idle=True, idle_horizon=2)
    [delivery] = await deliveries(store)
    assert delivery.state is State.DELIVERED and delivery.receipt is not None
    assert delivery.receipt.raw["media_left_out"] == [images[1]["href"]]
    [post] = posts(sandbox.sandbox)
    assert len(post["media_ids"]) == 2
    assert [r.path for r in sandbox.sandbox.received("x")] == ["/2/media/upload", "/2/media/upload", "/2/tweets"]


def signed(method: str, url: str, params: dict[str, str] | None = None) -> dict[str, str]:
    client = OAuthClient(
        DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET, DEFAULT_ACCESS_TOKEN, DEFAULT_ACCESS_TOKEN_SECRET
    )
    target = str(URL(url).with_query(params)) if params else url
    _, headers, _ = client.sign(target, method)  # type: ignore[arg-type]
    return dict(headers)


async def x_call(
    http: aiohttp.ClientSession, method: str, url: str, *, params: dict[str, str] | None = None, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    async with http.request(method, url, params=params, headers=signed(method, url, params), **kwargs) as resp:
        return resp.status, await resp.json()


async def chunked(
    http: aiohttp.ClientSession, base: str, data: bytes, *, total: int | None = None, category: str = "tweet_gif"
) -> tuple[str, int, dict[str, Any]]:
    """initialize, one append, finalize: the media id and finalize's status and answer."""
    media_type = "image/gif" if category == "tweet_gif" else "image/png"
    status, answer = await x_call(
        http,
        "POST",
        f"{base}/2/media/upload/initialize",
        json={"media_type": media_type, "media_category": category, "total_bytes": total or len(data)},
    )
    assert status == 200, answer
    media_id = answer["data"]["id"]
    form = aiohttp.FormData()
    form.add_field("segment_index", "0")
    form.add_field("media", data, filename="a.gif", content_type=media_type)
    status, answer = await x_call(http, "POST", f"{base}/2/media/upload/{media_id}/append", data=form)
    assert status == 200 and "expires_at" in answer["data"], answer
    status, answer = await x_call(http, "POST", f"{base}/2/media/upload/{media_id}/finalize")
    return media_id, status, answer


async def test_the_stand_in_refuses_what_x_refuses_in_the_chunked_upload(sandbox: RunningSandbox) -> None:
    gif = (MEDIA_DIR / GIF).read_bytes()
    png = (MEDIA_DIR / "story-blue-640x360.png").read_bytes()
    base = sandbox.url
    async with aiohttp.ClientSession() as http:
        # Over 15 MB, a GIF is refused at initialize; an image category over 5 MB too.
        status, answer = await x_call(
            http,
            "POST",
            f"{base}/2/media/upload/initialize",
            json={"media_type": "image/gif", "media_category": "tweet_gif", "total_bytes": 15 * 1024 * 1024 + 1},
        )
        assert status == 400 and "15728640" in answer["errors"][0]["message"]
        # A GIF through the one-shot upload is refused: it goes through the chunked flow.
        form = aiohttp.FormData()
        form.add_field("media", gif, filename="a.gif", content_type="image/gif")
        form.add_field("media_category", "tweet_image")
        status, answer = await x_call(http, "POST", f"{base}/2/media/upload", data=form)
        assert status == 400 and "chunked" in answer["errors"][0]["message"]
        # A segment past the next one (segment 0 missing), or out of 0-999, is refused.
        status, answer = await x_call(
            http,
            "POST",
            f"{base}/2/media/upload/initialize",
            json={"media_type": "image/gif", "media_category": "tweet_gif", "total_bytes": len(gif)},
        )
        media_id = answer["data"]["id"]
        for index, fragment in (("1", "skips segment 0"), ("1000", "between 0 and 999")):
            form = aiohttp.FormData()
            form.add_field("segment_index", index)
            form.add_field("media", gif, filename="a.gif", content_type="image/gif")
            status, answer = await x_call(http, "POST", f"{base}/2/media/upload/{media_id}/append", data=form)
            assert status == 400 and fragment in answer["errors"][0]["message"]
        # FINALIZE with segments that do not add up to total_bytes.
        _, status, answer = await chunked(http, base, gif, total=len(gif) + 1)
        assert status == 400 and answer["errors"][0]["message"] == "Segments do not add up to provided total file size."
        # A whole GIF: pending, then in_progress, then succeeded; an APPEND after FINALIZE is refused.
        set_gif_processing(sandbox.sandbox, polls=2, check_after_secs=1)
        gif_id, status, answer = await chunked(http, base, gif)
        info = answer["data"]["processing_info"]
        assert status == 200 and info["state"] == "pending" and info["check_after_secs"] == 1
        assert answer["data"]["size"] == len(gif)
        states = []
        for _ in range(2):
            status, answer = await x_call(
                http, "GET", f"{base}/2/media/upload", params={"command": "STATUS", "media_id": gif_id}
            )
            states.append(answer["data"]["processing_info"]["state"])
        assert states == ["in_progress", "succeeded"]
        form = aiohttp.FormData()
        form.add_field("segment_index", "0")
        form.add_field("media", gif, filename="a.gif", content_type="image/gif")
        status, answer = await x_call(http, "POST", f"{base}/2/media/upload/{gif_id}/append", data=form)
        assert status == 400 and "already finalized" in answer["errors"][0]["message"]
        # A truncated GIF: processing fails with InvalidMedia.
        set_gif_processing(sandbox.sandbox, polls=1, check_after_secs=1)
        broken_id, status, _ = await chunked(http, base, gif[:-200])
        status, answer = await x_call(
            http, "GET", f"{base}/2/media/upload", params={"command": "STATUS", "media_id": broken_id}
        )
        info = answer["data"]["processing_info"]
        assert info["state"] == "failed" and info["error"] == {
            "code": 1,
            "name": "InvalidMedia",
            "message": "file is invalid",
        }
        # One GIF per post, and never with other media.
        png_form = aiohttp.FormData()
        png_form.add_field("media", png, filename="a.png", content_type="image/png")
        png_form.add_field("media_category", "tweet_image")
        status, answer = await x_call(http, "POST", f"{base}/2/media/upload", data=png_form)
        png_id = answer["data"]["id"]
        second_gif, _, _ = await chunked(http, base, gif)
        await x_call(http, "GET", f"{base}/2/media/upload", params={"command": "STATUS", "media_id": second_gif})
        for media_ids in ([gif_id, png_id], [gif_id, second_gif]):
            status, answer = await x_call(
                http, "POST", f"{base}/2/tweets", json={"text": "动图", "media": {"media_ids": media_ids}}
            )
            assert status == 400 and "1 animated GIF" in answer["errors"][0]["message"]
        status, answer = await x_call(
            http, "POST", f"{base}/2/tweets", json={"text": "动图", "media": {"media_ids": [gif_id]}}
        )
        assert status == 201


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"code": 1, "name": "InvalidMedia", "message": "file is invalid"}, Permanent),
        ({"code": 3, "name": "InternalError", "message": "try again"}, Retryable),
    ],
)
def test_a_failed_processing_maps_onto_the_taxonomy(error: dict[str, Any], expected: type[Exception]) -> None:
    """X documents InvalidMedia (the file is bad: the same bytes fail again); anything else is worth a new upload."""
    failure = _processing_failed({"state": "failed", "error": error}, "the animated GIF g", "17")
    assert type(failure) is expected and error["name"] in failure.reason


# ------------------------------------------------------------------------------------------------ reach


async def _posted(
    sandbox: RunningSandbox, text: str = "区融媒体中心挂牌 https://example.com/a"
) -> tuple[XAdapter, Receipt]:
    """A started adapter against the stand-in and the receipt of a post it made."""
    x = await started(adapter(api_base=sandbox.url))
    receipt = await x.publish(Payload(data=XPayload(text=text)), ctx_for(channel="x"))
    return x, receipt


async def test_read_reach_maps_public_metrics_onto_the_common_metrics(sandbox: RunningSandbox) -> None:
    x, receipt = await _posted(sandbox)
    post = posts(sandbox.sandbox)[0]
    set_standin_clock(sandbox.sandbox, lambda: post["at"] + 6 * 3600)
    try:
        reading = await x.read_reach(ctx_for(channel="x", receipt=receipt))
    finally:
        await x.close()
    figures = public_metrics(post, post["at"] + 6 * 3600)
    assert dict(reading.raw) == figures  # X's own names and figures, as they came
    assert dict(reading.metrics) == {
        ReachMetric.READS: figures["impression_count"],
        ReachMetric.SHARES: figures["retweet_count"] + figures["quote_count"],
        ReachMetric.LIKES: figures["like_count"],
        ReachMetric.COMMENTS: figures["reply_count"],
    }
    assert reading.metrics[ReachMetric.READS] > 0
    lookup = sandbox.sandbox.received("x")[-1]
    assert lookup.method == "GET" and lookup.path == "/2/tweets"
    assert lookup.body == {"ids": receipt.remote_id, "tweet.fields": "public_metrics"}
    secrets = [DEFAULT_CONSUMER_SECRET, DEFAULT_ACCESS_TOKEN, DEFAULT_ACCESS_TOKEN_SECRET, DEFAULT_CONSUMER_KEY]
    assert not any(secret in repr(reading) for secret in secrets)


async def test_reach_grows_with_the_posts_age_and_is_the_same_at_the_same_age(sandbox: RunningSandbox) -> None:
    x, receipt = await _posted(sandbox)
    born = posts(sandbox.sandbox)[0]["at"]
    readings = []
    try:
        for hours in (1, 6, 24, 72, 72):
            set_standin_clock(sandbox.sandbox, lambda h=hours: born + h * 3600)
            readings.append(await x.read_reach(ctx_for(channel="x", receipt=receipt)))
    finally:
        await x.close()
    reads = [r.metrics[ReachMetric.READS] for r in readings]
    assert reads[0] < reads[1] < reads[2] < reads[3]
    assert readings[3] == readings[4]


def test_a_field_x_does_not_send_is_left_out_not_zero() -> None:
    answer = {"data": [{"id": "7", "text": "t", "public_metrics": {"retweet_count": 3, "like_count": 5}}]}
    reading = reach_of("7", answer)
    assert dict(reading.metrics) == {ReachMetric.SHARES: 3, ReachMetric.LIKES: 5}
    assert ReachMetric.READS not in reading.metrics and ReachMetric.COMMENTS not in reading.metrics


async def test_reach_of_a_deleted_post_is_permanent(sandbox: RunningSandbox) -> None:
    x, receipt = await _posted(sandbox)
    try:
        await x.retract(Payload(data=XPayload()), ctx_for(channel="x", action=Action.RETRACT, receipt=receipt))
        with pytest.raises(Permanent, match="no longer shows post"):
            await x.read_reach(ctx_for(channel="x", receipt=receipt))
    finally:
        await x.close()


async def test_reach_rate_limit_pauses_until_the_lookup_windows_reset(sandbox: RunningSandbox) -> None:
    x, receipt = await _posted(sandbox)
    set_lookup_rate_limit(sandbox.sandbox, 1)
    try:
        await x.read_reach(ctx_for(channel="x", receipt=receipt))
        with pytest.raises(RateLimited) as limited:
            await x.read_reach(ctx_for(channel="x", receipt=receipt))
    finally:
        await x.close()
    assert limited.value.platform_code == "429"
    window_end = x_state(sandbox.sandbox).lookup_window.start + 15 * 60
    assert abs(limited.value.until.timestamp() - int(window_end)) < 1


async def test_reach_server_errors_retry_and_the_fault_rules_apply(sandbox: RunningSandbox) -> None:
    x, receipt = await _posted(sandbox)
    sandbox.sandbox.set_faults("x", [{"fault": "status:503", "methods": ["GET"]}])
    try:
        with pytest.raises(Retryable, match="503"):
            await x.read_reach(ctx_for(channel="x", receipt=receipt))
        sandbox.sandbox.set_faults("x", [{"fault": "status:401", "methods": ["GET"]}])
        with pytest.raises(AuthRevoked):
            await x.read_reach(ctx_for(channel="x", receipt=receipt))
    finally:
        await x.close()


async def test_the_stand_in_refuses_a_lookup_without_valid_ids(sandbox: RunningSandbox) -> None:
    async with aiohttp.ClientSession() as http:
        for ids in ("", "abc", ",".join(str(n) for n in range(1, 102))):
            status, answer = await x_call(http, "GET", f"{sandbox.url}/2/tweets", params={"ids": ids})
            assert status == 400 and "ids must be 1 to 100" in answer["errors"][0]["message"], ids
        status, answer = await x_call(http, "GET", f"{sandbox.url}/2/tweets", params={"ids": "42"})
        assert status == 200 and answer["errors"][0]["type"].endswith("/resource-not-found")
