"""What `map()` does for one payload, by what its journal holds (pure data and policy)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from ..models import Invocation
from ..resources._lifecycle import CANCEL_OUTPUT
from ._errors import JournalUnresolvedError

__all__ = ["Plan", "cancelled_on_exit"]


@dataclass(frozen=True)
class Plan:
    """What to do for one payload: create it, unless one of the others is set."""

    digest: str
    """The payload's digest (recorded with its create)."""
    done: Invocation | None = None
    """Finished in an earlier run: its final state, no request needed."""
    attach: str | None = None
    """Created earlier with this id: follow it to the end."""
    unresolved: JournalUnresolvedError | None = None
    """Perhaps created before a crash, unknown: report this error, create nothing."""

    @property
    def settled(self) -> bool:
        """Whether the journal settles it without a request (``done`` or ``unresolved``)."""
        return self.done is not None or self.unresolved is not None


def cancelled_on_exit(invocation: Invocation) -> bool:
    """Whether ``invocation`` was cancelled the way `map()` cancels on exit (or the Kernel
    CLI on Ctrl-C): a re-run creates such a payload again."""
    if invocation.status != "failed" or invocation.output is None:
        return False
    try:
        return bool(msgspec.json.decode(invocation.output) == CANCEL_OUTPUT)
    except msgspec.DecodeError:
        return False
