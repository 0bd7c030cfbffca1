"""Engine decisions on a fake clock with a scripted channel: retry timing, pauses, auth, unknown outcomes, fan-out."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from pathlib import Path
from typing import Any, ClassVar

import pytest

from syndicate.channel import DeliveryContext, register
from syndicate.config import Settings
from syndicate.delivery import (
    Action,
    AuthExpired,
    AuthRevoked,
    OutcomeUnknown,
    Payload,
    Permanent,
    RateLimited,
    Receipt,
    Retryable,
)
from syndicate.engine import Engine, RetryPolicy
from syndicate.store import open_store
from syndicate.store.base import Completion, DeliveryFilter, State, Store
from syndicate.story import StoryValidationError
from tests.support import FakeClock, ScriptedAdapter, make_settings, make_story, scripted


async def drain(engine: Engine) -> None:
    await engine.run(until_idle=True)


async def only(store: Store, channel: str | None = None):
    rows = await store.list_deliveries(DeliveryFilter(channels=[channel] if channel else None))
    assert len(rows) == 1, rows
    return rows[0]


def test_retry_policy_follows_the_schedule_with_bounded_jitter() -> None:
    exact = RetryPolicy([0, 5, 300, 1800], jitter=0)
    assert [exact.next_delay(n) for n in range(1, 5)] == [5, 300, 1800, None]
    jittery = RetryPolicy([0, 5, 300], jitter=0.1, rng=random.Random(3))
    delays = [jittery.next_delay(1) for _ in range(200)]
    assert all(5 <= d <= 5.5 for d in delays)
    assert len(set(delays)) > 100  # it really varies


async def test_retry_timing_on_a_fake_clock(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    t0 = clock.now()
    settings = make_settings(tmp_path, {"c": scripted(retry=[0, 5, 300, 1800])})
    ScriptedAdapter.scripts["c"] = [Retryable("HTTP 503")] * 3 + [None]
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        await drain(engine)
        d = await only(sqlite_store)
        assert (d.state, d.attempts, d.due_at) == (State.RETRY_WAIT, 1, t0 + 5)
        assert d.last_error == "HTTP 503" and d.last_error_class == "Retryable"

        clock.advance(4.9)
        await drain(engine)
        assert (await only(sqlite_store)).attempts == 1  # not a moment early

        clock.advance(0.1)
        await drain(engine)
        d = await only(sqlite_store)
        assert (d.attempts, d.due_at) == (2, t0 + 5 + 300)

        clock.t = t0 + 305
        await drain(engine)
        d = await only(sqlite_store)
        assert (d.attempts, d.due_at) == (3, t0 + 305 + 1800)

        clock.t = t0 + 2105
        await drain(engine)
        d = await only(sqlite_store)
        assert d.state is State.DELIVERED and d.attempts == 4 and d.receipt is not None
    outcomes = [a.outcome for a in await sqlite_store.attempts(d.id)]
    assert outcomes == ["retry", "retry", "retry", "delivered"]


async def test_budget_spent_means_failed_with_reason(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted(retry=[0, 1])})
    ScriptedAdapter.scripts["c"] = [Retryable("busy"), Retryable("still busy")]
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        await drain(engine)
        clock.advance(1)
        await drain(engine)
    d = await only(sqlite_store)
    assert d.state is State.FAILED and d.attempts == 2
    assert "gave up after 2 attempts: still busy" in (d.note or "")


async def test_retry_after_overrides_the_schedule(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted(retry=[0, 5, 300])})
    ScriptedAdapter.scripts["c"] = [Retryable("busy", retry_after=42)]
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        await drain(engine)
    assert (await only(sqlite_store)).due_at == clock.now() + 42


async def test_permanent_fails_at_once(tmp_path: Path, sqlite_store: Store) -> None:
    settings = make_settings(tmp_path, {"c": scripted()})
    ScriptedAdapter.scripts["c"] = [Permanent("duplicate content", platform_code=20019)]
    async with Engine(settings, sqlite_store, clock=FakeClock()) as engine:
        await engine.accept(make_story())
        await drain(engine)
    d = await only(sqlite_store)
    assert (d.state, d.attempts, d.last_platform_code, d.note) == (State.FAILED, 1, "20019", "duplicate content")


async def test_rate_limit_pauses_the_channel_for_every_worker(tmp_path: Path) -> None:
    """Worker A hits the limit; worker B (another process in real life: its own store connection) must wait too."""
    clock = FakeClock()
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    settings = make_settings(tmp_path, {"c": scripted(), "other": scripted()}, store_url=url)
    store_a, store_b = open_store(url), open_store(url)
    await store_a.migrate()
    until = dt.datetime.fromtimestamp(clock.now() + 600, tz=dt.UTC)
    ScriptedAdapter.scripts["c"] = [RateLimited("quota", until=until, platform_code=45009)]
    try:
        async with Engine(settings, store_a, clock=clock, worker_id="A") as a:
            await a.accept(make_story(id="s1", targets=["c"]))
            await a.run(until_idle=True)
        states = await store_b.channel_states()
        assert states["c"].paused_until == until.timestamp() and "quota" in (states["c"].reason or "")
        async with Engine(settings, store_b, clock=clock, worker_id="B") as b:
            await b.accept(make_story(id="s2"))
            await b.run(until_idle=True)
            calls = [(ch, key.split(":")[0]) for ch, action, key in ScriptedAdapter.calls]
            # The healthy channel delivered; the paused one made no request at all.
            assert calls == [("c", "s1"), ("other", "s2")]
            rows = {(d.story_id, d.channel): d for d in await store_b.list_deliveries(DeliveryFilter())}
            assert rows[("s1", "c")].state is State.RETRY_WAIT and rows[("s1", "c")].retry_count == 0
            assert rows[("s2", "c")].state is State.QUEUED

            clock.t = until.timestamp()
            await b.run(until_idle=True)
        rows = await store_b.list_deliveries(DeliveryFilter(channels=["c"]))
        assert [d.state for d in rows] == [State.DELIVERED, State.DELIVERED]
    finally:
        await store_a.close()
        await store_b.close()


async def test_auth_expired_refreshes_once_and_retries_at_once(tmp_path: Path, sqlite_store: Store) -> None:
    settings = make_settings(tmp_path, {"c": scripted()})
    ScriptedAdapter.scripts["c"] = [AuthExpired("token expired", platform_code=42001)]
    async with Engine(settings, sqlite_store, clock=FakeClock()) as engine:
        await engine.accept(make_story())
        await drain(engine)
    d = await only(sqlite_store)
    assert d.state is State.DELIVERED and d.attempts == 1
    assert ScriptedAdapter.refreshes == ["c"]
    assert [c[1] for c in ScriptedAdapter.calls] == ["publish", "publish"]


async def test_auth_revoked_pauses_until_resumed_and_loses_nothing(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted()})
    ScriptedAdapter.scripts["c"] = [AuthRevoked("invalid appsecret", platform_code=40125)]
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        await drain(engine)
        d = await only(sqlite_store)
        assert d.state is State.RETRY_WAIT and d.retry_count == 0
        assert "credentials rejected" in ((await sqlite_store.channel_states())["c"].reason or "")
        clock.advance(86400 * 30)
        await drain(engine)
        assert (await only(sqlite_store)).attempts == 1  # still waiting for a human
        await sqlite_store.resume_channel("c", now=clock.now())
        await drain(engine)
    assert (await only(sqlite_store)).state is State.DELIVERED


async def test_unknown_outcome_is_reconciled_by_lookup_never_resent(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted(lookup=True, retry=[0, 1, 1])})

    # The platform took it, but our side timed out: model it by recording the landing before raising.
    async def landed_publish(payload: Payload, ctx: DeliveryContext) -> Receipt:
        ScriptedAdapter.calls.append(("c", "publish", ctx.idempotency_key))
        ScriptedAdapter.landed[ctx.idempotency_key] = Receipt("remote-9")
        raise OutcomeUnknown("read timeout after sending")

    async with Engine(settings, sqlite_store, clock=clock) as engine:
        engine.channels["c"].adapter.publish = landed_publish  # type: ignore[method-assign]
        await engine.accept(make_story())
        await drain(engine)
        d = await only(sqlite_store)
        assert d.state is State.RETRY_WAIT and d.reconcile
        clock.advance(1)
        await drain(engine)
    d = await only(sqlite_store)
    assert d.state is State.DELIVERED and d.receipt is not None and d.receipt.remote_id == "remote-9"
    assert [c[1] for c in ScriptedAdapter.calls] == ["publish", "lookup"]
    assert [a.outcome for a in await sqlite_store.attempts(d.id)] == ["retry", "reconciled"]


async def test_unknown_outcome_without_lookup_is_parked(tmp_path: Path, sqlite_store: Store) -> None:
    settings = make_settings(tmp_path, {"c": scripted()})
    ScriptedAdapter.scripts["c"] = [OutcomeUnknown("timeout after send")]
    async with Engine(settings, sqlite_store, clock=FakeClock()) as engine:
        await engine.accept(make_story())
        await drain(engine)
    d = await only(sqlite_store)
    assert d.state is State.UNKNOWN and "may have landed" in (d.note or "")
    assert len(ScriptedAdapter.calls) == 1


async def test_unknown_outcome_on_an_idempotent_channel_resends(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted(idempotent=True, retry=[0, 1])})
    ScriptedAdapter.scripts["c"] = [OutcomeUnknown("timeout after send")]
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        await drain(engine)
        clock.advance(1)
        await drain(engine)
    assert (await only(sqlite_store)).state is State.DELIVERED
    assert [c[1] for c in ScriptedAdapter.calls] == ["publish", "publish"]


async def test_update_retract_and_supersede(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted()})
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        await drain(engine)
        # v2 and v3 arrive before any worker runs: v3 supersedes v2's not-yet-started update.
        await engine.accept(make_story(version=2, headline="更新一"))
        await engine.accept(make_story(version=3, headline="更新二"))
        await drain(engine)
        await engine.accept(make_story(version=4, pubstatus="canceled"))
        await drain(engine)
    rows = await sqlite_store.list_deliveries(DeliveryFilter())
    assert [(d.version, d.action, d.state) for d in rows] == [
        (1, Action.PUBLISH, State.DELIVERED),
        (2, Action.UPDATE, State.SUPERSEDED),
        (3, Action.UPDATE, State.DELIVERED),
        (4, Action.RETRACT, State.DELIVERED),
    ]
    assert rows[1].note == "superseded by version 3"
    assert [c[1] for c in ScriptedAdapter.calls] == ["publish", "update", "retract"]


async def test_retract_cancels_a_publish_that_never_went_out(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted()})
    embargo = dt.datetime.fromtimestamp(clock.now() + 3600, tz=dt.UTC)
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story(embargo_until=embargo.isoformat()))
        await drain(engine)
        assert ScriptedAdapter.calls == []  # embargoed: nothing before it lifts
        assert (await only(sqlite_store)).due_at == embargo.timestamp()
        await engine.accept(make_story(version=2, pubstatus="canceled"))
        clock.advance(7200)
        await drain(engine)
    rows = await sqlite_store.list_deliveries(DeliveryFilter())
    assert [(d.action, d.state) for d in rows] == [(Action.PUBLISH, State.CANCELED), (Action.RETRACT, State.SKIPPED)]
    assert ScriptedAdapter.calls == []


async def test_update_whose_publish_failed_goes_out_as_publish(tmp_path: Path, sqlite_store: Store) -> None:
    """v2 arrives while v1's publish is in flight (so v2 is an update); v1 then fails: v2 must still publish."""
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted()})
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        [claim] = await sqlite_store.claim("other-worker", now=clock.now(), lease_seconds=30, limits={"c": 1})
        await engine.accept(make_story(version=2, headline="修正后的标题"))
        await sqlite_store.complete(
            [Completion(claim.delivery.id, claim.attempt_id, "other-worker", State.FAILED, "failed", clock.now(), 1.0)]
        )
        await drain(engine)
    rows = await sqlite_store.list_deliveries(DeliveryFilter())
    assert [(d.action, d.state) for d in rows] == [(Action.PUBLISH, State.FAILED), (Action.PUBLISH, State.DELIVERED)]
    assert rows[1].payload is not None and rows[1].payload.data["action"] == "publish"
    assert ScriptedAdapter.calls[0][1] == "publish"


async def test_targets_and_unsupported_actions(tmp_path: Path, sqlite_store: Store) -> None:
    settings: Settings = make_settings(tmp_path, {"a": scripted(), "b": scripted(), "off": scripted(enabled=False)})
    async with Engine(settings, sqlite_store, clock=FakeClock()) as engine:
        with pytest.raises(StoryValidationError) as info:
            await engine.accept(make_story(targets=["a", "nope"]))
        assert info.value.errors[0].path == "targets[1]" and "nope" in info.value.errors[0].problem
        result = await engine.accept(make_story(targets=["a", "off"]))
        assert [d.channel for d in result.deliveries] == ["a"]  # disabled channels get nothing

        engine.channels["a"].adapter.actions = frozenset({Action.PUBLISH})  # type: ignore[misc]
        await drain(engine)
        result = await engine.accept(make_story(version=2, headline="改", targets=["a"]))
    [d] = result.deliveries
    assert (d.action, d.state) == (Action.UPDATE, State.SKIPPED)
    assert d.note == "channel kind 'scripted' does not support update"


async def test_same_version_twice_is_no_new_work(tmp_path: Path, sqlite_store: Store) -> None:
    settings = make_settings(tmp_path, {"c": scripted()})
    async with Engine(settings, sqlite_store, clock=FakeClock()) as engine:
        first = await engine.accept(make_story())
        again = await engine.accept(make_story())
    assert first.created and not again.created
    assert [d.id for d in again.deliveries] == [d.id for d in first.deliveries]


async def test_a_pending_wait_spends_no_retry_budget(tmp_path: Path, sqlite_store: Store) -> None:
    """Still publishing / quiet hours: waits at the adapter's pace, never ends as failed for having waited."""
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted(retry=[0, 1])})
    ScriptedAdapter.scripts["c"] = [Retryable("still publishing", retry_after=30, pending=True)] * 5
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        for _ in range(5):
            await drain(engine)
            d = await only(sqlite_store)
            assert (d.state, d.retry_count, d.due_at) == (State.RETRY_WAIT, 0, clock.now() + 30)
            clock.advance(30)
        await drain(engine)
    d = await only(sqlite_store)
    assert d.state is State.DELIVERED and d.attempts == 6
    assert [a.outcome for a in await sqlite_store.attempts(d.id)][:5] == ["pending"] * 5


@register
class HeldAdapter(ScriptedAdapter):
    """A scripted channel whose sends wait until the test lets them go."""

    kind: ClassVar[str] = "held"
    release: ClassVar[asyncio.Event | None] = None

    async def publish(self, payload: Payload, ctx: DeliveryContext) -> Receipt:
        assert HeldAdapter.release is not None
        await HeldAdapter.release.wait()
        return await super().publish(payload, ctx)


async def test_a_worker_holding_every_slot_asks_the_store_nothing(
    tmp_path: Path, sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    HeldAdapter.release = asyncio.Event()
    # A long lease: no heartbeat or lease check falls inside the measured window.
    settings = make_settings(
        tmp_path, {"c": {**scripted(), "kind": "held", "concurrency": 2}}, engine={"lease_seconds": 60}
    )
    asked: list[str] = []
    for name in ("_read", "_write"):  # every store operation goes through one of these
        method = getattr(sqlite_store, name)

        def counted(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            asked.append(_name)
            return _method(*args, **kwargs)

        monkeypatch.setattr(sqlite_store, name, counted)
    async with Engine(settings, sqlite_store) as engine:
        for i in range(4):
            await engine.accept(make_story(id=f"held-{i}"))
        runner = asyncio.create_task(drain(engine))
        try:
            async with asyncio.timeout(10):
                while len(engine._tasks) < 2:  # noqa: ASYNC110 (the engine has no event for "slots taken")
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # the dispatcher settles into waiting for a slot
            before = len(asked)
            for _ in range(5):
                engine.wake()
                await asyncio.sleep(0.02)
            assert asked[before:] == []  # both slots are ours: no claim can succeed, and no retry time matters
        finally:
            HeldAdapter.release.set()
        await asyncio.wait_for(runner, timeout=10)
    counts = await sqlite_store.counts()
    assert counts.by_state == {State.DELIVERED: 4}


async def test_outcomes_a_failed_claim_carried_are_written_apart_and_nothing_is_resent(
    tmp_path: Path, sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, {"c": scripted(concurrency=4)})
    real = sqlite_store.complete_and_claim
    failed: list[int] = []

    async def failing_once(completions: Any, *args: Any, **kwargs: Any) -> Any:
        if completions and not failed:
            failed.append(len(completions))
            raise RuntimeError("the claim failed after the attempts ended")
        return await real(completions, *args, **kwargs)

    monkeypatch.setattr(sqlite_store, "complete_and_claim", failing_once)
    async with Engine(settings, sqlite_store) as engine:
        for i in range(6):
            await engine.accept(make_story(id=f"apart-{i}"))
        await drain(engine)
    assert failed  # the outcomes of that claim took the other path
    assert (await sqlite_store.counts()).by_state == {State.DELIVERED: 6}
    assert len(ScriptedAdapter.calls) == 6  # each sent once: the receipts were kept, not left to reconciliation
    for d in await sqlite_store.list_deliveries(DeliveryFilter()):
        assert [a.outcome for a in await sqlite_store.attempts(d.id)] == ["delivered"]


async def test_a_worker_among_several_processes_stops_claiming_at_its_share(
    tmp_path: Path, sqlite_store: Store
) -> None:
    """With N processes under one supervisor each holds at most ceil(concurrency / N) of a channel's slots (else the
    first would keep them all, reclaiming each the moment its request ends); alone it may hold them all."""
    settings = make_settings(tmp_path, {"c": scripted(concurrency=5)})
    for processes, share in ((1, 5), (2, 3), (3, 2), (8, 1)):
        engine = Engine(settings, sqlite_store, processes=processes)
        pending: list[asyncio.Future[None]] = []
        for held in range(6):
            limits, most = engine._free_limits(claim_batch=256)
            assert limits["c"] == (5 if held < share else 0), (processes, held)
            # Even one claim takes no more than the rest of the share (none is asked for with one process).
            assert most == (None if processes == 1 else {"c": max(0, share - held)}), (processes, held)
            pending.append(asyncio.get_running_loop().create_future())
            engine._tasks[held] = pending[-1]  # type: ignore[assignment]  # a running attempt, as far as counting goes
            engine._task_channels[held] = "c"
        for future in pending:
            future.cancel()


@register
class NeverAnswersAdapter(ScriptedAdapter):
    """A scripted channel whose first send never returns (no HTTP timeout can end it: it is not HTTP)."""

    kind: ClassVar[str] = "never-answers"

    async def publish(self, payload: Payload, ctx: DeliveryContext) -> Receipt:
        if ctx.attempt == 1:
            await asyncio.Event().wait()
        return await super().publish(payload, ctx)


async def test_a_send_that_never_returns_ends_at_its_guard_as_unknown(tmp_path: Path, sqlite_store: Store) -> None:
    # The guard is ten times the channel's timeout: 0.5 s here. Only the hanging channel's send is cut.
    settings = make_settings(
        tmp_path,
        {
            "hangs": {**scripted(timeout=0.05, retry=[0, 0]), "kind": "never-answers", "lookup": True},
            "fine": scripted(),
        },
    )
    async with Engine(settings, sqlite_store) as engine:
        await engine.accept(make_story())
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(drain(engine), timeout=10)
        took = asyncio.get_running_loop().time() - started
    hangs, fine = await only(sqlite_store, "hangs"), await only(sqlite_store, "fine")
    assert fine.state is State.DELIVERED
    # Cut at the guard, then looked up (nothing landed) and sent again: delivered on the second attempt.
    assert hangs.state is State.DELIVERED and hangs.attempts == 2
    first = (await sqlite_store.attempts(hangs.id))[0]
    assert first.error_class == "OutcomeUnknown" and first.message == "no answer within 0.5 s"
    assert 0.5 <= took < 5


@register
class CancelsSlowlyAdapter(ScriptedAdapter):
    """A send that hangs and, when cancelled, takes a moment to clean up (closing a connection, say)."""

    kind: ClassVar[str] = "cancels-slowly"

    async def publish(self, payload: Payload, ctx: DeliveryContext) -> Receipt:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # past the 0.5 s guard: the watchdog must leave this cancellation alone
            raise
        raise AssertionError("unreachable")


async def test_a_shutdown_that_cancels_a_send_is_not_taken_for_the_guard(tmp_path: Path, sqlite_store: Store) -> None:
    settings = make_settings(tmp_path, {"c": {**scripted(timeout=0.05), "kind": "cancels-slowly"}})
    async with Engine(settings, sqlite_store) as engine:
        await engine.accept(make_story())
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        await asyncio.wait_for(engine.run(stop=stop, grace=0), timeout=10)
    d = await only(sqlite_store)
    # Interrupted while sending: queued again to be looked up first, not parked as a guard timeout.
    assert d.state is State.QUEUED and d.reconcile and d.last_error_class is None, d


async def test_outcomes_are_written_while_another_store_step_keeps_failing(
    tmp_path: Path, sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import syndicate.engine as engine_module

    monkeypatch.setattr(engine_module, "KEY_PURGE_SECONDS", 0.05)
    real = sqlite_store.purge_expired_keys
    calls: list[int] = []

    async def purge(**kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("canceling statement due to lock timeout")
        return await real(**kwargs)

    monkeypatch.setattr(sqlite_store, "purge_expired_keys", purge)
    settings = make_settings(tmp_path, {"c": {**scripted(), "kind": "held"}})
    HeldAdapter.release = asyncio.Event()
    async with Engine(settings, sqlite_store) as engine:
        await engine.accept(make_story())
        stop = asyncio.Event()
        runner = asyncio.create_task(engine.run(stop=stop))
        try:
            await asyncio.sleep(0.3)  # the purge fails on every dispatcher turn from now on
            HeldAdapter.release.set()
            async with asyncio.timeout(5):
                while (await only(sqlite_store)).state is not State.DELIVERED:  # noqa: ASYNC110 (polls the store)
                    await asyncio.sleep(0.05)
        finally:
            HeldAdapter.release.set()
            stop.set()
            await runner
    assert len(calls) > 2
