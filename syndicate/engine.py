"""Fan-out (story version -> deliveries), workers, leases and retry decisions.

The engine knows no platform: it reads the adapter's declared capabilities (actions, idempotent, lookup) and the
class of the error it raised, and decides from those alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import tenacity
from tenacity.wait import wait_base

from syndicate.channel import (
    Action,
    Adapter,
    AuthExpired,
    AuthRevoked,
    DeliveryContext,
    DeliveryError,
    OutcomeUnknown,
    Permanent,
    RateLimited,
    Receipt,
    RenderError,
)
from syndicate.config import ChannelSettings, Settings
from syndicate.store.base import (
    PAUSED_INDEFINITELY,
    PENDING_STATES,
    Claim,
    Completion,
    DeliveryRecord,
    FanOutPlan,
    FanOutResult,
    NewDelivery,
    State,
    Store,
    Transition,
)
from syndicate.story import FieldError, Story, StoryValidationError

if TYPE_CHECKING:
    from syndicate.metrics import Metrics

log = logging.getLogger("syndicate.engine")


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
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = failures
        return self._wait(state)


# --- fan-out planning ------------------------------------------------------------------------------------------


@dataclass
class ChannelRuntime:
    settings: ChannelSettings
    adapter: Adapter
    policy: RetryPolicy

    @property
    def name(self) -> str:
        return self.settings.name


def _may_have_story(deliveries: Sequence[DeliveryRecord]) -> bool:
    """The channel shows the story, or may: its latest settled action left it live, or one is still in the air."""
    live = False
    for d in deliveries:
        if d.state is State.DELIVERED:
            live = d.action is not Action.RETRACT
    in_air = any(d.state in (State.IN_FLIGHT, State.UNKNOWN) and d.action is not Action.RETRACT for d in deliveries)
    return live or in_air


def plan_fan_out(
    story: Story, existing: Sequence[DeliveryRecord], channels: dict[str, ChannelRuntime], *, now: float
) -> FanOutPlan:
    """Which deliveries a new story version creates, and which earlier not-yet-started ones it replaces.

    Pure: the store runs it inside the fan-out transaction over the story's existing deliveries.
    """
    by_channel: dict[str, list[DeliveryRecord]] = {}
    for d in existing:
        by_channel.setdefault(d.channel, []).append(d)
    due = now
    if story.embargo_until is not None:
        due = max(now, story.embargo_until.timestamp())

    if story.is_retraction:
        wanted = [name for name in channels if name in by_channel]
    else:
        targets = story.targets if story.targets is not None else list(channels)
        # Updates reach every channel that already has the story, even if the targets changed since.
        wanted = [n for n in channels if n in targets or _may_have_story(by_channel.get(n, []))]

    plan = FanOutPlan()
    for name in wanted:
        runtime = channels[name]
        history = by_channel.get(name, [])
        for d in history:
            if d.state in PENDING_STATES:
                note = (
                    f"canceled: version {story.version} retracts the story before this went out"
                    if story.is_retraction
                    else f"superseded by version {story.version}"
                )
                state = State.CANCELED if story.is_retraction else State.SUPERSEDED
                plan.transitions.append(Transition(d.id, state, note))
        has_it = _may_have_story(history)
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
        plan.new.append(_render(runtime, story, action, due))
    return plan


def _render(runtime: ChannelRuntime, story: Story, action: Action, due: float) -> NewDelivery:
    adapter = runtime.adapter
    if action not in adapter.actions:
        return NewDelivery(runtime.name, action, State.SKIPPED, None, None, adapter.unsupported_reason(action))
    try:
        payload = adapter.render(story, action)
    except RenderError as exc:
        return NewDelivery(runtime.name, action, State.FAILED, None, None, f"cannot render for this channel: {exc}")
    return NewDelivery(runtime.name, action, State.QUEUED, payload, due)


# --- the engine ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
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
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.worker_id = worker_id or default_worker_id()
        rng = rng or random.Random()
        self.channels: dict[str, ChannelRuntime] = {
            name: ChannelRuntime(
                ch, ch.create_adapter(), RetryPolicy(ch.retry, jitter=settings.engine.retry_jitter, rng=rng)
            )
            for name, ch in settings.enabled_channels.items()
        }
        self._wake = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._completions: asyncio.Queue[Completion] = asyncio.Queue()
        self._started = False
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
            self._started = False

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
        if story.targets is None:
            return
        errors = [
            FieldError(
                f"targets[{i}]",
                f"unknown channel {name!r} (configured: {', '.join(sorted(self.settings.channels))})",
            )
            for i, name in enumerate(story.targets)
            if name not in self.settings.channels
        ]
        if errors:
            raise StoryValidationError(errors)

    async def accept(self, story: Story) -> FanOutResult:
        """Record a story version and its deliveries in one transaction (the transactional outbox)."""
        self.check_targets(story)
        now = self.clock.now()
        result = await self.store.fan_out(
            story, lambda existing: plan_fan_out(story, existing, self.channels, now=now), now=now
        )
        if result.created:
            self.wake()
        return result

    # running --------------------------------------------------------------------------------------------------

    async def run(
        self,
        *,
        stop: asyncio.Event | None = None,
        until_idle: bool = False,
        idle_horizon: float = 0.0,
        grace: float = 10.0,
    ) -> None:
        """Deliver until ``stop`` is set (or, with ``until_idle``, until nothing is due or in flight and no retry
        is due within ``idle_horizon`` seconds).

        On stop, in-flight attempts get ``grace`` seconds to finish; those still running are interrupted and go
        back to the queue marked for reconciliation, since they may already have reached the platform.
        """
        stop = stop or asyncio.Event()
        await self.start()
        engine_cfg = self.settings.engine
        names = list(self.channels)
        flusher = asyncio.create_task(self._flush_loop(), name="syndicate-flush")
        heart = asyncio.create_task(self._heartbeat_loop(), name="syndicate-heartbeat")
        last_reclaim = -1e18
        try:
            while not stop.is_set():
                now = self.clock.now()
                if now - last_reclaim >= engine_cfg.lease_seconds / 2:
                    if await self.store.reclaim_expired(now=now):
                        log.warning("reclaimed expired leases", extra={"worker": self.worker_id})
                    last_reclaim = now
                self._wake.clear()
                limits = {n: min(rt.settings.concurrency, engine_cfg.claim_batch) for n, rt in self.channels.items()}
                claims = await self.store.claim(
                    self.worker_id, now=now, lease_seconds=engine_cfg.lease_seconds, limits=limits
                )
                for claim in claims:
                    self._tasks[claim.delivery.id] = asyncio.create_task(
                        self._deliver(claim), name=f"delivery-{claim.delivery.id}"
                    )
                if claims:
                    continue
                if until_idle and await self._idle(names, idle_horizon):
                    break
                # Work due now but not claimed is waiting for a free slot or an earlier action: a completion
                # wakes us. Otherwise sleep until the next retry, re-checking at the poll interval for work
                # other processes enqueue.
                timeout = engine_cfg.poll_interval
                next_due = await self.store.next_due_at(names, now=now)
                if next_due is not None and next_due > now:
                    timeout = min(timeout, next_due - self.clock.now())
                waiter = asyncio.create_task(self._wake.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
        finally:
            await self._drain(grace)
            heart.cancel()
            await self._completions.join()
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            with contextlib.suppress(asyncio.CancelledError):
                await heart

    async def _idle(self, names: list[str], horizon: float) -> bool:
        if self._tasks or not self._completions.empty():
            return False
        await self._completions.join()
        now = self.clock.now()
        await self.store.reclaim_expired(now=now)
        if await self.store.count_in_flight(names) or await self.store.count_claimable(names, now=now):
            return False
        if horizon > 0:
            next_due = await self.store.next_due_at(names, now=now)
            if next_due is not None and next_due <= now + horizon:
                return False
        return True

    async def _drain(self, grace: float) -> None:
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _flush_loop(self) -> None:
        while True:
            batch = [await self._completions.get()]
            while not self._completions.empty():
                batch.append(self._completions.get_nowait())
            try:
                lost = await self.store.complete(batch)
                for delivery_id in lost:
                    log.warning("lease lost before the outcome was written", extra={"delivery_id": delivery_id})
            except Exception:
                log.exception("could not write %d delivery outcomes; their leases will expire", len(batch))
            finally:
                for _ in batch:
                    self._completions.task_done()
            self.wake()

    async def _heartbeat_loop(self) -> None:
        lease = self.settings.engine.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            if self._tasks:
                try:
                    await self.store.heartbeat(self.worker_id, list(self._tasks), lease_until=self.clock.now() + lease)
                except Exception:
                    log.exception("heartbeat failed")

    # one delivery ---------------------------------------------------------------------------------------------

    async def _deliver(self, claim: Claim) -> None:
        d = claim.delivery
        runtime = self.channels[d.channel]
        started = self.clock.now()
        ctx = DeliveryContext(
            delivery_id=d.id,
            story_id=d.story_id,
            version=d.version,
            channel=d.channel,
            action=d.action,
            attempt=claim.attempt_number,
            state=d.checkpoint,
            receipt=claim.live_receipt,
            save_checkpoint=lambda data: self.store.save_checkpoint(d.id, self.worker_id, data),
            kv_get=lambda key: self.store.kv_get(key, now=self.clock.now()),
            kv_set=lambda key, value, expires_at: self.store.kv_set(
                key, value, expires_at=expires_at, now=self.clock.now()
            ),
        )
        extra = {"delivery_id": d.id, "story_id": d.story_id, "channel": d.channel, "action": d.action.value}
        try:
            outcome = await self._attempt(claim, runtime, ctx)
        except asyncio.CancelledError:
            outcome = _Outcome(
                State.QUEUED,
                "interrupted",
                due_at=self.clock.now(),
                reconcile=True,
                note="interrupted by shutdown; checking whether it landed before resending",
            )
            self._finish(claim, outcome, started)
            raise
        except DeliveryError as exc:
            outcome = await self._decide(claim, runtime, exc, sent=not isinstance(exc, _LookupFailed))
        except _Park as exc:
            outcome = _Outcome(State.UNKNOWN, "unknown", note=str(exc))
        except Exception as exc:  # an adapter bug: it may have sent, so treat it as an unknown outcome
            log.exception("adapter raised an unexpected error", extra=extra)
            outcome = await self._decide(
                claim, runtime, OutcomeUnknown(f"adapter error {type(exc).__name__}: {exc}"), sent=True
            )
        if outcome.error is not None:
            log.warning(
                "delivery attempt failed: %s: %s",
                type(outcome.error).__name__,
                outcome.error.reason,
                extra={
                    **extra,
                    "error_class": type(outcome.error).__name__,
                    "platform_code": outcome.error.platform_code,
                },
            )
        self._finish(claim, outcome, started)

    def _finish(self, claim: Claim, outcome: _Outcome, started: float) -> None:
        finished = self.clock.now()
        err = outcome.error
        self._completions.put_nowait(
            Completion(
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
            )
        )
        self._tasks.pop(claim.delivery.id, None)
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
                    "action": (outcome.action or claim.delivery.action).value,
                    "worker": self.worker_id,
                    "duration_ms": round((finished - started) * 1000, 3),
                    "error_class": type(err).__name__ if err else None,
                    "platform_code": err.platform_code if err else None,
                },
            )

    async def _attempt(self, claim: Claim, runtime: ChannelRuntime, ctx: DeliveryContext) -> _Outcome:
        d = claim.delivery
        adapter = runtime.adapter
        payload = d.payload
        converted: Action | None = None
        if d.action is not Action.PUBLISH and claim.live_receipt is None:
            if d.action is Action.RETRACT:
                return _Outcome(
                    State.SKIPPED,
                    "skipped",
                    note="nothing to retract: the story never landed on this channel",
                )
            # The publish this update was meant to follow never landed: the channel still needs the story.
            record = await self.store.get_story(d.story_id, d.version)
            try:
                payload = adapter.render(record.story, Action.PUBLISH)
            except RenderError as exc:
                raise Permanent(f"cannot render for this channel: {exc}") from exc
            converted = ctx.action = Action.PUBLISH
        assert payload is not None
        guard = runtime.settings.timeout * 10

        if d.reconcile:
            if adapter.supports_lookup:
                try:
                    async with asyncio.timeout(guard):
                        found = await adapter.lookup(payload, ctx)
                except DeliveryError as exc:
                    raise _LookupFailed(exc) from exc
                if found is not None:
                    return _Outcome(State.DELIVERED, "reconciled", receipt=found, note="an earlier attempt landed")
            elif not adapter.idempotent:
                raise _Park(
                    "an earlier attempt may have landed and this channel can neither look it up nor resend safely;"
                    " check the platform, then replay or mark it"
                )

        async with asyncio.timeout(guard):
            try:
                receipt = await adapter.send(payload, ctx)
            except AuthExpired:
                await adapter.refresh_auth(ctx)
                receipt = await adapter.send(payload, ctx)
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
                reason=f"credentials rejected: {exc.reason} (fix the config, then resume the channel)",
                now=now,
            )
            log.error(
                "channel %s paused: credentials rejected: %s",
                d.channel,
                exc.reason,
                extra={"delivery_id": d.id, "story_id": d.story_id, "channel": d.channel, "action": d.action.value},
            )
            return _Outcome(State.RETRY_WAIT, "auth_revoked", error=exc, due_at=now, reconcile=reconcile)
        if isinstance(exc, Permanent):
            return _Outcome(State.FAILED, "failed", error=exc, note=exc.reason)
        if isinstance(exc, OutcomeUnknown):
            if adapter.idempotent:
                reconcile = adapter.supports_lookup
            elif adapter.supports_lookup:
                reconcile = True
            else:
                return _Outcome(
                    State.UNKNOWN,
                    "unknown",
                    error=exc,
                    note="may have landed; this channel cannot look it up: check the platform, then replay or mark it",
                )
        # Retryable, AuthExpired after a refresh, OutcomeUnknown we can reconcile: spend one step of the schedule.
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


class _LookupFailed(DeliveryError):
    """Internal: the platform could not tell whether an earlier attempt landed (nothing was sent this time)."""

    def __init__(self, inner: DeliveryError) -> None:
        super().__init__(inner.reason, platform_code=inner.platform_code)
        self.inner = inner
