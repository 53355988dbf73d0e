"""One app's admission state: the counts and clocks the admission policy and the room
read from lists share. Plain data, no policy."""

from __future__ import annotations

import math

__all__ = ["AppState"]


class AppState:
    """One app's admission state."""

    __slots__ = (
        "active",
        "app_bound",
        "base",
        "beyond",
        "cap_seen",
        "credits",
        "doubling",
        "ebbs",
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
        "left_at",
        "limit",
        "limited",
        "list_probe",
        "list_soon",
        "listed_at",
        "listed_ids",
        "next_probe",
        "org_seen",
        "org_total",
        "org_word",
        "others",
        "rivals",
        "slow",
        "stills",
        "streak",
        "strikes",
        "suspect",
        "told",
        "whole_org",
    )

    def __init__(self, initial: float, adaptive: bool, doubling: float) -> None:
        self.limit = initial  # the window (math.inf when not adaptive)
        self.slow = adaptive  # slow start: until the first concurrency 429
        self.base = initial  # slow start's window at `epoch`
        self.doubling = doubling  # slow start's step (seconds)
        self.epoch = -math.inf  # when slow start's clock started (loop time)
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
        self.listed_ids: frozenset[str] | None = None  # the last list's (every app's)
        self.stills = 0  # lists in a row that showed the organisation's the same as before
        self.ebbs = 0  # lists in a row that showed others' ended and none started
        self.whole_org = False  # the last list was every app's (not the app's alone)
        self.org_word = False  # the room believed was the organisation's only
        self.app_bound = False  # a create on such a word was refused: the app's cap binds
        self.org_seen = 0  # the most invocations of the organisation a list showed
        self.listed_at = -math.inf  # when the last list came
        self.list_soon = math.inf  # a list wanted before the cadence's next
        self.suspect = 0  # lists in a row that showed room, to be confirmed
        self.few = 0  # lists in a row (on the cadence) that showed a slot or two free
        self.left_at = -math.inf  # when a list last showed someone leaving (`FREE_MIN`)
        self.beyond = 0  # after a look beyond the limit got in: the most lists had shown

    def room(self) -> bool:
        """Whether one more create fits under the limit (a fractional limit rounds down)."""
        return self.active + 1 <= self.limit

    def in_flight(self) -> int:
        """Creates admitted and not answered yet."""
        return self.active - len(self.held)
