"""The website channel: pages, indexes and sitemap written into a web root, through the Engine, checked with real
parsers (html.parser, xml.etree), plus atomic writes, locking, XSS, path safety and the /site/ preview."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import functools
import html as html_module
import json
import os
import posixpath
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient, TestServer

from adapters.website.adapter import (
    STATE_DIR,
    WebsiteAdapter,
    WebsiteOptions,
    is_page_path,
    page_file_stem,
    page_path,
    section_slug,
)
from syndicate.channel import register
from syndicate.config import ConfigError
from syndicate.delivery import Action, AuthRevoked, Payload, Permanent, Receipt, RenderError
from syndicate.engine import Engine
from syndicate.files import write_atomic
from syndicate.ninjs import read_document
from syndicate.server import create_app
from syndicate.store import open_store
from syndicate.store.base import DeliveryFilter, DeliveryRecord, State, Store
from syndicate.story import Story
from tests.support import REPO, closed_port, make_settings, make_story
from tests.support import ctx_for as support_ctx

ctx_for = functools.partial(support_ctx, channel="site")

register(WebsiteAdapter)

BASE = "https://news.example.cn"
SITEMAP = "{http://www.sitemaps.org/schemas/sitemap/0.9}"
EXAMPLES = {
    path.name: read_document(json.loads(path.read_text(encoding="utf-8")))
    for path in sorted((REPO / "examples").glob("*.json"))
}
S1 = EXAMPLES["01-district-media-centres.json"]
S2 = EXAMPLES["02-baoshan-app.json"]
S3 = EXAMPLES["03-first-batch.ninjs.json"]
P1 = "/shanghai/2019/09/sh-rmt-20190918-001.html"
P2 = "/baoshan/2019/09/sh-rmt-20190918-002.html"
P3 = "/shanghai/2019/09/sh-rmt-20190918-003.html"


# --- a small HTML reader on top of html.parser -----------------------------------------------------------------


@dataclass
class Page:
    """What a browser or a crawler would see of one page."""

    lang: str | None = None
    title: str = ""
    meta: dict[str, list[str]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    images: list[dict[str, str | None]] = field(default_factory=list)
    figcaptions: list[str] = field(default_factory=list)
    anchors: list[tuple[str | None, str]] = field(default_factory=list)
    tags: list[tuple[str, list[tuple[str, str | None]]]] = field(default_factory=list)
    text: str = ""

    def one(self, key: str) -> str:
        [value] = self.meta[key]
        return value


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._open: list[str] = []
        self._anchor: list[str] | None = None
        self._anchor_href: str | None = None
        self._caption: list[str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.page.tags.append((tag, attrs))
        if tag == "html":
            self.page.lang = values.get("lang")
        elif tag == "meta":
            key = values.get("property") or values.get("name") or values.get("http-equiv")
            if key:
                self.page.meta.setdefault(key, []).append(values.get("content") or "")
        elif tag == "link" and values.get("rel"):
            self.page.links[values["rel"] or ""] = values.get("href") or ""
        elif tag == "img":
            self.page.images.append(values)
        elif tag == "a":
            self._anchor, self._anchor_href = [], values.get("href")
        elif tag == "figcaption":
            self._caption = []
        if tag not in ("meta", "link", "img", "br"):
            self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._anchor is not None:
            self.page.anchors.append((self._anchor_href, "".join(self._anchor)))
            self._anchor = None
        elif tag == "figcaption" and self._caption is not None:
            self.page.figcaptions.append("".join(self._caption))
            self._caption = None
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if "title" in self._open:
            self.page.title += data
        if "body" in self._open:
            self._text.append(data)
        if self._anchor is not None:
            self._anchor.append(data)
        if self._caption is not None:
            self._caption.append(data)

    def close(self) -> None:
        super().close()
        self.page.text = " ".join("".join(self._text).split())


def assert_nothing_executable(page: Page) -> None:
    """No element or attribute a browser would run: no script-like elements, no on* handlers, no javascript:."""
    tag_names = {name for name, _ in page.tags}
    assert not tag_names & {"script", "iframe", "svg", "style", "object", "embed", "form"}, tag_names
    for name, attrs in page.tags:
        for attr, value in attrs:
            assert not attr.startswith("on"), (name, attr, value)
            if attr in ("href", "src", "action", "formaction") and value:
                assert not value.strip().lower().startswith(("javascript:", "data:", "vbscript:")), (name, attr)


def parse_page(html: str) -> Page:
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return parser.page


def sitemap_files(root: Path) -> dict[str, str]:
    """The sitemap index (``sitemap.xml``): each sitemap file's file name -> lastmod."""
    tree = ET.parse(root / "sitemap.xml")
    assert tree.getroot().tag == f"{SITEMAP}sitemapindex"
    found: dict[str, str] = {}
    for item in tree.getroot().iter(f"{SITEMAP}sitemap"):
        loc = item.findtext(f"{SITEMAP}loc") or ""
        assert loc.startswith(f"{BASE}/sitemap-") and loc.endswith(".xml"), loc
        found[loc.removeprefix(f"{BASE}/")] = item.findtext(f"{SITEMAP}lastmod") or ""
    return found


def sitemap_urls(root: Path, name: str) -> dict[str, str]:
    tree = ET.parse(root / name)
    assert tree.getroot().tag == f"{SITEMAP}urlset"
    return {
        url.findtext(f"{SITEMAP}loc") or "": url.findtext(f"{SITEMAP}lastmod") or ""
        for url in tree.getroot().iter(f"{SITEMAP}url")
    }


def sitemap_all(root: Path) -> dict[str, str]:
    """Every URL of every sitemap file the index names -> its lastmod (each URL in one file only)."""
    found: dict[str, str] = {}
    for name in sitemap_files(root):
        urls = sitemap_urls(root, name)
        assert not set(urls) & set(found), "a URL in two sitemap files"
        found.update(urls)
    return found


def sitemap_entries(root: Path) -> dict[str, str]:
    """The article pages the sitemap lists -> lastmod (the home and section pages left out)."""
    return {loc: lastmod for loc, lastmod in sitemap_all(root).items() if loc.endswith(".html")}


def listed(root: Path, index: str) -> list[str]:
    """The page paths an index links to (the story list, not navigation), resolved against the index's location."""
    page = parse_page((root / index.lstrip("/")).read_text(encoding="utf-8"))
    here = posixpath.dirname(index)
    paths = [posixpath.normpath(posixpath.join(here, href or "")) for href, _ in page.anchors]
    return [p for p in paths if is_page_path(p)]  # not the pager's links to archive pages


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# --- driving the channel through the Engine --------------------------------------------------------------------


def website_channel(root: Path, **options: Any) -> dict[str, Any]:
    return {"kind": "website", "root": str(root), "base_url": BASE, "retry": [0, 0.05, 0.05], "timeout": 5, **options}


@dataclass
class Site:
    root: Path
    store: Store
    engine: Engine

    async def send(self, *stories: Story) -> None:
        for story in stories:
            await self.engine.accept(story)
        await self.engine.run(until_idle=True, idle_horizon=1)

    async def deliveries(self, story_id: str | None = None) -> list[DeliveryRecord]:
        found = await self.store.list_deliveries(DeliveryFilter(channels=["site"]))
        return [d for d in found if story_id is None or d.story_id == story_id]

    def page(self, path: str) -> Page:
        return parse_page((self.root / path.lstrip("/")).read_text(encoding="utf-8"))


@contextlib.asynccontextmanager
async def running_site(tmp_path: Path, **options: Any) -> AsyncIterator[Site]:
    root = tmp_path / "www"
    root.mkdir(exist_ok=True)
    settings = make_settings(tmp_path, {"site": website_channel(root, **options)})
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            yield Site(root, store, engine)
    finally:
        await store.close()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with running_site(tmp_path) as running:
        yield running


def adapter_for(root: Path, **options: Any) -> WebsiteAdapter:
    return WebsiteAdapter("site", WebsiteOptions(root=root, base_url=BASE, **options), timeout=5)


# --- publishing ------------------------------------------------------------------------------------------------


async def test_publish_writes_article_pages_with_their_meta(site: Site) -> None:
    await site.send(S1, S2, S3)
    deliveries = {d.story_id: d for d in await site.deliveries()}
    assert {d.state for d in deliveries.values()} == {State.DELIVERED}
    receipt = deliveries[S1.id].receipt
    assert receipt is not None and receipt.remote_id == P1 and receipt.url == BASE + P1
    assert S1.url == receipt.url  # the example's own canonical URL follows the same scheme

    page = site.page(P1)
    assert page.lang == "zh-CN"
    assert page.title == S1.headline
    assert page.links["canonical"] == BASE + P1
    assert page.one("og:type") == "article"
    assert page.one("og:title") == S1.headline
    assert page.one("og:description") == S1.summary
    assert page.one("og:url") == BASE + P1
    assert page.one("og:image") == "http://127.0.0.1:8765/media/story-amber-1200x675.png"  # the cover
    assert page.one("og:image:alt") == "宝山区融媒体中心成立大会 (主办方供图)"
    assert page.one("article:published_time") == "2019-09-18T18:30:00+08:00"
    assert page.one("article:modified_time") == "2019-09-18T18:30:00+08:00"
    assert page.one("article:section") == "shanghai"
    assert page.meta["article:tag"] == ["融媒体", "宝山汇", "上海"]
    # Every image once (the body already places them all), each with its alt text and caption.
    assert [img["src"] for img in page.images] == [
        "http://127.0.0.1:8765/media/story-blue-640x360.png",
        "http://127.0.0.1:8765/media/story-amber-1200x675.png",
        "http://127.0.0.1:8765/media/story-green-800x800.png",
    ]
    assert [img["alt"] for img in page.images] == [image.alt for image in S1.images]
    assert page.figcaptions == [image.caption for image in S1.images]
    assert S1.subheadline and S1.subheadline in page.text
    assert "宝山区委书记汪泓这样介绍呱呱坠地的宝山区融媒体中心" in page.text
    assert "人民网上海9月18日电(轩召强 葛俊俊)" in page.text

    # The ninjs story: its cover is not in the body, so it leads the page with the caption as alt text.
    ninjs = site.page(P3)
    assert ninjs.title == S3.headline and ninjs.one("article:section") == "shanghai"
    assert ninjs.meta["article:tag"] == ["融媒体"]
    assert ninjs.images == [
        {
            "src": "http://127.0.0.1:8765/media/story-blue-640x360.png",
            "alt": "上海16区融媒体客户端入驻人民号 (主办方供图)",
            "width": "640",
            "height": "360",
        }
    ]
    assert ninjs.figcaptions == ["上海16区融媒体客户端入驻人民号 (主办方供图)"]
    assert site.page(P2).one("og:image:alt") == "“宝山汇”APP"
    assert temp_files(site.root) == []


async def test_indexes_list_newest_first_and_the_sitemap_lists_the_live_pages(site: Site) -> None:
    await site.send(S1, S3, S2)  # accepted out of order on purpose
    assert listed(site.root, "/index.html") == [P3, P2, P1]  # 20:00, 19:00, 18:30
    assert listed(site.root, "/shanghai/index.html") == [P3, P1]
    assert listed(site.root, "/baoshan/index.html") == [P2]
    for path in (P1, P2, P3):
        assert (site.root / path.lstrip("/")).is_file()  # every index link resolves to a real page
    home = parse_page((site.root / "index.html").read_text(encoding="utf-8"))
    assert home.links["canonical"] == f"{BASE}/" and home.lang == "zh-CN"
    # Section links in order of each section's newest story.
    assert [a for a in home.anchors if a[0] in ("shanghai/", "baoshan/")] == [
        ("shanghai/", "shanghai"),
        ("baoshan/", "baoshan"),
    ]
    assert sitemap_entries(site.root) == {
        BASE + P1: "2019-09-18T18:30:00+08:00",
        BASE + P2: "2019-09-18T19:00:00+08:00",
        BASE + P3: "2019-09-18T20:00:00+08:00",
    }


async def test_update_rewrites_the_page_and_the_indexes(site: Site) -> None:
    await site.send(S1, S3)
    v2 = S1.model_copy(
        update={
            "version": 2,
            "headline": "上海16区融媒体中心全部挂牌(更新)",
            "updated_at": S1.published_at.replace(hour=21) if S1.published_at else None,
        }
    )
    await site.send(v2)
    [publish, update] = await site.deliveries(S1.id)
    assert (publish.action, update.action, update.state) == (Action.PUBLISH, Action.UPDATE, State.DELIVERED)
    assert update.receipt is not None and update.receipt.remote_id == P1

    page = site.page(P1)
    assert page.title == "上海16区融媒体中心全部挂牌(更新)" == page.one("og:title")
    assert page.one("article:published_time") == "2019-09-18T18:30:00+08:00"
    assert page.one("article:modified_time") == "2019-09-18T21:30:00+08:00"
    home = parse_page((site.root / "index.html").read_text(encoding="utf-8"))
    assert ("shanghai/2019/09/sh-rmt-20190918-001.html", "上海16区融媒体中心全部挂牌(更新)") in home.anchors
    assert listed(site.root, "/index.html") == [P3, P1]  # still ordered by publication, not by update
    assert sitemap_entries(site.root)[BASE + P1] == "2019-09-18T21:30:00+08:00"


async def test_a_section_change_moves_the_page_and_leaves_a_pointer(site: Site) -> None:
    await site.send(S1, S3)
    moved = S1.model_copy(update={"version": 2, "section": "baoshan"})
    await site.send(moved)
    new_path = "/baoshan/2019/09/sh-rmt-20190918-001.html"
    [_, update] = await site.deliveries(S1.id)
    assert update.state is State.DELIVERED and update.receipt is not None
    assert update.receipt.remote_id == new_path and update.receipt.raw["moved_from"] == [P1]
    assert site.page(new_path).title == S1.headline
    pointer = site.page(P1)
    assert pointer.one("robots") == "noindex"
    assert pointer.links["canonical"] == BASE + new_path
    assert pointer.one("refresh") == f"0; url={BASE}{new_path}"
    assert listed(site.root, "/shanghai/index.html") == [P3]
    assert listed(site.root, "/baoshan/index.html") == [new_path]
    assert set(sitemap_entries(site.root)) == {BASE + new_path, BASE + P3}


async def test_retract_leaves_a_tombstone_and_drops_the_story_everywhere(site: Site) -> None:
    await site.send(S1, S2, S3)
    # A bare cancel, as CMSes send it: no headline, section or times. The receipt says where the page is.
    await site.send(Story.from_dict({"id": S1.id, "version": 2, "pubstatus": "canceled"}))
    retraction = (await site.deliveries(S1.id))[-1]
    assert (retraction.action, retraction.state) == (Action.RETRACT, State.DELIVERED)
    assert retraction.receipt is not None and retraction.receipt.remote_id == P1

    tombstone = site.page(P1)
    assert tombstone.one("robots") == "noindex"
    assert tombstone.title == "本文已撤回" and tombstone.lang == "zh-CN"
    assert S1.headline not in tombstone.text and "汪泓" not in tombstone.text
    assert tombstone.anchors == [(f"{BASE}/", "首页")]
    assert listed(site.root, "/index.html") == [P3, P2]
    assert listed(site.root, "/shanghai/index.html") == [P3]
    assert set(sitemap_entries(site.root)) == {BASE + P2, BASE + P3}

    # Withdrawing the only story of a section empties that section's index rather than leaving it stale.
    await site.send(Story.from_dict({"id": S2.id, "version": 2, "pubstatus": "canceled"}))
    assert listed(site.root, "/baoshan/index.html") == []
    home = parse_page((site.root / "index.html").read_text(encoding="utf-8"))
    assert [href for href, _ in home.anchors if not (href or "").endswith(".html")] == ["shanghai/"]
    assert "暂无稿件" in parse_page((site.root / "baoshan/index.html").read_text(encoding="utf-8")).text
    assert set(sitemap_entries(site.root)) == {BASE + P3}


async def test_a_withdrawn_story_can_be_published_again(site: Site) -> None:
    await site.send(S3)
    await site.send(Story.from_dict({"id": S3.id, "version": 2, "pubstatus": "canceled"}))
    assert listed(site.root, "/index.html") == []
    assert site.page(P3).one("robots") == "noindex"
    await site.send(S3.model_copy(update={"version": 3}))
    assert site.page(P3).title == S3.headline
    assert listed(site.root, "/index.html") == [P3]


async def test_several_deliveries_at_once_all_reach_the_indexes(tmp_path: Path) -> None:
    """Concurrent deliveries on one channel (concurrency 4) must not lose each other's manifest entries."""
    async with running_site(tmp_path, concurrency=4) as site:
        stories = [
            make_story(id=f"s-{i:02d}", section="news", published_at=f"2024-05-{i + 1:02d}T08:00:00+08:00")
            for i in range(12)
        ]
        await site.send(*stories)
        assert {d.state for d in await site.deliveries()} == {State.DELIVERED}
        expected = [f"/news/2024/05/s-{i:02d}.html" for i in reversed(range(12))]
        assert listed(site.root, "/index.html") == expected
        assert listed(site.root, "/news/index.html") == expected
        assert len(sitemap_entries(site.root)) == 12


# --- templates -------------------------------------------------------------------------------------------------


async def test_templates_from_the_config_folder_override_the_built_in_ones(tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "article.html.j2").write_text(
        '{% extends "base.html.j2" %}{% block title %}宝山汇 | {{ headline }}{% endblock %}'
        '{% block body %}<main class="house-style">{{ body_html }}</main>{% endblock %}',
        encoding="utf-8",
    )
    async with running_site(tmp_path, templates=str(folder)) as site:
        await site.send(S2)
        raw = (site.root / P2.lstrip("/")).read_text(encoding="utf-8")
        page = parse_page(raw)
        assert page.title == f"宝山汇 | {S2.headline}"
        assert '<main class="house-style">' in raw
        assert "宣传部长赵懿" in page.text
        home = parse_page((site.root / "index.html").read_text(encoding="utf-8"))
        assert home.title == "首页"  # not overridden: the built-in home template
        assert listed(site.root, "/index.html") == [P2]


def test_a_missing_templates_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, {"site": website_channel(tmp_path, templates=str(tmp_path / "nope"))})
    assert "templates" in str(caught.value) and "not a folder" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, {"site": {**website_channel(tmp_path), "base_url": "news.example.cn"}})
    assert "base_url" in str(caught.value)


def test_a_broken_override_template_fails_rendering_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "article.html.j2").write_text("{{ no_such_variable }}", encoding="utf-8")
    adapter = adapter_for(tmp_path, templates=tmp_path)
    with pytest.raises(RenderError, match=r"article\.html\.j2.*no_such_variable"):
        adapter.render(S1, Action.PUBLISH)


# --- rendering -------------------------------------------------------------------------------------------------


def test_render_is_deterministic_and_survives_the_stores_json(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path)
    first = adapter.render(S1, Action.PUBLISH)
    assert adapter.render(S1, Action.PUBLISH) == first
    assert json.loads(json.dumps(first.to_json())) == first.to_json()
    assert first.data.entry is not None and first.data.entry.path == P1
    assert first.data.entry.cover_src == "http://127.0.0.1:8765/media/story-amber-1200x675.png"
    assert adapter.load_payload(Payload.from_json(json.loads(json.dumps(first.to_json())))) == first
    assert adapter.render(S1.model_copy(update={"headline": "另一个标题"}), Action.PUBLISH) != first


def test_images_missing_from_the_body_lead_and_follow_it(tmp_path: Path) -> None:
    story = make_story(
        published_at="2024-03-01T10:00:00+08:00",
        images=[
            {"href": "http://127.0.0.1:8765/media/story-green-800x800.png", "caption": "宝山汇", "role": "inline"},
            {"href": "http://127.0.0.1:8765/media/story-blue-640x360.png", "alt": "挂牌仪式", "role": "cover"},
            {"href": "http://127.0.0.1:8765/media/breaking-320x180.gif", "role": "inline"},
        ],
    )
    payload = adapter_for(tmp_path).render(story, Action.PUBLISH)
    page = parse_page(payload.data.html)
    assert [(img["src"] or "").rsplit("/", 1)[1] for img in page.images] == [
        "story-blue-640x360.png",  # the cover leads, before the body
        "story-green-800x800.png",
        "breaking-320x180.gif",
    ]
    assert [img["alt"] for img in page.images] == ["挂牌仪式", "宝山汇", ""]  # the caption stands in for alt
    assert page.figcaptions == ["宝山汇"]
    assert payload.warnings == ("images[2] has neither alt nor caption: it is shown with an empty alt text",)


def test_a_story_without_any_timestamp_cannot_be_placed(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="published_at is needed"):
        adapter_for(tmp_path).render(make_story(), Action.PUBLISH)
    # updated_at alone will do; no section means the default one.
    assert page_path(make_story(updated_at="2024-01-31T23:30:00-05:00")) == "/news/2024/01/story-1.html"


async def test_a_story_without_published_at_is_placed_by_its_first_acceptance(site: Site) -> None:
    await site.send(make_story(id="no-time"))
    first = (await site.store.get_story("no-time")).first_accepted_at
    await asyncio.sleep(0.01)
    await site.send(make_story(id="no-time", version=2, headline="第二版"))
    record = await site.store.get_story("no-time")
    assert record.first_accepted_at == first < record.received_at  # the first acceptance, not this version's
    delivered = [d for d in await site.deliveries("no-time") if d.state is State.DELIVERED]
    assert [d.action for d in delivered] == [Action.PUBLISH, Action.UPDATE]
    when = dt.datetime.fromtimestamp(first, dt.UTC)
    for d in delivered:
        assert d.payload is not None
        entry = d.payload.data["entry"]  # as the store keeps it
        assert dt.datetime.fromisoformat(entry["published"]) == when
        assert entry["path"] == f"/news/{when.year:04d}/{when.month:02d}/no-time.html"


XSS = make_story(
    id="xss-1",
    published_at="2024-03-01T10:00:00+08:00",
    section="news",
    headline="<script>alert('headline')</script>标题",
    subheadline='"><img src=x onerror=alert(3)>',
    summary="<img src=x onerror=alert('summary')>摘要",
    tags=["<script>alert('tag')</script>"],
    body_html=(
        "<p>正文<script>alert('body')</script></p>"
        '<p><img src="http://127.0.0.1:8765/media/x.png" onerror="alert(1)" alt="图"></p>'
        '<p><a href="javascript:alert(2)" onclick="steal()">链接</a></p>'
        '<p onmouseover="alert(4)">悬停</p>'
        '<iframe src="https://evil.example/"></iframe><svg onload="alert(5)"></svg>'
        '<a href="JaVaScRiPt:alert(6)">大写</a><style>body{display:none}</style>'
    ),
    images=[
        {
            "href": "http://127.0.0.1:8765/media/story-blue-640x360.png",
            "caption": "<script>alert('caption')</script>图注",
            "alt": '" onerror="alert(7)',
            "role": "cover",
        }
    ],
)


async def test_hostile_markup_comes_out_as_text_never_as_code(site: Site) -> None:
    await site.send(XSS)
    path = "/news/2024/03/xss-1.html"
    raw = (site.root / path.lstrip("/")).read_text(encoding="utf-8")
    page = parse_page(raw)
    # Nothing executable anywhere in the page.
    assert_nothing_executable(page)
    # The headline, summary and caption survive as the literal text the desk typed.
    assert page.title == "<script>alert('headline')</script>标题" == page.one("og:title")
    assert page.one("og:description") == "<img src=x onerror=alert('summary')>摘要"
    assert page.meta["article:tag"] == ["<script>alert('tag')</script>"]
    assert page.figcaptions == ["<script>alert('caption')</script>图注"]
    assert page.images[0]["alt"] == '" onerror="alert(7)'
    assert "正文" in page.text and "链接" in page.text and "悬停" in page.text
    assert "alert('body')" not in page.text  # script content is dropped, not shown
    # The indexes carry the same escaped text.
    for index in ("/index.html", "/news/index.html"):
        listing = site.page(index)
        assert_nothing_executable(listing)
        assert (posixpath.basename(path), "<script>alert('headline')</script>标题") in [
            (posixpath.basename(href or ""), text) for href, text in listing.anchors
        ]
        assert "<img src=x onerror=alert('summary')>摘要" in listing.text
        assert listing.images[0]["alt"] == '" onerror="alert(7)'


# --- path safety -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"id": "../../../../etc/passwd"}, "id"),
        ({"id": ".."}, "id"),
        ({"id": "a/b"}, "id"),
        ({"id": "..\\..\\boot"}, "id"),
        ({"id": ".hidden"}, "id"),
        ({"section": "../.."}, "section"),
        ({"section": "a/b"}, "section"),
        ({"section": ".syndicate"}, "section"),
        ({"section": "---"}, "section"),
    ],
)
async def test_paths_that_could_leave_the_root_are_refused(
    tmp_path: Path, fields: dict[str, str], problem: str
) -> None:
    story = make_story(published_at="2024-03-01T10:00:00+08:00", **fields)
    async with running_site(tmp_path) as site:
        await site.send(story)
        [delivery] = await site.deliveries()
        assert delivery.state is State.FAILED
        assert delivery.note is not None and problem in delivery.note
        assert [p for p in files_under(tmp_path) if not p.startswith(("syndicate.db", "media/"))] == []


def test_odd_ids_and_sections_become_safe_names() -> None:
    assert page_file_stem("sh-rmt-20190918-001") == "sh-rmt-20190918-001"
    assert page_file_stem("稿件_01.v2") == "稿件_01.v2"
    urn = page_file_stem("urn:newsml:example.cn:20190918:001")
    assert (
        urn.startswith("urn-newsml-example.cn-20190918-001-")
        and len(urn) == len("urn-newsml-example.cn-20190918-001-") + 10
    )
    assert page_file_stem("a:b") != page_file_stem("a;b")  # slugs alike, still two pages
    assert len(page_file_stem("长" * 200).encode()) <= 180
    assert section_slug("Shanghai") == "shanghai"
    assert section_slug("国内 新闻") == "国内-新闻"
    assert is_page_path(P1) and not is_page_path("/../etc/2019/09/x.html") and not is_page_path("/a/2019/09/../x.html")


async def test_a_receipt_pointing_outside_the_root_is_refused(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path)
    payload = adapter.render(Story.from_dict({"id": "x", "version": 2, "pubstatus": "canceled"}), Action.RETRACT)
    bad = Receipt(remote_id="/news/2024/01/../../../../evil.html")
    with pytest.raises(Permanent, match="not a page path"):
        await adapter.retract(payload, ctx_for("x", action=Action.RETRACT, receipt=bad))
    assert not (tmp_path.parent / "evil.html").exists()


# --- atomic writes and locking ---------------------------------------------------------------------------------


def test_write_atomic_replaces_whole_files_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "page.html"
    assert write_atomic(target, b"one") is True
    assert target.read_bytes() == b"one" and (target.stat().st_mode & 0o777) == 0o644
    assert write_atomic(target, b"one") is False  # same bytes: nothing to do
    assert write_atomic(target, b"two") is True and target.read_bytes() == b"two"
    assert temp_files(tmp_path) == []


def test_a_crash_mid_write_leaves_the_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "page.html"
    target.write_bytes(b"<p>old</p>")

    def power_cut(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", power_cut)  # the new bytes were written to the temp file, not yet renamed
    with pytest.raises(OSError):
        write_atomic(target, b"<p>new and much longer</p>")
    assert target.read_bytes() == b"<p>old</p>"
    assert temp_files(tmp_path) == []


async def test_a_failed_write_is_retried_by_the_engine_and_the_old_page_survives_meanwhile(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    await site.send(S1)
    before = (site.root / P1.lstrip("/")).read_bytes()
    real_replace = os.replace
    seen: list[bytes] = []

    def failing_once(src: Any, dst: Any) -> None:
        if str(dst).endswith(P1) and not seen:
            seen.append((site.root / P1.lstrip("/")).read_bytes())  # what readers see at the moment of the crash
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_once)
    await site.send(S1.model_copy(update={"version": 2, "headline": "新标题"}))
    update = (await site.deliveries(S1.id))[-1]
    assert update.state is State.DELIVERED and update.attempts == 2
    assert seen == [before]
    assert site.page(P1).title == "新标题"
    assert temp_files(site.root) == []


async def test_another_process_holding_the_lock_makes_the_write_wait(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path)
    payload = adapter.render(S3, Action.PUBLISH)
    (tmp_path / STATE_DIR).mkdir()
    other = os.open(tmp_path / STATE_DIR / "lock", os.O_CREAT | os.O_WRONLY)  # a separate open file, like a process
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        task = asyncio.create_task(adapter.publish(payload, ctx_for(S3.id, action=Action.PUBLISH)))
        await asyncio.sleep(0.3)
        assert not task.done() and not (tmp_path / P3.lstrip("/")).exists()
        fcntl.flock(other, fcntl.LOCK_UN)
    finally:
        os.close(other)
    receipt = await asyncio.wait_for(task, timeout=5)
    assert receipt.remote_id == P3 and (tmp_path / P3.lstrip("/")).is_file()


# --- operator-facing failures and checks -----------------------------------------------------------------------


async def test_a_missing_root_pauses_the_channel_instead_of_failing_stories(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        site.root.rmdir()
        await site.engine.accept(S1)
        await site.engine.run(until_idle=True, idle_horizon=0.2)
        [delivery] = await site.deliveries()
        assert delivery.state is State.RETRY_WAIT and delivery.last_error_class == "AuthRevoked"
        assert delivery.last_error is not None and "[channels.site] root" in delivery.last_error
        assert not site.root.exists()  # never created behind the operator's back


async def test_check_reports_a_usable_root_and_names_a_missing_one(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path)
    assert "is writable; 0 live pages" in await adapter.check()
    assert sorted(p.name for p in (tmp_path / STATE_DIR).iterdir()) == ["lock"]
    with pytest.raises(AuthRevoked, match="does not exist"):
        await adapter_for(tmp_path / "missing").check()


async def test_a_corrupt_manifest_stops_the_channel_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / STATE_DIR).mkdir()
    (tmp_path / STATE_DIR / "manifest.json").write_text("{not json", encoding="utf-8")
    adapter = adapter_for(tmp_path)
    with pytest.raises(AuthRevoked, match=r"manifest.*unreadable.*restore it"):
        await adapter.publish(adapter.render(S1, Action.PUBLISH), ctx_for(S1.id, action=Action.PUBLISH))
    assert not (tmp_path / P1.lstrip("/")).exists()


# --- the /site/ preview ----------------------------------------------------------------------------------------


async def test_syndicate_serve_shows_the_web_root_under_site(site: Site) -> None:
    await site.send(S1, S3)
    app = create_app(site.engine.settings, site.engine)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:

        async def get(path: str) -> tuple[int, str]:
            async with client.get(path) as resp:
                return resp.status, await resp.text()

        status, body = await get(f"/site{P1}")
        assert status == 200 and parse_page(body).title == S1.headline
        status, body = await get("/site/")
        assert status == 200 and parse_page(body).links["canonical"] == f"{BASE}/"
        status, body = await get("/site/shanghai/")
        assert status == 200 and listed_hrefs(body) == [
            "2019/09/sh-rmt-20190918-003.html",
            "2019/09/sh-rmt-20190918-001.html",
        ]
        status, body = await get("/site/sitemap.xml")
        assert status == 200 and f"{BASE}/sitemap-1.xml" in body and f"{BASE}/sitemap-2.xml" in body
        status, body = await get("/site/sitemap-1.xml")
        assert status == 200 and f"<loc>{BASE}/shanghai/</loc>" in body  # the index pages have files of their own
        status, body = await get("/site/sitemap-2.xml")
        assert status == 200 and f"{BASE}{P3}" in body
        hidden_paths = ("/site/.syndicate/manifest.json", "/site/.syndicate/site.db", "/site/.syndicate/lock")
        for hidden in (*hidden_paths, "/site/shanghai/2019/"):
            assert (await get(hidden))[0] in (403, 404), hidden
        assert (await get("/site/../syndicate.db"))[0] == 404
        assert (await get("/site/%2e%2e/syndicate.db"))[0] in (403, 404)


def listed_hrefs(html: str) -> list[str]:
    return [href or "" for href, _ in parse_page(html).anchors if (href or "").endswith(".html")]


def test_no_preview_routes_without_a_web_root(tmp_path: Path) -> None:
    access: Any = None  # the website serves its files and reads nothing of the store
    assert adapter_for(tmp_path / "missing").web_routes(access) == []
    assert len(adapter_for(tmp_path).web_routes(access)) > 0


def test_adapter_capabilities() -> None:
    assert WebsiteAdapter.idempotent is True  # rewriting the same files is harmless
    assert WebsiteAdapter.actions == frozenset(Action)
    assert set(WebsiteOptions.model_fields) == {
        "root",
        "base_url",
        "templates",
        "page_size",
        "sitemap_urls_per_file",
        "site_name",
        "description",
        "reach_beacon",
    }


# --- payloads stored before the payload model -------------------------------------------------------------------

#: A page and a withdrawal as deliveries queued before the payload model stored them (rendered by the untyped
#: channel).
STORED_PAGE: dict[str, Any] = {
    "data": {
        "story_id": "shape-1",
        "entry": {
            "story_id": "shape-1",
            "version": 2,
            "path": "/本地/2026/11/shape-1.html",
            "headline": "宝山汇上线",
            "summary": "摘要",
            "section": "本地",
            "section_slug": "本地",
            "language": "zh-CN",
            "published": "2026-11-30T08:00:00+08:00",
            "modified": "2026-11-30T08:00:00+08:00",
            "cover_src": None,
            "cover_alt": "",
        },
        "html": (
            '<!DOCTYPE html>\n<html lang="zh-CN">\n<head>\n<meta charset="ut'
            'f-8">\n<meta name="viewport" content="width=device-width, ini'
            'tial-scale=1">\n<title>宝山汇上线</title>\n<link rel="canonical" hr'
            'ef="https://news.example.cn/%E6%9C%AC%E5%9C%B0/2026/11/shape'
            '-1.html">\n<meta name="description" content="摘要">\n<meta prope'
            'rty="og:type" content="article">\n<meta property="og:title" c'
            'ontent="宝山汇上线">\n<meta property="og:description" content="摘要"'
            '>\n<meta property="og:url" content="https://news.example.cn/%'
            'E6%9C%AC%E5%9C%B0/2026/11/shape-1.html">\n<meta property="og:'
            'locale" content="zh_CN">\n<meta property="article:published_t'
            'ime" content="2026-11-30T08:00:00+08:00">\n<meta property="ar'
            'ticle:modified_time" content="2026-11-30T08:00:00+08:00">\n<m'
            'eta property="article:section" content="本地">\n</head>\n<body>\n'
            '<nav><a href="../../../">首页</a> › <a href="../../">本地</a></n'
            'av>\n<article>\n<header>\n<h1>宝山汇上线</h1>\n<p class="meta"><time '
            'datetime="2026-11-30T08:00:00+08:00">2026-11-30 08:00</time>'
            '</p>\n<p class="summary">摘要</p>\n</header>\n<div class="body">\n'
            "<p>第一段</p>\n</div>\n</article>\n</body>\n</html>\n"
        ),
        "moved_html": (
            '<!DOCTYPE html>\n<html lang="zh-CN">\n<head>\n<meta charset="ut'
            'f-8">\n<meta name="viewport" content="width=device-width, ini'
            'tial-scale=1">\n<title>本文已移至新地址</title>\n<meta name="robots" c'
            'ontent="noindex">\n<link rel="canonical" href="https://news.e'
            'xample.cn/%E6%9C%AC%E5%9C%B0/2026/11/shape-1.html">\n<meta ht'
            'tp-equiv="refresh" content="0; url=https://news.example.cn/%'
            'E6%9C%AC%E5%9C%B0/2026/11/shape-1.html">\n</head>\n<body>\n<p>本'
            '文已移至新地址: <a href="https://news.example.cn/%E6%9C%AC%E5%9C%B0'
            '/2026/11/shape-1.html">https://news.example.cn/%E6%9C%AC%E5%'
            "9C%B0/2026/11/shape-1.html</a></p>\n</body>\n</html>\n"
        ),
    },
    "text_length": None,
    "warnings": [],
}
STORED_WITHDRAWAL: dict[str, Any] = {
    "data": {
        "story_id": "shape-1",
        "path": "/本地/2026/11/shape-1.html",
        "html": (
            '<!DOCTYPE html>\n<html lang="zh-CN">\n<head>\n<meta charset="ut'
            'f-8">\n<meta name="viewport" content="width=device-width, ini'
            'tial-scale=1">\n<title>本文已撤回</title>\n<meta name="robots" cont'
            'ent="noindex">\n</head>\n<body>\n<h1>本文已撤回</h1>\n<p><a href="htt'
            'ps://news.example.cn/">首页</a></p>\n</body>\n</html>\n'
        ),
    },
    "text_length": None,
    "warnings": [],
}


async def test_payloads_stored_before_the_payload_model_still_load_and_send(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path)
    page = adapter.load_payload(Payload.from_json(STORED_PAGE))
    withdrawal = adapter.load_payload(Payload.from_json(STORED_WITHDRAWAL))
    assert page.to_json() == STORED_PAGE and withdrawal.to_json() == STORED_WITHDRAWAL
    path = "/本地/2026/11/shape-1.html"
    receipt = await adapter.publish(page, ctx_for("shape-1", action=Action.PUBLISH))
    assert receipt.remote_id == path
    assert (tmp_path / path.lstrip("/")).read_text(encoding="utf-8") == STORED_PAGE["data"]["html"]
    await adapter.retract(withdrawal, ctx_for("shape-1", action=Action.RETRACT, receipt=receipt))
    assert (tmp_path / path.lstrip("/")).read_text(encoding="utf-8") == STORED_WITHDRAWAL["data"]["html"]


def test_a_payload_mixing_a_page_and_a_withdrawal_is_refused_on_load(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path)
    mixed = {**STORED_PAGE["data"], "path": STORED_WITHDRAWAL["data"]["path"]}
    half = {key: value for key, value in STORED_PAGE["data"].items() if key != "moved_html"}
    for data in (mixed, half, {"story_id": "s"}):
        with pytest.raises(Permanent, match="website' payload model"):
            adapter.load_payload(Payload.from_json({"data": data}))


# --- reach (评) ------------------------------------------------------------------------------------------------


def test_the_reach_beacon_must_be_an_absolute_url_without_a_query(tmp_path: Path) -> None:
    for wrong in ("/reach/b.gif", "https://sy.example.cn/reach/b.gif?x=1"):
        with pytest.raises(ConfigError) as caught:
            make_settings(tmp_path, {"site": website_channel(tmp_path, reach_beacon=wrong)})
        assert "reach_beacon" in str(caught.value)


def test_without_a_reach_beacon_the_page_carries_none(tmp_path: Path) -> None:
    html = adapter_for(tmp_path).render(S1, Action.PUBLISH).data.html
    assert "reach-beacon" not in (html or "")


async def test_a_page_read_in_a_browser_counts_one_read_through_the_beacon(tmp_path: Path) -> None:
    port = closed_port()
    root = tmp_path / "www"
    root.mkdir()
    beacon = f"http://127.0.0.1:{port}/reach/b.gif"
    settings = make_settings(tmp_path, {"site": website_channel(root, reach_beacon=beacon)})
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            await engine.accept(S1)
            await engine.run(until_idle=True, idle_horizon=0)
            [delivery] = await store.list_deliveries(DeliveryFilter(channels=["site"]))
            page = (root / delivery.receipt.remote_id.lstrip("/")).read_text(encoding="utf-8")  # type: ignore[union-attr]
            [src] = re.findall(r'<img class="reach-beacon" src="([^"]+)"', page)
            src = html_module.unescape(src)
            assert src == f"{beacon}?{urlencode({'s': S1.id, 'c': 'site'})}"
            async with TestClient(TestServer(create_app(settings, engine), host="127.0.0.1", port=port)) as client:
                answer = await client.get(src[len(f"http://127.0.0.1:{port}") :])  # what the reader's browser asks
                assert answer.status == 200 and answer.content_type == "image/gif"
            reach = await store.story_reach(S1.id)
            reads = [p.value for p in reach.points if p.channel == "site" and p.metric.value == "reads"]
            assert reads == [1]
    finally:
        await store.close()
