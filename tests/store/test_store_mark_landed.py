"""Store contract for what the dashboard needs (both backends through the `store` fixture): an operator marking an
`unknown` delivery as landed, the newest stories, and per-channel attempt statistics for the health chart."""

from __future__ import annotations

from syndicate.delivery import Receipt
from syndicate.store.base import (
    LANDED_BY_OPERATOR,
    OPERATOR_WORKER,
    State,
    Store,
)
from tests.store.test_store_contract import LIMITS, NOW, done, plan_for
from tests.support import make_story


async def _settle(store: Store, state: State, *, outcome: str | None = None, at: float = NOW + 1) -> int:
    """One delivery on channel a, claimed and finished in ``state``; returns its id."""
    claims = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    [claim] = [c for c in claims if c.delivery.channel == "a"]
    await store.complete([done(claim, state, outcome=outcome or state.value, finished_at=at)])
    return claim.delivery.id


async def test_mark_landed_turns_unknown_into_delivered_with_an_attempt_row(store: Store) -> None:
    await store.fan_out(make_story(), plan_for("a"), now=NOW)
    delivery_id = await _settle(store, State.UNKNOWN)
    receipt = Receipt(remote_id="post-42", url="https://example.cn/p/42")

    assert await store.mark_landed(delivery_id, receipt, now=NOW + 60, note="confirmed by 值班编辑") is True

    d = await store.get_delivery(delivery_id)
    assert (d.state, d.receipt, d.note, d.attempts) == (State.DELIVERED, receipt, "confirmed by 值班编辑", 2)
    assert d.updated_at == NOW + 60 and d.last_error is None and not d.reconcile
    history = await store.attempts(delivery_id)
    assert [(a.number, a.worker, a.outcome) for a in history] == [
        (1, "w1", "unknown"),
        (2, OPERATOR_WORKER, LANDED_BY_OPERATOR),
    ]
    assert history[1].message == "confirmed by 值班编辑" and history[1].finished_at == NOW + 60
    # The story's live post is now the operator's receipt: an update would edit that post.
    assert [x.receipt for x in await store.latest_delivered("a")] == [receipt]


async def test_mark_landed_refuses_anything_but_unknown(store: Store) -> None:
    await store.fan_out(make_story(), plan_for("a"), now=NOW)
    failed_id = await _settle(store, State.FAILED)
    assert await store.mark_landed(failed_id, Receipt(remote_id="x"), now=NOW + 5, note="n") is False
    assert (await store.get_delivery(failed_id)).state is State.FAILED
    assert len(await store.attempts(failed_id)) == 1
    assert await store.mark_landed(999_999, Receipt(remote_id="x"), now=NOW + 5, note="n") is False


async def test_recent_story_ids_newest_first(store: Store) -> None:
    await store.fan_out(make_story(id="old"), plan_for("a"), now=NOW)
    await store.fan_out(make_story(id="mid"), plan_for("a"), now=NOW + 10)
    await store.fan_out(make_story(id="new"), plan_for("a"), now=NOW + 20)
    # A new version of the old story makes it the newest again.
    await store.fan_out(make_story(id="old", version=2), plan_for("a"), now=NOW + 30)
    assert await store.recent_story_ids(10) == ["old", "new", "mid"]
    assert await store.recent_story_ids(2) == ["old", "new"]


async def test_attempt_buckets_count_successes_and_latency_per_slice(store: Store) -> None:
    for i in range(3):
        await store.fan_out(make_story(id=f"s{i}"), plan_for("a", "b"), now=NOW)
    claims = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
    a_claims = [c for c in claims if c.delivery.channel == "a"]
    b_claims = [c for c in claims if c.delivery.channel == "b"]
    assert len(a_claims) == len(b_claims) == 3
    await store.complete(
        [
            done(a_claims[0], finished_at=NOW + 10),  # slot 0: delivered, 5 ms
            done(a_claims[1], State.RETRY_WAIT, outcome="retry", finished_at=NOW + 20),  # slot 0: not a success
            done(a_claims[2], State.UNKNOWN, outcome="unknown", finished_at=NOW + 70),  # slot 1
            done(b_claims[0], State.SKIPPED, outcome="skipped", finished_at=NOW + 10),  # left out
            done(b_claims[1], outcome="reconciled", finished_at=NOW - 100),  # before `since`: left out
            done(b_claims[2], outcome="reconciled", finished_at=NOW + 10),
        ]
    )
    await store.mark_landed(a_claims[2].delivery.id, Receipt(remote_id="r"), now=NOW + 80, note="op")  # left out

    buckets = await store.attempt_buckets(since=NOW, bucket_seconds=60)
    assert [(b.channel, b.start, b.attempts, b.succeeded) for b in buckets] == [
        ("a", NOW, 2, 1),
        ("a", NOW + 60, 1, 0),
        ("b", NOW, 1, 1),
    ]
    assert buckets[0].mean_ms == 5.0 and buckets[0].max_ms == 5.0
