"""The admission queue's lists of every app's invocations against odd servers and busy
organisations (found probing commit e2cf834 from outside): an app name spelled otherwise,
other apps' churn between pages, an app at its own cap in a busy org, a large org under a
tight rate limit, pages that repeat for ever, and (a known bug, older than those lists) a
copy for another project sharing its parent's queue.

Servers: the emulator on 127.0.0.1, with a middleware of the test's own in front of its
``GET /invocations`` where a server's oddity is needed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from kernel_async import RetryPolicy
from kernel_async.testing import KernelEmulator, Quotas

from .conftest import emulator_thread

FAST = RetryPolicy(max_retries=8, initial_delay=0.02, max_delay=0.1)

Rewrite = Callable[[web.Request, list[dict[str, Any]], dict[str, str]], Awaitable[Any]]


@contextlib.contextmanager
def serve(emulator: KernelEmulator, rewrite: Rewrite | None = None) -> Iterator[None]:
    """Run ``emulator`` on its own thread; ``rewrite`` sees (and may change) every page of
    ``GET /invocations``: it returns ``(items, headers)``."""
    if rewrite is not None:

        @web.middleware
        async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
            response: web.StreamResponse = await handler(request)
            listing = request.method == "GET" and request.path == "/invocations"
            if listing and response.status == 200 and isinstance(response, web.Response):
                assert response.body is not None
                items, headers = await rewrite(
                    request, json.loads(_body(response)), dict(response.headers)
                )
                kept = {k: v for k, v in headers.items() if k.lower().startswith("x-")}
                return web.json_response(items, headers=kept)
            return response

        emulator.app.middlewares.insert(0, middleware)
    with emulator_thread(emulator):
        yield


def _body(response: web.Response) -> bytes:
    body = response.body
    assert isinstance(body, (bytes, bytearray))
    return bytes(body)


def frees_seen(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "ended unseen" in r.getMessage()]


@pytest.mark.parametrize("form", ["lower", "nfc"])
async def test_an_org_list_that_spells_the_app_name_otherwise_frees_no_slot_of_ours(
    form: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The app is created as "Mine" (or "café" in NFD); the server's unfiltered list reports
    # it lower-cased (or NFC-normalised), as a service matching names case-insensitively or
    # storing them normalised would. The app-filtered lists of e2cf834's parent found ours
    # by the server's match; the exact `==` on app_name finds none, so every list frees
    # every slot of ours: 24 concurrency 429s for 12 invocations (1 before).
    name = unicodedata.normalize("NFD", "café") if form == "nfc" else "Mine"

    async def rewrite(request: web.Request, items: Any, headers: Any) -> Any:
        if "app_name" not in request.query:
            for item in items:
                item["app_name"] = (
                    item["app_name"].lower()
                    if form == "lower"
                    else unicodedata.normalize("NFC", item["app_name"])
                )
        return items, headers

    async def act(ctx: Any, payload: Any) -> None:
        await asyncio.sleep(0.5)

    caplog.set_level(logging.INFO, logger="kernel_async")
    emulator = KernelEmulator(quotas=Quotas(app_caps={name: 2}))
    emulator.add_action(name, "a", act)
    with serve(emulator, rewrite):
        async with emulator.client(retry=FAST) as kernel:
            runs = await asyncio.gather(*(kernel.invocations.run(name, "a") for _ in range(12)))
    assert all(run.status == "succeeded" for run in runs)
    assert emulator.create_count == 12
    assert frees_seen(caplog) == []  # none of ours ended unseen: all were followed
    assert emulator.quotas.stats.concurrency_rejected <= 3


async def test_other_apps_ending_between_pages_do_not_free_our_running_slots(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Offset pagination, newest first. Ours (2, at the app's cap of 2, running 4 s) are the
    # oldest; 100 of another app start after them and run 1.5 s. A list's first page of
    # running ones (100 of the other app) is slow; meanwhile the other app's end, so the
    # page at offset 100 is empty: ours are in neither page, and their slots are freed while
    # they run (2 more creates go and are refused). App-filtered lists never page through
    # other apps' churn. Natural churn without the slow page does it too, less often
    # (~100 other invocations turning over: one wrong free in 2 of 3 runs of 5 s).
    async def rewrite(request: web.Request, items: Any, headers: Any) -> Any:
        query = request.query
        first_page = query.get("status") == "running" and query.get("offset", "0") == "0"
        if first_page and len(items) == 100:
            await asyncio.sleep(1.5)
        return items, headers

    async def long(ctx: Any, payload: Any) -> None:
        await asyncio.sleep(4.0)

    async def noise(ctx: Any, payload: Any) -> None:
        await asyncio.sleep(1.5)

    caplog.set_level(logging.INFO, logger="kernel_async")
    emulator = KernelEmulator(quotas=Quotas(app_caps={"mine": 2}))
    emulator.add_action("mine", "a", long)
    emulator.add_action("other", "n", noise)
    with serve(emulator, rewrite):
        async with emulator.client(retry=FAST) as kernel, emulator.client(retry=FAST) as other:
            mine = [asyncio.create_task(kernel.invocations.run("mine", "a")) for _ in range(4)]
            while emulator.quotas.running("mine") < 2:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            await asyncio.gather(
                *(other.invocations.create("other", "n", async_=True) for _ in range(100))
            )
            runs = await asyncio.gather(*mine)
    assert all(run.status == "succeeded" for run in runs)
    assert frees_seen(caplog) == []  # ours ran throughout: none ended unseen
    assert emulator.quotas.stats.concurrency_rejected <= 3


async def test_an_app_at_its_own_cap_in_a_busy_org_pays_few_429s() -> None:
    # Kernel caps each app (5/10/20) as well as the org. Our app sits at its own cap of 3
    # (9 invocations of 2 s: ideal 6 s) while ~30 invocations of another app come and go,
    # far from any org cap. Each dip of the org's count under the most it ever showed
    # reads as room ("the most the org ran"); a create goes, is refused, resets, and the
    # next dip under the next peak does it again: 0.8-1.0 concurrency 429s per invocation
    # (0.22 on e2cf834's parent, and with no other app). The issue's target is <= 0.3.
    rng = random.Random(4)

    async def long(ctx: Any, payload: Any) -> None:
        await asyncio.sleep(2.0)

    async def noise(ctx: Any, payload: Any) -> None:
        await asyncio.sleep(payload)

    emulator = KernelEmulator(quotas=Quotas(app_caps={"mine": 3}))
    emulator.add_action("mine", "a", long)
    emulator.add_action("other", "n", noise)
    with serve(emulator):
        async with emulator.client(retry=FAST) as kernel, emulator.client(retry=FAST) as other:
            stop = time.monotonic() + 6.5

            async def worker() -> None:
                while time.monotonic() < stop:
                    seconds = rng.uniform(0.2, 0.8)
                    await other.invocations.create("other", "n", payload=seconds, async_=True)
                    await asyncio.sleep(seconds * rng.uniform(0.5, 2.0))

            churn = asyncio.gather(*(worker() for _ in range(30)))
            await asyncio.sleep(0.3)
            runs = await asyncio.gather(*(kernel.invocations.run("mine", "a") for _ in range(9)))
            await churn
    assert all(run.status == "succeeded" for run in runs)
    assert emulator.quotas.stats.peak_running_by_app["mine"] == 3
    assert emulator.quotas.stats.concurrency_rejected <= 3  # ~0.3 per invocation


async def test_pages_that_repeat_the_same_ids_do_not_flood_the_server() -> None:
    # A server (or a proxy caching a page) that answers every page of running ones with
    # the same invocation, X-Has-More: true and an advancing X-Next-Offset. The bounds
    # (ORG_LIST_MOST, LIVE_IDS_MOST) count distinct ids, which never grow: one list never
    # ends, thousands of requests a second (both on e2cf834 and its parent: ~4000/s org
    # lists, ~3300/s app lists). A bound on pages or items read would end it.
    first: list[Any] = []
    count = 0

    async def rewrite(request: web.Request, items: Any, headers: Any) -> Any:
        nonlocal count
        count += 1
        if request.query.get("status") == "running":
            if items and not first:
                first.append(items[0])
            headers["X-Has-More"] = "true"
            headers["X-Next-Offset"] = str(int(request.query.get("offset", "0")) + 100)
            return list(first) or items, headers
        return items, headers

    async def long(ctx: Any, payload: Any) -> None:
        await asyncio.sleep(5)

    emulator = KernelEmulator(quotas=Quotas(app_caps={"a": 1}))
    emulator.add_action("a", "l", long)
    with serve(emulator, rewrite):
        async with emulator.client(retry=FAST) as kernel:
            running = asyncio.create_task(kernel.invocations.run("a", "l"))
            await asyncio.sleep(0.3)
            waiting = asyncio.create_task(kernel.invocations.run("a", "l"))
            before = count
            await asyncio.sleep(2.0)
            requests = count - before
            for task in (running, waiting):
                task.cancel()
            await asyncio.gather(running, waiting, return_exceptions=True)
    assert requests < 100, f"{requests} list requests in 2 s"


async def test_lists_of_a_large_org_leave_a_tight_rate_limit_to_the_creates() -> None:
    # 450 invocations of another app run for good (no cap near); our app, capped at 3, runs
    # 24 of 0.3 s under a rate limit of 30 requests a second. When every list was the
    # org's 5-6 pages: 43-62 list requests in the run (8 on e2cf834's parent) and 3 rate
    # 429s; past ORG_LIST_MOST the lists are the app's alone, one page: 12 of 61 requests.
    async def forever(ctx: Any, payload: Any) -> None:
        await asyncio.sleep(3600)

    async def short(ctx: Any, payload: Any) -> None:
        await asyncio.sleep(0.3)

    emulator = KernelEmulator(quotas=Quotas(app_caps={"a": 3}), max_invocations=20000)
    emulator.add_action("b", "forever", forever)
    emulator.add_action("a", "short", short)
    with serve(emulator):
        async with emulator.client(retry=FAST) as other, emulator.client(retry=FAST) as kernel:
            for _ in range(9):
                await asyncio.gather(
                    *(other.invocations.create("b", "forever", async_=True) for _ in range(50))
                )
            emulator.quotas.rate_limit(30, window=1.0)
            await asyncio.sleep(1.1)
            before = len(emulator.requests)
            runs = await asyncio.gather(*(kernel.invocations.run("a", "short") for _ in range(24)))
    assert all(run.status == "succeeded" for run in runs)
    assert emulator.quotas.stats.rate_rejected == 0
    during = list(emulator.requests)[before:]
    lists = sum(1 for r in during if r.method == "GET" and r.path == "/invocations")
    assert lists <= 24  # the creates' requests are most of them


async def test_a_copy_for_another_project_is_not_reconciled_against_the_parents_project(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A server that scopes lists to the X-Kernel-Project header (projects isolate
    # resources). When `with_options(project="B")` shared the parent's admission queue
    # (same base URL and key), its lister sent the parent's project "A": none of B's
    # invocations listed, every list freed all of them (6 wrong frees, 22 concurrency
    # 429s for 12 invocations at an app cap of 2). A project has a queue of its own.
    project_of: dict[str, str | None] = {}

    @web.middleware
    async def scoped(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        project = request.headers.get("X-Kernel-Project")
        if not isinstance(response, web.Response) or response.body is None:
            return response
        if request.method == "POST" and request.path == "/invocations" and response.status < 300:
            project_of[json.loads(_body(response))["id"]] = project
        if request.method == "GET" and request.path == "/invocations" and response.status == 200:
            listed = json.loads(_body(response))
            items = [i for i in listed if project_of.get(i["id"]) == project]
            kept = {k: v for k, v in response.headers.items() if k.lower().startswith("x-")}
            return web.json_response(items, headers=kept)
        return response

    async def act(ctx: Any, payload: Any) -> None:
        await asyncio.sleep(0.5)

    caplog.set_level(logging.INFO, logger="kernel_async")
    emulator = KernelEmulator(quotas=Quotas(app_caps={"x": 2}))
    emulator.add_action("x", "a", act)
    emulator.app.middlewares.insert(0, scoped)
    with serve(emulator):
        async with emulator.client(retry=FAST, project="A") as kernel:
            in_b = kernel.with_options(project="B")
            runs = await asyncio.gather(*(in_b.invocations.run("x", "a") for _ in range(12)))
    assert all(run.status == "succeeded" for run in runs)
    assert frees_seen(caplog) == []
    assert emulator.quotas.stats.concurrency_rejected <= 3
