"""The commands that run the emulator: serve, and the fan-out demo against an embedded one."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib
import signal
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _retry
from .._client import AsyncKernel
from .._limits import AppLimitStats, LimitStats
from .._retry import RetryPolicy
from ..errors import KernelError
from ..models import Invocation, InvocationStateEvent
from ._common import EXIT_FAILED, EXIT_OK, limit_text, run_all
from ._output import Output, Progress

if TYPE_CHECKING:
    from ..testing import Quotas


async def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    from ..testing import KernelEmulator, Quotas
    from ..testing.demo import install_demo_actions

    quotas = Quotas(
        max_running=args.org_cap,
        max_running_per_app=args.app_cap,
        requests_per_window=args.rate,
        window=args.rate_window,
    )
    emulator = KernelEmulator(
        api_key=args.emulator_key,
        host=args.host,
        port=args.port,
        heartbeat_interval=args.heartbeat_interval,
        quotas=quotas,
    )
    install_demo_actions(emulator)
    for spec in args.actions or ():
        load_actions(spec)(emulator)
    try:
        await emulator.start()
    except OSError as exc:
        await emulator.stop()
        in_use = exc.errno == errno.EADDRINUSE or "in use" in str(exc)
        reason = "the address is already in use" if in_use else (exc.strerror or str(exc))
        raise KernelError(f"cannot serve on {args.host}:{args.port}: {reason}") from None
    async with emulator:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # before the banner: it says Ctrl-C
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        out.line(f"Kernel API emulator on {emulator.url}", style="bold")
        out.line(f"export KERNEL_BASE_URL={emulator.url}")
        out.line(f"export KERNEL_API_KEY={emulator.api_key}")
        out.line(_quota_text(quotas), style="dim")
        out.line("Ctrl-C to stop.", style="dim")
        await stop.wait()
    out.line(_quota_summary(quotas))
    return EXIT_OK


def _quota_text(quotas: Quotas) -> str:
    def cap(value: int | None) -> str:
        return "none" if value is None else str(value)

    rate = quotas.requests_per_window
    window = f"{quotas.window:g}s"
    return (
        f"Quotas: org cap {cap(quotas.max_running)}, app cap {cap(quotas.max_running_per_app)}, "
        f"rate limit {'none' if rate is None else f'{rate} requests per {window}'}."
    )


def _quota_summary(quotas: Quotas) -> str:
    """What the quotas did, said when the emulator stops."""
    stats = quotas.stats
    by_app = ", ".join(f"{app}: {n}" for app, n in sorted(stats.peak_running_by_app.items()))
    return (
        f"Stopped. Most running at once: {stats.peak_running}"
        + (f" ({by_app})" if by_app else "")
        + f"; refused {_count(stats.concurrency_rejected, 'create')} over a cap and "
        f"{_count(stats.rate_rejected, 'request')} over the rate limit."
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


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
    from ..testing import KernelEmulator, Quotas
    from ..testing.demo import DEMO_APP, install_demo_actions

    if args.n < 1:
        raise ValueError("-n must be at least 1")
    quotas = Quotas(
        max_running_per_app=args.app_cap, requests_per_window=args.rate_limit, window=1.0
    )
    emulator = KernelEmulator(heartbeat_interval=1.0, seed=args.seed, quotas=quotas)
    install_demo_actions(emulator, seed=args.seed)
    # Real-world weather on top of the limits: some injected 429s and some cut streams.
    emulator.faults.chaos(rate_limit=0.02, cut=0.1, retry_after=0.05, seed=args.seed)
    plan = ["summarize", "crawl", "flaky", "summarize", "flaky", "echo", "crawl", "flaky"]
    policy = RetryPolicy(max_retries=5, initial_delay=0.05, max_delay=1.0)
    retried = 0
    highest = 0  # the highest limit learnt, read after each create (where it can grow)

    async def count_retries(req: Any, handler: Any) -> Any:
        nonlocal retried
        if req.headers.get(_retry.RETRY_COUNT_HEADER, "0") != "0":
            retried += 1
        return await handler(req)

    latencies: list[float] = []
    counts = {"succeeded": 0, "failed": 0, "errors": 0, "events": 0}
    progress = Progress(out, args.n)
    loop = asyncio.get_running_loop()

    async def one(i: int, kernel: AsyncKernel) -> None:
        nonlocal highest
        action = plan[i % len(plan)]
        payload: dict[str, Any] = {"pages": 3 + i % 5, "text": f"document {i} " * (1 + i % 7)}
        start = loop.time()
        try:
            # No semaphore: creates beyond the app's limit wait for a slot in the client.
            created = await kernel.invocations.create(
                DEMO_APP, action, payload=payload, async_=True
            )
            highest = max(highest, _learnt(kernel.limit_stats().apps.get(DEMO_APP)))
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
        progress.advance(
            f"✓ {counts['succeeded']}  ✗ {counts['failed']}  events {counts['events']}"
        )

    started = time.perf_counter()
    # timeout=None: a create waits for a slot as long as the queue takes.
    options: dict[str, Any] = {"retry": policy, "middlewares": [count_retries], "timeout": None}
    async with emulator, emulator.client(**options) as kernel:
        with progress:
            await run_all(one(i, kernel) for i in range(args.n))
        limits = kernel.limit_stats()
    wall = time.perf_counter() - started
    out.table(
        f"kernel-async demo: {args.n} invocations at once, under an app cap of "
        f"{args.app_cap} and {args.rate_limit} requests/s",
        ["metric", "value"],
        _demo_rows(args.n, counts, latencies, wall, emulator, limits, retried, highest),
    )
    return EXIT_OK if counts["errors"] == 0 else EXIT_FAILED


def _learnt(app: AppLimitStats | None) -> int:
    """The limit ``app`` learnt from concurrency 429s (0: none learnt yet)."""
    if app is None or app.source != "learnt" or app.limit is None:
        return 0
    return app.limit


def _demo_rows(
    n: int,
    counts: dict[str, int],
    latencies: list[float],
    wall: float,
    emulator: Any,
    limits: LimitStats,
    retried: int,
    highest: int,
) -> list[list[str]]:
    from ..testing.demo import DEMO_APP

    faults, quotas = emulator.faults.stats, emulator.quotas.stats
    app = limits.apps.get(DEMO_APP)
    quantiles = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else latencies * 19
    busy = sum(
        (inv.finished_at - inv.started_at).total_seconds()
        for inv in emulator.snapshot()
        if inv.finished_at is not None
    )
    # The fastest the limits allow: all action time spread over the cap, or every request
    # that got through spread over the rate limit, whichever is longer.
    by_cap = busy / emulator.quotas.max_running_per_app
    by_rate = (len(emulator.requests) - quotas.rate_rejected) / emulator.quotas.requests_per_window
    ideal = f"{max(by_cap, by_rate):.2f}s: " + (
        "action time ÷ cap" if by_cap >= by_rate else "requests ÷ rate limit"
    )
    return [
        ["invocations", str(n)],
        ["succeeded", str(counts["succeeded"])],
        ["failed (by the action)", str(counts["failed"])],
        ["client errors", str(counts["errors"])],
        ["started more than once", str(emulator.create_count - n)],
        ["concurrency limit", limit_text(app)],
        ["highest limit learnt", str(highest) if highest else "none"],
        ["most running at once", str(quotas.peak_running_by_app.get(DEMO_APP, 0))],
        ["429s absorbed: concurrency", str(limits.concurrency_limited)],
        [
            "429s absorbed: rate limit",
            f"{limits.rate_limited} ({quotas.rate_rejected} from the limit, "
            f"{faults.rate_limited} injected)",
        ],
        [
            "time queued for a slot",
            f"mean {limits.queued_seconds / n:.2f}s, longest {limits.max_queued_seconds:.2f}s",
        ],
        ["requests retried after errors", str(retried)],
        ["streams cut and resumed", str(faults.cuts)],
        ["events streamed", str(counts["events"])],
        ["latency p50 / p95", f"{quantiles[9]:.3f}s / {quantiles[18]:.3f}s" if quantiles else "-"],
        ["wall time", f"{wall:.2f}s (the limits allow {ideal})"],
    ]
