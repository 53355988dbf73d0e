"""The asyncio side of the rate-limit gate: a FIFO of requests waiting for `RatePolicy`."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping

from ..errors import RateLimitError
from ._pump import Pumped
from ._rate import RatePolicy

__all__ = ["RateGate"]

logger = logging.getLogger("kernel_async")


class RateGate(Pumped):
    """Holds new requests back while the server's rate limit says so, first come first
    served. `acquire` before sending, `received` after (exactly once per acquire)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.policy = RatePolicy()
        self.rate_limited = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Let a request through now if it need not wait (the common case costs no
        coroutine); `acquire` otherwise."""
        policy = self.policy
        if not self._waiters and policy.room(self._loop.time()) != 0:
            policy.sent()
            return True
        return False

    async def acquire(self, deadline: float | None, *, front: bool = False) -> None:
        """Wait until a request may be sent (``front``: ahead of every waiter, for a request
        going again after a 429). Raises `RateLimitError` at once when the pause would
        outlast ``deadline``."""
        policy = self.policy
        now = self._loop.time()
        if not self._waiters and policy.room(now) != 0:
            policy.sent()
            return
        if deadline is not None and policy.paused_until >= deadline:
            wait = policy.paused_until - now
            raise _past_deadline(wait)
        fut: asyncio.Future[None] = self._loop.create_future()
        if front:
            self._waiters.appendleft(fut)
        else:
            self._waiters.append(fut)
        self._pump()
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.received(None)  # let through, then cancelled: give the place back
            else:
                self._waiters.remove(fut)
                self._pump()
            raise

    def received(self, headers: Mapping[str, str] | None) -> None:
        """The request ended with these response headers (``None``: no response)."""
        self.policy.received(self._loop.time(), headers)
        if self._waiters:
            self._pump()

    def rate_limited_for(self, retry_after: float | None, fallback: float) -> float:
        """A 429 from the rate limit: pause everyone; returns the seconds paused."""
        self.rate_limited += 1
        before = self.policy.paused_until
        wait = self.policy.rate_limited(self._loop.time(), retry_after, fallback)
        if self.policy.paused_until > before:
            logger.info("Rate limited by the server: holding new requests for %.2fs", wait)
        return wait

    def _pump(self) -> None:
        policy = self.policy
        now = self._loop.time()
        waiters = self._waiters
        while waiters:
            room = policy.room(now)
            if room == 0:
                break
            fut = waiters.popleft()
            if fut.done():
                continue
            policy.sent()
            fut.set_result(None)
        if waiters:
            wake = policy.wake_at(now)
            if wake is not None:
                self._schedule(wake)


def _past_deadline(wait: float) -> RateLimitError:
    error = RateLimitError(
        f"rate limited by the server for another {wait:.2f}s, past this call's deadline; "
        "nothing was sent",
        status=429,
        code="rate_limited",
    )
    error.retry_after = wait
    return error
