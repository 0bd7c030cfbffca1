"""Prometheus metrics: attempt outcomes and latency from the engine, queue depth and pauses from the store."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from syndicate.delivery import AuthRevoked, Permanent, Retryable
from syndicate.engine import Engine
from syndicate.metrics import ATTEMPT_BUCKETS, OUTCOMES, Metrics
from syndicate.sandbox import RunningSandbox
from syndicate.store import open_store
from syndicate.store.base import PAUSED_INDEFINITELY, State, Store
from tests.support import FakeClock, ScriptedAdapter, make_settings, make_story, scripted


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def deliveries(metrics: Metrics, channel: str, outcome: str) -> float | None:
    return sample(metrics, "syndicate_deliveries_total", channel=channel, outcome=outcome)


async def test_engine_counts_outcomes_per_channel_and_observes_latency(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    metrics = Metrics()
    settings = make_settings(tmp_path, {"a": scripted(retry=[0, 5, 300]), "b": scripted()})
    ScriptedAdapter.scripts["a"] = [Retryable("HTTP 503"), Retryable("HTTP 503"), None]
    async with Engine(settings, sqlite_store, clock=clock, metrics=metrics) as engine:
        # Every outcome series exists at 0 from the start.
        assert all(deliveries(metrics, ch, o) == 0 for ch in ("a", "b") for o in OUTCOMES)
        await engine.accept(make_story(id="s1"))
        await engine.accept(make_story(id="s2", targets=["b"]))
        await engine.run(until_idle=True)
        clock.advance(5)
        await engine.run(until_idle=True)
        clock.advance(300)
        await engine.run(until_idle=True)

    assert deliveries(metrics, "a", "retry") == 2
    assert deliveries(metrics, "a", "delivered") == 1
    assert deliveries(metrics, "b", "delivered") == 2
    assert deliveries(metrics, "b", "retry") == 0
    assert deliveries(metrics, "a", "failed") == 0
    assert sample(metrics, "syndicate_attempt_seconds_count", channel="a") == 3
    assert sample(metrics, "syndicate_attempt_seconds_count", channel="b") == 2
    # On the fake clock every attempt takes no time: all in the smallest bucket.
    assert sample(metrics, "syndicate_attempt_seconds_bucket", channel="a", le=str(ATTEMPT_BUCKETS[0])) == 3


async def test_latency_is_real_time_on_the_system_clock(tmp_path: Path, sandbox: RunningSandbox) -> None:
    sandbox.sandbox.set_faults("webhook", [{"fault": "slow:40"}])
    url = sandbox.url_for("/webhook/mirror")
    settings = make_settings(tmp_path, {"hook": {"kind": "webhook", "url": url, "secret": "s3cr3t-value-XYZ"}})
    metrics = Metrics()
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store, metrics=metrics) as engine:
            for i in range(3):
                await engine.accept(make_story(id=f"s{i}"))
            await engine.run(until_idle=True)
    finally:
        await store.close()
    assert deliveries(metrics, "hook", "delivered") == 3
    assert sample(metrics, "syndicate_attempt_seconds_count", channel="hook") == 3
    assert sample(metrics, "syndicate_attempt_seconds_bucket", channel="hook", le="0.025") == 0
    total = sample(metrics, "syndicate_attempt_seconds_sum", channel="hook")
    assert total is not None and 3 * 0.04 <= total < 3 * 5


async def test_other_outcomes_are_counted(tmp_path: Path, sqlite_store: Store) -> None:
    metrics = Metrics()
    settings = make_settings(tmp_path, {"p": scripted(), "r": scripted()})
    ScriptedAdapter.scripts["p"] = [Permanent("too long")]
    ScriptedAdapter.scripts["r"] = [AuthRevoked("token revoked")]
    async with Engine(settings, sqlite_store, clock=FakeClock(), metrics=metrics) as engine:
        await engine.accept(make_story())
        await engine.run(until_idle=True)
    assert deliveries(metrics, "p", "failed") == 1
    assert deliveries(metrics, "r", "auth_revoked") == 1


async def test_engine_without_metrics_works_as_before(tmp_path: Path, sqlite_store: Store) -> None:
    settings = make_settings(tmp_path, {"a": scripted()})
    async with Engine(settings, sqlite_store, clock=FakeClock()) as engine:
        assert engine.metrics is None
        await engine.accept(make_story())
        await engine.run(until_idle=True)
    [(key, count)] = [(k, v) for k, v in (await sqlite_store.queue_depth()).items()]
    assert key == ("a", State.DELIVERED) and count == 1


async def test_refresh_from_store_sets_queue_depth_and_paused(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    now = clock.now()
    metrics = Metrics()
    settings = make_settings(tmp_path, {"a": scripted(), "b": scripted(), "idle": scripted()})
    engine = Engine(settings, sqlite_store, clock=clock, metrics=metrics)
    for i in range(3):
        await engine.accept(make_story(id=f"s{i}", targets=["a", "b"]))
    await sqlite_store.pause_channel("b", until=PAUSED_INDEFINITELY, reason="credentials rejected", now=now)

    await metrics.refresh_from_store(sqlite_store, settings.channels, now)
    depth = "syndicate_queue_depth"
    assert sample(metrics, depth, channel="a", state="queued") == 3
    assert sample(metrics, depth, channel="b", state="queued") == 3
    assert sample(metrics, depth, channel="a", state="delivered") == 0
    assert sample(metrics, depth, channel="idle", state="queued") == 0  # configured channels report zeros
    assert sample(metrics, "syndicate_channel_paused", channel="b") == 1
    assert sample(metrics, "syndicate_channel_paused", channel="a") == 0
    assert sample(metrics, "syndicate_channel_paused", channel="idle") == 0

    await sqlite_store.resume_channel("b", now=now)
    await sqlite_store.pause_channel("a", until=now + 60, reason="rate limited", now=now)
    await metrics.refresh_from_store(sqlite_store, settings.channels, now)
    assert sample(metrics, "syndicate_channel_paused", channel="b") == 0
    assert sample(metrics, "syndicate_channel_paused", channel="a") == 1
    await metrics.refresh_from_store(sqlite_store, settings.channels, now + 61)  # the rate-limit pause is over
    assert sample(metrics, "syndicate_channel_paused", channel="a") == 0

    # Deliver everything: the depth moves from queued to delivered.
    clock.advance(61)
    async with engine:
        await engine.run(until_idle=True)
    await metrics.refresh_from_store(sqlite_store, ["a", "b"], now)
    assert sample(metrics, depth, channel="a", state="queued") == 0
    assert sample(metrics, depth, channel="a", state="delivered") == 3
    assert sample(metrics, depth, channel="b", state="delivered") == 3
    # A channel no longer configured and without deliveries or pause rows is dropped from the gauges.
    assert sample(metrics, depth, channel="idle", state="queued") is None


async def test_render_parses_as_prometheus_text(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    metrics = Metrics()
    settings = make_settings(tmp_path, {"a": scripted()})
    async with Engine(settings, sqlite_store, clock=clock, metrics=metrics) as engine:
        await engine.accept(make_story())
        await engine.run(until_idle=True)
    metrics.observe_hook(202)
    metrics.observe_hook(202)
    metrics.observe_hook(401)
    await metrics.refresh_from_store(sqlite_store, settings.channels, clock.now())

    body, content_type = metrics.render()
    assert content_type == CONTENT_TYPE_LATEST and content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {
        "syndicate_deliveries",
        "syndicate_attempt_seconds",
        "syndicate_queue_depth",
        "syndicate_channel_paused",
        "syndicate_hook_requests",
    } <= set(families)
    assert families["syndicate_deliveries"].type == "counter"
    assert families["syndicate_attempt_seconds"].type == "histogram"
    assert families["syndicate_queue_depth"].type == "gauge"
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert values[("syndicate_deliveries_total", (("channel", "a"), ("outcome", "delivered")))] == 1
    assert values[("syndicate_hook_requests_total", (("status", "202"),))] == 2
    assert values[("syndicate_hook_requests_total", (("status", "401"),))] == 1
    assert values[("syndicate_queue_depth", (("channel", "a"), ("state", "delivered")))] == 1
    assert values[("syndicate_channel_paused", (("channel", "a"),))] == 0


def test_each_metrics_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.observe_attempt("a", "delivered", 0.01)
    assert one.registry is not two.registry
    assert deliveries(one, "a", "delivered") == 1
    assert deliveries(two, "a", "delivered") is None
    # Nothing went into the process-wide default registry.
    assert REGISTRY.get_sample_value("syndicate_deliveries_total", {"channel": "a", "outcome": "delivered"}) is None


async def test_a_running_worker_purges_expired_keys_and_counts_them(tmp_path: Path, sqlite_store: Store) -> None:
    clock = FakeClock()
    for i in range(40):  # used hook signatures, expired by now
        await sqlite_store.kv_add(f"hook-sig:{i}", "1", expires_at=clock.now() - 1, now=clock.now() - 301)
    await sqlite_store.kv_set("token", "live", expires_at=clock.now() + 3600, now=clock.now())
    metrics = Metrics()
    settings = make_settings(tmp_path, {"a": scripted()})
    async with Engine(settings, sqlite_store, clock=clock, metrics=metrics) as engine:
        await engine.accept(make_story())
        await engine.run(until_idle=True, idle_horizon=0)
    assert metrics.registry.get_sample_value("syndicate_keys_purged_total") == 40
    assert await sqlite_store.purge_expired_keys(now=clock.now()) == 0
    assert await sqlite_store.kv_get("token", now=clock.now()) == "live"
