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
from typing import NoReturn

from .._version import __version__
from ..errors import KernelError
from ._commands import (
    cmd_browsers,
    cmd_cancel,
    cmd_delete_browsers,
    cmd_follow,
    cmd_get,
    cmd_invoke,
    cmd_list,
    cmd_update,
)
from ._common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Interrupted, UsageError
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


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


SERVE_EPILOG = """\
The emulator serves the Kernel invocations API with the demo app's actions:
  demo-app/summarize  logs a few steps, returns a word count   payload {"text": ...}
  demo-app/crawl      slow, starts a browser, logs each page    payload {"pages": n}
  demo-app/flaky      fails about one time in eight ({"fail": true}: always, false: never)
  demo-app/echo       returns its payload at once
Add your own with --actions module:install (install(emulator) registers them).
"""


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line on stderr, like every other error, and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``kernel-async`` argument parser."""
    parser = _Parser(
        prog="kernel-async",
        description="Drive the Kernel invocations API, or run its emulator.",
    )
    parser.add_argument("--version", action="version", version=f"kernel-async {__version__}")
    parser.add_argument("--plain", action="store_true", help="plain text output (no rich)")
    # --plain is accepted after the command too; SUPPRESS keeps it from resetting the above.
    common = _Parser(add_help=False)
    common.add_argument(
        "--plain", action="store_true", default=argparse.SUPPRESS, help="plain text output"
    )
    api = _Parser(add_help=False, parents=[common])
    api.add_argument("--base-url", default=None, help="API base URL (default $KERNEL_BASE_URL)")
    api.add_argument("--api-key", default=None, help="API key (default $KERNEL_API_KEY)")
    fmt = _Parser(add_help=False)
    fmt.add_argument(
        "-o",
        "--output",
        choices=["text", "json"],
        default="text",
        help="json: one JSON object per line, for jq",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "invoke",
        parents=[api, fmt],
        help="invoke an action and print its logs live, or once per line of a file",
        description="Invoke an action asynchronously and print its events live until it "
        "finishes (--sync: wait for the result instead). With --payloads, invoke it once "
        "per line of a JSON Lines file, at the speed the service's limits allow, with a "
        "progress bar and a summary. Ctrl-C cancels what is still running. Exits 1 when an "
        "invocation fails, in every output mode.",
    )
    p.add_argument("app")
    p.add_argument("action")
    p.add_argument("-p", "--payload", help="JSON payload (or @file to read it from a file)")
    p.add_argument(
        "-f", "--payload-file", metavar="PATH", help="read the payload from a file (- for stdin)"
    )
    p.add_argument("-v", "--version", default="latest", help="app version (default latest)")
    p.add_argument(
        "-s", "--sync", action="store_true", help="wait for the result (up to 100 s), no live logs"
    )
    p.add_argument("--async", dest="async_", action="store_true", help="print the id and exit")
    p.add_argument("--follow", action="store_true", help="with --async: follow anyway")
    p.add_argument("--since", help="show events since this RFC 3339 time or duration like 5m")
    p.add_argument(
        "--async-timeout",
        type=int,
        default=None,
        metavar="SECONDS",
        help="how long the invocation may run, 10 to 3600 (default: the service's)",
    )
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
        "--journal",
        metavar="PATH",
        help="with --payloads: record progress in this file; run the same command again "
        "to resume without creating anything twice",
    )
    p.set_defaults(run=cmd_invoke)

    p = sub.add_parser("get", parents=[api], help="show one invocation as JSON")
    p.add_argument("id")
    p.set_defaults(run=cmd_get)

    p = sub.add_parser(
        "list", aliases=["history"], parents=[api, fmt], help="list invocations, newest first"
    )
    p.add_argument("--app", help="filter by app name")
    p.add_argument("--action", help="filter by action name")
    p.add_argument(
        "-v", "--version", "--app-version", dest="app_version", help="filter by app version"
    )
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed"])
    p.add_argument("--deployment-id", help="filter by deployment")
    p.add_argument("--since", help="started since this RFC 3339 time or duration like 5m")
    p.add_argument("--query", help="search by invocation id, app name or action name")
    p.add_argument("--limit", type=_positive, default=20, help="how many to show (default 20)")
    p.add_argument("--offset", type=int, default=0, help="skip this many (default 0)")
    p.add_argument("--json", action="store_true", help="the same as -o json")
    p.set_defaults(run=cmd_list)

    p = sub.add_parser("follow", parents=[api, fmt], help="print an invocation's events live")
    p.add_argument("id")
    p.add_argument("--since", help="replay from this RFC 3339 time or duration like 5m")
    p.add_argument("--heartbeats", action="store_true", help="show heartbeats too")
    p.set_defaults(run=cmd_follow)

    p = sub.add_parser("cancel", parents=[api, fmt], help="cancel an invocation (status failed)")
    p.add_argument("id")
    p.set_defaults(run=cmd_cancel)

    p = sub.add_parser("update", parents=[api, fmt], help="set an invocation's final status")
    p.add_argument("id")
    p.add_argument("--status", required=True, choices=["succeeded", "failed"])
    p.add_argument("--result", metavar="JSON", help="its output: JSON, or @file")
    p.set_defaults(run=cmd_update)

    p = sub.add_parser("browsers", parents=[api, fmt], help="list an invocation's browsers")
    p.add_argument("id")
    p.set_defaults(run=cmd_browsers)

    p = sub.add_parser("delete-browsers", parents=[api], help="delete an invocation's browsers")
    p.add_argument("id")
    p.set_defaults(run=cmd_delete_browsers)

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the API emulator with the demo actions",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8787, help="port (default 8787; 0: any free one)")
    p.add_argument(
        "--api-key",
        dest="emulator_key",
        default=None,
        help="the key it accepts (default: a random one, printed at start)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=_positive_seconds,
        default=15.0,
        help="seconds between heartbeats on idle streams (default 15)",
    )
    p.add_argument(
        "--actions",
        action="append",
        metavar="MODULE:FUNC",
        help="a function called with the emulator to register more actions (repeatable)",
    )
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="fan out invocations against an embedded emulator, under real limits",
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
    except (ValueError, TypeError, UsageError) as exc:
        out.error(str(exc))
        return EXIT_USAGE
    except KernelError as exc:
        out.error(str(exc))
        return EXIT_FAILED
    return code
