"""The official `kernel` SDK (httpx + pydantic) against our emulator.

Proof that the emulator speaks the real API, not only our client's dialect. Runs in
``nox -s official_sdk``; left out of collection where the `kernel` package is not installed
(see conftest.py).
"""

from __future__ import annotations

from typing import Any

import kernel
import pytest
from kernel.types.invocation_state_event import InvocationStateEvent

from kernel_async.testing import KernelEmulator

pytestmark = pytest.mark.official_sdk


async def test_official_sdk_create_retrieve_list_update_follow(
    kernel_emulator: KernelEmulator,
) -> None:
    @kernel_emulator.action("my-app", "analyze")
    async def analyze(ctx: Any, payload: Any) -> Any:
        ctx.log("analyzing")
        return {"length": len(payload["text"])}

    @kernel_emulator.action("my-app", "wait")
    async def wait(ctx: Any, payload: Any) -> None:
        import asyncio

        await asyncio.sleep(30)

    client = kernel.AsyncKernel(
        api_key=kernel_emulator.api_key, base_url=kernel_emulator.url, max_retries=0
    )
    async with client:
        created = await client.invocations.create(
            app_name="my-app", action_name="analyze", version="latest", payload='{"text":"hi"}'
        )
        assert created.status == "succeeded"
        assert created.output == '{"length":2}'

        got = await client.invocations.retrieve(created.id)
        assert got.id == created.id
        assert got.status == "succeeded"
        assert got.started_at is not None

        queued = await client.invocations.create(
            app_name="my-app", action_name="wait", version="latest", async_=True
        )
        assert queued.status == "queued"

        listed = [inv.id async for inv in client.invocations.list(app_name="my-app", limit=1)]
        assert listed == [queued.id, created.id]  # the official paginator followed our headers

        updated = await client.invocations.update(queued.id, status="failed")
        assert updated.status == "failed"

        stream = await client.invocations.follow(created.id)
        events = [event async for event in stream]
        kinds = [event.event for event in events]
        assert "log" in kinds
        last = events[-1]
        assert isinstance(last, InvocationStateEvent)
        assert last.invocation.status == "succeeded"


async def test_official_sdk_browsers_and_search(kernel_emulator: KernelEmulator) -> None:
    import asyncio

    release = asyncio.Event()

    @kernel_emulator.action("shop", "browse")
    async def browse(ctx: Any, payload: Any) -> None:
        ctx.start_browser(name="main")
        await release.wait()

    client = kernel.AsyncKernel(
        api_key=kernel_emulator.api_key, base_url=kernel_emulator.url, max_retries=0
    )
    async with client:
        created = await client.invocations.create(
            app_name="shop", action_name="browse", version="latest", async_=True
        )
        while not (await client.invocations.list_browsers(created.id)).browsers:
            await asyncio.sleep(0.01)
        listed = await client.invocations.list_browsers(created.id)
        assert [b.name for b in listed.browsers] == ["main"]
        assert listed.browsers[0].session_id
        await client.invocations.delete_browsers(created.id)
        assert (await client.invocations.list_browsers(created.id)).browsers == []
        found = [inv.id async for inv in client.invocations.list(query="sho")]
        assert found == [created.id]
        assert [inv.id async for inv in client.invocations.list(query="nothing-like-it")] == []
        release.set()
