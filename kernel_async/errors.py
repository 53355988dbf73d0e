"""The exceptions kernel_async raises.

```
KernelError
└── APIError                          .message .request
    ├── APIConnectionError            transport failed; the request may not have arrived
    │   ├── APITimeoutError           .invocation_id when an invocation was started
    │   ├── ClientClosedError         the client was closed (`aclose`) before or during the call
    │   └── RedirectError             a redirect this client will not follow
    ├── APIResponseValidationError    body did not match the schema (.body: the raw bytes)
    └── APIStatusError                .status_code (.status) .response .code .details .body
        ├── BadRequestError 400          ├── ConflictError 409
        ├── AuthenticationError 401      ├── UnprocessableEntityError 422
        ├── PermissionDeniedError 403    ├── RateLimitError 429
        ├── NotFoundError 404            └── InternalServerError 5xx
```

The names and the tree are the official ``kernel`` SDK's; ``.response`` is an
`HTTPResponse` (``status_code``, ``headers``, ``content``, ``text``, ``json()``) and
``.request`` an `HTTPRequest` (``method``, ``url``).

No exception carries request headers, and nothing reachable from one (its cause, context,
arguments or attributes) holds the API key: aiohttp's own exceptions are scrubbed of the
``Authorization`` header before they are chained.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from ._response import HTTPRequest, HTTPResponse
from .models import Error, ErrorDetail, error_decoder

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "ConflictError",
    "InternalServerError",
    "KernelError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RedirectError",
    "UnprocessableEntityError",
]

_EMPTY_HEADERS: Mapping[str, str] = {}


class KernelError(Exception):
    """Base class of every exception kernel_async raises."""


class APIError(KernelError):
    """An API request failed: it could not be made, or the API answered with an error or
    a body that did not match its schema (the official SDK's base class of the three)."""

    message: str
    """What went wrong."""
    method: str = ""
    """The request's HTTP method (empty when not known)."""
    url: str = ""
    """The request's URL (empty when not known; no credentials are ever part of it)."""

    @property
    def request(self) -> HTTPRequest:
        """The request that failed: its method and URL (never its headers)."""
        return HTTPRequest(self.method, self.url)


class APIConnectionError(APIError):
    """The request failed in transport: refused, reset, dropped or timed out.

    The request may or may not have reached the server. ``create()`` is never retried
    after such an ambiguous failure, so check with ``list()`` before creating again.
    """

    def __init__(
        self, message: str = "Connection error.", *, method: str = "", url: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        """What went wrong."""
        self.method = method
        """The request's HTTP method."""
        self.url = url
        """The request's URL (no credentials are ever part of it)."""


class APITimeoutError(APIConnectionError):
    """The request, or a stream, did not complete within its timeout.

    ``invocation_id`` is set when the call had started an invocation (a `run` or a `map`
    item whose deadline passed): it may still be running, unless it was cancelled.
    """

    def __init__(
        self,
        message: str = "Request timed out.",
        *,
        method: str = "",
        url: str = "",
        invocation_id: str | None = None,
    ) -> None:
        super().__init__(message, method=method, url=url)
        self.invocation_id = invocation_id
        """The invocation the call had started, if any (``None``: none was started)."""


class ClientClosedError(APIConnectionError):
    """The client was closed (`AsyncKernel.aclose`) before or while this call ran.

    Every call waiting when the client closes (for a slot, at the rate gate, for an answer,
    on an event stream) ends with it, and so does every call made afterwards.
    """

    def __init__(self, message: str = "the AsyncKernel client is closed", **kwargs: str) -> None:
        super().__init__(message, **kwargs)


class RedirectError(APIConnectionError):
    """The server redirected somewhere this client does not follow: a non-HTTP or
    malformed ``Location``, another origin for a call that is not idempotent (a create is
    never re-sent elsewhere), an ``https`` to ``http`` downgrade, or too many redirects."""

    def __init__(
        self, message: str, *, method: str = "", url: str = "", location: str = ""
    ) -> None:
        super().__init__(message, method=method, url=url)
        self.location = location
        """Where the server pointed (credentials removed), when it said."""


class APIResponseValidationError(APIError):
    """The server answered, but its body did not match the API's schema."""

    def __init__(
        self,
        message: str,
        *,
        body: bytes,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        """What did not match."""
        self.body = body
        """The raw body (or SSE ``data``) as received."""
        self.status = status
        """The HTTP status of the response."""
        self.headers = headers if headers is not None else _EMPTY_HEADERS
        """The response headers."""

    @property
    def status_code(self) -> int:
        """The HTTP status of the response (the official SDK's name for `status`)."""
        return self.status

    @property
    def response(self) -> HTTPResponse:
        """The response: ``status_code``, ``headers``, ``content``, ``text``, ``json()``."""
        return HTTPResponse(self.status, self.headers, self.body, self.request)


class APIStatusError(APIError):
    """The API answered with an error status (4xx or 5xx).

    The API's `Error` body, when there is one, is decoded into `code`, `message`, `details`
    and `inner_error`; `body` always has the raw bytes.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        details: list[ErrorDetail] | None = None,
        inner_error: ErrorDetail | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        method: str = "",
        url: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        """The error message: the API's own, or a summary of a body that was not JSON."""
        self.status = status
        """The HTTP status code."""
        self.code = code
        """The API's machine-readable error code, e.g. ``not_found`` (``None`` if absent)."""
        self.details = details or []
        """Additional error details from the body."""
        self.inner_error = inner_error
        """The underlying error from the body, if any."""
        self.headers = headers if headers is not None else _EMPTY_HEADERS
        """The response headers."""
        self.body = body
        """The raw response body."""
        self.method = method
        """The request's HTTP method."""
        self.url = url
        """The request's URL."""

    @property
    def status_code(self) -> int:
        """The HTTP status code (the official SDK's name for `status`)."""
        return self.status

    @property
    def response(self) -> HTTPResponse:
        """The response: ``status_code``, ``headers``, ``content`` (the raw body), ``text``
        and ``json()``, as on the official SDK's ``httpx.Response``."""
        return HTTPResponse(self.status, self.headers, self.body, self.request)

    def __str__(self) -> str:
        code = f" {self.code}" if self.code else ""
        details = "; ".join(
            d.message for d in self.details if d.message and d.message not in self.message
        )
        detail = f": {details}" if details else ""
        where = f" ({self.method} {self.url})" if self.method else ""
        return f"{self.status}{code}: {self.message}{detail}{where}"

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(status={self.status}, code={self.code!r}, message={self.message!r})"


class BadRequestError(APIStatusError):
    """400: the request was invalid; `details` usually says which field."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or invalid."""


class PermissionDeniedError(APIStatusError):
    """403: the API key may not do this."""


class NotFoundError(APIStatusError):
    """404: no such invocation (or app, or action)."""


class ConflictError(APIStatusError):
    """409: the request conflicts with the resource's current state."""


class UnprocessableEntityError(APIStatusError):
    """422: the request was well-formed but could not be processed."""


class RateLimitError(APIStatusError):
    """429: too many requests, after the retry policy gave up or would have waited too long.

    `retry_after` is the wait the server asked for, in seconds, when it said.
    """

    retry_after: float | None = None
    """Seconds the server asked to wait before retrying, or ``None`` if it did not say."""


class InternalServerError(APIStatusError):
    """5xx: the server failed."""


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}

_MAX_TEXT_IN_MESSAGE = 200


def _summarize_body(status: int, reason: str | None, body: bytes) -> str:
    """A readable one-line message for an error body that is not the API's JSON."""
    label = f"HTTP {status}" + (f" {reason}" if reason else "")
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return f"{label} with an empty body"
    if text.startswith("<"):
        return f"{label} (the body was HTML, probably from a proxy, not the Kernel API)"
    first = " ".join(text.split())
    if len(first) > _MAX_TEXT_IN_MESSAGE:
        first = first[:_MAX_TEXT_IN_MESSAGE] + "…"
    return f"{label}: {first}"


def make_status_error(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    reason: str | None = None,
    method: str = "",
    url: str = "",
    retry_after: float | None = None,
) -> APIStatusError:
    """Build the typed exception for an error response: status → class, body → fields."""
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    error: Error | None
    try:
        error = error_decoder.decode(body) if body else None
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        error = None
    if error is not None:
        message = error.message
        code: str | None = error.code
        details = error.details
        inner = error.inner_error
    else:
        message = _summarize_body(status, reason, body)
        code, details, inner = None, None, None
    exc = cls(
        message,
        status=status,
        code=code,
        details=details,
        inner_error=inner,
        headers=headers,
        body=body,
        method=method,
        url=url,
    )
    if isinstance(exc, RateLimitError):
        exc.retry_after = retry_after
    return exc
