"""Client options the official SDK has too: projects, custom headers, default query."""

from __future__ import annotations

import pytest
from aiohttp import web

from kernel_async import AsyncKernel, KernelError

from ._sse_server import frame, state, ts
from .conftest import INVOCATION_JSON, ServerFactory, json_response


async def _invocation(_: web.Request) -> web.Response:
    return json_response(INVOCATION_JSON)


async def _events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(frame(state("succeeded", ts(1))))
    return response


async def test_projects_go_on_every_request_streams_included_and_copies_can_change_them(
    make_server: ServerFactory,
) -> None:
    server = await make_server(
        [("GET", "/invocations/{id}", _invocation), ("GET", "/invocations/{id}/events", _events)]
    )
    async with server.client(project_id="proj_1", project="staging") as kernel:
        assert (kernel.project_id, kernel.project) == ("proj_1", "staging")
        await kernel.invocations.retrieve("inv_1")
        [_ async for _ in kernel.invocations.follow("inv_1")]
        # A project named in a copy replaces the client's, both spellings: sending the
        # old id with the new name would name two projects in one request.
        prod = kernel.with_options(project="production")
        await prod.invocations.retrieve("inv_1")
        assert (prod.project_id, prod.project) == (None, "production")
        by_id = prod.with_options(project_id="proj_2", timeout=5)
        await by_id.invocations.retrieve("inv_1")
        assert (by_id.project_id, by_id.project) == ("proj_2", None)
        both = kernel.with_options(project_id="proj_3", project="dev")
        await both.invocations.retrieve("inv_1")
        await by_id.with_options(timeout=3).invocations.retrieve("inv_1")  # kept
    sent = [
        (r.headers.get("X-Kernel-Project-Id"), r.headers.get("X-Kernel-Project"))
        for r in server.requests
    ]
    assert sent == [
        ("proj_1", "staging"),
        ("proj_1", "staging"),
        (None, "production"),
        ("proj_2", None),
        ("proj_3", "dev"),
        ("proj_2", None),
    ]


async def test_default_query_and_custom_headers_from_the_environment(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERNEL_CUSTOM_HEADERS", "X-Team: search\nX-Trace: on\nnot a header")
    server = await make_server([("GET", "/invocations/{id}", _invocation)])
    async with server.client(
        default_query={"region": "eu"}, default_headers={"X-Trace": "off"}
    ) as kernel:
        await kernel.invocations.retrieve("inv_1")
        await kernel.with_options(default_query={"tier": "1"}).invocations.retrieve("inv_1")
    first, second = server.requests
    assert first.headers["X-Team"] == "search"
    assert first.headers["X-Trace"] == "off"  # an explicit header wins over the environment
    assert first.query == {"region": "eu"}
    assert second.query == {"region": "eu", "tier": "1"}


def test_a_project_with_a_line_break_is_refused() -> None:
    with pytest.raises(KernelError, match="project"):
        AsyncKernel("sk_x", project="prod\r\nX-Evil: 1")
