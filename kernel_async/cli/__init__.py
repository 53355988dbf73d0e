"""The ``kernel-async`` command: run the emulator, drive the API, and a fan-out demo.

Terminal output uses rich when the ``cli`` extra is installed, plain text otherwise.
Errors print one line (no traceback) and exit non-zero: 1 for API and invocation failures,
2 for bad arguments, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence

from .._version import __version__
from ..errors import KernelError
from ._commands import cmd_cancel, cmd_follow, cmd_get, cmd_invoke, cmd_list
from ._common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Interrupted
from ._emulator import cmd_demo, cmd_serve
from ._output import Output

__all__ = ["build_parser", "main"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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

    p = sub.add_parser(
        "invoke",
        parents=[api],
        help="invoke an action and print its logs live, or once per line of a file",
        description="Invoke an action and print its logs live. With --payloads, invoke it "
        "once per line of a JSON Lines file, at the speed the service's limits allow, with "
        "a progress bar and a summary; Ctrl-C cancels what is still running.",
    )
    p.add_argument("app")
    p.add_argument("action")
    p.add_argument("--payload", help="JSON payload, or @file to read it from a file")
    p.add_argument("--version", default="latest", help="app version (default latest)")
    p.add_argument("--async", dest="async_", action="store_true", help="print the id and exit")
    p.add_argument("--follow", action="store_true", help="with --async: follow anyway")
    p.add_argument(
        "--payloads",
        metavar="FILE",
        help="fan out: one invocation per line of this JSON Lines file (- for stdin)",
    )
    p.add_argument(
        "--concurrency",
        type=_positive,
        default=None,
        help="with --payloads: most invocations at once (default: as the limits allow)",
    )
    p.add_argument(
        "--async-timeout",
        type=int,
        default=None,
        metavar="SECONDS",
        help="how long the invocation may run, 10 to 3600 (default: the service's)",
    )
    p.add_argument(
        "-o",
        "--output",
        choices=["text", "json"],
        default="text",
        help="json: one JSON object per line (with --payloads: per result)",
    )
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

    p = sub.add_parser(
        "demo", help="fan out invocations against an embedded emulator, under real limits"
    )
    p.add_argument("-n", type=_positive, default=200, help="invocations (default 200)")
    p.add_argument(
        "--app-cap", type=_positive, default=20, help="the emulator's per-app cap (default 20)"
    )
    p.add_argument(
        "--rate-limit",
        type=_positive,
        default=200,
        help="the emulator's requests per second (default 200)",
    )
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
    except Interrupted:
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
