"""The same relay as ``aiohttp_relay.py`` in Starlette (FastAPI is Starlette underneath).

Starlette is a development dependency of this repository only; kernel_async itself does not
need it. The client lives in the app's lifespan, so it is created in the server's event
loop and closed on shutdown; ``StreamingResponse`` relays the events, and when the browser
disconnects Starlette stops the generator, which closes the upstream stream.

    pip install starlette uvicorn && uvicorn examples.starlette_relay:app
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from kernel_async import AsyncKernel, InvocationStateEvent, LogEvent


def make_app(**client_options: Any) -> Starlette:
    """The app; ``client_options`` go to AsyncKernel (defaults: the KERNEL_* env vars)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncKernel(**client_options) as kernel:
            app.state.kernel = kernel
            yield

    async def relay(request: Request) -> StreamingResponse:
        kernel: AsyncKernel = request.app.state.kernel
        created = await kernel.invocations.create(
            "demo-app", request.path_params["action"], payload={"pages": 3}, async_=True
        )

        async def events() -> AsyncIterator[str]:
            async with kernel.invocations.follow(created.id) as stream:
                async for event in stream:
                    if isinstance(event, LogEvent):
                        line = event.message
                    elif isinstance(event, InvocationStateEvent):
                        line = f"[{event.invocation.status}]"
                    else:
                        continue
                    yield f"data: {json.dumps({'line': line})}\n\n"
            yield "event: done\ndata: {}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/run/{action}", relay)], lifespan=lifespan)


if __name__ == "__main__":  # pragma: no cover
    print(__doc__)
