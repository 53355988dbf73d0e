"""The rate-limit gate's policy: when this client may send its next request. Pure: no I/O,
no asyncio, no clock of its own (every method takes ``now``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from ._config import RATE_PROBE_INTERVAL, int_header

__all__ = ["RatePolicy"]


class RatePolicy:
    """When this client may send its next request, from what the server said. Pure.

    ``budget`` is how many more requests the server will take in its current window, as
    far as this client knows (``None``: no limit known). A rate-limit 429 pauses every new
    request until its ``Retry-After`` and then lets one through as a probe; an answer with
    ``X-RateLimit-Remaining: n`` sets the budget to ``n`` minus the requests still in flight
    (they will count against it).
    """

    __slots__ = ("budget", "in_flight", "limit", "paused_seconds", "paused_until")

    def __init__(self) -> None:
        self.paused_until = -math.inf
        self.budget: int | None = None
        self.in_flight = 0
        self.limit: int | None = None
        """The server's ``X-RateLimit-Limit``, as last seen."""
        self.paused_seconds = 0.0
        """Wall time spent paused so far."""

    def room(self, now: float) -> int | None:
        """How many requests may start now (``None``: any number)."""
        if now < self.paused_until:
            return 0
        budget = self.budget
        return None if budget is None else max(0, budget)

    def wake_at(self, now: float) -> float | None:
        """When room may open without news from the server (``None``: only news opens it)."""
        return self.paused_until if now < self.paused_until else None

    def sent(self) -> None:
        """A request is about to be sent."""
        self.in_flight += 1
        if self.budget is not None:
            self.budget -= 1

    def received(self, now: float, headers: Mapping[str, str] | None) -> None:
        """A request sent through the gate ended: with these response headers, or with no
        response at all (``headers=None``)."""
        self.in_flight -= 1
        if now < self.paused_until:
            return  # answers to requests sent before the pause: its end lets one through
        if headers is not None:
            remaining = int_header(headers.get("X-RateLimit-Remaining"))
            if remaining is None:
                self.budget = None
            else:
                self.budget = remaining - self.in_flight
                self.limit = int_header(headers.get("X-RateLimit-Limit")) or self.limit
        budget = self.budget
        if budget is not None and budget <= 0 and self.in_flight == 0:
            # Nothing in flight will bring news: look again shortly, with one request.
            self._pause(now, RATE_PROBE_INTERVAL)

    def rate_limited(self, now: float, retry_after: float | None, fallback: float) -> float:
        """A 429 from the rate limit: pause new requests until ``retry_after`` (or
        ``fallback`` seconds when it did not say); returns the pause left."""
        self._pause(now, fallback if retry_after is None else retry_after)
        return self.paused_until - now

    def _pause(self, now: float, seconds: float) -> None:
        until = now + max(0.0, seconds)
        if until > self.paused_until:
            self.paused_seconds += until - max(now, self.paused_until)
            self.paused_until = until
        self.budget = 1  # when the pause ends, one request goes first
