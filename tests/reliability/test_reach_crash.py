"""Issue 18: a worker SIGKILLed while it reads a post's reach loses no sample plan and reads it once. The X stand-in
answers the statistics call slowly, so the kill finds the sample in flight; a new worker reclaims it when its lease
runs out and finishes it: one reading stored, the plan done."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from syndicate.config import load_config
from syndicate.engine import Engine
from syndicate.sandbox import RunningSandbox
from syndicate.store import open_store
from syndicate.store.base import DeliveryFilter, SampleState, State, Store
from tests.support import (
    SYNDICATE,
    accept_credentials,
    make_story,
    standin_channels,
    toml_text,
    with_env,
)


async def _samples(store: Store, story_id: str) -> list[SampleState]:
    return [s.state for s in (await store.story_reach(story_id)).samples]


async def test_a_worker_killed_while_reading_reach_loses_no_sample_and_reads_it_once(
    tmp_path: Path, sandbox: RunningSandbox
) -> None:
    example = standin_channels(tmp_path, sandbox.url)
    [x] = [t for t in with_env(example.tables, example.env).values() if t["kind"] == "x"]
    raw: dict[str, Any] = {
        "store": {"url": f"sqlite:///{tmp_path / 'reach-crash.db'}"},
        "engine": {"lease_seconds": 1.5, "poll_interval": 0.05, "retry_jitter": 0},
        "reach": {"ages": ["1s"]},
        "channels": {"x": {**x, "retry": [0, 0.2, 0.5]}},
    }
    config = tmp_path / "reach-crash.toml"
    config.write_text(toml_text(raw), encoding="utf-8")
    settings = load_config(config, env={})
    accept_credentials(sandbox.sandbox, settings)
    store = open_store(settings.store.url)
    await store.migrate()
    story = make_story(id="reach-crash", headline="宝山区融媒体中心发布第2期")
    try:
        async with Engine(settings, store) as engine:
            await engine.accept(story)
            await engine.run(until_idle=True, idle_horizon=0)  # delivered; its sample falls due a second later
        [delivery] = await store.list_deliveries(DeliveryFilter(story_id=story.id))
        assert delivery.state is State.DELIVERED
        assert await _samples(store, story.id) == [SampleState.QUEUED]

        sandbox.sandbox.set_faults("x", [{"fault": "slow:4000", "methods": ["GET"]}])  # the statistics call hangs
        worker = await asyncio.create_subprocess_exec(SYNDICATE, "work", "--config", str(config))
        try:
            for _ in range(200):
                if await _samples(store, story.id) == [SampleState.IN_FLIGHT]:
                    break
                await asyncio.sleep(0.05)
            assert await _samples(store, story.id) == [SampleState.IN_FLIGHT], "the kill should find the sample read"
            worker.send_signal(signal.SIGKILL)
            assert await worker.wait() == -signal.SIGKILL
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()

        sandbox.sandbox.clear_faults()
        restarted = await asyncio.create_subprocess_exec(SYNDICATE, "work", "--until-idle", "--config", str(config))
        assert await asyncio.wait_for(restarted.wait(), timeout=60) == 0
        reach = await store.story_reach(story.id)
        assert [s.state for s in reach.samples] == [SampleState.DONE]
        assert len(reach.readings) == 1  # the new worker's: the killed one's answer never came back to store
    finally:
        await store.close()
