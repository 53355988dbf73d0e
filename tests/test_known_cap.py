"""Admission starts from the cap the service tells (a project's limits), read once."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from kernel_async import RetryPolicy
from kernel_async.testing import KernelEmulator, Quotas

from .conftest import INVOCATION_JSON, ServerFactory, json_response

LIMITS_PATH = "/org/projects/{}/limits"


def install_wait(emulator: KernelEmulator, gate: asyncio.Event) -> None:
    async def wait(ctx: Any, payload: Any) -> Any:
        await gate.wait()
        return payload

    emulator.add_action("app", "wait", wait)


def limits_reads(emulator: KernelEmulator, project: str) -> int:
    path = LIMITS_PATH.format(project)
    return sum(1 for r in emulator.requests if r.method == "GET" and r.path == path)


async def test_a_project_cap_seeds_the_limit_once_for_every_create(
    fast_policy: RetryPolicy,
) -> None:
    """Twelve creates at once in a project capped at 12: all go in the first round trip
    (slow start from `Limits.initial` would send 4), none is refused, and the limits are
    read once."""
    quotas = Quotas(max_running=12, projects={"prod": 12})
    async with KernelEmulator(quotas=quotas) as emulator:
        gate = asyncio.Event()
        install_wait(emulator, gate)
        async with emulator.client(retry=fast_policy, project="prod") as kernel:
            creates = [
                kernel.invocations.create("app", "wait", async_=True, payload=i) for i in range(12)
            ]
            created = await asyncio.gather(*creates)
            stats = kernel.limit_stats().apps["app"]
            assert (stats.limit, stats.running, stats.learnt) == (12, 12, False)
            assert stats.source == "told"
            gate.set()
            for inv in created:
                await kernel.invocations.wait(inv.id)
        assert limits_reads(emulator, "prod") == 1
        assert emulator.quotas.stats.concurrency_rejected == 0
        assert emulator.create_count == 12


async def test_an_unknown_project_is_not_an_error_and_is_not_asked_again(
    fast_policy: RetryPolicy,
) -> None:
    quotas = Quotas(max_running=12, projects={"prod": 12})
    async with KernelEmulator(quotas=quotas) as emulator:
        gate = asyncio.Event()
        gate.set()
        install_wait(emulator, gate)
        async with emulator.client(retry=fast_policy, project_id="proj_missing") as kernel:
            results = await asyncio.gather(
                *(kernel.invocations.run("app", "wait", payload=i) for i in range(6))
            )
            stats = kernel.limit_stats().apps["app"]
        assert [r.status for r in results] == ["succeeded"] * 6
        assert limits_reads(emulator, "proj_missing") == 1
        assert stats.learnt is False
        # slow start, not the (unknown) project's cap: no limit seen
        assert (stats.limit, stats.source) == (None, "none")


async def test_a_project_without_a_cap_or_without_rights_starts_slow(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    """403 on the limits (a key that may not read them) or ``null``: create as before."""
    answers = {
        "locked": json_response('{"code":"forbidden","message":"no"}', 403),
        "open": json_response('{"max_concurrent_invocations":null}'),
        "junk": json_response("<html>"),
    }

    async def limits(request: web.Request) -> web.Response:
        return answers[request.match_info["name"]]

    async def create(_: web.Request) -> web.Response:
        return json_response(INVOCATION_JSON)

    server = await make_server(
        [("GET", "/org/projects/{name}/limits", limits), ("POST", "/invocations", create)]
    )
    from kernel_async import AsyncKernel

    for project in answers:
        async with AsyncKernel(
            api_key="k", base_url=server.url, retry=fast_policy, project=project
        ) as kernel:
            created = await kernel.invocations.create("my-app", "analyze", async_=True)
            assert created.id == "inv_1"
            stats = kernel.limit_stats().apps["my-app"]
            assert (stats.limit, stats.source) == (None, "none")  # nothing seeded
    reads = [r.path for r in server.requests if r.method == "GET"]
    assert reads == [LIMITS_PATH.format(p) for p in answers]


async def test_a_project_limits_read_that_hangs_delays_the_creates_briefly_only(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    """The limits are a hint: a read that never answers had held every create for the
    client's whole timeout (and its retries). It is given up after `PROJECT_CAP_TIMEOUT`,
    once, and the creates go as if nothing was told."""
    from kernel_async import AsyncKernel
    from kernel_async._limits._seed import PROJECT_CAP_TIMEOUT

    release = asyncio.Event()

    async def limits(_: web.Request) -> web.Response:
        await release.wait()
        return json_response('{"max_concurrent_invocations":5}')

    async def create(_: web.Request) -> web.Response:
        return json_response(INVOCATION_JSON)

    server = await make_server(
        [("GET", "/org/projects/{name}/limits", limits), ("POST", "/invocations", create)]
    )
    try:
        async with AsyncKernel(
            api_key="k", base_url=server.url, retry=fast_policy, project="slow"
        ) as kernel:
            created = await asyncio.wait_for(
                asyncio.gather(
                    *(kernel.invocations.create("my-app", "analyze", async_=True) for _ in range(5))
                ),
                PROJECT_CAP_TIMEOUT * 4,
            )
            assert [c.id for c in created] == ["inv_1"] * 5
            stats = kernel.limit_stats().apps["my-app"]
            assert (stats.limit, stats.source) == (None, "none")  # nothing seeded
    finally:
        release.set()
    reads = [r.path for r in server.requests if r.path.endswith("/limits")]
    assert reads == [LIMITS_PATH.format("slow")]  # once, never retried
