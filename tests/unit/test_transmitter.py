"""The HTTP transmitter's one mapping of transport failures onto the taxonomy, and its JSON reading."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from syndicate.delivery import OutcomeUnknown, Retryable
from syndicate.httputil import HttpAnswer, json_object, map_transport_errors


def test_a_failure_after_sending_is_unknown_for_a_write_and_retryable_for_a_read() -> None:
    with pytest.raises(OutcomeUnknown, match=r"^publish: no answer after sending \(ServerDisconnectedError"):
        with map_transport_errors("publish", target="api.example", may_land=True):
            raise aiohttp.ServerDisconnectedError()
    with pytest.raises(Retryable, match=r"^lookup failed: TimeoutError"):
        with map_transport_errors("lookup", target="api.example", may_land=False):
            raise TimeoutError()


def test_no_connection_is_retryable_even_for_a_write() -> None:
    with pytest.raises(Retryable, match=r"^publish: could not connect to api.example"):
        with map_transport_errors("publish", target="api.example", may_land=True):
            raise aiohttp.ConnectionTimeoutError()


async def test_connection_refused_through_the_transmitter_is_retryable(unused_tcp_port: int) -> None:
    from syndicate.channel import HttpAdapter
    from tests.support import ScriptedOptions

    class Probe(HttpAdapter[ScriptedOptions, dict[str, Any]]):
        kind = "transmitter-probe"

        def format(self, story: Any, action: Any) -> Any:  # never called
            raise NotImplementedError

        async def publish(self, payload: Any, ctx: Any) -> Any:  # never called
            raise NotImplementedError

    probe = Probe("p", ScriptedOptions(), timeout=2)
    await probe.start()
    try:
        with pytest.raises(Retryable, match=r"could not connect to 127\.0\.0\.1"):
            await probe.request("POST", f"http://127.0.0.1:{unused_tcp_port}/x", doing="publish", may_land=True)
    finally:
        await probe.close()


def test_answers_read_as_json_objects() -> None:
    assert json_object(b'{"id": 1}') == {"id": 1}
    assert json_object(b"<html>502</html>") == {}
    assert json_object(b"[1, 2]") == {"value": [1, 2]}
    assert json_object(b"\xff") == {}
    # What the fast parser refuses, the standard one still reads: a platform's byte-order mark, a lone surrogate.
    assert json_object(b'\xef\xbb\xbf{"id": "bom"}') == {"id": "bom"}
    assert json_object(b'{"name": "\\ud800"}') == {"name": "\ud800"}
    assert json_object('{"error": "\ud800"}') == {"error": "\ud800"}  # text decoded from an odd charset
    assert json_object('{"id": 12345678901234567890123, "title": "中文"}') == {
        "id": 12345678901234567890123,
        "title": "中文",
    }
    answer = HttpAnswer(201, {}, b'{"id": "a"}')
    assert answer.ok and answer.json() == {"id": "a"}
    assert not HttpAnswer(302, {}, b"").ok
