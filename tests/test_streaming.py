"""follow(): typed events, the end on a terminal state, resume without duplicates, and
closing the connection the moment the consumer leaves."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import pytest
from aiohttp import web

from kernel_async import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    AsyncKernel,
    ErrorEvent,
    InvocationStateEvent,
    LogEvent,
    NotFoundError,
    SSEHeartbeatEvent,
    UnknownEvent,
)
from kernel_async.testing import KernelEmulator

from ._sse_server import FAST, frame, hold_open, log, start, state, ts
from .conftest import ServerFactory, json_response


async def test_logs_then_terminal_state_end_the_stream_even_if_the_server_stays_open(
    make_server: ServerFactory,
) -> None:
    async def script(_: web.Request, response: web.StreamResponse, __: int) -> None:
        await response.write(frame(state("running", ts(1))) + frame(log("hello", ts(2))))
        await response.write(frame(state("succeeded", ts(3))))
        await hold_open(response)

    sse, kernel = await start(make_server, script)
    async with kernel:
        events = [e async for e in kernel.invocations.follow("inv_1")]
    assert [type(e) for e in events] == [InvocationStateEvent, LogEvent, InvocationStateEvent]
    assert isinstance(events[1], LogEvent)
    assert events[1].message == "hello"
    assert events[1].event == "log"
    last = events[2]
    assert isinstance(last, InvocationStateEvent)
    assert last.invocation.status == "succeeded"
    await asyncio.wait_for(sse.client_left.wait(), 5)


async def test_heartbeats_are_hidden_unless_asked_for_and_unknown_events_are_yielded(
    make_server: ServerFactory,
) -> None:
    async def script(_: web.Request, response: web.StreamResponse, __: int) -> None:
        await response.write(
            frame({"event": "sse_heartbeat", "timestamp": ts(1)})
            + frame({"event": "browser_opened", "timestamp": ts(2), "url": "x"})
            + frame({"event": "error", "timestamp": ts(3), "error": {"code": "c", "message": "m"}})
            + frame(state("failed", ts(4)))
        )

    _, kernel = await start(make_server, script)
    async with kernel:
        quiet = [e async for e in kernel.invocations.follow("inv_1")]
        loud = [e async for e in kernel.invocations.follow("inv_1", heartbeats=True)]
    assert [type(e) for e in quiet] == [UnknownEvent, ErrorEvent, InvocationStateEvent]
    unknown = quiet[0]
    assert isinstance(unknown, UnknownEvent)
    assert unknown.event == "browser_opened"
    assert json.loads(unknown.data)["url"] == "x"
    error = quiet[1]
    assert isinstance(error, ErrorEvent)
    assert error.error.code == "c"
    assert isinstance(loud[0], SSEHeartbeatEvent)
    assert len(loud) == 4


async def test_a_cut_mid_event_resumes_with_since_and_no_gap_or_duplicate(
    make_server: ServerFactory,
) -> None:
    # Two events share a microsecond (the API has nanoseconds; datetimes do not).
    events = [
        state("running", ts(1)),
        log("one", ts(2, 1_200)),
        log("two", ts(2, 1_400)),
        log("three", ts(3)),
        state("succeeded", ts(4)),
    ]

    async def script(request: web.Request, response: web.StreamResponse, index: int) -> None:
        since = request.query.get("since")
        replay = [e for e in events if since is None or e["timestamp"] >= since]
        if index == 0:
            first = frame(replay[0]) + frame(replay[1])
            half = frame(replay[2])[:20]
            await response.write(first + half)
            assert request.transport is not None
            request.transport.abort()
            return
        await response.write(b"".join(frame(e) for e in replay))

    sse, kernel = await start(make_server, script)
    async with kernel:
        got = [e async for e in kernel.invocations.follow("inv_1")]
    assert len(sse.connections) == 2
    # since = the newest delivered timestamp (µs) minus the replay window: everything
    # delivered within it is replayed, and recognised
    assert sse.connections[1]["since"] == "2025-06-20T11:59:52.000001Z"
    messages = [e.message for e in got if isinstance(e, LogEvent)]
    assert messages == ["one", "two", "three"]
    assert len(got) == 5


async def test_silence_past_idle_timeout_is_resumed(make_server: ServerFactory) -> None:
    async def script(_: web.Request, response: web.StreamResponse, index: int) -> None:
        if index == 0:
            await response.write(frame(log("before", ts(1))))
            await asyncio.sleep(30)  # the client must give up on this connection
        await response.write(frame(log("before", ts(1))) + frame(log("after", ts(2))))
        await response.write(frame(state("succeeded", ts(3))))

    sse, kernel = await start(make_server, script)
    async with kernel:
        got = [e async for e in kernel.invocations.follow("inv_1", idle_timeout=0.3)]
    assert [e.message for e in got if isinstance(e, LogEvent)] == ["before", "after"]
    assert len(sse.connections) == 2


async def test_heartbeats_keep_an_idle_stream_alive(make_server: ServerFactory) -> None:
    async def script(_: web.Request, response: web.StreamResponse, __: int) -> None:
        for i in range(6):
            await response.write(frame({"event": "sse_heartbeat", "timestamp": ts(i)}))
            await asyncio.sleep(0.1)
        await response.write(frame(state("succeeded", ts(9))))

    sse, kernel = await start(make_server, script)
    async with kernel:
        got = [e async for e in kernel.invocations.follow("inv_1", idle_timeout=0.3)]
    assert len(got) == 1
    assert len(sse.connections) == 1


async def test_resuming_gives_up_after_the_policy_and_raises_connection_error(
    make_server: ServerFactory,
) -> None:
    async def script(request: web.Request, response: web.StreamResponse, __: int) -> None:
        assert request.transport is not None
        request.transport.abort()

    sse, kernel = await start(make_server, script)
    async with kernel:
        with pytest.raises(APIConnectionError, match="could not be resumed"):
            async for _ in kernel.invocations.follow("inv_1"):
                pass
    assert len(sse.connections) == 1 + FAST.max_retries


async def test_http_errors_before_the_stream_are_typed(make_server: ServerFactory) -> None:
    async def missing(_: web.Request) -> web.Response:
        return json_response('{"code":"not_found","message":"no such invocation"}', 404)

    server = await make_server([("GET", "/invocations/{id}/events", missing)])
    async with server.client(retry=FAST) as kernel:
        with pytest.raises(NotFoundError) as caught:
            async with kernel.invocations.follow("nope"):
                pass
    assert caught.value.code == "not_found"
    assert caught.value.message == "no such invocation"
    assert len(server.requests) == 1


async def test_a_503_before_the_stream_is_retried(make_server: ServerFactory) -> None:
    calls = 0

    async def flaky(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return json_response('{"code":"unavailable","message":"later"}', 503)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(frame(state("succeeded", ts(1))))
        return response

    server = await make_server([("GET", "/invocations/{id}/events", flaky)])
    async with server.client(retry=FAST) as kernel:
        got = [e async for e in kernel.invocations.follow("inv_1")]
    assert len(got) == 1
    assert calls == 2


async def test_invalid_json_data_raises_with_the_raw_data(make_server: ServerFactory) -> None:
    async def script(_: web.Request, response: web.StreamResponse, __: int) -> None:
        await response.write(frame(log("ok", ts(1))) + b"data: {not json\n\n")
        await hold_open(response)

    sse, kernel = await start(make_server, script)
    async with kernel:
        got: list[Any] = []
        with pytest.raises(APIResponseValidationError) as caught:
            async for event in kernel.invocations.follow("inv_1"):
                got.append(event)
    assert caught.value.body == b"{not json"
    assert len(got) == 1  # what came before the bad event was delivered
    await asyncio.wait_for(sse.client_left.wait(), 5)


async def test_a_known_event_with_a_bad_shape_is_a_validation_error(
    make_server: ServerFactory,
) -> None:
    async def script(_: web.Request, response: web.StreamResponse, __: int) -> None:
        await response.write(b'data: {"event":"log","timestamp":"yesterday"}\n\n')

    _, kernel = await start(make_server, script)
    async with kernel:
        with pytest.raises(APIResponseValidationError, match="schema"):
            async for _ in kernel.invocations.follow("inv_1"):
                pass


async def test_the_wrong_content_type_is_an_error(make_server: ServerFactory) -> None:
    async def not_sse(_: web.Request) -> web.Response:
        return json_response('{"id": "x"}')

    server = await make_server([("GET", "/invocations/{id}/events", not_sse)])
    async with server.client(retry=FAST) as kernel:
        with pytest.raises(APIResponseValidationError, match="event stream"):
            async for _ in kernel.invocations.follow("inv_1"):
                pass


async def _first_event_then_stay(_: web.Request, response: web.StreamResponse, __: int) -> None:
    await response.write(frame(log("first", ts(1))))
    await hold_open(response)


async def test_break_inside_async_with_closes_the_connection_at_once(
    make_server: ServerFactory,
) -> None:
    sse, kernel = await start(make_server, _first_event_then_stay)
    async with kernel:
        async with kernel.invocations.follow("inv_1") as events:
            async for _ in events:
                break
        await asyncio.wait_for(sse.client_left.wait(), 5)


async def test_break_from_a_plain_async_for_closes_the_connection(
    make_server: ServerFactory,
) -> None:
    sse, kernel = await start(make_server, _first_event_then_stay)
    async with kernel:
        async for _ in kernel.invocations.follow("inv_1"):
            break
        gc.collect()  # CPython already dropped it; this makes the test honest elsewhere
        await asyncio.wait_for(sse.client_left.wait(), 5)


async def test_cancelling_the_consumer_closes_the_connection(make_server: ServerFactory) -> None:
    sse, kernel = await start(make_server, _first_event_then_stay)
    got_one = asyncio.Event()

    async def consume() -> None:
        stream = kernel.invocations.follow("inv_1")
        async for _ in stream:
            got_one.set()

    async with kernel:
        task = asyncio.create_task(consume())
        await got_one.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(sse.client_left.wait(), 5)


# --- against the emulator ----------------------------------------------------------------------


async def test_follow_the_emulator_through_cuts(
    kernel_emulator: KernelEmulator, kernel_client: AsyncKernel
) -> None:
    @kernel_emulator.action("app", "chatty")
    async def chatty(ctx: Any, payload: Any) -> Any:
        for i in range(20):
            ctx.log(f"line {i}")
            await asyncio.sleep(0)
        return "done"

    kernel_emulator.faults.cut_stream(after_events=3, times=2)
    created = await kernel_client.invocations.create("app", "chatty", async_=True)
    events = [e async for e in kernel_client.invocations.follow(created.id)]
    lines = [e.message for e in events if isinstance(e, LogEvent)]
    assert lines == kernel_emulator.log_lines(created.id) == [f"line {i}" for i in range(20)]
    assert kernel_emulator.faults.stats.cuts == 2
    final = events[-1]
    assert isinstance(final, InvocationStateEvent)
    assert final.invocation.output_as() == "done"


async def test_wait_and_run_return_the_final_invocation(
    kernel_emulator: KernelEmulator, kernel_client: AsyncKernel
) -> None:
    kernel_emulator.add_action("app", "sum", lambda ctx, p: sum(p))
    inv = await kernel_client.invocations.run("app", "sum", payload=[1, 2, 3])
    assert inv.status == "succeeded"
    assert inv.output_as(int) == 6
    again = await kernel_client.invocations.wait(inv.id)
    assert again.status == "succeeded"


async def test_wait_timeout_leaves_the_invocation_running_unless_asked(
    kernel_emulator: KernelEmulator, kernel_client: AsyncKernel
) -> None:
    @kernel_emulator.action("app", "slow")
    async def slow(ctx: Any, payload: Any) -> None:
        await asyncio.sleep(30)

    created = await kernel_client.invocations.create("app", "slow", async_=True)
    with pytest.raises(APITimeoutError, match="still running"):
        await kernel_client.invocations.wait(created.id, timeout=0.2)
    assert (await kernel_client.invocations.retrieve(created.id)).status == "running"

    with pytest.raises(APITimeoutError, match="cancelled"):
        await kernel_client.invocations.run("app", "slow", timeout=0.2, cancel_on_timeout=True)
    newest = await kernel_client.invocations.list(limit=1)
    assert newest.items[0].status == "failed"
    assert newest.items[0].status_reason == "Invocation cancelled"


async def test_wait_falls_back_to_retrieve_when_the_stream_cannot_be_resumed(
    kernel_emulator: KernelEmulator, kernel_client: AsyncKernel
) -> None:
    kernel_emulator.add_action("app", "quick", lambda ctx, p: 1)
    created = await kernel_client.invocations.create("app", "quick")
    kernel_emulator.faults.cut_stream(after_events=0, times=10)
    inv = await kernel_client.invocations.wait(created.id)
    assert inv.status == "succeeded"
