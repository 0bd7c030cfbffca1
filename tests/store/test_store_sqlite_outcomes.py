"""SQLite's fenced outcome write: its outcome statement checks the lease itself, so a batch whose completions all
hold their leases (the rule) is written without reading them first; a lost lease rolls that write back and the
batch is written again with the leases read, so the one that lost it is told apart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from syndicate.delivery import Action, Payload, Receipt
from syndicate.store.base import Claim, Completion, FanOutPlan, NewDelivery, State
from syndicate.store.sqlite import SQLiteStore
from tests.store.test_store_contract import LIMITS, NOW, done, plan_for
from tests.support import make_story


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """A SQLite store of its own (the shared fixture runs every backend; these tests are SQLite's)."""
    opened = SQLiteStore(tmp_path / "outcomes.db")
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.close()


async def _claimed(store: SQLiteStore, n: int) -> list[Claim]:
    for i in range(n):
        await store.fan_out(make_story(id=f"s{i}"), plan_for("a"), now=NOW)
    return await store.claim("w1", now=NOW, lease_seconds=30, limits={**LIMITS, "a": n})


def _statements(store: SQLiteStore) -> list[str]:
    seen: list[str] = []
    assert store._inline is not None
    store._inline.set_trace_callback(seen.append)
    return seen


def _read_the_leases(seen: list[str]) -> bool:
    return any("lease_owner, attempts, story_id" in s for s in seen)  # lease_holders' column list


async def test_outcomes_whose_leases_all_hold_are_written_without_reading_the_leases(store: SQLiteStore) -> None:
    claims = await _claimed(store, 3)
    seen = _statements(store)
    assert await store.complete([done(c, receipt=Receipt(f"r{c.delivery.id}")) for c in claims]) == []
    assert not _read_the_leases(seen), "the leases were read first"
    for c in claims:
        d = await store.get_delivery(c.delivery.id)
        assert d.state is State.DELIVERED and d.receipt == Receipt(f"r{c.delivery.id}")
        assert [a.outcome for a in await store.attempts(c.delivery.id)] == ["delivered"]


async def test_one_lost_lease_rolls_the_fenced_write_back_and_the_rest_still_land(store: SQLiteStore) -> None:
    first, second, third = await _claimed(store, 3)
    batch: list[Completion] = [done(first), done(second, worker="intruder"), done(third)]
    seen = _statements(store)
    assert await store.complete(batch) == [second.delivery.id]
    assert _read_the_leases(seen), "the second write read no leases"
    assert (await store.get_delivery(second.delivery.id)).state is State.IN_FLIGHT
    assert [a.outcome for a in await store.attempts(second.delivery.id)] == ["delivered (lease lost)"]
    for c in (first, third):
        assert (await store.get_delivery(c.delivery.id)).state is State.DELIVERED
        # written once: the fenced write's rows went with its rollback
        assert [a.outcome for a in await store.attempts(c.delivery.id)] == ["delivered"]


async def test_a_batch_mixing_kept_and_converted_actions_is_counted_whole_and_only_conversions_set_the_action(
    store: SQLiteStore,
) -> None:
    for i in range(2):
        plan = FanOutPlan(new=[NewDelivery("a", Action.UPDATE, State.QUEUED, Payload({"v": i}), NOW)])
        await store.fan_out(make_story(id=f"m{i}"), lambda existing, first, plan=plan: plan, now=NOW)
    kept, converted = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    seen = _statements(store)
    batch = [done(kept), done(converted, action=Action.PUBLISH, payload=Payload({"v": 9}))]
    assert await store.complete(batch) == []
    assert not _read_the_leases(seen), "the leases were read first"
    # One outcome statement each: only the conversion's sets the action (the kept one's would rewrite its
    # entry in the unique index).
    outcomes = [s for s in seen if s.lstrip().startswith("UPDATE deliveries SET state")]
    assert len(outcomes) == 2 and ["action = " in s for s in outcomes] == [False, True]
    assert (await store.get_delivery(kept.delivery.id)).action is Action.UPDATE
    assert (await store.get_delivery(converted.delivery.id)).action is Action.PUBLISH


async def test_a_lost_lease_in_a_claiming_write_claims_once_and_leaves_no_transaction_open(store: SQLiteStore) -> None:
    await store.fan_out(make_story(id="s1"), plan_for("a", "b"), now=NOW)
    ca, cb = await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 1, "b": 1})
    await store.fan_out(make_story(id="s2"), plan_for("a"), now=NOW)
    done_and_claimed = await store.complete_and_claim(
        [done(ca), done(cb, worker="intruder")],
        "w1",
        now=NOW + 1,
        lease_seconds=30,
        limits={"a": 1, "b": 1},
        finished=[ca.delivery.id, cb.delivery.id],
    )
    assert done_and_claimed.lost == [cb.delivery.id]
    [claimed] = done_and_claimed.claims
    assert claimed.delivery.story_id == "s2" and claimed.attempt_number == 1
    # The rolled-back first run's claim and attempt row left nothing behind.
    assert len(await store.attempts(claimed.delivery.id)) == 1
    assert store._inline is not None and not store._inline.in_transaction
    assert [a.outcome for a in await store.attempts(ca.delivery.id)] == ["delivered"]
