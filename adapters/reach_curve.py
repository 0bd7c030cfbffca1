"""The stand-ins' reach figures: plausible, deterministic counts that grow with a post's age.

Every stand-in that serves a statistics API (WeChat datacube, Weibo counts, X public metrics) answers with figures
from ``grown_figure``: the same post, metric and age always give the same number, a post's figures never shrink as
it ages, and they level off after a few days as real posts do. The stand-ins read "now" from ``standin_clock`` so a
test can age a post without waiting (``set_standin_clock``); by default it is the wall clock, like the rest of each
stand-in. Used by stand-ins only: nothing here talks to a platform.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable

from syndicate.sandbox.core import Sandbox

#: The age (seconds) at which a post has reached about 63 % of what it will ever get: most reads come in the first
#: day (the schedule samples at 1 h, 6 h, 24 h, 3 d and 7 d and sees the curve rise, then flatten).
GROWTH_SECONDS = 24 * 3600.0
_CLOCK_STORE = "reach-curve"


def grown_figure(post_key: str, metric: str, age_seconds: float, *, full: int) -> int:
    """The figure of ``metric`` for the post ``post_key`` at ``age_seconds``: 0 at publication, rising towards
    ``full`` times a per-post, per-metric weight in [0.5, 1.5) (so posts and metrics differ, deterministically)."""
    digest = hashlib.sha256(f"{post_key}\x00{metric}".encode()).digest()
    weight = 0.5 + int.from_bytes(digest[:4], "big") / 2**32
    grown = 1.0 - math.exp(-max(age_seconds, 0.0) / GROWTH_SECONDS)
    return int(full * weight * grown)


def standin_clock(sandbox: Sandbox) -> Callable[[], float]:
    """Where the stand-ins' statistics read "now" from (unix seconds)."""
    clock: Callable[[], float] = sandbox.store(_CLOCK_STORE).get("clock", time.time)
    return clock


def set_standin_clock(sandbox: Sandbox, clock: Callable[[], float] | None) -> None:
    """Make the statistics of every stand-in read "now" from ``clock`` (None: the wall clock again)."""
    store = sandbox.store(_CLOCK_STORE)
    if clock is None:
        store.pop("clock", None)
    else:
        store["clock"] = clock
