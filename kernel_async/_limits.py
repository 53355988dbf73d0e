"""Backpressure policy: the rate-limit gate and admission control for starting invocations.

Both are pure: no I/O, no asyncio, no clock of their own (every method takes ``now``), so
they can be tested and fuzzed alone. `kernel_async._backpressure` wraps each in a small
FIFO queue of waiting tasks.

* `RatePolicy` decides when this client may send its next request. A 429 from the rate
  limit pauses every new request until its ``Retry-After``; ``X-RateLimit-Remaining`` is a
  budget, so the client never sends more than the server says it will take. After a pause,
  one request goes first as a probe; the rest follow once its answer shows room.
* `AdmissionPolicy` decides when a create may be sent: a per-app limit on this client's
  running invocations, learnt from the concurrency 429s (slow start, then additive
  increase; on a 429, the limit drops to the number of ours running), and capped by
  `Limits` when the user knows their plan.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

import msgspec

from .models import error_decoder

__all__ = [
    "AdmissionPolicy",
    "AppLimitStats",
    "LimitStats",
    "Limits",
    "RatePolicy",
    "classify_429",
]

#: After the rate-limit budget runs out with nothing in flight (so no answer will refresh
#: it), one request is let through this many seconds later to learn where the window is.
RATE_PROBE_INTERVAL: Final = 0.25
#: The longest wait between two probes of a blocked app's concurrency limit.
MAX_PROBE_DELAY: Final = 30.0
#: How long an unobserved invocation holds its slot when no ``async_timeout_seconds`` was
#: given: the service's default asynchronous timeout (15 minutes), plus a margin.
DEFAULT_LEASE: Final = 15 * 60.0 + 60.0


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
    initial: int = 4
    """Creates let through at once for an app before anything is learnt (slow start)."""

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
    """The limit in force: the learnt one within the cap, or ``None`` for none."""
    learnt: bool
    """Whether the limit comes from a concurrency 429 (rather than slow start or the cap)."""


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
    remaining = _int_header(headers.get("X-RateLimit-Remaining"))
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


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None


# --- the rate-limit gate ---------------------------------------------------------------------


class RatePolicy:
    """When this client may send its next request, from what the server said. Pure.

    ``budget`` is how many more requests the server will take in its current window, as
    far as this client knows (``None``: no limit known). A rate-limit 429 pauses every new
    request until its ``Retry-After`` and then lets one through as a probe; an answer with
    ``X-RateLimit-Remaining: n`` sets the budget to ``n`` minus the requests still in flight
    (they will count against it).
    """

    __slots__ = ("budget", "in_flight", "limit", "paused_seconds", "paused_until")

    def __init__(self) -> None:
        self.paused_until = -math.inf
        self.budget: int | None = None
        self.in_flight = 0
        self.limit: int | None = None
        """The server's ``X-RateLimit-Limit``, as last seen."""
        self.paused_seconds = 0.0
        """Wall time spent paused so far."""

    def room(self, now: float) -> int | None:
        """How many requests may start now (``None``: any number)."""
        if now < self.paused_until:
            return 0
        budget = self.budget
        return None if budget is None else max(0, budget)

    def wake_at(self, now: float) -> float | None:
        """When room may open without news from the server (``None``: only news opens it)."""
        return self.paused_until if now < self.paused_until else None

    def sent(self) -> None:
        """A request is about to be sent."""
        self.in_flight += 1
        if self.budget is not None:
            self.budget -= 1

    def received(self, now: float, headers: Mapping[str, str] | None) -> None:
        """A request sent through the gate ended: with these response headers, or with no
        response at all (``headers=None``)."""
        self.in_flight -= 1
        if now < self.paused_until:
            return  # answers to requests sent before the pause: its end lets one through
        if headers is not None:
            remaining = _int_header(headers.get("X-RateLimit-Remaining"))
            if remaining is None:
                self.budget = None
            else:
                self.budget = remaining - self.in_flight
                self.limit = _int_header(headers.get("X-RateLimit-Limit")) or self.limit
        budget = self.budget
        if budget is not None and budget <= 0 and self.in_flight == 0:
            # Nothing in flight will bring news: look again shortly, with one request.
            self._pause(now, RATE_PROBE_INTERVAL)

    def rate_limited(self, now: float, retry_after: float | None, fallback: float) -> float:
        """A 429 from the rate limit: pause new requests until ``retry_after`` (or
        ``fallback`` seconds when it did not say); returns the pause left."""
        self._pause(now, fallback if retry_after is None else retry_after)
        return self.paused_until - now

    def _pause(self, now: float, seconds: float) -> None:
        until = now + max(0.0, seconds)
        if until > self.paused_until:
            self.paused_seconds += until - max(now, self.paused_until)
            self.paused_until = until
        self.budget = 1  # when the pause ends, one request goes first


# --- admission -------------------------------------------------------------------------------


class _App:
    """One app's admission state."""

    __slots__ = (
        "active",
        "credits",
        "held",
        "hold_until",
        "limit",
        "limited",
        "next_probe",
        "ssthresh",
        "strikes",
    )

    def __init__(self, initial: float) -> None:
        self.limit = initial  # the learnt window (math.inf when not adaptive)
        self.ssthresh = math.inf  # slow start below this; learnt on the first 429
        self.active = 0  # admitted: creates in flight + invocations held
        self.held: dict[str, float] = {}  # invocation id -> lease expiry, oldest first
        self.hold_until = -math.inf  # after a 429: only freed slots admit until then
        self.credits = 0  # slots freed during a hold
        self.next_probe = math.inf  # when the queue head may go beyond the learnt limit
        self.strikes = 0  # concurrency 429s since the last successful probe
        self.limited = False  # whether a 429 taught the limit


class AdmissionPolicy:
    """Which creates may be sent now, per app. Pure: the caller passes ``now``.

    An app's *active* count is its creates in flight plus its invocations this client has
    not seen finish. A create may go when the active count is below the app's limit (and
    the caps of `Limits`); its limit starts at `Limits.initial`, and the window of creates
    in flight doubles every round trip (slow start: never past twice the number running
    plus `Limits.initial`), until a concurrency 429 sets the limit to the number of ours
    running; after that it grows by one per full window of successes, never past the
    number running plus `Limits.initial` + 1.

    After a 429 the app is held for a backoff during which only a slot freed by one of
    ours finishing admits. When the backoff passes with the queue still blocked, its head
    goes as a probe, beyond the learnt limit (never beyond a cap): other clients may have
    freed room, or some of ours ended unseen. A probe that succeeds takes that as news
    that the oldest unseen one of ours ended, and the next one probes at once.
    """

    def __init__(self, limits: Limits, *, initial_delay: float = 0.5) -> None:
        self.limits = limits
        self.initial_delay = initial_delay
        self.apps: dict[str, _App] = {}
        self.owner: dict[str, str] = {}  # invocation id -> app
        # (lease expiry, invocation id), earliest first; a released one stays until popped
        self._leases: list[tuple[float, str]] = []
        self.total_active = 0
        self.concurrency_limited = 0
        self.admitted = 0

    def app(self, name: str) -> _App:
        state = self.apps.get(name)
        if state is None:
            initial = float(self.limits.initial) if self.limits.adaptive else math.inf
            state = self.apps[name] = _App(initial)
        return state

    def _capped(self, state: _App) -> bool:
        limits = self.limits
        per_app, total = limits.max_running_per_app, limits.max_running
        return (per_app is not None and state.active >= per_app) or (
            total is not None and self.total_active >= total
        )

    def may_admit(self, name: str, now: float) -> bool:
        """Whether a create of app ``name`` may be sent now."""
        state = self.app(name)
        if self._capped(state):
            return False
        if now < state.hold_until:
            return state.credits > 0
        return state.active < state.limit or now >= state.next_probe

    def wake_at(self, name: str, now: float) -> float | None:
        """When a blocked app may admit again without news (``None``: only news)."""
        state = self.app(name)
        if self._capped(state):
            return None
        if now < state.hold_until:
            return state.hold_until
        return state.next_probe if state.next_probe < math.inf else None

    def admit(self, name: str, now: float) -> bool:
        """Count one create of ``name`` as sent; returns whether it is a probe (beyond the
        learnt limit). Call only when `may_admit`."""
        state = self.app(name)
        probe = False
        if now < state.hold_until:
            state.credits -= 1
        elif state.active >= state.limit:
            probe = True
            state.next_probe = math.inf  # one probe at a time
        state.active += 1
        self.total_active += 1
        self.admitted += 1
        return probe

    def started(
        self, name: str, now: float, invocation_id: str | None, *, probe: bool, lease: float
    ) -> None:
        """The create succeeded. ``invocation_id`` holds the slot until it is seen to finish
        (``None``: it already finished, e.g. a synchronous invocation)."""
        state = self.app(name)
        if probe:
            state.strikes = 0
            state.next_probe = now  # room was there: try the next one at once
            if state.held:  # and the oldest unseen one of ours presumably ended
                self._release(next(iter(state.held)))
        elif state.active >= state.limit and self.limits.adaptive:
            running = len(state.held) + (invocation_id is not None)
            if state.limit < state.ssthresh:
                # Slow start: this create filled the window, and the window grows by
                # two: it (at least) doubles every round trip, so a cap of N is found in
                # about log2(N) round trips. At most twice what runs (plus the
                # first window) may be admitted: creates that piled up (behind a
                # rate-limit pause, say) cannot all reach the service at once.
                state.limit = min(state.limit + 2.0, 2.0 * running + self.limits.initial)
            else:  # after a 429: one more per full window of successes
                state.limit = min(
                    state.limit + 1.0 / state.limit, running + 1.0 + self.limits.initial
                )
        if invocation_id is None:
            self._free(state)
            return
        if invocation_id in self.owner:  # a server repeating an id: one slot per id
            self._release(invocation_id)
            state.credits -= 1
        state.held[invocation_id] = now + lease
        self.owner[invocation_id] = name
        leases = self._leases
        heapq.heappush(leases, (now + lease, invocation_id))
        if len(leases) > 2 * len(self.owner) + 64:  # mostly released ones: compact
            self._leases = [item for item in leases if self._live(*item)]
            heapq.heapify(self._leases)

    def rejected(self, name: str, now: float, retry_after: float | None) -> float:
        """The create got a concurrency 429: free its slot, learn, and hold the app.
        Returns the hold, in seconds."""
        state = self.app(name)
        self._free(state)
        self.concurrency_limited += 1
        if self.limits.adaptive:
            state.limit = state.ssthresh = float(max(1, len(state.held)))
            state.limited = True
        delay = min(MAX_PROBE_DELAY, self.initial_delay * 2.0 ** min(state.strikes, 32))
        if retry_after is not None:
            delay = max(delay, retry_after)
        state.strikes += 1
        state.hold_until = state.next_probe = now + delay
        state.credits = 0
        return delay

    def abandoned(self, name: str, now: float, *, probe: bool) -> None:
        """The create failed otherwise (or was cancelled): free its slot. A probe that
        failed leaves the question open: probe again after a backoff."""
        state = self.app(name)
        self._free(state)
        if probe:
            state.next_probe = now + self._probe_delay(state)

    def finished(self, invocation_id: str, now: float) -> str | None:
        """An invocation was seen in a terminal state; returns its app if it held a slot."""
        name = self.owner.get(invocation_id)
        if name is not None:
            self._release(invocation_id)
            self.apps[name].next_probe = now + self._probe_delay(self.apps[name])
        return name

    def expire(self, now: float) -> list[str]:
        """Free the slots of unseen invocations past their lease; returns the apps freed.
        Costs nothing when no lease is due: leases are kept in a heap."""
        freed = []
        leases = self._leases
        while leases and leases[0][0] <= now:
            until, id = heapq.heappop(leases)
            if self._live(until, id):
                freed.append(self.owner[id])
                self._release(id)
        return freed

    def next_expiry(self) -> float | None:
        """The earliest lease expiry, if any invocation is held."""
        leases = self._leases
        while leases and not self._live(*leases[0]):
            heapq.heappop(leases)  # released already: forget its lease
        return leases[0][0] if leases else None

    def _live(self, until: float, invocation_id: str) -> bool:
        """Whether this lease is still the one of a held invocation."""
        name = self.owner.get(invocation_id)
        return name is not None and self.apps[name].held.get(invocation_id) == until

    def _probe_delay(self, state: _App) -> float:
        return min(MAX_PROBE_DELAY, self.initial_delay * 2.0 ** min(state.strikes, 32))

    def _release(self, invocation_id: str) -> None:
        """One of ours ended: its slot is free on the service too, so even a held app may
        admit one create for it."""
        name = self.owner.pop(invocation_id)
        state = self.apps[name]
        del state.held[invocation_id]
        self._free(state)
        state.credits += 1

    def _free(self, state: _App) -> None:
        """A slot of ours is free (a refused or failed create frees none on the service)."""
        state.active -= 1
        self.total_active -= 1

    def stats(self, queued: Mapping[str, int]) -> dict[str, AppLimitStats]:
        """Each app's admission state (``queued``: waiting creates per app)."""
        cap = self.limits.max_running_per_app
        result = {}
        for name, state in self.apps.items():
            limit: float = state.limit
            if cap is not None:
                limit = min(limit, cap)
            result[name] = AppLimitStats(
                running=state.active,
                queued=queued.get(name, 0),
                limit=None if math.isinf(limit) else math.floor(limit),
                learnt=state.limited,
            )
        return result
