"""PostgreSQL backend: many API and worker processes on many hosts sharing one outbox.

asyncpg rather than psycopg 3: it is asyncio-native, the fastest Python driver for PostgreSQL, ships a pool, and
exposes LISTEN/NOTIFY as a plain callback, which is how idle workers wake at once when work arrives.

Concurrency rules, all enforced in the database so they hold across processes and hosts:
* claims lock candidate rows ``FOR UPDATE SKIP LOCKED`` and serialise per channel on a transaction-level
  advisory lock, so a channel's in-flight count (its concurrency limit) is read and raised atomically;
* fan-out serialises per story on an advisory lock, so two hooks for one story cannot interleave;
* migrations run under a global advisory lock, so several processes starting at once apply them once.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Collection, Sequence
from typing import Any

import asyncpg

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

log = logging.getLogger("syndicate.store.postgres")

NOTIFY_CHANNEL = "syndicate_work"
_MIGRATION_LOCK = 0x5359_4E44  # "SYND"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE stories (
            story_id     TEXT             NOT NULL,
            version      INTEGER          NOT NULL,
            content_hash TEXT             NOT NULL,
            pubstatus    TEXT             NOT NULL,
            body         TEXT             NOT NULL,
            received_at  DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (story_id, version)
        );
        CREATE TABLE deliveries (
            id                 BIGSERIAL PRIMARY KEY,
            story_id           TEXT             NOT NULL,
            version            INTEGER          NOT NULL,
            channel            TEXT             NOT NULL,
            action             TEXT             NOT NULL,
            state              TEXT             NOT NULL,
            payload            TEXT,
            checkpoint         TEXT             NOT NULL DEFAULT '{}',
            receipt            TEXT,
            attempts           INTEGER          NOT NULL DEFAULT 0,
            retry_count        INTEGER          NOT NULL DEFAULT 0,
            due_at             DOUBLE PRECISION,
            reconcile          BOOLEAN          NOT NULL DEFAULT FALSE,
            lease_owner        TEXT,
            lease_expires      DOUBLE PRECISION,
            note               TEXT,
            last_error         TEXT,
            last_error_class   TEXT,
            last_platform_code TEXT,
            created_at         DOUBLE PRECISION NOT NULL,
            updated_at         DOUBLE PRECISION NOT NULL,
            UNIQUE (story_id, version, channel, action)
        );
        CREATE INDEX deliveries_pending ON deliveries (channel, due_at, id) WHERE state IN ('queued', 'retry_wait');
        CREATE INDEX deliveries_in_flight ON deliveries (channel, lease_expires) WHERE state = 'in_flight';
        CREATE INDEX deliveries_story_channel ON deliveries (story_id, channel, id);
        CREATE INDEX deliveries_state_updated ON deliveries (state, updated_at);
        CREATE TABLE attempts (
            id            BIGSERIAL PRIMARY KEY,
            delivery_id   BIGINT           NOT NULL REFERENCES deliveries (id),
            number        INTEGER          NOT NULL,
            worker        TEXT             NOT NULL,
            started_at    DOUBLE PRECISION NOT NULL,
            finished_at   DOUBLE PRECISION,
            outcome       TEXT,
            error_class   TEXT,
            message       TEXT,
            platform_code TEXT,
            duration_ms   DOUBLE PRECISION
        );
        CREATE INDEX attempts_delivery ON attempts (delivery_id, number);
        CREATE TABLE channel_state (
            channel      TEXT PRIMARY KEY,
            paused_until DOUBLE PRECISION,
            reason       TEXT,
            updated_at   DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE kv (
            key        TEXT PRIMARY KEY,
            value      TEXT             NOT NULL,
            expires_at DOUBLE PRECISION,
            updated_at DOUBLE PRECISION NOT NULL
        );
        """,
    ),
]

_PENDING = [s.value for s in PENDING_STATES]
_OPEN = [s.value for s in OPEN_STATES]


def split_url(url: str) -> tuple[str, str | None]:
    """``postgresql://…?schema=name`` -> (DSN for asyncpg, schema). The schema isolates test runs or tenants."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "schema"])
    scheme = "postgresql" if parts.scheme in ("postgresql", "postgres") else parts.scheme
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


class PostgresStore(Store):
    SCHEMA_VERSION = MIGRATIONS[-1][0]

    def __init__(self, dsn: str, *, schema: str | None = None, min_size: int = 1, max_size: int = 10) -> None:
        self.dsn = dsn
        self.schema = schema
        self._min_size, self._max_size = min_size, max_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        dsn, schema = split_url(url)
        return cls(dsn, schema=schema)

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            settings = {"search_path": self.schema} if self.schema else None
            if self.schema:
                conn = await asyncpg.connect(self.dsn)
                try:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                finally:
                    await conn.close()
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=self._min_size, max_size=self._max_size, server_settings=settings
            )
        return self._pool

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever any process enqueues or frees work (LISTEN/NOTIFY)."""
        if self._listener is not None:
            return
        settings = {"search_path": self.schema} if self.schema else None
        self._listener = await asyncpg.connect(self.dsn, server_settings=settings)
        await self._listener.add_listener(self._notify_name, lambda *_: callback())

    @property
    def _notify_name(self) -> str:
        # One notification channel per schema, so isolated test runs (or tenants) do not wake each other.
        return f"{NOTIFY_CHANNEL}_{self.schema}" if self.schema else NOTIFY_CHANNEL

    async def _notify(self, conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT pg_notify($1, '')", self._notify_name)

    # --- migrations -----------------------------------------------------------------------------------------

    async def migrate(self) -> int:
        pool = await self._get_pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ)"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            refuse_newer_schema(done, MIGRATIONS[-1][0])
            for version, sql in MIGRATIONS:
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())", version)
            return max(done | {v for v, _ in MIGRATIONS})

    async def schema_version(self) -> int:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            try:
                value = await conn.fetchval("SELECT max(version) FROM schema_migrations")
            except asyncpg.UndefinedTableError:
                return 0
            return value or 0

    # --- stories and fan-out --------------------------------------------------------------------------------

    async def fan_out(self, story: Story, planner: Planner, *, now: float) -> FanOutResult:
        content_hash = story.content_hash
        pool = await self._get_pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('story:' || $1, 0))", story.id)
            latest = await conn.fetchrow(
                "SELECT version, content_hash FROM stories WHERE story_id = $1 ORDER BY version DESC LIMIT 1", story.id
            )
            if latest is not None and latest["version"] >= story.version:
                if latest["version"] > story.version:
                    same = await conn.fetchval(
                        "SELECT content_hash FROM stories WHERE story_id = $1 AND version = $2", story.id, story.version
                    )
                    if same != content_hash:
                        raise StaleVersion(story.id, story.version, latest["version"])
                elif latest["content_hash"] != content_hash:
                    raise VersionConflict(story.id, story.version)
                rows = await conn.fetch(
                    "SELECT * FROM deliveries WHERE story_id = $1 AND version = $2 ORDER BY id", story.id, story.version
                )
                return FanOutResult(story.id, story.version, False, [delivery_from_row(r) for r in rows])
            await conn.execute(
                "INSERT INTO stories (story_id, version, content_hash, pubstatus, body, received_at)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                story.id,
                story.version,
                content_hash,
                story.pubstatus,
                story.to_json(),
                now,
            )
            existing = [
                delivery_from_row(r)
                for r in await conn.fetch(
                    "SELECT * FROM deliveries WHERE story_id = $1 ORDER BY id FOR UPDATE", story.id
                )
            ]
            plan = planner(existing)
            for tr in plan.transitions:
                await conn.execute(
                    "UPDATE deliveries SET state = $1, note = $2, due_at = NULL, updated_at = $3"
                    " WHERE id = $4 AND state = ANY($5::text[]) AND NOT reconcile",
                    tr.state.value,
                    tr.note,
                    now,
                    tr.delivery_id,
                    _PENDING,
                )
            rows = []
            for nd in plan.new:
                rows.append(
                    await conn.fetchrow(
                        "INSERT INTO deliveries (story_id, version, channel, action, state, payload, due_at, note,"
                        " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING *",
                        story.id,
                        story.version,
                        nd.channel,
                        nd.action.value,
                        nd.state.value,
                        dumps_json(nd.payload.to_json()) if nd.payload is not None else None,
                        nd.due_at,
                        nd.note,
                        now,
                    )
                )
            if plan.new:
                await self._notify(conn)
            return FanOutResult(story.id, story.version, True, [delivery_from_row(r) for r in rows])

    async def get_story(self, story_id: str, version: int | None = None) -> StoryRecord:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            if version is None:
                row = await conn.fetchrow(
                    "SELECT * FROM stories WHERE story_id = $1 ORDER BY version DESC LIMIT 1", story_id
                )
            else:
                row = await conn.fetchrow(
                    "SELECT * FROM stories WHERE story_id = $1 AND version = $2", story_id, version
                )
        if row is None:
            raise NotFound(f"story {story_id!r}" + (f" version {version}" if version else "") + " not found")
        return StoryRecord(Story.from_json(row["body"]), row["content_hash"], row["received_at"])

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
        pool = await self._get_pool()
        claims: list[Claim] = []
        async with pool.acquire() as conn:
            paused = {
                r["channel"] for r in await conn.fetch("SELECT channel FROM channel_state WHERE paused_until > $1", now)
            }
            for channel, limit in limits.items():
                if channel in paused or limit <= 0:
                    continue
                if not await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE channel = $1 AND state = ANY($2::text[])"
                    " AND due_at <= $3)",
                    channel,
                    _PENDING,
                    now,
                ):
                    continue  # the common idle case costs one index probe and no lock
                async with conn.transaction():
                    # One claimer per channel at a time: the in-flight count and the claim are one atomic step.
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('claim:' || $1, 0))", channel)
                    busy = await conn.fetchval(
                        "SELECT count(*) FROM deliveries WHERE channel = $1 AND state = 'in_flight'"
                        " AND NOT (id = ANY($2::bigint[]) AND lease_owner = $3)",
                        channel,
                        ended,
                        worker,
                    )
                    free = limit - busy
                    if free <= 0:
                        continue
                    rows = await conn.fetch(
                        "WITH picked AS ("
                        "  SELECT d.id FROM deliveries d WHERE d.channel = $1 AND d.state = ANY($2::text[])"
                        "  AND d.due_at <= $3 AND NOT EXISTS (SELECT 1 FROM deliveries p"
                        "    WHERE p.story_id = d.story_id AND p.channel = d.channel AND p.id < d.id"
                        "    AND p.state = ANY($4::text[]))"
                        "  ORDER BY d.due_at, d.id LIMIT $5 FOR UPDATE SKIP LOCKED)"
                        " UPDATE deliveries d SET state = 'in_flight', lease_owner = $6, lease_expires = $7,"
                        " attempts = d.attempts + 1, updated_at = $3 FROM picked WHERE d.id = picked.id RETURNING d.*",
                        channel,
                        _PENDING,
                        now,
                        _OPEN,
                        free,
                        worker,
                        now + lease_seconds,
                    )
                    rows = sorted(rows, key=lambda r: (r["due_at"] or 0, r["id"]))
                    attempt_ids = {
                        r["delivery_id"]: r["id"]
                        for r in await conn.fetch(
                            "INSERT INTO attempts (delivery_id, number, worker, started_at)"
                            " SELECT id, attempts, $2, $3 FROM deliveries WHERE id = ANY($1::bigint[])"
                            " RETURNING delivery_id, id",
                            [r["id"] for r in rows],
                            worker,
                            now,
                        )
                    }
                    for row in rows:
                        d = delivery_from_row(row)
                        # Only updates and retracts act on the live post; a publish needs no receipt lookup.
                        live = None if d.action is Action.PUBLISH else await self._live_receipt(conn, d)
                        claims.append(Claim(d, attempt_ids[d.id], d.attempts, live))
        return claims

    @staticmethod
    async def _live_receipt(conn: asyncpg.Connection, d: DeliveryRecord) -> Receipt | None:
        row = await conn.fetchrow(
            "SELECT action, receipt FROM deliveries WHERE story_id = $1 AND channel = $2 AND id < $3"
            " AND state = 'delivered' ORDER BY id DESC LIMIT 1",
            d.story_id,
            d.channel,
            d.id,
        )
        return live_receipt_from(row)

    async def heartbeat(self, worker: str, delivery_ids: Sequence[int], *, lease_until: float) -> list[int]:
        if not delivery_ids:
            return []
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            # Rows locked in id order, as complete() locks them: a heartbeat and an outcome write of this worker
            # overlapping on two rows cannot deadlock.
            rows = await conn.fetch(
                "WITH held AS (SELECT id FROM deliveries WHERE state = 'in_flight' AND lease_owner = $2"
                " AND id = ANY($3::bigint[]) ORDER BY id FOR UPDATE)"
                " UPDATE deliveries d SET lease_expires = $1 FROM held WHERE d.id = held.id RETURNING d.id",
                lease_until,
                worker,
                list(delivery_ids),
            )
        return sorted(r["id"] for r in rows)

    async def save_checkpoint(self, delivery_id: int, worker: str, checkpoint: dict[str, Any]) -> None:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            status = await conn.execute(
                "UPDATE deliveries SET checkpoint = $1 WHERE id = $2 AND state = 'in_flight' AND lease_owner = $3",
                dumps_json(checkpoint),
                delivery_id,
                worker,
            )
        if status != "UPDATE 1":
            raise NotFound(f"delivery {delivery_id} is no longer leased by {worker}")

    async def complete(self, completions: Sequence[Completion]) -> list[int]:
        items = list(completions)
        if not items:
            return []
        pool = await self._get_pool()
        async with pool.acquire() as conn, conn.transaction():
            # Lease holders read once for the batch, locked until commit; then one statement per table.
            holders = {
                r["id"]: (r["lease_owner"], r["attempts"])
                for r in await conn.fetch(
                    "SELECT id, lease_owner, attempts FROM deliveries WHERE state = 'in_flight'"
                    " AND id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
                    [c.delivery_id for c in items],
                )
            }
            applied, lost = split_by_lease(items, holders)
            if applied:
                await conn.executemany(
                    "UPDATE deliveries SET state = $1, due_at = $2, receipt = coalesce($3, receipt),"
                    " retry_count = retry_count + $4, reconcile = $5, lease_owner = NULL, lease_expires = NULL,"
                    " note = $6, last_error = $7, last_error_class = $8, last_platform_code = $9, updated_at = $10,"
                    " action = coalesce($11, action), payload = coalesce($12, payload)"
                    " WHERE id = $13 AND state = 'in_flight' AND lease_owner = $14",
                    [delivery_outcome_params(c) for c in applied],
                )
            await conn.executemany(
                "UPDATE attempts SET finished_at = $1, outcome = $2, error_class = $3, message = $4,"
                " platform_code = $5, duration_ms = $6 WHERE id = $7 AND finished_at IS NULL",
                attempt_outcome_params(items, lost),
            )
            await self._notify(conn)  # slots are free again, and retries may be due at once
        return [items[position].delivery_id for position in sorted(lost)]

    async def reclaim_expired(self, *, now: float) -> int:
        pool = await self._get_pool()
        async with pool.acquire() as conn, conn.transaction():
            ids = [
                r["id"]
                for r in await conn.fetch(
                    "SELECT id FROM deliveries WHERE state = 'in_flight' AND lease_expires < $1 FOR UPDATE SKIP LOCKED",
                    now,
                )
            ]
            if not ids:
                return 0
            await conn.execute(
                "UPDATE attempts SET finished_at = $1, outcome = 'lease_expired',"
                " message = 'the worker stopped answering; the attempt may have reached the platform'"
                " WHERE finished_at IS NULL AND delivery_id = ANY($2::bigint[])",
                now,
                ids,
            )
            await conn.execute(
                "UPDATE deliveries SET state = 'queued', reconcile = TRUE, due_at = $1, lease_owner = NULL,"
                " retry_count = retry_count + 1,"
                " lease_expires = NULL, updated_at = $1, note = 'lease expired; checking whether it landed'"
                " WHERE id = ANY($2::bigint[])",
                now,
                ids,
            )
            await self._notify(conn)
            return len(ids)

    async def next_due_at(self, channels: Sequence[str], *, now: float) -> float | None:
        if not channels:
            return None
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT c.channel, (SELECT min(due_at) FROM deliveries d WHERE d.channel = c.channel"
                "   AND d.state = ANY($2::text[])) AS due,"
                " (SELECT paused_until FROM channel_state s WHERE s.channel = c.channel"
                "   AND paused_until > $3) AS paused"
                " FROM unnest($1::text[]) AS c(channel)",
                list(channels),
                _PENDING,
                now,
            )
        dues = [max(r["due"], r["paused"] or 0.0) for r in rows if r["due"] is not None]
        return min(dues) if dues else None

    async def count_claimable(self, channels: Sequence[str], *, now: float) -> int:
        if not channels:
            return 0
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM deliveries d WHERE d.channel = ANY($1::text[]) AND d.state = ANY($2::text[])"
                " AND d.due_at <= $3"
                " AND d.channel NOT IN (SELECT channel FROM channel_state WHERE paused_until > $3)"
                " AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.story_id = d.story_id"
                " AND p.channel = d.channel AND p.id < d.id AND p.state = ANY($4::text[]))",
                list(channels),
                _PENDING,
                now,
                _OPEN,
            )
        return count

    async def count_in_flight(self, channels: Sequence[str] | None = None) -> int:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            if channels is None:
                count: int = await conn.fetchval("SELECT count(*) FROM deliveries WHERE state = 'in_flight'")
                return count
            count = await conn.fetchval(
                "SELECT count(*) FROM deliveries WHERE state = 'in_flight' AND channel = ANY($1::text[])",
                list(channels),
            )
        return count

    # --- channel state and key/value ------------------------------------------------------------------------

    async def pause_channel(self, channel: str, *, until: float, reason: str, now: float) -> None:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO channel_state (channel, paused_until, reason, updated_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (channel) DO UPDATE SET"
                " reason = CASE WHEN coalesce(channel_state.paused_until, 0) > excluded.paused_until"
                "   THEN channel_state.reason ELSE excluded.reason END,"
                " paused_until = greatest(coalesce(channel_state.paused_until, 0), excluded.paused_until),"
                " updated_at = excluded.updated_at",
                channel,
                until,
                reason,
                now,
            )

    async def resume_channel(self, channel: str, *, now: float) -> None:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO channel_state (channel, paused_until, reason, updated_at) VALUES ($1, NULL, NULL, $2)"
                " ON CONFLICT (channel) DO UPDATE SET paused_until = NULL, reason = NULL,"
                " updated_at = excluded.updated_at",
                channel,
                now,
            )
            await self._notify(conn)

    async def channel_states(self) -> dict[str, ChannelState]:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT * FROM channel_state")
        return {r["channel"]: ChannelState(r["channel"], r["paused_until"], r["reason"], r["updated_at"]) for r in rows}

    async def kv_get(self, key: str, *, now: float) -> str | None:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            value: str | None = await conn.fetchval(
                "SELECT value FROM kv WHERE key = $1 AND (expires_at IS NULL OR expires_at > $2)", key, now
            )
        return value

    async def kv_set(self, key: str, value: str, *, expires_at: float | None, now: float) -> None:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO kv (key, value, expires_at, updated_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at,"
                " updated_at = excluded.updated_at",
                key,
                value,
                expires_at,
                now,
            )

    async def kv_add(self, key: str, value: str, *, expires_at: float | None, now: float) -> bool:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            status: str = await conn.execute(
                "INSERT INTO kv (key, value, expires_at, updated_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at,"
                " updated_at = excluded.updated_at WHERE kv.expires_at IS NOT NULL AND kv.expires_at <= $4",
                key,
                value,
                expires_at,
                now,
            )
        return status == "INSERT 0 1"

    # --- reading and repair ---------------------------------------------------------------------------------

    async def get_delivery(self, delivery_id: int) -> DeliveryRecord:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM deliveries WHERE id = $1", delivery_id)
        if row is None:
            raise NotFound(f"delivery {delivery_id} not found")
        return delivery_from_row(row)

    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRecord]:
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if flt.ids is not None:
            where.append(f"id = ANY({arg(list(flt.ids))}::bigint[])")
        if flt.states is not None:
            where.append(f"state = ANY({arg([State(s).value for s in flt.states])}::text[])")
        if flt.channels is not None:
            where.append(f"channel = ANY({arg(list(flt.channels))}::text[])")
        if flt.error_classes is not None:
            where.append(f"last_error_class = ANY({arg(list(flt.error_classes))}::text[])")
        if flt.story_id is not None:
            where.append(f"story_id = {arg(flt.story_id)}")
        if flt.since is not None:
            where.append(f"updated_at >= {arg(flt.since)}")
        if flt.until is not None:
            where.append(f"updated_at < {arg(flt.until)}")
        if flt.after_id is not None:
            where.append(f"id > {arg(flt.after_id)}")
        sql = "SELECT * FROM deliveries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if flt.limit is not None:
            sql += f" LIMIT {arg(flt.limit)}"
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            return [delivery_from_row(r) for r in await conn.fetch(sql, *args)]

    async def attempts(self, delivery_id: int) -> list[AttemptRecord]:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT * FROM attempts WHERE delivery_id = $1 ORDER BY number", delivery_id)
        return [attempt_from_row(r) for r in rows]

    async def latest_delivered(
        self, channel: str, *, story_id: str | None = None, before_id: int | None = None, limit: int = 50
    ) -> list[DeliveryRecord]:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM deliveries d WHERE d.channel = $1 AND d.state = 'delivered'"
                " AND d.id = (SELECT max(l.id) FROM deliveries l WHERE l.story_id = d.story_id"
                "   AND l.channel = d.channel AND l.state = 'delivered')"
                " AND ($2::text IS NULL OR d.story_id = $2) AND ($3::bigint IS NULL OR d.id < $3)"
                " ORDER BY d.id DESC LIMIT $4",
                channel,
                story_id,
                before_id,
                limit,
            )
        return [delivery_from_row(r) for r in rows]

    async def queue_depth(self) -> dict[tuple[str, State], int]:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT channel, state, count(*) AS n FROM deliveries GROUP BY channel, state")
        return {(r["channel"], State(r["state"])): r["n"] for r in rows}

    async def counts(self) -> StoreCounts:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            by_state = {
                State(r["state"]): r["n"]
                for r in await conn.fetch("SELECT state, count(*) AS n FROM deliveries GROUP BY state")
            }
            return StoreCounts(
                stories=await conn.fetchval("SELECT count(DISTINCT story_id) FROM stories"),
                story_versions=await conn.fetchval("SELECT count(*) FROM stories"),
                deliveries=sum(by_state.values()),
                attempts=await conn.fetchval("SELECT count(*) FROM attempts"),
                by_state=by_state,
                oldest_pending_due=await conn.fetchval(
                    "SELECT min(due_at) FROM deliveries WHERE state = ANY($1::text[])", _PENDING
                ),
            )

    async def requeue(self, delivery_ids: Sequence[int], *, now: float, force: bool = False) -> list[int]:
        if not delivery_ids:
            return []
        states = [s.value for s in REPLAYABLE_STATES] + ([State.DELIVERED.value] if force else [])
        pool = await self._get_pool()
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "UPDATE deliveries SET state = 'queued', retry_count = 0, due_at = $1,"
                " reconcile = (state = 'unknown' AND NOT $4::boolean),"
                " lease_owner = NULL, lease_expires = NULL, note = 'replayed by an operator', updated_at = $1"
                " WHERE id = ANY($2::bigint[]) AND state = ANY($3::text[]) RETURNING id",
                now,
                list(delivery_ids),
                states,
                force,
            )
            if rows:
                await self._notify(conn)
        return sorted(r["id"] for r in rows)

    async def mark_landed(self, delivery_id: int, receipt: Receipt, *, now: float, note: str) -> bool:
        pool = await self._get_pool()
        async with pool.acquire() as conn, conn.transaction():
            number = await conn.fetchval(
                "UPDATE deliveries SET state = 'delivered', receipt = $1, attempts = attempts + 1, due_at = NULL,"
                " reconcile = false, lease_owner = NULL, lease_expires = NULL, note = $2, last_error = NULL,"
                " last_error_class = NULL, last_platform_code = NULL, updated_at = $3"
                " WHERE id = $4 AND state = 'unknown' RETURNING attempts",
                dumps_json(receipt.to_json()),
                note,
                now,
                delivery_id,
            )
            if number is None:
                return False
            await conn.execute(
                "INSERT INTO attempts (delivery_id, number, worker, started_at, finished_at, outcome, message)"
                " VALUES ($1, $2, $3, $4, $4, $5, $6)",
                delivery_id,
                number,
                OPERATOR_WORKER,
                now,
                LANDED_BY_OPERATOR,
                note,
            )
        return True

    async def recent_story_ids(self, limit: int) -> list[str]:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT story_id FROM stories GROUP BY story_id ORDER BY max(received_at) DESC, story_id LIMIT $1",
                limit,
            )
        return [r["story_id"] for r in rows]

    async def attempt_buckets(self, *, since: float, bucket_seconds: float) -> list[AttemptBucket]:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT d.channel, floor((a.finished_at - $1) / $2)::bigint AS slot, count(*) AS n,"
                " count(*) FILTER (WHERE a.outcome = ANY($3::text[])) AS ok,"
                " avg(a.duration_ms) AS mean_ms, max(a.duration_ms) AS max_ms"
                " FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
                " WHERE a.finished_at >= $1 AND a.worker <> $4 AND coalesce(a.outcome, '') <> 'skipped'"
                " GROUP BY d.channel, slot ORDER BY d.channel, slot",
                since,
                float(bucket_seconds),
                list(SUCCESS_OUTCOMES),
                OPERATOR_WORKER,
            )
        return [
            AttemptBucket(r["channel"], since + r["slot"] * bucket_seconds, r["n"], r["ok"], r["mean_ms"], r["max_ms"])
            for r in rows
        ]
