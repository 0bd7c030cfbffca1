"""The rss channel: both feeds parsed back with feedparser after publish/update/retract through the Engine, the
feedgen 1.0 Atom enclosure repair, enclosure sizes (declared in ninjs or fetched, never 0), the self links, a
manifest bounded by ``items`` however large the archive (and ordered right at its edge), atomic writes under the
lock, and the served feeds' ETag/Last-Modified/304."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import datetime as dt
import email.utils
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import feedparser
import pytest
from aiohttp.test_utils import TestClient, TestServer

from adapters.rss.adapter import (
    ATOM_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    RSS_FILE,
    STATE_DIR,
    Enclosure,
    FeedMeta,
    Manifest,
    RssAdapter,
    RssOptions,
    StoredEntry,
    build_feeds,
    image_type,
    story_guid,
)
from syndicate.channel import register
from syndicate.config import ConfigError, Settings
from syndicate.delivery import Action, AuthRevoked, Payload, Permanent, Retryable
from syndicate.engine import Engine
from syndicate.ninjs import read_document, to_ninjs
from syndicate.sandbox import RunningSandbox
from syndicate.sanitize import clean_html
from syndicate.server import create_app
from syndicate.store import open_store
from syndicate.store.base import DeliveryFilter, DeliveryRecord, State, Store
from syndicate.story import Story
from tests.support import REPO, ctx_for, make_settings, make_story

register(RssAdapter)

SITE = "https://news.example.cn/"
FEED_TITLE = "上海新闻 · 区级融媒体"
CST = dt.timezone(dt.timedelta(hours=8))


#: Where the examples' images live: the sandbox's /media/, on the port `syndicate sandbox` uses by default.
EXAMPLE_MEDIA = "http://127.0.0.1:8765"
SANDBOX_MEDIA = REPO / "syndicate" / "sandbox" / "media"


def example(name: str, media_base: str | None = None, **changes: Any) -> Story:
    """An example story; ``media_base`` moves its images onto a running sandbox (the test's own, on loopback)."""
    text = (REPO / "examples" / name).read_text(encoding="utf-8")
    if media_base is not None:
        text = text.replace(EXAMPLE_MEDIA, media_base)
    raw = json.loads(text)
    raw.update(changes)
    return read_document(raw)


STORY_1 = "01-district-media-centres.json"
STORY_2 = "02-baoshan-app.json"


def rss_channel(root: Path, **options: Any) -> dict[str, Any]:
    # Sizes only as declared unless a test asks to fetch: the examples' images point at a port nothing may serve.
    base = {"kind": "rss", "root": str(root), "title": FEED_TITLE, "link": SITE, "retry": [0, 0.05]}
    return {**base, "enclosure_sizes": "declared", **options}


def parse(root: Path, filename: str) -> feedparser.FeedParserDict:
    """The feed as it is on disk: feedparser's own sanitising and URI rewriting off, so what we check is ours."""
    parsed = feedparser.parse((root / filename).read_bytes(), sanitize_html=False, resolve_relative_uris=False)
    assert not parsed.bozo, parsed.get("bozo_exception")
    return parsed


def both(root: Path) -> dict[str, feedparser.FeedParserDict]:
    return {"rss": parse(root, RSS_FILE), "atom": parse(root, ATOM_FILE)}


def entry_for(feed: feedparser.FeedParserDict, story_id: str) -> feedparser.FeedParserDict:
    matches = [e for e in feed.entries if e.id == story_guid(story_id)]
    assert len(matches) == 1, [e.id for e in feed.entries]
    return matches[0]


def epoch(parsed: Any) -> int:
    return calendar.timegm(parsed)


class Newsroom:
    """An Engine with one rss channel; ``send`` accepts stories and delivers until idle."""

    def __init__(self, settings: Settings, store: Store, engine: Engine) -> None:
        self.settings, self.store, self.engine = settings, store, engine

    async def send(self, *stories: Story) -> None:
        for story in stories:
            await self.engine.accept(story)
            await self.engine.run(until_idle=True, idle_horizon=1)

    async def deliveries(self) -> list[DeliveryRecord]:
        return await self.store.list_deliveries(DeliveryFilter(channels=["feed"]))


@contextlib.asynccontextmanager
async def open_newsroom(tmp_path: Path, **options: Any) -> AsyncIterator[Newsroom]:
    settings = make_settings(tmp_path, {"feed": rss_channel(tmp_path / "feeds", **options)})
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            yield Newsroom(settings, store, engine)
    finally:
        await store.close()


@pytest.fixture
async def newsroom(tmp_path: Path) -> AsyncIterator[Newsroom]:
    async with open_newsroom(tmp_path) as room:
        yield room


def adapter_for(root: Path, **options: Any) -> RssAdapter:
    opts = RssOptions(root=root, title=FEED_TITLE, link=SITE, **{"enclosure_sizes": "declared", **options})
    return RssAdapter("feed", opts, timeout=5)


# ------------------------------------------------------------------------------------------- publish


async def test_publish_writes_every_field_to_both_feeds(tmp_path: Path, sandbox: RunningSandbox) -> None:
    first, second = example(STORY_1, sandbox.url), example(STORY_2, sandbox.url)
    async with open_newsroom(tmp_path, enclosure_sizes="fetch") as newsroom:
        await newsroom.send(first, second)
        deliveries = await newsroom.deliveries()
    cover_bytes = (SANDBOX_MEDIA / "story-amber-1200x675.png").stat().st_size
    assert [(d.story_id, d.action, d.state) for d in deliveries] == [
        (first.id, Action.PUBLISH, State.DELIVERED),
        (second.id, Action.PUBLISH, State.DELIVERED),
    ]
    assert deliveries[0].receipt is not None
    assert deliveries[0].receipt.remote_id == "urn:syndicate:story:sh-rmt-20190918-001"
    assert deliveries[0].receipt.url == first.url

    root = tmp_path / "feeds"
    feeds = both(root)
    assert feeds["rss"].version == "rss20" and feeds["atom"].version == "atom10"
    for kind, feed in feeds.items():
        assert feed.feed.title == FEED_TITLE, kind
        assert feed.feed.link == SITE, kind
        # Each feed names its own address (the W3C validator's "Missing atom:link with rel=self").
        [self_link] = [link for link in feed.feed.links if link.rel == "self"]
        assert self_link.href == f"{SITE}feeds/{RSS_FILE if kind == 'rss' else ATOM_FILE}", kind
        assert self_link.type == ("application/rss+xml" if kind == "rss" else "application/atom+xml"), kind
        assert feed.feed.language == "zh-CN", kind
        # Newest first: story 2 went out half an hour after story 1.
        assert [e.id for e in feed.entries] == [story_guid(second.id), story_guid(first.id)], kind

        entry = entry_for(feed, first.id)
        assert entry.title == first.headline
        assert entry.link == first.url  # Atom: not the cover image (feedgen 1.0 issue #135)
        assert entry.summary == first.summary
        assert len(entry.content) == 1
        assert entry.content[0].type == "text/html"
        assert entry.content[0].value == clean_html(first.body_html).strip()
        assert entry.author == first.by
        assert [tag.term for tag in entry.tags] == ["融媒体", "宝山汇", "上海"]
        assert first.published_at is not None
        assert epoch(entry.published_parsed) == int(first.published_at.timestamp())
        cover = first.cover
        assert cover is not None and cover.role == "cover"
        [enclosure] = entry.enclosures
        assert enclosure.href == cover.href == f"{sandbox.url}/media/story-amber-1200x675.png"
        assert enclosure.type == "image/png"
        assert enclosure.length == str(cover_bytes)  # fetched once through the media fetcher: the real size
        alternates = [link.href for link in entry.links if link.rel == "alternate"]
        assert alternates == [first.url], kind

    rss_entry, atom_entry = entry_for(feeds["rss"], first.id), entry_for(feeds["atom"], first.id)
    assert rss_entry.guidislink is False  # isPermaLink="false": the GUID is an id, not the article URL
    assert epoch(atom_entry.updated_parsed) == int(first.published_at.timestamp())  # first version: updated = published

    raw_atom = (root / ATOM_FILE).read_text(encoding="utf-8")
    assert raw_atom.count('rel="enclosure"') == 2
    raw_rss = (root / RSS_FILE).read_text(encoding="utf-8")
    assert '<guid isPermaLink="false">urn:syndicate:story:sh-rmt-20190918-001</guid>' in raw_rss
    assert f'<atom:link href="{SITE}feeds/rss.xml" rel="self" type="application/rss+xml"/>' in raw_rss
    assert 'length="0"' not in raw_rss + raw_atom
    assert sandbox.sandbox.stats("media")["story-amber-1200x675.png"].requests == 1


async def test_update_keeps_the_guid_and_moves_updated_forward(tmp_path: Path, newsroom: Newsroom) -> None:
    root = tmp_path / "feeds"
    v1 = example(STORY_1)
    await newsroom.send(v1)
    before = both(root)
    rss_built_v1 = epoch(before["rss"].feed.updated_parsed)

    edited_at = "2019-09-18T21:00:00+08:00"
    v2 = example(STORY_1, version=2, headline="上海16区融媒体中心全部建成", updated_at=edited_at)
    await newsroom.send(v2)
    after = both(root)
    for kind in ("rss", "atom"):
        assert len(after[kind].entries) == 1, kind
        old, new = before[kind].entries[0], after[kind].entries[0]
        assert new.id == old.id == story_guid(v1.id), kind
        assert new.title == "上海16区融媒体中心全部建成", kind
        assert old.title == v1.headline, kind
        assert epoch(new.published_parsed) == epoch(old.published_parsed), kind
    atom_updated = epoch(after["atom"].entries[0].updated_parsed)
    assert atom_updated == int(dt.datetime.fromisoformat(edited_at).timestamp())
    assert epoch(after["rss"].feed.updated_parsed) >= rss_built_v1  # lastBuildDate

    # A version whose updated_at the CMS did not advance is dated when it reached the feed: still later.
    v3 = example(STORY_1, version=3, summary="更新后的摘要。", updated_at=edited_at)
    await newsroom.send(v3)
    final = both(root)
    assert epoch(final["atom"].entries[0].updated_parsed) > atom_updated
    for kind in ("rss", "atom"):
        assert final[kind].entries[0].summary == "更新后的摘要。"
        assert final[kind].entries[0].id == story_guid(v1.id)

    deliveries = await newsroom.deliveries()
    assert [(d.version, d.action, d.state) for d in deliveries] == [
        (1, Action.PUBLISH, State.DELIVERED),
        (2, Action.UPDATE, State.DELIVERED),
        (3, Action.UPDATE, State.DELIVERED),
    ]
    assert {d.receipt.remote_id for d in deliveries if d.receipt} == {story_guid(v1.id)}


async def test_retraction_removes_the_entry_from_both_feeds(tmp_path: Path, newsroom: Newsroom) -> None:
    root = tmp_path / "feeds"
    first, second = example(STORY_1), example(STORY_2)
    await newsroom.send(first, second)
    await newsroom.send(Story.from_dict({"id": first.id, "version": 2, "pubstatus": "canceled"}))

    for kind, feed in both(root).items():
        assert [e.id for e in feed.entries] == [story_guid(second.id)], kind
    manifest = Manifest.model_validate_json((root / STATE_DIR / MANIFEST_FILE).read_bytes())
    assert [e.story_id for e in manifest.entries] == [second.id]  # no text of the retracted story is kept
    assert [(r.story_id, r.version) for r in manifest.retracted] == [(first.id, 2)]  # only that it was retracted
    retract = [d for d in await newsroom.deliveries() if d.action is Action.RETRACT]
    assert [d.state for d in retract] == [State.DELIVERED]
    assert retract[0].receipt is not None and retract[0].receipt.raw == {"removed": True}


async def test_items_keeps_the_newest_and_a_retraction_lets_the_next_back(tmp_path: Path) -> None:
    stories = [
        make_story(
            id=f"batch-{n}",
            headline=f"第{n}批区级融媒体中心挂牌",
            url=f"https://news.example.cn/batch-{n}.html",
            published_at=dt.datetime(2019, 9, 18, 8 + n, tzinfo=CST).isoformat(),
        )
        for n in range(5)
    ]
    async with open_newsroom(tmp_path, items=3) as room:
        await room.send(*stories)
        root = tmp_path / "feeds"
        for kind, feed in both(root).items():
            assert [e.id for e in feed.entries] == [story_guid(f"batch-{n}") for n in (4, 3, 2)], kind
        await room.send(make_story(id="batch-4", version=2, pubstatus="canceled"))
        for kind, feed in both(root).items():
            assert [e.id for e in feed.entries] == [story_guid(f"batch-{n}") for n in (3, 2, 1)], kind


# ------------------------------------------------------------------------------------------- safety


async def test_hostile_markup_comes_out_clean_in_both_feeds(tmp_path: Path, newsroom: Newsroom) -> None:
    story = make_story(
        id="xss-1",
        headline="<script>alert('headline')</script>宝山汇上线",
        summary="<script>alert('summary')</script>摘要<img src=x onerror=alert(1)>",
        body_html=(
            '<p onclick="alert(2)">正文第一段</p><script>alert(3)</script>'
            '<p><a href="javascript:alert(4)">坏链接</a> <a href="https://news.example.cn/ok">好链接</a></p>'
            '<img src="https://news.example.cn/a.png" onerror="alert(5)"><iframe src="https://evil.example"></iframe>'
            '<svg onload="alert(6)"></svg><style>p{}</style>'
        ),
    )
    await newsroom.send(story)
    root = tmp_path / "feeds"
    for filename in (RSS_FILE, ATOM_FILE):
        raw = (root / filename).read_text(encoding="utf-8").lower()
        for needle in ("<script", "&lt;script", "javascript:", "onerror", "onclick", "onload", "alert(", "iframe"):
            assert needle not in raw, (filename, needle)
    for kind, feed in both(root).items():
        entry = entry_for(feed, "xss-1")
        assert entry.title == "宝山汇上线", kind
        assert entry.summary == "摘要", kind
        content = entry.content[0].value
        assert "正文第一段" in content and "好链接" in content and "坏链接" in content, kind
        assert '<a href="https://news.example.cn/ok" rel="noopener noreferrer">' in content, kind
        for needle in ("script", "javascript", "onerror", "onclick", "onload", "iframe", "svg", "style"):
            assert needle not in content, (kind, needle)


# ------------------------------------------------------------------------------------------- enclosures


def stored(**fields: Any) -> StoredEntry:
    when = dt.datetime(2019, 9, 18, 18, 30, tzinfo=CST)
    base: dict[str, Any] = {
        "guid": story_guid("enc-1"),
        "story_id": "enc-1",
        "version": 1,
        "title": "“宝山汇”APP已正式上线",
        "link": "https://news.example.cn/enc-1.html",
        "summary_html": "摘要",
        "content_html": "<p>正文</p>",
        "published": when,
        "updated": when,
    }
    base.update(fields)
    return StoredEntry(**base)


META = FeedMeta(
    title=FEED_TITLE,
    link=SITE,
    description="区级融媒体",
    language="zh-CN",
    author="编辑部",
    rss_url=f"{SITE}feeds/rss.xml",
    atom_url=f"{SITE}feeds/atom.xml",
)


def test_enclosure_type_and_known_length_in_rss_and_atom() -> None:
    entry = stored(enclosure=Enclosure(href="https://img.example.cn/cover.webp", type="image/webp", length=123456))
    rss, atom = build_feeds(META, [entry], entry.updated)
    for kind, data in (("rss", rss), ("atom", atom)):
        parsed = feedparser.parse(data)
        [parsed_entry] = parsed.entries
        assert parsed_entry.enclosures == [
            {"href": "https://img.example.cn/cover.webp", "type": "image/webp", "length": "123456"}
        ], kind
        assert parsed_entry.link == "https://news.example.cn/enc-1.html", kind
    assert b'rel="enclosure" type="image/webp" length="123456"' in atom


def test_entry_without_link_or_enclosure_still_builds() -> None:
    entry = stored(link=None)
    rss, atom = build_feeds(META, [entry], entry.updated)
    for data in (rss, atom):
        [parsed] = feedparser.parse(data).entries
        assert parsed.id == story_guid("enc-1")
        assert parsed.get("enclosures", []) == []
    assert b"<link" not in atom.split(b"<entry>")[1]


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("https://img.example.cn/a/cover.JPG", "image/jpeg"),
        ("https://img.example.cn/a/cover.png?w=640", "image/png"),
        ("https://img.example.cn/a/cover.gif#x", "image/gif"),
        ("https://img.example.cn/a/cover.webp", "image/webp"),
        ("https://img.example.cn/image/12345", "image/jpeg"),
        ("https://img.example.cn/v1.2/photo", "image/jpeg"),
    ],
)
def test_image_type_from_extension(href: str, expected: str) -> None:
    assert image_type(href) == expected


# ------------------------------------------------------------------------------------------- render


def test_render_is_deterministic_and_uses_the_channel_override() -> None:
    adapter = adapter_for(Path("/nonexistent"))
    story = make_story(overrides={"feed": {"headline": "订阅源专用标题", "summary": "订阅源摘要"}})
    payload = adapter.render(story, Action.PUBLISH)
    assert payload == adapter.render(story, Action.PUBLISH)
    entry = payload.data.entry
    assert entry is not None and payload.data.retraction is None
    assert entry.title == "订阅源专用标题"
    assert entry.summary_html == "订阅源摘要"
    assert entry.guid == "urn:syndicate:story:story-1"
    assert entry.published is None and entry.enclosure is None
    assert json.loads(json.dumps(payload.to_json())) == payload.to_json()


def test_render_derives_a_summary_and_warns() -> None:
    adapter = adapter_for(Path("/nonexistent"))
    body = "<p>" + "宝山" * 200 + "</p>"
    payload = adapter.render(make_story(summary=None, body_html=body, url=None), Action.UPDATE)
    entry = payload.data.entry
    assert entry is not None
    assert entry.summary_html.startswith("宝山宝山") and entry.summary_html.endswith("…")
    assert len(entry.summary_html) == 200
    assert any(w.startswith("summary:") for w in payload.warnings)
    assert any(w.startswith("url:") for w in payload.warnings)


def test_render_retraction_needs_only_the_id() -> None:
    adapter = adapter_for(Path("/nonexistent"))
    payload = adapter.render(Story.from_dict({"id": "撤稿/1", "pubstatus": "canceled"}), Action.RETRACT)
    assert payload.to_json()["data"] == {
        "retraction": {"guid": "urn:syndicate:story:%E6%92%A4%E7%A8%BF/1", "story_id": "撤稿/1"}
    }


# ------------------------------------------------------------------------------------------- files


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def test_writes_are_atomic_and_leave_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "feeds"
    adapter = adapter_for(root)
    await adapter.publish(adapter.render(example(STORY_1), Action.PUBLISH), ctx_for())
    expected = sorted([ATOM_FILE, RSS_FILE, STATE_DIR, f"{STATE_DIR}/{LOCK_FILE}", f"{STATE_DIR}/{MANIFEST_FILE}"])
    assert listing(root) == expected
    assert all((root / name).stat().st_mode & 0o777 == 0o644 for name in (RSS_FILE, ATOM_FILE))
    rss_before, atom_before = (root / RSS_FILE).read_bytes(), (root / ATOM_FILE).read_bytes()

    def disk_full(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("adapters.rss.adapter.os.replace", disk_full)
    with pytest.raises(Retryable, match="No space left"):
        await adapter.publish(adapter.render(example(STORY_2), Action.PUBLISH), ctx_for(story_id="sh-rmt-20190918-002"))
    assert listing(root) == expected  # the temp file is gone
    assert (root / RSS_FILE).read_bytes() == rss_before
    assert (root / ATOM_FILE).read_bytes() == atom_before


async def test_rewrites_are_harmless_and_stale_versions_ignored(tmp_path: Path) -> None:
    root = tmp_path / "feeds"
    adapter = adapter_for(root)
    v1 = adapter.render(example(STORY_1), Action.PUBLISH)
    first = await adapter.publish(v1, ctx_for())
    stamp = (root / RSS_FILE).stat().st_mtime_ns, (root / ATOM_FILE).read_bytes()
    again = await adapter.publish(v1, ctx_for())
    assert again == first
    assert ((root / RSS_FILE).stat().st_mtime_ns, (root / ATOM_FILE).read_bytes()) == stamp  # not even rewritten

    v2 = adapter.render(example(STORY_1, version=2, headline="第二版标题"), Action.UPDATE)
    await adapter.update(v2, ctx_for(version=2, action=Action.UPDATE))
    await adapter.publish(v1, ctx_for())  # a forced replay of the stale publish
    for kind, feed in both(root).items():
        assert [e.title for e in feed.entries] == ["第二版标题"], kind


async def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "feeds"
    # Two instances on one root (as two processes would be): only the file lock keeps them apart.
    writers = [adapter_for(root), adapter_for(root)]
    stories = [make_story(id=f"c-{n:02d}", headline=f"第{n}条") for n in range(24)]
    await asyncio.gather(
        *(
            writers[n % 2].publish(writers[n % 2].render(story, Action.PUBLISH), ctx_for(story_id=story.id))
            for n, story in enumerate(stories)
        )
    )
    manifest = Manifest.model_validate_json((root / STATE_DIR / MANIFEST_FILE).read_bytes())
    assert sorted(e.story_id for e in manifest.entries) == [s.id for s in stories]
    for kind, feed in both(root).items():
        assert len(feed.entries) == 24, kind


async def test_unwritable_root_and_corrupt_manifest_pause_the_channel(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the feeds folder should be")
    adapter = adapter_for(blocker)
    with pytest.raises(AuthRevoked, match="not-a-folder"):
        await adapter.check()
    with pytest.raises(AuthRevoked, match="root"):
        await adapter.publish(adapter.render(make_story(), Action.PUBLISH), ctx_for())

    root = tmp_path / "feeds"
    healthy = adapter_for(root)
    assert "writable" in await healthy.check()
    (root / STATE_DIR / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(AuthRevoked, match=MANIFEST_FILE):
        await healthy.publish(healthy.render(make_story(), Action.PUBLISH), ctx_for())
    assert listing(root) == sorted([STATE_DIR, f"{STATE_DIR}/{LOCK_FILE}", f"{STATE_DIR}/{MANIFEST_FILE}"])


def test_config_keys(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, {"feed": rss_channel(tmp_path)})
    options = settings.channels["feed"].options
    assert isinstance(options, RssOptions)
    assert (options.items, options.language, options.description, options.author) == (50, "zh-CN", None, None)
    with pytest.raises(ConfigError, match="feed"):
        make_settings(tmp_path, {"feed": rss_channel(tmp_path, url="https://x")})
    with pytest.raises(ConfigError, match="items"):
        make_settings(tmp_path, {"feed": rss_channel(tmp_path, items=0)})
    with pytest.raises(ConfigError, match="link"):
        make_settings(tmp_path, {"feed": rss_channel(tmp_path, link="not a url")})


# ------------------------------------------------------------------------------------------- serving


async def test_served_feeds_answer_304_to_matching_validators(tmp_path: Path, newsroom: Newsroom) -> None:
    app = create_app(newsroom.settings, newsroom.engine)
    async with TestClient(TestServer(app)) as client:
        for path in ("/feeds/rss.xml", "/feeds/atom.xml"):
            resp = await client.get(path)
            assert resp.status == 404
            assert (await resp.json())["error"] == "not_found"

        await newsroom.send(example(STORY_1))
        types = {"/feeds/rss.xml": "application/rss+xml", "/feeds/atom.xml": "application/atom+xml"}
        tags: dict[str, str] = {}
        for path, content_type in types.items():
            resp = await client.get(path)
            assert resp.status == 200
            body = await resp.read()
            assert resp.headers["Content-Type"] == f"{content_type}; charset=utf-8"
            etag = resp.headers["ETag"]
            assert etag == f'"{hashlib.sha256(body).hexdigest()[:32]}"'  # strong, over the bytes served
            last_modified = resp.headers["Last-Modified"]
            assert email.utils.parsedate_to_datetime(last_modified).tzinfo is not None
            assert body == (tmp_path / "feeds" / path.rsplit("/", 1)[1]).read_bytes()
            assert feedparser.parse(body).entries[0].id == story_guid("sh-rmt-20190918-001")
            tags[path] = etag

            for headers in (
                {"If-None-Match": etag},
                {"If-None-Match": f'"other", W/{etag}'},
                {"If-None-Match": "*"},
                {"If-Modified-Since": last_modified},
            ):
                resp = await client.get(path, headers=headers)
                assert resp.status == 304, headers
                assert await resp.read() == b""
                assert resp.headers["ETag"] == etag
            earlier = email.utils.format_datetime(
                email.utils.parsedate_to_datetime(last_modified) - dt.timedelta(days=1), usegmt=True
            )
            for headers in (
                {"If-Modified-Since": earlier},
                {"If-None-Match": '"stale"', "If-Modified-Since": last_modified},  # If-None-Match decides
                {"If-Modified-Since": "not a date"},
            ):
                resp = await client.get(path, headers=headers)
                assert resp.status == 200, headers
            resp = await client.head(path)
            assert resp.status == 200 and resp.headers["ETag"] == etag

        await newsroom.send(example(STORY_1, version=2, headline="上海16区融媒体中心全部建成"))
        for path, old_tag in tags.items():
            resp = await client.get(path, headers={"If-None-Match": old_tag})
            assert resp.status == 200
            assert resp.headers["ETag"] != old_tag
            assert "上海16区融媒体中心全部建成" in (await resp.text())


def test_payload_round_trips_through_the_store_format() -> None:
    adapter = adapter_for(Path("/nonexistent"))
    payload = adapter.render(example(STORY_1), Action.PUBLISH)
    assert adapter.load_payload(Payload.from_json(json.loads(json.dumps(payload.to_json())))) == payload


#: Payloads as deliveries queued before the payload model stored them (rendered by the untyped channel).
STORED_PUBLISH: dict[str, Any] = {
    "data": {
        "entry": {
            "guid": "urn:syndicate:story:shape-1",
            "story_id": "shape-1",
            "version": 2,
            "title": "宝山汇 上线",
            "link": "https://news.example.cn/shape-1.html",
            "summary_html": "摘要 &amp; 更多",
            "content_html": '<h2>小标题</h2><p>第一段 <a href="https://x.example/" rel="noopener noreferrer">'
            '链接</a></p><figure><img src="https://cdn.example/a.png" alt="图"><figcaption>说明</figcaption></figure>',
            "author": "记者 王",
            "categories": ["融媒体", "宝山"],
            "published": "2026-11-30T08:00:00+08:00",
            "updated": "2026-11-30T09:30:00+08:00",
            "enclosure": {"href": "https://cdn.example/cover.jpg", "type": "image/jpeg", "length": None},
        }
    },
    "text_length": None,
    "warnings": [],
}
STORED_RETRACT: dict[str, Any] = {
    "data": {"retraction": {"guid": "urn:syndicate:story:shape-1", "story_id": "shape-1"}},
    "text_length": None,
    "warnings": [],
}


async def test_payloads_stored_before_the_payload_model_still_load_and_send(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path)
    publish = adapter.load_payload(Payload.from_json(STORED_PUBLISH))
    retract = adapter.load_payload(Payload.from_json(STORED_RETRACT))
    assert publish.to_json() == STORED_PUBLISH and retract.to_json() == STORED_RETRACT
    receipt = await adapter.publish(publish, ctx_for("shape-1", 2, "feed"))
    assert receipt.remote_id == "urn:syndicate:story:shape-1"
    item = entry_for(parse(tmp_path, RSS_FILE), "shape-1")
    assert item.title == "宝山汇 上线" and item.link == "https://news.example.cn/shape-1.html"
    assert item.content[0].value == STORED_PUBLISH["data"]["entry"]["content_html"]
    assert entry_for(parse(tmp_path, ATOM_FILE), "shape-1").enclosures[0].href == "https://cdn.example/cover.jpg"
    await adapter.retract(retract, ctx_for("shape-1", 3, "feed", Action.RETRACT))
    assert parse(tmp_path, RSS_FILE).entries == []


def test_a_payload_of_the_wrong_shape_is_refused_on_load() -> None:
    adapter = adapter_for(Path("/nonexistent"))
    for data in ({}, {**STORED_PUBLISH["data"], **STORED_RETRACT["data"]}, {"entry": {"guid": "g"}}):
        with pytest.raises(Permanent, match="rss' payload model"):
            adapter.load_payload(Payload.from_json({"data": data}))


# ------------------------------------------------------------------------------- entries the feeds cannot carry


def poisoned_payload(story_id: str = "poison-1") -> Payload[Any]:
    from adapters.rss.adapter import FeedEntry, RssPayload

    entry = FeedEntry(
        guid=story_guid(story_id),
        story_id=story_id,
        version=1,
        title="控制\x01字符",
        summary_html="摘要",
        content_html="<p>正文</p>",
    )
    return Payload(data=RssPayload(entry=entry))


async def test_an_entry_the_feeds_cannot_carry_fails_alone_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "feeds"
    adapter = adapter_for(root)
    await adapter.publish(adapter.render(make_story(id="good-1"), Action.PUBLISH), ctx_for(story_id="good-1"))
    manifest_before = (root / STATE_DIR / MANIFEST_FILE).read_bytes()
    rss_before = (root / RSS_FILE).read_bytes()

    # A payload queued before intake refused such text: its own delivery fails, with the reason.
    with pytest.raises(Permanent, match=r"poison-1.*XML compatible"):
        await adapter.publish(poisoned_payload(), ctx_for(story_id="poison-1"))
    assert (root / STATE_DIR / MANIFEST_FILE).read_bytes() == manifest_before  # the manifest never names it
    assert (root / RSS_FILE).read_bytes() == rss_before

    await adapter.publish(adapter.render(make_story(id="good-2"), Action.PUBLISH), ctx_for(story_id="good-2"))
    for kind, feed in both(root).items():
        assert sorted(e.id for e in feed.entries) == [story_guid("good-1"), story_guid("good-2")], kind


async def test_a_poisoned_entry_already_in_the_manifest_does_not_stop_the_feeds(tmp_path: Path) -> None:
    root = tmp_path / "feeds"
    adapter = adapter_for(root)
    await adapter.publish(adapter.render(make_story(id="old-1"), Action.PUBLISH), ctx_for(story_id="old-1"))
    # The state an older syndicate left: the entry went into the manifest, then the feed build failed.
    path = root / STATE_DIR / MANIFEST_FILE
    manifest = Manifest.model_validate_json(path.read_bytes())
    poison = stored(guid=story_guid("poison-1"), story_id="poison-1", title="控制\x00字符")
    path.write_bytes(manifest.model_copy(update={"entries": [poison, *manifest.entries]}).model_dump_json().encode())

    await adapter.publish(adapter.render(make_story(id="next-1"), Action.PUBLISH), ctx_for(story_id="next-1"))
    for kind, feed in both(root).items():
        assert sorted(e.id for e in feed.entries) == [story_guid("next-1"), story_guid("old-1")], kind
    kept = Manifest.model_validate_json(path.read_bytes())
    assert sorted(e.story_id for e in kept.entries) == ["next-1", "old-1"]  # dropped once, not tried forever


def test_render_refuses_a_story_the_feeds_cannot_carry() -> None:
    from syndicate.delivery import RenderError

    adapter = adapter_for(Path("/nonexistent"))
    # Built without validation, as a story stored before intake refused such text comes back.
    story = make_story().model_copy(update={"summary": "摘要\x08"})
    with pytest.raises(RenderError, match="XML compatible"):
        adapter.render(story, Action.PUBLISH)


# ------------------------------------------------------------------------------- enclosure sizes, never 0


def covered(story_id: str, href: str, **image: Any) -> Story:
    return make_story(id=story_id, images=[{"href": href, "role": "cover", **image}])


async def test_a_size_the_story_declares_in_ninjs_is_the_enclosure_length_without_a_fetch(tmp_path: Path) -> None:
    document = to_ninjs(example(STORY_1))
    for association in document["associations"]:
        for rendition in association.get("renditions", []):
            rendition["sizeinbytes"] = 48_213
    story = read_document(document)
    assert story.cover is not None and story.cover.size_bytes == 48_213
    exported = [a for a in to_ninjs(story)["associations"] if a["name"] == "cover"]
    assert exported[0]["renditions"][0]["sizeinbytes"] == 48_213  # exported too

    adapter = adapter_for(tmp_path)  # "declared": it may not fetch anything
    await adapter.publish(adapter.render(story, Action.PUBLISH), ctx_for(story.id))
    for kind, feed in both(tmp_path).items():
        [enclosure] = entry_for(feed, story.id).enclosures
        assert enclosure.length == "48213", kind


async def test_an_unknown_size_leaves_the_rss_enclosure_out_and_never_writes_0(tmp_path: Path) -> None:
    # Nothing listens on the examples' media port's neighbour; "declared" forbids fetching at all.
    for options, story_id in (
        ({"enclosure_sizes": "declared"}, "unsized-1"),
        ({"enclosure_sizes": "fetch"}, "unsized-2"),
    ):
        root = tmp_path / story_id
        adapter = adapter_for(root, **options)  # its own fetcher, default policy: 127.0.0.1 is refused unasked
        story = covered(story_id, "http://127.0.0.1:9/media/cover.png")
        receipt = await adapter.publish(adapter.render(story, Action.PUBLISH), ctx_for(story_id))
        await adapter.close()
        assert "left out of RSS" in receipt.raw["enclosure"], options
        rss_entry = entry_for(parse(root, RSS_FILE), story_id)
        assert rss_entry.get("enclosures", []) == [], options
        [atom_enclosure] = entry_for(parse(root, ATOM_FILE), story_id).enclosures
        assert atom_enclosure.href == "http://127.0.0.1:9/media/cover.png" and "length" not in atom_enclosure
        raw = (root / RSS_FILE).read_bytes() + (root / ATOM_FILE).read_bytes()
        assert b'length="0"' not in raw and b"<enclosure" not in raw


async def test_a_fetched_size_and_type_come_from_the_file(tmp_path: Path, sandbox: RunningSandbox) -> None:
    settings = make_settings(tmp_path, {"feed": rss_channel(tmp_path / "feeds", enclosure_sizes="fetch")})
    adapter = settings.channels["feed"].create_adapter()
    assert isinstance(adapter, RssAdapter)
    # A CDN URL without an extension: rendering guesses JPEG, the fetched bytes say PNG.
    href = f"{sandbox.url}/media/story-green-800x800.png"
    story = covered("fetched-1", href)
    payload = adapter.render(story, Action.PUBLISH)
    assert payload.data.entry is not None and payload.data.entry.enclosure is not None
    assert payload.data.entry.enclosure.length is None  # render is pure: it fetches nothing
    receipt = await adapter.publish(payload, ctx_for("fetched-1"))
    again = await adapter.update(
        adapter.render(make_story(id="fetched-1", version=2, images=story.images), Action.UPDATE),
        ctx_for("fetched-1", 2, action=Action.UPDATE),
    )
    await adapter.close()
    assert "enclosure" not in receipt.raw and "enclosure" not in again.raw
    size = (SANDBOX_MEDIA / "story-green-800x800.png").stat().st_size
    for kind, feed in both(tmp_path / "feeds").items():
        [enclosure] = entry_for(feed, "fetched-1").enclosures
        assert (enclosure.length, enclosure.type) == (str(size), "image/png"), kind
    # Fetched once: the update found it in the media fetcher's cache.
    assert sandbox.sandbox.stats("media")["story-green-800x800.png"].requests == 1


def test_an_enclosure_of_length_0_is_refused() -> None:
    with pytest.raises(ValueError, match="length"):
        Enclosure(href="https://img.example.cn/a.png", type="image/png", length=0)


def test_feeds_url_sets_both_self_links(tmp_path: Path) -> None:
    meta = FeedMeta.from_options(RssOptions(root=tmp_path, title="t", link=SITE, feeds_url="https://cdn.example.cn/f"))
    assert (meta.rss_url, meta.atom_url) == ("https://cdn.example.cn/f/rss.xml", "https://cdn.example.cn/f/atom.xml")
    rss, atom = build_feeds(meta, [stored()], stored().updated)
    assert feedparser.parse(rss).feed.link == SITE  # the channel <link> stays the site, not the feed
    assert b'<link href="https://cdn.example.cn/f/atom.xml" rel="self" type="application/atom+xml"/>' in atom
    assert b'<atom:link href="https://cdn.example.cn/f/rss.xml" rel="self" type="application/rss+xml"/>' in rss
    with pytest.raises(ConfigError, match="feeds_url"):
        make_settings(tmp_path, {"feed": rss_channel(tmp_path, feeds_url="not a url")})
    with pytest.raises(ConfigError, match="enclosure_sizes"):
        make_settings(tmp_path, {"feed": rss_channel(tmp_path, enclosure_sizes="guess")})


# ------------------------------------------------------------------------ a manifest bounded by items, not the archive


ITEMS = 5


def dated(n: int, version: int = 1, **fields: Any) -> Story:
    """Story n of an archive, one an hour; a later n is newer."""
    published = dt.datetime(2026, 1, 1, tzinfo=CST) + dt.timedelta(hours=n)
    fields = {"headline": f"第{n}条", "published_at": published.isoformat(), **fields}
    return make_story(id=f"a-{n:03d}", version=version, **fields)


async def deliver(adapter: RssAdapter, story: Story, action: Action = Action.PUBLISH) -> Any:
    if story.pubstatus == "canceled":
        action = Action.RETRACT
    return await adapter.send(adapter.render(story, action), ctx_for(story.id, story.version, "feed", action))


def manifest_of(root: Path) -> Manifest:
    return Manifest.model_validate_json((root / STATE_DIR / MANIFEST_FILE).read_bytes())


def snapshot(root: Path) -> tuple[bytes, bytes, bytes]:
    return (
        (root / STATE_DIR / MANIFEST_FILE).read_bytes(),
        (root / RSS_FILE).read_bytes(),
        (root / ATOM_FILE).read_bytes(),
    )


def shown(root: Path) -> list[str]:
    ids = {kind: [e.id for e in feed.entries] for kind, feed in both(root).items()}
    assert ids["rss"] == ids["atom"]
    return [guid.rsplit(":", 1)[1] for guid in ids["rss"]]


async def test_the_manifest_stays_bounded_after_ten_times_items_stories(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, items=ITEMS)
    sizes = {}
    for n in range(10 * ITEMS):
        await deliver(adapter, dated(n))
        if n % 10 == 9:  # a retraction now and then: its record must not pile up either
            await deliver(adapter, Story.from_dict({"id": f"a-{n - 1:03d}", "version": 2, "pubstatus": "canceled"}))
        sizes[n] = (tmp_path / STATE_DIR / MANIFEST_FILE).stat().st_size
    manifest = manifest_of(tmp_path)
    assert len(manifest.entries) == 2 * ITEMS - 1  # the last retraction came after the last publish
    # Retractions at or below the horizon are covered by it; only the one above is remembered.
    assert [(r.story_id, r.version) for r in manifest.retracted] == [("a-048", 2)]
    assert shown(tmp_path) == [f"a-{n:03d}" for n in (49, 47, 46, 45, 44)]  # 48 was retracted
    # O(items), not O(archive): the manifest of 50 stories is no bigger than the one of 20.
    assert sizes[49] <= sizes[19] * 1.1
    assert manifest.horizon is not None and manifest.horizon.guid == story_guid("a-039")


async def test_an_update_of_a_story_that_fell_out_of_the_window_changes_nothing(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, items=ITEMS)
    for n in range(4 * ITEMS):
        await deliver(adapter, dated(n))
    before = snapshot(tmp_path)
    # Story 2 fell out long ago (the window is the newest 10): its correction must not come back as a new item.
    receipt = await deliver(adapter, dated(2, version=2, headline="第2条(更正)"), Action.UPDATE)
    assert receipt.raw["left_out"].startswith("published before every story")
    assert snapshot(tmp_path) == before  # not even the feeds' lastBuildDate moved
    # A story restored to the top by the CMS (published again, later) is news again.
    await deliver(adapter, dated(2, version=3).model_copy(update={"published_at": dated(99).published_at}))
    assert shown(tmp_path)[0] == "a-002"


async def test_a_retraction_outlives_the_story_leaving_the_manifest(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, items=ITEMS)
    for n in range(2 * ITEMS):
        await deliver(adapter, dated(n))
    # The story retracted while still in the feed; then the stale publish is replayed (syndicate replay).
    await deliver(adapter, Story.from_dict({"id": "a-009", "version": 2, "pubstatus": "canceled"}))
    receipt = await deliver(adapter, dated(9))
    assert "older than the story's retraction" in receipt.raw["left_out"]
    assert "a-009" not in shown(tmp_path)
    # A retraction of a story the manifest never held changes neither feed, and still refuses its stale publish.
    before = snapshot(tmp_path)[1:]
    gone = await deliver(adapter, Story.from_dict({"id": "a-050", "version": 3, "pubstatus": "canceled"}))
    assert gone.raw == {"removed": False}
    assert snapshot(tmp_path)[1:] == before
    await deliver(adapter, dated(50, version=2))
    assert "a-050" not in shown(tmp_path)
    # The desk restores the story with a newer version: it is back.
    await deliver(adapter, dated(9, version=3))
    assert shown(tmp_path)[0] == "a-009"
    assert "a-009" not in [r.story_id for r in manifest_of(tmp_path).retracted]


async def test_a_stale_retraction_does_not_remove_a_restored_story(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, items=ITEMS)
    await deliver(adapter, dated(1))
    await deliver(adapter, Story.from_dict({"id": "a-001", "version": 2, "pubstatus": "canceled"}))
    await deliver(adapter, dated(1, version=3))
    replayed = await deliver(adapter, Story.from_dict({"id": "a-001", "version": 2, "pubstatus": "canceled"}))
    assert replayed.raw == {"removed": False}
    assert shown(tmp_path) == ["a-001"]


async def test_a_manifest_written_before_the_window_had_a_horizon_still_loads(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, items=ITEMS)
    await deliver(adapter, dated(1))
    path = tmp_path / STATE_DIR / MANIFEST_FILE
    old = json.loads(path.read_bytes())
    path.write_text(json.dumps({"format": 1, "changed_at": old["changed_at"], "entries": old["entries"]}))
    await deliver(adapter, dated(2))
    assert shown(tmp_path) == ["a-002", "a-001"]
    assert manifest_of(tmp_path).format == 2
