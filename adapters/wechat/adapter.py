"""WeChat Official Account (微信公众号): story -> permanent cover -> body images -> draft -> free publish -> confirm.

**wechatpy for its models, aiohttp for the wire.** wechatpy 1.8's ``WeChatClient`` is synchronous (requests):
running it in a thread pool would cap every WeChat channel's concurrency at the pool size and park an OS thread
on every long call, in an engine that is asyncio throughout. So requests go out on one aiohttp session per channel
(the engine's timeouts, cancellation and connection reuse apply), and wechatpy supplies what is worth not writing
twice: the errcode error class (``WeChatClientException``), the callback signature check (``check_signature``),
safe-mode decryption (``WeChatCrypto``) and the ``SessionStorage`` interface and key scheme
(``<appid>_access_token``) the shared token is kept under (:class:`StoreSessionStorage`, over syndicate's store,
so every worker on every host uses one token per app id).

**The token comes from ``stable_token``** (wechatpy 1.8 knows only ``cgi-bin/token``, so through ``_call``): in
normal mode it answers the token already issued, so a second caller (``channels --check``, another tool on the same
app id) never ends the workers' token as a ``cgi-bin/token`` call does. ``force_refresh`` ends the current token
for every holder and WeChat allows it 20 times a day, so it is sent only when an API call refused the token
(40001/40014/42001) and normal mode hands back that very token.

**One resumable step at a time**, each result checkpointed before the next step starts (``ctx.checkpoint``):

1. cover -> ``material/add_material`` (type image; ≤ 10 MB bmp/png/jpeg/gif) -> ``thumb_media_id``; the same
   image (by the hash of the bytes sent) reuses the material already uploaded, and a retraction deletes it once
   no live story shows it (the account's material quota is finite);
2. every body image -> ``media/uploadimg`` (jpg/png under 1 MB) -> WeChat URL, and the body's ``<img src>``
   rewritten to it (WeChat drops external images). An image WeChat would refuse (a press photo over 1 MB, a GIF,
   a WebP) is converted and, only if quality alone cannot fit it, downscaled with Pillow (``images.fit_image``);
3. ``draft/add`` -> draft ``media_id``. Before the request the attempt records ``draft_pending``; a retry after
   a lost answer finds the draft with ``draft/batchget`` by its cover, title and source link instead of creating
   a second one;
4. ``freepublish/submit`` -> ``publish_id`` and ``msg_data_id`` (kept in the receipt: article statistics are keyed
   by it). Accepted is not published. ``submit_pending`` is recorded first; a
   lost answer is ``OutcomeUnknown`` and ``lookup`` reconciles it with ``freepublish/batchget`` (title and
   ``thumb_media_id``), retrying while WeChat may still be publishing, never submitting twice meanwhile;
5. confirm: the ``PUBLISHJOBFINISH`` event the callback route stored (``web_routes``), else ``freepublish/get``:
   0 delivered (article id and URL are the receipt), 1 a pending ``Retryable`` "still publishing" with a growing
   ``retry_after``, 2-6 ``Permanent`` with WeChat's reason.

A retry resumes at the step it reached; a crash between submit and confirm resumes by confirming (``lookup`` sees
the checkpointed ``publish_id`` and lets the resumed send confirm). 40007 (a media id WeChat no longer knows)
clears the checkpoint from the step that made that id and starts again there.

Updates: WeChat cannot edit a published article. ``update_policy = "skip"`` (default) records updates as
skipped with that reason; ``"republish"`` deletes the live article (and its draft) and publishes the new version.
Retract: ``freepublish/delete`` (53600, already gone, counts as done) and ``draft/delete``.

Reach (``read_reach``): ``POST /datacube/getarticletotaldetail`` for the article's publication day (Beijing),
matched by ``msgid`` = ``msg_data_id`` + ``_1`` (one article per message). WeChat's statistics end yesterday
(``end_date``: "maximum value is yesterday") and count 30 days from publication; the ``detail_list`` days are
added up: read users are its reads, share users its shares, likes, comments (and the raw figures under WeChat's
names: favourites, 在看). A post published today has no figures yet: the sample waits (a pending Retryable) until
08:05 Beijing time tomorrow, when WeChat has counted today. A receipt without ``msg_data_id`` (a submit
reconciled through batchget) cannot be matched: Permanent, saying so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Unpack

import aiohttp
import nh3
import xmltodict
from aiohttp import web
from pydantic import ConfigDict, Field, HttpUrl, RootModel, field_validator
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException, WeChatClientException
from wechatpy.session import SessionStorage
from wechatpy.utils import check_signature

from adapters.wechat.images import ImageRefused, fit_image
from syndicate.channel import AdapterDeps, AdapterOptions, DeliveryContext, HttpAdapter
from syndicate.delivery import (
    Action,
    AuthExpired,
    AuthRevoked,
    DeliveryError,
    OutcomeUnknown,
    Payload,
    PayloadModel,
    Permanent,
    RateLimited,
    ReachMetric,
    ReachReading,
    Receipt,
    RenderError,
    Retryable,
)
from syndicate.media import (
    MediaBlob,
)
from syndicate.sanitize import ALLOWED_ATTRIBUTES, ALLOWED_TAGS, clean_html, plain_text
from syndicate.story import ChannelStory

if TYPE_CHECKING:
    from syndicate.store.base import ChannelAccess, SharedKeys

log = logging.getLogger("syndicate.adapters.wechat.adapter")

WECHAT_API_BASE = "https://api.weixin.qq.com"
#: WeChat's article limits (characters, bytes).
TITLE_MAX, AUTHOR_MAX, DIGEST_MAX = 32, 16, 128
CONTENT_MAX_CHARS, CONTENT_MAX_BYTES = 20_000, 1024 * 1024
#: What is fetched before conversion: any image the media fetcher knows (fit_image makes it one WeChat takes).
FETCHED_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp")
COVER_MAX_BYTES = 10 * 1024 * 1024
COVER_TYPES = ("image/bmp", "image/png", "image/jpeg", "image/gif")
BODY_IMAGE_MAX_BYTES = 1024 * 1024 - 1
BODY_IMAGE_TYPES = ("image/jpeg", "image/png")
#: Refresh the shared token this long before WeChat says it expires: inside the last five minutes, when
#: stable_token's normal mode hands out the next token (earlier it would hand back the same one).
TOKEN_REFRESH_MARGIN = 240.0
#: The cross-process refresh lock expires on its own after this long (a refresher that died never blocks others).
TOKEN_LOCK_SECONDS = 15.0
#: How long a worker waits for another worker's refresh before it gives up with Retryable.
TOKEN_WAIT_SECONDS = 20.0
#: "Still publishing" checks wait this long, growing with each check (seconds).
CONFIRM_BACKOFF = (2.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: "Still publishing" checks that wait without spending the retry budget (about 24 h at 600 s each); after that
#: the checks go on the channel's retry schedule, so a job WeChat never finishes ends up failed with its reason.
MAX_PENDING_CHECKS = 150
#: batchget pages: WeChat's largest page (20) and the pages a reconciliation reads at most (1,000 items, back to
#: the delivery's queueing, with this much clock skew allowed).
LIST_PAGE = 20
LIST_PAGES = 50
CLOCK_SKEW = 300
#: A PUBLISHJOBFINISH event is kept this long in the store's key/value.
EVENT_TTL = 7 * 86400.0
#: Callback timestamps older or newer than this are refused (replayed or forged requests).
CALLBACK_TOLERANCE = 300.0
CALLBACK_MAX_BYTES = 64 * 1024
#: China Standard Time: WeChat's daily quotas reset at midnight there.
BEIJING = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
#: datacube: "To ensure that the Official Account data is calculated and processed, query the previous-day data
#: each day before 08:00" ([wx-dc-legacy]; read as: yesterday's figures are complete from 08:00 Beijing time). A
#: sample of a post published today waits until just after then tomorrow.
STATS_READY_HOUR = 8
ARTICLE_STATS = "/datacube/getarticletotaldetail"
#: getarticletotaldetail's detail_list figures under the common metric each one is.
DETAIL_AS_REACH: dict[str, ReachMetric] = {
    "read_user": ReachMetric.READS,
    "share_user": ReachMetric.SHARES,
    "like_user": ReachMetric.LIKES,
    "comment_count": ReachMetric.COMMENTS,
}

# WeChat errcodes.
TOKEN_ERRORS = frozenset({40001, 40014, 42001})
CREDENTIAL_ERRORS = frozenset({40013, 40125, 40164, 40243, 41002, 41004, 48001, 50001, 50002, 50004, 50007})
DAILY_QUOTA, MINUTE_QUOTA = 45009, 45011
#: stable_token: the caller's IP awaits an administrator's confirmation; refused twice in 24 h / once in 1 h.
IP_AWAITS_CONFIRMATION = 89503
IP_REFUSED_FOR = {89506: 24 * 3600.0, 89507: 3600.0}
SYSTEM_BUSY = -1
INVALID_MEDIA_ID = 40007
PUBLISH_STATUS_REASONS = {
    2: "originality check failed (原创失败)",
    3: "publishing failed (常规失败)",
    4: "rejected by WeChat's review (平台审核不通过)",
    5: "deleted by the account after publishing (成功后用户删除所有文章)",
    6: "banned by the platform (成功后系统封禁所有文章)",
}

_IMG_SRC = re.compile(r'(<img\b[^>]*?\ssrc=")([^"]*)(")', re.IGNORECASE)
_IMG_TAG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)


# --- configuration ---------------------------------------------------------------------------------------------


class WeChatOptions(AdapterOptions):
    #: WeChat's API root (the stand-in's root in tests and the demo); requests go to <api_base>/cgi-bin/...
    api_base: HttpUrl = HttpUrl(WECHAT_API_BASE)
    app_id: str = Field(min_length=1)
    #: Usually "${ENV_VAR}".
    app_secret: str = Field(min_length=1)
    #: The callback's Token (公众号后台 -> 基本配置 -> 服务器配置); without it no callback route is mounted.
    token: str | None = Field(default=None, min_length=3, max_length=32)
    #: The callback's EncodingAESKey (43 characters) for safe mode; plaintext callbacks need only ``token``.
    encoding_aes_key: str | None = None
    #: WeChat cannot edit a published article: "skip" records updates as skipped, "republish" deletes and republishes.
    update_policy: Literal["skip", "republish"] = "skip"
    need_open_comment: bool = False
    only_fans_can_comment: bool = False
    #: How long after an unanswered submit the channel keeps looking for the article before parking it.
    reconcile_window: float = Field(default=1800.0, gt=0)

    @field_validator("encoding_aes_key")
    @classmethod
    def _aes_key(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9]{43}", value):
            raise ValueError("must be the 43 letters and digits WeChat shows as EncodingAESKey")
        return value


# --- the payload -----------------------------------------------------------------------------------------------


class WeChatArticle(PayloadModel):
    """A publish or update: the article as ``draft/add`` takes it, before its images point at WeChat."""

    action: Literal["publish", "update"]
    title: str
    author: str
    digest: str
    #: The cleaned body; its ``<img src>`` are rewritten to WeChat's URLs at send time.
    content: str
    content_source_url: str
    #: The cover's URL, uploaded as permanent material (its media id is the draft's ``thumb_media_id``).
    cover: str
    #: The distinct body image URLs, each uploaded once through ``media/uploadimg``.
    body_images: list[str]
    need_open_comment: int
    only_fans_can_comment: int


class WeChatRetraction(PayloadModel):
    """A retract: the article to delete comes from the live receipt."""

    action: Literal["retract"]
    story_id: str


class WeChatPayload(RootModel[Annotated[WeChatArticle | WeChatRetraction, Field(discriminator="action")]]):
    """The channel's payload, told apart by ``action``; its JSON form is the stored one (the member's fields)."""

    model_config = ConfigDict(frozen=True)


# --- the shared access token -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenEntry:
    value: str
    expires_at: float


class StoreSessionStorage(SessionStorage):  # type: ignore[misc]  # wechatpy ships no types: the base is Any
    """wechatpy's ``SessionStorage`` over syndicate's shared key/value store (one token per app id, every worker).

    The adapter uses the async methods on the event loop. The synchronous ``get/set/delete`` wechatpy calls work
    from another thread (a script running ``WeChatClient(appid, secret, session=storage)`` in a worker thread
    shares the same token); on the loop's own thread they would deadlock, so they refuse.
    """

    PREFIX = "wechat:"

    def __init__(
        self,
        kv_get: Callable[[str], Awaitable[str | None]],
        kv_set: Callable[[str, str, float | None], Awaitable[None]],
        *,
        clock: Callable[[], float] = time.time,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._kv_get, self._kv_set, self._clock, self._loop = kv_get, kv_set, clock, loop

    async def get_entry(self, key: str) -> TokenEntry | None:
        raw = await self._kv_get(self.PREFIX + key)
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return TokenEntry(str(data["value"]), float(data["expires_at"]))
        except (ValueError, KeyError, TypeError):
            return None

    async def aget(self, key: str, default: Any = None) -> Any:
        entry = await self.get_entry(key)
        return entry.value if entry is not None and entry.expires_at > self._clock() else default

    async def aset(self, key: str, value: str, ttl: float | None = None) -> None:
        expires_at = self._clock() + (ttl if ttl is not None else 7200.0)
        await self._kv_set(self.PREFIX + key, json.dumps({"value": value, "expires_at": expires_at}), expires_at)

    async def adelete(self, key: str) -> None:
        await self._kv_set(self.PREFIX + key, "", self._clock())

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._loop is None:
            raise RuntimeError("StoreSessionStorage needs loop= to be used from a thread")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("synchronous SessionStorage calls would block the event loop: use aget/aset")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def get(self, key: str, default: Any = None) -> Any:
        return self._run(self.aget(key, default))

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        self._run(self.aset(key, value, ttl))

    def delete(self, key: str) -> None:
        self._run(self.adelete(key))


# --- rendering -------------------------------------------------------------------------------------------------


def _trim(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def wechat_html(body_html: str) -> str:
    """The body as WeChat keeps it: the shared sanitiser's output without links (WeChat refuses external links in
    articles; their text stays), so no script, iframe, class or event handler reaches WeChat."""
    narrowed = {k: set(v) for k, v in ALLOWED_ATTRIBUTES.items() if k != "a"}
    return nh3.clean(clean_html(body_html), tags=set(ALLOWED_TAGS) - {"a"}, attributes=narrowed)


def body_image_sources(content: str) -> list[str]:
    """The distinct ``<img src>`` URLs of ``content``, in order of appearance."""
    seen: dict[str, None] = {}
    for match in _IMG_SRC.finditer(content):
        seen.setdefault(html.unescape(match.group(2)), None)
    return list(seen)


def rewrite_image_sources(content: str, urls: dict[str, str]) -> str:
    """``content`` with each ``<img src>`` replaced by its WeChat URL (every source must be in ``urls``)."""

    def replace(match: re.Match[str]) -> str:
        new = urls[html.unescape(match.group(2))]
        return f"{match.group(1)}{html.escape(new, quote=True)}{match.group(3)}"

    return _IMG_SRC.sub(replace, content)


# --- the adapter -----------------------------------------------------------------------------------------------


class WeChatAdapter(HttpAdapter[WeChatOptions, WeChatPayload]):
    kind: ClassVar[str] = "wechat"
    options_model = WeChatOptions
    payload_model = WeChatPayload
    #: A resent draft/add or submit would make a second article; the checkpoints and lookup prevent that.
    idempotent: ClassVar[bool] = False
    supports_lookup: bool = True
    supports_reach: bool = True
    options: WeChatOptions

    def __init__(self, name: str, options: WeChatOptions, **deps: Unpack[AdapterDeps]) -> None:
        super().__init__(name, options, **deps)
        self.actions = (  # from options: the update policy
            frozenset(Action) if options.update_policy == "republish" else frozenset({Action.PUBLISH, Action.RETRACT})
        )
        self._root = str(options.api_base).rstrip("/")
        self._api = f"{self._root}/cgi-bin"
        self._refresh_lock = asyncio.Lock()
        self._cover_locks: dict[str, asyncio.Lock] = {}

    def unsupported_reason(self, action: Action) -> str:
        if action is Action.UPDATE:
            return (
                'WeChat cannot edit a published article; update_policy = "skip" records updates as skipped '
                '(set update_policy = "republish" to delete the article and publish the new version)'
            )
        return super().unsupported_reason(action)

    # ---- rendering

    def format(self, story: ChannelStory, action: Action) -> Payload[WeChatPayload]:
        if action is Action.RETRACT:
            return Payload(data=WeChatPayload(WeChatRetraction(action="retract", story_id=story.id)))
        warnings: list[str] = []
        headline = plain_text(story.headline)
        if not headline:
            raise RenderError("headline: empty once markup is removed; a WeChat article needs a title")
        title = _trim(headline, TITLE_MAX)
        if title != headline:
            warnings.append(f"title cut to {TITLE_MAX} characters")
        author_full = plain_text(story.by or "")
        author = _trim(author_full, AUTHOR_MAX)
        if author != author_full:
            warnings.append(f"author cut to {AUTHOR_MAX} characters")
        summary = plain_text(story.summary or "")
        digest = _trim(summary, DIGEST_MAX)
        if digest != summary:
            warnings.append(f"digest cut to {DIGEST_MAX} characters")
        cover = story.cover
        if cover is None:
            raise RenderError("images: a WeChat article needs a cover image (add an image with role cover)")
        content = wechat_html(story.body_html)
        if not plain_text(content) and "<img" not in content:
            raise RenderError("body_html: empty once reduced to what WeChat keeps")
        sources = body_image_sources(content)
        unusable = [s for s in sources if not s.lower().startswith(("http://", "https://"))]
        if unusable:
            content = _IMG_TAG.sub(
                lambda m: "" if any(html.escape(s, quote=True) in m.group(0) for s in unusable) else m.group(0),
                content,
            )
            warnings.append(f"dropped {len(unusable)} body image(s) without an http(s) URL: {', '.join(unusable)}")
            sources = body_image_sources(content)
        if len(content) >= CONTENT_MAX_CHARS or len(content.encode()) >= CONTENT_MAX_BYTES:
            raise RenderError(
                f"body_html: {len(content)} characters once cleaned; WeChat takes under {CONTENT_MAX_CHARS} "
                "characters and 1 MB (shorten the story or give this channel an override)"
            )
        article = WeChatArticle(
            action="update" if action is Action.UPDATE else "publish",
            title=title,
            author=author,
            digest=digest,
            content=content,
            content_source_url=story.url or "",
            cover=cover.href,
            body_images=sources,
            need_open_comment=int(self.options.need_open_comment),
            only_fans_can_comment=int(self.options.only_fans_can_comment),
        )
        return Payload(data=WeChatPayload(article), text_length=len(content), warnings=tuple(warnings))

    # ---- lifecycle

    def session_options(self) -> dict[str, Any]:
        return dict(
            timeout=aiohttp.ClientTimeout(total=self.timeout, connect=self.timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    # ---- the access token

    def _storage(self, ctx: DeliveryContext) -> StoreSessionStorage:
        return StoreSessionStorage(ctx.kv_get, ctx.kv_set, clock=self.clock, loop=asyncio.get_running_loop())

    @property
    def _token_key(self) -> str:
        return f"{self.options.app_id}_access_token"  # wechatpy's key scheme (WeChatClient.access_token_key)

    async def access_token(self, ctx: DeliveryContext, *, stale: str | None = None) -> str:
        """The shared token, refreshed before expiry (or when ``stale`` is the one WeChat just refused)."""
        storage = self._storage(ctx)
        entry = await storage.get_entry(self._token_key)
        if self._usable(entry, stale):
            assert entry is not None
            return entry.value
        async with self._refresh_lock:  # one refresh per process...
            return await self._refresh(ctx, storage, stale)

    def _usable(self, entry: TokenEntry | None, stale: str | None) -> bool:
        return entry is not None and entry.value != stale and entry.expires_at - self.clock() > TOKEN_REFRESH_MARGIN

    async def _refresh(self, ctx: DeliveryContext, storage: StoreSessionStorage, stale: str | None) -> str:
        """...and one across processes: a best-effort lock in the key/value store (``kv_add`` when the context
        offers it, else write-then-read-back), released on success and expiring on its own."""
        lock_key = f"wechat:{self.options.app_id}:token-refresh-lock"
        me = secrets.token_hex(8)
        deadline = time.monotonic() + TOKEN_WAIT_SECONDS
        while True:
            entry = await storage.get_entry(self._token_key)
            if self._usable(entry, stale):
                assert entry is not None
                return entry.value
            if await self._take_lock(ctx, lock_key, me):
                break
            if time.monotonic() > deadline:
                raise Retryable(f"another worker is refreshing the WeChat access token of {self.options.app_id}")
            await asyncio.sleep(0.1)
        try:
            value, expires_in = await self._stable_token(force=False)
            if stale is not None and value == stale:
                # WeChat refused this token, yet still hands it out: only a forced refresh replaces it.
                log.info("WeChat hands back the refused token; forcing a refresh", extra={"channel": self.name})
                value, expires_in = await self._stable_token(force=True)
                if value == stale:
                    raise Retryable(
                        f"WeChat refused the access token of {self.options.app_id} and a forced refresh did not "
                        "replace it (at most one every 30 s, 20 a day); trying again later",
                        retry_after=30.0,
                    )
            await storage.aset(self._token_key, value, expires_in)
            log.info("WeChat access token refreshed", extra={"channel": self.name})
            return value
        finally:
            await ctx.kv_set(lock_key, "", self.clock())

    async def _stable_token(self, *, force: bool) -> tuple[str, float]:
        """``POST stable_token`` (JSON only): the token and its seconds left; ``force`` ends the current one."""
        body = {**self._credentials(), "force_refresh": force}
        what = "the access token (stable_token" + (", force_refresh)" if force else ")")
        try:
            answer = await self._call("POST", "stable_token", None, what=what, json_body=body)
        except WeChatClientException as exc:
            raise self._token_error(exc) from exc
        token, expires_in = answer.get("access_token"), answer.get("expires_in", 7200)
        if not isinstance(token, str) or not token or not isinstance(expires_in, int | float):
            raise Retryable(f"WeChat answered {what} without access_token and a numeric expires_in")
        return token, float(expires_in)

    async def _take_lock(self, ctx: DeliveryContext, key: str, me: str) -> bool:
        kv_add = getattr(ctx, "kv_add", None)
        if kv_add is not None:
            return bool(await kv_add(key, me, self.clock() + TOKEN_LOCK_SECONDS))
        if await ctx.kv_get(key):
            return False
        await ctx.kv_set(key, me, self.clock() + TOKEN_LOCK_SECONDS)
        await asyncio.sleep(0.02)  # let a concurrent writer land, then see whose value stuck
        return await ctx.kv_get(key) == me

    def _credentials(self) -> dict[str, str | bool]:
        return {
            "grant_type": "client_credential",
            "appid": self.options.app_id,
            "secret": self.options.app_secret,
        }

    async def refresh_auth(self, ctx: DeliveryContext) -> None:
        entry = await self._storage(ctx).get_entry(self._token_key)
        await self.access_token(ctx, stale=entry.value if entry else None)

    # ---- one API call

    async def _call(
        self,
        method: str,
        endpoint: str,
        token: str | None,
        *,
        what: str,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        form: Callable[[], aiohttp.FormData] | None = None,
        unsure_after_send: bool = False,
    ) -> dict[str, Any]:
        """One request through the channel's transmitter (``HttpAdapter.request``: transport failures mapped by
        ``map_transport_errors``); WeChat's errcode raised as ``WeChatClientException``.

        ``unsure_after_send``: the step is not safe to repeat (submit), so a failure once the request may have
        reached WeChat is OutcomeUnknown (``may_land``); otherwise Retryable. draft/add and add_material create
        something too, but their retry is safe without asking the engine to reconcile: a draft/add left
        ``draft_pending`` finds its draft with draft/batchget, and a repeated cover upload only leaves a spare
        material, so they keep ``unsure_after_send`` off.
        """
        query = dict(params or {})
        if token is not None:
            query["access_token"] = token
        data: Any = form() if form is not None else None  # a FormData is single-use: one per request
        headers = {}
        if json_body is not None:
            data = json.dumps(json_body, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json; charset=utf-8"
        # "/datacube/..." and other interfaces beside /cgi-bin are given from the host's root.
        url = f"{self._root}{endpoint}" if endpoint.startswith("/") else f"{self._api}/{endpoint}"
        response = await self.request(
            method, url, doing=what, may_land=unsure_after_send, params=query, data=data, headers=headers
        )
        status = response.status
        if status != 200:
            reason = f"HTTP {status} from WeChat for {what}"
            if unsure_after_send:
                raise OutcomeUnknown(reason + "; it may have been accepted: checking before resending")
            if status >= 500 or status in (408, 429):
                raise Retryable(reason, platform_code=status)
            raise Permanent(f"{reason} (is api_base of channel {self.name!r} right?)", platform_code=status)
        answer = response.json()
        if not answer or list(answer) == ["value"]:  # not JSON, or JSON that is not an object
            raise Retryable(f"WeChat answered {what} with something that is not a JSON object")
        errcode = answer.get("errcode", 0)
        if errcode not in (0, None):
            raise WeChatClientException(errcode, str(answer.get("errmsg", "")), response=answer)
        return answer

    async def _api_call(
        self, ctx: DeliveryContext, method: str, endpoint: str, *, what: str, **kw: Any
    ) -> dict[str, Any]:
        """``_call`` with the shared token: a refused token is refreshed and the call made once more."""
        token = await self.access_token(ctx)
        try:
            try:
                return await self._call(method, endpoint, token, what=what, **kw)
            except WeChatClientException as exc:
                if exc.errcode not in TOKEN_ERRORS:
                    raise
                log.info("WeChat refused the token (%s); refreshing", exc.errcode, extra={"channel": self.name})
                token = await self.access_token(ctx, stale=token)
                return await self._call(method, endpoint, token, what=what, **kw)
        except WeChatClientException as exc:
            raise self._error(exc, what) from exc

    def _token_error(self, exc: WeChatClientException) -> DeliveryError:
        """The token request's refusal. There 40001 means the AppSecret is wrong (the token page lists it so), not
        a stale token: no refresh can fix it, so the channel pauses. stable_token's IP checks: 89503 waits for an
        administrator to confirm this server's IP (a person has to act: pause until resumed); 89506/89507 say an
        administrator refused it and how long the IP is barred (24 h / 1 h)."""
        detail = f"WeChat {exc.errcode}: {exc.errmsg or 'no message'} (the access token)"
        if exc.errcode in TOKEN_ERRORS:
            return AuthRevoked(
                f"{detail}: WeChat refused app_secret of channel {self.name!r}; check it (and whether it was reset) "
                "in the WeChat console",
                platform_code=exc.errcode,
            )
        if exc.errcode == IP_AWAITS_CONFIRMATION:
            return AuthRevoked(
                f"{detail}: an administrator of app {self.options.app_id} must confirm this server's IP in WeChat; "
                f"resume channel {self.name!r} once confirmed",
                platform_code=exc.errcode,
            )
        if exc.errcode in IP_REFUSED_FOR:
            until = dt.datetime.fromtimestamp(self.clock() + IP_REFUSED_FOR[exc.errcode], dt.UTC)
            return RateLimited(
                f"{detail}: an administrator refused this server's IP; WeChat bars it until {until:%Y-%m-%d %H:%M} UTC",
                until=until,
                platform_code=exc.errcode,
            )
        return self._error(exc, "the access token")

    def _error(self, exc: WeChatClientException, what: str) -> DeliveryError:
        """A WeChat errcode mapped onto the taxonomy."""
        code = exc.errcode
        detail = f"WeChat {code}: {exc.errmsg or 'no message'} ({what})"
        now = self.clock()
        if code in TOKEN_ERRORS:
            return AuthExpired(detail, platform_code=code)
        if code in CREDENTIAL_ERRORS:
            return AuthRevoked(
                f"{detail}: check app_id and app_secret of channel {self.name!r}, the account's API permissions and "
                "its IP whitelist in the WeChat console",
                platform_code=code,
            )
        if code == DAILY_QUOTA:
            tomorrow = (dt.datetime.fromtimestamp(now, BEIJING) + dt.timedelta(days=1)).date()
            until = dt.datetime.combine(tomorrow, dt.time(0, 0, 30), tzinfo=BEIJING)
            return RateLimited(f"{detail}: the daily quota is used up", until=until, platform_code=code)
        if code == MINUTE_QUOTA:
            until = dt.datetime.fromtimestamp(now + 60, dt.UTC)
            return RateLimited(f"{detail}: too many calls this minute", until=until, platform_code=code)
        if code == SYSTEM_BUSY:
            return Retryable(f"{detail}: WeChat is busy", platform_code=code)
        return Permanent(detail, platform_code=code)

    # ---- images

    async def _fetch(self, url: str, *, field: str, max_bytes: int, types: tuple[str, ...]) -> MediaBlob:
        """The image as WeChat takes it: fetched within the media limits (any image type), then converted and
        downscaled when WeChat would refuse it as it is (``images.fit_image``)."""
        requirement = f"WeChat takes {', '.join(t.split('/')[1] for t in types)} up to {max_bytes // 1_000_000} MB"
        limit = self.media_settings.max_bytes
        blob = await self.fetch_image(
            url, max_bytes=limit, allowed_types=FETCHED_TYPES, what=field, requirement=requirement
        )
        try:
            # Pillow decodes on a thread: a large photo must not hold the event loop the other deliveries share.
            return await asyncio.to_thread(fit_image, blob, max_bytes=max_bytes, types=types)
        except ImageRefused as exc:
            raise Permanent(f"{field} {url} cannot go to WeChat ({requirement}): {exc}") from exc

    @staticmethod
    def _form(blob: MediaBlob) -> Callable[[], aiohttp.FormData]:
        def build() -> aiohttp.FormData:
            form = aiohttp.FormData()
            form.add_field("media", blob.data, filename=blob.filename, content_type=blob.content_type)
            return form

        return build

    def _cover_key(self, sha256: str) -> str:
        return f"wechat:{self.options.app_id}:cover:{sha256}"

    def _cover_users_key(self, sha256: str) -> str:
        return f"wechat:{self.options.app_id}:cover-users:{sha256}"

    async def _upload_cover(self, article: WeChatArticle, ctx: DeliveryContext) -> dict[str, str]:
        """The cover as a permanent material: the one already uploaded for the same image (by the converted bytes'
        hash: the account's material quota is finite), or a new upload. The checkpoint it returns names both."""
        blob = await self._fetch(article.cover, field="images (cover)", max_bytes=COVER_MAX_BYTES, types=COVER_TYPES)
        # One upload per image in this process; two workers uploading the same new cover at once make two materials
        # (both work; the spare is only quota).
        async with self._cover_locks.setdefault(blob.sha256, asyncio.Lock()):
            return await self._cover_material(blob, ctx)

    async def _cover_material(self, blob: MediaBlob, ctx: DeliveryContext) -> dict[str, str]:
        known = await ctx.kv_get(self._cover_key(blob.sha256))
        if known:
            return {"thumb_media_id": known, "cover_sha256": blob.sha256}
        answer = await self._api_call(
            ctx,
            "POST",
            "material/add_material",
            what="the cover upload (material/add_material)",
            params={"type": "image"},
            form=self._form(blob),
        )
        media_id = str(answer["media_id"])
        await ctx.kv_set(self._cover_key(blob.sha256), media_id, None)
        return {"thumb_media_id": media_id, "cover_sha256": blob.sha256}

    async def _cover_users(self, ctx: DeliveryContext, sha256: str) -> list[str]:
        raw = await ctx.kv_get(self._cover_users_key(sha256))
        try:
            found = json.loads(raw) if raw else []
        except ValueError:
            found = []
        return [str(u) for u in found] if isinstance(found, list) else []

    async def _note_cover_user(self, ctx: DeliveryContext) -> None:
        """This story's live article shows the cover: it stays until the last such story is retracted."""
        sha = ctx.state.get("cover_sha256")
        if sha:
            async with self._cover_locks.setdefault(sha, asyncio.Lock()):
                users = await self._cover_users(ctx, sha)
                if ctx.story_id not in users:
                    await ctx.kv_set(self._cover_users_key(sha), json.dumps([*users, ctx.story_id]), None)

    async def _release_cover(self, ctx: DeliveryContext, receipt: Receipt) -> str | None:
        """On retraction: the cover material is deleted once no live story of this channel's account shows it.

        The users list is read and written under this process's lock for the image; workers in other processes
        publishing or retracting a story with the same cover at the same instant could still lose an update (the
        cost: a spare material, or, rarely, a cover removed while a live article uses it; whether a published
        article still shows a deleted material, WeChat's documentation does not say)."""
        sha, media_id = receipt.raw.get("cover_sha256"), receipt.raw.get("thumb_media_id")
        if not sha or not media_id:
            return None  # published before covers were shared: its material is left as it was
        async with self._cover_locks.setdefault(sha, asyncio.Lock()):
            return await self._release_cover_locked(ctx, sha, str(media_id))

    async def _release_cover_locked(self, ctx: DeliveryContext, sha: str, media_id: str) -> str:
        users = [u for u in await self._cover_users(ctx, sha) if u != ctx.story_id]
        if users:
            await ctx.kv_set(self._cover_users_key(sha), json.dumps(users), None)
            return "kept (another live story shows it)"
        try:
            await self._api_call(
                ctx,
                "POST",
                "material/del_material",
                what=f"deleting the cover material {media_id} (material/del_material)",
                json_body={"media_id": media_id},
            )
            outcome = "deleted"
        except Permanent as exc:
            if exc.platform_code != str(INVALID_MEDIA_ID):
                raise
            outcome = "already gone"
        await ctx.kv_set(self._cover_key(sha), "", self.clock())  # expired now: the next story uploads afresh
        await ctx.kv_set(self._cover_users_key(sha), "", self.clock())
        return outcome

    async def _upload_body_image(self, src: str, ctx: DeliveryContext) -> str:
        blob = await self._fetch(src, field="body_html <img>", max_bytes=BODY_IMAGE_MAX_BYTES, types=BODY_IMAGE_TYPES)
        answer = await self._api_call(
            ctx, "POST", "media/uploadimg", what=f"the body image {src} (media/uploadimg)", form=self._form(blob)
        )
        return str(answer["url"])

    # ---- publishing

    async def publish(self, payload: Payload[WeChatPayload], ctx: DeliveryContext) -> Receipt:
        return await self._publish(payload, ctx)

    async def update(self, payload: Payload[WeChatPayload], ctx: DeliveryContext) -> Receipt:
        """``update_policy = "republish"``: delete the live article and its draft, then publish this version."""
        if not ctx.state.get("old_deleted") and ctx.receipt is not None:
            await self._delete_article(ctx, ctx.receipt)
            await ctx.checkpoint({"old_deleted": True})
        return await self._publish(payload, ctx)

    async def _publish(self, payload: Payload[WeChatPayload], ctx: DeliveryContext) -> Receipt:
        state = ctx.state
        receipt = self._receipt(state) if state.get("article_id") else await self._steps(_article(payload, ctx), ctx)
        await self._note_cover_user(ctx)  # also when resuming: a crash may have come between confirm and this
        return receipt

    async def _steps(self, data: WeChatArticle, ctx: DeliveryContext) -> Receipt:
        state = ctx.state
        # 1. cover -> permanent material
        if not state.get("thumb_media_id"):
            await ctx.checkpoint(await self._upload_cover(data, ctx))
        # 2. body images -> uploadimg, one checkpoint per image
        urls: dict[str, str] = dict(state.get("body_images") or {})
        for src in data.body_images:
            if src not in urls:
                urls[src] = await self._upload_body_image(src, ctx)
                await ctx.checkpoint({"body_images": urls})
        content = rewrite_image_sources(data.content, urls)
        if len(content) >= CONTENT_MAX_CHARS or len(content.encode()) >= CONTENT_MAX_BYTES:
            raise Permanent(
                f"body_html: {len(content)} characters once images point at WeChat; WeChat takes under "
                f"{CONTENT_MAX_CHARS} characters and 1 MB"
            )
        # 3. draft
        if not state.get("draft_media_id"):
            await self._make_draft(data, content, ctx)
        # 4. submit
        if not state.get("publish_id"):
            if state.get("submit_pending"):
                found = await self._reconcile_submit(data, ctx)
                if found is not None:
                    return found
            await self._submit(ctx)
        # 5. confirm
        return await self._confirm(ctx)

    async def _make_draft(self, data: WeChatArticle, content: str, ctx: DeliveryContext) -> None:
        thumb = ctx.state["thumb_media_id"]
        if ctx.state.get("draft_pending"):
            existing = await self._find_draft(ctx, thumb, data)
            if existing is not None:
                await ctx.checkpoint({"draft_media_id": existing, "draft_pending": None})
                return
        article = {
            "title": data.title,
            "author": data.author,
            "digest": data.digest,
            "content": content,
            "content_source_url": data.content_source_url,
            "thumb_media_id": thumb,
            "need_open_comment": data.need_open_comment,
            "only_fans_can_comment": data.only_fans_can_comment,
        }
        await ctx.checkpoint({"draft_pending": self.clock()})
        try:
            answer = await self._api_call(
                ctx, "POST", "draft/add", what="the draft (draft/add)", json_body={"articles": [article]}
            )
        except Permanent as exc:
            if exc.platform_code == str(INVALID_MEDIA_ID):
                # WeChat no longer knows the cover (deleted by hand?): forget it, start again from its upload.
                if ctx.state.get("cover_sha256"):
                    await ctx.kv_set(self._cover_key(ctx.state["cover_sha256"]), "", self.clock())
                await ctx.checkpoint({"thumb_media_id": None, "cover_sha256": None, "draft_pending": None})
                raise Retryable(f"{exc.reason}: uploading the cover again", retry_after=0) from exc
            await ctx.checkpoint({"draft_pending": None})
            raise
        except (RateLimited, AuthRevoked, AuthExpired) as exc:
            await ctx.checkpoint({"draft_pending": None})  # WeChat answered: no draft was made
            raise exc
        await ctx.checkpoint({"draft_media_id": str(answer["media_id"]), "draft_pending": None})

    async def _find_draft(self, ctx: DeliveryContext, thumb_media_id: str, data: WeChatArticle) -> str | None:
        """The draft an unanswered draft/add made: this delivery's cover, title and source link (a cover can be
        shared by several stories' drafts)."""
        async for item in self._listed(ctx, "draft/batchget", "the draft list (draft/batchget)"):
            for article in (item.get("content") or {}).get("news_item") or []:
                if (
                    article.get("thumb_media_id") == thumb_media_id
                    and article.get("title") == data.title
                    and article.get("content_source_url") == data.content_source_url
                ):
                    return str(item["media_id"])
        return None

    async def _listed(self, ctx: DeliveryContext, path: str, what: str) -> AsyncIterator[dict[str, Any]]:
        """The items of a batchget list (newest first), page by page, back to the time the delivery was queued
        (nothing it made is older) or to the list's end; at most LIST_PAGES pages, then OutcomeUnknown."""
        for page in range(LIST_PAGES):
            answer = await self._api_call(
                ctx,
                "POST",
                path,
                what=what,
                json_body={"offset": page * LIST_PAGE, "count": LIST_PAGE, "no_content": 1},
            )
            items = [item for item in answer.get("item") or [] if isinstance(item, dict)]
            for item in items:
                yield item
            if (page + 1) * LIST_PAGE >= int(answer.get("total_count", 0)) or not items:
                return
            oldest = items[-1].get("update_time")
            if ctx.queued_at is not None and isinstance(oldest, int) and oldest < ctx.queued_at - CLOCK_SKEW:
                return
        raise OutcomeUnknown(f"{what}: not found among the newest {LIST_PAGES * LIST_PAGE}; check the account")

    async def _submit(self, ctx: DeliveryContext) -> None:
        await ctx.checkpoint({"submit_pending": self.clock()})
        try:
            answer = await self._api_call(
                ctx,
                "POST",
                "freepublish/submit",
                what="the publish submit (freepublish/submit)",
                json_body={"media_id": ctx.state["draft_media_id"]},
                unsure_after_send=True,
            )
        except OutcomeUnknown:
            raise
        except DeliveryError as exc:
            # WeChat answered with an errcode: nothing was submitted.
            update: dict[str, Any] = {"submit_pending": None}
            if exc.platform_code == str(INVALID_MEDIA_ID):
                update["draft_media_id"] = None  # the draft is gone: make it again
                await ctx.checkpoint(update)
                raise Retryable(f"{exc.reason}: creating the draft again", retry_after=0) from exc
            await ctx.checkpoint(update)
            raise
        msg_data_id = answer.get("msg_data_id")
        await ctx.checkpoint(
            {
                "publish_id": str(answer["publish_id"]),
                # The message's data id: article statistics (datacube ``msgid`` = msg_data_id + "_" + index) join on it.
                "msg_data_id": str(msg_data_id) if msg_data_id not in (None, "") else None,
                "submit_pending": None,
                "confirm_checks": 0,
            }
        )

    async def _reconcile_submit(self, data: WeChatArticle, ctx: DeliveryContext) -> Receipt | None:
        """A submit whose answer was lost: the published article carrying this delivery's cover, if any.

        Not found yet inside ``reconcile_window``: WeChat may still be publishing, so Retryable (never a second
        submit meanwhile); found nowhere after it: OutcomeUnknown for an operator.
        """
        thumb = ctx.state.get("thumb_media_id")
        async for item in self._listed(ctx, "freepublish/batchget", "the published list (freepublish/batchget)"):
            for article in (item.get("content") or {}).get("news_item") or []:
                if article.get("thumb_media_id") == thumb and article.get("title") == data.title:
                    found = {"article_id": str(item["article_id"]), "article_url": article.get("url")}
                    await ctx.checkpoint({**found, "submit_pending": None})
                    return self._receipt(ctx.state)
        waited = self.clock() - float(ctx.state["submit_pending"])
        if waited < self.options.reconcile_window:
            raise Retryable(
                f"an unanswered freepublish/submit {waited:.0f} s ago is not among the published articles yet; "
                "checking again before any resubmit",
                retry_after=min(30.0, max(2.0, waited)),
                pending=True,  # bounded by reconcile_window
            )
        raise OutcomeUnknown(
            f"an unanswered freepublish/submit is not among the published articles after "
            f"{self.options.reconcile_window:g} s (draft {ctx.state.get('draft_media_id')}): check the account's "
            "publishing records, then `syndicate replay --force` to submit again"
        )

    def _event_key(self, publish_id: str) -> str:
        return f"wechat:publish-event:{self.options.app_id}:{publish_id}"

    async def _confirm(self, ctx: DeliveryContext) -> Receipt:
        publish_id = str(ctx.state["publish_id"])
        stored = await ctx.kv_get(self._event_key(publish_id))
        result = json.loads(stored) if stored else None
        if result is not None and int(result.get("publish_status", -1)) == 0 and not result.get("article_id"):
            result = None  # a success event without the article id is no receipt: ask freepublish/get instead
        if result is not None:
            source = "the PUBLISHJOBFINISH event"
        else:
            result = await self._api_call(
                ctx,
                "POST",
                "freepublish/get",
                what=f"the publish status of {publish_id} (freepublish/get)",
                json_body={"publish_id": publish_id},
            )
            detail = (result.get("article_detail") or {}).get("item") or [{}]
            result = {
                "publish_status": result.get("publish_status"),
                "article_id": result.get("article_id"),
                "article_url": detail[0].get("article_url"),
            }
            source = "freepublish/get"
        status = int(result.get("publish_status", -1))
        if status == 0 and not result.get("article_id"):
            # WeChat documents article_id on every success; without it there is nothing to address a retraction to.
            raise Retryable(f"WeChat reported publish job {publish_id} done without an article_id ({source})")
        if status == 0:
            await ctx.checkpoint(
                {
                    "article_id": str(result["article_id"]),
                    "article_url": result.get("article_url"),
                    "confirmed_by": source,
                    # When the article was seen published: its statistics are asked for by publication day.
                    "confirmed_at": self.clock(),
                }
            )
            return self._receipt(ctx.state)
        if status == 1:
            checks = int(ctx.state.get("confirm_checks") or 0)
            wait = CONFIRM_BACKOFF[min(checks, len(CONFIRM_BACKOFF) - 1)]
            await ctx.checkpoint({"confirm_checks": checks + 1})
            # Still publishing is not a failure: it waits without spending the retry budget, for a bounded time.
            raise Retryable(
                f"WeChat is still publishing (publish_id {publish_id}); checking again in {wait:g} s",
                retry_after=wait,
                pending=checks < MAX_PENDING_CHECKS,
            )
        reason = PUBLISH_STATUS_REASONS.get(status, f"unknown publish_status {status}")
        raise Permanent(
            f"WeChat publish job {publish_id} ended with publish_status {status}: {reason}", platform_code=status
        )

    def _receipt(self, state: dict[str, Any]) -> Receipt:
        return Receipt(
            remote_id=str(state["article_id"]),
            url=state.get("article_url"),
            raw={
                "article_id": state["article_id"],
                "article_url": state.get("article_url"),
                "publish_id": state.get("publish_id"),
                "msg_data_id": state.get("msg_data_id"),
                "draft_media_id": state.get("draft_media_id"),
                "thumb_media_id": state.get("thumb_media_id"),
                "cover_sha256": state.get("cover_sha256"),
                "confirmed_at": state.get("confirmed_at"),
            },
        )

    async def lookup(self, payload: Payload[WeChatPayload], ctx: DeliveryContext) -> Receipt | None:
        """Did an interrupted attempt get further than its checkpoint says?

        A confirmed article is the receipt; a checkpointed ``publish_id`` answers None so the resumed send confirms
        it (resuming never repeats a checkpointed step); an unanswered submit is reconciled with freepublish/batchget.
        Anything earlier answers None: the send resumes at the step the checkpoint reached.
        """
        if ctx.action is Action.RETRACT:
            return None  # deleting again is harmless (53600 / 40007 count as done)
        state = ctx.state
        if state.get("article_id"):
            return self._receipt(state)
        if state.get("submit_pending") and not state.get("publish_id"):
            return await self._reconcile_submit(_article(payload, ctx), ctx)
        return None

    # ---- reach

    async def read_reach(self, ctx: DeliveryContext) -> ReachReading:
        receipt = ctx.receipt
        if receipt is None or not receipt.raw.get("msg_data_id"):
            raise Permanent(
                f"the receipt of story {ctx.story_id!r} has no msg_data_id (its submit was reconciled through "
                "freepublish/batchget, which does not report it): WeChat's article statistics are keyed by it"
            )
        msg_data_id = receipt.raw["msg_data_id"]
        published_at = receipt.raw.get("confirmed_at") or ctx.queued_at
        if not isinstance(published_at, int | float):
            raise Permanent(f"the receipt of story {ctx.story_id!r} says not when the article was published")
        day = dt.datetime.fromtimestamp(published_at, BEIJING).date()
        now = dt.datetime.fromtimestamp(self.clock(), BEIJING)
        # Not "day before today": between midnight and 08:00 the previous day's figures are not there yet either.
        ready = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(STATS_READY_HOUR, 5), BEIJING)
        if now < ready:
            raise Retryable(
                f"WeChat counts an article's figures by day, up to yesterday: those of {day} are ready after "
                f"{ready:%Y-%m-%d %H:%M} Beijing time",
                retry_after=max(ready.timestamp() - self.clock(), 60.0),
                pending=True,
            )
        answer = await self._api_call(
            ctx,
            "POST",
            ARTICLE_STATS,
            what=f"the statistics of articles published on {day} (getarticletotaldetail)",
            json_body={"begin_date": day.isoformat(), "end_date": day.isoformat()},
        )
        return article_reach(answer, f"{msg_data_id}_1", day)

    # ---- retract

    async def retract(self, payload: Payload[WeChatPayload], ctx: DeliveryContext) -> Receipt:
        assert ctx.receipt is not None  # the engine skips a retraction of what never landed
        deleted = await self._delete_article(ctx, ctx.receipt)
        cover = await self._release_cover(ctx, ctx.receipt)
        if cover is not None:
            deleted["cover"] = cover
        return Receipt(remote_id=ctx.receipt.remote_id, url=None, raw={"deleted": deleted})

    async def _delete_article(self, ctx: DeliveryContext, receipt: Receipt) -> dict[str, Any]:
        article_id = receipt.raw.get("article_id") or receipt.remote_id
        outcome: dict[str, Any] = {"article_id": article_id}
        if article_id:
            # freepublish/delete documents only 0 and 48001: no answer is known to mean "already deleted", so any
            # other errcode fails the retraction with WeChat's words (an editor who deleted it by hand can mark the
            # delivery landed) rather than guess.
            await self._api_call(
                ctx,
                "POST",
                "freepublish/delete",
                what=f"deleting article {article_id} (freepublish/delete)",
                json_body={"article_id": article_id, "index": 0},
            )
            outcome["article"] = "deleted"
        draft = receipt.raw.get("draft_media_id")
        if draft:
            try:
                await self._api_call(
                    ctx,
                    "POST",
                    "draft/delete",
                    what=f"deleting draft {draft} (draft/delete)",
                    json_body={"media_id": draft},
                )
                outcome["draft"] = "deleted"
            except Permanent as exc:
                if exc.platform_code != str(INVALID_MEDIA_ID):
                    raise
                outcome["draft"] = "already gone"
        return outcome

    async def check(self, keys: SharedKeys | None = None) -> str:
        """Prove api_base, app_id, app_secret and the draft permission with the token the workers share (taken, or
        refreshed, through the store like theirs): a fresh token of our own would end the shared one minutes later
        (WeChat keeps the previous token working for five minutes only). Without the store, fetch one and say so."""
        if keys is None:
            await self._stable_token(force=False)  # normal mode: the token the workers hold stands
            return f"WeChat at {self._api} answered stable_token for app {self.options.app_id} (normal mode)"
        ctx = _keys_context(keys, self.name, self.clock)
        await self._api_call(ctx, "GET", "draft/count", what="the draft count (draft/count)")
        return f"WeChat at {self._api} accepted the shared access token of app {self.options.app_id} (draft/count)"

    # ---- the callback

    def web_routes(self, access: ChannelAccess) -> list[web.AbstractRouteDef]:
        if not self.options.token:
            return []
        path = f"/wechat/{self.name}/callback"
        return [web.get(path, self._verify_url), web.post(path, CallbackHandler(self, access.keys).handle)]

    async def _verify_url(self, request: web.Request) -> web.Response:
        """WeChat's server-URL check: echo ``echostr`` when the signature is right."""
        q = request.query
        try:
            check_signature(self.options.token, q["signature"], q["timestamp"], q["nonce"])
        except (KeyError, InvalidSignatureException):
            return web.Response(status=403, text="invalid signature")
        return web.Response(text=q.get("echostr", ""))

    def openapi_paths(self) -> dict[str, Any]:
        if not self.options.token:
            return {}
        return {
            f"/wechat/{self.name}/callback": {
                "post": {
                    "summary": f"WeChat event push for channel {self.name} (PUBLISHJOBFINISH confirms a publish)",
                    "parameters": [
                        {"name": n, "in": "query", "required": n != "msg_signature", "schema": {"type": "string"}}
                        for n in ("signature", "timestamp", "nonce", "msg_signature")
                    ],
                    "responses": {"200": {"description": "success"}, "403": {"description": "bad signature"}},
                }
            }
        }


def article_reach(answer: dict[str, Any], msgid: str, day: dt.date) -> ReachReading:
    """The reading of ``msgid`` in a getarticletotaldetail answer: its ``detail_list`` days added up, each figure
    under WeChat's name in ``raw`` (with ``stat_days``, the days counted), the common metrics from them. Absent from
    the list: WeChat keeps no figures for it (the article was deleted), Permanent; unless WeChat says the day's
    figures are delayed (``is_delay``), Retryable then."""
    entries = answer.get("list")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or str(entry.get("msgid")) != msgid:
            continue
        days = entry.get("detail_list")
        raw: dict[str, int | float] = {}
        counted = 0
        for detail in days if isinstance(days, list) else []:
            if not isinstance(detail, dict):
                continue
            counted += 1
            for name, value in detail.items():
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    raw[name] = int(raw.get(name, 0)) + value
        metrics = {metric: int(raw[name]) for name, metric in DETAIL_AS_REACH.items() if name in raw}
        raw["stat_days"] = counted
        return ReachReading(metrics=metrics, raw=raw)
    if answer.get("is_delay"):
        # Not a failure: WeChat's counting of the day is late; waiting spends no retry.
        raise Retryable(
            f"WeChat has not counted the articles of {day} yet (is_delay)", retry_after=3600.0, pending=True
        )
    raise Permanent(
        f"WeChat reports no statistics for article {msgid} published on {day}: it was deleted (or is not one WeChat "
        "counts); sampling ends"
    )


def _article(payload: Payload[WeChatPayload], ctx: DeliveryContext) -> WeChatArticle:
    """The article a publish or update sends (a retraction payload has none)."""
    article = payload.data.root
    if not isinstance(article, WeChatArticle):
        raise Permanent(
            f"the {ctx.action.value} of story {ctx.story_id!r} holds a {article.action} payload, not an article"
        )
    return article


class CallbackHandler:
    """``POST /wechat/<channel>/callback``: checks WeChat's signature (plaintext and safe mode) and stores a
    ``PUBLISHJOBFINISH`` result where the confirm step looks first."""

    def __init__(self, adapter: WeChatAdapter, keys: SharedKeys) -> None:
        self.adapter = adapter
        self.keys = keys

    async def handle(self, request: web.Request) -> web.Response:
        options = self.adapter.options
        q = request.query
        if request.content_length is not None and request.content_length > CALLBACK_MAX_BYTES:
            return web.Response(status=413, text="too large")
        body = (await request.read())[: CALLBACK_MAX_BYTES + 1]
        if len(body) > CALLBACK_MAX_BYTES:
            return web.Response(status=413, text="too large")
        try:
            timestamp = q["timestamp"]
            check_signature(options.token, q["signature"], timestamp, q["nonce"])
            if abs(self.adapter.clock() - float(timestamp)) > CALLBACK_TOLERANCE:
                raise InvalidSignatureException()
            text = body.decode("utf-8")
            if q.get("encrypt_type") == "aes":
                if not options.encoding_aes_key:
                    log.warning(
                        "encrypted WeChat callback but no encoding_aes_key", extra={"channel": self.adapter.name}
                    )
                    return web.Response(status=403, text="safe mode needs encoding_aes_key")
                crypto = WeChatCrypto(options.token, options.encoding_aes_key, options.app_id)
                text = crypto.decrypt_message(text, q["msg_signature"], timestamp, q["nonce"])
            message = xmltodict.parse(text).get("xml") or {}
        except (KeyError, ValueError, InvalidSignatureException, InvalidAppIdException):
            return web.Response(status=403, text="invalid signature")
        except Exception:  # malformed XML or ciphertext: never a 500 for a caller's garbage
            return web.Response(status=400, text="malformed message")
        if message.get("MsgType") == "event" and message.get("Event") == "PUBLISHJOBFINISH":
            await self._store_publish_result(message.get("PublishEventInfo") or {})
        return web.Response(text="success")

    async def _store_publish_result(self, info: dict[str, Any]) -> None:
        publish_id = str(info.get("publish_id") or "")
        if not publish_id:
            return
        items = (info.get("article_detail") or {}).get("item") or {}
        first = items[0] if isinstance(items, list) and items else items
        result = {
            "publish_status": int(info.get("publish_status", -1)),
            "article_id": info.get("article_id"),
            "article_url": first.get("article_url") if isinstance(first, dict) else None,
        }
        now = self.adapter.clock()
        await self.keys.kv_set(
            self.adapter._event_key(publish_id), json.dumps(result), expires_at=now + EVENT_TTL, now=now
        )
        log.info("WeChat PUBLISHJOBFINISH %s: status %s", publish_id, result["publish_status"])


def _keys_context(keys: SharedKeys, channel: str, clock: Callable[[], float]) -> DeliveryContext:
    """A context for a call outside any delivery (the live check) that reaches the shared keys and nothing else."""

    async def no_checkpoint(data: dict[str, Any]) -> None:
        raise RuntimeError("a check makes no checkpoint")

    async def kv_get(key: str) -> str | None:
        return await keys.kv_get(key, now=clock())

    async def kv_set(key: str, value: str, expires_at: float | None) -> None:
        await keys.kv_set(key, value, expires_at=expires_at, now=clock())

    return DeliveryContext(
        delivery_id=0,
        story_id="",
        version=0,
        channel=channel,
        action=Action.PUBLISH,
        attempt=1,
        state={},
        receipt=None,
        save_checkpoint=no_checkpoint,
        kv_get=kv_get,
        kv_set=kv_set,
    )
