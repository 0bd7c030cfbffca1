"""The adapter contract, for every registered channel kind (``syndicate.channel.adapter_kinds``, never a list):
capabilities declared, render deterministic, the payload round-trips through its stored JSON form, a refused
connection is ``Retryable`` (for kinds that talk to a remote) and no secret reaches a payload or a log line.

Each kind is configured from config/channels.example.toml (``tests.support.example_channels``): its secrets set to
distinctive values, its endpoints on a port nothing listens on, its folders under tmp_path. A kind that file does
not document fails here, saying so."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import pytest

from adapters.reach_curve import set_standin_clock
from syndicate.channel import Adapter
from syndicate.config import Settings, parse_config
from syndicate.delivery import (
    Action,
    DeliveryError,
    Payload,
    Permanent,
    ReachMetric,
    Receipt,
    RenderError,
    Retryable,
    StoredPayload,
)
from syndicate.logs import configure_logging, reset_logging
from syndicate.sandbox import RunningSandbox, standins
from syndicate.store.base import State, dumps_json
from syndicate.story import Story
from tests.support import (
    CHANNELS_EXAMPLE,
    ENDPOINT_OPTIONS,
    accept_credentials,
    closed_port,
    ctx_for,
    example_channels,
    make_story,
    registered_kinds,
    run_engine,
    sample_stories,
    standin_channels,
)

KINDS = sorted(registered_kinds())


def adapters_of(kind: str, tmp_path: Path) -> tuple[list[Adapter], dict[str, str], Settings]:
    """Every channel of ``kind`` in the example, as adapters whose remote refuses connections; and the secrets."""
    example = example_channels(tmp_path, f"http://127.0.0.1:{closed_port()}")
    names = [name for name, table in example.tables.items() if table["kind"] == kind]
    assert names, f"channel kind {kind!r} is registered but {CHANNELS_EXAMPLE.name} documents no channel of it"
    raw = {
        "media": {"allow_private": True, "cache_dir": str(tmp_path / "media")},
        "channels": {name: example.tables[name] for name in names},
    }
    settings = parse_config(raw, source=str(CHANNELS_EXAMPLE), env=example.env)
    adapters = [settings.channels[name].create_adapter() for name in names]
    secrets = {k: v for k, v in example.secrets.items() if k.split(".", 1)[0] in names}
    return adapters, secrets, settings


def rendered(adapter: Adapter, story: Story, action: Action) -> Payload | str:
    """The payload, or the RenderError's message (a refusal must be as deterministic as a rendering)."""
    try:
        return adapter.render(story, action)
    except RenderError as exc:
        return f"RenderError: {exc}"


def unreachable_story() -> Story:
    """A story every kind renders whose cover lives where nothing answers."""
    cover = {"href": f"http://127.0.0.1:{closed_port()}/cover.png", "role": "cover"}
    return make_story(published_at="2019-09-18T18:30:00+08:00", images=[cover])


@pytest.fixture(scope="module")
def stories() -> list[Story]:
    return sample_stories()


def test_every_registered_kind_is_covered() -> None:
    """The parametrisation below is the registry itself: the installed entry points are all there."""
    from importlib.metadata import entry_points

    assert {ep.name for ep in entry_points(group="syndicate.adapters")} <= set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_capabilities_are_declared(kind: str, tmp_path: Path) -> None:
    cls = registered_kinds()[kind]
    assert cls.kind == kind
    assert isinstance(cls.idempotent, bool)
    overrides_lookup = cls.lookup is not Adapter.lookup
    adapters = adapters_of(kind, tmp_path)[0]
    for adapter in adapters:
        # Declared per class or per instance (an update policy may add or drop an action): each one declared is
        # implemented, not left to the base class's refusal.
        assert isinstance(adapter.actions, frozenset) and Action.PUBLISH in adapter.actions
        for action in adapter.actions - {Action.PUBLISH}:
            implemented = getattr(type(adapter), action.value) is not getattr(Adapter, action.value)
            assert implemented, f"{adapter.name} declares {action.value} without implementing it"
        assert isinstance(adapter.supports_lookup, bool)
        # Claiming lookup without implementing it would reconcile through the base class's refusal.
        assert not adapter.supports_lookup or overrides_lookup, f"{adapter.name}: supports_lookup without lookup()"
    if overrides_lookup:
        assert any(a.supports_lookup for a in adapters), (
            f"{kind} implements lookup() but no example channel of it declares supports_lookup"
        )


@pytest.mark.parametrize("kind", KINDS)
def test_the_payload_is_a_declared_model(kind: str, tmp_path: Path, stories: list[Story]) -> None:
    """Every channel types what it stores: a payload model, and every rendered payload an instance of it."""
    cls = registered_kinds()[kind]
    assert cls.payload_model is not None, f"{kind}: declare payload_model (a PayloadModel or a RootModel over some)"
    for adapter in adapters_of(kind, tmp_path)[0]:
        for story in stories:
            for action in sorted(adapter.actions, key=lambda a: a.value):
                payload = rendered(adapter, story, action)
                if isinstance(payload, Payload):
                    assert isinstance(payload.data, cls.payload_model), (adapter.name, story.id, action)


@pytest.mark.parametrize("kind", KINDS)
def test_render_is_deterministic_and_the_payload_round_trips(kind: str, tmp_path: Path, stories: list[Story]) -> None:
    adapters = adapters_of(kind, tmp_path)[0]
    rendered_any = False
    for adapter in adapters:
        for story in stories:
            for action in sorted(adapter.actions, key=lambda a: a.value):
                first = rendered(adapter, story, action)
                assert rendered(adapter, story, action) == first, (adapter.name, story.id, action)
                if isinstance(first, Payload):
                    rendered_any = True
                    text = dumps_json(first.to_json())  # exactly what the store keeps
                    stored = json.loads(text)
                    assert adapter.load_payload(Payload.from_json(stored)) == first, (adapter.name, story.id, action)
                    # A claim hands the adapter the stored text: parsed and validated in one pass, the same payload.
                    assert adapter.load_payload(StoredPayload(text)) == first, (adapter.name, story.id, action)
    assert rendered_any, f"no sample story renders on {kind}"


@pytest.mark.parametrize("kind", KINDS)
async def test_a_refused_connection_is_retryable(kind: str, tmp_path: Path) -> None:
    adapters = adapters_of(kind, tmp_path)[0]
    # A kind talks to a remote when its options name an endpoint; X is one that is no HttpAdapter (tweepy's
    # client has its own session), so the class alone would not say.
    if not ENDPOINT_OPTIONS & set(registered_kinds()[kind].options_model.model_fields):
        pytest.skip(f"{kind} talks to no remote (it writes files)")
    story = unreachable_story()
    for adapter in adapters:
        await adapter.start()
        try:
            with pytest.raises(Retryable):
                await adapter.publish(adapter.render(story, Action.PUBLISH), ctx_for(channel=adapter.name))
        finally:
            await adapter.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_no_secret_in_a_payload_or_a_log_line(kind: str, tmp_path: Path, stories: list[Story]) -> None:
    """Rendered payloads, the error of a refused delivery and every log line (through the logging `syndicate`
    configures, at DEBUG so the HTTP libraries' own records are there too) carry no secret of the channel."""
    adapters, secrets, settings = adapters_of(kind, tmp_path)
    seen: list[str] = []
    logs = io.StringIO()
    level = logging.getLogger().level
    configure_logging(settings, fmt="json", level=logging.DEBUG, stream=logs)
    try:
        for adapter in adapters:
            for story in stories:
                for action in adapter.actions:
                    payload = rendered(adapter, story, action)
                    seen.append(payload if isinstance(payload, str) else json.dumps(payload.to_json()))
            payload = rendered(adapter, unreachable_story(), Action.PUBLISH)
            assert isinstance(payload, Payload), payload
            await adapter.start()
            try:
                await adapter.publish(payload, ctx_for(channel=adapter.name))
            except DeliveryError as exc:
                seen.append(str(exc))  # what the engine stores and logs as the attempt's error
            finally:
                await adapter.close()
    finally:
        reset_logging()
        logging.getLogger().setLevel(level)
    seen.append(logs.getvalue())
    leaks = [f"{name} in {text[:160]!r}" for name, secret in secrets.items() for text in seen if secret in text]
    assert leaks == [], leaks


def reach_story(sandbox_url: str) -> Story:
    """A story every platform kind publishes to its stand-in: a cover (WeChat requires one) the sandbox serves and
    a link on the stand-ins' safe domain (Weibo's rule), a headline within WeChat's 32 characters."""
    cover = {"href": f"{sandbox_url}/media/story-amber-1200x675.png", "role": "cover"}
    return make_story(id="reach-1", url="https://news.example.cn/shanghai/reach-1.html", images=[cover])


@pytest.mark.parametrize("kind", KINDS)
async def test_reach_reads_common_metrics_only_as_non_negative_ints(
    kind: str, tmp_path: Path, sandbox: RunningSandbox
) -> None:
    """A kind with ``supports_reach`` (the adapter built from the example's channel says) reads its delivered post's
    figures from its stand-in three days on: only ReachMetric keys, non-negative ints, raw figures numbers, no
    secret in the reading. A kind without it keeps the default refusal (Permanent), never an empty reading."""
    example = standin_channels(tmp_path, sandbox.url)
    [name] = [n for n, table in example.tables.items() if table["kind"] == kind]
    table = {**example.tables[name], **({"retry": [0, 0.05, 0.05]} if kind in standins() else {})}
    raw = {
        "store": {"url": f"sqlite:///{tmp_path / 'reach.db'}"},
        "media": {"allow_private": True, "cache_dir": str(tmp_path / "media-cache")},
        "engine": {"poll_interval": 0.05, "retry_jitter": 0},
        "channels": {name: table},
    }
    settings = parse_config(raw, source="test.toml", env=example.env)
    later = time.time() + 3 * 86400
    adapter = settings.channels[name].create_adapter(clock=lambda: later)
    if not adapter.supports_reach:
        with pytest.raises(Permanent, match="reports no reach"):
            await adapter.read_reach(ctx_for(channel=name, receipt=Receipt(remote_id="1")))
        return
    accept_credentials(sandbox.sandbox, settings)
    run = await run_engine(settings, [reach_story(sandbox.url)])
    [delivery] = [d for d in run.deliveries if d.action is Action.PUBLISH]
    assert delivery.state is State.DELIVERED and delivery.receipt is not None, delivery.last_error
    set_standin_clock(sandbox.sandbox, lambda: later)
    await adapter.start()
    try:
        reading = await adapter.read_reach(ctx_for(channel=name, receipt=delivery.receipt))
    finally:
        await adapter.close()
    assert reading.metrics, f"{kind}'s stand-in reported no figure three days after publication"
    for metric, value in reading.metrics.items():
        assert isinstance(metric, ReachMetric), metric
        assert type(value) is int and value >= 0, (metric, value)
    for figure, value in reading.raw.items():
        assert isinstance(figure, str) and type(value) in (int, float) and value >= 0, (figure, value)
    shown = repr(reading)
    leaked = [where for where, secret in example.secrets.items() if secret in shown]
    assert not leaked, f"secrets of {leaked} in the reading"


def test_a_stored_payload_that_does_not_match_the_model_fails_naming_the_field(tmp_path: Path) -> None:
    adapter = adapters_of("webhook", tmp_path)[0][0]
    rendered_payload = adapter.render(sample_stories()[0], Action.PUBLISH)
    stored = rendered_payload.to_json()
    stored["data"]["event"] = "repost"  # written by a version of the channel that had such an event
    with pytest.raises(Permanent, match=r"event: Input should be 'publish', 'update' or 'retract'"):
        adapter.load_payload(StoredPayload(dumps_json(stored)))
