"""docs/migrating.md's tables, checked: every row of "Differences left" names a test that
exists, and the claims those rows make are tested here."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

import kernel_async
from kernel_async import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    AsyncKernel,
    InternalServerError,
    Invocation,
    LogEvent,
    NotFoundError,
    SSEHeartbeatEvent,
)
from kernel_async.testing import KernelEmulator

from .conftest import API_KEY, ServerFactory, json_response

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "migrating.md").read_text()


def _difference_rows() -> list[list[str]]:
    section = DOC.split("## Differences left, and why", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[1:]]


def test_every_difference_names_a_test_that_exists() -> None:
    rows = _difference_rows()
    assert len(rows) >= 15
    sources = {path.name: path.read_text() for path in (ROOT / "tests").glob("*.py")}
    for row in rows:
        assert len(row) == 4, row
        checked_by = re.findall(r"`([\w.]+)`", row[3])
        assert checked_by, row
        for name in checked_by:
            if name.endswith(".py"):
                assert name in sources, name
            else:
                assert any(f"def {name}(" in text for text in sources.values()), name


def test_the_unchanged_table_does_not_claim_a_missing_name() -> None:
    section = DOC.split("## What works unchanged", 1)[1].split("\n## ", 1)[0]
    for name in ("DefaultAioHttpClient", "APIError", "AsyncAPIResponse", "BaseModel"):
        assert hasattr(kernel_async, name)
    assert "with_raw_response" in section


# --- the rows' claims ------------------------------------------------------------------------


def test_only_invocations() -> None:
    kernel = AsyncKernel(api_key=API_KEY)
    for official in ("browsers", "deployments", "apps", "profiles", "proxies", "get", "post"):
        assert not hasattr(kernel, official), official
    assert hasattr(kernel, "invocations")


def test_no_sync_client() -> None:
    assert not hasattr(kernel_async, "Kernel")


async def test_body_is_bytes(kernel_client: AsyncKernel) -> None:
    with pytest.raises(NotFoundError) as caught:
        await kernel_client.invocations.retrieve("missing")
    assert isinstance(caught.value.body, bytes)
    assert caught.value.response.json()["code"] == "not_found"


async def test_request_has_no_headers(kernel_client: AsyncKernel) -> None:
    with pytest.raises(NotFoundError) as caught:
        await kernel_client.invocations.retrieve("missing")
    assert not hasattr(caught.value.request, "headers")
    raw = await kernel_client.invocations.with_raw_response.list()
    assert not hasattr(raw.http_request, "headers")
    assert isinstance(caught.value.response, kernel_async.HTTPResponse)


def test_error_constructor() -> None:
    error = APIStatusError("nope", status=418, body=b"{}", headers={"X": "1"})
    assert error.status_code == 418
    assert error.response.headers["X"] == "1"
    with pytest.raises(TypeError):
        APIStatusError("nope", response=object(), body=None)  # type: ignore[call-arg, arg-type]


async def test_connection_error_cause_is_aiohttp(unused_tcp_port: int) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}"
    async with AsyncKernel(api_key=API_KEY, base_url=url, max_retries=0) as kernel:
        with pytest.raises(APIConnectionError) as caught:
            await kernel.invocations.retrieve("x")
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)


async def test_timeout_is_aiohttp(kernel_emulator: KernelEmulator) -> None:
    timeout = aiohttp.ClientTimeout(total=5, sock_read=1)
    async with kernel_emulator.client(timeout=timeout) as kernel:
        assert kernel.timeout is timeout
        page = await kernel.invocations.list()
    assert page.items == []


def test_httpx_client_refused() -> None:
    class NotAiohttp:  # stands in for an httpx.AsyncClient
        pass

    with pytest.raises(TypeError, match="does not use httpx"):
        AsyncKernel(api_key=API_KEY, http_client=NotAiohttp())  # type: ignore[arg-type]


async def test_create_not_retried_after_500(make_server: ServerFactory) -> None:
    async def failing(_: web.Request) -> web.Response:
        return json_response('{"code":"internal","message":"boom"}', 500)

    server = await make_server([("POST", "/invocations", failing)])
    async with server.client(max_retries=2) as kernel:
        with pytest.raises(InternalServerError):
            await kernel.invocations.create("app", "action")
    assert len(server.requests) == 1


async def test_heartbeats_hidden(kernel_emulator: KernelEmulator) -> None:
    @kernel_emulator.action("app", "quick")
    def quick(ctx: Any, payload: Any) -> str:
        ctx.log("hello")
        return "ok"

    async with kernel_emulator.client() as kernel:
        created = await kernel.invocations.create("app", "quick")
        stream = await kernel.invocations.follow(created.id)  # the official idiom
        events = [event async for event in stream]
    assert not any(isinstance(event, SSEHeartbeatEvent) for event in events)
    assert [e.message for e in events if isinstance(e, LogEvent)] == ["hello"]
    assert events[-1].event == "invocation_state"


async def test_arguments_checked_first(make_server: ServerFactory) -> None:
    server = await make_server([])
    async with server.client() as kernel:
        with pytest.raises(ValueError, match="limit"):
            await kernel.invocations.list(limit=1000)
    assert server.requests == []


async def test_list_browsers_is_a_list(kernel_emulator: KernelEmulator) -> None:
    @kernel_emulator.action("app", "quick")
    def quick(ctx: Any, payload: Any) -> None:
        return None

    async with kernel_emulator.client() as kernel:
        created = await kernel.invocations.create("app", "quick")
        browsers = await kernel.invocations.list_browsers(created.id)
    assert browsers == []


def test_no_raw_follow() -> None:
    kernel = AsyncKernel(api_key=API_KEY)
    assert not hasattr(kernel.invocations.with_raw_response, "follow")
    assert not hasattr(kernel.invocations.with_streaming_response, "follow")


async def test_streaming_body_read_first(kernel_client: AsyncKernel) -> None:
    async with kernel_client.invocations.with_streaming_response.list() as response:
        assert response.is_closed  # read already
        assert await response.read() == b"[]"
    with pytest.raises(TypeError):
        await response.parse(to=dict)  # type: ignore[call-arg]


def test_models_are_structs() -> None:
    assert issubclass(Invocation, msgspec.Struct)
    assert not hasattr(Invocation, "model_dump")
    assert not hasattr(Invocation, "model_fields_set")


async def test_wrong_types_are_refused(make_server: ServerFactory) -> None:
    async def wrong(_: web.Request) -> web.Response:
        return json_response(
            '{"id":"x","app_name":1,"version":"1","action_name":"b",'
            '"status":"new-status","started_at":"2026-01-01T00:00:00Z"}'
        )

    async def newer(_: web.Request) -> web.Response:
        return json_response(
            '{"id":"x","app_name":"a","version":"1","action_name":"b",'
            '"status":"paused","started_at":"2026-01-01T00:00:00Z","new":1}'
        )

    server = await make_server(
        [("GET", "/invocations/wrong", wrong), ("GET", "/invocations/newer", newer)]
    )
    async with server.client() as kernel:
        with pytest.raises(APIResponseValidationError):
            await kernel.invocations.retrieve("wrong")
        assert (await kernel.invocations.retrieve("newer")).status == "paused"


def test_logger_name(monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = logging.getLogger("kernel_async"), logging.getLogger("kernel")
    monkeypatch.setattr(ours, "level", logging.NOTSET)
    monkeypatch.setattr(theirs, "level", logging.NOTSET)
    monkeypatch.setenv("KERNEL_LOG", "debug")
    kernel_async._logs.setup_logging()
    assert ours.level == logging.DEBUG
    assert theirs.level == logging.NOTSET
