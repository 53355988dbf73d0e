"""An aiohttp.web backend: one shared client, and live logs relayed to browsers as SSE.

The client is created once for the app (``cleanup_ctx``) and shared by every request: one
connection pool, closed when the app stops. ``GET /run/{action}`` starts an invocation and
relays its events to the browser as Server-Sent Events. What it does at the edges, which is
what makes it fit to copy:

- **A viewer who hangs up is noticed at once**, even while the invocation is quiet: one
  task watches the connections of every open relay (`Viewers`, a few times a second), so
  neither the handler nor the upstream stream waits for the next event to find out. A
  hang-up is not an error: nothing is logged for it.
- **A departed viewer cancels its invocation.** Each viewer starts its own and nobody else
  watches it, so its result would go nowhere while it holds one of the app's concurrency
  slots. (If your app lets several viewers watch one invocation, cancel it when the last
  one leaves.) Nothing is started for a viewer who left before the create; a create
  still queued for a slot (the app at its concurrency limit) is withdrawn, unsent; one
  already sent is let land and its invocation cancelled (`Creates`).
- **A browser's automatic reconnect** (``EventSource`` sends ``Last-Event-ID``) is answered
  204, which stops it, rather than starting the work again.
- **Shutdown is prompt** (Ctrl-C, SIGTERM): ``on_shutdown`` ends every open relay at once;
  its invocation is cancelled, the viewer gets ``event: done`` with
  ``{"reason": "server stopping"}``, and only then is the client closed.

    python examples/aiohttp_relay.py        # then open http://127.0.0.1:8080/
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager, suppress

from aiohttp import ClientMiddlewareType, web

from kernel_async import AsyncKernel, KernelError

try:
    from examples._relay import Creates, cancel, describe, sse
except ImportError:  # run as a script: python examples/aiohttp_relay.py
    from _relay import Creates, cancel, describe, sse  # type: ignore[no-redef,import-not-found]

KERNEL: web.AppKey[AsyncKernel] = web.AppKey("kernel", AsyncKernel)

#: Why a relay ends early: its viewer left, or the server is stopping.
DEPARTED, SHUTDOWN = "departed", "shutdown"

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # no buffering in a reverse proxy (nginx)
}

PAGE = """<!doctype html><meta charset="utf-8"><title>kernel_async relay</title>
<button onclick="run()">Run crawl</button><pre id="out"></pre>
<script>
function run() {
  const out = document.getElementById("out"); out.textContent = "";
  const source = new EventSource("/run/crawl");
  source.onmessage = (e) => { out.textContent += JSON.parse(e.data).line + "\\n"; };
  source.addEventListener("done", () => source.close());
}
</script>"""


class Viewers:
    """The app's open relays: notices the viewers who hang up, and ends them all on shutdown.

    One task polls every open relay's connection each ``poll_interval`` seconds (aiohttp
    tells a handler nothing when its client leaves, unless the server runs with
    ``handler_cancellation=True``; this works either way).
    """

    def __init__(self, poll_interval: float = 0.2) -> None:
        self.poll_interval = poll_interval
        self.stopping = False
        self.creates = Creates()
        self._open: dict[asyncio.Future[str], web.BaseRequest] = {}
        self._monitor: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._open)

    @contextmanager
    def watch(self, request: web.BaseRequest) -> Iterator[asyncio.Future[str]]:
        """While in the ``with``: a future set to why the relay must end, if it must
        (`DEPARTED`, `SHUTDOWN`)."""
        stop: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if self.stopping:
            stop.set_result(SHUTDOWN)
        self._open[stop] = request
        try:
            yield stop
        finally:
            del self._open[stop]

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            for stop, request in self._open.items():
                if not stop.done() and departed(request):
                    stop.set_result(DEPARTED)

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: the watching task runs while the app does; at the end,
        the creates left to land are cancelled (before the client closes)."""
        self._monitor = asyncio.create_task(self._watch())
        yield
        self._monitor.cancel()
        await asyncio.wait((self._monitor,))
        await self.creates.drain()

    async def shutdown(self, app: web.Application) -> None:
        """For ``app.on_shutdown``: end every open relay now (and refuse new ones)."""
        self.stopping = True
        for stop in self._open:
            if not stop.done():
                stop.set_result(SHUTDOWN)


VIEWERS: web.AppKey[Viewers] = web.AppKey("viewers", Viewers)


def make_app(
    kernel_factory: type[AsyncKernel] | None = None,
    *,
    poll_interval: float = 0.2,
    client_middlewares: Sequence[ClientMiddlewareType] = (),
    **client_options: object,
) -> web.Application:
    """The app. The client is built inside the app's lifetime, in its event loop, with
    ``client_options`` (and ``client_middlewares`` after the relay's own)."""
    app = web.Application()
    viewers = app[VIEWERS] = Viewers(poll_interval)

    async def kernel_ctx(app: web.Application) -> AsyncIterator[None]:
        factory = kernel_factory or AsyncKernel
        middlewares = (viewers.creates.middleware, *client_middlewares)
        async with factory(middlewares=middlewares, **client_options) as kernel:  # type: ignore[arg-type]
            app[KERNEL] = kernel
            yield

    # Cleanup runs in reverse: the relays end (on_shutdown), then the client closes.
    app.cleanup_ctx.extend([kernel_ctx, viewers.context])
    app.on_shutdown.append(viewers.shutdown)
    app.router.add_get("/", index)
    app.router.add_get("/run/{action}", relay)
    return app


async def index(request: web.Request) -> web.Response:
    """The page: a button that opens an ``EventSource`` on ``/run/crawl``."""
    return web.Response(text=PAGE, content_type="text/html")


def departed(request: web.BaseRequest) -> bool:
    """Whether the viewer has hung up (its connection is closed or closing)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def relay(request: web.Request) -> web.StreamResponse:
    """``GET /run/{action}``: start the action, relay its events until it ends, the viewer
    leaves (the invocation is then cancelled) or the server stops."""
    viewers = request.app[VIEWERS]
    if viewers.stopping or departed(request) or "Last-Event-ID" in request.headers:
        return web.Response(status=204)  # nobody to relay to, or a reconnect: start nothing
    response = web.StreamResponse(headers=SSE_HEADERS)
    with viewers.watch(request) as stop:
        relaying = asyncio.ensure_future(
            relay_invocation(request, response, request.match_info["action"])
        )
        try:
            await asyncio.wait((relaying, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this handler is cancelled (handler_cancellation=True)
            relaying.cancel()
            await asyncio.wait((relaying,))  # its cleanup: the invocation cancelled
    if relaying.cancelled():
        if stop.done() and stop.result() == SHUTDOWN and response.prepared:
            await send(response, sse({"reason": "server stopping"}, event="done"))
        return response
    relaying.result()  # a bug in the relay is raised (and logged by aiohttp)
    return response


async def relay_invocation(request: web.Request, response: web.StreamResponse, action: str) -> None:
    """Start ``action`` and write its events to ``response``; cancel the invocation if the
    relay ends before it does (the viewer left, the server stops, the stream failed)."""
    kernel = request.app[KERNEL]
    creates = request.app[VIEWERS].creates
    try:
        await response.prepare(request)
        invocation_id = await creates.start(kernel, "demo-app", action, {"pages": 3})
    except ConnectionResetError:
        return  # the viewer left
    except KernelError as exc:
        await send(response, sse({"line": f"error: {exc}"}) + sse({}, event="done"))
        return
    finished = False
    try:
        async with kernel.invocations.follow(invocation_id) as events:
            async for event in events:
                line = describe(event)
                if line is not None:
                    await response.write(sse({"line": line}, id=invocation_id).encode())
        finished = True
        await response.write(sse({}, event="done").encode())
    except ConnectionResetError:
        pass  # the viewer left between two events
    except KernelError as exc:  # the stream failed for good: say so, and give up on it
        await send(response, sse({"line": f"error: {exc}"}))
    finally:
        if not finished:  # shielded: sent even if the relay is cancelled again meanwhile
            await asyncio.shield(cancel(kernel, invocation_id))


async def send(response: web.StreamResponse, text: str) -> None:
    """Write ``text``, unless the viewer is gone."""
    with suppress(ConnectionResetError):
        await response.write(text.encode())


if __name__ == "__main__":
    from kernel_async.testing import KernelEmulator
    from kernel_async.testing.demo import install_demo_actions

    async def serve() -> None:
        emulator = KernelEmulator()
        install_demo_actions(emulator)
        async with emulator:
            app = make_app(api_key=emulator.api_key, base_url=emulator.url)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 8080).start()
            print("http://127.0.0.1:8080/  (Ctrl-C to stop)")
            try:
                await asyncio.Event().wait()
            finally:
                await runner.cleanup()

    asyncio.run(serve())
