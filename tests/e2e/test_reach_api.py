"""Reach through the HTTP service (aiohttp's test client on the real app and a real Engine on a fake clock): the
story and period endpoints with their bearer token, the CSV export, the page beacon and the metrics."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from syndicate.config import parse_config
from syndicate.engine import Engine
from syndicate.metrics import Metrics
from syndicate.server import BEACON_GIF, create_app
from syndicate.store import open_store
from syndicate.store.base import Store
from tests.support import FakeClock, make_story, scripted

API_TOKEN = "reach-token-0123456789abcdef"
HOUR = 3600.0
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@dataclass
class ReachApp:
    client: TestClient
    engine: Engine
    store: Store
    clock: FakeClock

    async def settle(self) -> None:
        await self.engine.run(until_idle=True)

    async def beacon(self, query: str) -> bytes:
        resp = await self.client.get(f"/reach/b.gif?{query}")
        assert resp.status == 200 and resp.content_type == "image/gif"
        assert resp.headers["Cache-Control"].startswith("no-store") and "Set-Cookie" not in resp.headers
        return await resp.read()


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[ReachApp]:
    raw = {
        "store": {"url": f"sqlite:///{tmp_path / 'reach.db'}"},
        "engine": {"lease_seconds": 5, "poll_interval": 0.05, "retry_jitter": 0},
        "server": {"api_token": API_TOKEN},
        "channels": {"social": scripted(kind="scripted-reach"), "web": scripted(counts_page_reads=True)},
    }
    settings = parse_config(raw, source="reach-test.toml", env={})
    clock = FakeClock()
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        metrics = Metrics()
        async with Engine(settings, store, clock=clock, metrics=metrics) as engine:
            server = TestServer(create_app(settings, engine, metrics=metrics, clock=clock.now))
            async with TestClient(server) as client:
                yield ReachApp(client, engine, store, clock)
    finally:
        await store.close()


async def published(app: ReachApp) -> None:
    """Two stories in two sections, delivered, read once on the social channel an hour later; story-1 has three page
    reads on the web channel and story-2 one."""
    await app.engine.accept(make_story(id="story-1", section="时政"))
    await app.engine.accept(make_story(id="story-2", section="体育", headline="=SUM(A1) 运动会"))
    await app.settle()
    app.clock.advance(HOUR)
    await app.settle()
    app.clock.advance(60)
    for query in ["s=story-1&c=web"] * 3 + ["s=story-2&c=web"]:
        assert await app.beacon(query) == BEACON_GIF


async def test_a_storys_reach_per_channel(app: ReachApp) -> None:
    await published(app)
    resp = await app.client.get("/v1/stories/story-1/reach", headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    channels = {ch["channel"]: ch for ch in body["channels"]}
    assert channels["social"]["latest"] == {"reads": 10, "likes": 1}
    assert channels["social"]["raw"] == {"views": 10, "hearts": 1}
    assert channels["social"]["samples"]["planned"] == 5 and channels["social"]["samples"]["done"] == 1
    assert channels["web"]["latest"] == {"reads": 3}
    assert body["totals"] == {"reads": 13, "likes": 1} and body["section"] == "时政"
    assert (await app.client.get("/v1/stories/story-1/reach")).status == 401
    assert (await app.client.get("/v1/stories/nope/reach", headers=AUTH)).status == 404


async def test_the_period_ranking_by_channel_and_section_and_as_csv(app: ReachApp) -> None:
    await published(app)
    resp = await app.client.get("/v1/reach?since=2h", headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert [(s["story_id"], s["reach"]) for s in body["stories"]] == [("story-1", 13), ("story-2", 11)]
    assert body["by_channel"] == {"social": {"reads": 20, "likes": 2}, "web": {"reads": 4}}
    assert body["by_section"] == {"体育": {"reads": 11, "likes": 1}, "时政": {"reads": 13, "likes": 1}}
    only_web = await (await app.client.get("/v1/reach?since=2h&channel=web", headers=AUTH)).json()
    assert [(s["story_id"], s["reach"]) for s in only_web["stories"]] == [("story-1", 3), ("story-2", 1)]
    sports = await (await app.client.get("/v1/reach?since=2h&section=体育", headers=AUTH)).json()
    assert [s["story_id"] for s in sports["stories"]] == ["story-2"]
    resp = await app.client.get("/v1/reach?since=2h&format=csv", headers=AUTH)
    assert resp.status == 200 and resp.content_type == "text/csv"
    rows = list(csv.reader(io.StringIO(await resp.text())))
    assert rows[0] == ["rank", "story_id", "headline", "section", "channel", "reads", "shares", "likes", "comments"]
    assert rows[1][:5] == ["1", "story-1", "上海16区融媒体中心全部建成并挂牌", "时政", "social"]
    assert ["2", "story-2", "'=SUM(A1) 运动会", "体育", "web", "1", "", "", ""] in rows  # no formula runs
    # A period that ends before the readings has none.
    assert (await (await app.client.get("/v1/reach?since=3h&until=2h", headers=AUTH)).json())["stories"] == []
    for query, field in [("channel=nope", "channel"), ("since=soon", "since"), ("since=1h&until=2h", "since")]:
        resp = await app.client.get(f"/v1/reach?{query}", headers=AUTH)
        assert resp.status == 400 and (await resp.json())["parameter"] == field, query
    assert (await app.client.get("/v1/reach")).status == 401


async def test_the_beacon_counts_known_live_stories_of_owned_outputs_only(app: ReachApp) -> None:
    await published(app)
    for query in [
        "s=never-published&c=web",  # no such story
        "s=story-1&c=nope",  # no such channel
        "s=story-1&c=social",  # that channel reads its reach from its platform
        f"s={'x' * 201}&c=web",  # longer than any id
        "c=web",
        "",
    ]:
        assert await app.beacon(query) == BEACON_GIF, query
    body = await (await app.client.get("/v1/stories/story-1/reach", headers=AUTH)).json()
    assert {ch["channel"]: ch["latest"] for ch in body["channels"]}["web"] == {"reads": 3}
    assert await app.store.story_reach("never-published") == (await app.store.story_reach("nothing-either"))


async def test_metrics_carry_channel_totals_and_no_story(app: ReachApp) -> None:
    await published(app)
    text = await (await app.client.get("/metrics")).text()
    assert 'syndicate_reach{channel="social",metric="reads"} 20.0' in text
    assert 'syndicate_reach{channel="web",metric="reads"} 4.0' in text
    assert 'syndicate_reach_samples_total{channel="social",outcome="done"} 2.0' in text
    assert "story-1" not in text and "story_id" not in text
