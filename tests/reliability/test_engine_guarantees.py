"""Delivery guarantees under races found in review: maybe-landed posts, lost leases, clock jumps, late retractions,
stale replays, store errors mid-decision, narrowed targets. Each test names the scenario it guards."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from syndicate.channel import DeliveryContext
from syndicate.delivery import Action, OutcomeUnknown, Payload, Permanent, RateLimited, Receipt
from syndicate.engine import Engine
from syndicate.operations import ReplaySelection, plan_replay
from syndicate.store import open_store
from syndicate.store.base import Completion, DeliveryFilter, State
from tests.support import FakeClock, ScriptedAdapter, make_settings, make_story, scripted


@pytest.fixture(autouse=True)
def _reset():
    ScriptedAdapter.reset()


async def drain(engine):
    await asyncio.wait_for(engine.run(until_idle=True), 5)


def publishes():
    return [k for ch, a, k in ScriptedAdapter.calls if a == "publish"]


async def landed_but_timed_out(payload: Payload, ctx: DeliveryContext) -> Receipt:
    ScriptedAdapter.calls.append((ctx.channel, "publish", ctx.idempotency_key))
    ScriptedAdapter.landed[ctx.idempotency_key] = Receipt("remote-1")
    raise OutcomeUnknown("read timeout after sending")


# F1a: a publish that may have landed (retry_wait + reconcile) is "superseded" by v2 -> v2 publishes again.
async def test_F1a_update_after_unknown_publish_duplicates_the_post(tmp_path, sqlite_store):
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted(lookup=True)})
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        engine.channels["c"].adapter.publish = landed_but_timed_out
        await engine.accept(make_story())
        await drain(engine)
        v1 = (await sqlite_store.list_deliveries(DeliveryFilter()))[0]
        assert v1.state is State.RETRY_WAIT and v1.reconcile  # may have landed (it did)
        del engine.channels["c"].adapter.publish
        await engine.accept(make_story(version=2, headline="更正"))
        clock.advance(10)
        await drain(engine)
    rows = await sqlite_store.list_deliveries(DeliveryFilter())
    # the platform now shows TWO posts of the story (v1 landed, v2 was sent as a fresh publish)
    assert len(publishes()) == 1 or rows[1].action is Action.UPDATE, publishes()


# F1b: same, with a retraction: the reconciling publish is "canceled ... before this went out", the retract is
# skipped "never went out", yet the story is live on the platform.
async def test_F1b_retract_after_unknown_publish_leaves_story_live(tmp_path, sqlite_store):
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted(lookup=True)})
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        engine.channels["c"].adapter.publish = landed_but_timed_out
        await engine.accept(make_story())
        await drain(engine)
        await engine.accept(make_story(version=2, pubstatus="canceled"))
        clock.advance(10)
        await drain(engine)
    assert "story-1:1:c:publish" in ScriptedAdapter.landed  # live on the platform
    assert [c[1] for c in ScriptedAdapter.calls] != ["publish"], "retracted story was never taken down"


# F1c: same after a crash: reclaimed lease (queued + reconcile) then retraction.
async def test_F1c_retract_after_crash_reclaim_leaves_story_live(tmp_path, sqlite_store):
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted(lookup=True)})
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        assert len(await sqlite_store.claim("dead", now=clock.now(), lease_seconds=5, limits={"c": 1})) == 1
        ScriptedAdapter.landed["story-1:1:c:publish"] = Receipt("r")  # the dead worker's send landed
        assert await sqlite_store.reclaim_expired(now=clock.now() + 10) == 1
        await engine.accept(make_story(version=2, pubstatus="canceled"))
        clock.advance(10)
        await drain(engine)
    rows = await sqlite_store.list_deliveries(DeliveryFilter())
    assert rows[1].state is not State.SKIPPED, "retract skipped although the publish may have landed"


# F2: retraction arrives while the publish is in flight; the publish then fails retryably and is re-sent AFTER
# the retraction was accepted (the withdrawn story goes live, then is deleted).
async def test_F2_publish_resent_after_retraction(tmp_path, sqlite_store):
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted(retry=[0, 1])})
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        [claim] = await sqlite_store.claim("w", now=clock.now(), lease_seconds=30, limits={"c": 1})
        await engine.accept(make_story(version=2, pubstatus="canceled"))
        await sqlite_store.complete(
            [
                Completion(
                    claim.delivery.id,
                    claim.attempt_id,
                    "w",
                    State.RETRY_WAIT,
                    "retry",
                    clock.now(),
                    1.0,
                    due_at=clock.now() + 1,
                    count_retry=True,
                    error_class="Retryable",
                    message="503",
                )
            ]
        )
        clock.advance(2)
        await drain(engine)
    assert "publish" not in [c[1] for c in ScriptedAdapter.calls], "withdrawn story was published"


# F3: replaying an older failed delivery after a newer version went out re-sends stale content out of order.
async def test_F3_replay_of_older_failed_publish_sends_stale_duplicate(tmp_path, sqlite_store):
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted()})
    ScriptedAdapter.scripts["c"] = [Permanent("rejected")]
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        await drain(engine)
        await engine.accept(make_story(version=2, headline="更正"))
        await drain(engine)
        v1 = (await sqlite_store.list_deliveries(DeliveryFilter()))[0]
        plan = await plan_replay(sqlite_store, ReplaySelection(ids=[v1.id]))
        assert await sqlite_store.requeue([v1.id], now=clock.now()) == [v1.id]
        await drain(engine)
    rows = await sqlite_store.list_deliveries(DeliveryFilter())
    # A replay forced past the operator layer still never sends stale v1 after v2: it gives way at claim time.
    assert (rows[0].state, rows[0].note) == (State.SUPERSEDED, "superseded by version 2")
    # And the operator layer refuses such a replay up front, saying why.
    assert plan.replayable == [] and "stale content" in plan.refused[0][1]
    assert len(publishes()) <= 2 and publishes()[-1] != "story-1:1:c:publish", "v1 published after v2"


# F4: an exception in _decide (store hiccup while pausing the channel) leaves the delivery in_flight forever:
# the task dies without _finish, stays in _tasks, and the heartbeat keeps renewing its lease; until_idle hangs.
async def test_F4_store_error_in_decide_strands_delivery_in_flight(tmp_path, sqlite_store):
    import datetime as dt

    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted()}, engine={"lease_seconds": 0.6})
    until = dt.datetime.fromtimestamp(clock.now() + 60, tz=dt.UTC)
    ScriptedAdapter.scripts["c"] = [RateLimited("quota", until=until)]
    real = sqlite_store.pause_channel
    calls = 0

    async def flaky(*a, **kw):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.OperationalError("database is locked")
        return await real(*a, **kw)

    sqlite_store.pause_channel = flaky
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        stop = asyncio.Event()
        runner = asyncio.create_task(engine.run(stop=stop, grace=0.1))
        await asyncio.sleep(1.0)
        clock.advance(3600)  # an hour later the delivery is still "ours"
        await asyncio.sleep(0.5)
        d = (await sqlite_store.list_deliveries(DeliveryFilter()))[0]
        stop.set()
        await runner
    assert d.state is not State.IN_FLIGHT or d.lease_expires < clock.now(), "in_flight with a lease renewed forever"


# F5: lease lost (another process reclaimed it after our heartbeats were late): our heartbeat sees 0 leases held,
# yet the attempt keeps going and sends -> two sends of a non-idempotent publish.
async def test_F5_lost_lease_is_not_fenced_duplicate(tmp_path):
    clock = FakeClock()
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    settings = make_settings(tmp_path, {"c": scripted(lookup=True)}, engine={"lease_seconds": 0.3}, store_url=url)
    a_store, b_store = open_store(url), open_store(url)
    await a_store.migrate()
    gate, entered = asyncio.Event(), asyncio.Event()
    beats = []
    orig_hb, orig_claim = a_store.heartbeat, a_store.claim

    async def hb(*args, **kw):
        n = await orig_hb(*args, **kw)
        beats.append(n)
        return n

    async def claim_once(*args, **kw):  # A claims its first batch, then is too busy to claim more
        a_store.claim = lambda *a, **k: asyncio.sleep(0, result=[])
        return await orig_claim(*args, **kw)

    a_store.heartbeat, a_store.claim = hb, claim_once

    async def slow_publish(payload, ctx):
        entered.set()
        await gate.wait()
        ScriptedAdapter.calls.append((ctx.channel, "publish", ctx.idempotency_key + f"@{ctx.attempt}"))
        ScriptedAdapter.landed[ctx.idempotency_key] = Receipt("A")
        return Receipt("A")

    stop = asyncio.Event()
    runner = None
    try:
        async with Engine(settings, a_store, clock=clock, worker_id="A") as a:
            a.channels["c"].adapter.publish = slow_publish
            await a.accept(make_story())
            runner = asyncio.create_task(a.run(stop=stop, grace=2))
            await entered.wait()
            # another process decides A's lease expired (A's heartbeat was late: stalled loop / locked sqlite_store)
            assert await b_store.reclaim_expired(now=clock.now() + 1) == 1
            clock.advance(1)
            async with Engine(settings, b_store, clock=clock, worker_id="B") as b:
                await asyncio.wait_for(b.run(until_idle=True), 5)  # lookup: not landed -> B publishes
            await asyncio.sleep(0.4)  # A's heartbeat runs and learns it holds 0 leases
            gate.set()
            await asyncio.sleep(0.2)
            stop.set()
            await runner
    finally:
        gate.set()
        stop.set()
        if runner:
            await asyncio.wait_for(runner, 5)
        await a_store.close()
        await b_store.close()
    assert [] in beats  # A's heartbeat learned it no longer holds the lease...
    assert len(publishes()) == 1, "A kept sending after its heartbeat reported the lease lost"


# F6: the worker's own clock jumps (VM resume / NTP step): its dispatcher reclaims its OWN live lease, re-claims
# the same delivery (same worker id), starts a second task for it and both send.
async def test_F6_self_reclaim_runs_the_same_delivery_twice(tmp_path, sqlite_store):
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted(lookup=True)}, engine={"lease_seconds": 5})
    gate, entered = asyncio.Event(), asyncio.Event()
    n_enter = 0

    async def slow_publish(payload, ctx):
        nonlocal n_enter
        n_enter += 1
        entered.set()
        await gate.wait()
        ScriptedAdapter.calls.append((ctx.channel, "publish", ctx.idempotency_key))
        return Receipt("x")

    async with Engine(settings, sqlite_store, clock=clock) as engine:
        engine.channels["c"].adapter.publish = slow_publish
        await engine.accept(make_story())
        stop = asyncio.Event()
        runner = asyncio.create_task(engine.run(stop=stop, grace=1))
        await entered.wait()
        clock.advance(30)  # wall clock jumps past the lease
        await asyncio.sleep(0.5)
        gate.set()
        await asyncio.sleep(0.2)
        stop.set()
        await runner
    # The stale first attempt was stopped before it sent; the new one checked (lookup) and sent exactly once.
    assert n_enter == 2
    assert len(publishes()) == 1, "the same delivery was sent twice by one worker"


# F7: a lookup that raises Permanent turns a possibly-landed delivery into `failed`.
async def test_F7_permanent_from_lookup_reports_failed_though_it_may_have_landed(tmp_path, sqlite_store):
    clock = FakeClock()
    settings = make_settings(tmp_path, {"c": scripted(lookup=True)})
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        engine.channels["c"].adapter.publish = landed_but_timed_out

        async def bad_lookup(payload, ctx):
            raise Permanent("lookup endpoint refused")

        engine.channels["c"].adapter.lookup = bad_lookup
        await engine.accept(make_story())
        await drain(engine)
        clock.advance(10)
        await drain(engine)
    d = (await sqlite_store.list_deliveries(DeliveryFilter()))[0]
    assert d.state is not State.FAILED, "reported failed although the first attempt landed"


# F8: targets narrowed in v2: the not-yet-started v1 publish on the dropped channel still goes out (stale, unwanted).
async def test_F8_dropped_target_still_gets_stale_v1(tmp_path, sqlite_store):
    clock = FakeClock()
    settings = make_settings(tmp_path, {"a": scripted(), "b": scripted()})
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story(targets=["a", "b"]))
        await engine.accept(make_story(version=2, headline="改", targets=["a"]))
        await drain(engine)
    assert ("b", "publish", "story-1:1:b:publish") not in ScriptedAdapter.calls


# F9 (review of the slot-reuse change): this worker re-claims its own delivery after a clock jump; the cancelled
# old attempt finishes after the new one started. Its outcome must not mark the row as "finished" while the new
# attempt is sending, or the next claim starts a second request on a concurrency-1 channel.
async def test_F9_superseded_attempt_does_not_free_the_slot_of_its_successor(tmp_path):
    from syndicate.channel import Adapter, AdapterOptions, register

    class Blocking(Adapter):
        kind = "guarantee_blocking"
        options_model = AdapterOptions
        actions = frozenset(Action)
        idempotent = True
        supports_lookup = True
        inflight = 0
        peak = 0
        release = asyncio.Event()

        def format(self, story, action):
            return Payload({"id": story.id})

        async def publish(self, payload, ctx):
            cls = type(self)
            cls.inflight += 1
            cls.peak = max(cls.peak, cls.inflight)
            try:
                await cls.release.wait()
                return Receipt(remote_id=str(ctx.delivery_id))
            finally:
                cls.inflight -= 1

        async def lookup(self, payload, ctx):
            return None

    register(Blocking)
    from syndicate.store.sqlite import SQLiteStore

    class SlowOutcomeWrites(SQLiteStore):
        async def complete(self, completions):
            await asyncio.sleep(0.2)
            return await super().complete(completions)

    settings = make_settings(tmp_path, {"c": {"kind": "guarantee_blocking", "concurrency": 1, "timeout": 100}})
    clock = FakeClock()
    store = SlowOutcomeWrites(settings.store.url[len("sqlite:///") :])
    await store.migrate()
    stop = asyncio.Event()
    try:
        async with Engine(settings, store, clock=clock, worker_id="W") as engine:
            await engine.accept(make_story(id="s1"))
            runner = asyncio.create_task(engine.run(stop=stop, grace=0.1))
            await asyncio.sleep(0.1)
            assert Blocking.inflight == 1
            clock.advance(engine.settings.engine.lease_seconds + 1)  # the host was suspended: the lease is past
            engine.wake()
            await asyncio.sleep(0.05)  # the dispatcher reclaims s1 and claims it again for itself
            await engine.accept(make_story(id="s2"))
            await asyncio.sleep(0.15)
            peak = Blocking.peak
            Blocking.release.set()
            stop.set()
            await asyncio.wait_for(runner, 30)
    finally:
        await store.close()
    assert peak == 1


# F10 (review of unsynced outcome writes): an attempt decided not to send (a retraction arrived while it failed),
# and that decision was lost (a crash, or a power cut before an unsynced commit reached the disk). The reclaimed
# delivery reconciles first; when the lookup finds nothing, the retraction must still win: no publish of a
# withdrawn story.
async def test_F10_lost_cancel_decision_does_not_publish_a_withdrawn_story(tmp_path, sqlite_store):
    from syndicate.delivery import Retryable

    settings = make_settings(tmp_path, {"c": scripted(lookup=True)})
    clock = FakeClock()
    async with Engine(settings, sqlite_store, clock=clock, worker_id="W") as engine:
        await engine.accept(make_story(version=1))
        [claim] = await sqlite_store.claim("W", now=clock.now(), lease_seconds=5, limits={"c": 1})
        await engine.accept(make_story(version=2, pubstatus="canceled"))
        ScriptedAdapter.scripts["c"] = [Retryable("503")]
        engine._spawn(claim)
        await asyncio.sleep(0.05)
        decided = engine._completions.pop()
        assert decided.state is State.CANCELED
        engine._unwritten.clear()  # the decision never reached the disk
        clock.advance(10)
        await drain(engine)
    assert [action for _, action, _ in ScriptedAdapter.calls] == ["publish", "lookup"]
    states = {(d.version, d.action): d.state for d in await sqlite_store.list_deliveries(DeliveryFilter())}
    assert states[(1, Action.PUBLISH)] is State.CANCELED
