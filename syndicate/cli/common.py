"""What every `syndicate` command shares: the consoles, the exit-1 failure, the --config and --json options,
loading the settings and opening the store, and one way to format states, times and errors.

Nothing here defines a command; the command modules import from here, never from the package.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from rich.console import Console
from rich.table import Table

from syndicate.config import ConfigError, Settings, load_config
from syndicate.delivery import ERROR_CLASSES
from syndicate.logs import redact, set_secrets
from syndicate.operations import parse_states, parse_time, split_list
from syndicate.store import open_store
from syndicate.store.base import PAUSED_INDEFINITELY, ChannelState, DeliveryRecord, State, Store, StoreError

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

WORK_HINT = "run `syndicate work` or let the server's workers deliver them"

# Piped output (CI logs, `| less`) gets a wide table instead of rich's 80-column default.
out = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)
# Messages on stderr are one line each, however long (file paths), so they are never wrapped.
err = Console(stderr=True, soft_wrap=True)


class RuntimeFailure(click.ClickException):
    """A failure while running (exit 1), as opposed to a usage mistake (exit 2)."""

    exit_code = 1


def config_option(fn: Callable[P, R]) -> Callable[P, R]:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Config file (default: $SYNDICATE_CONFIG, else ./config/syndicate.toml).",
    )(fn)


def json_option(fn: Callable[P, R]) -> Callable[P, R]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")(fn)


def load_settings(ctx: click.Context, config_path: Path | None) -> Settings:
    path = config_path or ctx.find_root().params.get("config_path")
    try:
        settings = load_config(path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    set_secrets(settings)
    return settings


async def connect_store(settings: Settings, *, migrate: bool = True) -> Store:
    try:
        store = open_store(settings.store.url)
    except StoreError as exc:  # it names the path and the fix
        raise click.ClickException(f"{settings.source}: [store] url: {exc}") from None
    except ValueError as exc:
        raise click.UsageError(f"{settings.source}: [store] url: {exc}") from None
    if migrate:
        try:
            await store.migrate()
        except StoreError as exc:  # it says what to fix (the path, the directory): no traceback
            await store.close()
            raise click.ClickException(str(exc)) from None
    return store


@contextlib.asynccontextmanager
async def connected_store(settings: Settings) -> AsyncIterator[Store]:
    store = await connect_store(settings)
    try:
        yield store
    finally:
        await store.close()


#: Which event loop the commands run on: ``uvloop`` (libuv's loop, written in C; the default where it is
#: installed) or ``asyncio`` (the standard library's, e.g. for its debug mode). Measured with callgrind on a webhook
#: drain (2026-12-07): uvloop cut the instructions per delivery by 9 % on SQLite and 13 % on PostgreSQL.
EVENT_LOOP_ENV = "SYNDICATE_EVENT_LOOP"
EVENT_LOOPS = ("uvloop", "asyncio")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the loop ``SYNDICATE_EVENT_LOOP`` asks for (None: asyncio's own). Without the variable,
    uvloop where it can be imported (it is a dependency everywhere it builds), else asyncio."""
    asked = os.environ.get(EVENT_LOOP_ENV, "").strip().lower()
    if asked not in ("", *EVENT_LOOPS):
        raise click.UsageError(
            f"{EVENT_LOOP_ENV}={asked!r} is not an event loop syndicate knows: use uvloop or asyncio"
        )
    if asked == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if asked:
            raise click.UsageError(
                f"{EVENT_LOOP_ENV}=uvloop, but uvloop is not installed here: pip install uvloop, or unset it"
            ) from None
        return None
    return uvloop.new_event_loop


def run_async(coro: Coroutine[Any, Any, R], *, stdlib_loop: bool = False) -> R:
    """Run a command's coroutine on the loop ``loop_factory`` picks, or on asyncio's own with ``stdlib_loop``."""
    try:
        factory = None if stdlib_loop else loop_factory()
    except click.UsageError:
        coro.close()  # never started: no "was never awaited" warning beside the error
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


#: The youngest generation's collection threshold for the long-running commands (Python's default is 700). A
#: delivery allocates a few hundred container objects, nearly all freed by reference counting; collecting every
#: 700 allocations walked the in-flight deliveries' objects again and again for no garbage.
SERVICE_GC_THRESHOLD = 7000


def settle_heap() -> None:
    """Once a long-running process (`serve`, `work`) has loaded its modules and config: collect, then freeze what
    is left (it lives as long as the process) so full collections stop walking it, and collect the young
    generation less often. Measured with callgrind on a webhook drain: 1.53M -> 1.38M instructions per delivery."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(SERVICE_GC_THRESHOLD, 10, 10)


# --- shared rendering: every command formats states, times and errors the same way ---------------------------------


def local_time(value: float | None) -> str:
    """A timestamp in local time for tables (JSON views use operations.iso, UTC)."""
    if value is None:
        return ""
    return dt.datetime.fromtimestamp(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def human_seconds(value: float) -> str:
    """A delay for humans: 0s, 500ms, 5s, 5m, 2h, 1.5d."""
    if value == 0:
        return "0s"
    if value < 1:
        return f"{value * 1000:g}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size:
            return f"{round(value / size, 1):g}{unit}"
    return f"{round(value, 1):g}s"


def styled_state(state: State) -> str:
    """A state, coloured (markup for rich)."""
    return f"[{STATE_STYLES[state]}]{state.value}[/]"


def delivery_reason(d: DeliveryRecord) -> str:
    """Why a delivery is where it is: the engine's note, else the last error (plain text, escape before printing).

    Masked like the API's answers: platform error text can echo what we sent (a token, a signature)."""
    return redact(d.note or d.last_error or "")


def delivery_error(d: DeliveryRecord) -> str:
    """``Permanent [400]: reason`` for a delivery's last failure (plain text)."""
    head = " ".join(
        x for x in (d.last_error_class or "", f"[{d.last_platform_code}]" if d.last_platform_code else "") if x
    )
    reason = delivery_reason(d)
    return f"{head}: {reason}" if head and reason else head or reason


def pause_text(state: ChannelState | None, now: float) -> str:
    """``until <time>: <reason>`` while a channel is paused, else empty (plain text)."""
    if state is None or state.paused_until is None or not state.paused_at(now):
        return ""
    until = "until resumed" if state.paused_until >= PAUSED_INDEFINITELY else f"until {local_time(state.paused_until)}"
    return f"{until}: {state.reason or ''}"


def per_channel(rows: Iterable[DeliveryRecord]) -> str:
    counts = Counter(d.channel for d in rows)
    return ", ".join(f"{name} ({n})" for name, n in sorted(counts.items()))


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def n_deliveries(n: int) -> str:
    return plural(n, "delivery", "deliveries")


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, indent=2))


def new_table(title: str, *columns: str) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    return table


# --- option parsing shared by the operator commands ----------------------------------------------------------------


def split_option(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[str]:
    return split_list(values)


def states_option(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[State]:
    try:
        return parse_states(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value, now=time.time())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def error_classes_option(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[str]:
    """Error class names; the taxonomy's own are matched case-insensitively (adapters may record subclasses)."""
    known = {name.lower(): name for name in ERROR_CLASSES}
    return [known.get(name.lower(), name) for name in split_list(values)]


def channel_option(fn: Callable[P, R]) -> Callable[P, R]:
    return click.option(
        "--channel",
        "channels",
        multiple=True,
        callback=split_option,
        metavar="NAME[,NAME]",
        help="Only these channels (repeatable or comma-separated).",
    )(fn)


async def check_channel_names(settings: Settings, store: Store, names: Sequence[str]) -> None:
    """A typo in --channel is a usage error, not an empty answer. Channels that are no longer configured but still
    have deliveries in the store are accepted."""
    if not names:
        return
    unknown = [n for n in names if n not in settings.channels]
    if unknown:
        in_store = {channel for channel, _ in await store.queue_depth()}
        unknown = [n for n in unknown if n not in in_store]
    if unknown:
        raise unknown_channel(settings, unknown[0])


def unknown_channel(settings: Settings, name: str) -> click.UsageError:
    """The usage error for a channel name that is not configured, naming those that are."""
    configured = ", ".join(sorted(settings.channels)) or "none"
    return click.UsageError(f"unknown channel {name!r} (configured: {configured})")
