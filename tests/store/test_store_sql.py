"""The SQL behind the stores: the named-query loader, the numbered migrations (an existing database keeps working
and upgrades in order) and the read-only channel view. Database tests run per backend through `store_url`."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from syndicate.delivery import Payload, Receipt, StoredPayload
from syndicate.store import open_store
from syndicate.store import postgres as pg_store
from syndicate.store import sqlite as sqlite_store
from syndicate.store.base import (
    DELIVERY_COLUMNS,
    OPEN_STATES,
    PENDING_STATES,
    ChannelDeliveries,
    DeliveryFilter,
    DeliveryRecord,
    ReadModel,
    State,
    Store,
    dumps_json,
)
from syndicate.store.queries import (
    CONSTANTS,
    Migration,
    ParamStyle,
    QueryError,
    UnknownQuery,
    compile_sql,
    load_migrations,
    load_queries,
    parse_queries,
)
from syndicate.store.sqlstore import Q, SQLStore
from tests.store.test_store_contract import LIMITS, NOW, done, plan_for
from tests.support import make_story, pg_schema_url

DATA = Path(__file__).parent / "data" / "store"
DIALECTS = {"sqlite": sqlite_store, "postgres": pg_store}

# --- the named-query loader --------------------------------------------------------------------------------------


def test_an_unknown_query_name_is_an_error_naming_it() -> None:
    with pytest.raises(
        UnknownQuery, match=r"no query named 'claim_everything' in sql/queries\.sql \+ sql/queries_sqlite\.sql"
    ):
        sqlite_store.QUERIES["claim_everything"]
    with pytest.raises(QueryError, match="lacks the queries claim_everything, no_such"):
        sqlite_store.QUERIES.require(["claim_deliveries", "no_such", "claim_everything"])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_query_the_decisions_run_exists_in_both_dialects_and_no_other(dialect: str) -> None:
    module = DIALECTS[dialect]
    own = set(getattr(module, "OWN_QUERIES", ()))
    assert set(module.QUERIES) == set(Q) | own
    for name in module.QUERIES:  # each compiles: no stray slot or constant left behind
        query = module.QUERIES[name]
        assert query.slots or query.statement.sql


def test_a_statement_has_one_home_shared_or_the_dialects_own(tmp_path: Path) -> None:
    (tmp_path / "queries.sql").write_text("-- name: kv_get\nSELECT 1;\n")
    (tmp_path / "queries_sqlite.sql").write_text("-- name: kv_get\nSELECT 2;\n-- name: own\nSELECT 3;\n")
    with pytest.raises(QueryError, match=r"sql/queries_sqlite\.sql defines kv_get, which sql/queries\.sql has"):
        load_queries("sqlite", ParamStyle.NAMED, tmp_path)
    (tmp_path / "queries_sqlite.sql").write_text("-- name: own\nSELECT 3;\n")
    assert set(load_queries("sqlite", ParamStyle.NAMED, tmp_path)) == {"kv_get", "own"}


def test_the_dialect_files_hold_only_what_differs() -> None:
    sqlite, postgres = sqlite_store.QUERIES, pg_store.QUERIES
    same = {n for n in sqlite if n in postgres and sqlite[n].text == postgres[n].text}
    folder = Path(sqlite_store.__file__).parent / "sql"
    for dialect in DIALECTS:
        own = parse_queries((folder / f"queries_{dialect}.sql").read_text(), source=dialect, style=ParamStyle.NAMED)
        assert same & set(own) == set()  # the same SQL in both dialects lives once, in queries.sql


def test_every_shared_query_name_is_used_by_the_decisions() -> None:
    source = (Path(sqlite_store.__file__).parent / "sqlstore.py").read_text()
    unused = [q.name for q in Q if f"Q.{q.name}" not in source]
    assert unused == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_own_queries_are_used_by_their_dialect(dialect: str) -> None:
    module = DIALECTS[dialect]
    source = Path(module.__file__ or "").read_text()
    assert module.OWN_QUERIES and all(f'"{name}"' in source for name in module.OWN_QUERIES)


def test_parameters_by_name_become_the_dialects_placeholders() -> None:
    sql = "SELECT ':not_a_param', x::text[] FROM t WHERE a = :a AND b = ANY(:b::bigint[]) AND c = :a"
    numeric = compile_sql(sql, ParamStyle.NUMERIC)
    assert numeric.sql == "SELECT ':not_a_param', x::text[] FROM t WHERE a = $1 AND b = ANY($2::bigint[]) AND c = $1"
    assert numeric.params == ("a", "b")
    assert numeric.args({"b": [1], "a": "x", "unused": 0}) == ["x", [1]]
    with pytest.raises(QueryError, match=":b"):
        numeric.args({"a": 1})
    named = compile_sql(sql, ParamStyle.NAMED)
    assert named.sql == sql and named.params == ("a", "b")


def test_query_files_are_checked_as_they_are_parsed() -> None:
    def parse(text: str) -> object:
        return parse_queries(text, source="t.sql", style=ParamStyle.NAMED)

    queries = parse("-- a header comment\n\n-- name: one\n-- why it is so\nSELECT 1;\n-- name: two\nSELECT 2\n")
    assert queries["one"].text == "SELECT 1" and queries["two"].text == "SELECT 2"  # type: ignore[index]
    with pytest.raises(QueryError, match="'one' is defined twice"):
        parse("-- name: one\nSELECT 1;\n-- name: one\nSELECT 2;")
    with pytest.raises(QueryError, match="SQL before the first"):
        parse("SELECT 0;\n-- name: one\nSELECT 1;")
    with pytest.raises(QueryError, match="'empty' is empty"):
        parse("-- name: empty\n-- only a comment\n")
    with pytest.raises(QueryError, match=r"unknown constant \{NOPE\}"):
        parse("-- name: one\nSELECT * FROM t WHERE s IN {NOPE};")
    with pytest.raises(QueryError, match="not a valid query name"):
        parse("-- name: Bad-Name\nSELECT 1;")


def test_constants_are_the_state_sets_and_slots_must_all_be_filled() -> None:
    assert CONSTANTS["PENDING_STATES"] == "(" + ", ".join(f"'{s.value}'" for s in sorted(PENDING_STATES)) + ")"
    assert CONSTANTS["OPEN_STATES"] == "(" + ", ".join(f"'{s.value}'" for s in sorted(OPEN_STATES)) + ")"
    query = sqlite_store.QUERIES[Q.LIST_DELIVERIES]
    assert query.slots == {"where"}
    with pytest.raises(QueryError, match="render it"):
        _ = query.statement
    with pytest.raises(QueryError, match="takes slots"):
        query.render(other="TRUE")
    assert "WHERE TRUE ORDER BY id" in query.render(where="TRUE").sql


def test_migrations_are_numbered_alike_in_both_dialects() -> None:
    versions = {name: [m.version for m in module.MIGRATIONS] for name, module in DIALECTS.items()}
    assert versions["sqlite"] == versions["postgres"] == list(range(1, len(versions["sqlite"]) + 1))
    assert sqlite_store.SQLiteStore.SCHEMA_VERSION == pg_store.PostgresStore.SCHEMA_VERSION == versions["sqlite"][-1]


def test_a_gap_in_migration_numbers_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE a (x INTEGER);")
    (tmp_path / "0003_third.sql").write_text("CREATE TABLE c (x INTEGER);")
    with pytest.raises(QueryError, match=r"without gaps, found \[1, 3\]"):
        load_migrations("sqlite", tmp_path)
    (tmp_path / "3_bad.sql").write_text("")
    with pytest.raises(QueryError, match="NNNN_slug"):
        load_migrations("sqlite", tmp_path)


# --- migrations: existing databases ------------------------------------------------------------------------------


def _dialect(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgres"


async def _run_sql(url: str, sql: str) -> None:
    """Raw SQL against the database behind ``url`` (as an older syndicate would have written it)."""
    if _dialect(url) == "sqlite":
        conn = sqlite3.connect(url[len("sqlite:///") :])
        try:
            conn.executescript(sql)
        finally:
            conn.close()
        return
    dsn, schema = pg_store.split_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"; SET search_path TO "{schema}"')
        await conn.execute(sql)
    finally:
        await conn.close()


async def _schema(url: str) -> list[tuple[str, ...]]:
    """What the database's schema is, comparable across databases: tables, columns, indexes, constraints."""
    if _dialect(url) == "sqlite":
        conn = sqlite3.connect(url[len("sqlite:///") :])
        try:
            rows = conn.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY 1, 2"
            ).fetchall()
        finally:
            conn.close()
        # SQLite keeps each CREATE statement's text as written: compare it with the layout whitespace taken out.
        return [
            (t, n, tbl, re.sub(r"\s+", " ", sql or "").replace("( ", "(").replace(" )", ")")) for t, n, tbl, sql in rows
        ]
    dsn, schema = pg_store.split_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        columns = await conn.fetch(
            "SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '')"
            " FROM information_schema.columns WHERE table_schema = $1 ORDER BY 1, ordinal_position",
            schema,
        )
        indexes = await conn.fetch(
            "SELECT tablename, indexname, replace(indexdef, $1 || '.', '') FROM pg_indexes WHERE schemaname = $1"
            " ORDER BY 1, 2",
            schema,
        )
        constraints = await conn.fetch(
            "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
            " JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = $1 ORDER BY 1, 2",
            schema,
        )
    finally:
        await conn.close()

    def plain(value: object) -> str:
        return str(value).replace(f'"{schema}".', "").replace(f"{schema}.", "")

    return (
        [("column", *map(plain, r)) for r in columns]
        + [("index", *map(plain, r)) for r in indexes]
        + [("constraint", *map(plain, r)) for r in constraints]
    )


def _frozen_v1(url: str) -> str:
    return (DATA / f"schema_v1_{_dialect(url)}.sql").read_text()


def _rows_an_older_syndicate_wrote(url: str) -> str:
    """A story with one queued delivery, inserted as the code before this layer did."""
    story = make_story(id="old-1")
    body = story.to_json().replace("'", "''")
    payload = dumps_json(Payload({"n": 1}).to_json()).replace("'", "''")
    reconcile = "0" if _dialect(url) == "sqlite" else "FALSE"
    return (
        "INSERT INTO stories (story_id, version, content_hash, pubstatus, body, received_at)"
        f" VALUES ('old-1', 1, '{story.content_hash}', 'usable', '{body}', {NOW});"
        "INSERT INTO deliveries (story_id, version, channel, action, state, payload, due_at, reconcile,"
        f" created_at, updated_at) VALUES ('old-1', 1, 'a', 'publish', 'queued', '{payload}', {NOW}, {reconcile},"
        f" {NOW}, {NOW});"
    )


async def test_version_1_is_exactly_the_schema_the_older_code_created(store_url: str, tmp_path: Path) -> None:
    """Migration 1 from the .sql files builds what the code before them built: the number kept its meaning."""
    fresh = _pinned(store_url, list(DIALECTS[_dialect(store_url)].MIGRATIONS)[:1])
    try:
        assert await fresh.migrate() == 1
    finally:
        await fresh.close()
    if _dialect(store_url) == "sqlite":
        old_url = f"sqlite:///{tmp_path / 'old.db'}"
        await _run_sql(old_url, _frozen_v1(old_url))
        assert await _schema(store_url) == await _schema(old_url)
        return
    async with pg_schema_url() as old_url:
        await _run_sql(old_url, _frozen_v1(old_url))
        assert await _schema(store_url) == await _schema(old_url)


def _pinned(url: str, migrations: Sequence[Migration]) -> Store:
    """A store of the same backend that knows only ``migrations`` (an older or a later release)."""
    base: type[SQLStore] = sqlite_store.SQLiteStore if _dialect(url) == "sqlite" else pg_store.PostgresStore
    pinned = type("Pinned", (base,), {"MIGRATIONS": migrations, "SCHEMA_VERSION": len(migrations)})
    return pinned.from_url(url)  # type: ignore[attr-defined,no-any-return]


async def test_a_database_the_older_code_created_keeps_working(store_url: str) -> None:
    await _run_sql(store_url, _frozen_v1(store_url) + _rows_an_older_syndicate_wrote(store_url))
    before = await _schema(store_url)
    store = open_store(store_url)
    try:
        assert await store.schema_version() == 1
        assert await store.migrate() == store.SCHEMA_VERSION  # the later migrations apply ...
        after = await _schema(store_url)
        # ... and add to version 1 without changing any of it, but for migration 4's move of deliveries.payload
        # into a table of its own (SQLite keeps the table's CREATE text, which the dropped column leaves)
        moved = {
            row
            for row in before
            if row[:2] == ("table", "deliveries") or row[:3] == ("column", "deliveries", "payload")
        }
        assert len(moved) == 1 and set(before) - moved <= set(after)
        if _dialect(store_url) == "sqlite":
            [(kind, name, table, sql)] = moved
            assert (kind, name, table, sql.replace(" payload TEXT,", "")) in after
        record = await store.get_story("old-1")
        assert record.story == make_story(id="old-1")
        # the version check runs against the older code's rows: the same version again creates nothing
        again = await store.fan_out(make_story(id="old-1"), plan_for("a"), now=NOW)
        assert not again.created and [d.channel for d in again.deliveries] == ["a"]
        [claim] = await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS)
        assert (
            claim.delivery.payload is not None
            and claim.delivery.payload.decoded == Payload({"n": 1})
            and claim.attempt_number == 1
        )
        assert await store.complete([done(claim, receipt=Receipt("r-1"))]) == []
        assert (await store.get_delivery(claim.delivery.id)).state is State.DELIVERED
    finally:
        await store.close()


async def test_migrations_apply_in_order_from_any_earlier_version(store_url: str, tmp_path: Path) -> None:
    """A database at version N-1 gets only migration N (here: the real migrations plus a made-up next one)."""
    dialect = _dialect(store_url)
    real = list(DIALECTS[dialect].MIGRATIONS)
    folder = tmp_path / "migrations"
    folder.mkdir()
    for m in real:
        (folder / f"{m.name}.sql").write_text(m.sql)
    (folder / f"{len(real) + 1:04d}_next.sql").write_text(
        "-- a later release's change; a ';' in a comment or a literal does not split it\n"
        "CREATE TABLE next_feature (id INTEGER PRIMARY KEY, note TEXT DEFAULT 'a;b');\n"
        "INSERT INTO next_feature (id) VALUES (1);\n"
    )
    upgraded = load_migrations(dialect, folder)
    assert [m.version for m in upgraded] == [*range(1, len(real) + 2)]
    for upto in range(1, len(real) + 1):  # through every version a released syndicate can have left behind
        older = _pinned(store_url, upgraded[:upto])
        try:
            assert await older.migrate() == upto
            if upto == 1:  # rows as the code of version 1 wrote them (today's code writes version 4's layout)
                await _run_sql(store_url, _rows_an_older_syndicate_wrote(store_url))
        finally:
            await older.close()
    newer = _pinned(store_url, upgraded)
    try:
        assert await newer.schema_version() == len(real)
        assert await newer.migrate() == len(real) + 1
        assert await newer.migrate() == len(real) + 1  # idempotent
        assert await newer.schema_version() == len(real) + 1
        [kept] = await newer.list_deliveries(DeliveryFilter())
        assert kept.story_id == "old-1" and kept.payload is not None and kept.payload.decoded == Payload({"n": 1})
    finally:
        await newer.close()
    schema = await _schema(store_url)
    assert any(row[:3] == ("table", "next_feature", "next_feature") for row in schema) or any(
        row[:2] == ("column", "next_feature") for row in schema
    )


# --- the channel view ------------------------------------------------------------------------------------------


async def _deliver_everything(store: Store) -> None:
    for claim in await store.claim("w1", now=NOW, lease_seconds=30, limits=LIMITS):
        await store.complete([done(claim, receipt=Receipt(f"{claim.delivery.channel}-{claim.delivery.story_id}"))])


async def test_the_channel_view_never_shows_another_channels_deliveries(store: Store) -> None:
    for sid in ("s1", "s2"):
        await store.fan_out(make_story(id=sid), plan_for("a", "b"), now=NOW)
    await _deliver_everything(store)
    await store.fan_out(make_story(id="s3"), plan_for("b"), now=NOW)  # only on b, queued
    every = await store.list_deliveries(DeliveryFilter())
    b_ids = [d.id for d in every if d.channel == "b"]

    view = store.channel_view("a")
    assert isinstance(view, ChannelDeliveries) and view.channel == "a"

    def channels(rows: list[DeliveryRecord]) -> set[str]:
        return {d.channel for d in rows}

    assert channels(await view.latest_delivered()) == {"a"}
    assert [d.story_id for d in await view.latest_delivered()] == ["s2", "s1"]
    assert [d.story_id for d in await view.latest_delivered(story_id="s1", limit=1)] == ["s1"]
    assert await view.latest_delivered(story_id="s3") == []  # s3 exists, on b only
    assert channels(await view.list_deliveries(DeliveryFilter())) == {"a"}
    assert len(await view.list_deliveries(DeliveryFilter())) == 2
    assert await view.list_deliveries(DeliveryFilter(channels=["b"])) == []
    assert channels(await view.list_deliveries(DeliveryFilter(channels=["a", "b"]))) == {"a"}
    assert await view.list_deliveries(DeliveryFilter(ids=b_ids)) == []
    assert await view.list_deliveries(DeliveryFilter(story_id="s3")) == []
    assert channels(await view.list_deliveries(DeliveryFilter(states=[State.DELIVERED], story_id="s1"))) == {"a"}
    assert await store.channel_view("c").list_deliveries(DeliveryFilter()) == []


def test_the_channel_view_is_read_only_and_covers_what_serving_channels_call() -> None:
    public = {name for name in dir(ChannelDeliveries) if not name.startswith("_")}
    assert public == {"channel", "latest_delivered", "list_deliveries"}
    # it holds the read model only: nothing of the outbox or the channel controls is reachable through its type
    assert set(ChannelDeliveries.__init__.__annotations__) == {"read", "channel", "return"}
    assert ChannelDeliveries.__init__.__annotations__["read"] in ("ReadModel", ReadModel)


def test_the_roles_compose_into_the_store() -> None:
    from itertools import combinations

    from syndicate.store.base import ChannelControl, Outbox, ReachLog

    roles = [Outbox, ChannelControl, ReadModel, ReachLog]
    assert all(issubclass(Store, role) for role in roles)
    methods = [set(role.__abstractmethods__) for role in roles]
    assert not any(a & b for a, b in combinations(methods, 2))  # each in one role
    assert set(Store.__abstractmethods__) == set().union(*methods) | {
        "migrate",
        "schema_version",
        "check_writable",
        "close",
    }


# --- the claim's rows, read by position ----------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_claim_returns_the_delivery_columns_in_their_order(dialect: str) -> None:
    """delivery_from_claim_row reads the claim's rows by position: the statement must list DELIVERY_COLUMNS."""
    sql = DIALECTS[dialect].QUERIES[Q.CLAIM_DELIVERIES].statement.sql
    # The UPDATE's RETURNING list, up to the parenthesis closing PostgreSQL's WITH item (or the statement's end).
    returned = re.split(r"\)\s*,\s*attempt AS", sql[sql.index("RETURNING") + len("RETURNING") :])[0]
    items = re.split(r",(?![^(]*\))", returned.strip().rstrip(";"))  # commas outside a call's parentheses
    names = [re.split(r"\s+AS\s+", item.strip())[-1].removeprefix("d.") for item in items]
    assert tuple(names) == DELIVERY_COLUMNS
    if dialect == "postgres":  # then the attempt's id, which _write_attempts reads as the last column
        assert sql.rstrip().rstrip(";").split("SELECT claimed.*, attempt.id AS attempt_id")[1].startswith(" FROM")


async def test_the_delivery_columns_are_every_column_of_delivery_rows_in_order(store_url: str) -> None:
    """delivery_rows (the view every read goes through) lists DELIVERY_COLUMNS in order; deliveries holds all of
    them but the payload, which lives in payloads."""
    fresh = open_store(store_url)
    try:
        await fresh.migrate()
    finally:
        await fresh.close()
    if _dialect(store_url) == "sqlite":
        conn = sqlite3.connect(store_url[len("sqlite:///") :])
        try:
            table = {
                t: [row[1] for row in conn.execute(f"PRAGMA table_info({t})")] for t in ("deliveries", "delivery_rows")
            }
        finally:
            conn.close()
    else:
        schema = await _schema(store_url)
        table = {t: [row[2] for row in schema if row[:2] == ("column", t)] for t in ("deliveries", "delivery_rows")}
    assert tuple(table["delivery_rows"]) == DELIVERY_COLUMNS
    assert sorted(table["deliveries"]) == sorted(c for c in DELIVERY_COLUMNS if c != "payload")


async def test_a_claimed_delivery_reads_as_the_same_row_read_by_name(store: Store) -> None:
    await store.fan_out(make_story(id="pos"), plan_for("a"), now=NOW)
    [claim] = await store.claim("w1", now=NOW + 1, lease_seconds=60, limits=LIMITS)
    by_name = await store.get_delivery(claim.delivery.id)
    assert isinstance(claim.delivery.payload, StoredPayload) and isinstance(by_name.payload, StoredPayload)
    assert isinstance(claim.delivery.payload.text, bytes)  # handed over as the stored UTF-8
    assert claim.delivery.payload.decoded == by_name.payload.decoded
    assert replace(claim.delivery, payload=None) == replace(by_name, payload=None)
    assert (claim.delivery.updated_at, claim.delivery.created_at) == (NOW + 1, NOW)


@pytest.mark.parametrize(
    ("query", "params", "index"),
    [
        (Q.REACH_READINGS_OF_STORY, {"story_id": "s1"}, "reach_readings_story"),
        (Q.PURGE_EXPIRED_KV, {"now": NOW, "batch": 500}, "kv_expires"),
    ],
)
async def test_a_storys_readings_and_the_expired_keys_are_found_by_index(
    store_url: str, query: Q, params: dict[str, object], index: str
) -> None:
    fresh = open_store(store_url)
    try:
        await fresh.migrate()
    finally:
        await fresh.close()
    dialect = _dialect(store_url)
    statement = DIALECTS[dialect].QUERIES[query].statement
    if dialect == "sqlite":
        conn = sqlite3.connect(store_url[len("sqlite:///") :])
        try:
            plan = " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + statement.sql, params))
        finally:
            conn.close()
    else:
        dsn, schema = pg_store.split_url(store_url)
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema or "public"})
        try:
            await conn.execute("SET enable_seqscan = off")  # an empty table: ask whether the index can serve
            rows = await conn.fetch("EXPLAIN " + statement.sql, *statement.args(params))
            plan = " ".join(r[0] for r in rows)
        finally:
            await conn.close()
    assert index in plan, plan


async def test_a_pooled_postgres_connection_goes_back_without_a_reset_round_trip() -> None:
    """Releasing a connection sends nothing (the store leaves no session state to undo), and a transaction left
    open on a released connection is still rolled back."""
    async with pg_schema_url() as url:
        dsn, schema = pg_store.split_url(url)
        store = pg_store.PostgresStore(dsn, schema=schema, min_size=1, max_size=1)
        try:
            await store.migrate()
            pool = await store._get_pool()
            sent: list[str] = []
            async with pool.acquire() as conn:
                conn.add_query_logger(lambda record: sent.append(record.query))
            await store.kv_set("k", "v", expires_at=None, now=NOW)
            assert await store.kv_get("k", now=NOW) == "v"
            assert sent, "the query logger saw nothing: the test would pass whatever release sent"
            assert not [q for q in sent if "RESET" in q or "UNLISTEN" in q or "unlock_all" in q]
            async with pool.acquire() as conn:
                await conn.execute("BEGIN")
                await conn.execute("CREATE TABLE left_open (x int)")
            async with pool.acquire() as conn:
                assert not conn.is_in_transaction()
                assert await conn.fetchval("SELECT to_regclass('left_open')") is None
        finally:
            await store.close()


async def test_a_postgres_write_opens_with_its_lock_and_sends_its_wake_up_with_the_commit() -> None:
    """BEGIN and the advisory lock go in one round trip, the wake-up in the COMMIT's; the quoted key is the key a
    parameter would give (whatever it holds); a failing operation rolls back and leaves the connection usable."""
    async with pg_schema_url() as url:
        dsn, schema = pg_store.split_url(url)
        store = pg_store.PostgresStore(dsn, schema=schema, min_size=1, max_size=1)
        woken: list[int] = []
        try:
            await store.migrate()
            await store.subscribe(lambda: woken.append(1))
            pool = await store._get_pool()
            sent: list[str] = []
            async with pool.acquire() as conn:
                conn.add_query_logger(lambda record: sent.append(" ".join(record.query.split())))
                for key in ("claim:c0", 'story:it\'s \\ a "story" 故事'):
                    quoted = pg_store._literal(key)
                    assert await conn.fetchval(f"SELECT hashtextextended({quoted}, 0) = hashtextextended($1, 0)", key)
            await store.fan_out(make_story(id="rt"), plan_for("a"), now=NOW)
            [claim] = await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 1})
            assert await store.complete([done(claim)]) == []
            begins = [q for q in sent if q.startswith("BEGIN")]
            assert "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended(E'story:rt', 0))" in begins
            assert "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended(E'claim:a', 0))" in begins
            assert any(q.startswith("SELECT pg_notify(") and q.endswith("COMMIT") for q in sent)
            for _ in range(50):  # the NOTIFY reached the listener, at commit
                if woken:
                    break
                await asyncio.sleep(0.02)
            assert woken

            async def fails(conn: object) -> None:
                await conn.execute(Q.KV_SET, key="k", value="v", expires_at=None, now=NOW)  # type: ignore[attr-defined]
                raise RuntimeError("boom")

            with pytest.raises(RuntimeError, match="boom"):
                await store._write(fails)
            assert await store.kv_get("k", now=NOW) is None
            async with pool.acquire() as conn:
                assert not conn.is_in_transaction()
        finally:
            await store.close()


def test_sqlite_binds_none_as_null_and_bools_as_integers_through_its_registered_adapters() -> None:
    """syndicate.store.sqlite registers adapters for None and bool (they skip sqlite3's failing adapt lookups):
    what is stored must be exactly what sqlite3 binds without them."""
    for kind in (type(None), bool):
        assert sqlite3.adapters.get((kind, sqlite3.PrepareProtocol)) is not None, kind  # registered at import
    conn = sqlite3.connect(":memory:")
    row = conn.execute("SELECT typeof(?), ?, typeof(?), ?, ?", (None, None, True, True, False)).fetchone()
    assert row == ("null", None, "integer", 1, 0)
    assert conn.execute("SELECT typeof(:v)", {"v": None}).fetchone() == ("null",)


async def test_a_claim_that_takes_every_free_slot_marks_its_channel_for_a_claim_without_the_due_probe(
    store: Store,
) -> None:
    """When a claim fills every slot it found free (not every slot it asked for), more work may be due: the next
    claim goes straight to the claim statement, the due probe skipped. One that fills fewer clears the hint."""
    assert isinstance(store, SQLStore)
    for i in range(6):
        await store.fan_out(make_story(id=f"sat{i}"), plan_for("a"), now=NOW)
    # Another worker holds 2 of the channel's 4 slots: this claim's free slots are 2, not the 4 it asks for.
    held = await store.claim("w2", now=NOW, lease_seconds=30, limits={"a": 2})
    taken = await store.claim("w1", now=NOW, lease_seconds=30, limits={"a": 4})
    assert len(held) == 2 and len(taken) == 2 and store._saturated == {"a"}
    # Two left due and all four slots free again: it takes both, fewer than it found, and the hint goes.
    await store.complete([done(c) for c in taken] + [done(c, worker="w2") for c in held])
    others = await store.claim("w2", now=NOW, lease_seconds=30, limits={"a": 4})
    assert len(others) == 2 and store._saturated == set()
