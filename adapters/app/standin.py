"""JPush (极光推送) REST API v3 stand-in: ``POST /v3/push`` and ``GET /v3/push/cid``.

What it checks, as JPush does: HTTP Basic auth ``base64(appKey:masterSecret)`` (401, code 1004 when wrong; an
unknown app key is 400, code 1008), the push object's shape (1002 a required field is missing, 1003 a value is
invalid, 1009 an unsupported key, 1005 the iOS/Android notification is too large; ``options.sendno`` must be a
non-zero int, 1003 otherwise, and an absent one is answered as ``"sendno": "0"``), ``cid`` (issued by
``GET /v3/push/cid`` for that app key, ``count`` 1 to 10, or to 1000 for a VIP app, 1003 otherwise; a repeated
cid answers the first push's result and pushes nothing: JPush's guard against client retries), and a per-app rate
limit with ``X-Rate-Limit-Limit/Remaining/Reset`` on every answer (429, code 2002, when exceeded). Errors have
JPush's shape ``{"error": {"code": ..., "message": ...}}``.

One sandbox rule JPush does not have: every platform section of a notification must carry ``extras`` (syndicate's
app pushes always carry the story id there, so a push without them is a bug worth failing loudly on).

The default app ``sandbox-app-key`` / ``sandbox-master-secret`` always exists; ``register_app`` adds more (for
example one without devices, whose pushes answer 1011, or one with a tiny rate limit). ``pushes()`` lists the
pushes actually made (a cid replay is recorded as a request but is not a new push).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from syndicate.sandbox.app import Standin
from syndicate.sandbox.core import Call, Sandbox

PLATFORM = "jpush"
DEFAULT_APP_KEY = "sandbox-app-key"
DEFAULT_MASTER_SECRET = "sandbox-master-secret"
#: JPush counts API calls per app key in windows of this many seconds.
RATE_WINDOW_SECONDS = 60
DEFAULT_RATE_LIMIT = 600
#: JPush's limits: the iOS notification object (extras included) and the Android notification plus message.
IOS_NOTIFICATION_MAX_BYTES = 2000
ANDROID_MAX_BYTES = 4000
MAX_TIME_TO_LIVE = 864000  # ten days
#: ``GET /v3/push/cid`` ``count``: "范围为 [1, 1000]" (push API v3, cid), [1, 10] for apps without VIP (the 2022
#: revision of the advanced push page).
MAX_CIDS_VIP = 1000
MAX_CIDS = 10
#: options.sendno is "非 0 的 int": 0 means "this push has no sendno", which is what an absent sendno is echoed as.
MAX_SENDNO = 2**31 - 1
NO_SENDNO = 0

PUSH_KEYS = frozenset(
    {"platform", "audience", "notification", "message", "options", "cid", "sms_message", "inapp_message", "callback"}
)
PLATFORMS = frozenset({"android", "ios", "hmos", "quickapp", "winphone"})
AUDIENCE_KEYS = frozenset({"tag", "tag_and", "tag_not", "alias", "registration_id", "segment", "abtest"})


@dataclass(frozen=True)
class SandboxApp:
    """A JPush application the stand-in knows: its credentials and how it behaves."""

    app_key: str
    master_secret: str
    #: False: no device has registered, so every push answers 1011 ("no target").
    devices: bool = True
    #: Calls allowed per RATE_WINDOW_SECONDS before 429 / 2002.
    rate_limit: int = DEFAULT_RATE_LIMIT
    #: A VIP app may ask ``GET /v3/push/cid`` for up to 1000 cids at once, any other app for up to 10.
    vip: bool = False


DEFAULT_APP = SandboxApp(DEFAULT_APP_KEY, DEFAULT_MASTER_SECRET)


class JPushError(Exception):
    """An error answer in JPush's shape."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _state(sandbox: Sandbox) -> dict[str, Any]:
    return sandbox.store(PLATFORM)


def register_app(sandbox: Sandbox, app: SandboxApp) -> None:
    """Make the stand-in accept ``app`` (until ``Sandbox.reset``; the default app always stays)."""
    _state(sandbox).setdefault("apps", {})[app.app_key] = app


def pushes(sandbox: Sandbox, app_key: str | None = None) -> list[dict[str, Any]]:
    """The pushes the stand-in actually made, oldest first: ``{"app_key", "msg_id", "sendno", "cid", "body"}``."""
    made: list[dict[str, Any]] = _state(sandbox).get("pushes", [])
    return [dict(p) for p in made if app_key is None or p["app_key"] == app_key]


def _apps(sandbox: Sandbox) -> dict[str, SandboxApp]:
    return {DEFAULT_APP_KEY: DEFAULT_APP, **_state(sandbox).get("apps", {})}


def _basic_credentials(request: web.Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    app_key, sep, secret = decoded.partition(":")
    return (app_key, secret) if sep else None


def app_key_of(request: web.Request) -> str:
    """The receiver name (stats key, fault ``name``): the app key from the Basic auth header."""
    credentials = _basic_credentials(request)
    return credentials[0] if credentials and credentials[0] else "anonymous"


def _error(exc: JPushError, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error": {"code": exc.code, "message": exc.message}}, status=exc.status, headers=headers or {}
    )


def _authenticate(call: Call) -> SandboxApp:
    credentials = _basic_credentials(call.request)
    if credentials is None:
        raise JPushError(401, 1004, "Authen failed: send Authorization: Basic base64(appKey:masterSecret)")
    app_key, secret = credentials
    app = _apps(call.sandbox).get(app_key)
    if app is None:
        raise JPushError(400, 1008, f"app_key is not valid: no application {app_key!r}")
    if secret != app.master_secret:
        raise JPushError(401, 1004, "Authen failed: the master secret does not match the app key")
    return app


def _rate_headers(call: Call, app: SandboxApp) -> tuple[dict[str, str], bool]:
    """Count this call in the app's window; the X-Rate-Limit-* headers and whether the limit is exceeded."""
    windows: dict[str, list[float]] = _state(call.sandbox).setdefault("rate", {})
    now = time.time()
    start, count = windows.get(app.app_key, [now, 0])
    if now - start >= RATE_WINDOW_SECONDS:
        start, count = now, 0
    count += 1
    windows[app.app_key] = [start, count]
    reset = max(int(start + RATE_WINDOW_SECONDS - now + 0.999), 1)
    headers = {
        "X-Rate-Limit-Limit": str(app.rate_limit),
        "X-Rate-Limit-Remaining": str(max(app.rate_limit - count, 0)),
        "X-Rate-Limit-Reset": str(reset),  # seconds until the window resets, as JPush sends it
    }
    return headers, count > app.rate_limit


# ---- validation of the push object


def _invalid(message: str, code: int = 1003) -> JPushError:
    return JPushError(400, code, message)


def _check_platform(value: Any) -> list[str]:
    if value == "all":
        return sorted(PLATFORMS)
    if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
        raise _invalid('platform must be "all" or a non-empty list of platform names')
    unknown = sorted(set(value) - PLATFORMS)
    if unknown:
        raise _invalid(f"platform has unknown values {unknown}; known: {sorted(PLATFORMS)}")
    return list(value)


def _check_audience(value: Any) -> None:
    if value == "all":
        return
    if not isinstance(value, dict) or not value:
        raise _invalid('audience must be "all" or an object such as {"tag": [...]}')
    for key, targets in value.items():
        if key not in AUDIENCE_KEYS:
            raise _invalid(f"audience has an unsupported key {key!r}", code=1009)
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise _invalid(f"audience.{key} must be a non-empty list of non-empty strings")


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _check_notification(notification: Any, platforms: list[str]) -> None:
    if not isinstance(notification, dict):
        raise _invalid("notification must be an object")
    top_alert = notification.get("alert")
    if top_alert is not None and not isinstance(top_alert, str):
        raise _invalid("notification.alert must be a string")
    for key, section in notification.items():
        if key == "alert":
            continue
        if key not in PLATFORMS:
            raise _invalid(f"notification has an unsupported key {key!r}", code=1009)
        if key not in platforms:
            raise _invalid(f"notification.{key} is given but platform does not include {key!r}")
        if not isinstance(section, dict):
            raise _invalid(f"notification.{key} must be an object")
        alert = section.get("alert", top_alert)
        if key == "ios":
            valid_alert = isinstance(alert, str) or (isinstance(alert, dict) and isinstance(alert.get("body"), str))
        else:
            valid_alert = isinstance(alert, str)
        if not valid_alert or not alert:
            raise _invalid(f"notification.{key}.alert is missing or empty (and there is no notification.alert)")
        if "title" in section and not isinstance(section["title"], str):
            raise _invalid(f"notification.{key}.title must be a string")
        if "extras" not in section:
            raise _invalid(
                f"notification.{key}.extras is missing (sandbox rule: syndicate's pushes carry the story id)"
            )
        if not isinstance(section["extras"], dict):
            raise _invalid(f"notification.{key}.extras must be an object")
    if not any(key in notification for key in PLATFORMS) and not top_alert:
        raise _invalid("notification needs an alert or a platform section", code=1002)


def _check_options(options: Any) -> None:
    if not isinstance(options, dict):
        raise _invalid("options must be an object")
    if "sendno" in options:
        sendno = options["sendno"]
        if isinstance(sendno, bool) or not isinstance(sendno, int) or not 1 <= sendno <= MAX_SENDNO:
            raise _invalid(
                f"options.sendno must be a non-zero integer from 1 to {MAX_SENDNO} (0 means no sendno: leave it out)"
            )
    ttl = options.get("time_to_live", 86400)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TIME_TO_LIVE:
        raise _invalid(f"options.time_to_live must be an integer from 0 to {MAX_TIME_TO_LIVE} seconds")
    if "apns_production" in options and not isinstance(options["apns_production"], bool):
        raise _invalid("options.apns_production must be true or false")
    collapse = options.get("apns_collapse_id")
    if collapse is not None and (not isinstance(collapse, str) or len(collapse.encode()) > 64):
        raise _invalid("options.apns_collapse_id must be a string of at most 64 bytes")


def validate_push(body: Any) -> None:
    """Raise JPushError for a push object JPush would refuse (and for a notification without extras)."""
    if not isinstance(body, dict):
        raise _invalid("the push object must be a JSON object")
    unknown = sorted(set(body) - PUSH_KEYS)
    if unknown:
        raise _invalid(f"the push object has unsupported keys {unknown}", code=1009)
    for required in ("platform", "audience"):
        if required not in body:
            raise _invalid(f"{required} is required", code=1002)
    platforms = _check_platform(body["platform"])
    _check_audience(body["audience"])
    if "notification" not in body and "message" not in body:
        raise _invalid("either notification or message is required", code=1002)
    if "notification" in body:
        _check_notification(body["notification"], platforms)
        ios = body["notification"].get("ios")
        if ios is not None and _size(ios) > IOS_NOTIFICATION_MAX_BYTES:
            raise _invalid(f"notification.ios is over {IOS_NOTIFICATION_MAX_BYTES} bytes", code=1005)
    if "message" in body:
        message = body["message"]
        if not isinstance(message, dict) or not isinstance(message.get("msg_content"), str):
            raise _invalid("message.msg_content is required and must be a string", code=1002)
    android = (body.get("notification") or {}).get("android")
    if _size(android or {}) + _size(body.get("message") or {}) > ANDROID_MAX_BYTES:
        raise _invalid(f"the Android notification and message are over {ANDROID_MAX_BYTES} bytes", code=1005)
    if "options" in body:
        _check_options(body["options"])
    if "cid" in body and not isinstance(body["cid"], str):
        raise _invalid("cid must be a string")


# ---- handlers


async def push(request: web.Request, call: Call) -> web.Response:
    try:
        app = _authenticate(call)
    except JPushError as exc:
        return _error(exc)
    headers, limited = _rate_headers(call, app)
    if limited:
        return _error(JPushError(429, 2002, "Request times exceed the limit of this app key"), headers)
    raw = await request.read()
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return _error(_invalid(f"the request body is not valid JSON: {exc}"), headers)
    state = _state(call.sandbox)
    cid = body.get("cid") if isinstance(body, dict) else None
    call.record(body, idempotency_key=cid if isinstance(cid, str) else None)
    try:
        validate_push(body)
        if cid is not None and state.setdefault("cids", {}).get(cid) != app.app_key:
            raise _invalid(f"cid {cid!r} is not valid: get one from GET /v3/push/cid for this app key")
    except JPushError as exc:
        return _error(exc, headers)
    results: dict[str, dict[str, str]] = state.setdefault("cid_results", {})
    if cid is not None and cid in results:
        # JPush answers a repeated cid with the first push's result and pushes nothing.
        return web.json_response(results[cid], headers=headers)
    if not app.devices:
        return _error(JPushError(400, 1011, "cannot find user to push: no device matches the audience"), headers)
    number = int(call.next_id("jpush-msg").rsplit("-", 1)[1])
    result = {
        "sendno": str((body.get("options") or {}).get("sendno", NO_SENDNO)),
        "msg_id": str(18_100_000_000 + number),
    }
    if cid is not None:
        results[cid] = result
    state.setdefault("pushes", []).append({"app_key": app.app_key, **result, "cid": cid, "body": body})
    return web.json_response(result, headers=headers)


async def issue_cids(request: web.Request, call: Call) -> web.Response:
    try:
        app = _authenticate(call)
    except JPushError as exc:
        return _error(exc)
    headers, limited = _rate_headers(call, app)
    if limited:
        return _error(JPushError(429, 2002, "Request times exceed the limit of this app key"), headers)
    try:
        count = int(request.query.get("count", "1"))
    except ValueError:
        count = 0
    most = MAX_CIDS_VIP if app.vip else MAX_CIDS
    if not 1 <= count <= most:
        scope = "" if app.vip else " for an app without VIP"
        return _error(_invalid(f"count must be an integer from 1 to {most}{scope}"), headers)
    if request.query.get("type", "push") not in ("push", "schedule"):
        return _error(_invalid("type must be push or schedule"), headers)
    call.record({"count": count, "type": request.query.get("type", "push")})
    issued: dict[str, str] = _state(call.sandbox).setdefault("cids", {})
    cids = [f"{app.app_key}-{uuid.uuid4()}" for _ in range(count)]
    for cid in cids:
        issued[cid] = app.app_key
    return web.json_response({"cidlist": cids}, headers=headers)


def setup(app: web.Application, sandbox: Sandbox) -> None:
    """Add the JPush routes; the receiver (stats key, fault ``name``) is the app key from Basic auth."""
    wrap = sandbox.handler(PLATFORM, receiver=app_key_of)
    app.router.add_post("/v3/push", wrap(push))
    app.router.add_get("/v3/push/cid", wrap(issue_cids))


def point(base: str, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Pushes go to the stand-in at the root; the channel's content API gets a prefix of its own (``/<name>/v1``,
    the default for a channel named ``app``), so several app channels can share one server."""
    return {**options, "api_base": base, "api_prefix": f"/{name}/v1"}


def accept(sandbox: Sandbox, name: str, options: Mapping[str, Any]) -> None:
    register_app(sandbox, SandboxApp(options["app_key"], options["master_secret"]))


def posts_made(sandbox: Sandbox) -> list[str]:
    """Every push made, by what the reader's phone shows (its notification): the same one twice is a double push."""
    return [json.dumps(p["body"].get("notification"), sort_keys=True, ensure_ascii=False) for p in pushes(sandbox)]


def lift_limits(sandbox: Sandbox) -> None:
    for app in _apps(sandbox).values():
        register_app(sandbox, replace(app, rate_limit=10**9))


STANDIN = Standin(
    platform=PLATFORM, setup=setup, point=point, accept=accept, posts_made=posts_made, lift_limits=lift_limits
)
