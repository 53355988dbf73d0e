"""The retry middleware against real servers: what is retried, how long it waits, and
that create is never repeated after an ambiguous failure."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import socket
import time

import aiohttp
import pytest
from aiohttp import web

from kernel_async import (
    APIConnectionError,
    APITimeoutError,
    AsyncKernel,
    InternalServerError,
    RateLimitError,
    RetryMiddleware,
    RetryPolicy,
)
from kernel_async._retry import RETRY_COUNT_HEADER
from kernel_async.testing import KernelEmulator

from .conftest import INVOCATION_JSON, ServerFactory, json_response

CREATED = '{"id":"i","action_name":"a","status":"queued"}'


def statuses_then_ok(statuses: list[int], ok_body: str, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    remaining = list(statuses)

    async def handler(_: web.Request) -> web.Response:
        if remaining:
            return json_response(
                '{"code":"x","message":"try again"}', remaining.pop(0), headers=headers
            )
        return json_response(ok_body)

    return handler


async def test_get_is_retried_on_503_then_succeeds(
    make_server: ServerFactory, sleeps: list[float]
) -> None:
    server = await make_server(
        [("GET", "/invocations/{id}", statuses_then_ok([503], INVOCATION_JSON))]
    )
    async with server.client() as kernel:
        inv = await kernel.invocations.retrieve("inv_1")
    assert inv.id == "inv_1"
    assert len(server.requests) == 2
    assert [r.headers[RETRY_COUNT_HEADER] for r in server.requests] == ["0", "1"]
    assert len(sleeps) == 1
    assert 0.5 * 0.75 <= sleeps[0] <= 0.5


async def test_attempts_are_bounded_by_max_retries(
    make_server: ServerFactory, sleeps: list[float]
) -> None:
    server = await make_server(
        [("GET", "/invocations/{id}", statuses_then_ok([500] * 10, INVOCATION_JSON))]
    )
    async with server.client(max_retries=3) as kernel:
        with pytest.raises(InternalServerError):
            await kernel.invocations.retrieve("inv_1")
    assert len(server.requests) == 4
    # exponential: 0.5, 1, 2 (each with up to 25% jitter off)
    for delay, base in zip(sleeps, [0.5, 1.0, 2.0], strict=True):
        assert base * 0.75 <= delay <= base


@pytest.mark.parametrize(
    ("header", "value", "expected"),
    [
        ("Retry-After", "0.3", 0.3),
        ("Retry-After", "0.25", 0.25),
        ("retry-after-ms", "200", 0.2),
    ],
)
async def test_429_waits_as_retry_after_says_and_not_max_retries(
    make_server: ServerFactory, header: str, value: str, expected: float
) -> None:
    arrivals: list[float] = []
    answer = statuses_then_ok([429, 429], INVOCATION_JSON, {header: value})

    async def timed(request: web.Request) -> web.StreamResponse:
        arrivals.append(time.monotonic())
        response: web.StreamResponse = await answer(request)
        return response

    server = await make_server([("GET", "/invocations/{id}", timed)])
    # Two rate-limit 429s with max_retries=1: rate limits are waited out, not counted.
    async with server.client(max_retries=1) as kernel:
        await kernel.invocations.retrieve("inv_1")
        stats = kernel.limit_stats()
    assert len(arrivals) == 3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(gap >= expected * 0.95 for gap in gaps), gaps
    assert stats.rate_limited == 2
    assert stats.rate_paused_seconds == pytest.approx(2 * expected, abs=0.01)


async def test_429_retry_after_as_http_date(make_server: ServerFactory) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    server = await make_server(
        [
            (
                "GET",
                "/invocations/{id}",
                statuses_then_ok([429], INVOCATION_JSON, {"Retry-After": when}),
            )
        ]
    )
    async with server.client(retry=RetryPolicy(max_retry_after=5)) as kernel:
        with pytest.raises(RateLimitError) as caught:
            await kernel.invocations.retrieve("inv_1")
    assert caught.value.retry_after is not None
    assert 28 <= caught.value.retry_after <= 30  # the date was read, and not slept


async def test_retry_after_longer_than_the_cap_raises_at_once_with_retry_after(
    make_server: ServerFactory, sleeps: list[float]
) -> None:
    server = await make_server(
        [
            (
                "GET",
                "/invocations/{id}",
                statuses_then_ok([429], INVOCATION_JSON, {"Retry-After": "120"}),
            )
        ]
    )
    async with server.client() as kernel:
        with pytest.raises(RateLimitError) as caught:
            await kernel.invocations.retrieve("inv_1")
    assert caught.value.retry_after == 120.0
    assert sleeps == []
    assert len(server.requests) == 1


async def test_a_real_short_retry_after_is_slept(make_server: ServerFactory) -> None:
    """No fake clock: the second request comes no sooner than Retry-After says."""
    server = await make_server(
        [
            (
                "GET",
                "/invocations/{id}",
                statuses_then_ok([429], INVOCATION_JSON, {"Retry-After": "0.2"}),
            )
        ]
    )
    loop = asyncio.get_running_loop()
    async with server.client() as kernel:
        start = loop.time()
        await kernel.invocations.retrieve("inv_1")
        elapsed = loop.time() - start
    assert elapsed >= 0.19  # a lower bound only: sleeping can take longer, never shorter


@pytest.mark.parametrize("status", [500, 502, 504, 408, 409])
async def test_create_is_not_retried_when_the_server_may_have_started_it(
    make_server: ServerFactory, sleeps: list[float], status: int
) -> None:
    server = await make_server([("POST", "/invocations", statuses_then_ok([status], CREATED))])
    async with server.client() as kernel:
        with pytest.raises(Exception) as caught:
            await kernel.invocations.create("app", "a")
    assert getattr(caught.value, "status", None) == status
    assert len(server.requests) == 1
    assert sleeps == []


@pytest.mark.parametrize("status", [429, 503])
async def test_create_is_retried_when_the_server_did_not_start_it(
    make_server: ServerFactory, sleeps: list[float], status: int
) -> None:
    server = await make_server([("POST", "/invocations", statuses_then_ok([status], CREATED))])
    async with server.client() as kernel:
        created = await kernel.invocations.create("app", "a")
    assert created.id == "i"
    # (after a concurrency 429 with none of ours running, the app may be listed too)
    creates = [r for r in server.requests if r.method == "POST"]
    assert len(creates) == 2
    assert creates[0].body == creates[1].body


async def test_create_is_not_retried_after_a_timeout(
    kernel_emulator: KernelEmulator, sleeps: list[float]
) -> None:
    kernel_emulator.add_action("app", "a", lambda ctx, p: None)
    kernel_emulator.faults.hang(method="POST")
    async with kernel_emulator.client(timeout=0.3) as kernel:
        with pytest.raises(APITimeoutError):
            await kernel.invocations.create("app", "a")
    posts = [r for r in kernel_emulator.requests if r.method == "POST"]
    assert len(posts) == 1
    assert sleeps == []


async def test_create_after_a_dropped_connection_is_raised_not_repeated(
    kernel_emulator: KernelEmulator, sleeps: list[float]
) -> None:
    kernel_emulator.add_action("app", "a", lambda ctx, p: None)
    kernel_emulator.faults.drop_connection(method="POST", after_processing=True)
    async with kernel_emulator.client() as kernel:
        with pytest.raises(APIConnectionError):
            await kernel.invocations.create("app", "a")
    assert kernel_emulator.create_count == 1  # it did start: retrying would have duplicated it
    assert len([r for r in kernel_emulator.requests if r.method == "POST"]) == 1


async def test_dropped_connections_on_get_are_retried_within_the_policy_bound(
    kernel_emulator: KernelEmulator, sleeps: list[float]
) -> None:
    """aiohttp's own silent retry after a disconnect is not stacked on the policy's."""
    kernel_emulator.faults.drop_connection(times=100, method="GET")
    async with kernel_emulator.client(max_retries=2) as kernel:
        with pytest.raises(APIConnectionError):
            await kernel.invocations.retrieve("missing")
    assert len(kernel_emulator.requests) == 3
    assert len(sleeps) == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_is_retried_even_for_create(sleeps: list[float]) -> None:
    port = _closed_port()
    async with AsyncKernel("k", base_url=f"http://127.0.0.1:{port}", max_retries=2) as kernel:
        with pytest.raises(APIConnectionError) as caught:
            await kernel.invocations.create("app", "a")
    assert len(sleeps) == 2  # two retries, then it gave up
    assert "127.0.0.1" in str(caught.value)
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorError)


async def test_x_should_retry_overrides_the_status_rules(
    make_server: ServerFactory, sleeps: list[float]
) -> None:
    no = await make_server(
        [
            (
                "GET",
                "/invocations/{id}",
                statuses_then_ok([503], INVOCATION_JSON, {"x-should-retry": "false"}),
            )
        ]
    )
    async with no.client() as kernel:
        with pytest.raises(InternalServerError):
            await kernel.invocations.retrieve("inv_1")
    assert len(no.requests) == 1

    yes = await make_server(
        [
            (
                "GET",
                "/invocations/{id}",
                statuses_then_ok([400], INVOCATION_JSON, {"x-should-retry": "true"}),
            )
        ]
    )
    async with yes.client() as kernel:
        await kernel.invocations.retrieve("inv_1")
    assert len(yes.requests) == 2


async def test_cancellation_during_backoff_is_not_swallowed(make_server: ServerFactory) -> None:
    server = await make_server(
        [
            (
                "GET",
                "/invocations/{id}",
                statuses_then_ok([503], INVOCATION_JSON, {"Retry-After": "30"}),
            )
        ]
    )
    async with server.client() as kernel:
        task = asyncio.create_task(kernel.invocations.retrieve("inv_1"))
        while not server.requests:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(server.requests) == 1


async def test_cancellation_mid_request_leaves_no_open_connection(
    make_server: ServerFactory,
) -> None:
    entered = asyncio.Event()
    disconnected = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            disconnected.set()
            raise
        return json_response(INVOCATION_JSON)

    server = await make_server([("GET", "/invocations/{id}", slow)])
    async with server.client() as kernel:
        task = asyncio.create_task(kernel.invocations.retrieve("inv_1"))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        session = kernel._transport.session
        assert session is not None
        connector = session.connector
        assert connector is not None
        assert not connector._acquired  # nothing checked out
        assert sum(len(c) for c in connector._conns.values()) == 0  # nothing kept alive
        await asyncio.wait_for(disconnected.wait(), 5)  # the server saw the socket close


async def test_deadline_stops_retrying_instead_of_sleeping_past_it(
    make_server: ServerFactory, sleeps: list[float]
) -> None:
    server = await make_server(
        [
            (
                "GET",
                "/invocations/{id}",
                statuses_then_ok([429], INVOCATION_JSON, {"Retry-After": "5"}),
            )
        ]
    )
    async with server.client(timeout=1.0) as kernel:
        with pytest.raises(RateLimitError) as caught:
            await kernel.invocations.retrieve("inv_1")
    assert caught.value.retry_after == 5.0
    assert sleeps == []


async def test_the_middleware_works_on_a_plain_aiohttp_session(
    make_server: ServerFactory, sleeps: list[float]
) -> None:
    server = await make_server(
        [("GET", "/invocations/{id}", statuses_then_ok([502, 503], INVOCATION_JSON))]
    )
    policy = RetryPolicy(max_retries=2)
    async with aiohttp.ClientSession(middlewares=[RetryMiddleware(policy)]) as session:
        async with session.get(f"{server.url}/invocations/x") as resp:
            assert resp.status == 200
    assert len(server.requests) == 3


async def test_user_middlewares_run_once_per_attempt(
    make_server: ServerFactory, sleeps: list[float]
) -> None:
    server = await make_server(
        [("GET", "/invocations/{id}", statuses_then_ok([503], INVOCATION_JSON))]
    )
    calls: list[str] = []

    async def tag(
        req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        calls.append(req.headers[RETRY_COUNT_HEADER])
        req.headers["X-Trace"] = "t1"
        return await handler(req)

    async with server.client(middlewares=[tag]) as kernel:
        await kernel.invocations.retrieve("inv_1")
    assert calls == ["0", "1"]
    assert all(r.headers["X-Trace"] == "t1" for r in server.requests)
