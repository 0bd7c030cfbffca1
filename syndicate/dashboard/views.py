"""What the dashboard pages show, as plain data built from the store and ``syndicate.operations``.

The handlers in ``__init__`` turn these into HTML; nothing here knows about HTTP, so the selection logic stays the
operator layer's (``plan_replay``/``requeue``) and the views are easy to test.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from syndicate.channel import readable_payload
from syndicate.logs import redact
from syndicate.operations import channel_state_json
from syndicate.sanitize import plain_text
from syndicate.store.base import PAUSED_INDEFINITELY, DeliveryFilter, DeliveryRecord, State, Store

from .i18n import translate

BOARD_STORIES = 30
HEALTH_WINDOW = 3600.0
HEALTH_BUCKET = 300.0
CHART_HEIGHT = 40

#: The colour class of each state (the CSS has one rule per class); the word comes from the i18n table.
STATE_CLASS = {
    State.QUEUED: "queued",
    State.IN_FLIGHT: "inflight",
    State.DELIVERED: "ok",
    State.RETRY_WAIT: "retry",
    State.FAILED: "bad",
    State.UNKNOWN: "unknown",
    State.CANCELED: "muted",
    State.SUPERSEDED: "muted",
    State.SKIPPED: "muted",
}


def hhmm(ts: float | None) -> str:
    """Local wall-clock time: what the person on duty compares with the clock on the wall."""
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M")


def stamp(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def state_word(state: State, lang: str) -> str:
    """The state's name without a time (queue depth, filters)."""
    if state is State.RETRY_WAIT:
        return translate(lang, "state_retry_plain")
    return translate(lang, f"state_{state.value}")


def web_link(url: str | None) -> str | None:
    """``url`` if it is an http(s) link, else None. A receipt's URL is the platform's answer, not ours: a
    ``javascript:`` one must never become a link on the board (the story's own URL is checked at intake)."""
    if url and re.match(r"https?://", url.strip(), re.IGNORECASE):
        return url
    return None


@dataclass(frozen=True)
class Cell:
    state: str
    css: str
    label: str
    url: str | None
    title: str
    delivery_id: int | None


def cell_for(d: DeliveryRecord | None, *, lang: str, now: float) -> Cell:
    """A board cell: the state as a colour and a word; delivered links to the post, retry says when."""
    if d is None:
        return Cell("none", "none", translate(lang, "state_none"), None, "", None)
    if d.state is State.RETRY_WAIT:
        label = translate(lang, "state_retry_wait", time=hhmm(d.due_at))
    elif d.state is State.QUEUED and d.due_at is not None and d.due_at > now + 60:
        label = translate(lang, "queued_until", time=hhmm(d.due_at))
    else:
        label = translate(lang, f"state_{d.state.value}")
    url = web_link(d.receipt.url) if d.state is State.DELIVERED and d.receipt else None
    title = f"#{d.id} v{d.version} {d.action.value}"
    if d.last_error:
        # Platform error text can echo what we sent (a token, a signature): masked, as in the API's answers.
        title += f" — {redact(d.last_error)}"
    return Cell(d.state.value, STATE_CLASS[d.state], label, url, title, d.id)


@dataclass(frozen=True)
class BoardRow:
    story_id: str
    headline: str
    version: int
    received: str
    cells: list[Cell]


async def board_rows(store: Store, channels: Sequence[str], *, lang: str, now: float) -> list[BoardRow]:
    """The newest stories, each with the latest delivery per channel."""
    rows = []
    for story_id in await store.recent_story_ids(BOARD_STORIES):
        record = await store.get_story(story_id)
        latest: dict[str, DeliveryRecord] = {}
        for d in await store.list_deliveries(DeliveryFilter(story_id=story_id)):
            latest[d.channel] = d  # id order: the last one wins
        rows.append(
            BoardRow(
                story_id=story_id,
                headline=record.story.headline,
                version=record.version,
                received=stamp(record.received_at),
                cells=[cell_for(latest.get(ch), lang=lang, now=now) for ch in channels],
            )
        )
    return rows


@dataclass(frozen=True)
class AttemptView:
    number: int
    started: str
    finished: str
    outcome: str
    error_class: str
    platform_code: str
    message: str
    duration: str


@dataclass(frozen=True)
class DeliveryView:
    id: int
    version: int
    action: str
    cell: Cell
    payload_json: str
    warnings: list[str]
    text_length: int | None
    remote_id: str | None
    public_url: str | None
    note: str | None
    last_error: str | None
    error_class: str | None
    attempts: list[AttemptView]
    replayable: bool
    unknown: bool


def _attempt_view(item: dict[str, Any]) -> AttemptView:
    def local(iso_text: str | None) -> str:
        return stamp(dt.datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()) if iso_text else ""

    duration = item.get("duration_ms")
    return AttemptView(
        number=item["number"],
        started=local(item["started_at"]),
        finished=local(item["finished_at"]),
        outcome=item["outcome"] or "",
        error_class=item["error_class"] or "",
        platform_code=item["platform_code"] or "",
        message=item["message"] or "",
        duration="" if duration is None else f"{duration:.0f} ms",
    )


@dataclass(frozen=True)
class StoryView:
    story_id: str
    version: int
    headline: str
    summary: str
    body_text: str
    url: str | None
    received: str
    channels: dict[str, list[DeliveryView]] = field(default_factory=dict)


def story_view(
    status: dict[str, Any],
    *,
    lang: str,
    now: float,
    deliveries: dict[int, DeliveryRecord],
    kinds: Mapping[str, str],
) -> StoryView:
    """The story page from ``operations.story_status`` (the same view the API answers with); ``kinds`` names each
    configured channel's kind, whose payload model says how its payloads read (``readable_payload``)."""
    story = status["story"]
    channels: dict[str, list[DeliveryView]] = {}
    for channel, items in status["channels"].items():
        for item in items:
            record = deliveries[item["id"]]
            payload = item.get("payload") or {}
            receipt = item.get("receipt") or {}
            channels.setdefault(channel, []).append(
                DeliveryView(
                    id=item["id"],
                    version=item["version"],
                    action=item["action"],
                    cell=cell_for(record, lang=lang, now=now),
                    payload_json=json.dumps(
                        readable_payload(kinds.get(channel, ""), payload.get("data")), ensure_ascii=False, indent=2
                    ),
                    warnings=list(payload.get("warnings") or []),
                    text_length=payload.get("text_length"),
                    remote_id=receipt.get("remote_id"),
                    public_url=web_link(receipt.get("url")),
                    note=item["note"],
                    last_error=item["last_error"],
                    error_class=item["error_class"],
                    attempts=[_attempt_view(a) for a in item["attempt_history"]],
                    replayable=item["state"] in (State.FAILED.value, State.UNKNOWN.value),
                    unknown=item["state"] == State.UNKNOWN.value,
                )
            )
    return StoryView(
        story_id=story["id"],
        version=status["version"],
        headline=story.get("headline") or "",
        summary=story.get("summary") or "",
        body_text=plain_text(story.get("body_html") or ""),
        url=story.get("url"),
        received=stamp(dt.datetime.fromisoformat(status["received_at"].replace("Z", "+00:00")).timestamp()),
        channels=channels,
    )


@dataclass(frozen=True)
class FailureRow:
    id: int
    story_id: str
    version: int
    channel: str
    action: str
    cell: Cell
    error_class: str
    platform_code: str
    message: str
    updated: str
    unknown: bool


def failure_row(d: DeliveryRecord, *, lang: str, now: float) -> FailureRow:
    return FailureRow(
        id=d.id,
        story_id=d.story_id,
        version=d.version,
        channel=d.channel,
        action=d.action.value,
        cell=cell_for(d, lang=lang, now=now),
        error_class=d.last_error_class or "",
        platform_code=d.last_platform_code or "",
        message=redact(d.last_error or d.note or ""),  # masked, as in the API's answers
        updated=stamp(d.updated_at),
        unknown=d.state is State.UNKNOWN,
    )


@dataclass(frozen=True)
class Bar:
    x: int
    y: int
    height: int
    css: str
    title: str


@dataclass(frozen=True)
class ChannelHealth:
    name: str
    kind: str
    enabled: bool
    paused: bool
    paused_text: str
    reason: str | None
    depth: list[tuple[str, str, int]]
    attempts: int
    success_rate: str
    mean_latency: str
    bars: list[Bar]


async def channel_health(
    store: Store, channels: dict[str, tuple[str, bool]], *, lang: str, now: float
) -> list[ChannelHealth]:
    """Per configured channel (name -> (kind, enabled)): pause, queue depth, success and latency last hour."""
    states = await store.channel_states()
    depth = await store.queue_depth()
    since = now - HEALTH_WINDOW
    buckets = await store.attempt_buckets(since=since, bucket_seconds=HEALTH_BUCKET)
    slots = int(HEALTH_WINDOW // HEALTH_BUCKET) + 1
    out = []
    for name, (kind, enabled) in channels.items():
        pause = channel_state_json(name, states.get(name), now=now)
        state = states.get(name)
        if not pause["paused"] or state is None:
            paused_text = ""
        elif state.paused_until is not None and state.paused_until >= PAUSED_INDEFINITELY:
            paused_text = translate(lang, "ch_paused_forever")
        else:
            paused_text = translate(lang, "ch_paused_until", time=stamp(state.paused_until))
        mine = [b for b in buckets if b.channel == name]
        total = sum(b.attempts for b in mine)
        succeeded = sum(b.succeeded for b in mine)
        timed = [(b.mean_ms, b.attempts) for b in mine if b.mean_ms is not None]
        weight = sum(n for _, n in timed)
        mean = sum(m * n for m, n in timed) / weight if weight else None
        bars = []
        for b in mine:
            slot = min(round((b.start - since) / HEALTH_BUCKET), slots - 1)
            rate = b.succeeded / b.attempts if b.attempts else 0.0
            height = max(2, round(rate * CHART_HEIGHT))
            css = "ok" if rate >= 0.95 else ("retry" if rate >= 0.5 else "bad")
            mean_text = "" if b.mean_ms is None else f", {b.mean_ms:.0f} ms"
            bars.append(
                Bar(
                    x=slot * 10,
                    y=CHART_HEIGHT - height,
                    height=height,
                    css=css,
                    title=f"{hhmm(b.start)}: {b.succeeded}/{b.attempts}{mean_text}",
                )
            )
        out.append(
            ChannelHealth(
                name=name,
                kind=kind,
                enabled=enabled,
                paused=bool(pause["paused"]),
                paused_text=paused_text,
                reason=pause["reason"],
                depth=[(STATE_CLASS[s], state_word(s, lang), depth[(name, s)]) for s in State if depth.get((name, s))],
                attempts=total,
                success_rate=f"{succeeded / total:.0%}" if total else "—",
                mean_latency="—" if mean is None else f"{mean:.0f} ms",
                bars=bars,
            )
        )
    return out
