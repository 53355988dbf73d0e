"""The emulator's quotas: the service's concurrency caps and request rate limit, on the wire."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from kernel_async.testing import KernelEmulator, Quotas

CREATE = {"app_name": "app", "action_name": "hold", "version": "latest", "async": True}


def install_hold(emulator: KernelEmulator) -> asyncio.Event:
    """``app/hold`` and ``other/hold`` run until the returned event is set."""
    release = asyncio.Event()

    async def hold(ctx: Any, payload: Any) -> None:
        await release.wait()

    emulator.add_action("app", "hold", hold)
    emulator.add_action("other", "hold", hold)
    return release


async def call(
    emulator: KernelEmulator, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {emulator.api_key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, emulator.url + path, json=body, headers=headers) as resp,
    ):
        raw = await resp.read()
        return resp.status, dict(resp.headers), json.loads(raw) if raw else None


async def test_the_per_app_cap_refuses_at_once_with_an_error_body_and_frees_on_finish() -> None:
    async with KernelEmulator(quotas=Quotas(max_running_per_app=2)) as emulator:
        release = install_hold(emulator)
        first = [await call(emulator, "POST", "/invocations", CREATE) for _ in range(2)]
        assert [status for status, _, _ in first] == [202, 202]
        status, headers, body = await call(emulator, "POST", "/invocations", CREATE)
        assert status == 429
        assert body["code"] == "concurrency_limit_exceeded"
        assert "'app'" in body["message"]
        assert "Retry-After" not in headers  # the emulator's documented choice
        # Another app has its own cap.
        status, _, _ = await call(emulator, "POST", "/invocations", {**CREATE, "app_name": "other"})
        assert status == 202
        # Finishing one (here: cancelling it) frees its slot.
        await call(emulator, "PATCH", f"/invocations/{first[0][2]['id']}", {"status": "failed"})
        status, _, _ = await call(emulator, "POST", "/invocations", CREATE)
        assert status == 202
        assert emulator.quotas.stats.concurrency_rejected == 1
        assert emulator.quotas.stats.peak_running_by_app == {"app": 2, "other": 1}
        assert emulator.create_count == 4  # the refused create started nothing
        release.set()


async def test_the_org_cap_counts_every_app_and_sync_invocations_too() -> None:
    quotas = Quotas(max_running=2, concurrency_retry_after=1.5)
    async with KernelEmulator(quotas=quotas) as emulator:
        release = install_hold(emulator)
        assert (await call(emulator, "POST", "/invocations", CREATE))[0] == 202
        sync = asyncio.create_task(
            call(emulator, "POST", "/invocations", {**CREATE, "app_name": "other", "async": False})
        )
        while emulator.quotas.running() < 2:
            await asyncio.sleep(0.001)
        status, headers, body = await call(emulator, "POST", "/invocations", CREATE)
        assert (status, body["code"]) == (429, "concurrency_limit_exceeded")
        assert "organization" in body["message"]
        assert headers["Retry-After"] == "1.5"
        release.set()
        assert (await sync)[0] == 200
        assert emulator.quotas.running() == 0


async def test_the_rate_limit_has_headers_on_every_response_and_retry_after_on_429() -> None:
    async with KernelEmulator(quotas=Quotas(requests_per_window=3, window=0.3)) as emulator:
        install_hold(emulator)
        seen = [await call(emulator, "GET", "/invocations") for _ in range(3)]
        assert [h["X-RateLimit-Remaining"] for _, h, _ in seen] == ["2", "1", "0"]
        assert all(h["X-RateLimit-Limit"] == "3" for _, h, _ in seen)
        status, headers, body = await call(emulator, "GET", "/invocations/nope")
        assert (status, body["code"]) == (429, "rate_limited")
        assert headers["X-RateLimit-Remaining"] == "0"
        retry_after = float(headers["Retry-After"])
        assert 0 < retry_after <= 0.3
        await asyncio.sleep(retry_after)
        status, headers, _ = await call(emulator, "GET", "/invocations/nope")
        assert status == 404  # a new window
        assert headers["X-RateLimit-Remaining"] == "2"
        assert emulator.quotas.stats.rate_rejected == 1


async def test_event_streams_count_and_carry_the_rate_headers() -> None:
    async with KernelEmulator(quotas=Quotas(requests_per_window=10)) as emulator:
        emulator.add_action("app", "echo", lambda ctx, payload: payload)
        _, _, created = await call(
            emulator, "POST", "/invocations", {**CREATE, "action_name": "echo"}
        )
        await emulator.wait_finished(created["id"])
        headers = {"Authorization": f"Bearer {emulator.api_key}"}
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{emulator.url}/invocations/{created['id']}/events", headers=headers
            ) as resp,
        ):
            await resp.read()
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert resp.headers["X-RateLimit-Remaining"] == "8"


async def test_unauthenticated_requests_do_not_count() -> None:
    async with KernelEmulator(quotas=Quotas(requests_per_window=1)) as emulator:
        async with aiohttp.ClientSession() as session:
            async with session.get(emulator.url + "/invocations") as resp:
                assert resp.status == 401
                assert "X-RateLimit-Remaining" not in resp.headers
        status, headers, _ = await call(emulator, "GET", "/invocations")
        assert (status, headers["X-RateLimit-Remaining"]) == (200, "0")


def test_bad_quota_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Quotas(requests_per_window=0)
    with pytest.raises(ValueError, match="positive"):
        Quotas(requests_per_window=5, window=0)
