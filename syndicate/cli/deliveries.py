"""Operator commands on a story's deliveries: `status` (every story × channel), `failed` (what needs an operator),
`landed` (an `unknown` post found on the platform) and `retract` (take a story down everywhere).

They go through ``syndicate.operations``, the layer the HTTP API uses too, so both print the same JSON views."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from syndicate.cli.common import (
    WORK_HINT,
    RuntimeFailure,
    channel_option,
    check_channel_names,
    config_option,
    connected_store,
    delivery_reason,
    json_option,
    load_settings,
    local_time,
    n_deliveries,
    new_table,
    out,
    pause_text,
    per_channel,
    plural,
    print_json,
    run_async,
    states_option,
    styled_state,
    time_option,
)
from syndicate.engine import Engine
from syndicate.logs import redact
from syndicate.operations import DEFAULT_REPLAY_STATES, delivery_json, retract_story
from syndicate.store.base import (
    ChannelState,
    DeliveryFilter,
    DeliveryRecord,
    NotFound,
    StaleVersion,
    State,
    VersionConflict,
)
from syndicate.story import StoryValidationError

# --- status ----------------------------------------------------------------------------------------------------


@click.command()
@click.argument("story_id", required=False)
@config_option
@channel_option
@click.option("--limit", type=click.IntRange(min=1), default=500, show_default=True, help="Most recent N.")
@json_option
@click.pass_context
def status(
    ctx: click.Context,
    story_id: str | None,
    config_path: Path | None,
    channels: list[str],
    limit: int,
    as_json: bool,
) -> None:
    """Per story × channel: state, attempts, last error."""
    settings = load_settings(ctx, config_path)

    async def _status() -> tuple[list[DeliveryRecord], dict[str, ChannelState]]:
        async with connected_store(settings) as store:
            await check_channel_names(settings, store, channels)
            rows = await store.list_deliveries(DeliveryFilter(story_id=story_id, channels=channels or None))
            return rows[-limit:], await store.channel_states()

    rows, channel_states = run_async(_status())
    if story_id is not None and not rows:
        raise RuntimeFailure(f"no deliveries for story {story_id!r}")
    if as_json:
        print_json({"deliveries": [delivery_json(d) for d in rows]})
        return
    title = "deliveries" + (f" of {escape(story_id)}" if story_id else "")
    table = new_table(title, "id", "story", "v", "channel", "action", "state", "tries", "detail")
    for d in rows:
        detail = d.receipt.url or d.receipt.remote_id or "" if d.receipt else ""
        if d.state is State.RETRY_WAIT:
            detail = f"retry at {local_time(d.due_at)}: {redact(d.last_error or '')}"
        elif d.state in (State.FAILED, State.UNKNOWN, State.SKIPPED, State.CANCELED, State.SUPERSEDED):
            code = f" [{d.last_platform_code}]" if d.last_platform_code else ""
            detail = f"{delivery_reason(d)}{code}"
        table.add_row(
            str(d.id),
            escape(d.story_id),
            str(d.version),
            d.channel,
            d.action.value,
            styled_state(d.state),
            str(d.attempts),
            escape(detail),
        )
    out.print(table)
    counts: dict[str, dict[str, int]] = {}
    for d in rows:
        counts.setdefault(d.channel, {}).setdefault(d.state.value, 0)
        counts[d.channel][d.state.value] += 1
    summary = Table(title="per channel")
    summary.add_column("channel")
    summary.add_column("states")
    summary.add_column("paused")
    now = time.time()
    for name in sorted(counts):
        paused = pause_text(channel_states.get(name), now)
        summary.add_row(name, ", ".join(f"{k} {v}" for k, v in sorted(counts[name].items())), escape(paused))
    out.print(summary)


# --- failed ----------------------------------------------------------------------------------------------------


@click.command()
@config_option
@channel_option
@click.option(
    "--since",
    callback=time_option,
    metavar="TIME",
    help="Only deliveries that changed since TIME: a duration ago (30m, 2h, 1d), ISO 8601 or unix seconds.",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    callback=states_option,
    metavar="STATE[,STATE]",
    help="States to list (default: failed,unknown).",
)
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True, help="Most recent N.")
@json_option
@click.pass_context
def failed(
    ctx: click.Context,
    config_path: Path | None,
    channels: list[str],
    since: float | None,
    states: list[State],
    limit: int,
    as_json: bool,
) -> None:
    """Deliveries that need an operator: failed and unknown ones, with the error class, the platform's code and
    the reason. Replay them with `syndicate replay`."""
    settings = load_settings(ctx, config_path)
    wanted = states or list(DEFAULT_REPLAY_STATES)

    async def _failed() -> list[DeliveryRecord]:
        async with connected_store(settings) as store:
            await check_channel_names(settings, store, channels)
            return await store.list_deliveries(DeliveryFilter(states=wanted, channels=channels or None, since=since))

    rows = run_async(_failed())
    shown = rows[-limit:]
    if as_json:
        print_json({"deliveries": [delivery_json(d) for d in shown]})
        return
    what = ",".join(s.value for s in wanted)
    if not rows:
        out.print(f"no {escape(what)} deliveries" + (f" on {', '.join(channels)}" if channels else ""))
        return
    columns = ("id", "story", "v", "channel", "action", "state", "tries", "error", "code", "reason", "when")
    table = new_table(f"{what} deliveries", *columns)
    for d in shown:
        table.add_row(
            str(d.id),
            escape(d.story_id),
            str(d.version),
            d.channel,
            d.action.value,
            styled_state(d.state),
            str(d.attempts),
            escape(d.last_error_class or ""),
            escape(d.last_platform_code or ""),
            escape(delivery_reason(d)),
            local_time(d.updated_at),
        )
    out.print(table)
    more = f" (the {len(shown)} most recent shown)" if len(shown) < len(rows) else ""
    out.print(f"{n_deliveries(len(rows))}{more} on {per_channel(rows)}; re-queue with `syndicate replay`")


# --- landed ----------------------------------------------------------------------------------------------------


@click.command()
@click.argument("delivery_id", type=int)
@click.argument("remote_id_or_url")
@config_option
@click.pass_context
def landed(ctx: click.Context, delivery_id: int, remote_id_or_url: str, config_path: Path | None) -> None:
    """Confirm an `unknown` delivery did reach the platform: you found the post, give its id or URL.

    It becomes delivered with that receipt (recorded in its attempt history); nothing is sent. To send it again
    instead, use `syndicate replay DELIVERY_ID --force`.
    """
    from syndicate.operations import mark_landed

    settings = load_settings(ctx, config_path)

    async def _landed() -> bool:
        async with connected_store(settings) as store:
            return await mark_landed(store, delivery_id, remote_id_or_url, now=time.time(), who="the CLI")

    try:
        changed = run_async(_landed())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="REMOTE_ID_OR_URL") from None
    if not changed:
        raise RuntimeFailure(
            f"delivery {delivery_id} is not `unknown` (see `syndicate status --json`): nothing changed"
        )
    out.print(f"delivery {delivery_id} marked delivered: {escape(remote_id_or_url)}", highlight=False)


# --- retract ---------------------------------------------------------------------------------------------------


@click.command()
@click.argument("story_id")
@config_option
@json_option
@click.pass_context
def retract(ctx: click.Context, story_id: str, config_path: Path | None, as_json: bool) -> None:
    """Take STORY_ID down from every channel that has it (a new version with pubstatus canceled).

    A publish that never went out is canceled; channels that never had the story get a skipped retraction with
    the reason. The retractions go out through `syndicate work` (or the server's workers).
    """
    settings = load_settings(ctx, config_path)

    async def _retract() -> tuple[Any, list[DeliveryRecord]]:
        async with connected_store(settings) as store:
            started = time.time()
            try:
                result = await retract_story(Engine(settings, store), story_id)
            except NotFound:
                raise RuntimeFailure(f"unknown story {story_id!r}: nothing was published under this id") from None
            except StoryValidationError as exc:
                problems = "; ".join(str(e) for e in exc.errors)
                raise RuntimeFailure(f"cannot retract story {story_id!r}: {problems}") from None
            except (StaleVersion, VersionConflict) as exc:
                raise RuntimeFailure(f"cannot retract: {exc}") from None
            history = await store.list_deliveries(DeliveryFilter(story_id=story_id, states=[State.CANCELED]))
            canceled = [d for d in history if d.version < result.version and d.updated_at >= started]
            return result, canceled

    result, canceled = run_async(_retract())
    if as_json:
        print_json(
            {
                "story_id": result.story_id,
                "version": result.version,
                "new": result.created,
                "deliveries": [delivery_json(d) for d in result.deliveries],
                "canceled": [delivery_json(d) for d in canceled],
            }
        )
        return
    if result.created:
        out.print(f"retracting {escape(result.story_id)}: version {result.version} (pubstatus canceled)")
    else:
        out.print(f"{escape(result.story_id)} was already retracted (version {result.version}): no new work")
    table = new_table("retraction per channel", "id", "channel", "action", "state", "note")
    for d in result.deliveries:
        table.add_row(str(d.id), d.channel, d.action.value, styled_state(d.state), escape(delivery_reason(d)))
    for d in canceled:
        table.add_row(
            str(d.id), d.channel, f"{d.action.value} v{d.version}", styled_state(d.state), escape(delivery_reason(d))
        )
    if result.deliveries or canceled:
        out.print(table)
    queued = sum(d.state is State.QUEUED for d in result.deliveries)
    if result.created and queued:
        out.print(f"{plural(queued, 'retraction')} queued; {WORK_HINT}")
