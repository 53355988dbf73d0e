"""An aiohttp.web backend: one shared client, and live logs relayed to browsers as SSE.

The client is created once for the app (``cleanup_ctx``) and shared by every request: one
connection pool, closed when the app stops. ``GET /run/{action}`` starts an invocation and
relays its events to the browser as Server-Sent Events; when the browser goes away, leaving
the ``async with`` closes the upstream stream at once.

    python examples/aiohttp_relay.py        # then open http://127.0.0.1:8080/
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from aiohttp import web

from kernel_async import AsyncKernel, ErrorEvent, InvocationStateEvent, LogEvent

KERNEL: web.AppKey[AsyncKernel] = web.AppKey("kernel", AsyncKernel)

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


def make_app(
    kernel_factory: type[AsyncKernel] | None = None, **client_options: object
) -> web.Application:
    """The app. The client is built inside the app's lifetime, in its event loop."""
    app = web.Application()

    async def kernel_ctx(app: web.Application) -> AsyncIterator[None]:
        factory = kernel_factory or AsyncKernel
        async with factory(**client_options) as kernel:  # type: ignore[arg-type]
            app[KERNEL] = kernel
            yield

    app.cleanup_ctx.append(kernel_ctx)
    app.router.add_get("/", index)
    app.router.add_get("/run/{action}", relay)
    return app


async def index(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def relay(request: web.Request) -> web.StreamResponse:
    kernel = request.app[KERNEL]
    created = await kernel.invocations.create(
        "demo-app", request.match_info["action"], payload={"pages": 3}, async_=True
    )
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    async with kernel.invocations.follow(created.id) as events:
        async for event in events:
            match event:
                case LogEvent(message=message):
                    line = message
                case ErrorEvent(error=error):
                    line = f"error: {error.message}"
                case InvocationStateEvent(invocation=inv):
                    line = f"[{inv.status}]"
                case _:
                    continue
            await response.write(f"data: {json.dumps({'line': line})}\n\n".encode())
    await response.write(b"event: done\ndata: {}\n\n")
    return response


if __name__ == "__main__":
    import asyncio

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
