"""What every CLI command shares: exit codes, the client, payloads, Ctrl-C, event printing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from .._client import AsyncKernel
from ..errors import KernelError
from ..models import (
    ErrorEvent,
    Invocation,
    InvocationStateEvent,
    LogEvent,
    SSEHeartbeatEvent,
    UnknownEvent,
)
from ._output import Output

T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Interrupted(Exception):
    """Ctrl-C (SIGINT) arrived while a command was waiting on the API."""


class UsageError(Exception):
    """A bad argument, or a configuration that cannot work: exit code 2."""


def client(args: argparse.Namespace) -> AsyncKernel:
    """The client for ``--api-key`` / ``--base-url`` (or the environment)."""
    try:
        return AsyncKernel(api_key=args.api_key, base_url=args.base_url)
    except KernelError as exc:  # no key, or a base URL that is not one
        raise UsageError(str(exc)) from None


def read_text(path: str, what: str) -> str:
    """A file's text, or standard input for ``-``."""
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what}: {exc}") from exc


def json_arg(text: str, what: str) -> str:
    """``text`` if it is JSON, else a `UsageError` naming ``what``."""
    try:
        msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from exc
    return text


def payload_arg(args: argparse.Namespace) -> str | None:
    """The payload of ``-p/--payload`` (inline JSON, or @file) or ``-f/--payload-file``
    (a path, ``-`` for stdin), checked to be JSON before anything is sent."""
    text: str | None = args.payload
    if args.payload_file is not None:
        text = read_text(args.payload_file, "the payload file")
    elif text is not None and text.startswith("@"):
        text = read_text(text[1:], "the payload file")
    return None if text is None else json_arg(text, "the payload")


async def interruptible(awaitable: Awaitable[T]) -> T:
    """Await, but turn SIGINT into `Interrupted` (after cancelling the work cleanly)."""
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
    raise Interrupted


def clock(when: datetime) -> str:
    return when.strftime("%H:%M:%S.%f")[:-3]


def print_event(out: Output, event: Any) -> None:
    if isinstance(event, LogEvent):
        out.line(f"{clock(event.timestamp)}  {event.message}")
    elif isinstance(event, InvocationStateEvent):
        inv = event.invocation
        style = {"succeeded": "green", "failed": "red"}.get(inv.status, "cyan")
        reason = f" ({inv.status_reason})" if inv.status_reason else ""
        out.line(f"{clock(event.timestamp)}  [{inv.status}]{reason}", style=style)
    elif isinstance(event, ErrorEvent):
        out.line(
            f"{clock(event.timestamp)}  error {event.error.code}: {event.error.message}", "red"
        )
    elif isinstance(event, SSEHeartbeatEvent):
        out.line(f"{clock(event.timestamp)}  ♥", style="dim")
    elif isinstance(event, UnknownEvent):
        out.line(f"{event.event}: {event.data.decode(errors='replace')}", style="dim")


def event_json(event: Any) -> str:
    """One event as a line of JSON, as the API sent it (an unknown one's data verbatim)."""
    if isinstance(event, UnknownEvent):
        return event.data.decode("utf-8", "replace")
    return msgspec.json.encode(event).decode()


async def follow_printing(
    out: Output,
    kernel: AsyncKernel,
    id: str,
    since: str | None = None,
    heartbeats: bool = False,
    *,
    as_json: bool = False,
) -> Invocation | None:
    """Print an invocation's events as they come (``as_json``: one JSON object per line,
    heartbeats included); return its final state."""
    final: Invocation | None = None
    heartbeats = heartbeats or as_json
    async with kernel.invocations.follow(id, since=since, heartbeats=heartbeats) as events:
        async for event in events:
            if as_json:
                out.line(event_json(event))
            else:
                print_event(out, event)
            if isinstance(event, InvocationStateEvent):
                final = event.invocation
    return final


def finish(out: Output, inv: Invocation | None, *, as_json: bool = False) -> int:
    """The exit code for an invocation's final state: non-zero unless it succeeded, in
    every output mode. Prints its output in text mode."""
    if inv is None:
        return EXIT_FAILED
    if inv.output is not None and not as_json:
        out.line(inv.output)
    return EXIT_OK if inv.status == "succeeded" else EXIT_FAILED
