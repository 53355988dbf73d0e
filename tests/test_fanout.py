"""kernel.invocations.map(): one result per payload, as they finish; leaving early cancels."""

from __future__ import annotations

import asyncio
import gc
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from kernel_async import (
    APITimeoutError,
    AsyncKernel,
    Limits,
    MapResult,
    NotFoundError,
    RetryPolicy,
)
from kernel_async.testing import KernelEmulator, Quotas

FAST = RetryPolicy(max_retries=2, initial_delay=0.02, max_delay=0.1)
CANCELLED = '{"error":"Invocation cancelled by user"}'


def install(emulator: KernelEmulator, seconds: float = 0.02) -> None:
    async def work(ctx: Any, payload: Any) -> Any:
        await asyncio.sleep(payload.get("sleep", seconds) if isinstance(payload, dict) else seconds)
        if isinstance(payload, dict) and payload.get("boom"):
            raise RuntimeError("boom")
        return payload

    emulator.add_action("app", "work", work)


def still_running(emulator: KernelEmulator) -> list[str]:
    return [inv.id for inv in emulator.snapshot() if not inv.is_terminal]


async def test_every_payload_gives_one_result_and_is_started_once() -> None:
    payloads: list[Any] = [*range(40), {"boom": True}]
    async with KernelEmulator(quotas=Quotas(max_running_per_app=6)) as emulator:
        install(emulator)
        async with emulator.client(retry=FAST) as kernel:
            results = [r async for r in kernel.invocations.map("app", "work", payloads)]
        assert sorted(r.index for r in results) == list(range(41))
        assert all(r.payload == payloads[r.index] for r in results)
        failed = [r for r in results if not r.ok]
        assert [(r.payload, r.error) for r in failed] == [({"boom": True}, None)]
        assert failed[0].invocation is not None
        assert failed[0].invocation.status_reason == "boom"
        assert all(r.invocation_id for r in results)
        assert emulator.create_count == 41
        assert emulator.quotas.stats.peak_running_by_app["app"] <= 6


async def test_results_come_as_they_finish(kernel_emulator: KernelEmulator) -> None:
    install(kernel_emulator)
    payloads = [{"sleep": 0.3}, {"sleep": 0.01}, {"sleep": 0.15}]
    async with kernel_emulator.client() as kernel:
        order = [r.index async for r in kernel.invocations.map("app", "work", payloads)]
    assert order == [1, 2, 0]


async def test_concurrency_bounds_the_invocations_in_progress() -> None:
    async with KernelEmulator() as emulator:
        install(emulator)
        async with emulator.client(retry=FAST) as kernel:
            results = [
                r async for r in kernel.invocations.map("app", "work", range(30), concurrency=3)
            ]
        assert len(results) == 30
        assert emulator.quotas.stats.peak_running_by_app["app"] <= 3


async def test_leaving_an_async_with_early_cancels_what_it_started(
    kernel_emulator: KernelEmulator,
) -> None:
    install(kernel_emulator, seconds=30)
    payloads = [{"sleep": 0.01}] + [{"sleep": 30}] * 9
    async with kernel_emulator.client(retry=FAST, limits=Limits(initial=4)) as kernel:
        async with kernel.invocations.map("app", "work", payloads) as results:
            async for first in results:
                assert first.index == 0
                break
        assert still_running(kernel_emulator) == []
    # Slow start sent the first window (4) before the first one finished; the rest never
    # left the queue. Every one started but the first is cancelled.
    cancelled = [inv for inv in kernel_emulator.snapshot() if inv.output == CANCELLED]
    assert 4 <= kernel_emulator.create_count <= 10
    assert len(cancelled) == kernel_emulator.create_count - 1
    assert all(inv.status == "failed" for inv in cancelled)


async def test_a_plain_async_for_cleans_up_once_it_lets_go(
    kernel_emulator: KernelEmulator,
) -> None:
    install(kernel_emulator, seconds=30)
    payloads = [{"sleep": 0.01}] + [{"sleep": 30}] * 4
    async with kernel_emulator.client(retry=FAST) as kernel:
        async for _ in kernel.invocations.map("app", "work", payloads):
            break
        gc.collect()
        for _ in range(100):  # asyncio's async-generator finalizer runs the cleanup
            if not still_running(kernel_emulator):
                break
            await asyncio.sleep(0.02)
        assert still_running(kernel_emulator) == []


async def test_cancelling_the_consumer_cancels_the_invocations_and_leaves_no_task(
    kernel_emulator: KernelEmulator,
) -> None:
    install(kernel_emulator, seconds=30)
    async with kernel_emulator.client(retry=FAST) as kernel:
        before = asyncio.all_tasks()

        async def consume() -> list[MapResult]:
            return [r async for r in kernel.invocations.map("app", "work", [{}] * 8)]

        task = asyncio.create_task(consume())
        while len(kernel_emulator.snapshot()) < 8:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert still_running(kernel_emulator) == []
        leftover = {
            t
            for t in asyncio.all_tasks() - before
            if not t.done()
            and "kernel_async/testing" not in str(t.get_coro())
            and "web_protocol" not in str(t.get_coro())
        }
        assert not [t for t in leftover if "_fanout" in repr(t.get_coro())]


async def test_payloads_are_read_lazily_even_when_endless(kernel_emulator: KernelEmulator) -> None:
    install(kernel_emulator)
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    async with kernel_emulator.client(retry=FAST) as kernel:
        async with kernel.invocations.map("app", "work", endless(), concurrency=4) as results:
            got = [r async for r in _take(results, 10)]
    assert len(got) == 10
    assert pulled <= 10 + 4 + 1


async def _take(results: AsyncIterator[MapResult], n: int) -> AsyncIterator[MapResult]:
    async for result in results:
        yield result
        n -= 1
        if n == 0:
            return


async def test_async_iterable_payloads(kernel_emulator: KernelEmulator) -> None:
    install(kernel_emulator)

    async def source() -> AsyncIterator[int]:
        for i in range(5):
            await asyncio.sleep(0)
            yield i

    async with kernel_emulator.client() as kernel:
        outputs = sorted(
            [
                r.invocation.output_as()
                async for r in kernel.invocations.map("app", "work", source())
                if r.invocation is not None
            ]
        )
    assert outputs == [0, 1, 2, 3, 4]


async def test_a_per_item_timeout_cancels_that_invocation(kernel_emulator: KernelEmulator) -> None:
    install(kernel_emulator)
    payloads = [{"sleep": 0.01}, {"sleep": 30}]
    async with kernel_emulator.client() as kernel:
        results = {
            r.index: r async for r in kernel.invocations.map("app", "work", payloads, timeout=0.5)
        }
    assert results[0].ok
    assert isinstance(results[1].error, APITimeoutError)
    assert results[1].invocation_id is not None
    assert still_running(kernel_emulator) == []


async def test_api_errors_are_results_not_exceptions(kernel_emulator: KernelEmulator) -> None:
    async with kernel_emulator.client() as kernel:
        results = [r async for r in kernel.invocations.map("app", "missing", [1, 2])]
    assert len(results) == 2
    assert all(isinstance(r.error, NotFoundError) for r in results)
    assert all(r.invocation is None and r.invocation_id is None for r in results)


async def test_a_failing_payload_source_raises_and_cancels(kernel_emulator: KernelEmulator) -> None:
    install(kernel_emulator, seconds=30)

    def source() -> Iterator[dict[str, Any]]:
        yield {}
        yield {}
        raise OSError("the payload file went away")

    async with kernel_emulator.client() as kernel:
        with pytest.raises(OSError, match="went away"):
            async for _ in kernel.invocations.map("app", "work", source()):
                pass
    assert still_running(kernel_emulator) == []


def test_bad_arguments_are_refused_before_anything_runs() -> None:
    kernel = AsyncKernel("sk_x")
    with pytest.raises(ValueError, match="concurrency"):
        kernel.invocations.map("app", "work", [1], concurrency=0)
    with pytest.raises(TypeError, match="not a single str"):
        kernel.invocations.map("app", "work", "abc")
    with pytest.raises(ValueError, match="app_name"):
        kernel.invocations.map("", "work", [1])


async def test_creating_waits_for_a_slow_consumer(kernel_emulator: KernelEmulator) -> None:
    """An endless source and a consumer that stops reading: what is created stays within
    ``concurrency`` of what was read, however long the consumer takes."""
    install(kernel_emulator, seconds=0.005)

    def all_finished() -> bool:
        snapshot = kernel_emulator.snapshot()
        return bool(snapshot) and all(inv.is_terminal for inv in snapshot)

    async with kernel_emulator.client(retry=FAST) as kernel:
        results = kernel.invocations.map("app", "work", itertools.count(), concurrency=3)
        async with results:
            await results.__anext__()  # then the consumer is slow: it reads nothing more
            for _ in range(3):  # every invocation created so far has finished, again
                await _until(all_finished)
                await asyncio.sleep(0.05)
            assert kernel_emulator.create_count <= 1 + 3


async def _until(condition: Any) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), 20)


class _Halt(BaseException):
    """Not an Exception: a payload source may raise anything."""


@pytest.mark.parametrize("error", [asyncio.CancelledError, _Halt])
async def test_a_payload_source_raising_any_base_exception_ends_map_with_it(
    kernel_emulator: KernelEmulator, error: type[BaseException]
) -> None:
    install(kernel_emulator)

    async def source() -> AsyncIterator[int]:
        yield 1
        raise error()

    async with kernel_emulator.client(retry=FAST) as kernel:
        with pytest.raises(error):
            await asyncio.wait_for(_drain(kernel.invocations.map("app", "work", source())), 20)
    assert still_running(kernel_emulator) == []


async def _drain(results: AsyncIterator[MapResult]) -> None:
    async for _ in results:
        pass


async def test_value_is_the_final_invocation_typed_or_raises_the_error(
    kernel_emulator: KernelEmulator,
) -> None:
    install(kernel_emulator)
    async with kernel_emulator.client(retry=FAST) as kernel:
        results = {
            r.index: r async for r in kernel.invocations.map("app", "work", [{}, {"boom": True}])
        }
        missing = [r async for r in kernel.invocations.map("app", "missing", [1])]
    assert results[0].ok
    assert results[0].value.status == "succeeded"
    assert results[1].value.status == "failed"
    with pytest.raises(NotFoundError):
        missing[0].value  # noqa: B018
