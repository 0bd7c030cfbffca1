"""Assembling and running the sandbox app: one aiohttp server hosting every platform stand-in.

Stand-ins live with their channel (``adapters/<kind>/standin.py``) and register through the ``syndicate.sandboxes``
entry point group as ``<kind> = "adapters.<kind>.standin:STANDIN"`` (a ``Standin``); this module serves whatever it
finds and names none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from aiohttp import web

from syndicate.sandbox.core import SANDBOX_KEY, Sandbox, setup_control, setup_media

#: Adds one platform's routes (wrapped with ``Sandbox.handler``) to the sandbox app.
StandinSetup = Callable[[web.Application, Sandbox], None]

ENTRY_POINT_GROUP = "syndicate.sandboxes"


def at_root(base: str, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The usual pointing: the platform's paths live at the sandbox root, so ``api_base`` is the sandbox."""
    return {**options, "api_base": base}


def accepts_anything(sandbox: Sandbox, name: str, options: Mapping[str, Any]) -> None:
    """For receivers that check no credentials."""


def no_limits(sandbox: Sandbox) -> None:
    """For stand-ins that simulate no posting quota."""


@dataclass(frozen=True)
class Standin:
    """One platform's stand-in as its channel kind registers it, with what tests, the demo and the benchmarks need
    to use it without knowing the platform: every stand-in answers these the same way."""

    #: The name its requests are recorded, faulted and counted under (``Sandbox.received``, ``set_faults``, ``stats``).
    platform: str
    setup: StandinSetup
    #: ``(sandbox base URL, channel name, channel options) -> the options with every endpoint on this stand-in``.
    point: Callable[[str, str, Mapping[str, Any]], dict[str, Any]] = at_root
    #: ``(sandbox, channel name, resolved channel options)``: make the stand-in accept that channel's credentials.
    accept: Callable[[Sandbox, str, Mapping[str, Any]], None] = accepts_anything
    #: One entry per post the platform made, identified by what makes two posts the same one (the idempotency key
    #: where the platform takes one, else the content): an entry seen twice is a post made twice.
    posts_made: Callable[[Sandbox], list[str]] | None = None
    #: Lift the posting quotas the stand-in simulates (hourly caps and the like), for soaks and benchmarks.
    lift_limits: Callable[[Sandbox], None] = no_limits


def standins() -> dict[str, Standin]:
    """Every installed stand-in by the channel kind it stands in for, in name order (the route order)."""
    found: dict[str, Standin] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        standin = ep.load()
        if not isinstance(standin, Standin):
            raise ValueError(f"sandbox entry point {ep.name!r} loads {standin!r}, which is not a Standin")
        found[ep.name] = standin
    return found


def create_app(sandbox: Sandbox | None = None, *, platforms: Mapping[str, Standin] | None = None) -> web.Application:
    """The sandbox as an aiohttp app: control API, media, and every stand-in in ``platforms`` (default: every
    installed one, see ``standins``)."""
    sb = sandbox if sandbox is not None else Sandbox()
    app = web.Application()
    app[SANDBOX_KEY] = sb

    async def on_startup(app: web.Application) -> None:
        sb.open()

    async def on_shutdown(app: web.Application) -> None:
        await sb.close()  # release held requests, or graceful shutdown would wait for them

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    setup_control(app, sb)
    setup_media(app, sb)
    for standin in (standins() if platforms is None else platforms).values():
        standin.setup(app, sb)
    return app


@dataclass(frozen=True)
class RunningSandbox:
    """A started sandbox: its base ``url`` (real port, even when asked for port 0) and its ``Sandbox``."""

    url: str
    sandbox: Sandbox
    app: web.Application

    def url_for(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}"


def _base_url(addresses: list[tuple[str, int] | tuple[str, int, int, int]], host: str) -> str:
    """``http://host:port`` from what the socket actually bound; wildcard binds are reported as loopback."""
    ipv4 = [a for a in addresses if ":" not in a[0]]
    addr = (ipv4 or addresses)[0]
    bound, port = addr[0], addr[1]
    if bound in ("0.0.0.0", ""):
        bound = "127.0.0.1"
    elif bound == "::":
        bound = "::1"
    if ":" in bound:
        bound = f"[{bound}]"
    return f"http://{bound}:{port}"


@contextlib.asynccontextmanager
async def running_sandbox(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    sandbox: Sandbox | None = None,
    seed: int | None = None,
    hold_seconds: float = 30.0,
    shutdown_timeout: float = 5.0,
    platforms: Mapping[str, Standin] | None = None,
) -> AsyncIterator[RunningSandbox]:
    """Serve the sandbox for the duration of the block (port 0 picks a free port; see ``.url``).

    Pass either an existing ``sandbox`` or ``seed`` / ``hold_seconds`` for a new one. On exit held requests
    are released first, so leaving never waits ``hold_seconds``.
    """
    if sandbox is not None and (seed is not None or hold_seconds != 30.0):
        raise TypeError("pass either sandbox or seed/hold_seconds, not both")
    sb = sandbox if sandbox is not None else Sandbox(seed=seed, hold_seconds=hold_seconds)
    app = create_app(sb, platforms=platforms)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield RunningSandbox(url=_base_url(runner.addresses, host), sandbox=sb, app=app)
    finally:
        await sb.close()
        await runner.cleanup()


async def _serve_until_stopped(host: str, port: int, seed: int | None, hold_seconds: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with running_sandbox(host, port, seed=seed, hold_seconds=hold_seconds) as running:
        print(f"sandbox listening on {running.url} (Ctrl-C to stop)", flush=True)
        await stop.wait()


def run(host: str = "127.0.0.1", port: int = 8765, *, seed: int | None = None, hold_seconds: float = 30.0) -> None:
    """Run the sandbox in the foreground until Ctrl-C / SIGTERM (what ``syndicate sandbox`` calls)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_stopped(host, port, seed, hold_seconds))
