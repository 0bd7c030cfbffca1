"""Operator commands of the `syndicate` script (failed, replay, retract, preview, channels, db, publish --url), run as
a real subprocess against the in-process sandbox, like tests/e2e/test_cli.py (whose helpers this reuses).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from syndicate.delivery import idempotency_key
from syndicate.sandbox import RunningSandbox
from syndicate.store.base import State
from syndicate.story import Story
from tests.e2e.test_cli import Cli, assert_one_line_error, expected_keys, make_cli, received_keys
from tests.support import CHANNELS, EXAMPLES, example_stories, run_cli, write_config
from tests.support.serve_process import API_TOKEN, running_serve

HOOK_SECRET = "hook-secret-for-tests-0123456789"
SERVER_TABLE = f'\n[server]\nhook_secret = "{HOOK_SECRET}"\n'
BAD_DOC = {"id": "bad-1", "images": [{"href": "ftp://example.com/x.png"}]}  # no headline, and a bad image URL


def by_channel(rows: list[dict[str, Any]], channel: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["channel"] == channel]


def ids(rows: list[dict[str, Any]]) -> set[int]:
    return {r["id"] for r in rows}


async def json_out(cli: Cli, *args: str) -> Any:
    result = await cli(*args, "--json")
    assert result.code == 0, (args, result.out, result.err)
    return json.loads(result.out)


def jsonl(docs: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(d, ensure_ascii=False) for d in docs)


# ------------------------------------------------------------------------------------------------------- help


async def test_help_for_the_operator_commands(tmp_path: Path) -> None:
    cases = {
        (): ["failed", "replay", "retract", "preview", "channels", "db"],
        ("failed",): ["--channel", "--since", "--state", "--json"],
        ("replay",): ["IDS", "--channel", "--story", "--since", "--until", "--error-class", "--dry-run", "--yes"],
        ("retract",): ["STORY_ID", "--json"],
        ("preview",): ["FILE", "--channel", "--action", "--json"],
        ("channels",): ["--check", "--json"],
        ("db", "migrate"): ["schema version"],
        ("db", "stats"): ["--json"],
        ("publish",): ["--url", "hook_secret"],
    }
    results = await asyncio.gather(*(run_cli(*sub, "--help", cwd=tmp_path) for sub in cases))
    for (sub, fragments), result in zip(cases.items(), results, strict=True):
        assert result.code == 0, (sub, result.err)
        for fragment in fragments:
            assert fragment in result.out, (sub, fragment, result.out)


# ------------------------------------------------------------------------------------------- failed and replay


async def test_failed_lists_the_failures_and_replay_by_channel_redelivers_them(
    tmp_path: Path, sandbox: RunningSandbox
) -> None:
    cli = make_cli(tmp_path, sandbox.url)
    stories = example_stories()
    sandbox.sandbox.set_faults("webhook", [{"fault": "status:400", "name": "beta"}])
    assert (await cli("publish", *EXAMPLES)).code == 0
    assert (await cli("work", "--until-idle")).code == 0
    before = await cli.deliveries()
    beta = by_channel(before, "beta")
    assert {r["state"] for r in beta} == {"failed"} and {r["state"] for r in by_channel(before, "alpha")} == {
        "delivered"
    }

    listed, table, on_alpha, recent, no_yes, dry = await asyncio.gather(
        json_out(cli, "failed"),
        cli("failed"),
        json_out(cli, "failed", "--channel", "alpha"),
        json_out(cli, "failed", "--channel", "alpha,beta", "--since", "1h"),
        # Without --yes on a non-terminal stdin: refused before anything happens.
        cli("replay", "--channel", "beta"),
        # --dry-run shows and changes nothing.
        cli("replay", "--channel", "beta", "--dry-run"),
    )
    assert ids(listed["deliveries"]) == ids(beta)
    for row in listed["deliveries"]:
        assert (row["state"], row["error_class"], row["platform_code"]) == ("failed", "Permanent", "400"), row
        assert "HTTP 400" in row["last_error"] and "HTTP 400" in row["note"], row
    assert table.code == 0, table.err
    for fragment in ("Permanent", "400", "HTTP 400", *(s.id for s in stories)):
        assert fragment in table.out, (fragment, table.out)
    assert "alpha" not in table.out
    assert on_alpha["deliveries"] == []
    assert ids(recent["deliveries"]) == ids(beta)

    assert_one_line_error(no_yes, 2, "--yes")
    assert dry.code == 0, dry.err
    assert f"would re-queue {len(beta)} deliveries on channels beta ({len(beta)})" in dry.out
    assert all(s.id in dry.out for s in stories)
    assert await cli.deliveries() == before

    sandbox.sandbox.clear_faults()
    replayed = await cli("replay", "--channel", "beta", "--yes")
    assert replayed.code == 0, replayed.err
    assert f"re-queued {len(beta)} deliveries on channels beta ({len(beta)})" in replayed.out
    assert "syndicate work" in replayed.out
    after = {r["id"]: r for r in await cli.deliveries()}
    for row in beta:
        assert (after[row["id"]]["state"], after[row["id"]]["attempts"]) == ("queued", 1)  # history kept
    assert (await json_out(cli, "failed"))["deliveries"] == []

    assert (await cli("work", "--until-idle")).code == 0
    assert {r["state"] for r in await cli.deliveries()} == {"delivered"}
    assert received_keys(sandbox) == Counter(dict.fromkeys(expected_keys(stories), 1))

    # A delivered one is refused without --force (exit 1, nothing changes), replayed with it.
    target = by_channel(before, "alpha")[0]
    refused = await cli("replay", str(target["id"]), "--yes")
    assert_one_line_error(refused, 1, "refused", "already delivered")
    assert "already delivered" in refused.out
    missing = await cli("replay", "99999", "--yes")
    assert_one_line_error(missing, 1, "no delivery with id 99999")
    assert {r["state"] for r in await cli.deliveries()} == {"delivered"}
    forced = await json_out(cli, "replay", str(target["id"]), "--yes", "--force")
    assert forced["requeued"] == [target["id"]] and forced["refused"] == [] and forced["missing_ids"] == []
    assert (await cli("work", "--until-idle")).code == 0
    key = idempotency_key(target["story_id"], target["version"], "alpha", "publish")
    assert received_keys(sandbox)[key] == 2


async def test_replay_by_time_range_story_and_error_class(tmp_path: Path, sandbox: RunningSandbox) -> None:
    cli = make_cli(tmp_path, sandbox.url, retry=[0])
    sandbox.sandbox.set_faults("webhook", [{"fault": "status:400"}])

    async def publish_and_fail(docs: list[dict[str, Any]]) -> None:
        assert (await cli("publish", "-", stdin=jsonl(docs))).code == 0
        assert (await cli("work", "--until-idle")).code == 0

    await publish_and_fail([{"id": "early", "headline": "Early"}])
    t1 = time.time()
    await asyncio.sleep(0.05)
    await publish_and_fail([{"id": "late", "headline": "Late"}])
    t2 = time.time()
    await asyncio.sleep(0.05)
    bulk = [{"id": f"bulk-{i}", "headline": f"Bulk {i}"} for i in range(30)]
    await publish_and_fail(bulk)
    rows = await cli.deliveries()
    assert {r["state"] for r in rows} == {"failed"}
    early = ids([r for r in rows if r["story_id"] == "early"])
    late = ids([r for r in rows if r["story_id"] == "late"])

    dry, by_story, by_class = await asyncio.gather(
        json_out(cli, "replay", "--until", str(t1), "--dry-run"),
        json_out(cli, "replay", "--story", "late", "--error-class", "permanent", "--dry-run"),
        json_out(cli, "replay", "--error-class", "Retryable", "--dry-run"),
    )
    assert ids(dry["selected"]) == early and dry["requeued"] == [] and dry["dry_run"] is True
    assert ids(by_story["selected"]) == late
    assert by_class["selected"] == []
    assert {r["state"] for r in await cli.deliveries()} == {"failed"}

    window = await json_out(cli, "replay", "--since", str(t1), "--until", str(t2), "--yes")
    assert set(window["requeued"]) == late
    states = {r["id"]: r["state"] for r in await cli.deliveries()}
    assert {states[i] for i in late} == {"queued"} and {states[i] for i in early} == {"failed"}

    # A large batch (re-queued in several transactions, with a progress bar on a terminal).
    sandbox.sandbox.clear_faults()
    big = await cli("replay", "--since", str(t2), "--yes")
    assert big.code == 0, big.err
    assert f"re-queued {2 * len(bulk)} deliveries on channels alpha ({len(bulk)}), beta ({len(bulk)})" in big.out
    nothing = await cli("replay", "--since", str(t2), "--yes")
    assert nothing.code == 0 and "nothing to replay" in nothing.out, (nothing.out, nothing.err)

    assert (await cli("work", "--until-idle")).code == 0
    final = {r["id"]: r["state"] for r in await cli.deliveries()}
    assert {final[i] for i in early} == {"failed"}
    assert {s for i, s in final.items() if i not in early} == {"delivered"}
    expected = {idempotency_key(s, 1, ch, "publish") for s in ["late"] + [d["id"] for d in bulk] for ch in CHANNELS}
    assert received_keys(sandbox) == Counter(dict.fromkeys(expected, 1))


async def test_operator_command_usage_errors(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    results = await asyncio.gather(
        cli("failed", "--channel", "gamma"),
        cli("replay", "--since", "yesterday-ish", "--yes"),
        cli("replay", "--state", "broken", "--dry-run"),
        cli("failed", "--state", "failed,nope"),
    )
    assert_one_line_error(results[0], 2, "unknown channel 'gamma'", "alpha, beta")
    assert_one_line_error(results[1], 2, "--since", "yesterday-ish", "2h")
    assert_one_line_error(results[2], 2, "--state", "broken", "failed")
    assert_one_line_error(results[3], 2, "--state", "nope")


# ---------------------------------------------------------------------------------------------------- retract


async def test_retract_reaches_the_channels_and_an_unknown_story_fails(tmp_path: Path, sandbox: RunningSandbox) -> None:
    cli = make_cli(tmp_path, sandbox.url)
    story = example_stories()[0]
    sandbox.sandbox.set_faults("webhook", [{"fault": "status:400", "name": "beta"}])  # beta never gets it
    assert (await cli("publish", EXAMPLES[0])).code == 0
    assert (await cli("work", "--until-idle")).code == 0
    sandbox.sandbox.clear_faults()

    result = await cli("retract", story.id)
    assert result.code == 0, result.err
    assert f"retracting {story.id}: version {story.version + 1}" in result.out
    assert "skipped" in result.out and "syndicate work" in result.out

    again = await json_out(cli, "retract", story.id)  # already retracted: no new work
    assert (again["story_id"], again["version"], again["new"]) == (story.id, story.version + 1, False)
    per_channel = {d["channel"]: d for d in again["deliveries"]}
    assert (per_channel["alpha"]["action"], per_channel["alpha"]["state"]) == ("retract", "queued")
    assert (per_channel["beta"]["action"], per_channel["beta"]["state"]) == ("retract", "skipped")
    assert "nothing to retract" in per_channel["beta"]["note"]

    assert (await cli("work", "--until-idle")).code == 0
    retracts = [r for r in sandbox.sandbox.received("webhook") if r.body["event"] == "retract"]
    assert [(r.receiver, r.body["story"]["id"]) for r in retracts] == [("alpha", story.id)]
    assert retracts[0].idempotency_key == idempotency_key(story.id, story.version + 1, "alpha", "retract")

    unknown = await cli("retract", "no-such-story")
    assert_one_line_error(unknown, 1, "no-such-story")


# ---------------------------------------------------------------------------------------------------- preview


async def test_preview_prints_the_payload_length_and_field_errors(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    story = example_stories()[0]
    (tmp_path / "bad.json").write_text(json.dumps(BAD_DOC), encoding="utf-8")

    text, as_json, bad, unknown = await asyncio.gather(
        cli("preview", EXAMPLES[0], "--channel", "alpha"),
        cli("preview", EXAMPLES[2], "--channel", "beta", "--action", "retract", "--json"),
        cli("preview", "bad.json", "--channel", "alpha"),
        cli("preview", EXAMPLES[0], "--channel", "gamma"),
    )

    assert text.code == 0, text.err
    lines = text.out.splitlines()
    start, end = lines.index("{"), lines.index("}")
    payload = json.loads("\n".join(lines[start : end + 1]))
    assert payload == {"event": "publish", "story": json.loads(json.dumps(story.to_dict()))}
    assert story.id in lines[0] and "alpha" in lines[0] and "publish" in lines[0]
    assert "length: no text limit" in text.out and "warnings: none" in text.out

    assert as_json.code == 0, as_json.err
    (view,) = json.loads(as_json.out)["previews"]
    ninjs_story = example_stories()[2]
    assert (view["ok"], view["story_id"], view["channel"], view["action"]) == (True, ninjs_story.id, "beta", "retract")
    assert view["payload"] == {"event": "retract", "story": json.loads(json.dumps(ninjs_story.to_dict()))}
    assert (view["text_length"], view["warnings"]) == (None, [])

    assert bad.code == 1, (bad.out, bad.err)
    assert "Traceback" not in bad.err and "{" not in bad.out
    assert any("bad.json: headline: field required" in line for line in bad.err_lines), bad.err
    assert any("bad.json: images[0].href: must be an http(s) URL" in line for line in bad.err_lines), bad.err

    assert_one_line_error(unknown, 2, "unknown channel 'gamma'", "alpha, beta")
    assert not (tmp_path / "s.db").exists()  # preview never touches the store


# --------------------------------------------------------------------------------------------------- channels


async def test_channels_lists_and_checks(tmp_path: Path, sandbox: RunningSandbox) -> None:
    cli = make_cli(tmp_path, sandbox.url)
    assert (await cli("publish", EXAMPLES[0])).code == 0
    closed = Cli(write_config(tmp_path, channels=("gamma",), name="closed.toml"), tmp_path)  # NOWHERE: port 9

    listing, table, checked, failing, failing_json = await asyncio.gather(
        json_out(cli, "channels"),
        cli("channels"),
        cli("channels", "--check"),
        closed("channels", "--check"),
        closed("channels", "--check", "--json"),
    )

    views = {v["channel"]: v for v in listing["channels"]}
    assert list(views) == list(CHANNELS)
    for view in views.values():
        assert (view["kind"], view["enabled"], view["concurrency"], view["timeout"]) == ("webhook", True, 4, 2.0)
        assert view["retry"] == [0, 0.1, 0.1]
        assert (view["paused"], view["paused_until"], view["queue"]) == (False, None, {"queued": 1})
        assert "check" not in view
    assert table.code == 0, table.err
    for fragment in ("alpha", "beta", "webhook", "3 attempts: 0s, 100ms, 100ms", "queued 1"):
        assert fragment in table.out, (fragment, table.out)

    assert checked.code == 0, (checked.out, checked.err)
    assert checked.out.count("reachable") == 2

    assert_one_line_error(failing, 1, "channel check failed: gamma")
    assert "failing" in failing.out and "Retryable" in failing.out
    assert failing_json.code == 1
    others = {v["channel"]: v for v in json.loads(failing_json.out)["channels"]}
    assert list(others) == ["gamma", *CHANNELS]  # the shared store still has alpha and beta deliveries
    assert [others[name]["configured"] for name in CHANNELS] == [False, False]
    assert [others[name]["queue"] for name in CHANNELS] == [{"queued": 1}] * 2
    gamma = others["gamma"]
    assert gamma["check"]["ok"] is False and gamma["check"]["error_class"] == "Retryable"
    assert "127.0.0.1:9" in gamma["check"]["detail"]


# --------------------------------------------------------------------------------------------------------- db


async def test_db_migrate_and_stats(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    first = await cli("db", "migrate")
    assert first.code == 0, first.err
    assert "schema version 0 -> " in first.out
    again = await json_out(cli, "db", "migrate")
    assert again["before"] == again["after"] >= 1 and again["applied"] == 0
    assert "up to date" in (await cli("db", "migrate")).out

    empty = await json_out(cli, "db", "stats")
    assert set(empty) == {
        "schema_version",
        "stories",
        "story_versions",
        "deliveries",
        "deliveries_by_state",
        "attempts",
        "oldest_pending_due",
    }
    assert empty["deliveries_by_state"] == {s.value: 0 for s in State}
    assert (empty["stories"], empty["deliveries"], empty["oldest_pending_due"]) == (0, 0, None)

    assert (await cli("publish", *EXAMPLES)).code == 0
    stats = await json_out(cli, "db", "stats")
    n = len(EXAMPLES)
    assert (stats["stories"], stats["story_versions"], stats["deliveries"], stats["attempts"]) == (n, n, 2 * n, 0)
    assert stats["deliveries_by_state"]["queued"] == 2 * n
    due = dt.datetime.fromisoformat(stats["oldest_pending_due"].replace("Z", "+00:00"))
    assert abs(due.timestamp() - time.time()) < 60
    table = await cli("db", "stats")
    assert table.code == 0 and "stories" in table.out and "oldest pending due" in table.out


# ------------------------------------------------------------------------------------------------ publish --url


async def test_publish_url_posts_signed_documents_to_the_server(tmp_path: Path) -> None:
    cli = make_cli(tmp_path, extra=SERVER_TABLE)
    stories = example_stories()
    (tmp_path / "bad.json").write_text(json.dumps(BAD_DOC), encoding="utf-8")
    changed = {**json.loads(EXAMPLES[0].read_text(encoding="utf-8")), "headline": "Changed without a new version"}
    (tmp_path / "conflict.json").write_text(json.dumps(changed, ensure_ascii=False), encoding="utf-8")
    wrong = Cli(write_config(tmp_path, name="wrong.toml", extra=SERVER_TABLE.replace("tests-", "other-")), tmp_path)
    no_secret = Cli(write_config(tmp_path, name="nosecret.toml"), tmp_path)

    server_config = write_config(
        tmp_path, name="server.toml", extra=SERVER_TABLE + f'api_token = "{API_TOKEN}"\n'
    ).read_text(encoding="utf-8")
    (tmp_path / "server.toml").write_text(server_config.replace("/s.db", "/server.db"), encoding="utf-8")
    async with running_serve(tmp_path / "server.toml", tmp_path, "--no-workers") as server:
        first = await cli("publish", "--url", server.url, *EXAMPLES)
        assert first.code == 0, (first.out, first.err)
        ok_lines = [line for line in first.out.splitlines() if line.startswith("ok")]
        assert len(ok_lines) == len(EXAMPLES)
        for path, story, line in zip(EXAMPLES, stories, ok_lines, strict=True):
            assert path.name in line and story.id in line and "queued" in line and "alpha:publish" in line, line
        # What the server stored is exactly what the files say (ninjs was announced and read as ninjs).
        for story in stories:
            status, body = await server.api("GET", f"/v1/stories/{story.id}")
            assert status == 200 and Story.from_dict(body["story"]).content_hash == story.content_hash

        # The full endpoint URL works too; the same file twice in one run is signed anew each time.
        again = await cli("publish", "--url", f"{server.url}/v1/stories/", EXAMPLES[0], EXAMPLES[0], "--json")
        assert again.code == 0, again.err
        results = json.loads(again.out)["results"]
        assert [(r["ok"], r["story_id"], r["new"]) for r in results] == [(True, stories[0].id, False)] * 2
        assert {d["channel"] for d in results[0]["deliveries"]} == set(CHANNELS)

        mixed = await cli("publish", "--url", server.url, "bad.json", "conflict.json", EXAMPLES[1])
        assert mixed.code == 1, (mixed.out, mixed.err)
        assert "Traceback" not in mixed.err
        assert len(mixed.err_lines) == 3, mixed.err
        assert any("bad.json: headline: field required" in line for line in mixed.err_lines)
        assert any("bad.json: images[0].href: must be an http(s) URL" in line for line in mixed.err_lines)
        assert any("conflict.json: " in line and "different content" in line for line in mixed.err_lines)
        assert "1 accepted, 2 rejected" in mixed.out

        rejected = await wrong("publish", "--url", server.url, EXAMPLES[1])
        assert rejected.code == 1
        assert len(rejected.err_lines) == 1 and "HTTP 401" in rejected.err and "hook_secret" in rejected.err

    unreachable = await cli("publish", "--url", "http://127.0.0.1:9", EXAMPLES[0])
    assert_one_line_error(unreachable, 1, "http://127.0.0.1:9/v1/stories")
    missing = await no_secret("publish", "--url", "http://127.0.0.1:9", EXAMPLES[0])
    assert_one_line_error(missing, 2, "[server] hook_secret")
    bad_url = await cli("publish", "--url", "127.0.0.1:8080", EXAMPLES[0])
    assert_one_line_error(bad_url, 2, "--url")
    assert not (tmp_path / "s.db").exists()  # --url never touches the local store


async def test_pause_and_resume_a_channel(tmp_path: Path, sandbox: RunningSandbox) -> None:
    cli = make_cli(tmp_path, sandbox.url)
    paused = await cli("pause", "alpha", "--for", "2h", "--reason", "desk says wait", "--json")
    assert paused.code == 0, paused.err
    state = json.loads(paused.out)
    assert state["paused"] is True and state["reason"] == "desk says wait" and state["paused_until"]
    assert (await cli("publish", EXAMPLES[0])).code == 0
    assert (await cli("work", "--until-idle")).code == 0
    by_state = {(d["channel"], d["state"]) for d in await cli.deliveries()}
    assert by_state == {("alpha", "queued"), ("beta", "delivered")}  # nothing went out on the paused channel
    resumed = await cli("resume", "alpha")
    assert resumed.code == 0 and "resumed" in resumed.out
    assert (await cli("work", "--until-idle")).code == 0
    assert {d["state"] for d in await cli.deliveries()} == {"delivered"}
    assert_one_line_error(await cli("pause", "nope"), 2, "unknown channel 'nope'")
    assert_one_line_error(await cli("pause", "alpha", "--for", "soon"), 2, "--for")


async def test_landed_marks_an_unknown_delivery_delivered(tmp_path: Path) -> None:
    from syndicate.store import open_store
    from syndicate.store.base import Completion

    cli = make_cli(tmp_path)
    assert (await cli("publish", EXAMPLES[0])).code == 0
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    try:
        [claim, _] = await store.claim("w", now=time.time(), lease_seconds=30, limits={"alpha": 1, "beta": 1})
        await store.complete(
            [Completion(claim.delivery.id, claim.attempt_id, "w", State.UNKNOWN, "unknown", time.time(), 1.0)]
        )
    finally:
        await store.close()
    done = await cli("landed", str(claim.delivery.id), "https://weibo.example/p/123")
    assert done.code == 0, done.err
    [row] = [d for d in await cli.deliveries() if d["id"] == claim.delivery.id]
    assert row["state"] == "delivered" and row["receipt"]["url"] == "https://weibo.example/p/123"
    assert_one_line_error(await cli("landed", str(claim.delivery.id), "x"), 1, "not `unknown`")
    assert_one_line_error(await cli("landed", "999", "has spaces in it"), 2, "REMOTE_ID_OR_URL")
