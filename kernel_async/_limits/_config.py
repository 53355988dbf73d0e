"""What a user configures and reads back about limits, and what a 429 means. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

import msgspec

from ..models import error_decoder

__all__ = [
    "DEFAULT_LEASE",
    "MAX_PROBE_DELAY",
    "RATE_PROBE_INTERVAL",
    "AppLimitStats",
    "LimitStats",
    "Limits",
    "classify_429",
    "int_header",
    "lease_for",
]

#: After the rate-limit budget runs out with nothing in flight (so no answer will refresh
#: it), one request is let through this many seconds later to learn where the window is.
RATE_PROBE_INTERVAL: Final = 0.25
#: The longest wait between two probes of a blocked app's concurrency limit.
MAX_PROBE_DELAY: Final = 30.0
#: How long an unobserved invocation holds its slot when no ``async_timeout_seconds`` was
#: given: the service's default asynchronous timeout (15 minutes), plus a margin.
DEFAULT_LEASE: Final = 15 * 60.0 + 60.0


def lease_for(async_timeout_seconds: int | None) -> float:
    """How long an unseen invocation holds its admission slot: its async timeout (the
    service's default when ``None``), plus a margin. The one place the lease is computed."""
    if async_timeout_seconds is None:
        return DEFAULT_LEASE
    return async_timeout_seconds + 60.0


@dataclass(frozen=True)
class Limits:
    """How many invocations this client runs at once.

    By default nothing needs setting: the client learns each app's limit from the 429s the
    service answers when a concurrency cap is reached. Set a cap when you know your plan
    (or want to stay under it)::

        AsyncKernel(limits=Limits(max_running_per_app=20, max_running=50))

    A cap is never exceeded: creates beyond it wait in a first-in, first-out queue until
    one of this client's invocations is seen to finish (by `wait`, `run`, `follow`,
    `retrieve`, `list`, `update` or `cancel`) or its async timeout passes.
    """

    max_running: int | None = None
    """Most invocations of this client running at once, across apps (``None``: no cap)."""
    max_running_per_app: int | None = None
    """Most invocations of one app running at once (``None``: no cap)."""
    adaptive: bool = True
    """Learn each app's limit from concurrency 429s. ``False`` keeps only the caps (a
    concurrency 429 still waits for a slot or a backoff, it never fails the call)."""
    initial: int = 1
    """Creates let through at once for an app before anything is learnt: slow start
    doubles it every 50 ms from there. One (the default) lets processes that start
    together meet a shared cap with even shares; a burst of several from each would
    let the first few take it all."""
    shared: str | None = None
    """Share the limits with every process and machine using this Redis
    (``"redis://host:port/db"``; needs the ``redis`` extra): slots, learnt windows, the
    rate-limit pause and one first-come, first-served queue. ``None``: the
    ``KERNEL_LIMITS_URL`` environment variable if set, else each process learns alone.
    ``""``: never shared, whatever the environment says."""

    def __post_init__(self) -> None:
        for name in ("max_running", "max_running_per_app"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be at least 1 (or None), got {value!r}")
        if self.initial < 1:
            raise ValueError(f"initial must be at least 1, got {self.initial!r}")


@dataclass(frozen=True)
class AppLimitStats:
    """One app's admission state, as seen by this client."""

    running: int
    """This client's invocations of the app not yet seen finished (creates in flight
    included)."""
    queued: int
    """Creates waiting for a slot."""
    limit: int | None
    """The limit known: the one learnt from the service's concurrency 429s (how many of
    this client's it counted running when the last one came: one over the cap when one
    ended a moment before the client saw it) or told by it (within the cap), else the cap
    set with `Limits`; ``None`` when no limit was seen or set (the client is still feeling
    its way up, see `source`)."""
    learnt: bool
    """Whether the limit comes from a concurrency 429."""
    source: Literal["learnt", "told", "configured", "none"] = "none"
    """Where `limit` comes from: ``"learnt"`` (a concurrency 429), ``"told"`` (the
    service's project limits), ``"configured"`` (`Limits.max_running_per_app`), or
    ``"none"``: no limit seen."""


@dataclass(frozen=True)
class LimitStats:
    """What backpressure did for this client so far (``kernel.limit_stats()``)."""

    apps: dict[str, AppLimitStats] = field(default_factory=dict)
    """Admission state per app."""
    concurrency_limited: int = 0
    """Concurrency 429s on create absorbed (the create waited and went again)."""
    rate_limited: int = 0
    """Rate-limit 429s absorbed (the request waited for the window and went again)."""
    rate_paused_seconds: float = 0.0
    """Wall time during which the rate-limit gate held new requests back."""
    queued_seconds: float = 0.0
    """Total time creates spent waiting for a slot."""
    max_queued_seconds: float = 0.0
    """The longest one create waited for a slot."""
    admitted: int = 0
    """Creates admitted (each attempt counts once)."""


def classify_429(headers: Mapping[str, str], body: bytes) -> Literal["rate", "concurrency"]:
    """Whether a 429 answering a create comes from the rate limit or a concurrency cap.

    The service documents ``Retry-After`` on rate-limit 429s and ``X-RateLimit-Remaining``
    on every response of a rate-limited endpoint; it does not document a ``Retry-After`` on
    concurrency 429s. So, in order: an error code naming one or the other decides; then
    ``X-RateLimit-Remaining`` (``0``: the rate limit, more: a cap); then a ``Retry-After``
    means the rate limit; anything else is a cap. A 429 on any other request is the rate
    limit. Pure.
    """
    code = _error_code(body)
    if code is not None:
        if "concurren" in code:
            return "concurrency"
        if "rate" in code:
            return "rate"
    remaining = int_header(headers.get("X-RateLimit-Remaining"))
    if remaining is not None:
        return "rate" if remaining == 0 else "concurrency"
    if headers.get("Retry-After") is not None or headers.get("retry-after-ms") is not None:
        return "rate"
    return "concurrency"


def _error_code(body: bytes) -> str | None:
    if not body:
        return None
    try:
        return error_decoder.decode(body).code.lower()
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None


def int_header(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None
