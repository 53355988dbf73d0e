"""The same relay as ``aiohttp_relay.py`` in Starlette (FastAPI is Starlette underneath).

Starlette is a development dependency of this repository only; kernel_async itself does not
need it. The client lives in the app's lifespan, so it is created in the server's event
loop and closed on shutdown. ``GET /run/{action}`` starts an invocation and relays its
events as Server-Sent Events, with the same behaviour at the edges:

- **A viewer who hangs up is noticed at once** (the ASGI ``http.disconnect`` message,
  awaited next to the relay), even while the invocation is quiet.
- **A departed viewer cancels its invocation**: each viewer starts its own and nobody else
  watches it. (If your app lets several viewers watch one invocation, cancel it when the
  last one leaves.) Nothing is started for a viewer who left before the create; a create
  still queued for a slot is withdrawn, unsent; one already sent is let land and its
  invocation cancelled (`Creates`).
- **A browser's automatic reconnect** (``Last-Event-ID``) is answered 204, which stops it.
- **Shutdown is prompt.** uvicorn waits for open responses to end before it runs the
  lifespan's shutdown, so streams that never end would hold it for ever: the app ends
  them itself when the server is told to stop (SIGINT, SIGTERM: `Relays.stop_on_signals`
  chains to the server's own handlers), cancelling their invocations and sending
  ``event: done`` with ``{"reason": "server stopping"}``.

    pip install starlette uvicorn
    KERNEL_API_KEY=... uvicorn examples.starlette_relay:app
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from types import FrameType
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kernel_async import AsyncKernel, KernelError

try:
    from examples._relay import Creates, cancel, describe, sse
except ImportError:  # served from inside examples/
    from _relay import Creates, cancel, describe, sse  # type: ignore[no-redef,import-not-found]


class Relays:
    """The app's open relays, all ended at once when the server is told to stop."""

    def __init__(self) -> None:
        self.stopping = False
        self.creates = Creates()
        self._open: set[anyio.CancelScope] = set()

    def __len__(self) -> int:
        return len(self._open)

    @contextmanager
    def track(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope around one relay, cancelled by `stop`."""
        with anyio.CancelScope() as scope:
            if self.stopping:
                scope.cancel()
            self._open.add(scope)
            try:
                yield scope
            finally:
                self._open.discard(scope)

    def stop(self) -> None:
        """End every open relay now, and refuse new ones."""
        self.stopping = True
        for scope in self._open:
            scope.cancel()

    @contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """While in the ``with``: SIGINT and SIGTERM `stop` the relays, then go on to the
        handler installed before (the server's, which starts its shutdown). Signals are
        only for the main thread; elsewhere, or with no handler to chain to, nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        previous: dict[int, Callable[[int, FrameType | None], Any]] = {}

        def handler(sig: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self.stop)
            previous[sig](sig, frame)

        for sig in (int(signal.SIGINT), int(signal.SIGTERM)):
            installed = signal.getsignal(sig)
            if callable(installed):
                previous[sig] = installed
                signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, installed in previous.items():
                if signal.getsignal(sig) is handler:
                    signal.signal(sig, installed)


def make_app(**client_options: Any) -> Starlette:
    """The app; ``client_options`` go to AsyncKernel (defaults: the KERNEL_* env vars)."""
    relays = Relays()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        middlewares = (relays.creates.middleware, *client_options.pop("middlewares", ()))
        async with AsyncKernel(middlewares=middlewares, **client_options) as kernel:
            app.state.kernel = kernel
            with relays.stop_on_signals():
                try:
                    yield
                finally:  # before the client closes
                    relays.stop()
                    await relays.creates.drain()

    async def relay(request: Request) -> Response:
        if relays.stopping or "last-event-id" in request.headers or await request.is_disconnected():
            return Response(status_code=204)  # nobody to relay to, or a reconnect
        kernel: AsyncKernel = request.app.state.kernel
        return RelayResponse(kernel, request.path_params["action"], relays)

    app = Starlette(routes=[Route("/run/{action}", relay)], lifespan=lifespan)
    app.state.relays = relays
    return app


class RelayResponse(Response):
    """An SSE response relaying one new invocation's events until it ends, the viewer
    leaves (``http.disconnect``) or the server stops: then the invocation is cancelled."""

    media_type = "text/event-stream"

    def __init__(self, kernel: AsyncKernel, action: str, relays: Relays) -> None:
        # As StreamingResponse does: no body, so no Content-Length.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.kernel = kernel
        self.action = action
        self.relays = relays

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def write(text: str, more: bool = True) -> None:
            with suppress(OSError):  # the viewer is gone (ASGI 2.4 servers say so)
                await send({"type": "http.response.body", "body": text.encode(), "more_body": more})

        departed = False

        async def until_disconnect(cancel: anyio.CancelScope) -> None:
            nonlocal departed
            while (await receive())["type"] != "http.disconnect":
                pass
            departed = True
            cancel.cancel()

        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        with self.relays.track() as stopped:
            async with anyio.create_task_group() as group:
                group.start_soon(until_disconnect, group.cancel_scope)
                await self.relay(write)
                group.cancel_scope.cancel()
        if departed:
            return
        if stopped.cancel_called:
            await write(sse({"reason": "server stopping"}, event="done"))
        await write("", more=False)

    async def relay(self, write: Callable[[str], Any]) -> None:
        """Start the action and write its events; cancel it if cancelled before its end."""
        kernel = self.kernel
        try:
            invocation_id = await self.relays.creates.start(
                kernel, "demo-app", self.action, {"pages": 3}
            )
        except KernelError as exc:
            await write(sse({"line": f"error: {exc}"}) + sse({}, event="done"))
            return
        finished = False
        try:
            async with kernel.invocations.follow(invocation_id) as stream:
                async for event in stream:
                    line = describe(event)
                    if line is not None:
                        await write(sse({"line": line}, id=invocation_id))
            finished = True
            await write(sse({}, event="done"))
        except KernelError as exc:  # the stream failed for good: say so, and give up on it
            await write(sse({"line": f"error: {exc}"}))
        finally:
            if not finished:
                with anyio.CancelScope(shield=True):
                    await cancel(kernel, invocation_id)


#: ``uvicorn examples.starlette_relay:app``: the client from the ``KERNEL_*`` env vars.
app = make_app()
