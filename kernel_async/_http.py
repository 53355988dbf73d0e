"""HTTPClient: the one place requests are made. A call in, a typed result or a typed
error out; creates through admission control, streams opened on their own pool."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec
from aiohttp import ClientMiddlewareType, ClientResponse, ClientSession, ClientTimeout
from multidict import CIMultiDictProxy
from yarl import URL

from ._limits import classify_429
from ._limits._config import lease_for
from ._limits._seed import PROJECT_CAP_TIMEOUT, project_limits_decoder
from ._options import (
    NOT_GIVEN,
    SYNC_INVOCATION_LIMIT,
    NotGiven,
    Timeout,
    replace_total,
    to_client_timeout,
    within,
)
from ._retry import RetryMiddleware, RetryPolicy, retry_after_from_headers
from ._trace import NO_TRACE, NoTrace
from ._transport import Call, Transport, is_transport_error, scrub, transport_error
from ._utf8 import is_invalid_utf8
from .errors import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    ClientClosedError,
    KernelError,
    RateLimitError,
    make_status_error,
)
from .models import InvokeResponse, invoke_response_decoder

if TYPE_CHECKING:
    from ._limits import Backpressure
    from ._telemetry_traces import CallTrace
    from ._trace import Trace
    from .telemetry import Telemetry

__all__ = ["HTTPClient", "decode_body"]

logger = logging.getLogger("kernel_async")

T = TypeVar("T")


class HTTPClient:
    """What `AsyncKernel` sends requests with. Its configuration (set by `AsyncKernel`):
    the URL, the headers, the timeout, the middlewares and the shared transport."""

    _base_url: str
    _invocations_url: URL
    _timeout: ClientTimeout
    _retry: RetryPolicy
    _headers: dict[str, str]
    _json_headers: dict[str, str]
    _stream_headers: dict[str, str]
    _default_query: dict[str, str]
    _user_middlewares: tuple[ClientMiddlewareType, ...]
    _middleware: RetryMiddleware
    _stream_middleware: RetryMiddleware
    _rest: tuple[ClientMiddlewareType, ...] | None
    _timeout_set: bool
    _sync_timeout: ClientTimeout | None = None
    _transport: Transport
    _backpressure: Backpressure
    _telemetry: Telemetry | None
    _project_id: str | None
    _project: str | None
    _api_key: str

    def _url(self, path: str) -> URL:
        """``path`` must already be quoted."""
        return URL(self._base_url + path, encoded=True)

    def _session(self) -> ClientSession:
        transport = self._transport
        transport.check_loop()
        return transport.get()

    def _middlewares(self, call: Call, stream: bool) -> tuple[ClientMiddlewareType, ...]:
        """Ours first, bound to the call (so the rest run once per attempt), then the
        user's, then those of a session the user passed in (aiohttp replaces session
        middlewares with per-request ones, so they are carried over here)."""
        rest = self._rest
        if rest is None:
            session_mws: Sequence[ClientMiddlewareType] = getattr(
                self._transport.session, "_middlewares", ()
            )
            rest = self._rest = (*self._user_middlewares, *session_mws)
        ours = (self._stream_middleware if stream else self._middleware).bind(call)
        return (ours, *rest) if rest else (ours,)

    def _call_trace(
        self,
        operation: str | None,
        method: str,
        url: URL,
        attributes: dict[str, Any] | None = None,
    ) -> CallTrace | NoTrace:
        """The trace of a call named ``operation``: its span when telemetry is on, else
        (or for ``None``, an attempt of a call traced already) one that records nothing."""
        telemetry = self._telemetry
        if telemetry is None or operation is None:
            return NO_TRACE
        return telemetry._call(operation, method, url, {} if attributes is None else attributes)

    async def _send(
        self,
        method: str,
        url: URL,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str] | None = None,
        op: str | None = None,
    ) -> tuple[ClientResponse, bytes]:
        """Make one call (retries included) and return the response with its body.

        Raises the typed `APIStatusError` for an error status, `APIConnectionError` /
        `APITimeoutError` for transport failures. ``op`` names the call's span (when
        telemetry is on).
        """
        client_timeout = self._call_timeout(timeout)
        with self._call_trace(op, method, url) as trace:
            total = client_timeout.total  # 0 is no timeout for aiohttp too
            deadline = asyncio.get_running_loop().time() + total if total else None
            resp, content = await self._exchange(
                Call(deadline, method, trace),
                url,
                client_timeout,
                params,
                body,
                extra_headers,
                extra_query,
            )
            trace.status(resp.status)
            return resp, content

    async def _exchange(
        self,
        call: Call,
        url: URL,
        timeout: ClientTimeout,
        params: Mapping[str, str] | None,
        body: bytes | None,
        extra_headers: Mapping[str, str] | None,
        extra_query: Mapping[str, str] | None,
    ) -> tuple[ClientResponse, bytes]:
        """The request of ``call``, its retries, and its response read in full."""
        method = call.method
        session = self._session()
        try:
            headers = self._headers if body is None else self._json_headers
            resp = await session.request(
                method,
                url,
                params=self._params(params, extra_query),
                data=body,
                headers={**headers, **extra_headers} if extra_headers else headers,
                timeout=timeout,
                middlewares=self._middlewares(call, False),
            )
            try:
                content = await resp.read()
            finally:
                resp.release()
        except KernelError as exc:
            closed = self._closed_instead(exc, method, url)
            if closed is None:
                raise
            raise closed from exc
        except Exception as exc:
            error = self._failure(exc, method, url)
            if error is None:
                raise
            raise error from exc
        status = resp.status
        if logger.isEnabledFor(logging.INFO):  # as httpx logs for the official SDK
            logger.info('HTTP Request: %s %s "%d %s"', method, resp.url, status, resp.reason)
        if status >= 400:
            raise make_status_error(
                status,
                content,
                resp.headers,
                reason=resp.reason,
                method=method,
                url=str(resp.url),
                retry_after=retry_after_from_headers(resp.headers) if status == 429 else None,
            )
        return resp, content

    async def _request(
        self,
        decoder: msgspec.json.Decoder[T],
        method: str,
        url: URL,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str] | None = None,
        op: str | None = None,
    ) -> T:
        resp, content = await self._send(
            method,
            url,
            params=params,
            body=body,
            timeout=timeout,
            extra_headers=extra_headers,
            extra_query=extra_query,
            op=op,
        )
        return decode_body(decoder, content, resp.status, resp.headers)

    def _params(
        self, params: Mapping[str, str] | None, extra_query: Mapping[str, str] | None
    ) -> Mapping[str, str] | None:
        """A request's query: the client's defaults, the call's parameters, its extras."""
        if not self._default_query and not extra_query:
            return params
        return {**self._default_query, **(params or {}), **(extra_query or {})}

    async def _create(
        self,
        app_name: str,
        body: bytes,
        *,
        timeout: ClientTimeout,
        deadline: float | None,
        async_timeout_seconds: int | None,
        land: bool = False,
        on_sent: Callable[[], None] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str] | None = None,
        trace_attributes: dict[str, Any] | None = None,
    ) -> InvokeResponse:
        """``POST /invocations`` through admission control.

        The create waits for a slot of ``app_name`` (first in, first out), is sent, and on
        a concurrency 429 goes back to the head of the queue to wait for a slot again:
        until ``deadline`` (loop time; ``None`` for none), never giving up early. Each
        attempt is bounded by ``timeout`` and, unless ``land``, by the deadline too:
        ``land`` lets an attempt in flight get its answer past the deadline, so that the
        invocation it may have started is known (`run` and `map` cancel it). Any other
        failure frees the slot and is raised: the create is never re-sent after an
        ambiguous failure. ``on_sent`` is called once, when the create first leaves the
        queue. ``trace_attributes``: those of its span, when telemetry is on.
        """
        url = self._invocations_url
        with self._call_trace("create", "POST", url, trace_attributes) as trace:
            admission = self._backpressure.admission()
            loop = asyncio.get_running_loop()
            call = Call(deadline, "POST", trace)
            project = self._project_id or self._project
            if project is not None and self._backpressure.project_caps.unread(project):
                await self._backpressure.project_caps.read_once(
                    project,
                    partial(self._project_cap, project, timeout, deadline),
                    self._backpressure.seed,
                )
            report = None if trace is NO_TRACE else partial(trace.waited, "admission", app=app_name)
            refused = 0  # concurrency 429s so far
            async with admission.slot(app_name, deadline, async_timeout_seconds, report) as slot:
                shared = self._backpressure.shared()
                lease = None
                if shared is not None:
                    admission.reconcile_soon(app_name)  # some of ours may have ended unseen
                    lease = await shared.acquire(app_name, deadline)
                try:
                    if on_sent is not None:
                        on_sent()
                    while True:
                        attempt = timeout
                        if not land:
                            left = call.time_left(loop.time())
                            if left is not None and left <= 0:  # not sent (again): nothing new
                                raise _refused_until_deadline(app_name, refused)
                            attempt = within(timeout, left)
                        try:
                            resp, content = await self._exchange(
                                call, url, attempt, None, body, extra_headers, extra_query
                            )
                        except RateLimitError as exc:
                            if classify_429(exc.headers, exc.body) != "concurrency":
                                raise
                            refused += 1
                            trace.rate_limited("concurrency", exc.retry_after)
                            if lease is not None and shared is not None:
                                await shared.rejected(lease, exc.retry_after)
                            try:
                                # Shared: Redis learnt from it for the whole fleet.
                                await slot.requeue(exc.retry_after, learn=lease is None)
                                if lease is not None and shared is not None:
                                    lease = await shared.acquire(app_name, deadline, lease)
                            except APITimeoutError:
                                raise _refused_until_deadline(app_name, refused) from None
                            continue
                        result = decode_body(
                            invoke_response_decoder, content, resp.status, resp.headers
                        )
                        invocation_id = None if result.is_terminal else result.id
                        slot.started(invocation_id)
                        if lease is not None and shared is not None:
                            held, lease = lease, None
                            await shared.started(
                                held, invocation_id, lease_for(async_timeout_seconds)
                            )
                        trace.created(result)
                        return result
                finally:
                    if lease is not None and shared is not None:
                        shared.release(lease)

    async def _project_cap(
        self, project: str, timeout: ClientTimeout, deadline: float | None
    ) -> int | None:
        """``GET /org/projects/{project}/limits``'s ``max_concurrent_invocations``, or
        ``None``: no project cap, not allowed to read it, or any failure (logged). A hint:
        given up after `PROJECT_CAP_TIMEOUT` (retries included), or the call's deadline."""
        url = self._url(f"/org/projects/{quote(project, safe='')}/limits")
        soon = asyncio.get_running_loop().time() + PROJECT_CAP_TIMEOUT
        deadline = soon if deadline is None else min(deadline, soon)
        try:
            call = Call(deadline, "GET")
            attempt = within(timeout, PROJECT_CAP_TIMEOUT)
            _, content = await self._exchange(call, url, attempt, None, None, None, None)
            return project_limits_decoder.decode(content).max_concurrent_invocations
        except ClientClosedError:
            raise
        except (KernelError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.debug("Could not read project %r's limits (%s): learning them", project, exc)
            return None

    def _attempt_timeout(self) -> ClientTimeout:
        """The client's timeout for one attempt of a call whose caller set no deadline
        (inside `run`): its total bounds each read and connect instead of the whole call,
        so a create may wait for a slot as long as it takes."""
        timeout = self._timeout
        if timeout.total is None:
            return timeout
        return ClientTimeout(
            total=None,
            connect=timeout.connect,
            sock_connect=timeout.sock_connect or timeout.total,
            sock_read=timeout.sock_read or timeout.total,
        )

    def _create_timeout(self, timeout: Timeout | NotGiven, *, sync: bool) -> ClientTimeout:
        """A create's timeout: the call's, else the client's. A synchronous create with no
        timeout set on the call or the client waits as long as the service lets an action
        run (plus a margin): timing out before would leave the invocation running and
        report a timeout. Made once per client, not per call."""
        if not isinstance(timeout, NotGiven):
            return to_client_timeout(timeout)
        client_timeout = self._timeout
        total = client_timeout.total
        if not sync or self._timeout_set or not total:
            return client_timeout
        sync_timeout = self._sync_timeout
        if sync_timeout is None:
            sync_timeout = replace_total(client_timeout, max(total, SYNC_INVOCATION_LIMIT + 10.0))
            self._sync_timeout = sync_timeout
        return sync_timeout

    def _call_timeout(self, timeout: Timeout | NotGiven) -> ClientTimeout:
        return self._timeout if isinstance(timeout, NotGiven) else to_client_timeout(timeout)

    async def _open_stream(
        self,
        url: URL,
        params: Mapping[str, str] | None,
        timeout: ClientTimeout,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str] | None = None,
        trace: Trace = NO_TRACE,
    ) -> ClientResponse:
        """Open an SSE response; the caller owns (and must close) what is returned. Streams
        have a connection pool of their own, so open streams never starve calls. ``trace``:
        the stream's, which its waits report to."""
        transport = self._transport
        transport.check_loop()
        session = transport.get_stream()
        try:
            headers = self._stream_headers
            resp = await session.get(
                url,
                params=self._params(params, extra_query),
                headers={**headers, **extra_headers} if extra_headers else headers,
                timeout=timeout,
                middlewares=self._middlewares(Call(None, "GET", trace), True),
            )
        except KernelError as exc:
            closed = self._closed_instead(exc, "GET", url)
            if closed is None:
                raise
            raise closed from exc
        except Exception as exc:
            error = self._failure(exc, "GET", url)
            if error is None:
                raise
            raise error from exc
        return resp

    def _closed_instead(self, exc: KernelError, method: str, url: URL) -> ClientClosedError | None:
        """A transport failure of a client closed meanwhile is `ClientClosedError` (the
        retry middleware saw only a dropped connection); ``None``: ``exc`` stands."""
        if (
            not self._transport.closed
            or not isinstance(exc, APIConnectionError)
            or isinstance(exc, ClientClosedError)
        ):
            return None
        return ClientClosedError(
            f"{method} {url}: the client was closed while the request was in flight",
            method=method,
            url=str(url),
        )

    def _failure(self, exc: Exception, method: str, url: URL) -> KernelError | None:
        """The kernel_async error for what aiohttp raised during a call (``None``: a bug, to
        raise as it is). Whatever is chained to it is scrubbed of credentials."""
        if self._transport.closed:  # aiohttp fails in odd ways when its session closes
            scrub(exc)
            return ClientClosedError(
                f"{method} {url}: the client was closed while the request was in flight",
                method=method,
                url=str(url),
            )
        if is_transport_error(exc) or isinstance(exc, aiohttp.RedirectClientError):
            return transport_error(exc, method, str(url))
        return None


def _refused_until_deadline(app: str, refused: int) -> APITimeoutError:
    """A create whose deadline passed while it waited for a slot again after concurrency
    429s: it was sent, and refused each time (no invocation was started)."""
    if not refused:
        return APITimeoutError(
            f"the call's deadline passed before its create of app {app!r} could be sent; "
            "nothing was sent"
        )
    return APITimeoutError(
        f"the call's deadline passed while its create waited for a slot of app {app!r}: it "
        f"was sent {refused} time(s) and refused each time with 429 (the app is at its "
        "concurrency limit), so no invocation was started"
    )


def decode_body(
    decoder: msgspec.json.Decoder[T],
    content: bytes,
    status: int,
    headers: CIMultiDictProxy[str] | Mapping[str, str],
) -> T:
    """Decode a successful response body, or raise `APIResponseValidationError`."""
    content_type = headers.get("Content-Type")
    if content_type is not None and "json" not in content_type.lower():
        raise APIResponseValidationError(
            f"expected a JSON response, got Content-Type {content_type!r}",
            body=content,
            status=status,
            headers=headers,
        )
    try:
        return decoder.decode(content)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        if is_invalid_utf8(content, exc):
            problem = f"is not valid UTF-8: {exc}"
        elif isinstance(exc, msgspec.DecodeError):
            problem = f"is not valid JSON: {exc}"
        else:
            problem = f"did not match the API schema: {exc}"
        raise APIResponseValidationError(
            f"the response body {problem}",
            body=content,
            status=status,
            headers=headers,
        ) from exc
