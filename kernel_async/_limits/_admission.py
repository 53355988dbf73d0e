"""Admission policy: which creates may be sent now, per app. Pure: no I/O, no asyncio, no
clock of its own (every method takes ``now``)."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Mapping
from typing import Final, Literal

from ._config import MAX_PROBE_DELAY, AppLimitStats, Limits

__all__ = [
    "DECREASE",
    "GROWTH",
    "IDLE_PROBE_DELAY",
    "IDLE_PROBE_MIN",
    "SLOW_START_DOUBLING",
    "AdmissionPolicy",
]

#: On a concurrency 429 that shows others taking slots (fewer of ours ran than at the
#: last one), the learnt limit is cut to this fraction of what runs (the multiplicative
#: decrease: clients sharing one cap converge to equal shares).
DECREASE: Final = 0.5
#: How fast the limit grows after a cut, in slots per second cubed: like TCP CUBIC, it
#: grows back to what ran at the last 429 in a fraction of a second, then past it faster
#: and faster: slots another client gave back are taken within about a second.
GROWTH: Final = 48.0
#: With nothing of ours running (so no finish of ours will free a slot), a blocked app
#: probes again, one create at a time, after a short jittered delay growing from
#: `IDLE_PROBE_MIN` by `IDLE_BACKOFF` per 429 to at most `IDLE_PROBE_DELAY` (seconds):
#: another tenant's slots come back any moment.
IDLE_PROBE_DELAY: Final = 1.0
IDLE_PROBE_MIN: Final = 0.2
IDLE_BACKOFF: Final = 2.0
#: With some of ours running and none seen finishing for this long (seconds, doubling
#: with each 429 since the last success), one create goes beyond the limit: some of ours
#: may have ended unseen.
UNSEEN_PROBE_DELAY: Final = 1.0
#: Slow start doubles the limit this often (seconds), from the first create on: in time,
#: not per answer, so processes that start a moment apart reach the cap with like shares.
SLOW_START_DOUBLING: Final = 0.05
#: A 429 counts as others taking slots (and halves the limit) when what ran fell below
#: the last plateau by more than this fraction of it (and by at least one): a slot seen
#: free a moment late is no news.
SLACK: Final = 0.15


class _App:
    """One app's admission state."""

    __slots__ = (
        "active",
        "credits",
        "epoch",
        "fit",
        "held",
        "hold_until",
        "idle_strikes",
        "limit",
        "limited",
        "next_probe",
        "plateau",
        "ssthresh",
        "strikes",
        "w_max",
    )

    def __init__(self, initial: float) -> None:
        self.limit = initial  # the learnt window (math.inf when not adaptive)
        self.ssthresh = math.inf  # slow start below this; learnt on the first 429
        self.w_max = 0.0  # what ran when the last 429 came: the growth curve's plateau
        self.epoch = -math.inf  # when the last 429 cut the limit (loop time)
        self.fit = 0  # how many of ours ran when the last 429 came: the limit learnt
        self.plateau = 0.0  # seconds from the cut until the growth curve reaches w_max
        self.active = 0  # admitted: creates in flight + invocations held
        self.held: dict[str, float] = {}  # invocation id -> lease expiry, oldest first
        self.hold_until = -math.inf  # after a 429: only freed slots admit until then
        self.credits = 0  # slots freed during a hold
        self.next_probe = math.inf  # when the queue head may go beyond the learnt limit
        self.strikes = 0  # concurrency 429s since the last successful create
        self.idle_strikes = 0  # of those, with nothing of ours running
        self.limited = False  # whether a 429 taught the limit

    def room(self) -> bool:
        """Whether one more create fits under the limit (a fractional limit rounds down)."""
        return self.active + 1 <= self.limit


class AdmissionPolicy:
    """Which creates may be sent now, per app. Pure: the caller passes ``now`` (and, for
    the jitter, may pass ``rng``).

    An app's *active* count is its creates in flight plus its invocations this client has
    not seen finish. A create may go when the active count is below the app's limit (and
    the caps of `Limits`). The limit is learnt like TCP's congestion window (CUBIC), so
    that processes sharing one cap without talking to each other converge to equal shares
    and, together, use the whole cap:

    * slow start: the limit starts at `Limits.initial` (or at a cap the service told,
      `seed`, and stays there) and doubles every `SLOW_START_DOUBLING` seconds, in time
      rather than per answer (processes that start a moment apart reach the cap with
      like shares), never past twice the number running plus `Limits.initial`, until
      the first concurrency 429;
    * decrease: at a concurrency 429 what runs is what fits. As many as at the last 429
      (alone at a cap, or a share that holds): the limit steps one under it. Fewer: others
      are taking slots, so the limit is cut to `DECREASE` times what runs and the
      plateau set lower still (TCP's "fast convergence"): the larger share gives up more;
    * growth in time, not per success: the limit climbs back to the plateau (what ran) in
      a fraction of a second, then grows past it faster and faster (`GROWTH`), never past
      twice the number running plus `Limits.initial`. Every client grows alike whatever
      its share, and the larger share is cut by more: shares converge.

    With nothing of ours running, no finish will come: a 429 holds the app for a short,
    jittered delay (from `IDLE_PROBE_MIN` up to `IDLE_PROBE_DELAY`), then one create goes
    (another tenant's slots may come back any moment). With some running, when nothing of
    ours was seen finishing for `UNSEEN_PROBE_DELAY` (doubling per 429), the queue's head
    goes as a probe, beyond the learnt limit (never beyond a cap): some of ours may have
    ended unseen. A probe that succeeds takes that as news that the oldest unseen one of
    ours ended, and the next one probes at once. A ``Retry-After`` holds the app (capped
    by ``max_hold``); during a hold only a slot freed by one of ours finishing admits.
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
            return state.credits > 0 and state.room()
        if not state.room() and state.epoch > -math.inf:
            self._grow(state, now)
        return state.room() or now >= state.next_probe

    def wake_at(self, name: str, now: float) -> float | None:
        """When a blocked app may admit again without news (``None``: only news)."""
        state = self.app(name)
        if self._capped(state):
            return None
        if now < state.hold_until:
            return state.hold_until
        wake = state.next_probe
        if state.epoch > -math.inf and self._ceiling(state) >= state.active + 1:
            wake = min(wake, max(self._reaches(state, state.active + 1.0), now + 0.001))
        return wake if wake < math.inf else None

    def _ceiling(self, state: _App) -> float:
        """The most the limit may grow to now: twice what runs plus the first window (a
        pile of creates cannot all reach the service at once); with nothing of ours
        running, one create at a time."""
        held = len(state.held)
        return 2.0 * held + self.limits.initial if held or not state.limited else 1.0

    def _grow(self, state: _App, now: float) -> None:
        """The limit on its growth curve: in slow start, doubling every
        `SLOW_START_DOUBLING`; after a cut, concave up to ``w_max`` (what ran at that
        429), then convex beyond it."""
        t = now - state.epoch
        if state.limited:
            t -= state.plateau
            curve = state.w_max + GROWTH * t * t * t
        elif state.limit < state.ssthresh:
            doublings = min(t / SLOW_START_DOUBLING, 64.0)
            curve = min(self.limits.initial * 2.0**doublings, state.ssthresh)
        else:
            return
        if curve > state.limit:
            state.limit = max(state.limit, min(curve, self._ceiling(state)))

    def _reaches(self, state: _App, limit: float) -> float:
        """When the growth curve reaches ``limit`` (loop time; infinite: never)."""
        if state.limited:
            excess = limit - state.w_max
            return (
                state.epoch + state.plateau + math.copysign(abs(excess / GROWTH) ** (1 / 3), excess)
            )
        if limit > state.ssthresh:
            return math.inf
        return state.epoch + SLOW_START_DOUBLING * math.log2(max(limit, 1.0) / self.limits.initial)

    def admit(self, name: str, now: float) -> bool:
        """Count one create of ``name`` as sent; returns whether it is a probe (beyond the
        learnt limit). Call only when `may_admit`."""
        state = self.app(name)
        probe = False
        if now < state.hold_until:
            state.credits -= 1
        elif not state.room():
            probe = True
            state.next_probe = math.inf  # one probe at a time
        if state.epoch == -math.inf and self.limits.adaptive:
            state.epoch = now  # slow start's clock starts with the first create
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
        if state.idle_strikes and state.limited:
            # In after a wait with nothing of ours running: grow from here, afresh (not
            # at the pace a long wait's curve has reached).
            state.epoch, state.plateau = now, 0.0
            state.w_max = state.limit = max(1.0, float(state.active))
        state.strikes = state.idle_strikes = 0  # there was room: backoffs start over
        if probe:
            state.next_probe = now  # room was there: try the next one at once
            if state.held:  # and the oldest unseen one of ours presumably ended
                self._release(next(iter(state.held)))
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
        """The create got a concurrency 429: free its slot, cut the limit, and (with none
        of ours running, or a ``Retry-After``) hold the app. Returns the hold, in seconds."""
        state = self.app(name)
        self._free(state)
        self.concurrency_limited += 1
        running = len(state.held)
        if self.limits.adaptive:
            # What ran fits. Clearly fewer than at the last 429 (`SLACK`): others are
            # taking slots, so give up more (a cut of `DECREASE`, and a lower plateau:
            # TCP's "fast convergence"). As many or more: alone, or at a fair share
            # already, so stay just under it.
            state.fit = max(running, 1)
            ran = float(state.fit)
            if ran < state.w_max - max(0.5, SLACK * state.w_max):
                state.w_max = ran * (1.0 + DECREASE) / 2.0
                state.limit = max(1.0, DECREASE * running)
            else:
                state.w_max = ran
                state.limit = max(1.0, running - 1.0)
            state.ssthresh = state.limit
            state.epoch = now
            state.plateau = (max(0.0, state.w_max - state.limit) / GROWTH) ** (1 / 3)
            state.limited = True
        delay = 0.0
        if not running:
            backoff = IDLE_BACKOFF ** min(state.idle_strikes, 32)
            delay = min(IDLE_PROBE_DELAY, IDLE_PROBE_MIN * backoff)
            delay *= self._rng.uniform(0.5, 1.0)
            state.idle_strikes += 1
        elif not self.limits.adaptive:
            # No learnt limit to stay under: wait for a finish of ours (a credit) or the
            # unseen-probe backoff, never resend at once.
            delay = self._probe_delay(state)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_hold))
        state.strikes += 1
        state.hold_until = now + delay
        # With some of ours running, probe beyond the limit if none is seen finishing for
        # a backoff; with none, the hold is all (then the limit admits one create).
        state.next_probe = now + self._probe_delay(state) if running else math.inf
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
        """How long no finish of ours is seen before a probe beyond the limit: exponential
        since the last success, from `UNSEEN_PROBE_DELAY` at least (finishes of ours
        come much more often while we see them), capped by ``max_hold``."""
        base = max(self.initial_delay, UNSEEN_PROBE_DELAY)
        return min(self.max_hold, base * 2.0 ** min(state.strikes, 32))

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
                # Learnt: what fit at the last 429 (the window itself dips under it after a
                # cut and probes over it before the next).
                source = "learnt" if state.limited else "told"
                known = state.fit if state.limited else state.limit
                limit = known if cap is None else min(known, cap)
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
