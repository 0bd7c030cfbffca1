"""The store's decisions, written once above the SQL dialects.

Every contract method lives here as one operation: an ``async`` function over a :class:`Conn` that runs named
queries (``syndicate/store/sql/queries_<dialect>.sql``) and decides in Python: the version check, the filter, the
claim's free slots, lease splitting, requeue selection, fan-out plan application, row mapping. A dialect is a thin
connector that says how an operation runs: which connection, inside which transaction, under which lock.

SQLite runs an operation whole without suspending (its awaits reach only the blocking sqlite3 connection): a brief
one on the event loop's thread, a scan (``scan=True``) or one that must wait for a lock in its store thread;
PostgreSQL awaits it on a pooled asyncpg connection. The SQL differs where the databases do (FOR UPDATE SKIP
LOCKED, arrays against json_each, upserts); the decisions do not.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import functools
import json
import math
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from syndicate.delivery import Action, ReachMetric, Receipt
from syndicate.store.base import (
    LANDED_BY_OPERATOR,
    OPERATOR_WORKER,
    REACH_BUCKET_SECONDS,
    REPLAYABLE_STATES,
    SUCCESS_OUTCOMES,
    AttemptBucket,
    AttemptRecord,
    ChannelState,
    Claim,
    CompletedAndClaimed,
    Completion,
    DeliveryFilter,
    DeliveryRecord,
    FanOutBasis,
    FanOutPlan,
    FanOutResult,
    NotFound,
    Planner,
    ReachPoint,
    ReachRawReading,
    ReachTotal,
    Row,
    SampleClaim,
    SampleCompletion,
    SampleState,
    StaleVersion,
    State,
    Store,
    StoreCounts,
    StoreUnavailable,
    StoryReach,
    StoryRecord,
    VersionConflict,
    attempt_from_row,
    delivery_from_claim_row,
    delivery_from_row,
    dumps_json,
    live_receipt_from,
    refuse_newer_schema,
    sample_from_row,
    split_by_lease,
)
from syndicate.store.queries import Migration, QuerySet
from syndicate.story import Story

T = TypeVar("T")
C = TypeVar("C")


#: A story whose JSON is larger than this is fanned out as a scan (``_write(scan=True)``), not a brief operation:
#: its transaction also writes a rendering per channel.
LARGE_STORY_JSON = 256 * 1024


class Q(enum.StrEnum):
    """Every query the decisions run; each dialect's file defines all of them (checked at import)."""

    CREATE_MIGRATIONS_TABLE = "create_migrations_table"
    APPLIED_MIGRATIONS = "applied_migrations"
    RECORD_MIGRATION = "record_migration"
    SCHEMA_VERSION = "schema_version"
    NEWEST_STORY_VERSION = "newest_story_version"
    STORY_VERSION_HASH = "story_version_hash"
    DELIVERIES_OF_VERSION = "deliveries_of_version"
    INSERT_STORY = "insert_story"
    DELIVERIES_OF_STORY = "deliveries_of_story"
    TRANSITION_DELIVERY = "transition_delivery"
    INSERT_DELIVERY = "insert_delivery"
    SAVE_PAYLOAD = "save_payload"
    NEWEST_STORY = "newest_story"
    STORY_VERSION = "story_version"
    FIRST_ACCEPTED = "first_accepted"
    CHANNELS_WITH_DUE_WORK = "channels_with_due_work"
    CLAIM_GATE = "claim_gate"
    CLAIM_DELIVERIES = "claim_deliveries"
    LIVE_RECEIPT = "live_receipt"
    EXTEND_LEASES = "extend_leases"
    SAVE_CHECKPOINT = "save_checkpoint"
    LEASE_HOLDERS = "lease_holders"
    EXPIRED_LEASES = "expired_leases"
    EXPIRE_ATTEMPTS = "expire_attempts"
    REQUEUE_EXPIRED = "requeue_expired"
    NEXT_DUE = "next_due"
    ANY_CLAIMABLE = "any_claimable"
    COUNT_IN_FLIGHT_ALL = "count_in_flight_all"
    COUNT_IN_FLIGHT = "count_in_flight"
    REQUEUE = "requeue"
    MARK_LANDED = "mark_landed"
    INSERT_OPERATOR_ATTEMPT = "insert_operator_attempt"
    PAUSE_CHANNEL = "pause_channel"
    RESUME_CHANNEL = "resume_channel"
    CHANNEL_STATES = "channel_states"
    KV_GET = "kv_get"
    KV_SET = "kv_set"
    KV_ADD = "kv_add"
    PURGE_EXPIRED_KV = "purge_expired_kv"
    GET_DELIVERY = "get_delivery"
    LIST_DELIVERIES = "list_deliveries"
    ATTEMPTS = "attempts"
    LATEST_DELIVERED = "latest_delivered"
    LATEST_DELIVERED_STORY = "latest_delivered_story"
    QUEUE_DEPTH = "queue_depth"
    COUNT_BY_STATE = "count_by_state"
    COUNT_STORIES = "count_stories"
    COUNT_STORY_VERSIONS = "count_story_versions"
    COUNT_ATTEMPTS = "count_attempts"
    OLDEST_PENDING_DUE = "oldest_pending_due"
    RECENT_STORY_IDS = "recent_story_ids"
    ATTEMPT_BUCKETS = "attempt_buckets"
    INSERT_REACH_SAMPLE = "insert_reach_sample"
    CANCEL_REACH_SAMPLES = "cancel_reach_samples"
    CHANNELS_WITH_DUE_SAMPLES = "channels_with_due_samples"
    CLAIM_REACH_SAMPLES = "claim_reach_samples"
    EXTEND_REACH_LEASES = "extend_reach_leases"
    FINISH_REACH_SAMPLE = "finish_reach_sample"
    INSERT_REACH_READING = "insert_reach_reading"
    INSERT_REACH_POINT = "insert_reach_point"
    REQUEUE_EXPIRED_REACH_SAMPLES = "requeue_expired_reach_samples"
    NEXT_REACH_DUE = "next_reach_due"
    COUNT_REACH_IN_FLIGHT = "count_reach_in_flight"
    LIVE_DELIVERY_OF_STORY = "live_delivery_of_story"
    ADD_REACH_COUNT = "add_reach_count"
    REACH_SAMPLES_OF_STORY = "reach_samples_of_story"
    REACH_POINTS_OF_STORY = "reach_points_of_story"
    REACH_READINGS_OF_STORY = "reach_readings_of_story"
    REACH_COUNTS_OF_STORY = "reach_counts_of_story"
    REACH_POINTS_FOR_PERIOD = "reach_points_for_period"
    REACH_COUNTS_FOR_PERIOD = "reach_counts_for_period"
    REACH_LATEST_BY_CHANNEL = "reach_latest_by_channel"
    REACH_COUNTS_BY_CHANNEL = "reach_counts_by_channel"


class Conn(Protocol):
    """One connection as an operation sees it, inside the transaction its connector opened (if any).

    Queries are named; parameters go by name. A list or tuple value is a list parameter (the dialect's SQL says
    how it is matched)."""

    async def fetch(self, query: str, /, **params: Any) -> list[Row]: ...

    async def fetchrow(self, query: str, /, **params: Any) -> Row | None: ...

    async def fetchval(self, query: str, /, **params: Any) -> Any: ...

    async def execute(self, query: str, /, **params: Any) -> int:
        """Run a statement; the number of rows it changed."""
        ...

    async def executemany(self, query: str, rows: Sequence[Mapping[str, Any]], /) -> int | None:
        """Run a statement once per row; the rows changed in all, where the driver tells (None where not)."""
        ...

    async def fetch_rendered(self, query: str, slots: Mapping[str, str], /, **params: Any) -> list[Row]:
        """A query with ``{slot}`` tokens (a built WHERE clause) filled in first."""
        ...

    async def run_script(self, sql: str, /) -> None:
        """Several statements without parameters (a migration), inside the current transaction."""
        ...

    async def wake(self) -> None:
        """Tell other processes' idle workers that work was enqueued or freed (at commit); a no-op where no
        process can listen."""
        ...


#: An operation: the body of one contract method, run by the connector.
Op = Callable[[Conn], Coroutine[Any, Any, T]]


class LockScope(enum.Enum):
    #: Two hooks for one story must not interleave their fan-outs.
    STORY = "story"
    #: A channel's in-flight count and its claim are one step across processes.
    CLAIM = "claim"
    #: Several processes starting at once apply each migration once.
    MIGRATIONS = "migrations"


@dataclass(frozen=True)
class Lock:
    """What a write transaction serialises on across processes. PostgreSQL takes an advisory lock per key; SQLite's
    database-wide write lock (BEGIN IMMEDIATE) already covers every scope."""

    scope: LockScope
    key: str = ""


@dataclass
class Where:
    """A WHERE clause built from named parameters (``:w0``, ``:w1`` ...): the same for every dialect but for how a
    list is matched (``in_list``: a template over ``{column}``, ``{param}`` and ``{type}``, the PostgreSQL element
    type)."""

    in_list: str
    conditions: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def _param(self, value: Any) -> str:
        name = f"w{len(self.params)}"
        self.params[name] = value
        return name

    def compare(self, column: str, op: str, value: Any) -> None:
        self.conditions.append(f"{column} {op} :{self._param(value)}")

    def one_of(self, column: str, values: Sequence[Any], sql_type: str) -> None:
        self.conditions.append(self.in_list.format(column=column, param=self._param(list(values)), type=sql_type))

    @property
    def sql(self) -> str:
        return " AND ".join(self.conditions) if self.conditions else "TRUE"


def delivery_where(flt: DeliveryFilter, in_list: str) -> Where:
    """A DeliveryFilter as a WHERE clause (``since``/``until`` on updated_at, ``after_id`` for keyset paging)."""
    where = Where(in_list)
    if flt.ids is not None:
        where.one_of("id", flt.ids, "bigint")
    if flt.states is not None:
        where.one_of("state", [State(s).value for s in flt.states], "text")
    if flt.channels is not None:
        where.one_of("channel", flt.channels, "text")
    if flt.error_classes is not None:
        where.one_of("last_error_class", flt.error_classes, "text")
    if flt.story_id is not None:
        where.compare("story_id", "=", flt.story_id)
    if flt.since is not None:
        where.compare("updated_at", ">=", flt.since)
    if flt.until is not None:
        where.compare("updated_at", "<", flt.until)
    if flt.after_id is not None:
        where.compare("id", ">", flt.after_id)
    return where


async def accepted_before(conn: Conn, story: Story, content_hash: str) -> bool:
    """The version check: True when this very version was accepted before with this content (nothing to do).
    An older version than the newest accepted raises StaleVersion, unless it is a re-send of that exact older
    version; the newest version with other content raises VersionConflict."""
    latest = await conn.fetchrow(Q.NEWEST_STORY_VERSION, story_id=story.id)
    if latest is None or latest["version"] < story.version:
        return False
    if latest["version"] > story.version:
        same = await conn.fetchval(Q.STORY_VERSION_HASH, story_id=story.id, version=story.version)
        if same != content_hash:
            raise StaleVersion(story.id, story.version, latest["version"])
    elif latest["content_hash"] != content_hash:
        raise VersionConflict(story.id, story.version)
    return True


def requeue_states(force: bool) -> list[str]:
    """Requeue selection: what an operator may re-queue; delivered ones too when forced."""
    states = set(REPLAYABLE_STATES) | ({State.DELIVERED} if force else set())
    return sorted(s.value for s in states)


def outcome_params(c: Completion) -> dict[str, Any]:
    """A completion as the parameters of its delivery's outcome write (``record_outcome`` on SQLite,
    ``record_outcome_and_finish_attempt`` on PostgreSQL, with ``attempt_params``)."""
    return {
        "state": c.state.value,
        "due_at": c.due_at,
        "receipt": dumps_json(c.receipt.to_json()) if c.receipt else None,
        "retry_step": 1 if c.count_retry else 0,
        "reconcile": c.reconcile,
        "note": c.note,
        "last_error": c.message if c.error_class else None,
        "error_class": c.error_class,
        "platform_code": c.platform_code,
        "now": c.finished_at,
        "action": c.action.value if c.action else None,
        "id": c.delivery_id,
        "worker": c.worker,
        "attempt": c.attempt_number,
    }


def attempt_params(completions: Sequence[Completion], lost: set[int]) -> list[dict[str, Any]]:
    """Each completion as the parameters of ``finish_attempt``; ``lost`` holds the batch positions that lost their
    lease (their attempt is still closed, saying so)."""
    return [
        {
            "finished_at": c.finished_at,
            "outcome": f"{c.outcome} (lease lost)" if position in lost else c.outcome,
            "error_class": c.error_class,
            "message": c.message,
            "platform_code": c.platform_code,
            "duration_ms": c.duration_ms,
            "id": c.attempt_id,
        }
        for position, c in enumerate(completions)
    ]


def plan_params(story: Story, plan: FanOutPlan, now: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A fan-out plan as the parameters of its transitions and of its new deliveries."""
    transitions = [{"state": t.state.value, "note": t.note, "now": now, "id": t.delivery_id} for t in plan.transitions]
    new = [
        {
            "story_id": story.id,
            "version": story.version,
            "channel": nd.channel,
            "action": nd.action.value,
            "state": nd.state.value,
            "due_at": nd.due_at,
            "note": nd.note,
            "now": now,
        }
        for nd in plan.new
    ]
    return transitions, new


def _posts_of(items: Sequence[Completion]) -> dict[int, tuple[str, str]] | None:
    """Each completion's story and channel by delivery; None when one does not carry them."""
    posts: dict[int, tuple[str, str]] = {}
    for c in items:
        if c.story_id is None or c.channel is None:
            return None
        posts[c.delivery_id] = (c.story_id, c.channel)
    return posts


class _LeaseLost(Exception):
    """A fenced outcome write found a completion that no longer held its lease: its transaction rolls back and the
    batch is written again, the leases read first (``SQLStore._write_outcome_op``)."""


@dataclass(frozen=True)
class LeaseRequest:
    """One claim call: who leases, when, until when, and which of its own rows no longer hold a request."""

    worker: str
    now: float
    lease_expires: float
    finished: list[int]
    #: At most this many new claims per channel in this call, where set.
    most: Mapping[str, int] = field(default_factory=dict)


#: The kv row readiness rewrites to prove the store takes writes (check_writable); it expires like any other.
WRITE_PROBE_KEY = "syndicate:write-probe"
WRITE_PROBE_VALUE = "0" * 16384


class SQLStore(Store):
    """The contract over named queries; a dialect subclass supplies the queries, the migrations and how an
    operation runs (``_read``/``_write``)."""

    QUERIES: ClassVar[QuerySet]
    MIGRATIONS: ClassVar[Sequence[Migration]]
    #: The whole database has one writer at a time (SQLite): a claim takes all its channels in one transaction
    #: (one commit, one fsync) instead of one transaction per channel under that channel's lock.
    SINGLE_WRITER: ClassVar[bool]
    #: How a built WHERE clause matches a list (see Where.in_list).
    IN_LIST: ClassVar[str]
    #: What reading schema_migrations raises before the first migration created it.
    MISSING_TABLE: ClassVar[tuple[type[Exception], ...]]

    def __init__(self) -> None:
        #: Channels whose last claim filled every slot it asked for: their next claim skips the due probe (there
        #: was more due work than slots; at worst one claim comes back empty, and the probe returns).
        self._saturated: set[str] = set()

    @abc.abstractmethod
    async def _run_read(self, op: Op[T], *, scan: bool = False) -> T:
        """Run ``op`` outside any transaction (each statement sees committed data). ``scan``: ``op`` reads a share
        of the database that grows with the archive (a listing, a report), so a connector that runs brief
        operations on the event loop's own thread runs this one elsewhere."""

    @abc.abstractmethod
    async def _run_write(
        self, op: Op[T], *, lock: Lock | None = None, single_statement: bool = False, scan: bool = False
    ) -> T:
        """Run ``op`` in one write transaction holding ``lock``. ``single_statement``: ``op`` runs one statement,
        atomic by itself, so a server-side database may skip the BEGIN/COMMIT round trips. ``scan`` as for
        ``_run_read`` (a migration)."""

    @abc.abstractmethod
    def _unavailable(self, exc: Exception) -> StoreUnavailable | None:
        """The driver's exception as StoreUnavailable when it means "cannot write now, fix this and try again"
        (disk full, read-only, unreachable, locked past the timeout); None for anything else (a bug, a constraint).
        The one place a dialect's failures are read, as httpx's map_httpcore_exceptions."""

    async def _read(self, op: Op[T], *, scan: bool = False) -> T:
        try:
            return await self._run_read(op, scan=scan)
        except Exception as exc:
            self._raise_unavailable(exc)
            raise

    async def _write(
        self, op: Op[T], *, lock: Lock | None = None, single_statement: bool = False, scan: bool = False
    ) -> T:
        try:
            return await self._run_write(op, lock=lock, single_statement=single_statement, scan=scan)
        except Exception as exc:
            self._raise_unavailable(exc)
            raise

    def _raise_unavailable(self, exc: Exception) -> None:
        if (unavailable := self._unavailable(exc)) is not None:
            raise unavailable from exc

    async def check_writable(self, *, now: float) -> None:
        # As large as a typical story, so that a disk with room for a tiny row only does not pass for writable.
        await self._write(
            lambda conn: conn.execute(
                Q.KV_SET, key=WRITE_PROBE_KEY, value=WRITE_PROBE_VALUE, expires_at=now + 60, now=now
            ),
            single_statement=True,
        )

    # --- migrations -----------------------------------------------------------------------------------------

    async def migrate(self) -> int:
        migrations = self.MIGRATIONS

        async def op(conn: Conn) -> int:
            await conn.execute(Q.CREATE_MIGRATIONS_TABLE)
            done = {r["version"] for r in await conn.fetch(Q.APPLIED_MIGRATIONS)}
            refuse_newer_schema(done, migrations[-1].version)
            for migration in migrations:
                if migration.version not in done:
                    await conn.run_script(migration.sql)
                    await conn.execute(Q.RECORD_MIGRATION, version=migration.version)
            return max(done | {m.version for m in migrations})

        return await self._write(op, lock=Lock(LockScope.MIGRATIONS), scan=True)

    async def schema_version(self) -> int:
        try:
            value = await self._read(lambda conn: conn.fetchval(Q.SCHEMA_VERSION))
        except self.MISSING_TABLE:
            return 0
        return value or 0

    # --- stories and fan-out --------------------------------------------------------------------------------

    async def fan_out_basis(self, story_id: str) -> FanOutBasis:
        async def op(conn: Conn) -> FanOutBasis:
            newest = await conn.fetchrow(Q.NEWEST_STORY_VERSION, story_id=story_id)
            existing = [delivery_from_row(r) for r in await conn.fetch(Q.DELIVERIES_OF_STORY, story_id=story_id)]
            first = await conn.fetchval(Q.FIRST_ACCEPTED, story_id=story_id)
            return FanOutBasis(None if newest is None else newest["version"], existing, first)

        return await self._read(op)

    async def fan_out(
        self, story: Story, planner: Planner, *, now: float, planner_renders: bool = False
    ) -> FanOutResult:
        content_hash = story.content_hash
        body = story.to_json()

        async def op(conn: Conn) -> FanOutResult:
            if await accepted_before(conn, story, content_hash):
                rows = await conn.fetch(Q.DELIVERIES_OF_VERSION, story_id=story.id, version=story.version)
                return FanOutResult(story.id, story.version, False, [delivery_from_row(r) for r in rows])
            await conn.execute(
                Q.INSERT_STORY,
                story_id=story.id,
                version=story.version,
                content_hash=content_hash,
                pubstatus=story.pubstatus,
                body=body,
                now=now,
            )
            existing = [delivery_from_row(r) for r in await conn.fetch(Q.DELIVERIES_OF_STORY, story_id=story.id)]
            first = await conn.fetchrow(Q.FIRST_ACCEPTED, story_id=story.id)
            first_accepted = now if first is None or first["first_accepted_at"] is None else first["first_accepted_at"]
            plan = planner(existing, first_accepted)
            transitions, new = plan_params(story, plan, now)
            if transitions:
                await conn.executemany(Q.TRANSITION_DELIVERY, transitions)
            for retract in (nd for nd in plan.new if nd.action is Action.RETRACT):
                await conn.execute(
                    Q.CANCEL_REACH_SAMPLES,
                    story_id=story.id,
                    channel=retract.channel,
                    note=f"stopped: version {story.version} retracts the story",
                    now=now,
                )
            payloads = []
            for params, nd in zip(new, plan.new, strict=True):
                delivery_id = await conn.fetchval(Q.INSERT_DELIVERY, **params)
                if nd.payload_text is not None:
                    payloads.append({"id": delivery_id, "body": nd.payload_text})
            if payloads:
                await conn.executemany(Q.SAVE_PAYLOAD, payloads)
            if not new:
                return FanOutResult(story.id, story.version, True, [])
            await conn.wake()
            rows = await conn.fetch(Q.DELIVERIES_OF_VERSION, story_id=story.id, version=story.version)
            return FanOutResult(story.id, story.version, True, [delivery_from_row(r) for r in rows])

        # A very large story (its renderings are as large, tens of MB in all) or rendering inside the transaction
        # is no brief operation.
        scan = planner_renders or len(body) > LARGE_STORY_JSON
        return await self._write(op, lock=Lock(LockScope.STORY, story.id), scan=scan)

    async def get_story(self, story_id: str, version: int | None = None) -> StoryRecord:
        if version is None:
            row = await self._read(lambda conn: conn.fetchrow(Q.NEWEST_STORY, story_id=story_id))
        else:
            row = await self._read(lambda conn: conn.fetchrow(Q.STORY_VERSION, story_id=story_id, version=version))
        if row is None:
            raise NotFound(f"story {story_id!r}" + (f" version {version}" if version else "") + " not found")
        return StoryRecord(
            Story.from_json(row["body"]), row["content_hash"], row["received_at"], row["first_accepted_at"]
        )

    # --- claiming and finishing -----------------------------------------------------------------------------

    async def claim(
        self,
        worker: str,
        *,
        now: float,
        lease_seconds: float,
        limits: dict[str, int],
        finished: Collection[int] = (),
        most: Mapping[str, int] | None = None,
    ) -> list[Claim]:
        lease = LeaseRequest(worker, now, now + lease_seconds, list(finished), dict(most or {}))
        return await self._claim_due(Q.CHANNELS_WITH_DUE_WORK, self._claim_in, limits, lease)

    async def _claim_due(
        self,
        due_query: Q,
        claim_in: Callable[..., Coroutine[Any, Any, list[C]]],
        limits: dict[str, int],
        lease: LeaseRequest,
    ) -> list[C]:
        """Claims (of deliveries or reach samples) on the channels with free slots that have due work: the common
        idle case costs one index probe per channel and no lock, no transaction. One write for all channels on a
        single-writer store; else one per channel under the channel's claim lock, so the slots counted are the slots
        claimed."""
        wanted = {channel: limit for channel, limit in limits.items() if limit > 0}
        if not wanted:
            return []
        probe, assumed = self._due_probe(wanted) if due_query is Q.CHANNELS_WITH_DUE_WORK else (list(wanted), set())
        due = await self._read(lambda conn: conn.fetch(due_query, channels=probe, now=lease.now)) if probe else []
        due_channels = {r["channel"] for r in due} | assumed
        candidates = [(channel, limit) for channel, limit in wanted.items() if channel in due_channels]
        if not candidates:
            return []
        if self.SINGLE_WRITER:
            return await self._write(functools.partial(claim_in, channels=candidates, lease=lease))
        claims: list[C] = []
        for channel, limit in candidates:
            claims += await self._write(
                functools.partial(claim_in, channels=[(channel, limit)], lease=lease),
                lock=Lock(LockScope.CLAIM, channel),
            )
        return claims

    async def _claim_in(self, conn: Conn, *, channels: list[tuple[str, int]], lease: LeaseRequest) -> list[Claim]:
        """Inside one write transaction: lease up to each channel's free slots and write each attempt row before
        anything is sent. Paused channels and the in-flight counts are read here, under the lock, so they cannot
        change between the read and the claim."""
        busy = await self._gate(conn, [channel for channel, _ in channels], lease)
        rows: list[Row] = []
        for channel, limit in channels:
            if channel not in busy:  # paused
                continue
            free = min(limit - busy[channel], lease.most.get(channel, limit))
            if free <= 0:
                continue
            taken = await conn.fetch(
                Q.CLAIM_DELIVERIES,
                channel=channel,
                now=lease.now,
                free=free,
                worker=lease.worker,
                lease_expires=lease.lease_expires,
            )
            if len(taken) == free:
                self._saturated.add(channel)
            else:
                self._saturated.discard(channel)
            rows += taken
        if not rows:
            return []
        claimed = sorted(map(delivery_from_claim_row, rows), key=lambda d: (d.due_at or 0, d.id))
        attempt_ids = await self._write_attempts(conn, rows, lease)
        claims = []
        for d in claimed:
            # Only updates and retracts act on the live post; a publish needs no receipt lookup.
            live = None if d.action is Action.PUBLISH else await self._live_receipt(conn, d)
            claims.append(Claim(d, attempt_ids[d.id], d.attempts, live))
        return claims

    def _due_probe(self, wanted: Mapping[str, int]) -> tuple[list[str], set[str]]:
        """Of the channels ``wanted``, those the due probe must ask about, and those taken as due without asking
        (their last claim filled its slots). A copy of the hint: it may change while the probe awaits."""
        saturated = self._saturated & wanted.keys()
        return [channel for channel in wanted if channel not in saturated], saturated

    @abc.abstractmethod
    async def _write_outcomes(self, conn: Conn, items: list[Completion], lost: set[int]) -> None:
        """Inside the outcome write, after the lease check: the outcome of each completion that still holds its
        lease on its delivery (``outcome_params``), and every completion's attempt closed (``attempt_params``;
        ``lost`` holds the batch positions that lost their lease)."""

    async def _write_fenced_outcomes(self, conn: Conn, items: list[Completion]) -> bool | None:
        """Inside the outcome write, with no lease read first, where the dialect's outcome statement checks the
        lease itself (owner and attempt number) and says how many rows it changed: True when every completion
        still held its lease and all are written; False when some did not (the caller rolls back and writes the
        batch again, the leases read first, to learn which). None, here: this dialect writes nothing unread (the
        leases are read first, in the same transaction)."""
        return None

    @abc.abstractmethod
    async def _write_attempts(self, conn: Conn, claimed: list[Row], lease: LeaseRequest) -> dict[int, int]:
        """The attempt rows of the deliveries ``claimed`` (the claim statement's rows): each delivery's attempt id.
        A dialect whose claim statement writes them reads the ids from its rows; another inserts them now, in the
        same transaction, before anything is sent."""

    @staticmethod
    async def _gate(conn: Conn, channels: list[str], lease: LeaseRequest) -> dict[str, int]:
        """Of ``channels``, those not paused, each with its requests in flight (``claim_gate``)."""
        rows = await conn.fetch(
            Q.CLAIM_GATE, channels=channels, now=lease.now, worker=lease.worker, finished=lease.finished
        )
        return {r["channel"]: r["busy"] for r in rows if not r["paused"]}

    @staticmethod
    async def _live_receipt(conn: Conn, d: DeliveryRecord) -> Receipt | None:
        row = await conn.fetchrow(Q.LIVE_RECEIPT, story_id=d.story_id, channel=d.channel, id=d.id)
        return live_receipt_from(row)

    async def heartbeat(self, worker: str, delivery_ids: Sequence[int], *, lease_until: float) -> list[int]:
        ids = list(delivery_ids)
        if not ids:
            return []
        rows = await self._write(
            lambda conn: conn.fetch(Q.EXTEND_LEASES, ids=ids, worker=worker, lease_until=lease_until),
            single_statement=True,
        )
        return sorted(r["id"] for r in rows)

    async def save_checkpoint(self, delivery_id: int, worker: str, checkpoint: dict[str, Any]) -> None:
        data = dumps_json(checkpoint)
        changed = await self._write(
            lambda conn: conn.execute(Q.SAVE_CHECKPOINT, checkpoint=data, id=delivery_id, worker=worker),
            single_statement=True,
        )
        if changed != 1:
            raise NotFound(f"delivery {delivery_id} is no longer leased by {worker}")

    async def complete(self, completions: Sequence[Completion]) -> list[int]:
        items = list(completions)
        if not items:
            return []
        return await self._write_outcome_op(functools.partial(self._complete_in, items=items))

    async def _write_outcome_op(self, op: Callable[..., Coroutine[Any, Any, T]]) -> T:
        """Run an operation that writes outcomes (``op(conn, fenced=...)``): fenced first, and again with the
        leases read first when the fence found a lost lease (rare: the first run rolled back)."""
        try:
            return await self._write(functools.partial(op, fenced=True))
        except _LeaseLost:
            return await self._write(functools.partial(op, fenced=False))

    async def _complete_in(self, conn: Conn, *, items: list[Completion], fenced: bool = False) -> list[int]:
        # Fenced where the dialect can, and every completion names its post: the lease checked by the outcome
        # statement itself, nothing read first.
        known = _posts_of(items) if fenced else None
        written = await self._write_fenced_outcomes(conn, items) if known is not None else None
        if written is False:
            raise _LeaseLost
        if known is not None and written:
            applied, lost, posts = items, set[int](), known
        else:
            # Which completions still hold their lease (in flight, same owner, same attempt), read once for the
            # batch inside the write transaction; then one batched statement per table.
            rows = await conn.fetch(Q.LEASE_HOLDERS, ids=[c.delivery_id for c in items])
            holders = {r["id"]: (r["lease_owner"], r["attempts"]) for r in rows}
            posts = {r["id"]: (r["story_id"], r["channel"]) for r in rows}
            applied, lost = split_by_lease(items, holders)
            await self._write_outcomes(conn, items, lost)
        if applied:
            rendered = [{"id": c.delivery_id, "body": dumps_json(c.payload.to_json())} for c in applied if c.payload]
            if rendered:
                await conn.executemany(Q.SAVE_PAYLOAD, rendered)
            await self._plan_reach(conn, [c for c in applied if c.reach_ages or c.stops_reach], posts)
        await conn.wake()  # slots are free again, and retries may be due at once
        return [items[position].delivery_id for position in sorted(lost)]

    async def complete_and_claim(
        self,
        completions: Sequence[Completion],
        worker: str,
        *,
        now: float,
        lease_seconds: float,
        limits: dict[str, int],
        finished: Collection[int] = (),
        most: Mapping[str, int] | None = None,
    ) -> CompletedAndClaimed:
        items = list(completions)
        if not items:
            claims = await self.claim(
                worker, now=now, lease_seconds=lease_seconds, limits=limits, finished=finished, most=most
            )
            return CompletedAndClaimed([], claims)
        if not self.SINGLE_WRITER:
            # Claims take one transaction per channel under its lock: the outcomes keep their own (the engine
            # writes them beside its claims on such a store: combines_outcomes_with_claims).
            lost = await self.complete(items)
            claims = await self.claim(
                worker, now=now, lease_seconds=lease_seconds, limits=limits, finished=finished, most=most
            )
            return CompletedAndClaimed(lost, claims)
        lease = LeaseRequest(worker, now, now + lease_seconds, list(finished), dict(most or {}))
        wanted = {channel: limit for channel, limit in limits.items() if limit > 0}

        async def op(conn: Conn, *, fenced: bool) -> CompletedAndClaimed:
            lost = await self._complete_in(conn, items=items, fenced=fenced)
            if not wanted:
                return CompletedAndClaimed(lost, [])
            # The due probe inside the write: it is one transaction either way.
            probe, due = self._due_probe(wanted)
            if probe:
                due |= {r["channel"] for r in await conn.fetch(Q.CHANNELS_WITH_DUE_WORK, channels=probe, now=now)}
            candidates = [(channel, limit) for channel, limit in wanted.items() if channel in due]
            claims = await self._claim_in(conn, channels=candidates, lease=lease) if candidates else []
            return CompletedAndClaimed(lost, claims)

        return await self._write_outcome_op(op)

    async def reclaim_expired(self, *, now: float) -> int:
        async def op(conn: Conn) -> int:
            samples = await conn.execute(Q.REQUEUE_EXPIRED_REACH_SAMPLES, now=now)
            ids = [r["id"] for r in await conn.fetch(Q.EXPIRED_LEASES, now=now)]
            if ids:
                await conn.execute(Q.EXPIRE_ATTEMPTS, now=now, ids=ids)
                await conn.execute(Q.REQUEUE_EXPIRED, now=now, ids=ids)
            if ids or samples:
                await conn.wake()
            return len(ids) + samples

        return await self._write(op)

    async def next_due_at(self, channels: Sequence[str], *, now: float) -> float | None:
        if not channels:
            return None
        rows = await self._read(lambda conn: conn.fetch(Q.NEXT_DUE, channels=list(channels), now=now))
        # A paused channel's work is due when the pause ends, not before.
        dues = [max(r["due"], r["paused"] or 0.0) for r in rows if r["due"] is not None]
        return min(dues) if dues else None

    async def any_claimable(self, channels: Sequence[str], *, now: float) -> bool:
        if not channels:
            return False
        return bool(await self._read(lambda conn: conn.fetchval(Q.ANY_CLAIMABLE, channels=list(channels), now=now)))

    async def count_in_flight(self, channels: Sequence[str] | None = None) -> int:
        if channels is None:
            return await self._read(lambda conn: conn.fetchval(Q.COUNT_IN_FLIGHT_ALL))
        return await self._read(lambda conn: conn.fetchval(Q.COUNT_IN_FLIGHT, channels=list(channels)))

    async def requeue(self, delivery_ids: Sequence[int], *, now: float, force: bool = False) -> list[int]:
        ids = list(delivery_ids)
        if not ids:
            return []

        async def op(conn: Conn) -> list[int]:
            rows = await conn.fetch(Q.REQUEUE, now=now, ids=ids, states=requeue_states(force), force=force)
            if rows:
                await conn.wake()
            return sorted(r["id"] for r in rows)

        return await self._write(op)

    async def mark_landed(self, delivery_id: int, receipt: Receipt, *, now: float, note: str) -> bool:
        async def op(conn: Conn) -> bool:
            number = await conn.fetchval(
                Q.MARK_LANDED, receipt=dumps_json(receipt.to_json()), note=note, now=now, id=delivery_id
            )
            if number is None:
                return False
            await conn.execute(
                Q.INSERT_OPERATOR_ATTEMPT,
                id=delivery_id,
                number=number,
                worker=OPERATOR_WORKER,
                now=now,
                outcome=LANDED_BY_OPERATOR,
                note=note,
            )
            return True

        return await self._write(op)

    @staticmethod
    async def _plan_reach(conn: Conn, completions: Sequence[Completion], posts: Mapping[int, tuple[str, str]]) -> None:
        """Inside the outcome transaction, batched like the outcomes: a delivered post's sample plan replaces the
        story's earlier plan on the channel (the newest post is the one people see); a settled retract stops it.
        ``posts``: each delivery's story and channel, read with its lease."""
        if not completions:
            return
        stops, plans = [], []
        for c in completions:
            story_id, channel = posts[c.delivery_id]
            note = (
                "stopped: the story was retracted on this channel"
                if c.stops_reach
                else f"stopped: delivery {c.delivery_id} replaced the sampled post"
            )
            stops.append({"story_id": story_id, "channel": channel, "note": note, "now": c.finished_at})
            if c.reach_ages and not c.stops_reach:
                plans += [
                    {
                        "delivery_id": c.delivery_id,
                        "story_id": story_id,
                        "channel": channel,
                        "age_seconds": float(age),
                        "due_at": c.finished_at + age,
                        "now": c.finished_at,
                    }
                    for age in c.reach_ages
                ]
        await conn.executemany(Q.CANCEL_REACH_SAMPLES, stops)
        if plans:
            await conn.executemany(Q.INSERT_REACH_SAMPLE, plans)

    # --- reach (评) ----------------------------------------------------------------------------------------

    async def claim_reach_samples(
        self,
        worker: str,
        *,
        now: float,
        lease_seconds: float,
        limits: dict[str, int],
        finished: Collection[int] = (),
    ) -> list[SampleClaim]:
        lease = LeaseRequest(worker, now, now + lease_seconds, list(finished))
        return await self._claim_due(Q.CHANNELS_WITH_DUE_SAMPLES, self._claim_samples_in, limits, lease)

    async def _claim_samples_in(
        self, conn: Conn, *, channels: list[tuple[str, int]], lease: LeaseRequest
    ) -> list[SampleClaim]:
        """Inside one write transaction: samples only take what publishing leaves. A paused channel, or one with a
        delivery due, gets none; the rest get their free slots (deliveries and samples in flight both count)."""
        busy = await self._gate(conn, [channel for channel, _ in channels], lease)
        if not busy:
            return []
        # Deliveries a worker could claim now go first; one that waits behind an earlier open delivery of its
        # story (an unknown outcome an operator must settle) holds nothing up, or the samples would starve.
        publishing = {
            channel for channel in busy if await conn.fetchval(Q.ANY_CLAIMABLE, channels=[channel], now=lease.now)
        }
        spare = [(channel, limit) for channel, limit in channels if channel in busy and channel not in publishing]
        if not spare:
            return []
        claims: list[SampleClaim] = []
        for channel, limit in spare:
            free = limit - busy[channel]
            if free <= 0:
                continue
            for row in await conn.fetch(
                Q.CLAIM_REACH_SAMPLES,
                channel=channel,
                now=lease.now,
                free=free,
                worker=lease.worker,
                lease_expires=lease.lease_expires,
            ):
                sample = sample_from_row(row)
                delivery = await conn.fetchrow(Q.GET_DELIVERY, id=sample.delivery_id)
                assert delivery is not None  # a sample references its delivery (foreign key)
                claims.append(SampleClaim(sample, delivery_from_row(delivery)))
        return sorted(claims, key=lambda c: (c.sample.due_at or 0.0, c.sample.id))

    async def heartbeat_reach_samples(self, worker: str, sample_ids: Sequence[int], *, lease_until: float) -> list[int]:
        ids = list(sample_ids)
        if not ids:
            return []
        rows = await self._write(
            lambda conn: conn.fetch(Q.EXTEND_REACH_LEASES, ids=ids, worker=worker, lease_until=lease_until),
            single_statement=True,
        )
        return sorted(r["id"] for r in rows)

    async def complete_reach_sample(self, completion: SampleCompletion) -> bool:
        c = completion
        reading = c.reading if c.state is SampleState.DONE else None

        async def op(conn: Conn) -> bool:
            row = await conn.fetchrow(
                Q.FINISH_REACH_SAMPLE,
                state=c.state.value,
                due_at=c.due_at,
                retry_step=1 if c.count_retry else 0,
                note=c.note,
                last_error=c.message if c.error_class else None,
                error_class=c.error_class,
                now=c.finished_at,
                id=c.sample_id,
                worker=c.worker,
                attempt=c.attempt_number,
            )
            if row is None:
                return False
            if reading is not None:
                reading_id = await conn.fetchval(
                    Q.INSERT_REACH_READING,
                    sample_id=c.sample_id,
                    story_id=row["story_id"],
                    channel=row["channel"],
                    observed_at=c.finished_at,
                    raw=dumps_json(dict(reading.raw)),
                )
                await conn.executemany(
                    Q.INSERT_REACH_POINT,
                    [
                        {
                            "reading_id": reading_id,
                            "story_id": row["story_id"],
                            "channel": row["channel"],
                            "metric": ReachMetric(metric).value,
                            "observed_at": c.finished_at,
                            "value": int(value),
                        }
                        for metric, value in sorted(reading.metrics.items())
                    ],
                )
            if c.state is SampleState.QUEUED:
                await conn.wake()
            return True

        return await self._write(op)

    async def next_reach_due(self, channels: Sequence[str], *, now: float) -> float | None:
        if not channels:
            return None
        rows = await self._read(lambda conn: conn.fetch(Q.NEXT_REACH_DUE, channels=list(channels), now=now))
        dues = [max(r["due"], r["paused"] or 0.0) for r in rows if r["due"] is not None]
        return min(dues) if dues else None

    async def count_reach_in_flight(self, channels: Sequence[str]) -> int:
        if not channels:
            return 0
        return await self._read(lambda conn: conn.fetchval(Q.COUNT_REACH_IN_FLIGHT, channels=list(channels)))

    async def add_reach_count(self, story_id: str, channel: str, metric: ReachMetric, *, now: float) -> bool:
        bucket = math.floor(now / REACH_BUCKET_SECONDS) * REACH_BUCKET_SECONDS

        async def op(conn: Conn) -> bool:
            live = await conn.fetchval(Q.LIVE_DELIVERY_OF_STORY, story_id=story_id, channel=channel)
            if live is None or live == Action.RETRACT.value:
                return False
            await conn.execute(
                Q.ADD_REACH_COUNT,
                story_id=story_id,
                channel=channel,
                metric=ReachMetric(metric).value,
                bucket_start=float(bucket),
                amount=1,
            )
            return True

        return await self._write(op)

    async def story_reach(self, story_id: str) -> StoryReach:
        async def op(conn: Conn) -> StoryReach:
            points = [
                ReachPoint(r["story_id"], r["channel"], ReachMetric(r["metric"]), r["observed_at"], r["value"])
                for r in await conn.fetch(Q.REACH_POINTS_OF_STORY, story_id=story_id)
            ]
            running: dict[tuple[str, str], int] = {}
            for r in await conn.fetch(Q.REACH_COUNTS_OF_STORY, story_id=story_id):
                key = (r["channel"], r["metric"])
                running[key] = running.get(key, 0) + r["value"]
                # Stamped at the bucket's start: its end may lie ahead (the bucket is still counting), and a
                # figure must not claim a time that has not come.
                points.append(
                    ReachPoint(story_id, r["channel"], ReachMetric(r["metric"]), r["bucket_start"], running[key])
                )
            readings = [
                ReachRawReading(r["story_id"], r["channel"], r["observed_at"], json.loads(r["raw"]))
                for r in await conn.fetch(Q.REACH_READINGS_OF_STORY, story_id=story_id)
            ]
            samples = [sample_from_row(r) for r in await conn.fetch(Q.REACH_SAMPLES_OF_STORY, story_id=story_id)]
            points.sort(key=lambda p: (p.channel, p.metric, p.observed_at))
            return StoryReach(points, readings, samples)

        return await self._read(op, scan=True)  # a story's readings grow with every sample taken

    async def reach_totals(self, *, since: float, until: float) -> list[ReachTotal]:
        async def op(conn: Conn) -> list[ReachTotal]:
            before: dict[tuple[str, str, str], int] = {}
            latest: dict[tuple[str, str, str], int] = {}
            for r in await conn.fetch(Q.REACH_POINTS_FOR_PERIOD, since=since, until=until):
                key = (r["story_id"], r["channel"], r["metric"])
                # Rows come oldest first: the last one seen before each end is the latest.
                latest[key] = r["value"]
                if r["observed_at"] < since:
                    before[key] = r["value"]
            grown = {key: max(value - before.get(key, 0), 0) for key, value in latest.items()}
            for r in await conn.fetch(Q.REACH_COUNTS_FOR_PERIOD, since=since, until=until):
                key = (r["story_id"], r["channel"], r["metric"])
                grown[key] = grown.get(key, 0) + int(r["value"])
            return [ReachTotal(s, ch, ReachMetric(m), v) for (s, ch, m), v in sorted(grown.items())]

        return await self._read(op, scan=True)

    async def reach_channel_totals(self) -> dict[tuple[str, ReachMetric], int]:
        async def op(conn: Conn) -> dict[tuple[str, ReachMetric], int]:
            totals: dict[tuple[str, ReachMetric], int] = {}
            for query in (Q.REACH_LATEST_BY_CHANNEL, Q.REACH_COUNTS_BY_CHANNEL):
                for r in await conn.fetch(query):
                    key = (r["channel"], ReachMetric(r["metric"]))
                    totals[key] = totals.get(key, 0) + int(r["value"])
            return totals

        return await self._read(op, scan=True)

    # --- channel state and key/value ------------------------------------------------------------------------

    async def pause_channel(self, channel: str, *, until: float, reason: str, now: float) -> None:
        await self._write(
            lambda conn: conn.execute(Q.PAUSE_CHANNEL, channel=channel, until=until, reason=reason, now=now),
            single_statement=True,
        )

    async def resume_channel(self, channel: str, *, now: float) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute(Q.RESUME_CHANNEL, channel=channel, now=now)
            await conn.wake()  # its waiting deliveries are claimable again

        await self._write(op)

    async def channel_states(self) -> dict[str, ChannelState]:
        rows = await self._read(lambda conn: conn.fetch(Q.CHANNEL_STATES))
        return {r["channel"]: ChannelState(r["channel"], r["paused_until"], r["reason"], r["updated_at"]) for r in rows}

    async def kv_get(self, key: str, *, now: float) -> str | None:
        return await self._read(lambda conn: conn.fetchval(Q.KV_GET, key=key, now=now))

    async def kv_set(self, key: str, value: str, *, expires_at: float | None, now: float) -> None:
        await self._write(
            lambda conn: conn.execute(Q.KV_SET, key=key, value=value, expires_at=expires_at, now=now),
            single_statement=True,
        )

    async def purge_expired_keys(self, *, now: float, batch: int = 500) -> int:
        purged = 0
        while True:
            # scan: a batch deletes up to `batch` keys, more than a brief operation writes.
            gone = await self._write(
                lambda conn: conn.execute(Q.PURGE_EXPIRED_KV, now=now, batch=batch), single_statement=True, scan=True
            )
            purged += gone
            if gone < batch:
                return purged
            await asyncio.sleep(0)  # between batches, other writers take the lock

    async def kv_add(self, key: str, value: str, *, expires_at: float | None, now: float) -> bool:
        changed = await self._write(
            lambda conn: conn.execute(Q.KV_ADD, key=key, value=value, expires_at=expires_at, now=now),
            single_statement=True,
        )
        return changed == 1

    # --- reading --------------------------------------------------------------------------------------------

    async def get_delivery(self, delivery_id: int) -> DeliveryRecord:
        row = await self._read(lambda conn: conn.fetchrow(Q.GET_DELIVERY, id=delivery_id))
        if row is None:
            raise NotFound(f"delivery {delivery_id} not found")
        return delivery_from_row(row)

    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRecord]:
        where = delivery_where(flt, self.IN_LIST)
        rows = await self._read(
            lambda conn: conn.fetch_rendered(Q.LIST_DELIVERIES, {"where": where.sql}, limit=flt.limit, **where.params),
            scan=True,
        )
        return [delivery_from_row(r) for r in rows]

    async def attempts(self, delivery_id: int) -> list[AttemptRecord]:
        rows = await self._read(lambda conn: conn.fetch(Q.ATTEMPTS, delivery_id=delivery_id))
        return [attempt_from_row(r) for r in rows]

    async def latest_delivered(
        self, channel: str, *, story_id: str | None = None, before_id: int | None = None, limit: int = 50
    ) -> list[DeliveryRecord]:
        if story_id is None:
            rows = await self._read(
                lambda conn: conn.fetch(Q.LATEST_DELIVERED, channel=channel, before_id=before_id, limit=limit),
                scan=True,
            )
        else:
            rows = await self._read(
                lambda conn: conn.fetch(
                    Q.LATEST_DELIVERED_STORY, channel=channel, story_id=story_id, before_id=before_id, limit=limit
                ),
                scan=True,
            )
        return [delivery_from_row(r) for r in rows]

    async def queue_depth(self) -> dict[tuple[str, State], int]:
        rows = await self._read(lambda conn: conn.fetch(Q.QUEUE_DEPTH), scan=True)
        return {(r["channel"], State(r["state"])): r["n"] for r in rows}

    async def counts(self) -> StoreCounts:
        async def op(conn: Conn) -> StoreCounts:
            by_state = {State(r["state"]): r["n"] for r in await conn.fetch(Q.COUNT_BY_STATE)}
            return StoreCounts(
                stories=await conn.fetchval(Q.COUNT_STORIES),
                story_versions=await conn.fetchval(Q.COUNT_STORY_VERSIONS),
                deliveries=sum(by_state.values()),
                attempts=await conn.fetchval(Q.COUNT_ATTEMPTS),
                by_state=by_state,
                oldest_pending_due=await conn.fetchval(Q.OLDEST_PENDING_DUE),
            )

        return await self._read(op, scan=True)

    async def recent_story_ids(self, limit: int) -> list[str]:
        rows = await self._read(lambda conn: conn.fetch(Q.RECENT_STORY_IDS, limit=limit), scan=True)
        return [r["story_id"] for r in rows]

    async def attempt_buckets(self, *, since: float, bucket_seconds: float) -> list[AttemptBucket]:
        rows = await self._read(
            lambda conn: conn.fetch(
                Q.ATTEMPT_BUCKETS,
                since=since,
                bucket_seconds=float(bucket_seconds),
                success=list(SUCCESS_OUTCOMES),
                operator=OPERATOR_WORKER,
            ),
            scan=True,
        )
        return [
            AttemptBucket(r["channel"], since + r["slot"] * bucket_seconds, r["n"], r["ok"], r["mean_ms"], r["max_ms"])
            for r in rows
        ]
