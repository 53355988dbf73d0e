"""Terminal output of the CLI: rich when installed (and wanted), plain text otherwise."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["Output", "Progress"]


class Output:
    """Terminal output: rich when installed, wanted, and writing to a terminal; plain text
    otherwise, so that piped output has complete rows (no cut ids, no box drawing)."""

    def __init__(self, plain: bool = False) -> None:
        self.rich: Any = None
        self._err: Any = None
        if plain:
            return
        with contextlib.suppress(ImportError):
            from rich.console import Console

            if sys.stdout.isatty():
                self.rich = Console(highlight=False)
            if sys.stderr.isatty():
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
        if self._bar is not None:
            self._bar.console.print(text, markup=False, style="yellow")
        else:
            self.out.line(text)
