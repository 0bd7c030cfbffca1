"""Partner platforms (People's Account 人民号, Shangguan 上观号 and the like): a configurable, signed JSON push.

Neither platform publishes an open API, so this channel speaks one plain contract and each partner instance
adapts it with config (``mapping`` renames our fields to the partner's, ``extra`` adds static fields):

* ``POST <url>`` creates an article from JSON (``idempotency_key``, ``title``, ``summary``, ``content_html``,
  ``author``, ``source_url``, ``published_at`` in RFC 3339 +08:00, ``cover``, ``images``, ``tags``);
  ``PUT <url>/<remote_id>`` replaces it, ``DELETE <url>/<remote_id>`` retracts it.
* Every request carries ``X-App-Key``, ``X-Timestamp`` (unix seconds), ``X-Nonce`` (fresh per request) and
  ``X-Signature`` = hex HMAC-SHA256(secret, ``"<METHOD>\\n<path?query>\\n<ts>\\n<nonce>\\n<raw body>\\n"``), the
  five-line string of WeChat Pay's APIv3 request signature: the method and the request target are signed, so a
  captured signature cannot be replayed as another operation (a lookup's as a DELETE). The body is fixed at
  render time, so a retry sends the same bytes; only the timestamp, nonce and signature change.
* 200/201 ``{"code": 0, "remote_id", "url", "status"}`` is delivered. ``status`` may be ``pending_review``:
  the partner took the article but an editor has yet to approve it, so ``url`` may be empty or not public yet.
  That is still delivered (there is nothing to retry); the receipt's ``raw["status"]`` says so.
* 409 means the partner already has an article for our idempotency key: delivered, with the remote id it returns.
* ``GET <lookup_url>?key=<idempotency key>`` answers 200 with the article or 404; it reconciles a publish whose
  answer was lost.

Why ``idempotent = False``: a resent POST is only harmless if the partner deduplicates on ``idempotency_key``, and
nothing obliges a partner to. Updates (PUT by id) and retractions (DELETE by id, 404 = already gone) are safe to
resend, but a publish is only safe through ``lookup``, so without ``lookup_url`` a publish that timed out after
sending is parked as ``unknown`` for an operator rather than risk a second article.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Unpack
from urllib.parse import quote

from pydantic import ConfigDict, Field, HttpUrl, ValidationInfo, field_validator
from yarl import URL

from syndicate.channel import AdapterDeps, AdapterOptions, DeliveryContext, HttpAdapter
from syndicate.delivery import (
    Action,
    AuthRevoked,
    OutcomeUnknown,
    Payload,
    PayloadModel,
    Permanent,
    RateLimited,
    Receipt,
    RenderError,
    Retryable,
    idempotency_key,
)
from syndicate.httputil import HttpAnswer, http_failure
from syndicate.sanitize import clean_html
from syndicate.story import ChannelStory

if TYPE_CHECKING:
    from syndicate.store.base import SharedKeys

#: The fields a publish or update sends, in our names; ``mapping`` may rename any of them.
PARTNER_FIELDS: tuple[str, ...] = (
    "idempotency_key",
    "title",
    "summary",
    "content_html",
    "author",
    "source_url",
    "published_at",
    "cover",
    "images",
    "tags",
)
#: China Standard Time. A fixed offset: Asia/Shanghai has kept +08:00 without DST since 1991.
SHANGHAI = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
#: How far apart our clock and the partner's may be before it refuses the signature (what the partners document).
SIGNATURE_WINDOW_SECONDS = 300
#: The key ``check()`` looks up: it can never belong to a real story (version 0 does not exist).
CHECK_KEY_TEMPLATE = "syndicate-check:0:{channel}:publish"

APP_KEY_HEADER = "X-App-Key"
TIMESTAMP_HEADER = "X-Timestamp"
NONCE_HEADER = "X-Nonce"
SIGNATURE_HEADER = "X-Signature"

ExtraValue = str | int | float | bool
#: What a value of the body can be: one of our fields (text, null, a list of image URLs or tags) or an extra.
BodyValue = str | int | float | bool | list[str] | None


class PartnerOptions(AdapterOptions):
    """``[channels.NAME]`` keys of a partner channel."""

    #: The partner's article collection: POST creates; ``<url>/<remote_id>`` takes PUT and DELETE.
    url: HttpUrl
    #: Our identity at the partner, sent as X-App-Key.
    app_key: str = Field(min_length=1)
    #: HMAC-SHA256 key for X-Signature; usually "${ENV_VAR}".
    secret: str = Field(min_length=1)
    #: GET <lookup_url>?key=<idempotency key> answers 200 with the article or 404; enables reconciliation.
    lookup_url: HttpUrl | None = None
    #: Our field name -> the partner's (``{ title = "headline_cn" }``); unmapped fields keep our names.
    mapping: dict[str, str] = Field(default_factory=dict)
    #: Static fields added to every publish and update body (``{ source = "宝山汇" }``).
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("mapping")
    @classmethod
    def _mapping_renames_fields_we_send(cls, mapping: dict[str, str]) -> dict[str, str]:
        for ours, theirs in mapping.items():
            if ours not in PARTNER_FIELDS:
                raise ValueError(
                    f"{ours!r} is not a field this channel sends; the keys of mapping are our field names, one of: "
                    f"{', '.join(PARTNER_FIELDS)}"
                )
            if not theirs.strip():
                raise ValueError(f"{ours!r} is mapped to an empty name; give the partner's field name")
        seen: dict[str, str] = {}
        for ours in PARTNER_FIELDS:
            theirs = mapping.get(ours, ours)
            if theirs in seen:
                raise ValueError(
                    f"{seen[theirs]!r} and {ours!r} would both be sent as {theirs!r}; map them to different names"
                )
            seen[theirs] = ours
        return mapping

    @field_validator("extra")
    @classmethod
    def _extra_adds_new_fields(cls, extra: dict[str, Any], info: ValidationInfo) -> dict[str, ExtraValue]:
        for name, value in extra.items():
            if not isinstance(value, ExtraValue) or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"{name!r} must be a string, finite number or boolean (got {value!r})")
        mapping = info.data.get("mapping")
        if mapping is None:  # mapping itself was refused; that error is the one to report
            return extra
        sent = {mapping.get(ours, ours): ours for ours in PARTNER_FIELDS}
        for name in extra:
            if name in sent:
                raise ValueError(
                    f"{name!r} would overwrite the story's {sent[name]!r} field; give the static field another "
                    f"name, or rename {sent[name]!r} in mapping"
                )
        return extra

    def wire_name(self, field: str) -> str:
        """The partner's name for one of our ``PARTNER_FIELDS``."""
        return self.mapping.get(field, field)


def shanghai_time(value: dt.datetime | None) -> str | None:
    """RFC 3339 in +08:00, the zone both partners display (``2019-09-18T18:30:00+08:00``)."""
    if value is None:
        return None
    return value.astimezone(SHANGHAI).isoformat(timespec="seconds")


def encode_body(data: Mapping[str, Any]) -> bytes:
    """The exact bytes sent: compact UTF-8 JSON with sorted keys, ``<``, ``>`` and ``&`` escaped as ``\\u003c``...

    The escaping changes nothing for a JSON parser (those characters only occur inside strings) but keeps markup
    out of the raw body, so a partner tool that pastes the JSON into a page cannot be tricked by a headline.
    """
    text = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def signed_target(url: str) -> str:
    """The request target a signature covers: the URL without scheme and host, its path and query exactly as they
    go on the wire (percent-encoded as aiohttp sends them; ``?query`` only when there is one)."""
    return URL(url).raw_path_qs


def partner_signature(secret: str, method: str, target: str, timestamp: str, nonce: str, body: bytes) -> str:
    """X-Signature: hex HMAC-SHA256 over five lines, each ending in ``\\n`` (the last too), as WeChat Pay's APIv3
    builds its signature string: ``METHOD``, the request target (``signed_target``), the timestamp, the nonce and
    the raw body (empty for GET and DELETE)."""
    message = f"{method.upper()}\n{target}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class PartnerBody(PayloadModel):
    """What a delivery stores: the JSON body of a publish or update exactly as the partner gets it, our
    ``PARTNER_FIELDS`` under the partner's names (``mapping``) plus the static ``extra`` fields; a retraction's is
    empty (DELETE by id carries no body).

    The key names are the channel's config *at render time*, and a stored payload must send as rendered (its
    bytes are fixed) even after an operator changes ``mapping`` or ``extra``. So the model checks what the
    values can be (text, numbers, booleans, null, lists of strings), not which keys there are: unlike other
    channels' payloads it allows keys it does not declare, the one PayloadModel that does.
    """

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, BodyValue]

    @property
    def fields(self) -> dict[str, BodyValue]:
        """The body's fields by the partner's names, in render order."""
        return dict(self.__pydantic_extra__ or {})

    def encoded(self) -> bytes:
        """The exact bytes sent (``encode_body``)."""
        return encode_body(self.fields)


@dataclass(frozen=True)
class PartnerAnswer:
    """One answer of the partner (``HttpAdapter.request``), its JSON read once: enough to map onto a receipt or
    an error."""

    answer: HttpAnswer
    body: dict[str, Any]

    @classmethod
    def of(cls, answer: HttpAnswer) -> PartnerAnswer:
        return cls(answer, answer.json())

    @property
    def status(self) -> int:
        return self.answer.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self.answer.headers  # case-insensitive (aiohttp's CIMultiDictProxy)

    @property
    def raw(self) -> bytes:
        return self.answer.body

    @property
    def code(self) -> int | str | None:
        """The partner's own result code (``0`` = success), when it sent one."""
        code = self.body.get("code")
        return code if isinstance(code, int | str) and not isinstance(code, bool) else None

    @property
    def detail(self) -> str:
        """``: [code 40022] title too long`` from the answer, for error messages."""
        message = self.body.get("message") or self.body.get("msg") or self.body.get("error")
        code = self.code
        prefix = f"[code {code}] " if code not in (None, 0, "0") else ""
        if message:
            return f": {prefix}{str(message)[:300]}"
        text = self.raw[:200].decode("utf-8", "replace").strip()
        return f": {prefix}{text}" if prefix or text else ""


class PartnerAdapter(HttpAdapter[PartnerOptions, PartnerBody]):
    kind: ClassVar[str] = "partner"
    options_model = PartnerOptions
    payload_model = PartnerBody
    idempotent: ClassVar[bool] = False
    actions = frozenset(Action)
    options: PartnerOptions

    def __init__(self, name: str, options: PartnerOptions, **deps: Unpack[AdapterDeps]) -> None:
        super().__init__(name, options, **deps)
        self.supports_lookup = options.lookup_url is not None
        #: A fresh X-Nonce per request (tests pin it to see a replay refused).
        self.new_nonce: Callable[[], str] = lambda: secrets.token_hex(16)

    # ---- rendering

    def format(self, story: ChannelStory, action: Action) -> Payload[PartnerBody]:
        """The JSON body (publish, update); a retraction is a body-less DELETE, so it renders ``{}``."""
        if action is Action.RETRACT:
            return Payload(data=PartnerBody())
        title = story.headline
        if not title.strip():
            raise RenderError("headline is empty: a partner article needs a title")
        summary = story.summary
        content_html = clean_html(story.body_html)
        cover = story.cover
        fields: dict[str, Any] = {
            "idempotency_key": idempotency_key(story.id, story.version, self.name, action),
            "title": title,
            "summary": summary,
            "content_html": content_html,
            "author": story.by,
            "source_url": story.url,
            "published_at": shanghai_time(story.published_at),
            "cover": cover.href if cover is not None else None,
            "images": [image.href for image in story.images],
            "tags": list(story.tags),
        }
        warnings: list[str] = []
        if not content_html.strip():
            warnings.append("body_html is empty after sanitising: the partner gets an article without content")
        if story.published_at is None:
            warnings.append("published_at is not set: sent as null")
        data = {self.options.wire_name(name): value for name, value in fields.items()}
        data.update(self.options.extra)
        return Payload(data=PartnerBody.model_validate(data), warnings=tuple(warnings))

    # ---- session

    # ---- actions

    async def publish(self, payload: Payload[PartnerBody], ctx: DeliveryContext) -> Receipt:
        answer = await self._exchange("POST", self._collection_url, body=payload.data.encoded(), ctx=ctx)
        if 200 <= answer.status < 300:
            return self._accepted(answer, doing="publish")
        if answer.status == 409:
            # The partner deduplicated on our idempotency key: the article is there, under the id it names.
            remote_id = answer.body.get("remote_id")
            if remote_id in (None, ""):
                raise OutcomeUnknown(
                    f"HTTP 409 (duplicate) without a remote_id: the article exists but its id is unknown{answer.detail}"
                )
            url = answer.body.get("url")
            return Receipt(
                remote_id=str(remote_id),
                url=url if isinstance(url, str) else None,
                raw={**answer.body, "duplicate": True},
            )
        raise self._error(answer, doing="publish")

    async def update(self, payload: Payload[PartnerBody], ctx: DeliveryContext) -> Receipt:
        remote_id = _live_remote_id(ctx)
        answer = await self._exchange("PUT", self._article_url(remote_id), body=payload.data.encoded(), ctx=ctx)
        if 200 <= answer.status < 300:
            return self._accepted(answer, doing="update", remote_id=remote_id)
        if answer.status == 404:
            raise Permanent(
                f"HTTP 404: the partner has no article {remote_id} to update (removed on the partner's side?); "
                f"`syndicate replay --force` the publish to post it again{answer.detail}",
                platform_code=answer.code or 404,
            )
        raise self._error(answer, doing="update")

    async def retract(self, payload: Payload[PartnerBody], ctx: DeliveryContext) -> Receipt:
        remote_id = _live_remote_id(ctx)
        answer = await self._exchange("DELETE", self._article_url(remote_id), body=b"", ctx=ctx)
        if 200 <= answer.status < 300:
            return Receipt(remote_id=remote_id, raw=answer.body or {"status": "retracted"})
        if answer.status == 404:
            # Already gone (an earlier attempt landed, or an editor removed it): the goal is reached.
            return Receipt(remote_id=remote_id, raw={**answer.body, "status": "already_gone"})
        raise self._error(answer, doing="retract")

    async def lookup(self, payload: Payload[PartnerBody], ctx: DeliveryContext) -> Receipt | None:
        """Did a publish land? ``GET <lookup_url>?key=`` answers 200 with the article or 404.

        Updates and retractions answer None without asking: they address the article by id (PUT replaces it with
        the same body, DELETE of a gone article is a 404 we count as delivered), so sending them again is how they
        reconcile, and can never create a second article.
        """
        if ctx.action is not Action.PUBLISH:
            return None
        if self.options.lookup_url is None:
            raise OutcomeUnknown(f"channel {self.name!r} has no lookup_url: cannot tell whether the publish landed")
        answer = await self._exchange(
            "GET", str(self.options.lookup_url), body=b"", ctx=None, params={"key": ctx.idempotency_key}, doing="lookup"
        )
        if answer.status == 404:
            return None
        if 200 <= answer.status < 300:
            return self._accepted(answer, doing="lookup")
        if answer.status in (401, 403, 429) or answer.status >= 500:
            raise self._error(answer, doing="lookup")
        raise Retryable(f"lookup answered HTTP {answer.status}{answer.detail}", platform_code=answer.status)

    async def check(self, keys: SharedKeys | None = None) -> str:
        """A signed lookup of a key that cannot exist: 404 proves the app key and secret are accepted."""
        if self.options.lookup_url is None:
            return "not checked: without lookup_url the only signed request is a publish"
        target = str(self.options.lookup_url)
        key = CHECK_KEY_TEMPLATE.format(channel=self.name)
        answer = await self._exchange("GET", target, body=b"", ctx=None, params={"key": key}, doing="check")
        if answer.status == 404 or 200 <= answer.status < 300:
            return f"credentials accepted: a signed lookup at {target} answered HTTP {answer.status}"
        raise self._error(answer, doing="check")

    # ---- HTTP

    @property
    def _collection_url(self) -> str:
        return str(self.options.url)

    def _article_url(self, remote_id: str) -> str:
        return f"{self._collection_url.rstrip('/')}/{quote(remote_id, safe='')}"

    def signed_headers(self, method: str, url: str, body: bytes) -> dict[str, str]:
        """X-App-Key, X-Timestamp, X-Nonce and X-Signature for one request to ``url`` (query included): a fresh
        nonce and time every call."""
        timestamp = str(int(self.clock()))
        nonce = self.new_nonce()
        signature = partner_signature(self.options.secret, method, signed_target(url), timestamp, nonce, body)
        return {
            APP_KEY_HEADER: self.options.app_key,
            TIMESTAMP_HEADER: timestamp,
            NONCE_HEADER: nonce,
            SIGNATURE_HEADER: signature,
        }

    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        body: bytes,
        ctx: DeliveryContext | None,
        params: Mapping[str, str] | None = None,
        doing: str | None = None,
    ) -> PartnerAnswer:
        """Send one signed request and read the answer. ``ctx`` None marks a read-only request (lookup, check):
        a timeout there changed nothing on the partner, so it is Retryable rather than OutcomeUnknown."""
        if params:
            # The query is part of what is signed: build the URL that goes on the wire once, sign that, send that.
            url = str(URL(url).extend_query(params))
        headers = self.signed_headers(method, url, body)
        if body:
            headers["Content-Type"] = "application/json; charset=utf-8"
        if ctx is not None:
            headers["Idempotency-Key"] = ctx.idempotency_key
        answer = await self.request(
            method,
            url,
            doing=doing or (ctx.action.value if ctx is not None else method),
            may_land=ctx is not None,
            data=body or None,
            headers=headers,
        )
        return PartnerAnswer.of(answer)

    def _accepted(self, answer: PartnerAnswer, *, doing: str, remote_id: str | None = None) -> Receipt:
        """A 2xx: the receipt, unless the body carries an error code (some partners answer 200 with one)."""
        if answer.code not in (None, 0, "0"):
            raise Permanent(
                f"HTTP {answer.status} but the partner refused the {doing}{answer.detail}", platform_code=answer.code
            )
        found = answer.body.get("remote_id")
        if found in (None, ""):
            if remote_id is None:
                raise OutcomeUnknown(
                    f"HTTP {answer.status} without a remote_id: the {doing} may have landed but its id is unknown"
                )
            found = remote_id
        url = answer.body.get("url")
        raw = dict(answer.body)
        raw.setdefault("status", "published")
        return Receipt(remote_id=str(found), url=url if isinstance(url, str) and url else None, raw=raw)

    def _error(self, answer: PartnerAnswer, *, doing: str) -> Retryable | RateLimited | AuthRevoked | Permanent:
        """Map a non-success answer onto the taxonomy (the webhook channel's rules, with the partner's code)."""
        return http_failure(
            answer.status,
            answer.headers,
            source=f"the partner on {doing}",
            refused=f"the partner refused the {doing}",
            auth=(
                f"the partner rejected our signature (check app_key and secret of channel {self.name!r}, and that"
                f" this host's clock is within {SIGNATURE_WINDOW_SECONDS} s of true time)"
            ),
            redirect_fix="the channel's url/lookup_url",
            detail=answer.detail,
            platform_code=answer.code if answer.code not in (None, 0, "0") else answer.status,
        )


def _live_remote_id(ctx: DeliveryContext) -> str:
    """The partner's id of the live article (update and retract address it by id)."""
    if ctx.receipt is None or not ctx.receipt.remote_id:
        raise Permanent(
            f"no remote id for the live article of story {ctx.story_id!r}: its publish receipt has none, so there "
            "is nothing to address; check the partner and replay the publish"
        )
    return ctx.receipt.remote_id
