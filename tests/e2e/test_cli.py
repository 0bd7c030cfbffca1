"""The `syndicate` console script, run as a real subprocess against a config in tmp_path.

Channels are webhook receivers in the in-process sandbox (the `sandbox` fixture serves on this test's event loop,
so the subprocess is driven with asyncio and the loop keeps answering the receivers while the CLI runs).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syndicate.delivery import idempotency_key
from syndicate.sandbox import RunningSandbox
from syndicate.story import Story
from tests.support import CHANNELS, EXAMPLES, NOWHERE, SYNDICATE, Run, cli_env, example_stories, run_cli, write_config

DELIVERY_KEYS = {"id", "story_id", "version", "channel", "action", "state", "attempts", "last_error"}


@dataclass(frozen=True)
class Cli:
    """`syndicate --config <config> ...`, run in tmp_path."""

    config: Path
    cwd: Path

    async def __call__(self, *args: str | Path, stdin: str | None = None) -> Run:
        return await run_cli("--config", self.config, *args, cwd=self.cwd, stdin=stdin)

    async def deliveries(self, *args: str) -> list[dict[str, Any]]:
        result = await self("status", "--json", *args)
        assert result.code == 0, result.err
        return json.loads(result.out)["deliveries"]


def make_cli(tmp_path: Path, base_url: str = NOWHERE, **kw: Any) -> Cli:
    return Cli(write_config(tmp_path, base_url, **kw), tmp_path)


def expected_keys(stories: Sequence[Story], channels: Sequence[str] = CHANNELS) -> set[str]:
    return {idempotency_key(s.id, s.version, ch, "publish") for s in stories for ch in channels}


def received_keys(running: RunningSandbox) -> Counter[str | None]:
    return Counter(r.idempotency_key for r in running.sandbox.received("webhook"))


def delivery_keys(rows: Sequence[dict[str, Any]]) -> set[str]:
    return {idempotency_key(r["story_id"], r["version"], r["channel"], r["action"]) for r in rows}


def assert_one_line_error(result: Run, code: int, *fragments: str) -> None:
    assert result.code == code, (result.code, result.out, result.err)
    assert "Traceback" not in result.err
    assert len(result.err_lines) == 1, result.err
    line = result.err_lines[0]
    assert line.startswith("syndicate: error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)


# --------------------------------------------------------------------------------------------------- help


async def test_help_for_the_command_and_every_subcommand(tmp_path: Path) -> None:
    cases = {
        (): ["Usage: syndicate", "publish", "work", "status", "sandbox", "--config"],
        ("publish",): ["Usage: syndicate publish", "FILES", "JSON Lines", "stdin", "--json"],
        ("work",): ["Usage: syndicate work", "--until-idle", "--wait-for-retries", "SIGTERM"],
        ("status",): ["Usage: syndicate status", "STORY_ID", "--json", "--channel", "last error"],
        ("sandbox",): ["Usage: syndicate sandbox", "--port", "--host", "stand-ins"],
    }
    results = await asyncio.gather(*(run_cli(*sub, "--help", cwd=tmp_path) for sub in cases))
    for (sub, fragments), result in zip(cases.items(), results, strict=True):
        assert result.code == 0, (sub, result.err)
        assert result.err == ""
        for fragment in fragments:
            assert fragment in result.out, (sub, fragment, result.out)
    short = await run_cli("publish", "-h", cwd=tmp_path)
    assert short.code == 0 and "Usage: syndicate publish" in short.out


# ------------------------------------------------------------------------------------------------ publish


async def test_publish_examples_then_the_same_files_again_is_no_new_work(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    stories = example_stories()

    first = await cli("publish", *EXAMPLES)
    assert first.code == 0, first.err
    assert first.err == ""
    ok_lines = [line for line in first.out.splitlines() if line.startswith("ok")]
    assert len(ok_lines) == len(EXAMPLES)
    for path, story, line in zip(EXAMPLES, stories, ok_lines, strict=True):
        assert path.name in line and story.id in line and "queued" in line, line
        assert "alpha:publish" in line and "beta:publish" in line, line
    assert f"{len(EXAMPLES)} accepted, 0 rejected" in first.out
    before = await cli.deliveries()
    assert delivery_keys(before) == expected_keys(stories)

    again = await cli("publish", *EXAMPLES)
    assert again.code == 0, again.err
    ok_lines = [line for line in again.out.splitlines() if line.startswith("ok")]
    assert len(ok_lines) == len(EXAMPLES)
    for story, line in zip(stories, ok_lines, strict=True):
        assert story.id in line and "already accepted (no new work)" in line, line
    assert await cli.deliveries() == before


async def test_publish_a_mix_reports_each_bad_document_and_enqueues_the_good_ones(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    (tmp_path / "good.json").write_text(json.dumps({"id": "good-1", "headline": "Good"}), encoding="utf-8")
    (tmp_path / "malformed.json").write_text('{"id": "broken", "headline": "no closing brace"\n', encoding="utf-8")
    (tmp_path / "nohead.json").write_text(json.dumps({"id": "nohead-1", "summary": "no headline"}), encoding="utf-8")
    (tmp_path / "bad.jsonl").write_text(
        json.dumps({"id": "jl-good", "headline": "Line one"}) + "\n" + json.dumps({"id": "jl-bad", "summary": "x"}),
        encoding="utf-8",
    )
    stdin = "\n".join(
        json.dumps(doc)
        for doc in (
            {"id": "stdin-1", "headline": "From stdin"},
            {"id": "stdin-2", "headline": "Also from stdin"},
            {"id": "stdin-bad", "summary": "no headline either"},
        )
    )

    result = await cli("publish", "good.json", "malformed.json", "nohead.json", "bad.jsonl", "-", stdin=stdin)

    assert result.code == 1, (result.out, result.err)
    assert "Traceback" not in result.err
    bad = result.err_lines
    assert len(bad) == 4, result.err  # one line per bad document, nothing for the good ones
    patterns = [
        r"malformed\.json:\d+: .*malformed JSON",
        r"nohead\.json: headline: field required",
        r"bad\.jsonl:2: headline: field required",
        r"<stdin>:3: headline: field required",
    ]
    for pattern in patterns:
        assert sum(bool(re.search(pattern, line)) for line in bad) == 1, (pattern, bad)
    for good in ("good.json:", "bad.jsonl:1", "<stdin>:1", "<stdin>:2"):
        assert not any(good in line for line in bad), (good, bad)
    assert "4 accepted, 4 rejected" in result.out

    rows = await cli.deliveries()
    assert {r["story_id"] for r in rows} == {"good-1", "jl-good", "stdin-1", "stdin-2"}
    assert Counter(r["story_id"] for r in rows) == {sid: len(CHANNELS) for sid in {r["story_id"] for r in rows}}
    assert {r["state"] for r in rows} == {"queued"}


async def test_a_pretty_printed_document_with_one_syntax_error_is_one_error(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    (tmp_path / "pretty.json").write_text(
        '{\n  "id": "pretty-1",\n  "headline": "x"\n  "summary": "missing comma above"\n}\n', encoding="utf-8"
    )
    result = await cli("publish", "pretty.json")
    assert result.code == 1
    assert len(result.err_lines) == 1, result.err
    assert re.search(r"pretty\.json:4: malformed JSON", result.err_lines[0]), result.err
    assert "0 accepted, 1 rejected" in result.out


async def test_an_integer_literal_of_any_length_in_a_file_is_a_field_error_not_a_traceback(tmp_path: Path) -> None:
    """Python's int() refuses over 4,300 digits; the hook's parser already clamps them, the file reader did not."""
    cli = make_cli(tmp_path)
    (tmp_path / "huge.json").write_text('{"id": "huge-1", "headline": "x", "version": ' + "9" * 5000 + "}")
    result = await cli("publish", "huge.json")
    assert result.code == 1 and "Traceback" not in result.err, result.err
    assert "version" in result.err and "0 accepted, 1 rejected" in result.out


async def test_text_that_looks_like_markup_is_printed_verbatim(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    story_id = "wire-[/]-[bold]x"
    result = await cli("publish", "-", stdin=json.dumps({"id": story_id, "headline": "[/b] brackets"}))
    assert result.code == 0, result.err
    assert story_id in result.out
    table = await cli("status", story_id)
    assert table.code == 0, table.err
    assert story_id in table.out
    assert {r["story_id"] for r in await cli.deliveries(story_id)} == {story_id}


# ------------------------------------------------------------------------------------------------- status


async def test_status_json_shape_and_unknown_story(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    assert await cli.deliveries() == []
    assert (await cli("publish", *EXAMPLES)).code == 0
    stories = example_stories()

    raw = await cli("status", "--json")
    assert raw.code == 0, raw.err
    doc = json.loads(raw.out)
    assert list(doc) == ["deliveries"]
    rows = doc["deliveries"]
    assert len(rows) == len(stories) * len(CHANNELS)
    for row in rows:
        assert DELIVERY_KEYS <= set(row), row
        assert isinstance(row["id"], int) and isinstance(row["version"], int)
        assert row["channel"] in CHANNELS
        assert (row["action"], row["state"], row["attempts"], row["last_error"]) == ("publish", "queued", 0, None)
    assert len({r["id"] for r in rows}) == len(rows)

    one = stories[0].id
    assert {(r["story_id"], r["channel"]) for r in await cli.deliveries(one)} == {(one, ch) for ch in CHANNELS}
    assert {r["channel"] for r in await cli.deliveries("--channel", "beta")} == {"beta"}

    table = await run_cli("status", "--config", cli.config, cwd=tmp_path)  # --config on the subcommand works too
    assert table.code == 0, table.err
    for story in stories:
        assert story.id in table.out

    unknown = await cli("status", "no-such-story")
    assert_one_line_error(unknown, 1, "no-such-story")
    assert unknown.out == ""


# --------------------------------------------------------------------------------------------------- work


async def test_work_until_idle_delivers_everything_exactly_once(tmp_path: Path, sandbox: RunningSandbox) -> None:
    cli = make_cli(tmp_path, sandbox.url)
    stories = example_stories()
    assert (await cli("publish", *EXAMPLES)).code == 0

    result = await cli("work", "--until-idle")
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    rows = await cli.deliveries()
    assert {r["state"] for r in rows} == {"delivered"}
    assert received_keys(sandbox) == Counter(dict.fromkeys(expected_keys(stories), 1))

    # The same files again: nothing new to do, and a second worker run sends nothing.
    assert (await cli("publish", *EXAMPLES)).code == 0
    assert (await cli("work", "--until-idle")).code == 0
    assert received_keys(sandbox) == Counter(dict.fromkeys(expected_keys(stories), 1))
    assert await cli.deliveries() == rows


async def test_work_converges_on_a_flaky_receiver(tmp_path: Path, sandbox: RunningSandbox) -> None:
    # p = 0.7 per attempt, so some fault surely fires (0.3^6 that none does); a long, fast schedule so no delivery
    # plausibly exhausts it (0.7^30 per delivery).
    cli = make_cli(tmp_path, sandbox.url, retry=[0] + [0.05] * 29)
    sandbox.sandbox.set_faults("webhook", [{"fault": "status:503", "probability": 0.7}])
    stories = example_stories()
    assert (await cli("publish", *EXAMPLES)).code == 0

    result = await cli("work", "--until-idle", "--wait-for-retries", "10")
    assert result.code == 0, result.err

    rows = await cli.deliveries()
    assert {r["state"] for r in rows} == {"delivered"}, rows
    faults = sum(s.faults.get("status:503", 0) for s in sandbox.sandbox.stats("webhook").values())
    assert faults > 0  # the receiver really was flaky...
    assert sum(r["attempts"] for r in rows) == len(rows) + faults  # ...every 503 cost exactly one more attempt
    assert received_keys(sandbox) == Counter(dict.fromkeys(expected_keys(stories), 1))


async def test_sigterm_during_work_finishes_in_flight_and_loses_nothing(
    tmp_path: Path, sandbox: RunningSandbox
) -> None:
    # One delivery in flight per channel at a time, each taking 1.5 s: SIGTERM lands with work in flight and
    # more still queued behind it.
    cli = make_cli(tmp_path, sandbox.url, concurrency=1)
    stories = example_stories()
    assert (await cli("publish", *EXAMPLES)).code == 0
    sandbox.sandbox.set_faults("webhook", [{"fault": "slow:1500"}])

    proc = await asyncio.create_subprocess_exec(
        str(SYNDICATE),
        "--config",
        str(cli.config),
        "work",
        cwd=tmp_path,
        env=cli_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    communicate = asyncio.ensure_future(proc.communicate())
    try:
        deadline = time.monotonic() + 15
        while sum(s.in_flight for s in sandbox.sandbox.stats("webhook").values()) == 0:
            assert proc.returncode is None, "work exited before delivering anything"
            assert time.monotonic() < deadline, "no delivery reached the sandbox"
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _, err = await asyncio.wait_for(communicate, 10)
        elapsed = time.monotonic() - signalled
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    assert elapsed < 5, elapsed

    rows = await cli.deliveries()
    states = Counter(r["state"] for r in rows)
    assert set(states) <= {"delivered", "queued"}, rows  # nothing left in flight or lost
    assert states["delivered"] >= 1 and states["queued"] >= 1, states
    # The in-flight deliveries were allowed to finish (and were recorded as such); nothing else went out.
    delivered = delivery_keys([r for r in rows if r["state"] == "delivered"])
    assert received_keys(sandbox) == Counter(dict.fromkeys(delivered, 1))

    sandbox.sandbox.clear_faults()
    result = await cli("work", "--until-idle")
    assert result.code == 0, result.err
    assert {r["state"] for r in await cli.deliveries()} == {"delivered"}
    assert received_keys(sandbox) == Counter(dict.fromkeys(expected_keys(stories), 1))


# ---------------------------------------------------------------------------------------- usage and config


async def test_unknown_options_are_usage_errors(tmp_path: Path) -> None:
    cli = make_cli(tmp_path)
    top, sub = await asyncio.gather(cli("--bogus", "status"), cli("publish", "--bogus", "x.json"))
    assert_one_line_error(top, 2, "--bogus")
    assert_one_line_error(sub, 2, "--bogus")
    assert not (tmp_path / "s.db").exists()


async def test_config_with_an_unknown_channel_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra="bogus_key = 1\n")  # lands in the last table, [channels.beta]
    result = await run_cli("--config", config, "status", "--json", cwd=tmp_path)
    assert_one_line_error(result, 2, str(config), "[channels.beta]", "bogus_key", "unknown key")
    assert result.out == ""


async def test_config_errors_name_file_table_and_key(tmp_path: Path) -> None:
    engine_key = write_config(tmp_path, name="engine.toml")
    engine_key.write_text(
        engine_key.read_text(encoding="utf-8").replace("[engine]\n", "[engine]\nworkerz = 3\n"), encoding="utf-8"
    )
    missing_env = write_config(tmp_path, name="env.toml")
    missing_env.write_text(
        missing_env.read_text(encoding="utf-8").replace('"test-secret"', '"${SYNDICATE_TEST_NOT_SET}"', 1),
        encoding="utf-8",
    )
    no_channels = write_config(tmp_path, channels=(), name="empty.toml")
    disabled = write_config(tmp_path, channels=("alpha",), extra="enabled = false\n", name="disabled.toml")
    absent = tmp_path / "absent.toml"

    results = await asyncio.gather(
        run_cli("--config", engine_key, "status", cwd=tmp_path),
        run_cli("--config", missing_env, "status", cwd=tmp_path),
        run_cli("--config", no_channels, "work", "--until-idle", cwd=tmp_path),
        run_cli("--config", disabled, "work", cwd=tmp_path),
        run_cli("--config", absent, "status", cwd=tmp_path),
    )
    engine_err, env_err, empty_err, disabled_err, absent_err = results
    assert_one_line_error(engine_err, 2, str(engine_key), "[engine]", "workerz", "unknown key")
    assert_one_line_error(env_err, 2, str(missing_env), "[channels.alpha]", "secret", "SYNDICATE_TEST_NOT_SET")
    assert_one_line_error(empty_err, 2, str(no_channels), "no enabled [channels.*]")
    assert_one_line_error(disabled_err, 2, str(disabled), "no enabled [channels.*]")
    assert_one_line_error(absent_err, 2, str(absent), "not found")

    # ${VAR} is read from the environment the command runs in.
    ok = await run_cli(
        "--config", missing_env, "status", "--json", cwd=tmp_path, env={"SYNDICATE_TEST_NOT_SET": "from-env"}
    )
    assert ok.code == 0, ok.err


async def test_a_store_that_cannot_be_opened_names_the_path_and_the_fix(tmp_path: Path) -> None:
    """SQLite says only "unable to open database file", and the CLI printed a traceback."""
    (tmp_path / "a-file").write_text("not a directory")
    missing = tmp_path / "a-file" / "syndicate.db"  # chmod cannot make a directory unwritable for root: a file can
    config = tmp_path / "bad-store.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{missing}"\n', encoding="utf-8")
    result = await run_cli("--config", config, "status", cwd=tmp_path)
    assert result.code == 1 and "Traceback" not in result.err, result.err
    assert f"cannot open the store {missing}" in result.err
    assert f"its directory {missing.parent} cannot be created" in result.err and "[store] url" in result.err
