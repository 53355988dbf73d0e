"""An invocation's life as `run` and `map` see it through: created (through admission,
the create allowed to land so that its id is known), waited for, and stopped on a timeout
or on exit. Every end the service answers frees the invocation's admission slot."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

from .._options import NOT_GIVEN, NotGiven
from ..errors import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    ConflictError,
    KernelError,
    NotFoundError,
)
from ..models import Invocation
from ._operations import Invocations as Operations
from ._params import Extras, create_body

__all__ = ["CANCEL_OUTPUT", "Landing", "Lifecycle", "OnStopped"]

logger = logging.getLogger("kernel_async")

#: The output an invocation is cancelled with on exit, as the Kernel CLI does on Ctrl-C.
CANCEL_OUTPUT: Final = {"error": "Invocation cancelled by user"}
#: Told the final state of an invocation that cancelling it (on exit or on a timeout) learnt
#: for certain: the cancel's answer, or the end it had reached first.
OnStopped = Callable[[Invocation], None]
#: How long cleanup on exit may take in all (a create landing, then the cancel of its
#: invocation), however often the caller is cancelled again meanwhile.
CANCEL_TIMEOUT: Final = 10.0


class Landing:
    """Whether a create left the admission queue (was sent); ``on_sent`` is called once,
    when it does."""

    __slots__ = ("_on_sent", "sent")

    def __init__(self, on_sent: Callable[[], None] | None = None) -> None:
        self._on_sent = on_sent
        self.sent = False

    def __call__(self) -> None:
        if not self.sent:
            self.sent = True
            if self._on_sent is not None:
                self._on_sent()


class Lifecycle(Operations):
    """What `run` and `map` are made of (`Invocations` builds on it)."""

    __slots__ = ()

    async def _start(
        self,
        app_name: str,
        action_name: str,
        payload: Any,
        *,
        version: str,
        async_timeout_seconds: int | None,
        deadline: float | None,
        extras: Extras,
        landing: Landing,
        cancel_on_exit: bool,
        output: Any = None,
        on_stopped: OnStopped | None = None,
    ) -> str:
        """Create asynchronously, waiting for a slot until ``deadline`` (loop time). A
        create once sent gets its answer even past the deadline, so the id is known. With
        ``cancel_on_exit``, a caller cancelled meanwhile lets a sent create land and cancels
        its invocation with ``output`` (``on_stopped`` is told the final state that cancel
        learnt), within `CANCEL_TIMEOUT` and to the end even if cancelled again, then
        raises the ``CancelledError``. Returns the invocation's id."""
        client = self._client
        body = create_body(app_name, action_name, version, payload, True, async_timeout_seconds)
        telemetry = client._telemetry
        create = client._create(
            app_name,
            body,
            timeout=client._attempt_timeout(),
            deadline=deadline,
            async_timeout_seconds=async_timeout_seconds,
            land=True,
            on_sent=landing,
            trace_attributes=None
            if telemetry is None
            else telemetry._create_attributes(app_name, action_name, version, payload),
            **extras,
        )
        if not cancel_on_exit:
            return (await create).id
        task = asyncio.ensure_future(create)
        try:
            return (await asyncio.shield(task)).id
        except asyncio.CancelledError:
            await _to_the_end(self._land_and_cancel(task, landing.sent, output, extras, on_stopped))
            raise

    async def _see_through(
        self,
        id: str,
        deadline: float | None,
        *,
        cancel_on_timeout: bool,
        cancel_on_exit: bool,
        extras: Extras,
        output: Any = None,
        on_stopped: OnStopped | None = None,
    ) -> Invocation:
        """Wait for ``id`` to finish until ``deadline`` (loop time). On the deadline: raise
        `APITimeoutError` (with the ``invocation_id``), cancelling it first with
        ``cancel_on_timeout``, unless it turns out to have finished on its own meanwhile:
        then its final state is returned. A caller cancelled meanwhile (that cancel on the
        deadline included) cancels it too, with ``cancel_on_exit``, to the end even if
        cancelled again. ``on_stopped`` is told the final state a cancel learnt (not
        called when the cancel failed or was itself cut short)."""
        loop = asyncio.get_running_loop()
        left = None if deadline is None else deadline - loop.time()
        try:
            try:
                return await asyncio.wait_for(self._wait(id, extras), left)
            except asyncio.TimeoutError:
                pass
            if cancel_on_timeout:  # cancelled while cancelling: cancelled on exit instead
                final, cancelled = await self._stop(id, output, extras)
                if not cancelled:
                    return final  # it finished as its time ran out: that is its result
                if on_stopped is not None:
                    on_stopped(final)
        except asyncio.CancelledError:
            if cancel_on_exit:
                await _to_the_end(self._cancel_quietly(id, output, extras, on_stopped))
            raise
        raise APITimeoutError(
            f"invocation {id} did not finish within the call's timeout"
            + ("; it was cancelled" if cancel_on_timeout else "; it is still running"),
            method="GET",
            url=str(self._item_url(id)),
            invocation_id=id,
        )

    async def _wait(self, id: str, extras: Extras) -> Invocation:
        """Follow ``id`` to its end (a stream that cannot be resumed: `retrieve`)."""
        stream = self.follow(id, **extras)
        try:
            async with stream:
                async for _ in stream:
                    pass
        except APIConnectionError:
            if self._client.is_closed:
                raise
            invocation = await self.retrieve(id, **extras)
            if invocation.is_terminal:
                return invocation
            raise
        state = stream.last_state
        if state is None or not state.is_terminal:  # pragma: no cover - stream ends on terminal
            return await self.retrieve(id, **extras)
        return state

    async def _stop(
        self, id: str, output: Any, extras: Extras, timeout: float | NotGiven = NOT_GIVEN
    ) -> tuple[Invocation, bool]:
        """Cancel ``id``; returns its final state and whether this cancel ended it. A
        cancel refused because it had finished (400, 409) learns the final state instead;
        one it cannot find (404) is gone. Either way its slot is freed."""
        try:
            return await self.cancel(id, output=output, timeout=timeout, **extras), True
        except (BadRequestError, ConflictError):
            final = await self.retrieve(id, timeout=timeout, **extras)  # frees the slot
            if final.is_terminal:
                return final, False
            raise
        except NotFoundError:
            self._client._backpressure.finished(id)
            raise

    async def _land_and_cancel(
        self,
        create: asyncio.Future[Any],
        sent: bool,
        output: Any,
        extras: Extras,
        on_stopped: OnStopped | None,
    ) -> None:
        """On exit: let a sent ``create`` land and cancel its invocation, the two within
        `CANCEL_TIMEOUT`; a create never sent is withdrawn."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_TIMEOUT
        invocation_id = await _landed(create, sent)
        if invocation_id is not None:
            left = max(deadline - loop.time(), 0.0)
            await self._cancel_quietly(invocation_id, output, extras, on_stopped, left)

    async def _cancel_quietly(
        self,
        id: str,
        output: Any,
        extras: Extras,
        on_stopped: OnStopped | None = None,
        timeout: float | None = None,
    ) -> None:
        """On exit: cancel ``id`` within ``timeout`` (`CANCEL_TIMEOUT` by default); a
        failure is logged, not raised. Once the cancel has answered, ``on_stopped`` is told
        the final state it learnt. Run it with `_to_the_end`: cut short, it leaves the
        invocation running."""
        timeout = CANCEL_TIMEOUT if timeout is None else timeout
        task = asyncio.ensure_future(self._stop(id, output, extras, timeout))
        if not await _within(task, timeout):
            logger.warning(
                "Could not cancel invocation %r within %.3g s: it may still be running",
                id,
                timeout,
            )
            return
        if task.cancelled():  # by the loop shutting down
            return
        error = task.exception()
        if isinstance(error, KernelError):
            logger.warning("Could not cancel invocation %r: %s", id, error)
        elif error is not None:
            raise error
        elif on_stopped is not None:
            on_stopped(task.result()[0])


async def _to_the_end(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run ``cleanup`` (bounded in time) to its end, even when the task awaiting it is
    cancelled again meanwhile, as its caller is re-raising a ``CancelledError`` anyway.
    Those cancellations stay counted (``Task.cancelling()`` on 3.11+, never
    ``uncancel()``ed here), so an ``asyncio.timeout`` or ``TaskGroup`` around the call
    still sees its own. Only the cleanup itself being cancelled (the loop shutting down)
    ends the wait early."""
    task = asyncio.ensure_future(cleanup)
    while True:
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            if not task.done():
                continue  # cancelled again: the cleanup goes on, then the caller re-raises
        task.result()
        return


async def _within(task: asyncio.Future[Any], timeout: float | None) -> bool:
    """Wait up to ``timeout`` seconds for ``task`` (``None``: not at all), then cancel it
    if it still runs (also when this wait is cut short: the task never outlives it) and
    wait for it to end. Returns whether it ended on its own."""
    try:
        if timeout is not None:
            await asyncio.wait({task}, timeout=timeout)
    finally:
        if not task.done():
            task.cancel()
    if task.done():
        return True
    await asyncio.wait({task})
    return False


async def _landed(task: asyncio.Future[Any], sent: bool) -> str | None:
    """The id a create ``task`` gets once it lands (within `CANCEL_TIMEOUT`), or ``None``:
    a create never sent is withdrawn, and one that fails started nothing. One sent that
    does not land in time is withdrawn too (reported: it may have started one)."""
    if not await _within(task, CANCEL_TIMEOUT if sent else None) and sent:
        logger.warning(
            "A create cancelled on exit did not answer within %.3g s: the invocation "
            "it may have started was not cancelled",
            CANCEL_TIMEOUT,
        )
    if task.cancelled() or task.exception() is not None:
        return None
    return str(task.result().id)
