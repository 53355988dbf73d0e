"""Every error status maps to its class, with the Error body decoded into it."""

from __future__ import annotations

import pytest
from aiohttp import web

import kernel_async as ka
from kernel_async import APIResponseValidationError, APIStatusError, RetryPolicy

from .conftest import INVOCATION_JSON, ServerFactory, json_response

NO_RETRY = RetryPolicy(max_retries=0)

ERROR_BODY = (
    '{"code":"bad_request","message":"Missing required field: app_name",'
    '"details":[{"code":"invalid_input","message":"app_name is required"}],'
    '"inner_error":{"code":"validation","message":"schema"},"extra":"ignored"}'
)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ka.BadRequestError),
        (401, ka.AuthenticationError),
        (403, ka.PermissionDeniedError),
        (404, ka.NotFoundError),
        (409, ka.ConflictError),
        (422, ka.UnprocessableEntityError),
        (429, ka.RateLimitError),
        (418, APIStatusError),
        (500, ka.InternalServerError),
        (502, ka.InternalServerError),
        (503, ka.InternalServerError),
        (599, ka.InternalServerError),
    ],
)
async def test_status_maps_to_class_with_decoded_body(
    make_server: ServerFactory, status: int, cls: type[APIStatusError]
) -> None:
    async def handler(_: web.Request) -> web.Response:
        return json_response(ERROR_BODY, status, headers={"X-Request-Id": "req_1"})

    server = await make_server([("GET", "/invocations/{id}", handler)])
    async with server.client(retry=NO_RETRY) as kernel:
        with pytest.raises(cls) as caught:
            await kernel.invocations.retrieve("inv_1")
    exc = caught.value
    assert type(exc) is cls
    assert exc.status == status
    assert exc.code == "bad_request"
    assert exc.message == "Missing required field: app_name"
    assert [(d.code, d.message) for d in exc.details] == [("invalid_input", "app_name is required")]
    assert exc.inner_error is not None
    assert exc.inner_error.code == "validation"
    assert exc.headers["X-Request-Id"] == "req_1"
    assert exc.body == ERROR_BODY.encode()
    assert str(exc).startswith(f"{status} bad_request: Missing required field: app_name")
    assert "GET" in str(exc)


async def test_html_502_from_a_proxy_gives_a_readable_message(
    make_server: ServerFactory,
) -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(
            status=502,
            text="<html><body><h1>502 Bad Gateway</h1></body></html>",
            content_type="text/html",
        )

    server = await make_server([("GET", "/invocations/{id}", handler)])
    async with server.client(retry=NO_RETRY) as kernel:
        with pytest.raises(ka.InternalServerError) as caught:
            await kernel.invocations.retrieve("x")
    assert caught.value.code is None
    assert "HTTP 502 Bad Gateway" in caught.value.message
    assert "HTML" in caught.value.message
    assert caught.value.body.startswith(b"<html>")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "HTTP 500 Internal Server Error with an empty body"),
        (b"upstream   connect\nerror", "HTTP 500 Internal Server Error: upstream connect error"),
        (b'{"unexpected": "shape"}', 'HTTP 500 Internal Server Error: {"unexpected": "shape"}'),
        (b"x" * 500, "HTTP 500 Internal Server Error: " + "x" * 200 + "…"),
    ],
)
async def test_non_api_error_bodies_still_explain_themselves(
    make_server: ServerFactory, body: bytes, expected: str
) -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=500, body=body)

    server = await make_server([("GET", "/invocations/{id}", handler)])
    async with server.client(retry=NO_RETRY) as kernel:
        with pytest.raises(ka.InternalServerError) as caught:
            await kernel.invocations.retrieve("x")
    assert caught.value.message == expected


@pytest.mark.parametrize(
    "body",
    [
        INVOCATION_JSON[:40],  # truncated
        '{"id": 1}',  # wrong types, missing fields
        "[]",
        "not json",
    ],
)
async def test_a_200_that_does_not_decode_raises_validation_error_with_raw_body(
    make_server: ServerFactory, body: str
) -> None:
    async def handler(_: web.Request) -> web.Response:
        return json_response(body)

    server = await make_server([("GET", "/invocations/{id}", handler)])
    async with server.client() as kernel:
        with pytest.raises(APIResponseValidationError) as caught:
            await kernel.invocations.retrieve("x")
    assert caught.value.body == body.encode()
    assert caught.value.status == 200
    assert len(server.requests) == 1  # a bad body is not retried


async def test_a_200_with_the_wrong_content_type_is_a_validation_error(
    make_server: ServerFactory,
) -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(text=INVOCATION_JSON, content_type="text/html")

    server = await make_server([("GET", "/invocations/{id}", handler)])
    async with server.client() as kernel:
        with pytest.raises(APIResponseValidationError, match="text/html"):
            await kernel.invocations.retrieve("x")


def test_hierarchy() -> None:
    assert issubclass(ka.APITimeoutError, ka.APIConnectionError)
    for cls in (ka.APIConnectionError, ka.APIResponseValidationError, ka.APIStatusError):
        assert issubclass(cls, ka.KernelError)
    for cls in (ka.NotFoundError, ka.RateLimitError, ka.InternalServerError):
        assert issubclass(cls, APIStatusError)
