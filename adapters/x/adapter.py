"""The X (Twitter) channel: a post with the story's text, link, hashtags and up to 4 images, through tweepy.

* ``render`` fits the text with ``adapters.textfit.X_COUNTER`` (twitter-text weighted length, 280) and picks up to
  4 images (the cover first).
* ``publish`` uploads the images through X's v2 media endpoints (OAuth 1.0a user context, signed here with oauthlib
  because tweepy 4.17 only offers the retiring v1.1 upload) and posts with tweepy's ``AsyncClient.create_tweet``.
  X takes "up to 4 photos, 1 animated GIF or 1 video in a Post", so the first image decides: an animated GIF goes
  alone, through the chunked upload (``/2/media/upload/initialize`` with ``tweet_gif``, ``/{id}/append``,
  ``/{id}/finalize``, ``GET /2/media/upload?command=STATUS`` while X processes it); still images go one-shot
  (``POST /2/media/upload``, ``tweet_image``), up to 4, GIFs among them left out. What is left out is logged and
  listed in the receipt (``media_left_out``). Uploaded media ids are checkpointed, so a retry does not upload again.
* ``retract`` deletes the post (``delete_tweet``; already gone counts as done). ``update`` follows
  ``update_policy``: ``skip`` (the default: X's API cannot edit a post, so the engine records the update as skipped
  with that reason) or ``delete_and_repost`` (delete, checkpoint, post the new version).
* ``read_reach`` reads the post's ``public_metrics`` (``GET /2/tweets?ids=<id>&tweet.fields=public_metrics``,
  tweepy's ``get_tweets``, user context as every call here): impressions are its reads, reposts and quotes its
  shares, likes, replies its comments; the figures X gives are kept as they came. An id X cannot show (deleted,
  or never ours) comes back in ``errors[]`` with HTTP 200 (``resource-not-found``): the post is gone, the
  sampling ends. Impressions are absent on some tiers or revisions of the API: then reads are left out, not 0.
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

import asyncio
import contextlib
import datetime as dt
import logging
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
    ReachMetric,
    ReachReading,
    Receipt,
    RenderError,
    Retryable,
)
from syndicate.httputil import MAX_RETRY_AFTER, json_object, map_transport_errors
from syndicate.media import MediaBlob
from syndicate.story import ChannelStory, Image, Story

if TYPE_CHECKING:
    from syndicate.store.base import SharedKeys

log = logging.getLogger("syndicate.adapters.x.adapter")

TWEEPY_BASE = "https://api.twitter.com"
MEDIA_UPLOAD_PATH = "/2/media/upload"
MAX_IMAGES = 4
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
GIF_TYPE = "image/gif"
#: docs.x.com media upload: images up to 5 MB (one-shot ``POST /2/media/upload``), animated GIFs up to 15 MB
#: (chunked: initialize with media_category tweet_gif, append, finalize, STATUS while processing).
IMAGE_MAX_BYTES = 5 * 1024 * 1024
GIF_MAX_BYTES = 15 * 1024 * 1024
#: APPEND segments: "Keep each segment at or below 5 MB".
GIF_SEGMENT_BYTES = 4 * 1024 * 1024
#: How long a delivery waits for X to process a GIF, and the longest single wait X's check_after_secs may ask.
GIF_PROCESSING_BUDGET = 120.0
MAX_CHECK_AFTER = 10.0
#: Media ids expire after a day; reuse checkpointed ones only well inside that.
MEDIA_REUSE_SECONDS = 20 * 3600
#: Pause when a 429 names no reset time (X's windows are 15 minutes).
DEFAULT_RATE_LIMIT_PAUSE = 15 * 60.0
#: Posts per page of the account's timeline (X's most) and the pages a lookup reads at most (X serves the newest
#: 3,200): with start_time at the delivery's queueing, "not found" means not posted.
LOOKUP_COUNT = 100
LOOKUP_PAGES = 32
#: X's public_metrics fields under the common metric each one counts towards (reposts and quotes both put the post
#: in front of the sharer's followers, so both are shares).
PUBLIC_METRICS_AS_REACH: dict[str, ReachMetric] = {
    "impression_count": ReachMetric.READS,
    "retweet_count": ReachMetric.SHARES,
    "quote_count": ReachMetric.SHARES,
    "like_count": ReachMetric.LIKES,
    "reply_count": ReachMetric.COMMENTS,
}
NOT_FOUND_PROBLEM = "https://api.twitter.com/2/problems/resource-not-found"
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
    supports_reach = True
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
        media_ids, left_out = await self._upload_images(post.images, ctx)
        receipt = await self._create(payload, ctx, post.text, media_ids)
        if left_out:
            receipt = Receipt(
                remote_id=receipt.remote_id, url=receipt.url, raw={**receipt.raw, "media_left_out": left_out}
            )
        return receipt

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

    async def read_reach(self, ctx: DeliveryContext) -> ReachReading:
        post_id = ctx.receipt.remote_id if ctx.receipt is not None else None
        if not post_id:
            raise Permanent(f"no X post id in the live receipt of story {ctx.story_id!r}: no figures to read")
        try:
            with self._transport("read the post's public metrics", may_land=False):
                answer = await self.client.get_tweets([post_id], tweet_fields=["public_metrics"], user_auth=True)
        except tweepy.HTTPException as exc:
            raise self._error(exc, doing="public metrics lookup") from exc
        return reach_of(post_id, answer)

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

    async def _upload_images(self, hrefs: list[str], ctx: DeliveryContext) -> tuple[list[str], list[str]]:
        """Upload the post's media once each (ids checkpointed per URL, reused for a day); the media ids and the URLs
        left out. X takes "up to 4 photos, 1 animated GIF or 1 video in a Post": the first image (the cover) decides.
        An animated GIF first goes alone (a story's other images and GIFs are left out); a still image first takes
        the other stills (GIFs after it are left out)."""
        uploaded: dict[str, Any] = dict(ctx.state.get("media") or {})
        ids: list[str] = []
        left_out: list[str] = []
        lead_is_gif: bool | None = None
        for index, href in enumerate(hrefs):
            if lead_is_gif:
                left_out.append(href)
                continue
            known = uploaded.get(href)
            blob: MediaBlob | None = None
            known_id: str | None = None
            if known and self.clock() - float(known["at"]) < MEDIA_REUSE_SECONDS:
                known_id = str(known["id"])
                is_gif = bool(known.get("gif"))  # checkpoints older than GIF support are images
            else:
                blob = await self._fetch(href, index)
                is_gif = blob.content_type == GIF_TYPE
            if lead_is_gif is None:
                lead_is_gif = is_gif
            elif is_gif:
                left_out.append(href)
                continue
            if known_id is not None:
                ids.append(known_id)
                continue
            assert blob is not None  # fetched whenever no checkpointed id is reused
            media_id = await (self._upload_gif(blob) if is_gif else self._upload(blob))
            uploaded[href] = {"id": media_id, "at": self.clock(), "gif": is_gif}
            await ctx.checkpoint({"media": uploaded})
            ids.append(media_id)
        if left_out:
            kept = "the animated GIF alone" if lead_is_gif else f"{len(ids)} still image(s)"
            log.warning(
                "X takes up to 4 photos or 1 animated GIF in a post: posting %s, leaving out %s",
                kept,
                ", ".join(left_out),
                extra={"story_id": ctx.story_id, "channel": ctx.channel},
            )
        return ids, left_out

    async def _fetch(self, href: str, index: int) -> MediaBlob:
        blob = await self.fetch_image(
            href,
            max_bytes=GIF_MAX_BYTES,
            allowed_types=IMAGE_TYPES,
            what=f"images[{index}]",
            requirement="JPEG, PNG or WEBP up to 5 MB, or an animated GIF up to 15 MB; fix the story's images",
        )
        if blob.content_type != GIF_TYPE and len(blob.data) > IMAGE_MAX_BYTES:
            raise Permanent(
                f"images[{index}] {href} is {len(blob.data)} bytes: X takes images up to {IMAGE_MAX_BYTES} bytes "
                "(animated GIFs up to 15 MB); fix the story's images"
            )
        return blob

    def _signer(self) -> OAuthClient:
        return OAuthClient(
            self.options.consumer_key,
            self.options.consumer_secret,
            self.options.access_token,
            self.options.access_token_secret,
        )

    async def _media_call(
        self, method: str, path: str, *, doing: str, what: str, params: dict[str, str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """One call to X's media endpoints, signed over its own URL (query included; a multipart or JSON body is
        not part of an OAuth 1.0a signature); the answer's ``data``, or the refusal mapped onto the taxonomy. An
        upload that landed only costs an unused media id: every media call is safe to retry (may_land=False)."""
        url = f"{self._api}{path}"
        signed_url = str(URL(url).with_query(params)) if params else url
        _, headers, _ = self._signer().sign(signed_url, method)  # type: ignore[arg-type]  # types-oauthlib wants a verb Literal
        assert self._session is not None
        with self._transport(doing, may_land=False):
            async with self._session.request(
                method, signed_url, headers=headers, allow_redirects=False, **kwargs
            ) as resp:
                raw = await resp.read()
        answer = json_object(raw)
        data = answer.get("data")
        if 200 <= resp.status < 300 and isinstance(data, dict):
            return data
        detail = _problem_detail(answer, raw)
        if resp.status == 429:
            return_at = _reset(resp.headers.get("x-rate-limit-reset"), self.clock())
            raise RateLimited(f"HTTP 429 on {doing}: {detail}", until=return_at, platform_code=429)
        if resp.status == 401:
            raise AuthRevoked(f"HTTP 401 on {doing}: {detail} (check the channel's keys)", platform_code=401)
        if resp.status >= 500:
            raise Retryable(f"HTTP {resp.status} on {doing}: {detail}", platform_code=resp.status)
        raise Permanent(f"HTTP {resp.status}: X refused {what}: {detail}", platform_code=resp.status)

    async def _upload(self, blob: MediaBlob) -> str:
        """``POST /2/media/upload`` (multipart, media_category tweet_image): the one-shot upload, for images."""
        form = aiohttp.FormData()
        form.add_field("media", blob.data, filename=blob.filename, content_type=blob.content_type)
        form.add_field("media_category", "tweet_image")
        data = await self._media_call(
            "POST", MEDIA_UPLOAD_PATH, doing="media upload", what=f"the image {blob.url}", data=form
        )
        if not data.get("id"):
            raise Retryable(f"X answered the media upload of {blob.url} without a media id")
        return str(data["id"])

    async def _upload_gif(self, blob: MediaBlob) -> str:
        """An animated GIF through X's chunked upload: initialize (media_type image/gif, media_category tweet_gif,
        total_bytes), append each segment in order, finalize, then ask STATUS while ``processing_info`` says
        pending or in_progress, waiting the ``check_after_secs`` X gives (docs.x.com chunked media upload)."""
        what = f"the animated GIF {blob.url}"
        init = await self._media_call(
            "POST",
            f"{MEDIA_UPLOAD_PATH}/initialize",
            doing="GIF upload initialize",
            what=what,
            json={"media_type": GIF_TYPE, "media_category": "tweet_gif", "total_bytes": len(blob.data)},
        )
        media_id = str(init.get("id") or "")
        if not media_id:
            raise Retryable(f"X answered the GIF upload initialize for {blob.url} without a media id")
        for index, start in enumerate(range(0, len(blob.data), GIF_SEGMENT_BYTES)):
            form = aiohttp.FormData()
            form.add_field("segment_index", str(index))
            form.add_field(
                "media", blob.data[start : start + GIF_SEGMENT_BYTES], filename=blob.filename, content_type=GIF_TYPE
            )
            await self._media_call(
                "POST", f"{MEDIA_UPLOAD_PATH}/{media_id}/append", doing="GIF upload append", what=what, data=form
            )
        done = await self._media_call(
            "POST", f"{MEDIA_UPLOAD_PATH}/{media_id}/finalize", doing="GIF upload finalize", what=what
        )
        waited = 0.0
        while True:
            info = done.get("processing_info")
            state = info.get("state") if isinstance(info, dict) else None
            if not isinstance(info, dict) or state == "succeeded":
                return media_id  # no processing_info: "the media is ready to use"
            if state == "failed":
                raise _processing_failed(info, what, media_id)
            if waited >= GIF_PROCESSING_BUDGET:
                raise Retryable(f"X is still processing {what} (media {media_id}) after {waited:.0f} s")
            check_after = info.get("check_after_secs")
            pause = float(check_after) if isinstance(check_after, int | float) and check_after > 0 else 1.0
            pause = min(pause, MAX_CHECK_AFTER, GIF_PROCESSING_BUDGET - waited)
            await asyncio.sleep(pause)
            waited += pause
            done = await self._media_call(
                "GET",
                MEDIA_UPLOAD_PATH,
                doing="GIF upload status",
                what=what,
                params={"command": "STATUS", "media_id": media_id},
            )

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


def _processing_failed(info: dict[str, Any], what: str, media_id: str) -> DeliveryError:
    """``processing_info.state == failed``. X documents one error, ``{"code": 1, "name": "InvalidMedia"}``: the
    file itself is bad, and sending the same bytes again fails the same way. Any other failure of X's processing
    is worth one more upload."""
    found = info.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    name, message = str(error.get("name") or ""), str(error.get("message") or "")
    detail = f"{name}: {message}" if name else message or "no reason given"
    if name == "InvalidMedia" or error.get("code") == 1:
        return Permanent(f"X could not process {what} ({detail}); fix the story's images", platform_code=name or 1)
    return Retryable(f"X's processing of {what} (media {media_id}) failed: {detail}", platform_code=name or None)


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


def reach_of(post_id: str, answer: dict[str, Any]) -> ReachReading:
    """The reading in a ``GET /2/tweets`` answer for ``post_id``: its ``public_metrics`` mapped onto the common
    metrics (a field X did not send is left out); ``Permanent`` when X reports the post not found; ``Retryable``
    when the answer has neither (X answered something else)."""
    for post in answer.get("data") or []:
        if isinstance(post, dict) and str(post.get("id")) == post_id:
            found = post.get("public_metrics")
            figures = found if isinstance(found, dict) else {}
            raw = {name: value for name, value in figures.items() if _count(value)}
            metrics: dict[ReachMetric, int] = {}
            for name, metric in PUBLIC_METRICS_AS_REACH.items():
                if name in raw:
                    metrics[metric] = metrics.get(metric, 0) + int(raw[name])
            return ReachReading(metrics=metrics, raw=raw)
    for error in answer.get("errors") or []:
        if isinstance(error, dict) and str(error.get("value") or error.get("resource_id")) == post_id:
            if error.get("type") == NOT_FOUND_PROBLEM:
                raise Permanent(f"X no longer shows post {post_id} (deleted?): {error.get('detail')}")
            raise Permanent(f"X refuses to show post {post_id}: {error.get('title')}: {error.get('detail')}")
    raise Retryable(f"X's answer to the lookup of post {post_id} names neither the post nor an error")


def _count(value: Any) -> bool:
    """A figure as X sends it: a non-negative integer (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _receipt(post: dict[str, Any]) -> Receipt:
    post_id = str(post["id"])
    return Receipt(remote_id=post_id, url=f"https://x.com/i/web/status/{post_id}", raw=dict(post))


def _problem_detail(answer: dict[str, Any], raw: bytes) -> str:
    errors = answer.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict) and errors[0].get("message"):
        return str(errors[0]["message"])[:300]
    return str(answer.get("detail") or raw[:200].decode("utf-8", "replace"))
