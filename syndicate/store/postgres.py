"""PostgreSQL backend: many API and worker processes on many hosts sharing one outbox. A connector under
syndicate.store.sqlstore.

asyncpg rather than psycopg 3: it is asyncio-native, the fastest Python driver for PostgreSQL, ships a pool, and
exposes LISTEN/NOTIFY as a plain callback, which is how idle workers wake at once when work arrives.

Concurrency rules, all enforced in the database so they hold across processes and hosts:
* claims lock candidate rows ``FOR UPDATE SKIP LOCKED`` and serialise per channel on a transaction-level
  advisory lock, so a channel's in-flight count (its concurrency limit) is read and raised atomically;
* fan-out serialises per story on an advisory lock, so two hooks for one story cannot interleave;
* migrations run under a global advisory lock, so several processes starting at once apply them once.
"""

from __future__ import annotations

import functools
import logging
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import asyncpg

from syndicate.store.base import Completion, Row, StoreUnavailable
from syndicate.store.queries import ParamStyle, load_migrations, load_queries
from syndicate.store.sqlstore import (
    Conn,
    LeaseRequest,
    Lock,
    LockScope,
    Op,
    Q,
    SQLStore,
    attempt_params,
    outcome_params,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "syndicate_work"
#: This dialect's own queries: the transactions with their locks, and the wake-up.
OWN_QUERIES = (
    "begin_locked",
    "begin_migrations",
    "begin",
    "commit",
    "rollback",
    "notify_and_commit",
    "notify",
    "record_outcome_and_finish_attempt",
)
QUERIES = load_queries("postgres", ParamStyle.NUMERIC).require([*Q, *OWN_QUERIES])
MIGRATIONS = load_migrations("postgres")


def split_url(url: str) -> tuple[str, str | None]:
    """``postgresql://…?schema=name`` -> (DSN for asyncpg, schema). The schema isolates test runs or tenants."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "schema"])
    scheme = "postgresql" if parts.scheme in ("postgresql", "postgres") else parts.scheme
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


def _changed(status: str) -> int:
    """Rows changed, from asyncpg's command tag ("UPDATE 3", "INSERT 0 1")."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _literal(text: str) -> str:
    """``text`` as a string literal for a simple query (which takes no parameters): an escape string, so it reads
    the same whatever the server's standard_conforming_strings."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


@functools.lru_cache(maxsize=1024)
def _begin(lock: Lock | None) -> str:
    """The SQL that opens a write transaction holding ``lock``: one round trip for both."""
    if lock is None:
        return QUERIES["begin"].statement.sql
    if lock.scope is LockScope.MIGRATIONS:
        return QUERIES["begin_migrations"].statement.sql
    return QUERIES["begin_locked"].render(key=_literal(f"{lock.scope.value}:{lock.key}")).sql


class _Conn:
    """The Conn an operation sees: an acquired asyncpg connection; ``:name`` parameters sent as ``$n``. Inside a
    write transaction (``in_transaction``) a wake-up waits for the COMMIT, to go in its round trip."""

    __slots__ = ("_conn", "_notify_name", "in_transaction", "wake_at_commit")

    def __init__(self, conn: asyncpg.Connection, notify_name: str, *, in_transaction: bool = False) -> None:
        self._conn = conn
        self._notify_name = notify_name
        self.in_transaction = in_transaction
        self.wake_at_commit = False

    async def fetch(self, query: str, /, **params: Any) -> list[Row]:
        statement = QUERIES[query].statement
        rows: list[Row] = await self._conn.fetch(statement.sql, *statement.args(params))  # asyncpg is untyped
        return rows

    async def fetchrow(self, query: str, /, **params: Any) -> Row | None:
        statement = QUERIES[query].statement
        row: Row | None = await self._conn.fetchrow(statement.sql, *statement.args(params))
        return row

    async def fetchval(self, query: str, /, **params: Any) -> Any:
        statement = QUERIES[query].statement
        return await self._conn.fetchval(statement.sql, *statement.args(params))

    async def execute(self, query: str, /, **params: Any) -> int:
        statement = QUERIES[query].statement
        return _changed(await self._conn.execute(statement.sql, *statement.args(params)))

    async def executemany(self, query: str, rows: Sequence[Mapping[str, Any]], /) -> None:
        statement = QUERIES[query].statement
        await self._conn.executemany(statement.sql, [statement.args(r) for r in rows])

    async def fetch_rendered(self, query: str, slots: Mapping[str, str], /, **params: Any) -> list[Row]:
        statement = QUERIES[query].render(**slots)
        rows: list[Row] = await self._conn.fetch(statement.sql, *statement.args(params))
        return rows

    async def run_script(self, sql: str, /) -> None:
        await self._conn.execute(sql)  # without arguments asyncpg runs several statements in one go

    async def wake(self) -> None:
        if self.in_transaction:
            self.wake_at_commit = True
        else:
            await self.execute("notify", channel=self._notify_name)


_COMMIT = QUERIES["commit"].statement.sql
_ROLLBACK = QUERIES["rollback"].statement.sql


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release, after asyncpg has rolled back any transaction left open. Its default sends
    ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` first: a round trip after every operation (a
    sixth of the drain's), undoing what this store never leaves on a pooled session: its advisory locks are
    transaction-level, it opens no cursors, it listens on a connection of its own and sets nothing after
    connecting."""


class PostgresStore(SQLStore):
    QUERIES = QUERIES
    MIGRATIONS = MIGRATIONS
    SCHEMA_VERSION = MIGRATIONS[-1].version
    SINGLE_WRITER = False
    IN_LIST = "{column} = ANY(:{param}::{type}[])"
    MISSING_TABLE: ClassVar[tuple[type[Exception], ...]] = (asyncpg.UndefinedTableError,)

    def __init__(self, dsn: str, *, schema: str | None = None, min_size: int = 1, max_size: int = 10) -> None:
        super().__init__()
        self.dsn = dsn
        self.schema = schema
        self._min_size, self._max_size = min_size, max_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        dsn, schema = split_url(url)
        return cls(dsn, schema=schema)

    async def _write_outcomes(self, conn: Conn, items: list[Completion], lost: set[int]) -> None:
        # One statement per completion writes both tables: the batch is one round trip, not two (error_class and
        # platform_code are the completion's own in both parameter sets).
        rows = [
            {
                **outcome_params(c),
                **attempt,
                "attempt_id": attempt["id"],
                "id": c.delivery_id,
                "applied": position not in lost,
            }
            for position, (c, attempt) in enumerate(zip(items, attempt_params(items, lost), strict=True))
        ]
        await conn.executemany("record_outcome_and_finish_attempt", rows)

    async def _write_attempts(self, conn: Conn, claimed: list[Row], lease: LeaseRequest) -> dict[int, int]:
        # The claim statement wrote them: each row ends with its attempt's id.
        return {row[0]: row[-1] for row in claimed}

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            settings = {"search_path": self.schema} if self.schema else None
            if self.schema:
                conn = await asyncpg.connect(self.dsn)
                try:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                finally:
                    await conn.close()
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                server_settings=settings,
                reset=_keep_session,
            )
        return self._pool

    def _unavailable(self, exc: Exception) -> StoreUnavailable | None:
        server = self._server_name()
        if isinstance(exc, asyncpg.DiskFullError):
            return StoreUnavailable(f"the database server {server} is out of disk ({exc})", "free disk space there")
        if isinstance(exc, asyncpg.InsufficientResourcesError):  # out of memory, too many connections (53xxx)
            return StoreUnavailable(
                f"the database server {server} is out of resources ({exc})",
                "check its memory and max_connections, or lower [store] pool sizes",
            )
        if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
            return StoreUnavailable(
                f"{server} takes no writes ({exc})", "point [store] url at the primary, not a standby"
            )
        if isinstance(exc, asyncpg.OperatorInterventionError | asyncpg.PostgresConnectionError):
            return StoreUnavailable(f"the database server {server} went away ({exc})", "check that it is running")
        if isinstance(exc, OSError):  # refused, unreachable, timed out connecting
            return StoreUnavailable(
                f"the database server {server} cannot be reached ({type(exc).__name__}: {exc})",
                "check that it is running and that [store] url is right",
            )
        return None

    def _server_name(self) -> str:
        parts = urllib.parse.urlsplit(self.dsn)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever any process enqueues or frees work (LISTEN/NOTIFY)."""
        if self._listener is not None:
            return
        settings = {"search_path": self.schema} if self.schema else None
        self._listener = await asyncpg.connect(self.dsn, server_settings=settings)
        await self._listener.add_listener(self._notify_name, lambda *_: callback())

    @property
    def _notify_name(self) -> str:
        # One notification channel per schema, so isolated test runs (or tenants) do not wake each other.
        return f"{NOTIFY_CHANNEL}_{self.schema}" if self.schema else NOTIFY_CHANNEL

    async def _run_read(self, op: Op[T], *, scan: bool = False) -> T:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            return await op(_Conn(conn, self._notify_name))

    async def _run_write(
        self, op: Op[T], *, lock: Lock | None = None, single_statement: bool = False, scan: bool = False
    ) -> T:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            if single_statement and lock is None:
                return await op(_Conn(conn, self._notify_name))  # its own transaction: no BEGIN/COMMIT round trips
            # BEGIN with the lock, and a wake-up with the COMMIT: each pair one round trip (asyncpg's transaction()
            # sends BEGIN alone). A failure rolls back; if even that fails, the pool's release rolls back again or
            # drops the connection.
            pg = _Conn(conn, self._notify_name, in_transaction=True)
            try:
                await conn.execute(_begin(lock))
                result = await op(pg)
                await conn.execute(self._notify_and_commit if pg.wake_at_commit else _COMMIT)
            except BaseException:
                # Always: the status asyncpg reports lags a query still running (BEGIN waiting for its lock), and
                # ROLLBACK outside a transaction is only a warning. A ROLLBACK that fails (the connection is gone)
                # must not replace the error, or a cancellation would surface as "store unavailable".
                try:
                    await conn.execute(_ROLLBACK)
                except Exception:
                    log.debug("rollback failed; the pool's release rolls back or drops the connection", exc_info=True)
                raise
            return result

    @functools.cached_property
    def _notify_and_commit(self) -> str:
        return QUERIES["notify_and_commit"].render(channel=_literal(self._notify_name)).sql
