"""Fan-out: 200 invocations at once with bounded concurrency, results gathered.

One client, one connection pool; a semaphore bounds how many run at a time; rate limits
(429 with Retry-After) are absorbed by the retry policy, and ``create`` is never retried in
a way that could start an invocation twice. Uses asyncio.TaskGroup (Python 3.11+), falling
back to gather on 3.10.

    python examples/fan_out.py
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

from kernel_async import AsyncKernel, Invocation, RetryPolicy

try:
    from examples._emulator import kernel_client
except ImportError:  # run as a script from the examples folder
    from _emulator import kernel_client  # type: ignore[no-redef,import-not-found]

N = 200
CONCURRENCY = 50


async def fan_out(
    kernel: AsyncKernel, n: int = N, concurrency: int = CONCURRENCY
) -> list[Invocation]:
    """Run ``n`` invocations, at most ``concurrency`` at a time; return the final states."""
    limit = asyncio.Semaphore(concurrency)
    results: list[Invocation] = []

    async def one(i: int) -> None:
        async with limit:
            inv = await kernel.invocations.run("demo-app", "crawl", payload={"pages": 1 + i % 3})
            results.append(inv)

    if sys.version_info >= (3, 11):
        async with asyncio.TaskGroup() as group:  # one failure cancels the rest
            for i in range(n):
                group.create_task(one(i))
    else:  # pragma: no cover - Python 3.10
        await asyncio.gather(*(one(i) for i in range(n)))
    return results


async def main(n: int = N) -> Counter[str]:
    # Patient with rate limits: more retries, and Retry-After honoured up to a minute.
    policy = RetryPolicy(max_retries=6, initial_delay=0.1, max_delay=2.0)
    async with kernel_client(retry=policy) as kernel:
        # A KernelError in one task cancels the others; TaskGroup raises it in an
        # ExceptionGroup (catch it with `except* KernelError` on 3.11+).
        results = await fan_out(kernel, n)
    return Counter(inv.status for inv in results)


if __name__ == "__main__":
    print(dict(asyncio.run(main())))
