"""A small fake of the invocations API whose invocations the test finishes by hand: the
event stream stays open without a terminal state until then, so the client only learns
of an end the way the test lets it (a cancel's answer, a retrieve, the list)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .conftest import Handler, Server, ServerFactory, json_response


@dataclass
class FakeAPI:
    """Invocations created by POST run until `finish`; their status is what the server
    answers to GET, PATCH and the list."""

    server: Server | None = None
    status: dict[str, str] = field(default_factory=dict)
    cancels: list[str] = field(default_factory=list)
    create_delay: float = 0.0
    silent: bool = False  # streams never tell the end (a lagging event pipeline)
    hold_creates: asyncio.Event | None = None  # creates are answered once it is set
    hold_cancels: asyncio.Event | None = None  # cancels are answered once it is set
    created_once: asyncio.Event = field(default_factory=asyncio.Event)
    streams: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def finish(self, id: str, status: str = "succeeded") -> None:
        """The invocation ends on the server (the client is not told)."""
        self.status[id] = status

    def running(self) -> list[str]:
        return [id for id, status in self.status.items() if status == "running"]

    def wire(self, id: str) -> dict[str, Any]:
        return {
            "id": id,
            "app_name": "app",
            "version": "1",
            "action_name": "work",
            "started_at": "2025-06-20T12:00:00Z",
            "status": self.status[id],
        }

    async def create(self, request: web.Request) -> web.StreamResponse:
        if self.create_delay:
            await asyncio.sleep(self.create_delay)  # a slow service, not test ordering
        if self.hold_creates is not None:
            await self.hold_creates.wait()  # a client going away meanwhile creates nothing
        id = f"inv_{next(self._ids)}"
        self.status[id] = "running"
        self.created_once.set()
        return json_response(
            json.dumps({"id": id, "action_name": "work", "status": "running"}), 202
        )

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        return json_response(json.dumps(self.wire(request.match_info["id"])))

    async def update(self, request: web.Request) -> web.StreamResponse:
        id = request.match_info["id"]
        if self.hold_cancels is not None:
            await self.hold_cancels.wait()  # a client going away meanwhile cancels nothing
        if self.status[id] != "running":
            body = {"code": "bad_request", "message": f"Invocation {id} already finished"}
            return json_response(json.dumps(body), 400)
        self.cancels.append(id)
        self.status[id] = "failed"
        return json_response(json.dumps(self.wire(id)))

    async def list(self, request: web.Request) -> web.StreamResponse:
        wanted = request.query.get("status")
        items = [self.wire(id) for id, s in self.status.items() if wanted in (None, s)]
        return json_response(json.dumps(items))

    async def events(self, request: web.Request) -> web.StreamResponse:
        """A stream that says the invocation runs, then stays quiet until it ends."""
        id = request.match_info["id"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.streams += 1
        await response.write(self.state_event(id, 0))
        while self.silent or self.status[id] == "running":
            await asyncio.sleep(0.02)  # the server's own poll of its state
        await response.write(self.state_event(id, 1))
        return response

    def state_event(self, id: str, second: int) -> bytes:
        state = {
            "event": "invocation_state",
            "timestamp": f"2025-06-20T12:00:0{second}Z",
            "invocation": self.wire(id),
        }
        return f"data: {json.dumps(state)}\n\n".encode()

    def routes(self) -> Sequence[tuple[str, str, Handler]]:
        return [
            ("POST", "/invocations", self.create),
            ("GET", "/invocations", self.list),
            ("GET", "/invocations/{id}", self.retrieve),
            ("PATCH", "/invocations/{id}", self.update),
            ("GET", "/invocations/{id}/events", self.events),
        ]


async def start_fake_api(make_server: ServerFactory, **options: Any) -> FakeAPI:
    """A `FakeAPI` served by the ``make_server`` fixture."""
    api = FakeAPI(**options)
    api.server = await make_server([*api.routes()])
    return api


@contextlib.asynccontextmanager
async def serve(api: FakeAPI) -> AsyncIterator[str]:
    """Serve ``api`` on 127.0.0.1 (outside pytest fixtures); yields its URL."""
    app = web.Application()
    for method, path, handler in api.routes():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
