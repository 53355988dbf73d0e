"""Each operation's request on the wire, and its decoded result."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from aiohttp import web

from kernel_async import AsyncKernel, Invocation, InvokeResponse
from kernel_async.testing import KernelEmulator

from .conftest import API_KEY, INVOCATION_JSON, ServerFactory, json_response


async def invocation(_: web.Request) -> web.Response:
    return json_response(INVOCATION_JSON)


async def test_create_sends_the_documented_body_and_headers(make_server: ServerFactory) -> None:
    async def handler(_: web.Request) -> web.Response:
        return json_response('{"id":"inv_1","action_name":"analyze","status":"queued"}', 202)

    server = await make_server([("POST", "/invocations", handler)])
    async with server.client() as kernel:
        result = await kernel.invocations.create(
            "my-app",
            "analyze",
            version="1.0.0",
            payload={"data": "example input"},
            async_=True,
            async_timeout_seconds=600,
        )
    assert result == InvokeResponse(id="inv_1", action_name="analyze", status="queued")
    (seen,) = server.requests
    assert seen.method == "POST"
    assert seen.path == "/invocations"
    assert json.loads(seen.body) == {
        "app_name": "my-app",
        "action_name": "analyze",
        "version": "1.0.0",
        "payload": '{"data":"example input"}',
        "async": True,
        "async_timeout_seconds": 600,
    }
    assert seen.headers["Authorization"] == f"Bearer {API_KEY}"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Accept"] == "application/json"
    assert seen.headers["User-Agent"].startswith("kernel-async/")


async def test_create_sends_a_str_payload_as_is_and_omits_defaults(
    make_server: ServerFactory,
) -> None:
    async def handler(_: web.Request) -> web.Response:
        return json_response('{"id":"i","action_name":"a","status":"succeeded","output":"[1,2]"}')

    server = await make_server([("POST", "/invocations", handler)])
    async with server.client() as kernel:
        result = await kernel.invocations.create("app", "a", payload='{"raw": true}')
    assert json.loads(server.requests[0].body) == {
        "app_name": "app",
        "action_name": "a",
        "version": "latest",
        "payload": '{"raw": true}',
    }
    assert result.output_as(list[int]) == [1, 2]


async def test_retrieve_decodes_an_invocation_with_aware_datetimes(
    make_server: ServerFactory,
) -> None:
    server = await make_server([("GET", "/invocations/{id}", invocation)])
    async with server.client() as kernel:
        inv = await kernel.invocations.retrieve("inv_1")
    assert isinstance(inv, Invocation)
    assert inv.started_at == datetime(2025, 6, 20, 12, 0, 0, 123457, tzinfo=timezone.utc)
    assert inv.finished_at is None
    assert inv.payload_as() == {"data": 1}
    assert not inv.is_terminal
    assert server.requests[0].path == "/invocations/inv_1"


@pytest.mark.parametrize(
    ("id", "raw"),
    [
        ("a/b", "/invocations/a%2Fb"),
        ("../secrets", "/invocations/..%2Fsecrets"),
        ("x?admin=1", "/invocations/x%3Fadmin%3D1"),
        ("x#frag", "/invocations/x%23frag"),
        ("sp ace", "/invocations/sp%20ace"),
    ],
)
async def test_path_parameters_are_quoted_into_one_segment(
    make_server: ServerFactory, id: str, raw: str
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return json_response(
            INVOCATION_JSON.replace('"inv_1"', json.dumps(request.match_info["id"]))
        )

    server = await make_server([("GET", "/invocations/{id}", handler)])
    async with server.client() as kernel:
        inv = await kernel.invocations.retrieve(id)
    assert server.requests[0].raw_path == raw
    assert inv.id == id  # the server saw exactly this id, as one path segment


async def test_update_and_cancel_send_patch_bodies(make_server: ServerFactory) -> None:
    server = await make_server([("PATCH", "/invocations/{id}", invocation)])
    async with server.client() as kernel:
        await kernel.invocations.update("inv_1", status="succeeded", output={"ok": True})
        await kernel.invocations.cancel("inv_1")
    first, second = server.requests
    assert first.method == second.method == "PATCH"
    assert json.loads(first.body) == {"status": "succeeded", "output": '{"ok":true}'}
    assert json.loads(second.body) == {"status": "failed"}


async def test_list_sends_filters_and_pagination(make_server: ServerFactory) -> None:
    async def handler(_: web.Request) -> web.Response:
        return json_response(f"[{INVOCATION_JSON}]", headers={"X-Has-More": "false"})

    server = await make_server([("GET", "/invocations", handler)])
    since = datetime(2025, 6, 20, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    async with server.client() as kernel:
        page = await kernel.invocations.list(
            app_name="my-app",
            version="1.0.0",
            action_name="analyze",
            deployment_id="dep_1",
            status="running",
            since=since,
            limit=50,
            offset=10,
        )
        await kernel.invocations.list(since=timedelta(minutes=5))
        await kernel.invocations.list(since="5m")
    assert [inv.id for inv in page.items] == ["inv_1"]
    assert server.requests[0].query == {
        "app_name": "my-app",
        "version": "1.0.0",
        "action_name": "analyze",
        "deployment_id": "dep_1",
        "status": "running",
        "since": "2025-06-20T12:00:00.000000Z",
        "limit": "50",
        "offset": "10",
    }
    assert server.requests[1].query["since"] == "300s"
    assert server.requests[2].query["since"] == "5m"


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda k: k.invocations.retrieve(""), ValueError),
        (lambda k: k.invocations.retrieve(".."), ValueError),
        (lambda k: k.invocations.create("", "a"), ValueError),
        (lambda k: k.invocations.create("app", ""), ValueError),
        (
            lambda k: k.invocations.create("app", "a", async_=True, async_timeout_seconds=9),
            ValueError,
        ),
        (
            lambda k: k.invocations.create("app", "a", async_=True, async_timeout_seconds=3601),
            ValueError,
        ),
        (lambda k: k.invocations.create("app", "a", async_timeout_seconds=60), ValueError),
        (lambda k: k.invocations.create("app", "a", payload=object()), TypeError),
        (lambda k: k.invocations.update("x", status="running"), ValueError),
        (lambda k: k.invocations.update("", status="failed"), ValueError),
        (lambda k: k.invocations.list(limit=0), ValueError),
        (lambda k: k.invocations.list(limit=101), ValueError),
        (lambda k: k.invocations.list(offset=-1), ValueError),
        (lambda k: k.invocations.list(status="paused"), ValueError),
        (lambda k: k.invocations.list(since=datetime(2025, 1, 1)), ValueError),
        (lambda k: k.invocations.list(since=timedelta(0)), ValueError),
        (lambda k: k.invocations.list(limit=True), TypeError),
        (lambda k: k.invocations.follow(""), ValueError),
        (lambda k: k.invocations.follow("x", idle_timeout=0), ValueError),
    ],
)
async def test_arguments_the_api_would_reject_fail_before_any_request(
    make_server: ServerFactory, call: Any, error: type[Exception]
) -> None:
    server = await make_server([])
    async with server.client() as kernel:
        with pytest.raises(error):
            result = call(kernel)
            if hasattr(result, "__await__"):
                await result
    assert server.requests == []


async def test_decoding_tolerates_unknown_fields_and_new_statuses(
    make_server: ServerFactory,
) -> None:
    body = INVOCATION_JSON.replace('"status":"running"', '"status":"paused","new_field":[1]')

    async def handler(_: web.Request) -> web.Response:
        return json_response(body)

    server = await make_server([("GET", "/invocations/{id}", handler)])
    async with server.client() as kernel:
        inv = await kernel.invocations.retrieve("inv_1")
    assert inv.status == "paused"
    assert not inv.is_terminal


async def test_output_as_decodes_typed_and_explains_missing_output() -> None:
    inv = msgspec.json.decode(INVOCATION_JSON.encode(), type=Invocation)
    with pytest.raises(ValueError, match="no output"):
        inv.output_as()

    class Result(msgspec.Struct):
        result: str

    done = msgspec.structs.replace(inv, output='{"result":"ok"}', status="succeeded")
    assert done.output_as(Result) == Result(result="ok")
    assert done.is_terminal
    with pytest.raises(msgspec.ValidationError):
        done.output_as(list[int])


async def test_full_lifecycle_against_the_emulator(
    kernel_emulator: KernelEmulator, kernel_client: AsyncKernel
) -> None:
    @kernel_emulator.action("my-app", "double")
    def double(ctx: Any, payload: Any) -> Any:
        ctx.log("doubling")
        return {"n": payload["n"] * 2}

    sync = await kernel_client.invocations.create("my-app", "double", payload={"n": 21})
    assert sync.status == "succeeded"
    assert sync.output_as() == {"n": 42}
    inv = await kernel_client.invocations.retrieve(sync.id)
    assert inv.app_name == "my-app"
    assert inv.finished_at is not None
    assert inv.finished_at >= inv.started_at
    assert kernel_emulator.log_lines(sync.id) == ["doubling"]
