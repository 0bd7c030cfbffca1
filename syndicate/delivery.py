"""The wire types every side shares: the action, the rendered payload, the platform's receipt and the error
taxonomy adapters map platform failures onto. The store, the engine and the adapters all import these; this module
imports nothing of syndicate's but ``syndicate.record`` (which imports none), so it can never be part of an import
cycle.

The engine decides what to do from an error's class alone (see ARCHITECTURE.md, "Error taxonomy") and never knows a
platform by name.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from syndicate.record import record


class Action(enum.StrEnum):
    PUBLISH = "publish"
    UPDATE = "update"
    RETRACT = "retract"


class PayloadModel(BaseModel):
    """Base of each channel's payload type: frozen, unknown keys refused, so a stored payload that does not match
    its channel's model is caught when it is loaded, not half-way through a send."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def readable_json(self) -> Any:
        """The payload as an operator reads it (``syndicate preview``): its JSON, or, for a model that keeps a form
        made for the wire (a pre-encoded request body), what that form says."""
        return self.model_dump(mode="json")


DataT = TypeVar("DataT", bound="BaseModel | dict[str, Any]", covariant=True)


@record
class Payload(Generic[DataT]):
    """What a channel will send, rendered once at enqueue time and stored on the delivery.

    ``data`` is the channel's own payload model; read back from the store it is the plain JSON object until the
    channel's adapter loads it (``Adapter.load_payload``), which validates it against the model again.
    ``text_length`` is the length in the channel's own counting (None when the channel has no text limit);
    ``warnings`` say what rendering trimmed or dropped.
    """

    data: DataT
    text_length: int | None = None
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = self.data.model_dump(mode="json") if isinstance(self.data, BaseModel) else self.data
        return {"data": data, "text_length": self.text_length, "warnings": list(self.warnings)}

    def readable_data(self) -> Any:
        """``data`` as JSON an operator reads (``PayloadModel.readable_json``)."""
        return self.data.readable_json() if isinstance(self.data, PayloadModel) else self.to_json()["data"]

    @staticmethod
    def from_json(raw: Mapping[str, Any]) -> Payload[dict[str, Any]]:
        """The stored form: ``data`` stays a JSON object until its channel loads it."""
        return Payload(
            data=dict(raw["data"]),
            text_length=raw.get("text_length"),
            warnings=tuple(raw.get("warnings", ())),
        )


#: The payload of a channel that has not declared a payload model: the plain JSON object it renders.
JsonPayload = Payload[dict[str, Any]]


@record
class StoredPayload:
    """A payload as the store keeps it: its JSON text, decoded only when something reads it. The channel that sends
    it parses and validates it in one pass (``Adapter.load_payload``), so a claim costs no JSON decoding of its own
    and no second walk over the decoded objects; operators' views read ``decoded`` (or ``data``, ``to_json``).
    A claim hands it over as the UTF-8 bytes the store holds, which the parser reads as they are."""

    text: str | bytes

    @functools.cached_property
    def decoded(self) -> Payload[dict[str, Any]]:
        return Payload.from_json(json.loads(self.text))

    @property
    def data(self) -> dict[str, Any]:
        return self.decoded.data

    def to_json(self) -> dict[str, Any]:
        return self.decoded.to_json()


@record
class Receipt:
    """The platform's acknowledgement: its id for the post, the public URL, and the raw answer."""

    remote_id: str | None = None
    url: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"remote_id": self.remote_id, "url": self.url, "raw": self.raw}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Receipt:
        return cls(remote_id=raw.get("remote_id"), url=raw.get("url"), raw=dict(raw.get("raw") or {}))


# --- reach (评) ----------------------------------------------------------------------------------------------------


class ReachMetric(enum.StrEnum):
    """The small common set every platform's figures map onto, so stories compare across channels."""

    READS = "reads"
    SHARES = "shares"
    LIKES = "likes"
    COMMENTS = "comments"


@dataclass(frozen=True)
class ReachReading:
    """One live post's figures as its platform reports them at one moment: the common metrics the platform has
    (one it does not report is left out, never 0) and its own figures under its own names (``raw``), kept as
    they came so a mapping can be revisited."""

    metrics: Mapping[ReachMetric, int]
    raw: Mapping[str, int | float] = field(default_factory=dict)


# --- error taxonomy --------------------------------------------------------------------------------------------


class DeliveryError(Exception):
    """Base of every error an adapter raises. ``platform_code`` is the platform's own code (errcode, HTTP status)."""

    def __init__(self, reason: str, *, platform_code: str | int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.platform_code = None if platform_code is None else str(platform_code)


class Retryable(DeliveryError):
    """The platform did not take it (network error before sending, 5xx, busy). Retry on the channel's schedule."""

    def __init__(
        self,
        reason: str,
        *,
        retry_after: float | None = None,
        platform_code: str | int | None = None,
        pending: bool = False,
    ) -> None:
        super().__init__(reason, platform_code=platform_code)
        self.retry_after = retry_after
        #: Nothing failed: the platform is still working on it (a publish job) or a window must pass (quiet
        #: hours). The wait does not spend the retry budget; the adapter bounds how long it waits.
        self.pending = pending


class RateLimited(DeliveryError):
    """429 or a quota: the whole channel pauses until ``until`` (shared by every worker)."""

    def __init__(self, reason: str, *, until: dt.datetime, platform_code: str | int | None = None) -> None:
        super().__init__(reason, platform_code=platform_code)
        if until.tzinfo is None:
            raise ValueError("RateLimited.until must be timezone-aware")
        self.until = until


class AuthExpired(DeliveryError):
    """The access token expired: the engine calls ``refresh_auth`` once and retries at once."""


class AuthRevoked(DeliveryError):
    """Credentials are wrong or revoked: the channel pauses until an operator resumes it; nothing is lost."""


class Permanent(DeliveryError):
    """The platform refused this content (duplicate, too long, banned): the delivery fails at once."""


class OutcomeUnknown(DeliveryError):
    """It may have landed (e.g. a timeout after the request was sent): reconcile with ``lookup`` or park."""


ERROR_CLASSES: dict[str, type[DeliveryError]] = {
    cls.__name__: cls for cls in (Retryable, RateLimited, AuthExpired, AuthRevoked, Permanent, OutcomeUnknown)
}


class RenderError(ValueError):
    """The story cannot be rendered for this channel (raised at enqueue time, before any request)."""


def idempotency_key(story_id: str, version: int, channel: str, action: Action | str) -> str:
    return f"{story_id}:{version}:{channel}:{Action(action).value}"
