"""The uncoordinated admission policy, simulated: K `AdmissionPolicy` objects (one per
process) against one service's caps, as discrete events, in well under a second per case.

It plays the cases of ``benchmarks.multi`` without processes, sockets or CPU contention:
each process starts a few milliseconds apart (``jitter``), on a wall clock whose reading
at the start is drawn per seed (``phase``: the policy's grids are the wall clock's, and a
start either side of one of their points behaves otherwise), a create reaches the service
half a round trip after it is sent (``rtt``, drawn per create) and is refused there when
the organisation's or its app's cap is full, an action lasts its duration give or take
``spread`` (a fraction), and a finish is seen ``seen`` seconds after it happens. Each
process does what the client's admission queue does (a 429 for a create sent before the
previous 429 was known is the same crowding: freed, not learnt; while creates wait, the
invocations of every app are listed when the policy asks, the answer ``listing`` seconds
later).
The unused quota is sampled at jittered times (a fixed step would keep meeting the same
phase of invocations that start together). Use it to try a change to the policy across
seeds before measuring it for real:

    python -m benchmarks.limits_sim            # every case, 8 seeds: mean/worst
    python -m benchmarks.limits_sim K=8 --seed 3 --timeline
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import statistics
from typing import Any

from kernel_async._limits._admission import AdmissionPolicy
from kernel_async._limits._config import Limits

from .multi import Case, cases, idle_seconds, unused_by_second, unused_slots


def simulate(
    case: Case,
    seed: int = 0,
    *,
    rtt: tuple[float, float] = (0.002, 0.008),
    seen: float = 0.003,
    jitter: float = 0.02,
    spread: float = 0.2,
    listing: float = 0.005,
    phase: bool = True,
) -> dict[str, Any]:
    """Run ``case``; returns 429s per invocation, makespan and spread (÷ ideal), idle
    seconds (as `benchmarks.multi` counts them) and each second's unused share of the cap,
    each process's finish, and a timeline of each process's running count every 0.05 s
    or so."""
    rng = random.Random(seed)
    k, apps, share = case.k, case.worker_apps(), case.n // case.k
    # One wall clock for every process, its reading at the start at random (``phase``):
    # the policy's grids are the wall clock's, and where the start falls on them matters.
    wall = rng.uniform(0.0, 1.0) if phase else 0.0
    policies = [
        AdmissionPolicy(
            Limits(), initial_delay=0.5, rng=random.Random(seed * 100 + i), wall_offset=wall
        )
        for i in range(k)
    ]
    todo, done, last_finish = [share] * k, [0] * k, [0.0] * k
    last_reject = [-math.inf] * k
    list_due = [math.inf] * k  # when each process's next list is asked for
    refused = 0
    org = case.cap if case.tenant else 0
    by_app = dict.fromkeys(apps, 0)
    org_tenant = list(range(org))
    live_ids = {f"tenant{n}": "tenant" for n in org_tenant}  # the service's, by app
    per_process = [0] * k
    accepted = [0] * k  # creates the service took, per process
    delays = case.worker_delays()
    free_by_second: dict[int, list[float | None]] = {}
    timeline: list[tuple[float, tuple[int, ...]]] = []
    events: list[tuple[float, int, str, int, Any]] = []
    order = itertools.count()

    def push(at: float, kind: str, process: int, data: Any = None) -> None:
        heapq.heappush(events, (at, next(order), kind, process, data))

    for i, delay in enumerate(case.worker_delays()):
        push(delay + rng.uniform(0, jitter), "wake", i)
    if case.tenant:  # its invocations end as they started: in a slow start from 1
        for n in range(case.cap):
            push(case.tenant + 0.05 * math.log2(n + 1) + rng.uniform(0, 0.005), "tenant_done", -1)
    push(0.0, "sample", -1)
    while events:
        now, _, kind, i, data = heapq.heappop(events)
        if now > 100 * case.ideal():
            raise RuntimeError(f"the simulation of {case.name} stalls")
        if kind == "sample":
            timeline.append((round(now, 2), tuple(per_process)))
            arrived = [w for w, delay in enumerate(delays) if now >= delay]
            waiting = sum(share - accepted[w] for w in arrived)
            if now > case.tenant + 1.0:
                unused: float | None = None  # nothing waits
                if waiting > 0:
                    with_work = [apps[w] for w in arrived if accepted[w] < share]
                    unused = unused_slots(case, org, by_app.__getitem__, with_work, waiting)
                    unused /= case.cap
                free_by_second.setdefault(int(now), []).append(unused)
            if sum(done) < share * k:
                push(now + rng.uniform(0.025, 0.075), "sample", -1)
            continue
        if kind == "tenant_done":
            org -= 1
            del live_ids[f"tenant{org_tenant.pop()}"]
            continue
        app = apps[i]
        if kind == "arrive":  # the service decides
            sent, probe = data
            ok = org < case.cap and by_app[app] < case.app_caps.get(app, case.cap)
            invocation = f"inv{next(order)}"
            if ok:
                org, by_app[app], per_process[i] = org + 1, by_app[app] + 1, per_process[i] + 1
                accepted[i] += 1
                live_ids[invocation] = app
                lasts = case.duration * rng.uniform(1 - spread, 1 + spread)
                push(now + lasts, "server_finish", i, invocation)
            push(now + rng.uniform(*rtt) / 2, "answer", i, (sent, probe, ok, invocation))
            continue
        if kind == "server_finish":
            org, by_app[app], per_process[i] = org - 1, by_app[app] - 1, per_process[i] - 1
            del live_ids[data]
            push(now + seen, "finish", i, data)
            continue
        policy = policies[i]
        if kind == "list":
            if now < list_due[i]:
                continue  # superseded by a sooner one
            list_due[i] = math.inf
            push(now + listing, "listed", i)
            continue
        if kind == "listed":
            live = [id for id, of in live_ids.items() if of == app]
            policy.listed("app", now, live, list(live_ids))
        elif kind == "answer":
            sent, probe, ok, invocation = data
            if ok:
                policy.started("app", now, invocation, probe=probe, lease=1000.0)
            else:
                refused += 1
                todo[i] += 1
                if sent < last_reject[i]:  # the same crowding as the last 429
                    policy.abandoned("app", now, probe=probe)
                    policy.concurrency_limited += 1
                else:
                    last_reject[i] = now
                    policy.rejected("app", now, None)
        elif kind == "finish":
            done[i] += 1
            last_finish[i] = now
            policy.finished(data, now)
        while todo[i] and policy.may_admit("app", now):
            probe = policy.admit("app", now)
            todo[i] -= 1
            push(now + rng.uniform(*rtt) / 2, "arrive", i, (now, probe))
        wake = policy.wake_at("app", now) if todo[i] else None
        if wake is not None:
            push(max(wake, now), "wake", i)
        if todo[i] and policy.wants_list("app"):  # blocked: list
            due = max(policy.next_list("app"), now)
            if due < list_due[i]:
                list_due[i] = due
                push(due, "list", i)
    ideal = case.ideal()
    return {
        "per_inv_429": refused / (share * k),
        "makespan_x": max(last_finish) / ideal,
        "spread_x": (max(last_finish) - min(last_finish)) / ideal,
        "idle_s": idle_seconds(free_by_second),
        "idle_s_while_waiting": idle_seconds(free_by_second, while_waiting=True),
        "unused_by_second": {s: round(v, 3) for s, v in unused_by_second(free_by_second).items()},
        "finishes_s": [round(t, 2) for t in last_finish],
        "timeline": timeline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("cases", nargs="*", help="case names (default: every one)")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--seed", type=int, help="one seed only")
    parser.add_argument("--timeline", action="store_true", help="print each process's count")
    args = parser.parse_args()
    chosen = [c for c in cases(quick=False) if c.mode == "uncoordinated"]
    if args.cases:
        chosen = [c for c in chosen if c.name in args.cases]
    seeds = [args.seed] if args.seed is not None else list(range(args.seeds))
    for case in chosen:
        runs = [simulate(case, seed) for seed in seeds]
        cells = []
        for key in ("per_inv_429", "makespan_x", "spread_x", "idle_s"):
            values = [run[key] for run in runs]
            cells.append(f"{key} {statistics.mean(values):.2f}/{max(values):.2f}")
        print(f"{case.name:28} " + "  ".join(cells))
        if args.timeline:
            for at, counts in runs[-1]["timeline"][::5]:
                print(f"  {at:5.2f} " + " ".join(f"{c:2d}" for c in counts))


if __name__ == "__main__":
    main()
