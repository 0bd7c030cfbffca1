"""Named queries and numbered migrations, read from ``syndicate/store/sql/`` (package data).

A query file holds statements each introduced by ``-- name: <name>`` (procrastinate's ``queries.sql`` style):
``queries.sql`` those both dialects run as written, ``queries_<dialect>.sql`` those that differ.
Parameters are written ``:name`` in every dialect; the dialect's paramstyle decides what the driver sees (SQLite
binds ``:name`` itself; asyncpg wants ``$1, $2 ...``), so the code above the connectors passes values by name and
never counts placeholders. ``{UPPER}`` tokens are constants filled in at load (the state lists, whose only source
is syndicate.store.base); ``{lower}`` tokens are slots a caller fills per call (a filter's WHERE clause).

Migrations are ``migrations/<dialect>/NNNN_<slug>.sql``: the number is the ``schema_migrations.version`` a
database records, so a number, once released, keeps its meaning forever.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from syndicate.store.base import OPEN_STATES, PENDING_STATES, State, StoreError

SQL_PACKAGE = "syndicate.store"
SQL_FOLDER = "sql"


class QueryError(StoreError):
    """A query file, a migration folder or a query call is malformed: a bug in syndicate, not in the data."""


class UnknownQuery(QueryError, KeyError):
    def __init__(self, name: str, source: str) -> None:
        super().__init__(f"no query named {name!r} in {source}")
        self.name, self.source = name, source

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ParamStyle(enum.Enum):
    #: ``:name`` kept as written (sqlite3 binds a mapping by name).
    NAMED = "named"
    #: ``$1, $2 ...`` in order of first use (asyncpg); the names are kept to build the argument tuple.
    NUMERIC = "numeric"


def _state_list(states: Iterable[State]) -> str:
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(states)) + ")"


#: The ``{UPPER}`` constants a query may use. Literal lists rather than parameters: both planners can only use the
#: partial index on pending deliveries when they can see the state list in the statement.
CONSTANTS: Mapping[str, str] = {
    "PENDING_STATES": _state_list(PENDING_STATES),
    "OPEN_STATES": _state_list(OPEN_STATES),
}

_NAME_LINE = re.compile(r"^--\s*name:\s*(?P<name>\S+)\s*$")
_VALID_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# A string literal (skipped), a ``::`` cast (skipped) or a ``:name`` parameter.
_PARAM = re.compile(r"'(?:[^']|'')*'|::|:(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
_TOKEN = re.compile(r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")
_MIGRATION_FILE = re.compile(r"^(?P<version>\d{4})_(?P<slug>[a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Statement:
    """A statement as the driver takes it: the SQL in the dialect's paramstyle and the parameter names in order."""

    sql: str
    params: tuple[str, ...]

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for ``values`` (NUMERIC style); a missing value is an error naming it."""
        try:
            return [values[name] for name in self.params]
        except KeyError as exc:
            raise QueryError(f"no value for parameter :{exc.args[0]} of {self.sql[:80]!r}") from None


@functools.lru_cache(maxsize=512)
def compile_sql(sql: str, style: ParamStyle) -> Statement:
    """``:name`` parameters in the dialect's paramstyle (cached: filters repeat a handful of shapes)."""
    names: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name is None:
            return match.group(0)
        if name not in names:
            names.append(name)
        return match.group(0) if style is ParamStyle.NAMED else f"${names.index(name) + 1}"

    return Statement(_PARAM.sub(replace, sql), tuple(names))


@dataclass(frozen=True)
class Query:
    name: str
    #: The statement as written, constants filled in, ``{slot}`` tokens left for ``render``.
    text: str
    slots: frozenset[str]
    style: ParamStyle

    @functools.cached_property
    def statement(self) -> Statement:
        if self.slots:
            raise QueryError(f"query {self.name!r} has slots {sorted(self.slots)}: render it with their values")
        return compile_sql(self.text, self.style)

    def render(self, **slots: str) -> Statement:
        if set(slots) != self.slots:
            raise QueryError(f"query {self.name!r} takes slots {sorted(self.slots)}, got {sorted(slots)}")
        return compile_sql(_TOKEN.sub(lambda m: slots[m.group("name")], self.text), self.style)


class QuerySet(Mapping[str, Query]):
    """The named queries of one dialect, parsed once."""

    def __init__(self, source: str, queries: Mapping[str, Query]) -> None:
        self.source = source
        self._queries = dict(queries)

    def __getitem__(self, name: str) -> Query:
        try:
            return self._queries[name]
        except KeyError:
            raise UnknownQuery(name, self.source) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)

    def require(self, names: Iterable[str]) -> QuerySet:
        """Fail at import, naming them, when queries the code calls are missing from the file."""
        missing = sorted(set(names) - set(self._queries))
        if missing:
            raise QueryError(f"{self.source} lacks the queries {', '.join(missing)}")
        return self


def parse_queries(text: str, *, source: str, style: ParamStyle) -> QuerySet:
    """Split a query file on its ``-- name:`` lines. Comment lines are dropped (they say why, for the reader)."""
    queries: dict[str, Query] = {}
    name: str | None = None
    body: list[str] = []

    def finish() -> None:
        if name is None:
            if any(line.strip() and not line.lstrip().startswith("--") for line in body):
                raise QueryError(f"{source}: SQL before the first '-- name:' line")
            return
        sql = "\n".join(line for line in body if not line.lstrip().startswith("--")).strip().rstrip(";").strip()
        if not sql:
            raise QueryError(f"{source}: query {name!r} is empty")
        queries[name] = _make_query(name, sql, source=source, style=style)

    for line in text.splitlines():
        match = _NAME_LINE.match(line)
        if match is None:
            body.append(line)
            continue
        finish()
        name, body = match.group("name"), []
        if not _VALID_NAME.match(name):
            raise QueryError(f"{source}: {name!r} is not a valid query name (lower case, digits, underscores)")
        if name in queries:
            raise QueryError(f"{source}: query {name!r} is defined twice")
    finish()
    return QuerySet(source, queries)


def _make_query(name: str, sql: str, *, source: str, style: ParamStyle) -> Query:
    slots: set[str] = set()

    def fill(match: re.Match[str]) -> str:
        token = match.group("name")
        if token.isupper():
            if token not in CONSTANTS:
                raise QueryError(f"{source}: query {name!r} uses the unknown constant {{{token}}}")
            return CONSTANTS[token]
        slots.add(token)
        return match.group(0)

    return Query(name, _TOKEN.sub(fill, sql), frozenset(slots), style)


def _sql_root() -> Path:
    return Path(str(resources.files(SQL_PACKAGE).joinpath(SQL_FOLDER)))


def load_queries(dialect: str, style: ParamStyle, folder: Path | None = None) -> QuerySet:
    """The statements every dialect shares (``queries.sql``) with the dialect's own (``queries_<dialect>.sql``).
    A name in both files is an error: each statement has one home, so a fix cannot reach one dialect only."""
    root = folder if folder is not None else _sql_root()
    shared_path, own_path = root / "queries.sql", root / f"queries_{dialect}.sql"
    shared = parse_queries(shared_path.read_text(encoding="utf-8"), source=f"sql/{shared_path.name}", style=style)
    own = parse_queries(own_path.read_text(encoding="utf-8"), source=f"sql/{own_path.name}", style=style)
    twice = sorted(set(shared) & set(own))
    if twice:
        raise QueryError(f"sql/{own_path.name} defines {', '.join(twice)}, which sql/{shared_path.name} has already")
    return QuerySet(f"sql/{shared_path.name} + sql/{own_path.name}", {**shared, **own})


@dataclass(frozen=True)
class Migration:
    #: What ``schema_migrations.version`` records once it is applied.
    version: int
    name: str
    sql: str


def load_migrations(dialect: str, folder: Path | None = None) -> list[Migration]:
    """The migrations of a dialect in order; numbers must run 1, 2, 3 ... with no gap and no repeat."""
    root = folder if folder is not None else _sql_root() / "migrations" / dialect
    migrations: list[Migration] = []
    for path in sorted(root.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            raise QueryError(f"{path}: a migration is named NNNN_slug.sql")
        migrations.append(Migration(int(match.group("version")), path.stem, path.read_text(encoding="utf-8")))
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise QueryError(f"{root}: migration numbers must run 1, 2, 3 ... without gaps, found {versions}")
    return migrations
