"""Measure one client on one case in a fresh process; print the result as JSON.

A fresh process per (client, case) keeps peak RSS honest and one client's warm-up out of
another's numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .clients import CLIENTS, Client

#: case → (operation, default count, concurrency). For "follow" the count is streams; the
#: result is per event. For "hold" the count is how many streams are open at once.
CASES: dict[str, tuple[str, int, int]] = {
    "retrieve_c1": ("retrieve", 2_000, 1),
    "retrieve_c50": ("retrieve", 5_000, 50),
    "create_c50": ("create", 5_000, 50),
    # The shape users write (and an outside harness measured): every task gathered at
    # once, each create behind an asyncio.Semaphore(50); the answer is a finished one.
    "create_gather_sync": ("create_done", 3_000, 50),
    "create_gather_async": ("create_done_async", 3_000, 50),
    "list100": ("list100", 400, 1),
    "follow_10k": ("follow", 1, 1),
    "follow_burst": ("follow_burst", 1, 1),
    "lifecycle_c200": ("lifecycle", 2_000, 200),
    "streams_10k": ("hold", 10_000, 10_000),
    "map_c50": ("map", 2, 1),
    "map_c50_journal": ("map_journal", 2, 1),
    "map_c50_journal_nofsync": ("map_journal_nofsync", 2, 1),
}
#: Cases run as one gather of every call at once, each behind a semaphore of their
#: concurrency (instead of that many workers each making its share of calls in turn).
GATHERED = frozenset({"create_gather_sync", "create_gather_async"})
#: The operations whose unit is an event (they return how many they saw).
PER_EVENT = frozenset({"follow", "follow_burst"})
#: The operations whose unit is an invocation of a batch (they return how many).
PER_ITEM = frozenset({"map", "map_journal", "map_journal_nofsync"})


def rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident memory now, in MB (Linux; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return rss_mb()


async def timed(run: Callable[[], Awaitable[int]]) -> tuple[float, float, int]:
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    units = await run()
    return time.process_time() - cpu, time.perf_counter() - wall, units


async def measure(client: Client, case: str, scale: float, repeat: int) -> dict[str, Any]:
    op, count, concurrency = CASES[case]
    count = max(1, int(count * scale))
    if op == "hold":
        return await measure_hold(client, count)
    call = getattr(client, op)

    async def sequential() -> int:
        units = 0
        for _ in range(count):
            result = await call()
            units += result if op in PER_EVENT | PER_ITEM else 1
        return units

    async def concurrent() -> int:
        per_worker = max(1, count // concurrency)

        async def worker() -> int:
            for _ in range(per_worker):
                await call()
            return per_worker

        return sum(await asyncio.gather(*(worker() for _ in range(concurrency))))

    async def gathered() -> int:
        semaphore = asyncio.Semaphore(concurrency)

        async def task() -> None:
            async with semaphore:
                await call()

        await asyncio.gather(*(task() for _ in range(count)))
        return count

    run = gathered if case in GATHERED else sequential if concurrency == 1 else concurrent
    await run()  # warm-up: connections, caches, lazy imports
    cpu_per_unit, wall_per_unit = [], []
    for _ in range(repeat):
        cpu, wall, units = await timed(run)
        cpu_per_unit.append(cpu / units)
        wall_per_unit.append(wall / units)
    return {
        "unit": "event"
        if op in PER_EVENT
        else ("invocation" if op == "lifecycle" or op in PER_ITEM else "call"),
        "cpu_us": statistics.median(cpu_per_unit) * 1e6,
        "wall_us": statistics.median(wall_per_unit) * 1e6,
        "cpu_us_runs": [x * 1e6 for x in cpu_per_unit],
        "peak_rss_mb": rss_mb(),
    }


async def measure_hold(client: Client, count: int) -> dict[str, Any]:
    gc.collect()
    before = current_rss_mb()
    cpu, wall = time.process_time(), time.perf_counter()
    held = await asyncio.gather(*(client.hold() for _ in range(count)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    gc.collect()
    now = current_rss_mb()
    for h in held:
        await client.release(h)
    return {
        "unit": "stream",
        "cpu_us": cpu / count * 1e6,
        "wall_us": wall / count * 1e6,
        "peak_rss_mb": rss_mb(),
        "rss_per_stream_kb": (now - before) * 1024 / count,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with CLIENTS[args.client](args.url) as client:
        return await measure(client, args.case, args.scale, args.repeat)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", required=True, choices=sorted(CLIENTS))
    parser.add_argument("--case", required=True, choices=sorted(CASES))
    parser.add_argument("--url", required=True)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--core", type=int, default=None)
    args = parser.parse_args()
    if args.core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    result = asyncio.run(main_async(args))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
