"""Which writes wait for the disk: claims and accepted stories always; outcomes do not (their loss in a power cut
is repaired by the lease and the reconciling lookup), and the connection is back to synced writes right after."""

from __future__ import annotations

from pathlib import Path

from syndicate.channel import Action, Payload
from syndicate.store.base import Completion, FanOutPlan, NewDelivery, State
from syndicate.store.sqlite import SQLiteStore
from tests.conftest import make_story

NOW = 1_700_000_000.0
FULL, NORMAL = 2, 1


async def test_sqlite_outcomes_skip_the_sync_and_everything_else_keeps_it(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "durability.db")
    await store.migrate()
    seen: list[int] = []
    original = store._tx

    def spying_tx(conn, **kw):  # type: ignore[no-untyped-def]
        context = original(conn, **kw)

        class Spy:
            def __enter__(self):  # type: ignore[no-untyped-def]
                entered = context.__enter__()
                seen.append(conn.execute("PRAGMA synchronous").fetchone()[0])
                return entered

            def __exit__(self, *exc):  # type: ignore[no-untyped-def]
                return context.__exit__(*exc)

        return Spy()

    store._tx = spying_tx  # type: ignore[method-assign]
    try:
        plan = FanOutPlan(new=[NewDelivery("a", Action.PUBLISH, State.QUEUED, Payload({"n": 1}), NOW)])
        await store.fan_out(make_story(), lambda existing: plan, now=NOW)
        [claim] = await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 1})
        done = Completion(claim.delivery.id, claim.attempt_id, "w1", State.DELIVERED, "delivered", NOW, 1.0)
        assert await store.complete([done]) == []
        [claim_sync] = seen[-2:-1]
        outcome_sync = seen[-1]
        assert seen[0] == FULL  # the accepted story
        assert claim_sync == FULL  # the attempt row exists on disk before any byte is sent
        assert outcome_sync == NORMAL
        after = await store._run(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
        assert after == FULL
    finally:
        await store.close()
