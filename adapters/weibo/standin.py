"""Sina Weibo open API stand-in: ``POST /2/statuses/share.json``, ``GET /2/statuses/user_timeline.json`` and
``GET /2/account/rate_limit_status.json``.

What it checks, as Weibo does (https://open.weibo.com/wiki/2/statuses/share and the error code list):

* ``access_token`` (form field, query or ``Authorization: OAuth2 <token>``): unknown 21332 (invalid_access_token),
  expired 21327 (expired_token), an app without the share permission 10014.
* ``status``: required; at most 140 in Weibo's counting (20012 "text too long"), counted here independently of the
  adapter: a half-width character (U+0000-U+00FF) is half, other BMP characters one, others two, every link the
  10 of its t.cn short link, rounded up; it must contain a link on the app's safe domain (10017 otherwise, like
  Weibo's parameter errors) and no ``#topic#``.
* ``rip``: required, "the real IP of the user the developer reports" (an IP address; 10016 when missing, 10017
  when not an address).
* ``pic`` (multipart): JPEG, GIF or PNG by content (20005 otherwise), under 5 MB (20006).
* Duplicates: a status equal to one this account already posted is refused with 20019 (repeated weibo text); the
  same text with other links or spacing with 20017 (similar content).
* Rate limits, as Weibo's 接口访问频次权限 page describes them: ``per_hour`` share requests per authorised user
  (``set_rate_limit``; "发微博接口单授权用户每小时只能请求 30 次"), then 10024 (user requests for statuses/share out
  of rate limit); ``user_limit`` calls of any interface per user and hour (150, the figure in Weibo's tables and in
  rate_limit_status's example) and ``per_day`` per user and day (``set_daily_limit``; the page's example is 100),
  then 10023; ``ip_limit`` calls per hour from all callers (15000), then 10022. The hourly windows are clock hours
  (rate_limit_status's example ``reset_time`` is on the hour), the day a Beijing calendar day.
* ``GET /2/statuses/count.json?ids=<id,...>`` (1-100 ids; 10016 without ``ids``, 10017 for more or for one that
  is not a number) answers ``[{"id", "comments", "reposts", "attitudes"}]`` for the account's live statuses among
  them, figures growing with the status's age (``adapters.reach_curve``); unknown and deleted ids are left out of
  the list without an error, as v1's ``statuses/counts`` documents. Counted against the hourly and daily limits
  like every call. ``delete_status`` deletes one as its owner would on weibo.com.
* ``GET /2/account/rate_limit_status.json`` answers ``ip_limit``, ``limit_time_unit`` ("HOURS"),
  ``remaining_ip_hits``, ``remaining_user_hits``, ``reset_time`` (Beijing time), ``reset_time_in_seconds`` (seconds
  until the hour's window resets) and ``user_limit`` from those counters, and is not counted itself.

Errors have Weibo's shape ``{"error", "error_code", "request"}``. Posted statuses come back from the timeline
newest first, their links replaced by t.cn short links as Weibo shows them. Controls: ``set_rate_limit``,
``set_daily_limit``, ``set_token`` (``expired`` / ``revoked`` / ``no_permission``), ``set_safe_domain``, and
``POST /_sandbox/weibo/{rate_limit,token}``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from adapters.reach_curve import grown_figure, standin_clock
from syndicate.sandbox.app import Standin
from syndicate.sandbox.core import Call, Sandbox, read_json

PLATFORM = "weibo"
DEFAULT_ACCESS_TOKEN = "sandbox-weibo-token"
DEFAULT_SAFE_DOMAIN = "news.example.cn"
DEFAULT_PER_HOUR = 30
#: Calls of any interface per authorised user per hour, and from all callers per hour (Weibo's rate tables).
DEFAULT_USER_LIMIT = 150
DEFAULT_IP_LIMIT = 15000
#: Calls per authorised user per day: the page's example is 100, too few for the sandbox's demos and soaks, so the
#: daily limit is off unless a test sets one.
DEFAULT_PER_DAY: int | None = None
HOUR = 3600
BEIJING = dt.timezone(dt.timedelta(hours=8))
SHARE_PATH = "/2/statuses/share.json"
TIMELINE_PATH = "/2/statuses/user_timeline.json"
RATE_STATUS_PATH = "/2/account/rate_limit_status.json"
COUNT_PATH = "/2/statuses/count.json"
MAX_COUNT_IDS = 100
#: What a status reaches in the stand-in when fully grown (before each status's own weight).
FULL_COUNTS = {"reposts": 60, "comments": 35, "attitudes": 220}
MAX_PIC_BYTES = 5 * 1024 * 1024
MAX_LENGTH = 140

# Weibo's error codes (open.weibo.com/wiki/Error_code).
NO_PERMISSION = 10014
PARAM_ERROR = 10017
MISSING_PARAM = 10016
RATE_LIMITED_IP = 10022
RATE_LIMITED_USER = 10023
RATE_LIMITED_USER_API = 10024
UNSUPPORTED_IMAGE = 20005
IMAGE_TOO_LARGE = 20006
TEXT_TOO_LONG = 20012
SIMILAR_CONTENT = 20017
REPEATED_TEXT = 20019
EXPIRED_TOKEN = 21327
INVALID_TOKEN = 21332

_LINK = re.compile(r"https?://[\x21-\x7e]+")
_TOPIC = re.compile(r"#[^#\s]+#")


@dataclass
class WeiboAccount:
    """One authorised user: its token's state, its posts (newest last) and its call counters."""

    uid: int
    token_state: str = "valid"  # valid | expired | revoked | no_permission
    statuses: list[dict[str, Any]] = field(default_factory=list)
    #: The clock hour the hourly counters count (its start), and the share requests and all calls in it.
    window_start: float = 0.0
    window_count: int = 0
    hour_calls: int = 0
    #: The Beijing day the daily counter counts (its start), and the calls in it.
    day_start: float = 0.0
    day_calls: int = 0


@dataclass
class WeiboState:
    safe_domain: str = DEFAULT_SAFE_DOMAIN
    per_hour: int = DEFAULT_PER_HOUR
    user_limit: int = DEFAULT_USER_LIMIT
    ip_limit: int = DEFAULT_IP_LIMIT
    per_day: int | None = DEFAULT_PER_DAY
    accounts: dict[str, WeiboAccount] = field(default_factory=dict)
    #: Calls from every caller in the current clock hour (the sandbox has one caller IP).
    ip_window_start: float = 0.0
    ip_calls: int = 0


def weibo_state(sandbox: Sandbox) -> WeiboState:
    store = sandbox.store(PLATFORM)
    state: WeiboState | None = store.get("state")
    if state is None:
        state = store["state"] = WeiboState()
        state.accounts[DEFAULT_ACCESS_TOKEN] = WeiboAccount(uid=1_900_000_001)
    return state


def set_rate_limit(sandbox: Sandbox, per_hour: int, *, user_limit: int | None = None) -> None:
    """Allow ``per_hour`` share requests (and ``user_limit`` calls of any kind, when given) per account and hour
    from now on; the counts start again."""
    state = weibo_state(sandbox)
    state.per_hour = per_hour
    if user_limit is not None:
        state.user_limit = user_limit
    state.ip_window_start, state.ip_calls = 0.0, 0
    for account in state.accounts.values():
        account.window_start, account.window_count, account.hour_calls = 0.0, 0, 0


def set_daily_limit(sandbox: Sandbox, per_day: int | None) -> None:
    """Allow ``per_day`` calls per account and Beijing day from now on (None: no daily limit); the count starts
    again."""
    state = weibo_state(sandbox)
    state.per_day = per_day
    for account in state.accounts.values():
        account.day_start, account.day_calls = 0.0, 0


def _hour_start(now: float) -> float:
    return now - now % HOUR


def _day_start(now: float) -> float:
    local = dt.datetime.fromtimestamp(now, BEIJING)
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def _roll_windows(state: WeiboState, account: WeiboAccount, now: float) -> None:
    hour = _hour_start(now)
    if account.window_start != hour:
        account.window_start, account.window_count, account.hour_calls = hour, 0, 0
    if state.ip_window_start != hour:
        state.ip_window_start, state.ip_calls = hour, 0
    day = _day_start(now)
    if account.day_start != day:
        account.day_start, account.day_calls = day, 0


def _count_call(state: WeiboState, account: WeiboAccount, path: str, now: float) -> web.Response | None:
    """Count one call of an authorised user; Weibo's refusal when a limit is spent (the call counts anyway)."""
    _roll_windows(state, account, now)
    account.hour_calls += 1
    account.day_calls += 1
    state.ip_calls += 1
    if state.ip_calls > state.ip_limit:
        return _error(path, RATE_LIMITED_IP, "IP requests out of rate limit!", 403)
    if account.hour_calls > state.user_limit or (state.per_day is not None and account.day_calls > state.per_day):
        return _error(path, RATE_LIMITED_USER, "User requests out of rate limit!", 403)
    return None


def set_token(sandbox: Sandbox, token: str, token_state: str = "valid") -> None:
    """Register ``token`` (a new account) or change its state: valid, expired, revoked or no_permission."""
    state = weibo_state(sandbox)
    account = state.accounts.get(token)
    if account is None:
        account = state.accounts[token] = WeiboAccount(uid=1_900_000_001 + len(state.accounts))
    account.token_state = token_state


def set_safe_domain(sandbox: Sandbox, domain: str) -> None:
    weibo_state(sandbox).safe_domain = domain


def statuses(sandbox: Sandbox, token: str = DEFAULT_ACCESS_TOKEN) -> list[dict[str, Any]]:
    """The statuses an account posted, oldest first."""
    account = weibo_state(sandbox).accounts.get(token)
    return [dict(s) for s in account.statuses] if account else []


def weibo_count(text: str) -> int:
    """Weibo's length of ``text`` (see the module docstring), written apart from the adapter's counter."""
    halves = 0
    rest = _LINK.sub(lambda m: "\x00", text)
    halves += 20 * rest.count("\x00")
    for char in rest.replace("\x00", ""):
        halves += 1 if ord(char) < 0x100 else (2 if ord(char) < 0x10000 else 4)
    return math.ceil(halves / 2)


def _short_links(text: str) -> str:
    """The text as Weibo shows it: every link replaced by a t.cn short link."""
    return _LINK.sub(lambda m: "http://t.cn/" + hashlib.sha256(m.group().encode()).hexdigest()[:8], text)


def _similar_key(text: str) -> str:
    return re.sub(r"\s+", "", _LINK.sub("", text))


def _error(request_path: str, code: int, message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message, "error_code": code, "request": request_path}, status=status)


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def _token(request: web.Request, form: dict[str, Any]) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("OAuth2 "):
        return header[7:].strip()
    token = form.get("access_token") or request.query.get("access_token")
    return token if isinstance(token, str) else None


def _account(state: WeiboState, token: str | None, path: str) -> WeiboAccount | web.Response:
    account = state.accounts.get(token or "")
    if account is None or account.token_state == "revoked":
        return _error(path, INVALID_TOKEN, "invalid_access_token", 401)
    if account.token_state == "expired":
        return _error(path, EXPIRED_TOKEN, "expired_token", 401)
    if account.token_state == "no_permission":
        return _error(path, NO_PERMISSION, "Insufficient app permissions!", 403)
    return account


async def share(request: web.Request, call: Call) -> web.Response:
    state = weibo_state(call.sandbox)
    post = await request.post()
    form: dict[str, Any] = {}
    pic: bytes | None = None
    for key, value in post.items():
        if isinstance(value, web.FileField):
            data = value.file.read()
            if key == "pic":
                pic = data
            form[key] = {"filename": value.filename, "content_type": value.content_type, "size": len(data)}
        else:
            form[key] = value
    call.record({k: v for k, v in form.items() if k != "access_token"})
    account = _account(state, _token(request, form), SHARE_PATH)
    if isinstance(account, web.Response):
        return account
    now = time.time()
    refused = _count_call(state, account, SHARE_PATH, now)
    if refused is not None:
        return refused
    account.window_count += 1  # share requests, as Weibo counts them ("只能请求 30 次"), refused ones too
    if account.window_count > state.per_hour:
        return _error(SHARE_PATH, RATE_LIMITED_USER_API, "User requests for (statuses/share) out of rate limit!", 403)
    text = form.get("status")
    if not isinstance(text, str) or not text.strip():
        return _error(SHARE_PATH, MISSING_PARAM, "miss required parameter (status), see doc for more info.")
    # rip (true): the real IP of the user (or server) posting, e.g. 211.156.0.1 (open.weibo.com/wiki/2/statuses/share)
    rip = form.get("rip")
    if not isinstance(rip, str) or not rip:
        return _error(SHARE_PATH, MISSING_PARAM, "miss required parameter (rip), see doc for more info.")
    try:
        ipaddress.ip_address(rip)
    except ValueError:
        return _error(SHARE_PATH, PARAM_ERROR, f"parameter (rip)'s value invalid, expect (ip), but get ({rip})")
    if weibo_count(text) > MAX_LENGTH:
        return _error(SHARE_PATH, TEXT_TOO_LONG, "Text too long, please input text less than 140 characters!")
    if _TOPIC.search(_LINK.sub("", text)):
        return _error(SHARE_PATH, PARAM_ERROR, "status of statuses/share may not contain #topic#")
    hosts = [urlsplit(link).hostname or "" for link in _LINK.findall(text)]
    safe = state.safe_domain
    if not any(host == safe or host.endswith("." + safe) for host in hosts):
        return _error(SHARE_PATH, PARAM_ERROR, f"status must contain a link on the app's safe domain {safe}")
    if pic is not None:
        if _sniff(pic) is None:
            return _error(SHARE_PATH, UNSUPPORTED_IMAGE, "Unsupported image type, only suport JPG, GIF, PNG!")
        if len(pic) >= MAX_PIC_BYTES:
            return _error(SHARE_PATH, IMAGE_TOO_LARGE, "Image size too large.")
    for earlier in account.statuses:
        if earlier["_sent_text"] == text:
            return _error(SHARE_PATH, REPEATED_TEXT, "repeated weibo text!")
        if _similar_key(earlier["_sent_text"]) == _similar_key(text):
            return _error(SHARE_PATH, SIMILAR_CONTENT, "You just posted a similar message, please try again later.")
    number = int(call.next_id("weibo").split("-")[1])
    status_id = 4_400_000_000_000_000 + number
    created = dt.datetime.fromtimestamp(now, tz=dt.timezone(dt.timedelta(hours=8)))
    status: dict[str, Any] = {
        "created_at": created.strftime("%a %b %d %H:%M:%S %z %Y"),
        "id": status_id,
        "idstr": str(status_id),
        "mid": str(status_id),
        "text": _short_links(text),
        "source": '<a href="https://open.weibo.com" rel="nofollow">syndicate</a>',
        "user": {"id": account.uid, "idstr": str(account.uid)},
        "_sent_text": text,
        "_at": now,
        "_deleted": False,
    }
    if pic is not None:
        name = hashlib.sha256(pic).hexdigest()[:20]
        status["original_pic"] = f"https://wx1.sinaimg.cn/large/{name}.jpg"
    account.statuses.append(status)
    return web.json_response({k: v for k, v in status.items() if not k.startswith("_")})


async def user_timeline(request: web.Request, call: Call) -> web.Response:
    state = weibo_state(call.sandbox)
    account = _account(state, _token(request, {}), TIMELINE_PATH)
    if isinstance(account, web.Response):
        return account
    refused = _count_call(state, account, TIMELINE_PATH, time.time())
    if refused is not None:
        return refused
    try:
        count = min(max(int(request.query.get("count", "20")), 1), 100)
        page = max(int(request.query.get("page", "1")), 1)
    except ValueError:
        return _error(TIMELINE_PATH, PARAM_ERROR, "count and page must be integers")
    live = [s for s in account.statuses if not s["_deleted"]]
    newest_first = list(reversed(live))[(page - 1) * count : page * count]
    return web.json_response(
        {
            "statuses": [{k: v for k, v in s.items() if not k.startswith("_")} for s in newest_first],
            "total_number": len(live),
        }
    )


def status_counts(status: dict[str, Any], now: float) -> dict[str, int]:
    """A status's repost, comment and attitude counts at ``now``: deterministic, growing with its age."""
    age = now - float(status["_at"])
    return {name: grown_figure(f"weibo:{status['idstr']}", name, age, full=full) for name, full in FULL_COUNTS.items()}


async def count(request: web.Request, call: Call) -> web.Response:
    """``statuses/count``: the counts of the account's live statuses among ``ids``; others are left out."""
    state = weibo_state(call.sandbox)
    call.record({k: v for k, v in request.query.items() if k != "access_token"})
    account = _account(state, _token(request, {}), COUNT_PATH)
    if isinstance(account, web.Response):
        return account
    refused = _count_call(state, account, COUNT_PATH, time.time())
    if refused is not None:
        return refused
    raw_ids = request.query.get("ids", "")
    if not raw_ids:
        return _error(COUNT_PATH, MISSING_PARAM, "miss required parameter (ids), see doc for more info.")
    ids = raw_ids.split(",")
    if len(ids) > MAX_COUNT_IDS or not all(part.isdigit() for part in ids):
        return _error(COUNT_PATH, PARAM_ERROR, f"parameter (ids)'s value invalid, expect (1-{MAX_COUNT_IDS} ids)")
    now = standin_clock(call.sandbox)()
    by_id = {s["idstr"]: s for s in account.statuses if not s["_deleted"] and float(s["_at"]) <= now}
    counts = [{"id": by_id[i]["id"], **status_counts(by_id[i], now)} for i in ids if i in by_id]
    return web.json_response(counts)


def delete_status(sandbox: Sandbox, status_id: str, token: str = DEFAULT_ACCESS_TOKEN) -> None:
    """Delete a status as its owner would on weibo.com (the API offers a third-party app no delete)."""
    for status in weibo_state(sandbox).accounts[token].statuses:
        if status["idstr"] == status_id:
            status["_deleted"] = True
            return
    raise KeyError(f"no status {status_id} on the account of token {token!r}")


async def rate_limit_status(request: web.Request, call: Call) -> web.Response:
    """The user's and the caller IP's hourly budget, from the counters the other routes keep; not counted itself
    ("Count Limitation: false", open.weibo.com/wiki/2/account/rate_limit_status/en)."""
    state = weibo_state(call.sandbox)
    account = _account(state, _token(request, {}), RATE_STATUS_PATH)
    if isinstance(account, web.Response):
        return account
    now = time.time()
    _roll_windows(state, account, now)
    reset = account.window_start + HOUR
    return web.json_response(
        {
            "ip_limit": state.ip_limit,
            "limit_time_unit": "HOURS",
            "remaining_ip_hits": max(state.ip_limit - state.ip_calls, 0),
            "remaining_user_hits": max(state.user_limit - account.hour_calls, 0),
            "reset_time": dt.datetime.fromtimestamp(reset, BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
            "reset_time_in_seconds": max(math.ceil(reset - now), 0),
            "user_limit": state.user_limit,
        }
    )


def setup(app: web.Application, sandbox: Sandbox) -> None:
    """Weibo's own paths, so a channel whose ``api_base`` is the sandbox root reaches them unchanged."""
    wrap = sandbox.handler(PLATFORM)
    app.router.add_post(SHARE_PATH, wrap(share))
    app.router.add_get(TIMELINE_PATH, wrap(user_timeline))
    app.router.add_get(RATE_STATUS_PATH, wrap(rate_limit_status))
    app.router.add_get(COUNT_PATH, wrap(count))

    async def post_rate_limit(request: web.Request) -> web.Response:
        data = await read_json(request)
        per_hour = data.get("per_hour") if isinstance(data, dict) else None
        if not isinstance(per_hour, int) or isinstance(per_hour, bool) or per_hour < 0:
            return _error("/_sandbox/weibo/rate_limit", PARAM_ERROR, 'body must be {"per_hour": <int >= 0>}')
        set_rate_limit(sandbox, per_hour)
        return web.json_response({"per_hour": per_hour})

    async def post_token(request: web.Request) -> web.Response:
        data = await read_json(request)
        ok = isinstance(data, dict) and isinstance(data.get("token"), str) and data["token"]
        token_state = data.get("state", "valid") if isinstance(data, dict) else None
        if not ok or token_state not in ("valid", "expired", "revoked", "no_permission"):
            return _error(
                "/_sandbox/weibo/token", PARAM_ERROR, 'body must be {"token": "...", "state": "valid|expired|..."}'
            )
        set_token(sandbox, data["token"], token_state)
        return web.json_response({"token": data["token"], "state": token_state})

    app.router.add_post("/_sandbox/weibo/rate_limit", post_rate_limit)
    app.router.add_post("/_sandbox/weibo/token", post_token)


def accept(sandbox: Sandbox, name: str, options: Mapping[str, Any]) -> None:
    set_token(sandbox, options["access_token"])


def posts_made(sandbox: Sandbox) -> list[str]:
    """Every status posted on any account, by its text (Weibo takes no idempotency key)."""
    return [s["_sent_text"] for account in weibo_state(sandbox).accounts.values() for s in account.statuses]


def lift_limits(sandbox: Sandbox) -> None:
    set_rate_limit(sandbox, 10**9, user_limit=10**9)
    weibo_state(sandbox).ip_limit = 10**9
    set_daily_limit(sandbox, None)


STANDIN = Standin(platform=PLATFORM, setup=setup, accept=accept, posts_made=posts_made, lift_limits=lift_limits)
