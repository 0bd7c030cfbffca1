"""Where the SQLite store runs its work: brief operations on the event loop's own thread (a hand-over to the store
thread costs more than they do), scans and anything that must wait for another writer's lock in the store thread,
so the loop never waits for a lock."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from syndicate import operations
from syndicate.delivery import Action, Payload
from syndicate.store.base import DeliveryFilter, FanOutPlan, NewDelivery, State, StoreError, StoreUnavailable
from syndicate.store.sqlite import SQLiteStore
from syndicate.store.sqlstore import LARGE_STORY_JSON, Conn
from tests.support import make_story

NOW = 1_700_000_000.0


async def _thread_of(conn: Conn) -> int:
    return threading.get_ident()


async def test_brief_operations_run_on_the_loops_thread_and_scans_in_the_store_thread(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "threads.db")
    await store.migrate()
    try:
        here = threading.get_ident()
        assert await store._read(_thread_of) == here
        assert await store._write(_thread_of) == here
        assert await store._read(_thread_of, scan=True) != here
        assert await store._write(_thread_of, scan=True) != here
    finally:
        await store.close()


async def test_a_write_that_finds_the_lock_held_waits_in_the_store_thread_not_on_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    store = SQLiteStore(path, busy_timeout=10)
    await store.migrate()
    other = sqlite3.connect(path, isolation_level=None)  # another process's writer, as far as SQLite can tell
    try:
        await store.kv_set("before", "1", expires_at=None, now=NOW)  # the loop's connection is open and warm
        assert store._inline is not None and store._inline.execute("PRAGMA busy_timeout").fetchone()[0] == 0
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO kv (key, value, expires_at, updated_at) VALUES ('other', 'x', NULL, 0)")
        write = asyncio.create_task(store.kv_set("waiting", "2", expires_at=None, now=NOW))
        # Had the write waited for the lock on the loop's thread, this sleep would have lasted the whole busy
        # timeout (10 s), not 0.3 s.
        slept_from = asyncio.get_running_loop().time()
        await asyncio.sleep(0.3)
        assert asyncio.get_running_loop().time() - slept_from < 5
        assert not write.done()
        assert await store.kv_get("before", now=NOW) == "1"  # reads go on meanwhile (WAL)
        other.execute("COMMIT")
        await asyncio.wait_for(write, timeout=10)
        assert await store.kv_get("waiting", now=NOW) == "2"
        assert await store.kv_get("other", now=NOW) == "x"
    finally:
        other.close()
        await store.close()


async def test_a_lock_held_past_the_busy_timeout_says_who_to_look_for(tmp_path: Path) -> None:
    path = tmp_path / "stuck.db"
    store = SQLiteStore(path, busy_timeout=0.2)
    await store.migrate()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match=r"another process held .* locked for more than 0\.2 s") as caught:
            await store.kv_set("k", "v", expires_at=None, now=NOW)
        assert "stuck syndicate process" in str(caught.value)
        other.execute("ROLLBACK")
        await store.kv_set("k", "v", expires_at=None, now=NOW)  # nothing was left half done
        assert await store.kv_get("k", now=NOW) == "v"
    finally:
        other.close()
        await store.close()


async def test_an_in_memory_store_keeps_to_one_connection(tmp_path: Path) -> None:
    store = SQLiteStore(":memory:")
    await store.migrate()
    try:
        await store.kv_set("k", "v", expires_at=None, now=NOW)
        assert await store.kv_get("k", now=NOW) == "v"  # a second connection would have seen an empty database
        assert await store._read(_thread_of) != threading.get_ident()
    finally:
        await store.close()


def _plan(*channels: str):  # type: ignore[no-untyped-def]
    def planner(existing, first_accepted):  # type: ignore[no-untyped-def]
        return FanOutPlan(
            new=[NewDelivery(ch, Action.PUBLISH, State.QUEUED, Payload({"ch": ch}), NOW) for ch in channels]
        )

    return planner


async def test_the_public_operations_that_grow_with_the_archive_run_in_the_store_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(tmp_path / "where.db")
    await store.migrate()
    await store.fan_out(make_story(id="s1"), _plan("a"), now=NOW)  # opens the loop's connection
    handed: list[int] = []
    original = store._run

    async def counting(fn):  # type: ignore[no-untyped-def]
        handed.append(1)
        return await original(fn)

    monkeypatch.setattr(store, "_run", counting)

    async def runs_in_thread(call) -> bool:  # type: ignore[no-untyped-def]
        handed.clear()
        await call
        return bool(handed)

    try:
        # Brief: the hot path and single-row reads stay on the loop.
        assert not await runs_in_thread(store.kv_set("k", "v", expires_at=None, now=NOW))
        assert not await runs_in_thread(store.kv_get("k", now=NOW))
        assert not await runs_in_thread(store.fan_out(make_story(id="s2"), _plan("a"), now=NOW))
        assert not await runs_in_thread(store.claim("w", now=NOW, lease_seconds=30, limits={"a": 1}))
        assert not await runs_in_thread(store.get_delivery(1))
        assert not await runs_in_thread(store.next_due_at(["a"], now=NOW))
        # Scans: listings, reports, counts over the queue, purges, a very large story, a rendering planner.
        for scan in (
            lambda: store.list_deliveries(DeliveryFilter()),
            lambda: store.latest_delivered("a"),
            lambda: store.latest_delivered("a", story_id="s1"),
            lambda: store.recent_story_ids(10),
            lambda: store.story_reach("s1"),
            lambda: store.counts(),
            lambda: store.queue_depth(),
            lambda: store.reach_totals(since=0, until=NOW),
            lambda: store.reach_channel_totals(),
            lambda: store.attempt_buckets(since=0, bucket_seconds=60),
            lambda: store.purge_expired_keys(now=NOW),
            lambda: store.migrate(),
            lambda: store.fan_out(
                make_story(id="big", body_html="<p>" + "x" * LARGE_STORY_JSON + "</p>"), _plan("a"), now=NOW
            ),
            lambda: store.fan_out(make_story(id="s3"), _plan("a"), now=NOW, planner_renders=True),
        ):
            assert await runs_in_thread(scan()), scan
    finally:
        await store.close()


async def test_requeueing_many_batches_lets_the_loop_run_between_them(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "requeue.db")
    await store.migrate()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    try:
        for i in range(4):
            await store.fan_out(make_story(id=f"r{i}"), _plan("a"), now=NOW)
        deliveries = await store.list_deliveries(DeliveryFilter())
        running = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        await operations.requeue(store, deliveries, now=NOW, force=True, batch_size=1)
        # Each batch commits without suspending; the pause after each one is what lets the ticker run.
        assert ticks - before >= len(deliveries)
        running.cancel()
    finally:
        await store.close()


async def test_a_closed_store_refuses_operations_and_opens_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "closed.db")
    await store.migrate()
    await store.kv_set("k", "v", expires_at=None, now=NOW)
    await store.close()
    with pytest.raises(StoreError, match="is closed"):
        await store.kv_get("k", now=NOW)
    assert store._inline is None


async def test_an_empty_path_keeps_to_one_connection_like_memory() -> None:
    store = SQLiteStore("")  # SQLite's private temporary database: one per connection
    await store.migrate()
    try:
        await store.kv_set("k", "v", expires_at=None, now=NOW)
        assert await store.kv_get("k", now=NOW) == "v"
        assert store._inline is None
    finally:
        await store.close()
