"""``with_raw_response`` and ``with_streaming_response``: the official SDK's ways to see a
call's HTTP response. Nothing here runs unless they are used: each such call goes through a
copy of the client (`AsyncKernel.with_options`) with one more middleware, which records the
response; ordinary calls are not touched."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse

from .._response import AsyncAPIResponse, HTTPRequest, HTTPResponse
from ._operations import Invocations as Operations

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["InvocationsWithRawResponse", "InvocationsWithStreamingResponse"]

P = ParamSpec("P")
T = TypeVar("T")


class _Recorder:
    """A middleware that keeps the last response it saw (read in full: the call would read
    it anyway, and aiohttp keeps the body), and counts the attempts."""

    __slots__ = ("attempts", "response")

    def __init__(self) -> None:
        self.attempts = 0
        self.response: HTTPResponse | None = None

    async def __call__(self, req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        self.attempts += 1
        resp = await handler(req)
        body = await resp.read()
        request = HTTPRequest(req.method, str(req.url))
        self.response = HTTPResponse(resp.status, resp.headers, body, request)
        return resp


def _raw(
    operations: Operations, method: Callable[Concatenate[Operations, P], Awaitable[T]]
) -> Callable[P, Awaitable[AsyncAPIResponse[T]]]:
    """``method`` of ``operations``, returning its raw response."""

    async def call(*args: P.args, **kwargs: P.kwargs) -> AsyncAPIResponse[T]:
        client = operations._client
        recorder = _Recorder()
        copy = client.with_options(middlewares=(*client._user_middlewares, recorder))
        loop = asyncio.get_running_loop()
        started = loop.time()
        parsed = await method(copy.invocations, *args, **kwargs)
        elapsed = datetime.timedelta(seconds=loop.time() - started)
        http = recorder.response
        if http is None:  # pragma: no cover - every call sends a request
            raise RuntimeError("no response was recorded")
        return AsyncAPIResponse(http, parsed, elapsed=elapsed, retries_taken=recorder.attempts - 1)

    return call


@asynccontextmanager
async def _entered(call: Awaitable[AsyncAPIResponse[T]]) -> AsyncIterator[AsyncAPIResponse[T]]:
    yield await call


class _HasOperations(Protocol):
    _operations: Operations


class _RawMethod(Generic[P, T]):
    """An operation, as a method returning its `AsyncAPIResponse`."""

    def __init__(self, method: Callable[Concatenate[Operations, P], Awaitable[T]]) -> None:
        self._method = method
        self.__doc__ = method.__doc__

    @overload
    def __get__(self, owner: None, cls: type[object]) -> Self: ...
    @overload
    def __get__(
        self, owner: _HasOperations, cls: type[object]
    ) -> Callable[P, Awaitable[AsyncAPIResponse[T]]]: ...
    def __get__(
        self, owner: _HasOperations | None, cls: type[object]
    ) -> Self | Callable[P, Awaitable[AsyncAPIResponse[T]]]:
        if owner is None:
            return self
        return _raw(owner._operations, self._method)


class _StreamedMethod(_RawMethod[P, T]):
    """An operation, as an async context manager of its `AsyncAPIResponse`."""

    @overload  # type: ignore[override]
    def __get__(self, owner: None, cls: type[object]) -> Self: ...
    @overload
    def __get__(
        self, owner: _HasOperations, cls: type[object]
    ) -> Callable[P, AbstractAsyncContextManager[AsyncAPIResponse[T]]]: ...
    def __get__(
        self, owner: _HasOperations | None, cls: type[object]
    ) -> Self | Callable[P, AbstractAsyncContextManager[AsyncAPIResponse[T]]]:
        if owner is None:
            return self
        raw = _raw(owner._operations, self._method)

        def call(
            *args: P.args, **kwargs: P.kwargs
        ) -> AbstractAsyncContextManager[AsyncAPIResponse[T]]:
            return _entered(raw(*args, **kwargs))

        return call


class InvocationsWithRawResponse:
    """``kernel.invocations.with_raw_response``: the one-request methods of
    `Invocations`, each returning an `AsyncAPIResponse` (``headers``, ``status_code``,
    ``http_request``, ``await parse()``) instead of the parsed object. ``list`` returns the
    first page's response (``parse()`` gives the `Page`).

    `wait`, `run` and `map` make many requests, and `follow` is a stream that resumes
    over several responses: they have no single raw response, so they are not here.
    """

    __slots__ = ("_operations",)

    def __init__(self, operations: Operations) -> None:
        self._operations = operations

    create = _RawMethod(Operations.create)
    retrieve = _RawMethod(Operations.retrieve)
    update = _RawMethod(Operations.update)
    cancel = _RawMethod(Operations.cancel)
    list = _RawMethod(Operations.list)
    list_browsers = _RawMethod(Operations.list_browsers)
    delete_browsers = _RawMethod(Operations.delete_browsers)


class InvocationsWithStreamingResponse:
    """``kernel.invocations.with_streaming_response``: the methods of
    `InvocationsWithRawResponse`, each an async context manager of its `AsyncAPIResponse`.

    The body is read before the block is entered (the API's answers are small JSON
    documents). `follow` is not here: its stream resumes over several responses.
    """

    __slots__ = ("_operations",)

    def __init__(self, operations: Operations) -> None:
        self._operations = operations

    create = _StreamedMethod(Operations.create)
    retrieve = _StreamedMethod(Operations.retrieve)
    update = _StreamedMethod(Operations.update)
    cancel = _StreamedMethod(Operations.cancel)
    list = _StreamedMethod(Operations.list)
    list_browsers = _StreamedMethod(Operations.list_browsers)
    delete_browsers = _StreamedMethod(Operations.delete_browsers)
