"""The asyncio side of backpressure: FIFO queues of waiting tasks around the pure policies
of `kernel_async._limits`. One `Backpressure` per client (shared by its `with_options`
copies); waiting holds no connection, since nothing is sent until a task is let through.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Mapping
from typing import Final

from ._limits import DEFAULT_LEASE, AdmissionPolicy, Limits, LimitStats, RatePolicy
from .errors import APITimeoutError, RateLimitError

__all__ = ["Admission", "Backpressure", "RateGate", "Ticket"]

logger = logging.getLogger("kernel_async")

_SLACK: Final = 0.001  # timers fire this much late at most; avoids waking a hair early


class _Pumped:
    """A queue that a `_pump` moves on, now or at a time one timer keeps (the earliest)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def _pump(self) -> None:
        raise NotImplementedError

    def _schedule(self, when: float) -> None:
        """Pump at ``when`` (loop time), unless a pump is due sooner already."""
        if self._timer is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when + _SLACK, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self._pump()


class RateGate(_Pumped):
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


class Ticket:
    """One admitted create: which app, when, and whether it went as a probe."""

    __slots__ = ("admitted_at", "app", "probe")

    def __init__(self, app: str, admitted_at: float, probe: bool) -> None:
        self.app = app
        self.admitted_at = admitted_at
        self.probe = probe


class Admission(_Pumped):
    """Creates wait here, first in first out per app, until `AdmissionPolicy` lets them go."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits, initial_delay: float):
        super().__init__(loop)
        self.policy = AdmissionPolicy(limits, initial_delay=initial_delay)
        self.queued_seconds = 0.0
        self.max_queued_seconds = 0.0
        self._queues: dict[str, deque[tuple[int, asyncio.Future[Ticket]]]] = {}
        self._seq = 0
        self._last_reject: dict[str, float] = {}

    def try_admit(self, app: str) -> Ticket | None:
        """A slot for a create of ``app`` right now, or ``None`` if it would have to wait
        (the common case costs no coroutine)."""
        now = self._loop.time()
        if not self._queues.get(app) and self.policy.may_admit(app, now):
            return self._admit(app, now)
        return None

    async def acquire(self, app: str, deadline: float | None, *, front: bool = False) -> Ticket:
        """Wait for a slot for a create of ``app``. ``front`` puts a create that was just
        refused back at the head of its queue. Raises `APITimeoutError` at ``deadline``."""
        loop = self._loop
        now = loop.time()
        queue = self._queues.get(app)
        if not queue and self.policy.may_admit(app, now):
            return self._admit(app, now)
        if deadline is not None and deadline <= now:
            raise _queue_timeout(app, 0.0)
        fut: asyncio.Future[Ticket] = loop.create_future()
        if queue is None:
            queue = self._queues[app] = deque()
        self._seq += 1
        entry = (-self._seq if front else self._seq, fut)
        if front:
            queue.appendleft(entry)
        else:
            queue.append(entry)
        handle = None if deadline is None else loop.call_at(deadline, _expire, fut)
        self._pump()
        try:
            ticket = await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.abandoned(fut.result())  # admitted, then cancelled: free the slot
            else:
                _remove(queue, fut)
                self._pump()
            if fut.done() and not fut.cancelled() and isinstance(fut.exception(), APITimeoutError):
                waited = loop.time() - now
                self._count_wait(waited)
                raise _queue_timeout(app, waited) from None
            raise
        finally:
            if handle is not None:
                handle.cancel()
        self._count_wait(loop.time() - now)
        return ticket

    def started(
        self, ticket: Ticket, invocation_id: str | None, lease: float | None = None
    ) -> None:
        """The create succeeded; ``invocation_id`` (``None`` if it already finished) holds
        its slot until seen finished or ``lease`` seconds pass."""
        self.policy.started(
            ticket.app,
            self._loop.time(),
            invocation_id,
            probe=ticket.probe,
            lease=DEFAULT_LEASE if lease is None else lease,
        )
        self._pump()

    def rejected(self, ticket: Ticket, retry_after: float | None) -> None:
        """The create got a concurrency 429: the caller acquires again with ``front=True``."""
        now = self._loop.time()
        policy = self.policy
        app = ticket.app
        if ticket.admitted_at < self._last_reject.get(app, -math.inf):
            # Sent before the previous 429 was known: the same crowding, not a new one.
            policy.abandoned(app, now, probe=ticket.probe)
            policy.concurrency_limited += 1
        else:
            self._last_reject[app] = now
            hold = policy.rejected(app, now, retry_after)
            state = policy.app(app)
            logger.info(
                "Concurrency limit reached for app %r: %d running, limit now %s; "
                "holding new creates %.2fs unless one finishes",
                app,
                len(state.held),
                "unlearnt" if math.isinf(state.limit) else f"{state.limit:g}",
                hold,
            )
        self._pump()

    def abandoned(self, ticket: Ticket) -> None:
        """The create failed otherwise, or was cancelled: free its slot."""
        self.policy.abandoned(ticket.app, self._loop.time(), probe=ticket.probe)
        self._pump()

    def finished(self, invocation_id: str) -> None:
        """An invocation was seen in a terminal state."""
        if self.policy.finished(invocation_id, self._loop.time()) is not None:
            self._pump()

    def close(self, error: BaseException) -> None:
        """Fail every waiting create with ``error`` (the client is closing)."""
        for queue in self._queues.values():
            for _, fut in queue:
                if not fut.done():
                    fut.set_exception(error)
            queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stats(self) -> dict[str, int]:
        return {app: len(queue) for app, queue in self._queues.items()}

    def _admit(self, app: str, now: float) -> Ticket:
        probe = self.policy.admit(app, now)
        if probe:
            logger.debug("Probing app %r's concurrency limit with one create", app)
        return Ticket(app, now, probe)

    def _count_wait(self, waited: float) -> None:
        self.queued_seconds += waited
        self.max_queued_seconds = max(self.max_queued_seconds, waited)

    def _pump(self) -> None:
        """Admit queue heads while the policy allows, oldest first across apps."""
        queues = self._queues
        if not any(queues.values()):
            return  # nobody waits (the common case): nothing to admit, nothing to time
        policy = self.policy
        now = self._loop.time()
        policy.expire(now)
        while True:
            best: deque[tuple[int, asyncio.Future[Ticket]]] | None = None
            best_app = ""
            for app, queue in queues.items():
                while queue and queue[0][1].done():
                    queue.popleft()
                if (
                    queue
                    and (best is None or queue[0][0] < best[0][0])
                    and policy.may_admit(app, now)
                ):
                    best, best_app = queue, app
            if best is None:
                break
            _, fut = best.popleft()
            fut.set_result(self._admit(best_app, now))
        wake = math.inf
        for app, queue in queues.items():
            if queue:
                at = policy.wake_at(app, now)
                if at is not None:
                    wake = min(wake, at)
        expiry = policy.next_expiry()
        if expiry is not None and any(queues.values()):
            wake = min(wake, expiry)
        if wake < math.inf:
            self._schedule(wake)


class Backpressure:
    """A client's rate-limit gate and admission queue, made in its event loop on first use."""

    def __init__(self, limits: Limits, initial_delay: float) -> None:
        self.limits = limits
        self._initial_delay = initial_delay
        self._gate: RateGate | None = None
        self._admission: Admission | None = None

    def gate(self) -> RateGate:
        gate = self._gate
        if gate is None:
            gate = self._gate = RateGate(asyncio.get_running_loop())
        return gate

    def admission(self) -> Admission:
        admission = self._admission
        if admission is None:
            admission = self._admission = Admission(
                asyncio.get_running_loop(), self.limits, self._initial_delay
            )
        return admission

    def finished(self, invocation_id: str) -> None:
        """An invocation was seen finished: free its slot, if it held one."""
        admission = self._admission
        if admission is not None and admission.policy.owner:
            admission.finished(invocation_id)

    def close(self, error: BaseException) -> None:
        if self._admission is not None:
            self._admission.close(error)

    def stats(self) -> LimitStats:
        gate, admission = self._gate, self._admission
        if admission is None:
            apps = {}
            concurrency = admitted = 0
            queued = longest = 0.0
        else:
            apps = admission.policy.stats(admission.stats())
            concurrency = admission.policy.concurrency_limited
            admitted = admission.policy.admitted
            queued, longest = admission.queued_seconds, admission.max_queued_seconds
        return LimitStats(
            apps=apps,
            concurrency_limited=concurrency,
            rate_limited=0 if gate is None else gate.rate_limited,
            rate_paused_seconds=0.0 if gate is None else gate.policy.paused_seconds,
            queued_seconds=queued,
            max_queued_seconds=longest,
            admitted=admitted,
        )


def _expire(fut: asyncio.Future[Ticket]) -> None:
    if not fut.done():
        fut.set_exception(APITimeoutError("deadline passed while queued"))


def _remove(queue: deque[tuple[int, asyncio.Future[Ticket]]], fut: asyncio.Future[Ticket]) -> None:
    for entry in queue:
        if entry[1] is fut:
            queue.remove(entry)
            return


def _queue_timeout(app: str, waited: float) -> APITimeoutError:
    return APITimeoutError(
        f"the call's deadline passed while its create waited {waited:.2f}s for a slot "
        f"(app {app!r} is at its concurrency limit); nothing was sent"
    )


def _past_deadline(wait: float) -> RateLimitError:
    error = RateLimitError(
        f"rate limited by the server for another {wait:.2f}s, past this call's deadline; "
        "nothing was sent",
        status=429,
        code="rate_limited",
    )
    error.retry_after = wait
    return error
