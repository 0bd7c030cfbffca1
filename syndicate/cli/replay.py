"""`syndicate replay`: select failed and unknown deliveries (by id, channel, story, time range, error class), show
what is selected and what is refused and why, ask, then re-queue them through ``syndicate.operations``, the
selection and re-queue the HTTP API and the dashboard use too."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from syndicate.cli.common import (
    WORK_HINT,
    RuntimeFailure,
    channel_option,
    check_channel_names,
    config_option,
    connected_store,
    delivery_error,
    err,
    error_classes_option,
    json_option,
    load_settings,
    n_deliveries,
    new_table,
    out,
    per_channel,
    print_json,
    run_async,
    states_option,
    styled_state,
    time_option,
)
from syndicate.config import Settings
from syndicate.delivery import ERROR_CLASSES
from syndicate.operations import DEFAULT_REPLAY_STATES, ReplayPlan, ReplaySelection, delivery_json, plan_replay, requeue
from syndicate.store.base import DeliveryRecord, State

#: Replays larger than this show a progress bar (on a terminal).
PROGRESS_THRESHOLD = 50


@click.command()
@click.argument("ids", nargs=-1, type=click.IntRange(min=1))
@config_option
@channel_option
@click.option("--story", "story_id", metavar="STORY_ID", help="Only this story's deliveries.")
@click.option(
    "--since", callback=time_option, metavar="TIME", help="Changed since TIME (30m, 2h, 1d, ISO 8601, unix seconds)."
)
@click.option("--until", callback=time_option, metavar="TIME", help="Changed before TIME.")
@click.option(
    "--state",
    "states",
    multiple=True,
    callback=states_option,
    metavar="STATE[,STATE]",
    help="States to select (default: failed,unknown).",
)
@click.option(
    "--error-class",
    "error_classes",
    multiple=True,
    callback=error_classes_option,
    metavar="CLASS[,CLASS]",
    help=f"Only deliveries whose last error was of this class ({', '.join(ERROR_CLASSES)}).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be re-queued and change nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (needed when stdin is not a terminal).")
@click.option("--force", is_flag=True, help="Also replay delivered ones (this posts them again).")
@json_option
@click.pass_context
def replay(
    ctx: click.Context,
    ids: tuple[int, ...],
    config_path: Path | None,
    channels: list[str],
    story_id: str | None,
    since: float | None,
    until: float | None,
    states: list[State],
    error_classes: list[str],
    dry_run: bool,
    yes: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Re-queue failed and unknown deliveries: by IDS, or by channel, story, time range and error class.

    Shows what it selects and what it refuses and why, asks before changing anything (unless --yes), then puts the
    selected deliveries back in the queue with their retry budget reset and their attempt history kept. A delivered
    one is replayed only with --force. The exit code is 1 when a named id does not exist or a selected delivery
    was refused.
    """
    settings = load_settings(ctx, config_path)
    if not dry_run and not yes and not sys.stdin.isatty():
        raise click.UsageError(
            "replay asks for confirmation but stdin is not a terminal: pass --yes to re-queue without asking "
            "(or --dry-run to only see the selection)"
        )
    selection = ReplaySelection(
        ids=ids,
        channels=channels,
        story_id=story_id,
        since=since,
        until=until,
        states=states,
        error_classes=error_classes,
        force=force,
    )

    async def _plan() -> ReplayPlan:
        async with connected_store(settings) as store:
            await check_channel_names(settings, store, channels)
            return await plan_replay(store, selection)

    plan = run_async(_plan())
    selected = plan.replayable
    if not as_json:
        _show_plan(plan)

    requeued: list[int] = []
    if selected and not dry_run:
        if not yes:
            click.confirm(f"Re-queue {n_deliveries(len(selected))}?", default=False, abort=True, err=True)
        requeued = run_async(_requeue(settings, selected, force=force))

    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "selected": [delivery_json(d) for d in selected],
                "refused": [{"id": d.id, "reason": why, "delivery": delivery_json(d)} for d, why in plan.refused],
                "missing_ids": plan.missing_ids,
                "requeued": requeued,
            }
        )
    elif not selected:
        if not plan.refused and not plan.missing_ids:
            what = ",".join(s.value for s in (states or DEFAULT_REPLAY_STATES)) if not ids else "the given ids"
            out.print(f"nothing to replay: no delivery matches the selection ({escape(what)})")
        else:
            out.print("nothing to replay")
    elif dry_run:
        out.print(
            f"dry run: would re-queue {n_deliveries(len(selected))} on channels {per_channel(selected)}; "
            "nothing was changed"
        )
    else:
        done = set(requeued)
        line = f"re-queued {n_deliveries(len(done))}"
        if done:
            line += f" on channels {per_channel(d for d in selected if d.id in done)}"
        skipped = len(selected) - len(done)
        if skipped:
            line += f" ({skipped} changed state meanwhile and were left alone)"
        out.print(f"{line}; {WORK_HINT}" if done else line, soft_wrap=True)

    problems: list[str] = []
    if plan.missing_ids:
        problems.append(f"no delivery with id {', '.join(map(str, plan.missing_ids))}")
    if plan.refused:
        reasons = sorted({why for _, why in plan.refused})
        problems.append(f"{n_deliveries(len(plan.refused))} refused ({'; '.join(reasons)})")
    if problems:
        raise RuntimeFailure("; ".join(problems))


def _show_plan(plan: ReplayPlan) -> None:
    if plan.replayable:
        columns = ("id", "story", "v", "channel", "action", "state", "tries", "error")
        table = new_table(f"selected for replay ({len(plan.replayable)})", *columns)
        for d in plan.replayable:
            table.add_row(
                str(d.id),
                escape(d.story_id),
                str(d.version),
                d.channel,
                d.action.value,
                styled_state(d.state),
                str(d.attempts),
                escape(delivery_error(d)),
            )
        out.print(table)
    if plan.refused or plan.missing_ids:
        table = new_table(
            f"refused ({len(plan.refused) + len(plan.missing_ids)})", "id", "story", "channel", "action", "state"
        )
        table.add_column("why", overflow="fold")
        for d, why in plan.refused:
            table.add_row(str(d.id), escape(d.story_id), d.channel, d.action.value, styled_state(d.state), escape(why))
        for missing in plan.missing_ids:
            table.add_row(str(missing), "", "", "", "", "no such delivery (or outside the other filters)")
        out.print(table)


async def _requeue(settings: Settings, rows: Sequence[DeliveryRecord], *, force: bool) -> list[int]:
    async with connected_store(settings) as store:
        if len(rows) <= PROGRESS_THRESHOLD:
            return await requeue(store, rows, now=time.time(), force=force)
        columns = (TextColumn("re-queuing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err, disable=not err.is_terminal) as progress:
            task = progress.add_task("re-queue", total=len(rows))
            return await requeue(
                store,
                rows,
                now=time.time(),
                force=force,
                batch_size=max(PROGRESS_THRESHOLD, min(500, len(rows) // 20)),
                progress=lambda n: progress.advance(task, n),
            )
