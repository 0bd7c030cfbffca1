"""The app channel: the newsroom's own app reads stories from ``syndicate serve``, and JPush announces them.

Two halves share one delivery per story version:

* **Content.** ``render`` builds the structured document the app shows (headline, byline, cover and images with
  renditions, the body as sanitised blocks, share URL). A delivered delivery *is* the published content: the
  content API (``web_routes``) serves the newest delivered payload per story, and a delivered retraction makes the
  story answer 410 Gone. Nothing is sent anywhere for the content itself.
* **Push.** A first publish sends a notification through JPush REST API v3 (``POST /v3/push``, HTTP Basic
  ``app_key:master_secret``, extras carrying the story id); an update pushes only when the story is urgent
  (ninjs urgency 1 or 2); a retraction never pushes.

Quiet hours defer the push, not the story: inside them the attempt records that the content is live (the content
API shows it at once), sends nothing and raises ``Retryable`` with ``retry_after`` = the time left until the quiet
hours end, so the engine pushes then and the status shows ``retry_wait`` with the reason.

Why the channel is idempotent: every push carries a JPush ``cid`` (from ``GET /v3/push/cid``) that is checkpointed
before the request. JPush answers a repeated cid with the first push's result and pushes nothing, so a retry after
a timeout, or after a worker died mid-request, re-sends safely. JPush keeps a cid for one day; an attempt whose cid
is older than ``CID_REUSE_SECONDS`` and may have landed is not re-sent (the push is reported as not resent rather
than risk a duplicate notification on every phone). ``options.sendno`` is derived from the idempotency key, so an
operator can match a push in the JPush console to the delivery.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
import time
import zoneinfo
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Unpack
from urllib.parse import quote

from aiohttp import web
from pydantic import (
    BeforeValidator,
    Field,
    HttpUrl,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from syndicate.channel import AdapterDeps, AdapterOptions, DeliveryContext, HttpAdapter
from syndicate.delivery import (
    Action,
    AuthRevoked,
    DeliveryError,
    OutcomeUnknown,
    Payload,
    PayloadModel,
    Permanent,
    RateLimited,
    ReachMetric,
    Receipt,
    RenderError,
    Retryable,
    idempotency_key,
)
from syndicate.httputil import HttpAnswer, retry_after_seconds
from syndicate.sanitize import Block, html_blocks, plain_text
from syndicate.store.base import DeliveryFilter, DeliveryRecord, State, StoreError
from syndicate.story import ChannelStory, Image, Story

if TYPE_CHECKING:
    from syndicate.store.base import ChannelAccess, ChannelDeliveries, ReachCounter, SharedKeys

log = logging.getLogger("syndicate.adapters.app.adapter")

JPUSH_API_BASE = "https://api.jpush.cn"
#: ninjs urgency runs from 1 (most urgent) to 9; an update pushes again only at 1 or 2.
URGENT_AT_MOST = 2
#: Longest notification title / text (characters); longer ones are cut with an ellipsis and a warning.
ALERT_MAX_CHARS = 120
#: JPush refuses an iOS notification object (extras included) over this many bytes (error 1005).
IOS_NOTIFICATION_MAX_BYTES = 2000
#: How long JPush keeps a push for offline devices (its own default: one day).
PUSH_TIME_TO_LIVE = 86400
#: JPush deduplicates a cid for one day; reuse one only well inside that.
CID_REUSE_SECONDS = 20 * 3600
#: Pause when a 429 names no reset time.
DEFAULT_RATE_LIMIT_PAUSE = 60.0
#: JPush 2005 ("sending volume beyond a reasonable range") gets a longer pause than a per-minute limit.
VOLUME_LIMIT_PAUSE = 3600.0
#: X-Rate-Limit-Reset values above this are unix times rather than seconds to wait.
_EPOCH_THRESHOLD = 1_000_000_000

# JPush's own error codes (Push API v3, "调用返回").
JPUSH_AUTH_FAILED = 1004
JPUSH_APP_KEY_INVALID = 1008
JPUSH_NO_TARGET = 1011
JPUSH_RATE_LIMITED = 2002
JPUSH_VOLUME_LIMITED = 2005
#: 1000 internal error, 1030 internal timeout: JPush did not push.
JPUSH_RETRYABLE = frozenset({1000, 1030})
#: 2003 app key barred from the API, 2004 caller IP not whitelisted, 2006/2007 no permission: every push would fail
#: the same way until someone fixes the account, so the channel pauses.
JPUSH_ACCOUNT_BLOCKED = frozenset({2003, 2004, 2006, 2007})

# The content API.
API_PREFIX = "/app/v1"
LIST_MAX_AGE = 60
ITEM_MAX_AGE = 300
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_PAGE = 100
#: States in which a delivery whose push waits for the end of quiet hours still shows its content.
_DEFERRED_STATES = (State.RETRY_WAIT, State.IN_FLIGHT, State.UNKNOWN)


# --- configuration ---------------------------------------------------------------------------------------------

_QUIET_HOURS = re.compile(r"\s*([01]\d|2[0-3]):([0-5]\d)\s*-\s*([01]\d|2[0-3]):([0-5]\d)\s*")


@dataclasses.dataclass(frozen=True)
class QuietHours:
    """A daily window (local wall-clock time, may run past midnight) in which pushes wait."""

    start: dt.time
    end: dt.time

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        match = _QUIET_HOURS.fullmatch(text)
        if match is None:
            raise ValueError(f'{text!r} is not a window like "22:00-07:00" (24-hour HH:MM-HH:MM)')
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        window = cls(dt.time(h1, m1), dt.time(h2, m2))
        if window.start == window.end:
            raise ValueError(f"{text!r} starts and ends at the same minute; leave quiet_hours out for no quiet hours")
        return window

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def contains(self, moment: dt.time) -> bool:
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def seconds_left(self, now: dt.datetime) -> float | None:
        """Seconds from ``now`` (aware, in the newsroom's zone) to the end of the window, None if outside it."""
        if not self.contains(now.time()):
            return None
        end = dt.datetime.combine(now.date(), self.end, tzinfo=now.tzinfo)
        if end <= now:
            end += dt.timedelta(days=1)
        # Subtract in UTC: aware datetimes sharing a tzinfo subtract as wall-clock times, wrong across DST changes.
        return max((end.astimezone(dt.UTC) - now.astimezone(dt.UTC)).total_seconds(), 0.0)


def _quiet_hours(value: Any) -> Any:
    if isinstance(value, str):
        return QuietHours.parse(value)
    if value is None or isinstance(value, QuietHours):
        return value
    raise ValueError('must be a string like "22:00-07:00"')


class AppOptions(AdapterOptions):
    #: JPush's base URL (https://api.jpush.cn; the sandbox root in tests and the demo).
    api_base: HttpUrl = HttpUrl(JPUSH_API_BASE)
    app_key: str = Field(min_length=1)
    #: Usually "${ENV_VAR}".
    master_secret: str = Field(min_length=1)
    #: "22:00-07:00": pushes that fall in this window wait for its end (in ``timezone``).
    quiet_hours: Annotated[QuietHours | None, BeforeValidator(_quiet_hours)] = None
    #: IANA zone the quiet hours are read in.
    timezone: str = "Asia/Shanghai"
    #: Share links for stories without a url: <share_base_url>/<story id>.
    share_base_url: HttpUrl | None = None
    #: JPush "platform": "all" or a list of "android" / "ios".
    platform: Literal["all"] | list[Literal["android", "ios"]] = "all"
    #: JPush options.apns_production: true pushes through APNs production (App Store and TestFlight builds), false
    #: through the development environment (builds signed with a development certificate get only those).
    apns_production: bool = True
    #: Where `syndicate serve` mounts this channel's content API; a second app channel needs its own.
    api_prefix: str = Field(default=API_PREFIX, pattern=r"^(/[A-Za-z0-9._~-]+)+$")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Asia/Shanghai") from None
        return value

    @field_validator("platform")
    @classmethod
    def _platforms(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError('list at least one of "android", "ios" (or use "all")')
            if len(set(value)) != len(value):
                raise ValueError("names a platform twice")
        return value

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def platforms(self) -> tuple[str, ...]:
        return ("android", "ios") if self.platform == "all" else tuple(self.platform)


# --- rendering -------------------------------------------------------------------------------------------------


def is_urgent(story: Story) -> bool:
    """Urgent enough for an update to push again: ninjs urgency 1 or 2 (1 is most urgent, 9 least)."""
    return story.urgency is not None and story.urgency <= URGENT_AT_MOST


def _trim(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# --- the payload: what a delivery stores (its JSON form is the shape deliveries have always stored) ---------------

Platform = Literal["android", "ios"]


class _OmitAbsent(PayloadModel):
    """A JPush object whose optional keys are left out rather than sent as null (JPush's own shape)."""

    @model_serializer(mode="wrap")
    def _without_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value is not None}


class Rendition(PayloadModel):
    name: str
    href: str
    width: int | None
    height: int | None


class AppImage(PayloadModel):
    """A story image with its renditions (only the original exists: syndicate does not resize)."""

    href: str
    width: int | None
    height: int | None
    alt: str | None
    caption: str | None
    role: Literal["cover", "inline"]
    renditions: list[Rendition]

    @classmethod
    def of(cls, image: Image) -> AppImage:
        original = Rendition(name="original", href=image.href, width=image.width, height=image.height)
        return cls(
            href=image.href,
            width=image.width,
            height=image.height,
            alt=image.alt,
            caption=image.caption,
            role=image.role,
            renditions=[original],
        )


class TextBlock(PayloadModel):
    type: Literal["paragraph", "heading"]
    text: str


class ImageBlock(PayloadModel):
    type: Literal["image"]
    src: str | None
    alt: str | None
    caption: str | None
    #: From the story's image of the same src, when it lists one.
    width: int | None
    height: int | None


BodyBlock = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class AppDocument(PayloadModel):
    """The structured story the content API serves; plain text everywhere, body as sanitised blocks."""

    id: str
    version: int
    headline: str
    subheadline: str | None
    summary: str | None
    byline: str | None
    section: str | None
    tags: list[str]
    language: str
    urgency: int | None
    #: RFC 3339 as the story gave them (Story.to_dict).
    published_at: str | None
    updated_at: str | None
    share_url: str | None
    cover: AppImage | None
    images: list[AppImage]
    blocks: list[BodyBlock]

    def teaser(self) -> dict[str, Any]:
        """The list form of the story: everything but the body and the image list."""
        return self.model_dump(mode="json", exclude={"images", "blocks"})


class RetractedStory(PayloadModel):
    """A retraction names the story and its version; the content API answers 410 Gone for it."""

    id: str
    version: int


class PushExtras(_OmitAbsent):
    story_id: str
    #: Left out when the story has no share URL, or when it would make the iOS notification too large.
    url: str | None = None


class AndroidNotification(PayloadModel):
    alert: str
    title: str
    extras: PushExtras


class IosAlert(PayloadModel):
    title: str
    body: str


class IosNotification(PayloadModel):
    #: Only the text when title and text are the same.
    alert: str | IosAlert
    sound: str
    extras: PushExtras


class Notification(_OmitAbsent):
    alert: str
    android: AndroidNotification | None = None
    ios: IosNotification | None = None


class PushOptions(PayloadModel):
    sendno: int
    time_to_live: int
    apns_production: bool
    apns_collapse_id: str


class JPushPush(PayloadModel):
    """The JPush REST API v3 push object, as sent (the attempt adds its ``cid``)."""

    platform: Literal["all"] | list[Platform]
    audience: Literal["all"]
    notification: Notification
    options: PushOptions


class AppPayload(PayloadModel):
    """One delivery of the app channel: the story as the app shows it and the push announcing it (None when
    nothing is pushed: a retraction, an update without urgency), with why it pushes or not."""

    action: Action
    story: AppDocument | RetractedStory
    push: JPushPush | None
    push_note: str

    @model_validator(mode="after")
    def _retraction_names_only_the_story(self) -> AppPayload:
        if (self.action is Action.RETRACT) != isinstance(self.story, RetractedStory):
            raise ValueError("a retraction names only the story's id and version, a publish or update the document")
        if self.action is Action.RETRACT and self.push is not None:
            raise ValueError("a retraction never pushes")
        return self

    @property
    def share_url(self) -> str | None:
        return self.story.share_url if isinstance(self.story, AppDocument) else None


def _block(block: Block, images: dict[str, Image]) -> TextBlock | ImageBlock:
    if block.kind != "image":
        return TextBlock(type="heading" if block.kind == "heading" else "paragraph", text=block.text)
    known = images.get(block.src or "")
    return ImageBlock(
        type="image",
        src=block.src,
        alt=block.alt,
        caption=block.caption,
        width=known.width if known else None,
        height=known.height if known else None,
    )


def _sendno(key: str) -> int:
    """A stable JPush sendno (1..2^31-1) for an idempotency key, so the console's push matches a delivery. Never 0:
    JPush reads 0 as "this push has no sendno" and documents the field's range as a non-zero int (docs.jiguang.cn
    push API v3, options.sendno)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF or 1


def _collapse_id(story_id: str) -> str:
    """apns_collapse_id (at most 64 bytes): an urgent update replaces the story's earlier notification on iOS."""
    return story_id if len(story_id.encode()) <= 64 else hashlib.sha256(story_id.encode()).hexdigest()[:32]


# --- the adapter -----------------------------------------------------------------------------------------------


class AppAdapter(HttpAdapter[AppOptions, AppPayload]):
    kind: ClassVar[str] = "app"
    options_model = AppOptions
    payload_model = AppPayload
    #: JPush's cid makes a re-sent push a no-op (see the module docstring).
    idempotent: ClassVar[bool] = True
    actions = frozenset(Action)
    options: AppOptions

    def __init__(self, name: str, options: AppOptions, **deps: Unpack[AdapterDeps]) -> None:
        super().__init__(name, options, **deps)
        api = str(options.api_base).rstrip("/")
        self._push_url = f"{api}/v3/push"
        self._cid_url = f"{api}/v3/push/cid"
        token = base64.b64encode(f"{options.app_key}:{options.master_secret}".encode()).decode("ascii")
        self._auth = f"Basic {token}"

    # ---- rendering

    def share_url(self, story: Story) -> str | None:
        if story.url:
            return story.url
        if self.options.share_base_url is not None:
            return f"{str(self.options.share_base_url).rstrip('/')}/{quote(story.id, safe='')}"
        return None

    def format(self, story: ChannelStory, action: Action) -> Payload[AppPayload]:
        if action is Action.RETRACT:
            return Payload(
                data=AppPayload(
                    action=action,
                    story=RetractedStory(id=story.id, version=story.version),
                    push=None,
                    push_note="a retraction never pushes",
                )
            )
        headline = plain_text(story.headline)
        if not headline:
            raise RenderError("headline: empty once markup is removed; the app needs a headline")
        summary = plain_text(story.summary or "")
        document = self._document(story, headline, summary or None)
        if action is Action.PUBLISH:
            note = "first publish: push"
        elif is_urgent(story):
            note = f"urgent update (urgency {story.urgency}): push"
        else:
            shown = "none" if story.urgency is None else story.urgency
            return Payload(
                data=AppPayload(
                    action=action,
                    story=document,
                    push=None,
                    push_note=f"update without urgency (urgency {shown}; only 1-{URGENT_AT_MOST} push again)",
                )
            )
        push_text = plain_text(story.text) if story.text else summary
        push, text_length, warnings = self._push(story, action, headline, push_text or headline, document)
        return Payload(
            data=AppPayload(action=action, story=document, push=push, push_note=note),
            text_length=text_length,
            warnings=tuple(warnings),
        )

    def _document(self, story: Story, headline: str, summary: str | None) -> AppDocument:
        """The structured story the content API serves; plain text everywhere, body as sanitised blocks."""
        times = story.to_dict()
        images = {image.href: image for image in story.images}
        cover = story.cover
        return AppDocument(
            id=story.id,
            version=story.version,
            headline=headline,
            subheadline=plain_text(story.subheadline or "") or None,
            summary=summary,
            byline=story.by,
            section=story.section,
            tags=list(story.tags),
            language=story.language,
            urgency=story.urgency,
            published_at=times["published_at"],
            updated_at=times["updated_at"],
            share_url=self.share_url(story),
            cover=AppImage.of(cover) if cover else None,
            images=[AppImage.of(image) for image in story.images],
            blocks=[_block(block, images) for block in html_blocks(story.body_html)],
        )

    def _push(
        self, story: Story, action: Action, headline: str, text: str, document: AppDocument
    ) -> tuple[JPushPush, int, list[str]]:
        """The JPush push object for this story, its text length and what was trimmed."""
        warnings: list[str] = []
        title, body = _trim(headline, ALERT_MAX_CHARS), _trim(text, ALERT_MAX_CHARS)
        if title != headline:
            warnings.append(f"push title cut to {ALERT_MAX_CHARS} characters")
        if body != text:
            warnings.append(f"push text cut to {ALERT_MAX_CHARS} characters")

        def notification(extras: PushExtras) -> Notification:
            platforms = self.options.platforms
            return Notification(
                alert=title,
                android=AndroidNotification(alert=body, title=title, extras=extras) if "android" in platforms else None,
                ios=(
                    IosNotification(
                        alert=title if body == title else IosAlert(title=title, body=body),
                        sound="default",
                        extras=extras,
                    )
                    if "ios" in platforms
                    else None
                ),
            )

        def too_large(built: Notification) -> bool:
            return built.ios is not None and _json_size(built.ios.model_dump(mode="json")) > IOS_NOTIFICATION_MAX_BYTES

        built = notification(PushExtras(story_id=story.id, url=document.share_url))
        if too_large(built):
            warnings.append("share url left out of the push extras: the iOS notification would be too large")
            built = notification(PushExtras(story_id=story.id))
            if too_large(built):
                raise RenderError(
                    f"id: the story id makes the iOS notification larger than {IOS_NOTIFICATION_MAX_BYTES} bytes"
                )
        key = idempotency_key(story.id, story.version, self.name, action)
        push = JPushPush(
            platform=self.options.platform,
            audience="all",
            notification=built,
            options=PushOptions(
                sendno=_sendno(key),
                time_to_live=PUSH_TIME_TO_LIVE,
                apns_production=self.options.apns_production,
                apns_collapse_id=_collapse_id(story.id),
            ),
        )
        return push, len(body), warnings

    # ---- delivering

    def session_options(self) -> dict[str, Any]:
        return {**super().session_options(), "headers": {"Authorization": self._auth}}

    async def publish(self, payload: Payload[AppPayload], ctx: DeliveryContext) -> Receipt:
        return await self._deliver(payload.data, ctx)

    async def update(self, payload: Payload[AppPayload], ctx: DeliveryContext) -> Receipt:
        return await self._deliver(payload.data, ctx)

    async def retract(self, payload: Payload[AppPayload], ctx: DeliveryContext) -> Receipt:
        # Delivered is all it takes: the content API answers 410 Gone for the story from now on.
        return Receipt(remote_id=None, url=None, raw={"retracted": ctx.story_id, "push": None})

    def quiet_seconds_left(self) -> float | None:
        """Seconds until the quiet hours end, or None when a push may go out now."""
        window = self.options.quiet_hours
        if window is None:
            return None
        now = dt.datetime.fromtimestamp(self.clock(), tz=self.options.zone)
        return window.seconds_left(now)

    async def _deliver(self, payload: AppPayload, ctx: DeliveryContext) -> Receipt:
        push, url = payload.push, payload.share_url
        if push is None:
            return Receipt(remote_id=None, url=url, raw={"push": None, "note": payload.push_note})
        state = ctx.state
        if state.get("msg_id"):  # an earlier attempt pushed and checkpointed it: never push twice
            return _push_receipt(state, url)
        wait = self.quiet_seconds_left()
        if wait is not None:
            if not state.get("content_live"):
                await ctx.checkpoint({"content_live": True})
            window = self.options.quiet_hours
            assert window is not None
            raise Retryable(
                f"quiet hours {window} ({self.options.timezone}): the story is live in the app, "
                f"its push waits until {window.end:%H:%M}",
                retry_after=wait,
                pending=True,  # waiting out a window is not a failure: no retry budget spent
            )
        cid = await self._cid(ctx)
        if cid is None:
            reason = (
                f"push not resent: an attempt at {_utc(state.get('cid_at'))} (cid {state.get('cid')}) got no answer"
                " and JPush only recognises a repeated cid for one day; check the JPush console for sendno "
                f"{push.options.sendno}"
            )
            log.warning(reason, extra={"story_id": ctx.story_id, "channel": ctx.channel})
            return Receipt(remote_id=None, url=url, raw={"push": "not_resent", "note": reason})
        if not state.get("cid_unanswered"):
            await ctx.checkpoint({"cid_unanswered": True})
        return await self._send_push({**push.model_dump(mode="json"), "cid": cid}, ctx, url)

    async def _cid(self, ctx: DeliveryContext) -> str | None:
        """The cid for this delivery's push: the checkpointed one while JPush still recognises it, else a new one
        (None when the old one may have landed and can no longer protect a resend)."""
        state, now = ctx.state, self.clock()
        cid = state.get("cid")
        if cid and now - float(state.get("cid_at") or 0) < CID_REUSE_SECONDS:
            return str(cid)
        if cid and state.get("cid_unanswered"):
            return None
        new = await self._new_cid()
        await ctx.checkpoint({"cid": new, "cid_at": now, "cid_unanswered": True})
        return new

    async def _new_cid(self) -> str:
        """One cid from ``GET /v3/push/cid``. Pushes nothing, so every failure here is at most Retryable."""
        answer = await self.request(
            # One cid per attempt: within the count JPush allows every app (1 to 10 without VIP, 1 to 1000 with).
            "GET",
            self._cid_url,
            doing="JPush cid request",
            may_land=False,
            params={"count": "1", "type": "push"},
        )
        found = answer.json()
        if answer.ok:
            cids = found.get("cidlist")
            if isinstance(cids, list) and cids and isinstance(cids[0], str):
                return cids[0]
            raise Retryable(f"JPush answered the cid request without a cidlist: {answer.body[:200]!r}")
        raise self._error(answer, what="the cid request")

    async def _send_push(self, body: dict[str, Any], ctx: DeliveryContext, url: str | None) -> Receipt:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json; charset=utf-8"}
        try:
            answer = await self.request("POST", self._push_url, doing="push", may_land=True, data=data, headers=headers)
        except Retryable:
            await ctx.checkpoint({"cid_unanswered": False})  # no connection: nothing went out with this cid
            raise
        except OutcomeUnknown as exc:
            raise OutcomeUnknown(
                f"{exc.reason}; the retry re-sends the same cid, which JPush does not push twice"
            ) from exc.__cause__
        found = answer.json()
        if answer.ok:
            msg_id = found.get("msg_id")
            if msg_id in (None, ""):
                raise OutcomeUnknown(f"JPush answered HTTP {answer.status} without a msg_id: {answer.body[:200]!r}")
            progress = {"msg_id": str(msg_id), "sendno": str(found.get("sendno", "")), "cid_unanswered": False}
            await ctx.checkpoint(progress)
            return _push_receipt(ctx.state, url)
        await ctx.checkpoint({"cid_unanswered": False})  # JPush answered: this cid did not push
        code = _jpush_code(found)
        if code == JPUSH_NO_TARGET:
            # No device matches audience "all" (no app installed yet): the story is in the app, nobody to tell.
            note = f"JPush {code}: {_jpush_message(found, answer.body)}"
            log.warning("push reached nobody: %s", note, extra={"story_id": ctx.story_id, "channel": ctx.channel})
            return Receipt(remote_id=None, url=url, raw={"push": "no_target", "note": note, "cid": body["cid"]})
        raise self._error(answer, what="the push")

    def _error(self, answer: HttpAnswer, *, what: str) -> DeliveryError:
        """JPush's answer mapped onto the taxonomy (by JPush code first, HTTP status second)."""
        found, raw = answer.json(), answer.body
        status, code = answer.status, _jpush_code(found)
        detail = f"JPush {code}: {_jpush_message(found, raw)}" if code else f"HTTP {status}{_detail(found, raw)}"
        platform_code = code if code is not None else status
        now = self.clock()
        if 300 <= status < 400:
            location = answer.headers.get("Location", "(no Location header)")
            return Permanent(
                f"HTTP {status}: JPush redirects {what} to {location}; set the channel's api_base to the final address",
                platform_code=status,
            )
        if code in (JPUSH_AUTH_FAILED, JPUSH_APP_KEY_INVALID) or status == 401:
            return AuthRevoked(
                f"{detail} (check app_key and master_secret of channel {self.name!r})", platform_code=platform_code
            )
        if code == JPUSH_RATE_LIMITED or status == 429 or code == JPUSH_VOLUME_LIMITED:
            default = VOLUME_LIMIT_PAUSE if code == JPUSH_VOLUME_LIMITED else DEFAULT_RATE_LIMIT_PAUSE
            wait = _reset_seconds(answer.headers.get("X-Rate-Limit-Reset"), now=now)
            if wait is None:
                wait = retry_after_seconds(answer.headers.get("Retry-After"), now=now)
            until = dt.datetime.fromtimestamp(now + (default if wait is None else wait), tz=dt.UTC)
            return RateLimited(f"{detail} on {what}", until=until, platform_code=platform_code)
        if code in JPUSH_ACCOUNT_BLOCKED or status == 403:
            return AuthRevoked(
                f"{detail}: JPush refuses this app key's {what} (account, permission or IP whitelist in the "
                "JPush console)",
                platform_code=platform_code,
            )
        if code in JPUSH_RETRYABLE or status >= 500 or status in (408, 425):
            return Retryable(
                f"{detail} on {what}",
                retry_after=retry_after_seconds(answer.headers.get("Retry-After"), now=now),
                platform_code=platform_code,
            )
        return Permanent(f"{detail}: JPush refused {what}", platform_code=platform_code)

    async def check(self, keys: SharedKeys | None = None) -> str:
        """Ask JPush for a cid: proves the URL and the credentials without pushing anything."""
        await self._new_cid()
        return f"JPush at {self.options.api_base} accepted the credentials (a push cid was issued; nothing pushed)"

    # ---- the content API

    def web_routes(self, access: ChannelAccess) -> list[web.AbstractRouteDef]:
        return ContentApi(
            access.deliveries, prefix=self.options.api_prefix, reads=access.reach, clock=self.clock
        ).routes()

    def openapi_paths(self) -> dict[str, Any]:
        error = {"description": "JSON error", "content": {"application/json": {"schema": {"type": "object"}}}}
        cached = {"304": {"description": "Not modified (If-None-Match matched the ETag)"}}
        return {
            f"{self.options.api_prefix}/stories": {
                "get": {
                    "summary": f"The app's story list (channel {self.name}), newest first",
                    "parameters": [
                        {"name": "section", "in": "query", "schema": {"type": "string"}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                        },
                    ],
                    "responses": {
                        "200": {"description": "{stories, next_cursor}; ETag and Cache-Control"},
                        **cached,
                        "400": error,
                    },
                }
            },
            f"{self.options.api_prefix}/stories/{{story_id}}": {
                "get": {
                    "summary": "One story as structured blocks (paragraphs, headings, images with renditions)",
                    "parameters": [{"name": "story_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "The story; ETag and Cache-Control"},
                        **cached,
                        "404": error,
                        "410": {"description": "Retracted", **{k: v for k, v in error.items() if k == "content"}},
                    },
                }
            },
        }


def _push_receipt(state: dict[str, Any], url: str | None) -> Receipt:
    return Receipt(
        remote_id=str(state["msg_id"]),
        url=url,
        raw={"msg_id": state["msg_id"], "sendno": state.get("sendno"), "cid": state.get("cid")},
    )


def _utc(when: Any) -> str:
    try:
        return dt.datetime.fromtimestamp(float(when), tz=dt.UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError):
        return "an unknown time"


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _jpush_code(answer: dict[str, Any]) -> int | None:
    error = answer.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    if isinstance(code, str) and code.isdigit():
        return int(code)
    return None


def _jpush_message(answer: dict[str, Any], raw: bytes) -> str:
    error = answer.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return str(message)[:300] if message else raw[:200].decode("utf-8", "replace").strip()


def _detail(answer: dict[str, Any], raw: bytes) -> str:
    message = answer.get("message") or answer.get("error")
    if message:
        return f": {str(message)[:300]}"
    text = raw[:200].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""


def _reset_seconds(value: str | None, *, now: float) -> float | None:
    """X-Rate-Limit-Reset as seconds to wait: JPush sends the seconds left in the window; a unix time is accepted."""
    if not value or not value.strip().isdigit():
        return None
    number = float(value.strip())
    return max(number - now, 0.0) if number > _EPOCH_THRESHOLD else number


# --- the content API -------------------------------------------------------------------------------------------


class ContentApi:
    """``GET /app/v1/stories`` and ``GET /app/v1/stories/{id}``: what the app shows, from the store.

    A story is live when its newest delivered delivery on the channel is a publish or update, or when a newer one
    is waiting only for quiet hours to end (checkpointed ``content_live``). Lists run newest first by delivery
    (a story moves up when it is updated); the cursor is the last delivery id shown. Text in the JSON has ``<``,
    ``>`` and ``&`` escaped (``\\u003c``...), so the bytes never carry markup even where a story's text does.
    """

    def __init__(
        self,
        deliveries: ChannelDeliveries,
        *,
        prefix: str = API_PREFIX,
        reads: ReachCounter | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.channel = deliveries.channel
        self.deliveries = deliveries
        self.prefix = prefix
        #: Where a story served to the app counts as one read (reach); None counts nothing.
        self.reads = reads
        self.clock = clock or time.time

    async def _count_read(self, story_id: str) -> None:
        """One app read of a story, counted for its reach. A store that cannot count now costs the figure, never
        the reader's answer."""
        if self.reads is None:
            return
        try:
            await self.reads.count(story_id, ReachMetric.READS, now=self.clock())
        except StoreError as exc:
            log.warning("could not count an app read of %s: %s", story_id, exc, extra={"story_id": story_id})

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get(f"{self.prefix}/stories", self.list_stories),
            web.get(f"{self.prefix}/stories/{{story_id}}", self.get_story),
        ]

    async def _deferred(self, story_id: str | None = None) -> dict[str, DeliveryRecord]:
        """Per story, the newest not-yet-delivered delivery whose content is already live (quiet hours)."""
        rows = await self.deliveries.list_deliveries(DeliveryFilter(states=list(_DEFERRED_STATES), story_id=story_id))
        newest: dict[str, DeliveryRecord] = {}
        for row in rows:
            if row.payload is not None and row.checkpoint.get("content_live") and row.action is not Action.RETRACT:
                if row.story_id not in newest or row.id > newest[row.story_id].id:
                    newest[row.story_id] = row
        return newest

    async def _newest_first(self, before: int | None) -> AsyncIterator[DeliveryRecord]:
        """Each story's current delivery, newest first, starting below ``before`` (retractions included)."""
        deferred = await self._deferred()
        waiting = sorted(
            (d for d in deferred.values() if before is None or d.id < before), key=lambda d: d.id, reverse=True
        )
        cursor = before
        while True:
            page = await self.deliveries.latest_delivered(before_id=cursor, limit=_PAGE)
            for record in page:
                while waiting and waiting[0].id > record.id:
                    yield waiting.pop(0)
                newer = deferred.get(record.story_id)
                if newer is not None and newer.id > record.id:
                    continue  # shown at the newer delivery's place
                yield record
            if len(page) < _PAGE:
                break
            cursor = page[-1].id
        for record in waiting:
            yield record

    async def _current(self, story_id: str) -> DeliveryRecord | None:
        delivered = await self.deliveries.latest_delivered(story_id=story_id, limit=1)
        deferred = (await self._deferred(story_id)).get(story_id)
        candidates = [*delivered, *([deferred] if deferred else [])]
        return max(candidates, key=lambda d: d.id) if candidates else None

    async def list_stories(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        raw_limit = query.get("limit", str(DEFAULT_LIMIT))
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            return _bad_parameter("limit", f"limit must be an integer from 1 to {MAX_LIMIT} (got {raw_limit!r})")
        before: int | None = None
        raw_cursor = query.get("cursor")
        if raw_cursor:
            if not raw_cursor.isdigit() or int(raw_cursor) < 1:
                return _bad_parameter(
                    "cursor", "cursor must be the next_cursor of an earlier page (leave it out for the first page)"
                )
            before = int(raw_cursor)
        section = query.get("section") or None
        items: list[tuple[DeliveryRecord, AppDocument]] = []
        async for record in self._newest_first(before):
            document = self._document(record)
            if document is None or (section is not None and document.section != section):
                continue
            items.append((record, document))
            if len(items) > limit:
                break
        more = len(items) > limit
        shown = items[:limit]
        body = {
            "stories": [document.teaser() for _, document in shown],
            "next_cursor": str(shown[-1][0].id) if more else None,
        }
        return _cached_json(request, body, max_age=LIST_MAX_AGE)

    async def get_story(self, request: web.Request) -> web.StreamResponse:
        story_id = request.match_info["story_id"]
        record = await self._current(story_id)
        if record is None or record.payload is None:
            return _json_response(
                {"error": "not_found", "message": f"no story {story_id!r} in the app"}, status=404, headers={}
            )
        if record.action is Action.RETRACT:
            return _json_response(
                {
                    "error": "gone",
                    "message": f"story {story_id!r} was retracted",
                    "story_id": story_id,
                    "version": record.version,
                },
                status=410,
                headers={"Cache-Control": f"public, max-age={ITEM_MAX_AGE}"},
            )
        document = self._document(record)
        if document is None:
            return _json_response(
                {"error": "not_found", "message": f"no readable story {story_id!r} in the app"}, status=404, headers={}
            )
        # A read whether the app gets the body or a 304 for the copy it holds: either way a reader opened it.
        await self._count_read(story_id)
        return _cached_json(request, document.model_dump(mode="json"), max_age=ITEM_MAX_AGE)

    def _document(self, record: DeliveryRecord) -> AppDocument | None:
        """The story a publish or update delivery shows, read through the payload model; None for a retraction
        and for a payload this version of the channel cannot read (logged, and left out rather than served)."""
        if record.action is Action.RETRACT or record.payload is None:
            return None
        try:
            story = AppPayload.model_validate(record.payload.data).story
        except ValidationError as exc:
            log.warning(
                "delivery %s holds a payload the app channel cannot read: %s",
                record.id,
                exc.errors()[0]["msg"],
                extra={"story_id": record.story_id, "channel": self.channel},
            )
            return None
        return story if isinstance(story, AppDocument) else None


def _json_bytes(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # < > & occur only inside JSON strings, where \uXXXX means the same character: the bytes carry no markup.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode("utf-8")


def _json_response(value: Any, *, status: int, headers: dict[str, str]) -> web.Response:
    return web.Response(
        body=_json_bytes(value), status=status, headers=headers, content_type="application/json", charset="utf-8"
    )


def _bad_parameter(parameter: str, message: str) -> web.Response:
    return _json_response(
        {"error": "invalid_parameter", "parameter": parameter, "message": message}, status=400, headers={}
    )


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = [tag.strip() for tag in header.split(",")]
    return "*" in candidates or any(tag.removeprefix("W/") == etag for tag in candidates)


def _cached_json(request: web.Request, value: Any, *, max_age: int) -> web.StreamResponse:
    body = _json_bytes(value)
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={max_age}"}
    if _etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers, content_type="application/json", charset="utf-8")
