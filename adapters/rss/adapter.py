"""RSS 2.0 and Atom 1.0 feeds of the newest stories: files under the channel's ``root``, served by `syndicate serve`.

Why files: a feed is a document, not a post. Every publish, update and retraction edits one JSON manifest of
entries (``<root>/.syndicate/rss-manifest.json``) and regenerates ``rss.xml`` and ``atom.xml`` from its newest
``items`` entries, all under a lock and with atomic replaces, so readers (and a web server pointed at ``root``)
never see a half-written feed, and rewriting is harmless: the channel is idempotent.

What a delivery costs does not grow with the archive: the manifest holds only what the feeds need, so parsing it,
applying the change and rebuilding both feeds are O(``items``) however many stories were ever published.

* ``entries``: the newest ``2 × items`` stories, newest first (the reserve lets a retraction move the next story
  up instead of shortening the feed).
* ``horizon``: the feed position (published time, GUID) of the newest entry ever trimmed off. Everything at or
  below it is archive the manifest no longer knows, so an update of a story that fell out of the window (or a
  replay of an old delivery for it) changes nothing: it would land below ``items`` anyway, and without its
  version history it could bring back text older than what readers already saw.
* ``retracted``: the story id and version of recent retractions (at most ``2 × items``, and none at or below the
  horizon, which covers them). A publish or update older than a story's retraction (a replayed stale delivery) is
  refused by it, while a newer version (the desk restored the story) comes back. A retraction of a story the
  manifest does not hold is recorded the same way; it changes neither feed.

Rules a feed reader relies on:

* The GUID (RSS ``guid isPermaLink="false"``, Atom ``id``) is ``urn:syndicate:story:<id>`` (the story's ninjs
  URI form): it depends on nothing but the story id, so an update never looks like a new story, even when the
  story's URL changes.
* ``updated`` moves forward on every new version: the story's ``updated_at`` when the CMS advanced it, otherwise
  the moment the update reached the feed. RSS 2.0 items have no modification date; RSS readers see the same GUID
  with new content, and the channel's ``lastBuildDate``.
* The body is the sanitised HTML (``syndicate.sanitize.clean_html``) in ``content:encoded`` / Atom
  ``content type="html"``; titles and summaries are plain text, so no markup from the CMS reaches either feed.
* Each feed names its own address (``atom:link rel="self"``; in RSS with ``type="application/rss+xml"``, as the
  RSS Advisory Board's profile recommends and the W3C feed validator asks): ``feeds_url`` plus the file name.
* The cover image is the enclosure, and its ``length`` is the file's real size in bytes, never a made-up ``0``.
  The size comes from the story when the CMS states it (ninjs rendition ``sizeinbytes``, ``Image.size_bytes``),
  otherwise from fetching the image once at delivery through the shared media fetcher (its limits, cache and
  address policy; the cache means an update does not download again), which also gives the real type from the
  file's bytes. When the size cannot be known (the fetch is refused or fails, or ``enclosure_sizes = "declared"``
  forbids fetching) the RSS item carries no enclosure: RSS 2.0 makes ``length`` mandatory, and the RSS Advisory
  Board's profile answers an unknown size with ``0``, which readers take for an empty file and issue 15 forbids.
  The Atom entry keeps its ``link rel="enclosure"`` without ``length``, which RFC 4287 makes optional and advisory.
  A failed fetch is not retried: a story's place in the feed matters more than its enclosure, so it goes out at
  once, the receipt and the log say why the enclosure is missing, and the next update tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import errno
import fcntl
import hashlib
import html
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, Unpack
from urllib.parse import quote, urljoin, urlsplit

from aiohttp import web
from feedgen.feed import FeedGenerator
from lxml import etree
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from syndicate.channel import Adapter, AdapterDeps, AdapterOptions, DeliveryContext
from syndicate.delivery import (
    Action,
    AuthRevoked,
    DeliveryError,
    Payload,
    PayloadModel,
    Permanent,
    Receipt,
    RenderError,
    Retryable,
)
from syndicate.files import write_atomic
from syndicate.ninjs import NINJS_URI_PREFIX
from syndicate.sanitize import clean_html, plain_text
from syndicate.story import ChannelStory

if TYPE_CHECKING:
    from syndicate.store.base import ChannelAccess, SharedKeys

log = logging.getLogger("syndicate.adapters.rss.adapter")

RSS_FILE = "rss.xml"
ATOM_FILE = "atom.xml"
STATE_DIR = ".syndicate"
MANIFEST_FILE = "rss-manifest.json"
LOCK_FILE = "rss.lock"
RSS_CONTENT_TYPE = "application/rss+xml; charset=utf-8"
ATOM_CONTENT_TYPE = "application/atom+xml; charset=utf-8"
RSS_ROUTE = "/feeds/rss.xml"
ATOM_ROUTE = "/feeds/atom.xml"

#: Characters of body text a summary-less story shows as its summary.
SUMMARY_EXCERPT_CHARS = 200
#: The manifest keeps this many times ``items`` entries, so a retraction lets an older story move back into the
#: feed instead of shortening it, while the manifest stays bounded.
MANIFEST_RESERVE_FACTOR = 2
#: Enclosure type for an image URL whose extension says nothing (CDN URLs often have none; most are JPEG).
DEFAULT_IMAGE_TYPE = "image/jpeg"
IMAGE_TYPES: dict[str, str] = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".svg": "image/svg+xml",
    ".bmp": "image/bmp",
}

_ATOM_NS = "http://www.w3.org/2005/Atom"
_URI_SAFE = "-._~!$&'()*+,;=:@/"


# --- config ----------------------------------------------------------------------------------------------------


class RssOptions(AdapterOptions):
    #: Folder the feeds are written to (relative paths are relative to the working directory).
    root: Path
    #: The feeds' title.
    title: str = Field(min_length=1)
    #: The site the feeds describe (RSS channel link, Atom feed id and alternate link).
    link: HttpUrl
    #: How many of the newest stories the feeds hold.
    items: int = Field(default=50, ge=1, le=1000)
    #: RSS channel description / Atom subtitle; defaults to the title.
    description: str | None = None
    #: Language of the feeds (RSS ``language``, Atom ``xml:lang``).
    language: str = Field(default="zh-CN", pattern=r"^[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*$")
    #: The feed's author (Atom requires one at feed level); defaults to the title.
    author: str | None = None
    #: The public URL of the folder the feeds are served from: each feed's ``atom:link rel="self"`` is this plus
    #: its file name. Defaults to ``/feeds/`` on the ``link`` host, where `syndicate serve` mounts them.
    feeds_url: HttpUrl | None = None
    #: Where an enclosure's byte size comes from when the story does not state it: ``fetch`` the image once at
    #: delivery through the shared media fetcher, or only what is ``declared`` (no network; the RSS item then
    #: carries no enclosure).
    enclosure_sizes: Literal["fetch", "declared"] = "fetch"

    @field_validator("title")
    @classmethod
    def _title_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


# --- what the feeds hold ---------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Enclosure(_Model):
    """The cover image as an enclosure; ``length`` in bytes, None while unknown (never 0: see the module doc)."""

    href: str
    type: str
    length: int | None = Field(default=None, ge=1)


class FeedEntry(_Model):
    """One story as the feeds show it, as ``render`` produces it (dates exactly as the story gave them)."""

    guid: str
    story_id: str
    version: int
    title: str
    link: str | None = None
    #: Plain text, HTML-escaped (RSS descriptions are HTML by convention; Atom summary type="html").
    summary_html: str
    #: The sanitised body.
    content_html: str
    author: str | None = None
    categories: list[str] = Field(default_factory=list)
    published: dt.datetime | None = None
    updated: dt.datetime | None = None
    enclosure: Enclosure | None = None


class StoredEntry(FeedEntry):
    """An entry in the manifest: dates resolved (a story without them gets the time it reached the feed)."""

    published: dt.datetime
    updated: dt.datetime


class Retraction(_Model):
    guid: str
    story_id: str


class RssPayload(PayloadModel):
    """What a delivery stores: ``{"entry": ...}`` for a publish or update, ``{"retraction": ...}`` for a
    retraction. Exactly one is set, and only that one is in the JSON form (the shape stored deliveries hold)."""

    entry: FeedEntry | None = None
    retraction: Retraction | None = None

    @model_validator(mode="after")
    def _one_of(self) -> RssPayload:
        if (self.entry is None) == (self.retraction is None):
            raise ValueError("an rss payload holds either an entry (publish, update) or a retraction")
        return self

    @model_serializer(mode="wrap")
    def _only_the_set_one(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value is not None}


class FeedPosition(_Model):
    """Where an entry sorts in the feeds: newest ``published`` first, the GUID breaking ties."""

    published: dt.datetime
    guid: str

    @classmethod
    def of(cls, entry: StoredEntry) -> FeedPosition:
        return cls(published=entry.published, guid=entry.guid)

    def key(self) -> tuple[dt.datetime, str]:
        return (self.published, self.guid)


class RetractedStory(_Model):
    """A retraction the manifest remembers, so an older version delivered after it cannot bring the story back."""

    story_id: str
    version: int
    #: Where the story stood when it was retracted; None when the manifest did not hold it.
    position: FeedPosition | None = None


class Manifest(_Model):
    """What the feeds are generated from, bounded by ``items`` (see the module doc): ``entries`` newest first,
    ``horizon`` the newest position ever trimmed off, ``retracted`` the recent retractions in the order they came.
    ``changed_at`` is the feeds' own updated time. Format 1 (entries only, written before issue 15) still loads."""

    format: Literal[1, 2] = 2
    changed_at: dt.datetime | None = None
    entries: list[StoredEntry] = Field(default_factory=list)
    horizon: FeedPosition | None = None
    retracted: list[RetractedStory] = Field(default_factory=list)


@dataclass(frozen=True)
class FeedMeta:
    """The feed-level fields, from the channel's config; ``rss_url``/``atom_url`` are the feeds' own addresses."""

    title: str
    link: str
    description: str
    language: str
    author: str
    rss_url: str
    atom_url: str

    @classmethod
    def from_options(cls, options: RssOptions) -> FeedMeta:
        folder = str(options.feeds_url) if options.feeds_url is not None else urljoin(str(options.link), "/feeds/")
        if not folder.endswith("/"):
            folder += "/"  # a folder: urljoin would otherwise replace its last segment
        return cls(
            title=options.title,
            link=str(options.link),
            description=options.description or options.title,
            language=options.language,
            author=options.author or options.title,
            rss_url=urljoin(folder, RSS_FILE),
            atom_url=urljoin(folder, ATOM_FILE),
        )


def story_guid(story_id: str) -> str:
    """The stable GUID of a story: its ninjs URI form, so every channel and export names it the same way."""
    return NINJS_URI_PREFIX + quote(story_id, safe=_URI_SAFE)


def image_type(href: str) -> str:
    """The MIME type an image URL's extension implies (a fixed table, so rendering is the same on every host)."""
    path = urlsplit(href).path.lower()
    suffix = path[path.rfind(".") :] if "." in path.rsplit("/", 1)[-1] else ""
    return IMAGE_TYPES.get(suffix, DEFAULT_IMAGE_TYPE)


def _excerpt(text: str, limit: int = SUMMARY_EXCERPT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# --- manifest changes (pure) -----------------------------------------------------------------------------------


def _newest_first(entries: Sequence[StoredEntry]) -> list[StoredEntry]:
    return sorted(entries, key=lambda e: (e.published, e.guid), reverse=True)


def merge_entry(existing: StoredEntry | None, incoming: FeedEntry, now: dt.datetime) -> StoredEntry | None:
    """The stored entry after ``incoming`` arrives, or None when it changes nothing.

    The same version again (a retry, a replay) and an older version (a forced replay of a stale delivery) leave
    the entry as it is. A new version keeps the GUID and moves ``updated`` forward.
    """
    if existing is not None and existing.version >= incoming.version:
        return None
    published = incoming.published or (existing.published if existing else now)
    if existing is None:
        updated = incoming.updated or published
    elif incoming.updated is not None and incoming.updated > existing.updated:
        updated = incoming.updated
    else:
        # The CMS did not advance updated_at: the update is dated when it reached the feed, always later.
        updated = max(now, existing.updated + dt.timedelta(seconds=1))
    return StoredEntry(**{**incoming.model_dump(), "published": published, "updated": updated})


@dataclass(frozen=True)
class Upserted:
    """What a publish or update did: the entry the manifest now holds for the story, or why it holds none."""

    entry: StoredEntry | None
    #: Why the story is not in the manifest (None when it is).
    left_out: str | None = None


def manifest_window(items: int) -> int:
    """How many entries the manifest keeps: the feeds' ``items`` and as many in reserve."""
    return items * MANIFEST_RESERVE_FACTOR


def _retraction_of(manifest: Manifest, story_id: str) -> RetractedStory | None:
    return next((r for r in manifest.retracted if r.story_id == story_id), None)


def _above(position: FeedPosition | None, horizon: FeedPosition | None) -> bool:
    return horizon is None or position is None or position.key() > horizon.key()


def upsert(manifest: Manifest, incoming: FeedEntry, *, items: int, now: dt.datetime) -> tuple[Manifest, Upserted]:
    """The manifest with ``incoming`` applied, and what it holds for the story now."""
    existing = next((e for e in manifest.entries if e.story_id == incoming.story_id), None)
    if existing is None:
        retraction = _retraction_of(manifest, incoming.story_id)
        if retraction is not None and retraction.version >= incoming.version:
            reason = f"version {incoming.version} is older than the story's retraction (version {retraction.version})"
            return manifest, Upserted(None, reason)
    merged = merge_entry(existing, incoming, now)
    if merged is None:
        assert existing is not None
        return manifest, Upserted(existing)
    if existing is None and not _above(FeedPosition.of(merged), manifest.horizon):
        # Fell out of the window earlier (or older than all of it): below the feeds, and its history is gone.
        reason = f"published before every story the feeds' window holds (newest {manifest_window(items)})"
        return manifest, Upserted(None, reason)
    others = [e for e in manifest.entries if e.story_id != incoming.story_id]
    ordered = _newest_first([*others, merged])
    window = manifest_window(items)
    kept, trimmed = ordered[:window], ordered[window:]
    horizon = manifest.horizon
    if trimmed:
        newest_trimmed = FeedPosition.of(trimmed[0])
        if horizon is None or newest_trimmed.key() > horizon.key():
            horizon = newest_trimmed
    retracted = [r for r in manifest.retracted if r.story_id != incoming.story_id and _above(r.position, horizon)]
    after = Manifest(changed_at=now, entries=kept, horizon=horizon, retracted=retracted)
    if all(e.story_id != merged.story_id for e in kept):
        return after, Upserted(None, f"older than the newest {window} stories the feeds' window holds")
    return after, Upserted(merged)


def remove(manifest: Manifest, story_id: str, version: int, *, items: int, now: dt.datetime) -> tuple[Manifest, bool]:
    """The manifest without the story, remembering the retraction, and whether the story was in it.

    A retraction older than the version the manifest holds (a replayed stale delivery after the story was
    restored) changes nothing; so does one the manifest already remembers."""
    existing = next((e for e in manifest.entries if e.story_id == story_id), None)
    if existing is not None and existing.version > version:
        return manifest, False
    known = _retraction_of(manifest, story_id)
    if existing is None and known is not None and known.version >= version:
        return manifest, False
    # Where a story the manifest does not hold stood is unknown: its record stays until newer ones push it out.
    position = FeedPosition.of(existing) if existing is not None else None
    retracted = [r for r in manifest.retracted if r.story_id != story_id]
    retracted.append(RetractedStory(story_id=story_id, version=version, position=position))
    entries = [e for e in manifest.entries if e.story_id != story_id]
    after = Manifest(
        changed_at=now if existing is not None else manifest.changed_at,
        entries=entries,
        horizon=manifest.horizon,
        retracted=retracted[-manifest_window(items) :],
    )
    return after, existing is not None


# --- feed generation (pure) ------------------------------------------------------------------------------------


def build_feeds(meta: FeedMeta, entries: Sequence[StoredEntry], updated: dt.datetime) -> tuple[bytes, bytes]:
    """(rss.xml, atom.xml) for ``entries`` in the given order. Deterministic: the same input gives the same bytes,
    so a rewrite changes neither the file nor its ETag."""
    fg = FeedGenerator()
    fg.load_extension("dc", atom=False, rss=True)  # dc:creator: RSS <author> must be an e-mail address
    fg.id(meta.link)
    fg.title(meta.title)
    fg.description(meta.description)
    fg.language(meta.language)
    fg.author(name=meta.author)
    fg.generator("syndicate")
    fg.updated(updated)
    fg.lastBuildDate(updated)
    for entry in entries:
        fe = fg.add_entry(order="append")
        fe.id(entry.guid)  # also the RSS guid, isPermaLink="false"
        fe.title(entry.title)
        if entry.link:
            fe.link(href=entry.link, rel="alternate", type="text/html")
        fe.summary(entry.summary_html, type="html")  # also the RSS description
        fe.content(entry.content_html, type="html")  # RSS content:encoded, Atom content type="html"
        if entry.author:
            fe.author(name=entry.author)
            fe.dc.dc_creator(entry.author)
        for term in entry.categories:
            fe.category(term=term)
        fe.published(entry.published)
        fe.updated(entry.updated)
        if entry.enclosure is not None and entry.enclosure.length is not None:
            # RSS only: its length is mandatory, so an enclosure of unknown size is left out (module doc). The
            # Atom entry's links, this one included, are written by repair_atom_entry_links from our own data.
            enclosure = entry.enclosure
            fe.enclosure(enclosure.href, str(enclosure.length), enclosure.type)
    # Each feed's own address first: feedgen takes the RSS channel <link> from the last link given.
    alternate = {"href": meta.link, "rel": "alternate"}
    fg.link([{"href": meta.rss_url, "rel": "self", "type": "application/rss+xml"}, alternate], replace=True)
    rss = fg.rss_str(pretty=True)
    fg.link([{"href": meta.atom_url, "rel": "self", "type": "application/atom+xml"}, alternate], replace=True)
    atom = repair_atom_entry_links(fg.atom_str(pretty=True), entries)
    return rss, atom


def _atom_links(entry: StoredEntry) -> list[dict[str, str]]:
    links: list[dict[str, str]] = []
    if entry.link:
        links.append({"href": entry.link, "rel": "alternate", "type": "text/html"})
    if entry.enclosure is not None:
        enclosure = {"href": entry.enclosure.href, "rel": "enclosure", "type": entry.enclosure.type}
        if entry.enclosure.length is not None:
            enclosure["length"] = str(entry.enclosure.length)
        links.append(enclosure)
    return links


def repair_atom_entry_links(atom: bytes, entries: Sequence[StoredEntry]) -> bytes:
    """Rewrite every entry's ``<link>`` elements from our own data.

    feedgen 1.0.0 writes entry links with ``href`` only (lkiesow/python-feedgen#135: the loop variable is
    overwritten by the new element, so rel, type and length are read from the element instead of the data;
    #143 reports the result for enclosures). An enclosure then comes out as ``<link href="cover.png"/>``,
    which Atom reads as rel="alternate": readers lose the enclosure and may take the image for the article's
    link. Replacing the links wholesale is right whether or not a later feedgen fixes it.
    """
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
    feed = etree.fromstring(atom, parser)
    by_guid = {entry.guid: entry for entry in entries}
    for element in feed.iterfind(f"{{{_ATOM_NS}}}entry"):
        entry = by_guid[element.findtext(f"{{{_ATOM_NS}}}id", "")]
        old = element.findall(f"{{{_ATOM_NS}}}link")
        if old:
            position = element.index(old[0])
        else:
            updated_element = element.find(f"{{{_ATOM_NS}}}updated")
            position = element.index(updated_element) + 1 if updated_element is not None else len(element)
        for link in old:
            element.remove(link)
        for offset, attributes in enumerate(_atom_links(entry)):
            link = etree.Element(f"{{{_ATOM_NS}}}link")
            for name, value in attributes.items():
                link.set(name, value)
            element.insert(position + offset, link)
    return etree.tostring(feed, xml_declaration=True, encoding="UTF-8", pretty_print=True)


# --- files: atomic writes under a lock -------------------------------------------------------------------------


class FeedStateError(Exception):
    """The feed folder cannot be used as it is (no permission, read-only, a corrupt manifest): an operator must
    act, every delivery would fail the same way."""


class LockTimeout(Exception):
    """Another writer held the feed lock for the whole wait."""


class UnrenderableEntry(Exception):
    """The story's entry cannot be written into the feeds (the message says why): this delivery fails, no other."""


def entry_problem(meta: FeedMeta, entry: StoredEntry) -> str | None:
    """Why the feeds cannot carry ``entry`` (tried in a feed of its own), or None when they can."""
    try:
        build_feeds(meta, [entry], entry.updated)
    except Exception as exc:  # whatever feedgen or lxml refuse it with
        return f"the feeds cannot carry it: {type(exc).__name__}: {exc}"
    return None


@contextlib.contextmanager
def exclusive_lock(path: Path, timeout: float) -> Iterator[None]:
    """flock on ``path``: one writer at a time across processes (and across adapter instances in one)."""
    with open(path, "a+b") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"{path} stayed locked by another writer for {timeout:g} s") from None
                time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


T = TypeVar("T")


class FeedFolder:
    """The channel's ``root``: the manifest, the lock and the two feeds. Blocking; call from a thread."""

    def __init__(self, root: Path, meta: FeedMeta, items: int, lock_timeout: float) -> None:
        self.root = root
        self.meta = meta
        self.items = items
        self.lock_timeout = lock_timeout
        self.state_dir = root / STATE_DIR
        self.manifest_path = self.state_dir / MANIFEST_FILE

    def load_manifest(self) -> Manifest:
        try:
            raw = self.manifest_path.read_bytes()
        except FileNotFoundError:
            return Manifest()
        try:
            return Manifest.model_validate_json(raw)
        except ValidationError as exc:
            raise FeedStateError(
                f"{self.manifest_path} is not a valid feed manifest ({exc.error_count()} problems, first: "
                f"{exc.errors()[0]['msg']}); restore it from a backup, or delete it to start the feeds afresh "
                "(they then hold only stories delivered from now on)"
            ) from exc

    def transaction(self, change: Callable[[Manifest], tuple[Manifest, T]], now: dt.datetime) -> T:
        """Apply ``change`` to the manifest and regenerate both feeds, under the lock."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.state_dir / LOCK_FILE, self.lock_timeout):
            before = self.load_manifest()
            after, result = change(before)
            if after.changed_at is None:  # the first write of all: date the (empty) feeds once, not per rewrite
                after = after.model_copy(update={"changed_at": now})
            # The feeds are built before anything is written: a manifest that described feeds which cannot be
            # built would fail every later delivery, the retraction of the culprit included.
            after, feeds = self.build(before, after)
            if after is not before:
                payload = after.model_dump_json(indent=1).encode()
                write_atomic(self.manifest_path, payload)
            # Always (re)write: a crash between the manifest and the feeds is repaired by the next delivery,
            # and identical bytes are not rewritten.
            rss, atom = feeds
            write_atomic(self.root / RSS_FILE, rss)
            write_atomic(self.root / ATOM_FILE, atom)
            return result

    def _feeds(self, manifest: Manifest) -> tuple[bytes, bytes]:
        assert manifest.changed_at is not None
        return build_feeds(self.meta, _newest_first(manifest.entries)[: self.items], manifest.changed_at)

    def build(self, before: Manifest, after: Manifest) -> tuple[Manifest, tuple[bytes, bytes]]:
        """The manifest to keep and the feeds it gives. An entry this change brings that the feeds cannot carry
        raises UnrenderableEntry (nothing is written); one already in the manifest (written by an older syndicate,
        or by hand) is dropped with a warning, so it cannot stop the channel delivering the other stories."""
        try:
            return after, self._feeds(after)
        except Exception as exc:  # feedgen and lxml raise ValueError, TypeError...; found out per entry below
            failure: Exception = exc
        assert after.changed_at is not None
        build_feeds(self.meta, [], after.changed_at)  # a feed-level problem (the config) fails as itself
        prior = {entry.guid: entry for entry in before.entries}
        entries = list(after.entries)
        while True:
            shown = _newest_first(entries)[: self.items]
            bad = {entry.guid: problem for entry in shown if (problem := entry_problem(self.meta, entry))}
            if not bad:
                raise failure
            for entry in shown:
                if entry.guid not in bad:
                    continue
                if prior.get(entry.guid) != entry:
                    raise UnrenderableEntry(f"story {entry.story_id!r}: {bad[entry.guid]}")
                log.warning(
                    "dropped story %s from the feeds: %s",
                    entry.story_id,
                    bad[entry.guid],
                    extra={"story_id": entry.story_id, "path": str(self.manifest_path)},
                )
            entries = [entry for entry in entries if entry.guid not in bad]
            repaired = after.model_copy(update={"entries": entries})
            try:
                return repaired, self._feeds(repaired)
            except Exception as exc:  # another entry moved into the window and fails too: go round again
                failure = exc

    def probe(self) -> int:
        """Prove the folder is writable (create, fsync and remove a file in it); the manifest's entry count."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for folder in (self.root, self.state_dir):
            fd, name = tempfile.mkstemp(dir=folder, prefix=".syndicate-check.", suffix=".tmp")
            try:
                os.write(fd, b"check")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(name)
        return len(self.load_manifest().entries)


_OPERATOR_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR})


def _delivery_error(exc: Exception, root: Path) -> DeliveryError:
    """Map what went wrong with the folder onto the taxonomy.

    A folder we may not write (or a corrupt manifest) fails every delivery the same way until an operator acts:
    AuthRevoked is the engine's signal for exactly that (pause the channel, lose nothing), even though no
    credential is involved. A lock held too long and other I/O errors (disk full) are retried.
    """
    if isinstance(exc, FeedStateError):
        return AuthRevoked(f"{exc}; then `syndicate resume` the channel")
    if isinstance(exc, UnrenderableEntry):
        return Permanent(str(exc))
    if isinstance(exc, LockTimeout):
        return Retryable(str(exc))
    if isinstance(exc, OSError) and exc.errno in _OPERATOR_ERRNOS:
        return AuthRevoked(
            f"cannot write the feeds under the channel's root {root} ({exc.strerror or exc}: {exc.filename}); "
            "make it a folder syndicate may write, then `syndicate resume` the channel",
            platform_code=errno.errorcode.get(exc.errno or 0),
        )
    return Retryable(f"writing the feeds under {root} failed: {type(exc).__name__}: {exc}")


# --- serving ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedSnapshot:
    body: bytes
    etag: str
    last_modified: dt.datetime
    key: tuple[int, int, int]

    @property
    def last_modified_http(self) -> str:
        return email.utils.format_datetime(self.last_modified, usegmt=True)


class FeedCache:
    """The served bytes of each feed file, re-read only when the file was replaced (inode, size or mtime)."""

    def __init__(self) -> None:
        self._snapshots: dict[Path, FeedSnapshot] = {}

    def load(self, path: Path) -> FeedSnapshot:
        with open(path, "rb") as handle:  # one descriptor: the stat and the bytes belong to the same file
            stat = os.fstat(handle.fileno())
            key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            cached = self._snapshots.get(path)
            if cached is not None and cached.key == key:
                return cached
            body = handle.read()
        snapshot = FeedSnapshot(
            body=body,
            etag=f'"{hashlib.sha256(body).hexdigest()[:32]}"',
            last_modified=dt.datetime.fromtimestamp(int(stat.st_mtime), dt.UTC),
            key=key,
        )
        self._snapshots[path] = snapshot
        return snapshot


def _opaque_tag(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def is_not_modified(request: web.Request, snapshot: FeedSnapshot) -> bool:
    """RFC 9110 §13.2.2: If-None-Match (weak comparison) decides when present, else If-Modified-Since."""
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        ours = _opaque_tag(snapshot.etag)
        return any(tag.strip() == "*" or _opaque_tag(tag) == ours for tag in if_none_match.split(","))
    if_modified_since = request.headers.get("If-Modified-Since")
    if if_modified_since:
        try:
            since = email.utils.parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False  # an unparseable date is ignored, as the RFC says
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        return snapshot.last_modified <= since
    return False


# --- the adapter -----------------------------------------------------------------------------------------------


class RssAdapter(Adapter[RssOptions, RssPayload]):
    """Keeps ``rss.xml`` and ``atom.xml`` under ``root`` in step with the stories delivered to the channel."""

    kind: ClassVar[str] = "rss"
    options_model = RssOptions
    payload_model = RssPayload
    idempotent: ClassVar[bool] = True
    actions = frozenset(Action)
    options: RssOptions

    def __init__(self, name: str, options: RssOptions, **deps: Unpack[AdapterDeps]) -> None:
        super().__init__(name, options, **deps)
        self.folder = FeedFolder(options.root, FeedMeta.from_options(options), options.items, lock_timeout=self.timeout)
        self._lock = asyncio.Lock()  # one writer per process; the flock covers other processes
        self._cache = FeedCache()

    # rendering ------------------------------------------------------------------------------------------------

    def format(self, story: ChannelStory, action: Action) -> Payload[RssPayload]:
        guid = story_guid(story.id)
        if action is Action.RETRACT:
            return Payload(data=RssPayload(retraction=Retraction(guid=guid, story_id=story.id)))
        title = plain_text(story.headline)
        if not title:
            raise RenderError("headline: no text is left once markup is removed; give the story a text headline")
        warnings: list[str] = []
        summary = plain_text(story.summary or "")
        if not summary:
            summary = _excerpt(plain_text(story.body_html)) or title
            warnings.append("summary: the story has none; the feeds show the start of the body instead")
        content = clean_html(story.body_html).strip()
        if not content:
            content = f"<p>{html.escape(summary, quote=False)}</p>"
            warnings.append("body_html: empty after sanitising; the feeds' content is the summary")
        if story.url is None:
            warnings.append("url: the story has none, so its feed items link nowhere")
        cover = story.cover
        entry = FeedEntry(
            guid=guid,
            story_id=story.id,
            version=story.version,
            title=title,
            link=story.url,
            summary_html=html.escape(summary, quote=False),
            content_html=content,
            author=(story.by or "").strip() or None,
            categories=list(dict.fromkeys(tag.strip() for tag in story.tags)),
            published=story.published_at,
            updated=story.updated_at,
            enclosure=None
            if cover is None
            else Enclosure(href=cover.href, type=image_type(cover.href), length=cover.size_bytes),
        )
        # Found out now, so the delivery fails at once with the reason instead of at every write.
        published = entry.published or _now()
        trial = StoredEntry(**{**entry.model_dump(), "published": published, "updated": entry.updated or published})
        problem = entry_problem(self.folder.meta, trial)
        if problem is not None:
            raise RenderError(problem)
        return Payload(data=RssPayload(entry=entry), warnings=tuple(warnings))

    # delivering -----------------------------------------------------------------------------------------------

    async def publish(self, payload: Payload[RssPayload], ctx: DeliveryContext) -> Receipt:
        return await self._upsert(payload)

    async def update(self, payload: Payload[RssPayload], ctx: DeliveryContext) -> Receipt:
        return await self._upsert(payload)

    async def retract(self, payload: Payload[RssPayload], ctx: DeliveryContext) -> Receipt:
        retraction = payload.data.retraction
        if retraction is None:
            raise Permanent("the payload is an rss entry, not a retraction; re-render it with this channel")
        now = _now()
        items = self.options.items
        removed = await self._transaction(
            lambda m: remove(m, retraction.story_id, ctx.version, items=items, now=now), now
        )
        return Receipt(remote_id=retraction.guid, url=None, raw={"removed": removed})

    async def _upsert(self, payload: Payload[RssPayload]) -> Receipt:
        entry = payload.data.entry
        if entry is None:
            raise Permanent("the payload is an rss retraction, not an entry; re-render it with this channel")
        entry, enclosure_note = await self._with_enclosure_size(entry)
        now = _now()
        done = await self._transaction(lambda m: upsert(m, entry, items=self.options.items, now=now), now)
        raw: dict[str, Any] = {"version": entry.version, "feeds": [RSS_FILE, ATOM_FILE]}
        if done.entry is not None:
            raw.update(version=done.entry.version, updated=done.entry.updated.isoformat())
        else:
            raw["left_out"] = done.left_out
        if enclosure_note is not None:
            raw["enclosure"] = enclosure_note
        return Receipt(remote_id=entry.guid, url=entry.link, raw=raw)

    async def _with_enclosure_size(self, entry: FeedEntry) -> tuple[FeedEntry, str | None]:
        """The entry with its enclosure's real byte size (and type, from the file's bytes) when the story did not
        state it, and a note when the size stays unknown (the RSS item then has no enclosure: module doc)."""
        enclosure = entry.enclosure
        if enclosure is None or enclosure.length is not None:
            return entry, None
        if self.options.enclosure_sizes == "declared":
            return entry, "left out of RSS: the story states no size (sizeinbytes) and enclosure_sizes is declared"
        try:
            blob = await self.fetch_image(
                enclosure.href,
                max_bytes=self.media_settings.max_bytes,
                allowed_types=self.media_settings.allowed_types,
                what="cover image",
                requirement="an image the [media] settings allow",
            )
        except (Retryable, Permanent) as exc:
            log.warning(
                "story %s: the cover's size is unknown, so the RSS item carries no enclosure: %s",
                entry.story_id,
                exc,
                extra={"story_id": entry.story_id, "channel": self.name},
            )
            return entry, f"left out of RSS, size unknown: {exc}"
        sized = enclosure.model_copy(update={"length": len(blob.data), "type": blob.content_type})
        return entry.model_copy(update={"enclosure": sized}), None

    async def _transaction(self, change: Callable[[Manifest], tuple[Manifest, T]], now: dt.datetime) -> T:
        async with self._lock:
            try:
                return await asyncio.to_thread(self.folder.transaction, change, now)
            except (OSError, FeedStateError, LockTimeout, UnrenderableEntry) as exc:
                raise _delivery_error(exc, self.options.root) from exc

    async def close(self) -> None:
        await self.close_media()  # a fetcher of its own, made when no shared one was passed

    async def check(self, keys: SharedKeys | None = None) -> str:
        """The root is a folder we can create files in, and the manifest (if any) is readable."""
        try:
            count = await asyncio.to_thread(self.folder.probe)
        except (OSError, FeedStateError) as exc:
            raise _delivery_error(exc, self.options.root) from exc
        return f"writable: {self.options.root} ({count} stories in the manifest; feeds {RSS_FILE}, {ATOM_FILE})"

    # serving --------------------------------------------------------------------------------------------------

    def web_routes(self, access: ChannelAccess) -> list[web.AbstractRouteDef]:
        """``GET /feeds/rss.xml`` and ``/feeds/atom.xml`` (and HEAD), from the files, with ETag/Last-Modified."""

        async def rss(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, RSS_FILE, RSS_CONTENT_TYPE)

        async def atom(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, ATOM_FILE, ATOM_CONTENT_TYPE)

        return [web.get(RSS_ROUTE, rss), web.get(ATOM_ROUTE, atom)]

    def openapi_paths(self) -> dict[str, Any]:
        def feed(kind: str, content_type: str) -> dict[str, Any]:
            return {
                "get": {
                    "summary": f"The {kind} feed of channel {self.name} (newest {self.options.items} stories)",
                    "responses": {
                        "200": {"description": "The feed; ETag and Last-Modified", "content": {content_type: {}}},
                        "304": {"description": "Not modified"},
                        "404": {"description": "Not written yet"},
                    },
                }
            }

        return {RSS_ROUTE: feed("RSS 2.0", "application/rss+xml"), ATOM_ROUTE: feed("Atom 1.0", "application/atom+xml")}

    async def _serve(self, request: web.Request, filename: str, content_type: str) -> web.StreamResponse:
        try:
            snapshot = await asyncio.to_thread(self._cache.load, self.options.root / filename)
        except FileNotFoundError:
            return web.json_response(
                {
                    "error": "not_found",
                    "message": f"{filename} has not been written yet: channel {self.name!r} writes it when its "
                    "first story is delivered",
                },
                status=404,
            )
        # no-cache: readers revalidate every time (cheap with the 304), so a retraction disappears at once.
        headers = {"ETag": snapshot.etag, "Last-Modified": snapshot.last_modified_http, "Cache-Control": "no-cache"}
        if is_not_modified(request, snapshot):
            return web.Response(status=304, headers=headers)
        return web.Response(body=snapshot.body, headers={**headers, "Content-Type": content_type})


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
