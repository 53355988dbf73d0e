"""The official SDK's idioms, working with kernel_async: the error tree and its attributes,
``environment=``, raw responses, ``KERNEL_LOG``, ``to_dict()``/``to_json()``."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from aiohttp import web

import kernel_async
from kernel_async import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AsyncKernel,
    Invocation,
    KernelError,
    LogEvent,
    NotFoundError,
    RateLimitError,
)
from kernel_async.models import InvocationCreateRequest
from kernel_async.testing import KernelEmulator

from .conftest import API_KEY, ServerFactory, json_response

# --- errors --------------------------------------------------------------------------------


def test_api_error_is_the_base_of_the_api_errors_under_kernel_error() -> None:
    for cls in (APIStatusError, APIConnectionError, APITimeoutError, APIResponseValidationError):
        assert issubclass(cls, APIError)
    assert issubclass(APIError, KernelError)
    assert issubclass(RateLimitError, APIStatusError)


async def test_status_errors_have_status_code_response_and_body(
    kernel_client: AsyncKernel,
) -> None:
    with pytest.raises(APIError) as caught:
        await kernel_client.invocations.retrieve("missing")
    error = caught.value
    assert isinstance(error, NotFoundError)
    assert error.status_code == error.status == 404
    assert error.response.status_code == 404
    assert error.response.headers["Content-Type"].startswith("application/json")
    assert error.response.json()["code"] == "not_found"
    assert error.response.text == error.body.decode()
    assert error.response.content == error.body  # our .body: the raw bytes
    assert error.request.method == "GET"
    assert error.request.url.endswith("/invocations/missing")


async def test_connection_errors_carry_the_request(unused_tcp_port: int) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}"
    async with AsyncKernel(api_key=API_KEY, base_url=url, max_retries=0) as kernel:
        with pytest.raises(APIError) as caught:
            await kernel.invocations.retrieve("x")
    assert isinstance(caught.value, APIConnectionError)
    assert caught.value.request.url == f"{url}/invocations/x"
    assert API_KEY not in repr(caught.value.request) + str(dir(caught.value.request))


async def test_validation_errors_have_status_code_and_response(
    make_server: ServerFactory,
) -> None:
    async def not_an_invocation(_: web.Request) -> web.Response:
        return json_response('{"id": 1}')

    server = await make_server([("GET", "/invocations/{id}", not_an_invocation)])
    async with server.client() as kernel:
        with pytest.raises(APIResponseValidationError) as caught:
            await kernel.invocations.retrieve("x")
    assert caught.value.status_code == 200
    assert caught.value.response.json() == {"id": 1}


# --- environment ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "url"),
    [("production", "https://api.onkernel.com"), ("development", "https://localhost:3001")],
)
def test_environment_picks_the_official_base_url(
    monkeypatch: pytest.MonkeyPatch, environment: Any, url: str
) -> None:
    monkeypatch.delenv("KERNEL_BASE_URL", raising=False)
    assert AsyncKernel(api_key=API_KEY, environment=environment).base_url == url


def test_base_url_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEL_BASE_URL", "http://127.0.0.1:9")
    kernel = AsyncKernel(api_key=API_KEY, environment="development", base_url="http://127.0.0.1:1")
    assert kernel.base_url == "http://127.0.0.1:1"


def test_environment_with_kernel_base_url_is_ambiguous_unless_base_url_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KERNEL_BASE_URL", "http://127.0.0.1:9")
    with pytest.raises(ValueError, match="Ambiguous URL"):
        AsyncKernel(api_key=API_KEY, environment="development")
    kernel = AsyncKernel(api_key=API_KEY, environment="development", base_url=None)
    assert kernel.base_url == "https://localhost:3001"
    assert AsyncKernel(api_key=API_KEY).base_url == "http://127.0.0.1:9"


def test_unknown_environment_is_refused() -> None:
    with pytest.raises(ValueError, match="Unknown environment"):
        AsyncKernel(api_key=API_KEY, environment="staging")  # type: ignore[arg-type]


# --- raw responses -------------------------------------------------------------------------


async def test_with_raw_response_gives_headers_status_request_and_parse(
    kernel_emulator: KernelEmulator, kernel_client: AsyncKernel
) -> None:
    @kernel_emulator.action("my-app", "analyze")
    def analyze(ctx: Any, payload: Any) -> Any:
        return {"n": payload["n"]}

    raw = kernel_client.invocations.with_raw_response
    response = await raw.create("my-app", "analyze", payload={"n": 2})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.http_request.method == "POST"
    assert response.http_request.url == f"{kernel_emulator.url}/invocations"
    assert response.retries_taken == 0
    created = await response.parse()
    assert created.output_as() == {"n": 2}
    assert (await response.json())["id"] == created.id

    got = await raw.retrieve(created.id)
    assert (await got.parse()).id == created.id
    page = await (await raw.list(app_name="my-app")).parse()
    assert [inv.id for inv in page.items] == [created.id]
    assert (await (await raw.list_browsers(created.id)).parse()) == []
    deleted = await raw.delete_browsers(created.id)
    assert deleted.status_code == 204
    queued = await kernel_client.invocations.create("my-app", "analyze", async_=True, payload={})
    cancelled = await raw.cancel(queued.id)
    assert cancelled.http_request.method == "PATCH"
    for seen in (got, cancelled):
        request = seen.http_request
        texts = repr(seen) + repr(request) + request.url + str(seen.headers)
        assert kernel_emulator.api_key not in texts  # never the Authorization header


async def test_raw_response_counts_retries_and_shows_the_last_attempt(
    make_server: ServerFactory,
) -> None:
    answers = iter([503, 200])

    async def flaky(_: web.Request) -> web.Response:
        status = next(answers)
        if status == 503:
            return json_response('{"code":"unavailable","message":"later"}', 503)
        return json_response(
            '{"id":"x","app_name":"a","version":"1","action_name":"b",'
            '"status":"running","started_at":"2026-01-01T00:00:00Z"}'
        )

    server = await make_server([("GET", "/invocations/{id}", flaky)])
    async with server.client(retry=kernel_async.RetryPolicy(initial_delay=0.001)) as kernel:
        response = await kernel.invocations.with_raw_response.retrieve("x")
    assert response.retries_taken == 1
    assert response.status_code == 200
    assert (await response.parse()).status == "running"


async def test_raw_response_raises_the_typed_error(kernel_client: AsyncKernel) -> None:
    with pytest.raises(NotFoundError):
        await kernel_client.invocations.with_raw_response.update("missing", status="failed")


async def test_with_streaming_response_is_a_context_manager(
    kernel_emulator: KernelEmulator, kernel_client: AsyncKernel
) -> None:
    @kernel_emulator.action("my-app", "analyze")
    def analyze(ctx: Any, payload: Any) -> Any:
        return "done"

    streaming = kernel_client.invocations.with_streaming_response
    async with streaming.create("my-app", "analyze") as response:
        assert response.status_code == 200
        lines = [line async for line in response.iter_lines()]
        created = await response.parse()
    assert created.id in lines[0]


async def test_ordinary_calls_do_not_pay_for_raw_responses(kernel_client: AsyncKernel) -> None:
    # The recording middleware is only on the copies made for raw calls.
    with pytest.raises(NotFoundError):
        await kernel_client.invocations.with_raw_response.retrieve("missing")
    assert kernel_client._user_middlewares == ()


# --- KERNEL_LOG ----------------------------------------------------------------------------

_LOGGED_CALLS = textwrap.dedent(
    """
    import asyncio, sys
    from kernel_async import AsyncKernel, NotFoundError

    async def main():
        async with AsyncKernel(api_key=sys.argv[1], base_url=sys.argv[2]) as kernel:
            try:
                await kernel.invocations.retrieve("missing")
            except NotFoundError:
                pass
            await kernel.invocations.create("my-app", "analyze")

    asyncio.run(main())
    """
)


def _run_logged(kernel_log: str | None, url: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "KERNEL_LOG"}
    if kernel_log is not None:
        env["KERNEL_LOG"] = kernel_log
    done = subprocess.run(
        [sys.executable, "-c", _LOGGED_CALLS, API_KEY, url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert API_KEY not in done.stdout
    return done.stderr


@pytest.mark.parametrize("level", ["info", "debug"])
async def test_kernel_log_logs_requests_to_stderr_without_the_key(
    make_server: ServerFactory, level: str
) -> None:
    async def not_found(_: web.Request) -> web.Response:
        return json_response('{"code":"not_found","message":"nope"}', 404)

    async def created(_: web.Request) -> web.Response:
        return json_response('{"id":"i1","action_name":"analyze","status":"succeeded"}')

    server = await make_server(
        [("GET", "/invocations/{id}", not_found), ("POST", "/invocations", created)]
    )
    import asyncio

    stderr = await asyncio.to_thread(_run_logged, level, server.url)
    assert f'HTTP Request: GET {server.url}/invocations/missing "404 Not Found"' in stderr
    assert f'HTTP Request: POST {server.url}/invocations "200 OK"' in stderr
    assert "INFO]" in stderr
    assert API_KEY not in stderr
    assert all(
        request.headers["Authorization"] == f"Bearer {API_KEY}" for request in server.requests
    )
    quiet = await asyncio.to_thread(_run_logged, None, server.url)
    assert quiet == ""


# --- to_dict / to_json ---------------------------------------------------------------------

_STARTED = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


def test_to_dict_keeps_what_the_api_sent_by_default() -> None:
    inv = Invocation(
        id="i", app_name="a", version="1", action_name="b", status="running", started_at=_STARTED
    )
    assert inv.to_dict() == {
        "id": "i",
        "app_name": "a",
        "version": "1",
        "action_name": "b",
        "status": "running",
        "started_at": _STARTED,
    }
    assert inv.to_dict(mode="json")["started_at"] == "2026-01-02T03:04:05Z"
    full = inv.to_dict(exclude_unset=False)
    assert full["output"] is None
    assert "finished_at" in full
    assert "output" not in inv.to_dict(exclude_unset=False, exclude_none=True)
    assert "output" not in inv.to_dict(exclude_unset=False, exclude_defaults=True)


def test_to_dict_api_names_tags_and_nesting() -> None:
    body = InvocationCreateRequest(app_name="a", action_name="b", version="1", async_=True)
    assert body.to_dict()["async"] is True
    assert body.to_dict(use_api_names=False)["async_"] is True
    event = LogEvent(message="hi", timestamp=_STARTED)
    assert event.to_dict(mode="json") == {
        "event": "log",
        "message": "hi",
        "timestamp": "2026-01-02T03:04:05Z",
    }


def test_to_json_indents_like_the_official_sdk() -> None:
    event = LogEvent(message="hi", timestamp=_STARTED)
    assert event.to_json() == (
        '{\n  "event": "log",\n  "timestamp": "2026-01-02T03:04:05Z",\n  "message": "hi"\n}'
    )
    assert event.to_json(indent=None) == (
        '{"event":"log","timestamp":"2026-01-02T03:04:05Z","message":"hi"}'
    )


def test_every_public_model_has_to_dict_and_to_json() -> None:
    import inspect

    import msgspec

    for name in kernel_async.__all__:
        obj = getattr(kernel_async, name)
        if inspect.isclass(obj) and issubclass(obj, msgspec.Struct):
            assert issubclass(obj, kernel_async.BaseModel), name


# --- a client never closed, as in the official README -----------------------------------


async def test_a_collected_client_that_was_never_closed_closes_its_session(
    kernel_emulator: KernelEmulator,
) -> None:
    import asyncio
    import gc

    kernel = kernel_emulator.client()
    with pytest.raises(NotFoundError):
        await kernel.invocations.retrieve("missing")
    session = kernel._transport.session
    assert session is not None
    assert not session.closed
    del kernel
    gc.collect()  # the client is in a reference cycle: only the collector frees it
    for _ in range(5):
        await asyncio.sleep(0)
    assert session.closed
