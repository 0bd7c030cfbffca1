"""What the dashboard shows of reach (评): the story page's table and per-channel charts, and the reach page's
ranking. Plain data for the templates; the charts are inline SVG drawn from these numbers (no script)."""

from __future__ import annotations

from dataclasses import dataclass

from syndicate.delivery import ReachMetric
from syndicate.reach import METRICS, RANKING_METRIC, ReachReport, StoryReachView

from .views import stamp

#: The chart's drawing area, in SVG user units.
CHART_WIDTH = 200
CHART_HEIGHT = 60
#: Room for the labels inside the drawing area.
CHART_PAD = 4


@dataclass(frozen=True)
class ChartPoint:
    x: float
    y: float
    title: str


@dataclass(frozen=True)
class ReachChart:
    """One metric's series on one channel, scaled into the chart's box."""

    metric: str
    points: list[ChartPoint]
    top: str

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


@dataclass(frozen=True)
class ChannelReachRow:
    channel: str
    figures: list[str]
    read_at: str
    samples: str
    chart: ReachChart | None


@dataclass(frozen=True)
class ReachRow:
    """One row of a reach table: a name and its figure per metric, formatted."""

    name: str
    figures: list[str]
    story_id: str = ""
    section: str = ""
    rank: int = 0


def figure(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _chart(view_series: dict[ReachMetric, list[tuple[float, int]]]) -> ReachChart | None:
    """The reads series (else the first metric the channel reports), time on x, value on y."""
    metric = RANKING_METRIC if RANKING_METRIC in view_series else next(iter(view_series), None)
    if metric is None:
        return None
    series = view_series[metric]
    first, last = series[0][0], series[-1][0]
    span = max(last - first, 1.0)
    top = max(max(v for _, v in series), 1)
    width, height = CHART_WIDTH - 2 * CHART_PAD, CHART_HEIGHT - 2 * CHART_PAD
    points = [
        ChartPoint(
            x=CHART_PAD + (width * (t - first) / span if len(series) > 1 else width / 2),
            y=CHART_PAD + height - height * v / top,
            title=f"{stamp(t)}: {v:,}",
        )
        for t, v in series
    ]
    return ReachChart(metric.value, points, f"{top:,}")


def story_reach_rows(view: StoryReachView, *, counted: str) -> list[ChannelReachRow]:
    """The story page's reach table: per channel the latest figures, when they were read, the sample plan's
    progress (``counted`` for a channel that counts its reads itself) and its chart."""
    rows = []
    for ch in view.channels:
        if ch.samples_planned:
            samples = f"{ch.samples_done}/{ch.samples_planned}"
            if ch.samples_failed:
                samples += f" (✗{ch.samples_failed})"
        else:
            samples = counted
        series = {m: [(p.observed_at, p.value) for p in pts] for m, pts in ch.series.items()}
        rows.append(
            ChannelReachRow(
                channel=ch.channel,
                figures=[figure(ch.latest.get(m)) for m in METRICS],
                read_at=stamp(ch.observed_at),
                samples=samples,
                chart=_chart(series),
            )
        )
    return rows


def story_reach_total(view: StoryReachView) -> list[str]:
    totals = view.totals
    return [figure(totals.get(m)) for m in METRICS]


def ranking_rows(report: ReachReport) -> list[ReachRow]:
    return [
        ReachRow(
            name=s.headline,
            figures=[figure(s.totals.get(m)) for m in METRICS],
            story_id=s.story_id,
            section=s.section or "",
            rank=rank,
        )
        for rank, s in enumerate(report.stories, start=1)
    ]


def channel_rows(report: ReachReport) -> list[ReachRow]:
    return [ReachRow(name, [figure(f.get(m)) for m in METRICS]) for name, f in report.by_channel.items()]


def section_rows(report: ReachReport, *, no_section: str) -> list[ReachRow]:
    return [
        ReachRow(name or no_section, [figure(f.get(m)) for m in METRICS], section=name)
        for name, f in report.by_section.items()
    ]
