"""Where the SQLite store runs its work: brief operations on the event loop's own thread (a hand-over to the store
thread costs more than they do), scans and anything that must wait for another writer's lock in the store thread,
so the loop never waits for a lock."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from syndicate.store.base import StoreUnavailable
from syndicate.store.sqlite import SQLiteStore
from syndicate.store.sqlstore import Conn

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
