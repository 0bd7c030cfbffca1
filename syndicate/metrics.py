"""Prometheus metrics for the engine and the server, in a registry of their own.

Each ``Metrics`` owns a ``CollectorRegistry`` (never the global one), so several engines in one process and the
tests never collide. The engine counts attempt outcomes and their latency as they finish; queue depth and channel
pauses live in the store, so the ``/metrics`` handler calls ``refresh_from_store`` just before ``render``.

    syndicate_deliveries_total{channel, outcome}   attempts by outcome (see OUTCOMES)
    syndicate_attempt_seconds{channel}             latency of each attempt (histogram, 5 ms .. 60 s)
    syndicate_queue_depth{channel, state}          deliveries per channel and state, as the store has them
    syndicate_channel_paused{channel}              1 while the channel is paused (rate limit, credentials, operator)
    syndicate_hook_requests_total{status}          publish hook requests by HTTP status
    syndicate_reach_samples_total{channel, outcome} reach sample attempts by outcome (see SAMPLE_OUTCOMES)
    syndicate_reach{channel, metric}               per channel, each reach metric summed over its stories (the
                                                   latest reading of each, plus every counted read): channel
                                                   totals only, never a per-story label
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from syndicate.store.base import State, Store

__all__ = ["ATTEMPT_BUCKETS", "OUTCOMES", "SAMPLE_OUTCOMES", "Metrics"]

#: The outcomes an attempt can end with (the engine's ``_Outcome.outcome``).
OUTCOMES = (
    "delivered",
    "retry",
    "failed",
    "unknown",
    "rate_limited",
    "auth_revoked",
    "reconciled",
    "skipped",
    "interrupted",
)
#: The outcomes a reach sample attempt can end with (``SampleCompletion.outcome``).
SAMPLE_OUTCOMES = ("done", "retry", "failed", "rate_limited", "auth_revoked", "interrupted")
#: From a loopback POST (a few ms) to a platform at its timeout (30 s default, 60 s at most in practice).
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, namespace: str = "syndicate") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.deliveries_total = Counter(
            "deliveries",
            "Delivery attempts by channel and outcome.",
            ["channel", "outcome"],
            namespace=namespace,
            registry=self.registry,
        )
        self.attempt_seconds = Histogram(
            "attempt_seconds",
            "Duration of each delivery attempt, in seconds.",
            ["channel"],
            namespace=namespace,
            buckets=ATTEMPT_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "queue_depth",
            "Deliveries per channel and state, as stored.",
            ["channel", "state"],
            namespace=namespace,
            registry=self.registry,
        )
        self.channel_paused = Gauge(
            "channel_paused",
            "1 while the channel is paused (rate limit, rejected credentials, operator), else 0.",
            ["channel"],
            namespace=namespace,
            registry=self.registry,
        )
        self.hook_requests_total = Counter(
            "hook_requests",
            "Publish hook requests by HTTP status.",
            ["status"],
            namespace=namespace,
            registry=self.registry,
        )
        self.keys_purged_total = Counter(
            "keys_purged",
            "Expired shared keys (used hook signatures, released locks, old tokens) deleted from the store.",
            namespace=namespace,
            registry=self.registry,
        )
        self.reach_samples_total = Counter(
            "reach_samples",
            "Reach sample attempts (reading a post's figures back) by channel and outcome.",
            ["channel", "outcome"],
            namespace=namespace,
            registry=self.registry,
        )
        self.reach = Gauge(
            "reach",
            "Per channel, each reach metric summed over its stories (latest reading of each, plus counted reads).",
            ["channel", "metric"],
            namespace=namespace,
            registry=self.registry,
        )
        self._reach_labels: set[tuple[str, str]] = set()
        self._depth_labels: set[tuple[str, str]] = set()
        self._paused_labels: set[str] = set()

    # recording ------------------------------------------------------------------------------------------------

    def register_channels(self, channels: Iterable[str]) -> None:
        """Create every channel's outcome series at 0, so rates and alerts work before the first event."""
        for channel in channels:
            for outcome in OUTCOMES:
                self.deliveries_total.labels(channel, outcome)
            self.attempt_seconds.labels(channel)

    def observe_attempt(self, channel: str, outcome: str, seconds: float) -> None:
        """One finished attempt (the engine calls this from ``_finish``)."""
        self.deliveries_total.labels(channel, outcome).inc()
        self.attempt_seconds.labels(channel).observe(max(seconds, 0.0))

    def observe_sample(self, channel: str, outcome: str, seconds: float) -> None:
        """One finished reach sample attempt (the engine calls this as it writes the outcome)."""
        self.reach_samples_total.labels(channel, outcome).inc()

    def observe_hook(self, status: int | str) -> None:
        """One publish hook request answered with ``status``."""
        self.hook_requests_total.labels(str(status)).inc()

    async def refresh_from_store(self, store: Store, channels: Iterable[str], now: float) -> None:
        """Set queue_depth and channel_paused from the store.

        ``channels`` are the configured channel names (a dict of channels works too); each gets a series for every
        state, 0 included, and channels the store still holds deliveries or a pause for are reported as well.
        Series that no longer exist (a channel removed from the store) are dropped.
        """
        names = set(channels)
        depth = await store.queue_depth()
        states = await store.channel_states()

        depth_labels: set[tuple[str, str]] = set()
        for channel in names | {c for c, _ in depth}:
            for state in State:
                depth_labels.add((channel, state.value))
                self.queue_depth.labels(channel, state.value).set(depth.get((channel, state), 0))
        for labels in self._depth_labels - depth_labels:
            self.queue_depth.remove(*labels)
        self._depth_labels = depth_labels

        paused_labels = names | set(states)
        for channel in paused_labels:
            st = states.get(channel)
            self.channel_paused.labels(channel).set(1 if st is not None and st.paused_at(now) else 0)
        for channel in self._paused_labels - paused_labels:
            self.channel_paused.remove(channel)
        self._paused_labels = paused_labels

        reach = await store.reach_channel_totals()
        reach_labels = {(channel, metric.value) for channel, metric in reach}
        for (channel, metric), value in reach.items():
            self.reach.labels(channel, metric.value).set(value)
        for labels in self._reach_labels - reach_labels:
            self.reach.remove(*labels)
        self._reach_labels = reach_labels

    # exposition -----------------------------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for the /metrics answer."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
