"""Fan-out: 200 invocations at once, under the service's limits, with no semaphore.

The most natural code works: a TaskGroup (or gather) of ``run()`` calls. The client learns
each app's concurrency limit from the service's 429s and queues the creates beyond it, and
it waits out the rate limit for every request at once; each invocation is created exactly
once. ``map()`` does the same and hands you the results as they finish. Uses
asyncio.TaskGroup (Python 3.11+), falling back to gather on 3.10.

    python examples/fan_out.py
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

from kernel_async import AsyncKernel, Invocation, LimitStats

try:
    from examples._emulator import kernel_client
except ImportError:  # run as a script from the examples folder
    from _emulator import kernel_client  # type: ignore[no-redef,import-not-found]

N = 200


async def fan_out(kernel: AsyncKernel, n: int = N) -> list[Invocation]:
    """Run ``n`` invocations at once and return their final states."""
    payloads = [{"pages": 1 + i % 3} for i in range(n)]
    if sys.version_info >= (3, 11):
        async with asyncio.TaskGroup() as group:  # one failure cancels the rest
            tasks = [
                group.create_task(kernel.invocations.run("demo-app", "crawl", payload=p))
                for p in payloads
            ]
        return [task.result() for task in tasks]
    return await asyncio.gather(  # pragma: no cover - Python 3.10
        *(kernel.invocations.run("demo-app", "crawl", payload=p) for p in payloads)
    )


async def fan_out_as_they_finish(kernel: AsyncKernel, n: int = N) -> Counter[str]:
    """The same with ``map()``: one result per payload as each finishes; leaving the loop
    early would cancel the invocations still running."""
    statuses: Counter[str] = Counter()
    payloads = ({"pages": 1 + i % 3} for i in range(n))
    async with kernel.invocations.map("demo-app", "crawl", payloads) as results:
        async for result in results:
            statuses[result.invocation.status if result.invocation else "error"] += 1
    return statuses


async def main(n: int = N) -> tuple[Counter[str], Counter[str], LimitStats]:
    async with kernel_client() as kernel:
        # A KernelError in one task cancels the others; TaskGroup raises it in an
        # ExceptionGroup (catch it with `except* KernelError` on 3.11+).
        gathered = Counter(inv.status for inv in await fan_out(kernel, n))
        mapped = await fan_out_as_they_finish(kernel, n)
        return gathered, mapped, kernel.limit_stats()


if __name__ == "__main__":
    gathered, mapped, stats = asyncio.run(main())
    print("gather:", dict(gathered), " map:", dict(mapped))
    app = stats.apps["demo-app"]
    print(
        f"learnt limit {app.limit}; {stats.concurrency_limited} concurrency and "
        f"{stats.rate_limited} rate-limit 429s absorbed"
    )
