"""SQLite backend: the embedded default (one host, no server).

The connection lives in one dedicated thread and every store method runs as a single function there, so a
transaction is one hop from the event loop and transactions never interleave. WAL lets other processes (the CLI,
a second worker) read while we write; ``BEGIN IMMEDIATE`` plus a busy timeout serialises writers across processes.
``synchronous=FULL``: an accepted story survives a power cut, not only a crash.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from syndicate.delivery import Action, Receipt
from syndicate.store.base import (
    LANDED_BY_OPERATOR,
    OPEN_STATES,
    OPERATOR_WORKER,
    PENDING_STATES,
    REPLAYABLE_STATES,
    SUCCESS_OUTCOMES,
    AttemptBucket,
    AttemptRecord,
    ChannelState,
    Claim,
    Completion,
    DeliveryFilter,
    DeliveryRecord,
    FanOutResult,
    NotFound,
    Planner,
    StaleVersion,
    State,
    Store,
    StoreCounts,
    StoryRecord,
    VersionConflict,
    attempt_from_row,
    attempt_outcome_params,
    delivery_from_row,
    delivery_outcome_params,
    dumps_json,
    live_receipt_from,
    refuse_newer_schema,
    split_by_lease,
)
from syndicate.story import Story

T = TypeVar("T")

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE stories (
            story_id     TEXT    NOT NULL,
            version      INTEGER NOT NULL,
            content_hash TEXT    NOT NULL,
            pubstatus    TEXT    NOT NULL,
            body         TEXT    NOT NULL,
            received_at  REAL    NOT NULL,
            PRIMARY KEY (story_id, version)
        );
        CREATE TABLE deliveries (
            id                 INTEGER PRIMARY KEY AUTOINCREMENT,
            story_id           TEXT    NOT NULL,
            version            INTEGER NOT NULL,
            channel            TEXT    NOT NULL,
            action             TEXT    NOT NULL,
            state              TEXT    NOT NULL,
            payload            TEXT,
            checkpoint         TEXT    NOT NULL DEFAULT '{}',
            receipt            TEXT,
            attempts           INTEGER NOT NULL DEFAULT 0,
            retry_count        INTEGER NOT NULL DEFAULT 0,
            due_at             REAL,
            reconcile          INTEGER NOT NULL DEFAULT 0,
            lease_owner        TEXT,
            lease_expires      REAL,
            note               TEXT,
            last_error         TEXT,
            last_error_class   TEXT,
            last_platform_code TEXT,
            created_at         REAL    NOT NULL,
            updated_at         REAL    NOT NULL,
            UNIQUE (story_id, version, channel, action)
        );
        -- Claims walk this partial index in due order without sorting the backlog.
        CREATE INDEX deliveries_pending ON deliveries (channel, due_at, id)
            WHERE state IN ('queued', 'retry_wait');
        CREATE INDEX deliveries_in_flight ON deliveries (channel, lease_expires) WHERE state = 'in_flight';
        CREATE INDEX deliveries_story_channel ON deliveries (story_id, channel, id);
        CREATE INDEX deliveries_state_updated ON deliveries (state, updated_at);
        CREATE TABLE attempts (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            delivery_id   INTEGER NOT NULL REFERENCES deliveries (id),
            number        INTEGER NOT NULL,
            worker        TEXT    NOT NULL,
            started_at    REAL    NOT NULL,
            finished_at   REAL,
            outcome       TEXT,
            error_class   TEXT,
            message       TEXT,
            platform_code TEXT,
            duration_ms   REAL
        );
        CREATE INDEX attempts_delivery ON attempts (delivery_id, number);
        CREATE TABLE channel_state (
            channel      TEXT PRIMARY KEY,
            paused_until REAL,
            reason       TEXT,
            updated_at   REAL NOT NULL
        );
        CREATE TABLE kv (
            key        TEXT PRIMARY KEY,
            value      TEXT NOT NULL,
            expires_at REAL,
            updated_at REAL NOT NULL
        );
        """,
    ),
]

_PENDING_SQL = "('queued', 'retry_wait')"
_OPEN_SQL = "(" + ", ".join(f"'{s.value}'" for s in sorted(OPEN_STATES)) + ")"
assert {State.QUEUED, State.RETRY_WAIT} == PENDING_STATES


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


def _chunks(ids: Sequence[int], size: int = 500) -> Iterator[Sequence[int]]:
    """Id lists cut to stay far below SQLite's bound-parameter limit."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


MIN_SQLITE = (3, 35, 0)


class SQLiteStore(Store):
    SCHEMA_VERSION = MIGRATIONS[-1][0]

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            # Claims use UPDATE ... RETURNING; without it every claim would fail while stories are still accepted.
            raise RuntimeError(
                f"SQLite {sqlite3.sqlite_version} is too old: syndicate needs SQLite "
                f"{'.'.join(map(str, MIN_SQLITE))} or newer (Python's sqlite3 module links the system library; "
                "upgrade it, or use PostgreSQL)"
            )
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syndicate-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._thread_id: int | None = None

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or ``sqlite:///:memory:``."""
        if not url.startswith("sqlite:///"):
            raise ValueError(f"not a SQLite URL: {url!r} (expected sqlite:///path/to/file.db)")
        return cls(url[len("sqlite:///") :])

    # --- plumbing -------------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            # 64 MiB of page cache instead of the default 2 MiB: stored payloads make the hot rows large.
            conn.execute("PRAGMA cache_size=-65536")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
            self._conn = conn
            self._thread_id = threading.get_ident()
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._connect()))

    @staticmethod
    @contextmanager
    def _tx(conn: sqlite3.Connection, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            # Also when COMMIT itself fails (it can leave the transaction open): never keep the connection inside
            # a dead transaction, or every later BEGIN fails.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        def _close(_: sqlite3.Connection) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        if self._conn is not None:
            await self._run(_close)
        self._executor.shutdown(wait=True)

    # --- migrations -----------------------------------------------------------------------------------------

    async def migrate(self) -> int:
        def _migrate(conn: sqlite3.Connection) -> int:
            with self._tx(conn):
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)"
                )
                done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
                refuse_newer_schema(done, MIGRATIONS[-1][0])
                for version, sql in MIGRATIONS:
                    if version in done:
                        continue
                    for statement in sql.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES (?, strftime('%s','now'))",
                        (version,),
                    )
                return max(done | {v for v, _ in MIGRATIONS})

        return await self._run(_migrate)

    async def schema_version(self) -> int:
        def _version(conn: sqlite3.Connection) -> int:
            try:
                row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
            except sqlite3.OperationalError:
                return 0
            return row[0] or 0

        return await self._run(_version)

    # --- stories and fan-out --------------------------------------------------------------------------------

    async def fan_out(self, story: Story, planner: Planner, *, now: float) -> FanOutResult:
        content_hash = story.content_hash
        body = story.to_json()

        def _fan_out(conn: sqlite3.Connection) -> FanOutResult:
            with self._tx(conn):
                latest = conn.execute(
                    "SELECT version, content_hash FROM stories WHERE story_id = ? ORDER BY version DESC LIMIT 1",
                    (story.id,),
                ).fetchone()
                if latest is not None and latest["version"] >= story.version:
                    if latest["version"] > story.version:
                        same = conn.execute(
                            "SELECT content_hash FROM stories WHERE story_id = ? AND version = ?",
                            (story.id, story.version),
                        ).fetchone()
                        if same is None or same["content_hash"] != content_hash:
                            raise StaleVersion(story.id, story.version, latest["version"])
                    elif latest["content_hash"] != content_hash:
                        raise VersionConflict(story.id, story.version)
                    rows = conn.execute(
                        "SELECT * FROM deliveries WHERE story_id = ? AND version = ? ORDER BY id",
                        (story.id, story.version),
                    ).fetchall()
                    return FanOutResult(story.id, story.version, False, [delivery_from_row(r) for r in rows])
                conn.execute(
                    "INSERT INTO stories (story_id, version, content_hash, pubstatus, body, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (story.id, story.version, content_hash, story.pubstatus, body, now),
                )
                existing = [
                    delivery_from_row(r)
                    for r in conn.execute("SELECT * FROM deliveries WHERE story_id = ? ORDER BY id", (story.id,))
                ]
                plan = planner(existing)
                for tr in plan.transitions:
                    conn.execute(
                        f"UPDATE deliveries SET state = ?, note = ?, due_at = NULL, updated_at = ?"
                        f" WHERE id = ? AND state IN {_PENDING_SQL} AND reconcile = 0",
                        (tr.state.value, tr.note, now, tr.delivery_id),
                    )
                ids = []
                for nd in plan.new:
                    cur = conn.execute(
                        "INSERT INTO deliveries (story_id, version, channel, action, state, payload, due_at, note,"
                        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            story.id,
                            story.version,
                            nd.channel,
                            nd.action.value,
                            nd.state.value,
                            dumps_json(nd.payload.to_json()) if nd.payload is not None else None,
                            nd.due_at,
                            nd.note,
                            now,
                            now,
                        ),
                    )
                    ids.append(cur.lastrowid)
                rows = conn.execute(
                    f"SELECT * FROM deliveries WHERE id IN ({_placeholders(len(ids))}) ORDER BY id", ids
                ).fetchall()
                return FanOutResult(story.id, story.version, True, [delivery_from_row(r) for r in rows])

        return await self._run(_fan_out)

    async def get_story(self, story_id: str, version: int | None = None) -> StoryRecord:
        def _get(conn: sqlite3.Connection) -> StoryRecord:
            if version is None:
                row = conn.execute(
                    "SELECT * FROM stories WHERE story_id = ? ORDER BY version DESC LIMIT 1", (story_id,)
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT * FROM stories WHERE story_id = ? AND version = ?", (story_id, version)
                ).fetchone()
            if row is None:
                raise NotFound(f"story {story_id!r}" + (f" version {version}" if version else "") + " not found")
            return StoryRecord(Story.from_json(row["body"]), row["content_hash"], row["received_at"])

        return await self._run(_get)

    # --- claiming and finishing -----------------------------------------------------------------------------

    async def claim(
        self,
        worker: str,
        *,
        now: float,
        lease_seconds: float,
        limits: dict[str, int],
        finished: Collection[int] = (),
    ) -> list[Claim]:
        ended = list(finished)

        def _claim(conn: sqlite3.Connection) -> list[Claim]:
            with self._tx(conn):
                paused = {
                    r[0] for r in conn.execute("SELECT channel FROM channel_state WHERE paused_until > ?", (now,))
                }
                busy = Counter(
                    dict(
                        conn.execute(
                            "SELECT channel, count(*) FROM deliveries WHERE state = 'in_flight' GROUP BY channel"
                        ).fetchall()
                    )
                )
                for chunk in _chunks(ended):
                    busy.subtract(
                        dict(
                            conn.execute(
                                "SELECT channel, count(*) FROM deliveries WHERE state = 'in_flight' AND lease_owner = ?"
                                f" AND id IN ({_placeholders(len(chunk))}) GROUP BY channel",
                                [worker, *chunk],
                            ).fetchall()
                        )
                    )
                ids: list[int] = []
                for channel, limit in limits.items():
                    free = limit - busy.get(channel, 0)
                    if free <= 0 or channel in paused:
                        continue
                    ids.extend(
                        r[0]
                        for r in conn.execute(
                            f"SELECT d.id FROM deliveries d WHERE d.channel = ? AND d.state IN {_PENDING_SQL}"
                            " AND d.due_at <= ? AND NOT EXISTS (SELECT 1 FROM deliveries p"
                            " WHERE p.story_id = d.story_id AND p.channel = d.channel AND p.id < d.id"
                            f" AND p.state IN {_OPEN_SQL}) ORDER BY d.due_at, d.id LIMIT ?",
                            (channel, now, free),
                        )
                    )
                if not ids:
                    return []
                # Set-based: one UPDATE ... RETURNING and one INSERT ... SELECT per chunk, whatever the batch size,
                # so the write lock other workers wait for is held for less time (a statement per row before).
                rows: list[sqlite3.Row] = []
                attempt_ids: dict[int, int] = {}
                for chunk in _chunks(ids):
                    marks = _placeholders(len(chunk))
                    rows += conn.execute(
                        "UPDATE deliveries SET state = 'in_flight', lease_owner = ?, lease_expires = ?,"
                        f" attempts = attempts + 1, updated_at = ? WHERE id IN ({marks}) RETURNING *",
                        [worker, now + lease_seconds, now, *chunk],
                    ).fetchall()
                    attempt_ids.update(
                        conn.execute(
                            "INSERT INTO attempts (delivery_id, number, worker, started_at)"
                            f" SELECT id, attempts, ?, ? FROM deliveries WHERE id IN ({marks})"
                            " RETURNING delivery_id, id",
                            [worker, now, *chunk],
                        ).fetchall()
                    )
                claims = []
                for row in sorted(rows, key=lambda r: (r["due_at"], r["id"])):
                    d = delivery_from_row(row)
                    # Only updates and retracts act on the live post; a publish needs no receipt lookup.
                    live = None if d.action is Action.PUBLISH else self._live_receipt(conn, d)
                    claims.append(Claim(d, attempt_ids[d.id], d.attempts, live))
                return claims

        return await self._run(_claim)

    @staticmethod
    def _live_receipt(conn: sqlite3.Connection, d: DeliveryRecord) -> Receipt | None:
        row = conn.execute(
            "SELECT action, receipt FROM deliveries WHERE story_id = ? AND channel = ? AND id < ?"
            " AND state = 'delivered' ORDER BY id DESC LIMIT 1",
            (d.story_id, d.channel, d.id),
        ).fetchone()
        return live_receipt_from(row)

    async def heartbeat(self, worker: str, delivery_ids: Sequence[int], *, lease_until: float) -> list[int]:
        ids = list(delivery_ids)
        if not ids:
            return []

        def _beat(conn: sqlite3.Connection) -> list[int]:
            with self._tx(conn):
                marks = _placeholders(len(ids))
                conn.execute(
                    f"UPDATE deliveries SET lease_expires = ? WHERE state = 'in_flight' AND lease_owner = ?"
                    f" AND id IN ({marks})",
                    [lease_until, worker, *ids],
                )
                return [
                    r[0]
                    for r in conn.execute(
                        f"SELECT id FROM deliveries WHERE state = 'in_flight' AND lease_owner = ? AND id IN ({marks})",
                        [worker, *ids],
                    )
                ]

        return await self._run(_beat)

    async def save_checkpoint(self, delivery_id: int, worker: str, checkpoint: dict[str, Any]) -> None:
        data = dumps_json(checkpoint)

        def _save(conn: sqlite3.Connection) -> None:
            with self._tx(conn):
                cur = conn.execute(
                    "UPDATE deliveries SET checkpoint = ? WHERE id = ? AND state = 'in_flight' AND lease_owner = ?",
                    (data, delivery_id, worker),
                )
                if cur.rowcount != 1:
                    raise NotFound(f"delivery {delivery_id} is no longer leased by {worker}")

        await self._run(_save)

    async def complete(self, completions: Sequence[Completion]) -> list[int]:
        items = list(completions)
        if not items:
            return []

        def _complete(conn: sqlite3.Connection) -> list[int]:
            with self._tx(conn):
                # Which completions still hold their lease (in flight, same owner, same attempt), read once for the
                # batch; the write lock is held, so nothing changes between this read and the writes below.
                holders: dict[int, tuple[str, int]] = {}
                for chunk in _chunks([c.delivery_id for c in items]):
                    holders.update(
                        (r[0], (r[1], r[2]))
                        for r in conn.execute(
                            "SELECT id, lease_owner, attempts FROM deliveries"
                            f" WHERE state = 'in_flight' AND id IN ({_placeholders(len(chunk))})",
                            chunk,
                        )
                    )
                applied, lost = split_by_lease(items, holders)
                conn.executemany(
                    "UPDATE deliveries SET state = ?, due_at = ?, receipt = coalesce(?, receipt),"
                    " retry_count = retry_count + ?, reconcile = ?, lease_owner = NULL, lease_expires = NULL,"
                    " note = ?, last_error = ?, last_error_class = ?, last_platform_code = ?, updated_at = ?,"
                    " action = coalesce(?, action), payload = coalesce(?, payload)"
                    " WHERE id = ? AND state = 'in_flight' AND lease_owner = ?",
                    [delivery_outcome_params(c) for c in applied],
                )
                conn.executemany(
                    "UPDATE attempts SET finished_at = ?, outcome = ?, error_class = ?, message = ?,"
                    " platform_code = ?, duration_ms = ? WHERE id = ? AND finished_at IS NULL",
                    attempt_outcome_params(items, lost),
                )
            return [items[position].delivery_id for position in sorted(lost)]

        return await self._run(_complete)

    async def reclaim_expired(self, *, now: float) -> int:
        def _reclaim(conn: sqlite3.Connection) -> int:
            with self._tx(conn):
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM deliveries WHERE state = 'in_flight' AND lease_expires < ?", (now,)
                    )
                ]
                if not ids:
                    return 0
                marks = _placeholders(len(ids))
                conn.execute(
                    "UPDATE attempts SET finished_at = ?, outcome = 'lease_expired',"
                    " message = 'the worker stopped answering; the attempt may have reached the platform'"
                    f" WHERE finished_at IS NULL AND delivery_id IN ({marks})",
                    [now, *ids],
                )
                conn.execute(
                    "UPDATE deliveries SET state = 'queued', reconcile = 1, due_at = ?, lease_owner = NULL,"
                    " retry_count = retry_count + 1,"
                    " lease_expires = NULL, updated_at = ?, note = 'lease expired; checking whether it landed'"
                    f" WHERE id IN ({marks})",
                    [now, now, *ids],
                )
                return len(ids)

        return await self._run(_reclaim)

    async def next_due_at(self, channels: Sequence[str], *, now: float) -> float | None:
        chans = list(channels)
        if not chans:
            return None

        def _next(conn: sqlite3.Connection) -> float | None:
            paused = dict(
                conn.execute(
                    f"SELECT channel, paused_until FROM channel_state WHERE paused_until > ?"
                    f" AND channel IN ({_placeholders(len(chans))})",
                    [now, *chans],
                ).fetchall()
            )
            best: float | None = None
            for ch in chans:
                row = conn.execute(
                    f"SELECT min(due_at) FROM deliveries WHERE channel = ? AND state IN {_PENDING_SQL}", (ch,)
                ).fetchone()
                if row[0] is None:
                    continue
                due = max(row[0], paused.get(ch, 0.0))
                best = due if best is None else min(best, due)
            return best

        return await self._run(_next)

    async def count_claimable(self, channels: Sequence[str], *, now: float) -> int:
        chans = list(channels)
        if not chans:
            return 0

        def _count(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                f"SELECT count(*) FROM deliveries d WHERE d.channel IN ({_placeholders(len(chans))})"
                f" AND d.state IN {_PENDING_SQL} AND d.due_at <= ?"
                " AND d.channel NOT IN (SELECT channel FROM channel_state WHERE paused_until > ?)"
                " AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.story_id = d.story_id"
                f" AND p.channel = d.channel AND p.id < d.id AND p.state IN {_OPEN_SQL})",
                [*chans, now, now],
            ).fetchone()
            count: int = row[0]
            return count

        return await self._run(_count)

    async def count_in_flight(self, channels: Sequence[str] | None = None) -> int:
        def _count(conn: sqlite3.Connection) -> int:
            if channels is None:
                count: int = conn.execute("SELECT count(*) FROM deliveries WHERE state = 'in_flight'").fetchone()[0]
                return count
            chans = list(channels)
            count = conn.execute(
                f"SELECT count(*) FROM deliveries WHERE state = 'in_flight'"
                f" AND channel IN ({_placeholders(len(chans))})",
                chans,
            ).fetchone()[0]
            return count

        return await self._run(_count)

    # --- channel state and key/value ------------------------------------------------------------------------

    async def pause_channel(self, channel: str, *, until: float, reason: str, now: float) -> None:
        def _pause(conn: sqlite3.Connection) -> None:
            with self._tx(conn):
                conn.execute(
                    "INSERT INTO channel_state (channel, paused_until, reason, updated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (channel) DO UPDATE SET"
                    " reason = CASE WHEN coalesce(paused_until, 0) > excluded.paused_until"
                    "   THEN reason ELSE excluded.reason END,"
                    " paused_until = max(coalesce(paused_until, 0), excluded.paused_until),"
                    " updated_at = excluded.updated_at",
                    (channel, until, reason, now),
                )

        await self._run(_pause)

    async def resume_channel(self, channel: str, *, now: float) -> None:
        def _resume(conn: sqlite3.Connection) -> None:
            with self._tx(conn):
                conn.execute(
                    "INSERT INTO channel_state (channel, paused_until, reason, updated_at) VALUES (?, NULL, NULL, ?)"
                    " ON CONFLICT (channel) DO UPDATE SET paused_until = NULL, reason = NULL,"
                    " updated_at = excluded.updated_at",
                    (channel, now),
                )

        await self._run(_resume)

    async def channel_states(self) -> dict[str, ChannelState]:
        def _states(conn: sqlite3.Connection) -> dict[str, ChannelState]:
            return {
                r["channel"]: ChannelState(r["channel"], r["paused_until"], r["reason"], r["updated_at"])
                for r in conn.execute("SELECT * FROM channel_state")
            }

        return await self._run(_states)

    async def kv_get(self, key: str, *, now: float) -> str | None:
        def _get(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT value FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)", (key, now)
            ).fetchone()
            return None if row is None else row[0]

        return await self._run(_get)

    async def kv_set(self, key: str, value: str, *, expires_at: float | None, now: float) -> None:
        def _set(conn: sqlite3.Connection) -> None:
            with self._tx(conn):
                conn.execute(
                    "INSERT INTO kv (key, value, expires_at, updated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at,"
                    " updated_at = excluded.updated_at",
                    (key, value, expires_at, now),
                )

        await self._run(_set)

    async def kv_add(self, key: str, value: str, *, expires_at: float | None, now: float) -> bool:
        def _add(conn: sqlite3.Connection) -> bool:
            with self._tx(conn):
                cur = conn.execute(
                    "INSERT INTO kv (key, value, expires_at, updated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at,"
                    " updated_at = excluded.updated_at WHERE kv.expires_at IS NOT NULL AND kv.expires_at <= ?",
                    (key, value, expires_at, now, now),
                )
                return cur.rowcount == 1

        return await self._run(_add)

    # --- reading and repair ---------------------------------------------------------------------------------

    async def latest_delivered(
        self, channel: str, *, story_id: str | None = None, before_id: int | None = None, limit: int = 50
    ) -> list[DeliveryRecord]:
        sql = (
            "SELECT * FROM deliveries d WHERE d.channel = ? AND d.state = 'delivered'"
            " AND d.id = (SELECT max(l.id) FROM deliveries l WHERE l.story_id = d.story_id AND l.channel = d.channel"
            " AND l.state = 'delivered')"
        )
        args: list[Any] = [channel]
        if story_id is not None:
            sql += " AND d.story_id = ?"
            args.append(story_id)
        if before_id is not None:
            sql += " AND d.id < ?"
            args.append(before_id)
        sql += " ORDER BY d.id DESC LIMIT ?"
        args.append(limit)

        def _latest(conn: sqlite3.Connection) -> list[DeliveryRecord]:
            return [delivery_from_row(r) for r in conn.execute(sql, args)]

        return await self._run(_latest)

    async def queue_depth(self) -> dict[tuple[str, State], int]:
        def _depth(conn: sqlite3.Connection) -> dict[tuple[str, State], int]:
            rows = conn.execute("SELECT channel, state, count(*) FROM deliveries GROUP BY channel, state")
            return {(r[0], State(r[1])): r[2] for r in rows}

        return await self._run(_depth)

    async def counts(self) -> StoreCounts:
        def _counts(conn: sqlite3.Connection) -> StoreCounts:
            by_state = {
                State(r[0]): r[1] for r in conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state")
            }
            return StoreCounts(
                stories=conn.execute("SELECT count(DISTINCT story_id) FROM stories").fetchone()[0],
                story_versions=conn.execute("SELECT count(*) FROM stories").fetchone()[0],
                deliveries=sum(by_state.values()),
                attempts=conn.execute("SELECT count(*) FROM attempts").fetchone()[0],
                by_state=by_state,
                oldest_pending_due=conn.execute(
                    f"SELECT min(due_at) FROM deliveries WHERE state IN {_PENDING_SQL}"
                ).fetchone()[0],
            )

        return await self._run(_counts)

    async def get_delivery(self, delivery_id: int) -> DeliveryRecord:
        def _get(conn: sqlite3.Connection) -> DeliveryRecord:
            row = conn.execute("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            if row is None:
                raise NotFound(f"delivery {delivery_id} not found")
            return delivery_from_row(row)

        return await self._run(_get)

    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRecord]:
        where: list[str] = []
        args: list[Any] = []

        def _in(column: str, values: Sequence[Any]) -> None:
            where.append(f"{column} IN ({_placeholders(len(values))})")
            args.extend(values)

        if flt.ids is not None:
            _in("id", list(flt.ids))
        if flt.states is not None:
            _in("state", [State(s).value for s in flt.states])
        if flt.channels is not None:
            _in("channel", list(flt.channels))
        if flt.error_classes is not None:
            _in("last_error_class", list(flt.error_classes))
        if flt.story_id is not None:
            where.append("story_id = ?")
            args.append(flt.story_id)
        if flt.since is not None:
            where.append("updated_at >= ?")
            args.append(flt.since)
        if flt.until is not None:
            where.append("updated_at < ?")
            args.append(flt.until)
        if flt.after_id is not None:
            where.append("id > ?")
            args.append(flt.after_id)
        sql = "SELECT * FROM deliveries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if flt.limit is not None:
            sql += " LIMIT ?"
            args.append(flt.limit)

        def _list(conn: sqlite3.Connection) -> list[DeliveryRecord]:
            return [delivery_from_row(r) for r in conn.execute(sql, args)]

        return await self._run(_list)

    async def attempts(self, delivery_id: int) -> list[AttemptRecord]:
        def _attempts(conn: sqlite3.Connection) -> list[AttemptRecord]:
            return [
                attempt_from_row(r)
                for r in conn.execute("SELECT * FROM attempts WHERE delivery_id = ? ORDER BY number", (delivery_id,))
            ]

        return await self._run(_attempts)

    async def requeue(self, delivery_ids: Sequence[int], *, now: float, force: bool = False) -> list[int]:
        ids = list(delivery_ids)
        if not ids:
            return []
        states = {s.value for s in REPLAYABLE_STATES} | ({State.DELIVERED.value} if force else set())

        def _requeue(conn: sqlite3.Connection) -> list[int]:
            with self._tx(conn):
                chosen = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT id FROM deliveries WHERE id IN ({_placeholders(len(ids))})"
                        f" AND state IN ({_placeholders(len(states))})",
                        [*ids, *states],
                    )
                ]
                if chosen:
                    conn.execute(
                        "UPDATE deliveries SET state = 'queued', retry_count = 0, due_at = ?,"
                        " reconcile = CASE WHEN state = 'unknown' AND ? = 0 THEN 1 ELSE 0 END,"
                        " lease_owner = NULL, lease_expires = NULL, note = 'replayed by an operator', updated_at = ?"
                        f" WHERE id IN ({_placeholders(len(chosen))})",
                        [now, 1 if force else 0, now, *chosen],
                    )
                return chosen

        return await self._run(_requeue)

    async def mark_landed(self, delivery_id: int, receipt: Receipt, *, now: float, note: str) -> bool:
        def _mark(conn: sqlite3.Connection) -> bool:
            with self._tx(conn):
                cur = conn.execute(
                    "UPDATE deliveries SET state = 'delivered', receipt = ?, attempts = attempts + 1, due_at = NULL,"
                    " reconcile = 0, lease_owner = NULL, lease_expires = NULL, note = ?, last_error = NULL,"
                    " last_error_class = NULL, last_platform_code = NULL, updated_at = ?"
                    " WHERE id = ? AND state = 'unknown'",
                    (dumps_json(receipt.to_json()), note, now, delivery_id),
                )
                if cur.rowcount != 1:
                    return False
                conn.execute(
                    "INSERT INTO attempts (delivery_id, number, worker, started_at, finished_at, outcome, message)"
                    " SELECT id, attempts, ?, ?, ?, ?, ? FROM deliveries WHERE id = ?",
                    (OPERATOR_WORKER, now, now, LANDED_BY_OPERATOR, note, delivery_id),
                )
                return True

        return await self._run(_mark)

    async def recent_story_ids(self, limit: int) -> list[str]:
        def _recent(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT story_id FROM stories GROUP BY story_id ORDER BY max(received_at) DESC, story_id LIMIT ?",
                (limit,),
            )
            return [r[0] for r in rows]

        return await self._run(_recent)

    async def attempt_buckets(self, *, since: float, bucket_seconds: float) -> list[AttemptBucket]:
        success = _placeholders(len(SUCCESS_OUTCOMES))

        def _buckets(conn: sqlite3.Connection) -> list[AttemptBucket]:
            rows = conn.execute(
                "SELECT d.channel, CAST((a.finished_at - ?) / ? AS INTEGER) AS slot, count(*) AS n,"
                f" sum(CASE WHEN a.outcome IN ({success}) THEN 1 ELSE 0 END) AS ok,"
                " avg(a.duration_ms) AS mean_ms, max(a.duration_ms) AS max_ms"
                " FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
                " WHERE a.finished_at >= ? AND a.worker != ? AND coalesce(a.outcome, '') != 'skipped'"
                " GROUP BY d.channel, slot ORDER BY d.channel, slot",
                (since, bucket_seconds, *SUCCESS_OUTCOMES, since, OPERATOR_WORKER),
            )
            return [AttemptBucket(r[0], since + r[1] * bucket_seconds, r[2], r[3], r[4], r[5]) for r in rows]

        return await self._run(_buckets)
