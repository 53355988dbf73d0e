"""The request and response views the official SDK's users reach for: ``error.request``,
``error.response`` and the raw response of ``with_raw_response`` (no I/O here)."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Mapping
from typing import Any, Generic, TypeVar

import msgspec

__all__ = ["AsyncAPIResponse", "HTTPRequest", "HTTPResponse"]

T = TypeVar("T")


class HTTPRequest:
    """A request as sent: its method and URL. Never its headers, so never the API key."""

    __slots__ = ("method", "url")

    def __init__(self, method: str, url: str) -> None:
        self.method = method
        """The HTTP method, e.g. ``"POST"``."""
        self.url = url
        """The full URL, query included."""

    def __repr__(self) -> str:
        return f"<HTTPRequest({self.method!r}, {self.url!r})>"


class HTTPResponse:
    """A response that was read in full: what ``httpx.Response`` offers the official SDK's
    users (``status_code``, ``headers``, ``content``, ``text``, ``json()``, ``request``)."""

    __slots__ = ("content", "headers", "request", "status_code")

    def __init__(
        self, status_code: int, headers: Mapping[str, str], content: bytes, request: HTTPRequest
    ) -> None:
        self.status_code = status_code
        """The HTTP status code."""
        self.headers = headers
        """The response headers (case-insensitive when they came from the server)."""
        self.content = content
        """The raw body."""
        self.request = request
        """The request this answered."""

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (invalid bytes replaced)."""
        return self.content.decode("utf-8", "replace")

    @property
    def is_success(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status_code < 300

    def json(self) -> Any:
        """The body decoded from JSON (raises ``msgspec.DecodeError`` if it is not JSON)."""
        return msgspec.json.decode(self.content)

    def __repr__(self) -> str:
        return f"<HTTPResponse [{self.status_code}]>"


class AsyncAPIResponse(Generic[T]):
    """What ``kernel.invocations.with_raw_response.<method>(...)`` returns: the HTTP
    response of the call (its last attempt, after any retries) and, from `parse`, the
    object the method would have returned.

    ```python
    response = await kernel.invocations.with_raw_response.retrieve(id)
    print(response.status_code, response.headers.get("X-Request-Id"))
    invocation = await response.parse()
    ```
    """

    __slots__ = ("_parsed", "elapsed", "http_response", "retries_taken")

    def __init__(
        self,
        http_response: HTTPResponse,
        parsed: T,
        *,
        elapsed: datetime.timedelta,
        retries_taken: int,
    ) -> None:
        self.http_response = http_response
        """The response, read in full (an `HTTPResponse`)."""
        self._parsed = parsed
        self.elapsed = elapsed
        """How long the call took, retries and waits included."""
        self.retries_taken = retries_taken
        """How many times the request was retried (0 if the first attempt answered)."""

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers (case-insensitive)."""
        return self.http_response.headers

    @property
    def status_code(self) -> int:
        """The HTTP status code."""
        return self.http_response.status_code

    @property
    def http_request(self) -> HTTPRequest:
        """The request: its method and URL (never its headers, so never the API key)."""
        return self.http_response.request

    @property
    def url(self) -> str:
        """The request's URL."""
        return self.http_response.request.url

    @property
    def method(self) -> str:
        """The request's HTTP method."""
        return self.http_response.request.method

    @property
    def is_closed(self) -> bool:
        """Always ``True``: the body was read and the connection released."""
        return True

    async def parse(self) -> T:
        """The object the method would have returned (decoded once, when the call was
        made)."""
        return self._parsed

    async def read(self) -> bytes:
        """The raw body."""
        return self.http_response.content

    async def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.http_response.text

    async def json(self) -> Any:
        """The body decoded from JSON."""
        return self.http_response.json()

    async def iter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        """The body in chunks of ``chunk_size`` bytes (the whole body with ``None``)."""
        content = self.http_response.content
        size = chunk_size or max(len(content), 1)
        for start in range(0, len(content), size):
            yield content[start : start + size]

    async def iter_text(self, chunk_size: int | None = None) -> AsyncIterator[str]:
        """The body as text, in chunks of about ``chunk_size`` characters."""
        text = self.http_response.text
        size = chunk_size or max(len(text), 1)
        for start in range(0, len(text), size):
            yield text[start : start + size]

    async def iter_lines(self) -> AsyncIterator[str]:
        """The body as text, line by line (without the line breaks)."""
        for line in self.http_response.text.splitlines():
            yield line

    def __repr__(self) -> str:
        http = self.http_response
        return f"<AsyncAPIResponse [{http.status_code}] {http.request.method} {http.request.url}>"
