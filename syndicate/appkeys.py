"""The typed keys under which `syndicate serve` keeps its shared objects on the aiohttp application.

In their own module so the server and the dashboard (which the server mounts) both read them without importing
each other.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from syndicate.config import Settings
from syndicate.engine import Engine
from syndicate.metrics import Metrics

ENGINE = web.AppKey("engine", Engine)
SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
#: Seconds since the epoch; tests put a fake clock here.
CLOCK = web.AppKey[Callable[[], float]]("clock")
