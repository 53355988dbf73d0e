"""The ``kernel-async`` command: run the emulator, drive the API, and a fan-out demo.

Terminal output uses rich when the ``cli`` extra is installed, plain text otherwise.
Errors print one line (no traceback) and exit non-zero: 1 for API and invocation failures,
2 for bad arguments, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from . import _retry
from ._client import AsyncKernel
from ._retry import RetryPolicy
from ._version import __version__
from .errors import KernelError
from .models import (
    ErrorEvent,
    Invocation,
    InvocationStateEvent,
    LogEvent,
    SSEHeartbeatEvent,
    UnknownEvent,
)

__all__ = ["main"]

T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Interrupted(Exception):
    """Ctrl-C (SIGINT) arrived while a command was waiting on the API."""


class Output:
    """Terminal output: rich when installed (and wanted), plain text otherwise."""

    def __init__(self, plain: bool = False) -> None:
        self.rich: Any = None
        if not plain:
            with contextlib.suppress(ImportError):
                from rich.console import Console

                self.rich = Console(highlight=False)
        self._err: Any = None
        if self.rich is not None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False)

    def line(self, text: str, style: str | None = None) -> None:
        if self.rich is not None:
            self.rich.print(text, style=style, markup=False, soft_wrap=True)
        else:
            print(text, flush=True)

    def error(self, text: str) -> None:
        if self._err is not None:
            self._err.print(f"error: {text}", style="bold red", markup=False, soft_wrap=True)
        else:
            print(f"error: {text}", file=sys.stderr, flush=True)

    def table(
        self, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[str]]
    ) -> None:
        if self.rich is not None:
            from rich.table import Table

            table = Table(title=title, title_justify="left")
            for column in columns:
                table.add_column(column)
            for row in rows:
                table.add_row(*row)
            self.rich.print(table)
            return
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        if title:
            print(title)
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


# --- helpers ---------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> AsyncKernel:
    return AsyncKernel(api_key=args.api_key, base_url=args.base_url)


def _payload(text: str | None) -> str | None:
    """--payload: inline JSON, or @file with JSON in it. Validated before sending."""
    if text is None:
        return None
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ValueError(f"cannot read payload file: {exc}") from exc
    try:
        msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise ValueError(f"--payload is not valid JSON: {exc}") from exc
    return text


async def _interruptible(awaitable: Awaitable[T]) -> T:
    """Await, but turn SIGINT into `_Interrupted` (after cancelling the work cleanly)."""
    loop = asyncio.get_running_loop()
    work = asyncio.ensure_future(awaitable)
    stop = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (NotImplementedError, RuntimeError):  # pragma: no cover - not on this platform
        return await work
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        waiter.cancel()
    if work.done():
        return work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    raise _Interrupted


def _clock(when: datetime) -> str:
    return when.strftime("%H:%M:%S.%f")[:-3]


def _print_event(out: Output, event: Any) -> None:
    if isinstance(event, LogEvent):
        out.line(f"{_clock(event.timestamp)}  {event.message}")
    elif isinstance(event, InvocationStateEvent):
        inv = event.invocation
        style = {"succeeded": "green", "failed": "red"}.get(inv.status, "cyan")
        reason = f" ({inv.status_reason})" if inv.status_reason else ""
        out.line(f"{_clock(event.timestamp)}  [{inv.status}]{reason}", style=style)
    elif isinstance(event, ErrorEvent):
        out.line(
            f"{_clock(event.timestamp)}  error {event.error.code}: {event.error.message}", "red"
        )
    elif isinstance(event, SSEHeartbeatEvent):
        out.line(f"{_clock(event.timestamp)}  ♥", style="dim")
    elif isinstance(event, UnknownEvent):
        out.line(f"{event.event}: {event.data.decode(errors='replace')}", style="dim")


async def _follow_printing(
    out: Output, kernel: AsyncKernel, id: str, since: str | None = None, heartbeats: bool = False
) -> Invocation | None:
    final: Invocation | None = None
    async with kernel.invocations.follow(id, since=since, heartbeats=heartbeats) as events:
        async for event in events:
            _print_event(out, event)
            if isinstance(event, InvocationStateEvent):
                final = event.invocation
    return final


def _finish(out: Output, inv: Invocation | None) -> int:
    if inv is None:
        return EXIT_FAILED
    if inv.output is not None:
        out.line(inv.output)
    return EXIT_OK if inv.status == "succeeded" else EXIT_FAILED


# --- commands --------------------------------------------------------------------------------


async def cmd_invoke(args: argparse.Namespace, out: Output) -> int:
    payload = _payload(args.payload)
    async with _client(args) as kernel:
        created = await _interruptible(
            kernel.invocations.create(
                args.app, args.action, version=args.version, payload=payload, async_=True
            )
        )
        if args.async_ and not args.follow:
            out.line(created.id)
            return EXIT_OK
        out.line(f"invocation {created.id} ({created.status})", style="bold")
        try:
            final = await _interruptible(_follow_printing(out, kernel, created.id))
        except _Interrupted:
            out.error(f"interrupted: cancelling invocation {created.id}")
            await kernel.invocations.cancel(created.id, timeout=10)
            return EXIT_INTERRUPTED
        return _finish(out, final)


async def cmd_get(args: argparse.Namespace, out: Output) -> int:
    async with _client(args) as kernel:
        inv = await kernel.invocations.retrieve(args.id)
    out.line(msgspec.json.format(msgspec.json.encode(inv), indent=2).decode())
    return EXIT_OK


async def cmd_list(args: argparse.Namespace, out: Output) -> int:
    rows: list[Invocation] = []
    async with _client(args) as kernel:
        listing = kernel.invocations.list(
            app_name=args.app,
            action_name=args.action,
            version=args.app_version,
            status=args.status,
            since=args.since,
            limit=min(args.limit, 100),
        )
        async for inv in listing:
            if args.json:
                out.line(msgspec.json.encode(inv).decode())
            else:
                rows.append(inv)
            if len(rows) >= args.limit:
                break
    if not args.json:
        out.table(
            None,
            ["ID", "APP", "ACTION", "STATUS", "STARTED", "SECONDS"],
            [
                [
                    inv.id,
                    inv.app_name,
                    inv.action_name,
                    inv.status,
                    inv.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                    ""
                    if inv.finished_at is None
                    else f"{(inv.finished_at - inv.started_at).total_seconds():.2f}",
                ]
                for inv in rows
            ],
        )
    return EXIT_OK


async def cmd_follow(args: argparse.Namespace, out: Output) -> int:
    async with _client(args) as kernel:
        try:
            final = await _interruptible(
                _follow_printing(out, kernel, args.id, args.since, args.heartbeats)
            )
        except _Interrupted:
            return EXIT_INTERRUPTED
    return _finish(out, final)


async def cmd_cancel(args: argparse.Namespace, out: Output) -> int:
    async with _client(args) as kernel:
        inv = await kernel.invocations.cancel(args.id)
    out.line(f"{inv.id} {inv.status}")
    return EXIT_OK


async def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    from .testing import KernelEmulator
    from .testing.demo import install_demo_actions

    emulator = KernelEmulator(
        api_key=args.emulator_key,
        host=args.host,
        port=args.port,
        heartbeat_interval=args.heartbeat_interval,
    )
    install_demo_actions(emulator)
    for spec in args.actions or ():
        _load_actions(spec)(emulator)
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


def _load_actions(spec: str) -> Callable[[Any], None]:
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


# --- demo ------------------------------------------------------------------------------------


async def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    from .testing import KernelEmulator
    from .testing.demo import DEMO_APP, install_demo_actions

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
    progress = _Progress(out, args.n)
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


class _Progress:
    """A progress bar with live counts (rich), or a line every 10% (plain)."""

    def __init__(self, out: Output, total: int) -> None:
        self.out = out
        self.total = total
        self.done = 0
        self._bar: Any = None
        self._task: Any = None
        self._next_report = 0.1

    def __enter__(self) -> _Progress:
        if self.out.rich is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("[bold]invoking"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                console=self.out.rich,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, counts: dict[str, int]) -> None:
        self.done += 1
        text = f"✓ {counts['succeeded']}  ✗ {counts['failed']}  events {counts['events']}"
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=text)
        elif self.done / self.total >= self._next_report or self.done == self.total:
            self.out.line(f"{self.done}/{self.total}  {text}")
            self._next_report += 0.1

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, markup=False, style="yellow")
        else:
            self.out.line(text)


# --- argument parsing ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``kernel-async`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="kernel-async",
        description="Drive the Kernel invocations API, or run its emulator.",
    )
    parser.add_argument("--version", action="version", version=f"kernel-async {__version__}")
    parser.add_argument("--plain", action="store_true", help="plain text output (no rich)")
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--base-url", default=None, help="API base URL (default $KERNEL_BASE_URL)")
    api.add_argument("--api-key", default=None, help="API key (default $KERNEL_API_KEY)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("invoke", parents=[api], help="invoke an action and print its logs live")
    p.add_argument("app")
    p.add_argument("action")
    p.add_argument("--payload", help="JSON payload, or @file to read it from a file")
    p.add_argument("--version", default="latest", help="app version (default latest)")
    p.add_argument("--async", dest="async_", action="store_true", help="print the id and exit")
    p.add_argument("--follow", action="store_true", help="with --async: follow anyway")
    p.set_defaults(run=cmd_invoke)

    p = sub.add_parser("get", parents=[api], help="show one invocation as JSON")
    p.add_argument("id")
    p.set_defaults(run=cmd_get)

    p = sub.add_parser("list", parents=[api], help="list invocations, newest first")
    p.add_argument("--app", help="filter by app name")
    p.add_argument("--action", help="filter by action name")
    p.add_argument("--app-version", help="filter by app version")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed"])
    p.add_argument("--since", help="RFC 3339 time or a duration like 5m")
    p.add_argument("--limit", type=int, default=20, help="how many to show (default 20)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(run=cmd_list)

    p = sub.add_parser("follow", parents=[api], help="print an invocation's events live")
    p.add_argument("id")
    p.add_argument("--since", help="replay from this RFC 3339 time or duration like 5m")
    p.add_argument("--heartbeats", action="store_true", help="show heartbeats too")
    p.set_defaults(run=cmd_follow)

    p = sub.add_parser("cancel", parents=[api], help="cancel an invocation")
    p.add_argument("id")
    p.set_defaults(run=cmd_cancel)

    p = sub.add_parser("serve", help="run the API emulator with the demo actions")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8787)
    p.add_argument("--api-key", dest="emulator_key", default=None, help="key to accept")
    p.add_argument("--heartbeat-interval", type=float, default=15.0)
    p.add_argument(
        "--actions",
        action="append",
        metavar="MODULE:FUNC",
        help="a function called with the emulator to register more actions (repeatable)",
    )
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("demo", help="fan out invocations against an embedded emulator")
    p.add_argument("-n", type=int, default=200, help="invocations (default 200)")
    p.add_argument("--concurrency", type=int, default=50, help="at once (default 50)")
    p.add_argument("--seed", type=int, default=None, help="make the run reproducible")
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(plain=args.plain or bool(os.environ.get("NO_COLOR")))
    try:
        code: int = asyncio.run(args.run(args, out))
    except _Interrupted:
        out.error("interrupted")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ValueError, TypeError) as exc:
        out.error(str(exc))
        return EXIT_USAGE
    except KernelError as exc:
        out.error(str(exc))
        return EXIT_FAILED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
