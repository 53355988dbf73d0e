"""What `with_options` copies share: the connection pool always; the rate-limit gate and
the admission queue only between copies that talk to the same server with the same key."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from kernel_async import Limits, RateLimitError, RetryPolicy
from kernel_async.testing import KernelEmulator, Quotas

from .conftest import API_KEY, INVOCATION_JSON, ServerFactory, json_response

OTHER_KEY = "sk_test_other_0123456789"
#: Gives up on the first 429, so the test does not wait out the minute it asks for.
NO_WAITS = RetryPolicy(max_retries=0, max_rate_limit_waits=0)


def rate_limited_for_a_minute(request: web.Request) -> web.Response:
    headers = {"Retry-After": "60", "X-RateLimit-Remaining": "0"}
    return json_response('{"code":"rate_limited","message":"slow down"}', 429, headers)


def ok(request: web.Request) -> web.Response:
    return json_response(INVOCATION_JSON)


async def test_a_rate_limit_of_one_server_does_not_hold_calls_to_another(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    async def limited(request: web.Request) -> web.Response:
        return rate_limited_for_a_minute(request)

    async def fine(request: web.Request) -> web.Response:
        return ok(request)

    a = await make_server([("GET", "/invocations/{id}", limited)])
    b = await make_server([("GET", "/invocations/{id}", fine)])
    async with a.client(retry=NO_WAITS) as kernel:
        with pytest.raises(RateLimitError):
            await kernel.invocations.retrieve("inv_1")  # server A pauses for a minute
        other = kernel.with_options(base_url=b.url, retry=fast_policy)
        assert (await other.invocations.retrieve("inv_1", timeout=2)).id == "inv_1"
        assert other.limit_stats().rate_limited == 0
        assert kernel.limit_stats().rate_paused_seconds > 0  # A paused, B did not
    assert len(b.requests) == 1


async def test_a_rate_limit_of_one_key_does_not_hold_calls_with_another(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    async def by_key(request: web.Request) -> web.Response:
        if request.headers["Authorization"] == f"Bearer {API_KEY}":
            return rate_limited_for_a_minute(request)
        return ok(request)

    server = await make_server([("GET", "/invocations/{id}", by_key)])
    async with server.client(retry=NO_WAITS) as kernel:
        with pytest.raises(RateLimitError):
            await kernel.invocations.retrieve("inv_1")
        other = kernel.with_options(api_key=OTHER_KEY, retry=fast_policy)
        assert (await other.invocations.retrieve("inv_1", timeout=2)).id == "inv_1"
        same = kernel.with_options(timeout=2)  # same server, same key: shared
        with pytest.raises(RateLimitError, match="nothing was sent"):
            await same.invocations.retrieve("inv_1")  # held by the pause it shares
        assert same.limit_stats() == kernel.limit_stats()
        assert other.limit_stats().rate_limited == 0
        keys = repr(list(kernel._transport._backpressures))
    assert API_KEY not in keys
    assert OTHER_KEY not in keys
    assert len(server.requests) == 2


async def test_a_copy_in_another_project_shares_the_rate_gate_but_queues_apart(
    make_server: ServerFactory,
) -> None:
    # The rate limit is the account's: a pause the parent met holds the copy too. The
    # admission queue is the project's: its lists and its cap are the project's own.
    async def limited(request: web.Request) -> web.Response:
        return rate_limited_for_a_minute(request)

    server = await make_server([("GET", "/invocations/{id}", limited)])
    async with server.client(retry=NO_WAITS, project="A") as kernel:
        with pytest.raises(RateLimitError):
            await kernel.invocations.retrieve("inv_1")
        in_b = kernel.with_options(project="B", timeout=2)
        with pytest.raises(RateLimitError, match="nothing was sent"):
            await in_b.invocations.retrieve("inv_1")
        assert kernel._backpressure is not in_b._backpressure
        assert kernel._backpressure.gate() is in_b._backpressure.gate()
        paused = kernel.limit_stats().rate_paused_seconds
        assert paused > 0
        assert in_b.limit_stats().rate_paused_seconds == paused
        assert kernel.with_options(project="A")._backpressure is kernel._backpressure
    assert len(server.requests) == 1


async def test_each_project_starts_from_its_own_cap() -> None:
    emulator = KernelEmulator(quotas=Quotas(max_running=5, projects={"A": 2, "B": 5}))

    async def act(ctx: object, payload: object) -> None:
        await asyncio.sleep(0.05)

    emulator.add_action("app", "act", act)
    async with emulator, emulator.client(project="A") as kernel:
        in_b = kernel.with_options(project="B")
        await asyncio.gather(
            kernel.invocations.run("app", "act"), in_b.invocations.run("app", "act")
        )
        a, b = kernel.limit_stats().apps["app"], in_b.limit_stats().apps["app"]
    assert (a.source, a.limit) == ("told", 2)
    assert (b.source, b.limit) == ("told", 5)


@pytest.mark.parametrize("restated", [(None, "N"), ("I", None)])
async def test_a_copy_restating_its_own_project_keeps_its_queue_and_max_running(
    restated: tuple[str | None, str | None],
) -> None:
    """A client made with project_id="I", project="N": a copy given project="N" (or
    project_id="I") names the same project: it keeps the other spelling, the client's
    admission queue, and so Limits(max_running=1) across both (found by a probe: a copy
    naming a project dropped the other spelling, got a queue of its own and ran two)."""
    emulator = KernelEmulator()
    running, peak = 0, 0

    async def hold(ctx: object, payload: object) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0.2)
        finally:
            running -= 1

    emulator.add_action("a", "x", hold)
    async with emulator:
        async with emulator.client(
            project_id="I", project="N", limits=Limits(max_running=1)
        ) as kernel:
            copy = kernel.with_options(project_id=restated[0], project=restated[1])
            assert (copy.project_id, copy.project) == ("I", "N")
            await asyncio.gather(kernel.invocations.run("a", "x"), copy.invocations.run("a", "x"))
            assert peak == 1
            assert copy._backpressure is kernel._backpressure
