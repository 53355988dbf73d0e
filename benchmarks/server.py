"""A canned-response HTTP/1.1 server on a raw asyncio protocol.

It parses just enough HTTP to answer the five operations with prebuilt bytes, so what the
benchmark measures is the client, not the server. It runs in its own process, pinned to a
different core than the client where the machine has two.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from typing import Any

CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")

INVOCATION: dict[str, Any] = {
    "id": "rr33xuugxj9h0bkf1rdt2bet",
    "app_name": "my-app",
    "version": "1.0.0",
    "action_name": "analyze",
    "payload": '{"data":"example input"}',
    "output": '{"result":"success","data":"processed input"}',
    "started_at": "2025-06-20T12:00:00.123456789Z",
    "finished_at": "2025-06-20T12:00:05.123456789Z",
    "status": "succeeded",
    "status_reason": "Invocation completed successfully",
}
INVOKE_RESPONSE = {"id": "rr33xuugxj9h0bkf1rdt2bet", "action_name": "analyze", "status": "queued"}
STREAM_EVENTS = 10_000


def _response(status: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _event(n: int, *, burst: bool = False) -> bytes:
    """A log event: each one a microsecond after the last, or (``burst``) all at once."""
    if burst:
        ts = "2025-06-20T12:00:00.000000123Z"
    else:
        minute, second, micro = (n // 60_000_000) % 60, (n // 1_000_000) % 60, n % 1_000_000
        ts = f"2025-06-20T12:{minute:02d}:{second:02d}.{micro:06d}123Z"
    data = json.dumps({"event": "log", "timestamp": ts, "message": f"step {n}: processed item"})
    return b"data: " + data.encode() + b"\n\n"


def _state(status: str, ts: str) -> bytes:
    state = {
        "event": "invocation_state",
        "timestamp": ts,
        "invocation": {**INVOCATION, "status": status},
    }
    return b"data: " + json.dumps(state).encode() + b"\n\n"


_SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


def _stream(events: int, *, burst: bool = False) -> bytes:
    body = b"".join(_event(n, burst=burst) for n in range(events))
    return _SSE_HEAD + body + _state("succeeded", "2025-06-20T13:00:00.000000000Z")


def _life() -> bytes:
    """One invocation's whole stream, as a short action makes it: running, three logs, done."""
    return (
        _SSE_HEAD
        + _state("running", "2025-06-20T12:00:00.000000100Z")
        + b"".join(_event(n) for n in range(3))
        + _state("succeeded", "2025-06-20T12:00:01.000000100Z")
    )


RETRIEVE = _response("200 OK", json.dumps(INVOCATION).encode())


def _create(n: int) -> bytes:
    """A create's answer, with an id of its own as the service gives."""
    return _response(
        "202 Accepted", json.dumps({**INVOKE_RESPONSE, "id": f"life{n:020d}"}).encode()
    )


#: The app whose creates are answered finished at once (a synchronous create's answer, or
#: an asynchronous one that ended before the answer): nothing is left running.
DONE_APP = b'"done-app"'
#: A finished create's answer (the same for every create of `DONE_APP`).
CREATED_DONE = _response(
    "200 OK",
    json.dumps(
        {
            **INVOKE_RESPONSE,
            "status": "succeeded",
            "output": '{"result":"success"}',
        }
    ).encode(),
)


LIST_100 = _response(
    "200 OK",
    json.dumps([{**INVOCATION, "id": f"inv{i:021d}"} for i in range(100)]).encode(),
    {"X-Limit": "100", "X-Offset": "0", "X-Has-More": "false"},
)
STREAM = _stream(STREAM_EVENTS)
BURST = _stream(STREAM_EVENTS, burst=True)
LIFE = _life()
HOLD_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + _event(0)
NOT_FOUND = _response("404 Not Found", b'{"code":"not_found","message":"no route"}')


class CannedHTTP(asyncio.Protocol):
    creates = 0

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = CONTENT_LENGTH.search(self.buffer, 0, end + 2)
            length = int(match.group(1)) if match else 0
            if len(self.buffer) < end + 4 + length:
                return
            head = self.buffer[:end]
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, target = head.split(b" ", 2)[:2]
            if not self.respond(method, target.split(b"?", 1)[0], body):
                return

    def respond(self, method: bytes, path: bytes, body: bytes = b"") -> bool:
        transport = self.transport
        assert transport is not None
        if path.endswith(b"/events"):
            if path.startswith(b"/invocations/hold"):
                transport.write(HOLD_HEAD)  # one event, then held open
                return False
            if path.startswith(b"/invocations/life"):
                transport.write(LIFE)
            elif path.startswith(b"/invocations/burst"):
                transport.write(BURST)
            else:
                transport.write(STREAM)
            transport.close()
            return False
        if method == b"POST":
            CannedHTTP.creates += 1
            if DONE_APP in body:
                transport.write(CREATED_DONE)
            else:
                transport.write(_create(CannedHTTP.creates))
        elif path == b"/invocations":
            transport.write(LIST_100)
        elif path.startswith(b"/invocations/"):
            transport.write(RETRIEVE)
        else:
            transport.write(NOT_FOUND)
        return True


def serve(port_pipe: Any, core: int | None) -> None:
    """Process entry point: serve forever; send the port back through ``port_pipe``."""
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(CannedHTTP, "127.0.0.1", 0, backlog=4096)
        port_pipe.send(server.sockets[0].getsockname()[1])
        port_pipe.close()
        await server.serve_forever()

    asyncio.run(main())
