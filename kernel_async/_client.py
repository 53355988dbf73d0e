"""AsyncKernel: configuration, session ownership, and one request → one typed result."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

import aiohttp
import msgspec
from aiohttp import ClientMiddlewareType, ClientResponse, ClientSession, ClientTimeout
from multidict import CIMultiDictProxy
from yarl import URL

from ._backpressure import Backpressure
from ._limits import Limits, LimitStats, classify_429
from ._retry import RetryMiddleware, RetryPolicy, retry_after_from_headers
from ._transport import (
    RedirectGuard,
    Transport,
    admission_managed,
    call_method,
    current_deadline,
    is_transport_error,
    scrub,
    transport_error,
)
from ._version import __version__
from .errors import (
    APIConnectionError,
    APIResponseValidationError,
    KernelError,
    RateLimitError,
    make_status_error,
)
from .models import InvokeResponse, invoke_response_decoder

if TYPE_CHECKING:
    from typing_extensions import Self

    from .resources.invocations import Invocations

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_TIMEOUT", "NOT_GIVEN", "AsyncKernel", "NotGiven", "Timeout"]

logger = logging.getLogger("kernel_async")

DEFAULT_BASE_URL: Final = "https://api.onkernel.com"
DEFAULT_TIMEOUT: Final = 60.0

T = TypeVar("T")

#: A timeout: seconds (float) for the whole call, an ``aiohttp.ClientTimeout``, or ``None``
#: for no timeout at all.
Timeout = float | ClientTimeout | None


class NotGiven:
    """Sentinel for "use the client's setting" (distinct from ``None``, which means none)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


NOT_GIVEN: Final = NotGiven()

_USER_AGENT: Final = (
    f"kernel-async/{__version__} aiohttp/{aiohttp.__version__} python/{platform.python_version()}"
)


def _to_client_timeout(timeout: Timeout) -> ClientTimeout:
    if isinstance(timeout, ClientTimeout):
        return timeout
    if timeout is None:
        return ClientTimeout(total=None)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return ClientTimeout(total=float(timeout))


def _check_api_key(api_key: str) -> str:
    """The key as given, or `KernelError` (never quoting it) when it could not be sent as a
    header: whitespace, a newline or another control character, or non-ASCII."""
    if not isinstance(api_key, str):
        raise KernelError(f"api_key must be a str, not {type(api_key).__name__}")
    bad = next((c for c in api_key if not "!" <= c <= "~"), None)
    if bad is not None:
        where = "ends with" if api_key.endswith(bad) else "contains"
        raise KernelError(
            f"api_key {where} {bad!r}, which an API key cannot contain (a stray newline or "
            "space from copying it?); the key was not used"
        )
    return api_key


def _normalize_base_url(base_url: str) -> str:
    url = URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise KernelError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
    if url.user or url.password:
        raise KernelError("base_url must not contain credentials; pass api_key instead")
    if url.query_string or url.fragment:
        raise KernelError(f"base_url must not have a query or fragment, got {base_url!r}")
    return str(url).rstrip("/")


class AsyncKernel:
    """The asyncio client of the Kernel API.

    ```python
    async with AsyncKernel() as kernel:   # KERNEL_API_KEY and KERNEL_BASE_URL from the env
        inv = await kernel.invocations.retrieve("rr33xuugxj9h0bkf1rdt2bet")
    ```

    Args:
        api_key: The API key; defaults to the ``KERNEL_API_KEY`` environment variable.
        base_url: The API's base URL; defaults to ``KERNEL_BASE_URL``, else
            ``https://api.onkernel.com``.
        timeout: Seconds a whole call may take, retries and their waits included; an
            ``aiohttp.ClientTimeout`` for finer control; ``None`` for no limit. Every method
            takes ``timeout=`` too.
        max_retries: Retries after the first attempt (used when ``retry`` is not given).
        retry: The full `RetryPolicy`; wins over ``max_retries``.
        session: An ``aiohttp.ClientSession`` to use (its middlewares are kept). It is never
            closed by the client. Without one the client creates its own, lazily, in the
            running event loop, and closes it in `aclose`.
        middlewares: aiohttp client middlewares run on every attempt, inside the retry
            middleware.
        default_headers: Headers sent with every request.
        connection_limit: Most simultaneous connections of the client's own session.
        limits: Caps on this client's running invocations (see `Limits`). Without it the
            client learns each app's limit from the service's 429s; either way, creates
            beyond the limit wait in a queue instead of failing.

    Raises:
        KernelError: No API key was given or found in ``KERNEL_API_KEY``, or ``base_url``
            is not a usable URL.
    """

    invocations: Invocations
    """The invocations resource: create, retrieve, update, cancel, list, follow, wait, run."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        retry: RetryPolicy | None = None,
        session: ClientSession | None = None,
        middlewares: Sequence[ClientMiddlewareType] = (),
        default_headers: Mapping[str, str] | None = None,
        connection_limit: int = 100,
        limits: Limits | None = None,
    ) -> None:
        if connection_limit < 0:
            raise ValueError(f"connection_limit must be >= 0, got {connection_limit}")
        policy = retry if retry is not None else RetryPolicy(max_retries=max_retries)
        self._transport = Transport(
            session,
            connection_limit,
            Backpressure(limits if limits is not None else Limits(), policy.initial_delay),
        )
        self._owns_transport = True
        self._configure(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            retry=policy,
            middlewares=middlewares,
            default_headers=default_headers,
        )

    def _configure(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        timeout: Timeout,
        retry: RetryPolicy,
        middlewares: Sequence[ClientMiddlewareType],
        default_headers: Mapping[str, str] | None,
    ) -> None:
        from .resources.invocations import Invocations

        api_key = api_key or os.environ.get("KERNEL_API_KEY")
        if not api_key:
            raise KernelError(
                "No API key: pass api_key=... to AsyncKernel or set the "
                "KERNEL_API_KEY environment variable."
            )
        self._api_key = _check_api_key(api_key)
        self._base_url = _normalize_base_url(
            base_url or os.environ.get("KERNEL_BASE_URL") or DEFAULT_BASE_URL
        )
        self._timeout_option = timeout
        self._timeout = _to_client_timeout(timeout)
        self._retry = retry
        self._user_middlewares = tuple(middlewares)
        self._default_headers = dict(default_headers or {})
        headers = {
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
            **self._default_headers,
            "Authorization": f"Bearer {api_key}",
        }
        self._headers: dict[str, str] = headers
        self._json_headers: dict[str, str] = {**headers, "Content-Type": "application/json"}
        self._stream_headers: dict[str, str] = {
            **headers,
            "Accept": "text/event-stream",
            "Cache-Control": "no-cache",
        }
        backpressure = self._transport.backpressure
        self._guard = RedirectGuard(self._base_url)
        self._middleware = RetryMiddleware(retry, backpressure=backpressure)
        # Streams resume on their own (counting against the same policy), so their
        # connection attempts get a middleware that only maps errors (and waits out the
        # rate limit, like every request): one retry layer.
        self._stream_middleware = RetryMiddleware(
            retry.with_max_retries(0), backpressure=backpressure
        )
        self._chains: tuple[tuple[ClientMiddlewareType, ...], ...] | None = None
        self.invocations = Invocations(self)

    # --- configuration ---------------------------------------------------------------------

    @property
    def api_key(self) -> str:
        """The API key in use (never shown by ``repr``)."""
        return self._api_key

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._base_url

    @property
    def timeout(self) -> Timeout:
        """The default timeout of every call."""
        return self._timeout_option

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every call (and of stream resumes)."""
        return self._retry

    @property
    def limits(self) -> Limits:
        """The caps on this client's running invocations (shared with its copies)."""
        return self._transport.backpressure.limits

    def limit_stats(self) -> LimitStats:
        """What backpressure did so far: each app's learnt limit, running and queued
        creates, the 429s absorbed and the time spent waiting (shared with copies)."""
        return self._transport.backpressure.stats()

    @property
    def is_closed(self) -> bool:
        """Whether `aclose` has been called on this client (or the one it was derived from)."""
        return self._transport.closed

    def __repr__(self) -> str:
        return f"AsyncKernel(base_url={self._base_url!r}, max_retries={self._retry.max_retries})"

    def with_options(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        middlewares: Sequence[ClientMiddlewareType] | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> Self:
        """A client with some options changed, sharing this client's connection pool.

        ``kernel.with_options(timeout=5, max_retries=0).invocations.retrieve(id)``. The
        copy never closes the shared session: close the original when done.
        """
        policy = retry if retry is not None else self._retry
        if max_retries is not None:
            policy = policy.with_max_retries(max_retries)
        clone = object.__new__(type(self))
        clone._transport = self._transport
        clone._owns_transport = False
        clone._configure(
            api_key=api_key or self._api_key,
            base_url=base_url or self._base_url,
            timeout=self._timeout_option if isinstance(timeout, NotGiven) else timeout,
            retry=policy,
            middlewares=self._user_middlewares if middlewares is None else middlewares,
            default_headers=(
                self._default_headers
                if default_headers is None
                else {**self._default_headers, **default_headers}
            ),
        )
        return clone

    # --- lifetime ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client's own session and its connections.

        A session passed in by the user is left open, and a copy made by `with_options`
        closes nothing. Safe to call more than once.
        """
        if self._owns_transport:
            await self._transport.aclose()

    # --- transport (the only place requests are made) ----------------------------------------

    def _url(self, path: str) -> URL:
        """``path`` must already be quoted."""
        return URL(self._base_url + path, encoded=True)

    def _session(self) -> ClientSession:
        transport = self._transport
        transport.check_loop()
        return transport.get()

    def _middlewares(self, stream: bool) -> tuple[ClientMiddlewareType, ...]:
        """Ours first (so the rest run once per attempt), then the user's, then those of a
        session the user passed in (aiohttp replaces session middlewares with per-request
        ones, so they are carried over here). Built once per client."""
        chains = self._chains
        if chains is None:
            session_mws: Sequence[ClientMiddlewareType] = getattr(
                self._transport.session, "_middlewares", ()
            )
            rest = (*self._user_middlewares, *session_mws)
            chains = self._chains = (
                (self._guard, self._middleware, *rest),
                (self._guard, self._stream_middleware, *rest),
            )
        return chains[1] if stream else chains[0]

    async def _send(
        self,
        method: str,
        url: URL,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> tuple[ClientResponse, bytes]:
        """Make one call (retries included) and return the response with its body.

        Raises the typed `APIStatusError` for an error status, `APIConnectionError` /
        `APITimeoutError` for transport failures.
        """
        session = self._session()
        client_timeout = self._call_timeout(timeout)
        total = client_timeout.total
        token = current_deadline.set(asyncio.get_running_loop().time() + total if total else None)
        method_token = call_method.set(method)
        try:
            resp = await session.request(
                method,
                url,
                params=params,
                data=body,
                headers=self._headers if body is None else self._json_headers,
                timeout=client_timeout,
                middlewares=self._middlewares(False),
            )
            try:
                content = await resp.read()
            finally:
                resp.release()
        except KernelError:
            raise
        except Exception as exc:
            error = self._failure(exc, method, url)
            if error is None:
                raise
            raise error from exc
        finally:
            current_deadline.reset(token)
            call_method.reset(method_token)
        status = resp.status
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s -> %d", method, url.raw_path, status)
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
    ) -> T:
        resp, content = await self._send(method, url, params=params, body=body, timeout=timeout)
        return decode_body(decoder, content, resp.status, resp.headers)

    async def _create(
        self,
        app_name: str,
        body: bytes,
        *,
        timeout: ClientTimeout,
        deadline: float | None,
        lease: float | None,
        on_sent: Callable[[], None] | None = None,
    ) -> InvokeResponse:
        """``POST /invocations`` through admission control.

        The create waits for a slot of ``app_name`` (first in, first out), is sent, and on
        a concurrency 429 goes back to the head of the queue to wait for a slot again:
        until ``deadline`` (loop time; ``None`` for none), never giving up early. Each
        attempt is bounded by ``timeout`` and the deadline. Any other failure frees the
        slot and is raised: the create is never re-sent after an ambiguous failure.
        ``on_sent`` is called once, when the create first leaves the queue.
        """
        admission = self._transport.backpressure.admission()
        url = self._url("/invocations")
        loop = asyncio.get_running_loop()
        ticket = await admission.acquire(app_name, deadline)
        if on_sent is not None:
            on_sent()
        while True:
            attempt = timeout
            if deadline is not None:
                left = deadline - loop.time()
                if attempt.total is None or attempt.total > left:
                    attempt = _replace_total(attempt, max(left, 0.001))
            token = admission_managed.set(True)
            try:
                resp, content = await self._send("POST", url, body=body, timeout=attempt)
                result = decode_body(invoke_response_decoder, content, resp.status, resp.headers)
            except RateLimitError as exc:
                if classify_429(exc.headers, exc.body) != "concurrency":
                    admission.abandoned(ticket)
                    raise
                admission.rejected(ticket, exc.retry_after)
                ticket = await admission.acquire(app_name, deadline, front=True)
                continue
            except BaseException:
                admission.abandoned(ticket)
                raise
            finally:
                admission_managed.reset(token)
            admission.started(ticket, None if result.is_terminal else result.id, lease)
            return result

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

    def _call_timeout(self, timeout: Timeout | NotGiven) -> ClientTimeout:
        return self._timeout if isinstance(timeout, NotGiven) else _to_client_timeout(timeout)

    async def _open_stream(
        self, url: URL, params: Mapping[str, str] | None, timeout: ClientTimeout
    ) -> ClientResponse:
        """Open an SSE response; the caller owns (and must close) what is returned. Streams
        have a connection pool of their own, so open streams never starve calls."""
        transport = self._transport
        transport.check_loop()
        session = transport.get_stream()
        try:
            resp = await session.get(
                url,
                params=params,
                headers=self._stream_headers,
                timeout=timeout,
                middlewares=self._middlewares(True),
            )
        except KernelError:
            raise
        except Exception as exc:
            error = self._failure(exc, "GET", url)
            if error is None:
                raise
            raise error from exc
        return resp

    def _failure(self, exc: Exception, method: str, url: URL) -> KernelError | None:
        """The kernel_async error for what aiohttp raised during a call (``None``: a bug, to
        raise as it is). Whatever is chained to it is scrubbed of credentials."""
        if self._transport.closed:  # aiohttp fails in odd ways when its session closes
            scrub(exc)
            return APIConnectionError(
                f"{method} {url}: the client was closed while the request was in flight",
                method=method,
                url=str(url),
            )
        if is_transport_error(exc) or isinstance(exc, aiohttp.RedirectClientError):
            return transport_error(exc, method, str(url))
        return None


def _replace_total(timeout: ClientTimeout, total: float) -> ClientTimeout:
    return ClientTimeout(
        total=total,
        connect=timeout.connect,
        sock_connect=timeout.sock_connect,
        sock_read=timeout.sock_read,
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
        if isinstance(exc, UnicodeDecodeError):
            problem = f"is not valid UTF-8: {exc}"
        else:
            problem = f"did not match the API schema: {exc}"
        raise APIResponseValidationError(
            f"the response body {problem}",
            body=content,
            status=status,
            headers=headers,
        ) from exc
