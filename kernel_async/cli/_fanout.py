"""``kernel-async invoke APP ACTION --payloads FILE``: one invocation per JSON line."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from typing import Any

import msgspec

from .._fanout import MapResult
from ..journal import Journal, ResumeSummary
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Interrupted,
    UsageError,
    client,
    interruptible,
    json_arg,
    read_text,
)
from ._output import Output, Progress

__all__ = ["cmd_invoke_many", "read_payloads"]

_SHOWN_FAILURES = 10


def read_payloads(path: str) -> list[str]:
    """The payloads of a JSON Lines file (``-``: standard input), one per non-blank line,
    each checked to be JSON. Raises `UsageError` naming the first bad line."""
    payloads = []
    for number, line in enumerate(read_text(path, "the payloads").splitlines(), 1):
        line = line.strip()
        if line:
            payloads.append(json_arg(line, f"{path}, line {number}"))
    if not payloads:
        raise UsageError(f"{path} has no payloads (one JSON value per line)")
    return payloads


async def cmd_invoke_many(args: argparse.Namespace, out: Output) -> int:
    payloads = read_payloads(args.payloads)
    as_json = args.output == "json"
    counts: Counter[str] = Counter()
    failures: list[MapResult] = []
    progress = Progress(out, len(payloads), quiet=as_json)
    started = time.perf_counter()
    journal = None
    if args.journal is not None:
        journal = Journal(
            args.journal, on_resume=lambda s: _say_resumed(args.journal, s, len(payloads))
        )
    async with client(args) as kernel:

        async def fan_out() -> None:
            async with kernel.invocations.map(
                args.app,
                args.action,
                payloads,
                version=args.version,
                concurrency=args.concurrency,
                async_timeout_seconds=args.async_timeout,
                journal=journal,
            ) as results:
                async for result in results:
                    status = result.invocation.status if result.invocation else "error"
                    counts[status] += 1
                    if not result.ok:
                        failures.append(result)
                    if as_json:
                        out.line(_result_json(result))
                    progress.advance(
                        f"✓ {counts['succeeded']}  ✗ {counts['failed']}  errors {counts['error']}"
                    )

        try:
            with progress:
                # Ctrl-C leaves map(), which cancels the invocations still running.
                await interruptible(fan_out())
        except Interrupted:
            out.error(
                "interrupted: the invocations still running were cancelled"
                + ("" if journal is None else "; run the same command to create them again")
            )
            return EXIT_INTERRUPTED
        stats = kernel.limit_stats()
    wall = time.perf_counter() - started
    if not as_json:
        for result in sorted(failures, key=lambda r: r.index)[:_SHOWN_FAILURES]:
            out.line(f"line {result.index + 1}: {_failure(result)}", style="red")
        if len(failures) > _SHOWN_FAILURES:
            out.line(f"... and {len(failures) - _SHOWN_FAILURES} more", style="red")
        app = stats.apps.get(args.app)
        out.table(
            f"{args.app}/{args.action}: {len(payloads)} invocations",
            ["metric", "value"],
            [
                ["succeeded", str(counts["succeeded"])],
                ["failed (by the action)", str(counts["failed"])],
                ["errors (not seen through)", str(counts["error"])],
                ["concurrency limit", "-" if app is None or app.limit is None else str(app.limit)],
                [
                    "429s absorbed",
                    f"{stats.concurrency_limited} concurrency, {stats.rate_limited} rate limit",
                ],
                ["wall time", f"{wall:.2f}s"],
            ],
        )
    return EXIT_OK if counts["succeeded"] == len(payloads) else EXIT_FAILED


def _say_resumed(path: str, summary: ResumeSummary, total: int) -> None:
    """Tell (on stderr) what the journal resumed, before anything is created."""
    left = total - summary.finished - summary.reattached - summary.adopted - summary.unresolved
    parts = [
        f"{summary.finished} finished earlier",
        f"{summary.reattached} re-attached",
        f"{summary.adopted} adopted after a crash",
        *([f"{summary.unresolved} unresolved"] if summary.unresolved else []),
        f"{left} to create",
    ]
    verb = "resuming" if summary.resumed else "new"
    print(f"journal {path}: {verb}: {', '.join(parts)}", file=sys.stderr, flush=True)


def _failure(result: MapResult) -> str:
    if result.invocation is not None:
        inv = result.invocation
        return f"{inv.id} {inv.status}: {inv.status_reason or inv.output or ''}".rstrip(": ")
    return f"{result.invocation_id or 'not created'}: {result.error}"


class _ResultLine(msgspec.Struct, omit_defaults=True):
    index: int
    status: str
    id: str | None = None
    output: Any = None
    status_reason: str | None = None
    error: str | None = None


def _result_json(result: MapResult) -> str:
    inv = result.invocation
    if inv is None:
        line = _ResultLine(result.index, "error", result.invocation_id, error=str(result.error))
    else:
        output = msgspec.Raw(inv.output.encode()) if inv.output is not None else None
        line = _ResultLine(result.index, inv.status, inv.id, output, inv.status_reason)
    return msgspec.json.encode(line).decode()
