"""What the long-running commands do to their own process once started (in a child interpreter: it is global)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import click
import pytest

from syndicate.cli.common import EVENT_LOOP_ENV, SERVICE_GC_THRESHOLD, run_async


def test_settle_heap_freezes_the_started_heap_and_collects_the_young_less_often() -> None:
    script = (
        "import gc\n"
        "from syndicate.cli.common import settle_heap\n"
        "assert gc.get_freeze_count() == 0 and gc.get_threshold()[0] == 700\n"
        "settle_heap()\n"
        "print(gc.get_freeze_count(), gc.get_threshold()[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    frozen, threshold = (int(v) for v in done.stdout.split())
    assert frozen > 10_000  # the modules and models loaded so far
    assert threshold == SERVICE_GC_THRESHOLD


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_commands_run_on_uvloop_unless_asked_for_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    assert run_async(_loop_module()).startswith("uvloop")
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    assert run_async(_loop_module()).startswith("asyncio")
    monkeypatch.setenv(EVENT_LOOP_ENV, " UVLOOP ")
    assert run_async(_loop_module()).startswith("uvloop")


def test_an_unknown_event_loop_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "trio")
    coro = _loop_module()
    with pytest.raises(click.UsageError, match=r"SYNDICATE_EVENT_LOOP='trio'.*uvloop or asyncio"):
        run_async(coro)
    assert coro.cr_frame is None  # closed, not left to warn that it was never awaited
