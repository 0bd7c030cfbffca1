"""Generic webhook receiver stand-in, Stripe-style idempotency included.

``POST /webhook/<name>`` accepts any JSON and answers ``{"id": "wh-<n>"}``. A repeated ``Idempotency-Key`` for
the same name gets the original id back (and is still recorded, so tests can see the duplicate arrive).
``GET /webhook/<name>?key=<idempotency key>`` looks a receipt up: this is what an adapter's ``lookup`` uses to
learn whether an attempt that timed out actually landed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from syndicate.sandbox.app import Standin
from syndicate.sandbox.core import Call, Sandbox, bad_request, json_error, read_json

PLATFORM = "webhook"


def _receipts(call: Call) -> dict[str, str]:
    """Idempotency key -> remote id for this receiver (each webhook name is its own keyspace)."""
    by_name: dict[str, dict[str, str]] = call.store.setdefault("receipts", {})
    return by_name.setdefault(call.receiver, {})


async def deliver(request: web.Request, call: Call) -> web.Response:
    body = await read_json(request)
    call.record(body)
    receipts = _receipts(call)
    key = call.idempotency_key
    if key is not None and key in receipts:
        return web.json_response({"id": receipts[key]}, headers={"Idempotent-Replayed": "true"})
    remote_id = call.next_id("wh")
    if key is not None:
        receipts[key] = remote_id
    return web.json_response({"id": remote_id})


async def lookup(request: web.Request, call: Call) -> web.Response:
    key = request.query.get("key")
    if not key:
        raise bad_request("missing_key", "pass the idempotency key as ?key=<key>")
    remote_id = _receipts(call).get(key)
    if remote_id is None:
        return json_error(404, "not_found", f"no delivery with idempotency key {key!r}", idempotency_key=key)
    return web.json_response({"id": remote_id, "idempotency_key": key})


def setup(app: web.Application, sandbox: Sandbox) -> None:
    """Add the webhook routes; the receiver (stats key, fault ``name``) is the ``<name>`` path segment."""
    wrap = sandbox.handler(PLATFORM, receiver=lambda request: request.match_info["name"])
    app.router.add_post("/webhook/{name}", wrap(deliver))
    app.router.add_get("/webhook/{name}", wrap(lookup))


def point(base: str, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The channel posts to (and looks receipts up at, when it does) the receiver named after it."""
    receiver = f"{base}/webhook/{name}"
    return {**options, "url": receiver, **({"lookup_url": receiver} if "lookup_url" in options else {})}


def posts_made(sandbox: Sandbox) -> list[str]:
    """Every delivery a receiver took as new: by idempotency key (a resend with the same key is answered with the
    first receipt and makes nothing), and by body for a POST without a key (each of those is new)."""
    by_receiver: dict[str, dict[str, str]] = sandbox.store(PLATFORM).get("receipts", {})
    keyed = [key for receipts in by_receiver.values() for key in receipts]
    unkeyed = [repr(r.body) for r in sandbox.received(PLATFORM) if r.method == "POST" and r.idempotency_key is None]
    return keyed + unkeyed


STANDIN = Standin(platform=PLATFORM, setup=setup, point=point, posts_made=posts_made)
