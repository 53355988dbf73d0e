"""Admission policy: which creates may be sent now, per app. Pure: no I/O, no asyncio, no
clock of its own (every method takes ``now``)."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Collection, Mapping
from typing import Final, Literal

from . import _room
from ._app import AppState
from ._config import MAX_PROBE_DELAY, AppLimitStats, Limits
from ._room import CONFIRM_DELAY, EBB_LISTS, LIST_AFTER_REJECT

__all__ = [
    "GROWTH_PROBE",
    "GROWTH_PROBE_MAX",
    "IDLE_PROBE_DELAY",
    "IDLE_PROBE_MIN",
    "RESTART_DOUBLING",
    "SLOW_START_DOUBLING",
    "AdmissionPolicy",
]

#: Slow start doubles the limit this often (seconds), from the app's first create:
#: processes that start d seconds apart meet the cap with windows at most 2^(d / step)
#: apart (1.3 for 20 ms). Not on a grid of the wall clock: processes starting 10-60 ms
#: apart (a fleet started together on a busy machine) straddled one of its points in
#: about half the runs and met the cap a whole doubling apart (shares 4 and 1).
SLOW_START_DOUBLING: Final = 0.05
#: After a wait with nothing of ours running, the limit doubles this often from what got
#: in: slots someone else gave back all at once are taken within a tenth of a second.
RESTART_DOUBLING: Final = 0.02
#: With nothing of ours running (no finish of ours will free a slot), a blocked app probes
#: with one create on a grid of the wall clock: `IDLE_PROBE_MIN` seconds or more later, on
#: a point of a grid of that step; after a 429 more, `IDLE_PROBE_DELAY` (twice as long).
#: Processes waiting alike probe together and get in together when another tenant's
#: slots come back.
IDLE_PROBE_MIN: Final = 0.2
IDLE_PROBE_DELAY: Final = 0.4
#: With the limit learnt, one create goes beyond it after this many seconds times our
#: share of the app's running invocations (as the last list showed; all of them before
#: any list), between `GROWTH_PROBE_MIN` and `GROWTH_PROBE_MAX`: room no list shows
#: (another app's or another tenant's slots given back, a cap raised) is found, and a
#: client with a small share looks more often than one with a large share. When the
#: lists are every app's, they show all room but a raised cap's: a look beyond then
#: comes after `GROWTH_PROBE_MAX` (jittered) only, since one sent while the cap is full
#: can take a slot that was free for a moment only (between another process's end and
#: its next create), whose owner is refused and keeps one fewer: slots move between
#: processes at random (8 processes sharing 20, looking every 1-2 s: a finish spread
#: over 0.25x in 10 seeds of 16 of the simulator; every 5-10 s: 2 of 16).
GROWTH_PROBE: Final = 20.0
GROWTH_PROBE_MIN: Final = 0.5
GROWTH_PROBE_MAX: Final = 10.0
#: With some of ours running and none seen finishing for this long (seconds, doubling
#: with each 429 since the last success), one create goes beyond the limit: some of ours
#: may have ended unseen.
UNSEEN_PROBE_DELAY: Final = 1.0


def _never() -> bool:
    return False


class AdmissionPolicy:
    """Which creates may be sent now, per app. Pure: the caller passes ``now`` (and, for
    the jitter, may pass ``rng``; for the grids, ``wall_offset``: the wall clock minus
    the ``now`` clock).

    An app's *active* count is its creates in flight plus its invocations this client has
    not seen finish. A create may go when the active count is below the app's limit (and
    the caps of `Limits`). The limit is learnt so that processes sharing one cap without
    talking to each other share it evenly and, together, use all of it:

    * slow start, in time: the limit starts at `Limits.initial` (or at a cap the service
      told, `seed`, and stays there) and doubles every `SLOW_START_DOUBLING` seconds from
      the first create, never past twice the number running plus `Limits.initial`, until
      the first concurrency 429. Processes that start together grow alike (in time, not
      per answer: a faster connection takes no bigger share) and meet the cap with
      shares about one slot apart;
    * what fits, holds: at a concurrency 429 the limit is what runs. No cut, no sawtooth:
      shares stay where they met the cap instead of wandering (each cut or probe of one
      process moves slots between the others at random);
    * room is found by listing: while creates wait, the app's invocations are listed
      (`next_list`, `listed`), every `CROWD_LIST_INTERVAL` when others share the app. A
      list (confirmed by another) showing `FREE_MIN` or more slots free under the most it
      ever showed running means someone left or finished: creates go until one is
      refused, the limit rising with each that succeeds. On a slow clock (`GROWTH_PROBE`
      times our share of the app; `GROWTH_PROBE_MAX` when the lists are every app's),
      one create goes beyond the limit anyway: a cap that was raised is found.

    With nothing of ours running, no finish will come: a 429 holds the app on a grid of
    the wall clock (from `IDLE_PROBE_MIN` up to `IDLE_PROBE_DELAY`), then one create goes
    (another tenant's slots may come back any moment); one that gets in slow-starts again,
    fast (`RESTART_DOUBLING`). With some running, when nothing of ours was seen finishing
    for `UNSEEN_PROBE_DELAY` (doubling per 429), the queue's head goes as a probe, beyond
    the limit (never beyond a cap): some of ours may have ended unseen. A probe that
    succeeds takes that as news that the oldest unseen one of ours ended, and the next
    one probes at once. A ``Retry-After`` holds the app (capped by ``max_hold``); during
    a hold only a slot freed by one of ours finishing admits.
    """

    def __init__(
        self,
        limits: Limits,
        *,
        initial_delay: float = 0.5,
        max_hold: float = MAX_PROBE_DELAY,
        rng: random.Random | None = None,
        wall_offset: float = 0.0,
    ) -> None:
        self.limits = limits
        self.initial_delay = initial_delay
        self.max_hold = max_hold
        self.wall_offset = wall_offset
        self._rng = rng if rng is not None else random.Random()
        self.apps: dict[str, AppState] = {}
        self.owner: dict[str, str] = {}  # invocation id -> app
        # (lease expiry, invocation id), earliest first; a released one stays until popped
        self._leases: list[tuple[float, str]] = []
        self.total_active = 0
        self.concurrency_limited = 0
        self.admitted = 0
        self.known_cap: int | None = None  # told by the service (`seed_all`)
        self.windowless: Callable[[], bool] = _never
        """Asked before the window is applied: whether only the caps of `Limits` and holds
        apply (the limits are shared through Redis, which holds the fleet's window)."""

    def app(self, name: str) -> AppState:
        """App ``name``'s state, made on first use."""
        state = self.apps.get(name)
        if state is None:
            adaptive = self.limits.adaptive
            initial = float(self.limits.initial) if adaptive else math.inf
            state = self.apps[name] = AppState(initial, adaptive, SLOW_START_DOUBLING)
            if self.known_cap is not None:
                self.seed(name, self.known_cap)
        return state

    def _capped(self, state: AppState) -> bool:
        limits = self.limits
        per_app, total = limits.max_running_per_app, limits.max_running
        return (per_app is not None and state.active >= per_app) or (
            total is not None and self.total_active >= total
        )

    def _grid(self, now: float, step: float) -> float:
        """The latest point of the wall clock's grid of ``step`` at or before ``now``."""
        wall = now + self.wall_offset
        return math.floor(wall / step) * step - self.wall_offset

    def may_admit(self, name: str, now: float) -> bool:
        """Whether a create of app ``name`` may be sent now."""
        state = self.app(name)
        if self._capped(state):
            return False
        if now < state.hold_until:
            return state.credits > 0 and state.room()
        if not state.limited and self.windowless():
            return True
        if state.slow and not state.room():
            self._grow(state, now)
        return state.room() or now >= state.next_probe or now >= state.grow_at

    def wake_at(self, name: str, now: float) -> float | None:
        """When a blocked app may admit again without news (``None``: only news)."""
        state = self.app(name)
        if self._capped(state):
            return None
        if now < state.hold_until:
            return state.hold_until
        wake = min(state.next_probe, state.grow_at)
        if state.slow and state.epoch > -math.inf and self._ceiling(state) >= state.active + 1:
            wake = min(wake, max(self._reaches(state, state.active + 1.0), now + 0.001))
        return wake if wake < math.inf else None

    def _ceiling(self, state: AppState) -> float:
        """The most slow start may grow the limit to now: twice what runs plus the first
        window (a pile of creates cannot all reach the service at once)."""
        return 2.0 * len(state.held) + self.limits.initial

    def _grow(self, state: AppState, now: float) -> None:
        """Slow start: the limit doubles every `doubling` seconds from `epoch`."""
        if state.epoch == -math.inf:
            return
        doublings = min((now - state.epoch) / state.doubling, 64.0)
        curve = state.base * 2.0**doublings
        if curve > state.limit:
            state.limit = max(state.limit, min(curve, self._ceiling(state)))

    def _reaches(self, state: AppState, limit: float) -> float:
        """When slow start's curve reaches ``limit`` (loop time)."""
        return state.epoch + state.doubling * math.log2(max(limit, 1.0) / state.base)

    def admit(self, name: str, now: float) -> bool:
        """Count one create of ``name`` as sent; returns whether it is an unseen-end probe
        (beyond the limit, in case some of ours ended unseen). Call only when
        `may_admit`."""
        state = self.app(name)
        probe = False
        if now < state.hold_until:
            state.credits -= 1
        elif not state.limited and self.windowless():
            pass  # the shared window admitted it
        elif not state.room():
            if now >= state.grow_at:
                state.grow_at = math.inf  # one beyond the limit at a time
                state.growing = True
            else:
                probe = True
                state.next_probe = math.inf  # one probe at a time
        if state.epoch == -math.inf and state.slow:
            state.epoch = now  # in time: alike for processes starting together
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
            # In after a wait with nothing of ours running: the slots are coming back,
            # take them fast (in step with whoever got in on the same grid point).
            state.slow, state.doubling = True, RESTART_DOUBLING
            state.base = state.limit = max(1.0, float(state.active))
            state.epoch = self._grid(now, IDLE_PROBE_MIN)
            if state.idle_hold:  # a 429 of a create sent alongside holds no more
                state.hold_until, state.idle_hold = now, False
        state.strikes = state.idle_strikes = 0  # there was room: backoffs start over
        if probe:
            state.next_probe = now  # room was there: try the next one at once
            if state.held:  # and the oldest unseen one of ours presumably ended
                self._release(next(iter(state.held)))
        elif state.landing:
            state.landing -= 1
            state.limit += 1.0  # sent before the 429, and in: it fit too
        elif state.growing:
            state.growing = state.list_probe = False  # the list was right: there was room
            state.limit += 1.0  # one beyond the limit fit
            if state.streak:
                state.grow_at = now
            else:
                self._arm_growth(state, now)
                # Room no list showed: a list soon tells whether the app now runs more
                # than ever seen (the cap is higher than lists knew: look further).
                state.beyond = max(1, state.cap_seen)
                state.list_soon = min(state.list_soon, now + CONFIRM_DELAY)
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
            state.limit = float(cap)
            state.slow, state.told = False, True
            state.grow_at = math.inf  # a told cap is not probed beyond

    def seed_all(self, cap: int) -> None:
        """The service told the cap every app of this client shares: `seed` each app
        known, and each app met later."""
        self.known_cap = cap
        for name in self.apps:
            self.seed(name, cap)

    def rejected(self, name: str, now: float, retry_after: float | None) -> float:
        """The create got a concurrency 429: free its slot, learn the limit (what runs
        fits), and (with none of ours running, or a ``Retry-After``) hold the app. Returns
        the hold, in seconds."""
        state = self.app(name)
        self._free(state)
        self.concurrency_limited += 1
        running = len(state.held)
        if self.limits.adaptive:
            state.fit = max(running, 1)
            state.limit = max(1.0, float(running))
            state.landing = state.in_flight()  # those that land fit too
            state.slow, state.limited, state.streak, state.growing = False, True, False, False
            if state.list_probe:  # the list saw room that was not there (a cap lowered?)
                state.cap_seen, state.org_seen = state.last_total, state.org_total
                state.app_bound |= state.org_word  # the org's room, but the app's cap
            state.list_probe = False
            self._arm_growth(state, now)
            if state.others:
                state.list_soon = min(state.list_soon, now + LIST_AFTER_REJECT)
        delay = 0.0
        state.idle_hold = False
        if not running:
            backoff = 2.0 ** min(state.idle_strikes, 32)
            wait = min(IDLE_PROBE_DELAY, IDLE_PROBE_MIN * backoff)
            # The first point of the wall clock's grid of `wait` at least `wait` away:
            # whoever waits alike probes at the same moment, and gets in together.
            wall = now + self.wall_offset + wait
            delay = math.ceil(wall / wait - 1e-9) * wait - self.wall_offset - now
            state.idle_strikes += 1
            state.idle_hold, state.idle_at = True, now
        elif not self.limits.adaptive:
            # No learnt limit to stay under: wait for a finish of ours (a credit) or the
            # unseen-probe backoff, never resend at once.
            delay = self._probe_delay(state)
        if retry_after is not None and retry_after > delay:
            delay = max(delay, min(retry_after, self.max_hold))
            state.idle_hold = False
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
        state.landing = min(state.landing, state.in_flight())
        if probe:
            state.next_probe = now + self._probe_delay(state)
        elif state.growing:
            state.growing = False
            self._arm_growth(state, now)

    def finished(self, invocation_id: str, now: float) -> str | None:
        """An invocation was seen in a terminal state; returns its app if it held a slot."""
        name = self.owner.get(invocation_id)
        if name is not None:
            self._release(invocation_id)
            self.apps[name].next_probe = now + self._probe_delay(self.apps[name])
        return name

    def next_list(self, name: str) -> float:
        """When app ``name``'s invocations should be listed next (loop time), while its
        creates wait (`_room.next_list`)."""
        return _room.next_list(self.app(name), self.limits.adaptive)

    def crowded(self, name: str) -> bool:
        """Whether app ``name``'s limit is learnt and its lists showed others'
        invocations, or room: lists come often (`_room.crowded`)."""
        return _room.crowded(self.app(name), self.limits.adaptive)

    def wants_list(self, name: str) -> bool:
        """Whether app ``name``'s waiting creates are worth a list of its invocations
        (`_room.wants_list`)."""
        return _room.wants_list(self.app(name), self.limits.adaptive)

    def listed(
        self, name: str, now: float, live: Collection[str], org: Collection[str] | None = None
    ) -> None:
        """The service listed ``live``: the ids of app ``name``'s queued and running
        invocations (and ``org``: every app's, when the list was the organisation's); see
        `_room.listed`. In slow start, a list showing fewer of the app's invocations than
        the most a list showed frees that many slots for certain: the limit steps up to
        them at once (within slow start's ceiling); lists showing the others winding
        down (`EBB_LISTS`) make the limit double every `RESTART_DOUBLING` from what it
        is: their slots come free, a newcomer takes them as fast as one back from a
        wait."""
        state = self.app(name)
        _room.listed(state, now, live, org, adaptive=self.limits.adaptive)
        if state.slow and state.epoch > -math.inf:
            self._grow(state, now)
            # Room for certain, at once (a newcomer joining a leaving process's last
            # invocations: 0.13-0.17 of the cap unused in that second at 50 ms
            # doublings, 2 runs in 10). Held, not listed: the active count holds ours
            # that ended unseen too, so held + room admits exactly the room listed.
            room = _room.certain_room(state)
            floor = min(len(state.held) + room, self._ceiling(state))
            if floor > state.limit:
                state.limit = state.base = floor
                state.epoch = now
            if state.ebbs >= EBB_LISTS:
                state.base, state.epoch, state.doubling = state.limit, now, RESTART_DOUBLING

    def _arm_growth(self, state: AppState, now: float) -> None:
        """One create may go beyond the limit after our share of the app's invocations
        (as last listed) times `GROWTH_PROBE` seconds, or `GROWTH_PROBE_MAX` when the
        lists are every app's; jittered."""
        if state.whole_org:
            delay = GROWTH_PROBE_MAX
        else:
            ours = len(state.held)
            share = ours / max(1, ours + state.rivals)  # of the app: other apps' do not count
            delay = min(GROWTH_PROBE_MAX, max(GROWTH_PROBE_MIN, GROWTH_PROBE * share))
        state.grow_at = now + delay * self._rng.uniform(0.5, 1.0)

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

    def _probe_delay(self, state: AppState) -> float:
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

    def _free(self, state: AppState) -> None:
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
            if state.limited or state.told:  # learnt or told: within the cap
                # Learnt: what fit at the last 429 (the window itself probes over it).
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
