"""Transport and decoding against hostile servers and proxies: one regression test per case
of the hardening issue (8, 10-17; 9, pagination, is in test_pagination.py)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from kernel_async import (
    APIConnectionError,
    APIResponseValidationError,
    AsyncKernel,
    KernelError,
    LogEvent,
    NotFoundError,
    RedirectError,
    RetryPolicy,
)

from ._sse_server import frame, hold_open, log, start, state, ts
from .conftest import INVOCATION_JSON, ServerFactory, json_response

KEY = "sk-live-0123456789abcdef"
BAD_UTF8 = b'{"id":"inv_1","app_name":"\xff\xfe","version":"1","action_name":"a",' + (
    b'"started_at":"2025-06-20T12:00:00Z","status":"running"}'
)


# --- 8. invalid UTF-8 inside a JSON string: a typed error, nothing before it lost --------------


async def test_invalid_utf8_in_bodies_is_a_validation_error(make_server: ServerFactory) -> None:
    async def body(_: web.Request) -> web.Response:
        return json_response(BAD_UTF8)

    async def created(_: web.Request) -> web.Response:
        return json_response(b'{"id":"inv_1","action_name":"\xff","status":"queued"}', 202)

    async def listed(_: web.Request) -> web.Response:
        return json_response(b"[" + BAD_UTF8 + b"]")

    async def error(_: web.Request) -> web.Response:
        return json_response(b'{"code":"not_found","message":"no \xff such"}', 404)

    server = await make_server(
        [
            ("GET", "/invocations/{id}", body),
            ("POST", "/invocations", created),
            ("GET", "/invocations", listed),
            ("GET", "/invocations/{id}/events", error),
        ]
    )
    async with server.client() as kernel:
        for call in (
            kernel.invocations.retrieve("inv_1"),
            kernel.invocations.create("app", "a", async_=True),
            kernel.invocations.list(),
        ):
            with pytest.raises(APIResponseValidationError, match="not valid UTF-8") as caught:
                await call
            assert b"\xff" in caught.value.body
        with pytest.raises(NotFoundError) as not_found:
            async for _ in kernel.invocations.follow("inv_1"):
                pass
        assert "HTTP 404" in str(not_found.value)  # readable, from a body it could not decode
        assert kernel.limit_stats().apps["app"].running == 0  # the slot was given back


async def test_invalid_utf8_in_a_stream_event_delivers_what_came_before(
    make_server: ServerFactory,
) -> None:
    async def script(request: web.Request, response: web.StreamResponse, index: int) -> None:
        bad = b'data: {"event":"log","timestamp":"2025-06-20T12:00:02Z","message":"\xff"}\n\n'
        await response.write(frame(log("before", ts(1))) + bad)
        await hold_open(response)

    _, kernel = await start(make_server, script)
    got: list[Any] = []
    async with kernel:
        with pytest.raises(APIResponseValidationError, match="not valid UTF-8"):
            async for event in kernel.invocations.follow("inv_1"):
                got.append(event)
    assert [e.message for e in got if isinstance(e, LogEvent)] == ["before"]


# --- 10. the key is not reachable from anything we raise ----------------------------------------


def reachable(obj: Any, seen: set[int] | None = None, depth: int = 0) -> Iterator[Any]:
    """Everything reachable from an exception: cause, context, args, attributes, and the
    contents of containers and objects among them."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 8:
        return
    seen.add(id(obj))
    yield obj
    children: list[Any] = []
    if isinstance(obj, BaseException):
        children += [obj.__cause__, obj.__context__, *obj.args]
    if isinstance(obj, (list, tuple, set, frozenset)):
        children += list(obj)
    elif isinstance(obj, dict):
        children += [*obj.keys(), *obj.values()]
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        children += list(vars(obj).values())
    for slot in getattr(type(obj), "__slots__", ()):
        children.append(getattr(obj, slot, None))
    for child in children:
        if child is not None:
            yield from reachable(child, seen, depth + 1)


def assert_no_key(exc: BaseException) -> None:
    for obj in reachable(exc):
        try:
            text = repr(obj) + str(obj)
        except Exception:
            continue
        assert KEY not in text, f"the key is reachable through a {type(obj).__name__}"


async def raw_server(answer: bytes) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2X0 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\x01: x\r\nContent-Length: 0\r\n\r\n",
        b"garbage\r\n\r\n",
    ],
    ids=["status line", "header", "garbage"],
)
async def test_malformed_answers_leave_no_key_in_the_exception(answer: bytes) -> None:
    server, url = await raw_server(answer)
    try:
        async with AsyncKernel(KEY, base_url=url, max_retries=0) as kernel:
            with pytest.raises(APIConnectionError) as caught:
                await kernel.invocations.retrieve("inv_1")
        assert caught.value.__cause__ is not None  # the cause is kept, for debugging...
        assert_no_key(caught.value)  # ...but not the key
    finally:
        server.close()


async def test_a_redirect_loop_leaves_no_key_in_the_exception(make_server: ServerFactory) -> None:
    async def again(_: web.Request) -> web.Response:
        raise web.HTTPFound("/invocations/inv_1")

    server = await make_server([("GET", "/invocations/{id}", again)])
    async with AsyncKernel(KEY, base_url=server.url, max_retries=0) as kernel:
        with pytest.raises(RedirectError, match="too many times") as caught:
            await kernel.invocations.retrieve("inv_1")
    assert isinstance(caught.value.__cause__, aiohttp.TooManyRedirects)
    assert_no_key(caught.value)
    assert server.requests[0].headers["Authorization"] == f"Bearer {KEY}"  # it was sent


# --- 11. aclose() while a call is in flight ----------------------------------------------------


async def test_aclose_while_a_call_is_in_flight_is_a_typed_error(
    make_server: ServerFactory,
) -> None:
    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return json_response(INVOCATION_JSON)

    server = await make_server([("GET", "/invocations/{id}", slow)])
    for delay in (0.0, 0.05):
        kernel = server.client()
        call = asyncio.create_task(kernel.invocations.retrieve("inv_1"))
        await asyncio.sleep(delay)
        await kernel.aclose()
        with pytest.raises(APIConnectionError, match="client was closed"):
            await call


# --- 12, 13. redirects: typed errors, no cross-origin create, no downgrade ----------------------


@pytest.mark.parametrize(
    ("location", "match"),
    [("ftp://example.com/x", "non-HTTP"), ("http://[::1", "invalid")],
)
async def test_redirects_to_odd_locations_are_redirect_errors(
    make_server: ServerFactory, location: str, match: str
) -> None:
    async def redirect(_: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": location})

    server = await make_server([("GET", "/invocations/{id}", redirect)])
    async with server.client() as kernel:
        with pytest.raises(RedirectError, match=match) as caught:
            await kernel.invocations.retrieve("inv_1")
    assert caught.value.location


@pytest.mark.parametrize("status", [307, 308, 303])
async def test_a_create_is_not_redirected_to_another_origin(
    make_server: ServerFactory, status: int
) -> None:
    other = await make_server(
        [
            ("POST", "/invocations", _created),
            ("GET", "/invocations", _created),
        ]
    )

    async def redirect(_: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": other.url + "/invocations"})

    home = await make_server([("POST", "/invocations", redirect)])
    async with home.client() as kernel:
        with pytest.raises(RedirectError, match="another origin"):
            await kernel.invocations.create("app", "a", async_=True)
        assert kernel.limit_stats().apps["app"].running == 0
    assert other.requests == []  # the body never went there, nor was its answer taken


async def _created(_: web.Request) -> web.Response:
    return json_response('{"id":"forged","action_name":"a","status":"queued"}', 202)


async def test_a_get_may_follow_to_another_origin_without_the_key(
    make_server: ServerFactory,
) -> None:
    other = await make_server([("GET", "/x", _ok)])

    async def redirect(_: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": other.url + "/x"})

    home = await make_server([("GET", "/invocations/{id}", redirect)])
    async with home.client(api_key=KEY) as kernel:
        inv = await kernel.invocations.retrieve("inv_1")
    assert inv.id == "inv_1"
    assert "Authorization" not in other.requests[0].headers


async def _ok(_: web.Request) -> web.Response:
    return json_response(INVOCATION_JSON)


@pytest.fixture
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1, and a client context trusting it."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def test_an_https_to_http_downgrade_is_refused(
    make_server: ServerFactory, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    plain = await make_server([("GET", "/invocations/{id}", _ok)])

    async def redirect(_: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": plain.url + "/invocations/inv_1"})

    app = web.Application()
    app.router.add_get("/invocations/{id}", redirect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls[0])
    await site.start()
    port = runner.addresses[0][1]
    try:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls[1]))
        async with (
            session,
            AsyncKernel(KEY, base_url=f"https://127.0.0.1:{port}", session=session) as kernel,
        ):
            with pytest.raises(RedirectError, match="downgrade"):
                await kernel.invocations.retrieve("inv_1")
    finally:
        await runner.cleanup()
    assert plain.requests == []


# --- 14. media types are case-insensitive ------------------------------------------------------


async def test_content_types_are_compared_case_insensitively(make_server: ServerFactory) -> None:
    async def retrieve(_: web.Request) -> web.Response:
        return web.Response(body=INVOCATION_JSON, headers={"Content-Type": "Application/JSON"})

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "TEXT/EVENT-STREAM; Charset=UTF-8"})
        await response.prepare(request)
        await response.write(frame(state("succeeded", ts(1))))
        return response

    server = await make_server(
        [("GET", "/invocations/{id}", retrieve), ("GET", "/invocations/{id}/events", events)]
    )
    async with server.client() as kernel:
        assert (await kernel.invocations.retrieve("inv_1")).id == "inv_1"
        got = [e async for e in kernel.invocations.follow("inv_1")]
    assert len(got) == 1


# --- 15. no forged log lines -------------------------------------------------------------------


async def test_ids_with_line_breaks_cannot_forge_log_lines(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def flaky(_: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return json_response('{"code":"x","message":"busy"}', 503 if calls == 1 else 404)

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(frame(log("one", ts(1))))
        return response

    server = await make_server(
        [("GET", "/invocations/{id}", flaky), ("GET", "/invocations/{id}/events", cut)]
    )
    forged = "inv\r\nERROR kernel_async: forged line"
    policy = RetryPolicy(max_retries=1, initial_delay=0.01, max_delay=0.01)
    with caplog.at_level(logging.DEBUG, logger="kernel_async"):
        async with server.client(retry=policy) as kernel:
            with pytest.raises(NotFoundError):
                await kernel.invocations.retrieve(forged)
            with pytest.raises(APIConnectionError):
                async for _ in kernel.invocations.follow(forged):
                    pass
    messages = [record.getMessage() for record in caplog.records]
    assert any("Retrying" in m for m in messages)
    assert any("resuming" in m for m in messages)
    assert all("\r" not in m and "\n" not in m for m in messages), messages


# --- 16. a key that cannot be a header value is refused at once ---------------------------------


@pytest.mark.parametrize("key", [KEY + "\n", KEY + " ", " " + KEY, "sk\x00x", "sk-ké"])
def test_a_key_with_whitespace_or_control_characters_is_refused_at_construction(key: str) -> None:
    with pytest.raises(KernelError, match="cannot contain") as caught:
        AsyncKernel(key)
    assert KEY not in str(caught.value)


# --- 17. open streams never starve calls -------------------------------------------------------


async def test_open_streams_never_starve_calls(make_server: ServerFactory) -> None:
    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(frame(log("open", ts(1))))
        await hold_open(response)
        return response

    server = await make_server(
        [
            ("GET", "/invocations/{id}/events", events),
            ("POST", "/invocations", _created),
        ]
    )
    async with server.client() as kernel:  # the default connection_limit: 100
        streams = [kernel.invocations.follow(f"inv_{i}", idle_timeout=1) for i in range(101)]
        for stream in streams:  # all 101 connect and get their first event
            await asyncio.wait_for(stream.__anext__(), 5)
        created = await kernel.invocations.create("app", "a", async_=True, timeout=2)
        assert created.id == "forged"
        for stream in streams:
            await stream.aclose()
    assert sum(1 for r in server.requests if r.method == "POST") == 1
