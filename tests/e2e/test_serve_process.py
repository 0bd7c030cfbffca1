"""`syndicate serve` as a real process: SIGTERM mid-delivery loses nothing, and its logs never carry a secret."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

from syndicate.sandbox import RunningSandbox
from syndicate.signing import SIGNATURE_HEADER, sign
from tests.support import write_config
from tests.support.serve_process import API_TOKEN, ServeProcess, running_serve

HOOK_SECRET = "hook-secret-never-logged-42"
WEBHOOK_SECRET = "test-secret"  # what write_config gives every webhook channel


def serve_config(tmp_path: Path, sandbox_url: str, **kw: object) -> Path:
    extra = f'\n[server]\nhook_secret = "{HOOK_SECRET}"\napi_token = "{API_TOKEN}"\n'
    return write_config(tmp_path, sandbox_url, extra=extra, **kw)  # type: ignore[arg-type]


async def publish(server: ServeProcess, story_id: str, *, version: int = 1) -> dict[str, object]:
    body = json.dumps({"id": story_id, "version": version, "headline": f"标题 {story_id}"}, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(HOOK_SECRET, body)}
    async with server.session.post(server.url + "/v1/stories", data=body, headers=headers) as resp:
        assert resp.status in (200, 202), await resp.text()
        return await resp.json()


async def states(server: ServeProcess) -> Counter[str]:
    status, body = await server.api("GET", "/v1/deliveries?limit=1000")
    assert status == 200
    return Counter(d["state"] for d in body["deliveries"])


async def wait_until(server: ServeProcess, predicate, within: float = 30) -> Counter[str]:  # type: ignore[no-untyped-def]
    end = time.monotonic() + within
    while True:
        current = await states(server)
        if predicate(current):
            return current
        assert time.monotonic() < end, current
        await asyncio.sleep(0.1)


async def test_sigterm_during_delivery_exits_0_and_restart_loses_nothing(
    tmp_path: Path, sandbox: RunningSandbox
) -> None:
    config = serve_config(tmp_path, sandbox.url, concurrency=1)
    sandbox.sandbox.set_faults("webhook", [{"fault": "slow:800", "probability": 1.0}])
    async with running_serve(config, tmp_path) as server:
        for i in range(4):
            await publish(server, f"t{i}")
        await wait_until(server, lambda c: c["in_flight"] >= 1)
    assert server.exit_code == 0  # SIGTERM: finished what was in flight, released the rest
    sandbox.sandbox.clear_faults()
    async with running_serve(config, tmp_path) as again:
        final = await wait_until(again, lambda c: c["delivered"] == 8)
    assert final == Counter({"delivered": 8})
    received = Counter(r.idempotency_key for r in sandbox.sandbox.received("webhook"))
    assert len(received) == 8 and set(received.values()) == {1}


async def test_logs_of_a_full_run_carry_no_secret(tmp_path: Path, sandbox: RunningSandbox) -> None:
    """Publish, fail, retry, time out, replay, retract, and read everything back: no configured secret in the logs."""
    config = serve_config(tmp_path, sandbox.url, retry=(0, 0.05, 0.05, 0.1))
    sandbox.sandbox.set_faults(
        "webhook",
        [
            {"fault": "status:400", "probability": 1.0, "name": "beta"},
            {"fault": "status:503", "probability": 0.3},
            {"fault": "timeout_after", "probability": 0.1},
        ],
    )
    async with running_serve(config, tmp_path) as server:
        for i in range(6):
            await publish(server, f"s{i}")
        await publish(server, "bad-sig-probe")  # signature headers must not be logged either
        async with server.session.post(server.url + "/v1/stories", data=b"{}", headers={SIGNATURE_HEADER: "t=1,v1=ab"}):
            pass
        await wait_until(server, lambda c: c["failed"] >= 7 and not (c["queued"] or c["in_flight"] or c["retry_wait"]))
        sandbox.sandbox.clear_faults()
        status, body = await server.api("POST", "/v1/replay", json={"state": "failed,unknown"})
        assert status == 200 and body["requeued"] >= 7
        await wait_until(server, lambda c: set(c) == {"delivered"})
        signed = b'{"id": "s0"}'
        headers = {SIGNATURE_HEADER: sign(HOOK_SECRET, signed)}
        async with server.session.delete(server.url + "/v1/stories/s0", data=signed, headers=headers) as resp:
            assert resp.status == 202
        await server.api("GET", "/v1/stories/s1")
        async with server.session.get(server.url + "/metrics") as resp:
            assert resp.status == 200
    logs = "\n".join(server.log)
    assert len(server.json_logs()) > 20  # it did log the run (requests, failures, retries)
    assert any(entry.get("delivery_id") for entry in server.json_logs())
    for secret in (HOOK_SECRET, API_TOKEN, WEBHOOK_SECRET):
        assert secret not in logs, secret
