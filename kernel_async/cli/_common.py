"""What every CLI command shares: exit codes, the client, payloads, Ctrl-C, error lines,
event printing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import sys
from collections.abc import Awaitable, Iterable
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import msgspec

from .._client import AsyncKernel
from .._limits import AppLimitStats
from ..errors import APIConnectionError, APITimeoutError, KernelError
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
    if not (args.api_key or os.environ.get("KERNEL_API_KEY")):
        raise UsageError("no API key: pass --api-key KEY or set KERNEL_API_KEY")
    try:
        return AsyncKernel(api_key=args.api_key, base_url=args.base_url)
    except KernelError as exc:  # a base URL that is not one
        raise UsageError(f"--base-url (or KERNEL_BASE_URL): {exc}") from None


def read_text(path: str, what: str) -> str:
    """A file's text (UTF-8, a byte order mark dropped), or standard input for ``-``."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
        return data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what}: {exc}") from exc


def since_arg(text: str | None) -> str | None:
    """``--since`` checked before anything is sent: an RFC 3339 time or a duration such
    as ``5m``, ``1h30m``, ``1.5s``, ``300ms``."""
    from ..testing._wire import parse_since_ns

    if text is not None and parse_since_ns(text, now=0) is None:
        raise UsageError(
            f"--since {text!r} is neither an RFC 3339 time (2025-01-31T09:00:00Z) "
            "nor a duration (5m, 1h30m, 90s)"
        )
    return text


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


async def run_all(awaitables: Iterable[Awaitable[None]]) -> None:
    """Await them all at once; at the first error (or when cancelled) cancel the others and
    wait for them to stop before raising it, so nothing still runs once this returns."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


def unreachable(exc: BaseException | None) -> aiohttp.ClientConnectorError | None:
    """Why the server could not be reached at all (refused, unresolved: nothing was sent),
    or ``None`` when ``exc`` is something else (a reset after sending included)."""
    if not isinstance(exc, APIConnectionError) or isinstance(exc, APITimeoutError):
        return None
    cause = exc.__cause__
    while cause is not None and not isinstance(cause, aiohttp.ClientConnectorError):
        cause = cause.__cause__
    if isinstance(
        cause, (aiohttp.ClientConnectorSSLError, aiohttp.ClientConnectorCertificateError)
    ):
        return None  # reached, but TLS failed: aiohttp's message says how
    return cause


def describe_error(exc: KernelError) -> str:
    """The one line shown for an error: its message, except that a refused or unresolved
    connection says so plainly (aiohttp's text names ``ssl:default`` even for http)."""
    cause = unreachable(exc)
    if cause is not None:
        return f"cannot connect to {cause.host}:{cause.port}: {_reason(cause)}"
    return str(exc)


def _reason(exc: aiohttp.ClientConnectorError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "the host name does not resolve"
    code = exc.os_error.errno
    if code in (errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH):
        return os.strerror(code).lower()
    return str(exc.os_error.strerror or exc.os_error or "connection failed").lower()


_SOURCES = {
    "learnt": "learnt from 429s",
    "told": "the project's limit",
    "configured": "configured",
}


def limit_text(app: AppLimitStats | None, configured: int | None = None) -> str:
    """The concurrency limit a fan-out ran under, as a summary shows it: where the client
    got it (learnt from the service's 429s, told by the service, configured), else
    ``--concurrency`` (``configured``), else "no limit seen" (the client's slow-start
    allowance is not a limit)."""
    if app is not None and app.limit is not None and app.source in _SOURCES:
        return f"{app.limit} ({_SOURCES[app.source]})"
    if configured is not None:
        return f"{configured} (configured)"
    return "no limit seen"


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


# Valid inside JSON strings, but line ends to str.splitlines() and to JavaScript: escaped,
# so that every reader sees one JSON value per line.
_LINE_ENDS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def json_line(value: Any) -> str:
    """``value`` as one line of JSON (U+2028, U+2029 and U+0085 escaped: they can only
    occur inside strings, where the escape means the same)."""
    return msgspec.json.encode(value).decode().translate(_LINE_ENDS)


def json_value(text: str) -> msgspec.Raw | str:
    """``text`` to embed in a line of JSON: its JSON re-serialised compactly (numbers kept
    as written) when it is JSON, else the text itself, as a string."""
    try:
        msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text
    return msgspec.Raw(msgspec.json.format(text.encode(), indent=-1))


class _UnknownEventLine(msgspec.Struct):
    event: str
    data: Any


def event_json(event: Any) -> str:
    """One event as one line of JSON, as the API sent it; an unknown one's data compacted
    when it is a JSON object, else embedded in ``{"event": ..., "data": ...}``."""
    if isinstance(event, UnknownEvent):
        data = json_value(event.data.decode("utf-8", "replace"))
        if isinstance(data, msgspec.Raw) and bytes(data).startswith(b"{"):
            return bytes(data).decode().translate(_LINE_ENDS)
        return json_line(_UnknownEventLine(event.event, data))
    return json_line(event)


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
