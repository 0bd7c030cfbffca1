"""Several `syndicate work` processes on one PostgreSQL store: nothing lost, nothing twice, limits held across them."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from pathlib import Path

from syndicate.config import load_config
from syndicate.engine import Engine
from syndicate.sandbox import RunningSandbox
from syndicate.store import open_store
from syndicate.store.base import State, Store
from tests.support import make_story, pg_schema_url, start_worker, write_config


async def delivered(store: Store) -> int:
    return (await store.counts()).by_state.get(State.DELIVERED, 0)


async def test_three_workers_one_killed_drain_5000_exactly_once(tmp_path: Path, sandbox: RunningSandbox) -> None:
    async with pg_schema_url() as url:
        config = write_config(
            tmp_path,
            sandbox.url,
            channels={"alpha": {"concurrency": 2}, "beta": {"concurrency": 8}},
            retry=[0, 0.1, 0.2, 0.5, 1, 1, 1, 1],
            timeout=5,
            secret="distributed-secret",
            store_url=url,
            engine={"lease_seconds": 2, "poll_interval": 0.5, "retry_jitter": 0},
            name="distributed.toml",
        )
        settings = load_config(config, env={})
        store = open_store(url)
        await store.migrate()
        # Slow answers on the limited channel make the three processes contend for its two slots.
        sandbox.sandbox.set_faults("webhook", [{"fault": "slow:3", "probability": 1.0, "name": "alpha"}])
        async with Engine(settings, store) as engine:
            for i in range(2500):
                await engine.accept(make_story(id=f"d{i:04d}", headline=f"第{i}条"))
        logs = tmp_path / "workers.log"
        workers = [await start_worker(config, logs) for _ in range(3)]
        try:
            deadline = time.monotonic() + 120
            while await delivered(store) < 1200:
                assert time.monotonic() < deadline, "workers made no progress"
                await asyncio.sleep(0.1)
            workers[0].send_signal(signal.SIGKILL)
            assert await workers[0].wait() == -signal.SIGKILL
            workers.append(await start_worker(config, logs))
            while await delivered(store) < 5000:
                assert time.monotonic() < deadline, (await store.counts(), logs.read_text()[-3000:])
                await asyncio.sleep(0.2)
        finally:
            for proc in workers:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(proc.wait(), timeout=30) for proc in workers]
        assert codes == [-signal.SIGKILL, 0, 0, 0]  # the survivors stop cleanly on SIGTERM
        counts = await store.counts()
        assert counts.by_state == {State.DELIVERED: 5000}
        assert await store.count_in_flight() == 0
        await store.close()

    received = collections.Counter(r.idempotency_key for r in sandbox.sandbox.received("webhook"))
    assert len(received) == 5000
    assert {k: n for k, n in received.items() if n != 1} == {}
    stats = sandbox.sandbox.stats("webhook")
    # The channel limit is global: three (then four) processes never had more than 2 alpha requests in flight.
    assert stats["alpha"].peak_concurrency == 2
    assert stats["beta"].peak_concurrency <= 8
