"""`syndicate work --processes N`: one supervisor, N worker processes on one PostgreSQL store. Nothing lost, nothing
twice, the per-channel limit held across the children, a dead child restarted, a child that keeps failing stopping
the group, and no child left behind however the supervisor ends."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from syndicate.config import load_config
from syndicate.engine import Engine
from syndicate.sandbox import RunningSandbox
from syndicate.store import open_store
from syndicate.store.base import DeliveryFilter, State, Store
from syndicate.supervisor import (
    ChildHistory,
    GiveUp,
    Restart,
    RestartPolicy,
    Supervisor,
    child_command,
    decide_restart,
)
from tests.support import (
    child_pids,
    closed_port,
    make_story,
    pg_schema_url,
    process_gone,
    run_cli,
    start_worker,
    write_config,
)

#: Two channels each: 2,000 deliveries.
STORIES = 1000
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads child pids from /proc (Linux)")


def config_for(tmp_path: Path, sandbox: RunningSandbox, store_url: str | None = None) -> Path:
    return write_config(
        tmp_path,
        sandbox.url,
        channels={"alpha": {"concurrency": 2}, "beta": {"concurrency": 8}},
        retry=[0, 0.1, 0.2, 0.5, 1, 1, 1, 1],
        timeout=5,
        secret="processes-secret",
        store_url=store_url,
        engine={"lease_seconds": 2, "poll_interval": 0.5, "retry_jitter": 0, "shutdown_grace": 5},
        name="processes.toml",
    )


async def queue_stories(config: Path, url: str, sandbox: RunningSandbox) -> Store:
    """The store at ``url`` with STORIES stories fanned out to alpha and beta (in this process, not timed)."""
    settings = load_config(config, env={"SYNDICATE_DATABASE_URL": url})
    store = open_store(url)
    await store.migrate()
    # Slow answers on the limited channel make the processes contend for its two slots.
    sandbox.sandbox.set_faults("webhook", [{"fault": "slow:3", "probability": 1.0, "name": "alpha"}])
    async with Engine(settings, store) as engine:
        for i in range(STORIES):
            await engine.accept(make_story(id=f"p{i:04d}", headline=f"第{i}条"))
    return store


def tail(logs: Path | None) -> str:
    return logs.read_text()[-3000:] if logs is not None and logs.exists() else ""


async def wait_for(what: str, check: Callable[[], object], deadline: float, logs: Path | None = None) -> None:
    while not check():
        assert time.monotonic() < deadline, f"{what}: {tail(logs)}"
        await asyncio.sleep(0.02)


async def delivered(store: Store) -> int:
    return (await store.counts()).by_state.get(State.DELIVERED, 0)


async def wait_delivered(store: Store, n: int, deadline: float, logs: Path) -> None:
    while await delivered(store) < n:
        assert time.monotonic() < deadline, (await store.counts(), tail(logs))
        await asyncio.sleep(0.1)


async def attempt_workers(store: Store) -> set[str]:
    """The worker ids of every delivery's attempts (``host:pid:random``, one per process)."""
    workers: set[str] = set()
    for d in await store.list_deliveries(DeliveryFilter()):
        workers.update(a.worker for a in await store.attempts(d.id))
    return workers


async def assert_exactly_once(store: Store, sandbox: RunningSandbox) -> None:
    counts = await store.counts()
    assert counts.by_state == {State.DELIVERED: 2 * STORIES}
    assert await store.count_in_flight() == 0
    received = collections.Counter(r.idempotency_key for r in sandbox.sandbox.received("webhook"))
    assert len(received) == 2 * STORIES
    assert {k: n for k, n in received.items() if n != 1} == {}
    stats = sandbox.sandbox.stats("webhook")
    # The limit is the channel's, across every child process: never a third alpha request in flight.
    assert stats["alpha"].peak_concurrency == 2
    assert stats["beta"].peak_concurrency <= 8


@linux_only
async def test_three_processes_until_idle_drain_exactly_once(
    tmp_path: Path, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pg_schema_url() as url:
        # The config names SQLite: only the inherited environment points the supervisor and its children at
        # PostgreSQL (a child that did not inherit it would drain an empty SQLite file and the counts would fail).
        config = config_for(tmp_path, sandbox)
        monkeypatch.setenv("SYNDICATE_DATABASE_URL", url)
        store = await queue_stories(config, url, sandbox)
        logs = tmp_path / "supervisor.log"
        supervisor = await start_worker(config, logs, "--processes", "3", "--until-idle")
        try:
            code = await asyncio.wait_for(supervisor.wait(), timeout=120)
        finally:
            if supervisor.returncode is None:
                supervisor.kill()
                await supervisor.wait()
        assert code == 0, tail(logs)
        await assert_exactly_once(store, sandbox)
        workers = await attempt_workers(store)
        await store.close()
    # Three processes did the work, each under its own worker id (pid inside it), none of them the supervisor.
    pids = {w.split(":")[1] for w in workers}
    assert len(workers) == 3 and len(pids) == 3, workers
    assert str(supervisor.pid) not in pids


@linux_only
async def test_a_killed_child_is_restarted_and_sigterm_stops_every_child(
    tmp_path: Path, sandbox: RunningSandbox
) -> None:
    async with pg_schema_url() as url:
        config = config_for(tmp_path, sandbox, url)
        store = await queue_stories(config, url, sandbox)
        logs = tmp_path / "supervisor.log"
        supervisor = await start_worker(config, logs, "--processes", "3")
        deadline = time.monotonic() + 120
        seen: set[int] = set()
        try:
            await wait_for("three children", lambda: len(child_pids(supervisor.pid)) == 3, deadline, logs)
            await wait_delivered(store, STORIES // 2, deadline, logs)
            first = child_pids(supervisor.pid)
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            # The supervisor reaps it and starts another after its 1 s backoff: three children again, one new.
            await wait_for(
                "a replacement child",
                lambda: len(now := child_pids(supervisor.pid)) == 3 and victim not in now,
                deadline,
                logs,
            )
            replacement = child_pids(supervisor.pid) - first
            assert len(replacement) == 1
            seen = first | replacement
            await wait_delivered(store, 2 * STORIES, deadline, logs)
            supervisor.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(supervisor.wait(), timeout=30)
        finally:
            if supervisor.returncode is None:
                supervisor.kill()
                await supervisor.wait()
        assert code == 0, tail(logs)
        assert [pid for pid in seen if not process_gone(pid)] == []
        text = logs.read_text()
        assert f"(pid {victim}) exited (signal SIGKILL) unexpectedly; restarting it in 1 s" in text
        (new,) = replacement
        assert "restarted worker" in text and f"(pid {new})" in text
        await assert_exactly_once(store, sandbox)
        await store.close()


@linux_only
async def test_children_stop_when_the_supervisor_is_killed(tmp_path: Path, sandbox: RunningSandbox) -> None:
    async with pg_schema_url() as url:
        config = config_for(tmp_path, sandbox, url)
        logs = tmp_path / "supervisor.log"
        supervisor = await start_worker(config, logs, "--processes", "2")
        deadline = time.monotonic() + 60
        try:
            await wait_for("two children", lambda: len(child_pids(supervisor.pid)) == 2, deadline, logs)
            children = child_pids(supervisor.pid)
            # Past their start-up, so what stops them is the death signal they asked for (right after loading the
            # config); a child still starting would stop anyway, on its own check that its parent is gone.
            await asyncio.sleep(2)
        finally:
            supervisor.kill()
            await supervisor.wait()
        # PR_SET_PDEATHSIG: the kernel sends each child SIGTERM, and they stop on their own.
        await wait_for("children to stop", lambda: all(process_gone(p) for p in children), deadline, logs)


async def test_sqlite_refuses_more_than_one_process(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    run = await run_cli("work", "--processes", "2", "--config", config, cwd=tmp_path)
    assert run.code == 2, run
    assert "[store] url: --processes 2 needs PostgreSQL" in run.err
    assert "one writer at a time" in run.err


async def test_an_unreachable_store_is_reported_once_before_any_child_starts(tmp_path: Path) -> None:
    config = write_config(tmp_path, store_url=f"postgresql://postgres@127.0.0.1:{closed_port()}/test")
    started = time.monotonic()
    run = await run_cli("work", "--processes", "2", "--config", config, cwd=tmp_path)
    assert run.code == 1, run
    assert "cannot be reached" in run.err and "[store] url" in run.err
    assert len(run.err_lines) == 1, run.err  # the supervisor's one check, not one error per child
    assert time.monotonic() - started < 20


async def test_a_child_that_keeps_failing_stops_the_group(tmp_path: Path) -> None:
    # Real `syndicate work` children on a store that refuses connections: each exits 1 after its start-up. The CLI
    # checks the store before it starts children, so the supervisor is driven directly, with a shorter policy.
    config = write_config(tmp_path, store_url=f"postgresql://postgres@127.0.0.1:{closed_port()}/test")
    policy = RestartPolicy(first_backoff=0.05, max_backoff=0.2, max_restarts=2, window=60)
    supervisor = Supervisor(child_command(["--log-format", "json"], ["--config", str(config)]), 2, policy=policy)
    started = time.monotonic()
    outcome = await asyncio.wait_for(supervisor.run(), timeout=60)
    assert outcome.code == 1
    assert "it keeps failing (2 restarts within 60 s and it still exits); stopped the other workers" in outcome.message
    assert "exited (exit code 1)" in outcome.message
    by_worker = collections.Counter(e.index for e in outcome.exits)
    assert max(by_worker.values()) == 3  # the first run and its 2 restarts, then no more
    assert all(e.returncode in (1, -signal.SIGTERM) for e in outcome.exits)
    assert supervisor.pids == {}
    assert time.monotonic() - started < 60


async def test_until_idle_reports_the_first_failing_child_and_does_not_restart(tmp_path: Path) -> None:
    marker = tmp_path / "first"
    # The first child to start exits 3 at once; the other exits 0 a moment later.
    script = (
        "import os, sys, time\n"
        f"try:\n    os.close(os.open({str(marker)!r}, os.O_CREAT | os.O_EXCL))\nexcept FileExistsError:\n"
        "    time.sleep(0.5)\n    sys.exit(0)\nsys.exit(3)\n"
    )
    supervisor = Supervisor([sys.executable, "-c", script], 2, until_idle=True)
    outcome = await asyncio.wait_for(supervisor.run(), timeout=30)
    assert outcome.code == 3
    assert outcome.message.startswith("a worker failed: worker ") and "exited (exit code 3)" in outcome.message
    assert sorted(e.returncode for e in outcome.exits) == [0, 3]  # no restart


async def test_sigterm_during_backoff_ends_the_group_at_once() -> None:
    supervisor = Supervisor([sys.executable, "-c", "import sys; sys.exit(1)"], 1)
    run = asyncio.create_task(supervisor.run())
    # The first exit: now it waits its 1 s before the restart.
    await wait_for("the first exit", lambda: supervisor.exits, time.monotonic() + 10)
    started = time.monotonic()
    supervisor.stop()
    outcome = await asyncio.wait_for(run, timeout=5)
    assert time.monotonic() - started < 0.5
    # The exit before the stop was logged when it happened; nothing the stop stopped failed, nothing restarted.
    assert outcome.code == 0 and len(outcome.exits) == 1


async def test_a_child_that_fails_its_stop_fails_the_shutdown() -> None:
    script = "import signal, time; signal.signal(signal.SIGTERM, lambda *_: exit(4)); time.sleep(30)"
    supervisor = Supervisor([sys.executable, "-c", script], 2)
    run = asyncio.create_task(supervisor.run())
    await wait_for("two children", lambda: len(supervisor.pids) == 2, time.monotonic() + 10)
    await asyncio.sleep(0.3)  # past their start-up: the handler is installed
    supervisor.stop()
    outcome = await asyncio.wait_for(run, timeout=10)
    assert outcome.code == 1
    assert outcome.message.startswith("a worker did not stop cleanly: worker ")
    assert outcome.message.endswith("exited (exit code 4)")


# --- the restart policy, as a value --------------------------------------------------------------------------


def test_backoff_doubles_from_one_second_to_thirty() -> None:
    policy = RestartPolicy(max_restarts=100)
    history = ChildHistory()
    delays = []
    now = 0.0
    for _ in range(7):
        decision, history = decide_restart(policy, history, returncode=1, ran_for=10, now=now)
        assert isinstance(decision, Restart)
        delays.append(decision.delay)
        now += 100  # outside the window: only the backoff is under test
    assert delays == [1, 2, 4, 8, 16, 30, 30]


def test_a_child_that_ran_a_minute_starts_the_backoff_again() -> None:
    policy = RestartPolicy()
    history = ChildHistory(restarts=(0.0,), streak=4)
    decision, history = decide_restart(policy, history, returncode=1, ran_for=60, now=100)
    assert decision == Restart(1.0)
    assert history.streak == 1


def test_more_than_five_restarts_in_a_minute_gives_up() -> None:
    policy = RestartPolicy()
    history = ChildHistory()
    now = 0.0
    for _ in range(5):
        decision, history = decide_restart(policy, history, returncode=1, ran_for=1, now=now)
        assert isinstance(decision, Restart)
        now += decision.delay / 2  # it dies halfway through the next backoff's length: quick failures
    decision, _ = decide_restart(policy, history, returncode=1, ran_for=1, now=now)
    assert decision == GiveUp("5 restarts within 60 s and it still exits")
    # The same count spread over more than a minute is not a crash loop.
    old = ChildHistory(restarts=(0.0, 1.0, 3.0, 7.0, 15.0), streak=5)
    decision, history = decide_restart(policy, old, returncode=1, ran_for=1, now=62)
    assert decision == Restart(30.0)
    assert history.restarts == (3.0, 7.0, 15.0, 92.0)


def test_a_usage_error_is_never_restarted() -> None:
    decision, _ = decide_restart(RestartPolicy(), ChildHistory(), returncode=2, ran_for=1, now=0)
    assert isinstance(decision, GiveUp) and "usage or config error" in decision.reason
