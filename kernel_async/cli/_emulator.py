"""The commands that run the emulator: serve, and the fan-out demo against an embedded one."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import signal
import statistics
import time
from collections.abc import Callable
from typing import Any

from .. import _retry
from .._client import AsyncKernel
from .._retry import RetryPolicy
from ..errors import KernelError
from ..models import Invocation, InvocationStateEvent
from ._common import EXIT_FAILED, EXIT_OK
from ._output import Output, Progress


async def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    from ..testing import KernelEmulator
    from ..testing.demo import install_demo_actions

    emulator = KernelEmulator(
        api_key=args.emulator_key,
        host=args.host,
        port=args.port,
        heartbeat_interval=args.heartbeat_interval,
    )
    install_demo_actions(emulator)
    for spec in args.actions or ():
        load_actions(spec)(emulator)
    async with emulator:
        out.line(f"Kernel API emulator on {emulator.url}", style="bold")
        out.line(f"export KERNEL_BASE_URL={emulator.url}")
        out.line(f"export KERNEL_API_KEY={emulator.api_key}")
        out.line("Ctrl-C to stop.", style="dim")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    return EXIT_OK


def load_actions(spec: str) -> Callable[[Any], None]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--actions takes module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from exc
    func = getattr(module, attr, None)
    if not callable(func):
        raise ValueError(f"{spec!r} is not a function taking the emulator")
    return func  # type: ignore[no-any-return]


async def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    from ..testing import KernelEmulator
    from ..testing.demo import DEMO_APP, install_demo_actions

    if args.n < 1 or args.concurrency < 1:
        raise ValueError("-n and --concurrency must be at least 1")
    emulator = KernelEmulator(heartbeat_interval=1.0, seed=args.seed)
    install_demo_actions(emulator, seed=args.seed)
    # Real-world weather: some rate limiting (with Retry-After) and some cut streams.
    emulator.faults.chaos(rate_limit=0.05, cut=0.1, retry_after=0.05, seed=args.seed)
    plan = ["summarize", "crawl", "flaky", "summarize", "flaky", "echo", "crawl", "flaky"]
    policy = RetryPolicy(max_retries=5, initial_delay=0.05, max_delay=1.0)
    retried = 0

    async def count_retries(req: Any, handler: Any) -> Any:
        nonlocal retried
        if req.headers.get(_retry.RETRY_COUNT_HEADER, "0") != "0":
            retried += 1
        return await handler(req)

    latencies: list[float] = []
    counts = {"succeeded": 0, "failed": 0, "errors": 0, "events": 0}
    progress = Progress(out, args.n)
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(args.concurrency)

    async def one(i: int, kernel: AsyncKernel) -> None:
        action = plan[i % len(plan)]
        payload: dict[str, Any] = {"pages": 3 + i % 5, "text": f"document {i} " * (1 + i % 7)}
        async with sem:
            start = loop.time()
            try:
                created = await kernel.invocations.create(
                    DEMO_APP, action, payload=payload, async_=True
                )
                final: Invocation | None = None
                async for event in kernel.invocations.follow(created.id):
                    counts["events"] += 1
                    if isinstance(event, InvocationStateEvent):
                        final = event.invocation
                status = final.status if final is not None else "failed"
                counts[status if status in counts else "failed"] += 1
                latencies.append(loop.time() - start)
            except KernelError as exc:
                counts["errors"] += 1
                progress.note(f"invocation {i}: {exc}")
            progress.advance(counts)

    started = time.perf_counter()
    async with emulator, emulator.client(retry=policy, middlewares=[count_retries]) as kernel:
        with progress:
            await asyncio.gather(*(one(i, kernel) for i in range(args.n)))
    wall = time.perf_counter() - started
    stats = emulator.faults.stats
    quantiles = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else latencies * 19
    rows = [
        ["invocations", str(args.n)],
        ["succeeded", str(counts["succeeded"])],
        ["failed (by the action)", str(counts["failed"])],
        ["client errors", str(counts["errors"])],
        ["429s absorbed", str(stats.rate_limited)],
        ["requests retried by the middleware", str(retried)],
        ["streams cut and resumed", str(stats.cuts)],
        ["events streamed", str(counts["events"])],
        ["latency p50 / p95", f"{quantiles[9]:.3f}s / {quantiles[18]:.3f}s" if quantiles else "-"],
        ["wall time", f"{wall:.2f}s ({args.n / wall:.0f} invocations/s)"],
    ]
    title = f"kernel-async demo: {args.n} invocations, concurrency {args.concurrency}"
    out.table(title, ["metric", "value"], rows)
    return EXIT_OK if counts["errors"] == 0 else EXIT_FAILED
