"""Hostile input at the HTTP service: correctly signed garbage at the publish hook and random admin calls.

Property: no answer is a 5xx and the service keeps serving; every refusal is a documented 4xx with a JSON body
naming the problem. The app (``syndicate.server.create_app`` over a real SQLite store) runs once per module on its
own event loop in a thread, so hypothesis drives it with plain blocking requests.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syndicate.config import parse_config
from syndicate.engine import Engine
from syndicate.server import create_app
from syndicate.signing import SIGNATURE_HEADER, sign
from syndicate.store import open_store

HOOK_SECRET = "hostile-hook-secret-6d1f0b"
API_TOKEN = "hostile-api-token-93ac55"
MAX_BODY = 2 * 1024 * 1024
DOCUMENTED = {400, 401, 404, 409, 413, 415, 422}
# Local runs explore new random inputs every time (that is how the pause-past-9999 bug was found); CI replays a
# fixed derandomized set, so a submission is judged on the same inputs each run.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=os.environ.get("CI") == "true",
)


@dataclass
class Answer:
    status: int
    body: Any
    raw: bytes


class LiveApp:
    """The service on a free port, its loop in a daemon thread; requests are blocking ``http.client`` calls."""

    def __init__(self, tmp: Path) -> None:
        self.settings = parse_config(
            {
                "store": {"url": f"sqlite:///{tmp / 'hostile.db'}"},
                "media": {"allow_private": False, "cache_dir": str(tmp / "media")},
                "engine": {"lease_seconds": 5, "poll_interval": 0.05, "retry_jitter": 0},
                "server": {"hook_secret": HOOK_SECRET, "api_token": API_TOKEN, "max_body_bytes": MAX_BODY},
                "channels": {
                    name: {
                        "kind": "webhook",
                        "url": f"http://127.0.0.1:9/{name}",  # nothing listens: no worker runs in these tests
                        "secret": "hostile-webhook-secret",
                    }
                    for name in ("web", "app")
                },
            },
            source="hostile.toml",
            env={},
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0
        self._signed: dict[bytes, dict[str, str]] = {}

    def start(self) -> None:
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._setup(), self.loop).result(timeout=30)

    async def _setup(self) -> int:
        self.store = open_store(self.settings.store.url)
        await self.store.migrate()
        self.engine = Engine(self.settings, self.store)
        await self.engine.__aenter__()
        self.runner = web.AppRunner(create_app(self.settings, self.engine), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(self.runner.addresses[0][1])

    async def _teardown(self) -> None:
        await self.runner.cleanup()
        await self.engine.__aexit__(None, None, None)
        await self.store.close()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._teardown(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return Answer(resp.status, parsed, raw)

    def hook(self, body: bytes, content_type: str = "application/json") -> Answer:
        headers = {"Content-Type": content_type, SIGNATURE_HEADER: sign(HOOK_SECRET, body, timestamp=int(time.time()))}
        return self.request("POST", "/v1/stories", body, headers)

    def signed_headers(self, body: bytes, content_type: str = "application/json") -> dict[str, str]:
        return {"Content-Type": content_type, SIGNATURE_HEADER: sign(HOOK_SECRET, body, timestamp=int(time.time()))}

    def hook_signed(self, body: bytes) -> Answer:
        """The same signed request on every call (for checking a refusal did not spend the signature)."""
        headers = self._signed.setdefault(body, self.signed_headers(body))
        return self.request("POST", "/v1/stories", body, headers)

    def api(self, method: str, path: str, document: Any = None) -> Answer:
        headers = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}
        body = b"" if document is None else json.dumps(document).encode()
        return self.request(method, path, body, headers)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    app = LiveApp(tmp_path_factory.mktemp("hostile"))
    app.start()
    yield app
    assert app.request("GET", "/healthz").status == 200, "the service stopped answering after the hostile input"
    app.stop()


def assert_documented(answer: Answer, what: str) -> None:
    """2xx, or a documented 4xx whose JSON body names the problem (``error`` code and ``message`` sentence)."""
    assert answer.status < 500, f"{what}: {answer.status} {answer.raw[:500]!r}"
    if 200 <= answer.status < 300:
        assert isinstance(answer.body, dict), f"{what}: a 2xx without a JSON object: {answer.raw[:300]!r}"
        return
    assert answer.status in DOCUMENTED, f"{what}: undocumented status {answer.status} {answer.raw[:300]!r}"
    assert isinstance(answer.body, dict), f"{what}: a {answer.status} without a JSON body: {answer.raw[:300]!r}"
    assert isinstance(answer.body.get("error"), str) and answer.body["error"], f"{what}: no error code {answer.body}"
    assert isinstance(answer.body.get("message"), str) and answer.body["message"].strip(), f"{what}: {answer.body}"


# --- strategies ------------------------------------------------------------------------------------------------

# Lone surrogates (\ud800 escapes) are left out until the hook refuses them: today they reach Story.content_hash
# and answer 500 (UnicodeEncodeError), see the report.
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT
ANY_JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=20
)
STORY_FIELDS = [
    "id",
    "version",
    "pubstatus",
    "headline",
    "subheadline",
    "summary",
    "body_html",
    "by",
    "language",
    "url",
    "published_at",
    "updated_at",
    "embargo_until",
    "urgency",
    "images",
    "tags",
    "section",
    "targets",
    "overrides",
]
PLAUSIBLE = {
    "id": st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True),
    "version": st.integers(min_value=1, max_value=5),
    "headline": st.text(min_size=1, max_size=60),
    "url": st.just("https://news.example.cn/a.html"),
}
STORY_LIKE = st.fixed_dictionaries(
    {},
    optional={name: (PLAUSIBLE[name] | ANY_JSON) if name in PLAUSIBLE else ANY_JSON for name in STORY_FIELDS},
)
HUGE_FIELD = st.builds(
    lambda name, size, char: {"id": "huge", "headline": "标题", name: char * size},
    st.sampled_from(["headline", "summary", "body_html", "by", "section", "url", "id"]),
    st.integers(min_value=1_000, max_value=15_000),
    st.sampled_from(["x", "界", "\u202e", "<", "\x00"]),
)


# --- the publish hook ------------------------------------------------------------------------------------------


@FUZZ
@given(document=ANY_JSON | STORY_LIKE | HUGE_FIELD)
def test_hook_answers_any_signed_json_with_2xx_or_a_named_4xx(live: LiveApp, document: Any) -> None:
    assert_documented(live.hook(json.dumps(document).encode()), f"POST /v1/stories {str(document)[:200]}")


@FUZZ
@given(raw=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "application/ninjs+json"]))
def test_hook_answers_arbitrary_bytes_with_a_named_4xx(live: LiveApp, raw: bytes, content_type: str) -> None:
    assert_documented(live.hook(raw, content_type), f"POST /v1/stories {raw[:100]!r}")


@FUZZ
@given(document=ANY_JSON | STORY_LIKE)
def test_ninjs_hook_answers_any_signed_json(live: LiveApp, document: Any) -> None:
    answer = live.hook(json.dumps(document).encode(), "application/ninjs+json")
    assert_documented(answer, f"POST /v1/stories (ninjs) {str(document)[:200]}")


def test_oversized_body_is_413_naming_the_limit(live: LiveApp) -> None:
    answer = live.hook(json.dumps({"id": "big", "body_html": "x" * (MAX_BODY + 10)}).encode())
    assert (answer.status, answer.body["error"]) == (413, "body_too_large")
    assert str(MAX_BODY) in answer.body["message"]


def test_nesting_100000_deep_is_400(live: LiveApp) -> None:
    answer = live.hook(b"[" * 100_000 + b"1" + b"]" * 100_000)
    assert answer.status == 400, answer.raw[:300]
    assert answer.body["error"] == "malformed_json" and "nested" in answer.body["message"]


def test_a_large_signed_story_arriving_in_chunks_is_read_whole(live: LiveApp) -> None:
    """A body bigger than one socket read must be read to its end before the signature is checked."""
    story = {"id": "big-1", "headline": "大稿件", "body_html": "<p>" + "融媒体" * 50_000 + "</p>"}
    body = json.dumps(story, ensure_ascii=False).encode()
    assert 400_000 < len(body) < MAX_BODY
    answer = live.hook(body)
    assert answer.status == 202, answer.raw[:300]


def test_an_unpaired_surrogate_is_422_naming_the_field(live: LiveApp) -> None:
    answer = live.hook(rb'{"id": "sur", "headline": "\ud800 bad"}')
    assert answer.status == 422, answer.raw[:300]
    assert answer.body["errors"][0]["path"] == "headline" and "surrogate" in answer.body["errors"][0]["problem"]


def test_invalid_utf8_is_400_naming_the_byte(live: LiveApp) -> None:
    answer = live.hook(b'{"id": "u", "headline": "\xe4\xb8"}')
    assert (answer.status, answer.body["error"]) == (400, "malformed_json")
    assert "UTF-8" in answer.body["message"] and "byte" in answer.body["message"]


# --- the admin API ---------------------------------------------------------------------------------------------

SAFE_TEXT_KEYS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10)
QUERY_KEYS = (
    st.sampled_from(["state", "channel", "story", "since", "until", "error_class", "limit", "cursor"]) | SAFE_TEXT_KEYS
)
SAFE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
QUERY_VALUES = (
    SAFE_TEXT
    | st.integers().map(str)
    | st.sampled_from(["failed", "delivered,queued", "1h", "-5m", "2001-01-01T00:00:00Z", "1e400", "NaN", "0"])
)


@FUZZ
@given(params=st.lists(st.tuples(QUERY_KEYS, QUERY_VALUES), max_size=6))
def test_deliveries_listing_answers_any_query(live: LiveApp, params: list[tuple[str, str]]) -> None:
    answer = live.api("GET", "/v1/deliveries?" + urlencode(params))
    assert_documented(answer, f"GET /v1/deliveries {params}")


REPLAY_KEYS = ["ids", "channel", "story", "since", "until", "state", "error_class", "force", "dry_run"]
REPLAY_LIKE = st.fixed_dictionaries({}, optional=dict.fromkeys(REPLAY_KEYS, ANY_JSON))


@FUZZ
@given(document=ANY_JSON | REPLAY_LIKE)
def test_replay_answers_any_json(live: LiveApp, document: Any) -> None:
    assert_documented(live.api("POST", "/v1/replay", document), f"POST /v1/replay {str(document)[:200]}")


PAUSE_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "for": ANY_JSON | st.sampled_from(["30m", "1h", "-1h", "0s", "1e309h", "99999999999d"]),
        "until": ANY_JSON | st.sampled_from(["2099-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "tomorrow"]),
        "reason": ANY_JSON,
    },
)


@FUZZ
@given(document=ANY_JSON | PAUSE_LIKE, channel=st.sampled_from(["web", "app", "nope"]) | SAFE_TEXT.filter(bool))
def test_pause_answers_any_json(live: LiveApp, document: Any, channel: str) -> None:
    path = f"/v1/channels/{quote(channel, safe='')}/pause"
    assert_documented(live.api("POST", path, document), f"POST {path} {str(document)[:200]}")
    assert_documented(live.api("POST", f"/v1/channels/{quote(channel, safe='')}/resume"), "resume")


@FUZZ
@given(
    raw=st.binary(max_size=200),
    path=st.sampled_from(["/v1/replay", "/v1/channels/web/pause", "/v1/deliveries/1/replay"]),
)
def test_admin_posts_answer_arbitrary_bytes(live: LiveApp, raw: bytes, path: str) -> None:
    headers = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}
    assert_documented(live.request("POST", path, raw, headers), f"POST {path} {raw[:100]!r}")


# --- the dashboard (issue 14): ids, cookies and CSRF fields of any spelling --------------------------------------

DASHBOARD_REFUSALS = {303, 400, 403, 404}
COOKIE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=";,"), max_size=60)


def _cookie_value(answer_headers: http.client.HTTPMessage, name: str) -> str:
    for header in answer_headers.get_all("Set-Cookie") or []:
        if header.startswith(name + "="):
            return header.split(";", 1)[0].split("=", 1)[1]
    raise AssertionError(f"no {name} cookie set")


def _hidden_csrf(html: bytes) -> str:
    marker = b'name="csrf" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index(b'"', start)].decode()


def _raw_request(
    live: LiveApp, method: str, path: str, body: bytes, headers: dict[str, str]
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


@dataclass(frozen=True)
class DashboardSession:
    cookie: str
    csrf: str


@pytest.fixture(scope="module")
def dashboard_session(live: LiveApp) -> DashboardSession:
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    conn.request("GET", "/dashboard/login")
    page = conn.getresponse()
    html = page.read()
    login_csrf = _cookie_value(page.headers, "syndicate_login_csrf")
    form = urlencode({"csrf": _hidden_csrf(html), "token": API_TOKEN, "next": "/"}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"syndicate_login_csrf={login_csrf}"}
    conn.request("POST", "/dashboard/login", body=form, headers=headers)
    answer = conn.getresponse()
    answer.read()
    assert answer.status == 303
    cookie = "syndicate_session=" + _cookie_value(answer.headers, "syndicate_session")
    conn.request("GET", "/dashboard/failures", headers={"Cookie": cookie})
    failures = conn.getresponse()
    csrf = _hidden_csrf(failures.read())
    conn.close()
    return DashboardSession(cookie, csrf)


DELIVERY_IDS = (
    st.integers(min_value=-(2**70), max_value=2**80).map(str)
    | st.sampled_from([str(2**63), str(2**64), str(2**63 - 1), "0", "-1", "1e3", "٣", "9" * 5000])
    | SAFE_TEXT.filter(bool)
)


@FUZZ
@given(delivery_id=DELIVERY_IDS, action=st.sampled_from(["landed", "resend", "replay"]))
def test_dashboard_actions_answer_any_delivery_id(
    live: LiveApp, dashboard_session: DashboardSession, delivery_id: str, action: str
) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": dashboard_session.cookie}
    if action == "replay":
        path = "/dashboard/replay"
        body = urlencode({"csrf": dashboard_session.csrf, "id": delivery_id, "confirm": "yes"}).encode()
    else:
        path = f"/dashboard/deliveries/{quote(delivery_id, safe='')}/{action}"
        body = urlencode({"csrf": dashboard_session.csrf, "remote": "https://example.cn/p/1"}).encode()
    answer = _raw_request(live, "POST", path, body, headers)
    assert answer.status in DASHBOARD_REFUSALS, f"POST {path} id={delivery_id[:60]!r}: {answer.status}"


@FUZZ
@given(cookie=COOKIE_TEXT, csrf=COOKIE_TEXT)
def test_dashboard_answers_any_session_cookie_or_csrf_field(live: LiveApp, cookie: str, csrf: str) -> None:
    raw_cookie = f"syndicate_session={cookie}; syndicate_login_csrf={cookie}".encode().decode("latin-1")
    answer = _raw_request(live, "GET", "/", b"", {"Cookie": raw_cookie})
    assert answer.status == 303, f"GET / with cookie {cookie!r}: {answer.status}"  # no session: to the login
    form = urlencode({"csrf": csrf, "token": "not-the-token-0123456789"}).encode()
    headers = {"Cookie": raw_cookie, "Content-Type": "application/x-www-form-urlencoded"}
    answer = _raw_request(live, "POST", "/dashboard/login", form, headers)
    assert answer.status in (401, 403, 429), f"POST /dashboard/login csrf={csrf!r} cookie={cookie!r}: {answer.status}"


# --- issue 14: intake hardening (text, numbers, dates, sizes) --------------------------------------------------


@pytest.mark.parametrize(
    ("document", "path", "character"),
    [
        ({"id": "xml-1", "headline": "ab\x01c"}, "headline", "U+0001 at position 2"),
        ({"id": "xml-2", "headline": "标题", "summary": "\x00"}, "summary", "U+0000 at position 0"),
        ({"id": "xml-3", "headline": "标题", "tags": ["a", "b\ufffe"]}, "tags[1]", "U+FFFE at position 1"),
        (
            {"id": "xml-4", "headline": "标题", "images": [{"href": "https://n.example.cn/a.png", "alt": "\uffff"}]},
            "images[0].alt",
            "U+FFFF at position 0",
        ),
        ({"id": "xml-5", "headline": "标题", "overrides": {"web": {"text": "x\x1b"}}}, "overrides.web.text", "U+001B"),
    ],
)
def test_text_xml_cannot_carry_is_422_naming_the_field_and_character(
    live: LiveApp, document: dict[str, Any], path: str, character: str
) -> None:
    answer = live.hook(json.dumps(document).encode())
    assert answer.status == 422, answer.raw[:300]
    [error] = answer.body["errors"]
    assert error["path"] == path and character in error["problem"] and "XML 1.0" in error["problem"], error


def test_ninjs_text_xml_cannot_carry_is_422_naming_the_ninjs_field(live: LiveApp) -> None:
    document = {"uri": "urn:x:xml-n", "headlines": [{"role": "main", "value": "坏\x01"}]}
    answer = live.hook(json.dumps(document).encode(), "application/ninjs+json")
    assert answer.status == 422, answer.raw[:300]
    assert [e["path"] for e in answer.body["errors"]] == ["headlines[0].value"]


@pytest.mark.parametrize(
    ("body", "path", "bound"),
    [
        (b'{"id": "big-v1", "headline": "h", "version": 9223372036854775808}', "version", "1 to 2147483647"),
        (b'{"id": "big-v2", "headline": "h", "version": 18446744073709551616}', "version", "1 to 2147483647"),
        (b'{"id": "big-v3", "headline": "h", "version": ' + b"9" * 5000 + b"}", "version", "1 to 2147483647"),
        (b'{"id": "big-u", "headline": "h", "urgency": -' + b"1" * 4400 + b"}", "urgency", "1 to 9"),
        (
            b'{"id": "big-w", "headline": "h", "images": [{"href": "https://n.example.cn/a.png", "width": 1e400}]}',
            "images[0].width",
            "",
        ),
        (b'{"id": "d-1", "headline": "h", "published_at": "0001-01-01T00:30:00+01:00"}', "published_at", "1900"),
        (b'{"id": "d-2", "headline": "h", "embargo_until": "9999-12-31T23:59:59-05:00"}', "embargo_until", "2999"),
        (b'{"id": "d-3", "headline": "h", "updated_at": "1899-12-31T23:59:59Z"}', "updated_at", "1900"),
        (b'{"id": "d-4", "headline": "h", "published_at": "2999-12-31T23:30:00-01:00"}', "published_at", "2999"),
    ],
)
def test_numbers_and_dates_out_of_range_are_422_naming_the_field(
    live: LiveApp, body: bytes, path: str, bound: str
) -> None:
    for attempt in ("first", "the same signed request again"):
        answer = live.hook_signed(body)
        assert answer.status == 422, (attempt, answer.raw[:300])
        [error] = answer.body["errors"]
        assert error["path"] == path and bound in error["problem"], error


def test_ninjs_version_past_the_store_bound_is_422(live: LiveApp) -> None:
    for version in ("9223372036854775808", "9" * 5000):
        document = {"uri": "urn:x:big-nv", "version": version, "headlines": [{"value": "h"}]}
        answer = live.hook(json.dumps(document).encode(), "application/ninjs+json")
        assert answer.status == 422, answer.raw[:300]
        assert answer.body["errors"][0]["path"] == "version", answer.body


def test_a_refused_request_does_not_spend_its_signature(live: LiveApp) -> None:
    assert live.hook(json.dumps({"id": "spend-1", "version": 2, "headline": "第一版"}).encode()).status == 202
    # The same version with other content is a 409; sent again with the same signature it is still a 409, not a
    # 401 "replayed": the signature was never spent on it.
    body = json.dumps({"id": "spend-1", "version": 2, "headline": "另一版"}).encode()
    headers = live.signed_headers(body)
    for _ in range(2):
        answer = live.request("POST", "/v1/stories", body, headers)
        assert answer.status == 409, answer.raw[:300]
    # An accepted request's signature stays spent.
    body = json.dumps({"id": "spend-1", "version": 3, "headline": "第三版"}).encode()
    headers = live.signed_headers(body)
    assert live.request("POST", "/v1/stories", body, headers).status == 202
    replay = live.request("POST", "/v1/stories", body, headers)
    assert (replay.status, replay.body["error"]) == (401, "replayed_signature")


@pytest.mark.parametrize("delivery_id", [str(2**63), str(2**64), "9" * 5000, "0", "-1"])
def test_delivery_ids_past_int64_are_404_or_422(live: LiveApp, delivery_id: str) -> None:
    answer = live.api("POST", f"/v1/deliveries/{delivery_id}/replay", {})
    assert answer.status == 404 and "from 1 to" in answer.body["message"], answer.raw[:300]
    raw = b'{"ids": [' + delivery_id.encode() + b"]}"
    answer = live.request("POST", "/v1/replay", raw, {"Authorization": f"Bearer {API_TOKEN}"})
    assert answer.status == 422, answer.raw[:300]
    assert answer.body["errors"][0]["path"].startswith("ids"), answer.body


SIZE_CASES = [
    ("headline", {"headline": "标题" + "x" * 1_000_000}, "headline", "1000 characters"),
    ("subheadline", {"subheadline": "x" * 1001}, "subheadline", "1000 characters"),
    ("summary", {"summary": "x" * 5001}, "summary", "5000 characters"),
    ("body_html", {"body_html": "<p>" + "x" * 1_000_000 + "</p>"}, "body_html", "1000000 characters"),
    ("by", {"by": "x" * 501}, "by", "500 characters"),
    ("section", {"section": "x" * 201}, "section", "200 characters"),
    ("url", {"url": "https://n.example.cn/" + "x" * 2048}, "url", "2048 characters"),
    ("tags", {"tags": [f"t{n}" for n in range(51)]}, "tags", "50 items"),
    ("tag", {"tags": ["x" * 101]}, "tags[0]", "100 characters"),
    ("images", {"images": [{"href": f"https://n.example.cn/{n}.png"} for n in range(51)]}, "images", "50 items"),
    ("caption", {"images": [{"href": "https://n.example.cn/a.png", "alt": "x" * 2001}]}, "images[0].alt", "2000"),
    ("targets", {"targets": [f"c{n}" for n in range(101)]}, "targets", "100 items"),
    ("overrides", {"overrides": {f"c{n}": {} for n in range(101)}}, "overrides", "100 items"),
    ("override text", {"overrides": {"web": {"text": "x" * 5001}}}, "overrides.web.text", "5000 characters"),
    ("language", {"language": "-".join(["abcdefgh"] * 8)}, "language", "64 characters"),
]


@pytest.mark.parametrize(("name", "fields", "path", "bound"), SIZE_CASES, ids=[c[0] for c in SIZE_CASES])
def test_fields_over_their_size_bound_are_422_naming_the_field_and_bound(
    live: LiveApp, name: str, fields: dict[str, Any], path: str, bound: str
) -> None:
    started = time.monotonic()
    answer = live.hook(json.dumps({"id": f"size-{name.replace(' ', '-')}", "headline": "标题", **fields}).encode())
    assert answer.status == 422, answer.raw[:300]
    [error] = answer.body["errors"]
    assert error["path"] == path and bound in error["problem"], error
    assert time.monotonic() - started < 10  # a 1 MB headline used to hold intake for 30 s


def test_the_openapi_story_schema_states_the_bounds(live: LiveApp) -> None:
    schemas = live.request("GET", "/openapi.json").body["components"]["schemas"]
    story = schemas["CanonicalStory"]["properties"]
    assert story["headline"]["maxLength"] == 1000 and story["tags"]["maxItems"] == 50
    assert story["version"]["maximum"] == 2**31 - 1 and "1900" in json.dumps(story["published_at"])


def test_an_override_for_an_unknown_channel_is_422_like_an_unknown_target(live: LiveApp) -> None:
    document = {"id": "ov-1", "headline": "标题", "overrides": {"web": {"headline": "网站标题"}, "nope": {}}}
    answer = live.hook(json.dumps(document).encode())
    assert answer.status == 422, answer.raw[:300]
    [error] = answer.body["errors"]
    assert error["path"] == "overrides.nope" and "unknown channel 'nope'" in error["problem"], error


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"headline": "<b></b><script>alert(1)</script>"}, "headline"),
        ({"headline": "<img src=x onerror=alert(1)>"}, "headline"),
        ({"headline": "标题", "overrides": {"web": {"headline": "<br><hr>"}}}, "overrides.web.headline"),
    ],
)
def test_a_headline_that_is_only_markup_is_422_naming_it(live: LiveApp, fields: dict[str, Any], path: str) -> None:
    answer = live.hook(json.dumps({"id": "markup-1", **fields}).encode())
    assert answer.status == 422, answer.raw[:300]
    [error] = answer.body["errors"]
    assert error["path"] == path and "markup" in error["problem"], error


def test_a_story_without_published_at_carries_its_first_acceptance_on_every_version(live: LiveApp) -> None:
    assert live.hook(json.dumps({"id": "undated-1", "headline": "第一版"}).encode()).status == 202
    time.sleep(0.01)
    assert live.hook(json.dumps({"id": "undated-1", "version": 2, "headline": "第二版"}).encode()).status == 202
    status = live.api("GET", "/v1/stories/undated-1").body
    # A webhook payload keeps the exact request body it posts: the story is inside it.
    dates = {
        json.loads(d["payload"]["data"]["body"])["story"]["published_at"]
        for deliveries in status["channels"].values()
        for d in deliveries
        if d["payload"] is not None
    }
    assert len(dates) == 1 and None not in dates, status  # one date for every channel and version
