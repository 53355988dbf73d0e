"""Closing the client: every pending call ends promptly with `ClientClosedError`, and every
later one fails with it too (never a hang, never a RuntimeError)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from kernel_async import AsyncKernel, ClientClosedError, Limits, RetryPolicy
from kernel_async.testing import KernelEmulator

from .conftest import json_response

#: Bounds a call that would otherwise hang for ever: a guard, not a measurement.
GUARD = 20.0


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (a state, not a duration)."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), GUARD)


def hold_forever(emulator: KernelEmulator) -> asyncio.Event:
    release = asyncio.Event()

    async def hold(ctx: Any, payload: Any) -> None:
        await release.wait()

    emulator.add_action("app", "hold", hold)
    return release


def requests_to(emulator: KernelEmulator, method: str, suffix: str) -> int:
    return sum(1 for r in emulator.requests if r.method == method and r.path.endswith(suffix))


async def follow_to_end(kernel: AsyncKernel, id: str) -> None:
    async with kernel.invocations.follow(id) as events:
        async for _ in events:
            pass


async def map_all(kernel: AsyncKernel) -> None:
    async with kernel.invocations.map("app", "hold", range(3)) as results:
        async for _ in results:
            pass


CALLS: dict[str, Callable[[AsyncKernel, str], Coroutine[Any, Any, Any]]] = {
    "follow": follow_to_end,
    "wait": lambda kernel, id: kernel.invocations.wait(id),
    "run": lambda kernel, id: kernel.invocations.run("app", "hold"),
    "run_queued": lambda kernel, id: kernel.invocations.run("app", "hold"),
    "map": lambda kernel, id: map_all(kernel),
    "create_queued": lambda kernel, id: kernel.invocations.create("app", "hold", async_=True),
}


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_aclose_ends_a_pending_call_with_a_typed_error(
    call: str, fast_policy: RetryPolicy
) -> None:
    async with KernelEmulator() as emulator:
        release = hold_forever(emulator)
        cap = 1 if call.endswith("_queued") else None
        kernel = emulator.client(retry=fast_policy, limits=Limits(max_running_per_app=cap))
        first = await kernel.invocations.create("app", "hold", async_=True)
        streams_before = requests_to(emulator, "GET", "/events")
        pending = asyncio.create_task(CALLS[call](kernel, first.id))
        if call.endswith("_queued"):
            await until(lambda: kernel.limit_stats().apps["app"].queued == 1)
        else:  # following an invocation: its event stream is open
            await until(lambda: requests_to(emulator, "GET", "/events") > streams_before)
        await kernel.aclose()
        with pytest.raises(ClientClosedError):
            await asyncio.wait_for(pending, GUARD)
        release.set()


async def test_after_aclose_every_call_raises_the_typed_error(fast_policy: RetryPolicy) -> None:
    async with KernelEmulator() as emulator:
        hold_forever(emulator).set()
        kernel = emulator.client(retry=fast_policy, limits=Limits(max_running_per_app=1))
        await kernel.invocations.run("app", "hold")
        await kernel.aclose()
        assert kernel.is_closed
        with pytest.raises(ClientClosedError):
            await kernel.invocations.run("app", "hold")
        with pytest.raises(ClientClosedError):
            await kernel.invocations.retrieve("inv_1")
        with pytest.raises(ClientClosedError):
            await follow_to_end(kernel, "inv_1")
        with pytest.raises(ClientClosedError):
            await map_all(kernel)
        copy = kernel.with_options(timeout=5)
        with pytest.raises(ClientClosedError):
            await copy.invocations.run("app", "hold")


async def test_aclose_ends_a_request_waiting_for_its_answer(make_server: Any) -> None:
    answered = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(request: Any) -> Any:
        arrived.set()
        await answered.wait()

    server = await make_server([("GET", "/invocations/{id}", slow)])
    kernel = server.client(timeout=None)
    pending = asyncio.create_task(kernel.invocations.retrieve("inv_1"))
    await asyncio.wait_for(arrived.wait(), GUARD)
    await kernel.aclose()
    with pytest.raises(ClientClosedError):
        await asyncio.wait_for(pending, GUARD)
    answered.set()


async def test_aclose_ends_calls_waiting_at_the_rate_gate(make_server: Any) -> None:
    async def limited(request: Any) -> Any:
        return json_response(
            '{"code":"rate_limited","message":"slow down"}', 429, headers={"Retry-After": "30"}
        )

    server = await make_server([("GET", "/invocations/{id}", limited)])
    kernel = server.client(timeout=None)
    first = asyncio.create_task(kernel.invocations.retrieve("inv_1"))
    await until(lambda: kernel.limit_stats().rate_limited == 1)  # it waits out the 30 s
    second = asyncio.create_task(kernel.invocations.retrieve("inv_2"))
    await kernel.aclose()
    for pending in (first, second):
        with pytest.raises(ClientClosedError):
            await asyncio.wait_for(pending, GUARD)
    assert len(server.requests) == 1
