"""Structured logging: JSON lines with context fields, and no secret ever reaching a log line."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from syndicate.channel import Adapter, AdapterOptions, DeliveryContext, register
from syndicate.config import ServerSettings, Settings, StoreSettings
from syndicate.delivery import Action, JsonPayload, Payload, Permanent, Receipt
from syndicate.logs import (
    CONTEXT_FIELDS,
    MASK,
    JsonFormatter,
    RedactingFilter,
    Redactor,
    collect_secrets,
    configure_logging,
    redact,
    redacted_config,
    register_secret,
    reset_logging,
    set_secrets,
)
from syndicate.sandbox import RunningSandbox
from syndicate.signing import SIGNATURE_HEADER
from syndicate.store import open_store
from syndicate.store.base import DeliveryFilter, State
from syndicate.story import ChannelStory
from tests.support import make_settings, make_story, run_engine

SECRET = "s3cr3t-value-XYZ"
BEARER = "hdr-bearer-token-998877"
HOOK_SECRET = "hook-secret-0123456789abcdef"
API_TOKEN = "api-token-fedcba9876543210"
ALL_SECRETS = (SECRET, BEARER, HOOK_SECRET, API_TOKEN)

log = logging.getLogger("syndicate.test_logs")


def webhook(url: str, *, lookup: bool = False, secret: str = SECRET, **kw: Any) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "kind": "webhook",
        "url": url,
        "secret": secret,
        "headers": {"Authorization": f"Bearer {BEARER}", "X-Newsroom": "shanghai"},
        "retry": [0, 0.05, 0.05],
        "timeout": 0.3,
        **kw,
    }
    if lookup:
        channel["lookup_url"] = url
    return channel


def with_server_secrets(settings: Settings) -> Settings:
    return dataclasses.replace(settings, server=ServerSettings(hook_secret=HOOK_SECRET, api_token=API_TOKEN))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return with_server_secrets(make_settings(tmp_path, {"hook": webhook("http://127.0.0.1:9/hook")}))


@pytest.fixture
def capture() -> Iterator[Any]:
    """configure_logging into a StringIO; yields a function doing it, restores the root logger afterwards."""
    root = logging.getLogger()
    level = root.level
    buf = io.StringIO()

    def configure(settings: Settings | None, **kw: Any) -> io.StringIO:
        configure_logging(settings, stream=buf, **kw)
        return buf

    yield configure
    reset_logging()
    set_secrets(None)
    root.setLevel(level)


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def assert_no_secrets(text: str, secrets: tuple[str, ...] = ALL_SECRETS) -> None:
    leaked = [s for s in secrets if s in text]
    assert not leaked, f"leaked {leaked} in:\n{text}"


# --------------------------------------------------------------------------------------------------- the format


def test_json_lines_carry_ts_level_logger_message_and_context(capture: Any) -> None:
    buf = capture(None)
    context = {
        "story_id": "story-1",
        "channel": "hook",
        "delivery_id": 42,
        "action": Action.PUBLISH,
        "worker": "host:1:abc",
        "request_id": "req-7",
        "status": 202,
        "path": "/v1/stories",
        "method": "POST",
        "duration_ms": 12.5,
        "error_class": "Retryable",
        "platform_code": 45009,
    }
    log.warning("attempt for %s\nwith a newline, 上海 and \u2028 in it", "story-1", extra=context)
    log.info("no context here")

    first, second = lines(buf)
    assert list(first) == ["ts", "level", "logger", "message", *CONTEXT_FIELDS]
    assert first["level"] == "warning" and first["logger"] == "syndicate.test_logs"
    assert first["message"] == "attempt for story-1\nwith a newline, 上海 and \u2028 in it"
    assert {k: first[k] for k in CONTEXT_FIELDS} == {**context, "action": "publish"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    ts = dt.datetime.fromisoformat(first["ts"])
    assert ts.tzinfo is not None and abs((dt.datetime.now(dt.UTC) - ts).total_seconds()) < 60
    assert set(second) == {"ts", "level", "logger", "message"} and second["level"] == "info"


def test_exception_goes_into_exc(capture: Any) -> None:
    buf = capture(None)
    try:
        raise RuntimeError("the platform exploded")
    except RuntimeError:
        log.exception("adapter raised", extra={"channel": "hook"})
    [line] = lines(buf)
    assert line["message"] == "adapter raised" and line["channel"] == "hook"
    assert "Traceback" in line["exc"] and "RuntimeError: the platform exploded" in line["exc"]


def test_level_and_text_format(capture: Any) -> None:
    buf = capture(None, fmt="text", level=logging.WARNING)
    log.info("dropped")
    log.warning("kept %d", 1, extra={"channel": "hook", "delivery_id": 3})
    [line] = buf.getvalue().splitlines()
    assert re.fullmatch(r"\S+Z WARNING syndicate\.test_logs: kept 1 channel=hook delivery_id=3", line)


def test_configuring_again_replaces_the_handler(capture: Any) -> None:
    capture(None)
    capture(None)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_syndicate_handler", False)]
    assert len(ours) == 1


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging(None, fmt="xml")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ redaction


def test_secrets_are_masked_in_message_args_extra_and_exception(capture: Any, settings: Settings) -> None:
    buf = capture(settings)
    log.info(f"inline {SECRET}")
    log.info("as an argument: %s and %r", SECRET, {"token": API_TOKEN})
    log.info("in the extras", extra={"channel": f"hook-{HOOK_SECRET}", "request_id": f"r {BEARER}"})
    try:
        raise ValueError(f"receiver said: bad signature for {SECRET} / {HOOK_SECRET}")
    except ValueError:
        log.exception("failed")

    text = buf.getvalue()
    assert_no_secrets(text)
    inline, args, extras, exc = lines(buf)
    assert inline["message"] == f"inline {MASK}"
    assert args["message"] == f"as an argument: {MASK} and {{'token': '{MASK}'}}"
    assert extras["channel"] == f"hook-{MASK}" and extras["request_id"] == f"r {MASK}"
    assert f"receiver said: bad signature for {MASK} / {MASK}" in exc["exc"]


def test_records_reaching_other_handlers_are_masked_too(
    capture: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The filter rewrites the record, so no handler that formats it later can render the secret."""
    capture(settings)
    with caplog.at_level(logging.INFO):
        log.info("value %s", SECRET)
    assert SECRET not in caplog.text


def test_bearer_and_signature_headers_are_masked_without_settings(capture: Any) -> None:
    buf = capture(None)
    log.info("sent headers %s", {"Authorization": "Bearer abc.def-ghi", SIGNATURE_HEADER: "t=17,v1=" + "ab" * 32})
    log.info("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig")
    log.info("X-Syndicate-Signature: t=1700000000,v1=%s", "0f" * 32)
    log.info("GET https://api.example.cn/cgi-bin/send?access_token=ACCESS123&type=news")
    log.info("connect to postgresql://syndicate:pg-password@db/syndicate failed")
    text = buf.getvalue()
    for leaked in ("abc.def-ghi", "ab" * 32, "eyJhbGciOiJIUzI1NiJ9", "0f" * 32, "ACCESS123", "pg-password"):
        assert leaked not in text
    messages = [line["message"] for line in lines(buf)]
    assert f"'Authorization': 'Bearer {MASK}'" in messages[0]
    assert f"'{SIGNATURE_HEADER}': '{MASK}'" in messages[0]
    assert messages[1] == f"Authorization: Bearer {MASK}"
    assert messages[2] == f"X-Syndicate-Signature: {MASK}"
    assert messages[3] == f"GET https://api.example.cn/cgi-bin/send?access_token={MASK}&type=news"
    assert messages[4] == f"connect to postgresql://syndicate:{MASK}@db/syndicate failed"


def test_redact_helper(capture: Any, settings: Settings) -> None:
    assert redact("Authorization: Basic dXNlcjpwYXNz") == f"Authorization: Basic {MASK}"
    assert redact(f"before configuring: {SECRET}") == f"before configuring: {SECRET}"
    capture(settings)
    assert (
        redact(f"HTTP 401 from the receiver: token {SECRET} rejected")
        == f"HTTP 401 from the receiver: token {MASK} rejected"
    )
    assert redact(f'{{"echo": "{HOOK_SECRET}", "auth": "Bearer {BEARER}"}}') == (
        f'{{"echo": "{MASK}", "auth": "Bearer {MASK}"}}'
    )
    assert redact("nothing to hide: 上海") == "nothing to hide: 上海"
    assert redact("") == ""
    # Tokens learnt at run time (an adapter's access token) are masked from then on.
    register_secret("runtime-access-token-31337")
    assert redact("token runtime-access-token-31337 expired") == f"token {MASK} expired"


def test_redactor_masks_the_longest_secret_whole_and_escaped_forms() -> None:
    r = Redactor(["secret-part", "secret-part-and-more", 'quote"d-secret'])
    assert r.redact("x secret-part-and-more y") == f"x {MASK} y"
    assert r.redact(json.dumps({"v": 'quote"d-secret'})) == f'{{"v": "{MASK}"}}'
    assert r.redact(repr("secret-part")) == f"'{MASK}'"


def test_a_secret_encoded_twice_is_masked() -> None:
    """OAuth 1.0a's signature base string percent-encodes the encoded consumer key and token again (oauthlib logs it
    at debug): ``e52c68b6+/f37b`` shows as ``e52c68b6%252B%252Ff37b``, whose tail a once-encoded mask misses."""
    r = Redactor(["e52c68b6+/f37be122abd5"])
    base_string = "POST&https%3A%2F%2Fapi.x.com%2F2%2Ftweets&oauth_consumer_key%3De52c68b6%252B%252Ff37be122abd5%26"
    assert "f37be122abd5" not in r.redact(base_string)


def test_short_secrets_are_not_masked_by_substring_but_never_shown_in_config(capture: Any, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, {"hook": webhook("http://127.0.0.1:9/hook", secret="ab12")})
    buf = capture(settings)
    log.info("tab12 and ab12 stay: too short to mask without hitting other words")
    assert "ab12" in lines(buf)[0]["message"]
    assert "ab12" in collect_secrets(settings)
    shown = redacted_config(settings)
    assert shown["channels"]["hook"]["secret"] == MASK
    assert "ab12" not in json.dumps(shown)


def test_collect_secrets_and_redacted_config(settings: Settings) -> None:
    settings = dataclasses.replace(settings, store=StoreSettings(url="postgresql://syn:pg-password-77@db:5432/syn"))
    found = collect_secrets(settings)
    assert found == {SECRET, BEARER, HOOK_SECRET, API_TOKEN, "pg-password-77"}
    assert "shanghai" not in found  # X-Newsroom is not a credential header
    shown = redacted_config(settings)
    text = json.dumps(shown)
    assert_no_secrets(text, (*ALL_SECRETS, "pg-password-77"))
    assert shown["server"]["hook_secret"] == MASK and shown["server"]["api_token"] == MASK
    assert shown["channels"]["hook"]["headers"] == {"Authorization": MASK, "X-Newsroom": "shanghai"}
    assert shown["channels"]["hook"]["url"] == "http://127.0.0.1:9/hook"
    assert shown["store"]["url"] == f"postgresql://syn:{MASK}@db:5432/syn"


class SecretiveOptions(AdapterOptions):
    app_key: str
    app_secret: str
    access_token: str | None = None
    master_secret: str
    password: str
    keywords: str = "district media centres"
    base_url: str = "https://open.example.cn"


class SecretiveAdapter(Adapter):
    kind: ClassVar[str] = "secretive-test"
    options_model = SecretiveOptions

    def format(self, story: ChannelStory, action: Action) -> JsonPayload:
        return Payload(data={})

    async def publish(self, payload: Payload, ctx: DeliveryContext) -> Receipt:
        # Only its config is under test (which option names count as secrets); it never delivers.
        raise Permanent("the secretive-test channel only exists to test config redaction")


register(SecretiveAdapter)


def test_secret_field_names_in_any_channel_kind(tmp_path: Path) -> None:
    values = {
        "app_key": "appkey-12345678",
        "app_secret": "appsecret-12345678",
        "access_token": "accesstoken-12345678",
        "master_secret": "master-12345678",
        "password": "password-12345678",
    }
    settings = make_settings(tmp_path, {"p": {"kind": "secretive-test", **values}})
    assert collect_secrets(settings) == set(values.values())
    shown = redacted_config(settings)["channels"]["p"]
    assert {k: shown[k] for k in values} == dict.fromkeys(values, MASK)
    assert shown["keywords"] == "district media centres" and shown["base_url"] == "https://open.example.cn"


def test_filter_with_its_own_redactor() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a %s b", ("top-secret-1",), None)
    record.channel = "top-secret-1"
    assert RedactingFilter(Redactor(["top-secret-1"])).filter(record)
    formatted = json.loads(JsonFormatter().format(record))
    assert formatted["message"] == f"a {MASK} b" and formatted["channel"] == MASK


# ------------------------------------------------------------------------------------------ through the engine


async def test_engine_run_with_faults_logs_no_secret(capture: Any, tmp_path: Path, sandbox: RunningSandbox) -> None:
    url = sandbox.url_for("/webhook/mirror")
    settings = with_server_secrets(make_settings(tmp_path, {"hook": webhook(url)}))
    buf = capture(settings, level=logging.DEBUG)

    assert list((await run_engine(settings, [make_story(id="clean")])).outcomes.values()) == [["delivered"]]
    sandbox.sandbox.set_faults("webhook", [{"fault": "status:503"}])
    outcomes = (await run_engine(settings, [make_story(id="fails")])).outcomes
    assert outcomes[2] == ["retry", "retry", "failed"]
    sandbox.sandbox.set_faults("webhook", [{"fault": "timeout_after", "methods": ["POST"]}])
    outcomes = (await run_engine(settings, [make_story(id="times-out")])).outcomes
    assert outcomes[3] == ["unknown"]

    # The secret really was in use: every request was signed with it and carried the bearer header.
    received = sandbox.sandbox.received("webhook", "mirror")
    assert received and all(r.header(SIGNATURE_HEADER) for r in received)
    assert all(r.header("Authorization") == f"Bearer {BEARER}" for r in received)

    assert_no_secrets(buf.getvalue())
    records = lines(buf)
    failed = [r for r in records if r["message"].startswith("delivery attempt failed")]
    assert {r["error_class"] for r in failed} == {"Retryable", "OutcomeUnknown"}
    assert all(r["channel"] == "hook" and r["delivery_id"] and r["action"] == "publish" for r in failed)
    assert any(r.get("platform_code") == "503" for r in failed)
    finished = [r for r in records if r["message"].startswith("attempt finished")]
    assert len(finished) == 5 and all("duration_ms" in r and "worker" in r for r in finished)


async def test_a_receiver_echoing_our_credentials_does_not_leak_them(capture: Any, tmp_path: Path) -> None:
    """Platforms put what we sent into their error messages; those messages reach logs and delivery notes."""

    async def echo(request: web.Request) -> web.Response:
        message = f"rejected {request.headers['Authorization']} / {request.headers[SIGNATURE_HEADER]} ({SECRET})"
        return web.json_response({"message": message}, status=500)

    app = web.Application()
    app.router.add_post("/hook", echo)
    async with TestServer(app, host="127.0.0.1") as server:
        settings = with_server_secrets(make_settings(tmp_path, {"hook": webhook(str(server.make_url("/hook")))}))
        buf = capture(settings, level=logging.DEBUG)
        outcomes = (await run_engine(settings, [make_story()])).outcomes
    assert outcomes == {1: ["retry", "retry", "failed"]}
    assert_no_secrets(buf.getvalue())
    failed = [r for r in lines(buf) if r["message"].startswith("delivery attempt failed")]
    assert len(failed) == 3
    assert re.search(r"rejected Bearer \*\*\* / t=\d+,v1=\*\*\* \(\*\*\*\)", failed[0]["message"]), failed[0]

    # The same text stored as the delivery's note is what an API answer would show: redact() cleans it.
    store = open_store(settings.store.url)
    try:
        [delivery] = await store.list_deliveries(DeliveryFilter())
    finally:
        await store.close()
    assert delivery.state is State.FAILED and delivery.last_error
    assert_no_secrets(redact(delivery.last_error or ""))


async def test_oauth_signing_leaves_no_signature_or_key_in_the_logs_at_any_verbosity(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """At -vv oauthlib logged every signing (parameters, base string, "Signature: ...") and tweepy each request's
    Authorization header: real libraries, real requests, at DEBUG through the real logging configuration."""
    from oauthlib.oauth1 import Client

    from adapters.x.adapter import XAdapter, XOptions
    from adapters.x.standin import (
        DEFAULT_ACCESS_TOKEN,
        DEFAULT_ACCESS_TOKEN_SECRET,
        DEFAULT_CONSUMER_KEY,
        DEFAULT_CONSUMER_SECRET,
    )

    stream = io.StringIO()
    configure_logging(None, fmt="json", level=logging.DEBUG, stream=stream)
    try:
        _, signed, _ = Client("ck-0123456789ab", "cs-0123456789ab", "tk-0123456789ab", "ts-0123456789ab").sign(
            "https://api.x.com/2/tweets?x=1", "POST"
        )
        x = XAdapter(
            "x",
            XOptions(
                api_base=sandbox.url,
                consumer_key=DEFAULT_CONSUMER_KEY,
                consumer_secret=DEFAULT_CONSUMER_SECRET,
                access_token=DEFAULT_ACCESS_TOKEN,
                access_token_secret=DEFAULT_ACCESS_TOKEN_SECRET,
            ),
            timeout=2,
        )
        await x.start()
        try:
            await x.check()
        finally:
            await x.close()
    finally:
        reset_logging()
    logs = stream.getvalue()
    signature = re.search(r'oauth_signature="([^"]+)"', signed["Authorization"])
    assert signature and signature.group(1) not in logs
    assert "Making API request" in logs  # tweepy did log the request, masked
    assert re.findall(r'oauth_signature="?(?!\*\*\*)[A-Za-z0-9%]', logs) == []
    assert "ck-0123456789ab" not in logs and DEFAULT_CONSUMER_KEY not in logs
