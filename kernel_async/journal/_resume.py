"""What `map(..., journal=...)` does with its journal: check the input against it, find
the creates a crash left unrecorded, say per payload what to do, and record progress."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import APIStatusError, KernelError
from ..models import Invocation, invocation_decoder
from ..resources._params import json_string
from . import _file
from ._errors import JournalMismatchError, JournalUnresolvedError
from ._journal import Journal, ResumeSummary
from ._match import CLOCK_SKEW, Candidate, Unrecorded, match_unrecorded, payload_digest
from ._plan import Plan, cancelled_on_exit

if TYPE_CHECKING:
    from ..resources._params import Extras
    from ..resources.invocations import Invocations
    from ._file import Row

__all__ = ["JournalRun"]

logger = logging.getLogger("kernel_async")


class JournalRun:
    """One `map()`'s use of a `Journal`."""

    __slots__ = ("_action", "_app", "_opened", "_unresolved", "_version", "journal")

    def __init__(self, journal: Journal, app_name: str, action_name: str, version: str) -> None:
        self.journal = journal
        self._app, self._action, self._version = app_name, action_name, version
        self._unresolved: dict[int, JournalUnresolvedError] = {}
        self._opened = False

    async def start(
        self, invocations: Invocations, payloads: object, extras: Extras
    ) -> ResumeSummary:
        """Open the journal; check a sequence of payloads against it in full; find the
        creates left unrecorded by a crash, and record what became of them."""
        journal = self.journal
        header = {"app_name": self._app, "action_name": self._action, "version": self._version}
        file = await journal._open(header)
        self._opened = True
        if isinstance(payloads, Sequence):  # check it all before any request
            self.check_count(len(payloads))
            for index in sorted(file.rows):
                self.check(index, payloads[index])
        rows = file.rows
        unrecorded = [
            Unrecorded(r.index, r.digest, r.creating_at or 0.0)
            for r in rows.values()
            if r.state == "creating"
        ]
        adopted: dict[int, str] = {}
        if unrecorded:
            await self._let_land(max(u.since for u in unrecorded))
            adopted = await self._reconcile(invocations, unrecorded, file.known_ids, extras)
            writes: list[_file.Write] = []
            for item in unrecorded:
                if item.index in adopted:
                    writes.append(_file.created(item.index, adopted[item.index]))
                elif item.index not in self._unresolved:
                    writes.append(_file.pending(item.index))
            if writes:
                await journal._write(writes)  # before anything else is recorded
                await journal._reload()
        states = [r.state for r in file.rows.values()]
        summary = ResumeSummary(
            finished=states.count("finished"),
            reattached=states.count("created") - len(adopted),
            adopted=len(adopted),
            unresolved=len(self._unresolved),
            recreated=states.count("pending"),
        )
        journal.summary = summary
        if journal.on_resume is not None:
            journal.on_resume(summary)
        return summary

    async def _let_land(self, sent: float) -> None:
        """A create sent moments ago, before the crash, may not be on the service yet:
        wait until `Journal.in_flight` seconds after ``sent`` (never longer than that from
        now, whatever the clock did) before looking for it."""
        in_flight = self.journal.in_flight
        wait = min(sent + in_flight - time.time(), in_flight)
        if wait > 0:
            logger.info(
                "journal %s: waiting %.1f s for a create sent just before the last run "
                "stopped to reach the service",
                self.journal.path,
                wait,
            )
            await asyncio.sleep(wait)

    async def _reconcile(
        self,
        invocations: Invocations,
        unrecorded: list[Unrecorded],
        known_ids: set[str],
        extras: Extras,
    ) -> dict[int, str]:
        since = min(u.since for u in unrecorded) - CLOCK_SKEW
        try:
            candidates = [
                Candidate(inv.id, payload_digest(inv.payload), inv.started_at.timestamp())
                async for inv in invocations.list(
                    app_name=self._app,
                    action_name=self._action,
                    version=None if self._version == "latest" else self._version,
                    since=datetime.fromtimestamp(since, timezone.utc),
                    limit=100,
                    **extras,
                )
            ]
        except KernelError as exc:
            for item in unrecorded:
                self._unresolved[item.index] = JournalUnresolvedError(
                    f"payload {item.index} may have been created before the previous run "
                    f"stopped (its create was sent at {_clock(item.since)} and no answer was "
                    f"recorded), and listing the invocations to find it failed: {exc}. It "
                    "was not created again, to avoid a duplicate; run again to retry the check",
                    path=self.journal.path,
                    index=item.index,
                )
            return {}
        return match_unrecorded(unrecorded, candidates, known_ids)

    def check(self, index: int, payload: Any) -> str:
        """The payload's digest; `JournalMismatchError` if the journal holds another."""
        digest = payload_digest(json_string(payload, "payload"))
        row = self.journal._rows.get(index)
        if row is not None and row.digest != digest:
            raise JournalMismatchError(
                f"payload {index} is not the one journal {self.journal.path} holds for that "
                "index (the payloads changed): use another journal for other input",
                path=self.journal.path,
            )
        return digest

    def check_count(self, count: int) -> None:
        """`JournalMismatchError` if the journal holds payloads past the input's end."""
        beyond = [i for i in self.journal._rows if i >= count]
        if beyond:
            raise JournalMismatchError(
                f"journal {self.journal.path} holds payload {min(beyond)} but the input has "
                f"only {count} payloads: use another journal for other input",
                path=self.journal.path,
            )

    def plan(self, index: int, payload: Any) -> Plan:
        """What to do for ``index``, whose payload was checked with `check`."""
        digest = self.check(index, payload)
        row: Row | None = self.journal._rows.get(index)
        if row is None or row.state == "pending":
            return Plan(digest)
        if row.state == "finished" and row.final is not None:
            return Plan(digest, done=invocation_decoder.decode(row.final))
        if row.invocation_id is not None:
            return Plan(digest, attach=row.invocation_id)
        return Plan(digest, unresolved=self._unresolved[index])

    async def creating(self, index: int, digest: str, replacing: str | None = None) -> None:
        """Record, durably, that the create of ``index`` is about to be sent (``replacing``:
        the id of its invocation cancelled on exit, never to be adopted)."""
        writes = [_file.creating(index, digest, time.time())]
        if replacing is not None:
            writes.insert(0, _file.known(index, replacing))
        await self.journal._write(writes)

    def created(self, index: int, invocation_id: str) -> None:
        """Record ``index``'s id (a crash before it is committed: the next run finds the
        invocation on the service)."""
        self.journal._post([_file.created(index, invocation_id)])

    def finished(self, index: int, invocation: Invocation) -> None:
        """Record ``index``'s final state (a crash before it is committed: the next run
        follows the invocation again and gets the same state)."""
        final = msgspec.json.encode(invocation).decode()
        self.journal._post([_file.finished(index, final)])

    def failed(
        self,
        index: int,
        exc: KernelError,
        sent: bool,
        invocation_id: str | None,
        stopped: Sequence[Invocation] = (),
    ) -> None:
        """The item ended in ``exc``. Cancelled at its timeout, as its cancel answered
        (``stopped``), a re-run creates it again; with an id otherwise, it stays recorded
        as created (a re-run follows it); a create refused (4xx) or never sent made nothing
        (a re-run creates it); otherwise the record of the create stays, for the next run
        to look for."""
        if self._cancelled(index, stopped):
            return
        if invocation_id is not None:
            self.journal._post([_file.created(index, invocation_id)])
        elif not sent or (isinstance(exc, APIStatusError) and 400 <= exc.status < 500):
            self.journal._post([_file.pending(index)])

    def stopped(self, index: int, sent: bool, stopped: Sequence[Invocation]) -> None:
        """The item was cancelled (`map()` stopped early). Its create never sent, or its
        invocation certainly ended cancelled on exit (``stopped``: the end its cancel
        learnt): a re-run creates it, without following anything. Otherwise (the cancel
        failed or was cut short, or it had finished first) the record stays, and a re-run
        follows the invocation to see how it ended."""
        if not self._cancelled(index, stopped) and not sent:
            self.journal._post([_file.pending(index)])

    def _cancelled(self, index: int, stopped: Sequence[Invocation]) -> bool:
        """Record ``index`` as to create again if the end its cancel learnt is certainly
        a cancel on exit; its id is kept out of any matching, as a replaced one is."""
        if not stopped or not cancelled_on_exit(stopped[-1]):
            return False
        self.journal._post([_file.known(index, stopped[-1].id), _file.pending(index)])
        return True

    async def close(self) -> None:
        """Finish the writes and release the journal (if this run opened it)."""
        if self._opened:
            self._opened = False
            await self.journal._close()


def _clock(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
