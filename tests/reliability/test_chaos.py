"""Chaos fan-out and mass cancellation against the emulator's fault injection."""

from __future__ import annotations

import asyncio
import gc
import random
from typing import Any

import pytest

from kernel_async import (
    APIStatusError,
    AsyncKernel,
    InvocationStateEvent,
    LogEvent,
    RetryPolicy,
)
from kernel_async.testing import KernelEmulator, Quotas

from ..conftest import emulator_thread
from .conftest import FIGURES, scaled

POLICY = RetryPolicy(max_retries=10, initial_delay=0.005, max_delay=0.05, max_retry_after=1)


def install_chatty(emulator: KernelEmulator, seed: int) -> None:
    rng = random.Random(seed)

    @emulator.action("chaos", "work")
    async def work(ctx: Any, payload: Any) -> int:
        lines = 3 + rng.randrange(15)
        for i in range(lines):
            ctx.log(f"{payload['n']}:{i}")
            if i % 4 == 0:
                await asyncio.sleep(0.001)
        return lines


@pytest.mark.parametrize("limits", [False, True], ids=["semaphore", "quotas"])
async def test_chaos_fan_out_delivers_every_log_line_exactly_once(limits: bool) -> None:
    """Under random 429s, 5xx, latency and cut streams; with ``limits``, also under the
    service's caps and rate limit, with a plain unbounded gather (no semaphore)."""
    n = scaled(100)
    cap = 12
    quotas = Quotas(max_running_per_app=cap, requests_per_window=60, window=0.1) if limits else None
    async with KernelEmulator(heartbeat_interval=0.5, seed=11, quotas=quotas) as emulator:
        install_chatty(emulator, seed=11)
        emulator.faults.chaos(
            rate_limit=0.1,
            error=0.1,
            cut=0.2,
            latency=(0.0, 0.003),
            retry_after=0.01,
            max_cut_after=8,
            seed=11,
        )
        created_ids: list[str] = []
        delivered: dict[str, list[str]] = {}
        finals: dict[str, str] = {}
        create_failures = 0
        limit = asyncio.Semaphore(n if limits else 50)

        async def one(kernel: AsyncKernel, i: int) -> None:
            nonlocal create_failures
            async with limit:
                while True:
                    try:
                        created = await kernel.invocations.create(
                            "chaos", "work", payload={"n": i}, async_=True
                        )
                        break
                    except APIStatusError:
                        # The SDK did not retry: a 500/502 on create is ambiguous. A user
                        # would check with list() before creating again; the test asks the
                        # emulator (which injected the fault before handling the request).
                        create_failures += 1
                        mine = f'{{"n":{i}}}'
                        assert not [v for v in emulator.snapshot() if v.payload == mine]
                created_ids.append(created.id)
                lines: list[str] = []
                async for event in kernel.invocations.follow(created.id):
                    if isinstance(event, LogEvent):
                        lines.append(event.message)
                    elif isinstance(event, InvocationStateEvent):
                        finals[created.id] = event.invocation.status
                delivered[created.id] = lines

        async with emulator.client(retry=POLICY) as kernel:
            await asyncio.gather(*(one(kernel, i) for i in range(n)))

        requests = len(emulator.requests)
        stats = emulator.faults.stats
        duplicates = losses = 0
        for inv_id in created_ids:
            expected = emulator.log_lines(inv_id)
            got = delivered[inv_id]
            losses += len(set(expected) - set(got))
            duplicates += len(got) - len(set(got))
            assert got == expected, inv_id
        FIGURES["chaos fan-out" + (" with quotas" if limits else "")] = {
            "invocations": n,
            "events": sum(len(v) for v in delivered.values()),
            "requests": requests,
            "rate_limited": stats.rate_limited,
            "errors": stats.errors,
            "streams_cut": stats.cuts,
            "create_failures_seen": create_failures,
            "duplicates": duplicates,
            "losses": losses,
            "peak_running": emulator.quotas.stats.peak_running,
            "concurrency_429s": emulator.quotas.stats.concurrency_rejected,
            "rate_429s": emulator.quotas.stats.rate_rejected,
        }
        assert len(created_ids) == n
        assert emulator.create_count == n  # no duplicate from a retry
        assert all(finals[i] == "succeeded" for i in created_ids)
        assert stats.rate_limited > 0
        assert stats.cuts > 0
        assert requests <= 6 * n  # no retry storm: ~3 requests per invocation expected
        if limits:
            assert emulator.quotas.stats.peak_running <= cap


async def test_random_cancellation_leaves_no_connection_task_or_warning() -> None:
    """The emulator runs in its own thread and loop, so every task left in this loop
    afterwards would be the client's."""
    calls = scaled(2000)
    emulator = KernelEmulator(heartbeat_interval=0.05, seed=5)
    emulator.add_action("app", "slow", _slow)
    emulator.faults.chaos(latency=(0.0, 0.004), seed=5)
    rng = random.Random(5)
    with emulator_thread(emulator):
        async with emulator.client(retry=POLICY) as kernel:
            seeded = await kernel.invocations.create("app", "slow", async_=True)

            async def call(kind: int) -> None:
                if kind == 0:
                    await kernel.invocations.retrieve(seeded.id)
                elif kind == 1:
                    await kernel.invocations.list(limit=5)
                else:
                    async for _ in kernel.invocations.follow(seeded.id, heartbeats=True):
                        pass

            cancelled = completed = 0
            for start in range(0, calls, 100):
                tasks = [
                    asyncio.create_task(call(rng.randrange(3)))
                    for _ in range(min(100, calls - start))
                ]
                await asyncio.sleep(rng.uniform(0, 0.12))  # some finish, many do not
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    try:
                        await task
                        completed += 1
                    except asyncio.CancelledError:
                        cancelled += 1
            gc.collect()
            await asyncio.sleep(0.05)
            session = kernel._transport.session
            assert session is not None
            connector = session.connector
            assert connector is not None
            open_connections = len(connector._acquired)
            ours = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        FIGURES["cancellation"] = {
            "calls": calls,
            "cancelled": cancelled,
            "completed": completed,
            "open_connections": open_connections,
            "pending_tasks": len(ours),
        }
        assert cancelled + completed == calls
        assert cancelled > calls // 3  # cut at random points: connecting, waiting, reading
        assert completed > 0
        assert open_connections == 0
        assert ours == []


async def _slow(ctx: Any, payload: Any) -> None:
    while True:
        ctx.log("tick")
        await asyncio.sleep(0.01)
