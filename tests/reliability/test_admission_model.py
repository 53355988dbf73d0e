"""A model-based test of the admission / rate gate / map() machine against a local quota
server: random programs of runs (with and without deadlines), unwatched creates, viewers
that leave after one event, finishes on the server, callers cancelling, map() calls with a
slow consumer that leaves at any point, concurrency and rate 429s with odd Retry-After
values, with_options copies, and a final settle or aclose().

Invariants: the client never runs more than the cap; every payload is created at most
once; a map() never creates more than what was read plus its concurrency; a timed-out
call says so with a typed error; once everything ended on the server, the client holds no
slot (reconciliation included) and a fresh round of runs gets through; after aclose()
every pending call ends with a typed error or its result, and no task of the SDK is left.
Examples scale with KERNEL_ASYNC_CHAOS_SCALE (``nox -s chaos``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel_async import (
    AsyncKernel,
    KernelError,
    Limits,
    RetryPolicy,
)

from .._fake_api import FakeAPI, serve
from .conftest import FIGURES, SCALE, scaled

CAP = 3
GUARD = 20.0  # bounds what would otherwise hang: a guard, not a measurement
POLICY = RetryPolicy(
    max_retries=2, initial_delay=0.005, max_delay=0.02, max_retry_after=0.05, jitter=0.0
)
TOTALS: Counter[str] = Counter()


@dataclass
class QuotaServer(FakeAPI):
    """Invocations run until the program finishes them; a cap of `CAP` running per app
    (a concurrency 429 beyond it); 429s injected into the next creates."""

    creates: Counter[str] = field(default_factory=Counter)  # payload tag -> creates
    inject: list[tuple[str, str]] = field(default_factory=list)
    peak: int = 0

    async def create(self, request: web.Request) -> web.StreamResponse:
        payload = json.loads(await request.read()).get("payload")
        if self.inject:
            kind, retry_after = self.inject.pop(0)
            code = "concurrency_limit_exceeded" if kind == "concurrency" else "rate_limited"
            return _error(429, code, {"Retry-After": retry_after})
        if len(self.running()) >= CAP:
            return _error(429, "concurrency_limit_exceeded", {})
        id = f"inv_{next(self._ids)}"
        self.creates[payload] += 1
        self.status[id] = "succeeded" if payload and "auto" in payload else "running"
        self.peak = max(self.peak, len(self.running()))
        body = {"id": id, "action_name": "work", "status": self.status[id]}
        return web.json_response(body, status=202)


def _error(status: int, code: str, headers: dict[str, str]) -> web.Response:
    return web.json_response({"code": code, "message": code}, status=status, headers=headers)


steps = st.one_of(
    st.tuples(st.just("run"), st.sampled_from([None, 0.05, 0.3]), st.booleans()),
    st.tuples(st.just("create")),
    st.tuples(st.just("leave")),  # a viewer that leaves after the first event
    st.tuples(st.just("finish"), st.integers(0, 5)),
    st.tuples(st.just("cancel"), st.integers(0, 5)),
    st.tuples(st.just("map"), st.sampled_from([None, 1, 2]), st.integers(0, 4)),
    st.tuples(
        st.just("inject"),
        st.sampled_from(["concurrency", "rate"]),
        st.sampled_from(["0", "0.01", "3600", "abc", "1e9", "-1"]),
    ),
    st.tuples(st.just("copy")),
)


@dataclass
class Play:
    server: QuotaServer
    kernel: AsyncKernel
    client: AsyncKernel
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    maps: list[tuple[str, int | None, list[int]]] = field(default_factory=list)
    tags: itertools.count[int] = field(default_factory=itertools.count)

    def tag(self, prefix: str) -> str:
        return f"{prefix}{next(self.tags)}"

    async def step(self, step: tuple[Any, ...]) -> None:
        kind = step[0]
        invocations = self.client.invocations
        if kind == "run":
            _, timeout, cancel = step
            self.spawn(
                invocations.run(
                    "app", "work", payload=self.tag("r"), timeout=timeout, cancel_on_timeout=cancel
                )
            )
        elif kind == "create":
            self.spawn(invocations.create("app", "work", payload=self.tag("c"), async_=True))
        elif kind == "leave":
            self.spawn(self.leave(self.client, self.tag("v")))
        elif kind == "finish" and self.server.running():
            running = self.server.running()
            self.server.status[running[step[1] % len(running)]] = "succeeded"
        elif kind == "cancel" and self.tasks:
            self.tasks[step[1] % len(self.tasks)].cancel()
        elif kind == "map":
            _, concurrency, take = step
            self.spawn(self.map(self.client, self.tag("m"), concurrency, take))
        elif kind == "inject":
            self.server.inject.append((step[1], step[2]))
        elif kind == "copy":
            self.client = self.kernel.with_options(max_retries=1)
        for _ in range(4):  # let the machine move
            await asyncio.sleep(0.002)
        assert self.server.peak <= CAP
        stats = self.kernel.limit_stats().apps.get("app")
        assert stats is None or stats.running <= CAP

    def spawn(self, coro: Any) -> None:
        self.tasks.append(asyncio.create_task(coro))

    async def leave(self, client: AsyncKernel, tag: str) -> None:
        created = await client.invocations.create("app", "work", payload=tag, async_=True)
        async with client.invocations.follow(created.id) as events:
            await events.__anext__()

    async def map(self, client: AsyncKernel, tag: str, concurrency: int | None, take: int) -> None:
        read: list[int] = []
        self.maps.append((tag, concurrency, read))
        payloads = (f"{tag}-{i}" for i in itertools.count())
        async with client.invocations.map(
            "app", "work", payloads, concurrency=concurrency
        ) as results:
            async for result in results:
                read.append(result.index)
                if len(read) >= take:
                    break

    def check_maps(self) -> None:
        for tag, concurrency, read in self.maps:
            assert len(set(read)) == len(read)  # one result per payload
            created = sum(n for t, n in self.server.creates.items() if t.startswith(tag + "-"))
            bound = len(read) + (concurrency if concurrency is not None else 32)
            assert created <= bound, (tag, created, read)

    async def settle(self) -> None:
        """Everything ends on the server; every call ends; no slot stays held."""
        server = self.server
        server.inject.clear()

        async def drain() -> None:
            while not all(task.done() for task in self.tasks) or server.running():
                for id in server.running():
                    server.status[id] = "succeeded"
                await asyncio.sleep(0.005)

        await asyncio.wait_for(drain(), GUARD)
        for task in self.tasks:
            if not task.cancelled() and task.exception() is not None:
                error = task.exception()
                assert isinstance(error, KernelError), repr(error)
                TOTALS[type(error).__name__] += 1
        # A fresh round gets through: slots of unwatched ones are freed by reconciling.
        probes = [
            self.kernel.invocations.run("app", "work", payload=self.tag("auto"))
            for _ in range(2 * CAP)
        ]
        await asyncio.wait_for(asyncio.gather(*probes), GUARD)
        # A slot is freed when two lists in a row miss its invocation (50 ms apart).
        for _ in range(100):
            stats = self.kernel.limit_stats().apps["app"]
            if (stats.running, stats.queued) == (0, 0):
                break
            await asyncio.sleep(0.01)
        assert (stats.running, stats.queued) == (0, 0)

    async def close(self) -> None:
        """aclose(): every pending call ends at once, typed; nothing of the SDK is left."""
        await self.kernel.aclose()
        done, pending = await asyncio.wait(self.tasks, timeout=GUARD) if self.tasks else ((), ())
        assert not pending
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                assert isinstance(task.exception(), KernelError), repr(task.exception())
        for _ in range(3):
            await asyncio.sleep(0)
        left = [t for t in asyncio.all_tasks() if "kernel_async" in repr(t.get_coro())]
        assert left == []
        TOTALS["closed"] += 1


async def play(program: list[tuple[Any, ...]], end: str) -> None:
    server = QuotaServer()
    async with serve(server) as url:
        kernel = AsyncKernel(
            "sk_model", base_url=url, retry=POLICY, limits=Limits(max_running_per_app=CAP)
        )
        model = Play(server, kernel, kernel)
        try:
            for step in program:
                await model.step(step)
                TOTALS[step[0]] += 1
            if end == "settle":
                await model.settle()
            else:
                await model.close()
            model.check_maps()
        finally:
            await kernel.aclose()
            for task in model.tasks:
                task.cancel()
            await asyncio.gather(*model.tasks, return_exceptions=True)


@settings(
    max_examples=scaled(40),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=SCALE <= 1,
)
@given(
    program=st.lists(steps, min_size=1, max_size=scaled(14)),
    end=st.sampled_from(["settle", "aclose"]),
)
def test_the_admission_machine_holds_its_invariants(
    program: list[tuple[Any, ...]], end: str
) -> None:
    asyncio.run(play(program, end))
    FIGURES["admission model"] = dict(TOTALS)
