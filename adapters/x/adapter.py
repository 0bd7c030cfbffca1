"""The X (Twitter) channel: a post with the story's text, link, hashtags and up to 4 images, through tweepy.

* ``render`` fits the text with ``adapters.textfit.X_COUNTER`` (twitter-text weighted length, 280) and picks up to
  4 images (the cover first).
* ``publish`` uploads the images through X's v2 media endpoint (``POST /2/media/upload``, multipart, OAuth 1.0a
  user context, signed here with oauthlib because tweepy 4.17 only offers the retiring v1.1 upload) and posts with
  tweepy's ``AsyncClient.create_tweet``. Uploaded media ids are checkpointed, so a retry does not upload again.
* ``retract`` deletes the post (``delete_tweet``; already gone counts as done). ``update`` follows
  ``update_policy``: ``skip`` (the default: X's API cannot edit a post, so the engine records the update as skipped
  with that reason) or ``delete_and_repost`` (delete, checkpoint, post the new version).
* A timeout after sending is reconciled through the account's recent posts (``get_me`` + ``get_users_tweets``),
  matching the text with links compared as placeholders (X shows them as t.co links).

Pointing tweepy at ``api_base``: tweepy builds every URL as ``"https://api.twitter.com" + route`` and signs that
URL, then calls ``self.session.request(...)``. Its ``session`` attribute may be any object with that method, so
``AsyncClient.session`` is a ``RebasedSession`` that swaps the ``https://api.twitter.com`` prefix for ``api_base``
and hands the call to our aiohttp session, signed again over the URL it now goes to: X verifies the signature
over the URL the request is sent to (so api.x.com, the host in X's current documentation, works), and so does the
stand-in; the v2 media upload is signed over its own URL. Nothing of tweepy is replaced: its request building,
signing and error classes run for real against the stand-in.

Errors: 429 pauses the channel until ``x-rate-limit-reset``; 403 duplicate content fails, unless an earlier
attempt of the same delivery may have posted it (then the post found among the recent ones is the delivery's);
401 pauses the channel (credentials); other 4xx fail; a 5xx or a timeout after sending a post is an unknown outcome,
reconciled through the recent posts before any resend; a 5xx to a read and a connection refused retry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, Unpack

import aiohttp
import tweepy
from oauthlib.oauth1 import Client as OAuthClient
from pydantic import Field, HttpUrl, SerializerFunctionWrapHandler, model_serializer, model_validator
from tweepy.asynchronous import AsyncClient
from yarl import URL

from adapters.textfit import X_COUNTER, FitError, fit_story, same_post_text
from syndicate.channel import Adapter, AdapterDeps, AdapterOptions, DeliveryContext
from syndicate.delivery import (
    Action,
    AuthRevoked,
    DeliveryError,
    OutcomeUnknown,
    Payload,
    PayloadModel,
    Permanent,
    RateLimited,
    Receipt,
    RenderError,
    Retryable,
)
from syndicate.httputil import MAX_RETRY_AFTER, json_object, map_transport_errors
from syndicate.media import MediaBlob
from syndicate.story import ChannelStory, Image, Story

if TYPE_CHECKING:
    from syndicate.store.base import SharedKeys

TWEEPY_BASE = "https://api.twitter.com"
MEDIA_UPLOAD_PATH = "/2/media/upload"
MAX_IMAGES = 4
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
IMAGE_MAX_BYTES = 5 * 1024 * 1024
#: Media ids expire after a day; reuse checkpointed ones only well inside that.
MEDIA_REUSE_SECONDS = 20 * 3600
#: Pause when a 429 names no reset time (X's windows are 15 minutes).
DEFAULT_RATE_LIMIT_PAUSE = 15 * 60.0
#: Posts per page of the account's timeline (X's most) and the pages a lookup reads at most (X serves the newest
#: 3,200): with start_time at the delivery's queueing, "not found" means not posted.
LOOKUP_COUNT = 100
LOOKUP_PAGES = 32
#: How far our clock and X's may differ when asking for the posts made since the delivery was queued.
CLOCK_SKEW = 300


class XOptions(AdapterOptions):
    """``[channels.NAME]`` keys of an X channel (OAuth 1.0a user context: the app's and the account's keys)."""

    #: X's API root (tweepy's https://api.twitter.com; the sandbox root in tests and the demo).
    api_base: HttpUrl = HttpUrl(TWEEPY_BASE)
    consumer_key: str = Field(min_length=1)
    #: Usually "${ENV_VAR}", as are the access token and its secret.
    consumer_secret: str = Field(min_length=1)
    access_token: str = Field(min_length=1)
    access_token_secret: str = Field(min_length=1)
    #: What an update does: "skip" (recorded as skipped) or "delete_and_repost".
    update_policy: Literal["skip", "delete_and_repost"] = "skip"


class RebasedSession:
    """What tweepy's ``AsyncClient.session`` needs (``request``), sending tweepy's api.twitter.com URLs to
    ``api_base`` through a real aiohttp session, signed again over the URL actually called: X verifies the OAuth
    1.0a signature over the request's own URL (docs.x.com, "Creating a signature"), so a signature over
    api.twitter.com is refused at api.x.com."""

    def __init__(self, session: aiohttp.ClientSession, api_base: str, signer: OAuthClient) -> None:
        self.session = session
        self.api_base = api_base.rstrip("/")
        self.signer = signer

    def request(self, method: str, url: str | URL, **kwargs: Any) -> Any:
        text = str(url)  # tweepy's URLs are already percent-encoded (it signs the encoded form)
        if text.startswith(TWEEPY_BASE) and self.api_base != TWEEPY_BASE:
            text = self.api_base + text[len(TWEEPY_BASE) :]
            headers = dict(kwargs.pop("headers", None) or {})
            if headers.get("Authorization", "").startswith("OAuth "):
                verb = method.upper()  # tweepy passes "GET", "POST", "DELETE"
                _, signed, _ = self.signer.sign(text, verb, headers={"Authorization": ""})  # type: ignore[arg-type]  # types-oauthlib wants a verb Literal; any str works
                headers["Authorization"] = signed["Authorization"]
            kwargs["headers"] = headers
        # Never follow redirects: aiohttp would turn a POST into a body-less GET.
        return self.session.request(method, URL(text, encoded=True), allow_redirects=False, **kwargs)


class XPayload(PayloadModel):
    """A post (publish, update: its text and up to 4 image URLs, cover first) or a retraction (the empty object:
    X deletes by the live receipt's post id, so a retraction carries nothing). The JSON form is the stored one:
    ``{"text": ..., "images": [...]}`` for a post, ``{}`` for a retraction."""

    #: The post's text, fitted to X's 280 (weighted); None for a retraction.
    text: str | None = None
    images: list[str] = Field(default_factory=list)

    @property
    def is_post(self) -> bool:
        return self.text is not None

    @model_validator(mode="after")
    def _images_need_a_post(self) -> Self:
        if self.text is None and self.images:
            raise ValueError("images without text: a retraction payload carries nothing")
        return self

    @model_serializer(mode="wrap")
    def _stored_shape(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return handler(self) if self.text is not None else {}


def _images(story: Story) -> list[Image]:
    cover = story.cover
    ordered = ([cover] if cover else []) + [image for image in story.images if image is not cover]
    return ordered


class XAdapter(Adapter[XOptions, XPayload]):
    kind: ClassVar[str] = "x"
    options_model = XOptions
    payload_model = XPayload
    idempotent: ClassVar[bool] = False
    supports_lookup = True
    options: XOptions

    def __init__(self, name: str, options: XOptions, **deps: Unpack[AdapterDeps]) -> None:
        super().__init__(name, options, **deps)
        self.actions = frozenset(  # from options: the update policy
            {Action.PUBLISH, Action.RETRACT} | ({Action.UPDATE} if options.update_policy != "skip" else set())
        )
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncClient | None = None
        self._user_id: str | None = None
        self._api = str(options.api_base).rstrip("/")

    def unsupported_reason(self, action: Action) -> str:
        if action is Action.UPDATE:
            return (
                'update_policy = skip: X\'s API cannot edit a post; set update_policy = "delete_and_repost" to '
                "replace it"
            )
        return super().unsupported_reason(action)

    # ---- rendering

    def format(self, story: ChannelStory, action: Action) -> Payload[XPayload]:
        if action is Action.RETRACT:
            return Payload(data=XPayload())
        try:
            post = fit_story(X_COUNTER, story)
        except FitError as exc:
            raise RenderError(f"headline: {exc}") from exc
        images = _images(story)
        warnings = list(post.warnings)
        if len(images) > MAX_IMAGES:
            warnings.append(f"{len(images) - MAX_IMAGES} of {len(images)} images left out: X takes at most 4")
        return Payload(
            data=XPayload(text=post.text, images=[image.href for image in images[:MAX_IMAGES]]),
            text_length=post.length,
            warnings=tuple(warnings),
        )

    # ---- session

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=self.timeout)
            )
            client = AsyncClient(
                consumer_key=self.options.consumer_key,
                consumer_secret=self.options.consumer_secret,
                access_token=self.options.access_token,
                access_token_secret=self.options.access_token_secret,
                return_type=dict,
            )
            client.session = RebasedSession(self._session, self._api, self._signer())
            self._client = client

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._client = None
        await self.close_media()

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            raise RuntimeError(f"channel {self.name!r} was not started")
        return self._client

    # ---- actions

    async def publish(self, payload: Payload[XPayload], ctx: DeliveryContext) -> Receipt:
        post = payload.data
        if post.text is None:
            raise Permanent(f"the {ctx.action.value} payload of story {ctx.story_id!r} has no post text")
        media_ids = await self._upload_images(post.images, ctx)
        return await self._create(payload, ctx, post.text, media_ids)

    async def update(self, payload: Payload[XPayload], ctx: DeliveryContext) -> Receipt:
        """delete_and_repost: delete the live post (checkpointed), then post the new version."""
        old = ctx.receipt.remote_id if ctx.receipt else None
        if old and ctx.state.get("deleted") != old:
            await self._delete(old)
            await ctx.checkpoint({"deleted": old})
        return await self.publish(payload, ctx)

    async def retract(self, payload: Payload[XPayload], ctx: DeliveryContext) -> Receipt:
        if ctx.receipt is None or not ctx.receipt.remote_id:
            raise Permanent(f"no X post id in the live receipt of story {ctx.story_id!r}: nothing to delete")
        gone = await self._delete(ctx.receipt.remote_id)
        return Receipt(remote_id=ctx.receipt.remote_id, raw={"deleted": True, "already_gone": gone})

    async def lookup(self, payload: Payload[XPayload], ctx: DeliveryContext) -> Receipt | None:
        """Is the post among the account's recent posts? A retraction is looked up by deleting again (None)."""
        sent = payload.data.text
        if ctx.action is Action.RETRACT or sent is None:
            return None
        since = None
        if ctx.queued_at is not None:  # nothing this delivery posted is older than its queueing
            since = dt.datetime.fromtimestamp(ctx.queued_at - CLOCK_SKEW, dt.UTC)
        page_token: str | None = None
        for _ in range(LOOKUP_PAGES):
            try:
                with self._transport("read the account's recent posts", may_land=False):
                    if self._user_id is None:
                        me = await self.client.get_me(user_auth=True)
                        self._user_id = str(me["data"]["id"])
                    answer = await self.client.get_users_tweets(
                        self._user_id,
                        max_results=LOOKUP_COUNT,
                        start_time=since,
                        pagination_token=page_token,
                        user_auth=True,
                    )
            except tweepy.HTTPException as exc:
                raise self._error(exc, doing="recent posts lookup") from exc
            for post in answer.get("data") or []:
                if same_post_text(sent, str(post.get("text", "")), X_COUNTER.url_spans):
                    return _receipt(post)
            page_token = (answer.get("meta") or {}).get("next_token")
            if not page_token:
                return None
        raise OutcomeUnknown(
            f"the post is not among the account's {LOOKUP_COUNT * LOOKUP_PAGES} newest; check X before resending"
        )

    async def check(self, keys: SharedKeys | None = None) -> str:
        try:
            with self._transport("check", may_land=False):
                me = await self.client.get_me(user_auth=True)
        except tweepy.HTTPException as exc:
            raise self._error(exc, doing="check") from exc
        return f"X accepted the credentials of @{me['data'].get('username')} (nothing posted)"

    # ---- the calls

    async def _create(
        self, payload: Payload[XPayload], ctx: DeliveryContext, text: str, media_ids: list[str]
    ) -> Receipt:
        try:
            # A lost answer may mean a live post: OutcomeUnknown, and the account's recent posts tell (lookup).
            with self._transport("post", may_land=True):
                answer = await self.client.create_tweet(text=text, media_ids=media_ids or None, user_auth=True)
        except tweepy.HTTPException as exc:
            if _is_duplicate(exc) and ctx.attempt > 1:
                # Duplicate content after an earlier attempt of ours: most likely that attempt's post, live.
                landed = await self.lookup(payload, ctx)
                if landed is not None:
                    return landed
            raise self._error(exc, doing="post", may_land=True) from exc
        return _receipt(answer["data"])

    async def _delete(self, post_id: str) -> bool:
        """Delete a post; True when it was already gone."""
        try:
            # Deleting again is harmless (404 = gone): a lost answer is a plain retry.
            with self._transport("delete", may_land=False):
                await self.client.delete_tweet(post_id, user_auth=True)
        except tweepy.NotFound:
            return True
        except tweepy.HTTPException as exc:
            raise self._error(exc, doing="delete") from exc
        return False

    def _transport(self, doing: str, *, may_land: bool) -> contextlib.AbstractContextManager[None]:
        """The one mapping of transport failures (``map_transport_errors``) for tweepy's requests on our session;
        tweepy's own HTTP errors are mapped by ``_error``."""
        return map_transport_errors(doing, target=URL(self._api).host or self._api, may_land=may_land)

    async def _upload_images(self, hrefs: list[str], ctx: DeliveryContext) -> list[str]:
        """Upload each image once (v2 media upload); ids are checkpointed per URL and reused for a day."""
        uploaded: dict[str, Any] = dict(ctx.state.get("media") or {})
        ids: list[str] = []
        for href in hrefs:
            known = uploaded.get(href)
            if known and self.clock() - float(known["at"]) < MEDIA_REUSE_SECONDS:
                ids.append(str(known["id"]))
                continue
            blob = await self._fetch(href)
            media_id = await self._upload(blob)
            uploaded[href] = {"id": media_id, "at": self.clock()}
            await ctx.checkpoint({"media": uploaded})
            ids.append(media_id)
        return ids

    async def _fetch(self, href: str) -> MediaBlob:
        return await self.fetch_image(
            href,
            max_bytes=IMAGE_MAX_BYTES,
            allowed_types=IMAGE_TYPES,
            what="image",
            requirement="JPEG, PNG, GIF or WEBP up to 5 MB; fix the story's images",
        )

    def _signer(self) -> OAuthClient:
        return OAuthClient(
            self.options.consumer_key,
            self.options.consumer_secret,
            self.options.access_token,
            self.options.access_token_secret,
        )

    async def _upload(self, blob: MediaBlob) -> str:
        """``POST /2/media/upload`` (multipart; the form is not part of the signature), signed over its URL."""
        _, headers, _ = self._signer().sign(f"{self._api}{MEDIA_UPLOAD_PATH}", "POST")
        form = aiohttp.FormData()
        form.add_field("media", blob.data, filename=blob.filename, content_type=blob.content_type)
        form.add_field("media_category", "tweet_image")
        assert self._session is not None
        url = f"{self._api}{MEDIA_UPLOAD_PATH}"
        # An upload that landed only costs an unused media id: retrying is safe (may_land=False).
        with self._transport("media upload", may_land=False):
            async with self._session.post(url, data=form, headers=headers, allow_redirects=False) as resp:
                raw = await resp.read()
        answer = json_object(raw)
        data = answer.get("data")
        if 200 <= resp.status < 300 and isinstance(data, dict) and data.get("id"):
            return str(data["id"])
        detail = _problem_detail(answer, raw)
        now = self.clock()
        if resp.status == 429:
            return_at = _reset(resp.headers.get("x-rate-limit-reset"), now)
            raise RateLimited(f"HTTP 429 on media upload: {detail}", until=return_at, platform_code=429)
        if resp.status == 401:
            raise AuthRevoked(f"HTTP 401 on media upload: {detail} (check the channel's keys)", platform_code=401)
        if resp.status >= 500:
            raise Retryable(f"HTTP {resp.status} on media upload: {detail}", platform_code=resp.status)
        raise Permanent(f"HTTP {resp.status}: X refused the image {blob.url}: {detail}", platform_code=resp.status)

    def _error(self, exc: tweepy.HTTPException, *, doing: str, may_land: bool = False) -> DeliveryError:
        status = exc.response.status
        detail = "; ".join(str(m) for m in exc.api_messages) or str(exc)
        if isinstance(exc, tweepy.TooManyRequests):
            heads = exc.response.headers
            for cap in ("x-user-limit-24hour", "x-app-limit-24hour"):  # a spent daily cap outlasts the 15-minute window
                if heads.get(f"{cap}-remaining") == "0":
                    until = _reset(heads.get(f"{cap}-reset"), self.clock())
                    spent = f"the {cap.removeprefix('x-')} posting cap is spent until {until:%Y-%m-%d %H:%M} UTC"
                    return RateLimited(
                        f"HTTP 429 on {doing}: {spent}: {detail}",
                        until=until,
                        platform_code=status,
                    )
            reset = heads.get("x-rate-limit-reset")
            return RateLimited(
                f"HTTP 429 on {doing}: {detail}", until=_reset(reset, self.clock()), platform_code=status
            )
        if isinstance(exc, tweepy.Unauthorized):
            return AuthRevoked(
                f"HTTP 401 on {doing}: X rejected the credentials of channel {self.name!r} (check consumer_key, "
                f"consumer_secret, access_token, access_token_secret): {detail}",
                platform_code=status,
            )
        if _is_duplicate(exc):
            return Permanent(f"HTTP 403: X refuses duplicate content: {detail}", platform_code=status)
        if isinstance(exc, tweepy.Forbidden):  # the app or account may not do this: every delivery would meet it
            return AuthRevoked(
                f"HTTP 403 on {doing}: X forbids it for channel {self.name!r} (check that the app's permissions are "
                f"Read and Write and the access token was made after that, and the account's standing): {detail}",
                platform_code=status,
            )
        if isinstance(exc, tweepy.TwitterServerError):
            if may_land:  # a gateway's 5xx says nothing about whether the post went live: look before posting again
                return OutcomeUnknown(f"HTTP {status} from X on {doing}; it may be live", platform_code=status)
            return Retryable(f"HTTP {status} from X on {doing}: {detail}", platform_code=status)
        return Permanent(f"HTTP {status}: X refused the {doing}: {detail}", platform_code=status)


def _is_duplicate(exc: tweepy.HTTPException) -> bool:
    """X's refusal of a post identical to a recent one (a 403 whose detail says so; v2 gives it no code)."""
    detail = "; ".join(str(m) for m in exc.api_messages) or str(exc)
    return isinstance(exc, tweepy.Forbidden) and "duplicate" in detail.lower()


def _reset(value: str | None, now: float) -> dt.datetime:
    """``x-rate-limit-reset`` (unix seconds) as the end of the pause; 15 minutes when absent, in the past or not a
    number, at most a day."""
    try:
        at = float(value) if value else 0.0
    except ValueError:
        at = 0.0
    if not math.isfinite(at) or at <= now:
        at = now + DEFAULT_RATE_LIMIT_PAUSE
    # An absurd reset (a bug, "99999999999") is asked again after a day, as for Retry-After.
    return dt.datetime.fromtimestamp(min(at, now + MAX_RETRY_AFTER), tz=dt.UTC)


def _receipt(post: dict[str, Any]) -> Receipt:
    post_id = str(post["id"])
    return Receipt(remote_id=post_id, url=f"https://x.com/i/web/status/{post_id}", raw=dict(post))


def _problem_detail(answer: dict[str, Any], raw: bytes) -> str:
    errors = answer.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict) and errors[0].get("message"):
        return str(errors[0]["message"])[:300]
    return str(answer.get("detail") or raw[:200].decode("utf-8", "replace"))
