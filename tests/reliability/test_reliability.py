"""Fault tests against the sandbox: nothing lost, nothing twice, no channel holding up another, crash safety."""

from __future__ import annotations

import asyncio
import collections
import signal
from pathlib import Path
from typing import Any

from syndicate.config import Settings
from syndicate.engine import Engine
from syndicate.sandbox import RunningSandbox, running_sandbox
from syndicate.store import open_store
from syndicate.store.base import DeliveryFilter, State, Store
from tests.support import SYNDICATE, make_settings, make_story

FAST_RETRY = [0, 0.02, 0.05, 0.1, 0.2, 0.2, 0.3, 0.3, 0.5, 0.5, 0.5, 1, 1, 1, 1]


def webhook(sandbox_url: str, name: str, **kw: Any) -> dict[str, Any]:
    return {
        "kind": "webhook",
        "url": f"{sandbox_url}/webhook/{name}",
        "lookup_url": f"{sandbox_url}/webhook/{name}",
        "secret": "test-secret",
        "timeout": 0.5,
        "retry": FAST_RETRY,
        **kw,
    }


def key_counts(sandbox: RunningSandbox) -> collections.Counter[str]:
    return collections.Counter(r.idempotency_key for r in sandbox.sandbox.received("webhook") if r.method == "POST")


async def test_thousand_stories_three_channels_under_faults(tmp_path: Path, sandbox: RunningSandbox) -> None:
    """20 % 503 and 5 % timeout_after (processed, answer lost): all 3,000 delivered, each key exactly once."""
    channels = {name: webhook(sandbox.url, name, concurrency=16) for name in ("web", "app", "feed")}
    settings = make_settings(tmp_path, channels)
    sandbox.sandbox.set_faults(
        "webhook",
        [{"fault": "status:503", "probability": 0.20}, {"fault": "timeout_after", "probability": 0.05}],
    )
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            for i in range(1000):
                await engine.accept(make_story(id=f"s{i:04d}", headline=f"第{i}条新闻"))
            await asyncio.wait_for(engine.run(until_idle=True, idle_horizon=5), timeout=300)
        rows = await store.list_deliveries(DeliveryFilter())
        assert len(rows) == 3000
        assert collections.Counter(d.state for d in rows) == {State.DELIVERED: 3000}
        reconciled = sum(1 for d in rows if d.attempts > 1)
    finally:
        await store.close()
    counts = key_counts(sandbox)
    expected = {f"s{i:04d}:1:{ch}:publish" for i in range(1000) for ch in channels}
    assert set(counts) == expected
    duplicates = {k: n for k, n in counts.items() if n != 1}
    assert duplicates == {}
    stats = sandbox.sandbox.stats("webhook")
    assert sum(s.faults.get("timeout_after", 0) for s in stats.values()) > 0  # the dangerous case did happen
    assert reconciled > 0


async def test_hanging_channel_does_not_slow_a_healthy_one(tmp_path: Path) -> None:
    async with running_sandbox(port=0, seed=1, hold_seconds=60) as sb:
        sb.sandbox.set_faults("webhook", [{"fault": "timeout_before", "probability": 1.0, "name": "stuck"}])
        settings = make_settings(
            tmp_path,
            {
                "stuck": webhook(sb.url, "stuck", timeout=60, concurrency=2),
                "healthy": webhook(sb.url, "healthy", concurrency=8),
            },
        )
        store = open_store(settings.store.url)
        await store.migrate()
        stop = asyncio.Event()
        try:
            async with Engine(settings, store) as engine:
                for i in range(300):
                    await engine.accept(make_story(id=f"s{i:03d}"))
                runner = asyncio.create_task(engine.run(stop=stop, grace=0.2))
                healthy_done = await _wait_for(store, "healthy", 300, deadline=45)
                stuck = await store.list_deliveries(DeliveryFilter(channels=["stuck"]))
                stop.set()
                await runner
        finally:
            await store.close()
        assert healthy_done, "the healthy channel did not finish while the other one hung"
        # Every stuck request is still hanging (none has even timed out), yet the healthy channel is done.
        states = collections.Counter(d.state for d in stuck)
        assert states == {State.IN_FLIGHT: 2, State.QUEUED: 298}
        assert sb.sandbox.stats("webhook")["stuck"].peak_concurrency == 2


async def _wait_for(store: Store, channel: str, n: int, *, deadline: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while loop.time() < end:
        rows = await store.list_deliveries(DeliveryFilter(channels=[channel], states=[State.DELIVERED]))
        if len(rows) >= n:
            return True
        await asyncio.sleep(0.05)
    return False


def _write_config(tmp_path: Path, sandbox_url: str, *, lease: float) -> tuple[Path, Settings]:
    text = f"""
[store]
url = "sqlite:///{tmp_path / "crash.db"}"

[engine]
lease_seconds = {lease}
poll_interval = 0.1
retry_jitter = 0
"""
    for name in ("alpha", "beta"):
        text += f"""
[channels.{name}]
kind = "webhook"
url = "{sandbox_url}/webhook/{name}"
lookup_url = "{sandbox_url}/webhook/{name}"
secret = "crash-secret"
timeout = 5
concurrency = 4
retry = [0, 0.1, 0.2, 0.5, 1, 1, 1]
"""
    path = tmp_path / "crash.toml"
    path.write_text(text)
    from syndicate.config import load_config

    return path, load_config(path, env={})


async def test_worker_killed_mid_delivery_then_restarted_delivers_each_exactly_once(
    tmp_path: Path, sandbox: RunningSandbox
) -> None:
    config, settings = _write_config(tmp_path, sandbox.url, lease=1.5)
    store = open_store(settings.store.url)
    await store.migrate()
    async with Engine(settings, store) as engine:
        for i in range(50):
            await engine.accept(make_story(id=f"k{i:02d}"))
    await store.close()
    # Slow answers keep deliveries in flight; a killed client does not stop the platform from processing them.
    sandbox.sandbox.set_faults("webhook", [{"fault": "slow:250", "probability": 1.0}])

    worker = await asyncio.create_subprocess_exec(SYNDICATE, "work", "--config", str(config))
    try:
        for _ in range(200):
            if len(sandbox.sandbox.received("webhook")) >= 12:
                break
            await asyncio.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        assert await worker.wait() == -signal.SIGKILL
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()

    store = open_store(settings.store.url)
    try:
        in_flight = await store.count_in_flight()
        assert in_flight > 0, "the kill should have caught deliveries in flight"
        sandbox.sandbox.clear_faults()
        restarted = await asyncio.create_subprocess_exec(SYNDICATE, "work", "--until-idle", "--config", str(config))
        assert await asyncio.wait_for(restarted.wait(), timeout=60) == 0
        rows = await store.list_deliveries(DeliveryFilter())
        assert collections.Counter(d.state for d in rows) == {State.DELIVERED: 100}
        assert await store.count_in_flight() == 0
        outcomes = collections.Counter([a.outcome for d in rows for a in await store.attempts(d.id)])
    finally:
        await store.close()
    assert outcomes["lease_expired"] == in_flight
    counts = key_counts(sandbox)
    assert len(counts) == 100
    assert {k: n for k, n in counts.items() if n != 1} == {}


async def test_next_delivery_starts_before_the_outcome_is_written_yet_never_beyond_the_limit(
    tmp_path: Path, sandbox: RunningSandbox
) -> None:
    """On a store that writes outcomes beside the claims (PostgreSQL's way; here SQLite told to), a finished attempt
    frees its slot before its outcome is stored (the engine counts it as finished-but-unwritten when claiming);
    with slow outcome writes the channel must still never have more requests in flight than its limit, and every
    story lands once."""
    from syndicate.store.sqlite import SQLiteStore

    writes: list[int] = []

    class SlowOutcomeWrites(SQLiteStore):
        combines_outcomes_with_claims = False

        async def complete(self, completions):  # type: ignore[no-untyped-def]
            writes.append(len(completions))
            await asyncio.sleep(0.03)
            return await super().complete(completions)

    settings = make_settings(tmp_path, {"narrow": webhook(sandbox.url, "narrow", concurrency=3)})
    sandbox.sandbox.set_faults("webhook", [{"fault": "slow:0.01", "probability": 1.0, "name": "narrow"}])
    store = SlowOutcomeWrites(settings.store.url[len("sqlite:///") :])
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            for i in range(120):
                await engine.accept(make_story(id=f"p{i:03d}"))
            await asyncio.wait_for(engine.run(until_idle=True), timeout=120)
        assert (await store.counts()).by_state == {State.DELIVERED: 120}
    finally:
        await store.close()
    assert sandbox.sandbox.stats("webhook")["narrow"].peak_concurrency == 3
    assert set(key_counts(sandbox).values()) == {1}
    # Requests (10 ms) outpace the writes (30 ms each): outcomes were written in batches while slots were reused.
    assert max(writes) > 3


async def test_outcomes_written_with_the_claims_keep_the_limit_and_land_each_story_once(
    tmp_path: Path, sandbox: RunningSandbox
) -> None:
    """SQLite writes ended attempts' outcomes in the claim's own transaction; a slow one (30 ms against 10 ms
    requests) delays the next claims, never loses an outcome nor lets the channel exceed its limit."""
    from syndicate.store.sqlite import SQLiteStore

    carried: list[int] = []

    class SlowCombinedWrites(SQLiteStore):
        async def complete_and_claim(self, completions, *args, **kwargs):  # type: ignore[no-untyped-def]
            if completions:
                carried.append(len(completions))
                await asyncio.sleep(0.03)
            return await super().complete_and_claim(completions, *args, **kwargs)

    settings = make_settings(tmp_path, {"narrow": webhook(sandbox.url, "narrow", concurrency=3)})
    sandbox.sandbox.set_faults("webhook", [{"fault": "slow:0.01", "probability": 1.0, "name": "narrow"}])
    store = SlowCombinedWrites(settings.store.url[len("sqlite:///") :])
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            for i in range(60):
                await engine.accept(make_story(id=f"q{i:03d}"))
            await asyncio.wait_for(engine.run(until_idle=True), timeout=120)
        assert (await store.counts()).by_state == {State.DELIVERED: 60}
        for d in await store.list_deliveries(DeliveryFilter()):
            assert [a.outcome for a in await store.attempts(d.id)] == ["delivered"]  # none left to reconciliation
    finally:
        await store.close()
    assert sandbox.sandbox.stats("webhook")["narrow"].peak_concurrency == 3
    assert set(key_counts(sandbox).values()) == {1}
    assert sum(carried) == 60 and max(carried) > 1  # every outcome rode in a claim, several at a time
