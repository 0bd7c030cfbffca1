"""Assembling and running the sandbox app: one aiohttp server hosting every platform stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from syndicate.sandbox import jpush, partner, webhook, wechat, weibo, x
from syndicate.sandbox.core import SANDBOX_KEY, Sandbox, setup_control, setup_media

PlatformSetup = Callable[[web.Application, Sandbox], None]

# Every stand-in platform, in route-registration order. A new platform module adds its ``setup`` here.
PLATFORMS: list[PlatformSetup] = [webhook.setup, partner.setup, jpush.setup, wechat.setup, weibo.setup, x.setup]


def create_app(sandbox: Sandbox | None = None) -> web.Application:
    """The sandbox as an aiohttp app (control API, media, every platform in ``PLATFORMS``)."""
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
    for platform_setup in PLATFORMS:
        platform_setup(app, sb)
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
) -> AsyncIterator[RunningSandbox]:
    """Serve the sandbox for the duration of the block (port 0 picks a free port; see ``.url``).

    Pass either an existing ``sandbox`` or ``seed`` / ``hold_seconds`` for a new one. On exit held requests
    are released first, so leaving never waits ``hold_seconds``.
    """
    if sandbox is not None and (seed is not None or hold_seconds != 30.0):
        raise TypeError("pass either sandbox or seed/hold_seconds, not both")
    sb = sandbox if sandbox is not None else Sandbox(seed=seed, hold_seconds=hold_seconds)
    app = create_app(sb)
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
