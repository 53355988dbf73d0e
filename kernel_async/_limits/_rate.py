"""The rate-limit gate's policy: when this client may send its next request. Pure: no I/O,
no asyncio, no clock of its own (every method takes ``now``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from ._config import RATE_PROBE_INTERVAL, int_header

__all__ = ["RatePolicy", "reset_in"]

#: An ``X-RateLimit-Reset`` above this is a Unix time; below, seconds from now.
_EPOCH_AFTER = 10**9


def reset_in(value: str | None, wall: float) -> float | None:
    """Seconds until the server's window resets, from ``X-RateLimit-Reset`` (``None``: not
    said, or not a number). Servers send either seconds from now or a Unix time; ``wall``
    is the Unix time now. Pure."""
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return max(0.0, number - wall) if number > _EPOCH_AFTER else number


class RatePolicy:
    """When this client may send its next request, from what the server said. Pure.

    Each request sent gets a ticket (its place in the order of sending). ``budget`` is how
    many more requests the server will take in its current window, as far as this client
    knows (``None``: no limit known). An answer with ``X-RateLimit-Remaining: n`` is the
    server's count when it took that request, so it counted every request sent before; the
    ones sent after it (still in flight, since no newer answer came) may not be counted:
    the budget is ``n`` minus those. An answer older than one already seen is stale and
    teaches nothing. A request that is slow to answer (a synchronous create) is thus never
    counted twice.

    When the budget is spent, the gate does not wait for answers that may never come: one
    request goes as a probe when the window resets (``X-RateLimit-Reset``, if the server
    sent it), else every `RATE_PROBE_INTERVAL` seconds, in flight or not. A probe's answer
    tells where the window is; a rate-limit 429 pauses every new request until its
    ``Retry-After``, after which one request goes first.
    """

    __slots__ = (
        "_newest",
        "_sent",
        "budget",
        "in_flight",
        "limit",
        "next_probe",
        "paused_seconds",
        "paused_until",
        "reset_at",
    )

    def __init__(self) -> None:
        self.paused_until = -math.inf
        self.budget: int | None = None
        self.in_flight = 0
        self.limit: int | None = None
        """The server's ``X-RateLimit-Limit``, as last seen."""
        self.paused_seconds = 0.0
        """Wall time spent paused so far."""
        self.next_probe = math.inf
        """With the budget spent: when the next probe may go."""
        self.reset_at: float | None = None
        """When the server said its window resets (``X-RateLimit-Reset``), if it did."""
        self._sent = 0  # tickets handed out
        self._newest = 0  # the ticket of the newest request whose answer was read

    def room(self, now: float) -> int | None:
        """How many requests may start now (``None``: any number)."""
        if now < self.paused_until:
            return 0
        budget = self.budget
        if budget is None:
            return None
        if budget > 0:
            return budget
        return 1 if now >= self.next_probe else 0

    def wake_at(self, now: float) -> float | None:
        """When room may open without news from the server (``None``: there is room)."""
        if now < self.paused_until:
            return self.paused_until
        budget = self.budget
        if budget is not None and budget <= 0:
            return self.next_probe
        return None

    def sent(self, now: float) -> int:
        """A request is about to be sent (call only when there is `room`); returns its
        ticket, for `received`."""
        self.in_flight += 1
        self._sent += 1
        budget = self.budget
        if budget is not None:
            if budget > 0:
                self.budget = budget - 1
                if budget == 1:
                    self._spent(now)
            else:  # a probe: the next one a while later
                self._spent(now)
        return self._sent

    def received(
        self, now: float, ticket: int, headers: Mapping[str, str] | None, wall: float = 0.0
    ) -> None:
        """The request with ``ticket`` ended: with these response headers, or with no
        response at all (``headers=None``). ``wall``: the Unix time now, to read an
        ``X-RateLimit-Reset`` given as a time."""
        self.in_flight -= 1
        if now < self.paused_until or headers is None or ticket < self._newest:
            return  # during a pause, no answer, or older news than what is known
        self._newest = ticket
        remaining = int_header(headers.get("X-RateLimit-Remaining"))
        if remaining is None:
            self.budget = self.reset_at = None
            self.next_probe = math.inf
            return
        self.limit = int_header(headers.get("X-RateLimit-Limit")) or self.limit
        reset = reset_in(headers.get("X-RateLimit-Reset"), wall)
        self.reset_at = None if reset is None else now + reset
        was = self.budget
        budget = self.budget = remaining - (self._sent - ticket)
        if budget <= 0 and (was is None or was > 0 or reset is not None):
            self._spent(now)

    def rate_limited(self, now: float, retry_after: float | None, fallback: float) -> float:
        """A 429 from the rate limit: pause new requests until ``retry_after`` (or
        ``fallback`` seconds when it did not say); returns the pause left."""
        seconds = max(0.0, fallback if retry_after is None else retry_after)
        until = now + seconds
        if until > self.paused_until:
            self.paused_seconds += until - max(now, self.paused_until)
            self.paused_until = until
        self.budget = 1  # when the pause ends, one request goes first
        self.next_probe = math.inf
        return self.paused_until - now

    def _spent(self, now: float) -> None:
        """The budget is spent: the next request goes as a probe, when the window resets
        if the server said when, else a probe interval from now."""
        reset = self.reset_at
        self.next_probe = reset if reset is not None and reset > now else now + RATE_PROBE_INTERVAL
