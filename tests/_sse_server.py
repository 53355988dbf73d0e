"""A scriptable SSE server for stream tests, and the events it sends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from kernel_async import AsyncKernel, RetryPolicy

from .conftest import ServerFactory

FAST = RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.02)


def state(status: str, ts: str) -> dict[str, Any]:
    return {
        "event": "invocation_state",
        "timestamp": ts,
        "invocation": {
            "id": "inv_1",
            "app_name": "app",
            "version": "1",
            "action_name": "a",
            "started_at": "2025-06-20T12:00:00Z",
            "status": status,
        },
    }


def log(message: str, ts: str) -> dict[str, Any]:
    return {"event": "log", "timestamp": ts, "message": message}


def ts(n: int, ns: int = 0) -> str:
    """The n-th second plus ns nanoseconds."""
    return f"2025-06-20T12:00:{n:02d}.{ns:09d}Z"


def frame(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


Script = Callable[[web.Request, web.StreamResponse, int], Awaitable[None]]


class SSEServer:
    """Runs a script per connection; remembers each connection's query and whether the
    client hung up."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections: list[dict[str, str]] = []
        self.client_left = asyncio.Event()

    async def handler(self, request: web.Request) -> web.StreamResponse:
        index = len(self.connections)
        self.connections.append(dict(request.query))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await self.script(request, response, index)
        except (asyncio.CancelledError, ConnectionResetError):
            self.client_left.set()
            raise
        return response


async def start(make_server: ServerFactory, script: Script) -> tuple[SSEServer, AsyncKernel]:
    sse = SSEServer(script)
    server = await make_server([("GET", "/invocations/{id}/events", sse.handler)])
    return sse, server.client(retry=FAST)


async def hold_open(response: web.StreamResponse) -> None:
    while True:  # heartbeats forever: only the client can end this
        await response.write(b": keep-alive\n\n")
        await asyncio.sleep(0.02)
