"""``kernel.invocations.map()``: run an action once per payload, results as they finish."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from .errors import APITimeoutError, ClientClosedError, KernelError
from .journal._plan import Plan, cancelled_on_exit
from .models import Invocation
from .resources._lifecycle import CANCEL_OUTPUT, Landing, OnStopped

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._telemetry_traces import LifecycleTrace
    from .journal._resume import JournalRun
    from .resources._params import Extras
    from .resources.invocations import Invocations

__all__ = ["CANCEL_OUTPUT", "Fanout", "InvocationMap", "MapResult"]

logger = logging.getLogger("kernel_async")

#: Without ``concurrency``: most items waiting for a slot ahead of need (enough to use
#: every slot that frees), and most results waiting for the consumer. Creating waits for
#: the consumer, so an endless payload source stays bounded.
_PREFETCH: Final = 16


@dataclass(frozen=True)
class MapResult:
    """One item of `InvocationMap`: the payload's place in the input, and how it ended."""

    index: int
    """The payload's position in the input (0-based)."""
    payload: Any
    """The payload, as given."""
    invocation: Invocation | None
    """The invocation's final state (``succeeded`` or ``failed``), or ``None`` when the
    call failed before the end was known."""
    error: KernelError | None
    """Why the SDK could not see it through (``None`` when ``invocation`` is set). The
    invocation may still have been created: see ``invocation_id``."""
    invocation_id: str | None = None
    """The invocation's id, once created (also when ``error`` is set)."""

    @property
    def ok(self) -> bool:
        """Whether the invocation succeeded (then `value` is its final state)."""
        return self.invocation is not None and self.invocation.status == "succeeded"

    @property
    def value(self) -> Invocation:
        """The invocation's final state, typed ``Invocation`` (``succeeded`` or
        ``failed``); raises `error` when the SDK could not see it through::

            if result.ok:
                print(result.value.output)
        """
        if self.invocation is None:
            assert self.error is not None
            raise self.error
        return self.invocation


class InvocationMap:
    """The results of `Invocations.map`, as they finish: an async iterator and an async
    context manager.

    ```python
    async with kernel.invocations.map("my-app", "analyze", urls) as results:
        async for result in results:
            print(result.index, result.invocation.status if result.invocation else result.error)
    ```

    Every payload gives exactly one `MapResult`; none is started twice. Creating waits for
    the consumer: at most ``concurrency`` items are in progress or unread at once (16
    unread without it), so an endless source and a slow consumer stay bounded. Leaving
    early (``break``, an exception, cancellation, `aclose`) cancels the invocations it
    started and has not seen finish, setting them to ``failed`` as the Kernel CLI does on
    Ctrl-C. A plain ``async for`` does that too, once the loop lets go of the iterator.
    The payload source raising (anything, ``CancelledError`` included) ends the iteration
    with that error, and so does the client being closed (`ClientClosedError`).
    """

    __slots__ = ("__weakref__", "_gen")

    def __init__(self, fanout: Fanout) -> None:
        self._gen = fanout.results()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> MapResult:
        return await self._gen.__anext__()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: cancel the invocations started and not finished, and wait for that."""
        await self._gen.aclose()


class Fanout:
    """One `map` call's state: the payloads read, the items in progress, the results not
    yet read. A feeder task starts items while there is room; the consumer takes results.
    With a journal, each item's progress is recorded, and what an earlier run left there
    is resumed (`kernel_async.journal`): its hooks are the ``journal`` lines.
    """

    def __init__(
        self,
        invocations: Invocations,
        app_name: str,
        action_name: str,
        payloads: Iterable[Any] | AsyncIterable[Any],
        *,
        version: str,
        concurrency: int | None,
        timeout: float | None,
        async_timeout_seconds: int | None,
        extras: Extras,
        journal: JournalRun | None = None,
    ) -> None:
        self._invocations = invocations
        self._journal = journal
        self._app_name = app_name
        self._action_name = action_name
        self._payloads = payloads
        self._version = version
        self._concurrency = concurrency
        self._timeout = timeout
        self._async_timeout_seconds = async_timeout_seconds
        self._extras = extras
        self._items: set[asyncio.Task[None]] = set()  # in progress
        self._unsent = 0  # items in progress whose create waits for a slot
        self._results: deque[MapResult] = deque()  # finished, not yet read
        self._total: int | None = None  # how many payloads, once the source is exhausted
        self._failure: BaseException | None = None  # ends the iteration once results are read
        self._stopping = False
        self._room_changed = asyncio.Event()  # wakes the feeder
        self._news = asyncio.Event()  # wakes the consumer

    # --- the consumer ------------------------------------------------------------------------

    async def results(self) -> AsyncGenerator[MapResult, None]:
        """The results, as they finish; leaving stops everything started."""
        telemetry = self._invocations._client._telemetry
        span = (
            None
            if telemetry is None
            else telemetry._map_span(
                {
                    "kernel.app.name": self._app_name,
                    "kernel.action.name": self._action_name,
                    "kernel.app.version": self._version,
                }
            )
        )
        journal = self._journal
        feeder: asyncio.Task[None] | None = None
        read = 0
        try:
            if journal is not None:
                await journal.start(self._invocations, self._payloads, self._extras)
            feeder = asyncio.create_task(self._feed(span))
            while self._total is None or read < self._total:
                if self._results:
                    read += 1
                    result = self._results.popleft()
                    self._room_changed.set()
                    yield result
                elif self._failure is not None:
                    raise self._failure
                else:
                    self._news.clear()
                    await self._news.wait()
        finally:
            try:
                if feeder is not None:
                    await self._stop(feeder)
            finally:  # cancelled again while stopping: the journal is released all the same
                try:
                    if journal is not None:
                        await journal.close()
                finally:
                    if span is not None:
                        span.set_attribute("kernel.map.results", read)
                        span.end()

    async def _stop(self, feeder: asyncio.Task[None]) -> None:
        """Cancel the feeder and every item (each cancels its invocation), and wait.
        Cancelled again meanwhile, the items are too: each still lets its create land and
        cancels its invocation (bounded), so wait for them to end all the same, and what
        they record reaches the journal."""
        self._stopping = True
        pending = [feeder, *self._items]
        for task in pending:
            task.cancel()
        try:
            await asyncio.gather(*pending, return_exceptions=True)
        except asyncio.CancelledError:
            await asyncio.wait(pending)
            raise

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        self._news.set()

    # --- the feeder --------------------------------------------------------------------------

    def _has_room(self) -> bool:
        """Whether another payload may be started: creating waits for the consumer."""
        if self._concurrency is not None:
            return len(self._items) + len(self._results) < self._concurrency
        return self._unsent < _PREFETCH and len(self._results) < _PREFETCH

    async def _feed(self, span: Any) -> None:
        index = 0
        payloads = _aiter(self._payloads)
        try:
            while self._failure is None:
                while not self._has_room():
                    self._room_changed.clear()
                    await self._room_changed.wait()
                try:
                    payload = await payloads.__anext__()
                except StopAsyncIteration:
                    break
                plan = None if self._journal is None else self._journal.plan(index, payload)
                if plan is not None and plan.settled:  # journal: no request to make
                    self._results.append(_settled(index, payload, plan))
                    self._news.set()
                    index += 1
                    continue
                self._unsent += 1
                task = asyncio.create_task(self._item(index, payload, plan, span))
                self._items.add(task)
                task.add_done_callback(self._item_done)
                index += 1
            if self._journal is not None and self._failure is None:
                self._journal.check_count(index)
        except BaseException as exc:  # the payload source raised, whatever it raised
            if self._stopping:
                raise
            self._fail(exc)
            return
        finally:
            await payloads.aclose()
        self._total = index
        self._news.set()

    def _item_done(self, task: asyncio.Task[None]) -> None:
        self._items.discard(task)
        self._room_changed.set()

    # --- one item ----------------------------------------------------------------------------

    async def _item(self, index: int, payload: Any, plan: Plan | None, span: Any) -> None:
        telemetry = self._invocations._client._telemetry
        if telemetry is None:
            await self._run_item(index, payload, plan, None)
            return
        attributes = telemetry._create_attributes(
            self._app_name, self._action_name, self._version, payload
        )
        attributes["kernel.map.index"] = index
        with telemetry._lifecycle("run", attributes, parent=span) as life:
            await self._run_item(index, payload, plan, life)

    async def _run_item(
        self, index: int, payload: Any, plan: Plan | None, life: LifecycleTrace | None
    ) -> None:
        journal = self._journal
        loop = asyncio.get_running_loop()
        deadline = None if self._timeout is None else loop.time() + self._timeout
        landing = Landing(self._sent)
        invocation_id: str | None = None
        final: Invocation | None = None
        stopped: list[Invocation] = []  # the end cancelling it learnt (exit, timeout)
        try:
            if plan is not None and plan.attach is not None:  # journal: created earlier
                landing()
                final = await self._see_through(plan.attach, deadline, stopped.append)
                invocation_id = None if cancelled_on_exit(final) else plan.attach
            if invocation_id is None:
                if journal is not None and plan is not None:  # durable before it is sent
                    await journal.creating(index, plan.digest, plan.attach)
                final = None
                invocation_id = await self._start(payload, deadline, landing, stopped.append)
                if journal is not None:
                    journal.created(index, invocation_id)
            if life is not None:
                life.created(invocation_id)
            if final is None:
                final = await self._see_through(invocation_id, deadline, stopped.append)
            if journal is not None:
                journal.finished(index, final)
            if life is not None:
                life.finished(final)
            result = MapResult(index, payload, final, None, invocation_id)
        except ClientClosedError as exc:
            self._fail(exc)
            return
        except KernelError as exc:
            if life is not None:
                life.failed(exc)
            if isinstance(exc, APITimeoutError) and exc.invocation_id is not None:
                invocation_id = exc.invocation_id
            if journal is not None:
                journal.failed(index, exc, landing.sent, invocation_id, stopped)
            result = MapResult(index, payload, None, exc, invocation_id)
        except asyncio.CancelledError:
            if journal is not None:
                journal.stopped(index, landing.sent, stopped)
            raise
        except Exception as exc:
            self._fail(exc)
            return
        finally:
            if not landing.sent:
                self._sent()  # never sent: it no longer waits for a slot either
        self._results.append(result)
        self._news.set()

    async def _start(
        self, payload: Any, deadline: float | None, landing: Landing, on_stopped: OnStopped
    ) -> str:
        """Create the invocation for ``payload``; cancelled, it cancels what it created
        (``on_stopped``: the end that cancel learnt)."""
        return await self._invocations._start(
            self._app_name,
            self._action_name,
            payload,
            version=self._version,
            async_timeout_seconds=self._async_timeout_seconds,
            deadline=deadline,
            extras=self._extras,
            landing=landing,
            cancel_on_exit=True,
            output=CANCEL_OUTPUT,
            on_stopped=on_stopped,
        )

    async def _see_through(
        self, invocation_id: str, deadline: float | None, on_stopped: OnStopped
    ) -> Invocation:
        """Wait for the end; on the deadline or when cancelled, cancel the invocation
        (``on_stopped``: the end that cancel learnt)."""
        return await self._invocations._see_through(
            invocation_id,
            deadline,
            cancel_on_timeout=True,
            cancel_on_exit=True,
            extras=self._extras,
            output=CANCEL_OUTPUT,
            on_stopped=on_stopped,
        )

    def _sent(self) -> None:
        self._unsent -= 1
        self._room_changed.set()


def _settled(index: int, payload: Any, plan: Plan) -> MapResult:
    """The result of a payload its journal settles without a request."""
    if plan.done is not None:
        return MapResult(index, payload, plan.done, None, plan.done.id)
    return MapResult(index, payload, None, plan.unresolved, None)


async def _aiter(payloads: Iterable[Any] | AsyncIterable[Any]) -> AsyncGenerator[Any, None]:
    if isinstance(payloads, AsyncIterable):
        async for payload in payloads:
            yield payload
    else:
        for payload in payloads:
            yield payload
