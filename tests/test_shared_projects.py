"""Shared limits in several projects: slots and learnt caps are each project's (its own
Redis prefix), but the rate limit is the account's: a rate-limit 429 met in one project
pauses the processes of every project of the same server and key."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from kernel_async import AsyncKernel, Limits, RateLimitError, RetryPolicy
from kernel_async.testing import KernelEmulator

from ._redis import redis_process, redis_url

__all__ = ["redis_process", "redis_url"]  # fixtures

NO_RETRY = RetryPolicy(max_retries=0, initial_delay=0.01, max_delay=0.05, jitter=0.0)
PAUSE = 1.5  # the 429's Retry-After


@contextlib.asynccontextmanager
async def _emulator() -> AsyncIterator[KernelEmulator]:
    async with KernelEmulator() as emulator:

        async def work(ctx: Any, payload: Any) -> Any:
            return payload

        emulator.add_action("app", "work", work)
        yield emulator


async def _waited_after_a_429(
    emulator: KernelEmulator, meets: AsyncKernel, other: AsyncKernel, *more: AsyncKernel
) -> float:
    """How long a create of ``other`` waits once ``meets`` met a rate-limit 429 (every
    client, ``more`` first, having made its shared limits with a create)."""
    for client in (*more, meets, other):
        await client.invocations.create("app", "work", async_=True)
    emulator.faults.rate_limit(times=1, retry_after=PAUSE, method="POST")
    first = asyncio.ensure_future(meets.invocations.create("app", "work", async_=True))
    await asyncio.sleep(0.2)  # its 429 met (a retry, if any, waits out Retry-After)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await other.invocations.create("app", "work", async_=True)
    waited = loop.time() - start
    with contextlib.suppress(RateLimitError):
        await first
    return waited


async def _second_create_wait(url: str, first: str | None, second: str | None) -> float:
    limits = Limits(shared=url)
    async with (
        _emulator() as emulator,
        emulator.client(retry=NO_RETRY, limits=limits, project=first) as one,
        emulator.client(retry=NO_RETRY, limits=limits, project=second) as two,
    ):
        return await _waited_after_a_429(emulator, one, two)


async def test_control_same_project_a_rate_429_pauses_the_other_process(redis_url: str) -> None:
    assert await _second_create_wait(redis_url, "A", "A") > 1.0


async def test_a_rate_429_in_project_a_pauses_a_process_in_project_b(redis_url: str) -> None:
    # Same server, same key: the same account's rate limit. With the pause under the
    # project's prefix (119f278), the other process sent at once and met the 429 itself.
    assert await _second_create_wait(redis_url, "A", "B") > 1.0


async def test_a_rate_429_without_project_pauses_a_process_in_a_project(redis_url: str) -> None:
    assert await _second_create_wait(redis_url, None, "B") > 1.0


async def test_a_rate_429_met_by_a_copy_in_b_pauses_another_process_in_b(redis_url: str) -> None:
    # In one process the gate tells Redis through its first queue's shared limits (A's,
    # the parent creating first): a 429 the copy in B met must reach processes in B too.
    limits = Limits(shared=redis_url)
    async with (
        _emulator() as emulator,
        emulator.client(retry=NO_RETRY, limits=limits, project="A") as parent,
        emulator.client(retry=NO_RETRY, limits=limits, project="B") as other,
    ):
        in_b = parent.with_options(project="B")
        assert await _waited_after_a_429(emulator, in_b, other, parent) > 1.0
