"""Failed dashboard logins, counted per client address and overall, so the API token cannot be guessed at speed.

A sliding window of failure times: a client with ``per_client`` failures in the last ``window`` seconds, or the
whole process with ``overall`` failures in that time (many addresses guessing together), is refused with 429 and
``Retry-After`` until the oldest of those failures leaves the window. A refused attempt is not checked, so it tells
the guesser nothing. A good login clears its client's count. The counts are per process (kept in memory): behind
a load balancer each API process applies the limits on its own.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

PER_CLIENT = 10
OVERALL = 100
WINDOW_SECONDS = 300.0
#: Clients remembered at most; the least recently failing are forgotten first (bounded memory under a flood).
MAX_CLIENTS = 10_000


@dataclass(frozen=True)
class Refusal:
    #: "client" (this address) or "overall" (every address together).
    scope: str
    retry_after: int


@dataclass
class LoginThrottle:
    per_client: int = PER_CLIENT
    overall: int = OVERALL
    window: float = WINDOW_SECONDS
    max_clients: int = MAX_CLIENTS
    _clients: collections.OrderedDict[str, collections.deque[float]] = field(
        default_factory=collections.OrderedDict, init=False, repr=False
    )
    _all: collections.deque[float] = field(default_factory=collections.deque, init=False, repr=False)

    def _prune(self, times: collections.deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()

    def _wait(self, times: collections.deque[float], limit: int, now: float) -> int | None:
        self._prune(times, now)
        if len(times) < limit:
            return None
        # Free again once enough of the oldest failures left the window for one more attempt.
        return max(1, math.ceil(times[len(times) - limit] + self.window - now))

    def check(self, client: str, *, now: float) -> Refusal | None:
        """None when ``client`` may try a token now; otherwise why not and for how long."""
        times = self._clients.get(client)
        if times is not None:
            wait = self._wait(times, self.per_client, now)
            if not times:
                del self._clients[client]
            if wait is not None:
                return Refusal("client", wait)
        wait = self._wait(self._all, self.overall, now)
        return Refusal("overall", wait) if wait is not None else None

    def failed(self, client: str, *, now: float) -> None:
        times = self._clients.pop(client, None) or collections.deque()
        times.append(now)
        while len(times) > self.per_client:
            times.popleft()
        self._clients[client] = times  # most recent last
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        self._all.append(now)
        # The overall count needs no more than its limit to decide.
        while len(self._all) > self.overall:
            self._all.popleft()

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)
