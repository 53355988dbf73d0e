"""Admission policy: which creates may be sent now, per app. Pure: no I/O, no asyncio, no
clock of its own (every method takes ``now``)."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Mapping
from typing import Final, Literal

from ._config import MAX_PROBE_DELAY, AppLimitStats, Limits

__all__ = ["DECREASE", "IDLE_PROBE_DELAY", "INCREASE", "RECOVER", "AdmissionPolicy"]

#: On a concurrency 429 the learnt limit is cut to this fraction of what ran (the
#: multiplicative decrease of AIMD: clients sharing one cap converge to equal shares).
DECREASE: Final = 0.8
#: After a concurrency 429 the limit grows by this much per full window of successes
#: (the additive increase: small, so that many clients growing at once rarely overshoot).
INCREASE: Final = 0.5
#: With nothing of ours running (so no finish of ours will free a slot), a blocked app
#: probes again after at most this long (jittered): another tenant's slots come back soon.
IDLE_PROBE_DELAY: Final = 1.0
#: Below the limit at the last 429, the limit grows back by this fraction of the gap per
#: full window (a single client recovers its share in a few round trips).
RECOVER: Final = 0.5


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
        "peak",
        "ssthresh",
        "strikes",
    )

    def __init__(self, initial: float) -> None:
        self.limit = initial  # the learnt window (math.inf when not adaptive)
        self.ssthresh = math.inf  # slow start below this; learnt on the first 429
        self.peak = 0.0  # what ran when the last 429 came: recovered quickly, then probed
        self.active = 0  # admitted: creates in flight + invocations held
        self.held: dict[str, float] = {}  # invocation id -> lease expiry, oldest first
        self.hold_until = -math.inf  # after a 429: only freed slots admit until then
        self.credits = 0  # slots freed during a hold
        self.next_probe = math.inf  # when the queue head may go beyond the learnt limit
        self.strikes = 0  # concurrency 429s since the last successful probe
        self.limited = False  # whether a 429 taught the limit


class AdmissionPolicy:
    """Which creates may be sent now, per app. Pure: the caller passes ``now`` (and, for
    the jitter, may pass ``rng``).

    An app's *active* count is its creates in flight plus its invocations this client has
    not seen finish. A create may go when the active count is below the app's limit (and
    the caps of `Limits`). The limit is learnt AIMD-style, like TCP's congestion window,
    so that processes sharing one cap without talking to each other converge to equal
    shares and, together, use the whole cap:

    * slow start: the limit starts at `Limits.initial` (or at a cap the service told,
      `seed`) and the window of creates in flight doubles every round trip (never past
      twice the number running plus `Limits.initial`), until the first concurrency 429;
    * multiplicative decrease: a concurrency 429 cuts the limit to `DECREASE` times what
      ran (never above what still runs, so no create goes until one of ours finishes);
    * additive increase: then it grows by `INCREASE` per full window of successes, never
      past the number running plus `Limits.initial` + 1.

    After a 429 the app is held for a backoff during which only a slot freed by one of
    ours finishing admits. With nothing of ours running, no finish will come: the hold is
    a short, jittered `IDLE_PROBE_DELAY` at most (another tenant's slots may come back any
    moment). With some running, when the hold passes and nothing of ours was seen finishing
    for a backoff, the queue's head goes as a probe, beyond the learnt limit (never beyond
    a cap): some of ours may have ended unseen. A probe that succeeds takes that as news
    that the oldest unseen one of ours ended, and the next one probes at once. Every hold
    is capped by ``max_hold`` (a ``Retry-After`` included).
    """

    def __init__(
        self,
        limits: Limits,
        *,
        initial_delay: float = 0.5,
        max_hold: float = MAX_PROBE_DELAY,
        rng: random.Random | None = None,
    ) -> None:
        self.limits = limits
        self.initial_delay = initial_delay
        self.max_hold = max_hold
        self._rng = rng if rng is not None else random.Random()
        self.apps: dict[str, _App] = {}
        self.owner: dict[str, str] = {}  # invocation id -> app
        # (lease expiry, invocation id), earliest first; a released one stays until popped
        self._leases: list[tuple[float, str]] = []
        self.total_active = 0
        self.concurrency_limited = 0
        self.admitted = 0
        self.known_cap: int | None = None  # told by the service (`seed_all`)

    def app(self, name: str) -> _App:
        """App ``name``'s state, made on first use."""
        state = self.apps.get(name)
        if state is None:
            initial = float(self.limits.initial) if self.limits.adaptive else math.inf
            state = self.apps[name] = _App(initial)
            if self.known_cap is not None:
                self.seed(name, self.known_cap)
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
            return state.credits > 0 and state.active < state.limit
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
        state.strikes = 0  # there was room: backoffs start over
        if probe:
            state.next_probe = now  # room was there: try the next one at once
            if state.held:  # and the oldest unseen one of ours presumably ended
                self._release(next(iter(state.held)))
        elif state.active >= state.limit and self.limits.adaptive:
            # What runs on the service: ours held, and the creates in flight (this one
            # included): a synchronous create's invocation runs while it is in flight.
            running = state.active
            if state.limit < state.ssthresh:
                # Slow start: this create filled the window, and the window grows by
                # two: it (at least) doubles every round trip, so a cap of N is found in
                # about log2(N) round trips. At most twice what runs (plus the
                # first window) may be admitted: creates that piled up (behind a
                # rate-limit pause, say) cannot all reach the service at once.
                state.limit = min(state.limit + 2.0, 2.0 * running + self.limits.initial)
            else:
                # Back quickly (half the gap per window) to what ran at the last 429, then
                # additive increase: INCREASE per full window of successes.
                step = max(INCREASE, RECOVER * (state.peak - state.limit))
                state.limit = min(
                    state.limit + step / state.limit, running + 1.0 + self.limits.initial
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

    def seed(self, name: str, cap: int) -> None:
        """The service told app ``name``'s cap (a project's ``max_concurrent_invocations``):
        start from it instead of slow start, unless a 429 taught a limit already."""
        state = self.app(name)
        if self.limits.adaptive and not state.limited and cap >= 1:
            state.limit = state.ssthresh = float(cap)

    def seed_all(self, cap: int) -> None:
        """The service told the cap every app of this client shares: `seed` each app
        known, and each app met later."""
        self.known_cap = cap
        for name in self.apps:
            self.seed(name, cap)

    def rejected(self, name: str, now: float, retry_after: float | None) -> float:
        """The create got a concurrency 429: free its slot, cut the limit, and hold the app.
        Returns the hold, in seconds."""
        state = self.app(name)
        self._free(state)
        self.concurrency_limited += 1
        running = len(state.held)
        if self.limits.adaptive:
            # Multiplicative decrease, from what ran (this create included), and never
            # above what still runs: the next create waits for one of ours to finish.
            ran = min(state.limit, running + 1.0)
            # A peak lower than the last one: others want more, give up more (TCP's
            # "fast convergence").
            state.peak = ran if ran >= state.peak else ran * (1.0 + DECREASE) / 2.0
            cut = DECREASE * ran
            state.limit = state.ssthresh = max(1.0, min(cut, float(running)))
            state.limited = True
        delay = self._probe_delay(state) if running else self._idle_delay(state)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_hold))
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
        """Exponential backoff since the last success, capped by ``max_hold``."""
        return min(self.max_hold, self.initial_delay * 2.0 ** min(state.strikes, 32))

    def _idle_delay(self, state: _App) -> float:
        """A short, jittered backoff for an app with nothing of ours running."""
        delay = min(self._probe_delay(state), IDLE_PROBE_DELAY)
        return delay * self._rng.uniform(0.5, 1.0)

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
            source: Literal["learnt", "told", "configured", "none"] = "none"
            limit: float | None = None
            if state.limited or not math.isinf(state.ssthresh):  # learnt or told: within the cap
                source = "learnt" if state.limited else "told"
                limit = state.limit if cap is None else min(state.limit, cap)
            elif cap is not None:  # slow start's window is no limit: only the cap is
                source, limit = "configured", cap
            result[name] = AppLimitStats(
                running=state.active,
                queued=queued.get(name, 0),
                limit=None if limit is None or math.isinf(limit) else math.floor(limit),
                learnt=state.limited,
                source=source,
            )
        return result
