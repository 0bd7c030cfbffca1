"""Reach collected end to end against the stand-ins: every registered kind whose adapter reads reach back (taken
from the registry, never a list) publishes a story through its stand-in, and the engine's schedule reads the post's
figures once they are due (the clock moved on), in the platform's own shapes, mapped onto the common metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from adapters.reach_curve import set_standin_clock
from syndicate.config import parse_config
from syndicate.engine import Engine
from syndicate.sandbox import RunningSandbox
from syndicate.store import open_store
from syndicate.store.base import DeliveryFilter, SampleState, State
from tests.support import FakeClock, accept_credentials, make_story, registered_kinds, standin_channels, with_env

REACH_KINDS = sorted(kind for kind, cls in registered_kinds().items() if cls.supports_reach)


@pytest.mark.parametrize("kind", REACH_KINDS)
async def test_a_delivered_post_is_read_back_through_its_standin(
    kind: str, tmp_path: Path, sandbox: RunningSandbox
) -> None:
    example = standin_channels(tmp_path, sandbox.url)
    tables = {name: t for name, t in with_env(example.tables, example.env).items() if t["kind"] == kind}
    raw: dict[str, Any] = {
        "store": {"url": f"sqlite:///{tmp_path / 'reach.db'}"},
        "media": {"allow_private": True, "cache_dir": str(tmp_path / "media-cache")},
        "engine": {"lease_seconds": 5, "poll_interval": 0.05, "retry_jitter": 0},
        "reach": {"ages": ["1s", "2s"]},
        "channels": {name: {**t, "retry": [0, 0.2, 0.5]} for name, t in tables.items()},
    }
    settings = parse_config(raw, source=f"reach-{kind}.toml", env={})
    accept_credentials(sandbox.sandbox, settings)
    store = open_store(settings.store.url)
    await store.migrate()
    story = make_story(
        id=f"reach-{kind}",
        headline="宝山区融媒体中心发布第1期",
        images=[{"href": f"{sandbox.url}/media/story-amber-1200x675.png", "role": "cover"}],
        published_at="2019-09-18T18:30:00+08:00",
    )
    # The engine and the stand-ins' statistics share a clock moved two days on after the delivery: platforms that
    # report a day's figures only the next morning (WeChat's datacube) have them by then, without a real wait.
    clock = FakeClock(time.time())
    set_standin_clock(sandbox.sandbox, clock.now)
    try:
        async with Engine(settings, store, clock=clock) as engine:
            await engine.accept(story)
            await engine.run(until_idle=True, idle_horizon=0)
            clock.advance(2 * 24 * 3600)
            await engine.run(until_idle=True, idle_horizon=0)
        [delivery] = await store.list_deliveries(DeliveryFilter(story_id=story.id))
        assert delivery.state is State.DELIVERED, delivery
        reach = await store.story_reach(story.id)
        assert [s.state for s in reach.samples] == [SampleState.DONE, SampleState.DONE], reach.samples
        assert len(reach.readings) == 2 and all(r.raw for r in reach.readings)  # the platform's own figures kept
        assert reach.points, "no common metric mapped"
        for metric in {p.metric for p in reach.points}:
            values = [p.value for p in reach.points if p.metric is metric]
            assert values == sorted(values) and all(v >= 0 for v in values)  # figures grow with the post's age
    finally:
        set_standin_clock(sandbox.sandbox, None)
        await store.close()
