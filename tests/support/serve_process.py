"""Run the real `syndicate serve` as a child process for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import SYNDICATE, cli_env

API_TOKEN = "tests-api-token-0123456789"


@dataclass
class ServeProcess:
    url: str
    proc: asyncio.subprocess.Process
    session: aiohttp.ClientSession
    log: list[str] = field(default_factory=list)
    exit_code: int | None = None

    async def api(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with self.session.request(method, self.url + path, headers=headers, **kw) as resp:
            return resp.status, await resp.json()

    def json_logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log if line.startswith("{")]


@contextlib.asynccontextmanager
async def running_serve(
    config: Path, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[ServeProcess]:
    """Start `syndicate serve --port 0`, wait for its URL, yield; on exit SIGTERM it and expect exit code 0."""
    proc = await asyncio.create_subprocess_exec(
        str(SYNDICATE),
        "-v",
        "--log-format",
        "json",
        "--config",
        str(config),
        "serve",
        "--port",
        "0",
        *args,
        cwd=cwd,
        env=cli_env(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    url: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def pump() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            match = re.search(r"syndicate serving on (http://\S+)", line)
            if match and not url.done():
                url.set_result(match.group(1))
        if not url.done():
            url.set_exception(RuntimeError("serve exited before listening:\n" + "\n".join(lines)))

    reader = asyncio.create_task(pump())
    try:
        base = await asyncio.wait_for(url, timeout=20)
        async with aiohttp.ClientSession() as session:
            running = ServeProcess(base, proc, session, lines)
            yield running
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        running.exit_code = await asyncio.wait_for(proc.wait(), timeout=30)
        await reader
        assert running.exit_code == 0, "\n".join(lines[-20:])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reader.cancel()
