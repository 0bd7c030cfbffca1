"""The channels we own the format of, together: one hostile story comes out clean everywhere, and the API
description covers the routes those channels mount."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import feedparser
from aiohttp.test_utils import TestClient, TestServer

from adapters.app.standin import DEFAULT_APP_KEY, DEFAULT_MASTER_SECRET
from adapters.partner.standin import DEFAULT_APP_KEY as PARTNER_KEY
from adapters.partner.standin import DEFAULT_SECRET as PARTNER_SECRET
from syndicate.engine import Engine
from syndicate.sandbox import RunningSandbox
from syndicate.server import create_app
from syndicate.store import open_store
from syndicate.store.base import DeliveryFilter, State
from tests.support import assert_clean, make_settings, make_story

HOSTILE = make_story(
    id="xss-1",
    headline="<script>alert('h')</script>宝山汇上线",
    summary='<img src=x onerror="alert(1)">摘要',
    body_html=(
        '<p onclick="steal()">正文<script>alert(2)</script> <a href="javascript:alert(3)">链接</a></p>'
        '<iframe src="https://evil.example/"></iframe><svg onload="alert(4)"></svg>'
        '<figure><img src="https://img.example.cn/a.png" onerror="alert(5)" alt="现场">'
        "<figcaption>主办方供图<script>alert(6)</script></figcaption></figure>"
        '<a href=" JaVaScRiPt:alert(7)">再来</a><style>*{display:none}</style>'
    ),
    section="baoshan",
    published_at="2019-09-18T18:30:00+08:00",
    images=[
        {
            "href": "https://img.example.cn/a.png",
            "caption": "<script>alert(8)</script>现场",
            "alt": '" onmouseover="alert(9)',
            "role": "cover",
        }
    ],
    tags=["<b onmouseover=alert(10)>融媒体</b>"],
)


def owned_channels(tmp_path: Path, sandbox_url: str) -> dict[str, dict[str, Any]]:
    (tmp_path / "site").mkdir()
    return {
        "website": {"kind": "website", "root": str(tmp_path / "site"), "base_url": "https://news.example.cn"},
        "feed": {
            "kind": "rss",
            "root": str(tmp_path / "feeds"),
            "title": "新闻",
            "link": "https://news.example.cn/",
            "enclosure_sizes": "declared",  # the cover's host is not on loopback: no fetch
        },
        "app": {
            "kind": "app",
            "api_base": sandbox_url,
            "app_key": DEFAULT_APP_KEY,
            "master_secret": DEFAULT_MASTER_SECRET,
        },
        "peoples_account": {
            "kind": "partner",
            "url": f"{sandbox_url}/partner/peoples_account/articles",
            "lookup_url": f"{sandbox_url}/partner/peoples_account/articles",
            "app_key": PARTNER_KEY,
            "secret": PARTNER_SECRET,
        },
    }


async def test_a_hostile_story_comes_out_clean_on_every_owned_channel(tmp_path: Path, sandbox: RunningSandbox) -> None:
    settings = make_settings(tmp_path, owned_channels(tmp_path, sandbox.url))
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            await engine.accept(HOSTILE)
            await engine.run(until_idle=True, idle_horizon=2)
            rows = await store.list_deliveries(DeliveryFilter())
            assert {d.channel: d.state for d in rows} == dict.fromkeys(
                ("website", "feed", "app", "peoples_account"), State.DELIVERED
            )

            # website: every file in the web root
            pages = [p for p in (tmp_path / "site").rglob("*") if p.is_file() and ".syndicate" not in p.parts]
            assert any(p.name == "xss-1.html" for p in pages)
            for page in pages:
                assert_clean(page.read_text(encoding="utf-8"), str(page))
            article = next(p for p in pages if p.name == "xss-1.html").read_text(encoding="utf-8")
            assert "&lt;script&gt;alert(&#39;h&#39;)&lt;/script&gt;宝山汇上线" in article  # shown as text

            # feeds: what a reader renders (parsed content) carries nothing executable
            for name in ("rss.xml", "atom.xml"):
                feed = feedparser.parse((tmp_path / "feeds" / name).read_bytes())
                [entry] = feed.entries
                for value in [entry.get("title", ""), entry.get("summary", "")] + [
                    c.value for c in entry.get("content", [])
                ]:
                    assert_clean(value, f"{name} entry")
                assert "正文" in entry.content[0].value

            # app: the content API's bytes
            async with TestClient(TestServer(create_app(settings, engine))) as client:
                item = await client.get("/app/v1/stories/xss-1")
                assert item.status == 200
                raw = (await item.read()).decode()
                assert "<script" not in raw.lower() and "javascript:" not in raw.lower()
                document = json.loads(raw)
                texts = [b.get("text", "") for b in document["blocks"]]
                assert any("正文" in t for t in texts) and not any("<" in t for t in texts)
                spec = await (await client.get("/openapi.json")).json()
    finally:
        await store.close()

    # partners: what the platform received
    bodies = [r.body for r in sandbox.sandbox.received("partner") if r.method == "POST"]
    assert len(bodies) == 1
    assert_clean(bodies[0]["content_html"], "partner content_html")
    assert "正文" in bodies[0]["content_html"]

    # The routes the owned channels mount are described next to the core API.
    assert {
        "/app/v1/stories",
        "/app/v1/stories/{story_id}",
        "/feeds/rss.xml",
        "/feeds/atom.xml",
        "/site/{path}",
    } <= set(spec["paths"])
