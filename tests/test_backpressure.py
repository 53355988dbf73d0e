"""Backpressure against the emulator's quotas and small servers: a plain gather of run()
finishes under a concurrency cap and a rate limit, each invocation started once."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest
from aiohttp import web

from kernel_async import (
    APITimeoutError,
    AsyncKernel,
    Invocation,
    Limits,
    RateLimitError,
    RetryPolicy,
)
from kernel_async.testing import KernelEmulator, Quotas

from .conftest import INVOCATION_JSON, ServerFactory, emulator_thread, json_response

CONCURRENCY_429 = '{"code":"concurrency_limit_exceeded","message":"app at its limit"}'
FAST = RetryPolicy(max_retries=2, initial_delay=0.02, max_delay=0.1)


def install_work(emulator: KernelEmulator, seconds: float = 0.02) -> None:
    async def work(ctx: Any, payload: Any) -> Any:
        ctx.log(f"working on {payload}")
        await asyncio.sleep(seconds)
        return payload

    emulator.add_action("app", "work", work)
    emulator.add_action("other", "work", work)


async def test_a_gather_of_run_finishes_under_an_app_cap_each_started_once() -> None:
    n, cap = 60, 5
    async with KernelEmulator(quotas=Quotas(max_running_per_app=cap)) as emulator:
        install_work(emulator)
        async with emulator.client(retry=FAST) as kernel:
            results = await asyncio.gather(
                *(kernel.invocations.run("app", "work", payload=i) for i in range(n))
            )
            stats = kernel.limit_stats()
        assert sorted(r.output_as() for r in results) == list(range(n))
        assert all(r.status == "succeeded" for r in results)
        assert emulator.create_count == n  # none started twice
        assert sorted(v.payload_as() for v in emulator.snapshot()) == list(range(n))
        assert emulator.quotas.stats.peak_running_by_app["app"] <= cap
        assert emulator.quotas.stats.concurrency_rejected < n / 2  # it learnt, it did not hammer
        app = stats.apps["app"]
        assert (app.learnt, app.running, app.queued) == (True, 0, 0)
        # What fit at the last 429 as this client counted it: about the cap (one over when
        # one of its invocations ended a moment before it saw the end)
        assert app.limit is not None
        assert cap // 2 <= app.limit <= cap + 1
        assert stats.concurrency_limited == emulator.quotas.stats.concurrency_rejected


async def test_two_processes_share_an_app_cap_evenly_then_one_takes_the_room_left() -> None:
    # Two clients (each its own admission, as two processes would have) share one app's
    # cap of 6. They meet it in step and hold even shares; the one with less work
    # finishes first, and the other sees the room in its lists of the app and takes it.
    cap = 6
    async with KernelEmulator(quotas=Quotas(max_running_per_app=cap)) as emulator:
        install_work(emulator, seconds=0.1)
        shares: list[tuple[int, int]] = []  # (short's, long's) running, every 10 ms

        async def sample() -> None:
            while True:
                running = [v for v in emulator.snapshot() if v.status == "running"]
                mine = sum(1 for v in running if v.payload_as() < 100)
                shares.append((mine, len(running) - mine))
                await asyncio.sleep(0.01)

        async with emulator.client(retry=FAST) as short, emulator.client(retry=FAST) as long:

            async def gather(kernel: AsyncKernel, first: int, n: int) -> list[Invocation]:
                return await asyncio.gather(
                    *(kernel.invocations.run("app", "work", payload=first + i) for i in range(n))
                )

            sampler = asyncio.create_task(sample())
            done_short, done_long = await asyncio.gather(
                gather(short, 0, 30), gather(long, 100, 60)
            )
            sampler.cancel()
            stats = long.limit_stats().apps["app"]
        assert [r.output_as() for r in done_short] == list(range(30))
        assert [r.output_as() for r in done_long] == list(range(100, 160))
        assert emulator.create_count == 90  # none started twice
        assert emulator.quotas.stats.peak_running_by_app["app"] <= cap
        both = [(a, b) for a, b in shares if a and b and a + b >= cap - 1]
        assert len(both) > 20
        even = sum(abs(a - b) <= 1 for a, b in both)
        assert even >= 0.8 * len(both)  # 3 and 3 (4 and 2 for a moment, a refill late)
        # The long one listed the app's running invocations and took the whole cap once
        # the short one was done: what ran at its last 429 is the cap.
        assert max(b for a, b in shares if not a) >= cap - 1
        assert stats.learnt
        assert stats.limit is not None
        assert stats.limit >= cap - 1


async def test_a_gather_of_run_finishes_under_a_rate_limit_and_a_cap() -> None:
    n = 40
    quotas = Quotas(max_running_per_app=8, requests_per_window=20, window=0.25)
    async with KernelEmulator(quotas=quotas) as emulator:
        install_work(emulator)
        async with emulator.client(retry=FAST) as kernel:
            started = time.monotonic()
            results = await asyncio.gather(
                *(kernel.invocations.run("app", "work", payload=i) for i in range(n))
            )
            stats = kernel.limit_stats()
        assert sorted(r.output_as() for r in results) == list(range(n))
        assert emulator.create_count == n
        requests = len(emulator.requests)
        # The limit bound the run (at most 20 requests per 0.25 s window) ...
        assert (
            time.monotonic() - started
            >= (requests - emulator.quotas.stats.rate_rejected) / 80 - 0.25
        )
        assert stats.rate_paused_seconds > 0
        # ... but the client paced itself from X-RateLimit-Remaining: few requests found
        # the window closed (a burst of creates refused by the cap, which count against the
        # window too, can overrun it by a few when AIMD cuts the limit).
        assert stats.rate_limited == emulator.quotas.stats.rate_rejected
        assert emulator.quotas.stats.rate_rejected <= requests / 10


async def test_an_org_cap_is_shared_by_apps() -> None:
    async with KernelEmulator(quotas=Quotas(max_running=4)) as emulator:
        install_work(emulator)
        async with emulator.client(retry=FAST) as kernel:
            runs = [
                kernel.invocations.run(app, "work", payload=i)
                for i in range(20)
                for app in ("app", "other")
            ]
            results = await asyncio.gather(*runs)
        assert len(results) == 40
        assert emulator.create_count == 40
        assert emulator.quotas.stats.peak_running <= 4


async def test_an_explicit_cap_is_never_exceeded_even_by_a_server_without_one() -> None:
    async with KernelEmulator() as emulator:
        install_work(emulator)
        async with emulator.client(retry=FAST, limits=Limits(max_running_per_app=3)) as kernel:
            await asyncio.gather(*(kernel.invocations.run("app", "work") for _ in range(30)))
            assert kernel.limit_stats().apps["app"].limit == 3
        assert emulator.quotas.stats.peak_running_by_app["app"] == 3
        assert emulator.quotas.stats.concurrency_rejected == 0


async def test_a_queued_bare_create_waits_within_its_timeout_and_sends_nothing() -> None:
    release = asyncio.Event()

    async def hold(ctx: Any, payload: Any) -> None:
        await release.wait()

    async with KernelEmulator() as emulator:
        emulator.add_action("app", "hold", hold)
        async with emulator.client(limits=Limits(max_running_per_app=1)) as kernel:
            first = await kernel.invocations.create("app", "hold", async_=True)
            started = time.monotonic()
            with pytest.raises(APITimeoutError, match=r"waited .* for a slot"):
                await kernel.invocations.create("app", "hold", async_=True, timeout=0.3)
            assert time.monotonic() - started >= 0.29
            assert emulator.create_count == 1  # the queued create never went out
            # Seeing the first one finish (here: cancelling it) frees its slot at once.
            await kernel.invocations.cancel(first.id)
            second = await kernel.invocations.create("app", "hold", async_=True, timeout=1)
            assert kernel.limit_stats().apps["app"].running == 1
            release.set()
            await kernel.invocations.wait(second.id)
            assert kernel.limit_stats().apps["app"].running == 0


@pytest.mark.parametrize("how", ["retrieve", "list", "follow", "sync"])
async def test_every_way_of_seeing_an_invocation_finish_frees_its_slot(how: str) -> None:
    async with KernelEmulator() as emulator:
        install_work(emulator, seconds=0.0)
        async with emulator.client(limits=Limits(max_running_per_app=1)) as kernel:
            if how == "sync":
                done = await kernel.invocations.create("app", "work")
                assert done.is_terminal
            else:
                created = await kernel.invocations.create("app", "work", async_=True)
                await emulator.wait_finished(created.id)
                assert kernel.limit_stats().apps["app"].running == 1
                if how == "retrieve":
                    await kernel.invocations.retrieve(created.id)
                elif how == "list":
                    await kernel.invocations.list()
                else:
                    async for _ in kernel.invocations.follow(created.id):
                        pass
            assert kernel.limit_stats().apps["app"].running == 0
            await kernel.invocations.create("app", "work", async_=True, timeout=0.5)


async def test_a_failed_create_frees_its_slot(kernel_emulator: KernelEmulator) -> None:
    install_work(kernel_emulator)
    async with kernel_emulator.client(limits=Limits(max_running_per_app=1)) as kernel:
        kernel_emulator.faults.fail(500, method="POST")
        with pytest.raises(Exception, match="500"):
            await kernel.invocations.create("app", "work", async_=True)
        assert kernel.limit_stats().apps["app"].running == 0
        await kernel.invocations.create("app", "work", async_=True, timeout=0.5)


async def test_a_concurrency_429_with_retry_after_holds_that_long() -> None:
    release = asyncio.Event()

    async def hold(ctx: Any, payload: Any) -> None:
        await release.wait()

    quotas = Quotas(max_running_per_app=1, concurrency_retry_after=0.3)
    async with KernelEmulator(quotas=quotas) as emulator:
        emulator.add_action("app", "hold", hold)
        async with emulator.client() as kernel:
            await kernel.invocations.create("app", "hold", async_=True)
            asyncio.get_running_loop().call_later(0.1, release.set)  # frees the server's slot
            started = time.monotonic()
            await kernel.invocations.create("app", "hold", async_=True)  # 429, then waits
            assert time.monotonic() - started >= 0.29
        assert emulator.quotas.stats.concurrency_rejected == 1
        release.set()


async def test_without_adaptive_learning_a_concurrency_429_waits_instead_of_hammering() -> None:
    # adaptive=False keeps no learnt limit: a 429 with some of ours running must still
    # wait for one of them to finish (or a backoff), never resend at once in a loop.
    async def work(ctx: Any, payload: Any) -> Any:
        await asyncio.sleep(0.3)
        return payload

    async with KernelEmulator(quotas=Quotas(max_running_per_app=3)) as emulator:
        emulator.add_action("app", "work", work)
        async with emulator.client(retry=FAST, limits=Limits(adaptive=False)) as kernel:
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(kernel.invocations.run("app", "work", payload=i) for i in range(12))
                ),
                30,
            )
        assert sorted(r.output_as() for r in results) == list(range(12))
        assert emulator.create_count == 12
        # At most a few refusals per slot freed, not thousands.
        assert emulator.quotas.stats.concurrency_rejected <= 3 * 12


async def test_with_options_copies_share_the_queue_and_the_gate() -> None:
    async with KernelEmulator(quotas=Quotas(max_running_per_app=2)) as emulator:
        install_work(emulator)
        async with emulator.client(retry=FAST) as kernel:
            quick = kernel.with_options(timeout=30)
            await asyncio.gather(*(c.invocations.run("app", "work") for c in [kernel, quick] * 10))
            assert quick.limit_stats() == kernel.limit_stats()
            assert kernel.limit_stats().apps["app"].limit in {1, 2, 3}  # what fit, about 2
        assert emulator.quotas.stats.peak_running_by_app["app"] <= 2


async def test_waiting_tasks_go_after_retry_after_together_not_before(
    make_server: ServerFactory,
) -> None:
    """Twenty tasks in flight all get a 429 with Retry-After: 0.3. They wait together: one
    probe after the pause, then the rest; nothing is sent during the pause."""
    opened_at = 0.0
    arrivals: list[tuple[float, int]] = []

    async def handler(_: web.Request) -> web.Response:
        now = time.monotonic()
        if now < opened_at:
            arrivals.append((now, 429))
            return json_response(
                '{"code":"rate_limited","message":"slow down"}',
                429,
                headers={"Retry-After": "0.3"},
            )
        arrivals.append((now, 200))
        return json_response(INVOCATION_JSON)

    server = await make_server([("GET", "/invocations/{id}", handler)])
    async with server.client() as kernel:
        opened_at = time.monotonic() + 0.25
        await asyncio.gather(*(kernel.invocations.retrieve("inv_1") for _ in range(20)))
        stats = kernel.limit_stats()
    limited = [t for t, status in arrivals if status == 429]
    after = [t for t, status in arrivals if status == 200]
    assert len(limited) == 20  # the first burst; nobody was refused twice
    assert len(after) == 20
    assert min(after) >= max(limited) + 0.29  # nothing went before Retry-After was up
    assert stats.rate_limited == 20


async def test_waiting_for_the_rate_limit_holds_no_connection(make_server: ServerFactory) -> None:
    calls = 0

    async def handler(_: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return json_response(
                '{"code":"rate_limited","message":"slow down"}', 429, headers={"Retry-After": "0.4"}
            )
        return json_response(INVOCATION_JSON)

    server = await make_server([("GET", "/invocations/{id}", handler)])
    async with server.client(connection_limit=2) as kernel:
        await kernel.invocations.retrieve("inv_1")  # opens the pool
        calls = 0
        first = asyncio.create_task(kernel.invocations.retrieve("inv_1"))
        await asyncio.sleep(0.1)  # it got its 429: everyone waits now
        waiting = [asyncio.create_task(kernel.invocations.retrieve("inv_1")) for _ in range(10)]
        await asyncio.sleep(0.1)
        session = kernel._transport.session
        assert session is not None
        assert session.connector is not None
        assert len(session.connector._acquired) == 0  # 11 waiting, no connection held
        assert calls == 1
        await asyncio.gather(first, *waiting)
    assert calls == 12


@pytest.mark.parametrize("headers", [{}, {"X-RateLimit-Remaining": "5"}])
async def test_a_rate_limit_429_on_create_saying_no_time_is_waited_out_not_raised(
    make_server: ServerFactory, headers: dict[str, str]
) -> None:
    """A create's 429 whose body names the rate limit but gives no ``Retry-After`` (nor
    ``X-RateLimit-Remaining: 0``) had been raised at once: neither waited out as the rate
    limit nor queued as a cap. It is the rate limit: waited out with backoff."""
    posts = 0

    async def handler(_: web.Request) -> web.Response:
        nonlocal posts
        posts += 1
        if posts <= 2:
            return json_response(
                '{"code":"rate_limited","message":"slow down"}', 429, headers=headers
            )
        return json_response(INVOCATION_JSON)

    server = await make_server([("POST", "/invocations", handler)])
    async with server.client(retry=FAST) as kernel:
        created = await asyncio.wait_for(
            kernel.invocations.create("my-app", "analyze", async_=True), 10
        )
        stats = kernel.limit_stats()
    assert created.id == "inv_1"
    assert posts == 3
    assert stats.rate_limited == 2


async def test_the_budget_from_x_ratelimit_remaining_is_never_overspent(
    make_server: ServerFactory,
) -> None:
    """The server grants 5 requests per 0.2 s window and says so; 30 concurrent calls never
    get a 429 beyond the one probe per window that finds it closed."""
    window = {"start": 0.0, "count": 0}
    refused = 0

    async def handler(_: web.Request) -> web.Response:
        nonlocal refused
        now = time.monotonic()
        if now >= window["start"] + 0.2:
            window["start"], window["count"] = now, 0
        left = window["start"] + 0.2 - now
        if window["count"] >= 5:
            refused += 1
            return json_response(
                '{"code":"rate_limited","message":"slow down"}',
                429,
                headers={
                    "Retry-After": f"{left:.3f}",
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                },
            )
        window["count"] += 1
        headers = {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": str(5 - window["count"])}
        return json_response(INVOCATION_JSON, headers=headers)

    server = await make_server([("GET", "/invocations/{id}", handler)])
    async with server.client() as kernel:
        await kernel.invocations.retrieve("inv_1")  # learn the budget first
        await asyncio.gather(*(kernel.invocations.retrieve("inv_1") for _ in range(30)))
    assert len(server.requests) - refused == 31
    assert refused <= 8  # at most about one per window (31 requests / 5 per window)


async def test_a_pause_past_the_deadline_raises_at_once_and_sends_nothing(
    make_server: ServerFactory,
) -> None:
    async def handler(_: web.Request) -> web.Response:
        return json_response(
            '{"code":"rate_limited","message":"slow down"}', 429, headers={"Retry-After": "30"}
        )

    server = await make_server([("GET", "/invocations/{id}", handler)])
    async with server.client() as kernel:
        with pytest.raises(RateLimitError):  # 30 s > the 1 s deadline: not slept
            await kernel.invocations.retrieve("inv_1", timeout=1)
        started = time.monotonic()
        with pytest.raises(RateLimitError, match="past this call's deadline") as caught:
            await kernel.invocations.retrieve("inv_1", timeout=5)
        assert time.monotonic() - started < 0.5
        assert caught.value.retry_after is not None
        assert 29 < caught.value.retry_after <= 30
    assert len(server.requests) == 1  # the second call was held back by the gate


async def test_cancelling_queued_creates_leaves_no_task_or_connection() -> None:
    async def hold(ctx: Any, payload: Any) -> None:
        await asyncio.sleep(3600)

    emulator = KernelEmulator(quotas=Quotas(max_running_per_app=2))
    emulator.add_action("app", "hold", hold)
    with emulator_thread(emulator):
        kernel = emulator.client(retry=FAST)
        runs = [asyncio.create_task(kernel.invocations.run("app", "hold")) for _ in range(20)]
        while "app" not in kernel.limit_stats().apps or (
            kernel.limit_stats().apps["app"].queued < 15
        ):
            await asyncio.sleep(0.01)
        for task in runs:
            task.cancel()
        results = await asyncio.gather(*runs, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert kernel.limit_stats().apps["app"].queued == 0
        gc.collect()
        await asyncio.sleep(0.05)
        session = kernel._transport.session
        assert session is not None
        assert session.connector is not None
        assert len(session.connector._acquired) == 0
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        assert emulator.quotas.stats.peak_running_by_app["app"] <= 2
        await kernel.aclose()


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_running_per_app"):
        Limits(max_running_per_app=0)
    with pytest.raises(ValueError, match="initial"):
        Limits(initial=0)
    with pytest.raises(ValueError, match="max_rate_limit_waits"):
        RetryPolicy(max_rate_limit_waits=-1)
    kernel = AsyncKernel("sk_x", limits=Limits(max_running=7))
    assert kernel.with_options(timeout=1).limits.max_running == 7


async def test_a_list_that_never_ends_is_given_up_and_frees_nothing(
    make_server: ServerFactory,
) -> None:
    # Two creates get in and hold their slots (nobody follows them); the third is refused
    # and waits, so the app is listed, and the list pages on for ever. It is read up to
    # 2,000 invocations, then counts as failed (backed off): a list cut short would make
    # ours look ended and free their slots.
    created = 0

    async def create(request: web.Request) -> web.Response:
        nonlocal created
        created += 1
        if created > 2:
            return json_response(CONCURRENCY_429, 429)
        return json_response(INVOCATION_JSON.replace("inv_1", f"inv_{created}"), 201)

    async def pages(request: web.Request) -> web.Response:
        offset = int(request.query.get("offset", "0"))
        page = ",".join(INVOCATION_JSON.replace("inv_1", f"other_{offset + i}") for i in range(100))
        headers = {"X-Has-More": "true", "X-Next-Offset": str(offset + 100)}
        return json_response(f"[{page}]", headers=headers)

    server = await make_server([("POST", "/invocations", create), ("GET", "/invocations", pages)])
    async with server.client(retry=FAST) as kernel:
        first = await asyncio.gather(
            *(kernel.invocations.create("my-app", "analyze", async_=True) for _ in range(2))
        )
        with pytest.raises(APITimeoutError):
            await kernel.invocations.create("my-app", "analyze", async_=True, timeout=2.5)
        stats = kernel.limit_stats().apps["my-app"]
    assert [c.id for c in first] == ["inv_1", "inv_2"]
    assert stats.running == 2  # still held: nothing was freed on a list cut short
    lists = [r for r in server.requests if r.method == "GET"]
    assert 21 <= len(lists) <= 6 * 21  # a few lists (2,000 ids each), backed off; not 10,000


async def test_a_failing_list_endpoint_is_backed_off_not_asked_at_the_crowded_cadence() -> None:
    # Two clients share an app's cap, so each lists the app every 0.15 s while its creates
    # wait. Once both have seen the other's invocations there, the list endpoint starts
    # failing for good: the lists are news only, and a failing one is asked again after a
    # growing backoff, not at the cadence. Runs are unaffected, each started once.
    cap, n = 4, 24
    async with KernelEmulator(quotas=Quotas(max_running_per_app=cap)) as emulator:
        started = 0

        async def work(ctx: Any, payload: Any) -> Any:
            nonlocal started
            started += 1
            if started == 2 * cap + 1:  # well after the first 429s and lists
                emulator.faults.fail(500, times=10_000, method="GET", path="/invocations")
            await asyncio.sleep(0.25)
            return payload

        emulator.add_action("app", "work", work)
        once = RetryPolicy(max_retries=0)  # one request per list: failed lists are counted
        async with emulator.client(retry=once) as a, emulator.client(retry=once) as b:
            done = await asyncio.gather(
                *(k.invocations.run("app", "work", payload=i) for i in range(n) for k in (a, b))
            )
        assert sorted(r.output_as() for r in done) == sorted(list(range(n)) * 2)
        assert emulator.create_count == 2 * n  # none started twice
        # Some 2.5 s of runs left when the lists begin failing: at the cadence that was
        # about 30 failed lists; backed off (1 s, 2 s, 4 s...) two or three per client.
        assert emulator.faults.stats.errors <= 12
