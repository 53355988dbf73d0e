"""What the official SDK and the Kernel CLI have beyond the five seed operations: browsers,
search, per-call extras, and a synchronous create that waits as long as the service may."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

import kernel_async._client as client_module
import kernel_async._http as http_module
from kernel_async import APITimeoutError, Browser, NotFoundError
from kernel_async.testing import ActionContext, KernelEmulator

from ._sse_server import frame, state, ts
from .conftest import INVOCATION_JSON, ServerFactory, json_response


def install_browsing(emulator: KernelEmulator) -> asyncio.Event:
    release = asyncio.Event()

    @emulator.action("shop", "browse")
    async def browse(ctx: ActionContext, payload: Any) -> None:
        ctx.start_browser(name="main")
        ctx.start_browser(headless=False, region="eu-west")
        ctx.log("browsing")
        await release.wait()

    return release


async def started(emulator: KernelEmulator, kernel: Any) -> str:
    created = await kernel.invocations.create("shop", "browse", async_=True)
    async for event in kernel.invocations.follow(created.id):
        if getattr(event, "message", None) == "browsing":
            break
    return str(created.id)


async def test_list_and_delete_an_invocations_browsers(kernel_emulator: KernelEmulator) -> None:
    release = install_browsing(kernel_emulator)
    async with kernel_emulator.client() as kernel:
        inv = await started(kernel_emulator, kernel)
        browsers = await kernel.invocations.list_browsers(inv)
        assert all(isinstance(b, Browser) for b in browsers)
        assert [(b.name, b.headless, b.region) for b in browsers] == [
            ("main", True, "us-east"),
            (None, False, "eu-west"),
        ]
        assert browsers[1].browser_live_view_url is not None
        assert browsers[0].cdp_ws_url.startswith("wss://")
        await kernel.invocations.delete_browsers(inv)
        assert await kernel.invocations.list_browsers(inv) == []
        with pytest.raises(NotFoundError):
            await kernel.invocations.list_browsers("missing")
        release.set()
    delete = [r for r in kernel_emulator.requests if r.method == "DELETE"]
    assert delete[0].headers["Accept"] == "*/*"


async def test_setting_failed_destroys_the_browsers(kernel_emulator: KernelEmulator) -> None:
    install_browsing(kernel_emulator)
    async with kernel_emulator.client() as kernel:
        inv = await started(kernel_emulator, kernel)
        assert len(await kernel.invocations.list_browsers(inv)) == 2
        await kernel.invocations.cancel(inv)
        assert await kernel.invocations.list_browsers(inv) == []


async def test_browsers_decode_leniently(make_server: ServerFactory) -> None:
    browser = {
        "session_id": "s1",
        "cdp_ws_url": "wss://x/cdp",
        "webdriver_ws_url": "wss://x/wd",
        "created_at": "2025-06-20T12:00:00Z",
        "headless": True,
        "stealth": False,
        "timeout_seconds": 60,
        "region": "mars-north",  # a region added later
        "memory": {"gib": 2},  # an object, where the SDK of the day says a string
        "tags": {"team": "a"},
        "brand_new_field": [1, 2],
    }

    async def handler(_: web.Request) -> web.Response:
        return json_response(json.dumps({"browsers": [browser], "next": None}))

    server = await make_server([("GET", "/invocations/{id}/browsers", handler)])
    async with server.client() as kernel:
        [got] = await kernel.invocations.list_browsers("inv_1")
    assert (got.region, got.memory, got.tags) == ("mars-north", {"gib": 2}, {"team": "a"})


async def test_list_searches_by_id_app_or_action(kernel_emulator: KernelEmulator) -> None:
    kernel_emulator.add_action("billing", "charge", lambda ctx, payload: None)
    kernel_emulator.add_action("search", "index", lambda ctx, payload: None)
    async with kernel_emulator.client() as kernel:
        charge = await kernel.invocations.create("billing", "charge")
        index = await kernel.invocations.create("search", "index")
        by_app = [i.id async for i in kernel.invocations.list(query="BILL")]
        by_action = [i.id async for i in kernel.invocations.list(query="inde")]
        by_id = [i.id async for i in kernel.invocations.list(query=charge.id[:12])]
    assert (by_app, by_action, by_id) == ([charge.id], [index.id], [charge.id])
    assert kernel_emulator.requests[-1].query["query"] == charge.id[:12]


async def test_extra_headers_and_query_reach_every_call(make_server: ServerFactory) -> None:
    async def invocation(_: web.Request) -> web.Response:
        return json_response(INVOCATION_JSON.replace('"running"', '"succeeded"'))

    async def created(_: web.Request) -> web.Response:
        return json_response('{"id":"inv_1","action_name":"a","status":"queued"}', 202)

    async def listed(_: web.Request) -> web.Response:
        return json_response(f"[{INVOCATION_JSON}]")

    async def browsers(request: web.Request) -> web.Response:
        if request.method == "DELETE":
            return web.Response(status=204)
        return json_response('{"browsers": []}')

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(frame(state("succeeded", ts(1))))
        return response

    server = await make_server(
        [
            ("GET", "/invocations/{id}", invocation),
            ("PATCH", "/invocations/{id}", invocation),
            ("POST", "/invocations", created),
            ("GET", "/invocations", listed),
            ("GET", "/invocations/{id}/browsers", browsers),
            ("DELETE", "/invocations/{id}/browsers", browsers),
            ("GET", "/invocations/{id}/events", events),
        ]
    )
    extras: dict[str, Any] = {"extra_headers": {"X-Beta": "on"}, "extra_query": {"beta": "1"}}
    async with server.client() as kernel:
        calls = kernel.invocations
        await calls.create("app", "a", async_=True, **extras)
        await calls.retrieve("inv_1", **extras)
        await calls.update("inv_1", status="succeeded", **extras)
        await calls.cancel("inv_1", **extras)
        await calls.list(**extras)
        await calls.list_browsers("inv_1", **extras)
        await calls.delete_browsers("inv_1", **extras)
        [_ async for _ in calls.follow("inv_1", **extras)]
        await calls.wait("inv_1", **extras)
        await calls.run("app", "a", **extras)
        [_ async for _ in calls.map("app", "a", [1], **extras)]
    assert len(server.requests) == 13  # run and map: a create and a follow each
    for request in server.requests:
        assert request.headers.get("X-Beta") == "on", request.path
        assert request.query.get("beta") == "1", request.path


async def test_a_sync_create_waits_as_long_as_the_service_may_unless_a_timeout_is_set(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scaled down: a client default of 0.3 s, a service limit of 1 s, an action of 0.6 s."""
    monkeypatch.setattr(client_module, "DEFAULT_TIMEOUT", 0.3)
    monkeypatch.setattr(http_module, "SYNC_INVOCATION_LIMIT", 1.0 - 10.0)

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(0.6)
        return json_response('{"id":"inv_1","action_name":"a","status":"succeeded"}')

    server = await make_server([("POST", "/invocations", slow)])
    async with server.client() as kernel:  # no timeout set: the sync create waits
        done = await kernel.invocations.create("app", "a")
        assert done.status == "succeeded"
        with pytest.raises(APITimeoutError):  # a timeout on the call is kept
            await kernel.invocations.create("app", "a", timeout=0.3)
        with pytest.raises(APITimeoutError):  # and so is one on the client
            await kernel.with_options(timeout=0.3).invocations.create("app", "a")
        with pytest.raises(APITimeoutError):  # an async create gets the default
            await kernel.invocations.create("app", "a", async_=True)
