"""A call's deadline bounds every wait it makes, and the timeout error says what was sent."""

from __future__ import annotations

import pytest
from aiohttp import web

from kernel_async import APITimeoutError, RetryPolicy

from .conftest import ServerFactory, json_response

CONCURRENCY_429 = '{"code":"concurrency_limit_exceeded","message":"app at its limit"}'


async def test_a_create_refused_until_its_deadline_says_it_was_sent(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    async def create(request: web.Request) -> web.Response:
        return json_response(CONCURRENCY_429, 429)

    server = await make_server([("POST", "/invocations", create)])
    async with server.client(retry=fast_policy) as kernel:
        with pytest.raises(APITimeoutError) as caught:
            await kernel.invocations.create("my-app", "analyze", async_=True, timeout=0.3)
    sent = sum(r.method == "POST" for r in server.requests)  # (the app may be listed too)
    assert sent >= 1
    message = str(caught.value)
    assert "nothing was sent" not in message
    assert f"sent {sent} time(s) and refused each time with 429" in message
    assert caught.value.invocation_id is None
