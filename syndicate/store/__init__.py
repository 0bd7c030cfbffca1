"""The durable outbox: one contract (base.py), interchangeable backends chosen by URL."""

from __future__ import annotations

from syndicate.store.base import Store

DATABASE_URL_ENV = "SYNDICATE_DATABASE_URL"


def open_store(url: str) -> Store:
    """The backend for a store URL: ``sqlite:///path.db`` or ``postgresql://user@host:5432/db[?schema=name]``."""
    if url.startswith("sqlite:///"):
        from syndicate.store.sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        from syndicate.store.postgres import PostgresStore

        return PostgresStore.from_url(url)
    raise ValueError(
        f"unsupported store URL {url!r}: expected sqlite:///path/to/file.db or postgresql://user@host:5432/db"
    )
