"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright for Python): log in, watch a
board cell turn from queued to delivered without a reload, read a story's payload and attempts, replay a failed
delivery from the failures page, pause and resume a channel. Screenshots of every page go to build/screenshots/.

Outside CI these tests skip, saying why, when Playwright or a Chromium binary is missing; with CI=true they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from syndicate.sandbox import RunningSandbox
from syndicate.server import serve
from tests.e2e.test_server import API_TOKEN, Server, server_settings

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "build" / "screenshots"
EXAMPLES = REPO / "examples"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the dashboard browser tests must run in CI: {reason}")
    pytest.skip(reason)


def _chromium_path() -> str | None:
    for candidate in (os.environ.get("SYNDICATE_CHROMIUM"), "chromium", "chromium-browser", "/usr/bin/chromium"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@pytest.fixture
async def browser_page() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed: pip install -e '.[dev]'")
    executable = _chromium_path()
    if executable is None:
        _unavailable("no Chromium found (apt-get install chromium, or set SYNDICATE_CHROMIUM to the binary)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1280, "height": 860}, locale="zh-CN")
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        try:
            yield page
        finally:
            await context.close()
            await browser.close()


@pytest.fixture
async def live_server(tmp_path: Path, sandbox: RunningSandbox) -> AsyncIterator[Server]:
    settings = server_settings(tmp_path, sandbox.url)
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, host="127.0.0.1", port=0, stop=stop, on_ready=ready.set_result))
    url = await asyncio.wait_for(ready, timeout=10)
    async with aiohttp.ClientSession() as session:
        yield Server(url, session)
    stop.set()
    await asyncio.wait_for(task, timeout=20)


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


async def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def log_in(page: Any, url: str) -> None:
    await page.goto(url + "/")
    assert "/dashboard/login" in page.url
    await shot(page, "login")
    await page.fill("input[name=token]", API_TOKEN)
    await page.click("form[action='/dashboard/login'] button[type=submit]")
    await page.wait_for_url(url + "/")
    await page.wait_for_selector("table.board")


def cell(story_id: str, channel: str) -> str:
    return f"tr[data-story='{story_id}'] td[data-channel='{channel}']"


async def test_board_updates_live_and_story_page_shows_payload_and_attempts(
    browser_page: Any, live_server: Server, sandbox: RunningSandbox
) -> None:
    page = browser_page
    await log_in(page, live_server.url)
    # Two earlier stories, one of them refused by the app channel, so the board shows more than one state.
    sandbox.sandbox.set_faults("webhook", [{"fault": "status:422", "probability": 1.0, "name": "app"}])
    earlier = example("02-baoshan-app.json")
    assert (await live_server.hook(earlier))[0] == 202
    await live_server.wait_states(earlier["id"], "delivered", "failed")
    sandbox.sandbox.set_faults("webhook", [])
    ninjs = (EXAMPLES / "03-first-batch.ninjs.json").read_bytes()
    assert (await live_server.hook(ninjs, content_type="application/ninjs+json"))[0] == 202
    story = example("01-district-media-centres.json")
    # Both channels paused: the story's cells stay queued until the operator resumes them.
    for channel in ("web", "app"):
        assert (await live_server.api("POST", f"/v1/channels/{channel}/pause", json={"for": "1h"}))[0] == 200
    assert (await live_server.hook(story))[0] == 202
    await page.reload()
    for channel in ("web", "app"):
        await page.wait_for_selector(cell(story["id"], channel) + "[data-state='queued']")
    await page.evaluate("window.__notReloaded = true")

    for channel in ("web", "app"):
        assert (await live_server.api("POST", f"/v1/channels/{channel}/resume"))[0] == 200
    for channel in ("web", "app"):
        await page.wait_for_selector(cell(story["id"], channel) + "[data-state='delivered']")
    assert await page.evaluate("window.__notReloaded === true"), "the board reloaded instead of updating live"
    assert (await page.inner_text(cell(story["id"], "web"))).strip() == "已发布"
    await shot(page, "board")
    await page.set_viewport_size({"width": 390, "height": 844})
    await shot(page, "board-phone")
    await page.set_viewport_size({"width": 1280, "height": 860})

    await page.click(f"tr[data-story='{story['id']}'] th a")
    await page.wait_for_selector("#headline")
    assert await page.text_content("#headline") == story["headline"]
    payload = await page.text_content("#channel-web pre.payload")
    assert payload is not None and story["id"] in payload and '"event": "publish"' in payload
    outcomes = await page.locator("#channel-web table.attempts td.outcome").all_text_contents()
    assert outcomes == ["delivered"]
    assert "wh-" in (await page.text_content("#channel-web .receipt") or "")
    await shot(page, "story")


async def test_replay_failed_delivery_from_failures_page(
    browser_page: Any, live_server: Server, sandbox: RunningSandbox
) -> None:
    page = browser_page
    sandbox.sandbox.set_faults("webhook", [{"fault": "status:400", "probability": 1.0, "name": "app"}])
    story = example("02-baoshan-app.json")
    assert (await live_server.hook(story))[0] == 202
    await live_server.wait_states(story["id"], "delivered", "failed")
    sandbox.sandbox.set_faults("webhook", [])

    await log_in(page, live_server.url)
    await page.click("nav a[href='/dashboard/failures']")
    await page.wait_for_selector("li.failure")
    assert await page.locator("li.failure").count() == 1
    await shot(page, "failures")
    await page.check("li.failure input.pick-one")
    await page.click("#replay-selected")
    await page.wait_for_selector("#confirm-text")
    assert await page.text_content("#confirm-text") == "将重发 1 条投递，渠道：app。"
    await shot(page, "confirm")
    await page.click("#confirm-yes")
    await page.wait_for_selector("p.flash")
    assert "已重新排队 1 条投递" in (await page.text_content("p.flash") or "")

    await page.click("nav a[href='/']")
    await page.wait_for_selector(cell(story["id"], "app") + "[data-state='delivered']")
    await page.click("nav a[href='/dashboard/failures']")
    await page.wait_for_selector("p.muted >> text=没有失败或结果未知的投递")


async def test_pause_and_resume_a_channel(browser_page: Any, live_server: Server) -> None:
    page = browser_page
    assert (await live_server.hook(example("01-district-media-centres.json")))[0] == 202
    await live_server.wait_states("sh-rmt-20190918-001", "delivered")
    await log_in(page, live_server.url)
    await page.click("nav a[href='/dashboard/channels']")
    web = "section[data-channel='web']"
    await page.wait_for_selector(f"{web}[data-paused='no']")
    await page.select_option(f"{web} select[name=for]", "")
    await page.fill(f"{web} input[name=reason]", "更换凭证")
    await page.click(f"{web} form.pause button[type=submit]")
    await page.wait_for_selector(f"{web}[data-paused='yes']")
    assert await page.text_content(f"{web} .reason") == "更换凭证"
    await shot(page, "channels")
    await page.click(f"{web} button.resume")
    await page.wait_for_selector(f"{web}[data-paused='no']")
    assert "渠道已恢复" in (await page.text_content("p.flash") or "")


@pytest.fixture
async def reach_server(tmp_path: Path, sandbox: RunningSandbox) -> AsyncIterator[Server]:
    """The real server with a reach-reading channel sampled a second and two seconds after delivery (so the
    schedule runs for real within the test), beside a website whose pages count their reads by beacon."""
    from syndicate.config import parse_config
    from tests.support import scripted

    base = server_settings(tmp_path, sandbox.url)
    site_root = tmp_path / "www"
    site_root.mkdir()
    raw = {
        "store": {"url": f"sqlite:///{tmp_path / 'reach.db'}"},
        "engine": {"lease_seconds": 5, "poll_interval": 0.05, "retry_jitter": 0},
        "server": {"hook_secret": base.server.hook_secret, "api_token": API_TOKEN},
        "reach": {"ages": ["1s", "2s"]},
        "channels": {
            "social": scripted(kind="scripted-reach"),
            "web": {  # the newsroom's website: its pages load the beacon
                "kind": "website",
                "root": str(site_root),
                "base_url": "https://news.example.cn",
                "reach_beacon": "http://127.0.0.1:8780/reach/b.gif",
                "timeout": 2,
            },
        },
    }
    settings = parse_config(raw, source="reach-browser.toml", env={})
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, host="127.0.0.1", port=0, stop=stop, on_ready=ready.set_result))
    url = await asyncio.wait_for(ready, timeout=10)
    async with aiohttp.ClientSession() as session:
        yield Server(url, session)
    stop.set()
    await asyncio.wait_for(task, timeout=20)


async def test_reach_on_the_story_page_and_the_reach_page_with_its_csv(browser_page: Any, reach_server: Server) -> None:
    from syndicate.delivery import ReachMetric, ReachReading
    from tests.support import ScriptedReachAdapter

    ScriptedReachAdapter.reach_scripts["social"] = [
        ReachReading({ReachMetric.READS: 1200, ReachMetric.SHARES: 30}, raw={"views": 1200}),
        ReachReading({ReachMetric.READS: 4800, ReachMetric.SHARES: 75}, raw={"views": 4800}),
    ]
    page = browser_page
    story = {**example("01-district-media-centres.json"), "section": "时政"}
    assert (await reach_server.hook(story))[0] == 202
    await reach_server.wait_states(story["id"], "delivered")
    for _ in range(3):
        async with reach_server.session.get(f"{reach_server.url}/reach/b.gif?s={story['id']}&c=web") as resp:
            assert resp.status == 200 and resp.content_type == "image/gif"
    # The schedule reads the post at one and two seconds old.
    for _ in range(200):
        _, reach = await reach_server.api("GET", f"/v1/stories/{story['id']}/reach")
        social = [c for c in reach["channels"] if c["channel"] == "social"]
        if social and social[0]["samples"]["done"] == 2:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the samples never completed: {reach}")

    await log_in(page, reach_server.url)
    await page.goto(f"{reach_server.url}/dashboard/stories/{story['id']}")
    row = "#reach tr[data-channel='social']"
    await page.wait_for_selector(row)
    cells = await page.locator(f"{row} td").all_inner_texts()
    assert cells[:4] == ["4,800", "75", "—", "—"] and cells[-1] == "2/2"
    assert (await page.locator("#reach tr[data-channel='web'] td").all_inner_texts())[0] == "3"
    assert await page.locator("figure.reach-chart[data-channel='social'] circle").count() == 2
    await shot(page, "story-reach")

    await page.click("nav a[href='/dashboard/reach']")
    await page.wait_for_selector("#reach-ranking")
    first = "#reach-ranking tbody tr:first-child"
    assert await page.get_attribute(first, "data-story") == story["id"]
    assert (await page.locator(f"{first} td").all_inner_texts())[2:5] == ["时政", "4,803", "75"]
    channels = await page.locator("#reach-by-channel tbody tr").evaluate_all("rows => rows.map(r => r.dataset.channel)")
    assert channels == ["social", "web"]
    await shot(page, "reach")
    await page.select_option("select[name=channel]", "web")
    await page.click("form.filters button[type=submit]")
    await page.wait_for_url("**channel=web**")
    assert (await page.locator(f"{first} td").all_inner_texts())[3] == "3"
    async with page.expect_download() as download_info:
        await page.click("#reach-csv")
    download = await download_info.value
    text = await asyncio.to_thread(Path(await download.path()).read_text, encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "rank,story_id,headline,section,channel,reads,shares,likes,comments"
    assert lines[1].startswith(f"1,{story['id']},") and lines[1].endswith(",时政,web,3,,,") and len(lines) == 2
