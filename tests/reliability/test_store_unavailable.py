"""A store that cannot write (issue 14, item 8): the disk fills up, the file turns read-only, the database server is
gone. Intake answers 503 with Retry-After and spends no signature, /readyz says not ready and why, the workers wait
for the store instead of dying, and every story that was acknowledged is delivered once the store is back.

SQLite's ``max_page_count`` is the full disk: a write that needs one more page fails with SQLITE_FULL, exactly the
error a full filesystem gives, while the process and its other connections keep running."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from syndicate.config import Settings, parse_config
from syndicate.engine import Engine
from syndicate.sandbox import RunningSandbox
from syndicate.server import STORE_RETRY_AFTER, create_app
from syndicate.signing import SIGNATURE_HEADER, sign
from syndicate.store.base import DeliveryFilter, FanOutPlan, StoreUnavailable
from syndicate.store.postgres import PostgresStore
from syndicate.store.sqlite import SQLiteStore
from tests.support import closed_port, make_story, on_each_sqlite_connection

HOOK_SECRET = "hook-secret-0123456789abcdef"


def settings_for(tmp_path: Path, sandbox_url: str) -> Settings:
    raw = {
        "store": {"url": f"sqlite:///{tmp_path / 'full.db'}"},
        "engine": {"lease_seconds": 5, "poll_interval": 0.05, "retry_jitter": 0},
        "server": {"hook_secret": HOOK_SECRET},
        "channels": {
            "web": {
                "kind": "webhook",
                "url": f"{sandbox_url}/webhook/web",
                "lookup_url": f"{sandbox_url}/webhook/web",
                "secret": "webhook-secret-value",
                "timeout": 2,
                "retry": [0, 0.05, 0.1],
            }
        },
    }
    return parse_config(raw, source="store-unavailable-test.toml", env={})


async def set_page_cap(store: SQLiteStore, pages: int | None) -> None:
    """Cap the database at its current size (``None``: lift the cap), on the store's own connection."""

    def cap(conn: sqlite3.Connection) -> None:
        limit = conn.execute("PRAGMA page_count").fetchone()[0] if pages is None else pages
        conn.execute(f"PRAGMA max_page_count = {int(limit)}")

    await on_each_sqlite_connection(store, cap)


def signed(story: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(story, ensure_ascii=False).encode()
    return body, {"Content-Type": "application/json", SIGNATURE_HEADER: sign(HOOK_SECRET, body)}


def story_json(story_id: str, *, body_chars: int = 40) -> dict[str, Any]:
    return {
        "id": story_id,
        "version": 1,
        "headline": "上海16区融媒体中心全部建成并挂牌",
        "body_html": "<p>" + "融" * body_chars + "</p>",
        "url": f"https://news.example.cn/{story_id}.html",
    }


@pytest.fixture
async def full_disk_service(tmp_path: Path, sandbox: RunningSandbox) -> AsyncIterator[tuple[TestClient, Engine]]:
    settings = settings_for(tmp_path, sandbox.url)
    store = SQLiteStore(tmp_path / "full.db")
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            async with TestClient(TestServer(create_app(settings, engine), host="127.0.0.1")) as client:
                yield client, engine
    finally:
        await store.close()


async def test_a_full_disk_refuses_intake_with_503_and_loses_nothing_acknowledged(
    full_disk_service: tuple[TestClient, Engine], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    client, engine = full_disk_service
    store = engine.store
    assert isinstance(store, SQLiteStore)
    body, headers = signed(story_json("before-full"))
    assert (await client.post("/v1/stories", data=body, headers=headers)).status == 202

    await set_page_cap(store, None)
    # A normal story needs new pages: the disk is full for it.
    big_body, big_headers = signed(story_json("while-full", body_chars=20_000))
    refused = await client.post("/v1/stories", data=big_body, headers=big_headers)
    answer = await refused.json()
    assert refused.status == 503, answer
    assert refused.headers["Retry-After"] == str(STORE_RETRY_AFTER)
    assert answer["error"] == "store_unavailable"
    assert "full" in answer["message"] and str((tmp_path / "full.db").resolve()) in answer["message"]
    assert "free space" in answer["message"]  # the fix, not only the symptom

    ready = await client.get("/readyz")
    reason = (await ready.json())["reason"]
    assert ready.status == 503 and "full" in reason, reason
    assert (await client.get("/healthz")).status == 200  # alive: restarting it would not free the disk

    # The workers meet the full disk too (claims are writes) and wait for it instead of dying.
    stop = asyncio.Event()
    workers = asyncio.create_task(engine.run(stop=stop))
    await asyncio.sleep(0.3)
    assert not workers.done()

    await set_page_cap(store, 1_000_000_000)
    assert (await client.get("/readyz")).status == 200
    # The refused request spent no signature: the CMS's retry of the very same request is accepted.
    again = await client.post("/v1/stories", data=big_body, headers=big_headers)
    assert again.status == 202, await again.json()

    for _ in range(200):
        states = {d.story_id: d.state for d in await store.list_deliveries(DeliveryFilter())}
        if set(states.values()) == {"delivered"} and len(states) == 2:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await workers
    assert states == {"before-full": "delivered", "while-full": "delivered"}
    posted = [r.body["story"]["id"] for r in sandbox.sandbox.received("webhook") if r.method == "POST"]
    assert sorted(posted) == ["before-full", "while-full"]  # each once


async def test_a_read_only_store_names_the_file_and_the_fix(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "ro.db")
    await store.migrate()
    try:
        await on_each_sqlite_connection(store, lambda conn: conn.execute("PRAGMA query_only = 1"))
        with pytest.raises(StoreUnavailable) as refused:
            await store.check_writable(now=1_000.0)
        assert "read-only" in refused.value.reason and str((tmp_path / "ro.db").resolve()) in refused.value.reason
        assert "writable" in refused.value.fix
        # Reads still work: the operator can look at the queue while fixing it.
        assert await store.schema_version() == store.SCHEMA_VERSION
        with pytest.raises(StoreUnavailable):
            await store.fan_out(make_story(id="ro-1"), lambda previous, now: FanOutPlan(), now=1_000.0)
    finally:
        await store.close()


async def test_an_unreachable_database_server_is_unavailable_not_a_crash() -> None:
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{closed_port()}/test")
    try:
        with pytest.raises(StoreUnavailable) as refused:
            await store.check_writable(now=1_000.0)
        assert "cannot be reached" in refused.value.reason and "127.0.0.1" in refused.value.reason
        assert "[store] url" in refused.value.fix
    finally:
        await store.close()
