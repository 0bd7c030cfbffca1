"""What operators do, shared by the HTTP API and the CLI: select and replay deliveries, retract a story, read a
story's full status, and the JSON views both print. One implementation, so `syndicate replay` and
`POST /v1/replay` can never disagree about what they select.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from syndicate.delivery import Receipt
from syndicate.durations import DURATION
from syndicate.durations import (
    parse_duration as parse_duration,
)  # re-exported: the CLI, server and dashboard import it here
from syndicate.engine import Engine
from syndicate.logs import redact
from syndicate.store.base import (
    REPLAYABLE_STATES,
    AttemptRecord,
    ChannelState,
    DeliveryFilter,
    DeliveryRecord,
    FanOutResult,
    State,
    Store,
    StoryRecord,
)
from syndicate.story import Story

DEFAULT_REPLAY_STATES: tuple[State, ...] = (State.FAILED, State.UNKNOWN)


def parse_time(text: str, *, now: float) -> float:
    """A point in time from ``2h`` / ``30m`` / ``1d`` (that long ago), an ISO 8601 timestamp (naive = local
    time) or unix seconds. Raises ValueError saying what is accepted."""
    value = text.strip()
    if DURATION.match(value):
        return now - parse_duration(value)
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"{text!r} is not a time: unix seconds must be a finite number")
        return seconds
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use a duration ago (90s, 30m, 2h, 1d, 1w), an ISO 8601 timestamp "
            "(2026-11-26T08:00+08:00) or unix seconds"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()
    return parsed.timestamp()


def parse_states(values: Sequence[str]) -> list[State]:
    """``failed,unknown`` (comma-separated, repeatable) -> states; unknown names raise ValueError listing valid ones."""
    states: list[State] = []
    for item in values:
        for name in item.split(","):
            name = name.strip()
            if not name:
                continue
            try:
                states.append(State(name))
            except ValueError:
                valid = ", ".join(s.value for s in State)
                raise ValueError(f"unknown state {name!r} (valid: {valid})") from None
    return states


def split_list(values: Sequence[str]) -> list[str]:
    """Comma-separated and/or repeated values, flattened."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@dataclass(frozen=True)
class ReplaySelection:
    """What an operator asks to replay. Without ids, states default to failed and unknown."""

    ids: Sequence[int] = ()
    channels: Sequence[str] = ()
    story_id: str | None = None
    since: float | None = None
    until: float | None = None
    states: Sequence[State] = ()
    error_classes: Sequence[str] = ()
    force: bool = False

    def to_filter(self) -> DeliveryFilter:
        states = list(self.states) or list(DEFAULT_REPLAY_STATES)
        if self.ids and not self.states:
            states = [*REPLAYABLE_STATES, State.DELIVERED] if self.force else list(REPLAYABLE_STATES)
        return DeliveryFilter(
            ids=list(self.ids) or None,
            states=states,
            channels=list(self.channels) or None,
            story_id=self.story_id,
            since=self.since,
            until=self.until,
            error_classes=list(self.error_classes) or None,
        )


@dataclass
class ReplayPlan:
    """The deliveries a selection matched, split into what will be re-queued and what will not (and why)."""

    replayable: list[DeliveryRecord] = field(default_factory=list)
    refused: list[tuple[DeliveryRecord, str]] = field(default_factory=list)
    missing_ids: list[int] = field(default_factory=list)


DELIVERED_REFUSAL = "already delivered: replaying it would post again (use force)"


async def plan_replay(store: Store, selection: ReplaySelection) -> ReplayPlan:
    plan = ReplayPlan()
    flt = selection.to_filter()
    if selection.ids:
        # Name every id the operator typed: a delivered one without force, or one that does not exist.
        candidates = await store.list_deliveries(
            DeliveryFilter(
                ids=list(selection.ids),
                channels=flt.channels,
                story_id=flt.story_id,
                since=flt.since,
                until=flt.until,
                error_classes=flt.error_classes,
            )
        )
        found = {d.id for d in candidates}
        plan.missing_ids = [i for i in selection.ids if i not in found]
        allowed = set(flt.states or ())
    else:
        candidates = await store.list_deliveries(flt)
        allowed = set(REPLAYABLE_STATES) | ({State.DELIVERED} if selection.force else set())
    for d in candidates:
        if d.state not in allowed:
            reason = DELIVERED_REFUSAL if d.state is State.DELIVERED else f"state {d.state.value} is not replayable"
            plan.refused.append((d, reason))
            continue
        later = await _later_delivery(store, d)
        if later is not None:
            plan.refused.append(
                (
                    d,
                    f"version {later.version} ({later.action.value}, delivery {later.id}) came after it: replaying "
                    "this would post stale content",
                )
            )
            continue
        plan.replayable.append(d)
    return plan


async def _later_delivery(store: Store, d: DeliveryRecord) -> DeliveryRecord | None:
    """The next delivery of the same story on the same channel that replaced this one, if any."""
    for later in await store.list_deliveries(
        DeliveryFilter(story_id=d.story_id, channels=[d.channel], after_id=d.id, limit=5)
    ):
        if later.state is not State.SKIPPED:
            return later
    return None


async def requeue(
    store: Store,
    deliveries: Sequence[DeliveryRecord],
    *,
    now: float,
    force: bool,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> list[int]:
    """Re-queue in batches (one transaction each); attempts history is kept, the retry budget reset."""
    done: list[int] = []
    ids = [d.id for d in deliveries]
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        done.extend(await store.requeue(chunk, now=now, force=force))
        if progress is not None:
            progress(len(chunk))
        # A brief store operation can finish without suspending (SQLite's run on the loop): let the loop's other
        # work (the dispatcher, heartbeats, requests) run between batches.
        await asyncio.sleep(0)
    return done


async def retract_story(engine: Engine, story_id: str) -> FanOutResult:
    """Retract the story from every channel that has it: a new version with pubstatus canceled.

    Retracting an already retracted story creates no new work.
    """
    latest = await engine.store.get_story(story_id)
    if latest.story.pubstatus == "canceled":
        return await engine.accept(latest.story)
    data = latest.story.to_dict()
    data.update(version=latest.version + 1, pubstatus="canceled")
    return await engine.accept(Story.from_dict(data))


# --- JSON views (API answers and CLI --json) ---------------------------------------------------------------------


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def _masked(text: str | None) -> str | None:
    """Platform error text can echo what we sent (a token, a signature): never hand it out unmasked."""
    return None if text is None else redact(text)


def _masked_json(value: Any) -> Any:
    """A platform's answer kept as a receipt is platform text too: a receiver that echoes the request in its 2xx
    (or a push id starting with the app key) would otherwise hand our credentials out with the receipt."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _masked_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_masked_json(item) for item in value]
    return value


def delivery_json(d: DeliveryRecord, *, payload: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": d.id,
        "story_id": d.story_id,
        "version": d.version,
        "channel": d.channel,
        "action": d.action.value,
        "state": d.state.value,
        "attempts": d.attempts,
        "last_error": _masked(d.last_error),
        "error_class": d.last_error_class,
        "platform_code": d.last_platform_code,
        "note": _masked(d.note),
        "due_at": iso(d.due_at) if d.state in (State.QUEUED, State.RETRY_WAIT) else None,
        "needs_reconcile": d.reconcile,
        "receipt": _masked_json(d.receipt.to_json()) if d.receipt else None,
        "created_at": iso(d.created_at),
        "updated_at": iso(d.updated_at),
    }
    if payload:
        out["payload"] = d.payload.to_json() if d.payload else None
    return out


def attempt_json(a: AttemptRecord) -> dict[str, Any]:
    return {
        "number": a.number,
        "worker": a.worker,
        "started_at": iso(a.started_at),
        "finished_at": iso(a.finished_at),
        "outcome": a.outcome,
        "error_class": a.error_class,
        "message": _masked(a.message),
        "platform_code": a.platform_code,
        "duration_ms": None if a.duration_ms is None else round(a.duration_ms, 1),
    }


def channel_state_json(name: str, state: ChannelState | None, *, now: float) -> dict[str, Any]:
    paused = state is not None and state.paused_at(now)
    return {
        "channel": name,
        "paused": paused,
        "paused_until": iso(state.paused_until) if paused and state else None,
        "reason": state.reason if paused and state else None,
    }


async def story_status(store: Store, story_id: str) -> dict[str, Any]:
    """The story (newest version), and per channel its deliveries with receipts and attempt history."""
    record: StoryRecord = await store.get_story(story_id)
    deliveries = await store.list_deliveries(DeliveryFilter(story_id=story_id))
    channels: dict[str, list[dict[str, Any]]] = {}
    for d in deliveries:
        item = delivery_json(d, payload=True)
        item["attempt_history"] = [attempt_json(a) for a in await store.attempts(d.id)]
        channels.setdefault(d.channel, []).append(item)
    return {
        "story": record.story.to_dict(),
        "version": record.version,
        "content_hash": record.content_hash,
        "received_at": iso(record.received_at),
        "channels": channels,
    }


# --- "it did land" -----------------------------------------------------------------------------------------------


def operator_receipt(given: str) -> Receipt:
    """What an operator typed to say an ``unknown`` post did land: an http(s) URL becomes the receipt's public
    link, anything else the platform's remote id. ValueError when it is empty or too long to be either."""
    value = given.strip()
    if not value:
        raise ValueError("enter the post's remote id or its public URL")
    if len(value) > 2000:
        raise ValueError("the remote id or URL is over 2000 characters")
    if re.match(r"^https?://\S+$", value, re.IGNORECASE):
        return Receipt(url=value, raw={"entered_by_operator": value})
    if any(ch.isspace() for ch in value):
        raise ValueError("a remote id has no spaces; a URL starts with http:// or https://")
    return Receipt(remote_id=value, raw={"entered_by_operator": value})


async def mark_landed(store: Store, delivery_id: int, given: str, *, now: float, who: str = "an operator") -> bool:
    """An operator confirms an ``unknown`` delivery reached the platform (they found the post): delivered with the
    id or URL they give, an attempt row recording it. False when the delivery is not ``unknown``; ValueError
    (from ``operator_receipt``) when ``given`` is neither an id nor a URL. Nothing is sent to the platform."""
    receipt = operator_receipt(given)
    return await store.mark_landed(delivery_id, receipt, now=now, note=f"marked as landed by {who}: {given.strip()}")
