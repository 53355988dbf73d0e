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
    describe_error,
    interruptible,
    json_arg,
    json_line,
    json_value,
    limit_text,
    read_text,
    unreachable,
)
from ._output import Output, Progress

__all__ = ["GIVE_UP_AFTER", "cmd_invoke_many", "read_payloads"]

_SHOWN_FAILURES = 10

#: Creates in a row that could not reach the server (refused, unresolved) after which a
#: fan-out stops: the server is not there.
GIVE_UP_AFTER = 3


def read_payloads(path: str) -> list[tuple[int, str]]:
    """The payloads of a JSON Lines file (``-``: standard input) with their line numbers,
    one per non-blank line, each checked to be JSON. Lines end at ``\\n`` only (U+2028,
    U+2029 and U+0085 are valid inside JSON strings); a ``\\r`` before it and a UTF-8 byte
    order mark are dropped. Raises `UsageError` naming the first bad line."""
    payloads = []
    for number, line in enumerate(read_text(path, "the payloads").split("\n"), 1):
        line = line.strip(" \t\r")  # JSON's own whitespace, nothing more
        if line:
            payloads.append((number, json_arg(line, f"{path}, line {number}")))
    if not payloads:
        raise UsageError(f"{path} has no payloads (one JSON value per line)")
    return payloads


class _ResultLine(msgspec.Struct, omit_defaults=True):
    """One payload's result, as ``-o json`` prints it. ``index`` is the payload's 0-based
    position in the input (blank lines skipped), as `MapResult.index` and a journal number
    it; ``line`` is its line number in the file (blank lines counted)."""

    index: int
    line: int
    status: str
    id: str | None = None
    output: Any = None
    status_reason: str | None = None
    error: str | None = None


def _result_line(result: MapResult, line: int) -> _ResultLine:
    inv, index = result.invocation, result.index
    if inv is None:
        error = describe_error(result.error) if result.error is not None else None
        return _ResultLine(index, line, "error", result.invocation_id, error=error)
    output = None if inv.output is None else json_value(inv.output)
    return _ResultLine(index, line, inv.status, inv.id, output, inv.status_reason)


def _label(result: _ResultLine) -> str:
    """How the text output names a payload: ``#index`` as in JSON, and its line in the
    file where that is not ``index + 1`` (blank lines skipped before it)."""
    where = "" if result.line == result.index + 1 else f" (line {result.line})"
    return f"#{result.index}{where}"


async def cmd_invoke_many(args: argparse.Namespace, out: Output) -> int:
    numbered = read_payloads(args.payloads)
    lines = [number for number, _ in numbered]
    mode = "array" if args.json else args.output  # text, json (JSON Lines) or array
    counts: Counter[str] = Counter()
    failures: list[_ResultLine] = []
    collected: list[_ResultLine] = []
    in_a_row = 0
    gave_up: MapResult | None = None
    progress = Progress(out, len(numbered), quiet=mode != "text")
    started = time.perf_counter()
    journal = None
    if args.journal is not None:
        journal = Journal(
            args.journal, on_resume=lambda s: _say_resumed(args.journal, s, len(numbered))
        )
    async with client(args) as kernel:

        async def fan_out() -> None:
            nonlocal in_a_row, gave_up
            async with kernel.invocations.map(
                args.app,
                args.action,
                [payload for _, payload in numbered],
                version=args.version,
                concurrency=args.concurrency,
                async_timeout_seconds=args.async_timeout,
                journal=journal,
            ) as results:
                async for result in results:
                    line = _result_line(result, lines[result.index])
                    counts[line.status] += 1
                    if not result.ok:
                        failures.append(line)
                    if mode == "json":
                        out.line(json_line(line))
                    elif mode == "array":
                        collected.append(line)
                    # refused or unresolved, nothing sent: a reset after sending is not it
                    in_a_row = in_a_row + 1 if unreachable(result.error) else 0
                    if in_a_row >= GIVE_UP_AFTER:
                        gave_up = result
                        return  # leaving map() starts nothing more
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
    if mode == "array":
        out.line(json_line(sorted(collected, key=lambda r: r.index)))
    if gave_up is not None:
        assert gave_up.error is not None
        out.error(
            f"{describe_error(gave_up.error)}; stopped after {GIVE_UP_AFTER} connection "
            f"failures in a row ({sum(counts.values())} of {len(numbered)} payloads tried)"
        )
        return EXIT_FAILED
    if mode == "text":
        for failure in sorted(failures, key=lambda r: r.index)[:_SHOWN_FAILURES]:
            out.line(f"{_label(failure)}: {_failure_text(failure)}", style="red")
        if len(failures) > _SHOWN_FAILURES:
            out.line(f"... and {len(failures) - _SHOWN_FAILURES} more", style="red")
        out.table(
            f"{args.app}/{args.action}: {len(numbered)} invocations",
            ["metric", "value"],
            [
                ["succeeded", str(counts["succeeded"])],
                ["failed (by the action)", str(counts["failed"])],
                ["errors (not seen through)", str(counts["error"])],
                ["concurrency limit", limit_text(stats.apps.get(args.app), args.concurrency)],
                [
                    "429s absorbed",
                    f"{stats.concurrency_limited} concurrency, {stats.rate_limited} rate limit",
                ],
                ["wall time", f"{wall:.2f}s"],
            ],
        )
    return EXIT_OK if counts["succeeded"] == len(numbered) else EXIT_FAILED


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


def _failure_text(line: _ResultLine) -> str:
    if line.error is not None:
        return f"{line.id or 'not created'}: {line.error}"
    output = line.output
    if isinstance(output, msgspec.Raw):
        output = bytes(output).decode()
    return f"{line.id} {line.status}: {line.status_reason or output or ''}".rstrip(": ")
