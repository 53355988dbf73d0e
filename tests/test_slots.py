"""Admission slots are freed on every end: a cancel answered "already finished", an
invocation finishing as its timeout passes, invocations nobody watches any more (found by
reconciling with the service's list), and a long concurrency Retry-After is capped."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from kernel_async import APITimeoutError, AsyncKernel, Limits, RetryPolicy
from kernel_async._limits import Admission
from kernel_async.testing import KernelEmulator, Quotas

from ._fake_api import start_fake_api
from .conftest import ServerFactory, json_response

GUARD = 20.0  # bounds what would otherwise hang: a guard, not a measurement


async def until(condition: Any) -> None:
    """Let the loop run until ``condition()`` holds (a state, not a duration)."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), GUARD)


def running(kernel: AsyncKernel, app: str = "app") -> int:
    stats = kernel.limit_stats().apps.get(app)
    return 0 if stats is None else stats.running


async def test_leaving_map_early_frees_the_slots_of_invocations_that_had_just_finished(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    api = await start_fake_api(make_server)
    assert api.server is not None
    kernel = api.server.client(retry=fast_policy, limits=Limits(max_running_per_app=3))
    async with kernel:

        async def consume() -> None:
            async with kernel.invocations.map("app", "work", range(3)) as results:
                async for _ in results:
                    pass

        consumer = asyncio.create_task(consume())
        await until(lambda: api.streams == 3)
        for id in list(api.status):  # they end on the server; the client is not told
            api.finish(id)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert api.cancels == []  # each cancel was answered 400 "already finished"
        assert running(kernel) == 0
        created = await kernel.invocations.create("app", "work", async_=True, timeout=GUARD)
        assert created.id == "inv_3"


async def test_run_finishing_as_its_timeout_passes_returns_its_final_state(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    api = await start_fake_api(make_server, silent=True)
    assert api.server is not None
    async with api.server.client(retry=fast_policy) as kernel:
        run = asyncio.create_task(
            kernel.invocations.run("app", "work", timeout=0.5, cancel_on_timeout=True)
        )
        await until(lambda: api.streams == 1)
        api.finish("inv_0")  # the stream will not say before the deadline: the cancel will
        invocation = await run
        assert invocation.status == "succeeded"
        assert api.cancels == []
        assert running(kernel) == 0


async def test_a_run_timing_out_during_its_create_knows_and_cancels_the_invocation(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    api = await start_fake_api(make_server, create_delay=0.4)
    assert api.server is not None
    async with api.server.client(retry=fast_policy) as kernel:
        with pytest.raises(APITimeoutError) as caught:
            await kernel.invocations.run("app", "work", timeout=0.1, cancel_on_timeout=True)
        assert caught.value.invocation_id == "inv_0"
        assert api.cancels == ["inv_0"]
        assert running(kernel) == 0


async def test_a_map_item_timing_out_during_its_create_reports_and_cancels_it(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    api = await start_fake_api(make_server, create_delay=0.4)
    assert api.server is not None
    async with api.server.client(retry=fast_policy) as kernel:
        results = [r async for r in kernel.invocations.map("app", "work", [1], timeout=0.1)]
        assert [(r.invocation_id, type(r.error)) for r in results] == [("inv_0", APITimeoutError)]
        assert api.cancels == ["inv_0"]


async def test_slots_of_invocations_nobody_watches_are_freed_once_they_end(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    api = await start_fake_api(make_server)
    assert api.server is not None
    async with api.server.client(retry=fast_policy, limits=Limits(max_running_per_app=2)) as (
        kernel
    ):
        # A viewer leaves after the first event; a handler's timeout cancels a run().
        async with kernel.invocations.follow(
            (await kernel.invocations.create("app", "work", async_=True)).id
        ) as events:
            await events.__anext__()
        run = asyncio.create_task(kernel.invocations.run("app", "work"))
        await until(lambda: api.streams == 2)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert running(kernel) == 2
        assert api.running() == ["inv_0", "inv_1"]
        waiting = asyncio.create_task(kernel.invocations.create("app", "work", async_=True))
        await until(lambda: kernel.limit_stats().apps["app"].queued == 1)
        api.finish("inv_0")
        api.finish("inv_1", "failed")
        created = await asyncio.wait_for(waiting, GUARD)
        assert created.id == "inv_2"
        assert running(kernel) == 1


async def test_run_cancel_on_exit_cancels_the_invocation(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    api = await start_fake_api(make_server)
    assert api.server is not None
    async with api.server.client(retry=fast_policy) as kernel:
        run = asyncio.create_task(kernel.invocations.run("app", "work", cancel_on_exit=True))
        await until(lambda: api.streams == 1)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert api.cancels == ["inv_0"]
        assert running(kernel) == 0


async def test_run_cancel_on_exit_lets_a_create_in_flight_land_then_cancels_it(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    api = await start_fake_api(make_server, create_delay=0.2)
    assert api.server is not None
    async with api.server.client(retry=fast_policy) as kernel:
        run = asyncio.create_task(kernel.invocations.run("app", "work", cancel_on_exit=True))
        await until(lambda: len(api.server.requests) == 1 if api.server else False)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert api.cancels == ["inv_0"]
        assert running(kernel) == 0


async def test_a_concurrency_429_asking_for_an_hour_is_capped_by_max_retry_after(
    make_server: ServerFactory,
) -> None:
    answers = [
        json_response(
            '{"code":"concurrency_limit_exceeded","message":"too many running"}',
            429,
            headers={"Retry-After": "3600"},
        ),
        json_response('{"id":"inv_1","action_name":"work","status":"queued"}', 202),
    ]

    async def create(request: Any) -> Any:
        return answers.pop(0)

    server = await make_server([("POST", "/invocations", create)])
    policy = RetryPolicy(max_retries=0, initial_delay=0.01, max_retry_after=0.05)
    async with server.client(retry=policy) as kernel:
        created = await asyncio.wait_for(
            kernel.invocations.create("app", "work", async_=True, timeout=None), GUARD
        )
        assert created.id == "inv_1"
        assert kernel.limit_stats().concurrency_limited == 1


async def test_creates_leaving_the_queue_in_random_order_keep_it_small_and_fifo() -> None:
    loop = asyncio.get_running_loop()
    admission = Admission(loop, Limits(max_running_per_app=1), 0.01)
    first = await admission.acquire("app", None)
    n = 5000
    waiters = [asyncio.create_task(admission.acquire("app", None)) for _ in range(n)]
    await until(lambda: admission.waiting("app") == n)
    order = list(range(n))
    random.Random(7).shuffle(order)
    leaving, staying = order[: n - 10], sorted(order[n - 10 :])
    for i in leaving:
        waiters[i].cancel()
    await asyncio.gather(*(waiters[i] for i in leaving), return_exceptions=True)
    assert admission.waiting("app") == 10
    assert len(admission._queues["app"].entries) <= 2 * 10 + 64  # compacted, not scanned
    admitted: list[asyncio.Task[Any]] = []
    ticket = first
    for _ in staying:
        admission.started(ticket, None, 60.0)  # frees the slot: the next one goes
        done, _ = await asyncio.wait(
            {waiters[i] for i in staying} - set(admitted),
            timeout=GUARD,
            return_when=asyncio.FIRST_COMPLETED,
        )
        (task,) = done
        admitted.append(task)
        ticket = task.result()
    assert [waiters.index(t) for t in admitted] == staying
    admission.started(ticket, None, 60.0)


async def test_after_a_reconcile_a_cap_from_the_emulator_still_holds(
    fast_policy: RetryPolicy,
) -> None:
    """Reconciling never frees a slot of an invocation still running."""
    async with KernelEmulator(quotas=Quotas(max_running_per_app=2)) as emulator:
        release = asyncio.Event()

        async def hold(ctx: Any, payload: Any) -> None:
            await release.wait()

        emulator.add_action("app", "hold", hold)
        async with emulator.client(retry=fast_policy, limits=Limits(max_running_per_app=2)) as (
            kernel
        ):
            for _ in range(2):
                await kernel.invocations.create("app", "hold", async_=True)
            waiting = asyncio.create_task(kernel.invocations.create("app", "hold", async_=True))
            await until(
                lambda: (
                    sum(r.path == "/invocations" and r.method == "GET" for r in emulator.requests)
                    >= 4
                )
            )
            assert not waiting.done()
            assert running(kernel) == 2
            release.set()
            await asyncio.wait_for(waiting, GUARD)
        assert emulator.quotas.stats.concurrency_rejected == 0
