"""Pure policy of a journal: the payload digest, and which invocations found on the
service a crashed run's unrecorded creates were (no I/O here)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from typing import Final

__all__ = ["CLOCK_SKEW", "Candidate", "Unrecorded", "match_unrecorded", "payload_digest"]

#: Seconds an invocation may appear to have started before its create was recorded
#: (the service's clock against this machine's). A wider window risks adopting someone
#: else's identical invocation; a narrower one, creating a payload twice.
CLOCK_SKEW: Final = 60.0


def payload_digest(payload: str | None) -> str:
    """The digest of a payload as sent (its JSON string; ``None``: no payload)."""
    if payload is None:
        return "none"
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Unrecorded:
    """A payload whose create may have been sent, with no id recorded."""

    index: int
    """The payload's index."""
    digest: str
    """`payload_digest` of the payload."""
    since: float
    """When the create was about to be sent (Unix seconds, this machine's clock)."""


@dataclass(frozen=True)
class Candidate:
    """An invocation of the same app and action, as the service lists it."""

    id: str
    """The invocation's id."""
    digest: str
    """`payload_digest` of its payload."""
    started: float
    """When it started (Unix seconds, the service's clock)."""


def match_unrecorded(
    unrecorded: Sequence[Unrecorded],
    candidates: Iterable[Candidate],
    known_ids: Set[str],
    skew: float = CLOCK_SKEW,
) -> dict[int, str]:
    """Which candidate each unrecorded create became: index → invocation id.

    A candidate fits an index when its payload is the same and it started no earlier than
    the create was recorded (less ``skew``). Ids the journal already holds are never
    adopted; each candidate is adopted once. Indices are served in order, each taking the
    oldest candidate that fits, so identical payloads pair one-to-one in index order and
    an index is left out only when every candidate that fits it went to another: no
    fitting invocation is left over while an index is created again.
    """
    pools: dict[str, list[Candidate]] = {}
    seen: set[str] = set()
    for candidate in candidates:
        if candidate.id in known_ids or candidate.id in seen:
            continue
        seen.add(candidate.id)
        pools.setdefault(candidate.digest, []).append(candidate)
    for pool in pools.values():
        pool.sort(key=lambda c: (c.started, c.id))
    adopted: dict[int, str] = {}
    for item in sorted(unrecorded, key=lambda u: u.index):
        pool = pools.get(item.digest, [])
        for position, candidate in enumerate(pool):
            if candidate.started >= item.since - skew:
                adopted[item.index] = candidate.id
                del pool[position]
                break
    return adopted
