"""SQLite backend: the embedded default (one host, no server). A connector under syndicate.store.sqlstore.

Every store operation runs whole, without suspending, so transactions never interleave. A brief one (a claim, an
outcome, a fan-out: the hot path) runs on the event loop's own thread, on a connection that never waits for a
lock; one that scans (a listing, a report, a migration), or finds the write lock held by another connection, runs
on a second connection in a dedicated thread, which waits for the lock with the busy timeout. WAL lets other
processes (the CLI, a second worker) read while we write; ``BEGIN IMMEDIATE`` serialises writers across
connections and processes. ``synchronous=FULL``: an accepted story survives a power cut, not only a crash.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

from syndicate.store.base import Completion, Row, StoreError, StoreUnavailable, dumps_json
from syndicate.store.queries import ParamStyle, load_migrations, load_queries
from syndicate.store.sqlstore import Conn, LeaseRequest, Lock, Op, Q, SQLStore, attempt_params, outcome_params

T = TypeVar("T")

log = logging.getLogger(__name__)

#: This dialect's own queries: the claim's attempt rows, which PostgreSQL's claim statement writes itself, and the
#: outcome's two writes, which it makes in one statement.
OWN_QUERIES = ("insert_attempts", "record_outcome", "record_converted_outcome", "finish_attempt")
QUERIES = load_queries("sqlite", ParamStyle.NAMED).require([*Q, *OWN_QUERIES])
MIGRATIONS = load_migrations("sqlite")

#: Claims use UPDATE ... RETURNING (3.35); migration 4 drops a column, which 3.35.0 to 3.35.4 could do wrongly
#: (fixed in 3.35.5). Without them every claim, or the upgrade, would fail while stories are still accepted.
MIN_SQLITE = (3, 35, 5)


# sqlite3 binds an exact int, float or str as it is, but "adapts" anything else, None and bool included: a lookup
# in its registry, then two attribute lookups that fail (the protocol's __adapt__, the value's __conform__), about
# 1,800 instructions each, and an outcome write binds eight such values per delivery. Registered, each is found at
# the first lookup and binds exactly as before: None as NULL ({}.get(None) is None, a C call without a Python
# frame), a bool as its int. Measured with callgrind: 14.8K fewer instructions per outcome written.
sqlite3.register_adapter(type(None), cast("Callable[[None], None]", {}.get))
sqlite3.register_adapter(bool, int)

_LIST_PARAM = re.compile(r"json_each\(:(?P<name>[A-Za-z_][A-Za-z0-9_]*)\)")


@functools.lru_cache(maxsize=512)
def _list_params(sql: str) -> tuple[str, ...]:
    """The parameters a statement reads as lists: those it opens with ``json_each(:name)``."""
    return tuple(dict.fromkeys(m.group("name") for m in _LIST_PARAM.finditer(sql)))


def _bind(sql: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
    """A list parameter travels as one JSON array, read in SQL with json_each; the rest bind as they are (so a
    row of a batch with no list parameter is bound without being copied)."""
    lists = _list_params(sql)
    if not lists:
        return params
    return {
        **params,
        **{name: dumps_json(params[name]) for name in lists if isinstance(params.get(name), list | tuple)},
    }


def run_to_completion(coro: Coroutine[Any, Any, T]) -> T:
    """Run an operation in the store thread. Its awaits reach only the blocking connection below, so it finishes
    without suspending; one that would suspend is a bug (it would hold the transaction across the event loop)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]  # StopIteration.value is Any; the coroutine returns T
    coro.close()
    raise RuntimeError("a SQLite store operation awaited something other than its connection")


def script_statements(sql: str) -> list[str]:
    """A migration cut into statements, to run one at a time inside the migration's transaction (executescript
    would commit first). Cut where sqlite3 says a statement is complete, so a ';' in a literal does not split."""
    statements: list[str] = []
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n\t;"):
                statements.append(pending)
            pending = ""
    if pending.strip(" \n\t;"):
        statements.append(pending)
    return statements


class _Conn:
    """The Conn an operation sees: synchronous sqlite3 calls behind ``async`` methods that never suspend."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _cursor(self, query: str, params: Mapping[str, Any]) -> sqlite3.Cursor:
        sql = QUERIES[query].statement.sql
        return self._conn.execute(sql, _bind(sql, params))

    async def fetch(self, query: str, /, **params: Any) -> list[Row]:
        return self._cursor(query, params).fetchall()

    async def fetchrow(self, query: str, /, **params: Any) -> Row | None:
        # fetchall, not fetchone: a RETURNING statement left unfinished would keep the transaction from committing
        rows = self._cursor(query, params).fetchall()
        return rows[0] if rows else None

    async def fetchval(self, query: str, /, **params: Any) -> Any:
        rows = self._cursor(query, params).fetchall()
        return rows[0][0] if rows else None

    async def execute(self, query: str, /, **params: Any) -> int:
        return self._cursor(query, params).rowcount

    async def executemany(self, query: str, rows: Sequence[Mapping[str, Any]], /) -> int:
        sql = QUERIES[query].statement.sql
        return self._conn.executemany(sql, [_bind(sql, r) for r in rows]).rowcount

    async def fetch_rendered(self, query: str, slots: Mapping[str, str], /, **params: Any) -> list[Row]:
        sql = QUERIES[query].render(**slots).sql
        return self._conn.execute(sql, _bind(sql, params)).fetchall()

    async def run_script(self, sql: str, /) -> None:
        for statement in script_statements(sql):
            self._conn.execute(statement)

    async def wake(self) -> None:
        """Nothing to send: other processes' workers poll (SQLite has no push channel)."""


async def _record_outcomes(conn: Conn, completions: Sequence[Completion]) -> int:
    """The deliveries' outcomes; the rows changed. SQLite rewrites every index on a column an UPDATE sets, whatever
    the value: an outcome that keeps its action (all but an update re-rendered as a publish) leaves ``action`` out,
    or each would also rewrite its entry in the (story, version, channel, action) unique index."""
    kept = [outcome_params(c) for c in completions if c.action is None]
    converted = [outcome_params(c) for c in completions if c.action is not None]
    changed = await conn.executemany("record_outcome", kept) if kept else 0
    if converted:
        changed = (changed or 0) + (await conn.executemany("record_converted_outcome", converted) or 0)
    return changed or 0


def _is_busy(exc: BaseException) -> bool:
    """Another connection holds the lock (the primary code is in the low byte of an extended one). Not
    SQLITE_LOCKED: without a shared cache that is a conflict inside one connection, the same when run again."""
    return (
        isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
    )


def _commit(conn: sqlite3.Connection) -> None:
    """The step that waits for the disk (synchronous=FULL)."""
    conn.execute("COMMIT")


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: BEGIN IMMEDIATE takes the database's write lock; rolled back on any failure."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        _commit(conn)
    except BaseException:
        # Also when COMMIT itself fails (it can leave the transaction open): never keep the connection inside a
        # dead transaction, or every later BEGIN fails.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _run_op(op: Op[T], conn: sqlite3.Connection, *, write: bool) -> T:
    """An operation run whole on one connection, in one write transaction when it writes."""
    if not write:
        return run_to_completion(op(_Conn(conn)))
    with _transaction(conn):
        return run_to_completion(op(_Conn(conn)))


class SQLiteStore(SQLStore):
    QUERIES = QUERIES
    MIGRATIONS = MIGRATIONS
    SCHEMA_VERSION = MIGRATIONS[-1].version
    SINGLE_WRITER = True
    combines_outcomes_with_claims = True
    IN_LIST = "{column} IN (SELECT value FROM json_each(:{param}))"
    MISSING_TABLE: ClassVar[tuple[type[Exception], ...]] = (sqlite3.OperationalError,)

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise RuntimeError(
                f"SQLite {sqlite3.sqlite_version} is too old: syndicate needs SQLite "
                f"{'.'.join(map(str, MIN_SQLITE))} or newer (Python's sqlite3 module links the system library; "
                "upgrade it, or use PostgreSQL)"
            )
        super().__init__()
        self.path = str(path)
        if self.path != ":memory:":
            folder = Path(self.path).resolve().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot open the store {Path(self.path).resolve()}: its directory {folder} cannot be created "
                    f"({exc.strerror or exc}): fix the path or its permissions, or set [store] url"
                ) from None
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syndicate-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None
        self._loop_usable = self.path not in (":memory:", "")
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or ``sqlite:///:memory:``."""
        if not url.startswith("sqlite:///"):
            raise ValueError(f"not a SQLite URL: {url!r} (expected sqlite:///path/to/file.db)")
        return cls(url[len("sqlite:///") :])

    async def _write_outcomes(self, conn: Conn, items: list[Completion], lost: set[int]) -> None:
        await _record_outcomes(conn, [c for position, c in enumerate(items) if position not in lost])
        await conn.executemany("finish_attempt", attempt_params(items, lost))

    async def _write_fenced_outcomes(self, conn: Conn, items: list[Completion]) -> bool:
        # record_outcome changes only a row still leased by the completion's attempt: all of them changed, none
        # was lost. The lease read this skips cost 14K instructions per outcome (callgrind).
        if await _record_outcomes(conn, items) != len(items):
            return False
        await conn.executemany("finish_attempt", attempt_params(items, set()))
        return True

    async def _write_attempts(self, conn: Conn, claimed: list[Row], lease: LeaseRequest) -> dict[int, int]:
        ids = [row[0] for row in claimed]
        rows = await conn.fetch("insert_attempts", ids=ids, worker=lease.worker, now=lease.now)
        return {r["delivery_id"]: r["id"] for r in rows}

    # --- the connections: one on the event loop's thread, one in a thread of its own ------------------------

    def _open(self, *, busy_timeout: float) -> sqlite3.Connection:
        try:
            # Opened in the store thread with the full busy timeout (setting up may wait for another process);
            # check_same_thread=False because the loop's connection is then used on the loop's thread. Each
            # connection is used by one thread at a time.
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")  # the first write: a directory we cannot write fails here
        except sqlite3.OperationalError as exc:
            raise StoreError(_open_failure(self.path, exc)) from None
        conn.row_factory = sqlite3.Row
        try:
            # List parameters are JSON arrays read with json_each (built in since 3.38, and in every common build
            # of older versions).
            conn.execute("SELECT value FROM json_each('[]')")
        except sqlite3.OperationalError:
            conn.close()
            raise RuntimeError(
                f"SQLite {sqlite3.sqlite_version} lacks the JSON functions syndicate needs (json_each): "
                "use a build with JSON1 (standard since 3.38), or PostgreSQL"
            ) from None
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        # 64 MiB of page cache instead of the default 2 MiB: the stored payloads, read at every claim, are large.
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        return conn

    def _connect(self) -> sqlite3.Connection:
        """The store thread's connection: it waits for another writer's lock up to the busy timeout."""
        if self._conn is None:
            self._conn = self._open(busy_timeout=self._busy_timeout)
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._connect()))

    async def _loop_connection(self) -> sqlite3.Connection | None:
        """The event loop's connection, which never waits for a lock (busy timeout 0). None when everything keeps
        to the store thread: for ``:memory:`` and ``""``, whose every connection is a database of its own, and
        when the file is not in WAL mode (a filesystem without shared memory), where readers and writers block
        each other and "busy" would be the rule."""
        if self._inline is None and self._loop_usable:
            conn = await self._run(lambda _: self._open(busy_timeout=0))
            if self._closed or self._inline is not None:  # closed, or opened by another operation, meanwhile
                conn.close()
            elif conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.close()
                self._loop_usable = False
                log.warning("%s is not in WAL mode: every store operation runs in the store thread", self.path)
            else:
                self._inline = conn
        return self._inline

    async def _run_brief(self, op: Op[T], *, write: bool) -> T:
        """Run a brief operation whole on the event loop's own thread: handing it to the store thread costs more
        than it does (a wake-up each way, and the two threads trading the GIL at every SQLite step, which releases
        it). Its COMMIT waits for the disk on the loop too: handing only the COMMIT to the thread was measured and
        cost more than the fsync it moved. The loop's connection never waits for a lock (busy timeout 0): when
        another connection holds the write lock (another process, or a scan or a wait in the store thread) SQLite
        answers "busy" at once, the transaction is rolled back, and the operation runs again on the store
        thread's connection, which waits for the lock off the loop."""
        if self._closed:
            raise StoreError(f"the store {self.path} is closed")
        conn = self._inline or await self._loop_connection()
        if conn is not None:
            try:
                return _run_op(op, conn, write=write)
            except BaseException as exc:
                if conn.in_transaction:  # its ROLLBACK failed too: the next operation starts on a new connection
                    self._inline = None
                    conn.close()
                if not _is_busy(exc):
                    raise
        return await self._run(functools.partial(_run_op, op, write=write))

    async def _run_read(self, op: Op[T], *, scan: bool = False) -> T:
        if scan:
            return await self._run(functools.partial(_run_op, op, write=False))
        return await self._run_brief(op, write=False)

    async def _run_write(
        self, op: Op[T], *, lock: Lock | None = None, single_statement: bool = False, scan: bool = False
    ) -> T:
        # BEGIN IMMEDIATE takes the database's one write lock: it covers every lock scope, and even a single
        # statement goes through it, so every write waits for the disk the same way (synchronous=FULL).
        if scan:
            return await self._run(functools.partial(_run_op, op, write=True))
        return await self._run_brief(op, write=True)

    def _unavailable(self, exc: Exception) -> StoreUnavailable | None:
        if not isinstance(exc, sqlite3.DatabaseError):
            return None
        primary = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # extended codes carry the primary one in the low byte
        where = Path(self.path).resolve()
        if primary == sqlite3.SQLITE_FULL:
            return StoreUnavailable(
                f"the disk holding {where} is full ({exc})", "free space on that disk; writes resume by themselves"
            )
        if primary == sqlite3.SQLITE_READONLY:
            return StoreUnavailable(
                f"{where} is read-only ({exc})",
                f"make the file, its -wal and -shm files and {where.parent} writable by uid {os.geteuid()}",
            )
        if primary == sqlite3.SQLITE_IOERR:
            return StoreUnavailable(
                f"the disk holding {where} reported an I/O error ({exc})", "check the disk (dmesg) and its free space"
            )
        if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return StoreUnavailable(
                f"another process held {where} locked for more than {self._busy_timeout:g} s ({exc})",
                "look for a stuck syndicate process or a long transaction on the file",
            )
        if primary == sqlite3.SQLITE_CANTOPEN:
            return StoreUnavailable(f"{where} cannot be opened ({exc})", "check the file, its directory and the disk")
        return None

    async def close(self) -> None:
        self._closed = True
        if self._inline is not None:
            self._inline.close()
            self._inline = None

        def _close(_: sqlite3.Connection) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        if self._conn is not None:
            await self._run(_close)
        self._executor.shutdown(wait=True)


def _open_failure(path: str, exc: sqlite3.OperationalError) -> str:
    """Why the store file cannot be opened, with the fix: SQLite itself says only "unable to open database file"."""
    where = Path(path).resolve()
    folder = where.parent
    if not folder.is_dir():
        fix = f"the directory {folder} does not exist: create it, or set [store] url to a path that exists"
    elif not os.access(folder, os.W_OK | os.X_OK):
        fix = f"the directory {folder} is not writable by uid {os.geteuid()}: fix its permissions, or set [store] url"
    elif where.exists() and not os.access(where, os.R_OK | os.W_OK):
        fix = f"the file is not readable and writable by uid {os.geteuid()}: fix its permissions, or set [store] url"
    else:
        fix = "check the file, its directory and the free disk space, or set [store] url"
    return f"cannot open the store {where}: {exc} ({fix})"
