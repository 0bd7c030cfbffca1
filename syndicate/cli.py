"""The `syndicate` command.

Errors are one clear line on stderr: exit code 2 for usage and config mistakes, 1 for runtime failures.
Operator commands (failed, replay, retract, channels) go through ``syndicate.operations``, the layer the HTTP API
uses too, so the CLI and the API select the same deliveries and print the same JSON views.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import signal
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import aiohttp
import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from syndicate.config import ChannelSettings, ConfigError, Settings, load_config
from syndicate.delivery import ERROR_CLASSES, Action, DeliveryError, RenderError
from syndicate.engine import Engine
from syndicate.logs import configure_logging, redact, set_secrets
from syndicate.ninjs import read_document
from syndicate.operations import (
    DEFAULT_REPLAY_STATES,
    ReplayPlan,
    ReplaySelection,
    channel_state_json,
    delivery_json,
    iso,
    parse_duration,
    parse_states,
    parse_time,
    plan_replay,
    requeue,
    retract_story,
    split_list,
)
from syndicate.signing import SIGNATURE_HEADER, sign
from syndicate.store import open_store
from syndicate.store.base import (
    PAUSED_INDEFINITELY,
    ChannelState,
    DeliveryFilter,
    DeliveryRecord,
    NotFound,
    StaleVersion,
    State,
    Store,
    VersionConflict,
)
from syndicate.story import StoryValidationError

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

#: Replays larger than this show a progress bar (on a terminal).
PROGRESS_THRESHOLD = 50
WORK_HINT = "run `syndicate work` or let the server's workers deliver them"

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


def _json_option(fn: Callable[P, R]) -> Callable[P, R]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")(fn)


def _settings(ctx: click.Context, config_path: Path | None) -> Settings:
    path = config_path or ctx.find_root().params.get("config_path")
    try:
        settings = load_config(path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    set_secrets(settings)
    return settings


async def _open_store(settings: Settings, *, migrate: bool = True) -> Store:
    try:
        store = open_store(settings.store.url)
    except ValueError as exc:
        raise click.UsageError(f"{settings.source}: [store] url: {exc}") from None
    if migrate:
        await store.migrate()
    return store


@contextlib.asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[Store]:
    store = await _open_store(settings)
    try:
        yield store
    finally:
        await store.close()


def _run(coro: Coroutine[Any, Any, R]) -> R:
    return asyncio.run(coro)


# --- shared rendering: every command formats states, times and errors the same way ---------------------------------


def _ts(value: float | None) -> str:
    """A timestamp in local time for tables (JSON views use operations.iso, UTC)."""
    if value is None:
        return ""
    return dt.datetime.fromtimestamp(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float) -> str:
    """A delay for humans: 0s, 500ms, 5s, 5m, 2h, 1.5d."""
    if value == 0:
        return "0s"
    if value < 1:
        return f"{value * 1000:g}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size:
            return f"{round(value / size, 1):g}{unit}"
    return f"{round(value, 1):g}s"


def _state(state: State) -> str:
    """A state, coloured (markup for rich)."""
    return f"[{STATE_STYLES[state]}]{state.value}[/]"


def _reason(d: DeliveryRecord) -> str:
    """Why a delivery is where it is: the engine's note, else the last error (plain text, escape before printing).

    Masked like the API's answers: platform error text can echo what we sent (a token, a signature)."""
    return redact(d.note or d.last_error or "")


def _error(d: DeliveryRecord) -> str:
    """``Permanent [400]: reason`` for a delivery's last failure (plain text)."""
    head = " ".join(
        x for x in (d.last_error_class or "", f"[{d.last_platform_code}]" if d.last_platform_code else "") if x
    )
    reason = _reason(d)
    return f"{head}: {reason}" if head and reason else head or reason


def _paused(state: ChannelState | None, now: float) -> str:
    """``until <time>: <reason>`` while a channel is paused, else empty (plain text)."""
    if state is None or state.paused_until is None or not state.paused_at(now):
        return ""
    until = "until resumed" if state.paused_until >= PAUSED_INDEFINITELY else f"until {_ts(state.paused_until)}"
    return f"{until}: {state.reason or ''}"


def _per_channel(rows: Iterable[DeliveryRecord]) -> str:
    counts = Counter(d.channel for d in rows)
    return ", ".join(f"{name} ({n})" for name, n in sorted(counts.items()))


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def _deliveries(n: int) -> str:
    return _plural(n, "delivery", "deliveries")


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, indent=2))


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    return table


# --- option parsing shared by the operator commands ----------------------------------------------------------------


def _split_option(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[str]:
    return split_list(values)


def _states_option(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[State]:
    try:
        return parse_states(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value, now=time.time())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _error_classes_option(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[str]:
    """Error class names; the taxonomy's own are matched case-insensitively (adapters may record subclasses)."""
    known = {name.lower(): name for name in ERROR_CLASSES}
    return [known.get(name.lower(), name) for name in split_list(values)]


def _channel_option(fn: Callable[P, R]) -> Callable[P, R]:
    return click.option(
        "--channel",
        "channels",
        multiple=True,
        callback=_split_option,
        metavar="NAME[,NAME]",
        help="Only these channels (repeatable or comma-separated).",
    )(fn)


async def _check_channel_names(settings: Settings, store: Store, names: Sequence[str]) -> None:
    """A typo in --channel is a usage error, not an empty answer. Channels that are no longer configured but still
    have deliveries in the store are accepted."""
    if not names:
        return
    unknown = [n for n in names if n not in settings.channels]
    if unknown:
        in_store = {channel for channel, _ in await store.queue_depth()}
        unknown = [n for n in unknown if n not in in_store]
    if unknown:
        configured = ", ".join(sorted(settings.channels)) or "none"
        raise click.UsageError(f"unknown channel {unknown[0]!r} (configured: {configured})")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@_config_option
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    default="auto",
    show_default=True,
    help="Logs on stderr: one JSON object per line, or text (auto: text on a terminal, JSON otherwise).",
)
def cli(config_path: Path | None, verbose: int, log_format: str) -> None:
    """syndicate: write a story once, publish it on every channel, never twice, never lost."""
    level = logging.WARNING - 10 * min(verbose, 2)
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    # Secrets are added to the redaction list as soon as a command loads its config (see _settings).
    configure_logging(None, fmt="json" if log_format == "json" else "text", level=level)


# --- publish ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One story document read from a file or stdin; ``where`` names it for error messages (file:line).

    ``raw`` is the document's own text when it is the whole file or one JSON line (sent as is by ``publish --url``).
    """

    where: str
    obj: Any | None
    error: str | None = None
    raw: str | None = None


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
                yield Document(f"{name}:{number}", json.loads(line), raw=line)
            except json.JSONDecodeError as line_exc:
                yield Document(f"{name}:{number}", None, f"malformed JSON: {line_exc.msg} (column {line_exc.colno})")
        return
    if isinstance(whole, list):
        for index, obj in enumerate(whole):
            yield Document(f"{name}[{index}]", obj)
    else:
        yield Document(name, whole, raw=text)


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


def _read_files(files: Sequence[str]) -> list[Document]:
    docs: list[Document] = []
    for name in files:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            docs.append(Document(name, None, f"cannot read: {exc}"))
            continue
        docs.extend(read_documents("<stdin>" if name == "-" else name, text))
    return docs


def _print_bad(source: str, problems: Iterable[str]) -> None:
    for problem in problems:
        err.print(f"[red]bad[/]  {escape(source)}: {escape(problem)}", highlight=False)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(allow_dash=True, dir_okay=False))
@_config_option
@click.option(
    "--url",
    metavar="URL",
    help="POST each document to a running server's publish hook (http://host:port or the full /v1/stories URL), "
    "signed with [server] hook_secret, instead of writing to the local store.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def publish(
    ctx: click.Context, files: tuple[str, ...], config_path: Path | None, url: str | None, as_json: bool
) -> None:
    """Validate story documents and enqueue them for every channel.

    FILES are canonical story JSON or ninjs 2.x; a file may hold one document, a JSON array, or JSON Lines.
    Use - to read stdin (handy for backfills). A bad document is reported by name and line and does not stop
    the good ones; the exit code is 1 if any was rejected.
    """
    settings = _settings(ctx, config_path)
    fatal: str | None = None
    if url is not None:
        endpoint = _hook_url(url)
        secret = settings.server.hook_secret
        if not secret:
            raise click.UsageError(
                f"{settings.source}: [server] hook_secret is not set: publish --url signs every request with it "
                f"({SIGNATURE_HEADER})"
            )
        results, fatal = _run(_publish_remote(endpoint, secret, _read_files(files)))
    else:
        results = _run(_publish_local(settings, _read_files(files)))

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
                _print_bad(r["source"], r["errors"])
        out.print(f"{len(results) - len(bad)} accepted, {len(bad)} rejected")
    if fatal is not None:
        raise RuntimeFailure(fatal)
    if bad:
        sys.exit(1)


def _accepted(
    source: str, story_id: str, version: Any, new: bool, deliveries: Iterable[dict[str, Any]]
) -> dict[str, Any]:
    """One accepted document, as ``publish`` reports it (local store or server)."""
    return {
        "source": source,
        "ok": True,
        "story_id": story_id,
        "version": version,
        "new": new,
        "deliveries": [
            {"id": d.get("id"), "channel": d.get("channel"), "action": d.get("action"), "state": d.get("state")}
            for d in deliveries
        ],
    }


async def _publish_local(settings: Settings, docs: Sequence[Document]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    async with _store(settings) as store:
        engine = Engine(settings, store)
        for doc in docs:
            if doc.error is not None:
                results.append({"source": doc.where, "ok": False, "errors": [doc.error]})
                continue
            try:
                story = read_document(doc.obj)
                result = await engine.accept(story)
            except StoryValidationError as exc:
                problems = [f"{e.path}: {e.problem}" for e in exc.errors]
                results.append({"source": doc.where, "ok": False, "errors": problems})
                continue
            except (StaleVersion, VersionConflict) as exc:
                results.append({"source": doc.where, "ok": False, "errors": [str(exc)]})
                continue
            views = [
                {"id": d.id, "channel": d.channel, "action": d.action.value, "state": d.state.value}
                for d in result.deliveries
            ]
            results.append(_accepted(doc.where, result.story_id, result.version, result.created, views))
    return results


# --- publish --url: the server's publish hook --------------------------------------------------------------------

HOOK_PATH = "/v1/stories"
HOOK_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=10)


def _hook_url(url: str) -> str:
    """The server base (``http://host:port``) gets ``/v1/stories`` appended; the full endpoint is kept."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter(
            f"{url!r} is not an http(s) URL (e.g. http://127.0.0.1:8080)", param_hint="'--url'"
        ) from None
    path = parts.path.rstrip("/")
    if not path.endswith(HOOK_PATH):
        path += HOOK_PATH
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class _Signer:
    """Signs each request anew. The server accepts a signature once, so the same body sent twice in one run gets
    a later timestamp rather than the same signature."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._last: dict[str, int] = {}

    def __call__(self, body: bytes) -> str:
        key = hashlib.sha256(body).hexdigest()
        t = max(int(time.time()), self._last.get(key, 0) + 1)
        self._last[key] = t
        return sign(self.secret, body, timestamp=t)


def _content_type(obj: Any) -> str:
    """ninjs when the document has ``uri`` (and no canonical ``id``: the same rule as syndicate.ninjs.read_document)."""
    if isinstance(obj, dict) and "uri" in obj and "id" not in obj:
        return "application/ninjs+json"
    return "application/json"


async def _publish_remote(url: str, secret: str, docs: Sequence[Document]) -> tuple[list[dict[str, Any]], str | None]:
    """POST each document; returns the per-document results and, when the server could not be reached, why."""
    results: list[dict[str, Any]] = []
    signer = _Signer(secret)
    async with aiohttp.ClientSession(timeout=HOOK_TIMEOUT) as session:
        for doc in docs:
            if doc.error is not None:
                results.append({"source": doc.where, "ok": False, "errors": [doc.error]})
                continue
            raw = doc.raw if doc.raw is not None else json.dumps(doc.obj, ensure_ascii=False)
            body = raw.encode("utf-8")
            headers = {"Content-Type": _content_type(doc.obj)}
            try:
                for attempt in range(2):
                    headers[SIGNATURE_HEADER] = signer(body)
                    async with session.post(url, data=body, headers=headers) as resp:
                        status, text = resp.status, await resp.text(errors="replace")
                    answer = _json_object(text)
                    if status == 401 and answer.get("error") == "replayed_signature" and attempt == 0:
                        # Another run sent the same bytes within this second: sign again in the next one.
                        await asyncio.sleep(1.0 - time.time() % 1.0 + 0.01)
                        continue
                    break
            except aiohttp.ClientConnectorError as exc:
                reason = exc.os_error.strerror if exc.os_error and exc.os_error.strerror else str(exc)
                return results, f"cannot reach the server at {url}: {reason}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                detail = str(exc) or type(exc).__name__
                return results, (
                    f"no answer from {url} for {doc.where} ({detail}): it may have been accepted; "
                    "sending the same version again is safe"
                )
            results.append(_hook_result(doc.where, url, status, answer, text))
    return results, None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _hook_result(source: str, url: str, status: int, answer: dict[str, Any], text: str) -> dict[str, Any]:
    if status in (200, 202) and "story_id" in answer:
        return _accepted(
            source, answer["story_id"], answer.get("version"), status == 202, answer.get("deliveries") or []
        )
    message = answer.get("message")
    errors = answer.get("errors")
    if status == 422 and isinstance(errors, list) and errors:
        problems = [f"{e.get('path', '$')}: {e.get('problem', '')}" if isinstance(e, dict) else str(e) for e in errors]
    elif status == 409 and message:
        problems = [str(message)]  # stale version / conflict: worded as the local publish words it
    elif message:
        code = f" {answer['error']}" if answer.get("error") else ""
        hint = ": check [server] hook_secret matches the server's" if status == 401 else ""
        problems = [f"HTTP {status}{code}: {message}{hint}"]
    else:
        snippet = " ".join(text.split())[:200] or "(empty answer)"
        problems = [f"HTTP {status} from {url}: {snippet}"]
    return {"source": source, "ok": False, "status": status, "errors": problems}


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


# --- pause / resume --------------------------------------------------------------------------------------------


def _configured_channel(settings: Settings, name: str) -> str:
    if name not in settings.channels:
        configured = ", ".join(sorted(settings.channels)) or "none"
        raise click.UsageError(f"unknown channel {name!r} (configured: {configured})")
    return name


@cli.command()
@click.argument("channel")
@_config_option
@click.option("--for", "duration", metavar="DURATION", help="How long: 30m, 2h, 1d (default: until resumed).")
@click.option("--reason", default="paused by an operator", show_default=True, help="Shown wherever the pause is.")
@_json_option
@click.pass_context
def pause(
    ctx: click.Context, channel: str, config_path: Path | None, duration: str | None, reason: str, as_json: bool
) -> None:
    """Pause a channel for every worker: nothing is sent on it until it is resumed (or the time is up)."""
    settings = _settings(ctx, config_path)
    name = _configured_channel(settings, channel)
    now = time.time()
    until = PAUSED_INDEFINITELY
    if duration:
        try:
            until = now + parse_duration(duration)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--for") from None

    async def _pause() -> ChannelState | None:
        async with _store(settings) as store:
            await store.pause_channel(name, until=until, reason=reason, now=now)
            return (await store.channel_states()).get(name)

    state = _run(_pause())
    if as_json:
        _print_json(channel_state_json(name, state, now=now))
        return
    out.print(f"{escape(name)} paused {_paused(state, now)}", highlight=False)


@cli.command()
@click.argument("channel")
@_config_option
@_json_option
@click.pass_context
def resume(ctx: click.Context, channel: str, config_path: Path | None, as_json: bool) -> None:
    """Resume a paused channel (after a rate limit, fixed credentials, or an operator's pause)."""
    settings = _settings(ctx, config_path)
    name = _configured_channel(settings, channel)
    now = time.time()

    async def _resume() -> ChannelState | None:
        async with _store(settings) as store:
            await store.resume_channel(name, now=now)
            return (await store.channel_states()).get(name)

    state = _run(_resume())
    if as_json:
        _print_json(channel_state_json(name, state, now=now))
        return
    out.print(f"{escape(name)} resumed: workers deliver its queue again", highlight=False)


# --- landed ----------------------------------------------------------------------------------------------------


@cli.command()
@click.argument("delivery_id", type=int)
@click.argument("remote_id_or_url")
@_config_option
@click.pass_context
def landed(ctx: click.Context, delivery_id: int, remote_id_or_url: str, config_path: Path | None) -> None:
    """Confirm an `unknown` delivery did reach the platform: you found the post, give its id or URL.

    It becomes delivered with that receipt (recorded in its attempt history); nothing is sent. To send it again
    instead, use `syndicate replay DELIVERY_ID --force`.
    """
    from syndicate.operations import mark_landed

    settings = _settings(ctx, config_path)

    async def _landed() -> bool:
        async with _store(settings) as store:
            return await mark_landed(store, delivery_id, remote_id_or_url, now=time.time(), who="the CLI")

    try:
        changed = _run(_landed())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="REMOTE_ID_OR_URL") from None
    if not changed:
        raise RuntimeFailure(
            f"delivery {delivery_id} is not `unknown` (see `syndicate status --json`): nothing changed"
        )
    out.print(f"delivery {delivery_id} marked delivered: {escape(remote_id_or_url)}", highlight=False)


# --- serve -----------------------------------------------------------------------------------------------------


@cli.command()
@_config_option
@click.option("--host", default=None, help="Interface to listen on (default: [server] host).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default: [server] port).")
@click.option(
    "--no-workers",
    is_flag=True,
    help="Serve the API only; separate `syndicate work` processes deliver.",
)
@click.pass_context
def serve(ctx: click.Context, config_path: Path | None, host: str | None, port: int | None, no_workers: bool) -> None:
    """Run the HTTP service: the CMS publish hook, the status and replay API, health and metrics, plus embedded
    delivery workers (unless --no-workers).

    SIGTERM or Ctrl-C closes the listener, lets in-flight deliveries finish (or releases them) and exits 0.
    """
    from syndicate.server import serve as run_server

    settings = _settings(ctx, config_path)
    for key in ("hook_secret", "api_token"):
        if not getattr(settings.server, key):
            raise click.UsageError(f"{settings.source}: [server] {key}: missing (required by serve; use ${{ENV_VAR}})")

    async def _serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_server(
            settings,
            host=host or settings.server.host,
            port=settings.server.port if port is None else port,
            workers=not no_workers,
            stop=stop,
            on_ready=lambda url: click.echo(f"syndicate serving on {url}", err=True),
        )

    try:
        _run(_serve())
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        raise RuntimeFailure(f"cannot listen: {exc}") from None


# --- status ----------------------------------------------------------------------------------------------------


@cli.command()
@click.argument("story_id", required=False)
@_config_option
@_channel_option
@click.option("--limit", type=click.IntRange(min=1), default=500, show_default=True, help="Most recent N.")
@_json_option
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
    settings = _settings(ctx, config_path)

    async def _status() -> tuple[list[DeliveryRecord], dict[str, ChannelState]]:
        async with _store(settings) as store:
            await _check_channel_names(settings, store, channels)
            rows = await store.list_deliveries(DeliveryFilter(story_id=story_id, channels=channels or None))
            return rows[-limit:], await store.channel_states()

    rows, channel_states = _run(_status())
    if story_id is not None and not rows:
        raise RuntimeFailure(f"no deliveries for story {story_id!r}")
    if as_json:
        _print_json({"deliveries": [delivery_json(d) for d in rows]})
        return
    title = "deliveries" + (f" of {escape(story_id)}" if story_id else "")
    table = _table(title, "id", "story", "v", "channel", "action", "state", "tries", "detail")
    for d in rows:
        detail = d.receipt.url or d.receipt.remote_id or "" if d.receipt else ""
        if d.state is State.RETRY_WAIT:
            detail = f"retry at {_ts(d.due_at)}: {redact(d.last_error or '')}"
        elif d.state in (State.FAILED, State.UNKNOWN, State.SKIPPED, State.CANCELED, State.SUPERSEDED):
            code = f" [{d.last_platform_code}]" if d.last_platform_code else ""
            detail = f"{_reason(d)}{code}"
        table.add_row(
            str(d.id),
            escape(d.story_id),
            str(d.version),
            d.channel,
            d.action.value,
            _state(d.state),
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
        paused = _paused(channel_states.get(name), now)
        summary.add_row(name, ", ".join(f"{k} {v}" for k, v in sorted(counts[name].items())), escape(paused))
    out.print(summary)


# --- failed ----------------------------------------------------------------------------------------------------


@cli.command()
@_config_option
@_channel_option
@click.option(
    "--since",
    callback=_time_option,
    metavar="TIME",
    help="Only deliveries that changed since TIME: a duration ago (30m, 2h, 1d), ISO 8601 or unix seconds.",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    callback=_states_option,
    metavar="STATE[,STATE]",
    help="States to list (default: failed,unknown).",
)
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True, help="Most recent N.")
@_json_option
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
    settings = _settings(ctx, config_path)
    wanted = states or list(DEFAULT_REPLAY_STATES)

    async def _failed() -> list[DeliveryRecord]:
        async with _store(settings) as store:
            await _check_channel_names(settings, store, channels)
            return await store.list_deliveries(DeliveryFilter(states=wanted, channels=channels or None, since=since))

    rows = _run(_failed())
    shown = rows[-limit:]
    if as_json:
        _print_json({"deliveries": [delivery_json(d) for d in shown]})
        return
    what = ",".join(s.value for s in wanted)
    if not rows:
        out.print(f"no {escape(what)} deliveries" + (f" on {', '.join(channels)}" if channels else ""))
        return
    columns = ("id", "story", "v", "channel", "action", "state", "tries", "error", "code", "reason", "when")
    table = _table(f"{what} deliveries", *columns)
    for d in shown:
        table.add_row(
            str(d.id),
            escape(d.story_id),
            str(d.version),
            d.channel,
            d.action.value,
            _state(d.state),
            str(d.attempts),
            escape(d.last_error_class or ""),
            escape(d.last_platform_code or ""),
            escape(_reason(d)),
            _ts(d.updated_at),
        )
    out.print(table)
    more = f" (the {len(shown)} most recent shown)" if len(shown) < len(rows) else ""
    out.print(f"{_deliveries(len(rows))}{more} on {_per_channel(rows)}; re-queue with `syndicate replay`")


# --- replay ----------------------------------------------------------------------------------------------------


@cli.command()
@click.argument("ids", nargs=-1, type=click.IntRange(min=1))
@_config_option
@_channel_option
@click.option("--story", "story_id", metavar="STORY_ID", help="Only this story's deliveries.")
@click.option(
    "--since", callback=_time_option, metavar="TIME", help="Changed since TIME (30m, 2h, 1d, ISO 8601, unix seconds)."
)
@click.option("--until", callback=_time_option, metavar="TIME", help="Changed before TIME.")
@click.option(
    "--state",
    "states",
    multiple=True,
    callback=_states_option,
    metavar="STATE[,STATE]",
    help="States to select (default: failed,unknown).",
)
@click.option(
    "--error-class",
    "error_classes",
    multiple=True,
    callback=_error_classes_option,
    metavar="CLASS[,CLASS]",
    help=f"Only deliveries whose last error was of this class ({', '.join(ERROR_CLASSES)}).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be re-queued and change nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (needed when stdin is not a terminal).")
@click.option("--force", is_flag=True, help="Also replay delivered ones (this posts them again).")
@_json_option
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
    settings = _settings(ctx, config_path)
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
        async with _store(settings) as store:
            await _check_channel_names(settings, store, channels)
            return await plan_replay(store, selection)

    plan = _run(_plan())
    selected = plan.replayable
    if not as_json:
        _show_plan(plan)

    requeued: list[int] = []
    if selected and not dry_run:
        if not yes:
            click.confirm(f"Re-queue {_deliveries(len(selected))}?", default=False, abort=True, err=True)
        requeued = _run(_requeue(settings, selected, force=force))

    if as_json:
        _print_json(
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
            f"dry run: would re-queue {_deliveries(len(selected))} on channels {_per_channel(selected)}; "
            "nothing was changed"
        )
    else:
        done = set(requeued)
        line = f"re-queued {_deliveries(len(done))}"
        if done:
            line += f" on channels {_per_channel(d for d in selected if d.id in done)}"
        skipped = len(selected) - len(done)
        if skipped:
            line += f" ({skipped} changed state meanwhile and were left alone)"
        out.print(f"{line}; {WORK_HINT}" if done else line, soft_wrap=True)

    problems: list[str] = []
    if plan.missing_ids:
        problems.append(f"no delivery with id {', '.join(map(str, plan.missing_ids))}")
    if plan.refused:
        reasons = sorted({why for _, why in plan.refused})
        problems.append(f"{_deliveries(len(plan.refused))} refused ({'; '.join(reasons)})")
    if problems:
        raise RuntimeFailure("; ".join(problems))


def _show_plan(plan: ReplayPlan) -> None:
    if plan.replayable:
        columns = ("id", "story", "v", "channel", "action", "state", "tries", "error")
        table = _table(f"selected for replay ({len(plan.replayable)})", *columns)
        for d in plan.replayable:
            table.add_row(
                str(d.id),
                escape(d.story_id),
                str(d.version),
                d.channel,
                d.action.value,
                _state(d.state),
                str(d.attempts),
                escape(_error(d)),
            )
        out.print(table)
    if plan.refused or plan.missing_ids:
        table = _table(
            f"refused ({len(plan.refused) + len(plan.missing_ids)})", "id", "story", "channel", "action", "state"
        )
        table.add_column("why", overflow="fold")
        for d, why in plan.refused:
            table.add_row(str(d.id), escape(d.story_id), d.channel, d.action.value, _state(d.state), escape(why))
        for missing in plan.missing_ids:
            table.add_row(str(missing), "", "", "", "", "no such delivery (or outside the other filters)")
        out.print(table)


async def _requeue(settings: Settings, rows: Sequence[DeliveryRecord], *, force: bool) -> list[int]:
    async with _store(settings) as store:
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


# --- retract ---------------------------------------------------------------------------------------------------


@cli.command()
@click.argument("story_id")
@_config_option
@_json_option
@click.pass_context
def retract(ctx: click.Context, story_id: str, config_path: Path | None, as_json: bool) -> None:
    """Take STORY_ID down from every channel that has it (a new version with pubstatus canceled).

    A publish that never went out is canceled; channels that never had the story get a skipped retraction with
    the reason. The retractions go out through `syndicate work` (or the server's workers).
    """
    settings = _settings(ctx, config_path)

    async def _retract() -> tuple[Any, list[DeliveryRecord]]:
        async with _store(settings) as store:
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

    result, canceled = _run(_retract())
    if as_json:
        _print_json(
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
    table = _table("retraction per channel", "id", "channel", "action", "state", "note")
    for d in result.deliveries:
        table.add_row(str(d.id), d.channel, d.action.value, _state(d.state), escape(_reason(d)))
    for d in canceled:
        table.add_row(str(d.id), d.channel, f"{d.action.value} v{d.version}", _state(d.state), escape(_reason(d)))
    if result.deliveries or canceled:
        out.print(table)
    queued = sum(d.state is State.QUEUED for d in result.deliveries)
    if result.created and queued:
        out.print(f"{_plural(queued, 'retraction')} queued; {WORK_HINT}")


# --- preview ---------------------------------------------------------------------------------------------------


@cli.command()
@click.argument("file", type=click.Path(exists=True, allow_dash=True, dir_okay=False))
@_config_option
@click.option("--channel", "channel", required=True, metavar="NAME", help="The configured channel to render for.")
@click.option(
    "--action",
    type=click.Choice([a.value for a in Action]),
    default=None,
    help="What to render (default: retract for a withheld or canceled story, else publish).",
)
@_json_option
@click.pass_context
def preview(
    ctx: click.Context, file: str, config_path: Path | None, channel: str, action: str | None, as_json: bool
) -> None:
    """Show exactly what CHANNEL would be sent for the story in FILE: the payload, its length in the channel's own
    counting and what rendering trimmed. Nothing is stored or sent."""
    settings = _settings(ctx, config_path)
    ch = settings.channels.get(channel)
    if ch is None:
        configured = ", ".join(sorted(settings.channels)) or "none"
        raise click.UsageError(f"unknown channel {channel!r} (configured: {configured})")
    adapter = ch.create_adapter()
    results: list[dict[str, Any]] = []
    for doc in _read_files([file]):
        if doc.error is not None:
            results.append({"source": doc.where, "ok": False, "errors": [doc.error]})
            continue
        try:
            story = read_document(doc.obj)
        except StoryValidationError as exc:
            results.append({"source": doc.where, "ok": False, "errors": [str(e) for e in exc.errors]})
            continue
        act = Action(action) if action else (Action.RETRACT if story.is_retraction else Action.PUBLISH)
        base = {
            "source": doc.where,
            "story_id": story.id,
            "version": story.version,
            "channel": channel,
            "kind": ch.kind,
            "enabled": ch.enabled,
            "action": act.value,
            "targeted": story.targets is None or channel in story.targets,
        }
        if act not in adapter.actions:
            results.append({**base, "ok": True, "skipped": adapter.unsupported_reason(act), "payload": None})
            continue
        try:
            payload = adapter.render(story, act)
        except RenderError as exc:
            results.append({"source": doc.where, "ok": False, "errors": [f"cannot render for {channel}: {exc}"]})
            continue
        results.append(
            {
                **base,
                "ok": True,
                "skipped": None,
                "text_length": payload.text_length,
                "warnings": list(payload.warnings),
                "payload": payload.data,
            }
        )

    bad = [r for r in results if not r["ok"]]
    if as_json:
        _print_json({"previews": results})
    else:
        for r in results:
            if r["ok"]:
                _print_preview(r, ch)
            else:
                _print_bad(r["source"], r["errors"])
    if bad:
        sys.exit(1)


def _print_preview(r: dict[str, Any], ch: ChannelSettings) -> None:
    disabled = " (disabled)" if not ch.enabled else ""
    out.print(
        f"[bold]{escape(r['source'])}[/]: {escape(r['story_id'])} v{r['version']} -> {ch.name} "
        f"({ch.kind}{disabled}), {r['action']}",
        soft_wrap=True,
    )
    if not r["targeted"]:
        out.print(f"note: the story's targets do not include {ch.name}: it would not be sent there", soft_wrap=True)
    if r["skipped"]:
        out.print(f"nothing to send: {escape(r['skipped'])} (the delivery would be recorded as skipped)")
        return
    click.echo(json.dumps(r["payload"], ensure_ascii=False, indent=2))
    length = "no text limit" if r["text_length"] is None else f"{r['text_length']} (in {ch.kind}'s own counting)"
    out.print(f"length: {length}", highlight=False)
    if not r["warnings"]:
        out.print("warnings: none (nothing trimmed)")
    for warning in r["warnings"]:
        out.print(f"[yellow]warning[/]: {escape(warning)}", soft_wrap=True)


# --- channels --------------------------------------------------------------------------------------------------


def _retry_summary(delays: Sequence[float]) -> str:
    return f"{_plural(len(delays), 'attempt')}: " + ", ".join(_seconds(d) for d in delays)


async def _check_channel(ch: ChannelSettings) -> dict[str, Any]:
    """Start the adapter, run its live check, close it. Whatever goes wrong becomes a failing result, not a crash.

    The detail is masked: a platform's refusal can quote our credentials back."""
    result = await _run_check(ch)
    return {**result, "detail": redact(result["detail"])}


async def _run_check(ch: ChannelSettings) -> dict[str, Any]:
    adapter = ch.create_adapter()
    limit = ch.timeout * 2 + 5
    try:
        await adapter.start()
        async with asyncio.timeout(limit):
            detail = await adapter.check()
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


@cli.command("channels")
@_config_option
@click.option("--check", is_flag=True, help="Also run each enabled channel's live check (exit 1 if any fails).")
@_json_option
@click.pass_context
def channels_command(ctx: click.Context, config_path: Path | None, check: bool, as_json: bool) -> None:
    """Configured channels: kind, enabled, concurrency, timeout, retry schedule, pause state and queue depth."""
    settings = _settings(ctx, config_path)

    async def _gather() -> tuple[dict[str, ChannelState], dict[tuple[str, State], int], dict[str, dict[str, Any]]]:
        async with _store(settings) as store:
            states, depth = await store.channel_states(), await store.queue_depth()
        checks: dict[str, dict[str, Any]] = {}
        if check:
            enabled = list(settings.enabled_channels.values())
            found = await asyncio.gather(*(_check_channel(ch) for ch in enabled))
            checks = {ch.name: result for ch, result in zip(enabled, found, strict=True)}
        return states, depth, checks

    states, depth, checks = _run(_gather())
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
        _print_json({"channels": views})
    else:
        table = _table("channels", "channel", "kind", "enabled", "conc.", "timeout", "retry", "paused", "queue")
        if check:
            table.add_column("check", overflow="fold")
        for v in views:
            ch = settings.channels.get(v["channel"])
            cells = [
                v["channel"],
                v["kind"] or "[dim](not configured)[/]",
                ("yes" if v["enabled"] else "[dim]no[/]") if ch else "",
                str(v["concurrency"] or ""),
                _seconds(v["timeout"]) if v["timeout"] else "",
                _retry_summary(v["retry"]) if v["retry"] else "",
                escape(_paused(states.get(v["channel"]), now)),
                ", ".join(f"{_state(State(s))} {n}" for s, n in v["queue"].items()),
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


# --- db --------------------------------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """The store: apply migrations, count what it holds."""


@db.command("migrate")
@_config_option
@_json_option
@click.pass_context
def db_migrate(ctx: click.Context, config_path: Path | None, as_json: bool) -> None:
    """Apply pending schema migrations; print the schema version before and after."""
    settings = _settings(ctx, config_path)

    async def _migrate() -> tuple[int, int]:
        store = await _open_store(settings, migrate=False)
        try:
            return await store.schema_version(), await store.migrate()
        finally:
            await store.close()

    before, after = _run(_migrate())
    if as_json:
        _print_json({"before": before, "after": after, "applied": after - before})
    elif after == before:
        out.print(f"schema version {after}: up to date, nothing to apply")
    else:
        out.print(f"schema version {before} -> {after} ({_plural(after - before, 'migration')} applied)")


@db.command("stats")
@_config_option
@_json_option
@click.pass_context
def db_stats(ctx: click.Context, config_path: Path | None, as_json: bool) -> None:
    """What the store holds: stories, versions, deliveries by state, attempts, the oldest pending delivery."""
    settings = _settings(ctx, config_path)

    async def _stats() -> tuple[int, Any]:
        async with _store(settings) as store:
            return await store.schema_version(), await store.counts()

    version, counts = _run(_stats())
    by_state = {s.value: counts.by_state.get(s, 0) for s in State}
    if as_json:
        _print_json(
            {
                "schema_version": version,
                "stories": counts.stories,
                "story_versions": counts.story_versions,
                "deliveries": counts.deliveries,
                "deliveries_by_state": by_state,
                "attempts": counts.attempts,
                "oldest_pending_due": iso(counts.oldest_pending_due),
            }
        )
        return
    table = Table(title="store", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("schema version", str(version))
    table.add_row("stories", str(counts.stories))
    table.add_row("story versions", str(counts.story_versions))
    table.add_row("deliveries", str(counts.deliveries))
    for state in State:
        if counts.by_state.get(state):
            table.add_row(f"  {_state(state)}", str(counts.by_state[state]))
    table.add_row("attempts", str(counts.attempts))
    table.add_row("oldest pending due", _ts(counts.oldest_pending_due) or "-")
    out.print(table)


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
