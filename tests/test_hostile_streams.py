"""Streams against servers that misbehave the way real servers, proxies and clock-skewed
hosts do: one regression test per case of the hardening issue (1-7)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from aiohttp import web

from kernel_async import (
    APIConnectionError,
    EventStream,
    InvocationStateEvent,
    LogEvent,
    SSEHeartbeatEvent,
    UnknownEvent,
    _replay,
)

from ._sse_server import FAST, frame, hold_open, log, start, state, ts
from .conftest import ServerFactory, json_response


def heartbeat(when: str) -> dict[str, Any]:
    return {"event": "sse_heartbeat", "timestamp": when}


def custom(n: int, when: str | None) -> dict[str, Any]:
    event: dict[str, Any] = {"event": "custom_progress", "step": n}
    if when is not None:
        event["timestamp"] = when
    return event


async def collect(stream: EventStream) -> list[Any]:
    return [event async for event in stream]


# --- 1. attempts that bring no new event count against the policy ------------------------------


@pytest.mark.parametrize("mode", ["last", "everything", "heartbeat"])
async def test_reconnects_that_bring_nothing_new_give_up(
    make_server: ServerFactory, mode: str
) -> None:
    events = [state("running", ts(1)), log("one", ts(2)), log("two", ts(3))]

    async def script(request: web.Request, response: web.StreamResponse, index: int) -> None:
        if index == 0:
            sent = events
        elif mode == "last":  # what a correct server does with since just before it
            sent = events[-1:]
        elif mode == "everything":
            sent = events
        else:
            sent = [heartbeat(ts(10 + index))]
        await response.write(b"".join(frame(e) for e in sent))

    sse, kernel = await start(make_server, script)
    async with kernel:
        delivered: list[Any] = []

        async def follow() -> None:
            async for event in kernel.invocations.follow("inv_1", heartbeats=True):
                delivered.append(event)

        with pytest.raises(APIConnectionError, match="brought no new event"):
            await asyncio.wait_for(follow(), 10)
    assert len(sse.connections) == 1 + FAST.max_retries  # not for ever
    logs = [e.message for e in delivered if isinstance(e, LogEvent)]
    assert logs == ["one", "two"]  # and nothing twice


async def test_wait_gives_up_too(make_server: ServerFactory) -> None:
    async def script(request: web.Request, response: web.StreamResponse, index: int) -> None:
        await response.write(frame(heartbeat(ts(index))))

    async def retrieve(_: web.Request) -> web.Response:
        return json_response(json.dumps(state("running", ts(0))["invocation"]))

    from ._sse_server import SSEServer

    sse = SSEServer(script)
    server = await make_server(
        [("GET", "/invocations/{id}/events", sse.handler), ("GET", "/invocations/{id}", retrieve)]
    )
    async with server.client(retry=FAST) as kernel:
        with pytest.raises(APIConnectionError):
            await asyncio.wait_for(kernel.invocations.wait("inv_1"), 10)
    assert len(sse.connections) == 1 + FAST.max_retries


async def test_a_connection_healthy_for_idle_timeout_is_not_a_failed_attempt(
    make_server: ServerFactory,
) -> None:
    """A silent action behind a proxy that caps connection lifetimes: every connection
    brings heartbeats only, for longer than idle_timeout, and is cut; the stream goes on."""

    async def script(request: web.Request, response: web.StreamResponse, index: int) -> None:
        if index == 5:
            await response.write(frame(state("succeeded", ts(50))))
            return
        for beat in range(4):
            await response.write(frame(heartbeat(ts(index * 5 + beat))))
            await asyncio.sleep(0.1)

    sse, kernel = await start(make_server, script)
    async with kernel:
        got = await collect(kernel.invocations.follow("inv_1", idle_timeout=0.3))
    assert len(sse.connections) == 6  # five cuts, more than max_retries
    assert isinstance(got[-1], InvocationStateEvent)


# --- 2. nothing dropped on a live connection; a terminal state always ends ----------------------


async def test_out_of_order_timestamps_on_a_live_connection_are_all_delivered(
    make_server: ServerFactory,
) -> None:
    events = [
        log("2ms", "2025-06-20T12:00:00.002Z"),
        log("1ms", "2025-06-20T12:00:00.001Z"),
        log("3ms", "2025-06-20T12:00:00.003Z"),
        state("succeeded", "2025-06-20T12:00:00.000Z"),  # the API's clock is behind the app's
        log("after the end", "2025-06-20T12:00:00.004Z"),
    ]

    async def script(request: web.Request, response: web.StreamResponse, index: int) -> None:
        await response.write(b"".join(frame(e) for e in events))
        await hold_open(response)

    _, kernel = await start(make_server, script)
    async with kernel:
        got = await asyncio.wait_for(collect(kernel.invocations.follow("inv_1")), 5)
    assert [e.message for e in got if isinstance(e, LogEvent)] == ["2ms", "1ms", "3ms"]
    assert isinstance(got[-1], InvocationStateEvent)  # it ended, at the terminal state


async def test_a_log_stamped_after_the_terminal_state_and_a_cut_still_end(
    make_server: ServerFactory,
) -> None:
    skewed = log("skewed", ts(9))  # the app's clock is ahead

    async def script(request: web.Request, response: web.StreamResponse, index: int) -> None:
        if index == 0:
            await response.write(frame(log("one", ts(1))) + frame(skewed))
            return
        since = request.query["since"]
        replay = [
            e
            for e in (log("one", ts(1)), skewed, state("succeeded", ts(2)))
            if e["timestamp"] >= since
        ]
        await response.write(b"".join(frame(e) for e in replay))
        await hold_open(response)

    _, kernel = await start(make_server, script)
    async with kernel:
        got = await asyncio.wait_for(collect(kernel.invocations.follow("inv_1")), 5)
    assert [e.message for e in got if isinstance(e, LogEvent)] == ["one", "skewed"]
    assert isinstance(got[-1], InvocationStateEvent)


# --- 3, 4. exactly once for every type, replays recognised by value ----------------------------


@pytest.mark.parametrize("honours_since", [True, False])
@pytest.mark.parametrize("reserialise", [False, True])
async def test_unknown_events_and_heartbeats_come_once_across_resumes(
    make_server: ServerFactory, honours_since: bool, reserialise: bool
) -> None:
    rng = random.Random(3)
    events: list[dict[str, Any]] = []
    for n in range(10):
        events += [custom(n, ts(n + 1)), heartbeat(ts(n + 1, 500)), custom(100 + n, None)]
    events.append(state("succeeded", ts(30)))

    def encode(event: dict[str, Any], replay: bool) -> bytes:
        if replay and reserialise:  # another key order, other spacing
            items = list(event.items())
            rng.shuffle(items)
            return (
                b"data: " + json.dumps(dict(items), indent=1).replace("\n", "").encode() + b"\n\n"
            )
        return frame(event)

    async def script(request: web.Request, response: web.StreamResponse, index: int) -> None:
        since = request.query.get("since")
        start_at = 12 * index  # each connection gets 12 events further
        sent = (
            events
            if not honours_since or since is None
            else [e for e in events if "timestamp" not in e or e["timestamp"] >= since]
        )
        if index == 0:
            await response.write(b"".join(encode(e, False) for e in sent[:12]))
            return
        replayed = [e for e in sent if events.index(e) < start_at]
        fresh = [e for e in sent if events.index(e) >= start_at][:12]
        await response.write(
            b"".join(encode(e, True) for e in replayed) + b"".join(frame(e) for e in fresh)
        )

    _, kernel = await start(make_server, script)
    async with kernel:
        got = await asyncio.wait_for(
            collect(kernel.invocations.follow("inv_1", heartbeats=True)), 10
        )
    unknown = [json.loads(e.data)["step"] for e in got if isinstance(e, UnknownEvent)]
    assert sorted(unknown) == sorted([*range(10), *range(100, 110)])
    assert len([e for e in got if isinstance(e, SSEHeartbeatEvent)]) == 10
    assert isinstance(got[-1], InvocationStateEvent)


# --- 5. linear replay, in bounded slices --------------------------------------------------------


async def test_a_big_replay_in_another_order_is_linear_work_in_bounded_slices(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 32_000
    same = ts(1)
    events = [log(f"line {i}", same) for i in range(n)]
    shuffled = list(events)
    random.Random(1).shuffle(shuffled)
    body = b"".join(frame(e) for e in events)
    replay = b"".join(frame(e) for e in shuffled) + frame(state("succeeded", ts(2)))

    async def script(request: web.Request, response: web.StreamResponse, index: int) -> None:
        await response.write(body if index == 0 else replay)

    fingerprints = 0
    real = _replay.fingerprint

    def counting(event: Any) -> bytes:
        nonlocal fingerprints
        fingerprints += 1
        return real(event)

    monkeypatch.setattr(_replay, "fingerprint", counting)
    batches: list[int] = []
    deliver = EventStream._deliver

    def recording(self: EventStream, messages: list[Any]) -> None:
        batches.append(len(messages))
        deliver(self, messages)

    monkeypatch.setattr(EventStream, "_deliver", recording)
    _, kernel = await start(make_server, script)
    async with kernel:
        got = await asyncio.wait_for(collect(kernel.invocations.follow("inv_1")), 30)
    assert len(got) == n + 1  # every line once, then the end
    assert fingerprints <= 2 * n + 10  # once to remember, once to recognise: linear
    assert max(batches) <= 2**16 // len(frame(events[0])) + 1  # one read, one bounded slice


# --- 6. aclose() from another task ends the reader, sends nothing more --------------------------


async def test_aclose_from_another_task_ends_the_reader_without_a_new_request(
    make_server: ServerFactory,
) -> None:
    async def script(request: web.Request, response: web.StreamResponse, index: int) -> None:
        await response.write(frame(log("one", ts(1))))
        await hold_open(response)

    sse, kernel = await start(make_server, script)
    async with kernel:
        stream = kernel.invocations.follow("inv_1")
        first = await stream.__anext__()
        assert isinstance(first, LogEvent)
        reader = asyncio.create_task(collect(stream))
        await asyncio.sleep(0.05)
        await stream.aclose()
        assert await asyncio.wait_for(reader, 5) == []
        await asyncio.sleep(0.1)
    assert len(sse.connections) == 1


async def test_aclose_while_connecting_leaves_no_connection(make_server: ServerFactory) -> None:
    async def script(request: web.Request, response: web.StreamResponse, index: int) -> None:
        await hold_open(response)

    sse, kernel = await start(make_server, script)
    async with kernel:
        stream = kernel.invocations.follow("inv_1")
        reader = asyncio.create_task(collect(stream))
        await asyncio.sleep(0)  # connecting
        await stream.aclose()
        assert await asyncio.wait_for(reader, 5) == []
        await asyncio.wait_for(sse.client_left.wait(), 5)


# --- 7. odd timestamps: tolerated, never a builtin error ----------------------------------------


@pytest.mark.parametrize(
    "first",
    ["2025-06-20T12:00:01Z", "2025-06-20T12:00:01", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00"],
)
async def test_odd_timestamps_then_a_cut_are_tolerated(
    make_server: ServerFactory, first: str
) -> None:
    events = [log("one", first), log("naive", "2025-06-20T12:00:02"), log("aware", ts(3))]

    async def script(request: web.Request, response: web.StreamResponse, index: int) -> None:
        if index == 0:
            await response.write(b"".join(frame(e) for e in events))
            return
        await response.write(b"".join(frame(e) for e in events) + frame(state("succeeded", ts(4))))

    sse, kernel = await start(make_server, script)
    async with kernel:
        got = await asyncio.wait_for(collect(kernel.invocations.follow("inv_1")), 5)
    assert [e.message for e in got if isinstance(e, LogEvent)] == ["one", "naive", "aware"]
    assert sse.connections[1]["since"].endswith("Z")


async def test_resume_from_year_one_asks_from_year_one() -> None:
    from datetime import datetime, timezone

    event = LogEvent(timestamp=datetime(1, 1, 1, tzinfo=timezone.utc), message="x")
    replay = _replay.resume_from([event])
    assert replay is not None
    assert replay.since is not None
    assert _replay.rfc3339(replay.since) == "0001-01-01T00:00:00.000000Z"


def test_the_replay_window_is_generous_enough_and_documented() -> None:
    assert _replay.REPLAY_WINDOW.total_seconds() == 10
    assert "10 s" in (EventStream.__doc__ or "")
