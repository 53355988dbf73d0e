"""Admission policy: which creates may be sent now, per app. Pure: no I/O, no asyncio, no
clock of its own (every method takes ``now``)."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Collection, Mapping
from typing import Final, Literal

from ._config import MAX_PROBE_DELAY, AppLimitStats, Limits

__all__ = [
    "CONFIRMATIONS",
    "CONFIRM_DELAY",
    "CROWD_LIST_INTERVAL",
    "FEW_CONFIRMATIONS",
    "FREE_MIN",
    "GROWTH_PROBE",
    "IDLE_LIST_HOLD",
    "IDLE_LIST_HOLD_MAX",
    "IDLE_LIST_INTERVAL",
    "IDLE_PROBE_DELAY",
    "IDLE_PROBE_MIN",
    "LEFT_SHARE",
    "LIST_INTERVAL",
    "RESTART_DOUBLING",
    "SLOW_START_DOUBLING",
    "AdmissionPolicy",
]

#: Slow start doubles the limit this often (seconds). Its clock starts on a grid of this
#: step of the wall clock, not at the first create: processes that start within one step
#: of each other (one machine, or machines whose clocks NTP keeps within milliseconds)
#: grow in step and meet the cap with shares at most one slot apart.
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
#: client with a small share looks more often than one with a large share.
GROWTH_PROBE: Final = 20.0
GROWTH_PROBE_MIN: Final = 0.5
GROWTH_PROBE_MAX: Final = 10.0
#: With some of ours running and none seen finishing for this long (seconds, doubling
#: with each 429 since the last success), one create goes beyond the limit: some of ours
#: may have ended unseen.
UNSEEN_PROBE_DELAY: Final = 1.0
#: While creates wait, the app's queued and running invocations are listed this often
#: (seconds); every `CROWD_LIST_INTERVAL` (times the pages of 100 the last list took, up
#: to `LIST_INTERVAL`) once the limit is learnt and the lists show invocations that are
#: not ours (other processes share the cap) or room, and `LIST_AFTER_REJECT` after a
#: concurrency 429 there.
LIST_INTERVAL: Final = 1.0
CROWD_LIST_INTERVAL: Final = 0.15
LIST_AFTER_REJECT: Final = 0.1
#: A list showing at least this many slots free under the most it ever showed running
#: (less our creates in flight) means someone left or finished, once `CONFIRMATIONS` more
#: lists `CONFIRM_DELAY`
#: seconds apart show it too (a slot between one invocation's end and its successor's
#: create is free for milliseconds only); at once when it is `LEFT_SHARE` of that most
#: or more. Then creates go until one is refused.
FREE_MIN: Final = 3
CONFIRMATIONS: Final = 1
#: Fewer free than `FREE_MIN` among others: believed when this many lists in a row on the
#: cadence, after the first, show room too.
FEW_CONFIRMATIONS: Final = 5
CONFIRM_DELAY: Final = 0.05
LEFT_SHARE: Final = 0.25
#: With nothing of ours running, the lists of every app's invocations watch for room
#: instead of 429s. One that shows the organisation full with the same invocations as
#: the list before (none ended: no slot can have come free) holds the idle probe off this
#: long again (seconds), up to `IDLE_LIST_HOLD_MAX` after the last probe (invocations
#: listed that no longer count against the cap must not stop creates for ever). While
#: they turn over (the others' end and are replaced: one of them may leave any moment,
#: all its slots at once), they come every `IDLE_LIST_INTERVAL` (times the pages).
IDLE_LIST_HOLD: Final = 0.4
IDLE_LIST_HOLD_MAX: Final = 2.0
IDLE_LIST_INTERVAL: Final = 0.075


def _never() -> bool:
    return False


class _App:
    """One app's admission state."""

    __slots__ = (
        "active",
        "app_bound",
        "base",
        "beyond",
        "cap_seen",
        "credits",
        "doubling",
        "epoch",
        "few",
        "fit",
        "grow_at",
        "growing",
        "held",
        "hold_until",
        "idle_at",
        "idle_hold",
        "idle_strikes",
        "landing",
        "last_total",
        "limit",
        "limited",
        "list_probe",
        "list_soon",
        "listed_at",
        "next_probe",
        "org_ids",
        "org_seen",
        "org_total",
        "org_word",
        "others",
        "rivals",
        "slow",
        "streak",
        "strikes",
        "suspect",
        "told",
        "turning",
    )

    def __init__(self, initial: float, adaptive: bool) -> None:
        self.limit = initial  # the window (math.inf when not adaptive)
        self.slow = adaptive  # slow start: until the first concurrency 429
        self.base = initial  # slow start's window at `epoch`
        self.doubling = SLOW_START_DOUBLING
        self.epoch = -math.inf  # when slow start's clock started (loop time, on the grid)
        self.fit = 0  # how many of ours ran when the last 429 came: the limit learnt
        self.limited = False  # whether a 429 taught the limit
        self.told = False  # whether the service told the cap (`seed`)
        self.active = 0  # admitted: creates in flight + invocations held
        self.held: dict[str, float] = {}  # invocation id -> lease expiry, oldest first
        self.hold_until = -math.inf  # after a 429: only freed slots admit until then
        self.idle_hold = False  # the hold is the idle probe's clock, not a Retry-After
        self.idle_at = -math.inf  # when the last idle probe was refused
        self.credits = 0  # slots freed during a hold
        self.next_probe = math.inf  # when the queue head may go as an unseen-end probe
        self.grow_at = math.inf  # when one create may go beyond the learnt limit
        self.growing = False  # that create is in flight
        self.landing = 0  # creates in flight when the last 429 came: each that lands fit
        self.streak = False  # slots were seen free: creates go until one is refused
        self.list_probe = False  # a create beyond the limit went on a list's word
        self.strikes = 0  # concurrency 429s since the last successful create
        self.idle_strikes = 0  # of those, with nothing of ours running
        self.others = 0  # the invocations not ours (any app's, when lists are the org's)
        self.rivals = 0  # of those, the app's (other processes sharing its cap)
        self.last_total = 0  # the app's invocations, at the last list
        self.cap_seen = 0  # the most invocations of the app a list showed
        self.org_total = 0  # the organisation's invocations, at the last list
        self.org_ids: int | None = None  # a hash of their ids
        self.turning = False  # whether they changed between the last two lists
        self.org_word = False  # the room believed was the organisation's only
        self.app_bound = False  # a create on such a word was refused: the app's cap binds
        self.org_seen = 0  # the most invocations of the organisation a list showed
        self.listed_at = -math.inf  # when the last list came
        self.list_soon = math.inf  # a list wanted before the cadence's next
        self.suspect = 0  # lists in a row that showed room, to be confirmed
        self.few = 0  # lists in a row (on the cadence) that showed a slot or two free
        self.beyond = 0  # after a look beyond the limit got in: the most lists had shown

    def room(self) -> bool:
        """Whether one more create fits under the limit (a fractional limit rounds down)."""
        return self.active + 1 <= self.limit

    def in_flight(self) -> int:
        """Creates admitted and not answered yet."""
        return self.active - len(self.held)


class AdmissionPolicy:
    """Which creates may be sent now, per app. Pure: the caller passes ``now`` (and, for
    the jitter, may pass ``rng``; for the grids, ``wall_offset``: the wall clock minus
    the ``now`` clock).

    An app's *active* count is its creates in flight plus its invocations this client has
    not seen finish. A create may go when the active count is below the app's limit (and
    the caps of `Limits`). The limit is learnt so that processes sharing one cap without
    talking to each other share it evenly and, together, use all of it:

    * slow start, in step: the limit starts at `Limits.initial` (or at a cap the service
      told, `seed`, and stays there) and doubles every `SLOW_START_DOUBLING` seconds on a
      grid of the wall clock, never past twice the number running plus `Limits.initial`,
      until the first concurrency 429. Processes that start together send their creates
      together and meet the cap with shares at most one slot apart;
    * what fits, holds: at a concurrency 429 the limit is what runs. No cut, no sawtooth:
      shares stay where they met the cap instead of wandering (each cut or probe of one
      process moves slots between the others at random);
    * room is found by listing: while creates wait, the app's invocations are listed
      (`next_list`, `listed`), every `CROWD_LIST_INTERVAL` when others share the app. A
      list (confirmed by another) showing `FREE_MIN` or more slots free under the most it
      ever showed running means someone left or finished: creates go until one is
      refused, the limit rising with each that succeeds. On a slow clock (`GROWTH_PROBE`
      times our share of the app), one create goes beyond the limit anyway: a cap that
      was raised is found.

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
        self.apps: dict[str, _App] = {}
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

    def app(self, name: str) -> _App:
        """App ``name``'s state, made on first use."""
        state = self.apps.get(name)
        if state is None:
            adaptive = self.limits.adaptive
            initial = float(self.limits.initial) if adaptive else math.inf
            state = self.apps[name] = _App(initial, adaptive)
            if self.known_cap is not None:
                self.seed(name, self.known_cap)
        return state

    def _capped(self, state: _App) -> bool:
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

    def _ceiling(self, state: _App) -> float:
        """The most slow start may grow the limit to now: twice what runs plus the first
        window (a pile of creates cannot all reach the service at once)."""
        return 2.0 * len(state.held) + self.limits.initial

    def _grow(self, state: _App, now: float) -> None:
        """Slow start: the limit doubles every `doubling` seconds from `epoch`."""
        if state.epoch == -math.inf:
            return
        doublings = min((now - state.epoch) / state.doubling, 64.0)
        curve = state.base * 2.0**doublings
        if curve > state.limit:
            state.limit = max(state.limit, min(curve, self._ceiling(state)))

    def _reaches(self, state: _App, limit: float) -> float:
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
            state.epoch = self._grid(now, SLOW_START_DOUBLING)  # in step with the others
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
        creates wait: to confirm room a list saw, soon after a 429 among others, every
        `CROWD_LIST_INTERVAL` among others once the limit is learnt (`IDLE_LIST_INTERVAL`
        with nothing of ours running while the others' turn over), else every
        `LIST_INTERVAL`."""
        state = self.app(name)
        if state.suspect:
            return state.listed_at + CONFIRM_DELAY
        if self.crowded(name):  # a page of a list holds 100: large apps are listed less
            idle = state.idle_hold and state.turning and not state.held
            step = IDLE_LIST_INTERVAL if idle else CROWD_LIST_INTERVAL
            interval = step * max(1, math.ceil(state.org_total / 100))
        else:
            interval = LIST_INTERVAL
        return min(state.listed_at + min(interval, LIST_INTERVAL), state.list_soon)

    def crowded(self, name: str) -> bool:
        """Whether app ``name``'s limit is learnt and its lists showed others'
        invocations, or room: lists come often."""
        state = self.app(name)
        shared = (
            state.others > 0
            or state.last_total < state.cap_seen
            or state.org_total < state.org_seen
        )
        return shared and state.limited and not state.slow and self.limits.adaptive

    def wants_list(self, name: str) -> bool:
        """Whether app ``name``'s waiting creates are worth a list of its invocations:
        some of ours run (they may have ended unseen), or others share the app, or
        (refused with none of ours running) whether they do is unknown. A process with
        nothing running then sees the room another leaves."""
        state = self.app(name)
        unknown = state.listed_at == -math.inf and state.idle_strikes > 0
        return bool(state.held) or self.crowded(name) or (unknown and self.limits.adaptive)

    def listed(
        self, name: str, now: float, live: Collection[str], org: Collection[str] | None = None
    ) -> None:
        """The service listed ``live``: the ids of app ``name``'s queued and running
        invocations (and ``org``: every app's, when the list was the organisation's).
        Learns how many are others' and, when slots are free under the most it ever saw
        running, the app's or the organisation's (`FREE_MIN`, confirmed by a second
        list), lets creates go until one is refused. With nothing of ours running, one
        that shows the organisation full with the same invocations holds the idle
        probe off (`IDLE_LIST_HOLD`)."""
        state = self.app(name)
        held = state.held
        ours = sum(1 for id in held if id in live)
        total = len(live)
        org_total, same = total, False
        if org is not None:
            # Ours listed under another spelling of the app's name are the app's all the same.
            elsewhere = sum(1 for id in held if id not in live and id in org)
            total, ours = total + elsewhere, ours + elsewhere
            org_total, org_ids = max(len(org), total), hash(frozenset(org))
            same = org_ids == state.org_ids
            state.turning = state.org_ids is not None and not same
            state.org_ids = org_ids
        state.others, state.rivals = org_total - ours, total - ours
        state.last_total, state.org_total = total, org_total
        state.listed_at = now
        state.list_soon = math.inf
        if state.beyond:
            if total > state.beyond and not state.slow:  # more than ever: look further
                state.streak, state.grow_at = True, min(state.grow_at, now)
            state.beyond = 0
        state.cap_seen = max(state.cap_seen, total)
        state.org_seen = max(state.org_seen, org_total)
        # Our creates in flight may be missing from it: their slots are not free. Room
        # under the organisation's most (another app finished) may be under the app's own
        # cap: once a create sent on that word is refused, only the app's room counts.
        room = app_room = state.cap_seen - total
        if not state.app_bound:
            room = max(room, state.org_seen - org_total)
        free = room - state.in_flight()
        learnt = state.limited or not (state.slow or state.told)
        if not learnt or not self.limits.adaptive or free < 1:
            state.suspect = state.few = 0
            if same and room < 1 and state.idle_hold:  # full, and nothing ended: no probe
                until = min(now + IDLE_LIST_HOLD, state.idle_at + IDLE_LIST_HOLD_MAX)
                state.hold_until = max(state.hold_until, until)
            return
        if state.others and free < FREE_MIN:
            # One or two free among others may be their blinks (an end and its
            # successor's create): believed when the lists of `FEW_CONFIRMATIONS`
            # cadences in a row show them, without lists of their own.
            state.suspect = 0
            state.few += 1
            if state.few <= FEW_CONFIRMATIONS:
                return
        elif state.suspect < CONFIRMATIONS and free < LEFT_SHARE * (
            state.cap_seen if state.app_bound else state.org_seen
        ):
            state.suspect += 1  # a blink (ends and their successors) or someone left?
            return
        state.suspect = state.few = 0  # still free: someone left, or finished
        if state.idle_hold:
            state.hold_until, state.idle_hold = now, False
        state.streak = state.list_probe = True
        state.org_word = app_room - state.in_flight() < 1
        state.grow_at = min(state.grow_at, now)

    def _arm_growth(self, state: _App, now: float) -> None:
        """One create may go beyond the limit after our share of the app's invocations
        (as last listed) times `GROWTH_PROBE` seconds, jittered."""
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
