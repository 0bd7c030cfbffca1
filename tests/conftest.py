"""Fixtures every test folder uses: the scripted adapter's reset, stores (every backend) and the sandbox. The helpers
they build on are in tests/support."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from syndicate.sandbox import RunningSandbox, running_sandbox
from syndicate.store import open_store
from syndicate.store.base import Store
from tests.support import STORE_BACKENDS, ScriptedAdapter, ScriptedReachAdapter, pg_schema_url


@pytest.fixture(autouse=True)
def _reset_scripted() -> None:
    ScriptedAdapter.reset()
    ScriptedReachAdapter.reset()


@pytest.fixture(params=STORE_BACKENDS)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """One URL per backend; the store contract suite runs against each."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'contract.db'}"
        return
    async with pg_schema_url() as url:
        yield url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = open_store(store_url)
    await s.migrate()
    yield s
    await s.close()


@pytest.fixture
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(port=0, seed=7, hold_seconds=3.0) as running:
        yield running


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    """SQLite only, for the engine's decisions on a fake clock (tests/unit/test_engine.py, test_metrics.py,
    tests/reliability/test_engine_guarantees.py): what they check is the engine's logic, which names no backend,
    and they are many and quick; that each backend stores and claims the same is the store contract's job
    (tests/store/, every backend through `store`)."""
    s = open_store(f"sqlite:///{tmp_path / 'syndicate.db'}")
    await s.migrate()
    yield s
    await s.close()
