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
and hands the call to our aiohttp session. The request still carries the signature over the api.twitter.com URL,
which is what X verifies (and what the stand-in verifies); the v2 media upload is signed the same way. Nothing of
tweepy is replaced: its request building, signing and error classes run for real against the stand-in.

Errors: 429 pauses the channel until ``x-rate-limit-reset``; 403 duplicate content fails; 401 pauses the channel
(credentials); other 4xx fail; 5xx retries; a connection refused retries; a timeout after sending is unknown and
reconciled.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any, ClassVar, Literal, Unpack

import aiohttp
import tweepy
from oauthlib.oauth1 import Client as OAuthClient
from pydantic import Field, HttpUrl
from tweepy.asynchronous import AsyncClient
from yarl import URL

from adapters.textfit import X_COUNTER, FitError, fit_story, same_post_text
from syndicate.channel import Adapter, AdapterDeps, AdapterOptions, DeliveryContext
from syndicate.delivery import (
    Action,
    AuthRevoked,
    DeliveryError,
    JsonPayload,
    OutcomeUnknown,
    Payload,
    Permanent,
    RateLimited,
    Receipt,
    RenderError,
    Retryable,
)
from syndicate.httputil import MAX_RETRY_AFTER
from syndicate.media import MediaBlob
from syndicate.story import ChannelStory, Image, Story

TWEEPY_BASE = "https://api.twitter.com"
MEDIA_UPLOAD_PATH = "/2/media/upload"
MAX_IMAGES = 4
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
IMAGE_MAX_BYTES = 5 * 1024 * 1024
#: Media ids expire after a day; reuse checkpointed ones only well inside that.
MEDIA_REUSE_SECONDS = 20 * 3600
#: Pause when a 429 names no reset time (X's windows are 15 minutes).
DEFAULT_RATE_LIMIT_PAUSE = 15 * 60.0
LOOKUP_COUNT = 100


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
    ``api_base`` through a real aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, api_base: str) -> None:
        self.session = session
        self.api_base = api_base.rstrip("/")

    def request(self, method: str, url: str | URL, **kwargs: Any) -> Any:
        text = str(url)  # tweepy's URLs are already percent-encoded (it signs the encoded form)
        if text.startswith(TWEEPY_BASE):
            text = self.api_base + text[len(TWEEPY_BASE) :]
        # Never follow redirects: aiohttp would turn a POST into a body-less GET.
        return self.session.request(method, URL(text, encoded=True), allow_redirects=False, **kwargs)


def _images(story: Story) -> list[Image]:
    cover = story.cover
    ordered = ([cover] if cover else []) + [image for image in story.images if image is not cover]
    return ordered


class XAdapter(Adapter[XOptions, dict[str, Any]]):
    kind: ClassVar[str] = "x"
    options_model = XOptions
    idempotent: ClassVar[bool] = False
    supports_lookup = True
    options: XOptions

    def __init__(self, name: str, options: XOptions, **deps: Unpack[AdapterDeps]) -> None:
        super().__init__(name, options, **deps)
        self.actions = frozenset(  # type: ignore[misc]  # narrows the Adapter.actions ClassVar per instance, from options
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

    def format(self, story: ChannelStory, action: Action) -> JsonPayload:
        if action is Action.RETRACT:
            return Payload(data={})
        try:
            post = fit_story(X_COUNTER, story)
        except FitError as exc:
            raise RenderError(f"headline: {exc}") from exc
        images = _images(story)
        warnings = list(post.warnings)
        if len(images) > MAX_IMAGES:
            warnings.append(f"{len(images) - MAX_IMAGES} of {len(images)} images left out: X takes at most 4")
        return Payload(
            data={"text": post.text, "images": [image.href for image in images[:MAX_IMAGES]]},
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
            client.session = RebasedSession(self._session, self._api)
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

    async def publish(self, payload: JsonPayload, ctx: DeliveryContext) -> Receipt:
        media_ids = await self._upload_images([str(href) for href in payload.data.get("images", [])], ctx)
        return await self._create(str(payload.data["text"]), media_ids)

    async def update(self, payload: JsonPayload, ctx: DeliveryContext) -> Receipt:
        """delete_and_repost: delete the live post (checkpointed), then post the new version."""
        old = ctx.receipt.remote_id if ctx.receipt else None
        if old and ctx.state.get("deleted") != old:
            await self._delete(old)
            await ctx.checkpoint({"deleted": old})
        return await self.publish(payload, ctx)

    async def retract(self, payload: JsonPayload, ctx: DeliveryContext) -> Receipt:
        if ctx.receipt is None or not ctx.receipt.remote_id:
            raise Permanent(f"no X post id in the live receipt of story {ctx.story_id!r}: nothing to delete")
        gone = await self._delete(ctx.receipt.remote_id)
        return Receipt(remote_id=ctx.receipt.remote_id, raw={"deleted": True, "already_gone": gone})

    async def lookup(self, payload: JsonPayload, ctx: DeliveryContext) -> Receipt | None:
        """Is the post among the account's recent posts? A retraction is looked up by deleting again (None)."""
        if ctx.action is Action.RETRACT or "text" not in payload.data:
            return None
        try:
            if self._user_id is None:
                me = await self.client.get_me(user_auth=True)
                self._user_id = str(me["data"]["id"])
            answer = await self.client.get_users_tweets(self._user_id, max_results=LOOKUP_COUNT, user_auth=True)
        except tweepy.HTTPException as exc:
            raise self._error(exc, doing="recent posts lookup") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Retryable(f"could not read the account's recent posts: {type(exc).__name__}: {exc}") from exc
        recent = answer.get("data") or []
        for post in recent:
            if same_post_text(str(payload.data["text"]), str(post.get("text", "")), X_COUNTER.url_spans):
                return _receipt(post)
        if len(recent) >= LOOKUP_COUNT:
            raise OutcomeUnknown(f"the post is not among the account's {LOOKUP_COUNT} newest; check X before resending")
        return None

    async def check(self) -> str:
        try:
            me = await self.client.get_me(user_auth=True)
        except tweepy.HTTPException as exc:
            raise self._error(exc, doing="check") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Retryable(f"cannot reach X at {self._api}: {type(exc).__name__}: {exc}") from exc
        return f"X accepted the credentials of @{me['data'].get('username')} (nothing posted)"

    # ---- the calls

    async def _create(self, text: str, media_ids: list[str]) -> Receipt:
        try:
            answer = await self.client.create_tweet(text=text, media_ids=media_ids or None, user_auth=True)
        except tweepy.HTTPException as exc:
            raise self._error(exc, doing="post") from exc
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise Retryable(f"could not connect to X at {self._api}: {exc}") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise OutcomeUnknown(
                f"no answer from X after sending the post ({type(exc).__name__}: {exc}); the account's recent posts "
                "will tell whether it landed"
            ) from exc
        return _receipt(answer["data"])

    async def _delete(self, post_id: str) -> bool:
        """Delete a post; True when it was already gone."""
        try:
            await self.client.delete_tweet(post_id, user_auth=True)
        except tweepy.NotFound:
            return True
        except tweepy.HTTPException as exc:
            raise self._error(exc, doing="delete") from exc
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise Retryable(f"could not connect to X at {self._api}: {exc}") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Deleting again is harmless (404 = gone): a plain retry settles it.
            raise Retryable(f"no answer from X to the delete ({type(exc).__name__}: {exc})") from exc
        return False

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

    async def _upload(self, blob: MediaBlob) -> str:
        """``POST /2/media/upload`` (multipart), signed like tweepy signs: over the api.twitter.com URL."""
        signer = OAuthClient(
            self.options.consumer_key,
            self.options.consumer_secret,
            self.options.access_token,
            self.options.access_token_secret,
        )
        _, headers, _ = signer.sign(f"{TWEEPY_BASE}{MEDIA_UPLOAD_PATH}", "POST")
        form = aiohttp.FormData()
        form.add_field("media", blob.data, filename=blob.filename, content_type=blob.content_type)
        form.add_field("media_category", "tweet_image")
        assert self._session is not None
        url = f"{self._api}{MEDIA_UPLOAD_PATH}"
        try:
            async with self._session.post(url, data=form, headers=headers, allow_redirects=False) as resp:
                raw = await resp.read()
                answer = _json_object(raw)
        except (TimeoutError, aiohttp.ClientError) as exc:
            # An upload that landed only costs an unused media id: retrying is safe.
            raise Retryable(f"media upload to {url} failed: {type(exc).__name__}: {exc}") from exc
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

    def _error(self, exc: tweepy.HTTPException, *, doing: str) -> DeliveryError:
        status = exc.response.status
        detail = "; ".join(str(m) for m in exc.api_messages) or str(exc)
        if isinstance(exc, tweepy.TooManyRequests):
            reset = exc.response.headers.get("x-rate-limit-reset")
            return RateLimited(
                f"HTTP 429 on {doing}: {detail}", until=_reset(reset, self.clock()), platform_code=status
            )
        if isinstance(exc, tweepy.Unauthorized):
            return AuthRevoked(
                f"HTTP 401 on {doing}: X rejected the credentials of channel {self.name!r} (check consumer_key, "
                f"consumer_secret, access_token, access_token_secret): {detail}",
                platform_code=status,
            )
        if isinstance(exc, tweepy.Forbidden) and "duplicate" in detail.lower():
            return Permanent(f"HTTP 403: X refuses duplicate content: {detail}", platform_code=status)
        if isinstance(exc, tweepy.TwitterServerError):
            return Retryable(f"HTTP {status} from X on {doing}: {detail}", platform_code=status)
        return Permanent(f"HTTP {status}: X refused the {doing}: {detail}", platform_code=status)


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


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {"value": value}


def _problem_detail(answer: dict[str, Any], raw: bytes) -> str:
    errors = answer.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict) and errors[0].get("message"):
        return str(errors[0]["message"])[:300]
    return str(answer.get("detail") or raw[:200].decode("utf-8", "replace"))
