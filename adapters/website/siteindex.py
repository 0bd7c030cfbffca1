"""The website's own record of what it shows: one SQLite file, ``<root>/.syndicate/site.db``.

It replaces the JSON manifest that every delivery used to load and rewrite whole. Each delivery changes the rows
of one story, and every question an index page or a sitemap file asks is answered through an index, so the cost
of a delivery does not grow with the archive:

* ``pages``: one row per live page (the ``PageEntry`` as JSON) with its place in the home listing and in its
  section's listing. A place is a *slot*, handed out in order of arrival and never reused, so archive page ``n`` of a
  listing holds the stories whose slot falls in ``[(n - 1) * size, n * size)``: a new story only ever lands on the
  newest page, and a retraction only empties its slot.
* ``listings``: per listing (``""`` for the home page, else the section's folder name) the next free slot, plus the
  digest of its ``index.html`` and when that last changed (the sitemap's ``lastmod`` for the page).
* ``sitemap_urls`` / ``sitemap_files``: which sitemap file each URL sits in. A new URL goes to the newest file of its
  shelf, or opens a new one when that is full, so a change rewrites only the file holding the URL. Shelves keep the
  index pages' URLs (whose lastmod moves with nearly every delivery) apart from the articles' (which rarely move),
  so the file rewritten for the home page's lastmod stays small.

Synchronous on purpose, like ``WebRoot``: the adapter runs every transaction in a worker thread while it holds the
web root's locks, so one connection is never used by two threads at once.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from adapters.website.entry import PageEntry

#: Bumped when the schema changes in a way that needs a migration.
INDEX_FORMAT = 1
#: The home page's listing key (a section's key is its folder name, never empty).
HOME = ""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pages (
    story_id TEXT PRIMARY KEY,
    entry TEXT NOT NULL,
    path TEXT NOT NULL,
    section_slug TEXT NOT NULL,
    published_ts REAL NOT NULL,
    home_slot INTEGER NOT NULL,
    section_slot INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pages_newest ON pages (published_ts, story_id);
CREATE INDEX IF NOT EXISTS pages_section_newest ON pages (section_slug, published_ts, story_id);
CREATE INDEX IF NOT EXISTS pages_home_slot ON pages (home_slot);
CREATE INDEX IF NOT EXISTS pages_section_slot ON pages (section_slug, section_slot);
CREATE TABLE IF NOT EXISTS listings (
    key TEXT PRIMARY KEY,
    slots INTEGER NOT NULL DEFAULT 0,
    digest TEXT,
    changed_at TEXT
);
CREATE TABLE IF NOT EXISTS sitemap_urls (
    path TEXT PRIMARY KEY,
    lastmod TEXT NOT NULL,
    file INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sitemap_urls_file ON sitemap_urls (file);
CREATE TABLE IF NOT EXISTS sitemap_files (
    number INTEGER PRIMARY KEY,
    shelf TEXT NOT NULL,
    urls INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    lastmod TEXT
);
"""


@dataclass(frozen=True)
class Listed:
    """A live page and its slots in the home listing and in its section's listing."""

    entry: PageEntry
    home_slot: int
    section_slot: int


@dataclass(frozen=True)
class ListingState:
    key: str
    #: Slots handed out so far (including those of stories withdrawn since): the archive has ceil(slots / size)
    #: pages.
    slots: int
    digest: str | None
    changed_at: str | None


@dataclass(frozen=True)
class SitemapUrl:
    path: str
    lastmod: str


@dataclass(frozen=True)
class SitemapFile:
    number: int
    urls: int
    bytes: int
    lastmod: str | None


@dataclass(frozen=True)
class SitemapLimits:
    """What one sitemap file may hold; ``header_bytes`` is what the file spends besides its ``<url>`` entries."""

    urls: int
    bytes: int
    header_bytes: int


class SiteIndexError(Exception):
    """The index file cannot be read (corrupt, or not an index of this format)."""


class SiteIndex:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def exists(self) -> bool:
        return self.path.is_file()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connect(self) -> sqlite3.Connection:
        # The file may have been moved away (an operator restoring a backup): reopen rather than write to a ghost.
        if self._db is not None and not self.path.exists():
            self.close()
        if self._db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
            try:
                # WAL: one fsync per commit; FULL: a commit the engine has counted as delivered survives a power cut
                # (the pages it describes were fsynced before it).
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
            except sqlite3.DatabaseError:
                db.close()
                raise
            self._db = db
        return self._db

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "SiteIndex used outside a transaction"
        return self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SiteIndex]:
        """One write transaction: committed when the block ends normally (after the files it describes were
        written), rolled back on any exception."""
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # meta -------------------------------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # pages ------------------------------------------------------------------------------------------------------

    @staticmethod
    def _listed(row: tuple[str, int, int]) -> Listed:
        try:
            entry = PageEntry.from_json(json.loads(row[0]))
        except (ValueError, KeyError, TypeError) as exc:
            raise SiteIndexError(f"a page row does not hold a page entry ({type(exc).__name__}: {exc})") from exc
        return Listed(entry, int(row[1]), int(row[2]))

    def get(self, story_id: str) -> Listed | None:
        row = self.db.execute(
            "SELECT entry, home_slot, section_slot FROM pages WHERE story_id = ?", (story_id,)
        ).fetchone()
        return None if row is None else self._listed(row)

    def put(self, listed: Listed) -> None:
        entry = listed.entry
        self.db.execute(
            "INSERT OR REPLACE INTO pages (story_id, entry, path, section_slug, published_ts, home_slot, section_slot)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                entry.story_id,
                json.dumps(entry.to_json(), ensure_ascii=False, sort_keys=True),
                entry.path,
                entry.section_slug,
                entry.published_at.timestamp(),
                listed.home_slot,
                listed.section_slot,
            ),
        )

    def delete(self, story_id: str) -> None:
        self.db.execute("DELETE FROM pages WHERE story_id = ?", (story_id,))

    def live_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM pages").fetchone()[0])

    def newest(self, listing: str, limit: int, offset: int = 0) -> list[Listed]:
        """A listing's stories newest first by publication (ties by id, as the indexes always ordered them)."""
        if listing == HOME:
            sql = (
                "SELECT entry, home_slot, section_slot FROM pages"
                " ORDER BY published_ts DESC, story_id DESC LIMIT ? OFFSET ?"
            )
            rows = self.db.execute(sql, (limit, offset)).fetchall()
        else:
            sql = (
                "SELECT entry, home_slot, section_slot FROM pages WHERE section_slug = ?"
                " ORDER BY published_ts DESC, story_id DESC LIMIT ? OFFSET ?"
            )
            rows = self.db.execute(sql, (listing, limit, offset)).fetchall()
        return [self._listed(row) for row in rows]

    def in_slots(self, listing: str, first: int, stop: int) -> list[Listed]:
        """The stories whose slot in ``listing`` lies in ``[first, stop)``, newest first by publication."""
        if listing == HOME:
            sql = (
                "SELECT entry, home_slot, section_slot FROM pages WHERE home_slot >= ? AND home_slot < ?"
                " ORDER BY published_ts DESC, story_id DESC"
            )
            rows = self.db.execute(sql, (first, stop)).fetchall()
        else:
            sql = (
                "SELECT entry, home_slot, section_slot FROM pages"
                " WHERE section_slug = ? AND section_slot >= ? AND section_slot < ?"
                " ORDER BY published_ts DESC, story_id DESC"
            )
            rows = self.db.execute(sql, (listing, first, stop)).fetchall()
        return [self._listed(row) for row in rows]

    def all_pages(self) -> Iterator[Listed]:
        """Every live page in order of arrival (home slot), for a rebuild."""
        for row in self.db.execute("SELECT entry, home_slot, section_slot FROM pages ORDER BY home_slot"):
            yield self._listed(row)

    def sections(self) -> list[tuple[str, str]]:
        """(folder name, display name) of every section with a live story, in order of each section's newest
        story; the name is the one its newest story gives."""
        found: list[tuple[float, str, str, str]] = []
        for (key,) in self.db.execute("SELECT key FROM listings WHERE key != ''").fetchall():
            row = self.db.execute(
                "SELECT published_ts, story_id, entry FROM pages WHERE section_slug = ?"
                " ORDER BY published_ts DESC, story_id DESC LIMIT 1",
                (key,),
            ).fetchone()
            if row is not None:
                found.append((float(row[0]), str(row[1]), str(key), self._listed((row[2], 0, 0)).entry.section))
        found.sort(reverse=True)
        return [(slug, name) for _, _, slug, name in found]

    # listings ---------------------------------------------------------------------------------------------------

    def listing(self, key: str) -> ListingState:
        row = self.db.execute("SELECT slots, digest, changed_at FROM listings WHERE key = ?", (key,)).fetchone()
        if row is None:
            return ListingState(key, 0, None, None)
        return ListingState(key, int(row[0]), row[1], row[2])

    def listing_keys(self) -> list[str]:
        return [str(row[0]) for row in self.db.execute("SELECT key FROM listings ORDER BY key")]

    def take_slot(self, key: str) -> int:
        """The next slot of ``key`` (never handed out again)."""
        self.db.execute("INSERT OR IGNORE INTO listings (key) VALUES (?)", (key,))
        row = self.db.execute("UPDATE listings SET slots = slots + 1 WHERE key = ? RETURNING slots", (key,)).fetchone()
        return int(row[0]) - 1

    def set_listing_digest(self, key: str, digest: str, changed_at: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO listings (key) VALUES (?)", (key,))
        self.db.execute("UPDATE listings SET digest = ?, changed_at = ? WHERE key = ?", (digest, changed_at, key))

    # the sitemap ------------------------------------------------------------------------------------------------

    def sitemap_put(self, path: str, lastmod: str, size: int, limits: SitemapLimits, shelf: str) -> set[int]:
        """List ``path`` (its ``<url>`` entry takes ``size`` bytes): in the file that holds it if it still fits
        there, else in the newest file of ``shelf``, else in a new one. The files whose content changed."""
        row = self.db.execute("SELECT lastmod, file, bytes FROM sitemap_urls WHERE path = ?", (path,)).fetchone()
        if row is not None:
            old_lastmod, file, old_size = str(row[0]), int(row[1]), int(row[2])
            if old_lastmod == lastmod and old_size == size:
                return set()
            held = self._file(file)
            if held is not None and limits.header_bytes + held.bytes - old_size + size <= limits.bytes:
                self.db.execute("UPDATE sitemap_urls SET lastmod = ?, bytes = ? WHERE path = ?", (lastmod, size, path))
                self.db.execute("UPDATE sitemap_files SET bytes = bytes + ? WHERE number = ?", (size - old_size, file))
                return {file}
        touched = self.sitemap_remove(path)
        newest = self.db.execute(
            "SELECT number, urls, bytes FROM sitemap_files WHERE shelf = ? ORDER BY number DESC LIMIT 1", (shelf,)
        ).fetchone()
        if (
            newest is not None
            and int(newest[1]) < limits.urls
            and limits.header_bytes + int(newest[2]) + size <= limits.bytes
        ):
            file = int(newest[0])
            self.db.execute(
                "UPDATE sitemap_files SET urls = urls + 1, bytes = bytes + ? WHERE number = ?", (size, file)
            )
        else:
            last = self.db.execute("SELECT MAX(number) FROM sitemap_files").fetchone()[0]
            file = 1 if last is None else int(last) + 1
            self.db.execute(
                "INSERT INTO sitemap_files (number, shelf, urls, bytes) VALUES (?, ?, 1, ?)", (file, shelf, size)
            )
        self.db.execute(
            "INSERT INTO sitemap_urls (path, lastmod, file, bytes) VALUES (?, ?, ?, ?)", (path, lastmod, file, size)
        )
        return touched | {file}

    def sitemap_remove(self, path: str) -> set[int]:
        row = self.db.execute("DELETE FROM sitemap_urls WHERE path = ? RETURNING file, bytes", (path,)).fetchone()
        if row is None:
            return set()
        file = int(row[0])
        self.db.execute(
            "UPDATE sitemap_files SET urls = urls - 1, bytes = bytes - ? WHERE number = ?", (int(row[1]), file)
        )
        return {file}

    def _file(self, number: int) -> SitemapFile | None:
        row = self.db.execute(
            "SELECT number, urls, bytes, lastmod FROM sitemap_files WHERE number = ?", (number,)
        ).fetchone()
        return None if row is None else SitemapFile(int(row[0]), int(row[1]), int(row[2]), row[3])

    def sitemap_file(self, number: int) -> SitemapFile | None:
        return self._file(number)

    def sitemap_urls(self, number: int) -> list[SitemapUrl]:
        """A file's URLs in the order they joined it."""
        rows = self.db.execute("SELECT path, lastmod FROM sitemap_urls WHERE file = ? ORDER BY rowid", (number,))
        return [SitemapUrl(str(path), str(lastmod)) for path, lastmod in rows]

    def sitemap_files(self) -> list[SitemapFile]:
        rows = self.db.execute("SELECT number, urls, bytes, lastmod FROM sitemap_files ORDER BY number")
        return [SitemapFile(int(n), int(u), int(b), lastmod) for n, u, b, lastmod in rows]

    def sitemap_paths(self) -> set[str]:
        return {str(row[0]) for row in self.db.execute("SELECT path FROM sitemap_urls")}

    def sitemap_file_written(self, number: int, lastmod: str) -> None:
        self.db.execute("UPDATE sitemap_files SET lastmod = ? WHERE number = ?", (lastmod, number))

    def sitemap_drop_file(self, number: int) -> None:
        self.db.execute("DELETE FROM sitemap_files WHERE number = ?", (number,))

    def sitemap_clear(self) -> None:
        self.db.execute("DELETE FROM sitemap_urls")
        self.db.execute("DELETE FROM sitemap_files")
