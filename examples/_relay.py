"""What the two relay examples share: the SSE lines, and starting and cancelling a viewer's
invocation so that none is left running for nobody."""

from __future__ import annotations

import asyncio
import json
import logging
from contextvars import ContextVar
from typing import Any

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse

from kernel_async import (
    AsyncKernel,
    BadRequestError,
    ErrorEvent,
    InvocationEvent,
    InvocationStateEvent,
    KernelError,
    LogEvent,
)

logger = logging.getLogger("examples.relay")

#: Set in the task of a create made by `Creates.start`: marked when it is sent.
_SENT: ContextVar[list[bool] | None] = ContextVar("relay_create_sent", default=None)


class Creates:
    """Starts viewers' invocations, and sees to the creates whose viewer did not wait.

    Give the client `middleware` (``AsyncKernel(middlewares=[creates.middleware])``): it
    runs when a request is actually sent, after the client's admission queue, and marks the
    create as sent. When a relay is cancelled during `start` (its viewer left, the server
    stops), a create still queued for a slot is withdrawn, nothing sent; one already sent
    is let land in the background and its invocation cancelled, since nobody will watch
    it. `drain` waits for those (before the client closes).
    """

    def __init__(self) -> None:
        self._landing: set[asyncio.Task[None]] = set()

    async def middleware(self, req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """An aiohttp client middleware: marks `start`'s create as sent (not the other
        requests the client may make while it waits, such as listing what runs)."""
        sent = _SENT.get()
        if sent is not None and req.method == "POST" and req.url.path.endswith("/invocations"):
            sent[0] = True
        return await handler(req)

    async def start(self, kernel: AsyncKernel, app_name: str, action: str, payload: Any) -> str:
        """Create the invocation asynchronously; its id."""
        sent = [False]
        token = _SENT.set(sent)  # the create's task copies the context: only it sees this
        try:
            creating = asyncio.ensure_future(
                kernel.invocations.create(app_name, action, payload=payload, async_=True)
            )
        finally:
            _SENT.reset(token)
        try:
            return (await asyncio.shield(creating)).id
        except asyncio.CancelledError:
            if sent[0]:
                landing = asyncio.ensure_future(_cancel_once_created(kernel, creating))
                self._landing.add(landing)
                landing.add_done_callback(self._landing.discard)
            else:
                creating.cancel()
            raise

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout`` seconds) for the creates left to land to be cancelled."""
        if self._landing:
            await asyncio.wait(self._landing, timeout=timeout)


async def _cancel_once_created(kernel: AsyncKernel, creating: asyncio.Future[Any]) -> None:
    try:
        created = await creating
    except KernelError:
        return  # it failed: nothing was started
    await cancel(kernel, created.id)


async def cancel(kernel: AsyncKernel, invocation_id: str) -> None:
    """Cancel an invocation nobody watches any more (quietly if it finished meanwhile)."""
    try:
        await kernel.invocations.cancel(invocation_id)
    except BadRequestError:
        pass  # it finished meanwhile
    except KernelError as exc:
        logger.warning("could not cancel invocation %s: %s", invocation_id, exc)


def describe(event: InvocationEvent) -> str | None:
    """The line a viewer sees for ``event`` (``None``: nothing, as for heartbeats)."""
    match event:
        case LogEvent(message=message):
            return message
        case ErrorEvent(error=error):
            return f"error: {error.message}"
        case InvocationStateEvent(invocation=inv):
            return f"[{inv.status}]"
    return None


def sse(data: dict[str, str], *, event: str | None = None, id: str | None = None) -> str:
    """One Server-Sent Event (``id``: what a reconnecting browser sends as Last-Event-ID)."""
    head = "" if event is None else f"event: {event}\n"
    head += "" if id is None else f"id: {id}\n"
    return f"{head}data: {json.dumps(data)}\n\n"
