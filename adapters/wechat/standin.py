"""WeChat Official Account (微信公众号) stand-in: token, material, uploadimg, draft and freepublish under ``/cgi-bin/``.

What it does as WeChat does, in WeChat's JSON shapes (``{"errcode", "errmsg"}`` on errors, HTTP 200 throughout):

* ``GET /cgi-bin/token`` issues an access token for ``appid``/``secret`` (40013 unknown app id, 40125 wrong
  secret) that expires after ``token_ttl`` seconds; a new token invalidates the previous one after
  ``token_grace`` seconds (WeChat's five-minute overlap). An expired token answers 42001, an unknown one 40001.
* ``POST /cgi-bin/stable_token`` (JSON ``grant_type``, ``appid``, ``secret``, ``force_refresh``): normal mode answers
  the same token until five minutes before its expiry, then a new one while the old works on to its own expiry;
  ``force_refresh`` ends the current token at once (20 a day, 30 s apart, else no refresh). Its tokens and
  cgi-bin/token's are isolated: neither kind ever ends the other. 40002/41002/41004/40013/40125 as documented.
* ``POST /cgi-bin/material/add_material?type=image`` (multipart ``media``: bmp/png/jpeg/gif up to 10 MB) ->
  ``{"media_id", "url"}``; ``POST /cgi-bin/media/uploadimg`` (jpg/png under 1 MB) -> ``{"url"}``. 40005 for a file
  type, 40009 for a size WeChat refuses.
* ``draft/add`` (title ≤ 32, author ≤ 16, digest ≤ 128 characters, content < 20,000 characters and 1 MB, a known
  ``thumb_media_id``: 45003/45110/45004/45002/40007), ``draft/batchget``, ``draft/delete``.
* ``freepublish/submit`` -> ``publish_id`` and ``msg_data_id``; the job completes ``publish_delay`` seconds later
  (``freepublish/get`` answers ``publish_status`` 1 until then, then 0 with ``article_id`` and the article URL,
  or the status ``set_outcome`` scripted for the title), ``freepublish/batchget`` lists published articles,
  ``freepublish/delete`` deletes one (for an unknown article id it answers 53600 "Article ID 无效", which WeChat
  documents for freepublish/getarticle; the delete page lists only 0 and 48001, so the adapter reads no meaning
  into it).
* ``POST /datacube/getarticletotaldetail`` (JSON ``begin_date``, ``end_date``, YYYY-MM-DD; outside ``/cgi-bin``, as
  on WeChat): every live article of the app published (Beijing date) in that range, as ``{"ref_date", "msgid"
  (msg_data_id + "_1"), "publish_type", "title", "content_url", "detail_list": [{"stat_date", "read_user",
  "share_user", "like_user", "comment_count", "collection_user", "zaikan_user"}, ...]}`` with one entry per day from
  the publication day to yesterday (at most 30 days), each day's own figures, which add up to totals growing with
  the article's age (``adapters.reach_curve``), and ``is_delay``: true before 08:00 Beijing time, when yesterday
  is not counted yet (and left out). Refused: a missing or malformed date (61500), ``begin_date`` after
  ``end_date`` or ``end_date`` after yesterday (61501). Its clock is ``adapters.reach_curve.standin_clock``.
* When ``configure(callback_url=...)`` is set, a finished job POSTs the ``PUBLISHJOBFINISH`` event to it, signed
  with ``callback_token``, in plaintext or (with ``callback_aes_key``) safe mode.

Test hooks: ``inject(sandbox, endpoint, errcode=...)`` answers the next calls of an endpoint with a WeChat errcode,
``inject(..., hang_after=True)`` processes the next call and then holds the answer (a one-shot ``timeout_after``);
the common fault rules apply too (the receiver name is the endpoint, e.g. ``freepublish/submit``).
``counts(sandbox)`` says how many drafts and submits each title got.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from adapters.reach_curve import grown_figure, standin_clock
from syndicate.media import sniff_image_type
from syndicate.sandbox.app import Standin
from syndicate.sandbox.core import Call, Sandbox, read_json

PLATFORM = "wechat"
DEFAULT_APP_ID = "wx-sandbox-app"
DEFAULT_APP_SECRET = "sandbox-app-secret"
PREFIX = "/cgi-bin"
#: The calls that issue tokens (every other call needs one).
TOKEN_ENDPOINTS = frozenset({"token", "stable_token"})
MATERIAL_MAX_BYTES = 10 * 1024 * 1024
MATERIAL_TYPES = frozenset({"image/bmp", "image/png", "image/jpeg", "image/gif"})
UPLOADIMG_MAX_BYTES = 1024 * 1024
UPLOADIMG_TYPES = frozenset({"image/png", "image/jpeg"})
TITLE_MAX, AUTHOR_MAX, DIGEST_MAX, CONTENT_MAX_CHARS = 32, 16, 128, 20_000
CONTENT_MAX_BYTES = 1024 * 1024
#: datacube: the statistics of an article cover the days from its publication, at most this many.
STAT_DAYS = 30
#: Before this Beijing hour yesterday's figures are not ready (is_delay).
STATS_READY_HOUR = 8
BEIJING = dt.timezone(dt.timedelta(hours=8))
DATE_FORMAT_ERROR, DATE_RANGE_ERROR = 61500, 61501
#: What an article reaches in the stand-in when fully grown (before each article's own weight).
FULL_ARTICLE_FIGURES = {
    "read_user": 6000,
    "share_user": 300,
    "like_user": 150,
    "comment_count": 40,
    "collection_user": 60,
    "zaikan_user": 90,
}
#: The reasons WeChat gives for a failed publish job (``publish_status`` 2..6).
FAILED_STATUSES = {
    2: "原创失败 (originality check failed)",
    3: "常规失败 (publishing failed)",
    4: "平台审核不通过 (rejected by review)",
    5: "成功后用户删除所有文章 (deleted by the user)",
    6: "成功后系统封禁所有文章 (banned by the platform)",
}


@dataclass
class WeChatConfig:
    """How the stand-in behaves; change it with ``configure``."""

    token_ttl: float = 7200.0
    token_grace: float = 300.0
    publish_delay: float = 0.0
    callback_url: str | None = None
    callback_token: str = "sandbox-callback-token"
    #: What a wrong secret gets from cgi-bin/token: 40125 (invalid appsecret), or 40001, which the token page also
    #: lists for a wrong AppSecret ("获取 access_token 时 AppSecret 错误").
    wrong_secret_errcode: int = 40125
    callback_aes_key: str | None = None
    apps: dict[str, str] = field(default_factory=lambda: {DEFAULT_APP_ID: DEFAULT_APP_SECRET})
    #: stable_token: normal mode hands out a new token only this close to the current one's expiry ("平台会提前5分钟
    #: 更新access_token"); forced refreshes at most ``force_per_day`` a day and ``force_spacing`` seconds apart.
    stable_renew_before: float = 300.0
    force_per_day: int = 20
    force_spacing: float = 30.0


@dataclass
class _Token:
    app_id: str
    expires_at: float
    #: Set when a newer token was issued: this one stops working then.
    superseded_at: float | None = None
    #: Issued by stable_token (isolated from cgi-bin/token: neither kind ever ends the other).
    stable: bool = False


@dataclass
class _StableState:
    """One app's stable_token state: the token normal mode hands out, and the forced refreshes made."""

    current: str | None = None
    last_forced_at: float | None = None
    #: Beijing date -> forced refreshes made that day (WeChat allows 20).
    forced_per_day: dict[str, int] = field(default_factory=dict)


def _state(sandbox: Sandbox) -> dict[str, Any]:
    return sandbox.store(PLATFORM)


def config(sandbox: Sandbox) -> WeChatConfig:
    state = _state(sandbox)
    if "config" not in state:
        state["config"] = WeChatConfig()
    cfg: WeChatConfig = state["config"]
    return cfg


def configure(sandbox: Sandbox, **changes: Any) -> WeChatConfig:
    """Change the stand-in's behaviour (``token_ttl``, ``publish_delay``, ``callback_url``...) until ``reset``."""
    cfg = config(sandbox)
    for key, value in changes.items():
        if not hasattr(cfg, key):
            raise TypeError(f"unknown WeChat sandbox setting {key!r}")
        setattr(cfg, key, value)
    return cfg


def inject(
    sandbox: Sandbox, endpoint: str, *, errcode: int | None = None, hang_after: bool = False, times: int = 1
) -> None:
    """The next ``times`` calls of ``endpoint`` (e.g. ``"freepublish/submit"``) answer ``errcode``, or are processed
    and then held for the sandbox's ``hold_seconds`` (``hang_after``: the client times out after WeChat acted)."""
    if (errcode is None) == (not hang_after):
        raise TypeError("give exactly one of errcode= or hang_after=True")
    queue = _state(sandbox).setdefault("injected", {}).setdefault(endpoint, [])
    queue.extend([errcode if errcode is not None else "hang_after"] * times)


def set_outcome(sandbox: Sandbox, title: str, publish_status: int) -> None:
    """Publishing ``title`` ends with ``publish_status`` (2..6) instead of success."""
    _state(sandbox).setdefault("outcomes", {})[title] = publish_status


def counts(sandbox: Sandbox) -> dict[str, dict[str, int]]:
    """Per title: ``{"drafts": n, "submits": n}`` (every accepted draft/add and freepublish/submit)."""
    return {title: dict(c) for title, c in _state(sandbox).get("counts", {}).items()}


def articles(sandbox: Sandbox) -> dict[str, dict[str, Any]]:
    """Published articles by article id (``deleted`` True once freepublish/delete removed one)."""
    return {k: dict(v) for k, v in _state(sandbox).get("articles", {}).items()}


def add_article(
    sandbox: Sandbox,
    title: str,
    *,
    thumb_media_id: str = "thumb-console",
    update_time: float | None = None,
    app_id: str = DEFAULT_APP_ID,
) -> str:
    """An article published outside syndicate (an editor in the WeChat console): the newest in freepublish/batchget,
    dated ``update_time`` (now by default). Returns its article id."""
    article_id = f"sandbox-article-{secrets.token_hex(6)}"
    _state(sandbox).setdefault("articles", {})[article_id] = {
        "app_id": app_id,
        "publish_id": None,
        "msg_data_id": None,
        "articles": [{"title": title, "thumb_media_id": thumb_media_id, "content": "<p>console</p>"}],
        "url": f"https://mp.weixin.qq.com/s/{article_id}",
        "update_time": int(time.time() if update_time is None else update_time),
        "deleted": False,
    }
    return article_id


def drafts(sandbox: Sandbox) -> dict[str, dict[str, Any]]:
    return {k: dict(v) for k, v in _state(sandbox).get("drafts", {}).items()}


def _count(call: Call, title: str, what: str) -> None:
    per_title = _state(call.sandbox).setdefault("counts", {}).setdefault(title, {"drafts": 0, "submits": 0})
    per_title[what] += 1


def _err(errcode: int, errmsg: str) -> web.Response:
    return web.json_response({"errcode": errcode, "errmsg": errmsg})


def _ok(**fields: Any) -> web.Response:
    return web.json_response({"errcode": 0, "errmsg": "ok", **fields})


class _WeChatError(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(errmsg)
        self.errcode, self.errmsg = errcode, errmsg


def _authorize(call: Call) -> str:
    """The app id the request's access_token belongs to, or a WeChat token error."""
    token = call.request.query.get("access_token", "")
    known: dict[str, _Token] = _state(call.sandbox).setdefault("tokens", {})
    entry = known.get(token)
    now = time.time()
    if entry is None:
        raise _WeChatError(40001, "invalid credential, access_token is invalid or not latest")
    if entry.superseded_at is not None and now >= entry.superseded_at:
        raise _WeChatError(40001, "invalid credential, access_token is invalid or not latest")
    if now >= entry.expires_at:
        raise _WeChatError(42001, "access_token expired")
    return entry.app_id


def expire_tokens(sandbox: Sandbox) -> None:
    """Make every issued token expired now (the 'token expires mid-flow' case)."""
    for entry in _state(sandbox).get("tokens", {}).values():
        entry.expires_at = min(entry.expires_at, time.time() - 1)


def _injected(call: Call, endpoint: str) -> int | str | None:
    queue = _state(call.sandbox).get("injected", {}).get(endpoint)
    return queue.pop(0) if queue else None


async def _hold(call: Call, response: web.Response) -> web.Response:
    await call.sandbox.pause(call.sandbox.hold_seconds)
    return response


def endpoint_of(request: web.Request) -> str:
    """The receiver name (stats key, fault ``name``): the path under /cgi-bin/."""
    return request.path.removeprefix(PREFIX + "/")


def _wrap(sandbox: Sandbox, endpoint: str, func: Callable[[web.Request, Call, str], Awaitable[web.Response]]) -> Any:
    async def handle(request: web.Request, call: Call) -> web.Response:
        injected = _injected(call, endpoint)
        if isinstance(injected, int):
            call.record({"injected_errcode": injected})
            return _err(injected, f"sandbox injected errcode {injected}")
        try:
            app_id = _authorize(call) if endpoint not in TOKEN_ENDPOINTS else ""
            response = await func(request, call, app_id)
        except _WeChatError as exc:
            response = _err(exc.errcode, exc.errmsg)
        if injected == "hang_after":
            return await _hold(call, response)
        return response

    return sandbox.handler(PLATFORM, receiver=endpoint)(handle)


# ---- handlers


async def token(request: web.Request, call: Call, _app: str) -> web.Response:
    q = request.query
    call.record({"grant_type": q.get("grant_type"), "appid": q.get("appid")})
    cfg = config(call.sandbox)
    if q.get("grant_type") != "client_credential":
        raise _WeChatError(40002, "invalid grant_type")
    app_id = q.get("appid", "")
    if app_id not in cfg.apps:
        raise _WeChatError(40013, "invalid appid")
    if q.get("secret") != cfg.apps[app_id]:
        raise _WeChatError(cfg.wrong_secret_errcode, "invalid appsecret")
    now = time.time()
    known: dict[str, _Token] = _state(call.sandbox).setdefault("tokens", {})
    for entry in known.values():
        if entry.app_id == app_id and not entry.stable and entry.superseded_at is None:
            entry.superseded_at = now + cfg.token_grace
    value = _issue(call.sandbox, app_id, stable=False)
    return web.json_response({"access_token": value, "expires_in": int(cfg.token_ttl)})


def _issue(sandbox: Sandbox, app_id: str, *, stable: bool) -> str:
    value = f"sandbox-{'stable-' if stable else ''}token-{secrets.token_hex(12)}"
    _state(sandbox).setdefault("tokens", {})[value] = _Token(
        app_id, time.time() + config(sandbox).token_ttl, stable=stable
    )
    issued = _state(sandbox).setdefault("token_count", {})
    issued[app_id] = issued.get(app_id, 0) + 1
    return value


def _beijing_date(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at + 8 * 3600))


async def stable_token(request: web.Request, call: Call, _app: str) -> web.Response:
    """``POST /cgi-bin/stable_token`` (JSON only): ``grant_type``, ``appid``, ``secret``, ``force_refresh``.

    Normal mode answers the app's current stable token, with the seconds it has left, until five minutes before it
    expires; from then on it answers a new one while the old keeps working to its own expiry (the documented
    hand-over, so ``expires_in`` is never under 300). ``force_refresh: true`` ends the current token at once and
    answers a new one, at most ``force_per_day`` times a (Beijing) day; within ``force_spacing`` seconds of the last
    forced refresh it does not refresh ("否则不会刷新") and answers as normal mode would.
    """
    cfg = config(call.sandbox)
    try:
        body = await read_json(request)
    except web.HTTPBadRequest:
        raise _WeChatError(47001, "data format error: stable_token takes a POST JSON body") from None
    if not isinstance(body, dict):
        raise _WeChatError(47001, "data format error: stable_token takes a JSON object")
    force = body.get("force_refresh", False)
    call.record({"grant_type": body.get("grant_type"), "appid": body.get("appid"), "force_refresh": force})
    if body.get("grant_type") != "client_credential":
        raise _WeChatError(40002, "invalid grant_type")
    app_id, secret = body.get("appid"), body.get("secret")
    if not app_id:
        raise _WeChatError(41002, "appid missing")
    if not secret:
        raise _WeChatError(41004, "appsecret missing")
    if not isinstance(force, bool):
        raise _WeChatError(40097, "invalid args: force_refresh must be a boolean")
    if app_id not in cfg.apps:
        raise _WeChatError(40013, "invalid appid")
    if secret != cfg.apps[app_id]:
        raise _WeChatError(cfg.wrong_secret_errcode, "invalid appsecret")
    now = time.time()
    stable: _StableState = _state(call.sandbox).setdefault("stable", {}).setdefault(app_id, _StableState())
    known: dict[str, _Token] = _state(call.sandbox).setdefault("tokens", {})
    spaced = stable.last_forced_at is None or now - stable.last_forced_at >= cfg.force_spacing
    if force and spaced:
        today = _beijing_date(now)
        if stable.forced_per_day.get(today, 0) >= cfg.force_per_day:
            raise _WeChatError(45009, "reach max api daily quota limit (force_refresh)")
        stable.forced_per_day[today] = stable.forced_per_day.get(today, 0) + 1
        stable.last_forced_at = now
        for entry in known.values():  # "会导致上次获取的access_token失效"
            if entry.app_id == app_id and entry.stable and entry.superseded_at is None:
                entry.superseded_at = now
        stable.current = None
    current = known.get(stable.current or "")
    if current is None or current.superseded_at is not None or now >= current.expires_at - cfg.stable_renew_before:
        stable.current = _issue(call.sandbox, app_id, stable=True)  # the old one keeps working to its expiry
        current = known[stable.current]
    return web.json_response({"access_token": stable.current, "expires_in": int(current.expires_at - now)})


def tokens_issued(sandbox: Sandbox, app_id: str = DEFAULT_APP_ID) -> int:
    """New tokens issued to ``app_id`` by cgi-bin/token and stable_token (a repeated stable token is not new)."""
    return int(_state(sandbox).get("token_count", {}).get(app_id, 0))


def forced_refreshes(sandbox: Sandbox, app_id: str = DEFAULT_APP_ID) -> int:
    """stable_token calls with ``force_refresh: true`` that did refresh."""
    stable = _state(sandbox).get("stable", {}).get(app_id)
    return sum(stable.forced_per_day.values()) if stable is not None else 0


async def _upload(request: web.Request) -> tuple[str, bytes]:
    form = await request.post()
    media = form.get("media")
    if not isinstance(media, web.FileField):
        raise _WeChatError(41005, "media data missing: send the file as multipart field 'media'")
    return media.filename, media.file.read()


async def add_material(request: web.Request, call: Call, app_id: str) -> web.Response:
    if request.query.get("type") != "image":
        raise _WeChatError(40004, "invalid media type: the sandbox takes type=image")
    filename, data = await _upload(request)
    call.record({"type": "image", "filename": filename, "size": len(data)})
    kind = sniff_image_type(data)
    if kind not in MATERIAL_TYPES:
        raise _WeChatError(40005, f"invalid file type {kind or 'unknown'} (bmp/png/jpeg/jpg/gif)")
    if len(data) > MATERIAL_MAX_BYTES:
        raise _WeChatError(40009, "invalid image size: over 10 MB")
    media_id = f"thumb-{secrets.token_hex(8)}"
    url = f"http://mmbiz.qpic.cn/sandbox/{hashlib.sha256(data).hexdigest()[:16]}/0?wx_fmt=png"
    _state(call.sandbox).setdefault("materials", {})[media_id] = {"app_id": app_id, "url": url}
    return web.json_response({"media_id": media_id, "url": url})


async def del_material(request: web.Request, call: Call, app_id: str) -> web.Response:
    """``material/del_material {"media_id"}``: a permanent material deleted (40007 when unknown)."""
    body = await read_json(request)
    call.record(body)
    materials = _state(call.sandbox).get("materials", {})
    found = materials.get(body.get("media_id") if isinstance(body, dict) else None)
    if found is None or found["app_id"] != app_id:
        raise _WeChatError(40007, "invalid media_id")
    del materials[body["media_id"]]
    return _ok()


def materials(sandbox: Sandbox) -> dict[str, dict[str, Any]]:
    """The permanent materials (covers) the account holds, by media id."""
    return {k: dict(v) for k, v in _state(sandbox).get("materials", {}).items()}


async def uploadimg(request: web.Request, call: Call, app_id: str) -> web.Response:
    filename, data = await _upload(request)
    call.record({"filename": filename, "size": len(data)})
    kind = sniff_image_type(data)
    if kind not in UPLOADIMG_TYPES:
        raise _WeChatError(40005, f"invalid file type {kind or 'unknown'} (jpg/png only)")
    if len(data) >= UPLOADIMG_MAX_BYTES:
        raise _WeChatError(40009, "invalid image size: 1 MB or more")
    return web.json_response({"url": f"http://mmbiz.qpic.cn/sandbox-body/{hashlib.sha256(data).hexdigest()[:16]}/0"})


def _check_article(call: Call, app_id: str, article: Any) -> dict[str, Any]:
    if not isinstance(article, dict):
        raise _WeChatError(44003, "empty news data")
    title, content = article.get("title"), article.get("content")
    if not isinstance(title, str) or not title:
        raise _WeChatError(44003, "title missing")
    if len(title) > TITLE_MAX:
        raise _WeChatError(45003, "title size out of limit")
    if len(article.get("author") or "") > AUTHOR_MAX:
        raise _WeChatError(45110, "author size out of limit")
    if len(article.get("digest") or "") > DIGEST_MAX:
        raise _WeChatError(45004, "description size out of limit")
    if not isinstance(content, str) or not content:
        raise _WeChatError(44004, "empty content")
    if len(content) >= CONTENT_MAX_CHARS or len(content.encode()) >= CONTENT_MAX_BYTES:
        raise _WeChatError(45002, "content size out of limit")
    if "<script" in content.lower() or "<iframe" in content.lower():
        raise _WeChatError(45166, "invalid content: script and iframe are not allowed")
    material = _state(call.sandbox).get("materials", {}).get(article.get("thumb_media_id"))
    if material is None or material["app_id"] != app_id:
        raise _WeChatError(40007, "invalid media_id: thumb_media_id")
    return article


async def draft_add(request: web.Request, call: Call, app_id: str) -> web.Response:
    body = await read_json(request)
    call.record(body)
    items = body.get("articles") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise _WeChatError(44003, "empty news data")
    checked = [_check_article(call, app_id, a) for a in items]
    media_id = f"draft-{secrets.token_hex(8)}"
    _state(call.sandbox).setdefault("drafts", {})[media_id] = {
        "app_id": app_id,
        "articles": checked,
        "update_time": int(time.time()),
    }
    for article in checked:
        _count(call, article["title"], "drafts")
    return web.json_response({"media_id": media_id})


async def draft_batchget(request: web.Request, call: Call, app_id: str) -> web.Response:
    body = await read_json(request)
    call.record(body)
    offset, count = int(body.get("offset", 0)), int(body.get("count", 20))
    mine = [(k, v) for k, v in _state(call.sandbox).get("drafts", {}).items() if v["app_id"] == app_id]
    mine.reverse()  # newest first, as WeChat lists them
    page = mine[offset : offset + count]
    items = [{"media_id": k, "content": {"news_item": v["articles"]}, "update_time": v["update_time"]} for k, v in page]
    return web.json_response({"total_count": len(mine), "item_count": len(items), "item": items})


async def draft_delete(request: web.Request, call: Call, app_id: str) -> web.Response:
    body = await read_json(request)
    call.record(body)
    found = _state(call.sandbox).get("drafts", {})
    draft = found.get(body.get("media_id"))
    if draft is None or draft["app_id"] != app_id:
        raise _WeChatError(40007, "invalid media_id")
    del found[body["media_id"]]
    return _ok()


async def draft_count(request: web.Request, call: Call, app_id: str) -> web.Response:
    """``GET draft/count``: the account's drafts ({"total_count": n}), a read that proves token and permission."""
    call.record({})
    mine = [d for d in _state(call.sandbox).get("drafts", {}).values() if d["app_id"] == app_id]
    return web.json_response({"total_count": len(mine)})


async def submit(request: web.Request, call: Call, app_id: str) -> web.Response:
    body = await read_json(request)
    call.record(body)
    draft = _state(call.sandbox).get("drafts", {}).get(body.get("media_id"))
    if draft is None or draft["app_id"] != app_id:
        raise _WeChatError(40007, "invalid media_id")
    serial = int(call.next_id("wechat-publish").rsplit("-", 1)[1])
    publish_id = str(2_247_000_000 + serial)
    # "msg_data_id: 消息的数据ID" (a string): the id datacube's getarticletotaldetail keys articles by (msgid).
    msg_data_id = str(2_650_000_000 + serial)
    title = draft["articles"][0]["title"]
    outcome = _state(call.sandbox).get("outcomes", {}).get(title, 0)
    job = {
        "app_id": app_id,
        "draft": body["media_id"],
        "articles": draft["articles"],
        "done_at": time.time() + config(call.sandbox).publish_delay,
        "status": outcome,
        "article_id": None,
        "msg_data_id": msg_data_id,
    }
    _state(call.sandbox).setdefault("jobs", {})[publish_id] = job
    for article in draft["articles"]:
        _count(call, article["title"], "submits")
    if config(call.sandbox).callback_url:
        task = asyncio.get_running_loop().create_task(_finish_and_notify(call.sandbox, publish_id))
        _state(call.sandbox).setdefault("callback_tasks", set()).add(task)
        task.add_done_callback(_state(call.sandbox)["callback_tasks"].discard)
    return _ok(publish_id=publish_id, msg_data_id=msg_data_id)


def _settle(sandbox: Sandbox, publish_id: str) -> dict[str, Any]:
    """The job, finished when its time came (creating the article on success)."""
    job: dict[str, Any] = _state(sandbox)["jobs"][publish_id]
    if job["article_id"] is None and job["status"] == 0 and time.time() >= job["done_at"]:
        article_id = f"sandbox-article-{secrets.token_hex(6)}"
        job["article_id"] = article_id
        _state(sandbox).setdefault("articles", {})[article_id] = {
            "app_id": job["app_id"],
            "publish_id": publish_id,
            "msg_data_id": job["msg_data_id"],
            "articles": job["articles"],
            "url": f"https://mp.weixin.qq.com/s/{article_id}",
            "update_time": int(time.time()),
            "published_at": time.time(),
            "deleted": False,
        }
        # A published draft leaves the draft box, as on WeChat (a later draft/delete of it answers 40007).
        _state(sandbox).get("drafts", {}).pop(job["draft"], None)
    return job


def _job_status(sandbox: Sandbox, job: dict[str, Any]) -> int:
    if time.time() < job["done_at"]:
        return 1
    return int(job["status"])


def _job_answer(sandbox: Sandbox, publish_id: str) -> dict[str, Any]:
    job = _settle(sandbox, publish_id)
    status = _job_status(sandbox, job)
    answer: dict[str, Any] = {"publish_id": publish_id, "publish_status": status}
    if status == 0:
        article = _state(sandbox)["articles"][job["article_id"]]
        answer["article_id"] = job["article_id"]
        answer["article_detail"] = {"count": 1, "item": [{"idx": 1, "article_url": article["url"]}]}
    elif status >= 2:
        answer["fail_idx"] = [1]
    return answer


async def publish_get(request: web.Request, call: Call, app_id: str) -> web.Response:
    body = await read_json(request)
    call.record(body)
    publish_id = str(body.get("publish_id", ""))
    job = _state(call.sandbox).get("jobs", {}).get(publish_id)
    if job is None or job["app_id"] != app_id:
        raise _WeChatError(40007, "invalid publish_id")
    return _ok(**_job_answer(call.sandbox, publish_id))


async def publish_batchget(request: web.Request, call: Call, app_id: str) -> web.Response:
    body = await read_json(request)
    call.record(body)
    for publish_id in list(_state(call.sandbox).get("jobs", {})):
        _settle(call.sandbox, publish_id)
    offset, count = int(body.get("offset", 0)), int(body.get("count", 20))
    mine = [
        (k, v)
        for k, v in _state(call.sandbox).get("articles", {}).items()
        if v["app_id"] == app_id and not v["deleted"]
    ]
    mine.reverse()
    page = mine[offset : offset + count]
    items = [
        {
            "article_id": k,
            "content": {
                "news_item": [{**a, "url": v["url"], "is_deleted": False} for a in v["articles"]],
                "create_time": v["update_time"],
                "update_time": v["update_time"],
            },
            "update_time": v["update_time"],
        }
        for k, v in page
    ]
    return web.json_response({"total_count": len(mine), "item_count": len(items), "item": items})


async def publish_delete(request: web.Request, call: Call, app_id: str) -> web.Response:
    body = await read_json(request)
    call.record(body)
    article = _state(call.sandbox).get("articles", {}).get(body.get("article_id"))
    if article is None or article["app_id"] != app_id or article["deleted"]:
        raise _WeChatError(53600, "Article ID 无效")
    article["deleted"] = True
    return _ok()


# ---- datacube (article statistics)


def _stat_date(body: dict[str, Any], name: str) -> dt.date:
    value = body.get(name)
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise _WeChatError(
            DATE_FORMAT_ERROR, f"invalid {name} {value!r}: date format error, expect YYYY-MM-DD"
        ) from None


def _day_end(day: dt.date) -> float:
    """The end of a Beijing calendar day (unix seconds): a day's figures are counted up to here."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), BEIJING).timestamp()


def article_figures(article_id: str, published_at: float, through: dt.date) -> dict[str, int]:
    """An article's totals counted up to the end of ``through`` (Beijing): deterministic, growing with its age."""
    age = _day_end(through) - published_at
    return {
        name: grown_figure(f"wechat:{article_id}", name, age, full=full) for name, full in FULL_ARTICLE_FIGURES.items()
    }


async def article_total_detail(request: web.Request, call: Call, app_id: str) -> web.Response:
    body = await read_json(request)
    call.record(body)
    if not isinstance(body, dict):
        raise _WeChatError(DATE_FORMAT_ERROR, "the body must be a JSON object with begin_date and end_date")
    begin, end = _stat_date(body, "begin_date"), _stat_date(body, "end_date")
    now = dt.datetime.fromtimestamp(standin_clock(call.sandbox)(), BEIJING)
    yesterday = now.date() - dt.timedelta(days=1)
    if begin > end or end > yesterday:
        raise _WeChatError(DATE_RANGE_ERROR, f"date range error: {begin}..{end} (end_date is at most {yesterday})")
    is_delay = now.hour < STATS_READY_HOUR
    counted_to = yesterday - dt.timedelta(days=1) if is_delay else yesterday
    entries = []
    for article_id, article in _state(call.sandbox).get("articles", {}).items():
        published_at = article.get("published_at")
        if article["app_id"] != app_id or article["deleted"] or article["msg_data_id"] is None or published_at is None:
            continue
        ref_date = dt.datetime.fromtimestamp(published_at, BEIJING).date()
        if not begin <= ref_date <= end:
            continue
        details = []
        before = dict.fromkeys(FULL_ARTICLE_FIGURES, 0)
        day = ref_date
        while day <= counted_to and day < ref_date + dt.timedelta(days=STAT_DAYS):
            total = article_figures(article_id, published_at, day)
            details.append({"stat_date": day.isoformat(), **{k: total[k] - before[k] for k in total}})
            before, day = total, day + dt.timedelta(days=1)
        entries.append(
            {
                "ref_date": ref_date.isoformat(),
                "msgid": f"{article['msg_data_id']}_1",
                "publish_type": 1,
                "title": article["articles"][0]["title"],
                "content_url": article["url"],
                "detail_list": details,
            }
        )
    return web.json_response({"list": entries, "is_delay": is_delay})


# ---- the PUBLISHJOBFINISH callback


def publish_event_xml(app_id: str, publish_id: str, answer: dict[str, Any]) -> str:
    """The PUBLISHJOBFINISH event as WeChat sends it to the account's server URL."""
    detail = ""
    if "article_detail" in answer:
        items = "".join(
            f"<item><idx>{i['idx']}</idx><article_url><![CDATA[{i['article_url']}]]></article_url></item>"
            for i in answer["article_detail"]["item"]
        )
        detail = (
            f"<article_id><![CDATA[{answer['article_id']}]]></article_id>"
            f"<article_detail><count>{answer['article_detail']['count']}</count>{items}</article_detail>"
        )
    return (
        f"<xml><ToUserName><![CDATA[gh_{app_id}]]></ToUserName><FromUserName><![CDATA[mphelper]]></FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        "<Event><![CDATA[PUBLISHJOBFINISH]]></Event>"
        f"<PublishEventInfo><publish_id>{publish_id}</publish_id>"
        f"<publish_status>{answer['publish_status']}</publish_status>{detail}</PublishEventInfo></xml>"
    )


def signed_callback(cfg: WeChatConfig, app_id: str, xml: str) -> tuple[dict[str, str], str]:
    """Query parameters and body of a callback, signed as WeChat signs them (safe mode when an AES key is set)."""
    from wechatpy.crypto import WeChatCrypto
    from wechatpy.utils import WeChatSigner

    timestamp, nonce = str(int(time.time())), secrets.token_hex(5)
    signer = WeChatSigner()
    signer.add_data(cfg.callback_token, timestamp, nonce)
    query = {"signature": signer.signature, "timestamp": timestamp, "nonce": nonce}
    if not cfg.callback_aes_key:
        return query, xml
    crypto = WeChatCrypto(cfg.callback_token, cfg.callback_aes_key, app_id)
    encrypted = crypto.encrypt_message(xml, nonce, timestamp)
    parsed = _xml_field(encrypted, "MsgSignature")
    return {**query, "encrypt_type": "aes", "msg_signature": parsed}, encrypted


def _xml_field(xml: str, name: str) -> str:
    import xmltodict

    value = xmltodict.parse(xml)["xml"][name]
    return str(value)


async def _finish_and_notify(sandbox: Sandbox, publish_id: str) -> None:
    cfg = config(sandbox)
    job = _state(sandbox)["jobs"][publish_id]
    await sandbox.pause(max(job["done_at"] - time.time(), 0.0))
    if not cfg.callback_url:
        return
    answer = _job_answer(sandbox, publish_id)
    query, body = signed_callback(cfg, job["app_id"], publish_event_xml(job["app_id"], publish_id, answer))
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(cfg.callback_url, params=query, data=body.encode(), headers={"Content-Type": "text/xml"}) as r,
        ):
            _state(sandbox).setdefault("callbacks", []).append({"publish_id": publish_id, "status": r.status})
    except aiohttp.ClientError as exc:
        _state(sandbox).setdefault("callbacks", []).append({"publish_id": publish_id, "error": str(exc)})


def callbacks(sandbox: Sandbox) -> list[dict[str, Any]]:
    """The PUBLISHJOBFINISH callbacks sent: ``{"publish_id", "status"}`` (or ``"error"``)."""
    return list(_state(sandbox).get("callbacks", []))


def setup(app: web.Application, sandbox: Sandbox) -> None:
    """Add the WeChat routes under /cgi-bin/; the receiver (stats key, fault ``name``) is the endpoint path."""
    app.router.add_get(f"{PREFIX}/token", _wrap(sandbox, "token", token))
    app.router.add_get(f"{PREFIX}/draft/count", _wrap(sandbox, "draft/count", draft_count))
    posts = {
        "stable_token": stable_token,
        "material/add_material": add_material,
        "material/del_material": del_material,
        "media/uploadimg": uploadimg,
        "draft/add": draft_add,
        "draft/batchget": draft_batchget,
        "draft/delete": draft_delete,
        "freepublish/submit": submit,
        "freepublish/get": publish_get,
        "freepublish/batchget": publish_batchget,
        "freepublish/delete": publish_delete,
    }
    for endpoint, func in posts.items():
        app.router.add_post(f"{PREFIX}/{endpoint}", _wrap(sandbox, endpoint, func))
    # The data-analysis interfaces live beside /cgi-bin, at https://api.weixin.qq.com/datacube/...
    detail = "datacube/getarticletotaldetail"
    app.router.add_post(f"/{detail}", _wrap(sandbox, detail, article_total_detail))


__all__ = [
    "DEFAULT_APP_ID",
    "DEFAULT_APP_SECRET",
    "FAILED_STATUSES",
    "WeChatConfig",
    "add_article",
    "article_figures",
    "articles",
    "callbacks",
    "config",
    "configure",
    "counts",
    "drafts",
    "expire_tokens",
    "forced_refreshes",
    "inject",
    "publish_event_xml",
    "set_outcome",
    "setup",
    "signed_callback",
    "tokens_issued",
]


def accept(sandbox: Sandbox, name: str, options: Mapping[str, Any]) -> None:
    """Know the channel's app (id and secret) and, when it takes callbacks, sign them with its token."""
    cfg = config(sandbox)
    cfg.apps[options["app_id"]] = options["app_secret"]
    if options.get("token"):
        cfg.callback_token = options["token"]


def posts_made(sandbox: Sandbox) -> list[str]:
    """Every article submitted for publication, by title (WeChat takes no idempotency key)."""
    return [title for title, c in counts(sandbox).items() for _ in range(c["submits"])]


STANDIN = Standin(platform=PLATFORM, setup=setup, accept=accept, posts_made=posts_made)
