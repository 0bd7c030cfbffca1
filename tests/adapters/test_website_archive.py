"""The website at archive scale: what one delivery writes does not grow with the archive; archive pages numbered
from the oldest (publish, update, retract, section moves); the sitemap index and its split by URL count and by
size; the migration from the JSON manifest of older versions; `syndicate channels rebuild`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import posixpath
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import adapters.website.adapter as website
from adapters.website.adapter import STATE_DIR, PageEntry, WebsiteAdapter, WebsiteOptions, is_page_path
from syndicate.cli import cli
from syndicate.delivery import Action, AuthRevoked, Receipt
from syndicate.story import Story
from tests.adapters.test_website import BASE, parse_page, sitemap_all, sitemap_files, sitemap_urls
from tests.support import ctx_for, make_story

START = dt.datetime(2024, 1, 1, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def iso(self) -> str:
        return dt.datetime.fromtimestamp(self.now, dt.UTC).isoformat(timespec="seconds")


@dataclass
class Writes:
    """Every file the website channel asked to write (whatever write_atomic then skipped) and what it held."""

    seen: dict[str, int] = field(default_factory=dict)

    def paths(self) -> set[str]:
        return set(self.seen)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Writes]:
    record = Writes()
    real = website.write_atomic

    def counting(path: Path, data: bytes) -> bool:
        record.seen[str(path)] = len(data)
        return real(path, data)

    monkeypatch.setattr(website, "write_atomic", counting)
    yield record


def story(i: int, section: str = "news", **fields: Any) -> Story:
    given: dict[str, Any] = {
        "id": f"s-{i:04d}",
        "headline": f"第{i}号稿件",
        "section": section,
        "published_at": (START + dt.timedelta(hours=i)).isoformat(),
    }
    return make_story(**{**given, **fields})


def html_files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*.html")}


def path_of(i: int, section: str = "news") -> str:
    when = START + dt.timedelta(hours=i)
    return f"/{section}/{when.year:04d}/{when.month:02d}/s-{i:04d}.html"


class Site:
    def __init__(self, root: Path, clock: Clock | None = None, **options: Any) -> None:
        self.root = root
        self.clock = clock or Clock()
        self.adapter = WebsiteAdapter(
            "site", WebsiteOptions(root=root, base_url=BASE, **options), timeout=5, clock=self.clock
        )
        self.receipts: dict[str, Receipt] = {}

    async def publish(self, *stories: Story) -> None:
        for s in stories:
            action = Action.UPDATE if s.id in self.receipts else Action.PUBLISH
            payload = self.adapter.render(s, action)
            receipt = await self.adapter.send(payload, ctx_for(s.id, action=action, receipt=self.receipts.get(s.id)))
            self.receipts[s.id] = receipt

    async def retract(self, story_id: str) -> None:
        payload = self.adapter.render(
            Story.from_dict({"id": story_id, "version": 9, "pubstatus": "canceled"}), Action.RETRACT
        )
        await self.adapter.retract(
            payload, ctx_for(story_id, action=Action.RETRACT, receipt=self.receipts.pop(story_id))
        )

    def listed(self, page: str) -> list[str]:
        """The story pages a page lists, in order."""
        parsed = parse_page((self.root / page.lstrip("/")).read_text(encoding="utf-8"))
        here = posixpath.dirname(page)
        paths = [posixpath.normpath(posixpath.join(here, href or "")) for href, _ in parsed.anchors]
        return [p for p in paths if is_page_path(p)]

    def pager(self, page: str) -> dict[str, str]:
        """The pager's links of a page (newer/older), resolved to site paths, and its rel prev/next link tags."""
        text = (self.root / page.lstrip("/")).read_text(encoding="utf-8")
        parsed = parse_page(text)
        here = posixpath.dirname(page)
        found: dict[str, str] = {}
        for href, label in parsed.anchors:
            if label in ("较新的稿件", "更早的稿件"):
                found["newer" if label == "较新的稿件" else "older"] = posixpath.normpath(
                    posixpath.join(here, href or "")
                )
        for rel in ("prev", "next"):
            if rel in parsed.links:
                found[rel] = parsed.links[rel]
        return found


# --- bounded work per delivery --------------------------------------------------------------------------------


@pytest.mark.parametrize("archive", [12, 60])
async def test_a_delivery_writes_the_same_bounded_set_of_files_whatever_the_archive(
    tmp_path: Path, writes: Writes, archive: int
) -> None:
    site = Site(tmp_path, page_size=5, sitemap_urls_per_file=10)
    sections = ("news", "sport", "culture")
    await site.publish(*(story(i, sections[i % 3]) for i in range(archive)))

    # A new story: its page, the home and its section's index and newest archive page, two sitemap files (the one
    # holding the home page's URL, whose lastmod moved, and the newest, which takes the new URL) and the index.
    writes.seen.clear()
    site.clock.now += 60  # the home page changes now: its URL's lastmod moves with it
    new = archive + 2  # a "culture" story (archive is a multiple of 3)
    await site.publish(story(new, "culture"))
    sitemap_of = {url: name for name in sitemap_files(tmp_path) for url in sitemap_urls(tmp_path, name)}
    home_page, culture_page = archive // 5 + 1, (archive // 3) // 5 + 1
    expected = {
        path_of(new, "culture"),
        "/index.html",
        f"/page/{home_page}.html",
        "/culture/index.html",
        f"/culture/page/{culture_page}.html",
        "/" + sitemap_of[f"{BASE}/"],
        "/" + sitemap_of[BASE + path_of(new, "culture")],
        "/sitemap.xml",
    }
    if archive % 5 == 0:
        expected.add(f"/page/{home_page - 1}.html")  # a new page opened: the one before it links to it now
    if (archive // 3) % 5 == 0:
        expected.add(f"/culture/page/{culture_page - 1}.html")
    assert sorted("/" + Path(p).relative_to(tmp_path).as_posix() for p in writes.paths()) == sorted(expected)
    # No file grows with the archive but the sitemap index, which names one file per sitemap_urls_per_file URLs.
    for written, size in writes.seen.items():
        if not written.endswith((".xml", ".html")):
            pytest.fail(f"unexpected file {written}")
        if not written.endswith("/sitemap.xml"):
            assert size < 12_000, (written, size)  # page_size 5: a page of five entries
    assert len(sitemap_files(tmp_path)) >= (archive + 4) // 10

    # An update writes its page, the pages listing it and the sitemap file holding it (lastmod); a retraction the
    # same, with a tombstone for the page.
    writes.seen.clear()
    await site.publish(
        story(1, "sport", headline="改过的标题", updated_at=(START + dt.timedelta(days=400)).isoformat())
    )
    touched = {Path(p).relative_to(tmp_path).as_posix() for p in writes.paths()}
    assert {"index.html", "page/1.html", "sport/index.html", "sport/page/1.html", "sitemap.xml"} <= touched
    assert len(touched) <= 8, touched
    assert sitemap_all(tmp_path)[BASE + path_of(1, "sport")].startswith("2025-02-04")
    writes.seen.clear()
    await site.retract("s-0001")
    touched = {Path(p).relative_to(tmp_path).as_posix() for p in writes.paths()}
    assert {path_of(1, "sport").lstrip("/"), "page/1.html", "sport/page/1.html", "sitemap.xml"} <= touched
    assert len(touched) <= 8, touched
    assert BASE + path_of(1, "sport") not in sitemap_all(tmp_path)


# --- pagination ------------------------------------------------------------------------------------------------


async def test_archive_pages_are_numbered_from_the_oldest_and_only_the_newest_changes(tmp_path: Path) -> None:
    site = Site(tmp_path, page_size=3)
    await site.publish(*(story(i) for i in range(7)))
    assert site.listed("/page/1.html") == [path_of(2), path_of(1), path_of(0)]  # newest first on each page
    assert site.listed("/page/2.html") == [path_of(5), path_of(4), path_of(3)]
    assert site.listed("/page/3.html") == [path_of(6)]
    assert not (tmp_path / "page" / "4.html").exists()
    assert site.listed("/news/page/2.html") == site.listed("/page/2.html")
    # The home page shows the newest page_size and continues on the page holding the first story it leaves out.
    assert site.listed("/index.html") == [path_of(6), path_of(5), path_of(4)]
    assert site.pager("/index.html") == {"older": "/page/2.html", "next": f"{BASE}/page/2.html"}
    # Each archive page links to the newer one (the newest to the index) and the older one.
    assert site.pager("/page/3.html") == {
        "newer": "/",
        "older": "/page/2.html",
        "prev": f"{BASE}/",
        "next": f"{BASE}/page/2.html",
    }
    assert site.pager("/page/2.html")["newer"] == "/page/3.html"
    assert site.pager("/page/1.html") == {"newer": "/page/2.html", "prev": f"{BASE}/page/2.html"}
    assert site.pager("/news/page/3.html")["newer"] == "/news"
    home = parse_page((tmp_path / "page" / "2.html").read_text(encoding="utf-8"))
    assert home.links["canonical"] == f"{BASE}/page/2.html" and home.title == "news.example.cn · 第2页"

    # Publishing more fills page 3, then opens page 4; pages 1 and 2 never change again.
    before = {n: (tmp_path / "page" / f"{n}.html").read_bytes() for n in (1, 2)}
    await site.publish(story(7), story(8), story(9))
    assert site.listed("/page/3.html") == [path_of(8), path_of(7), path_of(6)]
    assert site.listed("/page/4.html") == [path_of(9)]
    assert site.pager("/page/3.html")["newer"] == "/page/4.html"
    assert {n: (tmp_path / "page" / f"{n}.html").read_bytes() for n in (1, 2)} == before


async def test_update_retract_and_a_section_move_change_only_the_pages_holding_the_story(tmp_path: Path) -> None:
    site = Site(tmp_path, page_size=3)
    await site.publish(*(story(i, "news") for i in range(7)), story(7, "sport"))

    await site.publish(story(4, "news", headline="更新后的标题"))  # an update keeps the story's place
    page = parse_page((tmp_path / "page" / "2.html").read_text(encoding="utf-8"))
    assert ("../news/2024/01/s-0004.html", "更新后的标题") in page.anchors
    assert site.listed("/page/2.html") == [path_of(5), path_of(4), path_of(3)]

    await site.retract("s-0004")  # the page shrinks; nothing moves up from the other pages
    assert site.listed("/page/2.html") == [path_of(5), path_of(3)]
    assert site.listed("/news/page/2.html") == [path_of(5), path_of(3)]
    assert site.listed("/page/3.html") == [path_of(7, "sport"), path_of(6)]
    assert path_of(4) not in site.listed("/index.html")

    # A move to another section: the story leaves news's page, joins sport's newest page, keeps its home slot.
    await site.publish(story(1, "sport"))
    assert site.listed("/news/page/1.html") == [path_of(2), path_of(0)]
    assert site.listed("/sport/page/1.html") == [path_of(7, "sport"), path_of(1, "sport")]  # newest first within a page
    assert site.listed("/page/1.html") == [path_of(2), path_of(1, "sport"), path_of(0)]
    assert site.listed("/sport/index.html") == [path_of(7, "sport"), path_of(1, "sport")]
    moved = parse_page((tmp_path / path_of(1).lstrip("/")).read_text(encoding="utf-8"))
    assert moved.one("refresh") == f"0; url={BASE}{path_of(1, 'sport')}"
    urls = sitemap_all(tmp_path)
    assert BASE + path_of(1, "sport") in urls and BASE + path_of(1) not in urls

    # A story withdrawn and published again arrives anew: on the newest page.
    await site.retract("s-0000")
    await site.publish(story(0, "news"))
    assert path_of(0) not in site.listed("/page/1.html")
    assert path_of(0) in site.listed("/page/3.html")


async def test_index_pages_carry_a_description_and_open_graph(tmp_path: Path) -> None:
    site = Site(tmp_path, site_name="宝山汇", description="宝山区融媒体中心的新闻网站")
    cover = {"href": "http://127.0.0.1:8765/media/story-blue-640x360.png", "alt": "挂牌仪式", "role": "cover"}
    await site.publish(story(1, "news", images=[cover]), story(2, "sport"))
    home = parse_page((tmp_path / "index.html").read_text(encoding="utf-8"))
    assert home.one("description") == home.one("og:description") == "宝山区融媒体中心的新闻网站"
    assert home.one("og:type") == "website" and home.one("og:title") == "宝山汇"
    assert home.one("og:url") == f"{BASE}/" == home.links["canonical"]
    assert home.one("og:site_name") == "宝山汇" and home.one("og:locale") == "zh_CN"
    assert home.one("og:image") == cover["href"] and home.one("og:image:alt") == "挂牌仪式"
    section = parse_page((tmp_path / "sport" / "index.html").read_text(encoding="utf-8"))
    assert section.one("og:title") == "sport | 宝山汇"
    assert section.one("description") == "宝山汇「sport」栏目的最新稿件" == section.one("og:description")
    assert section.one("og:url") == f"{BASE}/sport/"
    assert "og:image" not in section.meta  # no story shown there has a cover: nothing to invent
    archive = parse_page((tmp_path / "news" / "page" / "1.html").read_text(encoding="utf-8"))
    assert archive.one("og:url") == f"{BASE}/news/page/1.html"
    assert archive.one("description").endswith("第1页")


# --- the sitemap -----------------------------------------------------------------------------------------------


async def test_the_sitemap_index_splits_by_url_count_and_lastmod_says_when_each_changed(tmp_path: Path) -> None:
    clock = Clock()
    site = Site(tmp_path, clock, sitemap_urls_per_file=4)
    first = clock.iso()
    await site.publish(*(story(i, ("news", "sport")[i % 2]) for i in range(10)))
    files = sitemap_files(tmp_path)
    assert list(files) == ["sitemap-1.xml", "sitemap-2.xml", "sitemap-3.xml", "sitemap-4.xml"]
    assert set(files.values()) == {first}
    sizes = [len(sitemap_urls(tmp_path, name)) for name in files]
    assert sizes == [3, 4, 4, 2]  # the index pages (home, 2 sections) on their own, then the 10 stories
    urls = sitemap_all(tmp_path)
    assert set(urls) == {f"{BASE}/", f"{BASE}/news/", f"{BASE}/sport/"} | {
        BASE + path_of(i, ("news", "sport")[i % 2]) for i in range(10)
    }
    assert urls[BASE + path_of(3, "sport")] == (START + dt.timedelta(hours=3)).isoformat()  # the story's own time
    assert urls[f"{BASE}/"] == first  # when the home page last changed

    # Later, a story in the third file is withdrawn: that file, the first (the home and section pages changed)
    # and the index are rewritten, with the new time; the others keep theirs.
    clock.now += 3600
    later = clock.iso()
    holding = next(name for name in files if BASE + path_of(8) in sitemap_urls(tmp_path, name))
    await site.retract("s-0008")
    files = sitemap_files(tmp_path)
    assert files[holding] == later and files["sitemap-1.xml"] == later
    assert [lastmod for name, lastmod in files.items() if name not in (holding, "sitemap-1.xml")] == [first] * 2
    assert sitemap_all(tmp_path)[f"{BASE}/news/"] == later
    assert sitemap_all(tmp_path)[f"{BASE}/sport/"] == first  # untouched by a news story

    # A delivery that changes nothing on the home page leaves its lastmod alone.
    clock.now += 3600
    await site.publish(story(2, "news"))  # the same version again
    assert sitemap_all(tmp_path)[f"{BASE}/"] == later

    # A section emptied leaves the sitemap; the new URL goes to the newest file, never to a gap in an old one.
    for i in (1, 3, 5, 7, 9):
        await site.retract(f"s-{i:04d}")
    assert f"{BASE}/sport/" not in sitemap_all(tmp_path)
    await site.publish(story(20, "news"))
    newest = list(sitemap_files(tmp_path))[-1]
    assert BASE + path_of(20) in sitemap_urls(tmp_path, newest)


async def test_a_sitemap_file_never_exceeds_its_byte_limit_and_an_emptied_file_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(website.WebRoot, "sitemap_max_bytes", 700)
    site = Site(tmp_path)
    await site.publish(*(story(i) for i in range(8)))
    files = sitemap_files(tmp_path)
    assert len(files) > 2
    for name in files:
        assert len((tmp_path / name).read_bytes()) <= 700, name
    assert len(sitemap_all(tmp_path)) == 10  # home, section, 8 stories: each in exactly one file
    # Withdraw every story of the last file: the file leaves the index and the disk (an empty urlset is invalid).
    last = list(files)[-1]
    for url in sitemap_urls(tmp_path, last):
        await site.retract(url.rsplit("/", 1)[1].removesuffix(".html"))
    assert last not in sitemap_files(tmp_path) and not (tmp_path / last).exists()
    tree = ET.parse(tmp_path / "sitemap.xml")
    assert all((s.findtext("{http://www.sitemaps.org/schemas/sitemap/0.9}lastmod") or "") for s in tree.getroot())


# --- the site index --------------------------------------------------------------------------------------------


def old_manifest(root: Path, entries: list[PageEntry]) -> None:
    (root / STATE_DIR).mkdir(exist_ok=True)
    doc = {"format": 1, "stories": {e.story_id: e.to_json() for e in entries}}
    (root / STATE_DIR / "manifest.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    (root / "sitemap.xml").write_text('<?xml version="1.0"?><urlset/>', encoding="utf-8")  # the old layout


async def test_an_old_manifest_is_migrated_on_first_use(tmp_path: Path) -> None:
    renderer = Site(tmp_path / "scratch", page_size=2)
    (tmp_path / "scratch").mkdir()
    entries = []
    for i in (3, 0, 2, 1):  # a manifest's order means nothing: the archive follows publication
        entry = renderer.adapter.render(story(i, ("news", "sport")[i % 2]), Action.PUBLISH).data.entry
        assert entry is not None
        entries.append(entry)
    root = tmp_path / "www"
    root.mkdir()
    old_manifest(root, entries)

    site = Site(root, page_size=2)
    await site.publish(story(4, "news"))
    assert (root / STATE_DIR / "site.db").is_file()
    assert not (root / STATE_DIR / "manifest.json").exists()
    assert (root / STATE_DIR / "manifest.json.migrated").is_file()  # kept for the operator, never read again
    assert site.listed("/page/1.html") == [path_of(1, "sport"), path_of(0)]
    assert site.listed("/page/2.html") == [path_of(3, "sport"), path_of(2)]
    assert site.listed("/page/3.html") == [path_of(4)]
    assert site.listed("/news/page/1.html") == [path_of(2), path_of(0)]
    assert site.listed("/sport/index.html") == [path_of(3, "sport"), path_of(1, "sport")]
    assert len(sitemap_all(root)) == 3 + 5
    assert "is writable; 5 live pages" in await site.adapter.check()

    # The migrated stories behave like any other: a retraction finds its page through the index.
    payload = site.adapter.render(
        Story.from_dict({"id": "s-0002", "version": 2, "pubstatus": "canceled"}), Action.RETRACT
    )
    receipt = await site.adapter.retract(payload, ctx_for("s-0002", action=Action.RETRACT))
    assert receipt.remote_id == path_of(2)
    assert site.listed("/page/2.html") == [path_of(3, "sport")]


async def test_check_counts_an_unmigrated_manifest_without_creating_the_index(tmp_path: Path) -> None:
    site = Site(tmp_path)
    entry = site.adapter.render(story(1), Action.PUBLISH).data.entry
    assert entry is not None
    old_manifest(tmp_path, [entry])
    assert "1 live pages" in await site.adapter.check()
    assert not (tmp_path / STATE_DIR / "site.db").exists()


async def test_a_corrupt_site_index_pauses_the_channel_naming_it(tmp_path: Path) -> None:
    site = Site(tmp_path)
    await site.publish(story(1))
    await site.adapter.close()
    (tmp_path / STATE_DIR / "site.db").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / STATE_DIR / f"site.db{suffix}").unlink(missing_ok=True)
    again = Site(tmp_path)
    with pytest.raises(AuthRevoked, match=r"site index .*site\.db is unreadable.*restore it"):
        await again.publish(story(2))
    assert not (tmp_path / path_of(2).lstrip("/")).exists()


async def test_state_is_committed_only_after_the_files_it_describes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = Site(tmp_path)
    await site.publish(story(1))
    real = website.write_atomic

    def full_disk(path: Path, data: bytes) -> bool:
        if path.name == "sitemap.xml":
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(website, "write_atomic", full_disk)
    with pytest.raises(Exception, match="No space left"):
        await site.publish(story(2))
    with sqlite3.connect(tmp_path / STATE_DIR / "site.db") as db:
        assert [row[0] for row in db.execute("SELECT story_id FROM pages")] == ["s-0001"]
    monkeypatch.setattr(website, "write_atomic", real)
    site.receipts.pop("s-0002", None)
    await site.publish(story(2))  # the retry writes everything again
    assert site.listed("/index.html") == [path_of(2), path_of(1)]
    assert BASE + path_of(2) in sitemap_all(tmp_path)


# --- the rebuild command ---------------------------------------------------------------------------------------


def write_site_config(tmp_path: Path, root: Path, **options: Any) -> Path:
    lines = [
        "[store]",
        f'url = "sqlite:///{tmp_path}/s.db"',
        "[channels.site]",
        'kind = "website"',
        f'root = "{root}"',
        f'base_url = "{BASE}"',
        *(f"{key} = {json.dumps(value)}" for key, value in options.items()),
        "[channels.hook]",
        'kind = "webhook"',
        'url = "http://127.0.0.1:9/webhook/hook"',
        'secret = "test-secret"',
    ]
    config = tmp_path / "syndicate.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def test_channels_rebuild_rewrites_every_derived_file(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    site = Site(root, page_size=3)

    async def publish() -> None:
        await site.publish(*(story(i, ("news", "sport")[i % 2]) for i in range(10)))
        await site.adapter.close()

    asyncio.run(publish())
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "archive.html.j2").write_text(
        '{% extends "base.html.j2" %}{% block title %}存档 {{ page_number }}{% endblock %}'
        '{% block body %}{% include "_list.html.j2" %}{% endblock %}',
        encoding="utf-8",
    )
    config = write_site_config(tmp_path, root, page_size=4, templates=str(templates))
    runner = CliRunner()

    result = runner.invoke(cli, ["channels", "rebuild", "site", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "10 live stories" in result.output and "archive pages" in result.output
    assert "left-over files removed" in result.output  # page 4 of 3 stories each is gone with 4 per page
    assert sorted(p.name for p in (root / "page").glob("*.html")) == ["1.html", "2.html", "3.html"]
    assert parse_page((root / "page" / "3.html").read_text(encoding="utf-8")).title == "存档 3"
    assert site.listed("/page/1.html") == [path_of(i, ("news", "sport")[i % 2]) for i in (3, 2, 1, 0)]
    assert site.listed("/index.html") == [path_of(i, ("news", "sport")[i % 2]) for i in (9, 8, 7, 6)]
    assert len(sitemap_all(root)) == 13

    as_json = runner.invoke(cli, ["channels", "rebuild", "site", "--json", "--config", str(config)])
    assert as_json.exit_code == 0 and json.loads(as_json.output)["channel"] == "site"

    refused = runner.invoke(cli, ["channels", "rebuild", "hook", "--config", str(config)])
    assert refused.exit_code == 2 and "keeps no derived outputs" in refused.output
    unknown = runner.invoke(cli, ["channels", "rebuild", "nope", "--config", str(config)])
    assert unknown.exit_code == 2 and "unknown channel" in unknown.output


async def test_a_rebuild_with_a_broken_template_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    site = Site(tmp_path / "www")
    await site.publish(story(1))
    before = (tmp_path / "www" / "index.html").read_bytes()
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "home.html.j2").write_text("{{ no_such_thing }}", encoding="utf-8")
    broken = WebsiteAdapter(
        "site", WebsiteOptions(root=tmp_path / "www", base_url=BASE, templates=templates), timeout=5
    )
    with pytest.raises(AuthRevoked, match=r"home\.html\.j2.*no_such_thing"):
        await broken.rebuild(lambda done, total: None)
    assert (tmp_path / "www" / "index.html").read_bytes() == before


async def test_a_rebuild_that_changes_nothing_keeps_every_lastmod(tmp_path: Path) -> None:
    clock = Clock()
    site = Site(tmp_path, clock, sitemap_urls_per_file=3)
    await site.publish(*(story(i, ("news", "sport")[i % 2]) for i in range(7)))
    files, urls = sitemap_files(tmp_path), sitemap_all(tmp_path)
    pages = html_files(tmp_path)
    clock.now += 86400
    seen: list[tuple[int, int]] = []
    detail = await site.adapter.rebuild(lambda done, total: seen.append((done, total)))
    assert "7 live stories" in detail
    assert sitemap_files(tmp_path) == files and sitemap_all(tmp_path) == urls  # nothing changed, nothing moved
    assert html_files(tmp_path) == pages
    assert [done for done, _ in seen] == list(range(1, len(seen) + 1)) and seen[-1][0] == seen[-1][1]


async def test_a_rebuild_migrates_an_old_manifest_once(tmp_path: Path) -> None:
    site = Site(tmp_path, page_size=2)
    entries = [site.adapter.render(story(i), Action.PUBLISH).data.entry for i in range(5)]
    old_manifest(tmp_path, [e for e in entries if e is not None])
    seen: list[tuple[int, int]] = []
    detail = await site.adapter.rebuild(lambda done, total: seen.append((done, total)))
    assert detail.startswith("5 live stories: 2 index pages, 6 archive pages")  # home 3 + news 3
    assert seen and seen[-1][0] == seen[-1][1]
    assert (tmp_path / STATE_DIR / "manifest.json.migrated").is_file()
    assert site.listed("/page/3.html") == [path_of(4)]
