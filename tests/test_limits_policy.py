"""The pure backpressure policies, driven by hypothesis through arbitrary event sequences."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from benchmarks.limits_sim import simulate
from benchmarks.multi import Case
from kernel_async._limits import AdmissionPolicy, Limits, RatePolicy, classify_429
from kernel_async._limits._admission import (
    GROWTH_PROBE,
    GROWTH_PROBE_MAX,
    IDLE_PROBE_DELAY,
    IDLE_PROBE_MIN,
    RESTART_DOUBLING,
    SLOW_START_DOUBLING,
)
from kernel_async._limits._room import (
    CONFIRM_DELAY,
    CONFIRMATIONS,
    CROWD_LIST_INTERVAL,
    EBB_LISTS,
    EBB_MIN,
    FEW_CONFIRMATIONS,
    IDLE_LIST_HOLD,
    IDLE_LIST_HOLD_MAX,
    LEFT_TAIL,
    LIST_AFTER_REJECT,
    LIST_INTERVAL,
    STILL_LIST_INTERVAL,
    STILL_LISTS,
)


@given(
    code=st.sampled_from([None, "rate_limited", "concurrency_limit_exceeded", "other"]),
    remaining=st.sampled_from([None, "0", "3", "junk"]),
    retry_after=st.sampled_from([None, "1", "0.5"]),
)
def test_classify_429_prefers_the_error_code_then_remaining_then_retry_after(
    code: str | None, remaining: str | None, retry_after: str | None
) -> None:
    headers = {}
    if remaining is not None:
        headers["X-RateLimit-Remaining"] = remaining
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    body = b"" if code is None else f'{{"code":"{code}","message":"m"}}'.encode()
    kind = classify_429(headers, body)
    if code == "rate_limited":
        assert kind == "rate"
    elif code == "concurrency_limit_exceeded":
        assert kind == "concurrency"
    elif remaining == "0":
        assert kind == "rate"
    elif remaining == "3":
        assert kind == "concurrency"
    else:
        assert kind == ("rate" if retry_after is not None else "concurrency")


def test_classify_429_survives_garbage_bodies() -> None:
    assert classify_429({}, b"\xff\xfe{") == "concurrency"
    assert classify_429({"Retry-After": "1"}, b"<html>") == "rate"


class RateGateMachine(RuleBasedStateMachine):
    """Requests are sent only when the policy has room; answers come back in any order,
    and some never come (a request in flight for as long as the test runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = RatePolicy()
        self.now = 0.0
        self.in_flight: list[int] = []
        self.granted: int | None = None  # what the newest answer allowed, until a probe
        self.sent_since = 0
        self.newest_read = 0  # the ticket of the newest answer read

    @rule(seconds=st.floats(0, 2))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: self.policy.room(self.now) != 0)
    @rule()
    def send(self) -> None:
        assert self.now >= self.policy.paused_until
        budget = self.policy.budget
        if budget is not None and budget <= 0:
            self.granted = None  # a probe: the budget's limit no longer applies
        self.in_flight.append(self.policy.sent(self.now))
        self.sent_since += 1

    @precondition(lambda self: self.in_flight)
    @rule(
        data=st.data(),
        remaining=st.one_of(st.none(), st.integers(0, 5)),
        reset=st.one_of(st.none(), st.floats(0, 3)),
        limited=st.booleans(),
    )
    def answer(
        self, data: st.DataObject, remaining: int | None, reset: float | None, limited: bool
    ) -> None:
        ticket = self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))
        headers = {} if remaining is None else {"X-RateLimit-Remaining": str(remaining)}
        if reset is not None:
            headers["X-RateLimit-Reset"] = str(reset)
        paused_before = self.now < self.policy.paused_until
        read = ticket >= self.newest_read and not paused_before  # else stale, or paused
        after = sum(1 for other in self.in_flight if other > ticket)  # maybe not counted
        self.policy.received(self.now, ticket, headers)
        if not paused_before:
            self.newest_read = max(self.newest_read, ticket)
        if limited:
            self.policy.rate_limited(self.now, 0.5, 0.1)
            assert self.policy.room(self.now) == 0
            self.granted = None
        elif read:
            # Until a probe, no more than it granted beyond those sent after it.
            self.granted = None if remaining is None else max(0, remaining - after)
            self.sent_since = 0

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        ticket = self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))
        self.policy.received(self.now, ticket, None)

    @invariant()
    def books_balance(self) -> None:
        assert self.policy.in_flight == len(self.in_flight) >= 0

    @invariant()
    def never_stuck(self) -> None:
        """Without room there is always a time at which there will be, even while requests
        are in flight (one may never answer)."""
        if self.policy.room(self.now) == 0:
            wake = self.policy.wake_at(self.now)
            assert wake is not None
            assert wake > self.now
            assert self.policy.room(wake) != 0

    @invariant()
    def the_budget_is_not_overspent(self) -> None:
        if self.granted is not None:
            assert self.sent_since <= self.granted


TestRateGate = RateGateMachine.TestCase
TestRateGate.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


class AdmissionMachine(RuleBasedStateMachine):
    """Creates of two apps are admitted only when the policy says so; the server accepts,
    refuses (concurrency 429), fails them, and invocations finish, in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.limits = Limits(max_running=6, max_running_per_app=4, initial=2)
        self.policy = AdmissionPolicy(self.limits, initial_delay=0.5, rng=random.Random(0))
        self.now = 0.0
        self.in_flight: list[tuple[str, bool]] = []
        self.running: list[str] = []
        self.next_id = 0

    @rule(seconds=st.floats(0, 5))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(app=st.sampled_from(["a", "b"]))
    def admit(self, app: str) -> None:
        if self.policy.may_admit(app, self.now):
            probe = self.policy.admit(app, self.now)
            self.in_flight.append((app, probe))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), outcome=st.sampled_from(["started", "rejected", "failed", "sync"]))
    def answer(self, data: st.DataObject, outcome: str) -> None:
        app, probe = self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))
        if outcome == "started":
            # Now and then a server repeats an id: the books must still balance.
            self.next_id += data.draw(st.sampled_from([1, 1, 1, 0]))
            inv = f"inv{self.next_id}"
            if inv in self.running:
                self.running.remove(inv)
            self.policy.started(app, self.now, inv, probe=probe, lease=100.0)
            self.running.append(inv)
        elif outcome == "sync":
            self.policy.started(app, self.now, None, probe=probe, lease=100.0)
        elif outcome == "rejected":
            hold = self.policy.rejected(app, self.now, None)
            assert 0 <= hold <= 30.0
            assert not self.policy.may_admit(app, self.now)  # held: no hot loop of 429s
        else:
            self.policy.abandoned(app, self.now, probe=probe)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        inv = self.running.pop(data.draw(st.integers(0, len(self.running) - 1)))
        self.policy.finished(inv, self.now)  # may already be presumed ended: a no-op then

    @rule()
    def expire(self) -> None:
        self.policy.expire(self.now)

    @rule(app=st.sampled_from(["a", "b"]), data=st.data())
    def listed(self, app: str, data: st.DataObject) -> None:
        """A list of the app's invocations: some of ours (or not), and others'; and, when
        the list was every app's, other apps' too (or, from a list gone wrong, fewer)."""
        ours = [i for i in self.running if self.policy.owner.get(i) == app]
        shown = data.draw(st.lists(st.sampled_from(ours), unique=True)) if ours else []
        others = [f"x{i}" for i in range(data.draw(st.integers(0, 30)))]
        org = None
        if data.draw(st.booleans()):
            elsewhere = [f"y{i}" for i in range(data.draw(st.integers(0, 30)))]
            org = data.draw(st.sampled_from([shown + others + elsewhere, elsewhere]))
        self.policy.listed(app, self.now, shown + others, org)
        assert self.policy.next_list(app) >= self.now

    @invariant()
    def caps_hold_and_books_balance(self) -> None:
        policy = self.policy
        total = 0
        for name, state in policy.apps.items():
            in_flight = sum(1 for app, _ in self.in_flight if app == name)
            assert state.active == in_flight + len(state.held)
            assert state.active <= 4
            assert state.limit >= 1
            total += state.active
        assert policy.total_active == total <= 6
        assert set(policy.owner) == {i for s in policy.apps.values() for i in s.held}

    @invariant()
    def a_blocked_app_always_has_a_way_out(self) -> None:
        """With nothing of its own in flight, an app that may not admit is either capped
        (a finish will free it) or knows when it may try again."""
        for name, state in self.policy.apps.items():
            if any(app == name for app, _ in self.in_flight):
                continue
            if self.policy.may_admit(name, self.now):
                continue
            capped = state.active >= 4 or self.policy.total_active >= 6
            wake = self.policy.wake_at(name, self.now)
            assert capped or (wake is not None and wake < math.inf)


TestAdmission = AdmissionMachine.TestCase
TestAdmission.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)


def _starter(policy: AdmissionPolicy, app: str = "a") -> Any:
    ids = iter(range(10**6))
    running: list[str] = []

    def start_one(now: float) -> str:
        assert policy.may_admit(app, now)
        probe = policy.admit(app, now)
        inv = f"{app}{next(ids)}"
        policy.started(app, now, inv, probe=probe, lease=100)
        running.append(inv)
        return inv

    return start_one, running


def _at_cap(policy: AdmissionPolicy, n: int) -> Any:
    """`_starter`'s pair, after ``n`` creates got in at 0.0 and the next was refused."""
    start_one, running = _starter(policy)
    for _ in range(n):
        start_one(0.0)
    policy.admit("a", 0.0)
    policy.rejected("a", 0.0, None)
    return start_one, running


def test_slow_start_doubles_in_time_from_the_first_create_then_a_429_holds_what_fits() -> None:
    # Two processes whose first creates come 20 ms apart grow alike: their windows are
    # 2^(20 ms / step) apart at any moment, whatever the wall clock reads (no grid whose
    # point between them would put them a whole doubling apart).
    for wall in (1000.0, 1000.04):  # the first creates either side of a 50 ms point, or not
        early = AdmissionPolicy(Limits(), initial_delay=0.5, wall_offset=wall)
        late = AdmissionPolicy(Limits(), initial_delay=0.5, wall_offset=wall)
        early.admit("a", 0.0)
        late.admit("a", 0.02)
        for now in (0.07, 0.12, 0.2):
            for policy in (early, late):
                policy.apps["a"].held = {f"r{i}": 1e9 for i in range(64)}  # no ceiling
                policy._grow(policy.apps["a"], now)
            ratio = early.apps["a"].limit / late.apps["a"].limit
            assert ratio == pytest.approx(2 ** (0.02 / SLOW_START_DOUBLING))
    policy = AdmissionPolicy(Limits(initial=2), initial_delay=0.5)
    start_one, running = _starter(policy)
    start_one(0.0)
    start_one(0.0)
    assert not policy.may_admit("a", 0.0)  # the first window
    # Slow start doubles in time, not per answer: 3 more slots after log2(3/2) doublings.
    assert policy.wake_at("a", 0.0) == pytest.approx(SLOW_START_DOUBLING * math.log2(3 / 2))
    now = 3 * SLOW_START_DOUBLING  # three doublings: 2 -> 16
    while policy.may_admit("a", now):
        start_one(now)
    assert len(running) == 16
    # A 429 with 16 running and one more create in flight: what runs fits, no cut;
    # the one in flight lands, so it fit too. Nothing is held: a finish of ours comes.
    policy.admit("a", now)
    policy.admit("a", now)
    assert policy.rejected("a", now, None) == 0.0
    assert policy.apps["a"].limit == 16
    policy.started("a", now, "landed", probe=False, lease=100)
    assert policy.apps["a"].limit == 17
    assert policy.stats({})["a"].limit == 16  # what ran at the 429
    assert not policy.may_admit("a", now)
    # A finish frees a slot for the next create, no more: the share holds.
    policy.finished(running.pop(0), now)
    assert policy.may_admit("a", now)
    start_one(now)
    assert not policy.may_admit("a", now)
    # One create goes beyond it on a slow clock, in case the cap was raised.
    at = policy.wake_at("a", now)
    assert at is not None
    assert now < at <= now + 10.0
    assert policy.may_admit("a", at)


def test_lists_find_room_someone_left_but_not_a_blink() -> None:
    policy = AdmissionPolicy(Limits(initial=4), initial_delay=0.5, rng=random.Random(3))
    start_one, running = _starter(policy)
    now = 0.0
    for _ in range(4):
        start_one(now)
    others = [f"x{i}" for i in range(16)]  # another process runs 16 of the cap of 20

    def take_until_refused(room: int) -> None:
        """Creates go one after another while they get in; the next is refused."""
        before = len(running)
        for _ in range(room):
            start_one(now)
        assert len(running) == before + room
        policy.admit("a", now)
        policy.rejected("a", now, None)
        assert not policy.may_admit("a", now)

    policy.admit("a", now)
    policy.rejected("a", now, None)
    assert policy.next_list("a") == -math.inf + LIST_INTERVAL  # never listed: at once
    policy.listed("a", now, running + others)
    assert policy.crowded("a")
    assert policy.next_list("a") == now + CROWD_LIST_INTERVAL
    now += CROWD_LIST_INTERVAL
    # A blink: three of the others' slots between an end and its successor. Checked
    # again shortly, and gone: nothing goes.
    policy.listed("a", now, running + others[:13])
    assert policy.next_list("a") == now + CONFIRM_DELAY
    now += CONFIRM_DELAY
    policy.listed("a", now, running + others)
    assert not policy.may_admit("a", now)
    # Three slots free list after list: someone finished. Creates go, one after another
    # while they get in, until one is refused.
    for _ in range(CONFIRMATIONS + 1):
        assert not policy.may_admit("a", now)
        policy.listed("a", now, running + others[:13])
        now += CONFIRM_DELAY
    take_until_refused(3)
    assert policy.apps["a"].limit == 7
    # A quarter of the cap left at once (the other process is done): no need to wait.
    policy.listed("a", now, running + others[:8])
    take_until_refused(5)
    assert policy.apps["a"].limit == 12
    # Among others, a 429 asks for a list soon (has one of them left?): within
    # LIST_AFTER_REJECT, or the cadence among others when that is sooner.
    assert policy.apps["a"].list_soon == pytest.approx(now + LIST_AFTER_REJECT)
    assert policy.next_list("a") <= now + LIST_AFTER_REJECT


def test_a_slot_or_two_free_is_a_blink_unless_someone_is_leaving() -> None:
    policy = AdmissionPolicy(Limits(initial=4), initial_delay=0.5, rng=random.Random(3))
    start_one, running = _at_cap(policy, 4)
    others = [f"x{i}" for i in range(16)]  # the others run 16 of the cap of 20
    now = 0.0
    policy.listed("a", now, running + others)
    # Two free among the others, list after list on the cadence: their ends and their
    # successors' creates (blinks); taken only after FEW_CONFIRMATIONS lists in a row.
    for _ in range(FEW_CONFIRMATIONS):
        now += CROWD_LIST_INTERVAL
        policy.listed("a", now, running + others[:14])
        assert not policy.may_admit("a", now)
    now += CROWD_LIST_INTERVAL
    policy.listed("a", now, running + others[:14])
    assert policy.may_admit("a", now)
    start_one(now)
    start_one(now)
    policy.admit("a", now)
    policy.rejected("a", now, None)
    # One of them leaves: a quarter of the cap free at once, taken until refused.
    now += CROWD_LIST_INTERVAL
    policy.listed("a", now, running + others[:9])
    for _ in range(5):
        start_one(now)
    policy.admit("a", now)
    policy.rejected("a", now, None)
    # Its last invocation ends a moment later: a slot free is its, not a blink, and
    # goes on one confirming list.
    now += CROWD_LIST_INTERVAL
    policy.listed("a", now, running + others[:8])
    assert not policy.may_admit("a", now)
    assert policy.next_list("a") == now + CONFIRM_DELAY
    now += CONFIRM_DELAY
    policy.listed("a", now, running + others[:8])
    assert now <= policy.apps["a"].left_at + LEFT_TAIL
    assert policy.may_admit("a", now)
    start_one(now)
    policy.admit("a", now)
    policy.rejected("a", now, None)
    # Later, one free is a blink again.
    now += LEFT_TAIL
    for _ in range(CONFIRMATIONS + 1):
        policy.listed("a", now, running + others[:7])
        assert not policy.may_admit("a", now)
        now += CONFIRM_DELAY


def test_a_list_that_saw_room_that_was_not_there_is_not_believed_again() -> None:
    policy = AdmissionPolicy(Limits(initial=2), initial_delay=0.5, rng=random.Random(4))
    _, running = _at_cap(policy, 2)
    policy.listed("a", 0.0, running + ["x"] * 18)  # 20 seen running
    now = 0.0
    for _ in range(CONFIRMATIONS + 1):  # 10 slots seen free, again and again
        policy.listed("a", now, running + [f"x{i}" for i in range(8)])
        now += CONFIRM_DELAY
    assert policy.may_admit("a", now)
    policy.admit("a", now)
    policy.rejected("a", now, None)  # refused: the cap is 10 now, not 20
    assert policy.apps["a"].cap_seen == 10
    policy.listed("a", now, running + [f"x{i}" for i in range(8)])
    assert not policy.may_admit("a", now)


def test_room_no_list_showed_is_found_by_a_look_beyond_then_taken() -> None:
    # Four processes got back in together after another tenant held the cap, two slots
    # each, and were refused while its slots were still coming back: the app's lists
    # show 8 running, never more, and the other 12 slots are free where no list of the
    # app shows them. A look beyond the limit gets in; the next list shows more running
    # than ever: the cap is higher than the lists knew, creates go until one is refused.
    policy = AdmissionPolicy(Limits(initial=2), initial_delay=0.5, rng=random.Random(5))
    start_one, running = _starter(policy)
    start_one(0.0)
    start_one(0.0)
    others = [f"x{i}" for i in range(6)]
    policy.listed("a", 0.0, running + others)
    policy.admit("a", 0.0)
    policy.rejected("a", 0.0, None)
    at = policy.apps["a"].grow_at
    assert 0.0 < at <= 5.0  # our share is a quarter: 20 s x 1/4 at most
    now = 0.0
    while now + 0.25 < at:  # ours finish and are replaced, every quarter of a second
        now += 0.25
        policy.finished(running.pop(0), now)
        start_one(now)
        assert not policy.may_admit("a", now)
    policy.listed("a", at, running + others)  # still 8: no room seen
    assert policy.wake_at("a", now) == at
    assert policy.may_admit("a", at)
    start_one(at)  # the look beyond gets in
    assert policy.next_list("a") == pytest.approx(at + CONFIRM_DELAY)
    assert not policy.may_admit("a", at)
    now = at + CONFIRM_DELAY
    policy.listed("a", now, running + others)  # 9: more than ever seen
    for _ in range(5):
        start_one(now)
    assert len(running) == 8


def test_a_429_with_nothing_of_ours_running_probes_on_the_wall_clock_grid() -> None:
    """Another tenant holds the cap: the app probes on a short clock, not on an
    exponential backoff that would sleep through the slots coming back, and processes
    waiting alike probe at the same moments (and so get in together)."""
    policies = [
        AdmissionPolicy(Limits(), initial_delay=0.5, wall_offset=5.0 - i * 0.013) for i in range(3)
    ]
    probes: list[list[float]] = [[], [], []]
    for i, policy in enumerate(policies):
        now = 0.013 * i + 0.001 * i  # each on its own loop clock, at its own moment
        for _ in range(20):
            policy.admit("a", now)
            hold = policy.rejected("a", now, None)
            assert IDLE_PROBE_MIN <= hold + 1e-9 < 2 * IDLE_PROBE_DELAY
            assert not policy.may_admit("a", now)
            now += hold
            assert policy.may_admit("a", now)
            probes[i].append(round(now + policy.wall_offset, 6))  # on the wall clock
    for times in probes:  # after the first two, on the grid of the longest wait
        assert all(
            abs(t / IDLE_PROBE_DELAY - round(t / IDLE_PROBE_DELAY)) < 1e-6 for t in times[2:]
        )
    assert set(probes[0][4:15]) <= set(probes[1]) & set(probes[2])  # the same moments
    # A Retry-After is honoured, up to the same bound as the retry policy's.
    capped = AdmissionPolicy(Limits(), initial_delay=0.5, max_hold=60.0)
    capped.admit("a", 0.0)
    assert capped.rejected("a", 0.0, 3600.0) == 60.0


def test_an_app_held_for_hours_by_another_tenant_keeps_probing_several_times_a_second() -> None:
    policy = AdmissionPolicy(Limits(), initial_delay=0.5, rng=random.Random(2))
    now = 0.0
    for _ in range(10000):  # over an hour of 429s with nothing of ours running
        policy.admit("a", now)
        hold = policy.rejected("a", now, None)
        assert IDLE_PROBE_MIN <= hold + 1e-9 < 2 * IDLE_PROBE_DELAY
        now += hold
    assert now > 3600


def test_a_known_cap_seeds_the_limit_but_not_over_a_learnt_one() -> None:
    policy = AdmissionPolicy(Limits(initial=2), initial_delay=0.5)
    policy.seed("a", 15)
    assert policy.stats({})["a"].limit == 15
    assert sum(_admit_all(policy, "a", 0.0)) == 0  # no probe: within the limit
    assert policy.apps["a"].active == 15
    policy.admit("b", 0.0)
    policy.rejected("b", 0.0, None)
    policy.seed("b", 30)  # a 429 taught b already: the told cap does not override it
    assert policy.stats({})["b"].limit == 1


def _admit_all(policy: AdmissionPolicy, app: str, now: float) -> list[bool]:
    probes = []
    while policy.may_admit(app, now):
        probes.append(policy.admit(app, now))
    return probes


def _case(name: str, **kw: Any) -> Case:
    """A case of the multi-process bench (``benchmarks/multi.py``), uncoordinated."""
    return Case(name, "uncoordinated", **kw)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_uncoordinated_processes_share_one_cap_fairly_and_use_all_of_it(k: int, seed: int) -> None:
    """K processes, each an `AdmissionPolicy` learning alone, simulated against one cap of
    20 (``benchmarks/limits_sim.py``: start jitter, round trips, finishes seen late,
    actions of uneven length, lists)."""
    result = simulate(_case(f"K={k}", k=k), seed)
    assert result["per_inv_429"] <= 0.3
    assert result["makespan_x"] <= 1.15  # the whole cap is used
    assert result["spread_x"] <= 0.25  # the processes finish together (the target)


def test_a_tenant_holding_the_cap_costs_no_long_sleep_once_it_lets_go() -> None:
    """The issue's case: another tenant holds all 20 slots for 7.6 s; the old exponential
    hold slept to ~15.5 s. Now the processes are back within a probe interval (and
    together when they get in at the same point of the grid: not always, the tenant's
    slots come back over 50 ms)."""
    for seed in (0, 1):
        result = simulate(_case("tenant", k=4, tenant=7.6), seed)
        assert result["makespan_x"] <= 1.08
        assert result["spread_x"] <= 0.3
        assert result["per_inv_429"] <= 0.2  # no idle probes while the lists show it full


def test_latecomers_get_in_and_take_the_room_others_leave() -> None:
    result = simulate(_case("staggered", k=4, delays=[0.0, 1.0, 2.0, 4.0]))
    assert result["makespan_x"] <= 1.15
    assert result["per_inv_429"] <= 0.3


def test_apps_under_their_own_caps_and_the_org_cap_all_finish_near_the_bound() -> None:
    caps = {"a5": 5, "a10": 10, "a20": 20}
    result = simulate(_case("3 apps", k=3, n=399, apps=list(caps), app_caps=caps))
    assert result["makespan_x"] <= 1.15  # the app capped at 5 is the bound: near its cap
    assert result["per_inv_429"] <= 0.3
    assert result["idle_s"] == 0  # the room an app leaves shows in every app's lists


def test_leases_expire_in_order_and_released_ones_are_forgotten() -> None:
    policy = AdmissionPolicy(Limits(max_running_per_app=3), initial_delay=0.5)
    for i, lease in enumerate([30.0, 10.0, 20.0]):
        policy.admit("a", 0.0)
        policy.started("a", 0.0, f"inv{i}", probe=False, lease=lease)
    assert not policy.may_admit("a", 0.0)  # capped
    assert policy.next_expiry() == 10.0
    policy.finished("inv1", 5.0)  # seen finished before its lease ran out
    assert policy.next_expiry() == 20.0
    assert policy.expire(19.0) == []
    assert policy.expire(25.0) == ["a"]  # inv2's lease ran out: its slot is free
    assert policy.may_admit("a", 25.0)
    assert set(policy.owner) == {"inv0"}


def test_many_held_invocations_stay_cheap_and_the_lease_heap_compact() -> None:
    policy = AdmissionPolicy(Limits(), initial_delay=0.5)
    for i in range(20_000):
        policy.admit("a", float(i))
        policy.started("a", float(i), f"inv{i}", probe=False, lease=1000.0)
        if i % 2:
            policy.finished(f"inv{i}", float(i))
    assert len(policy._leases) <= 2 * len(policy.owner) + 64
    assert policy.next_expiry() == 1000.0


def test_room_another_app_leaves_under_the_org_cap_shows_in_a_list_of_every_app() -> None:
    # Three apps under an org cap of 20: ours holds 7 (its own cap, 20, never met), the
    # others 5 and 8. The app capped at 10 finishes: 8 slots of the organisation are free,
    # and no list of our app alone shows them (it still runs 7, all it ever ran).
    def setup() -> tuple[AdmissionPolicy, Any, list[str]]:
        policy = AdmissionPolicy(Limits(initial=7), initial_delay=0.5, rng=random.Random(6))
        start_one, running = _at_cap(policy, 7)  # the org's cap: 20 run
        return policy, start_one, running

    a5, a10 = [f"five{i}" for i in range(5)], [f"ten{i}" for i in range(8)]
    policy, start_one, running = setup()
    policy.listed("a", 0.0, running, running + a5 + a10)
    assert policy.crowded("a")  # other apps share the org: lists come often
    now = CROWD_LIST_INTERVAL
    policy.listed("a", now, running, running + a5)  # the app capped at 10 is done
    for _ in range(8):  # a third of the org free: creates go at once, until refused
        start_one(now)
    policy.admit("a", now)
    policy.rejected("a", now, None)
    assert not policy.may_admit("a", now)
    assert policy.apps["a"].limit == 15
    # The same lists without the org's view: no room seen, nothing goes.
    policy, start_one, running = setup()
    policy.listed("a", 0.0, running)
    policy.listed("a", CROWD_LIST_INTERVAL, running)
    assert not policy.may_admit("a", CROWD_LIST_INTERVAL)


def test_org_room_an_apps_own_cap_refuses_is_not_believed_again() -> None:
    # Ours is the app capped at 5: when another app leaves room in the org, one create
    # finds its own cap, and the same room is not chased again (one 429, not one a list).
    policy = AdmissionPolicy(Limits(initial=5), initial_delay=0.5, rng=random.Random(7))
    _, running = _at_cap(policy, 5)
    others = [f"x{i}" for i in range(15)]
    policy.listed("a", 0.0, running, running + others)
    now = CROWD_LIST_INTERVAL
    policy.listed("a", now, running, running + others[:5])  # 10 of the org free
    assert policy.may_admit("a", now)
    policy.admit("a", now)
    policy.rejected("a", now, None)  # the app's own cap
    for _ in range(3):
        now += CROWD_LIST_INTERVAL
        policy.listed("a", now, running, running + others[:5])
        assert not policy.may_admit("a", now)


def test_idle_lists_watch_a_full_org_instead_of_429s_and_quicken_while_it_turns_over() -> None:
    """Another tenant holds the whole cap: while every app's lists show the org full with
    the same invocations (none ended), the idle probe waits (up to a bound). While the
    org's invocations turn over (someone may leave, all its slots at once) the lists
    come twice as often; room they show lets creates go at once."""
    tenant = [f"t{i}" for i in range(20)]
    policy = AdmissionPolicy(Limits(), initial_delay=0.5)
    policy.admit("a", 0.0)
    assert policy.rejected("a", 0.0, None) <= IDLE_PROBE_DELAY
    now = 0.0
    policy.listed("a", now, [], tenant)
    # One list does not show the org still (nothing to compare with), nor do a few
    # alike (invocations started together end together): the next come on the cadence
    # among others; once STILL_LISTS more show the same ids, less often.
    for _ in range(STILL_LISTS):
        assert policy.next_list("a") == pytest.approx(now + CROWD_LIST_INTERVAL)
        now += CROWD_LIST_INTERVAL
        policy.listed("a", now, [], tenant)
        assert not policy.may_admit("a", now)  # full, the same ids: no probe either
    while now < IDLE_LIST_HOLD_MAX - 0.2:
        assert policy.next_list("a") == pytest.approx(now + STILL_LIST_INTERVAL)
        now += STILL_LIST_INTERVAL
        policy.listed("a", now, [], tenant)  # full, the same ids: no probe
        assert not policy.may_admit("a", now)
        assert policy.apps["a"].hold_until >= min(now + IDLE_LIST_HOLD, IDLE_LIST_HOLD_MAX)
    assert policy.may_admit("a", IDLE_LIST_HOLD_MAX + 1e-9)  # bounded: probe anyway
    # Invocations that end and are replaced (the org turning over): no postponement,
    # and lists come every CROWD_LIST_INTERVAL again, not STILL_LIST_INTERVAL.
    churn = AdmissionPolicy(Limits(), initial_delay=0.5)
    churn.admit("a", 0.0)
    hold = churn.rejected("a", 0.0, None)
    churn.listed("a", 0.0, [], tenant)
    churn.listed("a", 0.1, [], [f"u{i}" for i in range(20)])
    assert churn.apps["a"].hold_until == hold
    assert churn.next_list("a") == pytest.approx(0.1 + CROWD_LIST_INTERVAL)
    # Half the org frees at once (a process left): believed at once, creates go now.
    churn.listed("a", 0.12, [], [f"u{i}" for i in range(10)])
    assert churn.may_admit("a", 0.12)


def _newcomer(others: list[str]) -> tuple[AdmissionPolicy, list[str]]:
    """A process in slow start (two of its own running) that listed ``others`` once."""
    policy = AdmissionPolicy(Limits(), initial_delay=0.5)
    ours: list[str] = []
    now = 0.0
    while len(ours) < 2:
        while policy.may_admit("a", now) and len(ours) < 2:
            policy.admit("a", now)
            ours.append(f"mine{len(ours)}")
            policy.started("a", now, ours[-1], probe=False, lease=100)
        now += 0.01
    assert not policy.may_admit("a", 0.06)  # slow start's curve: 2 at 50 ms
    policy.listed("a", 0.06, ours, ours + others)
    return policy, ours


def test_slow_start_takes_the_slots_of_others_winding_down_fast() -> None:
    """A newcomer in slow start while another process's last invocations end: its lists
    (every CROWD_LIST_INTERVAL among others, in slow start too) show the others' ids
    going and none coming; their slots come free, so the limit doubles every
    RESTART_DOUBLING from there instead of every SLOW_START_DOUBLING."""
    others = [f"o{i}" for i in range(12)]
    policy, ours = _newcomer(others)
    state = policy.apps["a"]
    now = 0.06
    for n in range(1, EBB_LISTS + 1):
        assert state.doubling == SLOW_START_DOUBLING  # one such list is not enough
        assert policy.next_list("a") == pytest.approx(now + CROWD_LIST_INTERVAL)
        now += CROWD_LIST_INTERVAL
        policy.listed("a", now, ours, ours + others[n * EBB_MIN :])  # gone, none new
    assert state.slow
    assert state.doubling == RESTART_DOUBLING
    limit = state.limit
    state.held.update({f"pad{i}": 1e9 for i in range(32)})  # no ceiling in the way
    policy._grow(state, now + 3 * RESTART_DOUBLING)
    assert state.limit == pytest.approx(limit * 8)


def test_slow_start_steps_up_to_room_the_app_was_seen_to_hold() -> None:
    """A newcomer whose list shows the app running fewer than a list before did (another
    process's last invocations ending): those slots are room for certain, and slow start
    goes to them at once, up to its ceiling (twice what runs plus the first window),
    instead of waiting for its curve."""
    others = [f"o{i}" for i in range(12)]  # the app's, another process's
    for left, limit in ((3, 2 + 3), (10, 2 * 2 + Limits().initial)):  # (the ceiling)
        policy, ours = _newcomer([])
        state = policy.apps["a"]
        policy.listed("a", 0.06, ours + others, ours + others)  # 14 of the app at once
        assert state.limit < 3
        rest = ours + others[left:]
        policy.listed("a", 0.07, rest, rest)  # `left` of those 14 free now
        assert state.limit == limit
        assert state.doubling == SLOW_START_DOUBLING  # one list: the pace stays
        assert policy.may_admit("a", 0.07)


def test_slow_start_speeds_up_at_once_when_every_other_invocation_is_gone() -> None:
    """One list showing none of the others' invocations (all gone since the last list,
    none new): they left, none is about to create; slow start doubles every
    RESTART_DOUBLING at once (two lists of ebbing otherwise)."""
    policy, ours = _newcomer([f"o{i}" for i in range(6)])
    policy.listed("a", 0.06 + CROWD_LIST_INTERVAL, ours, ours)
    assert policy.apps["a"].doubling == RESTART_DOUBLING
    policy, ours = _newcomer([f"o{i}" for i in range(6)])
    policy.listed("a", 0.06 + CROWD_LIST_INTERVAL, ours, [*ours, "o5"])  # one left
    assert policy.apps["a"].doubling == SLOW_START_DOUBLING


def test_slow_start_reads_no_room_from_lists_that_do_not_show_it() -> None:
    """Two lists that look like room and are not (found by a probe): a switch from every
    app's lists to the app's alone (past ORG_LIST_MOST, or the org list refused) drops
    the other apps' invocations from the list, not from the organisation; and the app's
    slots another of its processes left, taken by another app's new invocations (the
    organisation as full as ever). Slow start keeps its curve and its pace."""
    policy, ours = _newcomer([f"b{i}" for i in range(6)])  # app b's, in the org list
    policy.listed("a", 0.135, ours, None)  # the app's alone
    assert policy.apps["a"].doubling == SLOW_START_DOUBLING
    others = [f"o{i}" for i in range(12)]  # app a's, another process's
    policy, ours = _newcomer([])
    state = policy.apps["a"]
    policy.listed("a", 0.06, ours + others, ours + others)
    app = ours + others[10:]
    policy.listed("a", 0.07, app, app + [f"b{i}" for i in range(10)])
    assert state.limit < 3  # its curve: no step up (the ceiling is 5)


def test_slow_start_keeps_its_pace_while_others_start_invocations() -> None:
    """Others' ids going while new ones of theirs come (they are still sending), a
    single one gone (an end whose successor is not created yet), or many gone once and
    their successors there at the next list (processes that started together, their
    first invocations ending together): slow start goes on at its pace."""
    others = [f"o{i}" for i in range(12)]
    successors = [f"s{i}" for i in range(6)]
    for lists in (
        [[*others[EBB_MIN + 1 :], "new"]] * 2,  # three gone, one new: still sending
        [others[1:], others[2:]],  # one gone at a time
        [others[6:], others[6:] + successors],  # six gone, then their successors
    ):
        policy, ours = _newcomer(others)
        now = 0.06
        for later in lists:
            now += CROWD_LIST_INTERVAL
            policy.listed("a", now, ours, ours + later)
        assert policy.apps["a"].doubling == SLOW_START_DOUBLING


def test_an_app_bound_by_its_own_cap_reads_room_against_that_cap() -> None:
    # Six of ours and six of another process of the app hold its own cap of 12, in an
    # organisation running 40. A create sent on the organisation's room is refused: the
    # app's cap binds. When the other process leaves 4 of the app's 12 free, that is a
    # third of the app's cap (not a tenth of the organisation's): believed at once.
    policy = AdmissionPolicy(Limits(initial=6), initial_delay=0.5, rng=random.Random(8))
    _, running = _at_cap(policy, 6)
    rivals, elsewhere = [f"r{i}" for i in range(6)], [f"x{i}" for i in range(28)]
    app = running + rivals
    policy.listed("a", 0.0, app, app + elsewhere)
    now = CROWD_LIST_INTERVAL
    policy.listed("a", now, app, app + elsewhere[:18])  # the org's room: try it
    assert policy.may_admit("a", now)
    policy.admit("a", now)
    policy.rejected("a", now, None)  # the app's own cap
    now += CROWD_LIST_INTERVAL
    policy.listed("a", now, running + rivals[:2], running + rivals[:2] + elsewhere)
    assert policy.may_admit("a", now)  # no confirming list needed


def test_a_look_beyond_the_limit_is_rare_when_the_lists_show_every_app() -> None:
    """With 2 of 20 running (a small share), a process looks beyond its limit after
    GROWTH_PROBE x 0.1 = 2 s or less while its lists are the app's alone (another app's
    room does not show there); when they are every app's, they show all the room there is
    but a raised cap's, and a look while the cap is full only takes a slot another
    process had free for a moment: GROWTH_PROBE_MAX (jittered) apart."""
    others = [f"o{i}" for i in range(18)]
    for org, slowest in ((None, GROWTH_PROBE * 0.1), (True, GROWTH_PROBE_MAX)):
        policy = AdmissionPolicy(Limits(initial=2), initial_delay=0.5)
        _, running = _at_cap(policy, 2)
        live = running + others
        policy.listed("a", 0.0, live, live if org else None)
        policy.admit("a", 0.0)
        policy.rejected("a", 0.0, None)
        delay = policy.apps["a"].grow_at
        assert slowest / 2 <= delay <= slowest


def test_lists_longer_than_a_page_come_less_often() -> None:
    """Among others, a list one page long (100 invocations) comes every
    CROWD_LIST_INTERVAL: a process leaving is seen soon. Each page is a request out of
    the rate limit the creates need: a list of three pages comes every
    3 x STILL_LIST_INTERVAL, and never less often than LIST_INTERVAL."""
    for size, interval in (
        (20, CROWD_LIST_INTERVAL),
        (250, 3 * STILL_LIST_INTERVAL),
        (2000, LIST_INTERVAL),
    ):
        policy = AdmissionPolicy(Limits(initial=2), initial_delay=0.5)
        _, running = _at_cap(policy, 2)
        org = running + [f"o{i}" for i in range(size - 2)]
        policy.listed("a", 1.0, running, org)
        assert policy.crowded("a")
        assert policy.next_list("a") == pytest.approx(1.0 + interval)
