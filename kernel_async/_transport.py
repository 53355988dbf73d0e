"""The transport layer: a client's aiohttp sessions, the context of one call, transport
failures mapped to kernel_async errors (scrubbed of credentials), and the redirect policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import weakref
from collections.abc import AsyncGenerator, Iterator
from typing import TYPE_CHECKING, Final, Protocol

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, ClientSession
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._trace import NO_TRACE
from .errors import (
    APIConnectionError,
    APITimeoutError,
    ClientClosedError,
    RedirectError,
)

if TYPE_CHECKING:
    from ._limits import Backpressure
    from ._trace import Trace

__all__ = [
    "NO_CALL",
    "Call",
    "RedirectGuard",
    "Transport",
    "is_transport_error",
    "scrub",
    "transport_error",
]

# --- the context of one call ------------------------------------------------------------------


class Call:
    """What one call hands down to each of its attempts, made once when it starts.

    ``deadline``: when the call must be over (loop time; ``None`` for never), so that no
    wait or retry runs past it. ``method``: the method it started with (a redirect may turn
    a POST into a GET: still a call that is not idempotent). ``trace``: where its
    attempts report retries and waits (`NO_TRACE` when telemetry is off).
    """

    __slots__ = ("deadline", "method", "trace")

    def __init__(self, deadline: float | None, method: str, trace: Trace = NO_TRACE) -> None:
        self.deadline = deadline
        self.method = method
        self.trace = trace

    def time_left(self, now: float) -> float | None:
        """Seconds until the deadline (``None``: no deadline; may be negative)."""
        deadline = self.deadline
        return None if deadline is None else deadline - now


#: A call with no deadline and no trace: what a `RetryMiddleware` used on its own gives to
#: each request (its method is the request's own).
NO_CALL: Final = Call(None, "")


_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"})
_SECRET_HEADERS: Final = ("Authorization", "Proxy-Authorization", "Cookie")
_BAD_LOCATION: Final = (
    aiohttp.NonHttpUrlRedirectClientError,
    aiohttp.InvalidUrlRedirectClientError,
)


# --- errors ------------------------------------------------------------------------------------


def is_transport_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a transport failure (as opposed to a bug or a bad argument)."""
    return isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, OSError)) and not (
        isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError))
    )


def transport_error(exc: BaseException, method: str, url: str) -> APIConnectionError:
    """The kernel_async error for a transport failure: timeouts become `APITimeoutError`,
    redirects this client will not follow `RedirectError`. ``exc`` and everything chained to
    it are scrubbed of credentials first, since the caller chains it to the new error."""
    if isinstance(exc, APIConnectionError):
        return exc
    scrub(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return APITimeoutError(f"Request timed out: {method} {url}", method=method, url=url)
    if isinstance(exc, _BAD_LOCATION):
        location = _safe_location(str(exc.args[0]) if exc.args else "")
        kind = (
            "a non-HTTP" if isinstance(exc, aiohttp.NonHttpUrlRedirectClientError) else "an invalid"
        )
        return RedirectError(
            f"{method} {url} was redirected to {kind} location {location!r}; not followed",
            method=method,
            url=url,
            location=location,
        )
    if isinstance(exc, aiohttp.TooManyRedirects):
        return RedirectError(
            f"{method} {url} was redirected too many times; not followed further",
            method=method,
            url=url,
        )
    detail = str(exc) or type(exc).__name__
    return APIConnectionError(
        f"Connection error on {method} {url}: {detail}", method=method, url=url
    )


def scrub(exc: BaseException | None) -> None:
    """Remove credentials from aiohttp exceptions in ``exc``'s chain (cause and context):
    their ``request_info`` carries the request headers, ``Authorization`` included, and a
    redirect error's ``history`` holds whole responses. Changes them in place."""
    for error in _chain(exc):
        if isinstance(error, aiohttp.ClientResponseError):
            info = error.request_info
            headers = CIMultiDict(info.headers)
            for name in _SECRET_HEADERS:
                headers.popall(name, None)
            error.request_info = aiohttp.RequestInfo(
                info.url, info.method, CIMultiDictProxy(headers), info.real_url
            )
            error.history = ()
            error.args = (error.request_info, ())


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending = [exc]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        pending += [error.__cause__, error.__context__]


def _safe_location(location: str) -> str:
    """A redirect target fit to show: no credentials, and no control characters."""
    try:
        url = URL(location)
        if url.user or url.password:
            location = str(url.with_user(None))
    except (ValueError, TypeError):
        pass
    return location.encode("unicode_escape").decode("ascii")[:300]


# --- redirects ---------------------------------------------------------------------------------


class RedirectGuard:
    """A client middleware (or a check, `check`) that refuses redirects this client does
    not follow.

    aiohttp runs the middlewares again for every hop of a redirect, and only a redirect
    can take a call away from the base URL's origin, so a request elsewhere is a hop. It is
    refused when the call is not idempotent (a create's body is never re-sent to another
    host, nor the other host's answer taken as the new invocation), or when it would leave
    ``https`` for ``http``. aiohttp drops ``Authorization`` on any hop to another origin.
    """

    __slots__ = ("host", "port", "scheme")

    def __init__(self, base_url: str) -> None:
        url = URL(base_url)
        self.scheme = url.scheme
        self.host = url.raw_host
        self.port = url.port

    async def __call__(self, req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        self.check(req)
        return await handler(req)

    def check(self, req: ClientRequest, method: str = "") -> None:
        """Raise `RedirectError` for a request this client does not send (the check alone,
        for a middleware that runs it itself). ``method``: the one its call started with,
        if not the request's."""
        url = req.url
        if url.raw_host != self.host or url.port != self.port or url.scheme != self.scheme:
            method = method or req.method
            where = _safe_location(str(url.with_query(None)))
            if self.scheme == "https" and url.scheme != "https":
                raise RedirectError(
                    f"{method} was redirected from https to {where}: a downgrade, refused",
                    method=method,
                    url=where,
                    location=where,
                )
            if method not in _IDEMPOTENT:
                raise RedirectError(
                    f"{method} was redirected to another origin ({where}): not followed for a "
                    "call that is not idempotent, which could start the work twice",
                    method=method,
                    url=where,
                    location=where,
                )


# --- sessions ----------------------------------------------------------------------------------


class Abortable(Protocol):
    """What the transport ends when the client closes (an open event stream)."""

    def abort(self, error: ClientClosedError) -> None:
        """End now: a reader waiting, or the next one, gets ``error``."""


class Transport:
    """The aiohttp sessions of a client and its `with_options` copies.

    Calls and event streams use separate connection pools (when the client owns its
    sessions), so open streams never starve calls: streams get a pool of their own with no
    limit, calls keep ``connection_limit``. Created lazily in the running loop; closed only
    by the client that owns them, and never when the user passed the session in (then
    calls and streams share it).
    """

    __slots__ = (
        "__weakref__",
        "_backpressures",
        "backpressure",
        "closed",
        "closers",
        "connection_limit",
        "loop",
        "owns_session",
        "session",
        "stream_session",
        "streams",
    )

    def __init__(
        self, session: ClientSession | None, connection_limit: int, backpressure: Backpressure
    ) -> None:
        self.session = session
        self.stream_session: ClientSession | None = session
        self.owns_session = session is None
        self.connection_limit = connection_limit
        self.backpressure = backpressure
        # One queue per digest of (server, key, project), one rate gate per (server, key):
        # the limits of one account on one server. The key itself is never kept here.
        self._backpressures: dict[str, Backpressure] = {}
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None
        #: The event streams open now: closing ends them (aiohttp would leave a read of
        #: an open response waiting for ever once its session closes).
        self.streams: weakref.WeakSet[Abortable] = weakref.WeakSet()
        self.closers: list[AsyncGenerator[None, None]] = []

    def backpressure_for(
        self,
        base_url: str,
        api_key: str,
        project_id: str | None = None,
        project: str | None = None,
    ) -> Backpressure:
        """The rate gate and admission queue of the clients that talk to ``base_url`` with
        ``api_key`` in one project (the first ones asked for are `backpressure`): copies
        made by `with_options` share them only when all three are the same, since a 429
        from one server or account says nothing of another, and a project's lists show
        only its own invocations (and it may have a cap of its own). Queues of one server
        and key in different projects share one rate gate: the rate limit is the
        account's."""
        account = _digest(f"{base_url}\n{api_key}")
        identity = account
        if project_id is not None or project is not None:
            identity = _digest(f"{base_url}\n{api_key}\n{project_id!r}\n{project!r}")
        found = self._backpressures.get(identity)
        if found is None:
            if self._backpressures:
                gate_owner = next(
                    (b for b in self._backpressures.values() if b.account == account), None
                )
                found = self.backpressure.twin(identity, account, gate_owner)
            else:
                found = self.backpressure
                found.identity, found.account = identity, account
            self._backpressures[identity] = found
        return found

    def get(self) -> ClientSession:
        """The session for calls."""
        session = self.session
        if session is not None and not session.closed and self.loop is not None:
            return session
        session = self.session = self._open(session, self.connection_limit)
        return session

    def get_stream(self) -> ClientSession:
        """The session for event streams."""
        session = self.stream_session
        if session is not None and not session.closed and self.loop is not None:
            return session
        session = self.stream_session = self._open(session, 0)
        return session

    def _open(self, session: ClientSession | None, limit: int) -> ClientSession:
        if self.closed:
            raise ClientClosedError("this AsyncKernel client is closed")
        loop = asyncio.get_running_loop()
        if session is None:
            session = ClientSession(
                connector=aiohttp.TCPConnector(limit=limit),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._close_with_loop(session, loop)
        elif session.closed:
            raise RuntimeError("the aiohttp.ClientSession given to AsyncKernel is closed")
        if self.loop is None:
            self.loop = loop
        return session

    def _close_with_loop(self, session: ClientSession, loop: asyncio.AbstractEventLoop) -> None:
        """Close ``session`` when the loop shuts down, or soon after this transport is
        collected, if the client is never closed (as in the official SDK's README): no
        connection is leaked and aiohttp has no "Unclosed client session" to warn of."""
        closer = _closed_with_loop(session)
        self.closers.append(closer)
        weakref.finalize(self, _close_soon, loop, closer)

    def check_loop(self) -> None:
        if self.loop is not None and self.loop is not asyncio.get_running_loop():
            raise RuntimeError(
                "this AsyncKernel was first used in another event loop; "
                "create one client per event loop"
            )

    async def aclose(self) -> None:
        """Close: every call waiting (for a slot, on a stream) and every later one fails
        with `ClientClosedError`; then the sessions the client owns are closed."""
        self.closed = True
        error = ClientClosedError("the AsyncKernel client was closed")
        backpressures = {self.backpressure, *self._backpressures.values()}
        for backpressure in backpressures:
            backpressure.close(error)
        for backpressure in backpressures:
            await backpressure.aclose()
        for stream in list(self.streams):
            stream.abort(error)
        sessions = {self.session, self.stream_session} - {None}
        self.session = self.stream_session = None
        if self.owns_session:
            for session in sessions:
                if session is not None and not session.closed:
                    await session.close()
        for closer in self.closers:
            await closer.aclose()
        self.closers.clear()


#: The closers of sessions not closed yet: kept here, not only by their client, so that a
#: client collected in a reference cycle does not take its session down with it unclosed.
_unclosed: set[AsyncGenerator[None, None]] = set()


def _closed_with_loop(session: ClientSession) -> AsyncGenerator[None, None]:
    """An async generator, started, that closes ``session`` when it is closed: by the
    client's `Transport.aclose`, by the loop's shutdown (``asyncio.run`` closes every async
    generator still open), or by `_close_soon`."""

    async def closer() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            _unclosed.discard(generator)
            if not session.closed:
                await session.close()

    generator = closer()
    with contextlib.suppress(StopIteration):  # runs to the yield: the loop now tracks it
        generator.asend(None).send(None)
    _unclosed.add(generator)
    return generator


def _close_soon(loop: asyncio.AbstractEventLoop, closer: AsyncGenerator[None, None]) -> None:
    """Close a collected client's session in its loop (if that still runs)."""
    if closer in _unclosed and not loop.is_closed():
        loop.call_soon_threadsafe(_start_closing, loop, closer)


def _start_closing(loop: asyncio.AbstractEventLoop, closer: AsyncGenerator[None, None]) -> None:
    task = loop.create_task(_aclose(closer))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def _aclose(closer: AsyncGenerator[None, None]) -> None:
    await closer.aclose()


_closing: set[asyncio.Task[None]] = set()


def _digest(text: str) -> str:
    """A short digest naming an account's limits without keeping the key."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
