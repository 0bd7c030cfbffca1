"""The newsroom's own website: static pages written into a web root that nginx (or any file server) serves.

One article page per story at a stable path, ``/<section>/<yyyy>/<mm>/<story id>.html``; a home page and one index
per section (``/<section>/index.html``) showing the newest ``page_size`` stories; archive pages per listing
(``/page/<n>.html``, ``/<section>/page/<n>.html``) numbered from the oldest, and a sitemap index (``sitemap.xml``)
over sitemap files (``sitemap-<n>.xml``). ``render`` produces the complete article page (Jinja2 templates, body
sanitised by ``syndicate.sanitize.clean_html``) and the facts the indexes need, so every retry writes the same bytes.

A delivery costs the same however large the archive: ``publish``/``update``/``retract`` write the page (or a
"withdrawn" tombstone) and only the index pages, archive pages and sitemap files that change, answered from the site
index, an SQLite file in ``<root>/.syndicate/`` (``siteindex.py``) updated per story. A new story lands on the newest
archive page of the home listing and of its section (the archive is in order of arrival; each page lists its stories
newest first), a retraction empties its slot on the pages that hold it, and a URL joins the newest sitemap file.
The site index commits only after the files it describes are written, so an interrupted delivery leaves the state of
the one before it, and its retry writes everything again. Writing the same files again is harmless, so the channel
is idempotent. ``rebuild`` (``syndicate channels rebuild NAME``) rewrites every derived file, after a template change.

Every change to the web root happens under an ``fcntl.flock`` on ``<root>/.syndicate/lock`` (several worker
processes on one host) and an asyncio lock (several deliveries in one process), so two stories never interleave
their index updates. Problems an operator must fix (the root is missing or not writable, the site index or an old
manifest is corrupt, an overriding index template is broken) raise ``AuthRevoked``: the taxonomy's "pause the
channel until someone fixes it" class, since every delivery would fail the same way; nothing is lost meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import posixpath
import re
import sqlite3
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, Unpack
from urllib.parse import quote, urlencode, urlsplit
from xml.sax.saxutils import escape as xml_escape

import jinja2
from aiohttp import web
from markupsafe import Markup
from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from adapters.website.entry import PageEntry
from adapters.website.siteindex import HOME, INDEX_FORMAT, Listed, SiteIndex, SiteIndexError, SitemapLimits
from syndicate.channel import Adapter, AdapterDeps, AdapterOptions, DeliveryContext, RebuildProgress
from syndicate.delivery import (
    Action,
    AuthRevoked,
    Payload,
    PayloadModel,
    Permanent,
    Receipt,
    RenderError,
    Retryable,
)
from syndicate.files import write_atomic
from syndicate.sanitize import clean_html, html_blocks, plain_text
from syndicate.story import ChannelStory, Image, Story

if TYPE_CHECKING:
    from syndicate.store.base import ChannelAccess, SharedKeys

__all__ = ["PageEntry", "WebsiteAdapter", "WebsiteOptions", "WebsitePayload"]

log = logging.getLogger("syndicate.adapters.website.adapter")

DEFAULT_SECTION = "news"
#: Folder inside the web root for the site index and the lock file (deny dot-paths in nginx: ``location ~ /\\.``).
STATE_DIR = ".syndicate"
INDEX_FILE = "site.db"
#: The JSON manifest older versions kept (migrated into the site index on first use, then renamed).
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
DESCRIPTION_LENGTH = 160
SITEMAP_NS = "http://www.sitemaps.org/schemas/sitemap/0.9"
#: The protocol's limits per sitemap file (https://www.sitemaps.org/protocol.html#index).
SITEMAP_MAX_URLS = 50_000
SITEMAP_MAX_BYTES = 52_428_800
PREVIEW_PREFIX = "/site"

#: Interface words per language family (the templates get them as ``labels``); anything not Chinese is English.
LABELS: dict[str, dict[str, str]] = {
    "zh": {
        "home": "首页",
        "withdrawn": "本文已撤回",
        "moved": "本文已移至新地址",
        "empty": "暂无稿件",
        "newer": "较新的稿件",
        "older": "更早的稿件",
        "page": "第{number}页",
        "home_description": "{site}的最新稿件",
        "section_description": "{site}「{section}」栏目的最新稿件",
    },
    "en": {
        "home": "Home",
        "withdrawn": "This story has been withdrawn",
        "moved": "This story has moved",
        "empty": "No stories yet",
        "newer": "Newer stories",
        "older": "Older stories",
        "page": "Page {number}",
        "home_description": "The latest stories from {site}",
        "section_description": "The latest {section} stories from {site}",
    },
}

_PAGE_PATH = re.compile(r"/[\w-]+/\d{4}/\d{2}/[^/\\.][^/\\]*\.html")
_FILE_UNSAFE = re.compile(r"[^\w.~-]+")
_SECTION_UNSAFE = re.compile(r"[^\w-]+")
_MAX_STEM_BYTES = 180


class WebsiteOptions(AdapterOptions):
    #: The folder the web server serves; it must exist (syndicate never creates it: a missing mount must not be
    #: papered over by writing to the disk underneath).
    root: Path
    #: The site's public base URL, e.g. https://news.example.cn; canonical links, og:url and the sitemap use it.
    base_url: str
    #: Optional folder whose files replace the built-in templates of the same name (article.html.j2, ...).
    templates: Path | None = None
    #: Stories on the home page, on each section's index and on each archive page. Changing it needs
    #: ``syndicate channels rebuild`` (the archive pages are renumbered).
    page_size: int = Field(50, ge=1, le=1000)
    #: URLs per sitemap file: the protocol allows 50,000, but a delivery rewrites the file holding its URL, so
    #: smaller files keep each delivery cheap (the sitemap index lists them all). Changing it needs a rebuild.
    sitemap_urls_per_file: int = Field(1000, ge=1, le=SITEMAP_MAX_URLS)
    #: The site's name for og:site_name and the index pages' descriptions (default: the host of base_url).
    site_name: str | None = Field(None, min_length=1, max_length=200)
    #: The home page's description (meta description, og:description); default: "the latest stories from <site>".
    description: str | None = Field(None, min_length=1, max_length=500)
    #: The absolute URL of syndicate's page beacon (``<public_url>/reach/b.gif``): each article page then carries
    #: a 1x1 image that counts one read of the story on this channel (reach, 评). No cookie, no referrer sent.
    reach_beacon: str | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://news.example.cn")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment (pages are addressed as base_url + path)")
        return value.rstrip("/")

    @field_validator("reach_beacon")
    @classmethod
    def _reach_beacon(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be the absolute http(s) URL of syndicate's /reach/b.gif (the pages live elsewhere)")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment (the page adds ?s=<story>&c=<channel>)")
        return value

    @field_validator("templates")
    @classmethod
    def _templates_folder(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a folder (it should hold templates such as article.html.j2)")
        return value


# --- paths -----------------------------------------------------------------------------------------------------


def section_slug(section: str) -> str:
    """The folder name for a section: lower-case letters, digits, ``_`` and ``-``; refuses anything path-like."""
    name = unicodedata.normalize("NFKC", section).strip()
    if "/" in name or "\\" in name or name.startswith("."):
        raise RenderError(f"section {section!r} looks like a path ('/', '\\' or a leading '.'); use a plain name")
    slug = _SECTION_UNSAFE.sub("-", name.lower()).strip("-")
    if not slug:
        raise RenderError(f"section {section!r} has no letters or digits to name its folder with")
    return slug


def page_file_stem(story_id: str) -> str:
    """The page's file name without ``.html``: the id itself when it is file-safe, else a slug plus a hash of the
    id (so two ids that slug alike still get two pages). Ids that look like paths are refused."""
    if "/" in story_id or "\\" in story_id or story_id.startswith("."):
        raise RenderError(
            f"id {story_id!r} cannot name a page: it contains '/' or '\\' or starts with '.', "
            "which would put the file outside its section folder"
        )
    stem = _FILE_UNSAFE.sub("-", story_id)
    if stem != story_id or len(stem.encode()) > _MAX_STEM_BYTES:
        digest = hashlib.sha256(story_id.encode()).hexdigest()[:10]
        short = stem.encode()[: _MAX_STEM_BYTES - 11].decode("utf-8", "ignore")
        stem = f"{short}-{digest}"
    return stem


def page_path(story: Story, *, section: str | None = None) -> str:
    """``/<section>/<yyyy>/<mm>/<id>.html``; year and month from published_at (else updated_at), in the story's
    own UTC offset, so the path never depends on when or where it was rendered. The engine sets published_at,
    for a story that gives none, to the time syndicate first accepted it (``Story.dated``)."""
    when = story.published_at or story.updated_at
    if when is None:
        raise RenderError(
            "published_at is needed: the page path /<section>/<yyyy>/<mm>/<id>.html takes its year and month "
            "from it (or from updated_at)"
        )
    slug = section_slug(section or story.section or DEFAULT_SECTION)
    return f"/{slug}/{when.year:04d}/{when.month:02d}/{page_file_stem(story.id)}.html"


def is_page_path(path: str) -> bool:
    """A path this channel writes pages at (receipts are checked against it before any file is touched)."""
    return _PAGE_PATH.fullmatch(path) is not None and ".." not in path


# --- what the templates show ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """An image as the templates show it: alt text always set (empty only when the story gives neither alt nor
    caption), caption optional."""

    src: str
    alt: str
    caption: str | None
    width: int | None
    height: int | None

    @classmethod
    def of(cls, image: Image) -> Figure:
        return cls(image.href, image.alt or image.caption or "", image.caption, image.width, image.height)


def _display_time(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M")


def _labels(language: str) -> dict[str, str]:
    return LABELS["zh"] if language.lower().startswith("zh") else LABELS["en"]


def _url_path(path: str) -> str:
    return quote(path, safe="/")


# --- templates -------------------------------------------------------------------------------------------------


class SiteTemplates:
    """The built-in templates, each replaceable by a file of the same name in the configured folder."""

    def __init__(self, override: Path | None) -> None:
        loaders: list[jinja2.BaseLoader] = [jinja2.PackageLoader("adapters.website", "templates")]
        if override is not None:
            loaders.insert(0, jinja2.FileSystemLoader(override))
        self.override = override
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )

    def render(self, name: str, **context: Any) -> str:
        """Render ``name``; a broken template raises RenderError naming the file and the problem."""
        try:
            return self.env.get_template(name).render(**context)
        except jinja2.TemplateError as exc:
            where = f" (templates folder {self.override})" if self.override else ""
            raise RenderError(f"template {name}{where} failed: {type(exc).__name__}: {exc}") from exc


# --- the web root's layout -------------------------------------------------------------------------------------


def listing_folder(listing: str) -> str:
    """The site path of a listing's folder: ``/`` for the home page, ``/<section>/`` for a section."""
    return "/" if listing == HOME else f"/{listing}/"


def archive_page_path(listing: str, number: int) -> str:
    return f"{listing_folder(listing)}page/{number}.html"


def sitemap_file_name(number: int) -> str:
    return f"sitemap-{number}.xml"


@dataclass(frozen=True)
class SiteLayout:
    """How the derived files are cut: stories per page, URLs per sitemap file, and the site's own words."""

    page_size: int
    sitemap_urls: int
    site_name: str
    description: str | None

    def page_of(self, slot: int) -> int:
        """The archive page (from 1, the oldest) that a listing slot falls on."""
        return slot // self.page_size + 1

    def pages(self, slots: int) -> int:
        return math.ceil(slots / self.page_size)


@dataclass
class Change:
    """What one delivery changes besides the story's own page: the listings whose index page it changes (with the
    section name to show should the section have just been emptied), the archive pages (listing, number) holding a
    slot it filled or emptied, and the sitemap entries of article pages (path -> lastmod; None: no longer listed)."""

    listings: dict[str, str] = field(default_factory=dict)
    archive_pages: dict[tuple[str, int], str] = field(default_factory=dict)
    sitemap: dict[str, str | None] = field(default_factory=dict)

    def slot(self, listing: str, name: str, slot: int, layout: SiteLayout) -> None:
        self.listings.setdefault(listing, name)
        self.archive_pages.setdefault((listing, layout.page_of(slot)), name)


@dataclass(frozen=True)
class RebuildReport:
    live: int
    index_pages: int
    archive_pages: int
    sitemap_files: int
    removed: int


def _shelf(path: str) -> str:
    """Which sitemap files a URL goes to: the index pages' (home, sections) apart from the articles'."""
    return "articles" if is_page_path(path) else "index pages"


def _holds(file: Path, data: bytes) -> bool:
    try:
        return file.read_bytes() == data
    except FileNotFoundError:
        return False


#: A derived file and its new bytes, or None when it is to be removed.
_Output = tuple[Path, bytes | None]

_Result = TypeVar("_Result")


# --- the web root ----------------------------------------------------------------------------------------------


class WebRoot:
    """The files under the root (pages, index pages, archive pages, sitemaps) and the site index describing them,
    each change made under the root's file lock, in one site-index transaction committed after the files.

    Synchronous on purpose: the adapter runs each change in a worker thread, holding the asyncio lock for it.
    """

    #: Per sitemap file (the protocol's ceiling; tests lower it to see the split by size).
    sitemap_max_bytes: int = SITEMAP_MAX_BYTES

    def __init__(
        self,
        root: Path,
        base_url: str,
        templates: SiteTemplates,
        channel: str,
        layout: SiteLayout,
        clock: Callable[[], float],
    ) -> None:
        self.root = root
        self.base_url = base_url
        self.templates = templates
        self.channel = channel
        self.layout = layout
        self.clock = clock
        self.index = SiteIndex(root / STATE_DIR / INDEX_FILE)
        #: What the migration from an old manifest rebuilt, in the transaction now running (if it ran in it).
        self._migration: RebuildReport | None = None

    @property
    def manifest_path(self) -> Path:
        return self.root / STATE_DIR / MANIFEST_FILE

    def close(self) -> None:
        self.index.close()

    def file_for(self, path: str) -> Path:
        """The file a page path names, refusing any path that could leave the root."""
        if not is_page_path(path):
            raise Permanent(f"{path!r} is not a page path this channel writes (/<section>/<yyyy>/<mm>/<id>.html)")
        target = self.root / path.lstrip("/")
        if not target.resolve().is_relative_to(self.root.resolve()):
            raise Permanent(f"{path!r} resolves outside the web root {self.root} (a symlink?); refusing to write")
        return target

    def _derived_file(self, site_path: str) -> Path:
        """A file this channel derives (index, archive page, sitemap): the path is ours, never the story's."""
        return self.root / site_path.lstrip("/")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        if not self.root.is_dir():
            raise AuthRevoked(
                f"web root {self.root} does not exist or is not a folder: create or mount it, or fix "
                f"[channels.{self.channel}] root"
            )
        state = self.root / STATE_DIR
        state.mkdir(exist_ok=True)
        with open(state / "lock", "ab") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _indexed(self, progress: RebuildProgress | None = None) -> Iterator[SiteIndex]:
        """A site-index transaction (the caller holds the lock): the old manifest migrated first if there is one;
        committed when the block ends (after its files are written); index problems mapped onto the taxonomy."""
        path = self.index.path
        migrated = False
        try:
            with self.index.transaction() as index:
                migrated = self._migrate(index, progress)
                yield index
        except SiteIndexError as exc:
            raise self._unreadable(exc) from exc
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "readonly" in text or "unable to open" in text:
                raise AuthRevoked(
                    f"cannot write the site index {path} ({text}): give this process write access to the web root"
                    f" or fix [channels.{self.channel}] root"
                ) from exc
            raise Retryable(f"the site index {path} could not be written: {text}") from exc
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from exc
        if migrated:
            # Committed: the manifest is history now. Kept beside the index, renamed so it is never read again.
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.manifest_path, self.manifest_path.with_name(MANIFEST_FILE + ".migrated"))

    def _unreadable(self, exc: Exception) -> AuthRevoked:
        return AuthRevoked(
            f"the site index {self.index.path} is unreadable ({type(exc).__name__}: {exc}): restore it from a "
            "backup, or move it away and republish the live stories (the index pages are built from it)"
        )

    @contextlib.contextmanager
    def _session(self, progress: RebuildProgress | None = None) -> Iterator[SiteIndex]:
        with self.locked(), self._indexed(progress) as index:
            yield index

    # the old manifest -------------------------------------------------------------------------------------------

    def load_manifest(self) -> dict[str, PageEntry]:
        try:
            raw = json.loads(self.manifest_path.read_bytes())
            if raw.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {MANIFEST_FORMAT}")
            return {story_id: PageEntry.from_json(entry) for story_id, entry in raw["stories"].items()}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AuthRevoked(
                f"the manifest {self.manifest_path} is unreadable ({type(exc).__name__}: {exc}): restore it, or "
                "remove it and republish the live stories (the indexes are rebuilt from it)"
            ) from exc

    def _migrate(self, index: SiteIndex, progress: RebuildProgress | None) -> bool:
        """A new site index takes the stories of the manifest an older version left (oldest first, so the archive
        pages follow publication) and rebuilds every derived file from them. Whether it migrated anything."""
        found = index.meta("format")
        if found is not None:
            if found != str(INDEX_FORMAT):
                raise SiteIndexError(f"format {found!r}, expected {INDEX_FORMAT}")
            return False
        index.set_meta("format", str(INDEX_FORMAT))
        manifest = self.load_manifest()
        if not manifest:
            return False
        for entry in sorted(manifest.values(), key=lambda e: (e.published_at.timestamp(), e.story_id)):
            index.put(Listed(entry, index.take_slot(HOME), index.take_slot(entry.section_slug)))
        self._migration = self._rebuild(index, progress)
        index.set_meta("migrated_from", str(self.manifest_path))
        log.info("website %s: %d stories migrated from %s", self.channel, len(manifest), self.manifest_path)
        return True

    # deliveries -------------------------------------------------------------------------------------------------

    def put_page(self, entry: PageEntry, html: str, moved_html: str, earlier_paths: set[str]) -> list[str]:
        """Write (or rewrite) a story's page, list it, and point any earlier path of it at the new one."""
        page = self.file_for(entry.path)
        with self._session() as index:
            previous = index.get(entry.story_id)
            if previous is not None:
                earlier_paths = earlier_paths | {previous.entry.path}
            moved = sorted(p for p in earlier_paths if p != entry.path)
            moved_files = [self.file_for(p) for p in moved]
            change = Change()
            if previous is None:
                home_slot = self._take_slot(index, HOME, change)
            else:
                home_slot = previous.home_slot
                old = previous.entry
                change.slot(HOME, "", previous.home_slot, self.layout)
                change.slot(old.section_slug, old.section, previous.section_slot, self.layout)
                if old.path != entry.path:
                    change.sitemap[old.path] = None
            if previous is not None and previous.entry.section_slug == entry.section_slug:
                section_slot = previous.section_slot
            else:
                section_slot = self._take_slot(index, entry.section_slug, change)
            index.put(Listed(entry, home_slot, section_slot))
            change.slot(HOME, "", home_slot, self.layout)
            change.slot(entry.section_slug, entry.section, section_slot, self.layout)
            change.sitemap[entry.path] = entry.modified
            derived = self._derive(index, change)
            write_atomic(page, html.encode())
            for file in moved_files:
                write_atomic(file, moved_html.encode())
            self._write(derived)
        return moved

    def withdraw(self, story_id: str, live_path: str | None, fallback_path: str | None, tombstone: str) -> list[str]:
        """Replace the story's page by the tombstone and drop it from the pages listing it and the sitemap.

        The page is where the receipt and the site index say it is; the path computed from the retraction itself
        (``fallback_path``) is used only when neither knows it, since a bare cancel may lack the section.
        """
        with self._session() as index:
            previous = index.get(story_id)
            paths = {p for p in (live_path, previous.entry.path if previous else None) if p}
            targets = sorted(paths or ({fallback_path} if fallback_path else set()))
            files = [self.file_for(p) for p in targets]
            change = Change()
            if previous is not None:
                index.delete(story_id)
                old = previous.entry
                change.slot(HOME, "", previous.home_slot, self.layout)
                change.slot(old.section_slug, old.section, previous.section_slot, self.layout)
                change.sitemap[old.path] = None
            derived = self._derive(index, change)
            for file in files:
                write_atomic(file, tombstone.encode())
            self._write(derived)
        return targets

    def live_count(self) -> int:
        with self.locked():
            if not self.index.exists():  # a check must not create the index: count what an old manifest holds
                return len(self.load_manifest())
            with self._indexed() as index:
                return index.live_count()

    def rebuild(self, progress: RebuildProgress | None) -> RebuildReport:
        self._migration = None
        with self._session(progress) as index:
            if self._migration is not None:  # the migration from an old manifest just rebuilt everything
                return self._migration
            return self._rebuild(index, progress)

    def _take_slot(self, index: SiteIndex, listing: str, change: Change) -> int:
        slot = index.take_slot(listing)
        if slot and slot % self.layout.page_size == 0:
            # A new archive page opens: the one before it now links to it instead of to the index page.
            change.archive_pages.setdefault((listing, self.layout.page_of(slot) - 1), "")
        return slot

    def _now(self) -> str:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC).isoformat(timespec="seconds")

    def _write(self, outputs: list[_Output]) -> None:
        """Files first, in the order given (the sitemap index last, so it never names a file not yet written),
        removals after them."""
        for file, data in outputs:
            if data is not None:
                write_atomic(file, data)
        for file, data in outputs:
            if data is None:
                with contextlib.suppress(FileNotFoundError):
                    file.unlink()

    # derived files ----------------------------------------------------------------------------------------------

    def _derive(self, index: SiteIndex, change: Change) -> list[_Output]:
        """Everything ``change`` alters besides the story's page, rendered before anything is written (a broken
        template leaves the site as it was), with the site index updated to match (committed after the writes)."""
        now = self._now()
        outputs: list[_Output] = []
        sitemap: dict[str, str | None] = {}
        try:
            for (listing, number), name in sorted(change.archive_pages.items()):
                html = self._archive_page(index, listing, number, name)
                outputs.append((self._derived_file(archive_page_path(listing, number)), html.encode()))
            for listing, name in sorted(change.listings.items()):
                output, lastmod = self._index_output(index, listing, name, now)
                outputs.append(output)
                sitemap[listing_folder(listing)] = lastmod
        except RenderError as exc:
            raise AuthRevoked(f"{exc}; fix the template, then `syndicate resume {self.channel}`") from exc
        sitemap.update(change.sitemap)
        touched: set[int] = set()
        for path, lastmod in sitemap.items():
            if lastmod is None:
                touched |= index.sitemap_remove(path)
            else:
                size = len(self._sitemap_url(path, lastmod))
                touched |= index.sitemap_put(path, lastmod, size, self._limits(), _shelf(path))
        if touched:
            outputs.extend(self._sitemap_files(index, touched, now))
            outputs.append((self.root / "sitemap.xml", self._sitemap_index(index)))
        return outputs

    def _index_output(self, index: SiteIndex, listing: str, name: str, now: str) -> tuple[_Output, str | None]:
        """A listing's index page and its sitemap lastmod: when its bytes last changed (None: not in the sitemap,
        a section with no live story)."""
        html = (self._home(index) if listing == HOME else self._section(index, listing, name)).encode()
        digest = hashlib.sha256(html).hexdigest()
        state = index.listing(listing)
        changed_at = state.changed_at
        if state.digest != digest or changed_at is None:
            changed_at = now
            index.set_listing_digest(listing, digest, now)
        listed = listing == HOME or bool(index.newest(listing, 1))
        output = (self._derived_file(listing_folder(listing) + "index.html"), html)
        return output, changed_at if listed else None

    def _limits(self) -> SitemapLimits:
        header = len(self._urlset_open()) + len(b"</urlset>\n")
        return SitemapLimits(urls=self.layout.sitemap_urls, bytes=self.sitemap_max_bytes, header_bytes=header)

    def _sitemap_files(
        self, index: SiteIndex, numbers: set[int], now: str, earlier: dict[int, str | None] | None = None
    ) -> list[_Output]:
        """The sitemap files ``numbers`` as the index now has them (None for one emptied). A file written anew gets
        ``now`` as its lastmod, unless ``earlier`` (a rebuild) knows when it last changed and its bytes are the
        same as on disk."""
        outputs: list[_Output] = []
        for number in sorted(numbers):
            file = self.root / sitemap_file_name(number)
            held = index.sitemap_file(number)
            if held is None or held.urls == 0:
                index.sitemap_drop_file(number)  # an empty urlset is not a valid sitemap: the file goes
                outputs.append((file, None))
                continue
            body = b"".join(self._sitemap_url(url.path, url.lastmod) for url in index.sitemap_urls(number))
            data = self._urlset_open() + body + b"</urlset>\n"
            outputs.append((file, data))
            lastmod = (earlier or {}).get(number)
            if lastmod is None or not _holds(file, data):
                lastmod = now
            index.sitemap_file_written(number, lastmod)
        return outputs

    @staticmethod
    def _urlset_open() -> bytes:
        return f'<?xml version="1.0" encoding="UTF-8"?>\n<urlset xmlns="{SITEMAP_NS}">\n'.encode()

    def _sitemap_url(self, path: str, lastmod: str) -> bytes:
        loc = xml_escape(self.base_url + _url_path(path))
        return f"  <url>\n    <loc>{loc}</loc>\n    <lastmod>{lastmod}</lastmod>\n  </url>\n".encode()

    def _sitemap_index(self, index: SiteIndex) -> bytes:
        parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<sitemapindex xmlns="{SITEMAP_NS}">\n']
        for held in index.sitemap_files():
            loc = xml_escape(f"{self.base_url}/{sitemap_file_name(held.number)}")
            lastmod = f"\n    <lastmod>{held.lastmod}</lastmod>" if held.lastmod else ""
            parts.append(f"  <sitemap>\n    <loc>{loc}</loc>{lastmod}\n  </sitemap>\n")
        parts.append("</sitemapindex>\n")
        return "".join(parts).encode()

    # the listings -----------------------------------------------------------------------------------------------

    def _entries(self, shown: list[Listed], page_path: str) -> list[dict[str, Any]]:
        """Story links as a page at ``page_path`` shows them (relative, so the site works under any prefix)."""
        here = posixpath.dirname(page_path)
        listing: list[dict[str, Any]] = []
        for listed in shown:
            e = listed.entry
            listing.append(
                {
                    "href": _url_path(posixpath.relpath(e.path, here)),
                    "url": self.base_url + _url_path(e.path),
                    "headline": e.headline,
                    "summary": e.summary,
                    "section": e.section,
                    "published": e.published,
                    "published_display": _display_time(e.published_at),
                    "cover": Figure(e.cover_src, e.cover_alt, None, None, None) if e.cover_src else None,
                }
            )
        return listing

    def _head(self, shown: list[Listed], *, title: str, description: str, url_path: str) -> dict[str, Any]:
        """What every index and archive page carries in its head: language, canonical URL, description and the
        Open Graph properties (https://ogp.me/: og:title, og:type, og:url, og:image where a shown story has one)."""
        lang = shown[0].entry.language if shown else "zh-CN"
        cover = next((s.entry for s in shown if s.entry.cover_src), None)
        image = Figure(cover.cover_src, cover.cover_alt, None, None, None) if cover and cover.cover_src else None
        return {
            "lang": lang,
            "labels": _labels(lang),
            "canonical_url": self.base_url + _url_path(url_path),
            "description": description,
            "og_title": title,
            "og_locale": lang.replace("-", "_"),
            "og_image": image,
            "site_name": self.layout.site_name,
        }

    def _older_href(self, index: SiteIndex, listing: str, name_of_page: Callable[[int], str]) -> str | None:
        """Where a listing's index page continues: the archive page holding the first story it no longer shows."""
        after = index.newest(listing, 1, offset=self.layout.page_size)
        if not after:
            return None
        slot = after[0].home_slot if listing == HOME else after[0].section_slot
        return name_of_page(self.layout.page_of(slot))

    def _home(self, index: SiteIndex) -> str:
        shown = index.newest(HOME, self.layout.page_size)
        site = self.layout.site_name
        head = self._head(shown, title=site, description="", url_path="/")
        labels = head["labels"]
        head["description"] = self.layout.description or labels["home_description"].format(site=site)
        older = self._older_href(index, HOME, lambda n: f"page/{n}.html")
        return self.templates.render(
            "home.html.j2",
            **head,
            sections=[{"name": name, "slug": slug, "href": f"{quote(slug)}/"} for slug, name in index.sections()],
            entries=self._entries(shown, "/index.html"),
            newer_href=None,
            older_href=older,
            older_url=f"{self.base_url}/{older}" if older else None,
            newer_url=None,
        )

    def _section_name(self, index: SiteIndex, listing: str, fallback: str) -> str:
        newest = index.newest(listing, 1)
        return newest[0].entry.section if newest else (fallback or listing)

    def _section(self, index: SiteIndex, listing: str, name: str) -> str:
        shown = index.newest(listing, self.layout.page_size)
        section = self._section_name(index, listing, name)
        site = self.layout.site_name
        head = self._head(shown, title=f"{section} | {site}", description="", url_path=listing_folder(listing))
        head["description"] = head["labels"]["section_description"].format(site=site, section=section)
        older = self._older_href(index, listing, lambda n: f"page/{n}.html")
        return self.templates.render(
            "section.html.j2",
            **head,
            section=section,
            section_slug=listing,
            home_href="../",
            entries=self._entries(shown, f"/{listing}/index.html"),
            newer_href=None,
            older_href=older,
            older_url=f"{head['canonical_url']}{older}" if older else None,
            newer_url=None,
        )

    def _archive_page(self, index: SiteIndex, listing: str, number: int, name: str) -> str:
        size = self.layout.page_size
        shown = index.in_slots(listing, (number - 1) * size, number * size)
        pages = self.layout.pages(index.listing(listing).slots)
        path = archive_page_path(listing, number)
        site = self.layout.site_name
        section = None if listing == HOME else self._section_name(index, listing, name)
        page_label = _labels(shown[0].entry.language if shown else "zh-CN")["page"].format(number=number)
        title = f"{section or site} · {page_label}"
        head = self._head(shown, title=title, description="", url_path=path)
        labels = head["labels"]
        if section is None:
            described = self.layout.description or labels["home_description"].format(site=site)
        else:
            described = labels["section_description"].format(site=site, section=section)
        head["description"] = f"{described} · {page_label}"
        newer = "../" if number >= pages else f"{number + 1}.html"
        older = f"{number - 1}.html" if number > 1 else None
        folder = self.base_url + _url_path(listing_folder(listing))
        return self.templates.render(
            "archive.html.j2",
            **head,
            title=title,
            section=section,
            page_number=number,
            home_href="../" if listing == HOME else "../../",
            section_href="../" if section is not None else None,
            entries=self._entries(shown, path),
            newer_href=newer,
            older_href=older,
            newer_url=folder if number >= pages else f"{folder}page/{number + 1}.html",
            older_url=f"{folder}page/{number - 1}.html" if older else None,
        )

    # the full rebuild -------------------------------------------------------------------------------------------

    def _rebuild(self, index: SiteIndex, progress: RebuildProgress | None) -> RebuildReport:
        """Every derived file from the site index: the index pages (rendered first, so a broken template stops it
        before anything is written), every archive page, the sitemap placed afresh (so a new per-file limit or
        base URL takes effect) and its index; files left over from an earlier layout are removed."""
        now = self._now()
        listings = sorted(set(index.listing_keys()) | {HOME})
        names = dict(index.sections())
        try:
            index_pages = [self._index_output(index, key, names.get(key, key), now) for key in listings]
            if index.listing(HOME).slots:
                self._archive_page(index, HOME, 1, "")  # the archive template too, before the first write
        except RenderError as exc:
            raise AuthRevoked(f"{exc}; fix the template, then rebuild again") from exc
        earlier = {held.number: held.lastmod for held in index.sitemap_files()}
        if any(held.urls > self.layout.sitemap_urls for held in index.sitemap_files()):
            index.sitemap_clear()  # a smaller sitemap_urls_per_file: place every URL afresh
        wanted: dict[str, str] = {}
        for key, (_, lastmod) in zip(listings, index_pages, strict=True):
            if lastmod is not None:
                wanted[listing_folder(key)] = lastmod
        live = 0
        for listed in index.all_pages():
            live += 1
            wanted[listed.entry.path] = listed.entry.modified
        # Every URL stays in its file while it fits (base_url may have changed its size), so the files and their
        # lastmod stay as they were when nothing changed; URLs the index lost track of are placed, strays dropped.
        limits = self._limits()
        touched: set[int] = set()
        for path in index.sitemap_paths() - wanted.keys():
            touched |= index.sitemap_remove(path)
        for path, lastmod in wanted.items():
            touched |= index.sitemap_put(path, lastmod, len(self._sitemap_url(path, lastmod)), limits, _shelf(path))
        touched |= {held.number for held in index.sitemap_files()}
        pages = {key: self.layout.pages(index.listing(key).slots) for key in listings}
        total = sum(pages.values()) + len(index_pages) + len(touched) + 1
        done = 0

        def step() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        try:
            for key in listings:
                for number in range(1, pages[key] + 1):
                    html = self._archive_page(index, key, number, names.get(key, key))
                    write_atomic(self._derived_file(archive_page_path(key, number)), html.encode())
                    step()
        except RenderError as exc:
            raise AuthRevoked(f"{exc}; fix the template, then rebuild again") from exc
        for (file, data), _ in index_pages:
            assert data is not None
            write_atomic(file, data)
            step()
        sitemap_outputs = self._sitemap_files(index, touched, now, earlier)
        self._write(sitemap_outputs)
        for _ in sitemap_outputs:
            step()
        write_atomic(self.root / "sitemap.xml", self._sitemap_index(index))
        step()
        removed = self._remove_leftovers(pages, {n for n in touched if index.sitemap_file(n) is not None})
        return RebuildReport(
            live=live,
            index_pages=len(index_pages),
            archive_pages=sum(pages.values()),
            sitemap_files=len(index.sitemap_files()),
            removed=removed,
        )

    def _remove_leftovers(self, pages: dict[str, int], sitemap_files: set[int]) -> int:
        """Archive pages past a listing's last page and sitemap files the index no longer names (after a change of
        page_size or sitemap_urls_per_file)."""
        removed = 0
        for key, count in pages.items():
            for file in self._derived_file(listing_folder(key) + "page").glob("*.html"):
                if file.stem.isdigit() and int(file.stem) > count:
                    file.unlink()
                    removed += 1
        for file in self.root.glob("sitemap-*.xml"):
            number = file.stem.removeprefix("sitemap-")
            if number.isdigit() and int(number) not in sitemap_files:
                file.unlink()
                removed += 1
        return removed


# --- the payload ---------------------------------------------------------------------------------------------


class WebsitePayload(PayloadModel):
    """What a delivery stores: a page (publish, update: ``story_id``, ``entry``, ``html``, ``moved_html``) or a
    withdrawal (retract: ``story_id``, ``path`` when the story still names one, ``html`` the tombstone).

    The JSON form carries only the keys of its own kind, exactly the shape deliveries queued before the payload
    model hold; a payload mixing both kinds is refused when it is loaded.
    """

    story_id: str
    #: The article page, or the tombstone of a withdrawal.
    html: str
    entry: PageEntry | None = None
    #: The page left at an earlier path when a story moves (publish and update only).
    moved_html: str | None = None
    #: Where the withdrawn story's page is by its own dates (withdrawal only; None for a bare cancel).
    path: str | None = None

    @property
    def is_page(self) -> bool:
        return self.entry is not None

    @model_validator(mode="after")
    def _one_kind(self) -> WebsitePayload:
        if (self.entry is None) != (self.moved_html is None):
            raise ValueError("a page payload has both entry and moved_html, a withdrawal neither")
        if self.entry is not None and self.path is not None:
            raise ValueError("a page payload's path is entry.path; path belongs to a withdrawal")
        return self

    @model_serializer(mode="wrap")
    def _own_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        other = ("path",) if self.is_page else ("entry", "moved_html")
        return {key: value for key, value in data.items() if key not in other}


# --- the adapter -----------------------------------------------------------------------------------------------


class WebsiteAdapter(Adapter[WebsiteOptions, WebsitePayload]):
    kind: ClassVar[str] = "website"
    options_model = WebsiteOptions
    payload_model = WebsitePayload
    idempotent: ClassVar[bool] = True
    supports_rebuild: ClassVar[bool] = True
    actions = frozenset(Action)
    options: WebsiteOptions

    def __init__(self, name: str, options: WebsiteOptions, **deps: Unpack[AdapterDeps]) -> None:
        super().__init__(name, options, **deps)
        self.counts_page_reads = options.reach_beacon is not None
        self.templates = SiteTemplates(options.templates)
        layout = SiteLayout(
            page_size=options.page_size,
            sitemap_urls=options.sitemap_urls_per_file,
            site_name=options.site_name or urlsplit(options.base_url).hostname or options.base_url,
            description=options.description,
        )
        self.site = WebRoot(options.root, options.base_url, self.templates, name, layout, self.clock)
        self._lock = asyncio.Lock()

    # rendering --------------------------------------------------------------------------------------------------

    def format(self, story: ChannelStory, action: Action) -> Payload[WebsitePayload]:
        if action is Action.RETRACT:
            return self._render_withdrawal(story)
        headline = story.headline
        summary = story.summary or ""
        published = story.published_at or story.updated_at
        path = page_path(story)  # raises RenderError when there is no timestamp to place the page by
        assert published is not None
        modified = story.updated_at or published
        section = story.section or DEFAULT_SECTION
        url = self.options.base_url + _url_path(path)
        warnings: list[str] = []

        body = clean_html(story.body_html)
        in_body = {block.src for block in html_blocks(body) if block.kind == "image"}
        cover = story.cover
        lead = cover if cover is not None and cover.href not in in_body else None
        gallery = [img for img in story.images if img.href not in in_body and img is not lead]
        for index, image in enumerate(story.images):
            if not (image.alt or image.caption):
                warnings.append(f"images[{index}] has neither alt nor caption: it is shown with an empty alt text")
        description = summary or plain_text(body)[:DESCRIPTION_LENGTH]
        if not summary:
            warnings.append("no summary: the description meta tags use the start of the body")

        lang = story.language
        labels = _labels(lang)
        html = self.templates.render(
            "article.html.j2",
            lang=lang,
            labels=labels,
            story_id=story.id,
            headline=headline,
            subheadline=story.subheadline,
            summary=summary,
            description=description,
            byline=story.by,
            canonical_url=url,
            og_locale=lang.replace("-", "_"),
            og_image=Figure.of(cover) if cover is not None else None,
            published=published.isoformat(),
            modified=modified.isoformat(),
            published_display=_display_time(published),
            section=section,
            section_href="../../",
            home_href="../../../",
            tags=list(story.tags),
            lead_image=Figure.of(lead) if lead is not None else None,
            body_html=Markup(body),
            gallery=[Figure.of(img) for img in gallery],
            reach_beacon=self._beacon_src(story.id),
        )
        moved_html = self.templates.render("moved.html.j2", lang=lang, labels=labels, target_url=url)
        entry = PageEntry(
            story_id=story.id,
            version=story.version,
            path=path,
            headline=headline,
            summary=description,
            section=section,
            section_slug=section_slug(section),
            language=lang,
            published=published.isoformat(),
            modified=modified.isoformat(),
            cover_src=cover.href if cover is not None else None,
            cover_alt=Figure.of(cover).alt if cover is not None else "",
        )
        data = WebsitePayload(story_id=story.id, entry=entry, html=html, moved_html=moved_html)
        return Payload(data=data, warnings=tuple(warnings))

    def _beacon_src(self, story_id: str) -> str | None:
        if self.options.reach_beacon is None:
            return None
        return f"{self.options.reach_beacon}?{urlencode({'s': story_id, 'c': self.name})}"

    def _render_withdrawal(self, story: Story) -> Payload[WebsitePayload]:
        """The tombstone says only that the story is gone: no headline (a withdrawal may be for legal reasons)."""
        try:
            path: str | None = page_path(story)
        except RenderError:
            path = None  # a bare cancel from the CMS; the live page's path comes from the receipt
        html = self.templates.render(
            "withdrawn.html.j2",
            lang=story.language,
            labels=_labels(story.language),
            home_url=f"{self.options.base_url}/",
        )
        return Payload(data=WebsitePayload(story_id=story.id, path=path, html=html))

    # delivering -------------------------------------------------------------------------------------------------

    async def _in_root(self, work: Callable[[], _Result]) -> _Result:
        async with self._lock:
            try:
                return await asyncio.to_thread(work)
            except PermissionError as exc:
                raise AuthRevoked(
                    f"no permission to write {exc.filename or self.options.root}: give this process write access "
                    f"to the web root or fix [channels.{self.name}] root"
                ) from exc
            except OSError as exc:
                if exc.errno == errno.EROFS:
                    raise AuthRevoked(f"the web root {self.options.root} is on a read-only file system") from exc
                raise Retryable(f"writing under the web root {self.options.root} failed: {exc}") from exc

    def _receipt(self, path: str, **raw: Any) -> Receipt:
        return Receipt(remote_id=path, url=self.options.base_url + _url_path(path), raw={"path": path, **raw})

    async def publish(self, payload: Payload[WebsitePayload], ctx: DeliveryContext) -> Receipt:
        return await self._put(payload.data, ctx)

    async def update(self, payload: Payload[WebsitePayload], ctx: DeliveryContext) -> Receipt:
        return await self._put(payload.data, ctx)

    async def _put(self, page: WebsitePayload, ctx: DeliveryContext) -> Receipt:
        entry, moved_html = page.entry, page.moved_html
        if entry is None or moved_html is None:
            raise Permanent(f"the payload of this {ctx.action.value} is a withdrawal, not a page; re-render it")
        earlier = {ctx.receipt.remote_id} if ctx.receipt is not None and ctx.receipt.remote_id else set()
        moved = await self._in_root(lambda: self.site.put_page(entry, page.html, moved_html, earlier))
        return self._receipt(entry.path, **({"moved_from": moved} if moved else {}))

    async def retract(self, payload: Payload[WebsitePayload], ctx: DeliveryContext) -> Receipt:
        live_path = ctx.receipt.remote_id if ctx.receipt is not None else None
        gone = payload.data
        if gone.is_page:
            raise Permanent("the payload of this retraction is a page, not a withdrawal; re-render it")
        withdrawn = await self._in_root(lambda: self.site.withdraw(gone.story_id, live_path, gone.path, gone.html))
        if not withdrawn:
            return Receipt(raw={"withdrawn": [], "note": "no page of this story was found to withdraw"})
        return self._receipt(withdrawn[0], withdrawn=withdrawn)

    async def rebuild(self, progress: RebuildProgress) -> str:
        """Every index page, archive page and sitemap file again from the site index (after changing templates,
        page_size or sitemap_urls_per_file). Article pages keep the bytes their delivery wrote."""
        report = await self._in_root(lambda: self.site.rebuild(progress))
        removed = f"; {report.removed} left-over files removed" if report.removed else ""
        return (
            f"{report.live} live stories: {report.index_pages} index pages, {report.archive_pages} archive pages and "
            f"{report.sitemap_files} sitemap files rewritten under {self.options.root}{removed}"
        )

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self.site.close)

    async def check(self, keys: SharedKeys | None = None) -> str:
        """The root exists and this process can create, fsync and rename files in it."""

        def probe() -> int:
            count = self.site.live_count()  # also checks the root exists and the manifest reads
            probe_file = self.options.root / STATE_DIR / "check"
            write_atomic(probe_file, b"ok\n")
            probe_file.unlink()
            return count

        count = await self._in_root(probe)
        return f"web root {self.options.root} is writable; {count} live pages; public at {self.options.base_url}/"

    def web_routes(self, access: ChannelAccess) -> list[web.AbstractRouteDef]:
        """Serve the web root read-only under /site/ for preview (no listings, no symlinks, no dot-files)."""
        root = self.options.root
        if not root.is_dir():
            log.warning("web root %s of channel %s does not exist: /site/ is not served", root, self.name)
            return []

        async def home(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(f"{PREVIEW_PREFIX}/index.html")

        async def section(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(f"{PREVIEW_PREFIX}/{quote(request.match_info['section'])}/index.html")

        async def hidden(request: web.Request) -> web.StreamResponse:
            raise web.HTTPNotFound()

        return [
            web.get(PREVIEW_PREFIX, home),
            web.get(f"{PREVIEW_PREFIX}/", home),
            web.get(PREVIEW_PREFIX + r"/{hidden:(?:[^/]+/)*\.[^/]*(?:/.*)?}", hidden),
            web.get(PREVIEW_PREFIX + r"/{section:[^/.][^/]*}/", section),
            web.static(PREVIEW_PREFIX, root, show_index=False, follow_symlinks=False),
        ]

    def openapi_paths(self) -> dict[str, Any]:
        return {
            PREVIEW_PREFIX + "/{path}": {
                "get": {
                    "summary": f"Preview of the website channel {self.name}: the files of its web root",
                    "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "A page, index or sitemap"}, "404": {"description": "None"}},
                }
            }
        }
