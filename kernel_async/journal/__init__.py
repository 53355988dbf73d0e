"""Durable fan-out: a journal for `Invocations.map` so that a killed fan-out resumes
without creating anything twice (``map(..., journal="run.db")``)."""

from __future__ import annotations

from ._errors import (
    JournalCorruptError,
    JournalError,
    JournalInUseError,
    JournalMismatchError,
    JournalUnresolvedError,
)
from ._journal import Journal, ResumeSummary

__all__ = [
    "Journal",
    "JournalCorruptError",
    "JournalError",
    "JournalInUseError",
    "JournalMismatchError",
    "JournalUnresolvedError",
    "ResumeSummary",
]
