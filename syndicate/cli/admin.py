"""Running syndicate and its store: `serve` (the HTTP service with embedded workers), `work` (delivery workers
alone), `db migrate` and `db stats`, `sessions revoke-all` (the dashboard's logins) and `sandbox` (the local
stand-ins for the remote platforms)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from syndicate.cli.common import (
    RuntimeFailure,
    config_option,
    connect_store,
    connected_store,
    json_option,
    load_settings,
    local_time,
    out,
    plural,
    print_json,
    run_async,
    settle_heap,
    styled_state,
)
from syndicate.config import ConfigError, Settings
from syndicate.engine import Engine
from syndicate.operations import iso
from syndicate.store.base import State
from syndicate.supervisor import Outcome, Supervisor, child_command, stop_with_supervisor, supervised_processes

# --- serve -----------------------------------------------------------------------------------------------------


@click.command()
@config_option
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

    settings = load_settings(ctx, config_path)
    for key in ("hook_secret", "api_token"):
        if not getattr(settings.server, key):
            raise click.UsageError(f"{settings.source}: [server] {key}: missing (required by serve; use ${{ENV_VAR}})")

    async def _serve() -> None:
        settle_heap()
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
        run_async(_serve())
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        raise RuntimeFailure(f"cannot listen: {exc}") from None


# --- work ------------------------------------------------------------------------------------------------------


@click.command()
@config_option
@click.option("--until-idle", is_flag=True, help="Exit 0 once nothing is due or in flight.")
@click.option(
    "--wait-for-retries",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="With --until-idle: also wait for retries due within SECONDS.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="Run N worker processes under one supervisor (PostgreSQL only): it restarts one that dies and stops "
    "them all on SIGTERM.",
)
@click.pass_context
def work(
    ctx: click.Context, config_path: Path | None, until_idle: bool, wait_for_retries: float, processes: int
) -> None:
    """Run delivery workers on the configured store.

    SIGTERM or Ctrl-C stops claiming, lets in-flight deliveries finish (or releases them) and exits 0.
    With --processes N (PostgreSQL), a supervisor runs N such worker processes, passes SIGTERM or Ctrl-C on to
    each, restarts one that dies (and gives up, exit 1, on one that keeps dying) and exits 0 once all stopped.
    """
    settings = load_settings(ctx, config_path)
    if not settings.enabled_channels:
        raise click.UsageError(f"{settings.source}: no enabled [channels.*] to deliver to")
    if processes > 1:
        supervise(ctx, settings, config_path, processes, until_idle, wait_for_retries)
        return
    problem = stop_with_supervisor()
    siblings = supervised_processes()  # 1 unless a supervisor started this worker among others
    if problem is not None:
        raise RuntimeFailure(problem)

    async def _work() -> None:
        store = await connect_store(settings)
        settle_heap()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with Engine(settings, store, processes=siblings) as engine:
                await engine.run(stop=stop, until_idle=until_idle, idle_horizon=wait_for_retries)
        finally:
            await store.close()

    run_async(_work())


def supervise(
    ctx: click.Context,
    settings: Settings,
    config_path: Path | None,
    processes: int,
    until_idle: bool,
    wait_for_retries: float,
) -> None:
    """`work --processes N`: N children running `syndicate work` with this command's options, under a
    supervisor (syndicate.supervisor)."""
    if settings.store.url.startswith("sqlite:"):
        # Correct but pointless: BEGIN IMMEDIATE serialises every claim and outcome write of every process on the
        # database's one write lock (each with an fsync), and SQLite has no cross-process wake-up.
        raise click.UsageError(
            f"{settings.source}: [store] url: --processes {processes} needs PostgreSQL; "
            f"{settings.store.url} is SQLite, which has one writer at a time: every claim and outcome of every "
            "process waits for the database's single write lock, so more processes add contention, not "
            "throughput. Run one `syndicate work`, or point [store] url (or SYNDICATE_DATABASE_URL) at "
            "postgresql://…"
        )

    async def _check() -> None:
        # The store is reached (and migrated) once here, so a wrong URL or a dead server is reported once, as
        # with one process, instead of by every child in a restart loop.
        store = await connect_store(settings)
        await store.close()

    run_async(_check())
    root = ctx.find_root().params
    global_args = ["--log-format", root["log_format"], *(["-v"] * root["verbose"])]
    path = config_path or root.get("config_path")
    work_args = [*(["--config", str(path)] if path is not None else []), "--wait-for-retries", repr(wait_for_retries)]
    if until_idle:
        work_args.append("--until-idle")
    supervisor = Supervisor(
        child_command(global_args, work_args),
        processes,
        until_idle=until_idle,
        # A failing supervisor waits this long for the children's own graceful stop before killing them.
        kill_after=settings.engine.shutdown_grace + 10,
    )

    async def _supervise() -> Outcome:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, supervisor.stop)
        return await supervisor.run()

    # asyncio's own loop: the supervisor delivers nothing, and starts each child in a process group of its own
    # (create_subprocess_exec's process_group, which uvloop does not take); the children run on the service loop.
    outcome = run_async(_supervise(), stdlib_loop=True)
    if outcome.code != 0:
        raise WorkersFailed(outcome.message, outcome.code)


class WorkersFailed(RuntimeFailure):
    """The supervised workers ended badly: exit 1, or with --until-idle the first failing child's own code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # click reads it per instance


# --- db --------------------------------------------------------------------------------------------------------


@click.group()
def db() -> None:
    """The store: apply migrations, count what it holds."""


@db.command("migrate")
@config_option
@json_option
@click.pass_context
def db_migrate(ctx: click.Context, config_path: Path | None, as_json: bool) -> None:
    """Apply pending schema migrations; print the schema version before and after."""
    settings = load_settings(ctx, config_path)

    async def _migrate() -> tuple[int, int]:
        store = await connect_store(settings, migrate=False)
        try:
            return await store.schema_version(), await store.migrate()
        finally:
            await store.close()

    before, after = run_async(_migrate())
    if as_json:
        print_json({"before": before, "after": after, "applied": after - before})
    elif after == before:
        out.print(f"schema version {after}: up to date, nothing to apply")
    else:
        out.print(f"schema version {before} -> {after} ({plural(after - before, 'migration')} applied)")


@db.command("stats")
@config_option
@json_option
@click.pass_context
def db_stats(ctx: click.Context, config_path: Path | None, as_json: bool) -> None:
    """What the store holds: stories, versions, deliveries by state, attempts, the oldest pending delivery."""
    settings = load_settings(ctx, config_path)

    async def _stats() -> tuple[int, Any]:
        async with connected_store(settings) as store:
            return await store.schema_version(), await store.counts()

    version, counts = run_async(_stats())
    by_state = {s.value: counts.by_state.get(s, 0) for s in State}
    if as_json:
        print_json(
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
            table.add_row(f"  {styled_state(state)}", str(counts.by_state[state]))
    table.add_row("attempts", str(counts.attempts))
    table.add_row("oldest pending due", local_time(counts.oldest_pending_due) or "-")
    out.print(table)


# --- sessions ------------------------------------------------------------------------------------------------


@click.group()
def sessions() -> None:
    """The dashboard's login sessions."""


@sessions.command("revoke-all")
@config_option
@json_option
@click.pass_context
def sessions_revoke_all(ctx: click.Context, config_path: Path | None, as_json: bool) -> None:
    """End every dashboard session on every process sharing the store (a lost laptop, a person leaving the desk):
    everyone logs in again with the API token. Changing [server] api_token does the same."""
    from syndicate.dashboard.auth import revoke_all

    settings = load_settings(ctx, config_path)

    async def _revoke() -> None:
        async with connected_store(settings) as store:
            await revoke_all(store, now=time.time())

    run_async(_revoke())
    if as_json:
        print_json({"revoked": "all"})
    else:
        out.print("every dashboard session is revoked: log in again with the API token")


# --- sandbox ---------------------------------------------------------------------------------------------------


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
def sandbox(host: str, port: int) -> None:
    """Run the local stand-ins for every remote platform (tests, demo, benchmarks)."""
    from syndicate.sandbox import run

    run(host, port)
