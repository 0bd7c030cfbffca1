"""Local stand-ins for the remote platforms syndicate publishes to, for tests, the demo and the benchmarks.

This package is the generic machinery and names no platform. One aiohttp app hosts every stand-in installed
through the ``syndicate.sandboxes`` entry points (each lives with its channel, ``adapters/<kind>/standin.py``); a
``Sandbox`` object records what each platform processed, injects scripted faults (errors, rate limits, timeouts,
resets, slowness) and keeps per-receiver stats. Everything is steerable from Python (``running.sandbox``) or over
HTTP (``/_sandbox/*``):

    async with running_sandbox(port=0, seed=1, hold_seconds=0.5) as running:
        running.sandbox.set_faults(platform, [{"fault": "status:503", "probability": 0.3}])
        ...  # point an adapter at running.url_for(<the platform's path>)
        assert running.sandbox.received(platform)
"""

from syndicate.sandbox.app import RunningSandbox, Standin, StandinSetup, create_app, run, running_sandbox, standins
from syndicate.sandbox.core import (
    IDEMPOTENCY_HEADER,
    MEDIA_DIR,
    SANDBOX_KEY,
    Call,
    FaultRule,
    FaultRuleError,
    MediaFile,
    ReceivedRequest,
    ReceiverStats,
    Sandbox,
    bad_request,
    json_error,
    media_files,
    read_form,
    read_json,
)

__all__ = [
    "IDEMPOTENCY_HEADER",
    "MEDIA_DIR",
    "SANDBOX_KEY",
    "Call",
    "FaultRule",
    "FaultRuleError",
    "MediaFile",
    "ReceivedRequest",
    "ReceiverStats",
    "RunningSandbox",
    "Sandbox",
    "Standin",
    "StandinSetup",
    "bad_request",
    "create_app",
    "json_error",
    "media_files",
    "read_form",
    "read_json",
    "run",
    "running_sandbox",
    "standins",
]
