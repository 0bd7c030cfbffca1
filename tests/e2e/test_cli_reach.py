"""`syndicate reach` as a real subprocess: a story's figures and the period's ranking as tables, JSON and CSV, over
a store holding what the schedule and an owned output wrote (written here through the store contract)."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from syndicate.delivery import ReachMetric, ReachReading, Receipt
from syndicate.store import open_store
from syndicate.store.base import Completion, SampleCompletion, SampleState, State
from tests.store.test_store_contract import plan_for
from tests.support import NOWHERE, make_story, run_cli, write_config

HOUR = 3600.0


async def seeded(tmp_path: Path) -> Path:
    """alpha read story-1 twice (an hour and six hours after it went out), beta counted two page reads of it;
    story-2 (another section) was read once on alpha."""
    config = write_config(tmp_path, NOWHERE)
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    await store.migrate()
    start = time.time() - 8 * HOUR
    try:
        for story_id, section in [("story-1", "时政"), ("story-2", "体育")]:
            await store.fan_out(make_story(id=story_id, section=section), plan_for("alpha", "beta"), now=start)
        claims = await store.claim("w1", now=start, lease_seconds=30, limits={"alpha": 4, "beta": 4})
        await store.complete(
            [
                Completion(
                    c.delivery.id,
                    c.attempt_id,
                    "w1",
                    State.DELIVERED,
                    "delivered",
                    start,
                    1.0,
                    receipt=Receipt(f"{c.delivery.channel}-{c.delivery.story_id}"),
                    reach_ages=(HOUR, 6 * HOUR) if c.delivery.channel == "alpha" else (),
                )
                for c in claims
            ]
        )
        readings = {("story-1", HOUR): 100, ("story-1", 6 * HOUR): 400, ("story-2", HOUR): 50}
        for age in (HOUR, 6 * HOUR):
            for claim in await store.claim_reach_samples("w1", now=start + age, lease_seconds=30, limits={"alpha": 4}):
                value = readings.get((claim.sample.story_id, age))
                state = SampleState.DONE if value is not None else SampleState.FAILED
                await store.complete_reach_sample(
                    SampleCompletion(
                        claim.sample.id,
                        "w1",
                        claim.sample.attempts,
                        state,
                        start + age,
                        state.value,
                        reading=ReachReading({ReachMetric.READS: value or 0, ReachMetric.SHARES: 3}),
                    )
                )
        for _ in range(2):
            assert await store.add_reach_count("story-1", "beta", ReachMetric.READS, now=time.time())
    finally:
        await store.close()
    return config


async def test_a_storys_reach_as_table_json_and_csv(tmp_path: Path) -> None:
    config = await seeded(tmp_path)
    table = await run_cli("--config", config, "reach", "story-1", cwd=tmp_path)
    assert table.code == 0, table.err
    assert "alpha" in table.out and "400" in table.out and "2/2" in table.out and "beta" in table.out
    result = await run_cli("--config", config, "reach", "story-1", "--json", cwd=tmp_path)
    assert result.code == 0, result.err
    body = json.loads(result.out)
    assert {ch["channel"]: ch["latest"] for ch in body["channels"]} == {
        "alpha": {"reads": 400, "shares": 3},
        "beta": {"reads": 2},
    }
    assert body["totals"] == {"reads": 402, "shares": 3} and body["section"] == "时政"
    assert [v for _, v in body["channels"][0]["series"]["reads"]] == [100, 400]
    result = await run_cli("--config", config, "reach", "story-1", "--csv", cwd=tmp_path)
    rows = list(csv.reader(io.StringIO(result.out)))
    assert rows[0] == ["story_id", "channel", "reads", "shares", "likes", "comments", "observed_at"]
    assert rows[1][:6] == ["story-1", "alpha", "400", "3", "", ""] and rows[2][:3] == ["story-1", "beta", "2"]


async def test_the_ranking_over_a_period_by_channel_and_section(tmp_path: Path) -> None:
    config = await seeded(tmp_path)
    result = await run_cli("--config", config, "reach", "--since", "7d", "--json", cwd=tmp_path)
    assert result.code == 0, result.err
    body = json.loads(result.out)
    assert [(s["story_id"], s["reach"]) for s in body["stories"]] == [("story-1", 402), ("story-2", 50)]
    assert body["by_section"]["体育"] == {"reads": 50, "shares": 3}
    # Since four hours ago only the six-hour reading and the page reads fall inside: 400 - 100 + 2.
    result = await run_cli("--config", config, "reach", "--since", "4h", "--json", cwd=tmp_path)
    assert [(s["story_id"], s["reach"]) for s in json.loads(result.out)["stories"]] == [("story-1", 302)]
    result = await run_cli("--config", config, "reach", "--section", "体育", "--csv", cwd=tmp_path)
    rows = list(csv.reader(io.StringIO(result.out)))
    assert [r[:5] for r in rows[1:]] == [["1", "story-2", "上海16区融媒体中心全部建成并挂牌", "体育", "alpha"]]
    table = await run_cli("--config", config, "reach", "--channel", "beta", cwd=tmp_path)
    assert table.code == 0 and "story-1" in table.out and "story-2" not in table.out


async def test_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    config = await seeded(tmp_path)
    both = await run_cli("--config", config, "reach", "--json", "--csv", cwd=tmp_path)
    assert both.code == 2 and "--json and --csv" in both.err
    nope = await run_cli("--config", config, "reach", "nope", cwd=tmp_path)
    assert nope.code == 1 and "no story 'nope'" in nope.err
    channel = await run_cli("--config", config, "reach", "--channel", "gamma", cwd=tmp_path)
    assert channel.code == 2 and "unknown channel 'gamma'" in channel.err
    since = await run_cli("--config", config, "reach", "--since", "soon", cwd=tmp_path)
    assert since.code == 2 and "--since" in since.err
