"""The errors a journal raises: all `KernelError`, so one ``except`` covers the SDK."""

from __future__ import annotations

from ..errors import KernelError

__all__ = [
    "JournalCorruptError",
    "JournalError",
    "JournalInUseError",
    "JournalMismatchError",
    "JournalUnresolvedError",
]


class JournalError(KernelError):
    """Base class of the errors of a fan-out journal (``map(..., journal=...)``)."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        """What went wrong."""
        self.path = path
        """The journal's file."""


class JournalMismatchError(JournalError):
    """The journal was made for other input: another app, action or version, other
    payloads, or more payloads than given. ``message`` names the first difference; the
    journal is left as it was."""


class JournalInUseError(JournalError):
    """Another process (or another `map()` of this one) has the journal open."""


class JournalCorruptError(JournalError):
    """The file is not a readable journal: truncated, damaged, empty, or another kind of
    file. It is left untouched (nothing in it is overwritten)."""


class JournalUnresolvedError(JournalError):
    """A `MapResult` error: a create may have reached the service before a crash, and
    the list that would tell failed, so the payload was not created again (run again to
    retry the check)."""

    def __init__(self, message: str, *, path: str = "", index: int) -> None:
        super().__init__(message, path=path)
        self.index = index
        """The payload's index."""
