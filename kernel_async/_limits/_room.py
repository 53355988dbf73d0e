"""What the lists of the service tell the admission policy: how many invocations are
others', whether slots came free (someone left or finished), and when to list next. Pure:
no I/O, no clock of its own; functions of one app's `AppState`."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Final

from ._app import AppState

__all__ = [
    "CONFIRMATIONS",
    "CONFIRM_DELAY",
    "CROWD_LIST_INTERVAL",
    "EBB_LISTS",
    "EBB_MIN",
    "FEW_CONFIRMATIONS",
    "FREE_MIN",
    "IDLE_LIST_HOLD",
    "IDLE_LIST_HOLD_MAX",
    "LEFT_SHARE",
    "LEFT_TAIL",
    "LIST_AFTER_REJECT",
    "LIST_INTERVAL",
    "STILL_LISTS",
    "STILL_LIST_INTERVAL",
    "certain_room",
    "crowded",
    "listed",
    "next_list",
    "wants_list",
]

#: While creates wait, the app's queued and running invocations are listed this often
#: (seconds); every `CROWD_LIST_INTERVAL` (times the pages of 100 the last list took, up
#: to `LIST_INTERVAL`) once the limit is learnt and the lists show invocations that are
#: not ours (other processes share the cap) or room, and `LIST_AFTER_REJECT` after a
#: concurrency 429 there. A process leaving frees all its slots within a few tens of
#: milliseconds; the others see it a list later: at 0.15 s, eight processes sharing a cap
#: of 20 left a tenth of it unused in the second where half of them left, in half the
#: runs; at 0.075 s, in one run in eight. That cadence is for lists one page long (100
#: invocations); longer ones come every `STILL_LIST_INTERVAL` per page (up to
#: `LIST_INTERVAL`): each page is a request, out of the rate limit the creates need.
LIST_INTERVAL: Final = 1.0
CROWD_LIST_INTERVAL: Final = 0.075
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
#: cadence, after the first, show room too (0.9 s at `CROWD_LIST_INTERVAL`: ends and
#: their successors' creates keep a slot or two free at any moment among 8 processes,
#: and a slot taken on such a blink moves from its owner, refused, for good).
FEW_CONFIRMATIONS: Final = 11
CONFIRM_DELAY: Final = 0.05
LEFT_SHARE: Final = 0.25
#: For this long (seconds) after a list showed `FREE_MIN` or more free (someone left or
#: finished), a slot or two free is believed like more: on `CONFIRMATIONS` lists, not
#: `FEW_CONFIRMATIONS`. A process leaves over its last round: its last invocations end
#: a few at a time, and each one left after the others took the first free slots (their
#: creates went until one was refused) stayed free for 0.9 s (8 processes sharing 20,
#: in the simulator: a tenth of the cap unused in the second of the hand-over in 15 runs
#: of 96; 5 with this. The bench's processes, slower to answer, idle as often either
#: way: 6 runs of 8 met the targets with it and without).
LEFT_TAIL: Final = 0.3
#: With nothing of ours running, the lists of every app's invocations watch for room
#: instead of 429s. One that shows the organisation full with the same invocations as
#: the list before (none ended: no slot can have come free) holds the idle probe off this
#: long again (seconds), up to `IDLE_LIST_HOLD_MAX` after the last probe (invocations
#: listed that no longer count against the cap must not stop creates for ever). Once
#: `STILL_LISTS` lists in a row show the same ids, lists come every `STILL_LIST_INTERVAL`
#: (times the pages); once the ids turn over (the others' end and are replaced: one of
#: them may leave any moment, all its slots at once), every `CROWD_LIST_INTERVAL` again.
#: Not after one such list: invocations started together end together, all at once,
#: and a process's batch looks still for most of its run (a newcomer that met a leaving
#: process's last 20 listed 0.16 s apart, the organisation empty for 0.1 s of it).
IDLE_LIST_HOLD: Final = 0.4
IDLE_LIST_HOLD_MAX: Final = 2.0
STILL_LIST_INTERVAL: Final = 0.15
STILL_LISTS: Final = 3
#: In slow start among others, lists come every `CROWD_LIST_INTERVAL`: `EBB_LISTS` in a
#: row that each show at least `EBB_MIN` of the others' invocations gone since the list
#: before, and none of theirs new, mean they are winding down (a process with its work
#: all sent, its last invocations ending): their slots come free, and slow start takes
#: them fast. One list is not enough: processes that started together see their first
#: invocations end together, and a list between those ends and their successors'
#: creates shows many gone and none new (8 processes: one taking 6 slots of 20 while
#: three kept 1). One gone may be an end whose successor is not created yet. A list
#: showing every one of the others' gone (and none new) is enough: they left (a newcomer
#: that met the last of a leaving process's invocations filled the empty organisation at
#: 50 ms doublings, 0.13-0.17 of the cap unused in that second in 2 runs of 10).
EBB_MIN: Final = 2
EBB_LISTS: Final = 2


def next_list(state: AppState, adaptive: bool) -> float:
    """When the app's invocations should be listed next (loop time), while its creates
    wait: to confirm room a list saw, soon after a 429 among others, every
    `CROWD_LIST_INTERVAL` among others in slow start or once the limit is learnt, for a
    list one page long (`STILL_LIST_INTERVAL` per page for longer ones, and with nothing
    of ours running while none of the others' end), else every `LIST_INTERVAL`."""
    if state.suspect:
        return state.listed_at + CONFIRM_DELAY
    starting = state.slow and state.others > 0 and adaptive
    if starting or crowded(state, adaptive):  # a page of 100: large apps are listed less
        pages = max(1, math.ceil(state.org_total / 100))
        still = state.idle_hold and state.stills >= STILL_LISTS and not state.held
        quick = pages == 1 and not still
        interval = (CROWD_LIST_INTERVAL if quick else STILL_LIST_INTERVAL) * pages
    else:
        interval = LIST_INTERVAL
    return min(state.listed_at + min(interval, LIST_INTERVAL), state.list_soon)


def crowded(state: AppState, adaptive: bool) -> bool:
    """Whether the app's limit is learnt and its lists showed others' invocations, or
    room: lists come often."""
    shared = (
        state.others > 0 or state.last_total < state.cap_seen or state.org_total < state.org_seen
    )
    return shared and state.limited and not state.slow and adaptive


def certain_room(state: AppState) -> int:
    """Slots free for certain, as the last list showed: the app ran this many more at
    once than it runs now, and (when the list was every app's) as many are free under
    the most the organisation ran (another app did not take them)."""
    room = state.cap_seen - state.last_total
    if state.whole_org:
        room = min(room, state.org_seen - state.org_total)
    return room


def wants_list(state: AppState, adaptive: bool) -> bool:
    """Whether the app's waiting creates are worth a list of its invocations: some of ours
    run (they may have ended unseen), or others share the app, or (refused with none of
    ours running) whether they do is unknown. A process with nothing running then sees
    the room another leaves."""
    unknown = state.listed_at == -math.inf and state.idle_strikes > 0
    return bool(state.held) or crowded(state, adaptive) or (unknown and adaptive)


def listed(
    state: AppState,
    now: float,
    live: Collection[str],
    org: Collection[str] | None,
    *,
    adaptive: bool,
) -> None:
    """The service listed ``live``: the ids of the app's queued and running invocations
    (and ``org``: every app's, when the list was the organisation's). Learns how many are
    others' and, when slots are free under the most it ever saw running, the app's or the
    organisation's (`FREE_MIN`, confirmed by a second list), lets creates go until one is
    refused. With nothing of ours running, one that shows the organisation full with the
    same invocations holds the idle probe off (`IDLE_LIST_HOLD`)."""
    held = state.held
    ours = sum(1 for id in held if id in live)
    total = len(live)
    org_total, same = total, False
    ids, before = frozenset(live if org is None else org), state.listed_ids
    if state.whole_org != (org is not None):
        before = None  # the app's alone after every app's, or back: nothing to compare
    if org is not None:
        # Ours listed under another spelling of the app's name are the app's all the same.
        elsewhere = sum(1 for id in held if id not in live and id in org)
        total, ours = total + elsewhere, ours + elsewhere
        org_total = max(len(org), total)
        same = ids == before  # (the first list: not known to be still)
        state.stills = state.stills + 1 if same else 0
    state.listed_ids, state.whole_org = ids, org is not None
    others = org_total - ours
    ebbing = (
        before is not None
        and others <= state.others - EBB_MIN
        and all(id in before or id in held for id in ids)
    )
    # Every one of the others' gone and none new: they all left, none is about to create.
    state.ebbs = (EBB_LISTS if others == 0 else state.ebbs + 1) if ebbing else 0
    state.others, state.rivals = others, total - ours
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
    if not learnt or not adaptive or free < 1:
        state.suspect = state.few = 0
        if same and room < 1 and state.idle_hold:  # full, and nothing ended: no probe
            until = min(now + IDLE_LIST_HOLD, state.idle_at + IDLE_LIST_HOLD_MAX)
            state.hold_until = max(state.hold_until, until)
        return
    if state.others and free < FREE_MIN and now > state.left_at + LEFT_TAIL:
        # One or two free among others may be their blinks (an end and its
        # successor's create): believed when the lists of `FEW_CONFIRMATIONS`
        # cadences in a row show them, without lists of their own (unless someone is
        # leaving: `LEFT_TAIL`).
        state.suspect = 0
        state.few += 1
        if state.few <= FEW_CONFIRMATIONS:
            return
    elif state.suspect < CONFIRMATIONS and free < LEFT_SHARE * (
        state.cap_seen if state.app_bound else state.org_seen
    ):
        state.suspect += 1  # a blink (ends and their successors) or someone left?
        return
    if free >= FREE_MIN:
        state.left_at = now  # someone left: their last few may end any moment
    state.suspect = state.few = 0  # still free: someone left, or finished
    if state.idle_hold:
        state.hold_until, state.idle_hold = now, False
    state.streak = state.list_probe = True
    state.org_word = app_room - state.in_flight() < 1
    state.grow_at = min(state.grow_at, now)
