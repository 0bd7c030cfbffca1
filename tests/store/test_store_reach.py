"""The reach part of the store contract (both backends, through the `store` fixture): sample plans written with the
delivery's outcome, claimed only from spare capacity, fenced, reclaimed; the time series and the counted reads."""

from __future__ import annotations

from syndicate.delivery import Action, ReachMetric, ReachReading, Receipt
from syndicate.store.base import (
    REACH_BUCKET_SECONDS,
    ReachTotal,
    SampleClaim,
    SampleCompletion,
    SampleState,
    State,
    Store,
)
from tests.store.test_store_contract import LIMITS, NOW, done, plan_for
from tests.support import make_story

AGES = (3600.0, 6 * 3600.0)


async def delivered_with_plan(store: Store, *channels: str, story_id: str = "story-1") -> int:
    """A story published on ``channels`` (default "a") and delivered at NOW + 1 with a sample plan at AGES; the
    first delivery's id."""
    channels = channels or ("a",)
    await store.fan_out(make_story(id=story_id), plan_for(*channels), now=NOW)
    claims = await store.claim("w1", now=NOW, lease_seconds=30, limits=dict.fromkeys(channels, 4))
    assert len(claims) == len(channels)
    await store.complete([done(c, receipt=Receipt(f"post-{story_id}"), reach_ages=AGES) for c in claims])
    return min(c.delivery.id for c in claims)


def finished(claim: SampleClaim, state: SampleState = SampleState.DONE, **kw: object) -> SampleCompletion:
    return SampleCompletion(
        sample_id=claim.sample.id,
        worker=str(kw.pop("worker", "w1")),
        attempt_number=claim.sample.attempts,
        state=state,
        finished_at=float(kw.pop("finished_at", claim.sample.due_at or NOW)),  # type: ignore[arg-type]
        outcome=state.value,
        **kw,  # type: ignore[arg-type]
    )


async def test_a_delivered_post_gets_one_sample_per_age_written_with_its_outcome(store: Store) -> None:
    delivery_id = await delivered_with_plan(store)
    reach = await store.story_reach("story-1")
    assert [(s.delivery_id, s.age_seconds, s.due_at, s.state) for s in reach.samples] == [
        (delivery_id, AGES[0], NOW + 1 + AGES[0], SampleState.QUEUED),
        (delivery_id, AGES[1], NOW + 1 + AGES[1], SampleState.QUEUED),
    ]
    assert await store.next_reach_due(["a"], now=NOW) == NOW + 1 + AGES[0]


async def test_a_lost_lease_writes_no_plan(store: Store) -> None:
    await store.fan_out(make_story(), plan_for("a"), now=NOW)
    [claim] = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    assert await store.complete([done(claim, worker="w2", reach_ages=AGES)]) == [claim.delivery.id]
    assert (await store.story_reach("story-1")).samples == []


async def test_samples_are_claimed_when_due_with_the_post_they_read(store: Store) -> None:
    delivery_id = await delivered_with_plan(store)
    assert await store.claim_reach_samples("w1", now=NOW + 1800, lease_seconds=30, limits=LIMITS) == []
    [claim] = await store.claim_reach_samples("w1", now=NOW + 1 + AGES[0], lease_seconds=30, limits=LIMITS)
    assert claim.delivery.id == delivery_id and claim.delivery.receipt == Receipt("post-story-1")
    assert claim.sample.state is SampleState.IN_FLIGHT and claim.sample.attempts == 1
    assert await store.count_reach_in_flight(["a"]) == 1


async def test_publishing_goes_first_and_samples_count_against_the_channel_limit(store: Store) -> None:
    await delivered_with_plan(store)
    later = NOW + 1 + AGES[0]
    # A delivery due on the channel: no sample is claimed there.
    await store.fan_out(make_story(id="story-2"), plan_for("a", due=later), now=later)
    assert await store.claim_reach_samples("w1", now=later, lease_seconds=30, limits=LIMITS) == []
    [publishing] = await store.claim("w1", now=later, lease_seconds=30, limits={"a": 1})
    # The delivery in flight holds the channel's one slot: still no sample.
    assert await store.claim_reach_samples("w1", now=later, lease_seconds=30, limits={"a": 1}) == []
    await store.complete([done(publishing, finished_at=later)])
    [sample] = await store.claim_reach_samples("w1", now=later, lease_seconds=30, limits={"a": 1})
    # ... and now the sample holds it: a delivery due next waits for it.
    await store.fan_out(make_story(id="story-3"), plan_for("a", due=later), now=later)
    assert await store.claim("w1", now=later, lease_seconds=30, limits={"a": 1}) == []
    assert await store.complete_reach_sample(finished(sample, reading=ReachReading({ReachMetric.READS: 1})))
    assert len(await store.claim("w1", now=later, lease_seconds=30, limits={"a": 1})) == 1


async def test_a_paused_channel_samples_nothing(store: Store) -> None:
    await delivered_with_plan(store)
    due = NOW + 1 + AGES[0]
    await store.pause_channel("a", until=due + 600, reason="rate limited", now=due)
    assert await store.claim_reach_samples("w1", now=due, lease_seconds=30, limits=LIMITS) == []
    assert await store.next_reach_due(["a"], now=due) == due + 600
    assert len(await store.claim_reach_samples("w1", now=due + 601, lease_seconds=30, limits=LIMITS)) == 1


async def test_a_reading_is_stored_as_points_and_raw_figures_once(store: Store) -> None:
    await delivered_with_plan(store)
    [claim] = await store.claim_reach_samples("w1", now=NOW + 1 + AGES[0], lease_seconds=30, limits=LIMITS)
    reading = ReachReading({ReachMetric.READS: 120, ReachMetric.LIKES: 7}, raw={"int_page_read_count": 120})
    assert await store.complete_reach_sample(finished(claim, reading=reading, finished_at=NOW + 3700))
    assert not await store.complete_reach_sample(finished(claim, reading=reading, finished_at=NOW + 3701))
    reach = await store.story_reach("story-1")
    assert [(p.channel, p.metric, p.observed_at, p.value) for p in reach.points] == [
        ("a", ReachMetric.LIKES, NOW + 3700, 7),
        ("a", ReachMetric.READS, NOW + 3700, 120),
    ]
    assert [(r.channel, r.raw) for r in reach.readings] == [("a", {"int_page_read_count": 120})]
    assert reach.samples[0].state is SampleState.DONE
    assert await store.reach_channel_totals() == {("a", ReachMetric.LIKES): 7, ("a", ReachMetric.READS): 120}


async def test_a_retried_sample_goes_back_due_later_and_another_worker_cannot_finish_it(store: Store) -> None:
    await delivered_with_plan(store)
    due = NOW + 1 + AGES[0]
    [claim] = await store.claim_reach_samples("w1", now=due, lease_seconds=30, limits=LIMITS)
    assert not await store.complete_reach_sample(finished(claim, worker="w2"))
    retry = finished(claim, SampleState.QUEUED, due_at=due + 5, count_retry=True, error_class="Retryable", message="x")
    assert await store.complete_reach_sample(retry)
    sample = (await store.story_reach("story-1")).samples[0]
    assert (sample.state, sample.due_at, sample.retry_count, sample.last_error_class) == (
        SampleState.QUEUED,
        due + 5,
        1,
        "Retryable",
    )
    [again] = await store.claim_reach_samples("w1", now=due + 5, lease_seconds=30, limits=LIMITS)
    assert again.sample.attempts == 2


async def test_an_expired_sample_lease_is_reclaimed_and_completes_once(store: Store) -> None:
    await delivered_with_plan(store)
    due = NOW + 1 + AGES[0]
    [dead] = await store.claim_reach_samples("w1", now=due, lease_seconds=30, limits=LIMITS)
    assert await store.heartbeat_reach_samples("w1", [dead.sample.id], lease_until=due + 40) == [dead.sample.id]
    assert await store.heartbeat_reach_samples("w2", [dead.sample.id], lease_until=due + 40) == []
    assert await store.reclaim_expired(now=due + 41) == 1
    [claim] = await store.claim_reach_samples("w2", now=due + 41, lease_seconds=30, limits=LIMITS)
    assert claim.sample.id == dead.sample.id and claim.sample.retry_count == 1
    reading = ReachReading({ReachMetric.READS: 5})
    # The dead worker's late write is fenced off; the live one lands, once.
    assert not await store.complete_reach_sample(finished(dead, reading=reading))
    assert await store.complete_reach_sample(finished(claim, worker="w2", reading=reading))
    assert len((await store.story_reach("story-1")).readings) == 1


async def test_a_retraction_stops_the_storys_samples_on_that_channel(store: Store) -> None:
    await delivered_with_plan(store, "a", "b")
    await store.fan_out(make_story(version=2, pubstatus="canceled"), plan_for("a", action=Action.RETRACT), now=NOW + 9)
    states = {(s.channel, s.state) for s in (await store.story_reach("story-1")).samples}
    assert states == {("a", SampleState.CANCELED), ("b", SampleState.QUEUED)}


async def test_a_settled_retract_and_a_newer_post_stop_the_earlier_plan(store: Store) -> None:
    await delivered_with_plan(store, "a")
    await store.fan_out(make_story(version=2, headline="新标题"), plan_for("a", action=Action.UPDATE), now=NOW + 5)
    [update] = await store.claim("w1", now=NOW + 5, lease_seconds=30, limits=LIMITS)
    await store.complete([done(update, finished_at=NOW + 6, reach_ages=AGES)])
    samples = (await store.story_reach("story-1")).samples
    assert sorted((s.delivery_id, s.state) for s in samples) == sorted(
        [(update.delivery.id - 1, SampleState.CANCELED)] * 2 + [(update.delivery.id, SampleState.QUEUED)] * 2
    )
    await store.fan_out(make_story(version=3), plan_for("a", action=Action.RETRACT), now=NOW + 7)
    [retract] = await store.claim("w1", now=NOW + 7, lease_seconds=30, limits=LIMITS)
    assert retract.delivery.action is Action.RETRACT
    assert all(s.state is SampleState.CANCELED for s in (await store.story_reach("story-1")).samples)


async def test_counted_reads_need_a_live_post_and_land_in_hourly_buckets(store: Store) -> None:
    assert not await store.add_reach_count("story-1", "a", ReachMetric.READS, now=NOW)  # never delivered
    await delivered_with_plan(store, "a")
    bucket = (NOW // REACH_BUCKET_SECONDS) * REACH_BUCKET_SECONDS
    for offset in (10.0, 20.0, REACH_BUCKET_SECONDS):
        assert await store.add_reach_count("story-1", "a", ReachMetric.READS, now=bucket + offset)
    assert not await store.add_reach_count("story-1", "b", ReachMetric.READS, now=NOW)  # another channel's
    reach = await store.story_reach("story-1")
    assert [(p.observed_at, p.value) for p in reach.points] == [(bucket, 2), (bucket + REACH_BUCKET_SECONDS, 3)]
    assert await store.reach_totals(since=bucket, until=bucket + REACH_BUCKET_SECONDS) == [
        ReachTotal("story-1", "a", ReachMetric.READS, 2)
    ]
    # Retracted: counted nowhere.
    await store.fan_out(make_story(version=2), plan_for("a", action=Action.RETRACT), now=NOW + 9)
    [retract] = await store.claim("w1", now=NOW + 9, lease_seconds=30, limits=LIMITS)
    await store.complete([done(retract, finished_at=NOW + 10, stops_reach=True)])
    assert not await store.add_reach_count("story-1", "a", ReachMetric.READS, now=NOW + 11)


async def test_reach_totals_are_the_growth_inside_the_period(store: Store) -> None:
    await delivered_with_plan(store)
    first, second = NOW + 1 + AGES[0], NOW + 1 + AGES[1]
    [one] = await store.claim_reach_samples("w1", now=first, lease_seconds=30, limits=LIMITS)
    await store.complete_reach_sample(finished(one, reading=ReachReading({ReachMetric.READS: 100})))
    [two] = await store.claim_reach_samples("w1", now=second, lease_seconds=30, limits=LIMITS)
    await store.complete_reach_sample(finished(two, reading=ReachReading({ReachMetric.READS: 250})))
    assert await store.reach_totals(since=NOW, until=second + 1) == [ReachTotal("story-1", "a", ReachMetric.READS, 250)]
    assert await store.reach_totals(since=first + 1, until=second + 1) == [
        ReachTotal("story-1", "a", ReachMetric.READS, 150)
    ]
    assert await store.reach_totals(since=second + 1, until=second + 2) == []


async def test_a_delivery_blocked_behind_an_unknown_one_does_not_starve_the_samples(store: Store) -> None:
    await delivered_with_plan(store)
    due = NOW + 1 + AGES[0]
    # story-2's publish ends unknown; its update waits behind it, due but not claimable.
    await store.fan_out(make_story(id="story-2"), plan_for("a"), now=NOW)
    [publish] = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    await store.complete([done(publish, State.UNKNOWN)])
    await store.fan_out(make_story(id="story-2", version=2), plan_for("a", action=Action.UPDATE), now=NOW)
    assert not await store.any_claimable(["a"], now=due)
    assert len(await store.claim_reach_samples("w1", now=due, lease_seconds=30, limits=LIMITS)) == 1
