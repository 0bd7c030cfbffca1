"""The HTTP service: the CMS publish hook, the status and replay API, health, readiness and metrics.

Every answer is JSON. Bad input is a 4xx that says what to fix (never a 500); a 202 from the hook means the story
version and all its deliveries are committed. Secrets never appear in answers or logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from syndicate.appkeys import CLOCK, ENGINE, METRICS, SETTINGS
from syndicate.config import ConfigError, Settings
from syndicate.dashboard import setup_dashboard
from syndicate.delivery import ReachMetric
from syndicate.engine import Engine
from syndicate.logs import set_secrets
from syndicate.metrics import Metrics
from syndicate.ninjs import from_ninjs, read_document
from syndicate.operations import (
    ReplaySelection,
    channel_state_json,
    delivery_json,
    parse_duration,
    parse_states,
    parse_time,
    plan_replay,
    requeue,
    retract_story,
    split_list,
    story_status,
)
from syndicate.reach import build_report, story_reach_view
from syndicate.signing import SIGNATURE_HEADER, SignatureError, verify
from syndicate.store import open_store
from syndicate.store.base import (
    PAUSED_INDEFINITELY,
    ChannelAccess,
    DeliveryFilter,
    NotFound,
    StaleVersion,
    StoreUnavailable,
    VersionConflict,
)
from syndicate.story import Story, StoryValidationError, parse_json_int

log = logging.getLogger("syndicate.server")

SIGNATURE = web.RequestKey("signature", tuple[str, int])

JSON_TYPES = ("application/json", "application/ninjs+json")
MAX_PAGE = 1000
#: Delivery ids are the stores' 64-bit keys: a larger number names no delivery, and the stores cannot bind it.
DELIVERY_ID_MAX = 2**63 - 1
#: How long a client waits before trying again while the store takes no writes (disk full, database down).
STORE_RETRY_AFTER = 30

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(status: int, error: str, message: str, **extra: Any) -> web.Response:
    """A JSON error answer: a stable machine code and a sentence saying what to fix."""
    return web.json_response({"error": error, "message": message, **extra}, status=status)


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.response = problem(status, error, message, **extra)


def store_unavailable(exc: StoreUnavailable, request: web.Request) -> web.Response:
    """503 with Retry-After: nothing was written, so the sender keeps the request and tries again later."""
    log.warning("%s %s refused: %s", request.method, request.path, exc, extra={"path": request.path})
    response = problem(503, "store_unavailable", f"{exc}; nothing was accepted, send it again later")
    response.headers["Retry-After"] = str(STORE_RETRY_AFTER)
    return response


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda v: json.dumps(v, ensure_ascii=False))


# --- middlewares -------------------------------------------------------------------------------------------------


@web.middleware
async def errors_and_access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = exc.response
    except StoreUnavailable as exc:
        response = store_unavailable(exc, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
        response = problem(500, "internal_error", f"unexpected server error (request id {request_id})")
    response.headers["X-Request-Id"] = request_id
    log.info(
        "%s %s -> %d",
        request.method,
        request.path,
        response.status,
        extra={
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )
    return response


def _require_token(request: web.Request) -> None:
    token = request.app[SETTINGS].server.api_token
    if not token:
        raise ApiError(503, "not_configured", "the status API is off: set [server] api_token in the config")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <api_token>")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "the bearer token is not valid")


def api(handler: Handler) -> Handler:
    """Routes of the status and replay API: bearer token first."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        _require_token(request)
        return await handler(request)

    return guarded


# --- the publish hook --------------------------------------------------------------------------------------------


async def _read_body(request: web.Request) -> bytes:
    limit = request.app[SETTINGS].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large", f"the body is {request.content_length} bytes; the limit is {limit}")
    # content.read(n) returns what has arrived so far: read until the end (or just past the limit).
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise ApiError(413, "body_too_large", f"the body is over the {limit} byte limit")
    return b"".join(chunks)


async def _verify_hook(request: web.Request, body: bytes) -> None:
    settings = request.app[SETTINGS].server
    if not settings.hook_secret:
        raise ApiError(503, "not_configured", "the publish hook is off: set [server] hook_secret in the config")
    header = request.headers.get(SIGNATURE_HEADER)
    now = request.app[CLOCK]()
    try:
        timestamp = verify(settings.hook_secret, body, header, now=now, tolerance=settings.signature_tolerance)
    except SignatureError as exc:
        raise ApiError(401, "bad_signature", str(exc)) from None
    # What the signature signs (timestamp and body), not the header's spelling: " t=1, v1=…", "v1=…,t=1", an extra
    # v1 or "t=01" all verify the same, and keying the replay marker on the header text let each respelling of a
    # captured request count as a new, unused signature.
    signed = hashlib.sha256(f"{timestamp}.".encode() + body).hexdigest()
    request[SIGNATURE] = (signed, timestamp)


def _signature_marker(request: web.Request) -> str:
    return "hook-signature:" + request[SIGNATURE][0]


_REPLAYED = (401, "replayed_signature", "this signature was already used: sign each request anew")


async def _refuse_used_signature(request: web.Request) -> None:
    """A signature already spent on an accepted request is refused before anything else is done with it."""
    if await request.app[ENGINE].store.kv_get(_signature_marker(request), now=request.app[CLOCK]()) is not None:
        raise ApiError(*_REPLAYED)


async def _use_signature(request: web.Request) -> None:
    """A valid signature is good once: a captured request replayed within the window is refused. Marked only
    once the request is valid and allowed (a publish: once accepted), so a refused one (415, 404, 409, 422...)
    does not burn it."""
    _, timestamp = request[SIGNATURE]
    expires = timestamp + request.app[SETTINGS].server.signature_tolerance + 1
    store = request.app[ENGINE].store
    if not await store.kv_add(_signature_marker(request), "1", expires_at=expires, now=request.app[CLOCK]()):
        raise ApiError(*_REPLAYED)


def _parse_story(request: web.Request, body: bytes) -> Story:
    if request.content_type not in JSON_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {request.content_type or '(none)'} is not accepted; send {' or '.join(JSON_TYPES)}",
        )
    try:
        document = json.loads(body.decode("utf-8"), parse_int=parse_json_int)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "malformed_json", f"the body is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, "malformed_json", f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "the JSON is nested too deeply") from None
    try:
        if request.content_type == "application/ninjs+json":
            return from_ninjs(document)
        return read_document(document)
    except StoryValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: StoryValidationError) -> ApiError:
    errors = [{"path": e.path, "problem": e.problem} for e in exc.errors]
    summary = "; ".join(f"{e['path']}: {e['problem']}" for e in errors[:5])
    return ApiError(422, "invalid_story", f"the story is not valid: {summary}", errors=errors)


def _fan_out_answer(result: Any, status: int) -> web.Response:
    return _json(
        {
            "story_id": result.story_id,
            "version": result.version,
            "new": result.created,
            "deliveries": [delivery_json(d) for d in result.deliveries],
        },
        status=status,
    )


def _count_hook(request: web.Request, status: int) -> None:
    metrics = request.app.get(METRICS)
    if metrics is not None:
        metrics.hook_requests_total.labels(status=str(status)).inc()


async def publish_hook(request: web.Request) -> web.StreamResponse:
    try:
        body = await _read_body(request)
        await _verify_hook(request, body)
        story = _parse_story(request, body)
        try:
            request.app[ENGINE].check_targets(story)
        except StoryValidationError as exc:
            raise _invalid(exc) from None
        await _refuse_used_signature(request)
        try:
            result = await request.app[ENGINE].accept(story)
        except StoryValidationError as exc:
            raise _invalid(exc) from None
        except (StaleVersion, VersionConflict) as exc:
            raise ApiError(409, "version_conflict", str(exc)) from None
        # Spent only once the story is accepted: a refused request (409, a store failure) keeps its signature. A
        # replay racing the original past the check above finds the same version accepted: it changes nothing.
        try:
            await _use_signature(request)
        except StoreUnavailable as exc:
            # The story is durable: answering 503 now would be a false failure. The signature stays usable, and a
            # replay of it finds this version accepted and changes nothing.
            log.warning("story %s accepted but its signature not marked used: %s", story.id, exc)
        log.info(
            "story %s v%d accepted: %d deliveries",
            result.story_id,
            result.version,
            len(result.deliveries),
            extra={"story_id": result.story_id},
        )
        response = _fan_out_answer(result, 202 if result.created else 200)
    except ApiError as exc:
        response = exc.response
    except StoreUnavailable as exc:
        response = store_unavailable(exc, request)
    _count_hook(request, response.status)
    return response


def _check_retract_body(body: bytes, story_id: str) -> None:
    """The signature covers the body, not the path: a body naming the story binds the signature to it."""
    if not body.strip():
        return
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "malformed_json", 'the body must be empty or {"id": "<story id>"}') from None
    # Exactly {"id": ...}: the signature does not cover the method, so a signed publish or update of this story
    # (which names it too) caught on its way must not be re-sent as a DELETE that retracts it.
    if not isinstance(document, dict) or set(document) != {"id"} or document["id"] != story_id:
        raise ApiError(400, "id_mismatch", f'the body must be {{"id": "{story_id}"}} to retract this story')


async def retract_hook(request: web.Request) -> web.StreamResponse:
    try:
        body = await _read_body(request)
        await _verify_hook(request, body)
        story_id = request.match_info["story_id"]
        _check_retract_body(body, story_id)
        try:
            await request.app[ENGINE].store.get_story(story_id)  # a 404 does not spend the signature
            # Spent before the retraction, not after: each retraction is a new version, so a replay would act.
            await _use_signature(request)
            result = await retract_story(request.app[ENGINE], story_id)
        except NotFound:
            raise ApiError(404, "not_found", f"no story {story_id!r} has been published") from None
        response = _fan_out_answer(result, 202 if result.created else 200)
    except ApiError as exc:
        response = exc.response
    except StoreUnavailable as exc:
        response = store_unavailable(exc, request)
    _count_hook(request, response.status)
    return response


# --- status and replay API ---------------------------------------------------------------------------------------


async def get_story(request: web.Request) -> web.StreamResponse:
    story_id = request.match_info["story_id"]
    try:
        return _json(await story_status(request.app[ENGINE].store, story_id))
    except NotFound:
        raise ApiError(404, "not_found", f"no story {story_id!r}") from None


# --- reach (评) -----------------------------------------------------------------------------------------------------

#: The default period of the reach ranking: the last week (the weekly report).
REACH_DEFAULT_PERIOD = "7d"
#: A beacon names a story and a channel; anything longer is no id syndicate gave out.
BEACON_MAX_ID = 200
#: The smallest transparent GIF: what a page's <img> beacon loads.
BEACON_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


async def story_reach(request: web.Request) -> web.StreamResponse:
    story_id = request.match_info["story_id"]
    store = request.app[ENGINE].store
    try:
        record = await store.get_story(story_id)
    except NotFound:
        raise ApiError(404, "not_found", f"no story {story_id!r}") from None
    view = story_reach_view(story_id, await store.story_reach(story_id))
    return _json({"headline": record.story.headline, "section": record.story.section, **view.to_json()})


async def reach_report(request: web.Request) -> web.StreamResponse:
    """Stories ranked by reach over a period, narrowed to a channel and a section; ``format=csv`` for the report."""
    now = request.app[CLOCK]()
    since = _query_time(request, "since")
    until = _query_time(request, "until")
    until = now if until is None else until
    since = parse_time(REACH_DEFAULT_PERIOD, now=until) if since is None else since
    if since >= until:
        raise ApiError(400, "bad_query", "query parameter since: must be before until", parameter="since")
    channel = request.query.get("channel") or None
    if channel is not None and channel not in request.app[SETTINGS].channels:
        raise ApiError(400, "bad_query", f"query parameter channel: no channel {channel!r}", parameter="channel")
    section = request.query.get("section") or None
    limit = _query_int(request, "limit", 100, 1, MAX_PAGE)
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(400, "bad_query", "query parameter format: json or csv", parameter="format")
    report = await build_report(
        request.app[ENGINE].store, since=since, until=until, channel=channel, section=section, limit=limit
    )
    if fmt == "csv":
        return web.Response(
            text=report.to_csv(),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": 'attachment; filename="reach.csv"'},
        )
    return _json(report.to_json())


async def reach_beacon(request: web.Request) -> web.StreamResponse:
    """A page read of an owned output: ``?s=<story id>&c=<channel>``. Counts only: no cookie is read or set, no
    address, agent or referrer is kept, and the answer is the same GIF whatever was counted, so it tells a caller
    nothing. A story or channel syndicate does not know, or a channel whose pages do not load the beacon (one that
    reads its reach from its platform, the app that counts its own reads), is counted nowhere."""
    story_id = request.query.get("s", "")
    channel = request.query.get("c", "")
    engine = request.app[ENGINE]
    runtime = engine.channels.get(channel)
    if (
        runtime is not None
        and runtime.adapter.counts_page_reads
        and 0 < len(story_id) <= BEACON_MAX_ID
        and story_id.isprintable()
    ):
        await engine.store.add_reach_count(story_id, channel, ReachMetric.READS, now=request.app[CLOCK]())
    return web.Response(
        body=BEACON_GIF,
        content_type="image/gif",
        headers={"Cache-Control": "no-store, max-age=0", "Referrer-Policy": "no-referrer"},
    )


def _query_list(request: web.Request, name: str) -> list[str]:
    return split_list(request.query.getall(name, []))


def _query_time(request: web.Request, name: str) -> float | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        return parse_time(value, now=request.app[CLOCK]())
    except ValueError as exc:
        raise ApiError(400, "bad_query", f"query parameter {name}: {exc}", parameter=name) from None


def _query_int(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise ApiError(400, "bad_query", f"query parameter {name}: must be an integer {low}..{high}", parameter=name)
    return number


async def list_deliveries(request: web.Request) -> web.StreamResponse:
    try:
        states = parse_states(request.query.getall("state", []))
    except ValueError as exc:
        raise ApiError(400, "bad_query", f"query parameter state: {exc}", parameter="state") from None
    limit = _query_int(request, "limit", 100, 1, MAX_PAGE) or 100
    cursor = _query_int(request, "cursor", None, 0, 2**62)
    rows = await request.app[ENGINE].store.list_deliveries(
        DeliveryFilter(
            states=states or None,
            channels=_query_list(request, "channel") or None,
            story_id=request.query.get("story") or None,
            since=_query_time(request, "since"),
            until=_query_time(request, "until"),
            error_classes=_query_list(request, "error_class") or None,
            after_id=cursor,
            limit=limit,
        )
    )
    next_cursor = str(rows[-1].id) if len(rows) == limit else None
    return _json({"deliveries": [delivery_json(d) for d in rows], "next_cursor": next_cursor})


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


B = TypeVar("B", bound=_Body)


class ReplayOne(_Body):
    force: bool = False


class ReplayFilters(_Body):
    ids: list[Annotated[int, Field(ge=1, le=DELIVERY_ID_MAX)]] = Field(default_factory=list)
    channel: str | list[str] | None = None
    story: str | None = None
    since: str | None = None
    until: str | None = None
    state: str | list[str] | None = None
    error_class: str | list[str] | None = None
    force: bool = False
    dry_run: bool = False


class PauseBody(_Body):
    until: str | None = None
    #: A duration from now, e.g. "30m"; the alternative to ``until``.
    for_: str | None = Field(default=None, alias="for")
    reason: str = Field(default="paused by an operator", max_length=500)


async def _body(request: web.Request, model: type[B]) -> B:
    raw = await request.read()
    try:
        data = json.loads(raw, parse_int=parse_json_int) if raw.strip() else {}
    except (ValueError, RecursionError):
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{"path": ".".join(str(p) for p in e["loc"]) or "$", "problem": e["msg"]} for e in exc.errors()]
        message = "; ".join(f"{e['path']}: {e['problem']}" for e in errors)
        raise ApiError(422, "invalid_body", message, errors=errors) from None


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return split_list([value] if isinstance(value, str) else value)


async def replay_one(request: web.Request) -> web.StreamResponse:
    text = request.match_info["delivery_id"]
    # Length first: int() refuses over 4,300 digits, and past int64 the store cannot look the id up.
    delivery_id = int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else 0
    if not 1 <= delivery_id <= DELIVERY_ID_MAX:
        raise ApiError(404, "not_found", f"delivery ids are integers from 1 to {DELIVERY_ID_MAX}")
    body = await _body(request, ReplayOne)
    engine = request.app[ENGINE]
    plan = await plan_replay(engine.store, ReplaySelection(ids=[delivery_id], force=body.force))
    if plan.missing_ids:
        raise ApiError(404, "not_found", f"no delivery {delivery_id}")
    if plan.refused:
        _, reason = plan.refused[0]
        raise ApiError(409, "not_replayable", f"delivery {delivery_id}: {reason}")
    done = await requeue(engine.store, plan.replayable, now=request.app[CLOCK](), force=body.force)
    engine.wake()
    return _json({"requeued": done, "delivery": delivery_json(await engine.store.get_delivery(delivery_id))})


async def replay_many(request: web.Request) -> web.StreamResponse:
    body = await _body(request, ReplayFilters)
    now = request.app[CLOCK]()
    try:
        selection = ReplaySelection(
            ids=body.ids,
            channels=_as_list(body.channel),
            story_id=body.story,
            since=parse_time(body.since, now=now) if body.since else None,
            until=parse_time(body.until, now=now) if body.until else None,
            states=parse_states(_as_list(body.state)),
            error_classes=_as_list(body.error_class),
            force=body.force,
        )
    except ValueError as exc:
        raise ApiError(422, "invalid_body", str(exc)) from None
    engine = request.app[ENGINE]
    plan = await plan_replay(engine.store, selection)
    done: list[int] = []
    if not body.dry_run:
        done = await requeue(engine.store, plan.replayable, now=now, force=body.force)
        engine.wake()
    return _json(
        {
            "selected": len(plan.replayable),
            "requeued": len(done),
            "dry_run": body.dry_run,
            "ids": [d.id for d in plan.replayable],
            "refused": [{"id": d.id, "reason": reason} for d, reason in plan.refused],
            "missing_ids": plan.missing_ids,
        }
    )


def _channel_name(request: web.Request) -> str:
    name = request.match_info["channel"]
    if name not in request.app[SETTINGS].channels:
        raise ApiError(404, "not_found", f"no channel {name!r} is configured")
    return name


async def pause_channel(request: web.Request) -> web.StreamResponse:
    name = _channel_name(request)
    body = await _body(request, PauseBody)
    now = request.app[CLOCK]()
    if body.until and body.for_:
        raise ApiError(422, "invalid_body", "give either until or for, not both")
    try:
        if body.until:
            until = parse_time(body.until, now=now)
        elif body.for_:
            until = now + parse_duration(body.for_)
        else:
            until = PAUSED_INDEFINITELY
    except ValueError as exc:
        raise ApiError(422, "invalid_body", str(exc)) from None
    if not until > now:  # also NaN
        raise ApiError(422, "invalid_body", "the pause must end in the future")
    if until > PAUSED_INDEFINITELY:
        raise ApiError(
            422, "invalid_body", "the pause must end before 9999-12-31; omit until and for to pause until resumed"
        )
    store = request.app[ENGINE].store
    await store.pause_channel(name, until=until, reason=body.reason, now=now)
    state = (await store.channel_states()).get(name)
    return _json(channel_state_json(name, state, now=now))


async def resume_channel(request: web.Request) -> web.StreamResponse:
    name = _channel_name(request)
    engine = request.app[ENGINE]
    now = request.app[CLOCK]()
    await engine.store.resume_channel(name, now=now)
    engine.wake()
    return _json(channel_state_json(name, (await engine.store.channel_states()).get(name), now=now))


# --- operations --------------------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.StreamResponse:
    return _json({"ok": True})


async def readyz(request: web.Request) -> web.StreamResponse:
    store = request.app[ENGINE].store
    try:
        version = await asyncio.wait_for(store.schema_version(), timeout=5)
    except StoreUnavailable as exc:
        return _json({"ready": False, "reason": str(exc)}, status=503)
    except Exception as exc:
        return _json({"ready": False, "reason": f"store unreachable: {type(exc).__name__}"}, status=503)
    if version != store.SCHEMA_VERSION:
        return _json(
            {
                "ready": False,
                "reason": f"schema version {version}, expected {store.SCHEMA_VERSION}: run `syndicate db migrate`",
            },
            status=503,
        )
    # Readable is not enough: a store that cannot write (disk full) would answer every story with 503.
    try:
        await asyncio.wait_for(store.check_writable(now=request.app[CLOCK]()), timeout=5)
    except StoreUnavailable as exc:
        return _json({"ready": False, "reason": str(exc)}, status=503)
    except TimeoutError:
        return _json({"ready": False, "reason": "the store took more than 5 s to take a write"}, status=503)
    return _json({"ready": True, "schema_version": version})


async def metrics_endpoint(request: web.Request) -> web.StreamResponse:
    metrics = request.app.get(METRICS)
    if metrics is None:
        raise ApiError(404, "not_found", "metrics are not enabled")
    engine = request.app[ENGINE]
    await metrics.refresh_from_store(engine.store, list(request.app[SETTINGS].channels), request.app[CLOCK]())
    body, content_type = metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def openapi(request: web.Request) -> web.StreamResponse:
    from syndicate.openapi import document

    channel_paths: dict[str, Any] = {}
    for runtime in request.app[ENGINE].channels.values():
        channel_paths.update(runtime.adapter.openapi_paths())
    return _json(document(channel_paths))


def _channel_routes(settings: Settings, engine: Engine) -> list[web.AbstractRouteDef]:
    """Every channel's own routes. Two channels that would serve the same path (two feeds, two app content APIs,
    two web roots) are a configuration error, said before the listener starts: aiohttp would only refuse the second
    one with an error that names no channel."""
    served: dict[tuple[str, str], str] = {}
    routes: list[web.AbstractRouteDef] = []
    for name, runtime in engine.channels.items():
        for route in runtime.adapter.web_routes(ChannelAccess.of(engine.store, name)):
            method: str = getattr(route, "method", "GET")
            path: str = getattr(route, "path", "") or getattr(route, "prefix", "")
            other = served.setdefault((method, path), name)
            if other != name:
                raise ConfigError(
                    settings.source,
                    f"channels.{name}",
                    "kind",
                    f"serves {method} {path}, which channel {other!r} serves already: one process serves one such"
                    " channel (disable one here, or run it with its own config and port)",
                )
            routes.append(route)
    return routes


def create_app(
    settings: Settings,
    engine: Engine,
    *,
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    # The hook enforces max_body_bytes itself with a JSON answer; aiohttp's own limit only backs it up.
    app = web.Application(middlewares=[errors_and_access_log], client_max_size=settings.server.max_body_bytes + 1024)
    app[SETTINGS] = settings
    app[ENGINE] = engine
    app[CLOCK] = clock
    if metrics is not None:
        app[METRICS] = metrics
    app.router.add_post("/v1/stories", publish_hook)
    app.router.add_delete("/v1/stories/{story_id}", retract_hook)
    app.router.add_get("/v1/stories/{story_id}", api(get_story))
    app.router.add_get("/v1/stories/{story_id}/reach", api(story_reach))
    app.router.add_get("/v1/reach", api(reach_report))
    app.router.add_get("/reach/b.gif", reach_beacon)
    app.router.add_get("/v1/deliveries", api(list_deliveries))
    app.router.add_post("/v1/deliveries/{delivery_id}/replay", api(replay_one))
    app.router.add_post("/v1/replay", api(replay_many))
    app.router.add_post("/v1/channels/{channel}/pause", api(pause_channel))
    app.router.add_post("/v1/channels/{channel}/resume", api(resume_channel))
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_routes(_channel_routes(settings, engine))

    setup_dashboard(app)
    return app


async def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: bool = True,
    stop: asyncio.Event,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the API (and, unless ``workers`` is False, the delivery workers) until ``stop`` is set.

    On stop the listener closes first (no new stories), then the workers finish or release in-flight work.
    """
    set_secrets(settings)
    store = open_store(settings.store.url)
    await store.migrate()
    metrics = Metrics()
    try:
        async with Engine(settings, store, metrics=metrics) as engine:
            app = create_app(settings, engine, metrics=metrics)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = runner.addresses[0]
            url = f"http://{host}:{bound[1]}"
            public = f", dashboard at {settings.server.public_url}/" if settings.server.public_url else ""
            log.info("serving on %s (%s)%s", url, "with workers" if workers else "API only", public)
            if on_ready is not None:
                on_ready(url)
            worker = asyncio.create_task(engine.run(stop=stop)) if workers else None
            try:
                await stop.wait()
            finally:
                await runner.cleanup()
                if worker is not None:
                    await worker
    finally:
        await store.close()
