"""Shared test helpers, the one home of what several test folders use: paths (the repository, ../shared),
stories and settings builders, a scripted adapter, PostgreSQL schemas and the markup audit. Fixtures that use them
live in tests/conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import socket
import sqlite3
import sys
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar, Unpack
from urllib.parse import urlsplit

import pytest

from syndicate.channel import Adapter, AdapterDeps, AdapterOptions, DeliveryContext, adapter_kinds, register
from syndicate.config import Settings, parse_config
from syndicate.delivery import Action, DeliveryError, JsonPayload, Payload, ReachMetric, ReachReading, Receipt
from syndicate.engine import Engine
from syndicate.ninjs import read_document
from syndicate.sandbox import Sandbox, standins
from syndicate.store import open_store
from syndicate.store.base import DeliveryFilter, DeliveryRecord, Store
from syndicate.store.sqlite import SQLiteStore
from syndicate.story import ChannelStory, Story

REPO = Path(__file__).resolve().parents[2]
#: The `syndicate` console script of the running interpreter's environment (the tests run it as a subprocess).
SYNDICATE = str(Path(sys.executable).parent / "syndicate")
#: The repository's example stories (examples/*.json: canonical JSON and ninjs), in name order.
EXAMPLES = sorted((REPO / "examples").glob("*.json"))
#: A base URL nothing listens on (port 9, discard), for configs whose channels never deliver.
NOWHERE = "http://127.0.0.1:9"


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
    #: An owned output whose pages load the reach beacon (as a website with reach_beacon).
    counts_page_reads: bool = False


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
        self.counts_page_reads = options.counts_page_reads

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


class ScriptedReachAdapter(ScriptedAdapter):
    """A scripted channel that also reads reach back: each ``read_reach`` pops the channel's next reach outcome
    (a DeliveryError raised, a ReachReading returned, or None: reads = 10 × the post's age in hours, likes a
    tenth of that, deterministic and growing with age). Every read is logged in ``reach_calls``."""

    kind: ClassVar[str] = "scripted-reach"
    supports_reach: ClassVar[bool] = True  # type: ignore[misc]
    reach_scripts: ClassVar[dict[str, list[DeliveryError | ReachReading | None]]] = {}
    reach_calls: ClassVar[list[tuple[str, str, str | None]]] = []

    @classmethod
    def reset(cls) -> None:
        super().reset()
        cls.reach_scripts.clear()
        cls.reach_calls.clear()

    async def read_reach(self, ctx: DeliveryContext) -> ReachReading:
        remote_id = ctx.receipt.remote_id if ctx.receipt else None
        self.reach_calls.append((self.name, ctx.story_id, remote_id))
        script = self.reach_scripts.get(self.name, [])
        outcome = script.pop(0) if script else None
        if isinstance(outcome, DeliveryError):
            raise outcome
        if outcome is not None:
            return outcome
        hours = int(max(self.clock() - (ctx.queued_at or 0.0), 0.0) // 3600)
        return ReachReading(
            {ReachMetric.READS: 10 * hours, ReachMetric.LIKES: hours}, raw={"views": 10 * hours, "hearts": hours}
        )


register(ScriptedReachAdapter)


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


# --- stories, contexts, ports -----------------------------------------------------------------------------------


def example_stories() -> list[Story]:
    """The stories of examples/*.json, in file name order."""
    return [read_document(json.loads(path.read_text(encoding="utf-8"))) for path in EXAMPLES]


def ctx_for(
    story_id: str = "story-1",
    version: int = 1,
    channel: str = "test",
    action: Action = Action.PUBLISH,
    *,
    state: dict[str, Any] | None = None,
    receipt: Receipt | None = None,
    attempt: int = 1,
    queued_at: float | None = None,
) -> DeliveryContext:
    """A delivery context for calling an adapter directly: checkpoints are kept in memory (``saved`` on the
    context), the key/value store is a dict of its own."""
    saved: list[dict[str, Any]] = []
    kv: dict[str, str] = {}

    async def save_checkpoint(data: dict[str, Any]) -> None:
        saved.append(data)

    async def kv_get(key: str) -> str | None:
        return kv.get(key)

    async def kv_set(key: str, value: str, expires_at: float | None) -> None:
        kv[key] = value

    ctx = DeliveryContext(
        delivery_id=1,
        story_id=story_id,
        version=version,
        channel=channel,
        action=action,
        attempt=attempt,
        queued_at=queued_at,
        state=state or {},
        receipt=receipt,
        save_checkpoint=save_checkpoint,
        kv_get=kv_get,
        kv_set=kv_set,
    )
    ctx.saved = saved  # type: ignore[attr-defined]
    return ctx


AdapterT = TypeVar("AdapterT", bound=Adapter)


async def started(adapter: AdapterT) -> AdapterT:
    """``adapter`` with its long-lived resources open (whoever made it closes it)."""
    await adapter.start()
    return adapter


async def on_each_sqlite_connection(store: SQLiteStore, fn: Callable[[sqlite3.Connection], object]) -> None:
    """Apply a per-connection setting (a PRAGMA) to both of the SQLite store's connections: the store thread's and
    the event loop's (opened here by a brief read if it is not open yet)."""
    await store.schema_version()
    await store._run(fn)
    if store._inline is not None:
        fn(store._inline)


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released): connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the engine, in process and as `syndicate work` -------------------------------------------------------------


class EngineRun(NamedTuple):
    deliveries: list[DeliveryRecord]
    #: Delivery id -> the outcome of each of its attempts, in order.
    outcomes: dict[int, list[str | None]]


async def run_engine(settings: Settings, *phases: Sequence[Story]) -> EngineRun:
    """Accept each phase's stories and deliver until idle before the next phase, on the store ``settings`` names;
    the deliveries and the attempt outcomes at the end."""
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            for stories in phases:
                for story in stories:
                    await engine.accept(story)
                await engine.run(until_idle=True, idle_horizon=5)
        deliveries = await store.list_deliveries(DeliveryFilter())
        outcomes = {d.id: [a.outcome for a in await store.attempts(d.id)] for d in deliveries}
        return EngineRun(deliveries, outcomes)
    finally:
        await store.close()


def engine_for(tmp_path: Path, store: Store, channels: dict[str, Any], clock: FakeClock | None = None) -> Engine:
    """An Engine on ``store`` whose adapters see the media settings and, with a fake clock, its time."""
    settings = make_settings(tmp_path, channels)
    engine = Engine(settings, store, clock=clock)
    for runtime in engine.channels.values():
        runtime.adapter.media_settings = settings.media  # type: ignore[attr-defined]
        if clock is not None:
            runtime.adapter.clock = clock.now  # type: ignore[attr-defined]
    return engine


async def start_worker(config: Path, log: Path, *args: str) -> asyncio.subprocess.Process:
    """`syndicate work` on ``config`` as a child process, JSON logs appended to ``log``."""
    handle = log.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            SYNDICATE, "--log-format", "json", "work", *args, "--config", str(config), stdout=handle, stderr=handle
        )
    finally:
        handle.close()


def child_pids(pid: int) -> set[int]:
    """The pids of ``pid``'s children now, from /proc (Linux): every thread's ``children`` list."""
    found: set[int] = set()
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            found.update(int(p) for p in listing.read_text().split())
    return found


def process_gone(pid: int) -> bool:
    """True once ``pid`` has ended: no such process, or a zombie waiting for whoever adopted it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


# --- the `syndicate` script ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_") and k != "FORCE_COLOR"}
    env.update(TERM="dumb", NO_COLOR="1", **(extra or {}))
    return env


async def run_cli(
    *args: str | Path, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None, max_seconds: float = 30
) -> Run:
    proc = await asyncio.create_subprocess_exec(
        SYNDICATE,
        *map(str, args),
        cwd=cwd,
        env=cli_env(env),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(None if stdin is None else stdin.encode()), max_seconds)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


# --- config files ------------------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def toml_text(raw: Mapping[str, Any]) -> str:
    """A config as TOML: top-level tables (``[store]``), ``[channels.NAME]`` per channel, inner tables inline; one
    blank line between tables."""
    sections: list[tuple[str, Mapping[str, Any]]] = []
    for table, body in raw.items():
        if table == "channels":
            sections += [(f"channels.{_toml_key(name)}", options) for name, options in body.items()]
        else:
            sections.append((table, body))
    return "\n".join(
        f"[{header}]\n" + "".join(f"{_toml_key(key)} = {_toml_value(value)}\n" for key, value in body.items())
        for header, body in sections
    )


#: The webhook receivers `write_config` configures by default.
CHANNELS = ("alpha", "beta")


def write_config(
    tmp_path: Path,
    base_url: str = NOWHERE,
    *,
    channels: Sequence[str] | Mapping[str, Mapping[str, Any]] = CHANNELS,
    retry: Sequence[float] = (0, 0.1, 0.1),
    concurrency: int = 4,
    timeout: float = 2,
    secret: str = "test-secret",
    store_url: str | None = None,
    engine: Mapping[str, Any] | None = None,
    extra: str = "",
    name: str = "syndicate.toml",
) -> Path:
    """A config file of webhook channels on the sandbox's receivers (``<base_url>/webhook/<channel>``), SQLite in
    ``tmp_path`` unless ``store_url`` says otherwise. ``channels`` maps a name to its own keys where they differ;
    ``extra`` is appended as is (it lands in the last channel's table)."""
    tables = channels if isinstance(channels, Mapping) else {channel: {} for channel in channels}
    raw: dict[str, Any] = {
        "store": {"url": store_url or f"sqlite:///{tmp_path}/s.db"},
        "media": {"cache_dir": tmp_path / "media"},
        "engine": {"lease_seconds": 5, "poll_interval": 0.05, **(engine or {})},
        "channels": {
            channel: {
                "kind": "webhook",
                "url": f"{base_url}/webhook/{channel}",
                "lookup_url": f"{base_url}/webhook/{channel}",
                "secret": secret,
                "retry": list(retry),
                "timeout": timeout,
                "concurrency": concurrency,
                **own,
            }
            for channel, own in tables.items()
        },
    }
    path = tmp_path / name
    path.write_text(toml_text(raw) + extra, encoding="utf-8")
    return path


# --- every registered channel kind, configured from the repository's own example ---------------------------------

#: config/channels.example.toml documents every channel kind with every key: the contract test, the soak and the
#: security sweep configure their channels from it, so a new kind is covered once it is documented there.
CHANNELS_EXAMPLE = REPO / "config" / "channels.example.toml"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")
#: The option names of the endpoints a channel talks to (public links such as base_url or share_base_url stay).
ENDPOINT_OPTIONS = frozenset({"url", "lookup_url", "api_base"})
#: The option names whose values are secrets (the README's masking rule: secret, token, password, credential, key;
#: and a header carrying credentials).
SECRET_OPTION = re.compile(r"secret|token|passw|credential|key|authorization", re.IGNORECASE)


def registered_kinds() -> dict[str, type[Adapter]]:
    """Every channel kind the registry knows (``syndicate.channel.adapter_kinds``: the installed entry points),
    without the test doubles the tests register at run time (``scripted`` and the like, defined under tests/)."""
    return {kind: cls for kind, cls in adapter_kinds().items() if not cls.__module__.startswith("tests.")}


def distinctive(var: str) -> str:
    """A value for ``${var}`` that shows up wherever it leaks, and only there: hex from the name's hash (no piece of
    it reads like a word that a log could say), with '+' and '/' so its URL encodings differ from it."""
    digest = hashlib.sha256(var.encode()).hexdigest()
    return f"{digest[:8]}+/{digest[8:20]}"


@dataclass(frozen=True)
class ExampleChannels:
    #: Channel name -> its table from the example, ``${VAR}`` references kept, URLs and roots rewritten.
    tables: dict[str, dict[str, Any]]
    #: Every ``${VAR}`` the tables reference -> the distinctive value the environment gives it.
    env: dict[str, str]
    #: The values of the secret-named options (what must never show in a payload, a log or an answer).
    secrets: dict[str, str]

    def kinds(self) -> set[str]:
        return {table["kind"] for table in self.tables.values()}

    def first_of_each_kind(self) -> dict[str, dict[str, Any]]:
        """One channel per kind (the first the example documents), by channel name."""
        seen: dict[str, str] = {}
        for name, table in self.tables.items():
            seen.setdefault(table["kind"], name)
        return {name: self.tables[name] for name in seen.values()}


def _rebase(url: str, base: str) -> str:
    parts = urlsplit(url)
    path = parts.path if parts.path not in ("", "/") else ""
    return base.rstrip("/") + path + (f"?{parts.query}" if parts.query else "")


def example_channels(tmp_path: Path, remote_base: str) -> ExampleChannels:
    """The channels of config/channels.example.toml: every http(s) endpoint the adapter talks to rebased onto
    ``remote_base`` (the sandbox, whose stand-ins serve each platform's paths at its root, or a refused port),
    every folder option (a ``Path`` field of the kind's options model) under ``tmp_path``, and every ``${VAR}``
    given a distinctive value."""
    raw = tomllib.loads(CHANNELS_EXAMPLE.read_text(encoding="utf-8"))
    kinds = adapter_kinds()
    tables: dict[str, dict[str, Any]] = {}
    env: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for name, table in raw.get("channels", {}).items():
        table = dict(table)
        model = kinds[table["kind"]].options_model
        for key, value in list(table.items()):
            field_info = model.model_fields.get(key)
            annotation = str(field_info.annotation) if field_info is not None else ""
            if isinstance(value, str) and "Path" in annotation:  # a folder the channel writes
                folder = tmp_path / name / key
                folder.mkdir(parents=True, exist_ok=True)
                table[key] = str(folder)
            elif key in ENDPOINT_OPTIONS and isinstance(value, str) and value.startswith(("http://", "https://")):
                table[key] = _rebase(value, remote_base)
            # A table option (headers) is searched key by key: an Authorization header carries a credential.
            for where, text in _option_texts(key, value):
                for var in _ENV_REF.findall(text):
                    env[var] = distinctive(var)
                    if SECRET_OPTION.search(where):
                        secrets[f"{name}.{where}"] = env[var]
        tables[name] = table
    return ExampleChannels(tables, env, secrets)


def _option_texts(key: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(key, value)]
    if isinstance(value, dict):
        return [(f"{key}.{k}", v) for k, v in value.items() if isinstance(v, str)]
    return []


#: What the example sets for production that would make a test wait for hours (quiet hours, hour-long pauses and
#: reconcile windows), per kind: ``None`` removes the key. Speed-ups only: a kind not named here runs as documented.
WITHOUT_WAITS: dict[str, dict[str, Any]] = {
    "app": {"quiet_hours": None},
    "wechat": {"reconcile_window": 5},
    "weibo": {"rate_limit_pause": 1},
}


def standin_channels(tmp_path: Path, base: str, *, suffix: str = "") -> ExampleChannels:
    """One channel of every registered kind, the first the example documents, named after its kind (plus
    ``suffix``): each platform kind pointed at its stand-in served at ``base`` (``Standin.point``: the platform's
    paths, and a content API of its own per channel), each file kind writing under ``tmp_path``, and the waits of
    ``WITHOUT_WAITS`` taken out. From the registries, never a list: a kind is in once registered and documented."""
    example = example_channels(tmp_path / f"channels{suffix}", base)
    found = standins()
    tables: dict[str, dict[str, Any]] = {}
    secrets: dict[str, str] = {}
    for documented, table in example.first_of_each_kind().items():
        kind = table["kind"]
        name = f"{kind}{suffix}"
        table = found[kind].point(base, name, table) if kind in found else dict(table)
        for key, value in WITHOUT_WAITS.get(kind, {}).items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        tables[name] = table
        for where, secret in example.secrets.items():
            owner, option = where.split(".", 1)
            if owner == documented:
                secrets[f"{name}.{option}"] = secret
    return ExampleChannels(tables, example.env, secrets)


def with_env(value: Any, env: Mapping[str, str]) -> Any:
    """``value`` (a table, a list or a string) with every ``${VAR}`` replaced by its value in ``env``."""
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: env[m.group(1)], value)
    if isinstance(value, dict):
        return {k: with_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [with_env(v, env) for v in value]
    return value


def accept_credentials(sandbox: Sandbox, settings: Settings) -> None:
    """Make every stand-in accept the credentials of each configured channel of its kind (``Standin.accept``)."""
    found = standins()
    for name, channel in settings.channels.items():
        if channel.kind in found:
            found[channel.kind].accept(sandbox, name, channel.options.model_dump())


def sample_stories() -> list[Story]:
    """The stories the tests read elsewhere: examples/*.json and the official ninjs 2.2 examples
    (../shared/standards; skipped outside CI when that folder is absent)."""
    ninjs = shared_path("standards", "ninjs-2.2-examples")
    official = [read_document(json.loads(p.read_text("utf-8"))) for p in sorted(ninjs.glob("*.json"))]
    return [*example_stories(), *official]
