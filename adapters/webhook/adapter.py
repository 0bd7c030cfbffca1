"""Generic webhook channel: POST the rendered story as JSON to a receiver the newsroom controls.

Every request carries ``Idempotency-Key: <story>:<version>:<channel>:<action>`` and an HMAC signature
(``X-Syndicate-Signature``), so receivers can both deduplicate and authenticate. Receivers are not assumed to
honour the key, so the channel does not declare itself idempotent: after a timeout it asks ``lookup_url`` whether
the key landed, and without one it parks the delivery for an operator instead of risking a duplicate.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar, Unpack

import pydantic_core
from pydantic import ConfigDict, Field, HttpUrl, model_validator
from yarl import URL

from syndicate.channel import AdapterDeps, AdapterOptions, DeliveryContext, HttpAdapter
from syndicate.delivery import Action, AuthRevoked, Payload, PayloadModel, Receipt, Retryable
from syndicate.httputil import HttpAnswer, http_failure
from syndicate.signing import SIGNATURE_HEADER, sign
from syndicate.story import ChannelStory

if TYPE_CHECKING:
    from syndicate.store.base import SharedKeys


class WebhookOptions(AdapterOptions):
    url: HttpUrl
    #: HMAC-SHA256 key for X-Syndicate-Signature; usually "${ENV_VAR}".
    secret: str = Field(min_length=1)
    #: GET <lookup_url>?key=<idempotency key> answers 200 with the receipt or 404; enables reconciliation.
    lookup_url: HttpUrl | None = None
    #: Static extra headers (e.g. an Authorization the receiver expects).
    headers: dict[str, str] = Field(default_factory=dict)


class WebhookPayload(PayloadModel):
    """What the receiver gets: the event and the story exactly as the CMS sent it (canonical JSON).

    ``body`` is the request body itself, ``{"event": ..., "story": ...}`` with keys sorted, compact, UTF-8, made
    once at render time: every send (and every retry) posts it as it is, so a send neither rebuilds the story
    from its stored JSON nor encodes it again. Payloads rendered before it existed carry ``story`` instead, and
    are encoded at send time as they always were.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_bytes="utf8", val_json_bytes="utf8")

    event: Action
    body: bytes | None = None
    # Kept as the JSON object, not re-validated as a Story: it was validated at intake.
    story: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> WebhookPayload:
        if (self.body is None) == (self.story is None):
            raise ValueError("a webhook payload carries either body or story, and exactly one of them")
        return self

    def request_body(self) -> bytes:
        """The exact bytes to POST (and sign)."""
        if self.body is not None:
            return self.body
        return pydantic_core.to_json({"event": self.event.value, "story": self.story})

    def readable_json(self) -> Any:
        """The body as the JSON object it is, whichever form the payload has."""
        return json.loads(self.request_body())


class WebhookAdapter(HttpAdapter[WebhookOptions, WebhookPayload]):
    kind: ClassVar[str] = "webhook"
    options_model = WebhookOptions
    payload_model = WebhookPayload
    idempotent: ClassVar[bool] = False
    actions = frozenset(Action)
    options: WebhookOptions

    def __init__(self, name: str, options: WebhookOptions, **deps: Unpack[AdapterDeps]) -> None:
        super().__init__(name, options, **deps)
        self.supports_lookup = options.lookup_url is not None
        # Built once per channel, not per send: the receiver's URL parsed, and the headers every request carries.
        self._url = URL(str(options.url), encoded=True)
        self._headers = {**options.headers, "Content-Type": "application/json; charset=utf-8"}

    def format(self, story: ChannelStory, action: Action) -> Payload[WebhookPayload]:
        # The body is made here, once: canonical JSON (keys sorted, compact, UTF-8) that every send posts as it is.
        body = json.dumps(
            {"event": action.value, "story": story.canonical.to_dict()},
            ensure_ascii=False,
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        return Payload(data=WebhookPayload(event=action, body=body))

    async def publish(self, payload: Payload[WebhookPayload], ctx: DeliveryContext) -> Receipt:
        return await self._post(payload, ctx)

    async def update(self, payload: Payload[WebhookPayload], ctx: DeliveryContext) -> Receipt:
        return await self._post(payload, ctx)

    async def retract(self, payload: Payload[WebhookPayload], ctx: DeliveryContext) -> Receipt:
        return await self._post(payload, ctx)

    async def _post(self, payload: Payload[WebhookPayload], ctx: DeliveryContext) -> Receipt:
        body = payload.data.request_body()
        headers = {
            **self._headers,
            "Idempotency-Key": ctx.idempotency_key,
            SIGNATURE_HEADER: sign(self.options.secret, body),
        }
        answer = await self.request(
            "POST", self._url, doing=ctx.action.value, may_land=True, data=body, headers=headers
        )
        return self._receipt(answer)

    def _receipt(self, answer: HttpAnswer) -> Receipt:
        found = answer.json()
        if answer.ok:
            remote_id = found.get("id")
            return Receipt(
                remote_id=None if remote_id is None else str(remote_id),
                url=found.get("url") if isinstance(found.get("url"), str) else None,
                raw=found,
            )
        raise http_failure(
            answer.status,
            answer.headers,
            source="the receiver",
            refused="the receiver refused the story",
            auth="the receiver rejected our credentials (check secret/headers)",
            redirect_fix="the channel's url",
            detail=_detail(found, answer.body),
        )

    async def check(self, keys: SharedKeys | None = None) -> str:
        """Reach the receiver without publishing: the lookup endpoint for a key that cannot exist, else HEAD."""
        target = self.options.lookup_url or self.options.url
        if self.options.lookup_url is not None:
            params = {"key": "syndicate-check:0:check:publish"}
            answer = await self.request("GET", str(target), doing="check", may_land=False, params=params)
        else:
            answer = await self.request("HEAD", str(target), doing="check", may_land=False)
        if answer.status in (401, 403):
            raise AuthRevoked(
                f"HTTP {answer.status} from {target}: credentials rejected{_detail(answer.json(), answer.body)}"
            )
        if answer.status >= 500:
            raise Retryable(f"HTTP {answer.status} from {target}{_detail(answer.json(), answer.body)}")
        return f"reachable: {target} answered HTTP {answer.status}"

    async def lookup(self, payload: Payload[WebhookPayload], ctx: DeliveryContext) -> Receipt | None:
        assert self.options.lookup_url is not None
        answer = await self.request(
            "GET", str(self.options.lookup_url), doing="lookup", may_land=False, params={"key": ctx.idempotency_key}
        )
        if answer.status == 404:
            return None
        if answer.ok or answer.status in (401, 403, 429):
            return self._receipt(answer)
        raise Retryable(f"lookup answered HTTP {answer.status}{_detail(answer.json(), answer.body)}")


def _detail(answer: dict[str, Any], raw: bytes) -> str:
    error = answer.get("error")
    if isinstance(error, dict):  # {"error": {"code", "message"}} style
        error = error.get("message") or error.get("code")
    message = answer.get("message") or error
    if message:
        return f": {str(message)[:300]}"
    text = raw[:200].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""
