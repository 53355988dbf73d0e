"""Cancelled again while it cleans up on exit (an ``asyncio.timeout`` or a ``TaskGroup``
around the call, ``map()`` stopping its items), a ``run()`` or ``map()`` still lets its
create land and cancels the invocation, then raises ``CancelledError``: no invocation is
left running unreported and no task is left pending."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from kernel_async import AsyncKernel, Limits, RetryPolicy
from kernel_async.resources import _lifecycle

from ._fake_api import FakeAPI, start_fake_api
from .conftest import ServerFactory
from .test_slots import GUARD, until


async def settle() -> None:
    """Let the tasks just cancelled step into what they wait for next (no I/O needed)."""
    for _ in range(20):
        await asyncio.sleep(0)


def seen(api: FakeAPI, method: str) -> int:
    assert api.server is not None
    return sum(r.method == method for r in api.server.requests)


def sdk_tasks() -> set[asyncio.Task[Any]]:
    """The SDK's own tasks still pending (not the test's, not the server's)."""
    found = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if not task.done() and code is not None and "kernel_async" in code.co_filename:
            found.add(task)
    return found


async def cancel_twice(task: asyncio.Task[Any]) -> None:
    """Cancel ``task``, let it start cleaning up, and cancel it again."""
    task.cancel()
    await settle()
    assert not task.done()
    task.cancel()
    await settle()


@dataclass
class Held:
    """A fake API whose creates wait for `creates` and cancels for `cancels` (set unless
    a test clears it), and a client of it that may create two at once."""

    api: FakeAPI
    kernel: AsyncKernel
    creates: asyncio.Event
    cancels: asyncio.Event


@pytest.fixture
async def held(make_server: ServerFactory, fast_policy: RetryPolicy) -> AsyncIterator[Held]:
    """The fake API served, and its client."""
    creates, cancels = asyncio.Event(), asyncio.Event()
    cancels.set()
    api = await start_fake_api(make_server, hold_creates=creates, hold_cancels=cancels)
    assert api.server is not None
    async with api.server.client(retry=fast_policy, limits=Limits(initial=2)) as kernel:
        yield Held(api, kernel, creates, cancels)


async def test_run_cancelled_again_while_its_create_lands_still_cancels_it(
    held: Held,
) -> None:
    api, kernel = held.api, held.kernel
    before = sdk_tasks()
    run = asyncio.create_task(kernel.invocations.run("app", "work", cancel_on_exit=True))
    await until(lambda: seen(api, "POST") == 1)
    await cancel_twice(run)
    assert not run.done()  # still waiting for the create to land
    held.creates.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, GUARD)
    assert api.status == {"inv_0": "failed"}
    assert api.cancels == ["inv_0"]
    assert kernel.limit_stats().apps["app"].running == 0
    assert sdk_tasks() <= before


async def test_a_create_that_never_lands_is_withdrawn_and_reported(
    held: Held,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api, kernel = held.api, held.kernel
    monkeypatch.setattr(_lifecycle, "CANCEL_TIMEOUT", 0.2)
    before = sdk_tasks()
    run = asyncio.create_task(kernel.invocations.run("app", "work", cancel_on_exit=True))
    await until(lambda: seen(api, "POST") == 1)
    with caplog.at_level(logging.WARNING, logger="kernel_async"):
        await cancel_twice(run)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, GUARD)
    assert sdk_tasks() <= before  # the create was not left running on its own
    assert "did not answer" in caplog.text
    assert api.status == {}  # withdrawn unanswered: the server created nothing


async def test_run_cancelled_again_while_cancelling_its_invocation_still_cancels_it(
    held: Held,
) -> None:
    api, kernel = held.api, held.kernel
    held.creates.set()
    held.cancels.clear()
    run = asyncio.create_task(kernel.invocations.run("app", "work", cancel_on_exit=True))
    await until(lambda: api.streams == 1)
    run.cancel()
    await until(lambda: seen(api, "PATCH") == 1)
    run.cancel()
    await settle()
    assert not run.done()  # still waiting for the cancel's answer
    held.cancels.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, GUARD)
    assert api.status == {"inv_0": "failed"}
    assert api.cancels == ["inv_0"]


async def test_run_cancelled_while_its_timeout_cancels_the_invocation_still_cancels_it(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    cancels = asyncio.Event()
    api = await start_fake_api(make_server, silent=True, hold_cancels=cancels)
    assert api.server is not None
    async with api.server.client(retry=fast_policy) as kernel:
        run = asyncio.create_task(
            kernel.invocations.run(
                "app", "work", timeout=0.1, cancel_on_timeout=True, cancel_on_exit=True
            )
        )
        await until(lambda: seen(api, "PATCH") == 1)  # the timeout's cancel
        run.cancel()
        await settle()
        cancels.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, GUARD)
        assert api.status == {"inv_0": "failed"}
        assert api.cancels == ["inv_0"]


async def test_map_stopped_twice_while_a_create_lands_still_cancels_its_invocation(
    held: Held,
) -> None:
    # The consumer cancelled again: map()'s stop is cancelled, which cancels its items again.
    api, kernel = held.api, held.kernel
    before = sdk_tasks()

    async def consume() -> None:
        async with kernel.invocations.map("app", "work", [1, 2]) as results:
            async for _ in results:
                pass

    consumer = asyncio.create_task(consume())
    await until(lambda: seen(api, "POST") == 2)
    await cancel_twice(consumer)
    held.creates.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(consumer, GUARD)
    await until(lambda: not (sdk_tasks() - before))
    assert api.status == {"inv_0": "failed", "inv_1": "failed"}
    assert sorted(api.cancels) == ["inv_0", "inv_1"]


if sys.version_info >= (3, 11):  # asyncio.timeout, Task.cancelling

    async def test_nested_timeouts_each_see_their_own_cancellation(
        held: Held,
    ) -> None:
        # The inner timeout expires during the create, the outer one while it lands: the
        # outer one raises TimeoutError, the inner one lets the outer one's cancel through.
        api, kernel = held.api, held.kernel
        scopes: list[asyncio.Timeout] = []
        inner_timed_out = False

        async def caller() -> int:
            nonlocal inner_timed_out
            async with asyncio.timeout(None) as outer:
                scopes.append(outer)
                try:
                    async with asyncio.timeout(None) as inner:
                        scopes.append(inner)
                        await kernel.invocations.run("app", "work", cancel_on_exit=True)
                except TimeoutError:
                    inner_timed_out = True
            raise AssertionError("unreachable")  # pragma: no cover

        async def outcome() -> int:
            try:
                return await caller()
            except TimeoutError:
                task = asyncio.current_task()
                assert task is not None
                return task.cancelling()

        task = asyncio.create_task(outcome())
        await until(lambda: seen(api, "POST") == 1)
        loop = asyncio.get_running_loop()
        outer, inner = scopes
        inner.reschedule(loop.time())
        await settle()
        assert not task.done()
        outer.reschedule(loop.time())
        await settle()
        held.creates.set()
        assert await asyncio.wait_for(task, GUARD) == 0  # TimeoutError, no cancel left counted
        assert not inner_timed_out
        assert api.status == {"inv_0": "failed"}
