"""The durable outbox contract every store backend implements (SQLite and PostgreSQL), split by role: Outbox (the
queue), ChannelControl (pauses and the shared key/value), ReadModel (what status, dashboard and CLI read); Store is
their composition. ChannelDeliveries is the narrow read-only view a content-serving channel gets of its own rows.

The contract speaks in records and unix timestamps (float seconds, UTC); the caller passes ``now`` so tests can run
on a fake clock. Backends own transactions; the core owns decisions: fan-out planning is a callable the engine
passes in and the backend runs inside its transaction, so the story version and all its deliveries commit together.
"""

from __future__ import annotations

import abc
import enum
import functools
import json
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Protocol

from syndicate.delivery import Action, Payload, ReachMetric, ReachReading, Receipt, StoredPayload
from syndicate.record import record
from syndicate.story import Story


class State(enum.StrEnum):
    QUEUED = "queued"
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    RETRY_WAIT = "retry_wait"
    FAILED = "failed"
    UNKNOWN = "unknown"
    CANCELED = "canceled"
    SUPERSEDED = "superseded"
    SKIPPED = "skipped"


#: Waiting to be claimed.
PENDING_STATES = frozenset({State.QUEUED, State.RETRY_WAIT})
#: Not settled: a later action on the same story × channel waits for these.
OPEN_STATES = frozenset({State.QUEUED, State.IN_FLIGHT, State.RETRY_WAIT, State.UNKNOWN})
#: What an operator may re-queue (delivered too, with force). Superseded and canceled ones stay put: replaying
#: them would send stale content.
REPLAYABLE_STATES = frozenset({State.FAILED, State.UNKNOWN})

#: A pause with no end: revoked credentials wait for an operator's resume.
PAUSED_INDEFINITELY = 253402300799.0  # 9999-12-31T23:59:59Z


class StoreError(Exception):
    """Base of store errors callers are expected to handle."""


class StaleVersion(StoreError):
    """A version older than the newest one accepted for the story."""

    def __init__(self, story_id: str, version: int, latest: int) -> None:
        super().__init__(f"story {story_id!r}: version {version} is older than the accepted version {latest}")
        self.story_id, self.version, self.latest = story_id, version, latest


class VersionConflict(StoreError):
    """The same version was accepted before with different content."""

    def __init__(self, story_id: str, version: int) -> None:
        super().__init__(
            f"story {story_id!r}: version {version} was already accepted with different content; "
            "send the change as a new version"
        )
        self.story_id, self.version = story_id, version


class NotFound(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The store cannot write now (disk full, read-only, unreachable, locked): the operation wrote nothing and may
    be tried again once the cause is fixed. ``reason`` says what is wrong, ``fix`` what an operator does."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"the store cannot write: {reason} ({fix})")
        self.reason, self.fix = reason, fix


class SchemaTooNew(StoreError):
    """The database was migrated by a newer syndicate: running older code against it could corrupt it."""


def refuse_newer_schema(applied: set[int], known: int) -> None:
    newest = max(applied, default=0)
    if newest > known:
        raise SchemaTooNew(
            f"the database schema is version {newest}, newer than this syndicate knows ({known}): upgrade syndicate"
        )


@dataclass(frozen=True)
class StoryRecord:
    story: Story
    content_hash: str
    received_at: float
    #: When syndicate first accepted any version of the story: the date of a story that gives none.
    first_accepted_at: float

    @property
    def story_id(self) -> str:
        return self.story.id

    @property
    def version(self) -> int:
        return self.story.version


@record
class DeliveryRecord:
    id: int
    story_id: str
    version: int
    channel: str
    action: Action
    state: State
    payload: StoredPayload | None
    checkpoint: dict[str, Any]
    receipt: Receipt | None
    attempts: int
    retry_count: int
    due_at: float | None
    reconcile: bool
    lease_owner: str | None
    lease_expires: float | None
    note: str | None
    last_error: str | None
    last_error_class: str | None
    last_platform_code: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class AttemptRecord:
    id: int
    delivery_id: int
    number: int
    worker: str
    started_at: float
    finished_at: float | None
    outcome: str | None
    error_class: str | None
    message: str | None
    platform_code: str | None
    duration_ms: float | None


@dataclass(frozen=True)
class NewDelivery:
    """A delivery the fan-out plan creates: queued with a rendered payload, or settled at once (skipped)."""

    channel: str
    action: Action
    state: State
    payload: Payload[Any] | None
    due_at: float | None
    note: str | None = None

    @functools.cached_property
    def payload_text(self) -> str | None:
        """The payload as the store keeps it. Cached: the engine serialises it where it renders, outside the
        fan-out transaction, so a large payload does not hold the write lock while it is encoded."""
        return dumps_json(self.payload.to_json()) if self.payload is not None else None


@dataclass(frozen=True)
class Transition:
    """A state change the fan-out plan makes to an earlier, not-yet-started delivery (supersede, cancel)."""

    delivery_id: int
    state: State
    note: str


@dataclass(frozen=True)
class FanOutPlan:
    new: list[NewDelivery] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)


@dataclass(frozen=True)
class FanOutBasis:
    """What a story's fan-out plan depends on, read before the transaction so renderers run outside it: the
    newest accepted version, the story's deliveries and its first acceptance. Only a basis: the transaction reads
    them again and decides."""

    newest_version: int | None
    existing: list[DeliveryRecord]
    first_accepted: float | None


#: Called by the backend inside the fan-out transaction with the story's existing deliveries and the time its
#: first version was accepted (this one's, for a new story).
Planner = Callable[[Sequence[DeliveryRecord], float], FanOutPlan]


@dataclass(frozen=True)
class FanOutResult:
    story_id: str
    version: int
    #: False when the same version with the same content was already accepted (nothing new was queued).
    created: bool
    deliveries: list[DeliveryRecord]


@record
class Claim:
    """A delivery this worker now holds a lease on, with the attempt row written before any byte is sent."""

    delivery: DeliveryRecord
    attempt_id: int
    attempt_number: int
    #: Receipt of the story's live post on this channel (latest delivered publish/update, not since retracted);
    #: looked up for updates and retracts only (None for a publish).
    live_receipt: Receipt | None


@record
class CompletedAndClaimed:
    """What ``complete_and_claim`` did: the completions whose lease had been lost (not applied), and the claims."""

    lost: list[int]
    claims: list[Claim]


@record
class Completion:
    """The end of one attempt: the delivery's next state and the attempt's outcome, written in one batch."""

    delivery_id: int
    attempt_id: int
    worker: str
    state: State
    outcome: str
    finished_at: float
    duration_ms: float
    due_at: float | None = None
    receipt: Receipt | None = None
    error_class: str | None = None
    message: str | None = None
    platform_code: str | None = None
    #: This attempt used one step of the retry schedule.
    count_retry: bool = False
    #: The next attempt must first ask the platform whether this one landed.
    reconcile: bool = False
    note: str | None = None
    #: Set when the engine re-rendered the delivery (an update whose publish never landed goes out as publish).
    action: Action | None = None
    payload: Payload[Any] | None = None
    #: The claim's attempt number: fences the write, so an attempt that outlived its lease (the delivery was
    #: reclaimed and claimed again, even by the same worker) cannot overwrite the newer attempt's state.
    attempt_number: int | None = None
    #: A delivered publish or update on a channel that reports reach: the post's sample plan, the ages (seconds
    #: after ``finished_at``) at which to read its figures, written in the same transaction as the outcome so no
    #: delivered post is left without its plan. Any earlier plan of the story on the channel stops there.
    reach_ages: tuple[float, ...] = ()
    #: A retract settled on a channel that reports reach: the story's samples not yet taken there stop.
    stops_reach: bool = False
    #: The delivery's story and channel, which its reach plan is filed under; a completion without them has them
    #: read with its lease.
    story_id: str | None = None
    channel: str | None = None


@dataclass(frozen=True)
class ChannelState:
    channel: str
    paused_until: float | None
    reason: str | None
    updated_at: float

    def paused_at(self, now: float) -> bool:
        return self.paused_until is not None and self.paused_until > now


@dataclass(frozen=True)
class DeliveryFilter:
    ids: Sequence[int] | None = None
    states: Sequence[State] | None = None
    channels: Sequence[str] | None = None
    story_id: str | None = None
    since: float | None = None
    until: float | None = None
    error_classes: Sequence[str] | None = None
    #: Keyset paging: only deliveries with id greater than this.
    after_id: int | None = None
    limit: int | None = None


@dataclass(frozen=True)
class AttemptBucket:
    """Finished attempts of one channel in one time slice: what the dashboard's health chart plots."""

    channel: str
    #: Start of the slice (unix seconds): ``since + n * bucket_seconds``.
    start: float
    attempts: int
    #: Attempts whose outcome is in SUCCESS_OUTCOMES.
    succeeded: int
    mean_ms: float | None
    max_ms: float | None


#: Attempt outcomes that mean the post is on the platform.
SUCCESS_OUTCOMES = ("delivered", "reconciled")
#: The ``worker`` of attempt rows an operator wrote (``mark_landed``): not a transmission, left out of the stats.
OPERATOR_WORKER = "operator"
#: The outcome of the attempt row ``mark_landed`` writes.
LANDED_BY_OPERATOR = "landed_by_operator"


@dataclass(frozen=True)
class StoreCounts:
    stories: int
    story_versions: int
    deliveries: int
    attempts: int
    by_state: dict[State, int]
    oldest_pending_due: float | None


# --- reach (评) ----------------------------------------------------------------------------------------------------


class SampleState(enum.StrEnum):
    """A reach sample's life. A sample waiting for a retry is ``queued`` with a later ``due_at``: reading again
    is harmless (it sends nothing), so unlike a delivery it needs no state that remembers an attempt."""

    QUEUED = "queued"
    IN_FLIGHT = "in_flight"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"


#: Owned outputs (app API, page beacon) count their reads per story × channel in slices of this many seconds.
REACH_BUCKET_SECONDS = 3600.0


@dataclass(frozen=True)
class ReachSampleRecord:
    """One planned reading of one post's figures: the delivered delivery whose receipt names the post, and the
    post's age at which it is read."""

    id: int
    delivery_id: int
    story_id: str
    channel: str
    age_seconds: float
    state: SampleState
    due_at: float | None
    attempts: int
    retry_count: int
    lease_owner: str | None
    lease_expires: float | None
    note: str | None
    last_error: str | None
    last_error_class: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class SampleClaim:
    """A sample this worker now holds a lease on, with the delivery whose post it reads (its receipt)."""

    sample: ReachSampleRecord
    delivery: DeliveryRecord


@dataclass(frozen=True)
class SampleCompletion:
    """The end of one sample attempt: done with its reading, back to the queue, failed or canceled. Fenced by the
    lease owner and the attempt number like a delivery's Completion."""

    sample_id: int
    worker: str
    attempt_number: int
    state: SampleState
    finished_at: float
    #: What the attempt ended with, as the metrics count it: done, retry, rate_limited, failed, interrupted ...
    outcome: str
    due_at: float | None = None
    reading: ReachReading | None = None
    count_retry: bool = False
    error_class: str | None = None
    message: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class ReachPoint:
    """One value of the time series: a story's figure on a channel at a moment (for counted outputs, the running
    total including its bucket, stamped at the bucket's start)."""

    story_id: str
    channel: str
    metric: ReachMetric
    observed_at: float
    value: int


@dataclass(frozen=True)
class ReachRawReading:
    """A sampled reading's raw figures, under the platform's own names, as they came."""

    story_id: str
    channel: str
    observed_at: float
    raw: dict[str, int | float]


@dataclass(frozen=True)
class StoryReach:
    """A story's reach as stored: the series of every channel, the raw readings and the sample plans."""

    points: list[ReachPoint]
    readings: list[ReachRawReading]
    samples: list[ReachSampleRecord]


@dataclass(frozen=True)
class ReachTotal:
    """How much a figure of a story on a channel grew over a period."""

    story_id: str
    channel: str
    metric: ReachMetric
    value: int


def sample_from_row(row: Row) -> ReachSampleRecord:
    return ReachSampleRecord(
        id=row["id"],
        delivery_id=row["delivery_id"],
        story_id=row["story_id"],
        channel=row["channel"],
        age_seconds=row["age_seconds"],
        state=SampleState(row["state"]),
        due_at=row["due_at"],
        attempts=row["attempts"],
        retry_count=row["retry_count"],
        lease_owner=row["lease_owner"],
        lease_expires=row["lease_expires"],
        note=row["note"],
        last_error=row["last_error"],
        last_error_class=row["last_error_class"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


#: One encoder for every write: json.dumps with non-default options builds a new encoder on each call.
_STORE_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps_json(value: Any) -> str:
    """JSON as the stores keep it: compact, UTF-8 text (Chinese stays readable in the database)."""
    return _STORE_JSON.encode(value)


class Row(Protocol):
    """A result row read by column name or position: sqlite3.Row and asyncpg.Record both are one (neither is a
    Mapping)."""

    def __getitem__(self, key: str | int | slice, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


#: Column values to members by a dict lookup: calling the Enum class costs several times more, on every row.
_ACTIONS: Mapping[str, Action] = {a.value: a for a in Action}
_STATES: Mapping[str, State] = {s.value: s for s in State}


#: The columns of a delivery as every read returns it (the view delivery_rows: the table deliveries, its payload
#: joined in from payloads), named and ordered as DeliveryRecord's fields: the claim statements list them in this
#: order (a test holds both dialects to it, and the view and the tables to having no other column).
DELIVERY_COLUMNS = tuple(f.name for f in fields(DeliveryRecord))
_DELIVERY_WIDTH = len(DELIVERY_COLUMNS)


def delivery_from_row(row: Row) -> DeliveryRecord:
    """A deliveries row (sqlite3.Row or asyncpg.Record) as a record, read by column name; JSON columns decoded."""
    return _delivery(*[row[name] for name in DELIVERY_COLUMNS])


def delivery_from_claim_row(row: Row) -> DeliveryRecord:
    """A row of the claim statements, which return DELIVERY_COLUMNS in order (PostgreSQL's then its attempt's
    id): read by position. sqlite3.Row finds a name by comparing it with every column's, so the 21 lookups by name
    cost twenty times the unpacking."""
    return _delivery(*row[:_DELIVERY_WIDTH])


def _delivery(
    id: int,
    story_id: str,
    version: int,
    channel: str,
    action: str,
    state: str,
    payload: str | bytes | None,
    checkpoint: str,
    receipt: str | None,
    attempts: int,
    retry_count: int,
    due_at: float | None,
    reconcile: int,
    lease_owner: str | None,
    lease_expires: float | None,
    note: str | None,
    last_error: str | None,
    last_error_class: str | None,
    last_platform_code: str | None,
    created_at: float,
    updated_at: float,
) -> DeliveryRecord:
    return DeliveryRecord(
        id=id,
        story_id=story_id,
        version=version,
        channel=channel,
        action=_ACTIONS.get(action) or Action(action),
        state=_STATES.get(state) or State(state),
        payload=StoredPayload(payload) if payload else None,
        # Most deliveries never save a checkpoint: the column default needs no decoding.
        checkpoint={} if checkpoint == "{}" else json.loads(checkpoint),
        receipt=Receipt.from_json(json.loads(receipt)) if receipt else None,
        attempts=attempts,
        retry_count=retry_count,
        due_at=due_at,
        reconcile=bool(reconcile),
        lease_owner=lease_owner,
        lease_expires=lease_expires,
        note=note,
        last_error=last_error,
        last_error_class=last_error_class,
        last_platform_code=last_platform_code,
        created_at=created_at,
        updated_at=updated_at,
    )


def split_by_lease(
    completions: Sequence[Completion], holders: Mapping[int, tuple[str | None, int]]
) -> tuple[list[Completion], set[int]]:
    """Which completions still hold their lease, given each in-flight delivery's (lease owner, attempt number) read
    under the write lock: those to apply, and the batch positions of those that lost it (a second completion for
    the same delivery in one batch comes too late)."""
    remaining = dict(holders)
    applied: list[Completion] = []
    lost: set[int] = set()
    for position, c in enumerate(completions):
        holder = remaining.get(c.delivery_id)
        if holder is not None and holder[0] == c.worker and c.attempt_number in (None, holder[1]):
            applied.append(c)
            del remaining[c.delivery_id]
        else:
            lost.add(position)
    return applied, lost


def attempt_from_row(row: Row) -> AttemptRecord:
    return AttemptRecord(
        id=row["id"],
        delivery_id=row["delivery_id"],
        number=row["number"],
        worker=row["worker"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        outcome=row["outcome"],
        error_class=row["error_class"],
        message=row["message"],
        platform_code=row["platform_code"],
        duration_ms=row["duration_ms"],
    )


def live_receipt_from(row: Row | None) -> Receipt | None:
    """The receipt of the story's live post from its newest delivered delivery (none once retracted)."""
    if row is None or row["action"] == Action.RETRACT.value or not row["receipt"]:
        return None
    return Receipt.from_json(json.loads(row["receipt"]))


# --- the contract, split by role ---------------------------------------------------------------------------------
# Every method is one transaction; batch methods take many rows in one. Callers that need one role can be typed
# against it; Store is the composition every backend implements.


class Outbox(abc.ABC):
    """The durable queue: stories fanned out into deliveries, leased, finished, reclaimed and replayed."""

    async def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when another process enqueues or frees work. Backends without a push channel keep
        this no-op and workers fall back to the poll interval."""

    @abc.abstractmethod
    async def fan_out_basis(self, story_id: str) -> FanOutBasis:
        """The story's newest version, deliveries and first acceptance, read outside any transaction."""

    @abc.abstractmethod
    async def fan_out(
        self, story: Story, planner: Planner, *, now: float, planner_renders: bool = False
    ) -> FanOutResult:
        """Record ``story`` and the deliveries ``planner`` returns, atomically. ``planner_renders``: the planner
        renders inside the transaction (the fallback when a story's deliveries kept changing), so it is slow.

        The same version with the same content returns the existing deliveries with ``created=False``; an older
        version raises StaleVersion; the same version with other content raises VersionConflict.
        """

    @abc.abstractmethod
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
        """Lease due deliveries, at most ``limits[channel]`` in flight per channel across all workers, and at most
        ``most[channel]`` of them in this call where given (a worker's share of the slots among several).

        ``finished`` names deliveries of this worker whose attempt has ended but whose outcome is not written yet:
        their rows are still in flight but hold no request, so they do not count against the limit (read inside
        the claim's transaction, so an outcome written meanwhile is never counted twice).
        Skips paused channels and deliveries whose earlier story × channel deliveries are still open.
        """

    #: True where ``complete_and_claim`` writes outcomes and claims in one transaction (a single-writer store, where
    #: the two would queue behind each other anyway): the engine hands outcomes to its claims. Elsewhere it writes
    #: them beside the claims, concurrently, and claims count those ended attempts as free (``finished``).
    combines_outcomes_with_claims: ClassVar[bool] = False

    @abc.abstractmethod
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
        """``complete`` then ``claim``, as one write where the store has a single writer (one commit and one sync
        instead of two). The outcomes are applied first, so the slots they free are claimable at once; the outcomes
        are written even when nothing is claimed."""

    @abc.abstractmethod
    async def heartbeat(self, worker: str, delivery_ids: Sequence[int], *, lease_until: float) -> list[int]:
        """Extend this worker's leases; returns the ids it still holds (the others were reclaimed: stop them)."""

    @abc.abstractmethod
    async def save_checkpoint(self, delivery_id: int, worker: str, checkpoint: dict[str, Any]) -> None:
        """Persist a multi-step delivery's progress (only while ``worker`` holds the lease)."""

    @abc.abstractmethod
    async def complete(self, completions: Sequence[Completion]) -> list[int]:
        """Apply many attempt outcomes in one transaction; returns ids whose lease had been lost (not applied)."""

    @abc.abstractmethod
    async def reclaim_expired(self, *, now: float) -> int:
        """Expired in-flight leases go back to the queue marked for reconciliation (they may have landed). Each
        counts as a spent retry, so a delivery that keeps killing its worker ends up parked, not looping."""

    @abc.abstractmethod
    async def next_due_at(self, channels: Sequence[str], *, now: float) -> float | None:
        """When the earliest pending delivery of these channels becomes due (paused channels: when they resume)."""

    @abc.abstractmethod
    async def any_claimable(self, channels: Sequence[str], *, now: float) -> bool:
        """Whether a worker could claim a delivery right now (due, channel not paused, not blocked by earlier
        ones)."""

    @abc.abstractmethod
    async def count_in_flight(self, channels: Sequence[str] | None = None) -> int: ...

    @abc.abstractmethod
    async def requeue(self, delivery_ids: Sequence[int], *, now: float, force: bool = False) -> list[int]:
        """Operator replay: back to queued with the retry budget reset and history kept. Returns the ids re-queued
        (only replayable states; delivered too when ``force``). An ``unknown`` one first checks whether it landed
        (where the channel can look it up) unless ``force`` says to resend regardless."""

    @abc.abstractmethod
    async def mark_landed(self, delivery_id: int, receipt: Receipt, *, now: float, note: str) -> bool:
        """An operator confirms an ``unknown`` delivery did reach the platform: delivered with the operator's
        receipt, and an attempt row (worker OPERATOR_WORKER, outcome LANDED_BY_OPERATOR, message ``note``) saying
        so. False, changing nothing, when the delivery is not ``unknown`` (or does not exist)."""


class ChannelControl(abc.ABC):
    """What every worker of a channel shares: its pause, and a key/value for tokens, locks and once-only marks."""

    @abc.abstractmethod
    async def pause_channel(self, channel: str, *, until: float, reason: str, now: float) -> None:
        """Pause until ``until``; an existing longer pause is kept (two workers hitting a limit agree)."""

    @abc.abstractmethod
    async def resume_channel(self, channel: str, *, now: float) -> None: ...

    @abc.abstractmethod
    async def channel_states(self) -> dict[str, ChannelState]: ...

    @abc.abstractmethod
    async def kv_get(self, key: str, *, now: float) -> str | None:
        """A value not yet expired, else None."""

    @abc.abstractmethod
    async def kv_set(self, key: str, value: str, *, expires_at: float | None, now: float) -> None: ...

    @abc.abstractmethod
    async def purge_expired_keys(self, *, now: float, batch: int = 500) -> int:
        """Delete keys expired by ``now``, ``batch`` rows per statement until none is left; how many went."""

    @abc.abstractmethod
    async def kv_add(self, key: str, value: str, *, expires_at: float | None, now: float) -> bool:
        """Set ``key`` only if it is absent or expired (atomically); True if this call set it.

        The building block for once-only markers (a hook signature seen) and cross-process locks (token refresh).
        """


class ReadModel(abc.ABC):
    """Reads for the status API, the dashboard, the CLI and the channels that serve their own content."""

    @abc.abstractmethod
    async def get_story(self, story_id: str, version: int | None = None) -> StoryRecord:
        """A stored version (the newest when ``version`` is None); NotFound when absent."""

    @abc.abstractmethod
    async def get_delivery(self, delivery_id: int) -> DeliveryRecord: ...

    @abc.abstractmethod
    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRecord]:
        """Deliveries matching ``flt`` in id order (``since``/``until`` on updated_at)."""

    @abc.abstractmethod
    async def attempts(self, delivery_id: int) -> list[AttemptRecord]: ...

    @abc.abstractmethod
    async def latest_delivered(
        self, channel: str, *, story_id: str | None = None, before_id: int | None = None, limit: int = 50
    ) -> list[DeliveryRecord]:
        """Per story, the newest delivered delivery on ``channel`` (a retract when the story was withdrawn),
        newest first; ``before_id`` pages on. What a channel serving its own content (the app API) shows."""

    @abc.abstractmethod
    async def queue_depth(self) -> dict[tuple[str, State], int]:
        """How many deliveries each channel has in each state."""

    @abc.abstractmethod
    async def counts(self) -> StoreCounts: ...

    @abc.abstractmethod
    async def recent_story_ids(self, limit: int) -> list[str]:
        """The ids of the stories most recently received (any version), newest first: the dashboard's rows."""

    @abc.abstractmethod
    async def attempt_buckets(self, *, since: float, bucket_seconds: float) -> list[AttemptBucket]:
        """Attempts finished at or after ``since``, per channel and slice of ``bucket_seconds``, operator rows
        and skipped ones left out; ordered by channel and start. Channel health: success rate and latency."""


class ReachLog(abc.ABC):
    """Reach (评): the sample plans (leased like deliveries, claimed only from a channel's spare capacity), the
    time series they write, and the counts owned outputs add."""

    @abc.abstractmethod
    async def claim_reach_samples(
        self,
        worker: str,
        *,
        now: float,
        lease_seconds: float,
        limits: dict[str, int],
        finished: Collection[int] = (),
    ) -> list[SampleClaim]:
        """Lease due samples of channels that are not paused and have no due delivery (publishing goes first),
        each counting against ``limits[channel]`` together with the channel's deliveries in flight (``finished``:
        this worker's deliveries whose outcome is not written yet, as in ``claim``)."""

    @abc.abstractmethod
    async def heartbeat_reach_samples(self, worker: str, sample_ids: Sequence[int], *, lease_until: float) -> list[int]:
        """Extend this worker's sample leases; the ids it still holds."""

    @abc.abstractmethod
    async def complete_reach_sample(self, completion: SampleCompletion) -> bool:
        """Write a sample's outcome and, when done, its reading (the common metrics as points and the raw
        figures), in one transaction; False, writing nothing, when the lease was lost."""

    @abc.abstractmethod
    async def next_reach_due(self, channels: Sequence[str], *, now: float) -> float | None:
        """When the earliest queued sample of these channels becomes due (a paused channel's: when it resumes)."""

    @abc.abstractmethod
    async def count_reach_in_flight(self, channels: Sequence[str]) -> int: ...

    @abc.abstractmethod
    async def add_reach_count(self, story_id: str, channel: str, metric: ReachMetric, *, now: float) -> bool:
        """Count one event (a read) of an owned output in its time bucket. Only for a story the channel delivered
        and did not retract: anything else is counted nowhere (False)."""

    @abc.abstractmethod
    async def story_reach(self, story_id: str) -> StoryReach:
        """The story's series on every channel (counted outputs as running totals per bucket), oldest first."""

    @abc.abstractmethod
    async def reach_totals(self, *, since: float, until: float) -> list[ReachTotal]:
        """How much each figure grew in ``[since, until)``, per story × channel × metric: a sampled figure's
        latest value before ``until`` less its latest before ``since``; a counted one's buckets starting inside."""

    @abc.abstractmethod
    async def reach_channel_totals(self) -> dict[tuple[str, ReachMetric], int]:
        """Per channel and metric, the sum over stories of each figure's latest value (counted: every bucket)."""


class Store(Outbox, ChannelControl, ReadModel, ReachLog):
    """The outbox with its channel state, read model and reach log: what backends implement and the engine, server,
    dashboard and CLI use."""

    #: The schema version this code expects; ``migrate`` brings the database there.
    SCHEMA_VERSION: int

    @abc.abstractmethod
    async def migrate(self) -> int:
        """Apply pending migrations; return the schema version now in place."""

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def check_writable(self, *, now: float) -> None:
        """One story-sized write that changes nothing anyone reads; raises StoreUnavailable when it cannot be made.
        Readiness: a store that can be read but not written (disk full) must not receive stories."""

    def channel_view(self, channel: str) -> ChannelDeliveries:
        """The read-only view a channel serving its own content gets: its own deliveries, nothing else."""
        return ChannelDeliveries(self, channel)


class ChannelDeliveries:
    """One channel's deliveries, read-only: what a channel that serves content (the app API, feeds, the website)
    may see of the store. It holds only the read model, so it cannot write, and every read is pinned to the
    channel, so a channel never sees another channel's payloads or receipts."""

    __slots__ = ("_channel", "_read")

    def __init__(self, read: ReadModel, channel: str) -> None:
        self._read = read
        self._channel = channel

    @property
    def channel(self) -> str:
        return self._channel

    async def latest_delivered(
        self, *, story_id: str | None = None, before_id: int | None = None, limit: int = 50
    ) -> list[DeliveryRecord]:
        """Per story, this channel's newest delivered delivery, newest first (ReadModel.latest_delivered)."""
        return await self._read.latest_delivered(self._channel, story_id=story_id, before_id=before_id, limit=limit)

    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRecord]:
        """This channel's deliveries matching ``flt`` in id order; ``flt.channels`` can only narrow, never widen:
        naming other channels only, it matches nothing."""
        if flt.channels is not None and self._channel not in flt.channels:
            return []
        return await self._read.list_deliveries(replace(flt, channels=[self._channel]))


class SharedKeys:
    """The store's shared key/value (tokens, events a platform calls back with), and nothing else of the store: what
    a channel's web routes may write. Keys are shared with the channel's deliveries (``DeliveryContext.kv_*``)."""

    __slots__ = ("_control",)

    def __init__(self, control: ChannelControl) -> None:
        self._control = control

    async def kv_get(self, key: str, *, now: float) -> str | None:
        return await self._control.kv_get(key, now=now)

    async def kv_set(self, key: str, value: str, *, expires_at: float | None, now: float) -> None:
        await self._control.kv_set(key, value, expires_at=expires_at, now=now)


class ReachCounter:
    """One channel's reach counts, write-only and nothing else of the store: what an owned output that serves its
    content (the app API) uses to count a read of a story it delivered."""

    __slots__ = ("_channel", "_log")

    def __init__(self, log: ReachLog, channel: str) -> None:
        self._log = log
        self._channel = channel

    async def count(self, story_id: str, metric: ReachMetric, *, now: float) -> bool:
        """Count one ``metric`` event of ``story_id`` on this channel (ReachLog.add_reach_count)."""
        return await self._log.add_reach_count(story_id, self._channel, metric, now=now)


@dataclass(frozen=True)
class ChannelAccess:
    """What a channel's web routes get of the store (``Adapter.web_routes``): its own deliveries read-only, the
    shared keys, and its own reach counts. Never the whole store."""

    deliveries: ChannelDeliveries
    keys: SharedKeys
    reach: ReachCounter

    @classmethod
    def of(cls, store: Store, channel: str) -> ChannelAccess:
        return cls(deliveries=store.channel_view(channel), keys=SharedKeys(store), reach=ReachCounter(store, channel))
