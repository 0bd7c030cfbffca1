"""The reach schedule through the engine on a fake clock, with a scripted reach-capable channel: collection at every
age, the rate-limit pause, retries, retraction, and a worker that dies mid-sample."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
from pathlib import Path

from syndicate.delivery import Permanent, RateLimited, ReachMetric, ReachReading, Retryable
from syndicate.engine import Engine
from syndicate.store.base import DeliveryFilter, SampleState, State, Store
from tests.support import FakeClock, ScriptedAdapter, ScriptedReachAdapter, make_settings, make_story, scripted

HOUR = 3600.0
DEFAULT_AGES = [HOUR, 6 * HOUR, 24 * HOUR, 3 * 24 * HOUR, 7 * 24 * HOUR]


def reach_channel(**kw: object) -> dict[str, object]:
    return scripted(kind="scripted-reach", **kw)


async def drain(engine: Engine) -> None:
    await engine.run(until_idle=True)


async def samples(store: Store, story_id: str = "story-1") -> list[tuple[str, float, SampleState]]:
    return [(s.channel, s.age_seconds, s.state) for s in (await store.story_reach(story_id)).samples]


async def test_a_delivered_post_is_read_at_every_configured_age(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    t0 = clock.now()
    settings = make_settings(tmp_path, {"r": reach_channel(), "plain": scripted()})
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        await drain(engine)
        # Planned with the delivery: the reach channel only (the plain one cannot read figures back).
        assert await samples(sqlite_store) == [("r", age, SampleState.QUEUED) for age in DEFAULT_AGES]
        clock.advance(HOUR - 1)
        await drain(engine)
        assert ScriptedReachAdapter.reach_calls == []  # not a moment early
        for age in DEFAULT_AGES:
            clock.t = t0 + age
            await drain(engine)
    assert await samples(sqlite_store) == [("r", age, SampleState.DONE) for age in DEFAULT_AGES]
    [delivery] = await sqlite_store.list_deliveries(DeliveryFilter(channels=["r"]))
    assert ScriptedReachAdapter.reach_calls == [("r", "story-1", delivery.receipt.remote_id)] * 5  # type: ignore[union-attr]
    reach = await sqlite_store.story_reach("story-1")
    reads = [(p.observed_at - t0, p.value) for p in reach.points if p.metric is ReachMetric.READS]
    assert reads == [(age, int(10 * age // HOUR)) for age in DEFAULT_AGES]
    assert reach.readings[-1].raw == {"views": 1680, "hearts": 168}


async def test_configured_ages_and_reach_off(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    settings = make_settings(tmp_path, {"r": reach_channel()})
    settings = type(settings)(**{**settings.__dict__, "reach": settings.reach.model_copy(update={"ages": ("90m",)})})
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        await drain(engine)
    assert await samples(sqlite_store) == [("r", 5400.0, SampleState.QUEUED)]
    off = type(settings)(**{**settings.__dict__, "reach": settings.reach.model_copy(update={"enabled": False})})
    async with Engine(off, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story(id="story-2"))
        await drain(engine)
    assert await samples(sqlite_store, "story-2") == []


async def test_a_rate_limited_read_waits_for_the_limit_and_never_holds_publishing(
    tmp_path: Path, sqlite_store: Store
) -> None:
    """A statistics call has limits of its own (X's are per endpoint): its 429 makes the sample wait for the reset,
    spending no retry, and the channel keeps publishing (a post's own 429 pauses the channel when it comes)."""
    clock = FakeClock()
    t0 = clock.now()
    until = dt.datetime.fromtimestamp(t0 + HOUR + 600, dt.UTC)
    settings = make_settings(tmp_path, {"r": reach_channel()})
    ScriptedReachAdapter.reach_scripts["r"] = [RateLimited("quota", until=until)]
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        await drain(engine)
        clock.t = t0 + HOUR
        await drain(engine)
        states = await sqlite_store.channel_states()
        assert "r" not in states or not states["r"].paused_at(clock.now())
        [first, *_] = (await sqlite_store.story_reach("story-1")).samples
        assert (first.state, first.due_at, first.retry_count) == (SampleState.QUEUED, until.timestamp(), 0)
        # A new story goes out at once, while the sample waits for the platform's reset.
        await engine.accept(make_story(id="story-2"))
        clock.t = t0 + HOUR + 300
        await drain(engine)
        assert len(ScriptedReachAdapter.reach_calls) == 1
        assert [c for c in ScriptedAdapter.calls if "story-2" in c[2]] != []
        clock.t = until.timestamp()
        await drain(engine)
    assert len(ScriptedReachAdapter.reach_calls) == 2
    assert (await samples(sqlite_store))[0] == ("r", HOUR, SampleState.DONE)


async def test_figures_the_platform_publishes_later_are_waited_for_without_spending_retries(
    tmp_path: Path, sqlite_store: Store
) -> None:
    """WeChat reports a day's figures the next morning: its "not yet" (Retryable pending) never uses up a sample."""
    clock = FakeClock()
    t0 = clock.now()
    settings = make_settings(tmp_path, {"r": reach_channel(retry=[0, 5])})
    not_yet = [Retryable("figures from 08:05 tomorrow", retry_after=600, pending=True) for _ in range(4)]
    ScriptedReachAdapter.reach_scripts["r"] = not_yet
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        await drain(engine)
        clock.t = t0 + HOUR
        for _ in range(5):  # four "not yet" answers, more than the channel's retry budget, then the figures
            await drain(engine)
            first = (await sqlite_store.story_reach("story-1")).samples[0]
            clock.t = max(clock.t, first.due_at or clock.t)
    first = (await sqlite_store.story_reach("story-1")).samples[0]
    assert (first.state, first.retry_count) == (SampleState.DONE, 0)
    assert len(ScriptedReachAdapter.reach_calls) == 5


async def test_a_failing_read_retries_on_the_channel_schedule_and_a_permanent_one_ends(
    tmp_path: Path, sqlite_store: Store
) -> None:
    clock = FakeClock()
    t0 = clock.now()
    settings = make_settings(tmp_path, {"r": reach_channel(retry=[0, 5, 300])})
    ScriptedReachAdapter.reach_scripts["r"] = [Retryable("HTTP 503"), Retryable("HTTP 503"), Retryable("HTTP 503")]
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        await drain(engine)
        clock.t = t0 + HOUR
        await drain(engine)
        first = (await sqlite_store.story_reach("story-1")).samples[0]
        assert (first.state, first.due_at, first.retry_count) == (SampleState.QUEUED, t0 + HOUR + 5, 1)
        clock.t = t0 + HOUR + 5
        await drain(engine)
        clock.t = t0 + HOUR + 305
        await drain(engine)
        first = (await sqlite_store.story_reach("story-1")).samples[0]
        assert (first.state, first.attempts, first.last_error_class) == (SampleState.FAILED, 3, "Retryable")
        ScriptedReachAdapter.reach_scripts["r"] = [Permanent("the post is gone")]
        clock.t = t0 + 6 * HOUR
        await drain(engine)
    second = (await sqlite_store.story_reach("story-1")).samples[1]
    assert (second.state, second.attempts, second.note) == (SampleState.FAILED, 1, "the post is gone")


async def test_a_retracted_story_is_sampled_no_more(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    t0 = clock.now()
    settings = make_settings(tmp_path, {"r": reach_channel()})
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        await drain(engine)
        clock.t = t0 + HOUR
        await drain(engine)
        await engine.accept(make_story(version=2, pubstatus="canceled"))
        await drain(engine)
        for age in DEFAULT_AGES:
            clock.t = t0 + age + 1
            await drain(engine)
    assert len(ScriptedReachAdapter.reach_calls) == 1
    assert [state for *_, state in await samples(sqlite_store)] == [SampleState.DONE] + [SampleState.CANCELED] * 4


async def test_a_sample_whose_worker_died_mid_read_completes_once(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    t0 = clock.now()
    settings = make_settings(tmp_path, {"r": reach_channel()})
    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        await drain(engine)
    # A worker claims the 1 h sample and dies while reading it: no outcome, its lease left to expire.
    clock.t = t0 + HOUR
    [dead] = await sqlite_store.claim_reach_samples(
        "dead-worker", now=clock.now(), lease_seconds=settings.engine.lease_seconds, limits={"r": 4}
    )
    clock.advance(settings.engine.lease_seconds + 1)
    async with Engine(settings, sqlite_store, clock=clock, worker_id="survivor") as engine:
        await drain(engine)
    reach = await sqlite_store.story_reach("story-1")
    first = reach.samples[0]
    assert (first.id, first.state, first.attempts) == (dead.sample.id, SampleState.DONE, 2)
    assert len(reach.readings) == 1 and len(ScriptedReachAdapter.reach_calls) == 1


async def test_a_stopping_worker_releases_its_sample_unspent(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    t0 = clock.now()
    settings = make_settings(tmp_path, {"r": reach_channel()})
    blocked = asyncio.Event()

    async with Engine(settings, sqlite_store, clock=clock) as engine:
        await engine.accept(make_story())
        await drain(engine)
        clock.t = t0 + HOUR
        runtime = engine.channels["r"]

        async def hang(ctx: object) -> ReachReading:
            blocked.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        runtime.adapter.read_reach = hang  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(engine.run(stop=stop, grace=0))
        await asyncio.wait_for(blocked.wait(), 5)
        stop.set()
        await task
    first = (await sqlite_store.story_reach("story-1")).samples[0]
    assert (first.state, first.retry_count, first.lease_owner) == (SampleState.QUEUED, 0, None)
    assert State.DELIVERED is (await sqlite_store.list_deliveries(DeliveryFilter()))[0].state


def test_channel_and_section_totals_count_every_story_not_only_the_ranking_shown() -> None:
    from syndicate.reach import StoryInfo, rank_stories
    from syndicate.store.base import ReachTotal

    totals = [ReachTotal(f"s{i}", "x", ReachMetric.READS, 10 * i) for i in range(1, 6)]
    info = {f"s{i}": StoryInfo(f"第{i}条", "时政") for i in range(1, 6)}
    report = rank_stories(totals, info, since=0.0, until=1.0, limit=2)
    assert [s.story_id for s in report.stories] == ["s5", "s4"]
    assert report.by_channel == {"x": {ReachMetric.READS: 150}}
    assert report.by_section == {"时政": {ReachMetric.READS: 150}}


def test_a_story_id_a_spreadsheet_would_run_is_quoted_in_the_csv() -> None:
    from syndicate.reach import StoryInfo, rank_stories
    from syndicate.store.base import ReachTotal

    hostile = '=HYPERLINK("//evil.example")'
    report = rank_stories(
        [ReachTotal(hostile, "x", ReachMetric.READS, 3)], {hostile: StoryInfo("标题", None)}, since=0.0, until=1.0
    )
    [_, row] = csv.reader(io.StringIO(report.to_csv()))
    assert row[1] == "'" + hostile
