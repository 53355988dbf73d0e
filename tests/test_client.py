"""AsyncKernel configuration, session ownership and lifetime, and keeping the key secret."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from aiohttp import web

from kernel_async import (
    APITimeoutError,
    AsyncKernel,
    ClientClosedError,
    KernelError,
    NotFoundError,
    __version__,
)
from kernel_async.testing import KernelEmulator

from .conftest import API_KEY, INVOCATION_JSON, ServerFactory, json_response


async def ok(_: web.Request) -> web.Response:
    return json_response(INVOCATION_JSON)


def test_no_api_key_names_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KERNEL_API_KEY", raising=False)
    with pytest.raises(KernelError, match="KERNEL_API_KEY"):
        AsyncKernel()


def test_environment_variables_configure_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEL_API_KEY", "sk_env")
    monkeypatch.setenv("KERNEL_BASE_URL", "http://127.0.0.1:9/")
    kernel = AsyncKernel()
    assert kernel.api_key == "sk_env"
    assert kernel.base_url == "http://127.0.0.1:9"
    monkeypatch.delenv("KERNEL_BASE_URL")
    assert AsyncKernel("k").base_url == "https://api.onkernel.com"


@pytest.mark.parametrize("url", ["ftp://x", "not a url", "http://user:pw@host", "http://h/?q=1"])
def test_unusable_base_urls_are_rejected(url: str) -> None:
    with pytest.raises(KernelError):
        AsyncKernel("k", base_url=url)


def test_constructing_outside_a_loop_creates_no_session() -> None:
    kernel = AsyncKernel("k")  # no running loop: must not create (and leak) a session
    assert kernel._transport.session is None


async def test_user_agent_default_headers_and_connection_limit(
    make_server: ServerFactory,
) -> None:
    server = await make_server([("GET", "/invocations/{id}", ok)])
    async with server.client(default_headers={"X-Team": "agents"}, connection_limit=7) as kernel:
        await kernel.invocations.retrieve("inv_1")
        session = kernel._transport.session
        assert session is not None
        assert session.connector is not None
        assert session.connector.limit == 7
    headers = server.requests[0].headers
    assert headers["User-Agent"].startswith(f"kernel-async/{__version__} aiohttp/")
    assert headers["X-Team"] == "agents"


async def test_aclose_closes_its_own_session_and_then_refuses_calls(
    make_server: ServerFactory,
) -> None:
    server = await make_server([("GET", "/invocations/{id}", ok)])
    kernel = server.client()
    await kernel.invocations.retrieve("inv_1")
    session = kernel._transport.session
    await kernel.aclose()
    await kernel.aclose()  # idempotent
    assert session is not None
    assert session.closed
    assert kernel.is_closed
    with pytest.raises(ClientClosedError, match="closed"):
        await kernel.invocations.retrieve("inv_1")


async def test_a_user_session_is_used_never_closed_and_keeps_its_middlewares(
    make_server: ServerFactory,
) -> None:
    server = await make_server([("GET", "/invocations/{id}", ok)])
    seen: list[str] = []

    async def session_mw(
        req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        seen.append(str(req.url))
        return await handler(req)

    async with aiohttp.ClientSession(middlewares=[session_mw]) as session:
        async with server.client(session=session) as kernel:
            await kernel.invocations.retrieve("inv_1")
        assert not session.closed
        assert len(seen) == 1
        async with session.get(f"{server.url}/invocations/x") as resp:
            assert resp.status == 200


async def test_with_options_shares_the_pool_and_overrides(make_server: ServerFactory) -> None:
    server = await make_server([("GET", "/invocations/{id}", ok)])
    async with server.client() as kernel:
        fast = kernel.with_options(timeout=5, max_retries=0, default_headers={"X-A": "1"})
        await kernel.invocations.retrieve("inv_1")
        await fast.invocations.retrieve("inv_1")
        assert fast._transport is kernel._transport
        assert fast.retry.max_retries == 0
        assert fast.timeout == 5
        await fast.aclose()  # a copy closes nothing
        await kernel.invocations.retrieve("inv_1")
    assert "X-A" in server.requests[1].headers
    assert "X-A" not in server.requests[0].headers
    assert fast.is_closed  # closing the original closes the shared pool


async def test_per_call_timeout_raises_api_timeout_error(
    kernel_emulator: KernelEmulator,
) -> None:
    kernel_emulator.faults.latency(2)
    async with kernel_emulator.client(max_retries=0) as kernel:
        with pytest.raises(APITimeoutError):
            await kernel.invocations.retrieve("x", timeout=0.2)
        with pytest.raises(APITimeoutError):
            await kernel.with_options(timeout=0.2).invocations.retrieve("x")


async def test_using_a_client_from_another_event_loop_is_a_clear_error(
    make_server: ServerFactory,
) -> None:
    server = await make_server([("GET", "/invocations/{id}", ok)])
    async with server.client() as kernel:
        await kernel.invocations.retrieve("inv_1")

        def elsewhere() -> None:
            async def call() -> None:
                await kernel.invocations.retrieve("inv_1")

            with pytest.raises(RuntimeError, match="another event loop"):
                asyncio.run(call())

        await asyncio.to_thread(elsewhere)


# --- the key stays secret ------------------------------------------------------------------


async def test_the_key_never_appears_in_repr_errors_or_debug_logs(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async def not_found(_: web.Request) -> web.Response:
        return json_response('{"code":"not_found","message":"nope"}', 404)

    server = await make_server([("GET", "/invocations/{id}", not_found)])
    caplog.set_level(logging.DEBUG)
    async with server.client() as kernel:
        assert API_KEY not in repr(kernel)
        with pytest.raises(NotFoundError) as caught:
            await kernel.invocations.retrieve("x")
    texts = [str(caught.value), repr(caught.value), caplog.text]
    texts += [str(v) for v in vars(caught.value).values()]
    # logging is on, and says things
    assert f'HTTP Request: GET {server.url}/invocations/x "404 Not Found"' in caplog.text
    for text in texts:
        assert API_KEY not in text


async def test_authorization_is_not_sent_to_another_origin_after_a_redirect(
    make_server: ServerFactory,
) -> None:
    other = await make_server([("GET", "/elsewhere", ok)])

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"{other.url}/elsewhere")

    origin = await make_server([("GET", "/invocations/{id}", redirect)])
    async with origin.client() as kernel:
        await kernel.invocations.retrieve("x")
    assert origin.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"
    assert "Authorization" not in other.requests[0].headers


async def test_authorization_is_kept_on_a_same_origin_redirect(make_server: ServerFactory) -> None:
    async def redirect(request: web.Request) -> web.Response:
        if request.match_info["id"] == "old":
            raise web.HTTPTemporaryRedirect("/invocations/new")
        return json_response(INVOCATION_JSON)

    server = await make_server([("GET", "/invocations/{id}", redirect)])
    async with server.client() as kernel:
        await kernel.invocations.retrieve("old")
    assert server.requests[1].headers["Authorization"] == f"Bearer {API_KEY}"
