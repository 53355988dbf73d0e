"""Limits shared through a real Redis (``redis-server`` on 127.0.0.1): processes share one
cap without hammering it, a killed worker's slots come back, and Redis failing mid-run
leaves every invocation finished exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kernel_async import AsyncKernel, Limits, RetryPolicy
from kernel_async.testing import KernelEmulator, Quotas

from ._redis import REDIS_SERVER, RedisServer, free_port, redis_process, redis_url

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (apt-get install redis-server)"
)
__all__ = ["redis_process", "redis_url"]  # fixtures

Warnings = Callable[[], list[logging.LogRecord]]


@pytest.fixture
def redis_warnings(caplog: pytest.LogCaptureFixture) -> Warnings:
    """The warnings logged so far that Redis failed (the client going uncoordinated)."""
    caplog.set_level(logging.WARNING, logger="kernel_async")
    return lambda: [r for r in caplog.records if "Shared limits on Redis failed" in r.message]


def install(emulator: KernelEmulator, seconds: float = 0.05) -> asyncio.Event:
    gate = asyncio.Event()

    async def work(ctx: Any, payload: Any) -> Any:
        await asyncio.sleep(seconds)
        return payload

    async def hold(ctx: Any, payload: Any) -> Any:
        await gate.wait()
        return payload

    emulator.add_action("app", "work", work)
    emulator.add_action("app", "hold", hold)
    return gate


@contextlib.asynccontextmanager
async def two_clients(
    emulator: KernelEmulator, policy: RetryPolicy, url: str
) -> AsyncIterator[tuple[AsyncKernel, AsyncKernel]]:
    """Two clients sharing limits through ``url``, as two processes would."""
    limits = Limits(shared=url)
    async with (
        emulator.client(retry=policy, limits=limits) as one,
        emulator.client(retry=policy, limits=limits) as two,
    ):
        yield one, two


async def test_two_clients_share_one_cap_through_redis(
    redis_url: str, fast_policy: RetryPolicy
) -> None:
    """Two clients (as two processes would) against a cap of 6: the shared window learns
    the cap once, so few creates are refused; every invocation runs once."""
    async with KernelEmulator(quotas=Quotas(max_running=6)) as emulator:
        install(emulator)
        async with two_clients(emulator, fast_policy, redis_url) as (one, two):
            results = await asyncio.gather(
                *(
                    k.invocations.run("app", "work", payload=i)
                    for i in range(30)
                    for k in (one, two)
                )
            )
        assert [r.status for r in results] == ["succeeded"] * 60
        assert emulator.create_count == 60
        assert emulator.quotas.stats.peak_running <= 6
        # Unshared, each client slow-starts and overshoots on its own (and again after
        # every cut); shared, the first 429 teaches the whole fleet the cap.
        assert emulator.quotas.stats.concurrency_rejected <= 6


WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from kernel_async import AsyncKernel, Limits

    async def main():
        kernel = AsyncKernel(
            api_key=sys.argv[1], base_url=sys.argv[2], limits=Limits(shared=sys.argv[3])
        )
        for i in range(3):
            await kernel.invocations.create("app", "hold", async_=True, payload=i)
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_a_killed_workers_slots_come_back_within_the_lease(
    redis_url: str, redis_process: RedisServer, fast_policy: RetryPolicy
) -> None:
    async with KernelEmulator(quotas=Quotas(max_running=3)) as emulator:
        gate = install(emulator)
        url = f"{redis_url}?lease=1"
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            emulator.api_key,
            emulator.url,
            url,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert worker.stdout is not None
            assert (await asyncio.wait_for(worker.stdout.readline(), 60)).strip() == b"ready"
            assert await redis_process.zcard_running() == 3  # the worker holds the cap
        finally:
            worker.send_signal(signal.SIGKILL)
            await worker.wait()
        gate.set()  # its invocations end on the service; the killed worker never saw it
        async with emulator.client(retry=fast_policy, limits=Limits(shared=url)) as kernel:
            results = await asyncio.gather(
                *(kernel.invocations.run("app", "work", payload=i, timeout=30) for i in range(3))
            )
        assert [r.status for r in results] == ["succeeded"] * 3
        assert emulator.create_count == 6


async def test_redis_stopping_mid_run_falls_back_with_one_warning(
    redis_url: str,
    redis_process: RedisServer,
    fast_policy: RetryPolicy,
    redis_warnings: Warnings,
) -> None:
    async with KernelEmulator(quotas=Quotas(max_running=5)) as emulator:
        install(emulator)
        async with two_clients(emulator, fast_policy, redis_url) as (one, two):
            done = 0

            async def run(kernel: AsyncKernel, i: int) -> str:
                nonlocal done
                result = await kernel.invocations.run("app", "work", payload=i, timeout=60)
                done += 1
                if done == 10:
                    redis_process.stop()  # Redis goes away mid-run
                return result.status

            statuses = await asyncio.gather(*(run(k, i) for i in range(25) for k in (one, two)))
        assert statuses == ["succeeded"] * 50
        assert emulator.create_count == 50  # nothing lost, nothing sent twice
        assert sorted(v.payload_as() for v in emulator.snapshot()) == sorted(list(range(25)) * 2)
        warnings = redis_warnings()
        assert 1 <= len(warnings) <= 2  # once per client at most: one per process


async def runs_each_once(policy: RetryPolicy, *, cap: int, n: int) -> None:
    """A gather of ``n`` runs under an org cap of ``cap`` (shared limits as the environment
    says): every one succeeds, each created once."""
    async with KernelEmulator(quotas=Quotas(max_running=cap)) as emulator:
        install(emulator)
        async with emulator.client(retry=policy) as kernel:
            results = await asyncio.gather(
                *(kernel.invocations.run("app", "work", payload=i) for i in range(n))
            )
        assert [r.status for r in results] == ["succeeded"] * n
        assert emulator.create_count == n


async def test_redis_unreachable_from_the_start_is_uncoordinated_mode(
    fast_policy: RetryPolicy, redis_warnings: Warnings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``KERNEL_LIMITS_URL`` naming a closed port: creates go on, one warning."""
    monkeypatch.setenv("KERNEL_LIMITS_URL", f"redis://127.0.0.1:{free_port()}/0")
    await runs_each_once(fast_policy, cap=4, n=12)
    warnings = redis_warnings()
    assert len(warnings) == 1


async def test_a_malformed_kernel_limits_url_warns_and_fails_no_create(
    fast_policy: RetryPolicy, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL that cannot even be parsed (an unclosed IPv6 bracket) had made the first
    create raise ValueError: it is ignored with one warning, like any other bad URL."""
    caplog.set_level(logging.WARNING, logger="kernel_async")
    monkeypatch.setenv("KERNEL_LIMITS_URL", "redis://[::1/0")
    await runs_each_once(fast_policy, cap=2, n=6)
    assert len([r for r in caplog.records if "shared limits' URL" in r.message]) == 1


@pytest.mark.parametrize(
    "url", ["http://user:s3cret@127.0.0.1:1/0", "s3cret", "https://:s3cret@h/"]
)
def test_a_url_that_is_not_redis_is_ignored_without_showing_it(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning names the scheme, never the URL: it may carry a password."""
    from kernel_async._limits import Backpressure

    caplog.set_level(logging.WARNING, logger="kernel_async")
    assert Backpressure(Limits(shared=url), 0.5).shared() is None
    (record,) = [r for r in caplog.records if "shared limits' URL" in r.getMessage()]
    assert "s3cret" not in record.getMessage()


def test_an_empty_shared_url_turns_the_environment_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from kernel_async._limits import Backpressure

    monkeypatch.setenv("KERNEL_LIMITS_URL", "redis://127.0.0.1:1/0")
    assert Backpressure(Limits(shared=""), 0.5).shared() is None
    assert Backpressure(Limits(), 0.5).shared() is not None
    os.environ.pop("KERNEL_LIMITS_URL")


async def test_a_live_workers_slots_outlive_their_lease_by_renewal(
    redis_url: str,
    redis_process: RedisServer,
    fast_policy: RetryPolicy,
    redis_warnings: Warnings,
) -> None:
    """Slots are renewed while their invocations run: past several leases, still held."""
    async with KernelEmulator(quotas=Quotas(max_running=3)) as emulator:
        gate = install(emulator)
        limits = Limits(shared=f"{redis_url}?lease=0.3")
        async with emulator.client(retry=fast_policy, limits=limits) as kernel:
            created = await kernel.invocations.create("app", "hold", async_=True)
            await asyncio.sleep(1.2)  # four leases
            assert await redis_process.zcard_running() == 1
            gate.set()
            await kernel.invocations.wait(created.id)
            for _ in range(200):  # freed (by a task) once seen finished
                if await redis_process.zcard_running() == 0:
                    break
            assert await redis_process.zcard_running() == 0
    assert not redis_warnings()


async def test_a_concurrency_429s_long_retry_after_pauses_the_fleet_no_longer_than_locally(
    redis_url: str, redis_warnings: Warnings
) -> None:
    """Another tenant holds the cap and the service asks for an hour: like the local
    hold, the fleet's pause is capped by ``max_retry_after`` (it had paused every worker
    for the whole hour)."""
    quotas = Quotas(max_running=1, concurrency_retry_after=3600)
    policy = RetryPolicy(max_retries=2, initial_delay=0.02, max_delay=0.1, max_retry_after=0.5)
    async with KernelEmulator(quotas=quotas) as emulator:
        gate = install(emulator)
        async with (
            emulator.client(retry=policy, limits=Limits(shared="")) as tenant,
            emulator.client(retry=policy, limits=Limits(shared=redis_url)) as kernel,
        ):
            await tenant.invocations.create("app", "hold", async_=True)  # holds the cap
            asyncio.get_running_loop().call_later(0.3, gate.set)
            created = await asyncio.wait_for(
                kernel.invocations.create("app", "hold", async_=True), 10
            )
        assert created.id
        assert emulator.create_count == 2
    assert not redis_warnings()


async def test_many_apps_at_once_do_not_exhaust_the_redis_connection_pool(
    redis_url: str, fast_policy: RetryPolicy, redis_warnings: Warnings
) -> None:
    """150 apps creating at once ask Redis 150 things at once: more than redis-py's pool
    holds (it raises MaxConnectionsError past 100), which had made the client give up on
    Redis. The calls wait their turn for a connection instead."""

    async def work(ctx: Any, payload: Any) -> Any:
        await asyncio.sleep(0.05)
        return payload

    apps = [f"app{i}" for i in range(150)]
    async with KernelEmulator() as emulator:
        for app in apps:
            emulator.add_action(app, "work", work)
        async with emulator.client(retry=fast_policy, limits=Limits(shared=redis_url)) as kernel:
            results = await asyncio.wait_for(
                asyncio.gather(*(kernel.invocations.run(app, "work") for app in apps)), 60
            )
        assert [r.status for r in results] == ["succeeded"] * len(apps)
        assert emulator.create_count == len(apps)
    assert not redis_warnings()
