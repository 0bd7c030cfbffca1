"""The newsroom's own website: static pages written into a web root that nginx (or any file server) serves.

One article page per story at a stable path, ``/<section>/<yyyy>/<mm>/<story id>.html``, plus a home index, one
index per section and ``sitemap.xml``. ``render`` produces the complete page (Jinja2 templates, body sanitised by
``syndicate.sanitize.clean_html``) and the facts the indexes need, so every retry writes the same bytes.
``publish``/``update``/``retract`` write the page (or a "withdrawn" tombstone) atomically, then rebuild the indexes
and the sitemap from a small JSON manifest kept in ``<root>/.syndicate/``. Writing the same files again is harmless,
so the channel is idempotent.

Every change to the web root happens under an ``fcntl.flock`` on ``<root>/.syndicate/lock`` (several worker
processes on one host) and an asyncio lock (several deliveries in one process), so two stories never interleave
their manifest and index updates. Problems an operator must fix (the root is missing or not writable, the manifest
is corrupt, an overriding index template is broken) raise ``AuthRevoked``: the taxonomy's "pause the channel until
someone fixes it" class, since every delivery would fail the same way; nothing is lost meanwhile.
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
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, Unpack
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web
from markupsafe import Markup
from pydantic import ConfigDict, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from syndicate.channel import Adapter, AdapterDeps, AdapterOptions, DeliveryContext
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

log = logging.getLogger("syndicate.adapters.website.adapter")

DEFAULT_SECTION = "news"
#: Folder inside the web root for the manifest and the lock file (deny dot-paths in nginx: ``location ~ /\\.``).
STATE_DIR = ".syndicate"
MANIFEST_FORMAT = 1
HOME_LIMIT = 50
SECTION_LIMIT = 200
DESCRIPTION_LENGTH = 160
SITEMAP_NS = "http://www.sitemaps.org/schemas/sitemap/0.9"
PREVIEW_PREFIX = "/site"

#: Interface words per language family (the templates get them as ``labels``); anything not Chinese is English.
LABELS: dict[str, dict[str, str]] = {
    "zh": {"home": "首页", "withdrawn": "本文已撤回", "moved": "本文已移至新地址", "empty": "暂无稿件"},
    "en": {
        "home": "Home",
        "withdrawn": "This story has been withdrawn",
        "moved": "This story has moved",
        "empty": "No stories yet",
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

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://news.example.cn")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment (pages are addressed as base_url + path)")
        return value.rstrip("/")

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


# --- the facts an index needs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageEntry:
    """One live page as the manifest, the indexes and the sitemap know it."""

    #: As a field of the payload model: unknown keys are refused there too.
    __pydantic_config__ = ConfigDict(extra="forbid")

    story_id: str
    version: int
    path: str
    headline: str
    summary: str
    section: str
    section_slug: str
    language: str
    published: str  # RFC 3339, in the story's own offset
    modified: str
    cover_src: str | None
    cover_alt: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PageEntry:
        return cls(**{f.name: raw[f.name] for f in fields(cls)})

    @property
    def published_at(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.published)


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


def newest_first(entries: list[PageEntry]) -> list[PageEntry]:
    return sorted(entries, key=lambda e: (e.published_at.timestamp(), e.story_id), reverse=True)


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


# --- the web root ----------------------------------------------------------------------------------------------


_Result = TypeVar("_Result")


class WebRoot:
    """The files under the root: pages, indexes, sitemap and manifest, each changed under the root's file lock.

    Synchronous on purpose: the adapter runs each change in a worker thread, holding the lock for the whole
    read-manifest, write-page, rebuild-indexes sequence.
    """

    def __init__(self, root: Path, base_url: str, templates: SiteTemplates, channel: str) -> None:
        self.root = root
        self.base_url = base_url
        self.templates = templates
        self.channel = channel

    @property
    def manifest_path(self) -> Path:
        return self.root / STATE_DIR / "manifest.json"

    def file_for(self, path: str) -> Path:
        """The file a page path names, refusing any path that could leave the root."""
        if not is_page_path(path):
            raise Permanent(f"{path!r} is not a page path this channel writes (/<section>/<yyyy>/<mm>/<id>.html)")
        target = self.root / path.lstrip("/")
        if not target.resolve().is_relative_to(self.root.resolve()):
            raise Permanent(f"{path!r} resolves outside the web root {self.root} (a symlink?); refusing to write")
        return target

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

    def _manifest_bytes(self, manifest: Mapping[str, PageEntry]) -> bytes:
        doc = {"format": MANIFEST_FORMAT, "stories": {k: manifest[k].to_json() for k in sorted(manifest)}}
        return json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True).encode() + b"\n"

    def put_page(self, entry: PageEntry, html: str, moved_html: str, earlier_paths: set[str]) -> list[str]:
        """Write (or rewrite) a story's page, list it, and point any earlier path of it at the new one."""
        page = self.file_for(entry.path)
        with self.locked():
            manifest = self.load_manifest()
            previous = manifest.get(entry.story_id)
            if previous is not None:
                earlier_paths = earlier_paths | {previous.path}
            moved = sorted(p for p in earlier_paths if p != entry.path)
            moved_files = [self.file_for(p) for p in moved]
            manifest[entry.story_id] = entry
            touched = {entry.section_slug: entry.section}
            if previous is not None:
                touched.setdefault(previous.section_slug, previous.section)
            derived = self._derived_files(manifest, touched)
            write_atomic(page, html.encode())
            for file in moved_files:
                write_atomic(file, moved_html.encode())
            self._commit(manifest, derived)
        return moved

    def withdraw(self, story_id: str, live_path: str | None, fallback_path: str | None, tombstone: str) -> list[str]:
        """Replace the story's page by the tombstone and drop it from the indexes and the sitemap.

        The page is where the receipt and the manifest say it is; the path computed from the retraction itself
        (``fallback_path``) is used only when neither knows it, since a bare cancel may lack the section.
        """
        with self.locked():
            manifest = self.load_manifest()
            previous = manifest.pop(story_id, None)
            paths = {p for p in (live_path, previous.path if previous else None) if p}
            targets = sorted(paths or ({fallback_path} if fallback_path else set()))
            files = [self.file_for(p) for p in targets]
            touched = {previous.section_slug: previous.section} if previous is not None else {}
            derived = self._derived_files(manifest, touched)
            for file in files:
                write_atomic(file, tombstone.encode())
            self._commit(manifest, derived)
        return targets

    def _commit(self, manifest: Mapping[str, PageEntry], derived: dict[Path, bytes]) -> None:
        # The manifest first: it is the source the derived files come from, so any later change rebuilds them
        # even if this one stops half-way.
        write_atomic(self.manifest_path, self._manifest_bytes(manifest))
        for file, data in derived.items():
            write_atomic(file, data)

    def live_count(self) -> int:
        with self.locked():
            return len(self.load_manifest())

    # derived files ----------------------------------------------------------------------------------------------

    def _derived_files(self, manifest: Mapping[str, PageEntry], touched: Mapping[str, str]) -> dict[Path, bytes]:
        """Home index, every section index (also ones just emptied) and the sitemap, rendered before anything is
        written, so a broken template leaves the site as it was."""
        entries = newest_first(list(manifest.values()))
        sections: dict[str, str] = {}  # slug -> name, in order of each section's newest story
        for entry in entries:
            sections.setdefault(entry.section_slug, entry.section)
        ordered = list(sections)  # the home page links to sections that have stories
        for slug, name in touched.items():
            sections.setdefault(slug, name)  # a section just emptied still gets its (empty) index rewritten
        by_section: dict[str, list[PageEntry]] = {slug: [] for slug in sections}
        for entry in entries:
            by_section[entry.section_slug].append(entry)
        try:
            files = {self.root / "index.html": self._home(entries, ordered, sections).encode()}
            for slug in sorted(sections):
                page = self._section(slug, sections[slug], by_section[slug]).encode()
                files[self.root / slug / "index.html"] = page
        except RenderError as exc:
            raise AuthRevoked(f"{exc}; fix the template, then `syndicate resume {self.channel}`") from exc
        files[self.root / "sitemap.xml"] = self._sitemap(entries)
        return files

    def _listing(self, entries: list[PageEntry], strip: str) -> list[dict[str, Any]]:
        return [
            {
                "href": _url_path(e.path.removeprefix(strip)),
                "url": self.base_url + _url_path(e.path),
                "headline": e.headline,
                "summary": e.summary,
                "section": e.section,
                "published": e.published,
                "published_display": _display_time(e.published_at),
                "cover": Figure(e.cover_src, e.cover_alt, None, None, None) if e.cover_src else None,
            }
            for e in entries
        ]

    @staticmethod
    def _language(entries: list[PageEntry]) -> str:
        return entries[0].language if entries else "zh-CN"

    def _home(self, entries: list[PageEntry], ordered: list[str], names: Mapping[str, str]) -> str:
        shown = entries[:HOME_LIMIT]
        lang = self._language(shown)
        return self.templates.render(
            "home.html.j2",
            lang=lang,
            labels=_labels(lang),
            canonical_url=f"{self.base_url}/",
            sections=[{"name": names[slug], "slug": slug, "href": f"{quote(slug)}/"} for slug in ordered],
            entries=self._listing(shown, "/"),
        )

    def _section(self, slug: str, name: str, entries: list[PageEntry]) -> str:
        shown = entries[:SECTION_LIMIT]
        lang = self._language(shown)
        return self.templates.render(
            "section.html.j2",
            lang=lang,
            labels=_labels(lang),
            section=name,
            section_slug=slug,
            canonical_url=f"{self.base_url}/{quote(slug)}/",
            home_href="../",
            entries=self._listing(shown, f"/{slug}/"),
        )

    def _sitemap(self, entries: list[PageEntry]) -> bytes:
        urlset = ET.Element("urlset", xmlns=SITEMAP_NS)
        for entry in entries:
            url = ET.SubElement(urlset, "url")
            ET.SubElement(url, "loc").text = self.base_url + _url_path(entry.path)
            ET.SubElement(url, "lastmod").text = entry.modified
        ET.indent(urlset)
        document: bytes = ET.tostring(urlset, encoding="utf-8", xml_declaration=True)
        return document + b"\n"


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
    actions = frozenset(Action)
    options: WebsiteOptions

    def __init__(self, name: str, options: WebsiteOptions, **deps: Unpack[AdapterDeps]) -> None:
        super().__init__(name, options, **deps)
        self.templates = SiteTemplates(options.templates)
        self.site = WebRoot(options.root, options.base_url, self.templates, name)
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
