"""The asyncio side of admission: creates wait here, FIFO per app, for `AdmissionPolicy`."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque

from ..errors import APITimeoutError
from ._admission import AdmissionPolicy
from ._config import DEFAULT_LEASE, Limits
from ._pump import Pumped

__all__ = ["Admission", "Ticket"]

logger = logging.getLogger("kernel_async")


class Ticket:
    """One admitted create: which app, when, and whether it went as a probe."""

    __slots__ = ("admitted_at", "app", "probe")

    def __init__(self, app: str, admitted_at: float, probe: bool) -> None:
        self.app = app
        self.admitted_at = admitted_at
        self.probe = probe


class Admission(Pumped):
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
