"""Shared fixtures: stories, a scripted adapter, settings builders, stores (every backend) and the sandbox."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar, Unpack

import pytest

from syndicate.channel import Adapter, AdapterDeps, AdapterOptions, DeliveryContext, register
from syndicate.config import Settings, parse_config
from syndicate.delivery import Action, DeliveryError, JsonPayload, Payload, Receipt
from syndicate.sandbox import RunningSandbox, running_sandbox
from syndicate.store import open_store
from syndicate.store.base import Store
from syndicate.story import ChannelStory, Story

REPO = Path(__file__).resolve().parents[1]


def _find_shared() -> Path:
    """The shared standards folder: $SYNDICATE_SHARED_DIR, else the nearest `shared/` beside an ancestor."""
    env = os.environ.get("SYNDICATE_SHARED_DIR")
    if env:
        return Path(env)
    for parent in REPO.parents:
        if (parent / "shared" / "standards").is_dir():
            return parent / "shared"
    return REPO.parent / "shared"


SHARED = _find_shared()


def shared_path(*parts: str) -> Path:
    """A file under ../shared; skip (outside CI only) when that folder is absent, fail in CI."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing: CI must provide the shared folder (or set SYNDICATE_SHARED_DIR)")
        pytest.skip(f"{path} not found: the shared folder sits beside the repository (or set SYNDICATE_SHARED_DIR)")
    return path


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class ScriptedOptions(AdapterOptions):
    idempotent: bool = False
    lookup: bool = False


class ScriptedAdapter(Adapter):
    """A test channel whose outcomes a test scripts per channel name: each call pops the next outcome.

    An outcome is a DeliveryError instance (raised) or None (success). Every call is logged in ``calls``; the
    ``landed`` set models the platform's state so ``lookup`` answers truthfully.
    """

    kind: ClassVar[str] = "scripted"
    options_model = ScriptedOptions
    actions: ClassVar[frozenset[Action]] = frozenset(Action)
    scripts: ClassVar[dict[str, list[DeliveryError | None]]] = {}
    calls: ClassVar[list[tuple[str, str, str]]] = []
    landed: ClassVar[dict[str, Receipt]] = {}
    refreshes: ClassVar[list[str]] = []

    def __init__(self, name: str, options: ScriptedOptions, **deps: Unpack[AdapterDeps]) -> None:
        super().__init__(name, options, **deps)
        self.idempotent = options.idempotent  # type: ignore[misc]
        self.supports_lookup = options.lookup

    @classmethod
    def reset(cls) -> None:
        cls.scripts.clear()
        cls.calls.clear()
        cls.landed.clear()
        cls.refreshes.clear()

    def format(self, story: ChannelStory, action: Action) -> JsonPayload:
        return Payload(data={"headline": story.headline, "action": action.value, "version": story.version})

    async def _call(self, payload: Payload, ctx: DeliveryContext) -> Receipt:
        self.calls.append((self.name, ctx.action.value, ctx.idempotency_key))
        script = self.scripts.get(self.name, [])
        outcome = script.pop(0) if script else None
        if outcome is not None:
            raise outcome
        receipt = Receipt(remote_id=f"{self.name}-{len(self.calls)}", url=None, raw={"key": ctx.idempotency_key})
        self.landed[ctx.idempotency_key] = receipt
        return receipt

    async def publish(self, payload: Payload, ctx: DeliveryContext) -> Receipt:
        return await self._call(payload, ctx)

    async def update(self, payload: Payload, ctx: DeliveryContext) -> Receipt:
        return await self._call(payload, ctx)

    async def retract(self, payload: Payload, ctx: DeliveryContext) -> Receipt:
        return await self._call(payload, ctx)

    async def lookup(self, payload: Payload, ctx: DeliveryContext) -> Receipt | None:
        self.calls.append((self.name, "lookup", ctx.idempotency_key))
        return self.landed.get(ctx.idempotency_key)

    async def refresh_auth(self, ctx: DeliveryContext) -> None:
        self.refreshes.append(self.name)


register(ScriptedAdapter)


@pytest.fixture(autouse=True)
def _reset_scripted() -> None:
    ScriptedAdapter.reset()


def make_story(**overrides: Any) -> Story:
    base: dict[str, Any] = {
        "id": "story-1",
        "version": 1,
        "headline": "上海16区融媒体中心全部建成并挂牌",
        "summary": "上海分两批、共16个区级融媒体中心已全部建成并挂牌。",
        "body_html": "<p>宝山、闵行两个区级融媒体中心正式挂牌。</p>",
        "url": "https://news.example.cn/shanghai/story-1.html",
    }
    base.update(overrides)
    return Story.from_dict(base)


def make_settings(
    tmp_path: Path,
    channels: dict[str, dict[str, Any]],
    *,
    engine: dict[str, Any] | None = None,
    store_url: str | None = None,
    media: dict[str, Any] | None = None,
) -> Settings:
    raw: dict[str, Any] = {
        "store": {"url": store_url or f"sqlite:///{tmp_path / 'syndicate.db'}"},
        "media": {"allow_private": True, "cache_dir": str(tmp_path / "media"), **(media or {})},
        "engine": {"lease_seconds": 5, "poll_interval": 0.05, "retry_jitter": 0, **(engine or {})},
        "channels": channels,
    }
    return parse_config(raw, source="test.toml", env={})


def scripted(**kw: Any) -> dict[str, Any]:
    return {"kind": "scripted", "retry": [0, 5, 300, 1800], "timeout": 5, **kw}


STORE_BACKENDS = ["sqlite", "postgres"]
PG_DSN = os.environ.get("SYNDICATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def _pg_reachable() -> str | None:
    import asyncpg

    try:
        conn = await asyncpg.connect(PG_DSN, timeout=5)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


@contextlib.asynccontextmanager
async def pg_schema_url() -> AsyncIterator[str]:
    """A PostgreSQL store URL in a schema of its own, dropped afterwards (each test run isolated)."""
    import asyncpg

    problem = await _pg_reachable()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {PG_DSN} is required in CI: {problem}")
        pytest.skip(f"PostgreSQL at {PG_DSN} is unreachable ({problem}); set SYNDICATE_TEST_PG_DSN")
    schema = f"syn_test_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in PG_DSN else "?"
    try:
        yield f"{PG_DSN}{sep}schema={schema}"
    finally:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


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


StoryFactory = Callable[..., Story]


# --- markup audit: what a browser would execute (the XSS tests of owned outputs and of the dashboard) -------------

DANGEROUS_TAGS = frozenset({"script", "iframe", "svg", "math", "style", "object", "embed", "frame", "frameset", "base"})
#: Attributes a browser follows or loads as a URL: a javascript: (or vbscript:, data:text/html) value runs script.
URL_ATTRIBUTES = frozenset(
    {"href", "src", "action", "formaction", "xlink:href", "poster", "background", "data", "srcset", "lowsrc", "ping"}
)
SCRIPT_SCHEMES = ("javascript:", "vbscript:", "data:text/html")


def _as_browser_reads_it(value: str) -> str:
    """A URL as a browser parses its scheme: whitespace and control characters anywhere in it do not count."""
    return "".join(ch for ch in value if ch > " " and ch != "\x7f").lower()


class MarkupAudit(HTMLParser):
    """Collects what a browser would execute (``found``) and what it would show (``text``, ``attribute_values``).

    Character references are decoded first (``convert_charrefs``), as a browser does, so ``jav&#x61;script:`` or
    ``&lt;script&gt;`` are judged by what they become: the former is a script URL, the latter harmless text.
    ``allowed_script_src`` exempts the page's own external script (a ``src`` under that prefix, no inline code) and
    ``allowed_tags`` a page's own elements (the dashboard's chart is an ``<svg>``).
    """

    def __init__(self, *, allowed_script_src: str | None = None, allowed_tags: frozenset[str] = frozenset()) -> None:
        super().__init__(convert_charrefs=True)
        self.allowed_script_src = allowed_script_src
        self.allowed_tags = allowed_tags
        self.found: list[str] = []
        self.text: list[str] = []
        self.attribute_values: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            src = values.get("src") or ""
            own = self.allowed_script_src is not None and src.startswith(self.allowed_script_src)
            self._in_script = True
            if not own:
                self.found.append(f"<script src={src!r}>")
        elif tag in DANGEROUS_TAGS and tag not in self.allowed_tags:
            self.found.append(f"<{tag}>")
        if tag == "meta" and (values.get("http-equiv") or "").lower() == "refresh":
            target = _as_browser_reads_it(values.get("content") or "").partition("url=")[2]
            if target.startswith(SCRIPT_SCHEMES):
                self.found.append(f"meta refresh to {target}")
        for name, value in attrs:
            if name.startswith("on"):
                self.found.append(f"{tag}[{name}]")
            if value is None:
                continue
            self.attribute_values.append(value)
            if name in URL_ATTRIBUTES and _as_browser_reads_it(value).startswith(SCRIPT_SCHEMES):
                self.found.append(f"{tag}[{name}={value}]")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append(f"inline script {data.strip()[:60]!r}")
        self.text.append(data)

    def shows(self, text: str) -> bool:
        """``text`` is visible as text (or an attribute's text, such as alt), whitespace aside."""
        wanted = " ".join(text.split())
        return wanted in " ".join("".join(self.text).split()) or any(
            wanted in " ".join(value.split()) for value in self.attribute_values
        )


def audit_markup(markup: str, **kw: Any) -> MarkupAudit:
    audit = MarkupAudit(**kw)
    audit.feed(markup)
    audit.close()
    return audit


def assert_clean(markup: str, where: str, **kw: Any) -> MarkupAudit:
    """Nothing executable: text that merely shows angle brackets (escaped) is fine, live markup is not."""
    audit = audit_markup(markup, **kw)
    assert audit.found == [], f"executable markup survived in {where}: {audit.found}"
    return audit
