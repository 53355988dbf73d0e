"""The fan-out scenario: N invocations of D seconds, all at once, against the emulator
enforcing a per-app cap and a request rate limit, as the most natural user code would
start them (a plain ``gather``).

Each (client, round) gets a fresh emulator in its own process (pinned to one core) and a
fresh client worker process (pinned to the other); the emulator reports what it saw:
creates, payloads started more than once, 429s, the most running at once.

``python -m benchmarks.fanout --client NAME --url URL --key KEY ...`` is the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APP, ACTION = "bench", "sleep"


@dataclass(frozen=True)
class Scenario:
    """What the emulator enforces and what the clients do."""

    n: int = 500
    duration: float = 0.25
    cap: int = 20
    rate: int = 200  # requests per window
    window: float = 1.0

    @property
    def ideal(self) -> float:
        """The makespan the cap allows: N * duration / cap."""
        return self.n * self.duration / self.cap


#: Clients of the scenario: ours as a plain gather of run(), ours behind a hand-tuned
#: semaphore (the baseline to match), and the official SDK's gather of create + follow
#: on each of its HTTP backends (default retries: 2).
FANOUT_CLIENTS = ["kernel_async", "kernel_async_semaphore", "official", "official_aiohttp"]


def emulator_process(conn: Connection, scenario: dict[str, Any], core: int | None) -> None:
    """Serve the emulator until asked for its report (the target of a spawned process)."""
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    from kernel_async.testing import KernelEmulator, Quotas

    s = Scenario(**scenario)

    async def main() -> None:
        quotas = Quotas(max_running_per_app=s.cap, requests_per_window=s.rate, window=s.window)
        emulator = KernelEmulator(quotas=quotas, heartbeat_interval=15.0)

        async def sleep(ctx: Any, payload: Any) -> Any:
            await asyncio.sleep(s.duration)
            return payload

        emulator.add_action(APP, ACTION, sleep)
        async with emulator:
            conn.send((emulator.url, emulator.api_key))
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            payloads = Counter(inv.payload for inv in emulator.snapshot())
            stats = emulator.quotas.stats
            conn.send(
                {
                    "created": emulator.create_count,
                    "started_twice": sum(c - 1 for c in payloads.values() if c > 1),
                    "concurrency_429s": stats.concurrency_rejected,
                    "rate_429s": stats.rate_rejected,
                    "peak_running": stats.peak_running_by_app.get(APP, 0),
                    "requests": len(emulator.requests),
                }
            )

    asyncio.run(main())


# --- the clients (run in the worker process) -------------------------------------------------


async def ours(url: str, key: str, n: int, cap: int, *, semaphore: bool) -> list[str]:
    from kernel_async import AsyncKernel

    async with AsyncKernel(key, base_url=url, connection_limit=0) as kernel:
        limit = asyncio.Semaphore(cap if semaphore else n)

        async def one(i: int) -> str:
            async with limit:
                inv = await kernel.invocations.run(APP, ACTION, payload={"i": i})
            return inv.status

        return await _gather(one, n)


async def official(
    url: str,
    key: str,
    n: int,
    cap: int,
    *,
    aiohttp_backend: bool,
    app: str = APP,
    payloads: list[Any] | None = None,
) -> list[str]:
    """The official SDK's gather of create + follow (``payloads``: one per invocation,
    default ``{"i": i}``)."""
    import kernel

    http_client = kernel.DefaultAioHttpClient() if aiohttp_backend else None
    async with kernel.AsyncKernel(api_key=key, base_url=url, http_client=http_client) as client:

        async def one(i: int) -> str:
            created = await client.invocations.create(
                app_name=app,
                action_name=ACTION,
                version="latest",
                payload=json.dumps({"i": i} if payloads is None else payloads[i]),
                async_=True,
            )
            stream = await client.invocations.follow(created.id)
            async for event in stream:
                if event.event == "invocation_state" and event.invocation.status in (
                    "succeeded",
                    "failed",
                ):
                    status: str = event.invocation.status
                    await stream.close()
                    return status
            raise RuntimeError("the stream ended without a terminal state")

        return await _gather(one, n)


async def _gather(one: Callable[[int], Awaitable[str]], n: int) -> list[str]:
    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    return [r if isinstance(r, str) else type(r).__name__ for r in results]


RUNNERS: dict[str, Callable[[str, str, int, int], Awaitable[list[str]]]] = {
    "kernel_async": lambda u, k, n, c: ours(u, k, n, c, semaphore=False),
    "kernel_async_semaphore": lambda u, k, n, c: ours(u, k, n, c, semaphore=True),
    "official": lambda u, k, n, c: official(u, k, n, c, aiohttp_backend=False),
    "official_aiohttp": lambda u, k, n, c: official(u, k, n, c, aiohttp_backend=True),
}


# --- the runner --------------------------------------------------------------------------------


def run_round(
    client: str, scenario: Scenario, server_core: int | None, client_core: int | None
) -> dict[str, Any]:
    """One client against a fresh emulator: the client's outcome and the emulator's report."""
    import multiprocessing

    parent, child = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(
        target=emulator_process, args=(child, asdict(scenario), server_core), daemon=True
    )
    server.start()
    try:
        url, key = parent.recv()
        cmd = [sys.executable, "-m", "benchmarks.fanout", "--client", client, "--url", url]
        cmd += ["--key", key, "--n", str(scenario.n), "--cap", str(scenario.cap)]
        if client_core is not None:
            cmd += ["--core", str(client_core)]
        done = subprocess.run(
            cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800, check=False
        )
        parent.send("report")
        report: dict[str, Any] = parent.recv()
    finally:
        server.terminate()
        server.join(5)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    outcome: dict[str, Any] = json.loads(done.stdout)
    return {**outcome, **report}


def combine(scenario: Scenario, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians across rounds of the makespan; the worst round of every count."""
    errors = [r for r in rounds if "error" in r]
    if errors:
        return errors[0]
    n = scenario.n
    makespan = statistics.median(r["makespan"] for r in rounds)
    worst = {
        key: max(r[key] for r in rounds)
        for key in ("failed_calls", "started_twice", "concurrency_429s", "rate_429s")
    }
    return {
        "rounds": len(rounds),
        "completed": min(r["completed"] for r in rounds),
        "n": n,
        "makespan_s": makespan,
        "makespan_rounds": [r["makespan"] for r in rounds],
        "makespan_over_ideal": makespan / scenario.ideal,
        "429s_per_invocation": max((r["concurrency_429s"] + r["rate_429s"]) / n for r in rounds),
        "peak_running": max(r["peak_running"] for r in rounds),
        "errors": rounds[-1]["errors"],
        **worst,
    }


async def worker(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    statuses = await RUNNERS[args.client](args.url, args.key, args.n, args.cap)
    makespan = time.perf_counter() - started
    counts = Counter(statuses)
    completed = counts.pop("succeeded", 0) + counts.pop("failed", 0)
    return {
        "makespan": makespan,
        "completed": completed,
        "failed_calls": sum(counts.values()),
        "errors": dict(counts),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", required=True, choices=sorted(RUNNERS))
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--cap", type=int, required=True)
    parser.add_argument("--core", type=int, default=None)
    args = parser.parse_args()
    if args.core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    json.dump(asyncio.run(worker(args)), sys.stdout)


if __name__ == "__main__":
    main()
