"""The channels, for an operator: `channels` (configuration, pause state, queue depth; --check tests credentials
live), `channels rebuild NAME` (a channel's derived outputs again, for channels that keep them), `pause` and
`resume` (for every worker, through the store)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from syndicate.cli.common import (
    RuntimeFailure,
    config_option,
    connected_store,
    err,
    human_seconds,
    json_option,
    load_settings,
    new_table,
    out,
    pause_text,
    plural,
    print_json,
    run_async,
    styled_state,
    unknown_channel,
)
from syndicate.config import ChannelSettings, Settings
from syndicate.delivery import DeliveryError
from syndicate.logs import redact
from syndicate.operations import channel_state_json, parse_duration
from syndicate.store.base import PAUSED_INDEFINITELY, ChannelState, SharedKeys, State

# --- channels --------------------------------------------------------------------------------------------------


def _retry_summary(delays: Sequence[float]) -> str:
    return f"{plural(len(delays), 'attempt')}: " + ", ".join(human_seconds(d) for d in delays)


async def _check_channel(ch: ChannelSettings, keys: SharedKeys) -> dict[str, Any]:
    """Start the adapter, run its live check, close it. Whatever goes wrong becomes a failing result, not a crash.

    The detail is masked: a platform's refusal can quote our credentials back."""
    result = await _run_check(ch, keys)
    return {**result, "detail": redact(result["detail"])}


async def _run_check(ch: ChannelSettings, keys: SharedKeys) -> dict[str, Any]:
    adapter = ch.create_adapter()
    limit = ch.timeout * 2 + 5
    try:
        await adapter.start()
        async with asyncio.timeout(limit):
            detail = await adapter.check(keys)
        return {"ok": True, "error_class": None, "platform_code": None, "detail": detail}
    except DeliveryError as exc:
        return {
            "ok": False,
            "error_class": type(exc).__name__,
            "platform_code": exc.platform_code,
            "detail": exc.reason,
        }
    except TimeoutError:
        return {"ok": False, "error_class": "Timeout", "platform_code": None, "detail": f"no answer in {limit:g}s"}
    except Exception as exc:  # an adapter bug must not hide the other channels' results
        return {"ok": False, "error_class": type(exc).__name__, "platform_code": None, "detail": str(exc)}
    finally:
        with contextlib.suppress(Exception):
            await adapter.close()


@click.group("channels", invoke_without_command=True)
@config_option
@click.option("--check", is_flag=True, help="Also run each enabled channel's live check (exit 1 if any fails).")
@json_option
@click.pass_context
def channels_command(ctx: click.Context, config_path: Path | None, check: bool, as_json: bool) -> None:
    """Configured channels: kind, enabled, concurrency, timeout, retry schedule, pause state and queue depth."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings(ctx, config_path)

    async def _gather() -> tuple[dict[str, ChannelState], dict[tuple[str, State], int], dict[str, dict[str, Any]]]:
        checks: dict[str, dict[str, Any]] = {}
        async with connected_store(settings) as store:
            states, depth = await store.channel_states(), await store.queue_depth()
            if check:  # with the store's shared keys: a check uses the workers' tokens, never replaces them
                enabled = list(settings.enabled_channels.values())
                keys = SharedKeys(store)
                found = await asyncio.gather(*(_check_channel(ch, keys) for ch in enabled))
                checks = {ch.name: result for ch, result in zip(enabled, found, strict=True)}
        return states, depth, checks

    states, depth, checks = run_async(_gather())
    now = time.time()
    queue: dict[str, dict[State, int]] = {}
    for (name, state), n in depth.items():
        queue.setdefault(name, {})[state] = n
    names = list(settings.channels) + sorted(set(queue) - set(settings.channels))

    views: list[dict[str, Any]] = []
    for name in names:
        ch = settings.channels.get(name)
        view: dict[str, Any] = {
            "channel": name,
            "configured": ch is not None,
            "kind": ch.kind if ch else None,
            "enabled": ch.enabled if ch else False,
            "concurrency": ch.concurrency if ch else None,
            "timeout": ch.timeout if ch else None,
            "retry": list(ch.retry) if ch else None,
            **channel_state_json(name, states.get(name), now=now),
            "queue": {
                s.value: n for s, n in sorted(queue.get(name, {}).items(), key=lambda kv: list(State).index(kv[0]))
            },
        }
        if check:
            view["check"] = checks.get(name)
        views.append(view)

    failing = [v["channel"] for v in views if v.get("check") and not v["check"]["ok"]]
    if as_json:
        print_json({"channels": views})
    else:
        table = new_table("channels", "channel", "kind", "enabled", "conc.", "timeout", "retry", "paused", "queue")
        if check:
            table.add_column("check", overflow="fold")
        for v in views:
            ch = settings.channels.get(v["channel"])
            cells = [
                v["channel"],
                v["kind"] or "[dim](not configured)[/]",
                ("yes" if v["enabled"] else "[dim]no[/]") if ch else "",
                str(v["concurrency"] or ""),
                human_seconds(v["timeout"]) if v["timeout"] else "",
                _retry_summary(v["retry"]) if v["retry"] else "",
                escape(pause_text(states.get(v["channel"]), now)),
                ", ".join(f"{styled_state(State(s))} {n}" for s, n in v["queue"].items()),
            ]
            if check:
                result = v["check"]
                if result is None:
                    cells.append("[dim]not checked (disabled)[/]" if ch else "")
                elif result["ok"]:
                    cells.append(f"[green]ok[/] {escape(result['detail'])}")
                else:
                    code = f" [{result['platform_code']}]" if result["platform_code"] else ""
                    cells.append(
                        f"[bold red]failing[/] {escape(result['error_class'] + code)}: {escape(result['detail'])}"
                    )
            table.add_row(*cells)
        out.print(table)
    if failing:
        raise RuntimeFailure(f"channel check failed: {', '.join(failing)}")


@channels_command.command("rebuild")
@click.argument("channel")
@config_option
@json_option
@click.pass_context
def rebuild(ctx: click.Context, channel: str, config_path: Path | None, as_json: bool) -> None:
    """Rewrite every output CHANNEL derives from its own state (index pages, sitemaps...), e.g. after changing its
    templates, with a progress bar. Workers may keep running: the channel's own locking orders the two."""
    parent = ctx.parent.params.get("config_path") if ctx.parent is not None else None
    settings = load_settings(ctx, config_path or parent)
    name = _configured_channel(settings, channel)
    ch = settings.channels[name]
    adapter = ch.create_adapter()
    if not adapter.supports_rebuild:
        raise click.UsageError(f"channel {name!r} (kind {ch.kind!r}) keeps no derived outputs to rebuild")

    async def _rebuild() -> str:
        columns = (TextColumn(f"rebuilding {escape(name)}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err, disable=as_json or not err.is_terminal) as progress:
            task = progress.add_task("rebuild", total=None)
            try:
                await adapter.start()
                return await adapter.rebuild(lambda done, total: progress.update(task, completed=done, total=total))
            finally:
                with contextlib.suppress(Exception):
                    await adapter.close()

    started = time.monotonic()
    try:
        detail = run_async(_rebuild())
    except DeliveryError as exc:
        raise RuntimeFailure(f"rebuilding {name} failed: {type(exc).__name__}: {redact(exc.reason)}") from None
    seconds = time.monotonic() - started
    if as_json:
        print_json({"channel": name, "detail": detail, "seconds": round(seconds, 3)})
        return
    out.print(f"{escape(name)}: {escape(detail)} in {seconds:.1f}s", highlight=False)


# --- pause / resume --------------------------------------------------------------------------------------------


def _configured_channel(settings: Settings, name: str) -> str:
    if name not in settings.channels:
        raise unknown_channel(settings, name)
    return name


@click.command()
@click.argument("channel")
@config_option
@click.option("--for", "duration", metavar="DURATION", help="How long: 30m, 2h, 1d (default: until resumed).")
@click.option("--reason", default="paused by an operator", show_default=True, help="Shown wherever the pause is.")
@json_option
@click.pass_context
def pause(
    ctx: click.Context, channel: str, config_path: Path | None, duration: str | None, reason: str, as_json: bool
) -> None:
    """Pause a channel for every worker: nothing is sent on it until it is resumed (or the time is up)."""
    settings = load_settings(ctx, config_path)
    name = _configured_channel(settings, channel)
    now = time.time()
    until = PAUSED_INDEFINITELY
    if duration:
        try:
            until = now + parse_duration(duration)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--for") from None

    async def _pause() -> ChannelState | None:
        async with connected_store(settings) as store:
            await store.pause_channel(name, until=until, reason=reason, now=now)
            return (await store.channel_states()).get(name)

    state = run_async(_pause())
    if as_json:
        print_json(channel_state_json(name, state, now=now))
        return
    out.print(f"{escape(name)} paused {pause_text(state, now)}", highlight=False)


@click.command()
@click.argument("channel")
@config_option
@json_option
@click.pass_context
def resume(ctx: click.Context, channel: str, config_path: Path | None, as_json: bool) -> None:
    """Resume a paused channel (after a rate limit, fixed credentials, or an operator's pause)."""
    settings = load_settings(ctx, config_path)
    name = _configured_channel(settings, channel)
    now = time.time()

    async def _resume() -> ChannelState | None:
        async with connected_store(settings) as store:
            await store.resume_channel(name, now=now)
            return (await store.channel_states()).get(name)

    state = run_async(_resume())
    if as_json:
        print_json(channel_state_json(name, state, now=now))
        return
    out.print(f"{escape(name)} resumed: workers deliver its queue again", highlight=False)
