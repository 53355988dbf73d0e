"""The asyncio side of the rate-limit gate: a FIFO of requests waiting for `RatePolicy`."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping

from ..errors import ClientClosedError, RateLimitError
from ._pump import Pumped
from ._rate import RatePolicy

__all__ = ["RateGate"]

#: A waiting request: its future (resolved with its ticket), deadline and times sent.
_Waiter = tuple[asyncio.Future[int], float, int]

logger = logging.getLogger("kernel_async")


class RateGate(Pumped):
    """Holds new requests back while the server's rate limit says so, first come first
    served. `acquire` (or `try_acquire`) before sending gives a ticket; `received` with it
    after, exactly once."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.policy = RatePolicy()
        self.rate_limited = 0
        self.on_pause: Callable[[float], None] | None = None
        """Told of every pause (the shared limits pass it on to every process)."""
        # Waiting requests, first come first served. One cancelled (or failed) while waiting
        # stays until it reaches the head, since removing it from the middle would be a
        # linear scan: `_waiting` counts the ones still waiting.
        self._waiters: deque[_Waiter] = deque()
        self._waiting = 0
        self._closed: ClientClosedError | None = None

    @property
    def waiting(self) -> int:
        """Requests waiting at the gate now."""
        return self._waiting

    def try_acquire(self) -> int:
        """A ticket to send a request now if it need not wait (the common case costs no
        coroutine); ``0`` when it must `acquire`."""
        policy = self.policy
        now = self._loop.time()
        if not self._waiting and policy.room(now) != 0:
            return policy.sent(now)
        return 0

    async def acquire(self, deadline: float | None, *, front: bool = False, sent: int = 0) -> int:
        """Wait until a request may be sent; returns its ticket. ``front``: ahead of every
        waiter, for a request going again after a 429. Raises `RateLimitError` at once when
        the pause would outlast ``deadline`` (``sent``: how many times this request was sent
        already, for the error's message)."""
        if self._closed is not None:
            raise self._closed
        policy = self.policy
        now = self._loop.time()
        if not self._waiting and policy.room(now) != 0:
            return policy.sent(now)
        if deadline is not None and policy.paused_until >= deadline:
            raise _past_deadline(policy.paused_until - now, sent)
        fut: asyncio.Future[int] = self._loop.create_future()
        waiter = (fut, math.inf if deadline is None else deadline, sent)
        if front:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        self._waiting += 1
        self._pump()
        try:
            return await fut
        except BaseException:
            if not fut.done():
                fut.cancel()
            if fut.cancelled() or fut.exception() is not None:
                self._waiting -= 1  # it stays in the deque until it reaches the head
                self._pump()
            else:
                self.received(fut.result(), None)  # let through, then cancelled: give it back
            raise

    def close(self, error: ClientClosedError) -> None:
        """The client is closing: every request waiting here, and every later one that
        would wait, fails with ``error``."""
        self._closed = error
        for fut, _, _ in self._waiters:
            if not fut.done():
                fut.set_exception(error)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def received(self, ticket: int, headers: Mapping[str, str] | None) -> None:
        """The request with ``ticket`` ended with these response headers (``None``: no
        response)."""
        # The Unix time only matters to read an X-RateLimit-Reset given as one.
        wall = time.time() if headers is not None and "X-RateLimit-Reset" in headers else 0.0
        self.policy.received(self._loop.time(), ticket, headers, wall)
        if self._waiting:
            self._pump()

    def pause(self, seconds: float) -> float:
        """A rate-limit 429 asked every request to hold back ``seconds``: pause everyone
        (`rate_limited` counts the requests that then wait); returns the pause left."""
        before = self.policy.paused_until
        if self.on_pause is not None:
            self.on_pause(seconds)  # shared limits: pause every process too
        wait = self.policy.rate_limited(self._loop.time(), seconds, seconds)
        if self.policy.paused_until > before:
            logger.info("Rate limited by the server: holding new requests for %.2fs", wait)
            self._fail_past(self.policy.paused_until)
        return wait

    def _fail_past(self, until: float) -> None:
        """The gate is paused until ``until``: waiters whose deadline comes first fail now
        rather than at their deadline (a pause is rare: scanning the waiters is fine)."""
        now = self._loop.time()
        for fut, deadline, sent in self._waiters:
            if deadline <= until and not fut.done():
                fut.set_exception(_past_deadline(until - now, sent))

    def paused_for(self) -> float:
        """Seconds the gate still holds every new request back (``0.0``: not paused)."""
        return max(0.0, self.policy.paused_until - self._loop.time())

    def _pump(self) -> None:
        policy = self.policy
        now = self._loop.time()
        waiters = self._waiters
        while waiters:
            if waiters[0][0].done():  # cancelled or failed while waiting: counted out already
                waiters.popleft()
                continue
            if policy.room(now) == 0:
                break
            self._waiting -= 1
            waiters.popleft()[0].set_result(policy.sent(now))
        if self._waiting:
            wake = policy.wake_at(now)
            if wake is not None:
                self._schedule(wake)


def _past_deadline(wait: float, sent: int) -> RateLimitError:
    what = (
        "nothing was sent"
        if not sent
        else f"it was sent {sent} time(s) and refused with 429 each time"
    )
    error = RateLimitError(
        f"rate limited by the server for another {wait:.2f}s, past this call's deadline; " + what,
        status=429,
        code="rate_limited",
    )
    error.retry_after = wait
    return error
