"""Reach (评): what the sampling schedule decides, and the views of the figures the API, the CLI and the dashboard
show.

The schedule: a delivered post on a channel whose adapter reports reach gets one sample per configured age (the
store writes the plan with the delivery's outcome). The engine claims a due sample only from a channel's spare
capacity and reads it through ``Adapter.read_reach``; ``decide_failure`` says what a failed read leads to, from the
error's class alone, as the delivery taxonomy does for deliveries.

The views: a story's figures per channel (latest value and series per metric), and a period's ranking of stories by
how much their reach grew in it, per channel and per section, with CSV for the weekly report.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from syndicate.delivery import AuthRevoked, DeliveryError, Permanent, RateLimited, ReachMetric, Retryable
from syndicate.store.base import (
    NotFound,
    ReachPoint,
    ReachSampleRecord,
    ReachTotal,
    SampleState,
    Store,
    StoryReach,
)

#: The metrics in the order every table shows them.
METRICS: tuple[ReachMetric, ...] = tuple(ReachMetric)
#: What the ranking orders stories by: reads are the reach; the other metrics are engagement with it.
RANKING_METRIC = ReachMetric.READS


# --- the schedule ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleDecision:
    """What a failed read of a sample leads to: the sample's next state and when it is read again. Never a channel
    pause: a read must not hold the channel's publishing (a platform's statistics call may have limits and
    permissions of its own); publishing pauses the channel when its own calls are refused."""

    state: SampleState
    outcome: str
    due_at: float | None = None
    count_retry: bool = False
    note: str | None = None


#: How long a sample waits after the platform refused the statistics call's credentials or permission: long
#: enough not to hammer it, short enough to pick up once an operator fixes the account; each wait spends a retry.
REFUSED_READ_WAIT = 24 * 3600.0
#: A "not yet" from the platform (figures published later) without a time of its own: look again in an hour.
PENDING_READ_WAIT = 3600.0


def decide_failure(
    exc: DeliveryError, sample: ReachSampleRecord, next_delay: Callable[[int], float | None], *, now: float
) -> SampleDecision:
    """A failed read, by the error's class: a rate limit makes the sample wait for its end, and a "not yet"
    (``Retryable(pending=True)``: figures the platform publishes later) waits for them, neither spending a retry;
    refused credentials or permission wait a day, spending one; Permanent ends the sample; anything else spends a
    step of the channel's retry schedule (``next_delay``: the delay after that many failures, None once spent)."""
    if isinstance(exc, RateLimited):
        return SampleDecision(
            SampleState.QUEUED, "rate_limited", due_at=exc.until.timestamp(), note=f"rate limited: {exc.reason}"
        )
    if isinstance(exc, Retryable) and exc.pending:
        wait = PENDING_READ_WAIT if exc.retry_after is None else max(float(exc.retry_after), 0.0)
        return SampleDecision(SampleState.QUEUED, "pending", due_at=now + wait, note=exc.reason)
    if isinstance(exc, Permanent):
        return SampleDecision(SampleState.FAILED, "failed", note=exc.reason)
    failures = sample.retry_count + 1
    delay = next_delay(failures)
    if delay is None:
        return SampleDecision(SampleState.FAILED, "failed", note=f"gave up after {failures} attempts: {exc.reason}")
    if isinstance(exc, AuthRevoked):
        return SampleDecision(
            SampleState.QUEUED,
            "auth_revoked",
            due_at=now + REFUSED_READ_WAIT,
            count_retry=True,
            note=f"the platform refused the statistics call: {exc.reason} (publishing is not paused for it)",
        )
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        delay = max(float(retry_after), 0.0)
    return SampleDecision(SampleState.QUEUED, "retry", due_at=now + delay, count_retry=True, note=exc.reason)


# --- one story's figures -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesPoint:
    observed_at: float
    value: int


@dataclass(frozen=True)
class ChannelReach:
    """One channel's figures for a story: the latest value of each metric it reports, each metric's series, the
    latest raw figures and how far its sample plan got."""

    channel: str
    latest: dict[ReachMetric, int]
    observed_at: float | None
    series: dict[ReachMetric, list[SeriesPoint]]
    raw: dict[str, int | float]
    samples_planned: int
    samples_done: int
    samples_failed: int
    samples_stopped: int
    next_sample_at: float | None

    def to_json(self) -> dict[str, object]:
        return {
            "channel": self.channel,
            "latest": {m.value: v for m, v in self.latest.items()},
            "observed_at": self.observed_at,
            "series": {m.value: [[p.observed_at, p.value] for p in pts] for m, pts in self.series.items()},
            "raw": dict(self.raw),
            "samples": {
                "planned": self.samples_planned,
                "done": self.samples_done,
                "failed": self.samples_failed,
                "stopped": self.samples_stopped,
                "next_at": self.next_sample_at,
            },
        }


@dataclass(frozen=True)
class StoryReachView:
    story_id: str
    channels: list[ChannelReach]

    @property
    def totals(self) -> dict[ReachMetric, int]:
        """Each metric summed over the channels that report it."""
        totals: dict[ReachMetric, int] = {}
        for ch in self.channels:
            for metric, value in ch.latest.items():
                totals[metric] = totals.get(metric, 0) + value
        return {m: totals[m] for m in METRICS if m in totals}

    def to_json(self) -> dict[str, object]:
        return {
            "story_id": self.story_id,
            "totals": {m.value: v for m, v in self.totals.items()},
            "channels": [ch.to_json() for ch in self.channels],
        }

    def to_csv(self) -> str:
        """One row per channel: its latest figures (empty where the channel does not report the metric)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["story_id", "channel", *[m.value for m in METRICS], "observed_at"])
        for ch in self.channels:
            writer.writerow(
                [_csv_text(self.story_id), ch.channel, *[ch.latest.get(m, "") for m in METRICS], _iso(ch.observed_at)]
            )
        return out.getvalue()


def story_reach_view(story_id: str, reach: StoryReach) -> StoryReachView:
    """A story's stored reach as one entry per channel that has figures or a sample plan, in channel order."""
    by_channel: dict[str, list[ReachPoint]] = {}
    for point in reach.points:
        by_channel.setdefault(point.channel, []).append(point)
    samples: dict[str, list[ReachSampleRecord]] = {}
    for sample in reach.samples:
        samples.setdefault(sample.channel, []).append(sample)
    raw: dict[str, dict[str, int | float]] = {}
    for reading in sorted(reach.readings, key=lambda r: r.observed_at):
        raw[reading.channel] = dict(reading.raw)
    channels = []
    for name in sorted(set(by_channel) | set(samples)):
        series: dict[ReachMetric, list[SeriesPoint]] = {}
        for point in sorted(by_channel.get(name, []), key=lambda p: p.observed_at):
            series.setdefault(point.metric, []).append(SeriesPoint(point.observed_at, point.value))
        latest = {m: series[m][-1].value for m in METRICS if m in series}
        observed = max((pts[-1].observed_at for pts in series.values()), default=None)
        plan = samples.get(name, [])
        queued = [s.due_at for s in plan if s.state in (SampleState.QUEUED, SampleState.IN_FLIGHT) and s.due_at]
        channels.append(
            ChannelReach(
                channel=name,
                latest=latest,
                observed_at=observed,
                series={m: series[m] for m in METRICS if m in series},
                raw=raw.get(name, {}),
                samples_planned=len(plan),
                samples_done=sum(1 for s in plan if s.state is SampleState.DONE),
                samples_failed=sum(1 for s in plan if s.state is SampleState.FAILED),
                samples_stopped=sum(1 for s in plan if s.state is SampleState.CANCELED),
                next_sample_at=min(queued) if queued else None,
            )
        )
    return StoryReachView(story_id, channels)


# --- a period's ranking ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoryInfo:
    """What the ranking shows of a story besides its figures."""

    headline: str
    section: str | None


@dataclass
class RankedStory:
    story_id: str
    headline: str
    section: str | None
    #: Per channel, how much each metric grew in the period.
    channels: dict[str, dict[ReachMetric, int]] = field(default_factory=dict)

    @property
    def totals(self) -> dict[ReachMetric, int]:
        return _sum(self.channels.values())

    @property
    def reach(self) -> int:
        """What the ranking orders by: reads over every channel."""
        return self.totals.get(RANKING_METRIC, 0)


@dataclass(frozen=True)
class ReachReport:
    """Stories ranked by how far they travelled in ``[since, until)``, with the same figures per channel and per
    section."""

    since: float
    until: float
    #: The ranking shown: the top ``limit`` stories.
    stories: list[RankedStory]
    #: Every story with figures in the period: what the channel and section totals add up (not only the top).
    counted: list[RankedStory] = field(default_factory=list)

    @property
    def by_channel(self) -> dict[str, dict[ReachMetric, int]]:
        totals: dict[str, list[dict[ReachMetric, int]]] = {}
        for story in self.counted:
            for channel, figures in story.channels.items():
                totals.setdefault(channel, []).append(figures)
        return {channel: _sum(figures) for channel, figures in sorted(totals.items())}

    @property
    def by_section(self) -> dict[str, dict[ReachMetric, int]]:
        totals: dict[str, list[dict[ReachMetric, int]]] = {}
        for story in self.counted:
            totals.setdefault(story.section or "", []).append(story.totals)
        return {section: _sum(figures) for section, figures in sorted(totals.items())}

    def to_json(self) -> dict[str, object]:
        return {
            "since": self.since,
            "until": self.until,
            "ranked_by": RANKING_METRIC.value,
            "stories": [
                {
                    "story_id": s.story_id,
                    "headline": s.headline,
                    "section": s.section,
                    "reach": s.reach,
                    "totals": _metric_json(s.totals),
                    "channels": {ch: _metric_json(f) for ch, f in sorted(s.channels.items())},
                }
                for s in self.stories
            ],
            "by_channel": {ch: _metric_json(f) for ch, f in self.by_channel.items()},
            "by_section": {sec: _metric_json(f) for sec, f in self.by_section.items()},
        }

    def to_csv(self) -> str:
        """The weekly report: one row per story × channel, in ranking order."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["rank", "story_id", "headline", "section", "channel", *[m.value for m in METRICS]])
        for rank, story in enumerate(self.stories, start=1):
            for channel, figures in sorted(story.channels.items()):
                writer.writerow(
                    [
                        rank,
                        _csv_text(story.story_id),
                        _csv_text(story.headline),
                        _csv_text(story.section or ""),
                        channel,
                        *[figures.get(m, "") for m in METRICS],
                    ]
                )
        return out.getvalue()


def rank_stories(
    totals: Iterable[ReachTotal],
    info: Mapping[str, StoryInfo],
    *,
    since: float,
    until: float,
    channel: str | None = None,
    section: str | None = None,
    limit: int | None = None,
) -> ReachReport:
    """The period's stories, most reach first (ties: more engagement, then story id), narrowed to one channel and
    one section when given. ``info`` has the stories the figures name (one missing shows its id)."""
    stories: dict[str, RankedStory] = {}
    for t in totals:
        if channel is not None and t.channel != channel:
            continue
        story_info = info.get(t.story_id, StoryInfo(t.story_id, None))
        if section is not None and story_info.section != section:
            continue
        ranked = stories.setdefault(t.story_id, RankedStory(t.story_id, story_info.headline, story_info.section))
        ranked.channels.setdefault(t.channel, {})[t.metric] = t.value
    ordered = sorted(stories.values(), key=lambda s: (-s.reach, -sum(s.totals.values()), s.story_id))
    return ReachReport(since, until, ordered[:limit] if limit is not None else ordered, counted=ordered)


def _sum(figures: Iterable[Mapping[ReachMetric, int]]) -> dict[ReachMetric, int]:
    totals: dict[ReachMetric, int] = {}
    for f in figures:
        for metric, value in f.items():
            totals[metric] = totals.get(metric, 0) + value
    return {m: totals[m] for m in METRICS if m in totals}


def _metric_json(figures: Mapping[ReachMetric, int]) -> dict[str, int]:
    return {m.value: v for m, v in figures.items()}


def _csv_text(value: str) -> str:
    """A cell a spreadsheet will not run as a formula (CSV injection: =, +, -, @ at the start)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def story_ids(totals: Sequence[ReachTotal]) -> list[str]:
    """The stories a period's figures name, in first-seen order (what the ranking needs headlines for)."""
    return list(dict.fromkeys(t.story_id for t in totals))


async def build_report(
    store: Store,
    *,
    since: float,
    until: float,
    channel: str | None = None,
    section: str | None = None,
    limit: int | None = None,
) -> ReachReport:
    """The period's ranking read from the store, headlines and sections from each story's newest version."""
    totals = await store.reach_totals(since=since, until=until)
    info: dict[str, StoryInfo] = {}
    for story_id in story_ids(totals):
        try:
            record = await store.get_story(story_id)
        except NotFound:
            continue
        info[story_id] = StoryInfo(record.story.headline, record.story.section)
    return rank_stories(totals, info, since=since, until=until, channel=channel, section=section, limit=limit)
