"""The `syndicate` command.

Errors are one clear line on stderr: exit code 2 for usage and config mistakes, 1 for runtime failures.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from syndicate.config import ConfigError, Settings, load_config
from syndicate.engine import Engine
from syndicate.store import open_store
from syndicate.store.base import DeliveryFilter, DeliveryRecord, StaleVersion, State, Store, VersionConflict
from syndicate.story import Story, StoryValidationError

P = ParamSpec("P")
R = TypeVar("R")

STATE_STYLES = {
    State.DELIVERED: "green",
    State.QUEUED: "cyan",
    State.IN_FLIGHT: "blue",
    State.RETRY_WAIT: "yellow",
    State.FAILED: "bold red",
    State.UNKNOWN: "bold magenta",
    State.CANCELED: "dim",
    State.SUPERSEDED: "dim",
    State.SKIPPED: "dim",
}

# Piped output (CI logs, `| less`) gets a wide table instead of rich's 80-column default.
out = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)
# Messages on stderr are one line each, however long (file paths), so they are never wrapped.
err = Console(stderr=True, soft_wrap=True)


class RuntimeFailure(click.ClickException):
    """A failure while running (exit 1), as opposed to a usage mistake (exit 2)."""

    exit_code = 1


def _config_option(fn: Callable[P, R]) -> Callable[P, R]:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Config file (default: $SYNDICATE_CONFIG, else ./config/syndicate.toml).",
    )(fn)


def _settings(ctx: click.Context, config_path: Path | None) -> Settings:
    path = config_path or ctx.find_root().params.get("config_path")
    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


async def _open_store(settings: Settings) -> Store:
    try:
        store = open_store(settings.store.url)
    except ValueError as exc:
        raise click.UsageError(f"{settings.source}: [store] url: {exc}") from None
    await store.migrate()
    return store


def _run(coro: Awaitable[R]) -> R:
    return asyncio.run(coro)  # type: ignore[arg-type]


def _ts(value: float | None) -> str:
    if value is None:
        return ""
    return dt.datetime.fromtimestamp(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@_config_option
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(config_path: Path | None, verbose: int) -> None:
    """syndicate: write a story once, publish it on every channel, never twice, never lost."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


# --- publish ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One story document read from a file or stdin; ``where`` names it for error messages (file:line)."""

    where: str
    obj: Any | None
    error: str | None = None


def read_documents(name: str, text: str) -> Iterator[Document]:
    """A JSON document, a JSON array of documents, or JSON Lines (one document per line)."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) <= 1 or not _looks_like_json_lines(lines):
            yield Document(f"{name}:{exc.lineno}", None, f"malformed JSON: {exc.msg} (column {exc.colno})")
            return
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield Document(f"{name}:{number}", json.loads(line))
            except json.JSONDecodeError as line_exc:
                yield Document(f"{name}:{number}", None, f"malformed JSON: {line_exc.msg} (column {line_exc.colno})")
        return
    if isinstance(whole, list):
        for index, obj in enumerate(whole):
            yield Document(f"{name}[{index}]", obj)
    else:
        yield Document(name, whole)


def _looks_like_json_lines(lines: list[str]) -> bool:
    """After the whole text failed to parse: JSON Lines if its first or second line is an object on its own.

    Otherwise it is one (e.g. pretty-printed) document with a syntax error, reported once where it is, rather
    than as one bogus error per line.
    """
    for line in lines[:2]:
        try:
            if isinstance(json.loads(line), dict):
                return True
        except json.JSONDecodeError:
            continue
    return False


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(allow_dash=True, dir_okay=False))
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def publish(ctx: click.Context, files: tuple[str, ...], config_path: Path | None, as_json: bool) -> None:
    """Validate story documents and enqueue them for every channel.

    FILES are canonical story JSON or ninjs 2.x; a file may hold one document, a JSON array, or JSON Lines.
    Use - to read stdin (handy for backfills). A bad document is reported by name and line and does not stop
    the good ones; the exit code is 1 if any was rejected.
    """
    settings = _settings(ctx, config_path)
    docs: list[Document] = []
    for name in files:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            docs.append(Document(name, None, f"cannot read: {exc}"))
            continue
        docs.extend(read_documents("<stdin>" if name == "-" else name, text))

    async def _publish() -> list[dict[str, Any]]:
        store = await _open_store(settings)
        results: list[dict[str, Any]] = []
        try:
            engine = Engine(settings, store)
            for doc in docs:
                if doc.error is not None:
                    results.append({"source": doc.where, "ok": False, "errors": [doc.error]})
                    continue
                try:
                    story = Story.from_document(doc.obj)
                    result = await engine.accept(story)
                except StoryValidationError as exc:
                    problems = [f"{e.path}: {e.problem}" for e in exc.errors]
                    results.append({"source": doc.where, "ok": False, "errors": problems})
                    continue
                except (StaleVersion, VersionConflict) as exc:
                    results.append({"source": doc.where, "ok": False, "errors": [str(exc)]})
                    continue
                results.append(
                    {
                        "source": doc.where,
                        "ok": True,
                        "story_id": result.story_id,
                        "version": result.version,
                        "new": result.created,
                        "deliveries": [
                            {
                                "id": d.id,
                                "channel": d.channel,
                                "action": d.action.value,
                                "state": d.state.value,
                            }
                            for d in result.deliveries
                        ],
                    }
                )
        finally:
            await store.close()
        return results

    results = _run(_publish())
    bad = [r for r in results if not r["ok"]]
    if as_json:
        click.echo(json.dumps({"results": results}, ensure_ascii=False, indent=2))
    else:
        for r in results:
            if r["ok"]:
                what = "queued" if r["new"] else "already accepted (no new work)"
                chans = ", ".join(f"{d['channel']}:{d['action']}" for d in r["deliveries"]) or "no channel"
                out.print(
                    f"[green]ok[/]   {escape(r['source'])}: {escape(r['story_id'])} v{r['version']} {what} -> {chans}",
                    soft_wrap=True,
                )
            else:
                for problem in r["errors"]:
                    err.print(f"[red]bad[/]  {escape(r['source'])}: {escape(problem)}", highlight=False)
        out.print(f"{len(results) - len(bad)} accepted, {len(bad)} rejected")
    if bad:
        sys.exit(1)


# --- work ------------------------------------------------------------------------------------------------------


@cli.command()
@_config_option
@click.option("--until-idle", is_flag=True, help="Exit 0 once nothing is due or in flight.")
@click.option(
    "--wait-for-retries",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="With --until-idle: also wait for retries due within SECONDS.",
)
@click.pass_context
def work(ctx: click.Context, config_path: Path | None, until_idle: bool, wait_for_retries: float) -> None:
    """Run delivery workers on the configured store.

    SIGTERM or Ctrl-C stops claiming, lets in-flight deliveries finish (or releases them) and exits 0.
    """
    settings = _settings(ctx, config_path)
    if not settings.enabled_channels:
        raise click.UsageError(f"{settings.source}: no enabled [channels.*] to deliver to")

    async def _work() -> None:
        store = await _open_store(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with Engine(settings, store) as engine:
                await engine.run(stop=stop, until_idle=until_idle, idle_horizon=wait_for_retries)
        finally:
            await store.close()

    _run(_work())


# --- status ----------------------------------------------------------------------------------------------------


def delivery_summary(d: DeliveryRecord) -> dict[str, Any]:
    return {
        "id": d.id,
        "story_id": d.story_id,
        "version": d.version,
        "channel": d.channel,
        "action": d.action.value,
        "state": d.state.value,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "last_error_class": d.last_error_class,
        "platform_code": d.last_platform_code,
        "note": d.note,
        "due_at": d.due_at,
        "remote_id": d.receipt.remote_id if d.receipt else None,
        "url": d.receipt.url if d.receipt else None,
    }


@cli.command()
@click.argument("story_id", required=False)
@_config_option
@click.option("--channel", "channels", multiple=True, help="Only these channels (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=500, show_default=True, help="Most recent N.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def status(
    ctx: click.Context,
    story_id: str | None,
    config_path: Path | None,
    channels: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> None:
    """Per story × channel: state, attempts, last error."""
    settings = _settings(ctx, config_path)

    async def _status() -> tuple[list[DeliveryRecord], dict[str, Any]]:
        store = await _open_store(settings)
        try:
            rows = await store.list_deliveries(DeliveryFilter(story_id=story_id, channels=list(channels) or None))
            return rows[-limit:], await store.channel_states()
        finally:
            await store.close()

    rows, channel_states = _run(_status())
    if story_id is not None and not rows:
        raise RuntimeFailure(f"no deliveries for story {story_id!r}")
    if as_json:
        click.echo(json.dumps({"deliveries": [delivery_summary(d) for d in rows]}, ensure_ascii=False, indent=2))
        return
    table = Table(title="deliveries" + (f" of {escape(story_id)}" if story_id else ""), show_lines=False)
    for col in ("id", "story", "v", "channel", "action", "state", "tries", "detail"):
        table.add_column(col, overflow="fold")
    for d in rows:
        detail = d.receipt.url or d.receipt.remote_id or "" if d.receipt else ""
        if d.state is State.RETRY_WAIT:
            detail = f"retry at {_ts(d.due_at)}: {d.last_error or ''}"
        elif d.state in (State.FAILED, State.UNKNOWN, State.SKIPPED, State.CANCELED, State.SUPERSEDED):
            code = f" [{d.last_platform_code}]" if d.last_platform_code else ""
            detail = f"{d.note or d.last_error or ''}{code}"
        table.add_row(
            str(d.id),
            escape(d.story_id),
            str(d.version),
            d.channel,
            d.action.value,
            f"[{STATE_STYLES[d.state]}]{d.state.value}[/]",
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
    for name in sorted(counts):
        st = channel_states.get(name)
        paused = f"until {_ts(st.paused_until)}: {escape(st.reason or '')}" if st and st.paused_until else ""
        summary.add_row(name, ", ".join(f"{k} {v}" for k, v in sorted(counts[name].items())), paused)
    out.print(summary)


# --- sandbox ---------------------------------------------------------------------------------------------------


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
def sandbox(host: str, port: int) -> None:
    """Run the local stand-ins for every remote platform (tests, demo, benchmarks)."""
    from syndicate.sandbox import run

    run(host, port)


def main() -> None:
    """Console-script entry point: map our exceptions onto exit codes and one-line messages."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(1)
    except click.ClickException as exc:
        err.print(f"syndicate: error: {exc.format_message()}", highlight=False, markup=False)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
