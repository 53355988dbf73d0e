"""The ``kernel-async`` command: run the emulator, drive the API, and a fan-out demo.

Terminal output uses rich when the ``cli`` extra is installed, plain text otherwise.
Errors print one line (no traceback) and exit non-zero: 1 for API and invocation failures,
2 for bad arguments, 130 when interrupted. When standard output's reader goes away
(``kernel-async list | head -1``) the command stops quietly with 141.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from ..errors import KernelError
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Interrupted,
    UsageError,
    describe_error,
)
from ._output import EXIT_READER_GONE, Output, ReaderGone, silence_stdout
from ._parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # what is still buffered: its reader may be gone too
    except SystemExit:  # --help, --version, a bad argument: argparse printed and exits
        _flush_quietly()
        raise
    except BaseException as exc:
        if not _reader_gone(exc):
            raise
        silence_stdout()
        return EXIT_READER_GONE
    return code


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
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
        out.error(describe_error(exc))
        return EXIT_FAILED
    return code


def _reader_gone(exc: BaseException) -> bool:
    """Whether ``exc`` says that standard output's reader went away (a group of errors
    says so when every one of them does)."""
    if isinstance(exc, (ReaderGone, BrokenPipeError)):
        return True
    group: Sequence[BaseException] | None = getattr(exc, "exceptions", None)
    return bool(group) and all(_reader_gone(e) for e in group or ())


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
