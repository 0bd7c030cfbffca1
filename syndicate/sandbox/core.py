"""The sandbox framework: recording, fault injection, stats, the ``/_sandbox/*`` control API and sample media.

Every stand-in platform (``adapters/<kind>/standin.py``) wraps its aiohttp
handlers with ``Sandbox.handler``. That one wrapper is where faults fire, concurrency is counted and the
request becomes visible to tests, so every platform fails in the same scriptable ways and none
re-implements the plumbing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import web

MEDIA_DIR = Path(__file__).with_name("media")
MEDIA_TYPES: dict[str, str] = {
    ".png": "image/png",
    ".gif": "image/gif",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}

IDEMPOTENCY_HEADER = "Idempotency-Key"


# ---- records


@dataclass(frozen=True)
class ReceivedRequest:
    """One request a platform processed, as a test would want to assert on it."""

    platform: str
    receiver: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    idempotency_key: str | None
    at: float

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup (the recorded dict keeps the client's spelling)."""
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "receiver": self.receiver,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.body,
            "idempotency_key": self.idempotency_key,
            "at": self.at,
        }


class FaultRuleError(ValueError):
    """A fault rule is malformed; ``field`` names the offending field (e.g. ``rules[0].fault``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def under(self, prefix: str) -> FaultRuleError:
        """The same error, re-addressed relative to an enclosing field (``fault`` -> ``rules[2].fault``)."""
        return FaultRuleError(f"{prefix}.{self.field}" if self.field else prefix, self.message)


def _parse_fault(fault: str) -> tuple[str, float | None]:
    """Split ``kind:arg`` and validate it; raises FaultRuleError addressed to ``fault``."""
    kind, sep, arg = fault.strip().partition(":")
    if kind not in FaultRule.KINDS:
        raise FaultRuleError("fault", f"unknown fault {fault!r}; expected one of {', '.join(FaultRule.FORMS)}")
    if kind in FaultRule.NO_ARG:
        if sep:
            raise FaultRuleError("fault", f"{kind!r} takes no argument")
        return kind, None
    try:
        value = float(arg) if kind == "slow" else int(arg)
    except ValueError:
        raise FaultRuleError("fault", f"{fault!r}: expected {FaultRule.FORMS[kind]}") from None
    if kind in ("status", "status_after") and not 200 <= value <= 599:
        raise FaultRuleError("fault", f"{fault!r}: status must be 200..599")
    if kind in ("rate_limit", "slow") and (value < 0 or not math.isfinite(value)):
        raise FaultRuleError("fault", f"{fault!r}: must be a non-negative number")
    return kind, value


@dataclass(frozen=True)
class FaultRule:
    """One fault to inject: ``fault`` fires with ``probability`` for matching methods / receiver names.

    ``methods`` None means every method, ``name`` None every receiver. Validated on construction, so a rule
    that exists is a rule that works.
    """

    fault: str
    probability: float = 1.0
    methods: tuple[str, ...] | None = None
    name: str | None = None

    FORMS: ClassVar[dict[str, str]] = {
        "status": "status:<code>",
        "status_after": "status_after:<code>",
        "rate_limit": "rate_limit:<seconds>",
        "timeout_before": "timeout_before",
        "timeout_after": "timeout_after",
        "reset": "reset",
        "slow": "slow:<ms>",
    }
    KINDS: ClassVar[frozenset[str]] = frozenset(FORMS)
    NO_ARG: ClassVar[frozenset[str]] = frozenset({"timeout_before", "timeout_after", "reset"})
    FIELDS: ClassVar[frozenset[str]] = frozenset({"fault", "probability", "methods", "name"})

    def __post_init__(self) -> None:
        if not isinstance(self.fault, str):
            raise FaultRuleError("fault", "must be a string")
        _parse_fault(self.fault)
        object.__setattr__(self, "fault", self.fault.strip())
        p = self.probability
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise FaultRuleError("probability", "must be a number between 0 and 1")
        object.__setattr__(self, "probability", float(p))
        if self.methods is not None:
            methods = self.methods
            if isinstance(methods, str) or not isinstance(methods, Iterable):
                raise FaultRuleError("methods", "must be a list of HTTP method names")
            methods = tuple(methods)
            if not methods or not all(isinstance(m, str) and m.strip() for m in methods):
                raise FaultRuleError("methods", "must be a non-empty list of HTTP method names")
            object.__setattr__(self, "methods", tuple(m.strip().upper() for m in methods))
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise FaultRuleError("name", "must be a non-empty string")

    @property
    def kind(self) -> str:
        return _parse_fault(self.fault)[0]

    @property
    def arg(self) -> float | None:
        return _parse_fault(self.fault)[1]

    def matches(self, method: str, receiver: str) -> bool:
        return (self.methods is None or method.upper() in self.methods) and self.name in (None, receiver)

    @classmethod
    def from_json(cls, data: Any) -> FaultRule:
        """Build from the control API's JSON; errors name the field relative to the rule."""
        if not isinstance(data, Mapping):
            raise FaultRuleError("", "must be an object")
        for key in data:
            if key not in cls.FIELDS:
                raise FaultRuleError(str(key), f"unknown field; expected {', '.join(sorted(cls.FIELDS))}")
        if "fault" not in data:
            raise FaultRuleError("fault", "is required")
        return cls(
            fault=data["fault"],
            probability=data.get("probability", 1.0),
            methods=data.get("methods"),
            name=data.get("name"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "probability": self.probability,
            "methods": list(self.methods) if self.methods is not None else None,
            "name": self.name,
        }


@dataclass
class ReceiverStats:
    """Counters for one receiver since the last clear. ``processed`` = reached the platform handler."""

    requests: int = 0
    processed: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    peak_concurrency: int = 0
    in_flight: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "processed": self.processed,
            "faults": dict(self.faults),
            "peak_concurrency": self.peak_concurrency,
            "in_flight": self.in_flight,
        }


# ---- helpers


def json_error(
    status: int, error: str, message: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    """The one error body shape every stand-in uses: ``{"error": code, "message": ..., **extra}``."""
    if status in (204, 205, 304):  # these statuses cannot carry a body
        return web.Response(status=status, headers=headers)
    return web.json_response({"error": error, "message": message, **extra}, status=status, headers=headers)


def bad_request(error: str, message: str, **extra: Any) -> web.HTTPBadRequest:
    """A raisable 400 with a JSON body, for platform handlers that reject their input."""
    return web.HTTPBadRequest(
        text=json.dumps({"error": error, "message": message, **extra}), content_type="application/json"
    )


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or raise a JSON 400 (platforms reject garbage, so the sandbox does too)."""
    raw = await request.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request("invalid_json", f"request body is not valid JSON: {exc}") from None


async def read_form(request: web.Request) -> dict[str, Any]:
    """Form fields (urlencoded or multipart) as a dict; repeated fields become lists, files a summary."""
    form = await request.post()
    out: dict[str, Any] = {}
    value: object  # a field's text, or the summary that replaces a file
    for key, value in form.items():
        if isinstance(value, web.FileField):
            data = value.file.read()
            value = {"filename": value.filename, "content_type": value.content_type, "size": len(data)}
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[key] = value
    return out


def _abort_connection(request: web.Request) -> None:
    """Drop the TCP connection with an RST (SO_LINGER 0) so the client sees a genuine connection reset."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


# ---- sandbox

Receiver = str | Callable[[web.Request], str]
PlatformHandler = Callable[[web.Request, "Call"], Awaitable[web.StreamResponse]]
AiohttpHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Call:
    """What a platform handler gets besides the request: who it is, and how to record what it accepted."""

    sandbox: Sandbox
    platform: str
    receiver: str
    request: web.Request

    @property
    def idempotency_key(self) -> str | None:
        return self.request.headers.get(IDEMPOTENCY_HEADER)

    @property
    def store(self) -> dict[str, Any]:
        """This platform's remote state (receipts, posts...): survives ``clear()``, wiped by ``reset()``."""
        return self.sandbox.store(self.platform)

    def next_id(self, prefix: str) -> str:
        return self.sandbox.next_id(prefix)

    def record(self, body: Any, *, idempotency_key: str | None = None) -> ReceivedRequest:
        """Record this request as processed; ``body`` is whatever the platform parsed (JSON or form dict)."""
        req = self.request
        entry = ReceivedRequest(
            platform=self.platform,
            receiver=self.receiver,
            method=req.method,
            path=req.path,
            query=dict(req.query),
            headers=dict(req.headers),
            body=body,
            idempotency_key=idempotency_key if idempotency_key is not None else self.idempotency_key,
            at=time.time(),
        )
        self.sandbox._received.append(entry)
        return entry


class Sandbox:
    """All mutable sandbox state: recordings, fault rules, stats, per-platform remote state.

    ``seed`` makes fault probabilities reproducible; ``hold_seconds`` is how long ``timeout_before`` /
    ``timeout_after`` keep a request hanging (short in tests, long enough to trip client timeouts in demos).
    """

    def __init__(self, seed: int | None = None, hold_seconds: float = 30.0) -> None:
        if hold_seconds < 0:
            raise ValueError("hold_seconds must be >= 0")
        self.random = random.Random(seed)
        self.hold_seconds = float(hold_seconds)
        self.platforms: set[str] = set()
        self._received: list[ReceivedRequest] = []
        self._faults: dict[str, list[FaultRule]] = {}
        self._stats: dict[str, dict[str, ReceiverStats]] = {}
        self._stores: dict[str, dict[str, Any]] = {}
        self._counters: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: asyncio.Event | None = None

    # ---- recording & stats

    def received(self, platform: str | None = None, receiver: str | None = None) -> list[ReceivedRequest]:
        """Processed requests in arrival order, optionally for one platform / receiver."""
        return [
            r
            for r in self._received
            if (platform is None or r.platform == platform) and (receiver is None or r.receiver == receiver)
        ]

    def stats(self, platform: str) -> dict[str, ReceiverStats]:
        """Per-receiver counters for one platform (copies: later requests do not change them)."""
        return {name: _copy_stats(s) for name, s in self._stats.get(platform, {}).items()}

    def all_stats(self) -> dict[str, dict[str, ReceiverStats]]:
        return {platform: self.stats(platform) for platform in self._stats}

    def clear(self, platform: str | None = None) -> int:
        """Forget recordings and reset stats (all, or one platform); returns how many recordings went.

        Requests still in flight keep being counted: their ``in_flight`` stays and becomes the new peak.
        """
        before = len(self._received)
        self._received = [r for r in self._received if platform is not None and r.platform != platform]
        for name in [platform] if platform is not None else list(self._stats):
            receivers = self._stats.get(name, {})
            for receiver, s in list(receivers.items()):
                if s.in_flight == 0:
                    del receivers[receiver]
                else:
                    s.requests = s.processed = 0
                    s.faults = {}
                    s.peak_concurrency = s.in_flight
        return before - len(self._received)

    def reset(self) -> None:
        """Back to a fresh sandbox: recordings, stats, faults and platform state (ids keep counting up)."""
        self.clear()
        self._faults.clear()
        for store in self._stores.values():
            store.clear()

    def store(self, platform: str) -> dict[str, Any]:
        """Free-form remote state a platform keeps between requests (e.g. idempotency receipts)."""
        return self._stores.setdefault(platform, {})

    def next_id(self, prefix: str) -> str:
        """A fresh remote id ``<prefix>-<n>``, unique for this sandbox's lifetime."""
        n = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = n
        return f"{prefix}-{n}"

    # ---- faults

    def set_faults(self, platform: str, rules: Iterable[FaultRule | Mapping[str, Any]]) -> list[FaultRule]:
        """Replace a platform's fault rules; raises FaultRuleError naming the bad field (``rules[i].x``).

        Once an app has registered platforms, unknown platform names are rejected (a typo would otherwise mean
        a test silently runs without its faults); before that, any name is accepted so rules can be preset.
        """
        if not isinstance(platform, str) or not platform or (self.platforms and platform not in self.platforms):
            known = ", ".join(sorted(self.platforms)) or "none registered"
            raise FaultRuleError("platform", f"unknown platform {platform!r}; known: {known}")
        if isinstance(rules, str | bytes | Mapping) or not isinstance(rules, Iterable):
            raise FaultRuleError("rules", "must be a list of rules")
        parsed: list[FaultRule] = []
        for i, rule in enumerate(rules):
            try:
                parsed.append(rule if isinstance(rule, FaultRule) else FaultRule.from_json(rule))
            except FaultRuleError as exc:
                raise exc.under(f"rules[{i}]") from None
        if parsed:
            self._faults[platform] = parsed
        else:
            self._faults.pop(platform, None)
        return list(parsed)

    def faults(self, platform: str | None = None) -> dict[str, list[FaultRule]]:
        return {p: list(r) for p, r in self._faults.items() if platform is None or p == platform}

    def clear_faults(self, platform: str | None = None) -> None:
        if platform is None:
            self._faults.clear()
        else:
            self._faults.pop(platform, None)

    def pick_fault(self, platform: str, method: str, receiver: str) -> FaultRule | None:
        """First matching rule that fires. Rules with p 0 or 1 draw nothing, so seeded runs stay stable."""
        for rule in self._faults.get(platform, ()):
            if not rule.matches(method, receiver):
                continue
            if rule.probability >= 1.0 or (rule.probability > 0.0 and self.random.random() < rule.probability):
                return rule
        return None

    # ---- lifecycle

    def open(self) -> None:
        """Arm for a (new) event loop; called on app startup."""
        self._closing = asyncio.Event()

    async def close(self, grace: float = 5.0) -> None:
        """End every hold and slow sleep now, then wait (up to ``grace`` s) for in-flight handlers."""
        self._closing_event().set()
        current = asyncio.current_task()
        pending = [t for t in self._tasks if t is not current and not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=grace)

    def _closing_event(self) -> asyncio.Event:
        if self._closing is None:
            self._closing = asyncio.Event()
        return self._closing

    async def pause(self, seconds: float) -> bool:
        """Sleep, cut short when the sandbox closes; True if the full time passed."""
        closing = self._closing_event()
        if closing.is_set():
            return False
        try:
            async with asyncio.timeout(seconds):
                await closing.wait()
        except TimeoutError:
            return True
        return False

    # ---- the shared platform wrapper

    def handler(self, platform: str, receiver: Receiver | None = None) -> Callable[[PlatformHandler], AiohttpHandler]:
        """Decorate a platform handler ``async (request, call) -> response`` into an aiohttp handler.

        The wrapper counts the request, applies the platform's fault rules, tracks concurrency and hands
        the handler a ``Call`` to record with. ``receiver`` (a name, or a function of the request) is the
        stats key and what fault rules' ``name`` matches; it defaults to the platform name.
        """
        self.platforms.add(platform)

        def receiver_of(request: web.Request) -> str:
            if receiver is None:
                return platform
            return receiver if isinstance(receiver, str) else receiver(request)

        def decorate(func: PlatformHandler) -> AiohttpHandler:
            @functools.wraps(func)
            async def wrapped(request: web.Request) -> web.StreamResponse:
                name = receiver_of(request)
                stats = self._stats.setdefault(platform, {}).setdefault(name, ReceiverStats())
                stats.requests += 1
                stats.in_flight += 1
                stats.peak_concurrency = max(stats.peak_concurrency, stats.in_flight)
                task = asyncio.current_task()
                if task is not None:
                    self._tasks.add(task)
                try:
                    return await self._serve(func, request, platform, name, stats)
                finally:
                    stats.in_flight -= 1
                    if task is not None:
                        self._tasks.discard(task)

            return wrapped

        return decorate

    async def _serve(
        self, func: PlatformHandler, request: web.Request, platform: str, name: str, stats: ReceiverStats
    ) -> web.StreamResponse:
        rule = self.pick_fault(platform, request.method, name)
        kind, arg = (rule.kind, rule.arg) if rule is not None else (None, None)
        if rule is not None:
            stats.faults[rule.fault] = stats.faults.get(rule.fault, 0) + 1
        if rule is not None and kind == "status":  # kind is set only when a rule fired
            code = int(arg or 500)
            return json_error(code, "injected_fault", f"sandbox injected status {code}", fault=rule.fault)
        if kind == "rate_limit":
            seconds = int(arg or 0)
            return json_error(
                429,
                "rate_limited",
                f"sandbox rate limit; retry after {seconds}s",
                headers={"Retry-After": str(seconds)},
                retry_after=seconds,
            )
        if kind == "reset":
            _abort_connection(request)
            return web.Response(status=500)  # never reaches the client; aiohttp notices the dead transport
        if kind == "timeout_before":
            await self.pause(self.hold_seconds)
            return json_error(504, "timeout", "sandbox held the request and never processed it")
        if kind == "slow":
            await self.pause((arg or 0) / 1000)

        stats.processed += 1
        call = Call(sandbox=self, platform=platform, receiver=name, request=request)
        if kind == "status_after":  # the dangerous 5xx: the platform did the work, the gateway answered an error
            code = int(arg or 500)
            with contextlib.suppress(web.HTTPException):
                await func(request, call)
            return json_error(code, "injected_fault", f"sandbox processed the request, then answered {code}")
        if kind != "timeout_after":
            return await func(request, call)
        try:
            response = await func(request, call)
        except web.HTTPException:
            await self.pause(self.hold_seconds)
            raise
        await self.pause(self.hold_seconds)
        return response


def _copy_stats(s: ReceiverStats) -> ReceiverStats:
    return ReceiverStats(s.requests, s.processed, dict(s.faults), s.peak_concurrency, s.in_flight)


SANDBOX_KEY = web.AppKey("sandbox", Sandbox)


# ---- control API


def setup_control(app: web.Application, sandbox: Sandbox) -> None:
    """Routes tests and demos use to inspect and steer the sandbox over HTTP (``/_sandbox/*``)."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def get_received(request: web.Request) -> web.Response:
        q = request.query
        records = sandbox.received(q.get("platform"), q.get("name"))
        return web.json_response([r.to_json() for r in records])

    async def delete_received(request: web.Request) -> web.Response:
        cleared = sandbox.clear(request.query.get("platform"))
        return web.json_response({"ok": True, "cleared": cleared})

    async def get_stats(request: web.Request) -> web.Response:
        platform = request.query.get("platform")
        if platform is not None:
            return web.json_response({name: s.to_json() for name, s in sandbox.stats(platform).items()})
        return web.json_response(
            {p: {name: s.to_json() for name, s in r.items()} for p, r in sandbox.all_stats().items()}
        )

    async def get_faults(request: web.Request) -> web.Response:
        faults = sandbox.faults(request.query.get("platform"))
        return web.json_response({p: [r.to_json() for r in rules] for p, rules in faults.items()})

    async def post_faults(request: web.Request) -> web.Response:
        try:
            data = await read_json(request)
        except web.HTTPBadRequest as exc:
            return web.Response(status=400, text=exc.text, content_type="application/json")
        try:
            if not isinstance(data, dict):
                raise FaultRuleError("", "body must be an object with 'platform' and 'rules'")
            extra = set(data) - {"platform", "rules"}
            if extra:
                raise FaultRuleError(sorted(extra)[0], "unknown field; expected platform, rules")
            if "platform" not in data:
                raise FaultRuleError("platform", "is required")
            if "rules" not in data:
                raise FaultRuleError("rules", "is required")
            rules = sandbox.set_faults(data["platform"], data["rules"])
        except FaultRuleError as exc:
            return json_error(400, "invalid_rule", str(exc), field=exc.field)
        return web.json_response({"platform": data["platform"], "rules": [r.to_json() for r in rules]})

    async def delete_faults(request: web.Request) -> web.Response:
        sandbox.clear_faults(request.query.get("platform"))
        return web.json_response({"ok": True})

    async def post_reset(request: web.Request) -> web.Response:
        sandbox.reset()
        return web.json_response({"ok": True})

    app.router.add_get("/_sandbox/health", health)
    app.router.add_get("/_sandbox/received", get_received)
    app.router.add_delete("/_sandbox/received", delete_received)
    app.router.add_get("/_sandbox/stats", get_stats)
    app.router.add_get("/_sandbox/faults", get_faults)
    app.router.add_post("/_sandbox/faults", post_faults)
    app.router.add_delete("/_sandbox/faults", delete_faults)
    app.router.add_post("/_sandbox/reset", post_reset)


# ---- media


@dataclass(frozen=True)
class MediaFile:
    """A sample image the sandbox serves, so adapters can fetch and re-upload 'story' images offline."""

    name: str
    path: Path
    content_type: str
    size: int
    width: int | None
    height: int | None

    def to_json(self, base_url: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": f"{base_url}/media/{self.name}",
            "content_type": self.content_type,
            "size": self.size,
            "width": self.width,
            "height": self.height,
        }


def _dimensions(head: bytes) -> tuple[int | None, int | None]:
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        return w, h
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        w, h = struct.unpack("<HH", head[6:10])
        return w, h
    return None, None


def media_files(directory: Path = MEDIA_DIR) -> dict[str, MediaFile]:
    """The servable images in ``directory`` by file name (only known image types; nothing else is exposed)."""
    files: dict[str, MediaFile] = {}
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        content_type = MEDIA_TYPES.get(path.suffix.lower())
        if content_type is None or not path.is_file():
            continue
        with path.open("rb") as fh:
            width, height = _dimensions(fh.read(32))
        files[path.name] = MediaFile(path.name, path, content_type, path.stat().st_size, width, height)
    return files


def setup_media(app: web.Application, sandbox: Sandbox, directory: Path = MEDIA_DIR) -> None:
    """``GET /media/`` lists the sample images, ``GET /media/<file>`` serves one (platform ``media``).

    Serving goes through ``Sandbox.handler`` so image downloads can be made slow or failing like any platform.
    """
    files = media_files(directory)

    async def listing(request: web.Request) -> web.Response:
        base = str(request.url.origin())
        return web.json_response([f.to_json(base) for f in files.values()])

    @sandbox.handler("media", receiver=lambda request: request.match_info["file"])
    async def serve(request: web.Request, call: Call) -> web.StreamResponse:
        media = files.get(request.match_info["file"])
        if media is None:
            return json_error(404, "not_found", f"no sample media named {request.match_info['file']!r}")
        return web.Response(body=media.path.read_bytes(), content_type=media.content_type)

    app.router.add_get("/media", listing)
    app.router.add_get("/media/", listing)
    app.router.add_get("/media/{file}", serve)
