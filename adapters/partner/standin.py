"""Partner platform stand-in (People's Account, Shangguan...): a signed JSON article API.

Routes, one keyspace per partner ``<name>`` (the receiver for stats and fault rules):

* ``POST /partner/<name>/articles`` creates an article: 201 ``{"code": 0, "remote_id", "url", "status"}``; an
  ``idempotency_key`` seen before (the body field, else the ``Idempotency-Key`` header, so a renamed field still
  deduplicates) answers 409 with the existing ``remote_id``.
* ``GET /partner/<name>/articles?key=<idempotency key>`` looks an article up (200, or 404 ``code`` 40401).
* ``PUT /partner/<name>/articles/<remote_id>`` replaces it, ``DELETE`` retracts it (404 when unknown or gone).

Every request must carry ``X-App-Key``, ``X-Timestamp``, ``X-Nonce`` and ``X-Signature`` = hex
HMAC-SHA256(secret, ``"<METHOD>\\n<path?query>\\n<ts>\\n<nonce>\\n<raw body>\\n"``), the path and query being the
request target as received (``request.raw_path``). A wrong app key or signature (one made for another method or
path included), a timestamp more than 300 s off, or a nonce seen before is refused with 401. The check is
written here independently of the adapter, so a signing bug in the adapter cannot be mirrored by the partner it is
tested against.

Credentials default to ``DEFAULT_APP_KEY`` / ``DEFAULT_SECRET`` for any name; ``set_credentials`` (or
``POST /_sandbox/partner/<name>/credentials {"app_key", "secret"}``) registers others. ``set_review`` (or
``POST /_sandbox/partner/<name>/review {"pending": true}``) makes new and updated articles wait for an editor:
``status`` ``pending_review`` and no public ``url``. Errors are ``{"code": <int>, "message": ...}``; requests that
pass the signature check and change something are recorded (lookups are not).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from syndicate.sandbox.app import Standin
from syndicate.sandbox.core import Call, Sandbox, read_json

PLATFORM = "partner"
DEFAULT_APP_KEY = "sandbox-partner-app"
DEFAULT_SECRET = "sandbox-partner-secret"
#: Largest difference between X-Timestamp and the partner's clock, in seconds.
MAX_SKEW_SECONDS = 300

# The partner's error codes (HTTP status * 100 + a detail), as its documentation would list them.
BAD_JSON = 40000
MISSING_KEY = 40001
MISSING_LOOKUP_KEY = 40002
MISSING_HEADER = 40100
WRONG_APP_KEY = 40101
BAD_TIMESTAMP = 40102
STALE_TIMESTAMP = 40103
WRONG_SIGNATURE = 40104
REUSED_NONCE = 40105
NOT_FOUND = 40400
DUPLICATE = 40900


@dataclass
class Article:
    """One article as the partner holds it."""

    remote_id: str
    idempotency_key: str
    body: dict[str, Any]
    status: str
    url: str | None

    def answer(self) -> dict[str, Any]:
        return {"code": 0, "remote_id": self.remote_id, "url": self.url, "status": self.status}


@dataclass
class PartnerState:
    """One partner's remote state: its credentials, review mode, seen nonces and articles."""

    app_key: str = DEFAULT_APP_KEY
    secret: str = DEFAULT_SECRET
    pending_review: bool = False
    nonces: dict[str, float] = field(default_factory=dict)
    articles: dict[str, Article] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)

    def remember_nonce(self, nonce: str, now: float) -> bool:
        """False if ``nonce`` was seen before. Nonces older than the window are dropped: their timestamps would be
        refused anyway, and the signature binds nonce and timestamp together."""
        if nonce in self.nonces:
            return False
        if len(self.nonces) > 4096:
            horizon = now - 2 * MAX_SKEW_SECONDS
            self.nonces = {n: at for n, at in self.nonces.items() if at >= horizon}
        self.nonces[nonce] = now
        return True


def partner_state(sandbox: Sandbox, name: str) -> PartnerState:
    """The state of partner ``name`` (created with the default credentials on first use; ``reset`` wipes it)."""
    partners: dict[str, PartnerState] = sandbox.store(PLATFORM).setdefault("partners", {})
    return partners.setdefault(name, PartnerState())


def set_credentials(sandbox: Sandbox, name: str, *, app_key: str, secret: str) -> None:
    """Make partner ``name`` accept only this app key and secret."""
    state = partner_state(sandbox, name)
    state.app_key, state.secret = app_key, secret


def set_review(sandbox: Sandbox, name: str, pending: bool) -> None:
    """Review mode: new and updated articles of partner ``name`` answer ``pending_review`` without a URL."""
    partner_state(sandbox, name).pending_review = pending


def articles(sandbox: Sandbox, name: str) -> dict[str, Article]:
    """Partner ``name``'s articles by remote id (retracted ones stay, with status ``retracted``)."""
    return dict(partner_state(sandbox, name).articles)


def partner_error(http_status: int, code: int, message: str, /, **extra: Any) -> web.Response:
    """The partner's error shape: ``{"code": <int>, "message": ...}`` (``extra`` may carry ``status``)."""
    return web.json_response({"code": code, "message": message, **extra}, status=http_status)


def _unauthorized(code: int, message: str) -> web.Response:
    return partner_error(401, code, message)


def _authenticate(request: web.Request, state: PartnerState, raw: bytes) -> web.Response | None:
    """None if the request is signed by this partner's credentials, else the 401 to answer."""
    headers = request.headers
    for name in ("X-App-Key", "X-Timestamp", "X-Nonce", "X-Signature"):
        if not headers.get(name):
            return _unauthorized(MISSING_HEADER, f"missing {name} header")
    if not hmac.compare_digest(headers["X-App-Key"].encode(), state.app_key.encode()):
        return _unauthorized(WRONG_APP_KEY, "unknown X-App-Key")
    timestamp = headers["X-Timestamp"]
    try:
        sent_at = int(timestamp)
    except ValueError:
        return _unauthorized(BAD_TIMESTAMP, "X-Timestamp must be unix seconds")
    now = time.time()
    if abs(now - sent_at) > MAX_SKEW_SECONDS:
        return _unauthorized(
            STALE_TIMESTAMP,
            f"X-Timestamp is {abs(now - sent_at):.0f} s away from the partner's clock (at most {MAX_SKEW_SECONDS} s)",
        )
    nonce = headers["X-Nonce"]
    # The method and the raw request target are signed too: a signature captured on one request (a lookup) must not
    # authorise another (a DELETE) that happens to carry the same, empty, body.
    signed = f"{request.method}\n{request.raw_path}\n{timestamp}\n{nonce}\n".encode() + raw + b"\n"
    expected = hmac.new(state.secret.encode(), signed, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(headers["X-Signature"].lower().encode(), expected.encode()):
        return _unauthorized(
            WRONG_SIGNATURE,
            "X-Signature does not match HMAC-SHA256(secret, METHOD\\npath?query\\nts\\nnonce\\nbody\\n)",
        )
    if not state.remember_nonce(nonce, now):  # only a correctly signed request may use up a nonce
        return _unauthorized(REUSED_NONCE, "X-Nonce was already used: replayed request refused")
    return None


async def _read_article(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await read_json(request)
    except web.HTTPBadRequest:
        return partner_error(400, BAD_JSON, "request body is not valid JSON")
    if not isinstance(body, dict):
        return partner_error(400, BAD_JSON, "request body must be a JSON object")
    return body


def _publish_state(state: PartnerState, name: str, remote_id: str) -> tuple[str, str | None]:
    if state.pending_review:
        return "pending_review", None
    return "published", f"https://{name}.partner.example/articles/{remote_id}"


async def create(request: web.Request, call: Call) -> web.Response:
    state = partner_state(call.sandbox, call.receiver)
    refused = _authenticate(request, state, await request.read())
    if refused is not None:
        return refused
    body = await _read_article(request)
    if isinstance(body, web.Response):
        return body
    field_key = body.get("idempotency_key")
    key = field_key if isinstance(field_key, str) and field_key else call.idempotency_key
    call.record(body, idempotency_key=key)
    if not key:
        return partner_error(400, MISSING_KEY, "idempotency_key is required (body field or Idempotency-Key header)")
    existing = state.by_key.get(key)
    if existing is not None:
        article = state.articles[existing]
        return partner_error(
            409,
            DUPLICATE,
            f"duplicate idempotency_key: article {article.remote_id} already has it",
            remote_id=article.remote_id,
            url=article.url,
            status=article.status,
        )
    remote_id = call.next_id(call.receiver)
    status, url = _publish_state(state, call.receiver, remote_id)
    article = Article(remote_id=remote_id, idempotency_key=key, body=body, status=status, url=url)
    state.articles[remote_id] = article
    state.by_key[key] = remote_id
    return web.json_response(article.answer(), status=201)


async def lookup(request: web.Request, call: Call) -> web.Response:
    state = partner_state(call.sandbox, call.receiver)
    refused = _authenticate(request, state, await request.read())
    if refused is not None:
        return refused
    key = request.query.get("key")
    if not key:
        return partner_error(400, MISSING_LOOKUP_KEY, "pass the idempotency key as ?key=<key>")
    remote_id = state.by_key.get(key)
    if remote_id is None:
        return partner_error(404, NOT_FOUND, f"no article with idempotency_key {key!r}")
    article = state.articles[remote_id]
    return web.json_response({**article.answer(), "idempotency_key": key})


def _live_article(state: PartnerState, remote_id: str) -> Article | web.Response:
    article = state.articles.get(remote_id)
    if article is None or article.status == "retracted":
        return partner_error(404, NOT_FOUND, f"no article {remote_id!r}")
    return article


async def replace(request: web.Request, call: Call) -> web.Response:
    state = partner_state(call.sandbox, call.receiver)
    refused = _authenticate(request, state, await request.read())
    if refused is not None:
        return refused
    body = await _read_article(request)
    if isinstance(body, web.Response):
        return body
    call.record(body)
    article = _live_article(state, request.match_info["remote_id"])
    if isinstance(article, web.Response):
        return article
    article.body = body
    article.status, article.url = _publish_state(state, call.receiver, article.remote_id)
    return web.json_response(article.answer())


async def retract(request: web.Request, call: Call) -> web.Response:
    state = partner_state(call.sandbox, call.receiver)
    refused = _authenticate(request, state, await request.read())
    if refused is not None:
        return refused
    call.record(None)
    article = _live_article(state, request.match_info["remote_id"])
    if isinstance(article, web.Response):
        return article
    article.status, article.url = "retracted", None
    return web.json_response({"code": 0, "remote_id": article.remote_id, "status": "retracted"})


def setup(app: web.Application, sandbox: Sandbox) -> None:
    """Add the partner routes and their control endpoints (``/_sandbox/partner/<name>/review|credentials``)."""
    wrap = sandbox.handler(PLATFORM, receiver=lambda request: request.match_info["name"])
    app.router.add_post("/partner/{name}/articles", wrap(create))
    app.router.add_get("/partner/{name}/articles", wrap(lookup))
    app.router.add_put("/partner/{name}/articles/{remote_id}", wrap(replace))
    app.router.add_delete("/partner/{name}/articles/{remote_id}", wrap(retract))

    async def post_review(request: web.Request) -> web.Response:
        data = await read_json(request)
        if not isinstance(data, dict) or not isinstance(data.get("pending"), bool):
            return partner_error(400, BAD_JSON, 'body must be {"pending": true|false}')
        set_review(sandbox, request.match_info["name"], data["pending"])
        return web.json_response({"name": request.match_info["name"], "pending": data["pending"]})

    async def post_credentials(request: web.Request) -> web.Response:
        data = await read_json(request)
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), str) and data[k] for k in ("app_key", "secret")
        ):
            return partner_error(400, BAD_JSON, 'body must be {"app_key": "...", "secret": "..."}')
        set_credentials(sandbox, request.match_info["name"], app_key=data["app_key"], secret=data["secret"])
        return web.json_response({"name": request.match_info["name"], "app_key": data["app_key"]})

    app.router.add_post("/_sandbox/partner/{name}/review", post_review)
    app.router.add_post("/_sandbox/partner/{name}/credentials", post_credentials)


def point(base: str, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The channel is partner ``name`` of the stand-in (each name has its own credentials and articles)."""
    articles_url = f"{base}/partner/{name}/articles"
    return {**options, "url": articles_url, **({"lookup_url": articles_url} if "lookup_url" in options else {})}


def accept(sandbox: Sandbox, name: str, options: Mapping[str, Any]) -> None:
    set_credentials(sandbox, name, app_key=options["app_key"], secret=options["secret"])


def posts_made(sandbox: Sandbox) -> list[str]:
    """Every article the partners created, by idempotency key (a resend with a known key is a 409, not an article)."""
    partners: dict[str, PartnerState] = sandbox.store(PLATFORM).get("partners", {})
    return [article.idempotency_key for state in partners.values() for article in state.articles.values()]


STANDIN = Standin(platform=PLATFORM, setup=setup, point=point, accept=accept, posts_made=posts_made)
