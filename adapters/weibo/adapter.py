"""The Weibo channel: shares the story link with a short text and the cover through ``statuses/share``.

Weibo's open API lets a third-party app post only through ``POST /2/statuses/share.json``
(https://open.weibo.com/wiki/2/statuses/share): ``access_token``, ``status`` (at most 140 in Weibo's counting, with
at least one link on the app's *safe domain*, no ``#topic#``) and optionally ``pic`` (one JPEG/GIF/PNG under 5 MB,
multipart). So:

* ``render`` fits headline (or the channel override) + summary + story URL into 140 with
  ``adapters.textfit.WEIBO_COUNTER`` (no hashtags: the API refuses them) and refuses, before any request, a story
  whose URL is not on ``safe_domain``: Weibo would refuse every attempt.
* ``publish`` fetches the cover through ``MediaFetcher`` (the one place that fetches story images) and sends it as
  ``pic``; without a cover the request is a plain form post.
* The API has no delete or edit for shared statuses, so update and retract are not offered: the engine records
  them as ``skipped`` with that reason.
* ``read_reach`` reads the status's counts through ``GET /2/statuses/count.json?ids=<id>``: reposts are its
  shares, comments its comments, attitudes (表态, the likes) its likes; the public API reports no reads (only the
  business ``media_statuses/count_sp`` does, for media accounts), so reads are left out. Weibo leaves an unknown or
  deleted id out of the answer without an error: a status missing from it is gone, and the sampling ends.
* A publish whose answer was lost is reconciled by reading the account's ``statuses/user_timeline`` and matching
  the text (Weibo shows links as t.cn short links, so links compare as placeholders); when the timeline cannot be
  read the delivery stays unknown rather than risk a second post.

Error codes (open.weibo.com/wiki/Error_code): 10022/10023/10024 (IP, user, user-per-API rate limits) pause the
channel until the window resets, as ``account/rate_limit_status.json`` tells (``reset_time_in_seconds``, bounded to
a minute .. a day; when the hour's budget is not what is spent, a 10023 is the user's daily total and the pause
lasts to the next Beijing midnight); when that call fails the pause is ``rate_limit_pause``, as it is for 20016
(posting too fast); 20017/20019 (similar/repeated content) fail the delivery, unless an earlier attempt of the same
delivery may have posted it: then the timeline is read and the status found there is the delivery's (a blind resend
after a lost answer must never end as "failed" while the status is live); 20012 (too long: our counting should
prevent it) fails; 21327 (expired token) is AuthExpired and, as the token cannot be refreshed without the user, ends
as AuthRevoked saying so; the other token and app codes (21315-21319, 21324-21326, 21330, 21332, 10014) and 10004
(this server's IP not on the app's allow-list) pause the channel as AuthRevoked; 20032 (posted, server slow) is an
unknown outcome settled by the timeline; 10001-10003 and 21331 are Weibo's own failures, retried. A 5xx to the share
is an unknown outcome (a gateway's error says nothing about whether the status was posted): the timeline is read
before any resend; a 5xx to a read retries.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Unpack
from urllib.parse import urlsplit

import aiohttp
from pydantic import Field, HttpUrl, IPvAnyAddress, field_validator

from adapters.textfit import WEIBO_COUNTER, FitError, fit_story, same_post_text
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
from syndicate.httputil import HttpAnswer, retry_after_seconds
from syndicate.media import MediaBlob
from syndicate.story import ChannelStory

if TYPE_CHECKING:
    from syndicate.store.base import SharedKeys

WEIBO_API_BASE = "https://api.weibo.com"
SHARE_PATH = "/2/statuses/share.json"
TIMELINE_PATH = "/2/statuses/user_timeline.json"
RATE_STATUS_PATH = "/2/account/rate_limit_status.json"
COUNT_PATH = "/2/statuses/count.json"
#: statuses/count's figures under the common metric each one is.
COUNTS_AS_REACH: dict[str, ReachMetric] = {
    "reposts": ReachMetric.SHARES,
    "comments": ReachMetric.COMMENTS,
    "attitudes": ReachMetric.LIKES,
}
#: statuses/share: "仅支持JPEG、GIF、PNG图片,上传图片大小限制为<5M".
PIC_TYPES = ("image/jpeg", "image/gif", "image/png")
PIC_MAX_BYTES = 5 * 1024 * 1024 - 1
#: How many of the account's newest statuses a lookup reads.
#: Statuses per timeline page (Weibo's most) and the pages a lookup reads at most: far more statuses than an
#: account posts while one delivery is retried, so "not found" means not posted.
LOOKUP_COUNT = 100
LOOKUP_PAGES = 20
#: How far our clock and Weibo's may differ when a page is judged older than the delivery.
CLOCK_SKEW = 300

RATE_LIMIT_CODES = frozenset({10022, 10023, 10024, 20016})
#: The rate limits of a counting window (IP per hour, user per hour or day, user per interface per hour), whose end
#: ``account/rate_limit_status`` reports; 20016 ("posting too fast") is not one of them.
WINDOW_CODES = frozenset({10022, 10023, 10024})
USER_OUT_OF_LIMIT = 10023
#: Bounds of a pause read from rate_limit_status: at least a minute (a window "resetting in 0 s" must not turn into a
#: tight loop of refused calls), at most a day.
MIN_WINDOW_PAUSE = 60.0
MAX_WINDOW_PAUSE = 24 * 3600.0
#: reset_time_in_seconds above this is a unix time (the v1 interface's meaning), not seconds from now (v2's).
UNIX_TIME_FLOOR = 1_000_000_000
BEIJING = dt.timezone(dt.timedelta(hours=8))
DUPLICATE_CODES = frozenset({20017, 20019})
TEXT_TOO_LONG = 20012
EXPIRED_TOKEN = 21327
#: Codes no retry can fix, only the account owner or the app's settings (docs/platforms.md, Weibo's error tables):
#: invalid token 21332, OAuth1-era token expired/revoked/rejected 21315-21317 and 21319, OAuth2 invalid_client,
#: invalid_grant, unauthorized_client and access_denied (21324-21326, 21330), app without the permission (10014).
REVOKED_CODES = frozenset({21332, 21315, 21316, 21317, 21319, 21324, 21325, 21326, 21330, 10014})
#: The calling server's IP is not on the app's IP allow-list: a setting of the app, like a credential.
IP_REFUSED = 10004
#: Weibo's own failures (system error, service unavailable, remote service error) and OAuth2
#: temporarily_unavailable: worth another try.
SERVER_CODES = frozenset({10001, 10002, 10003, 21331})
#: "Update success, server slow, wait 1-2 minutes": the status is posted, its id not known yet.
POSTED_SLOWLY = 20032


class WeiboOptions(AdapterOptions):
    """``[channels.NAME]`` keys of a Weibo channel."""

    #: Weibo's API root (https://api.weibo.com; the sandbox root in tests and the demo).
    api_base: HttpUrl = HttpUrl(WEIBO_API_BASE)
    #: The OAuth2 access token of the account that posts; usually "${ENV_VAR}".
    access_token: str = Field(min_length=1)
    #: The app's safe domain (我的应用 > 应用信息 > 安全域名): every story URL must be on it or a subdomain.
    safe_domain: str = Field(min_length=1)
    #: The public IP address of the server that posts, as Weibo sees it: statuses/share requires it (``rip``, "the
    #: real IP of the operating user"), and Weibo refuses a share without it (10016).
    rip: IPvAnyAddress
    #: How long a rate limit pauses the channel, in seconds, when account/rate_limit_status cannot say when the
    #: window ends (the call failed), and after 20016 (posting too fast).
    rate_limit_pause: float = Field(default=3600.0, gt=0)

    @field_validator("safe_domain")
    @classmethod
    def _bare_host(cls, value: str) -> str:
        host = value.strip().lower().rstrip(".")
        if not host or "/" in host or ":" in host or " " in host:
            raise ValueError(f"{value!r} must be a bare host name such as news.example.cn (no scheme or path)")
        return host


def on_safe_domain(url: str, safe_domain: str) -> bool:
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    return host == safe_domain or host.endswith("." + safe_domain)


class WeiboPayload(PayloadModel):
    """What ``statuses/share`` gets: the fitted status text and the cover's URL (fetched at send time)."""

    #: The status text, fitted to Weibo's 140 (link included).
    status: str
    #: The cover image's URL, sent as ``pic``; None for a plain text share.
    pic: str | None
    #: The story's URL (on the safe domain), kept for the operator's view.
    story_url: str


class WeiboAdapter(HttpAdapter[WeiboOptions, WeiboPayload]):
    kind: ClassVar[str] = "weibo"
    options_model = WeiboOptions
    payload_model = WeiboPayload
    idempotent: ClassVar[bool] = False
    actions = frozenset({Action.PUBLISH})
    supports_lookup = True
    supports_reach = True
    options: WeiboOptions

    def __init__(self, name: str, options: WeiboOptions, **deps: Unpack[AdapterDeps]) -> None:
        super().__init__(name, options, **deps)
        api = str(options.api_base).rstrip("/")
        self._share_url = f"{api}{SHARE_PATH}"
        self._timeline_url = f"{api}{TIMELINE_PATH}"
        self._rate_status_url = f"{api}{RATE_STATUS_PATH}"
        self._count_url = f"{api}{COUNT_PATH}"

    def unsupported_reason(self, action: Action) -> str:
        return (
            f"Weibo's statuses/share API offers no way to {'edit' if action is Action.UPDATE else 'delete'} a "
            "shared status: change or remove it in the Weibo account itself"
        )

    # ---- rendering

    def format(self, story: ChannelStory, action: Action) -> Payload[WeiboPayload]:
        if not story.url:
            raise RenderError(
                f"url: Weibo's statuses/share needs the story's link on the safe domain {self.options.safe_domain}"
            )
        if not on_safe_domain(story.url, self.options.safe_domain):
            raise RenderError(
                f"url: {story.url} is not on the channel's safe domain {self.options.safe_domain}; Weibo refuses a "
                "shared status without a link on it (set safe_domain to the app's 安全域名, or publish the story "
                "under that domain)"
            )
        try:
            post = fit_story(WEIBO_COUNTER, story)
        except FitError as exc:
            raise RenderError(f"headline: {exc}") from exc
        cover = story.cover
        return Payload(
            data=WeiboPayload(status=post.text, pic=cover.href if cover else None, story_url=story.url),
            text_length=post.length,
            warnings=post.warnings,
        )

    # ---- publishing

    async def publish(self, payload: Payload[WeiboPayload], ctx: DeliveryContext) -> Receipt:
        status = payload.data.status
        form: aiohttp.FormData | dict[str, str]
        if payload.data.pic:
            blob = await self._fetch_pic(payload.data.pic)
            form = aiohttp.FormData()
            form.add_field("access_token", self.options.access_token)
            form.add_field("status", status)
            form.add_field("rip", str(self.options.rip))
            form.add_field("pic", blob.data, filename=blob.filename, content_type=blob.content_type)
        else:
            form = {"access_token": self.options.access_token, "status": status, "rip": str(self.options.rip)}
        # A lost answer may mean a posted status: OutcomeUnknown, and the account's timeline tells (lookup).
        answer = await self.request("POST", self._share_url, doing="Weibo share", may_land=True, data=form)
        found = answer.json()
        if answer.ok and found.get("idstr"):
            return _receipt(found)
        error = await self._refusal(answer, doing="share", may_land=True)
        if error.platform_code in {str(code) for code in DUPLICATE_CODES} and ctx.attempt > 1:
            # "Repeated content" after an earlier attempt of ours: most likely that attempt's status, which landed.
            landed = await self.lookup(payload, ctx)
            if landed is not None:
                return landed
        raise error

    async def _fetch_pic(self, url: str) -> MediaBlob:
        return await self.fetch_image(
            url,
            max_bytes=PIC_MAX_BYTES,
            allowed_types=PIC_TYPES,
            what="cover image",
            requirement="one JPEG, GIF or PNG under 5 MB; change the story's cover (images[].role = cover)",
        )

    async def lookup(self, payload: Payload[WeiboPayload], ctx: DeliveryContext) -> Receipt | None:
        """Did the status land? Page back through the account's timeline to the time the delivery was queued (no
        status of it is older), matching the text."""
        sent = payload.data.status
        for page in range(1, LOOKUP_PAGES + 1):
            params = {"access_token": self.options.access_token, "count": str(LOOKUP_COUNT), "page": str(page)}
            answer = await self.request(
                "GET", self._timeline_url, doing="Weibo timeline lookup", may_land=False, params=params
            )
            if not answer.ok:
                raise await self._refusal(answer, doing="timeline lookup")
            found = answer.json().get("statuses")
            if not isinstance(found, list):
                raise Retryable(f"the Weibo timeline answer has no statuses: {answer.body[:200]!r}")
            for status in found:
                if isinstance(status, dict) and same_post_text(
                    sent, str(status.get("text", "")), WEIBO_COUNTER.url_spans
                ):
                    return _receipt(status)
            if len(found) < LOOKUP_COUNT:
                return None  # the whole timeline is read
            oldest = _created_at(found[-1])
            if ctx.queued_at is not None and oldest is not None and oldest < ctx.queued_at - CLOCK_SKEW:
                return None  # read back past the moment the delivery was queued
        raise OutcomeUnknown(
            f"the status is not among the account's {LOOKUP_COUNT * LOOKUP_PAGES} newest; check the Weibo account "
            "before resending"
        )

    async def read_reach(self, ctx: DeliveryContext) -> ReachReading:
        status_id = ctx.receipt.remote_id if ctx.receipt is not None else None
        if not status_id:
            raise Permanent(f"no Weibo status id in the live receipt of story {ctx.story_id!r}: no counts to read")
        params = {"access_token": self.options.access_token, "ids": status_id}
        answer = await self.request("GET", self._count_url, doing="Weibo statuses/count", may_land=False, params=params)
        if not answer.ok:
            raise await self._refusal(answer, doing="statuses/count")
        found = answer.json()
        if "error_code" in found:  # Weibo's refusals come with a 4xx, but a 200 carrying one is no reading either
            raise self._error(answer, doing="statuses/count")
        return counts_of(status_id, found.get("value"))

    async def refresh_auth(self, ctx: DeliveryContext) -> None:
        raise AuthRevoked(
            f"the Weibo access token of channel {self.name!r} expired (21327): the account owner must authorise "
            "the app again; put the new token in access_token, then `syndicate resume`",
            platform_code=EXPIRED_TOKEN,
        )

    async def check(self, keys: SharedKeys | None = None) -> str:
        """Read one status of the account's timeline: proves the token without posting."""
        params = {"access_token": self.options.access_token, "count": "1"}
        answer = await self.request("GET", self._timeline_url, doing="Weibo check", may_land=False, params=params)
        if not answer.ok:
            raise await self._refusal(answer, doing="check")
        return f"Weibo at {self.options.api_base} accepted the access token (timeline read; nothing posted)"

    async def _refusal(self, response: HttpAnswer, *, doing: str, may_land: bool = False) -> DeliveryError:
        """``_error``, with a window rate limit's pause read from ``account/rate_limit_status``."""
        error = self._error(response, doing=doing, may_land=may_land)
        if isinstance(error, RateLimited) and error.platform_code in {str(code) for code in WINDOW_CODES}:
            return await self._until_window_resets(error)
        return error

    async def _until_window_resets(self, error: RateLimited) -> RateLimited:
        """The rate limit ``error`` with its pause ending when Weibo's window resets. The call is not counted
        against the limits ("Count Limitation: false"); when it fails, ``error`` keeps its ``rate_limit_pause``."""
        params = {"access_token": self.options.access_token}
        try:
            answer = await self.request(
                "GET", self._rate_status_url, doing="Weibo rate_limit_status", may_land=False, params=params
            )
        except DeliveryError:
            return error
        status = RateLimitStatus.read(answer)
        if status is None:
            return error
        now = self.clock()
        if error.platform_code == str(USER_OUT_OF_LIMIT) and status.remaining_user_hits > 0:
            # The user's hourly budget is not spent: the daily total is (接口访问频次权限: 每天累计), and it is
            # not in rate_limit_status; Weibo's day is taken to be Beijing's calendar day.
            wait = _next_beijing_midnight(now) - now
            why = "the account's daily call budget is spent until Beijing midnight"
        else:
            wait = status.seconds_to_reset(now)
            why = f"Weibo's rate_limit_status: the window resets in {wait:.0f} s"
        wait = min(max(wait, MIN_WINDOW_PAUSE), MAX_WINDOW_PAUSE)
        until = dt.datetime.fromtimestamp(now + wait, dt.UTC)
        return RateLimited(f"{error.reason} ({why})", until=until, platform_code=error.platform_code)

    def _error(self, response: HttpAnswer, *, doing: str, may_land: bool = False) -> DeliveryError:
        """Weibo's answer mapped onto the taxonomy: by ``error_code`` first, HTTP status second. A 5xx to a call
        that may have landed (``may_land``) is an uncertain outcome: a gateway's error says nothing about whether
        the status was posted, so the engine looks it up before it posts again."""
        status, headers, raw, answer = response.status, response.headers, response.body, response.json()
        code = answer.get("error_code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        message = str(answer.get("error") or raw[:200].decode("utf-8", "replace")).strip()
        detail = f"Weibo {code}: {message}" if code is not None else f"HTTP {status}: {message}"
        platform_code = code if code is not None else status
        now = self.clock()
        if code in RATE_LIMIT_CODES or status == 429:
            wait = retry_after_seconds(headers.get("Retry-After"), now=now) if status == 429 else None
            until = dt.datetime.fromtimestamp(now + (self.options.rate_limit_pause if wait is None else wait), dt.UTC)
            return RateLimited(f"{detail} on {doing}", until=until, platform_code=platform_code)
        if code == EXPIRED_TOKEN:
            return AuthExpired(f"{detail}: the access token expired", platform_code=code)
        if code == IP_REFUSED:
            return AuthRevoked(
                f"{detail}: Weibo refuses calls from this server's IP for channel {self.name!r} (add it to the app's "
                "IP allow-list in the Weibo open platform, or post from an allowed address)",
                platform_code=code,
            )
        if code == POSTED_SLOWLY:  # look it up in a minute or two rather than post it again
            return OutcomeUnknown(f"{detail} on {doing}: Weibo posted it but is slow", platform_code=code)
        if code in REVOKED_CODES or (status in (401, 403) and code is None):
            return AuthRevoked(
                f"{detail}: Weibo rejected the access token of channel {self.name!r} (check access_token and the "
                "app's permissions)",
                platform_code=platform_code,
            )
        if code in DUPLICATE_CODES:
            return Permanent(f"{detail}: Weibo refuses repeated or similar content", platform_code=code)
        if code == TEXT_TOO_LONG:
            return Permanent(f"{detail}: the status is over Weibo's 140", platform_code=code)
        if status >= 500 or status in (408, 425) or code in SERVER_CODES:
            if may_land:
                return OutcomeUnknown(f"{detail} on {doing}; it may have been posted", platform_code=platform_code)
            return Retryable(f"{detail} on {doing}", platform_code=platform_code)
        if 300 <= status < 400:
            return Permanent(f"HTTP {status}: Weibo redirects; set the channel's api_base to the final address")
        return Permanent(f"{detail}: Weibo refused the {doing}", platform_code=platform_code)


@dataclass(frozen=True)
class RateLimitStatus:
    """What ``account/rate_limit_status.json`` reports (open.weibo.com/wiki/2/account/rate_limit_status/en)."""

    remaining_user_hits: int
    remaining_ip_hits: int
    #: Seconds until the window resets (v2); a value above UNIX_TIME_FLOOR is read as a unix time (v1).
    reset_time_in_seconds: float

    @classmethod
    def read(cls, answer: HttpAnswer) -> RateLimitStatus | None:
        """The status in a 2xx answer; None when the answer is not one (an error, a missing or odd field)."""
        if not answer.ok:
            return None
        found = answer.json()
        values: list[float] = []
        for key in ("remaining_user_hits", "remaining_ip_hits", "reset_time_in_seconds"):
            value = found.get(key)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                return None
            values.append(float(value))
        user_hits, ip_hits, reset = values
        return cls(remaining_user_hits=int(user_hits), remaining_ip_hits=int(ip_hits), reset_time_in_seconds=reset)

    def seconds_to_reset(self, now: float) -> float:
        reset = self.reset_time_in_seconds
        return reset - now if reset > UNIX_TIME_FLOOR else reset


def _next_beijing_midnight(now: float) -> float:
    today = dt.datetime.fromtimestamp(now, BEIJING).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + dt.timedelta(days=1)).timestamp()


def _created_at(status: Any) -> float | None:
    """A status's ``created_at`` ("Tue May 31 17:46:55 +0800 2011") as a timestamp; None when absent or unreadable."""
    try:
        return dt.datetime.strptime(str(status["created_at"]), "%a %b %d %H:%M:%S %z %Y").timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def counts_of(status_id: str, counts: Any) -> ReachReading:
    """The reading for ``status_id`` in a ``statuses/count`` answer (a JSON list): its figures mapped onto the common
    metrics, a figure Weibo did not send left out. Not in the list: Weibo omits unknown and deleted statuses, so the
    status is gone (Permanent). Not a list: Retryable."""
    if not isinstance(counts, list):
        raise Retryable(f"Weibo's statuses/count answer is not a list: {str(counts)[:200]}")
    for entry in counts:
        if isinstance(entry, dict) and str(entry.get("idstr") or entry.get("id")) == status_id:
            # Every figure Weibo sent, under its own name (the id is no figure).
            raw = {name: value for name, value in entry.items() if name not in ("id", "idstr") and _count(value)}
            metrics = {COUNTS_AS_REACH[name]: int(value) for name, value in raw.items() if name in COUNTS_AS_REACH}
            return ReachReading(metrics=metrics, raw=raw)
    raise Permanent(f"Weibo reports no counts for status {status_id}: it was deleted (Weibo omits deleted statuses)")


def _count(value: Any) -> bool:
    """A count as Weibo sends it: a non-negative integer (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _receipt(status: dict[str, Any]) -> Receipt:
    status_id = str(status.get("idstr") or status.get("id"))
    user = raw_user if isinstance(raw_user := status.get("user"), dict) else {}
    uid = user.get("idstr") or user.get("id")
    url = f"https://weibo.com/{uid}/{status_id}" if uid else None
    keep = ("id", "idstr", "mid", "created_at", "text", "original_pic")
    return Receipt(remote_id=status_id, url=url, raw={k: status[k] for k in keep if k in status})
