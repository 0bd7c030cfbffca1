"""X (Twitter) API v2 stand-in: posts, deletes, the account's recent posts, and the v2 media upload.

Routes, on X's own paths so a channel whose ``api_base`` is the sandbox root reaches them unchanged:

* ``POST /2/tweets`` ``{"text", "media": {"media_ids": [...]}}`` -> 201 ``{"data": {"id", "text",
  "edit_history_tweet_ids"}}``. ``DELETE /2/tweets/{id}`` -> ``{"data": {"deleted": true}}`` (404 when unknown).
* ``GET /2/tweets?ids=<id,...>&tweet.fields=public_metrics`` (1-100 numeric ids): the live posts among them with
  ``public_metrics`` (``retweet_count``, ``reply_count``, ``like_count``, ``quote_count``, ``bookmark_count``,
  ``impression_count``) when asked for, figures that grow with the post's age (``adapters.reach_curve``), and an
  ``errors[]`` entry (``resource-not-found``, "Could not find tweet with ids: [...]") for each unknown or deleted
  id, with HTTP 200 as X answers a partial lookup. Its own window: 900 calls per 15 minutes (``set_lookup_rate_limit``).
* ``GET /2/users/me`` and ``GET /2/users/{id}/tweets?max_results=&start_time=&pagination_token=`` (newest first,
  links shown as t.co links; ``meta.next_token`` while older posts remain, as X pages them).
* ``POST /2/media/upload`` (multipart ``media``, ``media_category``) -> ``{"data": {"id", "media_key", "size",
  "expires_after_secs", "image"}}``: JPEG, PNG or WEBP by content, at most 5 MB. An animated GIF is refused here:
  X takes GIFs through the chunked upload, with ``media_category`` ``tweet_gif``, up to 15 MB:
* ``POST /2/media/upload/initialize`` (JSON ``media_type``, ``total_bytes``, ``media_category``) -> ``{"data":
  {"id", "media_key", "expires_after_secs"}}``; ``POST /2/media/upload/{id}/append`` (multipart ``media``,
  ``segment_index`` 0-999, each segment at most 8 MB) -> ``{"data": {"expires_at"}}``; ``POST
  /2/media/upload/{id}/finalize`` -> ``{"data": {"id", "media_key", "size", "expires_after_secs",
  "processing_info": {"state": "pending", "check_after_secs"}}}``; ``GET /2/media/upload?command=STATUS&media_id=``
  -> ``processing_info`` ``pending`` -> ``in_progress`` -> ``succeeded`` (or ``failed`` with ``error`` ``{"code": 1,
  "name": "InvalidMedia", "message"}`` for a file that is not a whole GIF). Refused (400): a GIF over 15 MB, an
  image category over 5 MB, an APPEND to an unknown or finalized upload, a segment index out of 0-999 or past the
  next one (a missing segment), a FINALIZE whose segments do not add up to ``total_bytes`` ("Segments do not add up
  to provided total file size.").

Every request must be signed with OAuth 1.0a user context (HMAC-SHA1) by the sandbox account's four credentials
(``DEFAULT_*``; 401 otherwise). The signature is checked over the URL the request was sent to (scheme, host and
port as received, path, query), as X checks it (docs.x.com "Creating a signature": the base URL is the one the
request is sent to), with oauthlib's server-side helpers: a signature over another host is refused.

X's own checks: the text's twitter-text weighted length (over 280 -> 400 invalid request), duplicate content (the
same text as a live post -> 403 "duplicate content"), media ids that this account uploaded and X has finished
processing, at most 4 images or exactly one GIF (a GIF with other media, or two GIFs, is 400). Every ``/2/tweets``
answer carries ``x-rate-limit-limit``, ``-remaining`` and ``-reset`` (unix seconds) for a per-account window
(``set_rate_limit``; 429 when exceeded). Errors are RFC 7807 problems as X sends them.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from oauthlib.common import safe_string_equals
from oauthlib.oauth1.rfc5849 import signature as oauth_signature
from oauthlib.oauth1.rfc5849.utils import escape as oauth_escape
from twitter_text import parse_tweet

from adapters.reach_curve import grown_figure, standin_clock
from syndicate.sandbox.app import Standin
from syndicate.sandbox.core import Call, Sandbox, read_json

PLATFORM = "x"
DEFAULT_CONSUMER_KEY = "sandbox-x-consumer-key"
DEFAULT_CONSUMER_SECRET = "sandbox-x-consumer-secret"
DEFAULT_ACCESS_TOKEN = "1900000000000000001-sandbox-x-access-token"
DEFAULT_ACCESS_TOKEN_SECRET = "sandbox-x-access-token-secret"
RATE_WINDOW_SECONDS = 15 * 60
DEFAULT_RATE_LIMIT = 100
#: GET /2/tweets (lookup by ids): 900 requests per 15 minutes per user ([x-rl-transcript] in docs/platforms.md).
DEFAULT_LOOKUP_RATE_LIMIT = 900
MAX_LOOKUP_IDS = 100
#: What a post reaches in the stand-in when fully grown (before each post's own weight): impressions, then the
#: interactions, far fewer, as on X.
FULL_PUBLIC_METRICS = {
    "retweet_count": 40,
    "reply_count": 25,
    "like_count": 180,
    "quote_count": 8,
    "bookmark_count": 15,
    "impression_count": 12_000,
}
DEFAULT_DAILY_LIMIT = 10_000
DAY_SECONDS = 24 * 3600
MAX_MEDIA_BYTES = 5 * 1024 * 1024
MAX_GIF_BYTES = 15 * 1024 * 1024
#: APPEND: "Keep each segment at or below 5 MB (server maximum is 8 MB)"; segment_index 0-999.
MAX_SEGMENT_BYTES = 8 * 1024 * 1024
MAX_SEGMENT_INDEX = 999
GIF_CATEGORIES = frozenset({"tweet_gif", "dm_gif"})
IMAGE_CATEGORIES = frozenset({"tweet_image", "dm_image"})
#: Seconds X tells a client to wait before it asks for the processing state again; STATUS calls until a GIF is done.
DEFAULT_CHECK_AFTER_SECS = 1
DEFAULT_PROCESSING_POLLS = 2
MAX_MEDIA = 4
_LINK = re.compile(r"https?://[\x21-\x7e]+")


@dataclass
class ChunkedUpload:
    """One chunked upload: what INIT announced, the segments APPENDed (by index), and the processing state."""

    media_type: str
    media_category: str
    total_bytes: int
    segments: dict[int, bytes] = field(default_factory=dict)
    #: None until FINALIZE; then pending, in_progress, succeeded or failed.
    state: str | None = None
    polls_left: int = 0
    size: int = 0


@dataclass
class RateWindow:
    """One of X's counting windows and the headers that announce it: the 15-minute ones (``x-rate-limit-*``) and
    the user's 24-hour posting cap (``x-user-limit-24hour-*``)."""

    limit: int
    seconds: float = RATE_WINDOW_SECONDS
    header: str = "x-rate-limit"
    start: float = 0.0
    count: int = 0

    def reset(self, limit: int) -> None:
        self.limit, self.start, self.count = limit, 0.0, 0

    def take(self) -> tuple[dict[str, str], bool]:
        """Count one call: the headers X sends with it, and whether it is over the limit (429)."""
        now = time.time()
        if now - self.start >= self.seconds:
            self.start, self.count = now, 0
        self.count += 1
        headers = {
            f"{self.header}-limit": str(self.limit),
            f"{self.header}-remaining": str(max(self.limit - self.count, 0)),
            f"{self.header}-reset": str(int(self.start + self.seconds)),
        }
        return headers, self.count > self.limit


@dataclass
class XState:
    consumer_key: str = DEFAULT_CONSUMER_KEY
    consumer_secret: str = DEFAULT_CONSUMER_SECRET
    access_token: str = DEFAULT_ACCESS_TOKEN
    access_token_secret: str = DEFAULT_ACCESS_TOKEN_SECRET
    user_id: str = "1900000000000000001"
    username: str = "syndicate_sandbox"
    #: Posts and deletes share one 15-minute window; the lookup endpoint has its own.
    window: RateWindow = field(default_factory=lambda: RateWindow(DEFAULT_RATE_LIMIT))
    lookup_window: RateWindow = field(default_factory=lambda: RateWindow(DEFAULT_LOOKUP_RATE_LIMIT))
    #: Posts per 24 hours for the user (X's x-user-limit-24hour-* caps, per access tier), and that window.
    #: False: the app has Read permission only (or the token predates Read and Write): posts and deletes are 403.
    can_write: bool = True
    daily: RateWindow = field(
        default_factory=lambda: RateWindow(DEFAULT_DAILY_LIMIT, seconds=DAY_SECONDS, header="x-user-limit-24hour")
    )
    posts: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id, insertion order = oldest first
    #: Media a post may carry (uploaded, processed), by id: ``{"size", "type", "sha256"}``.
    media: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Chunked uploads by media id, from initialize until processing ends.
    uploads: dict[str, ChunkedUpload] = field(default_factory=dict)
    check_after_secs: int = DEFAULT_CHECK_AFTER_SECS
    processing_polls: int = DEFAULT_PROCESSING_POLLS


def x_state(sandbox: Sandbox) -> XState:
    state: XState = sandbox.store(PLATFORM).setdefault("state", XState())
    return state


def set_rate_limit(sandbox: Sandbox, per_window: int) -> None:
    """Allow ``per_window`` post/delete calls per 15 minutes from now on (a fresh window starts)."""
    x_state(sandbox).window.reset(per_window)


def set_lookup_rate_limit(sandbox: Sandbox, per_window: int) -> None:
    """Allow ``per_window`` lookups (``GET /2/tweets``) per 15 minutes from now on (a fresh window starts)."""
    x_state(sandbox).lookup_window.reset(per_window)


CREDENTIALS = ("consumer_key", "consumer_secret", "access_token", "access_token_secret")


def set_credentials(sandbox: Sandbox, **credentials: str) -> None:
    """Change what the stand-in accepts (consumer_key, consumer_secret, access_token, access_token_secret)."""
    state = x_state(sandbox)
    for name, value in credentials.items():
        if name not in CREDENTIALS:
            raise TypeError(f"unknown credential {name!r}")
        setattr(state, name, value)


def posts(sandbox: Sandbox, *, include_deleted: bool = False) -> list[dict[str, Any]]:
    """The account's posts, oldest first (``deleted`` marks the deleted ones)."""
    return [dict(p) for p in x_state(sandbox).posts.values() if include_deleted or not p["deleted"]]


def problem(
    status: int, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    body = {"title": title, "detail": detail, "type": "about:blank", "status": status, **extra}
    return web.json_response(body, status=status, headers=headers)


def _verify(request: web.Request, state: XState) -> web.Response | None:
    """None if the request carries a valid OAuth 1.0a HMAC-SHA1 signature by the account's credentials."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("OAuth "):
        return problem(401, "Unauthorized", "Unauthorized: OAuth 1.0a user context required")
    oauth = {
        key.strip(): unquote(value.strip().strip('"'))
        for key, _, value in (part.partition("=") for part in header[6:].split(","))
    }
    if oauth.get("oauth_consumer_key") != state.consumer_key or oauth.get("oauth_token") != state.access_token:
        return problem(401, "Unauthorized", "Unauthorized")
    if oauth.get("oauth_signature_method") != "HMAC-SHA1":
        return problem(401, "Unauthorized", "Unauthorized: only HMAC-SHA1 signatures")
    params = [(k, v) for k, v in request.query.items()]
    params += [(k, v) for k, v in oauth.items() if k != "oauth_signature" and k != "realm"]
    base = oauth_signature.signature_base_string(
        request.method.upper(),  # type: ignore[arg-type]  # types-oauthlib wants a verb Literal; any str works
        oauth_signature.base_string_uri(f"{request.scheme}://{request.host}{request.path}"),
        oauth_signature.normalize_parameters(params),  # type: ignore[arg-type]  # stub says dict; it takes pairs
    )
    key = f"{oauth_escape(state.consumer_secret)}&{oauth_escape(state.access_token_secret)}"
    expected = base64.b64encode(hmac.new(key.encode(), base.encode(), hashlib.sha1).digest()).decode()
    if not safe_string_equals(expected, oauth.get("oauth_signature", "")):
        return problem(401, "Unauthorized", "Unauthorized: the OAuth signature does not match")
    return None


def set_can_write(sandbox: Sandbox, can_write: bool) -> None:
    """Give the app Read and Write permission, or Read only (posting then answers 403, as X does)."""
    x_state(sandbox).can_write = can_write


def set_daily_limit(sandbox: Sandbox, per_day: int) -> None:
    """Allow ``per_day`` posts per 24 hours from now on (a fresh day starts)."""
    state = x_state(sandbox)
    state.daily.reset(per_day)


def _shown(text: str) -> str:
    return _LINK.sub(lambda m: "https://t.co/" + hashlib.sha256(m.group().encode()).hexdigest()[:10], text)


def _public(post: dict[str, Any]) -> dict[str, Any]:
    return {"id": post["id"], "text": post["text"], "edit_history_tweet_ids": [post["id"]]}


async def create_tweet(request: web.Request, call: Call) -> web.Response:
    state = x_state(call.sandbox)
    refused = _verify(request, state)
    if refused is not None:
        return refused
    body = await read_json(request)
    call.record(body)
    headers, limited = state.window.take()
    if limited:
        return problem(429, "Too Many Requests", "Too Many Requests", headers=headers)
    if not state.can_write:
        return problem(403, "Forbidden", "You are not permitted to perform this action.", headers=headers)
    daily, capped = state.daily.take()
    headers.update(daily)
    if capped:
        return problem(429, "Too Many Requests", "Too Many Requests", headers=headers)
    text = body.get("text") if isinstance(body, dict) else None
    media_ids = ((body.get("media") or {}).get("media_ids") or []) if isinstance(body, dict) else []
    if not isinstance(text, str) or not text:
        return _invalid("text is required", headers)
    if not parse_tweet(text).valid:
        return _invalid(f"text is {parse_tweet(text).weightedLength} weighted characters; at most 280", headers)
    if len(media_ids) > MAX_MEDIA or any(m not in state.media for m in media_ids):
        return _invalid(
            f"media.media_ids must be at most {MAX_MEDIA} ids this account uploaded and X finished processing", headers
        )
    gifs = [m for m in media_ids if state.media[m]["type"] == "image/gif"]
    if gifs and len(media_ids) > 1:
        return _invalid(
            "a post may carry up to 4 photos, 1 animated GIF or 1 video: not a GIF with other media", headers
        )
    if any(p["sent_text"] == text and not p["deleted"] for p in state.posts.values()):
        return problem(
            403, "Forbidden", "You are not allowed to create a Tweet with duplicate content.", headers=headers
        )
    post_id = str(1_800_000_000_000_000_000 + int(call.next_id("x").split("-")[1]))
    state.posts[post_id] = {
        "id": post_id,
        "text": _shown(text),
        "sent_text": text,
        "media_ids": list(media_ids),
        "deleted": False,
        "at": time.time(),
    }
    return web.json_response({"data": _public(state.posts[post_id])}, status=201, headers=headers)


def _invalid(message: str, headers: dict[str, str]) -> web.Response:
    return web.json_response(
        {
            "errors": [{"message": message}],
            "title": "Invalid Request",
            "detail": "One or more parameters to your request was invalid.",
            "type": "https://api.twitter.com/2/problems/invalid-request",
        },
        status=400,
        headers=headers,
    )


async def delete_tweet(request: web.Request, call: Call) -> web.Response:
    state = x_state(call.sandbox)
    refused = _verify(request, state)
    if refused is not None:
        return refused
    call.record(None)
    headers, limited = state.window.take()
    if limited:
        return problem(429, "Too Many Requests", "Too Many Requests", headers=headers)
    post = state.posts.get(request.match_info["id"])
    if post is None or post["deleted"]:
        return problem(404, "Not Found Error", f"Could not find tweet with id: [{request.match_info['id']}].")
    post["deleted"] = True
    return web.json_response({"data": {"deleted": True}}, headers=headers)


def public_metrics(post: dict[str, Any], now: float) -> dict[str, int]:
    """The post's public metrics at ``now``: deterministic, growing with its age."""
    age = now - float(post["at"])
    return {name: grown_figure(f"x:{post['id']}", name, age, full=full) for name, full in FULL_PUBLIC_METRICS.items()}


async def lookup_tweets(request: web.Request, call: Call) -> web.Response:
    """``GET /2/tweets?ids=``: X answers the ids it can show in ``data`` and each other one in ``errors``."""
    state = x_state(call.sandbox)
    refused = _verify(request, state)
    if refused is not None:
        return refused
    call.record(dict(request.query))
    headers, limited = state.lookup_window.take()
    if limited:
        return problem(429, "Too Many Requests", "Too Many Requests", headers=headers)
    ids = [part for part in request.query.get("ids", "").split(",") if part]
    if not ids or len(ids) > MAX_LOOKUP_IDS or not all(part.isdigit() for part in ids):
        return _invalid(f"ids must be 1 to {MAX_LOOKUP_IDS} comma-separated numeric post ids", headers)
    fields = set(request.query.get("tweet.fields", "").split(","))
    now = standin_clock(call.sandbox)()
    found: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for post_id in ids:
        post = state.posts.get(post_id)
        if post is None or post["deleted"] or float(post["at"]) > now:
            missing.append(
                {
                    "value": post_id,
                    "detail": f"Could not find tweet with ids: [{post_id}].",
                    "title": "Not Found Error",
                    "resource_type": "tweet",
                    "parameter": "ids",
                    "resource_id": post_id,
                    "type": "https://api.twitter.com/2/problems/resource-not-found",
                }
            )
            continue
        shown = _public(post)
        if "public_metrics" in fields:
            shown["public_metrics"] = public_metrics(post, now)
        found.append(shown)
    body: dict[str, Any] = {}
    if found:
        body["data"] = found
    if missing:
        body["errors"] = missing
    return web.json_response(body, headers=headers)


async def me(request: web.Request, call: Call) -> web.Response:
    state = x_state(call.sandbox)
    refused = _verify(request, state)
    if refused is not None:
        return refused
    return web.json_response({"data": {"id": state.user_id, "name": "Syndicate Sandbox", "username": state.username}})


async def user_tweets(request: web.Request, call: Call) -> web.Response:
    state = x_state(call.sandbox)
    refused = _verify(request, state)
    if refused is not None:
        return refused
    if request.match_info["id"] != state.user_id:
        return problem(404, "Not Found Error", f"Could not find user with id: [{request.match_info['id']}].")
    try:
        limit = min(max(int(request.query.get("max_results", "10")), 5), 100)
    except ValueError:
        return _invalid("max_results must be an integer from 5 to 100", {})
    newest_first = [p for p in reversed(state.posts.values()) if not p["deleted"]]
    if "start_time" in request.query:
        try:
            since = dt.datetime.fromisoformat(request.query["start_time"].replace("Z", "+00:00")).timestamp()
        except ValueError:
            return _invalid("start_time must be an RFC 3339 time (YYYY-MM-DDTHH:mm:ssZ)", {})
        newest_first = [p for p in newest_first if p["at"] >= since]
    token = request.query.get("pagination_token", "")
    offset = int(token.removeprefix("page-")) if token.startswith("page-") and token[5:].isdigit() else 0
    if token and not offset:
        return _invalid(f"pagination_token {token!r} is not one this endpoint handed out", {})
    live = [_public(p) for p in newest_first[offset : offset + limit]]
    meta: dict[str, Any] = {"result_count": len(live)}
    if live:
        meta.update(newest_id=live[0]["id"], oldest_id=live[-1]["id"])
    if offset + limit < len(newest_first):
        meta["next_token"] = f"page-{offset + limit}"
    return web.json_response({"data": live, "meta": meta} if live else {"meta": meta})


def _new_media_id(call: Call) -> str:
    return str(1_700_000_000_000_000_000 + int(call.next_id("x-media").split("-")[2]))


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


async def upload_media(request: web.Request, call: Call) -> web.Response:
    state = x_state(call.sandbox)
    refused = _verify(request, state)
    if refused is not None:
        return refused
    form = await request.post()
    media = form.get("media")
    category = form.get("media_category")
    if not isinstance(media, web.FileField):
        return _invalid("media (a multipart file) is required", {})
    data = media.file.read()
    call.record({"media": {"filename": media.filename, "size": len(data)}, "media_category": category})
    kind = _sniff(data)
    if kind is None:
        return _invalid("media type unrecognized: JPEG, PNG, GIF or WEBP", {})
    if kind == "image/gif":
        return _invalid(
            "animated GIFs go through the chunked upload (/2/media/upload/initialize, append, finalize) with "
            "media_category tweet_gif",
            {},
        )
    if len(data) > MAX_MEDIA_BYTES:
        return _invalid(f"media is {len(data)} bytes; images may be at most {MAX_MEDIA_BYTES}", {})
    media_id = _new_media_id(call)
    state.media[media_id] = {"size": len(data), "type": kind, "sha256": hashlib.sha256(data).hexdigest()}
    return web.json_response(
        {
            "data": {
                "id": media_id,
                "media_key": f"3_{media_id}",
                "size": len(data),
                "expires_after_secs": 86400,
                "image": {"image_type": kind},
            }
        }
    )


async def initialize_upload(request: web.Request, call: Call) -> web.Response:
    state = x_state(call.sandbox)
    refused = _verify(request, state)
    if refused is not None:
        return refused
    body = await read_json(request)
    call.record(body)
    if not isinstance(body, dict):
        return _invalid("the body must be a JSON object with media_type, total_bytes and media_category", {})
    media_type, category, total = body.get("media_type"), body.get("media_category"), body.get("total_bytes")
    if not isinstance(media_type, str) or not media_type:
        return _invalid("media_type is required", {})
    if category not in GIF_CATEGORIES | IMAGE_CATEGORIES:
        return _invalid(f"media_category must be one of {sorted(GIF_CATEGORIES | IMAGE_CATEGORIES)}", {})
    if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
        return _invalid("total_bytes must be a positive integer", {})
    if (category in GIF_CATEGORIES) != (media_type == "image/gif"):
        return _invalid(f"media_category {category} does not take media_type {media_type}", {})
    limit = MAX_GIF_BYTES if category in GIF_CATEGORIES else MAX_MEDIA_BYTES
    if total > limit:
        return _invalid(f"total_bytes {total} is over the {limit} bytes {category} allows", {})
    media_id = _new_media_id(call)
    state.uploads[media_id] = ChunkedUpload(media_type=media_type, media_category=category, total_bytes=total)
    return web.json_response({"data": {"id": media_id, "media_key": f"16_{media_id}", "expires_after_secs": 86400}})


def _open_upload(state: XState, media_id: str) -> ChunkedUpload | web.Response:
    upload = state.uploads.get(media_id)
    if upload is None:
        return _invalid(f"media id {media_id} is not an upload this account initialized", {})
    if upload.state is not None:
        return _invalid(f"media id {media_id} is already finalized", {})
    return upload


async def append_upload(request: web.Request, call: Call) -> web.Response:
    state = x_state(call.sandbox)
    refused = _verify(request, state)
    if refused is not None:
        return refused
    form = await request.post()
    media, index_field = form.get("media"), form.get("segment_index")
    data = media.file.read() if isinstance(media, web.FileField) else None
    call.record({"segment_index": index_field, "size": None if data is None else len(data)})
    upload = _open_upload(state, request.match_info["id"])
    if isinstance(upload, web.Response):
        return upload
    if data is None:
        return _invalid("media (a multipart file) is required", {})
    try:
        index = int(str(index_field))
    except ValueError:
        return _invalid("segment_index is required (an integer)", {})
    if not 0 <= index <= MAX_SEGMENT_INDEX:
        return _invalid(f"SegmentIndex must be between 0 and {MAX_SEGMENT_INDEX}.", {})
    if index > len(upload.segments):
        return _invalid(f"segment_index {index} skips segment {len(upload.segments)}: segments go in order", {})
    if len(data) > MAX_SEGMENT_BYTES:
        return _invalid(f"the segment is {len(data)} bytes; at most {MAX_SEGMENT_BYTES}", {})
    upload.segments[index] = data  # a segment sent again (a retried APPEND) replaces itself
    return web.json_response({"data": {"expires_at": int(time.time()) + 86400}})


def _processing(upload: ChunkedUpload) -> dict[str, Any]:
    info: dict[str, Any] = {"state": upload.state}
    if upload.state == "failed":
        info["error"] = {"code": 1, "name": "InvalidMedia", "message": "file is invalid"}
    info["progress_percent"] = {"pending": 0, "in_progress": 50}.get(str(upload.state), 100)
    return info


def _whole_gif(data: bytes) -> bool:
    """A GIF that decodes to its end: the signature, the logical screen, and the trailer byte 0x3B."""
    return data[:6] in (b"GIF87a", b"GIF89a") and len(data) > 13 and data.endswith(b";")


async def finalize_upload(request: web.Request, call: Call) -> web.Response:
    state = x_state(call.sandbox)
    refused = _verify(request, state)
    if refused is not None:
        return refused
    call.record(None)
    media_id = request.match_info["id"]
    upload = _open_upload(state, media_id)
    if isinstance(upload, web.Response):
        return upload
    data = b"".join(upload.segments[i] for i in sorted(upload.segments))
    if len(data) != upload.total_bytes:
        return _invalid("Segments do not add up to provided total file size.", {})
    upload.size, upload.state, upload.polls_left = len(data), "pending", state.processing_polls
    kind = _sniff(data)
    if upload.media_category in GIF_CATEGORIES:
        valid = kind == "image/gif" and _whole_gif(data)
    else:
        valid = kind is not None and kind != "image/gif"
    # What processing will find: the media's type, or "invalid" (STATUS then ends in failed / InvalidMedia).
    upload.media_type = kind if valid and kind else "invalid"
    upload.segments = {}
    answer = _processing(upload) | {"check_after_secs": state.check_after_secs}
    return web.json_response(
        {
            "data": {
                "id": media_id,
                "media_key": f"16_{media_id}",
                "size": upload.size,
                "expires_after_secs": 86400,
                "processing_info": answer,
            }
        }
    )


async def upload_status(request: web.Request, call: Call) -> web.Response:
    state = x_state(call.sandbox)
    refused = _verify(request, state)
    if refused is not None:
        return refused
    call.record(dict(request.query))
    if request.query.get("command") != "STATUS":
        return _invalid("command=STATUS and media_id are required", {})
    media_id = request.query.get("media_id", "")
    upload = state.uploads.get(media_id)
    if upload is None or upload.state is None:
        return _invalid(f"media id {media_id} is not a finalized upload of this account", {})
    if upload.state in ("pending", "in_progress"):
        upload.polls_left -= 1
        if upload.polls_left > 0:
            upload.state = "in_progress"
        elif upload.media_type == "invalid":
            upload.state = "failed"
        else:
            upload.state = "succeeded"
            state.media[media_id] = {"size": upload.size, "type": upload.media_type, "sha256": ""}
    info = _processing(upload)
    if upload.state in ("pending", "in_progress"):
        info["check_after_secs"] = state.check_after_secs
    return web.json_response({"data": {"id": media_id, "media_key": f"16_{media_id}", "processing_info": info}})


def set_gif_processing(sandbox: Sandbox, *, polls: int, check_after_secs: int) -> None:
    """How many STATUS calls a finalized upload takes to finish, and the check_after_secs the answers carry."""
    state = x_state(sandbox)
    state.processing_polls, state.check_after_secs = max(polls, 1), check_after_secs


def setup(app: web.Application, sandbox: Sandbox) -> None:
    """Add X's paths and ``POST /_sandbox/x/rate_limit {"per_window": n}``."""
    wrap = sandbox.handler(PLATFORM)
    app.router.add_post("/2/tweets", wrap(create_tweet))
    app.router.add_get("/2/tweets", wrap(lookup_tweets))
    app.router.add_delete("/2/tweets/{id}", wrap(delete_tweet))
    app.router.add_get("/2/users/me", wrap(me))
    app.router.add_get("/2/users/{id}/tweets", wrap(user_tweets))
    app.router.add_post("/2/media/upload", wrap(upload_media))
    app.router.add_get("/2/media/upload", wrap(upload_status))
    app.router.add_post("/2/media/upload/initialize", wrap(initialize_upload))
    app.router.add_post("/2/media/upload/{id}/append", wrap(append_upload))
    app.router.add_post("/2/media/upload/{id}/finalize", wrap(finalize_upload))

    async def post_rate_limit(request: web.Request) -> web.Response:
        data = await read_json(request)
        per_window = data.get("per_window") if isinstance(data, dict) else None
        if not isinstance(per_window, int) or isinstance(per_window, bool) or per_window < 0:
            return _invalid('body must be {"per_window": <int >= 0>}', {})
        set_rate_limit(sandbox, per_window)
        return web.json_response({"per_window": per_window})

    app.router.add_post("/_sandbox/x/rate_limit", post_rate_limit)


def accept(sandbox: Sandbox, name: str, options: Mapping[str, Any]) -> None:
    set_credentials(sandbox, **{key: options[key] for key in CREDENTIALS})


def posts_made(sandbox: Sandbox) -> list[str]:
    """Every post made, deleted ones too, by its text (X takes no idempotency key)."""
    return [p["sent_text"] for p in posts(sandbox, include_deleted=True)]


def lift_limits(sandbox: Sandbox) -> None:
    set_rate_limit(sandbox, 10**9)
    set_lookup_rate_limit(sandbox, 10**9)
    set_daily_limit(sandbox, 10**9)


STANDIN = Standin(platform=PLATFORM, setup=setup, accept=accept, posts_made=posts_made, lift_limits=lift_limits)
