"""Reconciling: while creates of an app wait, its invocations are listed on the service
(every app's, when the client can): the slots of ours that ended unseen are freed, and
the admission policy learns what runs (`AdmissionPolicy.listed`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Final, NamedTuple

from ._room import CONFIRM_DELAY, LIST_INTERVAL

if TYPE_CHECKING:
    from ._queue import Admission

__all__ = ["LIST_BACKOFF_MAX", "Lister", "Listing", "Reconciler"]

logger = logging.getLogger("kernel_async")

#: After a list that failed, the next waits `LIST_INTERVAL`, doubling with each failure in
#: a row up to this (seconds): lists are news only, and an endpoint that fails (a 500, a
#: 429 of its own) is not asked again at the policy's cadence of 0.075 s.
LIST_BACKOFF_MAX: Final = 8.0


class Listing(NamedTuple):
    """What a list of the service showed, now: the ids of one app's queued and running
    invocations, and every app's when the list was the organisation's (``None``: it was
    the app's alone)."""

    app: Collection[str]
    org: Collection[str] | None = None


#: Lists app ``name``'s invocations queued or running on the service now.
Lister = Callable[[str], Awaitable[Listing]]


class Reconciler:
    """The lists of one `Admission` queue: one task per app, while creates of the app wait
    (here or in the shared limits' queue) or the last list missed an invocation of ours."""

    def __init__(self, admission: Admission, lister: Lister | None) -> None:
        self.admission = admission
        self.lister = lister
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._listing: set[str] = set()  # apps whose list is in flight
        self._nudges: dict[str, asyncio.Event] = {}  # set: the policy wants a list sooner
        self._unseen: set[str] = set()  # ids of ours the last list of their app missed

    def soon(self, app: str) -> None:
        """A create waits for ``app``: if some of ours hold slots (or the policy wants to
        see the app), start listing it (one task per app)."""
        admission = self.admission
        if (
            self.lister is None
            or admission.closed is not None
            or app in self._tasks
            or not admission.policy.wants_list(app)
        ):
            return
        self._tasks[app] = admission.loop.create_task(self._run(app, self.lister))

    def settled(self, app: str) -> None:
        """Nothing of ``app`` waits any more: stop listing it (a list in flight is let
        finish: what it learns frees slots all the same)."""
        if app not in self._listing and not self.wanted(app):
            task = self._tasks.pop(app, None)
            if task is not None:
                task.cancel()

    def nudge(self, app: str) -> None:
        """The policy may want ``app``'s next list sooner (a concurrency 429)."""
        nudge = self._nudges.get(app)
        if nudge is not None:
            nudge.set()

    def close(self) -> None:
        """Stop every list (the client is closing)."""
        for task in self._tasks.values():
            task.cancel()

    async def _run(self, app: str, lister: Lister) -> None:
        """While ``app`` is `wanted`, list its invocations on the service as often as the
        policy asks (`AdmissionPolicy.next_list`; no more than every `LIST_INTERVAL` when
        the rate limit's budget runs low): free the slots of ours that no longer run
        there (two lists in a row missed them: after a list that missed one, the next
        comes `CONFIRM_DELAY` later, creates waiting or not), and tell the policy what
        each list showed. A list that fails is asked again after a backoff
        (`LIST_BACKOFF_MAX`), not at the cadence."""
        admission = self.admission
        policy = admission.policy
        loop = admission.loop
        failures = 0  # lists in a row that failed
        try:
            while self.wanted(app) and admission.closed is None:
                state = policy.app(app)
                if policy.wants_list(app):
                    before = list(state.held)  # all created before the list is asked for
                    self._listing.add(app)
                    try:
                        listing = await lister(app)
                    except Exception as exc:  # news only: the lease stands
                        logger.debug("Could not list app %r's running invocations: %s", app, exc)
                        state.listed_at = loop.time()
                        failures += 1
                    else:
                        failures = 0
                        self.gone(before, listing.app if listing.org is None else listing.org)
                        policy.listed(app, loop.time(), listing.app, listing.org)
                        admission.pump()
                    finally:
                        self._listing.discard(app)
                    if not self.wanted(app):
                        break
                    if failures:  # back off from a failing endpoint (a nudge does not cut it)
                        await asyncio.sleep(
                            min(LIST_INTERVAL * 2.0 ** (failures - 1), LIST_BACKOFF_MAX)
                        )
                        continue
                else:
                    state.listed_at = loop.time()
                nudge = self._nudges.setdefault(app, asyncio.Event())
                nudge.clear()
                due = policy.next_list(app)
                if self.unconfirmed(app):  # missed by a list: look again soon
                    due = min(due, state.listed_at + CONFIRM_DELAY)
                spare = admission.spare_requests
                if spare is not None and not spare():
                    due = max(due, state.listed_at + LIST_INTERVAL)
                wait = due - loop.time()
                if wait > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(nudge.wait(), wait)
        finally:
            if self._tasks.get(app) is asyncio.current_task():
                del self._tasks[app]
                self._nudges.pop(app, None)

    def wanted(self, app: str) -> bool:
        """Whether ``app`` is to be listed: creates wait, or the last list missed an
        invocation of ours (it is freed if the next misses it too)."""
        return bool(self.admission.blocked(app)) or self.unconfirmed(app)

    def unconfirmed(self, app: str) -> bool:
        """Whether the last list of ``app`` missed an invocation of ours it holds."""
        return not self._unseen.isdisjoint(self.admission.policy.app(app).held)

    def gone(self, before: Collection[str], live: Collection[str]) -> None:
        """Free the slots of the ids in ``before`` not in ``live`` (the service's queued
        and running ones, listed after ``before`` was taken) nor in the list before it:
        they ended unseen. One list is not believed alone: a list read page by page
        (offsets, newest first) skips an invocation when newer ones end between its
        pages."""
        admission = self.admission
        owner = admission.policy.owner
        listed = set(before)
        missing = {id for id in listed if id in owner and id not in live}
        ended = [id for id in missing if id in self._unseen]
        # Missed once: freed if the next list misses it too (other apps' kept as they are).
        kept = {id for id in self._unseen if id in owner and id not in listed}
        self._unseen = kept | missing.difference(ended)
        if ended:
            logger.info("%d invocation(s) ended unseen: their slots are free", len(ended))
            for id in ended:
                admission.finished(id)
                if admission.ended is not None:
                    admission.ended(id)
