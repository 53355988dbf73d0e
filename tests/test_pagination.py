"""Lazy pagination by the X- headers, and headers that must not loop forever."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from kernel_async import APIResponseValidationError, AsyncKernel, Page
from kernel_async._pagination import parse_page_headers
from kernel_async.testing import KernelEmulator

from .conftest import INVOCATION_JSON, ServerFactory, json_response


def item(i: int) -> str:
    return INVOCATION_JSON.replace('"inv_1"', f'"inv_{i}"')


async def three_pages(request: web.Request) -> web.Response:
    offset = int(request.query.get("offset", "0"))
    limit = int(request.query["limit"])
    total = 7
    ids = range(offset, min(offset + limit, total))
    has_more = offset + limit < total
    headers = {"X-Limit": str(limit), "X-Offset": str(offset), "X-Has-More": str(has_more).lower()}
    if has_more:
        headers["X-Next-Offset"] = str(offset + limit)
    return json_response("[" + ",".join(item(i) for i in ids) + "]", headers=headers)


async def test_iterating_walks_three_pages_lazily(make_server: ServerFactory) -> None:
    server = await make_server([("GET", "/invocations", three_pages)])
    async with server.client() as kernel:
        listing = kernel.invocations.list(limit=3, status="running")
        assert server.requests == []  # nothing requested until iteration
        seen = []
        async for inv in listing:
            seen.append(inv.id)
            if len(seen) == 1:
                assert len(server.requests) == 1  # only the first page so far
    assert seen == [f"inv_{i}" for i in range(7)]
    assert [r.query["offset"] for r in server.requests] == ["0", "3", "6"]
    assert all(r.query["status"] == "running" for r in server.requests)


async def test_awaiting_gives_the_first_page_and_pages_gives_page_objects(
    make_server: ServerFactory,
) -> None:
    server = await make_server([("GET", "/invocations", three_pages)])
    async with server.client() as kernel:
        first = await kernel.invocations.list(limit=3)
        pages = [page async for page in kernel.invocations.list(limit=3).pages()]
    assert isinstance(first, Page)
    assert (first.limit, first.offset, first.next_offset, first.has_more) == (3, 0, 3, True)
    assert len(first) == 3
    assert [(p.offset, p.next_offset, p.has_more, len(p)) for p in pages] == [
        (0, 3, True, 3),
        (3, 6, True, 3),
        (6, None, False, 1),
    ]


async def test_missing_headers_mean_a_single_page(make_server: ServerFactory) -> None:
    async def handler(_: web.Request) -> web.Response:
        return json_response(f"[{item(1)}]")

    server = await make_server([("GET", "/invocations", handler)])
    async with server.client() as kernel:
        ids = [inv.id async for inv in kernel.invocations.list()]
    assert ids == ["inv_1"]
    assert len(server.requests) == 1


async def test_a_next_offset_that_does_not_advance_stops_instead_of_looping(
    make_server: ServerFactory,
) -> None:
    async def handler(_: web.Request) -> web.Response:
        headers = {"X-Has-More": "true", "X-Next-Offset": "0"}
        return json_response(f"[{item(1)}]", headers=headers)

    server = await make_server([("GET", "/invocations", handler)])
    async with server.client() as kernel:
        ids = await asyncio.wait_for(_collect(kernel), 5)
    assert ids == ["inv_1"]
    assert len(server.requests) == 1


async def test_has_more_without_next_offset_raises_after_the_page_it_came_with(
    make_server: ServerFactory,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        offset = int(request.query["offset"])
        if offset >= 2:
            return json_response(f"[{item(offset)}]", headers={"X-Has-More": "true"})
        return json_response(
            f"[{item(offset)},{item(offset + 1)}]",
            headers={"X-Has-More": "true", "X-Next-Offset": "2"},
        )

    server = await make_server([("GET", "/invocations", handler)])
    seen: list[str] = []
    async with server.client() as kernel:
        with pytest.raises(APIResponseValidationError, match="no X-Next-Offset"):
            async for inv in kernel.invocations.list():
                seen.append(inv.id)
    assert seen == ["inv_0", "inv_1"]


async def test_a_server_that_ignores_offset_is_asked_twice_not_for_ever(
    make_server: ServerFactory,
) -> None:
    async def handler(_: web.Request) -> web.Response:
        headers = {"X-Offset": "0", "X-Next-Offset": "2", "X-Has-More": "true"}
        return json_response(f"[{item(0)},{item(1)}]", headers=headers)

    server = await make_server([("GET", "/invocations", handler)])
    async with server.client() as kernel:
        ids = await asyncio.wait_for(_collect(kernel), 5)
    assert [r.query["offset"] for r in server.requests] == ["0", "2"]
    assert ids == ["inv_0", "inv_1", "inv_0", "inv_1"]  # what it sent, once per request


async def _collect(kernel: AsyncKernel) -> list[str]:
    return [inv.id async for inv in kernel.invocations.list()]


header_values = st.one_of(
    st.none(),
    st.integers(-5, 200).map(str),
    st.sampled_from(["", "true", "false", "TRUE", " 7 ", "abc", "1e3", "٣"]),
)


@given(
    limit=header_values,
    offset=header_values,
    next_offset=header_values,
    has_more=header_values,
    requested_offset=st.integers(0, 100),
    count=st.integers(0, 100),
)
def test_page_headers_never_ask_for_a_page_that_does_not_move_forward(
    limit: str | None,
    offset: str | None,
    next_offset: str | None,
    has_more: str | None,
    requested_offset: int,
    count: int,
) -> None:
    raw = {
        "X-Limit": limit,
        "X-Offset": offset,
        "X-Next-Offset": next_offset,
        "X-Has-More": has_more,
    }
    headers = {k: v for k, v in raw.items() if v is not None}
    try:
        page_limit, page_offset, nxt, more = parse_page_headers(
            headers, limit=20, offset=requested_offset, count=count
        )
    except APIResponseValidationError:
        assert (has_more or "").strip().lower() == "true"
        value = (next_offset or "").strip()
        assert not (value.isascii() and value.isdigit())  # no usable X-Next-Offset
        return
    assert page_limit >= 0
    assert page_offset >= 0
    if more:
        assert nxt is not None
        assert nxt > requested_offset  # never the same page, or an earlier one, again
    if nxt == 0:
        assert not more


async def test_pagination_against_the_emulator_newest_first(
    kernel_emulator: KernelEmulator, kernel_client: AsyncKernel
) -> None:
    kernel_emulator.add_action("app", "a", lambda ctx, p: p)
    created = [(await kernel_client.invocations.create("app", "a", payload=i)).id for i in range(5)]
    listed = [inv.id async for inv in kernel_client.invocations.list(limit=2)]
    assert listed == created[::-1]
    page = await kernel_client.invocations.list(limit=2, offset=4)
    assert (page.has_more, page.next_offset, [i.id for i in page.items]) == (
        False,
        None,
        [created[0]],
    )
