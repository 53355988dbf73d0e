"""The asyncio side of admission: creates wait here, FIFO per app, for `AdmissionPolicy`;
`Slot` is one create's place, from the queue to its invocation's end."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from ..errors import APITimeoutError, ClientClosedError
from ._admission import AdmissionPolicy
from ._config import Limits, lease_for
from ._pump import Pumped
from ._reconcile import Lister, Reconciler

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Admission", "Slot", "Ticket"]

logger = logging.getLogger("kernel_async")


#: A waiting create: its order (negative: put back at the head) and its future.
_Entry = tuple[int, "asyncio.Future[Ticket]"]


class Ticket:
    """One admitted create: which app, when, and whether it went as a probe."""

    __slots__ = ("admitted_at", "app", "probe")

    def __init__(self, app: str, admitted_at: float, probe: bool) -> None:
        self.app = app
        self.admitted_at = admitted_at
        self.probe = probe


class _Queue:
    """One app's waiting creates, first in first out. One that leaves early (cancelled,
    timed out) stays in the deque, done, until it reaches the head: removing it from the
    middle would be a linear scan, and tens of thousands may leave in any order."""

    __slots__ = ("entries", "waiting")

    def __init__(self) -> None:
        self.entries: deque[_Entry] = deque()
        self.waiting = 0  # entries not done yet

    def head(self) -> _Entry | None:
        """The first entry still waiting (done ones before it are dropped)."""
        entries = self.entries
        while entries and entries[0][1].done():
            entries.popleft()
        return entries[0] if entries else None

    def left(self) -> None:
        """One entry left without being admitted; compact when mostly done ones remain."""
        self.waiting -= 1
        entries = self.entries
        if len(entries) > 2 * self.waiting + 64:
            self.entries = deque(entry for entry in entries if not entry[1].done())


class Admission(Pumped):
    """Creates wait here, first in first out per app, until `AdmissionPolicy` lets them go.

    Use `slot` for one create: it waits for a slot, and frees it on every path.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limits: Limits,
        initial_delay: float,
        max_retry_after: float = 60.0,
        lister: Lister | None = None,
    ):
        super().__init__(loop)
        self.reconciler = Reconciler(self, lister)
        # Holds are capped like any Retry-After (never below a first backoff).
        self.policy = AdmissionPolicy(
            limits,
            initial_delay=initial_delay,
            max_hold=max(max_retry_after, initial_delay),
            wall_offset=time.time() - loop.time(),  # its grids are the wall clock's
        )
        self.max_retry_after = max_retry_after
        self.queued_seconds = 0.0
        self.max_queued_seconds = 0.0
        self.closed: ClientClosedError | None = None
        self._queues: dict[str, _Queue] = {}
        self._seq = 0
        self._last_reject: dict[str, float] = {}
        self.ended: Callable[[str], None] | None = None
        """Told the id of each invocation found ended unseen (`gone`): the shared limits
        free its slot too."""
        self.spare_requests: Callable[[], bool] | None = None
        """Whether the rate limit leaves requests to spare for frequent lists (``None``:
        as if it does)."""
        self.waiting_elsewhere: Callable[[str], int] | None = None
        """Creates of an app waiting for a slot elsewhere (the shared limits' queue):
        while some do, the app's slots are reconciled as while creates wait here."""

    def slot(
        self,
        app: str,
        deadline: float | None,
        async_timeout_seconds: int | None = None,
        report: Callable[[float], None] | None = None,
    ) -> Slot:
        """One create's slot of ``app``: ``async with`` it around the create (see `Slot`).
        ``report`` is told the seconds of every wait for the slot."""
        return Slot(self, app, deadline, lease_for(async_timeout_seconds), report)

    def try_admit(self, app: str) -> Ticket | None:
        """A slot for a create of ``app`` right now, or ``None`` if it would have to wait
        (the common case costs no coroutine)."""
        if self.closed is not None:
            raise self.closed
        now = self._loop.time()
        queue = self._queues.get(app)
        if (queue is None or not queue.waiting) and self.policy.may_admit(app, now):
            return self._admit(app, now)
        return None

    async def acquire(self, app: str, deadline: float | None, *, front: bool = False) -> Ticket:
        """Wait for a slot for a create of ``app``. ``front`` puts a create that was just
        refused back at the head of its queue. Raises `APITimeoutError` at ``deadline``,
        `ClientClosedError` when the client closes."""
        if self.closed is not None:
            raise self.closed
        loop = self._loop
        now = loop.time()
        queue = self._queues.get(app)
        if (queue is None or not queue.waiting) and self.policy.may_admit(app, now):
            return self._admit(app, now)
        if deadline is not None and deadline <= now:
            raise _queue_timeout(app, 0.0)
        fut: asyncio.Future[Ticket] = loop.create_future()
        if queue is None:
            queue = self._queues[app] = _Queue()
        self._seq += 1
        if front:
            queue.entries.appendleft((-self._seq, fut))
        else:
            queue.entries.append((self._seq, fut))
        queue.waiting += 1
        handle = None if deadline is None else loop.call_at(deadline, _expire, fut)
        self._pump()
        try:
            ticket = await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.abandoned(fut.result())  # admitted, then cancelled: free the slot
            else:
                if not fut.done():
                    fut.cancel()
                if self.closed is None:  # closing emptied the queues already
                    queue.left()
                    self._pump()
                    if not queue.waiting:
                        self.reconciler.settled(app)
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

    def started(self, ticket: Ticket, invocation_id: str | None, lease: float) -> None:
        """The create succeeded; ``invocation_id`` (``None`` if it already finished) holds
        its slot until seen finished or ``lease`` seconds pass."""
        self.policy.started(
            ticket.app, self._loop.time(), invocation_id, probe=ticket.probe, lease=lease
        )
        self._pump()

    def rejected(self, ticket: Ticket, retry_after: float | None, *, learn: bool = True) -> None:
        """The create got a concurrency 429: the caller acquires again with ``front=True``.
        A ``Retry-After`` longer than the retry policy's ``max_retry_after`` is capped to
        it: one answer never holds an app's creates for an hour. ``learn=False`` (the
        limits shared through Redis learnt from it, for the whole fleet): only free the
        slot, this process's limit neither cut nor held."""
        now = self._loop.time()
        policy = self.policy
        app = ticket.app
        if retry_after is not None:
            retry_after = min(retry_after, self.max_retry_after)
        if not learn or ticket.admitted_at < self._last_reject.get(app, -math.inf):
            # Sent before the previous 429 was known: the same crowding, not a new one.
            policy.abandoned(app, now, probe=ticket.probe)
            policy.concurrency_limited += 1
        else:
            self._last_reject[app] = now
            hold = policy.rejected(app, now, retry_after)
            self.reconciler.nudge(app)  # the next list may be due sooner
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
        """An invocation was seen in a terminal state (or gone): free its slot."""
        if self.policy.finished(invocation_id, self._loop.time()) is not None:
            self._pump()

    def reconcile_soon(self, app: str) -> None:
        """A create waits for ``app``: some of ours may have ended unseen (`Reconciler`)."""
        self.reconciler.soon(app)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this queue runs on."""
        return self._loop

    def pump(self) -> None:
        """Let go what may go now (news came: a list)."""
        self._pump()

    def blocked(self, app: str) -> int:
        """Creates of ``app`` waiting for a slot, here or elsewhere."""
        elsewhere = self.waiting_elsewhere
        return self.waiting(app) + (0 if elsewhere is None else elsewhere(app))

    def close(self, error: ClientClosedError) -> None:
        """Fail every waiting create with ``error``, and every later one (the client is
        closing)."""
        self.closed = error
        self.reconciler.close()
        for queue in self._queues.values():
            for _, fut in queue.entries:
                if not fut.done():
                    fut.set_exception(error)
            queue.entries.clear()
            queue.waiting = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stats(self) -> dict[str, int]:
        """Waiting creates per app."""
        return {app: queue.waiting for app, queue in self._queues.items()}

    def waiting(self, app: str) -> int:
        """Creates of ``app`` waiting for a slot now."""
        queue = self._queues.get(app)
        return 0 if queue is None else queue.waiting

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
        if not any(queue.waiting for queue in queues.values()):
            return  # nobody waits (the common case): nothing to admit, nothing to time
        policy = self.policy
        now = self._loop.time()
        policy.expire(now)
        while True:
            best: _Queue | None = None
            best_seq = 0
            best_app = ""
            for app, queue in queues.items():
                head = queue.head() if queue.waiting else None
                if (
                    head is not None
                    and (best is None or head[0] < best_seq)
                    and policy.may_admit(app, now)
                ):
                    best, best_seq, best_app = queue, head[0], app
            if best is None:
                break
            _, fut = best.entries.popleft()
            best.waiting -= 1
            fut.set_result(self._admit(best_app, now))
            if not best.waiting:
                self.reconciler.settled(best_app)
        wake = math.inf
        for app, queue in queues.items():
            if queue.waiting:
                self.reconcile_soon(app)  # blocked: some of ours may have ended unseen
                at = policy.wake_at(app, now)
                if at is not None:
                    wake = min(wake, at)
        expiry = policy.next_expiry()
        if expiry is not None and any(queue.waiting for queue in queues.values()):
            wake = min(wake, expiry)
        if wake < math.inf:
            self._schedule(wake)


class Slot:
    """One create's admission slot, as an async context manager that owns it::

        async with admission.slot(app, deadline, async_timeout_seconds) as slot:
            ...send the create; on a concurrency 429: await slot.requeue(retry_after)
            slot.started(invocation_id)   # or None: it finished already

    Entering waits for the slot (until ``deadline``, or until the client closes). Leaving
    without `started` (an error, a cancellation) frees it; after `started` the invocation
    holds it until seen finished or its lease passes (`lease_for` its
    ``async_timeout_seconds``: `Admission.slot` computes it, nothing else does).
    """

    __slots__ = ("_admission", "_report", "_ticket", "app", "deadline", "lease")

    def __init__(
        self,
        admission: Admission,
        app: str,
        deadline: float | None,
        lease: float,
        report: Callable[[float], None] | None = None,
    ):
        self._admission = admission
        self._report = report
        self.app = app
        self.deadline = deadline
        self.lease = lease
        self._ticket: Ticket | None = None

    async def __aenter__(self) -> Self:
        self._ticket = self._admission.try_admit(self.app) or await self._wait(front=False)
        return self

    async def _wait(self, *, front: bool) -> Ticket:
        admission = self._admission
        report = self._report
        if report is None:
            return await admission.acquire(self.app, self.deadline, front=front)
        started = admission._loop.time()
        try:
            return await admission.acquire(self.app, self.deadline, front=front)
        finally:
            report(admission._loop.time() - started)

    async def requeue(self, retry_after: float | None, *, learn: bool = True) -> None:
        """The create got a concurrency 429: learn from it (unless not ``learn``: the
        shared limits did) and wait for a slot again, at the head of the app's queue."""
        ticket, self._ticket = self._ticket, None
        assert ticket is not None
        admission = self._admission
        admission.rejected(ticket, retry_after, learn=learn)
        self._ticket = await self._wait(front=True)

    def started(self, invocation_id: str | None) -> None:
        """The create succeeded: ``invocation_id`` holds the slot until it is seen
        finished (``None``: it finished already, the slot is free)."""
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            self._admission.started(ticket, invocation_id, self.lease)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ticket, self._ticket = self._ticket, None
        if ticket is not None:  # never started: the slot is free again
            self._admission.abandoned(ticket)


def _expire(fut: asyncio.Future[Ticket]) -> None:
    if not fut.done():
        fut.set_exception(APITimeoutError("deadline passed while queued"))


def _queue_timeout(app: str, waited: float) -> APITimeoutError:
    return APITimeoutError(
        f"the call's deadline passed while its create waited {waited:.2f}s for a slot "
        f"(app {app!r} is at its concurrency limit); nothing was sent"
    )
