"""The rate-limit gate against small servers with a fixed-window rate limit: it spends the
budget the server grants, never stalls behind a request that is slow to answer, re-opens
when the window resets, and lets waiting calls be cancelled."""

from __future__ import annotations

import asyncio
import math

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, web

from kernel_async import RateLimitError, RetryPolicy

from .conftest import INVOCATION_JSON, ServerFactory, json_response


class Window:
    """A fixed-window rate limit, as the service documents it: ``X-RateLimit-Remaining``
    on every answer, 429 + ``Retry-After`` past the limit (``reset``: also send
    ``X-RateLimit-Reset``, the seconds left in the window)."""

    def __init__(self, limit: int, seconds: float, *, reset: bool = False) -> None:
        self.limit, self.seconds, self.reset = limit, seconds, reset
        self.start = -math.inf
        self.count = 0
        self.refused = 0

    def admit(self) -> tuple[dict[str, str], bool]:
        now = asyncio.get_running_loop().time()
        if now >= self.start + self.seconds:
            self.start, self.count = now, 0
        left = self.start + self.seconds - now
        headers = {"X-RateLimit-Limit": str(self.limit)}
        if self.reset:
            headers["X-RateLimit-Reset"] = f"{math.ceil(left * 1000) / 1000:.3f}"
        if self.count >= self.limit:
            self.refused += 1
            headers["X-RateLimit-Remaining"] = "0"
            headers["Retry-After"] = f"{math.ceil(left * 1000) / 1000:.3f}"
            return headers, False
        self.count += 1
        headers["X-RateLimit-Remaining"] = str(self.limit - self.count)
        return headers, True


def limited(window: Window, answer: web.Response) -> web.Response:
    headers, ok = window.admit()
    if not ok:
        return json_response('{"code":"rate_limited","message":"slow down"}', 429, headers)
    answer.headers.update(headers)
    return answer


async def test_a_long_create_in_flight_does_not_stall_every_other_call(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    window = Window(limit=3, seconds=0.3)
    create_arrived, finish_create = asyncio.Event(), asyncio.Event()

    async def create(request: web.Request) -> web.Response:
        headers, _ = window.admit()  # counted when it arrives, answered much later
        create_arrived.set()
        await finish_create.wait()
        response = json_response(INVOCATION_JSON.replace('"running"', '"succeeded"'))
        response.headers.update(headers)
        return response

    async def list_(request: web.Request) -> web.Response:
        return limited(window, json_response("[]"))

    server = await make_server([("POST", "/invocations", create), ("GET", "/invocations", list_)])
    async with server.client(retry=fast_policy) as kernel:
        created = asyncio.create_task(kernel.invocations.create("my-app", "analyze"))
        await create_arrived.wait()
        for _ in range(8):  # more than the window's budget: the window must reset under it
            page = await kernel.invocations.list(timeout=4)
            assert page.items == []
        finish_create.set()
        assert (await created).status == "succeeded"
    lists = [seen for seen in server.requests if seen.method == "GET"]
    assert len(lists) - window.refused == 8


async def test_the_gate_reopens_when_x_ratelimit_reset_says_without_a_429(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    window = Window(limit=2, seconds=0.5, reset=True)

    async def list_(request: web.Request) -> web.Response:
        return limited(window, json_response("[]"))

    server = await make_server([("GET", "/invocations", list_)])
    async with server.client(retry=fast_policy) as kernel:
        for _ in range(7):
            await kernel.invocations.list(timeout=4)
    assert len(server.requests) == 7
    assert window.refused == 0  # it waited for the reset instead of probing early


async def test_cancelling_calls_waiting_at_the_gate_raises_only_cancelled(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    """Calls wait at a gate whose budget is spent; half are cancelled just as an answer
    re-opens it (the gate moves its queue on before they see their cancellation): each
    cancelled one raises `CancelledError`, never ``ValueError``, and the rest all go."""
    release = asyncio.Event()
    calls: list[asyncio.Task[object]] = []

    async def cancel_on_answer(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        resp = await handler(req)
        if req.url.path.endswith("/x"):
            for call in calls[1::2]:
                call.cancel()  # then the gate hears the answer, before they run
        return resp

    async def retrieve(request: web.Request) -> web.Response:
        which = request.match_info["id"]
        if which == "x":
            await release.wait()
        remaining = {"first": "1", "x": "50"}.get(which, "0")
        return json_response(INVOCATION_JSON, headers={"X-RateLimit-Remaining": remaining})

    server = await make_server([("GET", "/invocations/{id}", retrieve)])
    policy = fast_policy.with_max_retries(0)
    async with server.client(retry=policy, middlewares=[cancel_on_answer]) as kernel:
        await kernel.invocations.retrieve("first")  # a budget of one
        held = asyncio.create_task(kernel.invocations.retrieve("x"))  # spends it
        calls += [asyncio.create_task(kernel.invocations.retrieve("y")) for _ in range(40)]
        gate = kernel._backpressure.gate()
        while gate.waiting < 40:
            await asyncio.sleep(0)
        release.set()
        await held
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results[1::2])
    assert not any(isinstance(r, BaseException) for r in results[::2])


async def test_a_pause_past_the_deadline_of_a_call_sent_already_says_so_at_once(
    make_server: ServerFactory, fast_policy: RetryPolicy
) -> None:
    """Call A got a short rate-limit 429 and waits at the gate to go again; call B's 429
    then pauses the gate past A's deadline: A fails at once, and its error says it was
    sent (not "nothing was sent")."""
    a_waits = asyncio.Event()

    async def seen_by_client(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        resp = await handler(req)
        if req.url.path.endswith("/a"):
            await resp.read()
            a_waits.set()  # the retry middleware takes it from here without yielding
        return resp

    async def retrieve(request: web.Request) -> web.Response:
        if request.match_info["id"] == "b":
            await a_waits.wait()
        retry_after = "0.05" if request.match_info["id"] == "a" else "30"
        headers = {"Retry-After": retry_after, "X-RateLimit-Remaining": "0"}
        return json_response('{"code":"rate_limited","message":"slow down"}', 429, headers)

    server = await make_server([("GET", "/invocations/{id}", retrieve)])
    async with server.client(retry=fast_policy, middlewares=[seen_by_client]) as kernel:
        a = asyncio.create_task(kernel.invocations.retrieve("a", timeout=5))
        b = asyncio.create_task(kernel.invocations.retrieve("b", timeout=5))
        results = await asyncio.gather(a, b, return_exceptions=True)
    error = results[0]
    assert isinstance(error, RateLimitError)
    assert "nothing was sent" not in str(error)
    assert "sent 1 time(s)" in str(error)
    assert isinstance(results[1], RateLimitError)
    assert len(server.requests) == 2
