"""Every write transaction of the SQLite store waits for the disk (synchronous=FULL): accepted stories, claims (the
attempt row exists on disk before any byte is sent) and outcomes. Speed comes from batching, not from weaker
guarantees; a COMMIT that fails leaves no transaction open behind it."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from syndicate.delivery import Action, Payload
from syndicate.store import sqlite as sqlite_store
from syndicate.store.base import Completion, FanOutPlan, NewDelivery, State
from syndicate.store.sqlite import SQLiteStore
from syndicate.store.sqlstore import Conn
from tests.support import make_story

NOW = 1_700_000_000.0
FULL = 2


async def test_sqlite_every_write_waits_for_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteStore(tmp_path / "durability.db")
    await store.migrate()
    seen: list[int] = []
    original = sqlite_store._commit

    def spying_commit(conn: sqlite3.Connection) -> None:
        seen.append(conn.execute("PRAGMA synchronous").fetchone()[0])
        original(conn)

    monkeypatch.setattr(sqlite_store, "_commit", spying_commit)
    try:
        plan = FanOutPlan(new=[NewDelivery("a", Action.PUBLISH, State.QUEUED, Payload({"n": 1}), NOW)])
        await store.fan_out(make_story(), lambda existing, first_accepted: plan, now=NOW)
        [claim] = await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 1})
        done = Completion(claim.delivery.id, claim.attempt_id, "w1", State.DELIVERED, "delivered", NOW, 1.0)
        assert await store.complete([done]) == []
        assert seen == [FULL, FULL, FULL]  # the accepted story, the claim, the outcome
    finally:
        await store.close()


def _violated_at_commit(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO kv (key, value, expires_at, updated_at) VALUES ('k', 'v', NULL, 0)")
    # A deferred foreign key violated at COMMIT: the COMMIT fails and SQLite keeps the transaction open.
    conn.execute("PRAGMA defer_foreign_keys = ON")
    conn.execute("INSERT INTO attempts (delivery_id, number, worker, started_at) VALUES (424242, 1, 'w', 0)")


@pytest.mark.parametrize("where", ["loop", "store thread"])
async def test_sqlite_a_failed_commit_leaves_no_transaction_open(tmp_path: Path, where: str) -> None:
    store = SQLiteStore(tmp_path / "commit.db")
    await store.migrate()

    async def op(conn: Conn) -> None:
        _violated_at_commit(conn._conn)  # type: ignore[attr-defined]  # the sqlite3 connection under the Conn

    try:
        with pytest.raises(sqlite3.IntegrityError):
            await store._write(op, scan=where == "store thread")
        if where == "loop":
            assert store._inline is not None and not store._inline.in_transaction
        assert not await store._run(lambda conn: conn.in_transaction)
        await store.kv_set("after", "works", expires_at=None, now=NOW)  # the connections are usable again
        assert await store.kv_get("after", now=NOW) == "works"
        assert await store.kv_get("k", now=NOW) is None  # the failed transaction's write is gone
    finally:
        await store.close()


@pytest.mark.parametrize("version", [(3, 34, 1), (3, 35, 4)])
def test_sqlite_older_than_3_35_5_is_refused_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: tuple[int, int, int]
) -> None:
    text = ".".join(map(str, version))
    monkeypatch.setattr(sqlite3, "sqlite_version_info", version)
    monkeypatch.setattr(sqlite3, "sqlite_version", text)
    with pytest.raises(
        RuntimeError, match=rf"SQLite {re.escape(text)} is too old: syndicate needs SQLite 3\.35\.5 or newer"
    ):
        SQLiteStore(tmp_path / "old.db")
