"""The room other apps leave under the organisation's cap, seen by the admission queue's
lists of every app's invocations (the emulator, two clients learning alone)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kernel_async import RetryPolicy
from kernel_async import _client as client_module
from kernel_async.testing import KernelEmulator, Quotas

from .conftest import emulator_thread

FAST = RetryPolicy(max_retries=2, initial_delay=0.02, max_delay=0.1)


async def test_room_another_app_leaves_in_the_org_is_taken_by_a_client_learning_alone() -> None:
    # An org cap of 6. One client runs 3 long invocations of app "small"; another runs a
    # gather of short ones of app "big", learns that 3 fit (the org is full) and holds
    # that. When "small" is done, the org has 3 slots free that no list of "big" alone
    # shows (it ran 3, all it ever ran): its lists of every app show them, and it grows.
    async def hold(ctx: Any, payload: Any) -> None:
        await asyncio.sleep(1.2)

    async def short(ctx: Any, payload: Any) -> None:
        await asyncio.sleep(0.2)

    emulator = KernelEmulator(quotas=Quotas(max_running=6))
    emulator.add_action("small", "hold", hold)
    emulator.add_action("big", "short", short)
    with emulator_thread(emulator):
        async with emulator.client(retry=FAST) as small, emulator.client(retry=FAST) as big:
            held = [asyncio.create_task(small.invocations.run("small", "hold")) for _ in range(3)]
            while emulator.quotas.running() < 3:
                await asyncio.sleep(0.01)
            peak_after = 0

            async def watch() -> None:
                nonlocal peak_after
                await asyncio.gather(*held)
                while True:
                    peak_after = max(peak_after, emulator.quotas.running("big"))
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch())
            runs = await asyncio.gather(*(big.invocations.run("big", "short") for _ in range(40)))
            watcher.cancel()
            assert all(run.status == "succeeded" for run in runs)
            stats = big.limit_stats().apps["big"]
    assert stats.learnt
    assert peak_after >= 5  # it grew into the room "small" left
    assert emulator.create_count == 43  # each created once


async def test_lists_fall_back_to_one_apps_past_a_large_org(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def hold(ctx: Any, payload: Any) -> None:
        await asyncio.sleep(3600)

    emulator = KernelEmulator()
    emulator.add_action("a", "hold", hold)
    emulator.add_action("b", "hold", hold)
    with emulator_thread(emulator):
        async with emulator.client(retry=FAST) as kernel:
            mine = {
                (await kernel.invocations.create("a", "hold", async_=True)).id for _ in range(2)
            }
            theirs = {
                (await kernel.invocations.create("b", "hold", async_=True)).id for _ in range(3)
            }
            listing = await kernel._live_ids("a")
            assert set(listing.app) == mine
            assert listing.org is not None
            assert set(listing.org) == mine | theirs
            monkeypatch.setattr(client_module, "ORG_LIST_MOST", 4)
            listing = await kernel._live_ids("a")  # 5 in the org: one app's from now on
            assert set(listing.app) == mine
            assert listing.org is None
            monkeypatch.setattr(client_module, "ORG_LIST_MOST", 500)
            assert (await kernel._live_ids("a")).org is None
            for id in mine | theirs:
                await kernel.invocations.update(id, status="failed")
