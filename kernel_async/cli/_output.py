"""Terminal output of the CLI: rich when installed (and wanted), plain text otherwise."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["EXIT_READER_GONE", "Output", "Progress", "ReaderGone", "silence_stdout"]

#: The exit code of a command whose reader went away (``kernel-async list | head -1``):
#: 128 + SIGPIPE, what a shell reports for a program that SIGPIPE ended.
EXIT_READER_GONE = 141


class ReaderGone(Exception):
    """Standard output's reader went away (a closed pipe): nothing more can be shown, so
    the command stops. Standard output then goes to the null device."""


def silence_stdout() -> None:
    """Point standard output at the null device, so that nothing written later (other
    tasks, the interpreter's last flush) fails again on the closed pipe."""
    with contextlib.suppress(OSError, ValueError):  # no real file behind sys.stdout
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)


class Output:
    """Terminal output: rich when installed, wanted, and writing to a terminal; plain text
    otherwise, so that piped output has complete rows (no cut ids, no box drawing)."""

    def __init__(self, plain: bool = False) -> None:
        self.rich: Any = None
        self._err: Any = None
        self.gone = False
        """Whether standard output's reader went away (every later write raises
        `ReaderGone` and shows nothing)."""
        if plain:
            return
        with contextlib.suppress(ImportError):
            from rich.console import Console

            if sys.stdout.isatty():
                self.rich = Console(highlight=False)
            if sys.stderr.isatty():
                self._err = Console(stderr=True, highlight=False)

    def line(self, text: str, style: str | None = None) -> None:
        """Print one line (``style``: its rich style, ignored in plain text).

        Raises `ReaderGone` once standard output's reader went away.
        """
        with self._writing():
            if self.rich is not None:
                self.rich.print(text, style=style, markup=False, soft_wrap=True)
            else:
                print(text, flush=True)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        if self.gone:
            raise ReaderGone
        try:
            yield
        except BrokenPipeError:
            self.gone = True
            silence_stdout()
            raise ReaderGone from None

    def error(self, text: str) -> None:
        """Print ``error: text`` on standard error."""
        if self._err is not None:
            self._err.print(f"error: {text}", style="bold red", markup=False, soft_wrap=True)
        else:
            print(f"error: {text}", file=sys.stderr, flush=True)

    def table(
        self, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[str]]
    ) -> None:
        """A table (plain text: columns padded with spaces, rows never cut); with no rows,
        only the header. Raises `ReaderGone` once standard output's reader went away."""
        with self._writing():
            self._table(title, columns, rows)

    def _table(
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
        widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
        if title:
            print(title)
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        sys.stdout.flush()


class Progress:
    """A progress bar with live counts (rich), or a line every 10% (plain)."""

    def __init__(self, out: Output, total: int, *, quiet: bool = False) -> None:
        self.out = out
        self.quiet = quiet  # nothing at all (the results go to stdout as data)
        self.total = total
        self.done = 0
        self._bar: Any = None
        self._task: Any = None
        self._next_report = 0.1

    def __enter__(self) -> Progress:
        if self.out.rich is not None and not self.quiet:
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

    def advance(self, text: str) -> None:
        """One more done; ``text`` is the live summary shown next to the bar."""
        self.done += 1
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=text)
        elif self.done / self.total >= self._next_report or self.done == self.total:
            self.out.line(f"{self.done}/{self.total}  {text}")
            self._next_report += 0.1

    def note(self, text: str) -> None:
        """A line above the bar (plain: a line of its own)."""
        if self._bar is not None:
            self._bar.console.print(text, markup=False, style="yellow")
        else:
            self.out.line(text)
