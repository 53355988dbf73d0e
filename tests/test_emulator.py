"""The emulator speaks the API as the spec says, through raw HTTP and through the SDK."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from kernel_async import (
    AsyncKernel,
    AuthenticationError,
    BadRequestError,
    InvocationStateEvent,
    LogEvent,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    SSEHeartbeatEvent,
)
from kernel_async.testing import KernelEmulator
from kernel_async.testing._wire import format_ns, parse_duration_ns, parse_since_ns


@pytest.fixture
def emulator_actions(kernel_emulator: KernelEmulator) -> KernelEmulator:
    @kernel_emulator.action("my-app", "echo")
    def echo(ctx: Any, payload: Any) -> Any:
        ctx.log("echoing")
        return payload

    @kernel_emulator.action("my-app", "sleep")
    async def sleep(ctx: Any, payload: Any) -> None:
        ctx.log("sleeping")
        await asyncio.sleep(float((payload or {}).get("seconds", 30)))

    @kernel_emulator.action("other-app", "boom", version="2.0.0")
    def boom(ctx: Any, payload: Any) -> None:
        raise ValueError("bad input: 42")

    return kernel_emulator


async def raw(
    emulator: KernelEmulator,
    method: str,
    path: str,
    *,
    key: str | None = None,
    **kwargs: Any,
) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {key or emulator.api_key}"}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, emulator.url + path, headers=headers, **kwargs) as resp:
            body = await resp.read()
            return resp.status, dict(resp.headers), json.loads(body) if body else None


async def test_bearer_auth_is_required(emulator_actions: KernelEmulator) -> None:
    status, _, body = await raw(emulator_actions, "GET", "/invocations", key="wrong")
    assert status == 401
    assert body["code"] == "unauthorized"
    async with AsyncKernel("wrong", base_url=emulator_actions.url) as kernel:
        with pytest.raises(AuthenticationError):
            await kernel.invocations.retrieve("x")


async def test_sync_invoke_is_200_with_output_async_is_202_queued(
    emulator_actions: KernelEmulator,
) -> None:
    body = {"app_name": "my-app", "action_name": "echo", "version": "latest", "payload": "[1]"}
    status, headers, sync = await raw(emulator_actions, "POST", "/invocations", json=body)
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert sync["status"] == "succeeded"
    assert sync["output"] == "[1]"
    status, _, queued = await raw(
        emulator_actions, "POST", "/invocations", json={**body, "async": True}
    )
    assert status == 202
    assert queued["status"] == "queued"
    assert set(queued) <= {"id", "action_name", "status", "status_reason", "output"}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"action_name": "echo", "version": "latest"}, "app_name"),
        ({"app_name": "my-app", "version": "1"}, "action_name"),
        ({"app_name": "my-app", "action_name": "echo", "payload": "{nope"}, "payload"),
        (
            {
                "app_name": "my-app",
                "action_name": "echo",
                "async": True,
                "async_timeout_seconds": 5,
            },
            "async_timeout_seconds",
        ),
        ({"app_name": 3, "action_name": "echo"}, "app_name"),
    ],
)
async def test_bad_create_bodies_are_400_with_details(
    emulator_actions: KernelEmulator, body: dict[str, Any], detail: str
) -> None:
    status, _, error = await raw(emulator_actions, "POST", "/invocations", json=body)
    assert status == 400
    assert error["code"] == "bad_request"
    text = error["message"] + " ".join(d["message"] for d in error.get("details", []))
    assert detail in text


async def test_unknown_actions_and_invocations_are_404(emulator_actions: KernelEmulator) -> None:
    body = {"app_name": "my-app", "action_name": "nope", "version": "latest"}
    status, _, error = await raw(emulator_actions, "POST", "/invocations", json=body)
    assert (status, error["code"]) == (404, "not_found")
    for method, path in [
        ("GET", "/invocations/missing"),
        ("PATCH", "/invocations/missing"),
        ("GET", "/invocations/missing/events"),
    ]:
        kwargs: dict[str, Any] = {"json": {"status": "failed"}} if method == "PATCH" else {}
        status, _, error = await raw(emulator_actions, method, path, **kwargs)
        assert (status, error["code"]) == (404, "not_found")


async def test_failures_and_versions(
    emulator_actions: KernelEmulator, kernel_client: AsyncKernel
) -> None:
    inv = await kernel_client.invocations.run("other-app", "boom")
    assert inv.status == "failed"
    assert inv.status_reason == "bad input: 42"
    assert inv.version == "2.0.0"  # "latest" resolved to the registered version
    explicit = await kernel_client.invocations.create("other-app", "boom", version="2.0.0")
    assert explicit.status == "failed"
    with pytest.raises(NotFoundError):
        await kernel_client.invocations.create("other-app", "boom", version="1.0.0")


async def test_patch_failed_cancels_the_running_action(
    emulator_actions: KernelEmulator, kernel_client: AsyncKernel
) -> None:
    created = await kernel_client.invocations.create("my-app", "sleep", async_=True)
    while (await kernel_client.invocations.retrieve(created.id)).status != "running":
        await asyncio.sleep(0.01)
    cancelled = await kernel_client.invocations.cancel(created.id, output={"why": "user"})
    assert cancelled.status == "failed"
    assert cancelled.output_as() == {"why": "user"}
    await asyncio.wait_for(emulator_actions.wait_finished(created.id), 2)
    again = await kernel_client.invocations.cancel(created.id)  # idempotent
    assert again.status == "failed"
    with pytest.raises(BadRequestError, match="already finished"):
        await kernel_client.invocations.update(created.id, status="succeeded")


async def test_async_timeout_fails_the_invocation(kernel_emulator: KernelEmulator) -> None:
    kernel_emulator.async_timeout_scale = 0.01  # 10 s → 0.1 s

    @kernel_emulator.action("my-app", "forever")
    async def forever(ctx: Any, payload: Any) -> None:
        await asyncio.sleep(60)

    async with kernel_emulator.client() as kernel:
        inv = await kernel.invocations.run("my-app", "forever", async_timeout_seconds=10, timeout=5)
    assert inv.status == "failed"
    assert "timed out" in (inv.status_reason or "")


async def test_list_filters_order_and_pagination_headers(
    emulator_actions: KernelEmulator, kernel_client: AsyncKernel
) -> None:
    for i in range(3):
        await kernel_client.invocations.create("my-app", "echo", payload=i)
    await kernel_client.invocations.create("other-app", "boom")
    status, headers, items = await raw(
        emulator_actions, "GET", "/invocations", params={"app_name": "my-app", "limit": "2"}
    )
    assert status == 200
    assert [i["payload"] for i in items] == ["2", "1"]  # newest first
    assert headers["X-Limit"] == "2"
    assert headers["X-Offset"] == "0"
    assert headers["X-Has-More"] == "true"
    assert headers["X-Next-Offset"] == "2"
    failed = [i async for i in kernel_client.invocations.list(status="failed")]
    assert [i.app_name for i in failed] == ["other-app"]
    assert [i async for i in kernel_client.invocations.list(version="9.9")] == []
    dep = emulator_actions._actions[("my-app", "latest", "echo")].deployment_id
    assert len([i async for i in kernel_client.invocations.list(deployment_id=dep)]) == 3
    assert len([i async for i in kernel_client.invocations.list(since="1h")]) == 4
    future = "2999-01-01T00:00:00Z"
    assert [i async for i in kernel_client.invocations.list(since=future)] == []


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "101"}, {"offset": "-1"}, {"status": "paused"}, {"since": "soon"}],
)
async def test_bad_list_queries_are_400(
    emulator_actions: KernelEmulator, params: dict[str, str]
) -> None:
    status, _, error = await raw(emulator_actions, "GET", "/invocations", params=params)
    assert status == 400
    assert error["details"]


async def test_events_stream_logs_state_and_heartbeats_with_since(
    emulator_actions: KernelEmulator,
) -> None:
    emulator_actions.heartbeat_interval = 0.05

    @emulator_actions.action("my-app", "steps")
    async def steps(ctx: Any, payload: Any) -> str:
        ctx.log("one")
        await asyncio.sleep(0.15)  # long enough for heartbeats
        ctx.log("two")
        return "ok"

    async with emulator_actions.client() as kernel:
        created = await kernel.invocations.create("my-app", "steps", async_=True)
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"{emulator_actions.url}/invocations/{created.id}/events",
                headers={"Authorization": f"Bearer {emulator_actions.api_key}"},
            ) as resp:
                assert resp.headers["Content-Type"] == "text/event-stream"
                assert resp.headers["X-SSE-Content-Type"] == "application/json"
                raw_stream = await resp.read()  # the server closes after the terminal state
        events = [
            json.loads(line[6:])
            for line in raw_stream.decode().split("\n")
            if line.startswith("data: ")
        ]
        kinds = [e["event"] for e in events]
        assert kinds[0] == "invocation_state"
        assert "sse_heartbeat" in kinds
        assert [e["message"] for e in events if e["event"] == "log"] == ["one", "two"]
        assert events[-1]["invocation"]["status"] == "succeeded"
        assert all(len(e["timestamp"]) == len("2025-06-20T12:00:00.123456789Z") for e in events)

        two = next(e for e in events if e.get("message") == "two")
        replay = [
            e
            async for e in kernel.invocations.follow(
                created.id, since=two["timestamp"], heartbeats=True
            )
        ]
        assert [type(e) for e in replay] == [LogEvent, InvocationStateEvent]
        assert not any(isinstance(e, SSEHeartbeatEvent) for e in replay)


async def test_events_of_a_finished_invocation_end_with_its_state(
    emulator_actions: KernelEmulator, kernel_client: AsyncKernel
) -> None:
    done = await kernel_client.invocations.create("my-app", "echo", payload=1)
    later = [
        e async for e in kernel_client.invocations.follow(done.id, since="2999-01-01T00:00:00Z")
    ]
    assert len(later) == 1
    assert isinstance(later[0], InvocationStateEvent)
    assert later[0].invocation.status == "succeeded"


async def test_faults_rate_limit_fail_and_latency(
    emulator_actions: KernelEmulator,
) -> None:
    emulator_actions.faults.rate_limit(times=1, retry_after=7)
    status, headers, error = await raw(emulator_actions, "GET", "/invocations")
    assert (status, headers["Retry-After"], error["code"]) == (429, "7", "rate_limited")
    emulator_actions.faults.fail(502, body=b"<html>bad gateway</html>")
    status, headers, _ = await _raw_text(emulator_actions)
    assert status == 502
    assert headers["Content-Type"].startswith("text/html")
    policy = RetryPolicy(max_retries=0, max_rate_limit_waits=0)
    async with emulator_actions.client(retry=policy) as kernel:
        emulator_actions.faults.rate_limit(times=1, retry_after=3)
        with pytest.raises(RateLimitError) as caught:
            await kernel.invocations.list()
        assert caught.value.retry_after == 3
        emulator_actions.faults.latency(0.2)
        start = time.perf_counter()
        await kernel.invocations.list()
        assert time.perf_counter() - start >= 0.19
    stats = emulator_actions.faults.stats
    assert (stats.rate_limited, stats.errors, stats.delayed) == (2, 1, 1)


async def test_an_injected_429_can_carry_a_body_of_its_own(
    emulator_actions: KernelEmulator,
) -> None:
    """A concurrency 429 (its error code in a JSON body) can be injected, not only the
    rate limit's."""
    body = b'{"code": "concurrency_limit_exceeded", "message": "at the cap"}'
    emulator_actions.faults.fail(429, body=body)
    status, headers, text = await _raw_text(emulator_actions)
    assert (status, text) == (429, body)
    assert headers["Content-Type"].startswith("application/json")
    assert emulator_actions.faults.stats.rate_limited == 1


async def _raw_text(emulator: KernelEmulator) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            emulator.url + "/invocations",
            headers={"Authorization": f"Bearer {emulator.api_key}"},
        ) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def test_finished_invocations_are_evicted_past_the_limit() -> None:
    async with KernelEmulator(max_invocations=5) as emulator:
        emulator.add_action("app", "a", lambda ctx, p: p)
        async with emulator.client() as kernel:
            ids = [(await kernel.invocations.create("app", "a", payload=i)).id for i in range(8)]
            assert emulator.invocation_ids() == ids[-5:]
            with pytest.raises(NotFoundError):
                await kernel.invocations.retrieve(ids[0])


def test_wire_time_helpers() -> None:
    assert format_ns(1_750_420_800_123_456_789) == "2025-06-20T12:00:00.123456789Z"
    assert parse_since_ns("2025-06-20T12:00:00.123456789Z") == 1_750_420_800_123_456_789
    assert parse_since_ns("2025-06-20T14:00:00+02:00") == 1_750_420_800_000_000_000
    assert parse_duration_ns("1h30m") == 5_400 * 10**9
    assert parse_duration_ns("1.5s") == 1_500_000_000
    assert parse_duration_ns("300ms") == 300_000_000
    assert parse_since_ns("5m", now=10**12) == 10**12 - 300 * 10**9
    for bad in ["", "5", "m", "5 m", "5x", "2025-13-01T00:00:00Z"]:
        assert parse_since_ns(bad) is None
