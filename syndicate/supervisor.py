"""Several delivery worker processes under one supervisor: `syndicate work --processes N`.

The supervisor only starts, watches and stops child processes; every guarantee (exactly once, the per-channel
concurrency limit, leases) lives in the store the children share, as it does for workers on separate hosts. So the
supervisor holds no store connection and no delivery state: a child it restarts is just one more worker.

* Each child is ``syndicate [global options] work [flags]`` with the supervisor's own interpreter and environment,
  in a process group of its own, so a terminal's Ctrl-C reaches the supervisor only and each child is told once.
* SIGTERM or SIGINT to the supervisor: every running child gets SIGTERM once (the workers stop the same way on
  either, and before a child has installed its handler SIGTERM ends it quietly where SIGINT would print a
  traceback); the supervisor waits for them, since they have their own shutdown grace.
* A child that exits while nothing asked it to is logged and restarted after a backoff (``RestartPolicy``); one
  that keeps failing stops the whole group rather than spin.
* A child asks the kernel (Linux ``PR_SET_PDEATHSIG``) for SIGTERM when the supervisor dies, even by SIGKILL, so
  no worker outlives it (``stop_with_supervisor``). Elsewhere the service manager stops the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("syndicate.supervisor")

#: Set in each child's environment to the supervisor's pid: the child arranges to stop when that process dies.
SUPERVISOR_PID_ENV = "SYNDICATE_SUPERVISOR_PID"
#: Set in each child's environment to the number of worker processes: each holds at most its share of a channel's
#: slots (``Engine(processes=...)``), so they all get work.
WORKER_PROCESSES_ENV = "SYNDICATE_WORKER_PROCESSES"
#: The console script's entry point, run by this interpreter (the same code and environment as the supervisor,
#: however it was started); ``-P`` keeps the working directory off the import path, as the console script does.
CHILD_ENTRY = "import sys; from syndicate.cli import main; sys.argv[0] = 'syndicate'; main()"
#: The usage/config error exit code of every `syndicate` command: the same command will fail the same way again.
USAGE_ERROR = 2
PR_SET_PDEATHSIG = 1


def child_command(global_args: Sequence[str], work_args: Sequence[str]) -> list[str]:
    """The argv of one worker child: ``syndicate <global_args> work <work_args>``."""
    return [sys.executable, "-P", "-c", CHILD_ENTRY, *global_args, "work", *work_args]


def describe_exit(returncode: int) -> str:
    """``exit code 3`` or ``signal SIGKILL`` (asyncio reports a death by signal as a negative code)."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


# --- the restart policy: a value and a pure decision, so its arithmetic is tested without processes -------------


@dataclass(frozen=True)
class RestartPolicy:
    #: The first restart waits this long; each quick failure after it doubles the wait, up to ``max_backoff``.
    first_backoff: float = 1.0
    max_backoff: float = 30.0
    #: A child that ran at least this long before it exited starts the backoff again from ``first_backoff``.
    reset_after: float = 60.0
    #: More than ``max_restarts`` restarts of one child within ``window`` seconds: it keeps failing, give up.
    max_restarts: int = 5
    window: float = 60.0


@dataclass(frozen=True)
class ChildHistory:
    """What the policy remembers about one child slot."""

    #: When the slot was restarted (monotonic seconds), the newest last; only those inside the window are kept.
    restarts: tuple[float, ...] = ()
    #: Restarts since the child last ran ``reset_after`` seconds: the backoff's exponent.
    streak: int = 0


@dataclass(frozen=True)
class Restart:
    delay: float


@dataclass(frozen=True)
class GiveUp:
    reason: str


RestartDecision = Restart | GiveUp


def decide_restart(
    policy: RestartPolicy, history: ChildHistory, *, returncode: int, ran_for: float, now: float
) -> tuple[RestartDecision, ChildHistory]:
    """What to do about a child that exited unexpectedly with ``returncode`` after running ``ran_for`` seconds,
    and the slot's history once that is done."""
    if returncode == USAGE_ERROR:
        return GiveUp("a usage or config error (its message is above): restarting cannot fix it"), history
    streak = 0 if ran_for >= policy.reset_after else history.streak
    recent = tuple(t for t in history.restarts if now - t < policy.window)
    if len(recent) + 1 > policy.max_restarts:
        return (
            GiveUp(f"{len(recent)} restarts within {policy.window:g} s and it still exits"),
            ChildHistory(recent, streak),
        )
    delay = min(policy.first_backoff * 2**streak, policy.max_backoff)
    return Restart(delay), ChildHistory((*recent, now + delay), streak + 1)


# --- the supervisor -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildExit:
    index: int
    pid: int
    returncode: int
    #: It exited after the supervisor was asked to stop (what a shutdown's outcome is judged by).
    asked_to_stop: bool = False

    @property
    def clean(self) -> bool:
        # SIGTERM's default action only ends a child that had not yet installed its handler, i.e. one that had
        # not started claiming: nothing of it is in flight, so that is a clean stop too.
        return self.returncode in (0, -signal.SIGTERM)

    def __str__(self) -> str:
        return f"worker {self.index} (pid {self.pid}) exited ({describe_exit(self.returncode)})"


@dataclass(frozen=True)
class Outcome:
    """How the group ended: ``code`` 0 when every child stopped cleanly, else the exit code and why."""

    code: int
    message: str = ""
    exits: tuple[ChildExit, ...] = ()


@dataclass
class _Slot:
    index: int
    history: ChildHistory = field(default_factory=ChildHistory)
    proc: asyncio.subprocess.Process | None = None


class Supervisor:
    """Runs ``processes`` copies of ``command`` until ``stop()``, or, with ``until_idle``, until they have all
    exited; restarts a copy that exits on its own (not with ``until_idle``) as ``policy`` decides."""

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        *,
        until_idle: bool = False,
        policy: RestartPolicy | None = None,
        kill_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, not {processes}")
        self.command = list(command)
        self.until_idle = until_idle
        self.policy = policy or RestartPolicy()
        #: If the supervisor itself fails, children still running this long after SIGTERM are killed.
        self.kill_after = kill_after
        self.clock = clock
        self._slots = [_Slot(i) for i in range(1, processes + 1)]
        self._stopping = asyncio.Event()
        self._gave_up: str | None = None
        self._exits: list[ChildExit] = []

    @property
    def pids(self) -> dict[int, int]:
        """Worker index -> pid of the children running now."""
        return {s.index: s.proc.pid for s in self._slots if s.proc is not None and s.proc.returncode is None}

    @property
    def exits(self) -> tuple[ChildExit, ...]:
        """Every child exit so far, in order."""
        return tuple(self._exits)

    def stop(self) -> None:
        """Ask every running child to stop (SIGTERM, once per call) and start no more; ``run`` returns when they
        have exited. Safe to call from a signal handler installed with ``loop.add_signal_handler``."""
        self._stopping.set()
        for slot in self._slots:
            self._terminate(slot)

    async def run(self) -> Outcome:
        tasks = [asyncio.create_task(self._keep(slot), name=f"syndicate-worker-{slot.index}") for slot in self._slots]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # The supervisor itself failed (it could not start a process, it was cancelled): leave no orphan.
            for task in tasks:
                task.cancel()
            await self._kill_all()
            raise
        return self._outcome()

    def _outcome(self) -> Outcome:
        exits = tuple(self._exits)
        if self._gave_up is not None:
            return Outcome(1, self._gave_up, exits)
        if self._stopping.is_set():
            # A child that died before the stop was logged then; the shutdown is judged by those it stopped.
            failed = [e for e in exits if e.asked_to_stop and not e.clean]
        else:
            failed = [e for e in exits if e.returncode]
        if not failed:
            return Outcome(0, "", exits)
        first = failed[0]
        if self._stopping.is_set():
            return Outcome(1, f"a worker did not stop cleanly: {first}", exits)
        # --until-idle: the first failing child's own code, as one `syndicate work --until-idle` would exit.
        return Outcome(first.returncode if first.returncode > 0 else 1, f"a worker failed: {first}", exits)

    async def _keep(self, slot: _Slot) -> None:
        restart = False
        while not self._stopping.is_set():
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                env={
                    **os.environ,
                    SUPERVISOR_PID_ENV: str(os.getpid()),
                    WORKER_PROCESSES_ENV: str(len(self._slots)),
                },
                process_group=0,
            )
            slot.proc = proc
            if self._stopping.is_set():  # stop() came while the process was being started
                self._terminate(slot)
            if restart:
                log.warning("restarted worker %d (pid %d)", slot.index, proc.pid)
            else:
                log.info("started worker %d (pid %d)", slot.index, proc.pid)
            started = self.clock()
            returncode = await proc.wait()
            gone = ChildExit(slot.index, proc.pid, returncode, self._stopping.is_set())
            self._exits.append(gone)
            if self._stopping.is_set() or self.until_idle:
                if not gone.clean:
                    log.warning("%s", gone)
                return
            decision, slot.history = decide_restart(
                self.policy, slot.history, returncode=returncode, ran_for=self.clock() - started, now=self.clock()
            )
            if isinstance(decision, GiveUp):
                # Reported once, by whoever runs the supervisor (the CLI's error line), not logged here too.
                self._gave_up = f"{gone}: it keeps failing ({decision.reason}); stopped the other workers"
                self.stop()
                return
            log.warning("%s unexpectedly; restarting it in %g s", gone, decision.delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), decision.delay)
            restart = True

    def _terminate(self, slot: _Slot) -> None:
        if slot.proc is not None and slot.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(signal.SIGTERM)

    async def _kill_all(self) -> None:
        self._stopping.set()
        running = [s.proc for s in self._slots if s.proc is not None and s.proc.returncode is None]
        for slot in self._slots:
            self._terminate(slot)
        for proc in running:
            try:
                await asyncio.wait_for(proc.wait(), self.kill_after)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


# --- in the child ---------------------------------------------------------------------------------------------


def supervised_processes() -> int:
    """In a worker a supervisor started, how many worker processes it runs (1 otherwise)."""
    raw = os.environ.pop(WORKER_PROCESSES_ENV, "1")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


def stop_with_supervisor() -> str | None:
    """In a worker a supervisor started: have the kernel send this process SIGTERM (a graceful stop) when the
    supervisor dies, however it dies. Returns a problem to report when the supervisor is already gone, else None.

    Linux only (``prctl``); elsewhere the service manager stops the group. The death signal follows the thread
    that forked us: the supervisor forks from its event loop's thread, which lives as long as it does.
    """
    expected = os.environ.pop(SUPERVISOR_PID_ENV, None)
    if expected is None or not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        log.warning("cannot ask to stop with the supervisor: %s", os.strerror(ctypes.get_errno()))
        return None
    # The supervisor may have died between our fork and the prctl: then the death signal will never come.
    if str(os.getppid()) != expected:
        return f"the supervising process {expected} exited before this worker started"
    return None


__all__ = [
    "SUPERVISOR_PID_ENV",
    "WORKER_PROCESSES_ENV",
    "ChildExit",
    "ChildHistory",
    "GiveUp",
    "Outcome",
    "Restart",
    "RestartDecision",
    "RestartPolicy",
    "Supervisor",
    "child_command",
    "decide_restart",
    "describe_exit",
    "stop_with_supervisor",
    "supervised_processes",
]
