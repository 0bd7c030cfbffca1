"""`syndicate reach`: how far stories travelled (评). With a story id, its figures per channel; without, the
stories ranked by how much their reach grew over a period (``--since 7d``), per channel and per section. Tables for
people, ``--json`` for scripts (the API's views), ``--csv`` for the weekly report."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.markup import escape

from syndicate.cli.common import (
    RuntimeFailure,
    config_option,
    connected_store,
    load_settings,
    local_time,
    new_table,
    out,
    print_json,
    run_async,
    unknown_channel,
)
from syndicate.operations import parse_time
from syndicate.reach import METRICS, ReachReport, StoryReachView, build_report, story_reach_view
from syndicate.store.base import NotFound, StoryRecord


def _time(value: str, option: str, *, now: float) -> float:
    try:
        return parse_time(value, now=now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


@click.command("reach")
@click.argument("story_id", required=False)
@config_option
@click.option("--since", default="7d", show_default=True, help="Start of the period: 7d (ago), ISO 8601, unix.")
@click.option("--until", default=None, help="End of the period (default: now).")
@click.option("--channel", default=None, metavar="NAME", help="Only this channel (the ranking).")
@click.option("--section", default=None, help="Only stories of this section (the ranking).")
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=50, show_default=True, help="Top N stories.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the API's view).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (the ranking: one row per story × channel).")
@click.pass_context
def reach(
    ctx: click.Context,
    story_id: str | None,
    config_path: Path | None,
    since: str,
    until: str | None,
    channel: str | None,
    section: str | None,
    limit: int,
    as_json: bool,
    as_csv: bool,
) -> None:
    """Reads, shares, likes and comments per story × channel."""
    if as_json and as_csv:
        raise click.UsageError("--json and --csv are alternatives: give one")
    settings = load_settings(ctx, config_path)
    if channel is not None and channel not in settings.channels:
        raise unknown_channel(settings, channel)
    now = time.time()
    end = now if until is None else _time(until, "--until", now=now)
    start = _time(since, "--since", now=end)
    if story_id is None and start >= end:
        raise click.BadParameter("must be before --until", param_hint="--since")

    if story_id is not None:

        async def _story() -> tuple[StoryRecord, StoryReachView]:
            async with connected_store(settings) as store:
                try:
                    record = await store.get_story(story_id)
                except NotFound:
                    raise RuntimeFailure(f"no story {story_id!r}") from None
                return record, story_reach_view(story_id, await store.story_reach(story_id))

        record, view = run_async(_story())
        if as_json:
            print_json({"headline": record.story.headline, "section": record.story.section, **view.to_json()})
        elif as_csv:
            click.echo(view.to_csv(), nl=False)
        else:
            _print_story(record, view)
        return

    async def _report() -> ReachReport:
        async with connected_store(settings) as store:
            return await build_report(store, since=start, until=end, channel=channel, section=section, limit=limit)

    report = run_async(_report())
    if as_json:
        print_json(report.to_json())
    elif as_csv:
        click.echo(report.to_csv(), nl=False)
    else:
        _print_report(report)


def _figure(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _print_story(record: StoryRecord, view: StoryReachView) -> None:
    table = new_table(
        f"reach of {escape(view.story_id)}: {escape(record.story.headline)}",
        "channel",
        *[m.value for m in METRICS],
        "read at",
        "samples",
    )
    for ch in view.channels:
        samples = f"{ch.samples_done}/{ch.samples_planned}" if ch.samples_planned else "counted"
        if ch.next_sample_at is not None:
            samples += f", next {local_time(ch.next_sample_at)}"
        if ch.samples_failed:
            samples += f", {ch.samples_failed} failed"
        table.add_row(
            ch.channel,
            *[_figure(ch.latest.get(m)) for m in METRICS],
            local_time(ch.observed_at),
            samples,
        )
    totals = view.totals
    table.add_row("[bold]all[/bold]", *[_figure(totals.get(m)) for m in METRICS], "", "")
    out.print(table)
    if not view.channels:
        out.print("no figures yet: a channel is read an hour after delivery at the earliest")


def _print_report(report: ReachReport) -> None:
    period = f"{local_time(report.since)} – {local_time(report.until)}"
    table = new_table(
        f"reach {period} (ranked by reads)", "#", "story", "headline", "section", *[m.value for m in METRICS]
    )
    for rank, story in enumerate(report.stories, start=1):
        totals = story.totals
        table.add_row(
            str(rank),
            escape(story.story_id),
            escape(story.headline),
            escape(story.section or ""),
            *[_figure(totals.get(m)) for m in METRICS],
        )
    out.print(table)
    channels = new_table("per channel", "channel", *[m.value for m in METRICS])
    for name, figures in report.by_channel.items():
        channels.add_row(name, *[_figure(figures.get(m)) for m in METRICS])
    out.print(channels)
    sections = new_table("per section", "section", *[m.value for m in METRICS])
    for name, figures in report.by_section.items():
        sections.add_row(escape(name or "(none)"), *[_figure(figures.get(m)) for m in METRICS])
    out.print(sections)
