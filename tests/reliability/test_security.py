"""The security sweep (issue 8), in one place, systematically:

1. **XSS**: a story whose every text field (enumerated from the pydantic models, so a new field is covered without
   touching this file) carries script payloads comes out inert on every output we own the markup of: the website's
   pages, the RSS and Atom feeds, the app's content API, WeChat's article HTML, a partner's content_html and the
   dashboard. Each output is parsed as a browser would (no ``<script>``, no ``on*`` handler, no ``javascript:`` URL),
   and the plain-text fields must still be visible there, so nothing passes by dropping everything. A platform's
   answers (receipts, error messages) are hostile text too.
2. **Secrets**: every channel kind configured with distinctive secrets, half of them talking to a platform that
   echoes every request back (in its errors and in its success answers); then every route of ``/openapi.json``
   (valid ids, wrong ids, bad filters, bad bodies, wrong or missing token), the hook's refusals, the dashboard, the
   CLI's ``status``/``failed``/``channels --check`` and the logs: no secret, nor its URL or base64 encoding, nor a
   12-character piece of one, anywhere in a body or a header.
3. **Signatures**: what ``tests/e2e/test_server.py`` leaves out: a signature over another body, a captured signature
   re-sent with its header spelled differently (it must still count as the same, used signature) or aimed at a
   DELETE, and the header name in any case.
4. **SSRF**: what ``tests/unit/test_media.py`` leaves out: more spellings of loopback, unspecified and link-local hosts,
   names that resolve to them, redirects to them, and the whole path from a story's image to a refused delivery
   unless ``[media] allow_private`` allows it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import io
import itertools
import json
import logging
import re
import socket
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel

from adapters.app.standin import DEFAULT_APP_KEY, DEFAULT_MASTER_SECRET
from adapters.weibo import standin as weibo
from syndicate.config import Settings, load_config, parse_config
from syndicate.dashboard import auth
from syndicate.dashboard.urls import local_path
from syndicate.delivery import Action, Permanent, RenderError
from syndicate.engine import Engine
from syndicate.logs import configure_logging, reset_logging
from syndicate.media import MediaFetcher, MediaRefused, MediaSettings
from syndicate.sandbox import RunningSandbox, standins
from syndicate.server import create_app, serve
from syndicate.signing import SIGNATURE_HEADER, sign
from syndicate.store import open_store
from syndicate.store.base import DeliveryFilter, State
from syndicate.story import Story, StoryValidationError
from tests.e2e.test_dashboard import Dash
from tests.e2e.test_server import HOOK_SECRET, STORY, Server, server_settings
from tests.support import (
    ScriptedAdapter,
    accept_credentials,
    assert_clean,
    audit_markup,
    make_settings,
    make_story,
    run_cli,
    scripted,
    standin_channels,
    toml_text,
)
from tests.unit.test_media import PNG, no_network_fetcher, only_loopback

# ============================================================================================ a hostile platform

_NOT_ECHOED = {"host", "content-length", "accept", "accept-encoding", "user-agent", "connection"}


def _echo(request: web.Request, body: bytes) -> str:
    """What a careless platform says back: our headers, the URL with its query, the body (form fields or JSON)."""
    heads = [f"{k}: {v}" for k, v in request.headers.items() if k.lower() not in _NOT_ECHOED]
    text = body.decode("utf-8", "replace")
    if "multipart/" in request.headers.get("Content-Type", ""):  # the form fields, not the picture's bytes
        text = " ".join(line for line in text.splitlines() if len(line) < 200 and "\ufffd" not in line)
    return " | ".join([*heads, request.path_qs, text[:800]])


async def _hostile_platform(request: web.Request) -> web.Response:
    """Every platform's shape, every answer an error quoting the request back; ``/ok/...`` answers success with a
    hostile receipt (a script for an id, a ``javascript:`` link, the request echoed)."""
    text = _echo(request, await request.read())
    path = request.path
    if path.startswith("/ok/"):
        return web.json_response(
            {"id": "<script>alert('remote id')</script>", "url": "javascript:alert('receipt')", "echo": text}
        )
    if path.startswith("/cgi-bin/"):  # WeChat answers HTTP 200 with an errcode
        return web.json_response({"errcode": 40035, "errmsg": text})
    if path.startswith("/v3/"):  # JPush
        return web.json_response({"error": {"code": 1003, "message": text}}, status=400)
    if path.startswith(("/2/statuses/", "/2/users/show")):  # Weibo
        return web.json_response({"error": text, "error_code": 10008, "request": path}, status=400)
    if path.startswith("/2/"):  # X
        body = {"errors": [{"message": text}], "title": "Invalid Request", "detail": text, "status": 400}
        return web.json_response(body, status=400)
    if path.startswith("/partner/"):
        return web.json_response({"code": 40000, "message": text}, status=400)
    return web.json_response({"error": "bad_request", "message": text}, status=400)


@pytest.fixture
async def hostile() -> AsyncIterator[str]:
    """The base URL of a platform that quotes every request back (see ``_hostile_platform``)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _hostile_platform)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


# ================================================================================================= 1. XSS

OWNED = ("website", "feed", "app", "wechat", "partner")
#: Story fields that route rather than carry text: ``targets`` must name configured channels (checked at the hook).
ROUTING_FIELDS = {"targets"}


def full_payload(where: str) -> str:
    """Plain-text payload: breaks out of elements, attributes and <title>; ``⟦where⟧`` stays readable as text."""
    return (
        f'⟦{where}⟧<script>alert("{where}")</script>"><img src=x onerror=alert(1)></title><script>alert(2)</script>'
        '\'><a href="javascript:alert(3)">j</a>'
    )


def candidates(where: str) -> list[str]:
    """The payloads tried on a field, most hostile first: a field that refuses '/' (a section names a folder) or
    whitespace (an id) still gets one, and a URL field an http(s) URL that tries to break out of its attribute."""
    return [
        full_payload(where),
        f"⟦{where}⟧\"'><img src=x onerror=alert(1)><script>alert(2)<!--",
        f"javascript:alert(1);⟦{where}⟧\"'><script>alert(2)<!--",
        f"https://news.example.cn/⟦{where}⟧\"'><script>alert(1)</script>",
    ]


BODY_VECTORS = (
    "<p>正文⟦body_html⟧</p>"
    '<p onclick="steal()">x<script>alert(1)</script><a href="javascript:alert(2)">a</a></p>'
    '<a href=" JaVaScRiPt:alert(3)">b</a><a href="jav&#x09;ascript:alert(4)">c</a><a href="vbscript:msgbox(5)">d</a>'
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCg2KTwvc2NyaXB0Pg==">e</a>'
    '<img src="javascript:alert(7)"><img src=x onerror=alert(8)><svg><script>alert(9)</script></svg>'
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(10)></style></mglyph></table></mtext></math>"
    '<iframe srcdoc="<script>alert(11)</script>"></iframe><object data="javascript:alert(12)"></object>'
    '<embed src="javascript:alert(13)"><form action="javascript:alert(14)"><button>go</button></form>'
    '<meta http-equiv="refresh" content="0;url=javascript:alert(15)"><base href="javascript:alert(16)//">'
    '<div style="background:url(javascript:alert(17))">s</div><noscript><p title="</noscript><img src=x '
    'onerror=alert(18)>"></noscript><!--<img src=x onerror=alert(19)>--><![CDATA[<script>alert(20)</script>]]>'
    "</title><script>alert(21)</script>"
)

Path_ = tuple[str | int, ...]


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation allows (Annotated and Optional/Union peeled off, None dropped)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin is Union or origin is UnionType:
        return [t for arg in get_args(annotation) if arg is not type(None) for t in _unwrap(arg)]
    return [annotation]


def text_fields(model: type[BaseModel], prefix: Path_ = (), *, dict_keys: tuple[str, ...] = OWNED) -> list[Path_]:
    """Every place a string lives in ``model``, as a path into its JSON form: ``("images", 0, "caption")``.

    Lists get one element, ``dict[str, Model]`` (the per-channel overrides) one entry per channel in ``dict_keys``,
    so the text reaches the code that uses it. Literal, numbers and dates carry no text and are left out.
    """
    found: list[Path_] = []
    for name, info in model.model_fields.items():
        if not prefix and name in ROUTING_FIELDS:
            continue
        for kind in _unwrap(info.annotation):
            origin = get_origin(kind)
            if kind is str:
                found.append((*prefix, name))
            elif origin is list:
                (item,) = _unwrap(get_args(kind)[0])
                if item is str:
                    found.append((*prefix, name, 0))
                elif isinstance(item, type) and issubclass(item, BaseModel):
                    found += text_fields(item, (*prefix, name, 0), dict_keys=dict_keys)
            elif origin is dict:
                (value,) = _unwrap(get_args(kind)[1])
                if isinstance(value, type) and issubclass(value, BaseModel):
                    for key in dict_keys:
                        found += text_fields(value, (*prefix, name, key), dict_keys=dict_keys)
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                found += text_fields(kind, (*prefix, name), dict_keys=dict_keys)
            elif origin is Literal or kind in (int, float, bool) or getattr(kind, "__module__", "") == "datetime":
                pass
            else:  # pragma: no cover - a new kind of field: decide how to attack it
                raise AssertionError(f"{model.__name__}.{name}: no payload for a field of type {kind!r}")
    return found


def label(path: Path_) -> str:
    """``("images", 0, "caption")`` -> ``images[0].caption``; ``overrides[app].headline`` for a dict entry."""
    out = ""
    for index, part in enumerate(path):
        if isinstance(part, int) or (index and path[index - 1] == "overrides"):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _put(doc: dict[str, Any], path: Path_, value: str) -> None:
    node: Any = doc
    for index, part in enumerate(path[:-1]):
        nxt: Any = [] if isinstance(path[index + 1], int) else {}
        if isinstance(node, list):
            while len(node) <= int(part):
                node.append(nxt)
            node = node[int(part)]
        else:
            node = node.setdefault(part, nxt)
    if isinstance(node, list):
        while len(node) <= int(path[-1]):
            node.append(None)
        node[int(path[-1])] = value
    else:
        node[path[-1]] = value


BASE_DOCUMENT: dict[str, Any] = {
    "id": "xss-base",
    "headline": "上海16区融媒体中心全部建成并挂牌",
    "body_html": "<p>正文</p>",
    "url": "https://news.example.cn/xss.html",
    "published_at": "2019-09-18T18:30:00+08:00",
    "images": [{"href": "https://img.example.cn/cover.png", "role": "cover"}],
}


def owned_settings(tmp_path: Path, sandbox_url: str, receiver_url: str) -> Settings:
    """The channels whose markup we own, plus a failing scripted channel and one whose platform answers with a
    hostile receipt (for the dashboard). WeChat and the partner are rendered directly: no network needed."""
    (tmp_path / "site").mkdir(exist_ok=True)
    raw = {
        "store": {"url": f"sqlite:///{tmp_path / 'xss.db'}"},
        "media": {"allow_private": True, "cache_dir": str(tmp_path / "media")},
        "engine": {"lease_seconds": 5, "poll_interval": 0.05, "retry_jitter": 0},
        "server": {"api_token": DASH_TOKEN},
        "channels": {
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
                "share_base_url": "https://news.example.cn/s",
            },
            "wechat": {"kind": "wechat", "app_id": "wx-xss", "app_secret": "xss-app-secret", "enabled": False},
            "partner": {
                "kind": "partner",
                "url": "https://partner.example.cn/articles",
                "app_key": "xss-app",
                "secret": "xss-secret",
                "enabled": False,
            },
            "desk": scripted(retry=[0]),
            "receiver": {"kind": "webhook", "url": receiver_url, "secret": "xss-hook", "retry": [0]},
        },
    }
    return parse_config(raw, source="xss.toml", env={})


DASH_TOKEN = "xss-dashboard-token-0123456789"


def renders_everywhere(settings: Settings, document: dict[str, Any]) -> Story | None:
    """The story, if it is valid and every owned channel can render it; None when any refuses it."""
    try:
        story = Story.from_dict(document)
        for name in OWNED:
            settings.channels[name].create_adapter().render(story, Action.PUBLISH)
    except (StoryValidationError, RenderError):
        return None
    return story


@dataclass
class HostileStory:
    story: Story
    #: Field path -> the payload it carries; fields no payload could get into (a language tag) are left out.
    payloads: dict[Path_, str]
    refused: list[Path_]

    def text(self, path: Path_) -> str:
        return self.payloads[path]

    def shown(self, channel: str, name: str) -> str:
        """The text a channel uses for ``name``: its override when the story has one, else the story's own."""
        return self.payloads.get(("overrides", channel, name)) or self.payloads[(name,)]


def hostile_story(settings: Settings) -> HostileStory:
    """Every text field gets the most hostile payload the story model and every owned channel accept."""
    payloads: dict[Path_, str] = {}
    refused: list[Path_] = []
    for path in text_fields(Story):
        where = label(path)
        tries = [BODY_VECTORS + full_payload(where)] if str(path[-1]).endswith("_html") else candidates(where)
        for payload in tries:
            document = copy.deepcopy(BASE_DOCUMENT)
            _put(document, path, payload)
            if renders_everywhere(settings, document) is not None:
                payloads[path] = payload
                break
        else:
            refused.append(path)
    document = copy.deepcopy(BASE_DOCUMENT)
    for path, payload in payloads.items():
        _put(document, path, payload)
    story = renders_everywhere(settings, document)
    assert story is not None, "each payload renders alone but not all together"
    return HostileStory(story, payloads, refused)


def test_every_text_field_of_the_story_model_gets_a_payload(tmp_path: Path) -> None:
    """The enumeration is what the XSS sweep stands on: it must find the fields (and not only a few)."""
    settings = owned_settings(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9/ok")
    found = {label(path) for path in text_fields(Story)}
    assert {
        "id",
        "headline",
        "subheadline",
        "summary",
        "body_html",
        "by",
        "url",
        "images[0].href",
        "images[0].caption",
        "images[0].alt",
        "tags[0]",
        "section",
        "overrides[website].headline",
        "overrides[app].summary",
        "overrides[wechat].text",
    } <= found
    hostile = hostile_story(settings)
    # Only the language tag (BCP 47) cannot carry a payload at all; everything else carries one.
    assert [label(p) for p in hostile.refused] == ["language"]
    assert "<script>" in hostile.text(("headline",)) and "<script>" in hostile.text(("images", 0, "caption"))
    assert hostile.story.id.startswith("javascript:") and "<script>" in hostile.story.id
    assert "onerror" in (hostile.story.section or "")


@pytest.mark.parametrize("where", ["url", "images[0].href"])
@pytest.mark.parametrize(
    "link", ["javascript:alert(1)", " JaVaScRiPt:alert(1)", "data:text/html,<script>alert(1)</script>", "vbscript:x"]
)
def test_link_fields_refuse_script_urls(where: str, link: str) -> None:
    document = copy.deepcopy(BASE_DOCUMENT)
    _put(document, ("url",) if where == "url" else ("images", 0, "href"), link)
    with pytest.raises(StoryValidationError) as info:
        Story.from_dict(document)
    assert [(e.path, e.problem) for e in info.value.errors] == [(where, "must be an http(s) URL")]


def _feed_texts(xml: bytes) -> tuple[list[str], list[str], list[str]]:
    """(HTML a reader renders, plain text it shows, URLs it follows) of a feed, after XML decoding."""
    html_parts: list[str] = []
    plain: list[str] = []
    urls: list[str] = []
    for element in ET.fromstring(xml).iter():
        tag = element.tag.rsplit("}", 1)[-1]
        text = element.text or ""
        kind = element.get("type")
        # HTML by the formats (RSS description and content:encoded, Atom type="html"); titles without a type are
        # plain text by the specs, but some readers render them as HTML, so they are audited the same way.
        html_bearing = tag in ("description", "encoded") or kind == "html" or (tag == "title" and kind is None)
        if html_bearing:
            html_parts.append(text)
        if kind == "xhtml":
            html_parts.append(ET.tostring(element, encoding="unicode"))
        if tag in ("title", "name", "category", "author", "subtitle"):
            plain.append(text or element.get("term") or "")
        if tag in ("link", "guid", "comments", "docs", "url", "icon", "logo"):
            urls.append(text)
        urls += [value for key, value in element.attrib.items() if key in ("href", "url", "src", "uri")]
    return html_parts, plain, urls


def _json_strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _json_strings(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _json_strings(v, key)


def _is_script_url(value: str) -> bool:
    return "".join(value.split()).lower().startswith(("javascript:", "vbscript:", "data:text/html"))


async def test_a_story_hostile_in_every_text_field_is_inert_on_every_owned_output(
    tmp_path: Path, sandbox: RunningSandbox, hostile: str
) -> None:
    settings = owned_settings(tmp_path, sandbox.url, f"{hostile}/ok/receiver")
    h = hostile_story(settings)
    story = h.story
    ScriptedAdapter.scripts["desk"] = [Permanent(full_payload("error message"), platform_code="<b>4xx</b>")]
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            await engine.accept(story)
            await engine.run(until_idle=True, idle_horizon=1)
            states = {d.channel: d.state for d in await store.list_deliveries(DeliveryFilter())}
            assert states == {
                "website": State.DELIVERED,
                "feed": State.DELIVERED,
                "app": State.DELIVERED,
                "desk": State.FAILED,
                "receiver": State.DELIVERED,
            }
            async with TestClient(TestServer(create_app(settings, engine))) as client:
                dash = Dash(client, engine)
                check_website(tmp_path / "site", h)
                check_feeds(tmp_path / "feeds", h)
                await check_app(client, h)
                await check_dashboard(dash, h)
    finally:
        await store.close()
    check_wechat_and_partner(settings, h)


def check_website(root: Path, h: HostileStory) -> None:
    pages = [p for p in root.rglob("*") if p.is_file() and ".syndicate" not in p.parts]
    assert len(pages) >= 4  # the article, the home page, the section page, the sitemap
    for page in pages:
        assert_clean(page.read_text(encoding="utf-8"), str(page))
    [article] = [p for p in pages if p.suffix == ".html" and p.parent.name.isdigit()]
    audit = audit_markup(article.read_text(encoding="utf-8"))
    for name in ("headline", "summary"):
        assert audit.shows(h.shown("website", name)), f"the website page does not show the {name}"
    for path in [("subheadline",), ("by",), ("section",), ("tags", 0), ("images", 0, "caption"), ("images", 0, "alt")]:
        assert audit.shows(h.text(path)), f"the website page does not show {label(path)}"
    assert audit.shows("正文⟦body_html⟧")


def check_feeds(root: Path, h: HostileStory) -> None:
    for name in ("rss.xml", "atom.xml"):
        html_parts, plain, urls = _feed_texts((root / name).read_bytes())
        assert html_parts and urls
        for part in html_parts:
            assert_clean(part, f"{name}: {part[:80]!r}")
        assert not [u for u in urls if _is_script_url(u)], urls
        shown = " ".join(plain)  # titles lose their markup in the feeds; author and categories are plain text
        wanted = ["⟦overrides[feed].headline⟧", h.text(("tags", 0))]
        if name == "atom.xml":  # RSS's <author> is an e-mail address: the byline goes to Atom only
            wanted.append(h.text(("by",)))
        for marker in wanted:
            assert marker in shown, f"{name} does not show {marker!r}"
        assert "正文⟦body_html⟧" in " ".join(html_parts)


async def check_app(client: TestClient, h: HostileStory) -> None:
    one = await client.get(f"/app/v1/stories/{quote(h.story.id, safe='')}")
    listing = await client.get("/app/v1/stories")
    assert (one.status, listing.status) == (200, 200)
    for document in (await one.json(), await listing.json()):
        for key, value in _json_strings(document):
            if key.endswith("html"):
                assert_clean(value, f"app {key}")
            if key in ("href", "src", "url", "share_url", "link"):
                assert not _is_script_url(value), (key, value)
    story = await one.json()
    assert "⟦overrides[app].headline⟧" in story["headline"]
    assert any("正文⟦body_html⟧" in (block.get("text") or "") for block in story["blocks"])


def check_wechat_and_partner(settings: Settings, h: HostileStory) -> None:
    content = settings.channels["wechat"].create_adapter().render(h.story, Action.PUBLISH).data.root.content
    assert assert_clean(content, "WeChat content").shows("正文⟦body_html⟧")
    data = settings.channels["partner"].create_adapter().render(h.story, Action.PUBLISH).to_json()["data"]
    assert assert_clean(data["content_html"], "partner content_html").shows("正文⟦body_html⟧")


async def check_dashboard(dash: Dash, h: HostileStory) -> None:
    assert await dash.login(DASH_TOKEN) == 303
    own = {"allowed_script_src": "/dashboard/static/"}
    pages = {
        "board": "/",
        "story": f"/dashboard/stories/{quote(h.story.id, safe='')}",
        "failures": "/dashboard/failures",
        "channels": "/dashboard/channels",
        "reach": "/dashboard/reach",
    }
    audits = {}
    for name, path in pages.items():
        resp = await dash.client.get(path)
        assert resp.status == 200, name
        # The health chart and the story's reach charts are the pages' own.
        tags = frozenset({"svg"}) if name in ("channels", "story") else frozenset()
        audits[name] = assert_clean(await resp.text(), f"dashboard {name}", allowed_tags=tags, **own)
    rows = (await (await dash.client.get("/dashboard/board.json")).json())["rows"]
    assert_clean(rows, "dashboard board.json rows")
    assert audits["board"].shows(h.text(("headline",)))
    assert audits["reach"].shows(h.text(("headline",)))  # the app read it (check_app): ranked, escaped
    story = audits["story"]
    for path in [("headline",), ("summary",), ("id",)]:
        assert story.shows(h.text(path)), f"the story page does not show {label(path)}"
    assert story.shows("正文⟦body_html⟧")
    assert story.shows("<script>alert('remote id')</script>")  # the hostile receipt's id, shown as text
    assert audits["failures"].shows(full_payload("error message"))
    assert audits["failures"].shows("<b>4xx</b>")


# ============================================================================================== 2. secrets

#: Distinctive values for the server's secrets and the echoing webhook's; the platform channels' secrets come with
#: their tables (``standin_channels``). "+" and "/" make their URL encodings differ from them (base64-style secrets
#: are common), so a secret that leaks URL-encoded is caught too.
SECRETS = {
    "hook_secret": "hkQ7f+/Kz93mXa1vB",
    "api_token": "apW2e+/Lr58nYc3dF",
    "webhook_secret": "whR4t+/Pq71kJe5gH",
    "webhook_header": "whA8u+/Ms26hVi9jK",
}


def env_of(secrets: Mapping[str, str]) -> dict[str, str]:
    return {f"SEC_{name.upper()}": value for name, value in secrets.items()}


@dataclass(frozen=True)
class SweepConfig:
    path: Path
    env: dict[str, str]
    #: Every secret configured, by where (``channel.option`` or the server's name for it).
    secrets: dict[str, str]
    #: The channels that talk to a platform, one per registered kind with a stand-in (each also as ``<name>-echo``).
    talkers: list[str]


def sweep_config(tmp_path: Path, sandbox_url: str, hostile_url: str) -> SweepConfig:
    """Every registered channel kind (``standin_channels``); each that talks to a platform twice: against the
    sandbox (which accepts these credentials, so deliveries land) and, as ``<name>-echo``, against the hostile
    platform (which quotes every request back in its errors); plus a webhook whose receiver answers success with the
    request quoted in its receipt. The store and this file sit next to the website's web root (to reach for)."""
    near = standin_channels(tmp_path, sandbox_url)
    far = standin_channels(tmp_path, hostile_url, suffix="-echo")
    talking = standins()
    talkers = sorted(name for name, table in near.tables.items() if table["kind"] in talking)
    channels: dict[str, Any] = dict(near.tables)
    for name in talkers:
        channels[f"{name}-echo"] = far.tables[f"{name}-echo"]
    for name in [*talkers, *(f"{n}-echo" for n in talkers)]:
        channels[name] = {**channels[name], "retry": [0], "timeout": 3}
    channels["hook-ok"] = {
        "kind": "webhook",
        "url": f"{hostile_url}/ok/hook",
        "secret": "${SEC_WEBHOOK_SECRET}",
        "headers": {"Authorization": "Bearer ${SEC_WEBHOOK_HEADER}"},
        "retry": [0],
    }
    [site] = [table["root"] for table in near.tables.values() if table["kind"] == "website"]
    home = Path(site).parent
    raw = {
        "store": {"url": f"sqlite:///{home / 'sweep.db'}"},
        "media": {"allow_private": True, "cache_dir": str(tmp_path / "media")},
        "engine": {"lease_seconds": 5, "poll_interval": 0.05, "retry_jitter": 0},
        "server": {"hook_secret": "${SEC_HOOK_SECRET}", "api_token": "${SEC_API_TOKEN}"},
        "channels": channels,
    }
    path = home / "sweep.toml"
    path.write_text(toml_text(raw), encoding="utf-8")
    secrets = {**SECRETS, **near.secrets, **far.secrets}
    return SweepConfig(path, {**env_of(SECRETS), **near.env}, secrets, talkers)


def secret_forms(name: str, value: str) -> dict[str, str]:
    """A secret as it could leak, by how: as is, URL-encoded (path, query and form styles), base64 (standard and
    URL-safe, unpadded), and every 12-character piece of it (all-digit pieces aside: X's access token starts with
    the public user id), so a secret cut short by a length limit before it was masked is found too."""
    forms = {
        "as is": value,
        "URL-encoded": quote(value, safe=""),
        "URL-encoded, / kept": quote(value, safe="/"),
        "form-encoded": quote_plus(value),
        "base64": base64.b64encode(value.encode()).decode().rstrip("="),
        "base64url": base64.urlsafe_b64encode(value.encode()).decode().rstrip("="),
    }
    for start in range(len(value) - 11):
        piece = value[start : start + 12]
        if not piece.isdigit():
            forms.setdefault(f"its characters {start}..{start + 11}", piece)
    return forms


def find_leaks(answers: list[Answer], secrets: Mapping[str, str]) -> list[str]:
    """``where: secret (how)`` for each answer that shows a secret in any form, the most complete form only."""
    forms = {name: secret_forms(name, value) for name, value in secrets.items()}
    # Two secrets of one channel as HTTP Basic credentials (JPush's app key and master secret travel so).
    for (first, one), (second, other) in itertools.permutations(secrets.items(), 2):
        if "." in first and first.split(".")[0] == second.split(".")[0]:
            pair = base64.b64encode(f"{one}:{other}".encode()).decode().rstrip("=")
            forms[f"{first}:{second}"] = {"base64 (Basic)": pair}
    leaks = []
    for answer in answers:
        for name, ways in forms.items():
            how = next((how for how, form in ways.items() if form in answer.text), None)
            if how is not None:
                leaks.append(f"{answer.where}: {name} ({how})")
    return leaks


@dataclass
class Answer:
    where: str
    status: int
    text: str


@dataclass
class Recorder:
    """Every answer the sweep got, whole (status line aside: headers and body), for the leak check at the end."""

    url: str
    session: aiohttp.ClientSession
    answers: list[Answer] = field(default_factory=list)
    routes: set[tuple[str, str]] = field(default_factory=set)

    async def call(
        self,
        method: str,
        path: str,
        *,
        where: str = "",
        route: str | None = None,
        token: str | None = SECRETS["api_token"],
        body: bytes | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        sent = {"Authorization": f"Bearer {token}"} if token else {}
        if json_body is not None:
            body = json.dumps(json_body, ensure_ascii=False).encode()
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        async with self.session.request(
            method, self.url + path, data=body, headers=sent, allow_redirects=False
        ) as resp:
            text = "\n".join(f"{k}: {v}" for k, v in resp.headers.items()) + "\n\n" + await resp.text(errors="replace")
        answer = Answer(f"{method} {path} {where}".strip(), resp.status, text)
        self.answers.append(answer)
        if route is not None:
            self.routes.add((method.lower(), route))
        return answer

    async def hook(
        self, method: str, path: str, raw: bytes, *, where: str, route: str, secret: str = SECRETS["hook_secret"]
    ) -> Answer:
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, raw)}
        return await self.call(method, path, where=where, route=route, token=None, body=raw, headers=headers)

    async def deliveries(self) -> list[dict[str, Any]]:
        answer = await self.call("GET", "/v1/deliveries?limit=1000", route="/v1/deliveries")
        assert answer.status == 200, answer.text
        return json.loads(answer.text.split("\n\n", 1)[1])["deliveries"]

    async def settle(self, within: float = 30) -> list[dict[str, Any]]:
        end = time.monotonic() + within
        while True:
            rows = await self.deliveries()
            # One attempt per channel (retry = [0]): settled once nothing waits to be sent or to be sent again.
            if rows and not [d for d in rows if d["state"] in ("queued", "in_flight", "retry_wait")]:
                return rows
            assert time.monotonic() < end, [(d["channel"], d["state"]) for d in rows]
            await asyncio.sleep(0.1)


def sweep_story(sandbox_url: str, story_id: str, **extra: Any) -> bytes:
    story = {
        "id": story_id,
        "headline": "上海16区融媒体中心全部建成并挂牌",
        "summary": "上海分两批、共16个区级融媒体中心已全部建成并挂牌。",
        "body_html": "<p>宝山、闵行两个区级融媒体中心正式挂牌。</p>",
        "url": f"https://news.example.cn/{story_id}.html",
        "published_at": "2019-09-18T18:30:00+08:00",
        "images": [{"href": f"{sandbox_url}/media/story-amber-1200x675.png", "role": "cover", "caption": "现场"}],
        **extra,
    }
    return json.dumps(story, ensure_ascii=False).encode()


@contextlib.contextmanager
def captured_logs(settings: Settings) -> Iterator[io.StringIO]:
    """The process's logs as `syndicate serve` writes them (JSON lines, secrets masked), into a buffer."""
    stream = io.StringIO()
    level = logging.getLogger().level
    configure_logging(settings, fmt="json", level=logging.DEBUG, stream=stream)
    try:
        yield stream
    finally:
        reset_logging()
        logging.getLogger().setLevel(level)


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, host="127.0.0.1", port=0, stop=stop, on_ready=ready.set_result))
    try:
        yield await asyncio.wait_for(ready, timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


async def test_no_secret_in_any_answer_error_log_or_cli_output(
    tmp_path: Path, sandbox: RunningSandbox, hostile: str
) -> None:
    sweep = sweep_config(tmp_path, sandbox.url, hostile)
    config, env = sweep.path, sweep.env
    settings = load_config(config, env=env)
    accept_credentials(sandbox.sandbox, settings)
    with captured_logs(settings) as logs:
        async with serving(settings) as url, aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            rec = Recorder(url, s)
            await publish_and_settle(rec, sandbox)
            rows = await rec.settle()
            await sweep_api(rec, rows)
            await sweep_dashboard(rec)
            # What the CLI prints about configuration, status and failures (channels --check asks every platform).
            commands = [[*c, *j] for c in (["status"], ["failed"], ["channels", "--check"]) for j in ([], ["--json"])]
            runs = await asyncio.gather(*(run_cli("--config", config, *c, cwd=tmp_path, env=env) for c in commands))
            for command, result in zip(commands, runs, strict=True):
                assert result.code in (0, 1) and "Traceback" not in result.err, result.err  # 1: failing checks
                rec.answers.append(Answer(f"syndicate {' '.join(command)}", result.code, f"{result.out}\n{result.err}"))
    rec.answers.append(Answer("the logs", 0, logs.getvalue()))
    assert len(logs.getvalue().splitlines()) > 50

    issued = list(sandbox.sandbox.store("wechat").get("tokens", {}))  # the access tokens WeChat handed out
    leaks = find_leaks(rec.answers, {**sweep.secrets, **{f"WeChat access token {i}": t for i, t in enumerate(issued)}})
    assert leaks == [], "secrets leaked:\n" + "\n".join(leaks)

    # The sweep saw what it came for: every platform channel landed on the sandbox and failed on the echoing
    # platform, which quoted our credentials in each error (and the receiver in its receipt): all masked.
    state = {d["channel"]: d["state"] for d in rows if d["story_id"] == "sec-1"}
    talkers = sweep.talkers
    assert {settings.channels[name].kind for name in talkers} == set(standins())  # every registered platform kind
    assert {k: state[k] for k in talkers} == dict.fromkeys(talkers, "delivered")
    assert {k: state[f"{k}-echo"] for k in talkers} == dict.fromkeys(talkers, "failed")
    failed = [d for d in rows if d["state"] == "failed"]
    unmasked = [(d["channel"], d["last_error"]) for d in failed if "***" not in (d["last_error"] or "")]
    assert unmasked == [], unmasked
    [ok] = [d for d in rows if d["channel"] == "hook-ok"]
    assert "Authorization: Bearer ***" in ok["receipt"]["raw"]["echo"]


async def publish_and_settle(rec: Recorder, sandbox: RunningSandbox) -> None:
    answer = await rec.hook(
        "POST", "/v1/stories", sweep_story(sandbox.url, "sec-1"), where="publish", route="/v1/stories"
    )
    assert answer.status == 202, answer.text
    # Without a picture Weibo gets a form-encoded body: the token travels URL-encoded, and comes back so.
    nopic = sweep_story(sandbox.url, "sec-2", images=[], targets=["weibo-echo", "webhook-echo"])
    assert (await rec.hook("POST", "/v1/stories", nopic, where="publish", route="/v1/stories")).status == 202
    await rec.settle()
    retract = json.dumps({"id": "sec-2"}).encode()
    answer = await rec.hook("DELETE", "/v1/stories/sec-2", retract, where="retract", route="/v1/stories/{story_id}")
    assert answer.status == 202, answer.text


def _body(answer: Answer) -> Any:
    return json.loads(answer.text.split("\n\n", 1)[1])


async def sweep_api(rec: Recorder, rows: list[dict[str, Any]]) -> None:
    """Every route /openapi.json lists, with valid ids, then wrong ones, without and with a wrong token (a secret
    that is not the token: the refusal must not quote it back), plus bad filters and bodies and the hook's refusals.
    """
    doc = _body(await rec.call("GET", "/openapi.json", route="/openapi.json", token=None))
    failed = next(d["id"] for d in rows if d["state"] == "failed")
    valid = {"story_id": "sec-1", "delivery_id": str(failed), "channel": "webhook", "path": "index.html"}
    wrong = {"story_id": "nope", "delivery_id": "999999", "channel": "nope", "path": "nope.html"}
    bodies: dict[tuple[str, str], Any] = {
        ("post", "/v1/deliveries/{delivery_id}/replay"): {"force": False},
        ("post", "/v1/replay"): {"state": "failed,unknown", "dry_run": True},
        ("post", "/v1/channels/{channel}/pause"): {"for": "1h", "reason": "secret sweep"},
    }
    verbs = {"get", "post", "put", "patch", "delete"}
    documented = {(method, path) for path, item in doc["paths"].items() for method in item if method in verbs}
    assert len(documented) >= 15, documented
    for method, route in sorted(documented):
        if route.startswith("/v1/stories"):  # the signed hook: below
            continue
        for ids, token, where in [
            (valid, SECRETS["api_token"], "valid"),
            (wrong, SECRETS["api_token"], "wrong ids"),
            (valid, None, "no token"),
            (valid, SECRETS["hook_secret"], "wrong token"),
        ]:
            path = re.sub(r"\{(\w+)\}", lambda m, ids=ids: quote(ids[m.group(1)], safe=""), route)
            answer = await rec.call(
                method.upper(), path, where=where, route=route, token=token, json_body=bodies.get((method, route))
            )
            if route.startswith("/v1/") and token != SECRETS["api_token"]:
                assert answer.status == 401, (method, path, where, answer.text)
    await rec.call("POST", "/v1/channels/webhook/resume", route="/v1/channels/{channel}/resume")

    # Bad filters, bad bodies, a path out of the web root (the store next to it holds the raw error texts).
    for query in ["state=bogus", "since=yesterday-ish", "limit=0", "cursor=x", "channel=webhook-echo&state=failed"]:
        await rec.call("GET", f"/v1/deliveries?{query}", where=query)
    await rec.call("POST", "/v1/replay", where="bad body", json_body={"chanel": SECRETS["api_token"]})
    await rec.call("POST", "/v1/replay", where="bad json", body=b"{", headers={"Content-Type": "application/json"})
    await rec.call("POST", "/v1/channels/webhook/pause", where="bad body", json_body={"until": "2001-01-01T00:00:00Z"})
    await rec.call("POST", f"/v1/deliveries/{failed}/replay", where="bad body", json_body={"force": "maybe"})
    for path in [
        "/site/..%2Fsweep.db",
        "/site/%2e%2e/sweep.db",
        "/site/.syndicate/manifest.json",
        "/site/../sweep.toml",
    ]:
        assert (await rec.call("GET", path, where="out of the web root")).status in (403, 404), path
    callback = "/wechat/wechat/callback?signature=x&timestamp=1&nonce=2"
    assert (await rec.call("GET", callback + "&echostr=hello", where="bad signature")).status == 403
    assert (await rec.call("POST", callback, where="bad signature", body=b"<xml/>")).status == 403

    # The hook: accepted again (no new work), then every refusal it has.
    story = sweep_story("http://127.0.0.1:9", "sec-1")
    await rec.call("POST", "/v1/stories", where="unsigned", route="/v1/stories", token=None, body=story)
    for where, raw, kw in [
        ("forged with the API token", story, {"secret": SECRETS["api_token"]}),
        ("malformed JSON", b'{"id": ', {}),
        ("invalid story", json.dumps({"id": "bad", "images": [{"href": "ftp://x/y.png"}]}).encode(), {}),
        ("unknown target", json.dumps({"id": "t", "headline": "h", "targets": ["webhook", "nowhere"]}).encode(), {}),
        ("older version", json.dumps({"id": "sec-1", "version": 1, "headline": "别的"}).encode(), {}),
    ]:
        answer = await rec.hook("POST", "/v1/stories", raw, where=where, route="/v1/stories", **kw)
        assert 400 <= answer.status < 500, (where, answer.text)
    stale = {SIGNATURE_HEADER: sign(SECRETS["hook_secret"], story, timestamp=int(time.time()) - 3600)}
    await rec.call("POST", "/v1/stories", where="stale", token=None, body=story, headers=stale)
    for where, path, raw in [
        ("id mismatch", "/v1/stories/sec-1", json.dumps({"id": "sec-2"}).encode()),
        ("unknown story", "/v1/stories/nope", json.dumps({"id": "nope"}).encode()),
        ("already retracted", "/v1/stories/sec-2", b""),
    ]:
        await rec.hook("DELETE", path, raw, where=where, route="/v1/stories/{story_id}")
    await rec.call("GET", "/v1/stories/sec-1", route="/v1/stories/{story_id}")
    await rec.call("GET", "/v1/stories/sec-2", route="/v1/stories/{story_id}")
    await rec.call("GET", "/v1/stories/nope", route="/v1/stories/{story_id}", where="wrong id")
    await rec.call("GET", "/v1/stories/sec-1", route="/v1/stories/{story_id}", token=SECRETS["hook_secret"])
    reach = "/v1/stories/{story_id}/reach"
    await rec.call("GET", "/v1/stories/sec-1/reach", route=reach)
    await rec.call("GET", "/v1/stories/nope/reach", route=reach, where="wrong id")
    for token in (None, SECRETS["hook_secret"]):
        assert (await rec.call("GET", "/v1/stories/sec-1/reach", route=reach, token=token)).status == 401
    await rec.call("GET", f"/v1/reach?section={quote(SECRETS['api_token'])}", route="/v1/reach", where="section")
    await rec.call("GET", f"/reach/b.gif?s=sec-1&c={quote(SECRETS['hook_secret'])}", route="/reach/b.gif")
    missed = documented - rec.routes
    assert not missed, f"routes the sweep did not call: {sorted(missed)}"


async def sweep_dashboard(rec: Recorder) -> None:
    page = await rec.call("GET", "/dashboard/login", token=None)
    csrf = re.search(r'name="csrf" value="([^"]*)"', page.text)
    assert csrf
    # A wrong token that is another secret: the refusal must not show it back.
    wrong = {"csrf": csrf.group(1), "token": SECRETS["hook_secret"], "next": "/"}
    assert (await rec.call("POST", "/dashboard/login", token=None, body=_form(wrong), headers=FORM)).status == 401
    right = {**wrong, "token": SECRETS["api_token"]}
    assert (await rec.call("POST", "/dashboard/login", token=None, body=_form(right), headers=FORM)).status == 303
    for path in ["/", "/dashboard/board.json", "/dashboard/failures", "/dashboard/channels"]:
        for lang in ("", "?lang=en"):
            assert (await rec.call("GET", path + lang, token=None)).status == 200, path
    for story_id in ("sec-1", "sec-2"):
        assert (await rec.call("GET", f"/dashboard/stories/{story_id}", token=None)).status == 200


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _form(fields: Mapping[str, str]) -> bytes:
    return "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in fields.items()).encode()


# =========================================================================================== 3. signatures


@pytest.fixture
async def hook_server(tmp_path: Path, sandbox: RunningSandbox) -> AsyncIterator[Server]:
    """tests/e2e/test_server.py's service (two webhook channels on the sandbox), its helpers for signed calls."""
    async with serving(server_settings(tmp_path, sandbox.url)) as url, aiohttp.ClientSession() as session:
        yield Server(url, session)


async def test_a_signature_over_another_body_is_refused(hook_server: Server) -> None:
    signed = json.dumps(STORY).encode()
    other = json.dumps({**STORY, "id": "srv-evil", "headline": "另一篇"}).encode()
    header = sign(HOOK_SECRET, signed)
    for body in (other, signed + b" ", signed.replace(b"srv-1", b"srv-2")):
        status, answer = await hook_server.hook(body, headers={SIGNATURE_HEADER: header})
        assert (status, answer["error"]) == (401, "bad_signature"), body
        assert "does not match" in answer["message"]
    assert (await hook_server.api("GET", "/v1/deliveries"))[1]["deliveries"] == []
    # The signature itself was not spent by those refusals: its own body still goes through.
    assert (await hook_server.hook(signed, headers={SIGNATURE_HEADER: header}))[0] == 202


def respellings(header: str) -> list[str]:
    """The same signature written differently: each still verifies, none may count as a new one."""
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    return [
        f"t={t}, v1={v1}",
        f" t={t},v1={v1} ",
        f"v1={v1},t={t}",
        f"t={t},v1={v1},v1={'0' * 64}",
        f"t={t},v1={v1},v0=anything",
        f"t=0{t},v1={v1}",
        f"t=+{t},v1={v1}",
    ]


async def test_a_used_signature_stays_used_however_its_header_is_respelled(hook_server: Server) -> None:
    """A captured retraction must not be replayable after the desk re-published the story, whatever whitespace,
    order, extra fields or number spelling the replay puts in the header."""
    await hook_server.hook(STORY)
    retract = json.dumps({"id": "srv-1"}).encode()
    header = sign(HOOK_SECRET, retract)
    status, _ = await hook_server.hook(
        retract, method="DELETE", path="/v1/stories/srv-1", headers={SIGNATURE_HEADER: header}
    )
    assert status == 202
    assert (await hook_server.hook({**STORY, "version": 3}))[0] == 202  # the desk publishes it again
    for spelling in respellings(header):
        status, answer = await hook_server.hook(
            retract, method="DELETE", path="/v1/stories/srv-1", headers={SIGNATURE_HEADER: spelling}
        )
        assert (status, answer["error"]) == (401, "replayed_signature"), spelling
    _, story = await hook_server.api("GET", "/v1/stories/srv-1")
    assert (story["version"], story["story"]["pubstatus"]) == (3, "usable")


async def test_a_captured_publish_signature_cannot_retract(hook_server: Server) -> None:
    """The signature covers the body, not the method: a signed update (which names the story) caught on the way
    must not be turned into a DELETE of that story."""
    await hook_server.hook(STORY)
    update = json.dumps({**STORY, "version": 2, "headline": "更正后的标题"}).encode()
    header = sign(HOOK_SECRET, update)
    status, answer = await hook_server.hook(
        update, method="DELETE", path="/v1/stories/srv-1", headers={SIGNATURE_HEADER: header}
    )
    assert status == 400 and answer["error"] == "id_mismatch", answer
    _, story = await hook_server.api("GET", "/v1/stories/srv-1")
    assert story["story"]["pubstatus"] == "usable"
    # An empty-body retraction is bound to no story, but it is good once: the signature that retracted one story
    # cannot be aimed at another.
    await hook_server.hook({**STORY, "id": "srv-2"})
    empty = {SIGNATURE_HEADER: sign(HOOK_SECRET, b"")}
    assert (await hook_server.hook(b"", method="DELETE", path="/v1/stories/srv-1", headers=empty))[0] == 202
    status, answer = await hook_server.hook(b"", method="DELETE", path="/v1/stories/srv-2", headers=empty)
    assert (status, answer["error"]) == (401, "replayed_signature")
    _, story = await hook_server.api("GET", "/v1/stories/srv-2")
    assert story["story"]["pubstatus"] == "usable"


@pytest.mark.parametrize("name", [SIGNATURE_HEADER.lower(), SIGNATURE_HEADER.upper(), "x-SYNDICATE-signature"])
async def test_the_signature_header_name_is_case_insensitive_and_still_used_once(
    hook_server: Server, name: str
) -> None:
    body = json.dumps(STORY).encode()
    header = sign(HOOK_SECRET, body)
    async with hook_server.session.post(
        hook_server.url + "/v1/stories", data=body, headers={"Content-Type": "application/json", name: header}
    ) as resp:
        assert resp.status == 202
    status, answer = await hook_server.hook(body, headers={SIGNATURE_HEADER: header})
    assert (status, answer["error"]) == (401, "replayed_signature")


# ================================================================================================= 4. SSRF


class FakeDNS(aiohttp.abc.AbstractResolver):
    """DNS without the network: names from a table, numeric spellings (``0x7f000001``) as getaddrinfo reads them."""

    TABLE: Mapping[str, list[str]] = {
        "localhost": ["127.0.0.1", "::1"],
        "localhost.": ["127.0.0.1"],
        "metadata.google.internal": ["169.254.169.254"],
        "intranet.example": ["10.1.2.3"],
        "mixed.example": ["93.184.216.34", "192.168.1.5"],
    }

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        addresses = self.TABLE.get(host.lower())
        if addresses is None:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, family=socket.AF_UNSPEC, flags=socket.AI_NUMERICHOST
            )
            addresses = [str(info[4][0]) for info in infos]
        return [
            {"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0} for a in addresses
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("syndicate.media.DefaultResolver", FakeDNS)


LOOPBACK = "127.0.0.1 is a loopback address"


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("http://localhost./a.png", f"localhost. resolves to a refused address: {LOOPBACK}"),
        ("http://ＬＯＣＡＬＨＯＳＴ/a.png", f"localhost resolves to a refused address: {LOOPBACK}"),
        ("http://metadata.google.internal/computeMetadata/v1/", "169.254.169.254 is a link-local address"),
        ("http://intranet.example/a.png", "10.1.2.3 is a private address"),
        ("http://mixed.example/a.png", "192.168.1.5 is a private address"),
        ("http://0x7f000001/a.png", f"0x7f000001 resolves to a refused address: {LOOPBACK}"),
        ("http://0x7f.0.0.1/a.png", LOOPBACK),
        ("http://127。0。0。1/a.png", LOOPBACK),
        ("http://①②⑦.0.0.1/a.png", LOOPBACK),
        ("http://user:pass@127.0.0.1/a.png", LOOPBACK),
        ("http://news.example.cn@10.0.0.1/a.png", "10.0.0.1 is a private address"),
        ("HTTP://[::1]/a.png", "::1 is a loopback address"),
        ("http://[0:0:0:0:0:0:0:1]/a.png", "::1 is a loopback address"),
        ("http://[::]/a.png", ":: is an unspecified address"),
        ("http://[::ffff:7f00:1]/a.png", "(IPv4-mapped 127.0.0.1) is a loopback address"),
        ("http://[::ffff:a9fe:a9fe]/latest/meta-data/", "(IPv4-mapped 169.254.169.254) is a link-local address"),
        ("http://[fe80::1%25eth0]/a.png", "is a link-local address"),
        ("http://0/a.png", "0 is not a canonical IP address"),
        ("http://0177.0.0.1/a.png", "0177.0.0.1 is not a canonical IP address"),
        ("http://169.254.169.254./latest/meta-data/", "169.254.169.254. is not a canonical IP address"),
    ],
)
@pytest.mark.usefixtures("fake_dns")
async def test_more_spellings_of_private_hosts_are_refused_before_any_request(url: str, named: str) -> None:
    fetcher = no_network_fetcher()  # its session fails the test if a request is made
    with pytest.raises(MediaRefused) as info:
        await fetcher.fetch(url)
    assert str(info.value).startswith(f"refusing {url}: ") and named in str(info.value), str(info.value)
    if "canonical" not in named:
        assert "allow_hosts" in str(info.value)  # and it says how to allow it


@pytest.fixture
async def redirector() -> AsyncIterator[tuple[str, list[str]]]:
    """A server on 127.0.0.1 whose ``/to?loc=`` redirects anywhere, and the paths it was asked for."""
    hits: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        if request.path == "/to":
            raise web.HTTPFound(request.query["loc"])
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}", hits
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("location", "named"),
    [
        ("http://[::1]:{port}/a.png", "::1 is a loopback address"),
        ("http://0.0.0.0:{port}/a.png", "0.0.0.0 is an unspecified address"),
        ("http://2130706433:{port}/a.png", "2130706433 is not a canonical IP address"),
        ("http://[::ffff:169.254.169.254]/latest/meta-data/", "(IPv4-mapped 169.254.169.254) is a link-local"),
        ("http://metadata.google.internal/computeMetadata/v1/", "169.254.169.254 is a link-local address"),
        ("//intranet.example/a.png", "10.1.2.3 is a private address"),
    ],
)
@pytest.mark.usefixtures("fake_dns")
async def test_a_redirect_to_a_private_address_is_refused(
    redirector: tuple[str, list[str]], location: str, named: str
) -> None:
    base, hits = redirector
    url = f"{base}/to?loc={quote(location.format(port=base.rsplit(':', 1)[1]), safe='')}"
    async with MediaFetcher(MediaSettings(), address_allowed=only_loopback) as fetcher:
        with pytest.raises(MediaRefused) as info:
            await fetcher.fetch(url)
    message = str(info.value)
    assert re.search(r"\(redirect(ed| 1) from http://127\.0\.0\.1:\d+/to\?loc=", message) and named in message, message
    assert hits == ["/to"]  # the first hop only; nothing followed


def weibo_channel(sandbox_url: str) -> dict[str, dict[str, Any]]:
    return {
        "weibo": {
            "kind": "weibo",
            "api_base": sandbox_url,
            "access_token": weibo.DEFAULT_ACCESS_TOKEN,
            "safe_domain": "news.example.cn",
            "rip": "203.0.113.10",
            "retry": [0],
            "timeout": 3,
        }
    }


@pytest.mark.parametrize("allow_private", [False, True])
async def test_a_story_image_on_a_private_address_fails_its_delivery_unless_allowed(
    tmp_path: Path, sandbox: RunningSandbox, allow_private: bool
) -> None:
    """End to end: the image (on the sandbox, 127.0.0.1) is refused under `[media] allow_private = false` with
    the delivery failed saying why, and fetched and posted when the operator allowed private addresses."""
    settings = make_settings(tmp_path, weibo_channel(sandbox.url), media={"allow_private": allow_private})
    story = make_story(images=[{"href": f"{sandbox.url}/media/story-amber-1200x675.png", "role": "cover"}])
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            await engine.accept(story)
            await engine.run(until_idle=True, idle_horizon=0.5)
            [delivery] = await store.list_deliveries(DeliveryFilter())
    finally:
        await store.close()
    posted = weibo.statuses(sandbox.sandbox)
    if allow_private:
        assert delivery.state is State.DELIVERED and len(posted) == 1 and posted[0].get("original_pic")
        return
    assert (delivery.state, delivery.last_error_class, posted) == (State.FAILED, "Permanent", [])
    assert f"{sandbox.url}/media/story-amber-1200x675.png" in (delivery.last_error or "")
    assert LOOPBACK in (delivery.last_error or "") and "allow_hosts" in (delivery.last_error or "")


# ================================================================ 5. the dashboard's redirects and sessions (issue 14)

REDIRECT_LEADS = ["", "/", "\t", " ", "\x00", "\n", "\\"]
REDIRECT_SLASHES = ["//", "/\\", "\\\\", "\\/", "/\t/", "/\n/", "/%2F", "%2F%2F", "/%5C", "%5C%5C", "/%09/", "/%252F"]
REDIRECT_HOSTS = ["evil.example/", "evil.example@127.0.0.1/", "127.0.0.1.evil.example/dashboard/"]
REDIRECT_SCHEMES = ["", "https:", "http:", "HTTPS:", "javascript:", "java\tscript:", "data:"]


def _where_a_browser_goes(location: str) -> urllib.parse.SplitResult:
    """Resolve a Location against the dashboard's own URL, after the clean-up a browser does (tabs and newlines
    dropped, backslashes read as slashes)."""
    read = location.translate(str.maketrans("", "", "\t\n\r")).strip("".join(map(chr, range(0x21))))
    return urllib.parse.urlsplit(urllib.parse.urljoin("https://dash.example/dashboard/x", read.replace("\\", "/")))


def test_no_spelling_of_a_redirect_target_leaves_the_dashboard() -> None:
    """Every combination of scheme, leading junk, double slash (plain, backslashed, tab-split, percent-encoded once
    or twice) and host: `local_path`, the one check every dashboard redirect goes through, gives the fallback or a
    path that a browser resolves on the dashboard's own origin, under /dashboard/ or at /."""
    checked = 0
    for scheme, lead, slashes, host in itertools.product(
        REDIRECT_SCHEMES, REDIRECT_LEADS, REDIRECT_SLASHES, REDIRECT_HOSTS
    ):
        target = f"{scheme}{lead}{slashes}{host}"
        got = local_path(target, "/dashboard/failures")
        lands = _where_a_browser_goes(got)
        assert (lands.scheme, lands.netloc) == ("https", "dash.example"), (target, got)
        assert lands.path == "/" or lands.path.startswith("/dashboard/"), (target, got)
        assert got == "/dashboard/failures", (target, got)  # none of these is a dashboard path
        checked += 1
    assert checked == len(REDIRECT_SCHEMES) * len(REDIRECT_LEADS) * len(REDIRECT_SLASHES) * len(REDIRECT_HOSTS)
    assert local_path("/dashboard/stories/a?lang=en", "/") == "/dashboard/stories/a?lang=en"


async def test_dashboard_sessions_end_on_the_server_and_forwarded_headers_are_not_trusted(tmp_path: Path) -> None:
    """A cookie copied before logout or before `sessions revoke-all` opens nothing; X-Forwarded-* from a client
    that is not a configured proxy neither moves the accepted origin nor hides the address the throttle counts."""
    settings = parse_config(
        {"store": {"url": f"sqlite:///{tmp_path / 's.db'}"}, "server": {"api_token": DASH_TOKEN}},
        source="sessions.toml",
        env={},
    )
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine, TestClient(TestServer(create_app(settings, engine))) as client:
            dash = Dash(client, engine)
            assert await dash.login(DASH_TOKEN) == 303
            jar = client.session.cookie_jar
            session = jar.filter_cookies(client.make_url("/"))["syndicate_session"].value
            cookie = {"Cookie": f"syndicate_session={session}"}
            csrf = await dash.csrf()
            assert (await client.post("/dashboard/logout", data={"csrf": csrf}, allow_redirects=False)).status == 303
            assert (await client.get("/", headers=cookie, allow_redirects=False)).status == 303
            assert await dash.login(DASH_TOKEN) == 303
            await auth.revoke_all(store, now=time.time())
            assert (await client.get("/", allow_redirects=False)).status == 303
            jar.clear()
            forged = {
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil.example",
                "Origin": "https://evil.example",
            }
            page = await client.get("/dashboard/login", headers=forged)
            login_csrf = re.search(r'name="csrf" value="([^"]*)"', await page.text())
            assert login_csrf and "Secure" not in page.headers["Set-Cookie"]
            resp = await client.post(
                "/dashboard/login", data={"csrf": login_csrf.group(1), "token": DASH_TOKEN}, headers=forged
            )
            assert resp.status == 403
            for n in range(12):  # a new X-Forwarded-For each time: still one address to the throttle
                resp = await client.post(
                    "/dashboard/login",
                    data={"csrf": login_csrf.group(1), "token": f"wrong-{n}-0123456789abcdef"},
                    headers={"X-Forwarded-For": f"198.51.100.{n}"},
                )
            assert resp.status == 429 and "Retry-After" in resp.headers
    finally:
        await store.close()
