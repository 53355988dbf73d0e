"""The ``kernel-async`` argument parser: every command, its options and their checks."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, NoReturn

from .._version import __version__
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
from ._common import EXIT_USAGE
from ._emulator import cmd_demo, cmd_serve

__all__ = ["build_parser"]


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
Several processes can share one emulated quota: start one `serve --org-cap 20 --rate 100`
and point them all at it.
"""

_JSON_LINES = "json: one JSON object per line (JSON Lines), for jq"


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line on stderr, like every other error, and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


if TYPE_CHECKING:
    _Commands = argparse._SubParsersAction[_Parser]


class _Parents:
    """The option groups commands share."""

    def __init__(self) -> None:
        # --plain is accepted after the command too; SUPPRESS keeps it from resetting.
        self.common = _Parser(add_help=False)
        self.common.add_argument(
            "--plain", action="store_true", default=argparse.SUPPRESS, help="plain text output"
        )
        self.api = _Parser(add_help=False, parents=[self.common])
        self.api.add_argument(
            "--base-url", default=None, help="API base URL (default $KERNEL_BASE_URL)"
        )
        self.api.add_argument("--api-key", default=None, help="API key (default $KERNEL_API_KEY)")

    @staticmethod
    def output(p: argparse.ArgumentParser, json_help: str = _JSON_LINES) -> None:
        p.add_argument("-o", "--output", choices=["text", "json"], default="text", help=json_help)

    @staticmethod
    def json_array(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument(
            "--json",
            action="store_true",
            help=f"{what} as one JSON array (for python -m json.tool)",
        )


def build_parser() -> argparse.ArgumentParser:
    """The ``kernel-async`` argument parser."""
    parser = _Parser(
        prog="kernel-async",
        description="Drive the Kernel invocations API, or run its emulator.",
    )
    parser.add_argument("--version", action="version", version=f"kernel-async {__version__}")
    parser.add_argument("--plain", action="store_true", help="plain text output (no rich)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = _Parents()
    _add_invoke(sub, parents)
    _add_queries(sub, parents)
    _add_changes(sub, parents)
    _add_emulator(sub, parents)
    return parser


def _add_invoke(sub: _Commands, parents: _Parents) -> None:
    p = sub.add_parser(
        "invoke",
        parents=[parents.api],
        help="invoke an action and print its logs live, or once per line of a file",
        description="Invoke an action asynchronously and print its events live until it "
        "finishes (--sync: wait for the result instead). With --payloads, invoke it once "
        "per line of a JSON Lines file, at the speed the service's limits allow, with a "
        "progress bar and a summary. Ctrl-C cancels what is still running. Exits 1 when an "
        "invocation fails, in every output mode.",
    )
    p.add_argument("app")
    p.add_argument("action")
    parents.output(p, "json: one JSON object per line (an event, or with --payloads a result)")
    p.add_argument("-p", "--payload", help="JSON payload (or @file to read it from a file)")
    p.add_argument(
        "-f", "--payload-file", metavar="PATH", help="read the payload from a file (- for stdin)"
    )
    p.add_argument("-v", "--version", default="latest", help="app version (default latest)")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "-s", "--sync", action="store_true", help="wait for the result (up to 100 s), no live logs"
    )
    how.add_argument("--async", dest="async_", action="store_true", help="print the id and exit")
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
    parents.json_array(p, "with --payloads: every result, at the end,")
    p.add_argument(
        "--journal",
        metavar="PATH",
        help="with --payloads: record progress in this file; run the same command again "
        "to resume without creating anything twice",
    )
    p.set_defaults(run=cmd_invoke)


def _add_queries(sub: _Commands, parents: _Parents) -> None:
    p = sub.add_parser(
        "get", parents=[parents.api], help="show one invocation as JSON (-o json: on one line)"
    )
    p.add_argument("id")
    parents.output(p, "json: the invocation as one line of JSON (text: indented)")
    p.set_defaults(run=cmd_get)

    for name, help in [
        ("list", "list invocations, newest first"),
        ("history", "the same as list (the Kernel CLI's name)"),
    ]:
        p = sub.add_parser(name, parents=[parents.api], help=help, description=help)
        parents.output(p)
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
        parents.json_array(p, "the invocations")
        p.set_defaults(run=cmd_list)

    p = sub.add_parser("follow", parents=[parents.api], help="print an invocation's events live")
    p.add_argument("id")
    parents.output(p)
    p.add_argument("--since", help="replay from this RFC 3339 time or duration like 5m")
    p.add_argument("--heartbeats", action="store_true", help="show heartbeats too")
    p.set_defaults(run=cmd_follow)

    p = sub.add_parser("browsers", parents=[parents.api], help="list an invocation's browsers")
    p.add_argument("id")
    parents.output(p)
    parents.json_array(p, "the browsers")
    p.set_defaults(run=cmd_browsers)


def _add_changes(sub: _Commands, parents: _Parents) -> None:
    p = sub.add_parser("cancel", parents=[parents.api], help="cancel an invocation (status failed)")
    p.add_argument("id")
    parents.output(p, "json: the invocation as one line of JSON")
    p.set_defaults(run=cmd_cancel)

    p = sub.add_parser("update", parents=[parents.api], help="set an invocation's final status")
    p.add_argument("id")
    parents.output(p, "json: the invocation as one line of JSON")
    p.add_argument("--status", required=True, choices=["succeeded", "failed"])
    p.add_argument("--result", metavar="JSON", help="its output: JSON, or @file")
    p.set_defaults(run=cmd_update)

    p = sub.add_parser(
        "delete-browsers", parents=[parents.api], help="delete an invocation's browsers"
    )
    p.add_argument("id")
    p.set_defaults(run=cmd_delete_browsers)


def _add_emulator(sub: _Commands, parents: _Parents) -> None:
    p = sub.add_parser(
        "serve",
        parents=[parents.common],
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
    p.add_argument(
        "--org-cap",
        type=_positive,
        default=None,
        metavar="N",
        help="most invocations running at once across apps (default: no cap)",
    )
    p.add_argument(
        "--app-cap",
        type=_positive,
        default=None,
        metavar="N",
        help="most invocations of one app running at once (default: no cap)",
    )
    p.add_argument(
        "--rate",
        type=_positive,
        default=None,
        metavar="N",
        help="requests allowed per --rate-window, then 429 (default: no rate limit)",
    )
    p.add_argument(
        "--rate-window",
        type=_positive_seconds,
        default=1.0,
        metavar="SECONDS",
        help="the rate limit's window (default 1 second)",
    )
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser(
        "demo",
        parents=[parents.common],
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
