"""The adapter protocol and the adapter registry (the wire types it speaks are in ``syndicate.delivery``).

An adapter is two halves (Superdesk's formatter/transmitter split):

* ``render(story, action) -> Payload`` is pure and deterministic. The engine runs it once, at enqueue time, and
  stores the payload on the delivery, so every retry sends the same bytes.
* ``publish / update / retract(payload, ctx) -> Receipt`` talk to the platform; ``lookup(payload, ctx)`` (optional)
  asks the platform whether an earlier attempt already landed.

Adapters map every platform failure onto one of the ``syndicate.delivery.DeliveryError`` subclasses; the engine
decides what to do from the class alone and never knows a platform by name.
"""

from __future__ import annotations

import abc
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypedDict, TypeVar, Unpack, cast

import aiohttp
from pydantic import BaseModel, ConfigDict, RootModel, ValidationError, create_model
from yarl import URL

from syndicate.delivery import (
    Action,
    AuthRevoked,
    OutcomeUnknown,
    Payload,
    PayloadModel,
    Permanent,
    ReachReading,
    Receipt,
    Retryable,
    StoredPayload,
    idempotency_key,
)
from syndicate.httputil import HttpAnswer, map_transport_errors
from syndicate.media import MediaBlob, MediaError, MediaFetcher, MediaSettings, MediaUnavailable
from syndicate.story import ChannelStory, Story

if TYPE_CHECKING:
    from aiohttp import web

    from syndicate.store.base import ChannelAccess, SharedKeys


# --- what an adapter sees while it delivers --------------------------------------------------------------------


class DeliveryContext:
    """Per-attempt context handed to ``publish/update/retract/lookup``.

    ``checkpoint(data)`` durably merges progress of a multi-step delivery; ``state`` holds what earlier attempts
    checkpointed, so a retry resumes at the step it reached. ``receipt`` is the receipt of the story's live post on
    this channel (for update and retract). ``kv_get``/``kv_set`` reach the store's shared key/value (access tokens).
    """

    def __init__(
        self,
        *,
        delivery_id: int,
        story_id: str,
        version: int,
        channel: str,
        action: Action,
        attempt: int,
        state: dict[str, Any],
        receipt: Receipt | None,
        save_checkpoint: Callable[[dict[str, Any]], Awaitable[None]],
        kv_get: Callable[[str], Awaitable[str | None]],
        kv_set: Callable[[str, str, float | None], Awaitable[None]],
        kv_add: Callable[[str, str, float | None], Awaitable[bool]] | None = None,
        queued_at: float | None = None,
    ) -> None:
        self.delivery_id = delivery_id
        self.story_id = story_id
        self.version = version
        self.channel = channel
        self.action = action
        self.attempt = attempt
        #: When the delivery was queued: nothing it posted is older, so a lookup pages back to here and no further.
        self.queued_at = queued_at
        self.state = dict(state)
        self.receipt = receipt
        self._save_checkpoint = save_checkpoint
        self.kv_get = kv_get
        self.kv_set = kv_set
        #: Set-if-absent-or-expired, atomically across processes (locks such as a token refresh).
        self.kv_add = kv_add

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.story_id, self.version, self.channel, self.action)

    async def checkpoint(self, data: Mapping[str, Any]) -> None:
        """Merge ``data`` into the delivery's stored progress and persist it before returning."""
        self.state.update(data)
        await self._save_checkpoint(dict(self.state))


# --- the adapter contract --------------------------------------------------------------------------------------


class AdapterOptions(BaseModel):
    """Base of each adapter's kind-specific config keys; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


OptionsT = TypeVar("OptionsT", bound=AdapterOptions)
#: A channel's payload model; ``dict[str, Any]`` for a channel that has not declared one (its ``payload_model`` is
#: None and its payload is the plain JSON object).
DataT = TypeVar("DataT", bound="BaseModel | dict[str, Any]")


class AdapterDeps(TypedDict, total=False):
    """What the engine hands every adapter besides its name and options (``ChannelSettings.create_adapter``)."""

    #: Seconds before a request to the platform gives up (the channel's ``timeout``).
    timeout: float
    #: Where "now" comes from (rate-limit ends, signatures, quiet hours); tests pass the engine's fake clock.
    clock: Callable[[], float]
    #: The one media fetcher every channel shares (limits, cache, allow-list); owned by whoever created it.
    media: MediaFetcher


#: ``progress(done, total)``: how far a rebuild is (total may grow as the work is discovered).
RebuildProgress = Callable[[int, int], None]


class _StoredEnvelope(BaseModel):
    """The stored form of a payload (``Payload.to_json``) with ``data`` typed by a channel's payload model."""

    data: Any
    text_length: int | None = None
    warnings: tuple[str, ...] = ()


@functools.cache
def _stored_envelope(model: type[BaseModel]) -> type[_StoredEnvelope]:
    return create_model(f"Stored{model.__name__}", __base__=_StoredEnvelope, data=(model, ...))


class Adapter(abc.ABC, Generic[OptionsT, DataT]):
    """One channel kind, generic over its options model and its payload model.

    Subclasses set the class attributes and implement ``format`` and ``publish``. ``render`` (what the engine
    calls) resolves the story for this channel once (``Story.for_channel``) and hands it to ``format``; the engine
    stores the payload and, before each send, loads it back through ``load_payload`` (validated again).
    """

    kind: ClassVar[str]
    options_model: ClassVar[type[AdapterOptions]] = AdapterOptions
    #: A PayloadModel, or a pydantic RootModel over several (a union told apart by a key): RootModel cannot take
    #: PayloadModel's config, so the bound is BaseModel.
    payload_model: ClassVar[type[BaseModel] | None] = None
    #: Re-sending cannot duplicate (file outputs, PUT-by-id APIs, receivers that honour Idempotency-Key).
    idempotent: ClassVar[bool] = False
    #: What the channel does: per class, or per instance where options decide (an update policy of "skip").
    actions: frozenset[Action] = frozenset({Action.PUBLISH})
    #: Adapters that can ask the platform whether an attempt landed set this (per class or per instance, e.g.
    #: only when a lookup URL is configured) and implement ``lookup``.
    supports_lookup: bool = False
    #: Channels whose outputs are derived from state they keep themselves (index pages, sitemaps) set this and
    #: implement ``rebuild`` (``syndicate channels rebuild NAME``).
    supports_rebuild: ClassVar[bool] = False
    #: Adapters that can read a live post's figures back from the platform (reads, shares, likes, comments) set
    #: this (per class or per instance) and implement ``read_reach``.
    supports_reach: bool = False
    #: Owned outputs whose pages load syndicate's page beacon (``/reach/b.gif``) set this: only their reads are
    #: counted there, so a beacon URL naming any other channel (the app, which counts its own) counts nothing.
    counts_page_reads: bool = False

    def __init__(self, name: str, options: OptionsT, **deps: Unpack[AdapterDeps]) -> None:
        self.name = name
        self.options: OptionsT = options
        self.timeout: float = deps.get("timeout", 30.0)
        self.clock: Callable[[], float] = deps.get("clock", time.time)
        media = deps.get("media")
        #: Limits and policy for story images; a shared fetcher brings its own.
        self.media_settings = media.settings if media is not None else MediaSettings()
        self._media_fetcher: MediaFetcher | None = media
        self._owns_media = media is None

    def unsupported_reason(self, action: Action) -> str:
        """Why this channel cannot do ``action`` (recorded on the skipped delivery)."""
        return f"channel kind {self.kind!r} does not support {action.value}"

    def render(self, story: Story, action: Action) -> Payload[DataT]:
        """Pure and deterministic: the exact payload for ``story`` and ``action`` on this channel (the channel's
        overrides resolved). Raise RenderError if impossible."""
        return self.format(story.for_channel(self.name), action)

    @abc.abstractmethod
    def format(self, story: ChannelStory, action: Action) -> Payload[DataT]:
        """The formatter half: the payload for ``story`` as this channel sees it. Pure; RenderError if impossible."""

    def load_payload(self, stored: StoredPayload | Payload[Any]) -> Payload[DataT]:
        """A payload read back from the store, validated against this channel's model (a payload written by an
        older or foreign version of the channel fails here, naming the field, before anything is sent). From its
        stored text it is parsed and validated in one pass (pydantic-core), not decoded and then walked again."""
        model = self.payload_model
        if model is None:
            return cast(Payload[DataT], stored.decoded if isinstance(stored, StoredPayload) else stored)
        if isinstance(stored, Payload) and isinstance(stored.data, model):
            return cast(Payload[DataT], stored)
        envelope = _stored_envelope(model)
        try:
            if isinstance(stored, StoredPayload):
                loaded = envelope.model_validate_json(stored.text)
            else:
                loaded = envelope.model_validate(
                    {"data": stored.data, "text_length": stored.text_length, "warnings": stored.warnings}
                )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'][1:]) or '$'}: {err['msg']}" for err in exc.errors()[:5]
            )
            raise Permanent(
                f"the stored payload does not match the {self.kind!r} payload model ({problems}): it was written by"
                " another version of this channel"
            ) from None
        return Payload(data=cast(DataT, loaded.data), text_length=loaded.text_length, warnings=loaded.warnings)

    @abc.abstractmethod
    async def publish(self, payload: Payload[DataT], ctx: DeliveryContext) -> Receipt: ...

    async def update(self, payload: Payload[DataT], ctx: DeliveryContext) -> Receipt:
        raise Permanent(self.unsupported_reason(Action.UPDATE))

    async def retract(self, payload: Payload[DataT], ctx: DeliveryContext) -> Receipt:
        raise Permanent(self.unsupported_reason(Action.RETRACT))

    async def lookup(self, payload: Payload[DataT], ctx: DeliveryContext) -> Receipt | None:
        """Did an earlier attempt land? A Receipt if yes, None if it certainly did not; raise if it cannot tell."""
        raise OutcomeUnknown(f"channel kind {self.kind!r} cannot look up earlier attempts")

    async def read_reach(self, ctx: DeliveryContext) -> ReachReading:
        """The figures of the post a delivered delivery left live (``ctx.receipt``: its remote id, URL and raw
        answer; ``ctx.action`` publish or update), read from the platform now. Failures use the delivery
        taxonomy: RateLimited pauses the channel (its sampling and its publishing alike), AuthExpired refreshes,
        Retryable retries the sample, Permanent ends it (the post is gone, the platform keeps no figures for it).
        Sends nothing that publishes."""
        raise Permanent(f"channel kind {self.kind!r} reports no reach")

    async def refresh_auth(self, ctx: DeliveryContext) -> None:
        """Renew an expired token (called once after AuthExpired). Adapters without tokens keep the default."""
        raise AuthRevoked(f"channel kind {self.kind!r} cannot refresh its credentials")

    async def rebuild(self, progress: RebuildProgress) -> str:
        """Regenerate every output the channel derives from its own state (after an operator changed its
        templates or layout), calling ``progress(done, total)`` as it goes (from any thread); a short description
        of what was rewritten, or a DeliveryError saying what is wrong."""
        raise Permanent(f"channel kind {self.kind!r} keeps no derived outputs to rebuild")

    async def check(self, keys: SharedKeys | None = None) -> str:
        """A live credential/connectivity check (``syndicate channels --check``): a short description of what was
        verified, or a DeliveryError saying what is wrong. Sends nothing that publishes. ``keys`` are the store's
        shared keys, so a check uses the tokens the workers share instead of replacing them."""
        return "no live check for this channel kind"

    def web_routes(self, access: ChannelAccess) -> list[web.AbstractRouteDef]:
        """Routes this channel serves from `syndicate serve` (a content API, feeds, a site
        preview). The core mounts them without knowing what they are."""
        return []

    def openapi_paths(self) -> dict[str, Any]:
        """OpenAPI 3.1 path items for the routes ``web_routes`` mounts, merged into /openapi.json."""
        return {}

    async def fetch_image(
        self, url: str, *, max_bytes: int, allowed_types: tuple[str, ...], what: str, requirement: str
    ) -> MediaBlob:
        """A story image for upload, through the one media fetcher (limits, cache, no private addresses), with its
        failures mapped onto the taxonomy: a retryable fetch problem retries, anything else fails saying what the
        platform takes (``requirement``) and naming the image (``what``: "cover image", "images[2]"...)."""
        if self._media_fetcher is None:
            self._media_fetcher = MediaFetcher(self.media_settings)
        try:
            return await self._media_fetcher.fetch(url, max_bytes=max_bytes, allowed_types=allowed_types)
        except MediaUnavailable as exc:
            if exc.retryable:
                raise Retryable(f"{what} {url}: {exc}", retry_after=exc.retry_after) from exc
            raise Permanent(f"{what} {url} cannot be fetched: {exc}") from exc
        except MediaError as exc:
            raise Permanent(f"{what} {url} cannot go to this channel ({requirement}): {exc}") from exc

    async def close_media(self) -> None:
        """Release the media fetcher if this adapter made its own (a shared one belongs to whoever passed it)."""
        if self._media_fetcher is not None and self._owns_media:
            await self._media_fetcher.close()
            self._media_fetcher = None

    async def start(self) -> None:
        """Open long-lived resources (one HTTP session per channel)."""

    async def close(self) -> None:
        """Release what ``start`` opened."""

    async def send(self, payload: Payload[DataT], ctx: DeliveryContext) -> Receipt:
        """Dispatch to the method for ``ctx.action``."""
        if ctx.action is Action.PUBLISH:
            return await self.publish(payload, ctx)
        if ctx.action is Action.UPDATE:
            return await self.update(payload, ctx)
        return await self.retract(payload, ctx)


# --- registry --------------------------------------------------------------------------------------------------

ENTRY_POINT_GROUP = "syndicate.adapters"
AdapterT = TypeVar("AdapterT", bound="Adapter[Any, Any]")
_registry: dict[str, type[Adapter[Any, Any]]] = {}


class HttpAdapter(Adapter[OptionsT, DataT]):
    """An adapter that talks to its platform through one aiohttp session per channel, opened by ``start`` and
    closed, with the media fetcher, by ``close``."""

    _session: aiohttp.ClientSession | None = None

    def session_options(self) -> dict[str, Any]:
        """The channel's ClientSession arguments; adapters add headers, a cookie jar or other timeouts."""
        return {"timeout": aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=self.timeout)}

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(**self.session_options())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.close_media()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"channel {self.name!r} was not started")
        return self._session

    async def request(self, method: str, url: str | URL, *, doing: str, may_land: bool, **kwargs: Any) -> HttpAnswer:
        """The transmitter: one request on the channel's session, read whole, transport failures mapped onto the
        taxonomy in one place (``map_transport_errors``). Redirects are never followed: aiohttp would turn a POST
        into a body-less GET and its 200 would look delivered; the answer is returned for the adapter to map."""
        kwargs.setdefault("allow_redirects", False)
        with map_transport_errors(doing, target=_host_of(url), may_land=may_land):
            async with self.session.request(method, url, **kwargs) as resp:
                body = await resp.read()
        return HttpAnswer(status=resp.status, headers=resp.headers, body=body)


@functools.lru_cache(maxsize=256)
def _host_of(url: str | URL) -> str:
    """The host an error names; a channel calls the same few URLs over and over, so each is parsed once."""
    parsed = url if isinstance(url, URL) else URL(url)
    return parsed.host or str(url)


def readable_payload(kind: str, data: Any) -> Any:
    """A stored payload's ``data`` as an operator reads it (the dashboard's story page), through its channel's
    payload model (``PayloadModel.readable_json``: a request body kept pre-encoded is shown as the JSON it is, not
    as an escaped string). As stored when the kind is not known here or the data does not match its model."""
    try:
        model = get_adapter_class(kind).payload_model
    except KeyError:
        return data
    if model is None or not isinstance(data, dict):
        return data
    try:
        loaded = model.model_validate(data)
    except ValidationError:
        return data
    shown = loaded.root if isinstance(loaded, RootModel) else loaded  # a union of payload models
    return shown.readable_json() if isinstance(shown, PayloadModel) else data


def register(adapter_cls: type[AdapterT]) -> type[AdapterT]:
    """Register an adapter class under its ``kind`` (usable as a decorator; tests register their own)."""
    existing = _registry.get(adapter_cls.kind)
    if existing is not None and existing is not adapter_cls:
        raise ValueError(f"adapter kind {adapter_cls.kind!r} is already registered by {existing.__qualname__}")
    _registry[adapter_cls.kind] = adapter_cls
    return adapter_cls


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _registry:
            cls = ep.load()
            if getattr(cls, "kind", None) != ep.name:
                raise ValueError(f"entry point {ep.name!r} loads {cls!r} whose kind is {getattr(cls, 'kind', None)!r}")
            register(cls)


def adapter_kinds() -> dict[str, type[Adapter[Any, Any]]]:
    """Every known adapter kind: installed entry points plus anything registered at run time."""
    _load_entry_points()
    return dict(_registry)


def get_adapter_class(kind: str) -> type[Adapter[Any, Any]]:
    kinds = adapter_kinds()
    try:
        return kinds[kind]
    except KeyError:
        raise KeyError(f"unknown channel kind {kind!r} (known: {', '.join(sorted(kinds)) or 'none'})") from None
