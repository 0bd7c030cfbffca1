"""Fan-out (story version -> deliveries), workers, leases and retry decisions.

The engine knows no platform: it reads the adapter's declared capabilities (actions, idempotent, lookup) and the
class of the error it raised, and decides from those alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar

import tenacity
from tenacity.wait import wait_base

from syndicate.channel import Adapter, DeliveryContext
from syndicate.config import ChannelSettings, Settings
from syndicate.delivery import (
    Action,
    AuthExpired,
    AuthRevoked,
    DeliveryError,
    OutcomeUnknown,
    Permanent,
    RateLimited,
    Receipt,
    RenderError,
    Retryable,
)
from syndicate.media import MediaFetcher
from syndicate.reach import decide_failure
from syndicate.record import record
from syndicate.store.base import (
    PAUSED_INDEFINITELY,
    PENDING_STATES,
    Claim,
    Completion,
    DeliveryFilter,
    DeliveryRecord,
    FanOutPlan,
    FanOutResult,
    NewDelivery,
    Planner,
    SampleClaim,
    SampleCompletion,
    SampleState,
    State,
    Store,
    StoreUnavailable,
    Transition,
)
from syndicate.story import FieldError, Story, StoryValidationError, error_path

if TYPE_CHECKING:
    from syndicate.metrics import Metrics

log = logging.getLogger("syndicate.engine")
T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


# --- retry schedule --------------------------------------------------------------------------------------------


class wait_proportional_jitter(wait_base):
    """Adds up to ``fraction`` of the wrapped wait, so many deliveries failing together do not retry together."""

    def __init__(self, inner: wait_base, fraction: float, rng: random.Random) -> None:
        self.inner, self.fraction, self.rng = inner, fraction, rng

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        base = self.inner(retry_state)
        return base + base * self.fraction * self.rng.random()


class RetryPolicy:
    """A channel's schedule: ``delays[0]`` is the first attempt, ``delays[n]`` the wait before attempt n+1.

    After ``len(delays)`` failed attempts the delivery has used its budget. Built on tenacity's wait strategies.
    """

    def __init__(self, delays: Sequence[float], *, jitter: float = 0.1, rng: random.Random | None = None) -> None:
        if not delays:
            raise ValueError("a retry schedule needs at least one entry")
        self.delays = tuple(float(d) for d in delays)
        chain = tenacity.wait_chain(*[tenacity.wait_fixed(d) for d in self.delays[1:]] or [tenacity.wait_none()])
        self._wait: wait_base = wait_proportional_jitter(chain, jitter, rng or random.Random())

    @property
    def max_attempts(self) -> int:
        return len(self.delays)

    def next_delay(self, failures: int) -> float | None:
        """Seconds until the next attempt after ``failures`` counted failures, or None when the budget is spent."""
        if failures >= len(self.delays):
            return None
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]  # no Retrying drives this; the wait reads only attempt_number
        state.attempt_number = failures
        return self._wait(state)


# --- fan-out planning ------------------------------------------------------------------------------------------


@dataclass
class ChannelRuntime:
    settings: ChannelSettings
    adapter: Adapter[Any, Any]
    policy: RetryPolicy

    @property
    def name(self) -> str:
        return self.settings.name


#: Past this many outcomes waiting for the store, finished attempts count against their channel's limit again, so
#: a store that keeps failing writes stops new claims instead of piling up outcomes in memory.
MAX_UNWRITTEN_OUTCOMES = 1024
#: How often a worker deletes expired shared keys (each accepted hook signature leaves one for its tolerance).
KEY_PURGE_SECONDS = 300.0


def _may_land(d: DeliveryRecord) -> bool:
    """An attempt of ``d`` may have reached the platform and nobody knows yet whether it did."""
    return d.state in (State.IN_FLIGHT, State.UNKNOWN) or (d.state in PENDING_STATES and d.reconcile)


def _may_have_story(deliveries: Sequence[DeliveryRecord]) -> bool:
    """The channel shows the story, or may: its latest settled action left it live, or one is still in the air
    (in flight, unknown, or waiting to check whether a timed-out attempt landed)."""
    live = False
    for d in deliveries:
        if d.state is State.DELIVERED:
            live = d.action is not Action.RETRACT
    in_air = any(_may_land(d) and d.action is not Action.RETRACT for d in deliveries)
    return live or in_air


#: How a plan gets one channel's new delivery: rendered there and then (``render_delivery``), or taken from the
#: renderings made before the transaction (``Engine.accept``).
RenderDelivery = Callable[["ChannelRuntime", Story, Action, float], NewDelivery]


def plan_fan_out(
    story: Story,
    existing: Sequence[DeliveryRecord],
    channels: dict[str, ChannelRuntime],
    *,
    now: float,
    first_accepted: float | None = None,
    render: RenderDelivery | None = None,
) -> FanOutPlan:
    """Which deliveries a new story version creates, and which earlier not-yet-started ones it replaces.

    Pure: the store runs it inside the fan-out transaction over the story's existing deliveries, with ``render``
    looking up renderings made before it. A pending delivery whose earlier attempt may have landed is never
    replaced: it first finds out (lookup), and the new version follows it as an update or a retract.
    """
    render = render or render_delivery
    # Every channel renders the same date for a story that gives none: when syndicate first accepted it.
    story = story.dated(now if first_accepted is None else first_accepted)
    by_channel: dict[str, list[DeliveryRecord]] = {}
    for d in existing:
        by_channel.setdefault(d.channel, []).append(d)
    due = now
    if story.embargo_until is not None:
        due = max(now, story.embargo_until.timestamp())

    targets = set(channels) if story.targets is None else set(story.targets)
    plan = FanOutPlan()
    for name, runtime in channels.items():
        history = by_channel.get(name, [])
        has_it = _may_have_story(history)
        if story.is_retraction:
            wanted = bool(history)
        else:
            # Updates reach every channel that already has the story, even if the targets changed since.
            wanted = name in targets or has_it
        for d in history:
            if d.state not in PENDING_STATES or d.reconcile:
                continue
            if story.is_retraction:
                plan.transitions.append(
                    Transition(d.id, State.CANCELED, f"canceled: version {story.version} retracts the story")
                )
            elif wanted:
                plan.transitions.append(Transition(d.id, State.SUPERSEDED, f"superseded by version {story.version}"))
            else:
                plan.transitions.append(
                    Transition(d.id, State.SUPERSEDED, f"version {story.version} no longer targets this channel")
                )
        if not wanted:
            continue
        if story.is_retraction:
            if not has_it:
                plan.new.append(
                    NewDelivery(
                        name,
                        Action.RETRACT,
                        State.SKIPPED,
                        None,
                        None,
                        "nothing to retract: the story never went out on this channel",
                    )
                )
                continue
            action = Action.RETRACT
        else:
            action = Action.UPDATE if has_it else Action.PUBLISH
        plan.new.append(render(runtime, story, action, due + runtime.policy.delays[0]))
    return plan


def render_delivery(runtime: ChannelRuntime, story: Story, action: Action, due: float) -> NewDelivery:
    adapter = runtime.adapter
    if action not in adapter.actions:
        return NewDelivery(runtime.name, action, State.SKIPPED, None, None, adapter.unsupported_reason(action))
    try:
        payload = adapter.render(story, action)
    except RenderError as exc:
        return NewDelivery(runtime.name, action, State.FAILED, None, None, f"cannot render for this channel: {exc}")
    delivery = NewDelivery(runtime.name, action, State.QUEUED, payload, due)
    _ = delivery.payload_text  # encoded here, where it renders: not inside the fan-out transaction
    return delivery


class _NotRendered(Exception):
    """Internal: the transaction's plan needs a rendering the pass before it did not make (the story's deliveries
    or first acceptance changed in between). The transaction rolls back; ``accept`` renders again outside it."""


@dataclass(frozen=True)
class _Rendered:
    """The renderings made before a fan-out transaction, for the first acceptance they were dated by."""

    first_accepted: float
    deliveries: dict[tuple[str, Action], NewDelivery]

    def lookup(self, first_accepted: float) -> RenderDelivery:
        def taken(runtime: ChannelRuntime, story: Story, action: Action, due: float) -> NewDelivery:
            made = self.deliveries.get((runtime.name, action))
            if made is None or first_accepted != self.first_accepted:
                raise _NotRendered
            return made

        return taken


#: Fan-out passes before rendering inside the transaction after all: only when the story's deliveries change
#: between every read and its transaction (workers settling them as fast as hooks arrive).
FAN_OUT_PASSES = 3
#: Threads that render stories: several, so a maximum-size story does not queue the small ones behind it.
RENDER_THREADS = 4


# --- the engine ------------------------------------------------------------------------------------------------


@record
class _Outcome:
    """What one attempt produced, before it becomes a Completion."""

    state: State
    outcome: str
    receipt: Receipt | None = None
    error: DeliveryError | None = None
    due_at: float | None = None
    count_retry: bool = False
    reconcile: bool = False
    note: str | None = None
    action: Action | None = None
    payload: Any = None


class _Park(Exception):
    """Internal: the attempt must stop without sending (unknown outcome nobody can check)."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Engine:
    """Accepts story versions and delivers them through the channels' adapters.

    One engine per process. ``run()`` claims due deliveries in batches, runs each on its channel (a channel can
    never hold more than its ``concurrency`` in flight across all workers, so a hanging channel cannot starve the
    others), renews leases, and writes outcomes in batches.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        clock: Clock | None = None,
        worker_id: str | None = None,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        processes: int = 1,
    ) -> None:
        self.settings = settings
        #: Worker processes sharing this machine's slots under one supervisor: each holds at most its share of a
        #: channel's concurrency, or the first to start would keep every slot (it reclaims a slot the moment its
        #: request ends, before another process hears the slot is free) and the others would idle.
        self.processes = max(1, processes)
        self.metrics = metrics
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.worker_id = worker_id or default_worker_id()
        rng = rng or random.Random()
        #: One fetcher for every channel's story images, so an image two channels upload is fetched once.
        self.media = MediaFetcher(settings.media)
        self.channels: dict[str, ChannelRuntime] = {
            name: ChannelRuntime(
                ch,
                ch.create_adapter(clock=self.clock.now, media=self.media),
                RetryPolicy(ch.retry, jitter=settings.engine.retry_jitter, rng=rng),
            )
            for name, ch in settings.enabled_channels.items()
        }
        self._wake = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        #: The channel of each delivery in ``_tasks``, to count the slots this worker holds without asking the store.
        self._task_channels: dict[int, str] = {}
        #: Sends in progress and when their guard runs out (loop time), and those the watchdog cancelled for it.
        self._send_deadlines: dict[asyncio.Task[Any], float] = {}
        self._overdue: set[asyncio.Task[Any]] = set()
        #: Ended attempts' outcomes waiting for the next claim to carry them (a store that combines the two).
        self._completions: list[Completion] = []
        #: Set once the dispatcher stops: from then on every outcome goes straight to the writer.
        self._stopping = False
        #: Deliveries whose attempt has ended but whose outcome is not written yet (the loop is not idle
        #: while any remain). Their rows are still in flight in the store; claims pass them so they do not count
        #: against the channel's limit: the next delivery starts as soon as a request ends, not after the write.
        #: Outcomes written apart from claims (a store that does not combine them, a claim carrying them that
        #: failed, a stopping engine), by one writer at a time that takes all queued at each turn.
        self._apart: list[Completion] = []
        self._apart_writer: asyncio.Task[None] | None = None
        self._unwritten: dict[int, int] = {}  # delivery id -> attempt id of the ended, unwritten attempt
        self._started = False
        self._render_pool: ThreadPoolExecutor | None = None
        #: The ages (seconds after delivery) a delivered post is sampled at; none when [reach] is off.
        self._reach_ages: tuple[float, ...] = settings.reach.age_seconds if settings.reach.enabled else ()
        #: The channels whose posts are sampled: their adapter reads reach back.
        self._reach_channels = [n for n, rt in self.channels.items() if rt.adapter.supports_reach and self._reach_ages]
        self._sample_tasks: dict[int, asyncio.Task[None]] = {}
        #: Samples interrupted at shutdown (or whose lease was lost), released once the attempts are drained.
        self._interrupted_samples: list[SampleCompletion] = []
        if metrics is not None:
            metrics.register_channels(self.channels)

    # lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if not self._started:
            for runtime in self.channels.values():
                await runtime.adapter.start()
            # Work enqueued or freed by other processes wakes this one at once where the store can push it.
            await self.store.subscribe(self.wake)
            self._started = True

    async def close(self) -> None:
        if self._started:
            for runtime in self.channels.values():
                await runtime.adapter.close()
            await self.media.close()
            self._started = False
        if self._render_pool is not None:
            self._render_pool.shutdown(wait=False, cancel_futures=True)
            self._render_pool = None

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def wake(self) -> None:
        """New work or a free slot: let the dispatcher look at once (no poll delay inside one process)."""
        self._wake.set()

    # accepting stories ----------------------------------------------------------------------------------------

    def check_targets(self, story: Story) -> None:
        """Every channel the story names, in ``targets`` or as an ``overrides`` key, is configured."""
        configured = f"configured: {', '.join(sorted(self.settings.channels))}"
        errors = [
            FieldError(f"targets[{i}]", f"unknown channel {name!r} ({configured})")
            for i, name in enumerate(story.targets or [])
            if name not in self.settings.channels
        ]
        errors += [
            FieldError(error_path(("overrides", name)), f"unknown channel {name!r} ({configured})")
            for name in story.overrides
            if name not in self.settings.channels
        ]
        if errors:
            raise StoryValidationError(errors)

    async def _purge_expired_keys(self, now: float) -> None:
        """The worker owns the purge (it runs wherever deliveries run, and every worker's purge is harmless)."""
        purged = await self.store.purge_expired_keys(now=now)
        if purged:
            log.info("purged %d expired keys", purged, extra={"worker": self.worker_id})
            if self.metrics is not None:
                self.metrics.keys_purged_total.inc(purged)

    async def accept(self, story: Story) -> FanOutResult:
        """Record a story version and its deliveries in one transaction (the transactional outbox).

        Rendering happens before the transaction, in the render threads: the transaction only checks the version,
        plans from what it reads and writes, so no store connection (nor the event loop, where SQLite's brief
        transactions run) waits on a renderer, and other stories' intake goes on while a large one renders."""
        self.check_targets(story)
        now = self.clock.now()
        for _ in range(FAN_OUT_PASSES):
            rendered = await self._render_ahead(story, now)
            try:
                result = await self.store.fan_out(story, self._planner(story, now, rendered), now=now)
                break
            except _NotRendered:
                continue
        else:
            log.warning("story %s: its deliveries kept changing; rendering inside the transaction", story.id)
            result = await self.store.fan_out(story, self._planner(story, now, None), now=now, planner_renders=True)
        if result.created:
            self.wake()
        return result

    def _planner(self, story: Story, now: float, rendered: _Rendered | None) -> Planner:
        def plan(existing: Sequence[DeliveryRecord], first: float) -> FanOutPlan:
            render = rendered.lookup(first) if rendered is not None else None
            return plan_fan_out(story, existing, self.channels, now=now, first_accepted=first, render=render)

        return plan

    async def _render_ahead(self, story: Story, now: float) -> _Rendered:
        basis = await self.store.fan_out_basis(story.id)
        first = now if basis.first_accepted is None else basis.first_accepted
        if basis.newest_version is not None and basis.newest_version >= story.version:
            return _Rendered(first, {})  # a re-send or a stale version: the transaction renders nothing
        if self._render_pool is None:
            self._render_pool = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="syndicate-render")
        plan = await asyncio.get_running_loop().run_in_executor(
            self._render_pool,
            functools.partial(plan_fan_out, story, basis.existing, self.channels, now=now, first_accepted=first),
        )
        return _Rendered(first, {(d.channel, d.action): d for d in plan.new})

    # running --------------------------------------------------------------------------------------------------

    async def run(
        self,
        *,
        stop: asyncio.Event | None = None,
        until_idle: bool = False,
        idle_horizon: float = 0.0,
        grace: float | None = None,
    ) -> None:
        """Deliver until ``stop`` is set (or, with ``until_idle``, until nothing is due or in flight and no retry
        is due within ``idle_horizon`` seconds).

        On stop, in-flight attempts get ``grace`` seconds (default ``[engine] shutdown_grace``) to finish; those
        still running are interrupted and go back to the queue, marked for reconciliation when they had begun
        sending. A store error never kills the loop: it is logged and retried after the poll interval.
        """
        stop = stop or asyncio.Event()
        await self.start()
        engine_cfg = self.settings.engine
        names = list(self.channels)
        heart = asyncio.create_task(self._heartbeat_loop(), name="syndicate-heartbeat")
        watchdog = asyncio.create_task(self._watchdog_loop(), name="syndicate-watchdog")
        last_reclaim = last_purge = -1e18
        try:
            while not stop.is_set():
                try:
                    now = self.clock.now()
                    if now - last_reclaim >= engine_cfg.lease_seconds / 2:
                        if await self.store.reclaim_expired(now=now):
                            log.warning("reclaimed expired leases", extra={"worker": self.worker_id})
                        last_reclaim = now
                    if now - last_purge >= KEY_PURGE_SECONDS:
                        await self._purge_expired_keys(now)
                        last_purge = now
                    self._wake.clear()
                    limits, most = self._free_limits(engine_cfg.claim_batch)
                    # Bounded, so a store that accepts claims but keeps failing writes cannot pile up outcomes.
                    finished = self._unwritten if len(self._unwritten) <= MAX_UNWRITTEN_OUTCOMES else ()
                    # Ended attempts' outcomes go in the claim's own write where the store has one writer (one
                    # commit for both); elsewhere they are written beside the claim, which counts them as free.
                    outcomes = self._take_completions()
                    try:
                        done = await self.store.complete_and_claim(
                            outcomes,
                            self.worker_id,
                            now=now,
                            lease_seconds=engine_cfg.lease_seconds,
                            limits=limits,
                            finished=list(finished),
                            most=most,
                        )
                    except BaseException:
                        # Receipts we hold are never dropped: they are written apart, retried with backoff,
                        # while the dispatcher goes on (an outcome the store refuses cannot block claiming).
                        self._write_apart(outcomes)
                        raise
                    self._written(outcomes, done.lost)
                    claims = done.claims
                    for claim in claims:
                        self._spawn(claim)
                    if claims:
                        continue
                    # Publishing went first; samples take what capacity it left (the store checks again under
                    # the claim lock: no due delivery on the channel, deliveries and samples in flight both count).
                    if self._reach_channels and await self._claim_samples(now, limits, list(finished)):
                        continue
                    if until_idle and await self._idle(names, idle_horizon):
                        break
                    # Work due now but not claimed is waiting for a free slot or an earlier action: a completion
                    # wakes us. Otherwise sleep until the next retry, re-checking at the poll interval for work
                    # other processes enqueue.
                    timeout = engine_cfg.poll_interval
                    # A channel whose slots this worker holds all can start nothing before one of them ends,
                    # which wakes us: when every channel is so, its next retry time does not matter.
                    waiting = [name for name in names if limits[name] > 0]
                    next_due = await self.store.next_due_at(waiting, now=now) if waiting else None
                    if next_due is not None and next_due > now:
                        timeout = min(timeout, next_due - self.clock.now())
                    next_sample = await self._next_sample_due(now)
                    if next_sample is not None and next_sample > now:
                        timeout = min(timeout, next_sample - self.clock.now())
                except StoreUnavailable as exc:
                    log.warning("the dispatcher waits for the store: %s", exc, extra={"worker": self.worker_id})
                    timeout = engine_cfg.poll_interval
                    # Whatever failed (a lease check, a purge, a claim), the outcomes queued meanwhile do not
                    # wait for the dispatcher to get past it: the retrying writer takes them.
                    self._write_apart(self._take_completions())
                except Exception:
                    log.exception("store error in the dispatcher; retrying", extra={"worker": self.worker_id})
                    timeout = engine_cfg.poll_interval
                    self._write_apart(self._take_completions())
                waiter = asyncio.create_task(self._wake.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
        finally:
            # From here on no claim carries outcomes: the writer takes those queued and the draining attempts'.
            self._stopping = True
            self._write_apart(self._take_completions())
            await self._drain(engine_cfg.shutdown_grace if grace is None else grace)
            await self._release_interrupted_samples()
            heart.cancel()
            watchdog.cancel()
            if self._apart_writer is not None:
                # Bounded: a store that stays down must not keep the process from stopping.
                _, unfinished = await asyncio.wait([self._apart_writer], timeout=30)
                if unfinished:
                    log.error(
                        "gave up writing %d outcomes at shutdown; their leases expire and they are reconciled",
                        len(self._unwritten),
                    )
                    self._apart_writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heart
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    def _free_limits(self, claim_batch: int) -> tuple[dict[str, int], dict[str, int] | None]:
        """Each channel's claim limit, 0 where this worker itself holds all the channel's slots (no claim there can
        succeed: the limit is global, so the store is not asked) or its share of them, with several processes.
        Other workers' slots the store counts. With several processes, also how many more this one may take (its
        share less what it holds), so that even its first claim stops at its share."""
        held = collections.Counter(
            self._task_channels[i] for i, task in self._tasks.items() if not task.done() and i in self._task_channels
        )
        limits = {}
        most: dict[str, int] | None = {} if self.processes > 1 else None
        for name, runtime in self.channels.items():
            limit = runtime.settings.concurrency
            share = -(-limit // self.processes)
            limits[name] = min(limit, claim_batch) if held[name] < share else 0
            if most is not None:
                most[name] = max(0, share - held[name])
        return limits, most

    def _spawn(self, claim: Claim) -> None:
        previous = self._tasks.get(claim.delivery.id)
        if previous is not None and not previous.done():
            # Our own earlier attempt outlived its lease (a stalled loop, a clock jump) and the delivery came back
            # to us: stop the old attempt before the new one, which starts by checking whether it landed.
            previous.cancel()
        # Its row is in flight for this new attempt, whatever an earlier attempt's unwritten outcome says.
        self._unwritten.pop(claim.delivery.id, None)
        self._task_channels[claim.delivery.id] = claim.delivery.channel
        self._tasks[claim.delivery.id] = asyncio.create_task(
            self._deliver(claim, previous), name=f"delivery-{claim.delivery.id}"
        )

    async def _idle(self, names: list[str], horizon: float) -> bool:
        if self._tasks or self._unwritten or self._sample_tasks:
            return False
        now = self.clock.now()
        await self.store.reclaim_expired(now=now)
        if await self.store.count_in_flight(names) or await self.store.any_claimable(names, now=now):
            return False
        if self._reach_channels and await self.store.count_reach_in_flight(self._reach_channels):
            return False
        next_sample = await self._next_sample_due(now)
        if next_sample is not None and next_sample <= now + horizon:
            return False
        if horizon > 0:
            next_due = await self.store.next_due_at(names, now=now)
            if next_due is not None and next_due <= now + horizon:
                return False
        return True

    async def _next_sample_due(self, now: float) -> float | None:
        if not self._reach_channels:
            return None
        return await self.store.next_reach_due(self._reach_channels, now=now)

    async def _drain(self, grace: float) -> None:
        tasks = [*self._tasks.values(), *self._sample_tasks.values()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _write(self, batch: list[Completion]) -> None:
        """Write outcomes, retrying a failing store with backoff: a receipt we hold must not be thrown away."""
        delays = iter((0.1, 0.5, 1, 2, 5, 10))
        while True:
            try:
                lost = await self.store.complete(batch)
            except StoreUnavailable as exc:
                # The store takes no writes at all (disk full): nothing else progresses either, so keep the
                # receipts until it is back rather than leave landed posts to reconciliation.
                delay = next(delays, 10)
                log.warning("could not write %d delivery outcomes: %s; retrying in %s s", len(batch), exc, delay)
            except Exception:
                next_delay = next(delays, None)
                if next_delay is None:
                    log.error("gave up writing %d outcomes; their leases expire and they are reconciled", len(batch))
                    return
                delay = next_delay
                log.exception("could not write %d delivery outcomes; retrying in %s s", len(batch), delay)
            else:
                self._log_lost(lost)
                return
            await asyncio.sleep(delay)

    @staticmethod
    def _log_lost(lost: Sequence[int]) -> None:
        for delivery_id in lost:
            log.warning("lease lost before the outcome was written", extra={"delivery_id": delivery_id})

    def _take_completions(self) -> list[Completion]:
        batch, self._completions = self._completions, []
        return batch

    def _written(self, batch: Sequence[Completion], lost: Sequence[int]) -> None:
        """These outcomes are settled (written, or lost with their lease): their slots no longer wait on them."""
        self._log_lost(lost)
        for completion in batch:
            if self._unwritten.get(completion.delivery_id) == completion.attempt_id:
                del self._unwritten[completion.delivery_id]

    def _write_apart(self, batch: list[Completion]) -> None:
        if not batch:
            return
        self._apart += batch
        if self._apart_writer is None or self._apart_writer.done():
            self._apart_writer = asyncio.create_task(self._write_apart_queue(), name="syndicate-write-outcomes")

    async def _write_apart_queue(self) -> None:
        while self._apart:
            batch, self._apart = self._apart, []
            await self._write_batch(batch)

    async def _write_batch(self, batch: list[Completion]) -> None:
        try:
            await self._write(batch)
        finally:
            self._written(batch, ())
        self.wake()

    async def _watchdog_loop(self) -> None:
        """Cancel sends past their guard (``_attempt`` turns that into OutcomeUnknown). A tenth of the shortest
        guard between scans, at most a second: the guard is ten times the channel's timeout, so this is early."""
        shortest = min((rt.settings.timeout * 10 for rt in self.channels.values()), default=10.0)
        interval = min(1.0, max(0.05, shortest / 10))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for task, deadline in list(self._send_deadlines.items()):
                # A send already being cancelled (shutdown, lost lease) is left to that cancellation.
                if deadline <= now and not task.done() and not task.cancelling():
                    del self._send_deadlines[task]
                    self._overdue.add(task)
                    task.cancel()

    async def _heartbeat_loop(self) -> None:
        lease = self.settings.engine.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            await self._heartbeat_samples(lease)
            running = {i: t for i, t in self._tasks.items() if not t.done()}
            if not running:
                continue
            try:
                held = set(
                    await self.store.heartbeat(self.worker_id, list(running), lease_until=self.clock.now() + lease)
                )
            except StoreUnavailable as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            except Exception:
                log.exception("heartbeat failed")
                continue
            for delivery_id, task in running.items():
                if delivery_id not in held and not task.done():
                    # Another worker owns it now (our lease expired): stop, it will check whether we landed.
                    log.warning("lease lost; stopping the attempt", extra={"delivery_id": delivery_id})
                    task.cancel()

    # one delivery ---------------------------------------------------------------------------------------------

    async def _deliver(self, claim: Claim, previous: asyncio.Task[None] | None = None) -> None:
        d = claim.delivery
        if previous is not None:
            await asyncio.wait([previous])
        runtime = self.channels[d.channel]
        started = self.clock.now()
        progress = _Progress()
        ctx = DeliveryContext(
            delivery_id=d.id,
            story_id=d.story_id,
            version=d.version,
            channel=d.channel,
            action=d.action,
            attempt=claim.attempt_number,
            queued_at=d.created_at,
            state=d.checkpoint,
            receipt=claim.live_receipt,
            save_checkpoint=lambda data: self.store.save_checkpoint(d.id, self.worker_id, data),
            kv_get=lambda key: self.store.kv_get(key, now=self.clock.now()),
            kv_set=lambda key, value, expires_at: self.store.kv_set(
                key, value, expires_at=expires_at, now=self.clock.now()
            ),
            kv_add=lambda key, value, expires_at: self.store.kv_add(
                key, value, expires_at=expires_at, now=self.clock.now()
            ),
        )
        outcome: _Outcome | None = None
        try:
            try:
                outcome = await self._attempt(claim, runtime, ctx, progress)
            except asyncio.CancelledError:
                outcome = _Outcome(
                    State.QUEUED,
                    "interrupted",
                    due_at=self.clock.now(),
                    reconcile=d.reconcile or progress.sending,
                    note="interrupted; it will check whether it landed before resending"
                    if d.reconcile or progress.sending
                    else "interrupted before sending",
                )
                raise
            except DeliveryError as exc:
                outcome = await self._decide(claim, runtime, exc, sent=progress.sending)
            except _Park as exc:
                outcome = _Outcome(State.UNKNOWN, "unknown", note=str(exc))
            except Exception as exc:  # an adapter bug: once it began sending, it may have landed
                log.exception("adapter raised an unexpected error", extra=_log_fields(d))
                reason = f"adapter error {type(exc).__name__}: {exc}"
                error = OutcomeUnknown(reason) if progress.sending else Retryable(reason)
                outcome = await self._decide(claim, runtime, error, sent=progress.sending)
            outcome = await self._yield_to_later(claim, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not settle the attempt; releasing the delivery", extra=_log_fields(d))
            outcome = None
        finally:
            if outcome is None:
                outcome = _Outcome(
                    State.QUEUED,
                    "released",
                    due_at=self.clock.now() + self.settings.engine.poll_interval,
                    reconcile=d.reconcile or progress.sending,
                    note="released after an internal error",
                )
            if outcome.error is not None:
                log.warning(
                    "delivery attempt failed: %s: %s",
                    type(outcome.error).__name__,
                    outcome.error.reason,
                    extra={
                        **_log_fields(d),
                        "error_class": type(outcome.error).__name__,
                        "platform_code": outcome.error.platform_code,
                    },
                )
            self._finish(claim, outcome, started)

    async def _yield_to_later(self, claim: Claim, outcome: _Outcome) -> _Outcome:
        """A publish or update that must wait again gives way when a later version or a retraction is queued
        behind it: sending it after that would post stale content, or post what was withdrawn."""
        if outcome.state not in PENDING_STATES or outcome.reconcile:
            return outcome
        replaced = await self._replaced_by_later(claim.delivery)
        if replaced is None:
            return outcome
        state, note = replaced
        return replace(outcome, state=state, due_at=None, note=note)

    async def _replaced_by_later(self, d: DeliveryRecord) -> tuple[State, str] | None:
        if d.action is Action.RETRACT:
            return None
        for later in await self.store.list_deliveries(
            DeliveryFilter(story_id=d.story_id, channels=[d.channel], after_id=d.id, limit=5)
        ):
            if later.state is State.SKIPPED:
                continue
            if later.action is Action.RETRACT:
                return State.CANCELED, f"canceled: version {later.version} retracts the story before this went out"
            return State.SUPERSEDED, f"superseded by version {later.version}"
        return None

    def _finish(self, claim: Claim, outcome: _Outcome, started: float) -> None:
        finished = self.clock.now()
        err = outcome.error
        completion = Completion(
            delivery_id=claim.delivery.id,
            attempt_id=claim.attempt_id,
            worker=self.worker_id,
            state=outcome.state,
            outcome=outcome.outcome,
            finished_at=finished,
            duration_ms=(finished - started) * 1000,
            due_at=outcome.due_at,
            receipt=outcome.receipt,
            error_class=type(err).__name__ if err else None,
            message=err.reason if err else outcome.note,
            platform_code=err.platform_code if err else None,
            count_retry=outcome.count_retry,
            reconcile=outcome.reconcile,
            note=outcome.note,
            action=outcome.action,
            payload=outcome.payload,
            attempt_number=claim.attempt_number,
            story_id=claim.delivery.story_id,
            channel=claim.delivery.channel,
            **self._reach_plan(claim, outcome),
        )
        current = asyncio.current_task()
        if self._tasks.get(claim.delivery.id) is current:
            del self._tasks[claim.delivery.id]
            self._task_channels.pop(claim.delivery.id, None)
            # Only the delivery's current attempt frees its slot: a superseded one (re-claimed under it) does not.
            self._unwritten[claim.delivery.id] = claim.attempt_id
        if self.store.combines_outcomes_with_claims and not self._stopping:
            self._completions.append(completion)  # the next claim writes it, in its own transaction
        else:
            self._write_apart([completion])
        self.wake()  # the slot is free: the dispatcher may start the next delivery before this outcome is written
        if self.metrics is not None:
            self.metrics.observe_attempt(claim.delivery.channel, outcome.outcome, finished - started)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "attempt finished: %s -> %s",
                outcome.outcome,
                outcome.state.value,
                extra={
                    "delivery_id": claim.delivery.id,
                    "story_id": claim.delivery.story_id,
                    "channel": claim.delivery.channel,
                    "action": claim.delivery.action.value,
                    "worker": self.worker_id,
                    "duration_ms": round((finished - started) * 1000, 2),
                    "error_class": type(err).__name__ if err else None,
                    "platform_code": err.platform_code if err else None,
                },
            )

    def _reach_plan(self, claim: Claim, outcome: _Outcome) -> _ReachPlan:
        """A delivered publish or update on a channel that reports reach gets its sample plan with its outcome; a
        settled retract there stops the story's samples."""
        runtime = self.channels.get(claim.delivery.channel)
        if runtime is None or not runtime.adapter.supports_reach or not self._reach_ages:
            return {}
        action = outcome.action or claim.delivery.action
        if action is Action.RETRACT:
            return {"stops_reach": outcome.state in (State.DELIVERED, State.SKIPPED)}
        if outcome.state is State.DELIVERED:
            return {"reach_ages": self._reach_ages}
        return {}

    # reach samples --------------------------------------------------------------------------------------------

    async def _claim_samples(self, now: float, limits: dict[str, int], finished: Sequence[int]) -> bool:
        claims = await self.store.claim_reach_samples(
            self.worker_id,
            now=now,
            lease_seconds=self.settings.engine.lease_seconds,
            limits={n: limits[n] for n in self._reach_channels},
            finished=list(finished),
        )
        for claim in claims:
            self._sample_tasks[claim.sample.id] = asyncio.create_task(
                self._sample(claim), name=f"reach-sample-{claim.sample.id}"
            )
        return bool(claims)

    async def _heartbeat_samples(self, lease: float) -> None:
        running = {i: t for i, t in self._sample_tasks.items() if not t.done()}
        if not running:
            return
        try:
            held = set(
                await self.store.heartbeat_reach_samples(
                    self.worker_id, list(running), lease_until=self.clock.now() + lease
                )
            )
        except Exception:
            log.exception("reach sample heartbeat failed")
            return
        for sample_id, task in running.items():
            if sample_id not in held:
                task.cancel()  # reclaimed by another worker: its reading is the one that counts

    async def _sample(self, claim: SampleClaim) -> None:
        """Read one post's figures now and write the reading (or the sample's next try) in one transaction."""
        sample = claim.sample
        runtime = self.channels[sample.channel]
        started = self.clock.now()
        extra = {"sample_id": sample.id, "story_id": sample.story_id, "channel": sample.channel}
        completion: SampleCompletion | None = None
        try:
            completion = await self._read_sample(claim, runtime)
        except asyncio.CancelledError:
            # Reading again sends nothing: an interrupted sample simply goes back to the queue, no retry spent.
            self._interrupted_samples.append(
                SampleCompletion(
                    sample.id,
                    self.worker_id,
                    sample.attempts,
                    SampleState.QUEUED,
                    finished_at=self.clock.now(),
                    outcome="interrupted",
                    due_at=self.clock.now(),
                    note="interrupted; reading again",
                )
            )
            raise
        finally:
            self._sample_tasks.pop(sample.id, None)
            if completion is not None:
                try:
                    if not await self.store.complete_reach_sample(completion):
                        log.warning("reach sample lease lost before its reading was written", extra=extra)
                except Exception:
                    log.exception(
                        "could not write the reach sample; its lease expires and it is read again", extra=extra
                    )
                if self.metrics is not None:
                    self.metrics.observe_sample(sample.channel, completion.outcome, self.clock.now() - started)
                self.wake()

    async def _read_sample(self, claim: SampleClaim, runtime: ChannelRuntime) -> SampleCompletion:
        sample, d = claim.sample, claim.delivery
        adapter = runtime.adapter

        def ended(state: SampleState, outcome: str, **kw: Any) -> SampleCompletion:
            return SampleCompletion(
                sample.id, self.worker_id, sample.attempts, state, finished_at=self.clock.now(), outcome=outcome, **kw
            )

        if sample.retry_count >= runtime.policy.max_attempts:
            return ended(
                SampleState.FAILED, "failed", note=f"gave up: {sample.retry_count} attempts ended without a reading"
            )
        if d.receipt is None:
            return ended(SampleState.FAILED, "failed", note="the sampled delivery kept no receipt: no post to read")

        async def no_progress(_: dict[str, Any]) -> None:
            raise RuntimeError("reading reach keeps no progress: it sends nothing a retry could repeat")

        ctx = DeliveryContext(
            delivery_id=d.id,
            story_id=d.story_id,
            version=d.version,
            channel=d.channel,
            action=d.action,
            attempt=sample.attempts,
            queued_at=d.created_at,
            state=d.checkpoint,
            receipt=d.receipt,
            save_checkpoint=no_progress,
            kv_get=lambda key: self.store.kv_get(key, now=self.clock.now()),
            kv_set=lambda key, value, expires_at: self.store.kv_set(
                key, value, expires_at=expires_at, now=self.clock.now()
            ),
            kv_add=lambda key, value, expires_at: self.store.kv_add(
                key, value, expires_at=expires_at, now=self.clock.now()
            ),
        )
        guard = runtime.settings.timeout * 10
        try:
            try:
                async with asyncio.timeout(guard):
                    reading = await _refreshing_auth(adapter, ctx, lambda: adapter.read_reach(ctx))
            except TimeoutError as exc:
                raise Retryable(f"no answer within {guard:g} s") from exc
            except DeliveryError:
                raise
            except Exception as exc:  # an adapter bug: a read sends nothing, so it is simply retried
                log.exception("adapter raised an unexpected error reading reach", extra={"sample_id": sample.id})
                raise Retryable(f"adapter error {type(exc).__name__}: {exc}") from exc
        except DeliveryError as exc:
            decision = decide_failure(exc, sample, runtime.policy.next_delay, now=self.clock.now())
            log.warning(
                "reach sample failed: %s: %s",
                type(exc).__name__,
                exc.reason,
                extra={"sample_id": sample.id, "story_id": sample.story_id, "channel": sample.channel},
            )
            return ended(
                decision.state,
                decision.outcome,
                due_at=decision.due_at,
                count_retry=decision.count_retry,
                error_class=type(exc).__name__,
                message=exc.reason,
                note=decision.note,
            )
        return ended(SampleState.DONE, "done", reading=reading)

    async def _release_interrupted_samples(self) -> None:
        released, self._interrupted_samples = self._interrupted_samples, []
        for completion in released:
            try:
                await self.store.complete_reach_sample(completion)
            except Exception:
                log.exception("could not release an interrupted reach sample; its lease expires")

    async def _attempt(
        self, claim: Claim, runtime: ChannelRuntime, ctx: DeliveryContext, progress: _Progress
    ) -> _Outcome:
        d = claim.delivery
        adapter = runtime.adapter
        payload = adapter.load_payload(d.payload) if d.payload is not None else None
        converted: Action | None = None
        if d.reconcile and d.retry_count >= runtime.policy.max_attempts:
            raise _Park(
                f"{d.retry_count} attempts ended without an answer (timeouts, or a worker that stopped while "
                "sending); check the platform, then `syndicate replay --force` to resend"
            )
        if d.attempts > 1 and not d.reconcile:
            # A retry of something that never landed: a version or retraction queued since replaces it.
            replaced = await self._replaced_by_later(d)
            if replaced is not None:
                return _Outcome(replaced[0], replaced[0].value, note=replaced[1])
        if d.action is not Action.PUBLISH and claim.live_receipt is None:
            if d.action is Action.RETRACT:
                return _Outcome(
                    State.SKIPPED, "skipped", note="nothing to retract: the story never landed on this channel"
                )
            # The publish this update was meant to follow never landed: the channel still needs the story.
            record = await self.store.get_story(d.story_id, d.version)
            try:
                payload = adapter.render(record.story.dated(record.first_accepted_at), Action.PUBLISH)
            except RenderError as exc:
                raise Permanent(f"cannot render for this channel: {exc}") from exc
            converted = ctx.action = Action.PUBLISH
        assert payload is not None
        guard = runtime.settings.timeout * 10

        if d.reconcile:
            if adapter.supports_lookup:
                try:
                    async with asyncio.timeout(guard):
                        found = await _refreshing_auth(adapter, ctx, lambda: adapter.lookup(payload, ctx))
                except DeliveryError as exc:
                    raise _LookupFailed(exc) from exc
                except TimeoutError as exc:
                    raise _LookupFailed(Retryable("lookup timed out")) from exc
                if found is not None:
                    return _Outcome(
                        State.DELIVERED,
                        "reconciled",
                        receipt=found,
                        action=converted,
                        payload=payload if converted else None,
                        note="an earlier attempt landed",
                    )
                # Nothing landed: a version or retraction queued since replaces it, as for a plain retry (the
                # attempt that decided so may have had its outcome lost).
                replaced = await self._replaced_by_later(d)
                if replaced is not None:
                    return _Outcome(replaced[0], replaced[0].value, note=replaced[1])
            elif not adapter.idempotent:
                raise _Park(
                    "an earlier attempt may have landed and this channel can neither look it up nor resend safely;"
                    " check the platform, then `syndicate replay --force` to resend"
                )

        progress.sending = True
        # The guard against an adapter that never returns (a drip-fed answer resets aiohttp's read timeout): the
        # watchdog cancels a send past its deadline, one scan for all of them instead of a timer per attempt.
        task = asyncio.current_task()
        assert task is not None
        self._send_deadlines[task] = asyncio.get_running_loop().time() + guard
        try:
            receipt = await _refreshing_auth(adapter, ctx, lambda: adapter.send(payload, ctx))
        except asyncio.CancelledError:
            # Only the watchdog's own cancellation becomes OutcomeUnknown: one from a shutdown or a lost lease,
            # even if it came with the watchdog's, stays a cancellation (as asyncio.timeout decides it).
            if task not in self._overdue or task.uncancel() > 0:
                raise
            raise OutcomeUnknown(f"no answer within {guard:g} s") from None
        finally:
            self._send_deadlines.pop(task, None)
            self._overdue.discard(task)
        return _Outcome(
            State.DELIVERED,
            "delivered",
            receipt=receipt,
            action=converted,
            payload=payload if converted else None,
            note="sent as publish: the earlier publish never landed" if converted else None,
        )

    async def _decide(self, claim: Claim, runtime: ChannelRuntime, exc: DeliveryError, *, sent: bool) -> _Outcome:
        d = claim.delivery
        now = self.clock.now()
        adapter = runtime.adapter
        from_lookup = isinstance(exc, _LookupFailed)
        if isinstance(exc, _LookupFailed):
            exc = exc.inner
            sent = False
        # Still unsure whether an earlier attempt landed: the next attempt must ask first.
        reconcile = d.reconcile and not sent

        if isinstance(exc, RateLimited):
            until = exc.until.timestamp()
            await self.store.pause_channel(d.channel, until=until, reason=f"rate limited: {exc.reason}", now=now)
            return _Outcome(State.RETRY_WAIT, "rate_limited", error=exc, due_at=until, reconcile=reconcile)
        if isinstance(exc, AuthRevoked):
            await self.store.pause_channel(
                d.channel,
                until=PAUSED_INDEFINITELY,
                reason=f"credentials rejected: {exc.reason} (fix the config, then `syndicate resume {d.channel}`)",
                now=now,
            )
            log.error(
                "channel %s paused: credentials rejected: %s",
                d.channel,
                exc.reason,
                extra={"delivery_id": d.id, "story_id": d.story_id, "channel": d.channel, "action": d.action.value},
            )
            return _Outcome(State.RETRY_WAIT, "auth_revoked", error=exc, due_at=now, reconcile=reconcile)
        if isinstance(exc, Permanent) and not from_lookup:
            return _Outcome(State.FAILED, "failed", error=exc, note=exc.reason)
        if isinstance(exc, OutcomeUnknown) and not from_lookup:
            if adapter.idempotent:
                reconcile = adapter.supports_lookup
            elif adapter.supports_lookup:
                reconcile = True
            else:
                return _Outcome(
                    State.UNKNOWN,
                    "unknown",
                    error=exc,
                    note="may have landed; this channel cannot look it up: check the platform, then "
                    "`syndicate replay --force` to resend",
                )
        if isinstance(exc, Retryable) and exc.pending and not from_lookup:
            wait = exc.retry_after if exc.retry_after is not None else self.settings.engine.poll_interval
            return _Outcome(State.RETRY_WAIT, "pending", error=exc, due_at=now + max(wait, 0.0), reconcile=reconcile)
        # Retryable, AuthExpired after a refresh, an unknown outcome we can reconcile, a lookup that could not
        # tell: spend one step of the schedule.
        failures = d.retry_count + 1
        delay = runtime.policy.next_delay(failures)
        retry_after = getattr(exc, "retry_after", None)
        if delay is None:
            if reconcile:
                return _Outcome(
                    State.UNKNOWN,
                    "unknown",
                    error=exc,
                    note=f"could not confirm whether it landed after {failures} attempts",
                )
            return _Outcome(State.FAILED, "failed", error=exc, note=f"gave up after {failures} attempts: {exc.reason}")
        if retry_after is not None:
            delay = max(retry_after, 0.0)
        return _Outcome(
            State.RETRY_WAIT,
            "retry",
            error=exc,
            due_at=now + delay,
            count_retry=True,
            reconcile=reconcile,
        )


async def _refreshing_auth(adapter: Adapter[Any, Any], ctx: DeliveryContext, call: Callable[[], Awaitable[T]]) -> T:
    """Run a platform call; when the token expired, refresh it once and run the call again."""
    try:
        return await call()
    except AuthExpired:
        await adapter.refresh_auth(ctx)
        return await call()


def _log_fields(d: DeliveryRecord) -> dict[str, Any]:
    """What a log record of a delivery's attempt names (made only when one is logged: most attempts log nothing)."""
    return {"delivery_id": d.id, "story_id": d.story_id, "channel": d.channel, "action": d.action.value}


class _ReachPlan(TypedDict, total=False):
    reach_ages: tuple[float, ...]
    stops_reach: bool


@dataclass
class _Progress:
    """How far an attempt got: once it began sending, an interruption may have left the post on the platform."""

    sending: bool = False


class _LookupFailed(DeliveryError):
    """Internal: the platform could not tell whether an earlier attempt landed (nothing was sent this time)."""

    def __init__(self, inner: DeliveryError) -> None:
        super().__init__(inner.reason, platform_code=inner.platform_code)
        self.inner = inner
