"""The store contract: every backend must pass this suite unchanged (the `store` fixture runs it per backend)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from syndicate.delivery import Action, Payload, Receipt
from syndicate.store.base import (
    PAUSED_INDEFINITELY,
    Completion,
    DeliveryFilter,
    DeliveryRecord,
    FanOutPlan,
    NewDelivery,
    NotFound,
    StaleVersion,
    State,
    Store,
    Transition,
    VersionConflict,
)
from tests.support import make_story

NOW = 1_700_000_000.0
LIMITS = {"a": 4, "b": 4}


def plan_for(*channels: str, action: Action = Action.PUBLISH, due: float = NOW):
    def planner(existing: Sequence[DeliveryRecord], first_accepted: float) -> FanOutPlan:
        return FanOutPlan(
            new=[NewDelivery(ch, action, State.QUEUED, Payload({"ch": ch, "n": len(existing)}), due) for ch in channels]
        )

    return planner


def done(claim, state: State = State.DELIVERED, *, posts: bool = True, **kw) -> Completion:
    """The completion the engine makes of ``claim``; ``posts=False`` leaves out its story and channel (the store
    then reads them with the lease)."""
    return Completion(
        delivery_id=claim.delivery.id,
        attempt_id=claim.attempt_id,
        worker=kw.pop("worker", "w1"),
        state=state,
        outcome=kw.pop("outcome", state.value),
        finished_at=kw.pop("finished_at", NOW + 1),
        duration_ms=5.0,
        attempt_number=kw.pop("attempt_number", claim.attempt_number),
        story_id=claim.delivery.story_id if posts else None,
        channel=claim.delivery.channel if posts else None,
        **kw,
    )


async def test_migrate_is_idempotent(store: Store) -> None:
    assert await store.migrate() == store.SCHEMA_VERSION
    assert await store.schema_version() == store.SCHEMA_VERSION


async def test_fan_out_records_story_and_deliveries(store: Store) -> None:
    story = make_story()
    result = await store.fan_out(story, plan_for("a", "b"), now=NOW)
    assert result.created
    assert [(d.channel, d.action, d.state) for d in result.deliveries] == [
        ("a", Action.PUBLISH, State.QUEUED),
        ("b", Action.PUBLISH, State.QUEUED),
    ]
    assert result.deliveries[0].payload is not None and result.deliveries[0].payload.decoded == Payload(
        {"ch": "a", "n": 0}
    )
    record = await store.get_story(story.id)
    assert record.story == story
    assert record.content_hash == story.content_hash


async def test_fan_out_is_atomic(store: Store) -> None:
    def broken(existing: Sequence[DeliveryRecord], first_accepted: float) -> FanOutPlan:
        raise RuntimeError("planner failed")

    with pytest.raises(RuntimeError):
        await store.fan_out(make_story(), broken, now=NOW)
    with pytest.raises(NotFound):
        await store.get_story("story-1")
    assert await store.list_deliveries(DeliveryFilter()) == []


async def test_same_version_again_creates_nothing(store: Store) -> None:
    first = await store.fan_out(make_story(), plan_for("a"), now=NOW)
    again = await store.fan_out(make_story(), plan_for("a", "b"), now=NOW + 5)
    assert not again.created
    assert [d.id for d in again.deliveries] == [d.id for d in first.deliveries]
    assert len(await store.list_deliveries(DeliveryFilter())) == 1


async def test_same_version_other_content_conflicts_and_older_is_stale(store: Store) -> None:
    await store.fan_out(make_story(version=2), plan_for("a"), now=NOW)
    with pytest.raises(VersionConflict):
        await store.fan_out(make_story(version=2, headline="另一个标题"), plan_for("a"), now=NOW)
    with pytest.raises(StaleVersion) as info:
        await store.fan_out(make_story(version=1), plan_for("a"), now=NOW)
    assert info.value.latest == 2


async def test_transitions_only_touch_pending_deliveries(store: Store) -> None:
    first = await store.fan_out(make_story(), plan_for("a", "b"), now=NOW)
    [claim] = [c for c in await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 1}) if c]
    assert claim.delivery.channel == "a"

    def supersede(existing: Sequence[DeliveryRecord], first_accepted: float) -> FanOutPlan:
        return FanOutPlan(transitions=[Transition(d.id, State.SUPERSEDED, "superseded by version 2") for d in existing])

    await store.fan_out(make_story(version=2, headline="新标题"), supersede, now=NOW + 1)
    a, b = [await store.get_delivery(d.id) for d in first.deliveries]
    assert a.state is State.IN_FLIGHT  # already started: left alone
    assert b.state is State.SUPERSEDED and b.note == "superseded by version 2"


async def test_claim_leases_due_work_and_writes_the_attempt_first(store: Store) -> None:
    await store.fan_out(make_story(), plan_for("a", "b"), now=NOW)
    await store.fan_out(make_story(id="later"), plan_for("a", due=NOW + 60), now=NOW)
    claims = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    assert sorted(c.delivery.channel for c in claims) == ["a", "b"]
    for c in claims:
        assert c.delivery.state is State.IN_FLIGHT
        assert c.delivery.lease_owner == "w1" and c.delivery.lease_expires == NOW + 30
        assert c.attempt_number == 1 and c.delivery.attempts == 1
        [attempt] = await store.attempts(c.delivery.id)
        assert attempt.started_at == NOW and attempt.finished_at is None and attempt.worker == "w1"
    # Nothing else is due yet; the embargoed/later one becomes claimable at its time.
    assert await store.claim("w2", now=NOW, lease_seconds=30, limits=LIMITS) == []
    assert await store.next_due_at(["a"], now=NOW) == NOW + 60
    later = await store.claim("w2", now=NOW + 60, lease_seconds=30, limits=LIMITS)
    assert [c.delivery.story_id for c in later] == ["later"]


async def test_claim_respects_channel_limits_across_workers(store: Store) -> None:
    for i in range(5):
        await store.fan_out(make_story(id=f"s{i}"), plan_for("a"), now=NOW)
    first = await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 2})
    second = await store.claim("w2", now=NOW, lease_seconds=30, limits={"a": 2})
    assert len(first) == 2 and second == []
    assert await store.count_in_flight(["a"]) == 2
    await store.complete([done(first[0])])
    third = await store.claim("w2", now=NOW, lease_seconds=30, limits={"a": 2})
    assert len(third) == 1


async def test_claim_orders_story_channel_actions(store: Store) -> None:
    await store.fan_out(make_story(), plan_for("a"), now=NOW)
    await store.fan_out(make_story(version=2, headline="更新"), plan_for("a", action=Action.UPDATE), now=NOW)
    assert await store.any_claimable(["a"], now=NOW)
    assert not await store.any_claimable(["a"], now=NOW - 1)  # not due yet
    assert not await store.any_claimable([], now=NOW)
    [publish] = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    assert publish.delivery.action is Action.PUBLISH
    # The update waits while the publish is open, even with free slots.
    assert await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS) == []
    assert not await store.any_claimable(["a"], now=NOW)
    await store.complete([done(publish, receipt=Receipt("remote-1", "https://p/1"))])
    [update] = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    assert update.delivery.action is Action.UPDATE
    assert update.live_receipt == Receipt("remote-1", "https://p/1")


async def test_live_receipt_is_gone_after_a_retract(store: Store) -> None:
    await store.fan_out(make_story(), plan_for("a"), now=NOW)
    [c1] = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    await store.complete([done(c1, receipt=Receipt("r1"))])
    await store.fan_out(make_story(version=2, pubstatus="canceled"), plan_for("a", action=Action.RETRACT), now=NOW)
    [c2] = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    assert c2.live_receipt == Receipt("r1")
    await store.complete([done(c2, receipt=Receipt("r1"))])
    await store.fan_out(make_story(version=3), plan_for("a"), now=NOW)
    [c3] = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    assert c3.live_receipt is None


async def test_paused_channel_is_not_claimed_and_longer_pause_wins(store: Store) -> None:
    await store.fan_out(make_story(), plan_for("a", "b"), now=NOW)
    await store.pause_channel("a", until=NOW + 100, reason="rate limited", now=NOW)
    await store.pause_channel("a", until=NOW + 10, reason="shorter", now=NOW)
    state = (await store.channel_states())["a"]
    assert state.paused_until == NOW + 100 and state.reason == "rate limited"
    claims = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    assert [c.delivery.channel for c in claims] == ["b"]
    assert await store.next_due_at(["a"], now=NOW) == NOW + 100
    assert [c.delivery.channel for c in await store.claim("w1", now=NOW + 100, lease_seconds=30, limits=LIMITS)] == [
        "a"
    ]


async def test_resume_clears_an_indefinite_pause(store: Store) -> None:
    await store.fan_out(make_story(), plan_for("a"), now=NOW)
    await store.pause_channel("a", until=PAUSED_INDEFINITELY, reason="credentials rejected", now=NOW)
    assert await store.claim("w1", now=NOW + 86400, lease_seconds=30, limits=LIMITS) == []
    await store.resume_channel("a", now=NOW)
    assert len(await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)) == 1
    assert (await store.channel_states())["a"].paused_until is None


@pytest.mark.parametrize("posts", [True, False], ids=["with-posts", "posts-read-with-the-lease"])
async def test_complete_applies_outcomes_and_refuses_a_lost_lease(store: Store, posts: bool) -> None:
    await store.fan_out(make_story(), plan_for("a", "b"), now=NOW)
    ca, cb = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    lost = await store.complete(
        [
            done(ca, receipt=Receipt("r-a", "https://a/1", {"ok": True}), posts=posts),
            done(
                cb,
                State.RETRY_WAIT,
                outcome="retry",
                due_at=NOW + 5,
                error_class="Retryable",
                message="HTTP 503",
                platform_code="503",
                count_retry=True,
                posts=posts,
            ),
            done(cb, worker="intruder", posts=posts),
        ]
    )
    assert lost == [cb.delivery.id]  # the third completion: the intruder holds no lease
    a = await store.get_delivery(ca.delivery.id)
    b = await store.get_delivery(cb.delivery.id)
    assert a.state is State.DELIVERED and a.receipt == Receipt("r-a", "https://a/1", {"ok": True})
    assert a.lease_owner is None
    assert b.state is State.RETRY_WAIT and b.due_at == NOW + 5 and b.retry_count == 1
    assert (b.last_error, b.last_error_class, b.last_platform_code) == ("HTTP 503", "Retryable", "503")
    [attempt] = await store.attempts(b.id)
    assert attempt.outcome == "retry" and attempt.platform_code == "503" and attempt.duration_ms == 5.0


async def test_claim_does_not_count_own_finished_attempts_against_the_limit(store: Store) -> None:
    for i in range(5):
        await store.fan_out(make_story(id=f"f{i}"), plan_for("a"), now=NOW)
    first = await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 2})
    assert len(first) == 2
    assert await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 2}) == []
    # One attempt has ended, its outcome not yet written: its slot is free for the next delivery.
    ended = [first[0].delivery.id]
    [second] = await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 2}, finished=ended)
    # Another worker's finished ids are not ours to discount; ours, once written, are no longer in flight.
    assert await store.claim("w2", now=NOW, lease_seconds=30, limits={"a": 2}, finished=ended) == []
    assert await store.complete([done(first[0])]) == []
    assert await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 2}, finished=ended) == []
    assert await store.count_in_flight(["a"]) == 2
    assert second.delivery.id not in {c.delivery.id for c in first}


async def test_heartbeat_extends_only_own_leases(store: Store) -> None:
    await store.fan_out(make_story(), plan_for("a"), now=NOW)
    [c] = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    assert await store.heartbeat("w2", [c.delivery.id], lease_until=NOW + 999) == []
    assert await store.heartbeat("w1", [c.delivery.id], lease_until=NOW + 90) == [c.delivery.id]
    assert (await store.get_delivery(c.delivery.id)).lease_expires == NOW + 90
    assert await store.reclaim_expired(now=NOW + 60) == 0


async def test_expired_lease_is_reclaimed_for_reconciliation(store: Store) -> None:
    await store.fan_out(make_story(), plan_for("a"), now=NOW)
    [c] = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    assert await store.reclaim_expired(now=NOW + 29) == 0
    assert await store.reclaim_expired(now=NOW + 31) == 1
    d = await store.get_delivery(c.delivery.id)
    assert d.state is State.QUEUED and d.reconcile and d.lease_owner is None
    [attempt] = await store.attempts(d.id)
    assert attempt.outcome == "lease_expired"
    # The dead worker's late result is refused; the new claimant sees the reconcile flag.
    assert await store.complete([done(c)]) == [d.id]
    [again] = await store.claim("w2", now=NOW + 31, lease_seconds=30, limits=LIMITS)
    assert again.delivery.reconcile and again.attempt_number == 2


async def test_an_attempt_that_outlived_its_lease_cannot_overwrite_the_next_one_even_of_the_same_worker(
    store: Store,
) -> None:
    await store.fan_out(make_story(), plan_for("a"), now=NOW)
    [first] = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    assert await store.reclaim_expired(now=NOW + 31) == 1
    [second] = await store.claim("w1", now=NOW + 31, lease_seconds=30, limits=LIMITS)
    assert second.attempt_number == first.attempt_number + 1
    # In one batch, the late first attempt's "delivered" must not land over the second attempt's outcome.
    lost = await store.complete(
        [
            done(first, receipt=Receipt("stale")),
            done(second, State.RETRY_WAIT, outcome="retry", due_at=NOW + 40, count_retry=True),
        ]
    )
    assert lost == [first.delivery.id]
    d = await store.get_delivery(first.delivery.id)
    assert d.state is State.RETRY_WAIT and d.receipt is None and d.lease_owner is None
    outcomes = {a.number: a.outcome for a in await store.attempts(d.id)}
    assert outcomes == {1: "lease_expired", 2: "retry"}


async def test_an_attempt_that_outlived_its_lease_is_refused_alone_while_the_next_one_runs(store: Store) -> None:
    await store.fan_out(make_story(), plan_for("a"), now=NOW)
    [first] = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    assert await store.reclaim_expired(now=NOW + 31) == 1
    [second] = await store.claim("w1", now=NOW + 31, lease_seconds=30, limits=LIMITS)
    # Same worker, same delivery, still in flight: only the attempt number tells the late outcome from the live one.
    assert await store.complete([done(first, receipt=Receipt("stale"))]) == [first.delivery.id]
    d = await store.get_delivery(first.delivery.id)
    assert d.state is State.IN_FLIGHT and d.receipt is None and d.lease_owner == "w1"
    assert await store.complete([done(second, receipt=Receipt("fresh"))]) == []
    assert (await store.get_delivery(first.delivery.id)).receipt == Receipt("fresh")


async def test_checkpoint_needs_the_lease(store: Store) -> None:
    await store.fan_out(make_story(), plan_for("a"), now=NOW)
    [c] = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    await store.save_checkpoint(c.delivery.id, "w1", {"step": "draft", "media_id": "m-1"})
    with pytest.raises(NotFound):
        await store.save_checkpoint(c.delivery.id, "w2", {"step": "stolen"})
    await store.complete([done(c, State.RETRY_WAIT, due_at=NOW, count_retry=True)])
    [again] = await store.claim("w1", now=NOW + 1, lease_seconds=30, limits=LIMITS)
    assert again.delivery.checkpoint == {"step": "draft", "media_id": "m-1"}


async def test_kv_with_expiry(store: Store) -> None:
    assert await store.kv_get("wechat:token:app", now=NOW) is None
    await store.kv_set("wechat:token:app", "T1", expires_at=NOW + 7200, now=NOW)
    assert await store.kv_get("wechat:token:app", now=NOW + 7199) == "T1"
    assert await store.kv_get("wechat:token:app", now=NOW + 7200) is None
    await store.kv_set("wechat:token:app", "T2", expires_at=None, now=NOW)
    assert await store.kv_get("wechat:token:app", now=NOW + 10**6) == "T2"


async def test_the_write_probe_leaves_one_expiring_row(store: Store) -> None:
    for tick in range(3):
        await store.check_writable(now=NOW + tick)  # readiness probes: each rewrites the same key
    assert await store.purge_expired_keys(now=NOW + 59) == 0
    assert await store.purge_expired_keys(now=NOW + 63) == 1  # and it expires like any other key


async def test_list_filters_and_requeue(store: Store) -> None:
    await store.fan_out(make_story(), plan_for("a", "b"), now=NOW)
    ca, cb = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    await store.complete(
        [
            done(ca, State.FAILED, error_class="Permanent", message="banned", finished_at=NOW + 10),
            done(cb, receipt=Receipt("r"), finished_at=NOW + 20),
        ]
    )
    failed = await store.list_deliveries(DeliveryFilter(states=[State.FAILED]))
    assert [d.id for d in failed] == [ca.delivery.id]
    assert [d.id for d in await store.list_deliveries(DeliveryFilter(channels=["b"]))] == [cb.delivery.id]
    assert [d.id for d in await store.list_deliveries(DeliveryFilter(since=NOW + 15))] == [cb.delivery.id]
    assert [d.id for d in await store.list_deliveries(DeliveryFilter(error_classes=["Permanent"]))] == [ca.delivery.id]
    page = await store.list_deliveries(DeliveryFilter(after_id=ca.delivery.id, limit=1))
    assert [d.id for d in page] == [cb.delivery.id]

    # Delivered ones are only replayed with force; history is kept, the budget reset.
    assert await store.requeue([ca.delivery.id, cb.delivery.id], now=NOW + 30) == [ca.delivery.id]
    a = await store.get_delivery(ca.delivery.id)
    assert a.state is State.QUEUED and a.retry_count == 0 and a.due_at == NOW + 30
    assert len(await store.attempts(a.id)) == 1
    assert await store.requeue([cb.delivery.id], now=NOW + 30, force=True) == [cb.delivery.id]


async def test_expired_keys_are_purged_in_bounded_batches_and_live_ones_stay(store: Store) -> None:
    """Every accepted hook signature leaves a key for its tolerance; without a purge they pile up for ever."""
    for i in range(1_234):
        await store.kv_add(f"hook-sig:{i}", "1", expires_at=NOW + 300, now=NOW)
    await store.kv_set("wechat:token:app", "T", expires_at=NOW + 7200, now=NOW)
    await store.kv_set("cover:abc", "thumb-1", expires_at=None, now=NOW)
    assert await store.purge_expired_keys(now=NOW + 299, batch=500) == 0
    assert await store.purge_expired_keys(now=NOW + 300, batch=500) == 1_234  # three batches
    assert await store.purge_expired_keys(now=NOW + 301, batch=500) == 0
    assert await store.kv_get("wechat:token:app", now=NOW + 301) == "T"
    assert await store.kv_get("cover:abc", now=NOW + 10**6) == "thumb-1"
    assert await store.kv_add("hook-sig:7", "again", expires_at=NOW + 900, now=NOW + 301)  # a purged key is free


async def test_kv_add_is_set_once_until_expiry(store: Store) -> None:
    assert await store.kv_add("hook-sig:abc", "1", expires_at=NOW + 300, now=NOW)
    assert not await store.kv_add("hook-sig:abc", "2", expires_at=NOW + 300, now=NOW + 299)
    assert await store.kv_get("hook-sig:abc", now=NOW + 1) == "1"
    assert await store.kv_add("hook-sig:abc", "3", expires_at=NOW + 900, now=NOW + 300)
    assert await store.kv_get("hook-sig:abc", now=NOW + 301) == "3"
    await store.kv_set("lock", "x", expires_at=None, now=NOW)
    assert not await store.kv_add("lock", "y", expires_at=None, now=NOW + 10**9)


async def test_queue_depth_and_counts(store: Store) -> None:
    await store.fan_out(make_story(), plan_for("a", "b"), now=NOW)
    await store.fan_out(make_story(id="s2"), plan_for("a", due=NOW - 50), now=NOW)
    [first] = await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 1})
    await store.complete([done(first)])
    depth = await store.queue_depth()
    assert depth == {("a", State.DELIVERED): 1, ("a", State.QUEUED): 1, ("b", State.QUEUED): 1}
    counts = await store.counts()
    assert (counts.stories, counts.story_versions, counts.deliveries, counts.attempts) == (2, 2, 3, 1)
    assert counts.by_state == {State.DELIVERED: 1, State.QUEUED: 2}
    assert counts.oldest_pending_due == NOW


async def test_a_newer_schema_is_refused(store: Store) -> None:
    from syndicate.store.base import SchemaTooNew

    # Simulate a database migrated by a future syndicate.
    newer = store.SCHEMA_VERSION + 1
    if hasattr(store, "_run"):
        await store._run(lambda conn: conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (newer,)))
    else:
        pool = await store._get_pool()  # type: ignore[attr-defined]
        await pool.execute("INSERT INTO schema_migrations (version) VALUES ($1)", newer)
    with pytest.raises(SchemaTooNew, match="upgrade syndicate"):
        await store.migrate()


async def test_latest_delivered_per_story(store: Store) -> None:
    for sid in ("a1", "a2"):
        await store.fan_out(make_story(id=sid), plan_for("a"), now=NOW)
    for c in await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 4}):
        await store.complete([done(c, receipt=Receipt(c.delivery.story_id))])
    await store.fan_out(
        make_story(id="a1", version=2, pubstatus="canceled"), plan_for("a", action=Action.RETRACT), now=NOW
    )
    [retract] = await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 4})
    await store.complete([done(retract)])
    await store.fan_out(make_story(id="a3"), plan_for("a"), now=NOW)  # queued, not delivered: not shown
    rows = await store.latest_delivered("a")
    assert [(d.story_id, d.action) for d in rows] == [("a1", Action.RETRACT), ("a2", Action.PUBLISH)]
    assert [d.story_id for d in await store.latest_delivered("a", before_id=rows[0].id)] == ["a2"]
    assert [d.version for d in await store.latest_delivered("a", story_id="a1")] == [2]
    assert await store.latest_delivered("b") == []


async def test_the_first_acceptance_is_kept_across_versions(store: Store) -> None:
    seen: list[float] = []

    def planner(existing: Sequence[DeliveryRecord], first_accepted: float) -> FanOutPlan:
        seen.append(first_accepted)
        return plan_for("a")(existing, first_accepted)

    await store.fan_out(make_story(), planner, now=NOW)
    await store.fan_out(make_story(version=2, headline="新标题"), planner, now=NOW + 60)
    assert seen == [NOW, NOW]  # the planner dates an undated story by its first acceptance, not this version's
    newest, first = await store.get_story("story-1"), await store.get_story("story-1", version=1)
    assert (newest.received_at, newest.first_accepted_at) == (NOW + 60, NOW)
    assert (first.received_at, first.first_accepted_at) == (NOW, NOW)


async def test_complete_and_claim_writes_outcomes_and_claims_the_slots_they_free(store: Store) -> None:
    for i in range(4):
        await store.fan_out(make_story(id=f"cc{i}"), plan_for("a"), now=NOW)
    first = await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 2})
    intruder = done(first[1], worker="intruder")
    result = await store.complete_and_claim(
        [done(first[0], receipt=Receipt("r-0")), intruder], "w1", now=NOW, lease_seconds=30, limits={"a": 2}
    )
    assert result.lost == [first[1].delivery.id]  # refused as `complete` refuses it, and said so
    assert (await store.get_delivery(first[0].delivery.id)).state is State.DELIVERED
    # The written outcome freed its slot inside the same call: one new claim, the limit held.
    assert len(result.claims) == 1 and result.claims[0].delivery.id not in {c.delivery.id for c in first}
    assert await store.count_in_flight(["a"]) == 2
    # Outcomes are written even when nothing is claimed (no free slot, or no channel asked for).
    idle = await store.complete_and_claim([done(first[1])], "w1", now=NOW, lease_seconds=30, limits={"a": 0})
    assert (idle.lost, idle.claims) == ([], [])
    assert (await store.get_delivery(first[1].delivery.id)).state is State.DELIVERED
    # With no outcomes it is a plain claim.
    plain = await store.complete_and_claim([], "w1", now=NOW, lease_seconds=30, limits={"a": 2})
    assert len(plain.claims) == 1 and await store.count_in_flight(["a"]) == 2


async def test_a_channel_that_filled_its_slots_is_claimed_again_without_the_due_probe(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe (a read before any transaction) only saves work when nothing is due: after a claim that took every
    slot it asked for, the next claim goes straight to the write; once a claim comes back short, it probes again."""
    for i in range(3):
        await store.fan_out(make_story(id=f"sat{i}"), plan_for("a"), now=NOW)
    calls: list[str] = []
    for kind in ("_read", "_write"):
        original = getattr(store, kind)

        def spy(*args: Any, _kind: str = kind, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(_kind)
            return _original(*args, **kwargs)

        monkeypatch.setattr(store, kind, spy)
    first = await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 2})
    assert len(first) == 2 and calls == ["_read", "_write"]
    await store.complete([done(c) for c in first])
    calls.clear()
    second = await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 2})
    assert len(second) == 1 and calls == ["_write"]  # no probe: the last claim filled its slots
    calls.clear()
    assert await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 2}) == []
    assert calls == ["_read"]  # the short claim brought the probe back: nothing due, no transaction
    assert await store.count_in_flight(["a"]) == 1


async def test_a_re_rendered_payload_replaces_the_stored_one_and_a_settled_delivery_keeps_none(store: Store) -> None:
    """The payload lives beside the delivery (written at fan-out); an outcome that re-rendered it (an update sent
    as a publish) replaces it, and a delivery settled at once (skipped) has none."""
    plan = FanOutPlan(
        new=[
            NewDelivery("a", Action.UPDATE, State.QUEUED, Payload({"v": 1}), NOW),
            NewDelivery("b", Action.UPDATE, State.SKIPPED, None, None, note="not supported"),
        ]
    )
    result = await store.fan_out(make_story(id="rr"), lambda existing, first: plan, now=NOW)
    queued, skipped = result.deliveries
    assert queued.payload is not None and queued.payload.decoded == Payload({"v": 1})
    assert skipped.payload is None and (await store.get_delivery(skipped.id)).payload is None
    [claim] = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    assert claim.delivery.payload is not None and claim.delivery.payload.decoded == Payload({"v": 1})
    await store.complete([done(claim, action=Action.PUBLISH, payload=Payload({"v": 2}))])
    stored = await store.get_delivery(claim.delivery.id)
    assert stored.action is Action.PUBLISH and stored.payload is not None
    assert stored.payload.decoded == Payload({"v": 2})
    assert [d.payload.decoded if d.payload else None for d in await store.list_deliveries(DeliveryFilter())] == [
        Payload({"v": 2}),
        None,
    ]


async def test_claim_takes_at_most_the_workers_share_in_one_call(store: Store) -> None:
    for i in range(6):
        await store.fan_out(make_story(id=f"m{i}"), plan_for("a", "b"), now=NOW)
    # The limit is 4 across workers; this one asks for at most 2 on "a" (its share), any number on "b".
    first = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS, most={"a": 2})
    assert sorted(c.delivery.channel for c in first) == ["a", "a", "b", "b", "b", "b"]
    # Another worker takes the rest of "a"'s limit, within its own share.
    second = await store.claim("w2", now=NOW, lease_seconds=30, limits=LIMITS, most={"a": 2, "b": 2})
    assert [c.delivery.channel for c in second] == ["a", "a"]
    assert await store.count_in_flight(["a"]) == 4
    merged = await store.complete_and_claim(
        [done(first[0])], "w1", now=NOW, lease_seconds=30, limits=LIMITS, most={"a": 0}
    )
    assert merged.claims == [] and merged.lost == []  # the freed slot is not taken past a share of 0
