"""What the shared limits learn, on a real ``redis-server`` (127.0.0.1): a 429 of the
organisation's cap cuts the fleet's window, not the app's; a process's own limit is left
to Redis; a slot found ended unseen is freed in Redis at once; a cap the service tells
seeds the fleet's window."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from kernel_async import Limits, RetryPolicy
from kernel_async._limits._redis import RedisLimits, SharedLease
from kernel_async.testing import KernelEmulator, Quotas

from ._redis import REDIS_SERVER, RedisServer, redis_asyncio, redis_process, redis_url

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (apt-get install redis-server)"
)
__all__ = ["redis_process", "redis_url"]  # fixtures

SCOPE = "test"
PREFIX = f"kernel:limits:{SCOPE}"


@pytest_asyncio.fixture
async def shared(redis_url: str) -> AsyncIterator[RedisLimits]:
    """One worker's shared limits, driven by hand (no service)."""
    limits = RedisLimits(redis_url, SCOPE, initial=4)
    try:
        yield limits
    finally:
        await limits.aclose()


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    """A client of the test's Redis, to read and set the shared limits' state."""
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def window(url: str, key: str) -> float | None:
    """The window learnt in ``key`` (``lim:{app}`` or ``org``), ``None``: none."""
    client = redis_asyncio.Redis.from_url(url, decode_responses=True)
    try:
        value = await client.hget(f"{PREFIX}:{key}", "window")
        return None if value is None else float(value)
    finally:
        await client.aclose()


async def run(shared: RedisLimits, app: str, count: int) -> list[SharedLease]:
    """``count`` creates of ``app`` granted and started, each holding its slot."""
    leases = []
    for i in range(count):
        lease = await shared.acquire(app, None)
        assert lease is not None
        await shared.started(lease, f"{app}-{i}", 60.0)
        leases.append(lease)
    await settle(shared)
    return leases


async def refuse(shared: RedisLimits, app: str) -> None:
    """One create of ``app`` granted and refused (a concurrency 429), its slot given
    back."""
    lease = await shared.acquire(app, None)
    assert lease is not None
    await shared.rejected(lease, None)
    shared.release(lease)
    await settle(shared)


async def settle(shared: RedisLimits) -> None:
    """Let the tasks the shared limits spawned (started, released) reach Redis."""
    for _ in range(100):
        pending = [task for task in shared._tasks if not task.done()]
        if not pending:
            return
        await asyncio.gather(*pending, return_exceptions=True)


async def org_refuses(shared: RedisLimits) -> SharedLease:
    """App a runs 4 at once, then holds 2 while app b holds 1, and a's next create is
    refused: the organisation's cap (a ran more than 2 already). Returns that create."""
    await run(shared, "a", 4)
    for i in range(2):
        shared.finished(f"a-{i}")
    await settle(shared)
    await run(shared, "b", 1)
    lease = await shared.acquire("a", None)
    assert lease is not None
    await shared.rejected(lease, None)
    return lease


async def test_an_org_429_does_not_shrink_an_apps_window(
    shared: RedisLimits, redis_url: str
) -> None:
    """The fleet's window becomes the 3 held, a's own window stays where it was (4 ran)."""
    refused = await org_refuses(shared)
    assert await window(redis_url, "org") == 3
    a_window = await window(redis_url, "lim:a")
    assert a_window is not None
    assert a_window >= 4
    shared.release(refused)


async def test_an_apps_own_429_cuts_its_window_not_the_fleets(
    shared: RedisLimits, redis_url: str
) -> None:
    """App a holds all it ever ran (4), and a fifth is refused: that is a's cap."""
    await run(shared, "a", 4)
    lease = await shared.acquire("a", None)
    assert lease is not None
    await shared.rejected(lease, None)
    assert await window(redis_url, "lim:a") == 4
    assert await window(redis_url, "org") is None
    shared.release(lease)


async def test_the_fleets_window_caps_every_app(shared: RedisLimits) -> None:
    """Once the organisation's cap is learnt (3), a create of any app waits for a slot of
    the fleet; a slot freed lets one go."""
    shared.release(await org_refuses(shared))
    waiting = asyncio.ensure_future(shared.acquire("c", None))
    await asyncio.sleep(0.2)  # many polls: none may grant it
    assert not waiting.done()
    shared.finished("b-0")  # a slot of the fleet comes free
    lease = await asyncio.wait_for(waiting, 10)
    assert lease is not None
    assert lease.app == "c"
    shared.release(lease)


async def test_the_local_limit_is_left_to_redis(redis_url: str, fast_policy: RetryPolicy) -> None:
    """Shared, a concurrency 429 is learnt in Redis for the fleet: the process's own limit
    is neither cut nor held (it would run a share of the cap Redis gives it)."""
    async with KernelEmulator(quotas=Quotas(max_running=3)) as emulator:

        async def work(ctx: Any, payload: Any) -> Any:
            await asyncio.sleep(0.05)
            return payload

        emulator.add_action("app", "work", work)
        async with emulator.client(retry=fast_policy, limits=Limits(shared=redis_url)) as kernel:
            results = await asyncio.gather(
                *(kernel.invocations.run("app", "work", payload=i) for i in range(20))
            )
            stats = kernel.limit_stats()
        assert [r.status for r in results] == ["succeeded"] * 20
        assert emulator.create_count == 20
        assert emulator.quotas.stats.concurrency_rejected >= 1  # Redis learnt from one
        assert stats.concurrency_limited == emulator.quotas.stats.concurrency_rejected
        assert not stats.apps["app"].learnt  # the process's own limit learnt nothing


async def test_a_process_joining_the_fleet_takes_its_window_at_once(
    redis_url: str, fast_policy: RetryPolicy
) -> None:
    """Shared, the fleet's window is Redis's: a process that comes later does not
    slow-start its own (it used to let 1, then 2, 4... creates go, 50 ms apart)."""
    async with KernelEmulator(quotas=Quotas(max_running=8)) as emulator:

        async def work(ctx: Any, payload: Any) -> Any:
            await asyncio.sleep(0.3)
            return payload

        emulator.add_action("app", "work", work)
        limits = Limits(shared=redis_url)
        async with emulator.client(retry=fast_policy, limits=limits) as first:
            await asyncio.gather(*(first.invocations.run("app", "work") for _ in range(16)))
        async with emulator.client(retry=fast_policy, limits=limits) as later:
            runs = [asyncio.create_task(later.invocations.run("app", "work")) for _ in range(8)]
            await asyncio.sleep(0.1)  # a third of one action: slow start would be at 2-4
            running = sum(v.status == "running" for v in emulator.snapshot())
            await asyncio.gather(*runs)
            stats = later.limit_stats()
        assert running == 8
        assert stats.max_queued_seconds < 0.05  # no local wait: Redis granted the slots


async def test_a_slot_found_ended_unseen_is_freed_in_redis_at_once(
    redis_url: str, redis_process: RedisServer, fast_policy: RetryPolicy, store: redis_asyncio.Redis
) -> None:
    """An invocation created and never followed ends on the service: a create waiting
    for a shared slot has the app's running list read, and the slot freed in Redis at
    once (not at the end of its lease, renewed for as long as it could run)."""
    async with KernelEmulator(quotas=Quotas(max_running=5)) as emulator:
        gate = asyncio.Event()

        async def hold(ctx: Any, payload: Any) -> Any:
            await gate.wait()
            return payload

        emulator.add_action("app", "hold", hold)
        async with emulator.client(retry=fast_policy, limits=Limits(shared=redis_url)) as kernel:
            first = await kernel.invocations.create("app", "hold", async_=True)
            [lim] = [key async for key in store.scan_iter("kernel:limits:*:lim:app")]
            # The fleet learnt a window of one for the app (a 429 would teach it).
            await store.hset(lim, mapping={"window": 1, "limited": 1, "grow": 0})
            gate.set()
            while emulator.snapshot()[0].status == "running":  # ended, unseen by the client
                await asyncio.sleep(0.01)
            second = await asyncio.wait_for(
                kernel.invocations.create("app", "hold", async_=True), 30
            )
        assert second.id != first.id
        assert emulator.create_count == 2
        assert emulator.quotas.stats.concurrency_rejected == 0
        assert await redis_process.zcard_running() == 0  # closing gave the second one back


async def test_a_cap_the_service_tells_seeds_the_fleets_window(
    redis_url: str, fast_policy: RetryPolicy, store: redis_asyncio.Redis
) -> None:
    """With a project capped at 12, the first create reads the cap once and the fleet's
    window starts there: twelve creates at once all go, none refused."""
    quotas = Quotas(max_running=12, projects={"prod": 12})
    async with KernelEmulator(quotas=quotas) as emulator:
        gate = asyncio.Event()

        async def hold(ctx: Any, payload: Any) -> Any:
            await gate.wait()
            return payload

        emulator.add_action("app", "hold", hold)
        limits = Limits(shared=redis_url)
        async with emulator.client(retry=fast_policy, limits=limits, project="prod") as kernel:
            created = await asyncio.gather(
                *(kernel.invocations.create("app", "hold", async_=True) for _ in range(12))
            )
            [org] = [key async for key in store.scan_iter("kernel:limits:*:org")]
            told = await store.hget(org, "window")
            gate.set()
        assert len({c.id for c in created}) == 12
        assert emulator.quotas.stats.concurrency_rejected == 0
        assert told is not None
        assert int(float(told)) == 12  # and grows slowly from there (the cap is known)


async def test_another_tenants_429_teaches_nothing_and_one_create_probes(
    shared: RedisLimits, redis_url: str
) -> None:
    """Refused with nothing of the fleet running (another tenant holds the cap): no window
    is learnt; after the pause one create at a time goes, until one starts."""
    await refuse(shared, "a")
    assert await window(redis_url, "lim:a") is None
    assert await window(redis_url, "org") is None
    waiting = [asyncio.ensure_future(shared.acquire("a", None)) for _ in range(3)]
    done, pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1  # the probe
    await asyncio.sleep(0.2)  # many polls: the others wait for the probe's answer
    assert all(not fut.done() for fut in pending)
    probe = done.pop().result()
    assert probe is not None
    await shared.started(probe, "probe", 60.0)  # it started: the tenant let go
    leases = await asyncio.wait_for(asyncio.gather(*pending), 10)
    assert all(lease is not None for lease in leases)


async def test_creates_sent_before_a_cut_are_the_same_crowding(
    shared: RedisLimits, redis_url: str, store: redis_asyncio.Redis
) -> None:
    """Two creates in flight at once are both refused: the first cut (to the 3 held then)
    is news, the second only brings the window down to what is held (2): it does not
    count as a second 429 at the same cap, which would make the window probe slowly."""
    await run(shared, "a", 2)
    first = await shared.acquire("a", None)
    second = await shared.acquire("a", None)
    assert first is not None
    assert second is not None
    await asyncio.sleep(0.01)  # both were sent before the first 429 came back
    await shared.rejected(first, None)
    await shared.rejected(second, None)
    assert await window(redis_url, "lim:a") == 2
    state = await store.hgetall(f"{PREFIX}:lim:a")
    assert state["ceil"] == "3"  # what the first 429 found
    assert state["fast"] == "1"  # it moved the cap: the window regrows as in slow start
    for lease in (first, second):
        shared.release(lease)


async def test_an_apps_429_at_the_cap_it_was_cut_to_is_its_own_again(
    shared: RedisLimits, redis_url: str, store: redis_asyncio.Redis
) -> None:
    """App a's own cap (4) was learnt. Its window grew past it at the edge, and a create
    got in while one of a's invocations had ended on the service but not been seen
    ended: Redis knew a to run 5 at once. Holding its 4 again, a's next create is
    refused: that is still a's own cap, not the organisation's (on Redis, with 3 apps
    capped 5/10/20, every such 429 of the app capped at 5 cut the fleet's window by one,
    down to 14 of 20: 5 seconds with a quarter of the cap unused)."""
    await run(shared, "a", 4)
    await refuse(shared, "a")  # a's own cap: 4
    assert await window(redis_url, "lim:a") == 4
    await store.hset(f"{PREFIX}:lim:a", "window", 5)  # as grown at its edge
    fifth = await shared.acquire("a", None)
    assert fifth is not None
    await shared.started(fifth, "a-4", 60.0)  # in: a-0 had ended, unseen
    shared.finished("a-0")  # now seen: a holds 4
    await settle(shared)
    await run(shared, "b", 1)
    lease = await shared.acquire("a", None)
    assert lease is not None
    await shared.rejected(lease, None)
    assert await window(redis_url, "org") is None  # the fleet's window: not learnt
    assert await window(redis_url, "lim:a") == 4
    shared.release(lease)


async def test_an_org_429_after_the_app_ran_far_above_its_old_cap_is_the_orgs(
    shared: RedisLimits, redis_url: str
) -> None:
    """Organisation cap 20, no app cap (found by a probe). b holds 16 while a holds 4:
    a's create is refused and blamed on a (nothing proved otherwise): a's cap 4. b
    finishes; a runs 20 at once. b comes back with 5 while a holds 15 and a's next
    create is refused: a ran 20, far over its old cap, so this is the organisation's
    cap, learnt for the fleet (a rule that took "holds its old cap or more" for the
    app's own cap never learnt the fleet's window)."""
    await run(shared, "b", 16)
    await run(shared, "a", 4)
    await refuse(shared, "a")
    assert await window(redis_url, "lim:a") == 4
    for i in range(16):
        shared.finished(f"b-{i}")
    shared.finished("a-0")
    await settle(shared)
    for i in range(4, 21):  # the window regrows (fast): a runs 20
        lease = await shared.acquire("a", None)
        assert lease is not None
        await shared.started(lease, f"a-{i}", 60.0)
    await settle(shared)
    for i in range(1, 6):
        shared.finished(f"a-{i}")
    await settle(shared)
    for i in range(100, 105):  # the organisation is full again: 15 + 5
        lease = await shared.acquire("b", None)
        assert lease is not None
        await shared.started(lease, f"b-{i}", 60.0)
    await settle(shared)
    await refuse(shared, "a")
    assert await window(redis_url, "org") == 20


async def test_a_slot_that_ended_goes_back_before_its_successor_is_granted(
    shared: RedisLimits, redis_url: str, monkeypatch: pytest.MonkeyPatch, store: redis_asyncio.Redis
) -> None:
    """An invocation of ours ends while its successor waits, and the window has just
    grown one above what runs: the release reaches Redis before the successor's grant
    (here the release is slow: 50 ms), so Redis never knows the app to run more than it
    does (a successor granted first made the app capped at 5 "known" to run 6, and its
    own 429s then read as the organisation's)."""
    await run(shared, "a", 3)
    slow_release = shared._release

    async def later(app: str, tokens: list[str]) -> None:
        await asyncio.sleep(0.05)
        await slow_release(app, tokens)

    monkeypatch.setattr(shared, "_release", later)
    await store.hset(f"{PREFIX}:lim:a", mapping={"window": 3, "limited": 1})
    waiting = asyncio.ensure_future(shared.acquire("a", None))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the window is full
    shared.finished("a-0")  # its release is on the way (slowly) ...
    await store.hset(f"{PREFIX}:lim:a", "window", 4)  # ... as the window grows
    lease = await asyncio.wait_for(waiting, 5)
    assert lease is not None
    await shared.started(lease, "a-3", 60.0)
    await settle(shared)
    assert int(await store.hget(f"{PREFIX}:lim:a", "proven")) == 3


async def test_a_cut_one_above_the_apps_cap_keeps_the_cap(
    shared: RedisLimits, redis_url: str, store: redis_asyncio.Redis
) -> None:
    """App a's own cap (4) was learnt. At a turnover its invocations end unseen and one
    more gets in: it holds 5 when its next create is refused. That is the same cap give
    or take one: a's cap stays 4, so a's next 429 at 4 is its own again, not the
    organisation's (a cut recording 5 made each of them cut the fleet's window by one:
    Redis's 3 apps case, the fleet at 15 of 20 for 6 s)."""
    await run(shared, "a", 4)
    await refuse(shared, "a")  # a's own cap: 4
    await store.hset(f"{PREFIX}:lim:a", "window", 6)  # as grown at its edge
    fifth = await shared.acquire("a", None)  # in: a-0 had ended, unseen
    assert fifth is not None
    await shared.started(fifth, "a-4", 60.0)
    await settle(shared)
    await refuse(shared, "a")  # at 5: the same cap, give or take one
    assert await store.hget(f"{PREFIX}:lim:a", "ceil") == "4"
    shared.finished("a-0")  # seen now: a holds 4
    await settle(shared)
    await run(shared, "b", 1)
    await refuse(shared, "a")  # at 4 again: a's own
    assert await window(redis_url, "org") is None


async def test_an_app_cut_at_the_orgs_cap_takes_the_room_another_app_leaves(
    shared: RedisLimits, redis_url: str, store: redis_asyncio.Redis
) -> None:
    """The organisation's cap (6) is known. Apps a and b hold 3 each and a's creates are
    refused twice: blamed on a (it never ran more), its window cut to 3, the same cap
    twice (slow to regrow). But the fleet held the organisation's cap each time: the
    429s may have been the organisation's. When b leaves (a quarter of the cap free), a's
    next create goes at once and a's window grows as in slow start (it regrew a step per
    round of starts: on Redis, with 3 apps capped 5/10/20, 8 of 20 unused for half a
    second when the app capped at 10 left). A 429 with the organisation's room free is
    a's own cap."""
    await store.hset(f"{PREFIX}:org", mapping={"window": 7, "limited": 1, "ceil": 6})
    await run(shared, "b", 3)
    await run(shared, "a", 3)
    for _ in range(2):  # a's window grown one past what it holds, twice; refused
        await store.hset(f"{PREFIX}:lim:a", "window", 4)
        await refuse(shared, "a")
    assert await window(redis_url, "lim:a") == 3
    assert await store.hget(f"{PREFIX}:lim:a", "fast") is None  # the same cap: slow
    assert await store.hget(f"{PREFIX}:lim:a", "shared") == "1"  # at the org's cap
    for i in range(3):
        shared.finished(f"b-{i}")  # b leaves: half the organisation is free
    await settle(shared)
    more = await asyncio.wait_for(shared.acquire("a", None), 2)  # 3 of 3 held: at once
    assert more is not None
    assert await window(redis_url, "lim:a") == 4
    await shared.started(more, "a-3", 60.0)  # at the edge again
    await settle(shared)
    assert await window(redis_url, "lim:a") == 5  # + 1, not + 0.25 / 4
    await refuse(shared, "a")  # 4 held of the organisation's 6: a's own cap
    assert await window(redis_url, "lim:a") == 4
    assert await store.hget(f"{PREFIX}:lim:a", "fast") is None  # the same cap: slow
    assert await store.hget(f"{PREFIX}:lim:a", "shared") is None  # and a's own


async def test_an_apps_own_cap_found_with_room_in_the_org_is_not_taken_for_the_orgs(
    shared: RedisLimits, redis_url: str, store: redis_asyncio.Redis
) -> None:
    """The organisation's cap (6) is known. App a, capped at 3, is refused at 3 with the
    organisation half free: its own cap. Later, b holds the other 3 when a's window
    (grown at its edge) is refused at 3 again: the fleet held the organisation's cap, but
    3 is the cap a's 429 found with room: a's own still. When b leaves, a's next create
    waits (it used to go at once, to be refused again: with an app capped at 3 beside
    one coming and going under an organisation of 20, its 429s after the first second
    went 8 -> 14 in 6.5 s, one more each time the other app's work paused)."""
    await store.hset(f"{PREFIX}:org", mapping={"window": 7, "limited": 1, "ceil": 6})
    await run(shared, "a", 3)
    await store.hset(f"{PREFIX}:lim:a", "window", 4)
    await refuse(shared, "a")  # 3 of the organisation's 6: a's own cap
    assert await store.hget(f"{PREFIX}:lim:a", "shared") is None
    await run(shared, "b", 3)
    await store.hset(f"{PREFIX}:lim:a", "window", 4)  # grown at its edge
    await refuse(shared, "a")  # at 3 again, the organisation full
    assert await window(redis_url, "lim:a") == 3
    for i in range(3):
        shared.finished(f"b-{i}")  # b leaves: half the organisation is free
    await settle(shared)
    waiting = asyncio.ensure_future(shared.acquire("a", None))
    await asyncio.sleep(0.2)  # many polls: a's window is full, and 3 is a's own cap
    assert not waiting.done()
    assert await window(redis_url, "lim:a") == 3
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)


async def test_one_slot_free_at_a_refusal_is_not_room_in_the_org(
    shared: RedisLimits, store: redis_asyncio.Redis
) -> None:
    """The refusal's script runs a moment after the service refused: a slot another
    worker released in between leaves one of the organisation's free. That is not room:
    the cap a's 429 met may still be the organisation's, so a is marked, and 3 is not
    recorded as a's own (it would clear the mark at every later 429 at 3)."""
    await store.hset(f"{PREFIX}:org", mapping={"window": 7, "limited": 1, "ceil": 6})
    await run(shared, "b", 2)  # b's third ended and was released just now
    await run(shared, "a", 3)
    await store.hset(f"{PREFIX}:lim:a", "window", 4)
    await refuse(shared, "a")  # 5 of 6 held when the script runs
    assert await store.hget(f"{PREFIX}:lim:a", "own") is None
    assert await store.hget(f"{PREFIX}:lim:a", "shared") == "1"
