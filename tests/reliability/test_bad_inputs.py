"""The bad-input catalogue: each a typed error with a clear message, nothing lost, no hang.

(Invalid arguments, HTML 502s, empty 500s, truncated and mistyped 200s, and invalid SSE JSON
are covered one by one in tests/test_invocations.py, test_errors.py and test_streaming.py.)
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from kernel_async import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    InvocationStateEvent,
    LogEvent,
    RateLimitError,
    RetryPolicy,
)

from ..conftest import INVOCATION_JSON, ServerFactory, json_response

FAST = RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.02)


def sse_app(payload: bytes):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(payload)
        return response

    return handler


async def test_an_over_long_sse_line_is_an_error_not_unbounded_memory(
    make_server: ServerFactory,
) -> None:
    good = b'data: {"event":"log","timestamp":"2025-06-20T12:00:00Z","message":"ok"}\n\n'
    huge = b"data: " + b"x" * (17 * 1024 * 1024)  # past the 16 MiB limit, no newline
    server = await make_server([("GET", "/invocations/{id}/events", sse_app(good + huge))])
    got = []
    async with server.client(retry=FAST) as kernel:
        with pytest.raises(APIResponseValidationError, match="longer than"):
            async for event in kernel.invocations.follow("x"):
                got.append(event)
    assert len(got) == 1


async def test_binary_garbage_in_a_stream_is_a_validation_error(make_server: ServerFactory) -> None:
    garbage = b"data: \xff\xfe\x00\x81garbage\n\n"
    server = await make_server([("GET", "/invocations/{id}/events", sse_app(garbage))])
    async with server.client(retry=FAST) as kernel:
        with pytest.raises(APIResponseValidationError) as caught:
            async for _ in kernel.invocations.follow("x"):
                pass
    assert caught.value.body == b"\xff\xfe\x00\x81garbage"


@pytest.mark.parametrize(
    ("retry_after", "slept", "error"),
    [
        ("-5", True, None),  # invalid: ignored, backoff used, then success
        ("Mon, 99 Foo 2025 99:99:99 GMT", True, None),  # malformed date: same
        ("999999999", False, RateLimitError),  # huge: not slept, raised at once
    ],
)
async def test_odd_retry_after_values(
    make_server: ServerFactory,
    sleeps: list[float],
    retry_after: str,
    slept: bool,
    error: type[Exception] | None,
) -> None:
    calls = 0

    async def handler(_: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return json_response(
                '{"code":"rate_limited","message":"slow down"}',
                429,
                headers={"Retry-After": retry_after},
            )
        return json_response(INVOCATION_JSON)

    server = await make_server([("GET", "/invocations/{id}", handler)])
    async with server.client() as kernel:
        if error is None:
            await kernel.invocations.retrieve("inv_1")
        else:
            with pytest.raises(error) as caught:
                await kernel.invocations.retrieve("inv_1")
            assert getattr(caught.value, "retry_after", None) == 999999999.0
    if slept:
        assert len(sleeps) == 1
        assert 0 <= sleeps[0] <= 0.5  # the backoff, not the bogus value
    else:
        assert sleeps == []


async def test_a_server_that_never_answers_times_out(make_server: ServerFactory) -> None:
    async def never(_: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    server = await make_server([("GET", "/invocations/{id}", never)])
    async with server.client(timeout=0.3, retry=FAST) as kernel:
        with pytest.raises(APITimeoutError):
            await kernel.invocations.retrieve("x")


async def test_a_body_cut_short_is_retried_then_a_connection_error(
    make_server: ServerFactory, sleeps: list[float]
) -> None:
    async def truncated(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Content-Length": "1000"}
        )
        await response.prepare(request)
        await response.write(INVOCATION_JSON[:50].encode())
        assert request.transport is not None
        request.transport.close()
        return response

    server = await make_server([("GET", "/invocations/{id}", truncated)])
    async with server.client() as kernel:
        with pytest.raises(APIConnectionError):
            await kernel.invocations.retrieve("x")
    assert len(server.requests) == 3  # the first try and two retries, no more


async def test_an_error_body_with_extra_fields_still_decodes(make_server: ServerFactory) -> None:
    async def handler(_: web.Request) -> web.Response:
        body = '{"code":"bad_request","message":"no","trace_id":"t1","details":[{"x":1}]}'
        return json_response(body, 400)

    server = await make_server([("GET", "/invocations/{id}", handler)])
    async with server.client() as kernel:
        with pytest.raises(Exception) as caught:
            await kernel.invocations.retrieve("x")
    assert str(caught.value).startswith("400 bad_request: no")


async def test_events_and_state_survive_mixed_line_endings_and_comments(
    make_server: ServerFactory,
) -> None:
    stream = (
        b"\xef\xbb\xbf: hello\r\n"
        b'data: {"event":"log","timestamp":"2025-06-20T12:00:00Z",\r\n'
        b'data: "message":"two lines of data"}\r\r'
        b'data:{"event":"invocation_state","timestamp":"2025-06-20T12:00:01Z","invocation":'
        b'{"id":"x","app_name":"a","version":"1","action_name":"b",'
        b'"started_at":"2025-06-20T12:00:00Z","status":"succeeded"}}\n\n'
    )
    server = await make_server([("GET", "/invocations/{id}/events", sse_app(stream))])
    async with server.client(retry=FAST) as kernel:
        events = [e async for e in kernel.invocations.follow("x")]
    assert isinstance(events[0], LogEvent)
    assert events[0].message == "two lines of data"
    assert isinstance(events[1], InvocationStateEvent)
