"""The partner channel (人民号, 上观号) against the sandbox stand-in, a raw-bytes capture server and the engine."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from adapters.partner.adapter import (
    PARTNER_FIELDS,
    PartnerAdapter,
    PartnerBody,
    PartnerOptions,
    encode_body,
    partner_signature,
)
from adapters.partner.standin import (
    DEFAULT_APP_KEY,
    DEFAULT_SECRET,
    REUSED_NONCE,
    STALE_TIMESTAMP,
    WRONG_APP_KEY,
    WRONG_SIGNATURE,
    articles,
    set_credentials,
)
from syndicate.channel import register
from syndicate.config import ConfigError
from syndicate.delivery import (
    Action,
    AuthRevoked,
    OutcomeUnknown,
    Payload,
    Permanent,
    RateLimited,
    Receipt,
    RenderError,
    Retryable,
)
from syndicate.engine import Engine
from syndicate.sandbox import RunningSandbox
from syndicate.sanitize import clean_html
from syndicate.store import open_store
from syndicate.store.base import DeliveryFilter, State
from syndicate.story import Story
from tests.support import closed_port, example_stories, make_settings, make_story, run_engine, started
from tests.support import ctx_for as support_ctx

ctx_for = functools.partial(support_ctx, channel="peoples_account")

register(PartnerAdapter)

#: Short enough that the sandbox's 3 s hold always trips it.
SHORT_TIMEOUT = 0.3
FAST_RETRY = [0, 0.05, 0.05, 0.05]
SHANGGUAN_APP_KEY = "shangguan-app"
SHANGGUAN_SECRET = "shangguan-secret"
SHANGGUAN_MAPPING = {"title": "headline_cn", "content_html": "content", "published_at": "pub_time"}
SHANGGUAN_EXTRA: dict[str, Any] = {"source": "宝山汇", "column_id": 1207}

HOSTILE_BODY = (
    '<p onclick="steal()">宝山汇<script>alert(1)</script> <a href="javascript:alert(2)">link</a></p>'
    '<img src="https://img.example/a.png" onerror="alert(3)"><iframe src="https://evil.example"></iframe>'
)
HOSTILE_TITLE = '<img src=x onerror=alert(1)> 宝山汇 & "引号" </title>'
HOSTILE_SUMMARY = "<b>粗体</b> & <i>斜体</i> 'quoted'"


def sign(secret: str, method: str, target: str, timestamp: str, nonce: str, body: bytes) -> str:
    """The partner's documented signature (five lines, each ending in a newline: method, request target, timestamp,
    nonce, body), computed here independently of the adapter."""
    message = f"{method}\n{target}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def options(base: str = "http://127.0.0.1:9", name: str = "peoples_account", **kw: Any) -> PartnerOptions:
    url = f"{base}/partner/{name}/articles"
    values: dict[str, Any] = {"url": url, "lookup_url": url, "app_key": DEFAULT_APP_KEY, "secret": DEFAULT_SECRET}
    values.update(kw)
    return PartnerOptions(**values)


AdapterFactory = Callable[..., PartnerAdapter]


@pytest.fixture
async def make_adapter(sandbox: RunningSandbox) -> AsyncIterator[AdapterFactory]:
    started: list[PartnerAdapter] = []

    def factory(
        name: str = "peoples_account", *, timeout: float = 2.0, base: str | None = None, **kw: Any
    ) -> PartnerAdapter:
        adapter = PartnerAdapter(name, options(base or sandbox.url, name, **kw), timeout=timeout)
        started.append(adapter)
        return adapter

    yield factory
    for adapter in started:
        await adapter.close()


def publish_payload(adapter: PartnerAdapter, **story: Any) -> Payload:
    return adapter.render(make_story(**story), Action.PUBLISH)


# ------------------------------------------------------------------------------------------ render


def test_render_sends_the_documented_fields_of_an_example_story() -> None:
    story = example_stories()[0]
    adapter = PartnerAdapter("peoples_account", options(), timeout=1)
    payload = adapter.render(story, Action.PUBLISH)
    data = payload.to_json()["data"]  # the wire JSON
    assert set(data) == set(PARTNER_FIELDS)
    assert data["idempotency_key"] == "sh-rmt-20190918-001:1:peoples_account:publish"
    assert data["title"] == story.headline and data["summary"] == story.summary
    assert data["content_html"] == clean_html(story.body_html) and "<figure>" in data["content_html"]
    assert data["author"] == "轩召强 葛俊俊"
    assert data["source_url"] == "https://news.example.cn/shanghai/2019/09/sh-rmt-20190918-001.html"
    assert data["published_at"] == "2019-09-18T18:30:00+08:00"
    assert data["cover"] == "http://127.0.0.1:8765/media/story-amber-1200x675.png"  # the image marked cover
    assert data["images"] == [image.href for image in story.images] and len(data["images"]) == 3
    assert data["tags"] == ["融媒体", "宝山汇", "上海"]
    assert payload.warnings == ()
    # Pure and deterministic, and it survives the store's JSON round trip byte for byte.
    assert adapter.render(story, Action.PUBLISH) == payload
    stored = adapter.load_payload(Payload.from_json(json.loads(json.dumps(payload.to_json()))))
    assert stored == payload and stored.data.encoded() == encode_body(data)
    update = adapter.render(story, Action.UPDATE).to_json()["data"]
    assert update["idempotency_key"] == "sh-rmt-20190918-001:1:peoples_account:update"
    assert adapter.render(story, Action.RETRACT).to_json()["data"] == {}  # DELETE by id carries no body


def test_render_converts_times_to_shanghai_and_uses_channel_overrides() -> None:
    adapter = PartnerAdapter("shangguan", options(name="shangguan"), timeout=1)
    story = make_story(
        published_at="2019-09-18T10:30:05.250Z",
        overrides={"shangguan": {"headline": "上观号专用标题", "summary": "上观号摘要"}, "other": {"headline": "x"}},
    )
    data = adapter.render(story, Action.PUBLISH).data.fields
    assert data["published_at"] == "2019-09-18T18:30:05+08:00"
    assert data["title"] == "上观号专用标题" and data["summary"] == "上观号摘要"
    assert data["idempotency_key"] == "story-1:1:shangguan:publish"
    # Without an override the story's own text; without a date or images, explicit nulls and a warning.
    plain = PartnerAdapter("peoples_account", options(), timeout=1).render(story, Action.PUBLISH)
    assert plain.data.fields["title"] == story.headline
    bare = adapter.render(make_story(overrides={}), Action.PUBLISH)
    assert {key: bare.data.fields[key] for key in ("published_at", "cover", "images")} == {
        "published_at": None,
        "cover": None,
        "images": [],
    }
    assert any("published_at" in w for w in bare.warnings)


def test_mapping_renames_our_fields_and_extra_adds_static_ones() -> None:
    adapter = PartnerAdapter(
        "shangguan", options(name="shangguan", mapping=SHANGGUAN_MAPPING, extra=SHANGGUAN_EXTRA), timeout=1
    )
    story = example_stories()[1]
    data = adapter.render(story, Action.PUBLISH).to_json()["data"]  # the wire JSON
    assert data["headline_cn"] == story.headline and data["content"] == clean_html(story.body_html)
    assert data["pub_time"] == "2019-09-18T19:00:00+08:00"
    assert not {"title", "content_html", "published_at"} & set(data)
    assert data["source"] == "宝山汇" and data["column_id"] == 1207  # types kept: 1207 stays a number
    assert data["summary"] == story.summary  # unmapped fields keep our names
    assert len(data) == len(PARTNER_FIELDS) + len(SHANGGUAN_EXTRA)


def test_render_refuses_an_empty_title_and_warns_about_an_empty_body() -> None:
    adapter = PartnerAdapter("peoples_account", options(), timeout=1)
    with pytest.raises(RenderError, match="headline"):
        adapter.render(make_story(pubstatus="canceled", headline=""), Action.UPDATE)
    blank_override = make_story(overrides={"peoples_account": {"headline": "  ", "summary": ""}})
    assert adapter.render(blank_override, Action.PUBLISH).data.fields["title"] == blank_override.headline
    empty = adapter.render(make_story(body_html="<script>x()</script>"), Action.PUBLISH)
    assert empty.data.fields["content_html"] == ""
    assert any("body_html" in w for w in empty.warnings)


def test_adapter_capabilities() -> None:
    assert PartnerAdapter("p", options(), timeout=1).supports_lookup is True
    assert PartnerAdapter("p", options(lookup_url=None), timeout=1).supports_lookup is False
    assert PartnerAdapter.idempotent is False  # a resent POST is only safe through lookup
    assert PartnerAdapter.actions == frozenset(Action)


# ------------------------------------------------------------------------------------------ config


def partner_channel(sandbox_url: str, name: str, **kw: Any) -> dict[str, Any]:
    url = f"{sandbox_url}/partner/{name}/articles"
    return {
        "kind": "partner",
        "url": url,
        "lookup_url": url,
        "app_key": DEFAULT_APP_KEY,
        "secret": DEFAULT_SECRET,
        "retry": FAST_RETRY,
        "timeout": 2,
        **kw,
    }


def shangguan_channel(sandbox_url: str, **kw: Any) -> dict[str, Any]:
    return partner_channel(
        sandbox_url,
        "shangguan",
        app_key=SHANGGUAN_APP_KEY,
        secret=SHANGGUAN_SECRET,
        mapping=SHANGGUAN_MAPPING,
        extra=SHANGGUAN_EXTRA,
        **kw,
    )


def test_config_loads_mapping_and_extra(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, {"shangguan": shangguan_channel("http://127.0.0.1:9")})
    opts = settings.channels["shangguan"].options
    assert isinstance(opts, PartnerOptions)
    assert opts.mapping == SHANGGUAN_MAPPING and opts.extra == SHANGGUAN_EXTRA
    assert opts.wire_name("title") == "headline_cn" and opts.wire_name("tags") == "tags"


@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        ({"mapping": {"headline": "headline_cn"}}, "mapping", "'headline' is not a field this channel sends"),
        ({"mapping": {"title": " "}}, "mapping", "'title' is mapped to an empty name"),
        ({"mapping": {"title": "tags"}}, "mapping", "'title' and 'tags' would both be sent as 'tags'"),
        ({"extra": {"title": "固定标题"}}, "extra", "'title' would overwrite the story's 'title' field"),
        (
            {"mapping": {"title": "headline_cn"}, "extra": {"headline_cn": "x"}},
            "extra",
            "'headline_cn' would overwrite the story's 'title' field",
        ),
        ({"extra": {"source": ["a", "b"]}}, "extra", "'source' must be a string, finite number or boolean"),
        ({"extra": {"weight": float("nan")}}, "extra", "'weight' must be a string, finite number or boolean"),
        ({"headers": {"X-A": "b"}}, "headers", "unknown key"),
        ({"secret": ""}, "secret", ""),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, overrides: dict[str, Any], key: str, says: str) -> None:
    channel = partner_channel("http://127.0.0.1:9", "shangguan", **overrides)
    with pytest.raises(ConfigError) as info:
        make_settings(tmp_path, {"shangguan": channel})
    assert info.value.table == "channels.shangguan"
    assert info.value.key == key
    assert says in info.value.problem
    if key == "mapping" and "not a field" in says:
        assert "title, summary, content_html" in info.value.problem  # it lists what can be mapped


# ------------------------------------------------------------------------------------------ the stand-in's check


@dataclass
class Signed:
    """A hand-made signed request to the stand-in (no adapter involved)."""

    method: str
    path: str
    body: bytes = b""
    secret: str = DEFAULT_SECRET
    app_key: str = DEFAULT_APP_KEY
    skew: float = 0.0
    nonce: str = field(default_factory=lambda: f"n-{time.monotonic_ns()}")
    sign_body: bytes | None = None  # sign other bytes than sent: a tampered body
    headers: dict[str, str] = field(default_factory=dict)

    def signed_headers(self, base: str) -> dict[str, str]:
        """The headers of this request, signed over its method, its request target as sent and its body."""
        timestamp = str(int(time.time() + self.skew))
        signed = self.body if self.sign_body is None else self.sign_body
        target = URL(f"{base}{self.path}").raw_path_qs
        return {
            "X-App-Key": self.app_key,
            "X-Timestamp": timestamp,
            "X-Nonce": self.nonce,
            "X-Signature": sign(self.secret, self.method, target, timestamp, self.nonce, signed),
            "Content-Type": "application/json",
            **self.headers,
        }

    async def send(
        self, session: aiohttp.ClientSession, base: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Send it, with its own signed headers or with ``headers`` taken from another request (a replay)."""
        sent = headers if headers is not None else self.signed_headers(base)
        async with session.request(self.method, f"{base}{self.path}", data=self.body, headers=sent) as resp:
            return resp.status, await resp.json()


def article_body(key: str) -> bytes:
    return json.dumps({"idempotency_key": key, "title": "标题"}, ensure_ascii=False).encode()


async def test_stand_in_accepts_a_correct_signature_and_refuses_every_bad_one(sandbox: RunningSandbox) -> None:
    path = "/partner/peoples_account/articles"
    async with aiohttp.ClientSession() as session:
        status, answer = await Signed("POST", path, article_body("k:1:peoples_account:publish")).send(
            session, sandbox.url
        )
        assert status == 201 and answer["code"] == 0 and answer["status"] == "published"
        remote_id = answer["remote_id"]

        refusals = {
            "wrong secret": Signed("POST", path, article_body("k:2"), secret="not-the-secret"),
            "wrong app key": Signed("POST", path, article_body("k:3"), app_key="someone-else"),
            "stale timestamp": Signed("POST", path, article_body("k:4"), skew=-301),
            "future timestamp": Signed("POST", path, article_body("k:5"), skew=+301),
            "tampered body": Signed("POST", path, article_body("k:6"), sign_body=article_body("k:other")),
        }
        codes = {}
        for what, request in refusals.items():
            status, answer = await request.send(session, sandbox.url)
            assert status == 401, what
            assert set(answer) == {"code", "message"} and answer["message"], what
            codes[what] = answer["code"]
        assert codes == {
            "wrong secret": WRONG_SIGNATURE,
            "wrong app key": WRONG_APP_KEY,
            "stale timestamp": STALE_TIMESTAMP,
            "future timestamp": STALE_TIMESTAMP,
            "tampered body": WRONG_SIGNATURE,
        }
        # Inside the window is fine; a missing header is named.
        status, _ = await Signed("POST", path, article_body("k:7"), skew=-295).send(session, sandbox.url)
        assert status == 201
        async with session.post(f"{sandbox.url}{path}", data=article_body("k:8")) as resp:
            assert resp.status == 401 and "X-App-Key" in (await resp.json())["message"]

        # A nonce is single-use, even for another method and path...
        status, _ = await Signed("GET", f"{path}?key=k:1:peoples_account:publish", nonce="once").send(
            session, sandbox.url
        )
        assert status == 200
        status, answer = await Signed("DELETE", f"{path}/{remote_id}", nonce="once").send(session, sandbox.url)
        assert (status, answer["code"]) == (401, REUSED_NONCE)
        # ...but a forged request cannot use one up: the signature is checked before the nonce is spent.
        forged = Signed("POST", path, article_body("k:9"), secret="forger", nonce="fresh")
        assert (await forged.send(session, sandbox.url))[0] == 401
        status, _ = await Signed("POST", path, article_body("k:9"), nonce="fresh").send(session, sandbox.url)
        assert status == 201

    # Refused requests were neither recorded nor stored.
    keys = [r.idempotency_key for r in sandbox.sandbox.received("partner", "peoples_account")]
    assert keys == ["k:1:peoples_account:publish", "k:7", "k:9"]
    assert {a.idempotency_key for a in articles(sandbox.sandbox, "peoples_account").values()} == set(keys)
    assert articles(sandbox.sandbox, "peoples_account")[remote_id].status == "published"  # the replayed DELETE


async def test_a_signature_made_for_one_method_and_path_is_refused_on_another(sandbox: RunningSandbox) -> None:
    """A lookup and a DELETE both have an empty body: when the signature covered only timestamp, nonce and body, a
    captured lookup whose nonce was never used could be replayed as the DELETE of any article within 300 s."""
    path = "/partner/peoples_account/articles"
    async with aiohttp.ClientSession() as session:
        status, created = await Signed("POST", path, article_body("bind:1")).send(session, sandbox.url)
        assert status == 201
        remote_id = created["remote_id"]
        lookup = Signed("GET", f"{path}?key=bind:1", nonce="captured-never-sent")
        captured = lookup.signed_headers(sandbox.url)
        replays = {
            "another method and path": Signed("DELETE", f"{path}/{remote_id}"),
            "another query": Signed("GET", f"{path}?key=bind:2"),
            "another method, same target": Signed("POST", f"{path}?key=bind:1"),
        }
        for what, replay in replays.items():
            status, answer = await replay.send(session, sandbox.url, headers=captured)
            assert (status, answer["code"]) == (401, WRONG_SIGNATURE), what
            assert "METHOD" in answer["message"], what
        assert articles(sandbox.sandbox, "peoples_account")[remote_id].status == "published"
        # The refused replays spent nothing: the request the signature was made for still goes through.
        status, found = await lookup.send(session, sandbox.url, headers=captured)
        assert status == 200 and found["remote_id"] == remote_id


async def test_stand_in_credentials_per_partner_and_control_endpoints(sandbox: RunningSandbox) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{sandbox.url}/_sandbox/partner/shangguan/credentials",
            json={"app_key": SHANGGUAN_APP_KEY, "secret": SHANGGUAN_SECRET},
        ) as resp:
            assert resp.status == 200
        path = "/partner/shangguan/articles"
        status, answer = await Signed("POST", path, article_body("sg:1")).send(session, sandbox.url)
        assert (status, answer["code"]) == (401, WRONG_APP_KEY)  # the defaults no longer work for shangguan
        ok = Signed("POST", path, article_body("sg:1"), app_key=SHANGGUAN_APP_KEY, secret=SHANGGUAN_SECRET)
        assert (await ok.send(session, sandbox.url))[0] == 201
        # Other partners keep the defaults.
        status, _ = await Signed("POST", "/partner/peoples_account/articles", article_body("pa:1")).send(
            session, sandbox.url
        )
        assert status == 201
        async with session.post(f"{sandbox.url}/_sandbox/partner/shangguan/review", json={"pending": "yes"}) as resp:
            assert resp.status == 400


# ------------------------------------------------------------------------------------------ the adapter, directly


async def test_publish_signs_each_request_freshly_over_the_same_bytes(
    sandbox: RunningSandbox, make_adapter: AdapterFactory
) -> None:
    adapter = await started(make_adapter())
    payload = publish_payload(adapter)
    first = await adapter.publish(payload, ctx_for())
    assert first.remote_id is not None and first.remote_id.startswith("peoples_account-")
    assert first.url == f"https://peoples_account.partner.example/articles/{first.remote_id}"
    assert first.raw["status"] == "published" and first.raw["code"] == 0

    # The same payload again (a retry): new nonce and signature over identical bytes; the partner deduplicates.
    second = await adapter.publish(payload, ctx_for())
    assert second.remote_id == first.remote_id and second.raw["duplicate"] is True
    assert len(articles(sandbox.sandbox, "peoples_account")) == 1

    a, b = sandbox.sandbox.received("partner", "peoples_account")
    assert a.body == b.body == payload.to_json()["data"]
    assert a.idempotency_key == b.idempotency_key == "story-1:1:peoples_account:publish"
    assert a.header("X-Nonce") != b.header("X-Nonce")
    for rec in (a, b):
        assert rec.header("X-App-Key") == DEFAULT_APP_KEY
        assert abs(int(rec.header("X-Timestamp") or 0) - time.time()) < 5
        expected = sign(
            DEFAULT_SECRET,
            "POST",
            "/partner/peoples_account/articles",
            rec.header("X-Timestamp") or "",
            rec.header("X-Nonce") or "",
            encode_body(rec.body),
        )
        assert rec.header("X-Signature") == expected


async def test_update_and_retract_address_the_article_by_id(
    sandbox: RunningSandbox, make_adapter: AdapterFactory
) -> None:
    adapter = await started(make_adapter())
    receipt = await adapter.publish(publish_payload(adapter), ctx_for())
    assert receipt.remote_id is not None
    payload = adapter.render(make_story(version=2, headline="更正后的标题"), Action.UPDATE)
    updated = await adapter.update(payload, ctx_for(version=2, action=Action.UPDATE, receipt=receipt))
    assert updated.remote_id == receipt.remote_id and updated.raw["status"] == "published"
    retracted = await adapter.retract(
        Payload(data=PartnerBody()), ctx_for(version=3, action=Action.RETRACT, receipt=updated)
    )
    assert retracted.remote_id == receipt.remote_id and retracted.raw["status"] == "retracted"

    _post, put, delete = sandbox.sandbox.received("partner", "peoples_account")
    assert (put.method, put.path) == ("PUT", f"/partner/peoples_account/articles/{receipt.remote_id}")
    assert put.body["title"] == "更正后的标题" and put.idempotency_key == "story-1:2:peoples_account:update"
    assert (delete.method, delete.path, delete.body) == ("DELETE", put.path, None)
    assert delete.idempotency_key == "story-1:3:peoples_account:retract"
    article = articles(sandbox.sandbox, "peoples_account")[receipt.remote_id]
    assert article.status == "retracted" and article.body["title"] == "更正后的标题"

    # Retracting what is already gone is delivered (the goal is reached); updating it is not.
    again = await adapter.retract(
        Payload(data=PartnerBody()), ctx_for(version=3, action=Action.RETRACT, receipt=updated)
    )
    assert again.raw["status"] == "already_gone" and again.remote_id == receipt.remote_id
    with pytest.raises(Permanent, match="no article") as info:
        await adapter.update(payload, ctx_for(version=4, action=Action.UPDATE, receipt=receipt))
    assert info.value.platform_code == "40400"
    with pytest.raises(Permanent, match="no remote id"):
        await adapter.update(payload, ctx_for(action=Action.UPDATE, receipt=Receipt(remote_id=None)))


async def test_pending_review_is_delivered_without_a_public_url(
    sandbox: RunningSandbox, make_adapter: AdapterFactory
) -> None:
    adapter = await started(make_adapter())
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sandbox.url}/_sandbox/partner/peoples_account/review", json={"pending": True}):
            pass
    receipt = await adapter.publish(publish_payload(adapter), ctx_for())
    assert receipt.raw["status"] == "pending_review" and receipt.url is None and receipt.remote_id
    # Another partner is not in review mode.
    other = await started(make_adapter("shangguan_test"))
    assert (await other.publish(publish_payload(other), ctx_for(channel="shangguan_test"))).raw["status"] == "published"


async def test_signature_failures_pause_the_channel_with_what_to_check(
    sandbox: RunningSandbox, make_adapter: AdapterFactory
) -> None:
    wrong = await started(make_adapter(secret="not-the-secret"))
    with pytest.raises(AuthRevoked) as info:
        await wrong.publish(publish_payload(wrong), ctx_for())
    assert info.value.platform_code == str(WRONG_SIGNATURE)
    assert "app_key and secret" in info.value.reason and "X-Signature does not match" in info.value.reason

    skewed = await started(make_adapter())
    skewed.clock = lambda: time.time() - 400
    with pytest.raises(AuthRevoked) as info:
        await skewed.publish(publish_payload(skewed), ctx_for())
    assert info.value.platform_code == str(STALE_TIMESTAMP) and "clock" in info.value.reason

    pinned = await started(make_adapter())
    pinned.new_nonce = lambda: "always-the-same"
    await pinned.publish(publish_payload(pinned, id="first"), ctx_for(story_id="first"))
    with pytest.raises(AuthRevoked) as info:
        await pinned.publish(publish_payload(pinned, id="second"), ctx_for(story_id="second"))
    assert info.value.platform_code == str(REUSED_NONCE)
    assert [r.idempotency_key for r in sandbox.sandbox.received("partner")] == ["first:1:peoples_account:publish"]


async def test_check_proves_the_credentials_with_a_signed_lookup(
    sandbox: RunningSandbox, make_adapter: AdapterFactory
) -> None:
    good = await started(make_adapter())
    assert "credentials accepted" in await good.check() and "404" in await good.check()
    bad = await started(make_adapter(app_key="nobody"))
    with pytest.raises(AuthRevoked) as info:
        await bad.check()
    assert info.value.platform_code == str(WRONG_APP_KEY)
    blind = await started(make_adapter(lookup_url=None))
    assert "not checked" in await blind.check()
    assert sandbox.sandbox.received("partner") == []  # nothing published


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        ("status:401", AuthRevoked, "401"),
        ("status:403", AuthRevoked, "403"),
        ("status:503", Retryable, "503"),
        ("status:500", Retryable, "500"),
        ("status:400", Permanent, "400"),
        ("status:422", Permanent, "422"),
        ("status:408", Retryable, "408"),
    ],
)
async def test_http_errors_map_onto_the_taxonomy(
    sandbox: RunningSandbox, make_adapter: AdapterFactory, fault: str, error: type[Exception], code: str
) -> None:
    adapter = await started(make_adapter())
    sandbox.sandbox.set_faults("partner", [{"fault": fault}])
    with pytest.raises(error) as info:
        await adapter.publish(publish_payload(adapter), ctx_for())
    assert getattr(info.value, "platform_code", None) == code
    assert f"HTTP {code}" in str(info.value) and "sandbox injected status" in str(info.value)
    assert sandbox.sandbox.received("partner") == []


async def test_429_rate_limits_until_retry_after(sandbox: RunningSandbox, make_adapter: AdapterFactory) -> None:
    adapter = await started(make_adapter())
    sandbox.sandbox.set_faults("partner", [{"fault": "rate_limit:7"}])
    before = time.time()
    with pytest.raises(RateLimited) as info:
        await adapter.publish(publish_payload(adapter), ctx_for())
    assert info.value.platform_code == "429"
    assert before + 7 - 0.01 <= info.value.until.timestamp() <= time.time() + 7 + 0.01
    with pytest.raises(RateLimited):  # a lookup that is rate limited pauses the channel too
        await adapter.lookup(publish_payload(adapter), ctx_for())


async def test_connection_refused_is_retryable_and_a_lost_answer_unknown(
    sandbox: RunningSandbox, make_adapter: AdapterFactory
) -> None:
    refused = await started(make_adapter(base=f"http://127.0.0.1:{closed_port()}"))
    with pytest.raises(Retryable, match="could not connect"):
        await refused.publish(publish_payload(refused), ctx_for())

    adapter = await started(make_adapter(timeout=SHORT_TIMEOUT))
    sandbox.sandbox.set_faults("partner", [{"fault": "timeout_after", "methods": ["POST"]}])
    payload = publish_payload(adapter)
    with pytest.raises(OutcomeUnknown):
        await adapter.publish(payload, ctx_for())
    [rec] = sandbox.sandbox.received("partner")  # it was processed
    receipt = await adapter.lookup(payload, ctx_for())
    assert receipt is not None and receipt.remote_id == next(iter(articles(sandbox.sandbox, "peoples_account")))
    assert receipt.raw["idempotency_key"] == rec.idempotency_key
    assert await adapter.lookup(payload, ctx_for(story_id="never-sent")) is None

    sandbox.sandbox.set_faults("partner", [{"fault": "timeout_before", "methods": ["GET"]}])
    with pytest.raises(Retryable):  # a lookup that times out changed nothing: retry, do not park
        await adapter.lookup(payload, ctx_for())


async def test_lookup_of_update_and_retract_asks_nothing(sandbox: RunningSandbox, make_adapter: AdapterFactory) -> None:
    """PUT and DELETE by id are safe to resend, so reconciling them means sending them again."""
    adapter = await started(make_adapter())
    receipt = Receipt(remote_id="peoples_account-99")
    assert await adapter.lookup(Payload(data=PartnerBody()), ctx_for(action=Action.UPDATE, receipt=receipt)) is None
    assert await adapter.lookup(Payload(data=PartnerBody()), ctx_for(action=Action.RETRACT, receipt=receipt)) is None
    assert sandbox.sandbox.stats("partner") == {}


# ------------------------------------------------------------------------------------------ a raw capture server


@dataclass
class Capture:
    """A scripted partner that records raw bytes: answers pop from ``answers`` (default a 201)."""

    url: str
    seen: list[tuple[str, str, bytes, dict[str, str]]] = field(default_factory=list)
    answers: list[web.Response] = field(default_factory=list)


@pytest.fixture
async def capture() -> AsyncIterator[Capture]:
    box: list[Capture] = []

    async def handle(request: web.Request) -> web.Response:
        cap = box[0]
        cap.seen.append((request.method, request.path_qs, await request.read(), dict(request.headers)))
        if cap.answers:
            return cap.answers.pop(0)
        return web.json_response({"code": 0, "remote_id": "cap-1", "url": "https://p.example/1", "status": "published"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    box.append(Capture(url=f"http://127.0.0.1:{runner.addresses[0][1]}"))
    yield box[0]
    await runner.cleanup()


async def test_raw_body_is_html_safe_json_and_identical_across_retries(capture: Capture) -> None:
    adapter = PartnerAdapter("peoples_account", options(capture.url), timeout=2)
    await adapter.start()
    try:
        payload = publish_payload(adapter, headline="</script><script>alert(1)</script> 宝山汇 & 闵行")
        await adapter.publish(payload, ctx_for())
        await adapter.publish(
            adapter.load_payload(Payload.from_json(json.loads(json.dumps(payload.to_json())))), ctx_for()
        )
    finally:
        await adapter.close()
    (m1, p1, raw1, h1), (_, _, raw2, h2) = capture.seen
    assert (m1, p1) == ("POST", "/partner/peoples_account/articles")
    assert raw1 == raw2 and h1["X-Nonce"] != h2["X-Nonce"] and h1["X-Signature"] != h2["X-Signature"]
    assert b"<" not in raw1 and b">" not in raw1 and b"&" not in raw1
    assert "宝山汇".encode() in raw1  # UTF-8, not \u escapes for the text itself
    assert json.loads(raw1)["title"] == "</script><script>alert(1)</script> 宝山汇 & 闵行"  # the text, unchanged
    assert h1["Content-Type"] == "application/json; charset=utf-8"
    for raw, headers in ((raw1, h1), (raw2, h2)):
        assert headers["X-Signature"] == sign(
            DEFAULT_SECRET, "POST", p1, headers["X-Timestamp"], headers["X-Nonce"], raw
        )
        assert headers["X-Signature"] == partner_signature(
            DEFAULT_SECRET, "POST", p1, headers["X-Timestamp"], headers["X-Nonce"], raw
        )


#: A publish (of a channel with mapping and extra) and a retraction as deliveries queued before the payload model
#: stored them (rendered by the untyped channel).
STORED_MAPPED_PUBLISH: dict[str, Any] = {
    "data": {
        "idempotency_key": "shape-1:2:shangguan:publish",
        "headline_cn": "宝山汇 <上线> & 闵行",
        "summary": "摘要",
        "content": "<p>第一段</p>",
        "author": "记者 王",
        "source_url": "https://news.example.cn/shape-1.html",
        "published_at": "2026-11-30T08:00:00+08:00",
        "cover": "https://cdn.example/a.png",
        "images": [
            "https://cdn.example/a.png",
        ],
        "tags": [
            "宝山",
        ],
        "source": "宝山汇",
        "column_id": 1207,
        "weight": 1.5,
        "top": False,
    },
    "text_length": None,
    "warnings": [],
}
STORED_RETRACT: dict[str, Any] = {
    "data": {},
    "text_length": None,
    "warnings": [],
}


async def test_payloads_stored_before_the_payload_model_still_load_and_send_the_same_bytes(capture: Capture) -> None:
    # Today's config of the channel has neither that mapping nor that extra: a stored body is sent as it was
    # rendered, whatever the config says now.
    adapter = PartnerAdapter("shangguan", options(capture.url), timeout=2)
    publish = adapter.load_payload(Payload.from_json(STORED_MAPPED_PUBLISH))
    retract = adapter.load_payload(Payload.from_json(STORED_RETRACT))
    assert publish.to_json() == STORED_MAPPED_PUBLISH and retract.to_json() == STORED_RETRACT
    await adapter.start()
    try:
        receipt = await adapter.publish(publish, ctx_for())
        await adapter.retract(retract, ctx_for(action=Action.RETRACT, receipt=receipt))
    finally:
        await adapter.close()
    (method, target, raw, headers), (gone, path, empty, _) = capture.seen
    # The bytes the untyped channel sent for this stored payload, signed as always.
    assert method == "POST" and raw == encode_body(STORED_MAPPED_PUBLISH["data"])
    assert headers["X-Signature"] == partner_signature(
        DEFAULT_SECRET, "POST", target, headers["X-Timestamp"], headers["X-Nonce"], raw
    )
    assert (gone, path.rsplit("/", 1)[-1], empty) == ("DELETE", "cap-1", b"")


def test_a_stored_body_that_is_not_flat_json_is_refused_on_load() -> None:
    adapter = PartnerAdapter("peoples_account", options(), timeout=1)
    for data in ({"title": {"nested": "object"}}, {"images": [1, 2]}):
        with pytest.raises(Permanent, match="partner' payload model"):
            adapter.load_payload(Payload.from_json({"data": data}))


async def test_partner_codes_redirects_and_odd_answers(capture: Capture) -> None:
    adapter = PartnerAdapter("peoples_account", options(capture.url), timeout=2)
    await adapter.start()
    payload = publish_payload(adapter)
    capture.answers = [
        web.json_response({"code": 40022, "message": "标题过长"}, status=400),
        web.json_response({"code": 50010, "message": "内容审核未通过"}, status=200),
        web.Response(status=301, headers={"Location": "https://partner.example/v2/articles"}),
        web.json_response({"code": 0, "status": "published"}, status=201),
        web.json_response({"code": 40900, "message": "duplicate"}, status=409),
        web.json_response(
            {"code": 40900, "remote_id": "old-7", "url": "https://p.example/7", "status": "published"}, status=409
        ),
        web.json_response({"code": 50300, "message": "busy"}, status=503, headers={"Retry-After": "42"}),
        web.Response(status=204),
    ]
    try:
        with pytest.raises(Permanent) as info:
            await adapter.publish(payload, ctx_for())
        assert info.value.platform_code == "40022" and "[code 40022] 标题过长" in info.value.reason
        with pytest.raises(Permanent) as info:  # 200 carrying an error code is not delivered
            await adapter.publish(payload, ctx_for())
        assert info.value.platform_code == "50010" and "内容审核未通过" in info.value.reason
        with pytest.raises(Permanent) as info:
            await adapter.publish(payload, ctx_for())
        assert "https://partner.example/v2/articles" in info.value.reason and "url" in info.value.reason
        with pytest.raises(OutcomeUnknown, match="without a remote_id"):  # landed, id unknown: lookup will tell
            await adapter.publish(payload, ctx_for())
        with pytest.raises(OutcomeUnknown, match="409"):
            await adapter.publish(payload, ctx_for())
        duplicate = await adapter.publish(payload, ctx_for())
        assert (duplicate.remote_id, duplicate.url, duplicate.raw["duplicate"]) == (
            "old-7",
            "https://p.example/7",
            True,
        )
        with pytest.raises(Retryable) as retry:
            await adapter.publish(payload, ctx_for())
        assert retry.value.retry_after == 42.0 and retry.value.platform_code == "50300"
        gone = await adapter.retract(
            Payload(data=PartnerBody()), ctx_for(action=Action.RETRACT, receipt=Receipt(remote_id="a/b"))
        )
        assert gone.remote_id == "a/b" and gone.raw == {"status": "retracted"}
    finally:
        await adapter.close()
    assert [m for m, *_ in capture.seen].count("POST") == 7  # the redirect was not followed
    method, path, raw, headers = capture.seen[-1]
    assert (method, path, raw) == ("DELETE", "/partner/peoples_account/articles/a%2Fb", b"")
    assert headers["X-Signature"] == sign(
        DEFAULT_SECRET, "DELETE", path, headers["X-Timestamp"], headers["X-Nonce"], b""
    )


# ------------------------------------------------------------------------------------------ through the engine


def posted_keys(sandbox: RunningSandbox, name: str | None = None) -> list[str | None]:
    return sorted(r.idempotency_key for r in sandbox.sandbox.received("partner", name) if r.method == "POST")


async def test_examples_publish_update_retract_on_two_partners(tmp_path: Path, sandbox: RunningSandbox) -> None:
    set_credentials(sandbox.sandbox, "shangguan", app_key=SHANGGUAN_APP_KEY, secret=SHANGGUAN_SECRET)
    channels = {
        "peoples_account": partner_channel(sandbox.url, "peoples_account"),
        "shangguan": shangguan_channel(sandbox.url),
    }
    stories = example_stories()
    first = stories[0]
    corrected = Story.from_dict({**first.to_dict(), "version": 2, "headline": "更正:上海16区融媒体中心全部挂牌"})
    withdrawn = Story.from_dict({"id": first.id, "version": 3, "pubstatus": "canceled"})
    deliveries, _ = await run_engine(make_settings(tmp_path, channels), stories, [corrected], [withdrawn])

    assert len(deliveries) == 2 * (len(stories) + 2)
    assert {d.state for d in deliveries} == {State.DELIVERED}
    for name in channels:
        mine = [d for d in deliveries if d.channel == name]
        assert posted_keys(sandbox, name) == sorted(f"{s.id}:1:{name}:publish" for s in stories)
        [publish] = [d for d in mine if d.story_id == first.id and d.action is Action.PUBLISH]
        assert publish.receipt is not None and publish.receipt.remote_id is not None
        remote_id = publish.receipt.remote_id
        assert publish.receipt.url == f"https://{name}.partner.example/articles/{remote_id}"
        assert publish.receipt.raw["status"] == "published"

        [put] = [r for r in sandbox.sandbox.received("partner", name) if r.method == "PUT"]
        [delete] = [r for r in sandbox.sandbox.received("partner", name) if r.method == "DELETE"]
        assert put.path == delete.path == f"/partner/{name}/articles/{remote_id}"
        assert (put.idempotency_key, delete.idempotency_key) == (
            f"{first.id}:2:{name}:update",
            f"{first.id}:3:{name}:retract",
        )
        [retract] = [d for d in mine if d.action is Action.RETRACT]
        assert retract.receipt is not None and retract.receipt.raw["status"] == "retracted"

        held = articles(sandbox.sandbox, name)
        assert held[remote_id].status == "retracted"
        assert sorted(a.status for a in held.values()) == ["published", "published", "retracted"]

    # Each partner got its own field names and static fields.
    pa_bodies = [r.body for r in sandbox.sandbox.received("partner", "peoples_account") if r.body]
    sg_bodies = [r.body for r in sandbox.sandbox.received("partner", "shangguan") if r.body]
    assert all("title" in b and "source" not in b and "headline_cn" not in b for b in pa_bodies)
    assert all("headline_cn" in b and "title" not in b and b["source"] == "宝山汇" for b in sg_bodies)
    assert all(b["column_id"] == 1207 and b["pub_time"].endswith("+08:00") for b in sg_bodies)
    [sg_put] = [r for r in sandbox.sandbox.received("partner", "shangguan") if r.method == "PUT"]
    assert sg_put.body["headline_cn"] == "更正:上海16区融媒体中心全部挂牌"


async def test_timeout_after_is_reconciled_by_lookup_each_key_once(tmp_path: Path, sandbox: RunningSandbox) -> None:
    """Every POST is processed but its answer withheld: the retry asks the partner instead of posting again."""
    sandbox.sandbox.set_faults("partner", [{"fault": "timeout_after", "methods": ["POST"]}])
    channel = partner_channel(sandbox.url, "peoples_account", timeout=SHORT_TIMEOUT)
    stories = [make_story(id=f"story-{i}") for i in range(6)]
    deliveries, outcomes = await run_engine(make_settings(tmp_path, {"peoples_account": channel}), stories)
    assert {d.state for d in deliveries} == {State.DELIVERED} and len(deliveries) == 6
    assert all(outcomes[d.id] == ["retry", "reconciled"] for d in deliveries), outcomes
    held = articles(sandbox.sandbox, "peoples_account")
    assert sorted(d.receipt.remote_id for d in deliveries if d.receipt and d.receipt.remote_id) == sorted(held)
    assert posted_keys(sandbox) == sorted(f"story-{i}:1:peoples_account:publish" for i in range(6))


async def test_random_timeouts_deliver_each_key_exactly_once(tmp_path: Path, sandbox: RunningSandbox) -> None:
    sandbox.sandbox.set_faults("partner", [{"fault": "timeout_after", "probability": 0.5, "methods": ["POST"]}])
    channel = partner_channel(sandbox.url, "peoples_account", timeout=SHORT_TIMEOUT)
    stories = [make_story(id=f"story-{i}") for i in range(12)]
    deliveries, outcomes = await run_engine(make_settings(tmp_path, {"peoples_account": channel}), stories)
    assert {d.state for d in deliveries} == {State.DELIVERED}
    assert {tuple(o) for o in outcomes.values()} <= {("delivered",), ("retry", "reconciled")}
    assert posted_keys(sandbox) == sorted(f"story-{i}:1:peoples_account:publish" for i in range(12))
    fired = sandbox.sandbox.stats("partner")["peoples_account"].faults.get("timeout_after", 0)
    assert 0 < fired < 12  # both paths ran


async def test_without_lookup_url_a_lost_answer_is_parked(tmp_path: Path, sandbox: RunningSandbox) -> None:
    sandbox.sandbox.set_faults("partner", [{"fault": "timeout_after", "methods": ["POST"]}])
    channel = partner_channel(sandbox.url, "peoples_account", timeout=SHORT_TIMEOUT)
    del channel["lookup_url"]
    [delivery], outcomes = await run_engine(make_settings(tmp_path, {"peoples_account": channel}), [make_story()])
    assert delivery.state is State.UNKNOWN and outcomes[delivery.id] == ["unknown"]
    assert posted_keys(sandbox) == ["story-1:1:peoples_account:publish"]  # no blind second POST


async def test_an_update_whose_answer_was_lost_is_sent_again(tmp_path: Path, sandbox: RunningSandbox) -> None:
    channel = partner_channel(sandbox.url, "peoples_account", timeout=SHORT_TIMEOUT)

    async def lose_the_first_put_answer() -> None:
        sandbox.sandbox.set_faults("partner", [{"fault": "timeout_after", "methods": ["PUT"]}])
        for _ in range(500):
            if any(r.method == "PUT" for r in sandbox.sandbox.received("partner")):
                break
            await asyncio.sleep(0.01)
        sandbox.sandbox.clear_faults("partner")

    settings = make_settings(tmp_path, {"peoples_account": channel})
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            await engine.accept(make_story())
            await engine.run(until_idle=True, idle_horizon=5)
            saboteur = asyncio.create_task(lose_the_first_put_answer())
            await engine.accept(make_story(version=2, headline="更正后的标题"))
            await engine.run(until_idle=True, idle_horizon=5)
            await saboteur
        [_, update] = await store.list_deliveries(DeliveryFilter())
        outcomes = [a.outcome for a in await store.attempts(update.id)]
    finally:
        await store.close()
    assert update.state is State.DELIVERED and outcomes == ["retry", "delivered"]
    puts = [r for r in sandbox.sandbox.received("partner") if r.method == "PUT"]
    assert len(puts) == 2 and puts[0].body == puts[1].body  # the same body, by id: no second article
    assert len(articles(sandbox.sandbox, "peoples_account")) == 1


async def test_pending_review_and_duplicate_are_delivered(tmp_path: Path, sandbox: RunningSandbox) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sandbox.url}/_sandbox/partner/shangguan/review", json={"pending": True}) as resp:
            assert await resp.json() == {"name": "shangguan", "pending": True}
    set_credentials(sandbox.sandbox, "shangguan", app_key=SHANGGUAN_APP_KEY, secret=SHANGGUAN_SECRET)
    # The partner already holds story-0 under our key (say, from a publish an operator replayed with --force).
    early = PartnerAdapter(
        "shangguan",
        options(
            sandbox.url,
            "shangguan",
            app_key=SHANGGUAN_APP_KEY,
            secret=SHANGGUAN_SECRET,
            mapping=SHANGGUAN_MAPPING,
            extra=SHANGGUAN_EXTRA,
        ),
        timeout=2,
    )
    await early.start()
    try:
        prior = await early.publish(early.render(make_story(id="story-0"), Action.PUBLISH), ctx_for("story-0"))
    finally:
        await early.close()
    channels = {"shangguan": shangguan_channel(sandbox.url)}
    deliveries, outcomes = await run_engine(
        make_settings(tmp_path, channels), [make_story(id="story-0"), make_story(id="story-9")]
    )
    by_story = {d.story_id: d for d in deliveries}
    assert {d.state for d in deliveries} == {State.DELIVERED}
    duplicate, fresh = by_story["story-0"], by_story["story-9"]
    assert duplicate.receipt is not None and duplicate.receipt.remote_id == prior.remote_id
    assert duplicate.receipt.raw["duplicate"] is True
    assert fresh.receipt is not None and fresh.receipt.raw["status"] == "pending_review" and fresh.receipt.url is None
    assert outcomes[fresh.id] == ["delivered"]
    assert len(articles(sandbox.sandbox, "shangguan")) == 2


async def test_wrong_secret_pauses_the_channel_and_loses_nothing(tmp_path: Path, sandbox: RunningSandbox) -> None:
    channels = {"peoples_account": partner_channel(sandbox.url, "peoples_account", secret="rotated-away")}
    settings = make_settings(tmp_path, channels)
    store = open_store(settings.store.url)
    await store.migrate()
    try:
        async with Engine(settings, store) as engine:
            await engine.accept(make_story())
            await engine.run(until_idle=True, idle_horizon=0)
        [delivery] = await store.list_deliveries(DeliveryFilter())
        pause = (await store.channel_states())["peoples_account"]
    finally:
        await store.close()
    assert delivery.state is State.RETRY_WAIT and delivery.last_error_class == "AuthRevoked"
    assert delivery.last_platform_code == str(WRONG_SIGNATURE)
    assert pause.paused_at(time.time()) and pause.reason is not None and "secret" in pause.reason
    assert sandbox.sandbox.received("partner") == []


async def test_hostile_story_reaches_partners_clean(tmp_path: Path, sandbox: RunningSandbox) -> None:
    set_credentials(sandbox.sandbox, "shangguan", app_key=SHANGGUAN_APP_KEY, secret=SHANGGUAN_SECRET)
    channels = {
        "peoples_account": partner_channel(sandbox.url, "peoples_account"),
        "shangguan": shangguan_channel(sandbox.url),
    }
    hostile = make_story(id="xss", headline=HOSTILE_TITLE, summary=HOSTILE_SUMMARY, body_html=HOSTILE_BODY)
    updated = make_story(
        id="xss", version=2, headline=HOSTILE_TITLE, summary=HOSTILE_SUMMARY, body_html=HOSTILE_BODY + "<p>补充</p>"
    )
    deliveries, _ = await run_engine(make_settings(tmp_path, channels), [hostile], [updated])
    assert {d.state for d in deliveries} == {State.DELIVERED} and len(deliveries) == 4
    records = [r for r in sandbox.sandbox.received("partner") if r.body]
    assert len(records) == 4
    for rec in records:
        wire = SHANGGUAN_MAPPING if rec.receiver == "shangguan" else {}
        content = rec.body[wire.get("content_html", "content_html")]
        assert rec.body[wire.get("title", "title")] == HOSTILE_TITLE  # text, unchanged: escaping is the partner's job
        assert rec.body["summary"] == HOSTILE_SUMMARY
        lowered = content.lower()
        for needle in ("<script", "onclick", "onerror", "javascript:", "<iframe"):
            assert needle not in lowered, needle
        assert "宝山汇" in content and '<img src="https://img.example/a.png">' in content
        assert b"<" not in encode_body(rec.body)
    assert "<script" not in json.dumps([r.body for r in records], ensure_ascii=False).lower()
