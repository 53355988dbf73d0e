"""`Journal`: a fan-out journal as the event loop sees it. The SQLite work runs in one
worker thread; writes that arrive while one is on disk are committed together (one fsync
for the lot), and each caller resumes once its own write is durable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final

from ._errors import JournalError, JournalInUseError
from ._file import JournalFile, Write

if TYPE_CHECKING:
    from ._file import Row

__all__ = ["Journal", "ResumeSummary"]

logger = logging.getLogger("kernel_async")

#: The default `Journal.in_flight`: seconds a create sent just before a crash may take to
#: reach the service (and to be listed there). A wider window makes a re-run started right
#: after a crash wait longer; a narrower one risks creating such a payload twice.
IN_FLIGHT: Final = 2.0

#: How long records nobody waits for (created, finished) may gather before a commit.
_GATHER: Final = 0.02


@dataclass(frozen=True)
class ResumeSummary:
    """What a `map()` found in its journal when it started."""

    finished: int
    """Payloads that had finished: their results come from the journal, no request made."""
    reattached: int
    """Payloads created earlier and not known to be finished: followed to the end. One
    that turns out cancelled on exit (the run that cancelled it could not learn or record
    that: the cancel failed, or the process was killed) is then created again."""
    adopted: int
    """Creates sent before a crash, unrecorded, and found on the service: adopted."""
    unresolved: int
    """Creates sent before a crash that could not be checked (the list failed): each is
    reported as a `JournalUnresolvedError`, not created again."""
    recreated: int
    """Payloads the journal had started that are certainly not created, or whose
    invocation was certainly cancelled on exit (or at `map()`'s timeout), as the cancel
    answered: created now, nothing followed."""

    @property
    def resumed(self) -> bool:
        """Whether the journal held anything from an earlier run."""
        return any((self.finished, self.reattached, self.adopted, self.unresolved, self.recreated))


class Journal:
    """Where `Invocations.map` records each payload's progress, so that a fan-out killed
    part-way resumes without creating anything twice.

    ```python
    async with kernel.invocations.map("my-app", "analyze", urls, journal="run.db") as results:
        async for result in results:
            ...
    ```

    Pass a path (as above) or a `Journal`, whose `summary` then tells what the run resumed
    (``on_resume`` is called with it once the journal is open and checked, before any
    create).
    The file is SQLite (WAL, ``synchronous=FULL``): each create is recorded durably before
    it is sent. One `map()` at a time may use a journal; another process gets
    `JournalInUseError`. See "Resumable fan-out" in the docs.
    """

    __slots__ = (
        "_executor",
        "_file",
        "_flusher",
        "_queue",
        "_waited",
        "fsync",
        "in_flight",
        "on_resume",
        "path",
        "summary",
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        on_resume: Callable[[ResumeSummary], None] | None = None,
        in_flight: float = IN_FLIGHT,
    ) -> None:
        if not in_flight >= 0 or math.isinf(in_flight):
            raise ValueError(
                f"in_flight must be a finite number of seconds >= 0, got {in_flight!r}"
            )
        self.path = os.fspath(path)
        """The journal's file."""
        self.fsync = fsync
        """Whether the record of each create is on disk (fsynced) before the create is
        sent, so that it survives the machine crashing. ``False`` commits it without
        waiting for the disk: it still survives the process being killed (SIGKILL, OOM,
        Ctrl-C, an exception), for much less CPU per item."""
        self.summary: ResumeSummary | None = None
        """What the last `map()` on this journal resumed, once it has started."""
        self.on_resume = on_resume
        """Called with `summary` when a `map()` has opened and checked the journal."""
        self.in_flight = in_flight
        """Seconds a create sent just before a crash may take to reach the service. A
        re-run started sooner after such a create waits until then before it looks for
        it on the service: found, it is adopted rather than created a second time."""
        self._file: JournalFile | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._queue: list[tuple[list[Write], bool, asyncio.Future[None] | None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._waited = asyncio.Event()  # a write someone waits for is queued

    def __repr__(self) -> str:
        return f"Journal({self.path!r})"

    async def _open(self, header: dict[str, str]) -> JournalFile:
        """Open and lock the file, checking it was made for ``header``."""
        if self._file is not None:
            raise JournalInUseError(
                f"journal {self.path} is already open in a map() of this process",
                path=self.path,
            )
        executor = ThreadPoolExecutor(1, thread_name_prefix="kernel-journal")
        try:
            file = await asyncio.get_running_loop().run_in_executor(
                executor, JournalFile, self.path, header
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._file, self._executor = file, executor
        return file

    @property
    def _rows(self) -> dict[int, Row]:
        assert self._file is not None
        return self._file.rows

    async def _write(self, writes: list[Write]) -> None:
        """Apply ``writes``; return once they are on disk (fsynced). Cancelling the caller
        does not stop the write."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._post(writes, done)
        await done

    def _post(self, writes: list[Write], done: asyncio.Future[None] | None = None) -> None:
        """Queue ``writes`` to be committed with the next group, without waiting (with no
        ``done`` to wait on, committed unsynced: a failure is logged; what it would have
        recorded, a re-run finds on the service). Once the journal is closed, ``writes``
        are dropped (logged; the same holds for them) and ``done`` fails."""
        if self._file is None:
            logger.warning("Journal %s is closed: a record was not written", self.path)
            if done is not None:
                done.set_exception(JournalError(f"journal {self.path} is closed", path=self.path))
            return
        self._queue.append((writes, done is not None and self.fsync, done))
        if done is not None:
            self._waited.set()
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        file, executor = self._file, self._executor
        assert file is not None
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                if not any(done is not None for _, _, done in self._queue):
                    # Nobody waits for these: let more gather, up to a write someone
                    # waits for or _GATHER seconds, and commit them all at once.
                    self._waited.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._waited.wait(), _GATHER)
                batch, self._queue = self._queue, []
                writes = [write for writes, _, _ in batch for write in writes]
                sync = any(sync for _, sync, _ in batch)
                waiting = [done for _, _, done in batch if done is not None]
                try:
                    await loop.run_in_executor(executor, partial(file.write, writes, sync=sync))
                except Exception as exc:
                    if len(waiting) < len(batch):
                        logger.warning("Could not write to journal %s: %s", self.path, exc)
                    for done in waiting:
                        if not done.done():
                            done.set_exception(exc)
                else:
                    for done in waiting:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._flusher = None

    async def _reload(self) -> None:
        """Read the file's records again (after writing some)."""
        file = self._file
        assert file is not None
        rows, known_ids = await asyncio.get_running_loop().run_in_executor(
            self._executor, file._load
        )
        file.rows, file.known_ids = rows, known_ids

    async def _close(self) -> None:
        """Finish the writes under way, close the file and release it."""
        file, executor = self._file, self._executor
        if file is None or executor is None:
            return
        try:
            while self._flusher is not None:
                await asyncio.shield(self._flusher)
        finally:
            self._file = self._executor = None
            try:
                await asyncio.get_running_loop().run_in_executor(executor, file.close)
            finally:
                executor.shutdown(wait=False)
