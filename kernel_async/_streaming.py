"""EventStream: the ``follow()`` connection, its decoding, resume and idle watchdog."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Generator, Mapping
from itertools import chain
from types import TracebackType
from typing import TYPE_CHECKING, Final

from aiohttp import ClientResponse, ClientTimeout
from yarl import URL

from . import _retry
from ._events import UNDECODABLE, undecodable
from ._replay import ReplayFilter, prune, resume_from, rfc3339
from ._retry import GIVE_UP, decide
from ._sse import DEFAULT_MAX_LINE_SIZE, SSEDecoder, SSELimitError
from ._stream_response import check_stream_response
from ._trace import NO_TRACE
from ._transport import is_transport_error
from .errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    ClientClosedError,
    KernelError,
)
from .models import (
    Invocation,
    InvocationEvent,
    InvocationStateEvent,
    SSEHeartbeatEvent,
    event_decoder,
)

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._client import AsyncKernel

__all__ = ["DEFAULT_IDLE_TIMEOUT", "EventStream"]

logger = logging.getLogger("kernel_async")

#: Seconds without a byte (heartbeats count) after which a stream is considered dead and
#: resumed. The API sends heartbeats well within this.
DEFAULT_IDLE_TIMEOUT: Final = 60.0
_CONNECT_TIMEOUT: Final = 30.0
#: Most bytes decoded in one go: bounds how long one read keeps the event loop busy.
_READ_SIZE: Final = 2**16
#: Delivered events kept for a resume are pruned to the replay window past this many.
_PRUNE_AT: Final = 4096


class EventStream:
    """The live events of one invocation: an async iterator and an async context manager.

    ```python
    async with kernel.invocations.follow(inv.id) as events:
        async for event in events:
            match event:
                case LogEvent(message=line):
                    print(line)
                case InvocationStateEvent(invocation=inv) if inv.is_terminal:
                    print("done:", inv.status)
    ```

    * Every event is delivered exactly once, in the server's order, whatever its type
      (unknown ones included) and whatever its timestamp: nothing is dropped on a live
      connection, and a terminal `InvocationStateEvent` always ends the stream, even if
      the server keeps the connection open.
    * Heartbeats are yielded only when asked for with ``heartbeats=True``.
    * A dropped connection, a stream that ends early, or ``idle_timeout`` seconds without a
      byte is resumed with ``since`` a little before the newest event delivered (see
      `kernel_async._replay.REPLAY_WINDOW`: events out of order by up to 10 s are neither
      lost nor repeated); the replays are recognised by value and skipped. A connection
      that brings no new event (heartbeats are not new events) counts against the client's
      `RetryPolicy`, unless it stayed up for ``idle_timeout``; when the policy gives up,
      `APIConnectionError` is raised.
    * Leaving early (``break``, an exception, cancellation) closes the connection at once
      with ``async with`` or `aclose`; a plain ``async for`` closes it when the stream is
      garbage-collected, which CPython does as soon as the loop is left. After `aclose`,
      from any task, nothing more is sent or received.
    """

    __slots__ = (
        "__weakref__",
        "_beats",
        "_client",
        "_closed",
        "_connected_at",
        "_decoder",
        "_done",
        "_extra_headers",
        "_extra_query",
        "_failed",
        "_failures",
        "_heartbeats",
        "_id",
        "_idle_timeout",
        "_last_state",
        "_max_line_size",
        "_path_url",
        "_progress",
        "_prune_at",
        "_queue",
        "_recent",
        "_recent_count",
        "_replay",
        "_resp",
        "_since",
        "_trace",
    )

    def __init__(
        self,
        client: AsyncKernel,
        invocation_id: str,
        path_url: URL,
        *,
        since: str | None,
        heartbeats: bool,
        idle_timeout: float,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str] | None = None,
    ) -> None:
        self._client = client
        self._extra_headers = extra_headers
        self._extra_query = extra_query
        self._id = invocation_id
        self._path_url = path_url
        self._since = since
        self._heartbeats = heartbeats
        self._idle_timeout = idle_timeout
        self._max_line_size = max_line_size
        self._resp: ClientResponse | None = None
        self._decoder = SSEDecoder(max_line_size)
        # Events decoded and not yet yielded, last first (popped from the end).
        self._queue: list[InvocationEvent] = []
        self._done = False
        self._closed = False
        self._failures = 0
        self._failed: KernelError | None = None
        self._progress = False  # this connection delivered a new event
        self._beats = False  # this connection brought a heartbeat
        self._connected_at = 0.0
        # The events delivered within the replay window (for a resume), and on a resumed
        # connection the filter that recognises what it replays.
        self._recent: list[list[InvocationEvent]] = []  # the delivered events, by chunk
        self._recent_count = 0
        self._prune_at = _PRUNE_AT
        self._replay: ReplayFilter | None = None
        self._last_state: Invocation | None = None
        telemetry = client._telemetry
        self._trace = None if telemetry is None else telemetry._stream(invocation_id, path_url)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._resp is not None else "idle")
        return f"<EventStream invocation={self._id!r} {state}>"

    @property
    def invocation_id(self) -> str:
        """The invocation this stream follows."""
        return self._id

    @property
    def last_state(self) -> Invocation | None:
        """The invocation as of the latest `InvocationStateEvent` seen, if any."""
        return self._last_state

    # --- protocol ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._resp is None and not self._done:
            await self._connect_with_retries()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    def __await__(self) -> Generator[object, None, Self]:
        """``stream = await kernel.invocations.follow(id)``, as with the official SDK:
        connects (raising its error, e.g. `NotFoundError`) and returns the stream."""
        return self.__aenter__().__await__()

    async def __anext__(self) -> InvocationEvent:
        queue = self._queue
        if queue:
            return queue.pop()
        while not queue:
            if self._failed is not None:  # raised once what came before it was delivered
                error, self._failed = self._failed, None
                self._closed = self._done = True
                self._close_response()
                self._finish(error)
                raise error
            if self._done:
                self._close_response()
                self._finish(None)
                raise StopAsyncIteration
            try:
                await self._fill()
            except BaseException as exc:
                self._closed = self._done = True
                self._close_response()
                self._finish(exc)
                raise
            queue = self._queue
        return queue.pop()

    async def aclose(self) -> None:
        """Close the connection now. Iterating afterwards ends at once; a task reading
        the stream meanwhile ends too, without reconnecting."""
        self._closed = self._done = True
        self._queue.clear()
        self._close_response()
        self._finish(None)

    def abort(self, error: ClientClosedError) -> None:
        """The client is closing: the task reading the stream, or the next one, gets
        ``error`` (after the events already received)."""
        if self._done:
            return
        self._failed = error
        resp = self._resp
        if resp is not None:
            resp.content.set_exception(error)  # wakes a read in progress

    def __del__(self) -> None:
        resp = self._resp
        if resp is not None:
            resp.close()
        trace = self._trace
        if trace is not None and not trace.ended:
            # Never used to its end nor closed: end its span and its place in the open
            # streams count, from the event loop (not from inside the garbage collector).
            loop = self._client._transport.loop
            try:
                if loop is not None and not loop.is_closed():
                    loop.call_soon_threadsafe(trace.abandon)
                else:
                    trace.abandon()
            except Exception:  # interpreter shutdown: nothing to tell anyone
                pass

    # --- internals ---------------------------------------------------------------------------

    def _finish(self, exc: BaseException | None) -> None:
        """Telemetry: the stream is over (once; nothing when telemetry is off)."""
        trace = self._trace
        if trace is not None:
            self._end_replay()
            trace.end(exc, self._last_state)

    def _end_replay(self) -> None:
        """A resumed connection no longer expects replays (telemetry: how many came)."""
        replay, self._replay = self._replay, None
        if replay is not None and self._trace is not None:
            self._trace.replay_done(replay.skipped)

    def _close_response(self) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()

    async def _fill(self) -> None:
        """Read until at least one event is queued, the stream is done, or it must resume."""
        if self._resp is None:
            await self._connect_with_retries()
            return
        resp = self._resp
        try:
            chunk = await resp.content.read(_READ_SIZE)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._closed:
                return  # aclose() from another task: that is the end
            if not is_transport_error(exc):
                raise
            await self._resume(exc)
            return
        if self._closed:
            return
        if not chunk:  # the server ended the stream before a terminal state
            await self._resume(None)
            return
        try:
            payloads = self._decoder.feed_data(chunk)
        except SSELimitError as exc:
            raise APIResponseValidationError(str(exc), body=chunk[:1024]) from exc
        self._deliver(payloads)

    def _deliver(self, payloads: list[bytes]) -> None:
        """Decode and queue events; on a resumed connection, skip what it replays.

        This is the per-event hot path, so it is written inline: outside a replay, an
        event costs a decode and an append. A chunk's events are kept for a resume as they
        are, one list per chunk, and yielded from a reversed copy.
        """
        decode = event_decoder.decode
        events: list[InvocationEvent] = []
        deliver = events.append
        replay = self._replay
        progress = False
        try:
            for data in payloads:
                if not data:
                    continue
                try:
                    event: InvocationEvent = decode(data)
                except UNDECODABLE as exc:
                    try:
                        event = undecodable(data, exc)  # an unknown type, or a real error
                    except APIResponseValidationError as error:
                        self._failed = error  # what came before it is delivered first
                        return
                if replay is not None:
                    if replay.is_replay(event):
                        replay.skipped += 1
                        continue
                    if replay.done:
                        self._end_replay()
                        replay = None
                kind = type(event)
                if kind is SSEHeartbeatEvent:
                    self._beats = True
                    if not self._heartbeats:
                        continue
                else:
                    progress = True
                deliver(event)
                if kind is InvocationStateEvent:
                    invocation = event.invocation  # type: ignore[union-attr]
                    self._last_state = invocation
                    if invocation.is_terminal:
                        self._done = True
                        self._close_response()
                        self._client._backpressure.finished(self._id)
                        return
        finally:
            if events:
                self._recent.append(events)
                self._queue = events[::-1]  # yielded by pop(), from the end
                self._recent_count += len(events)
                if self._recent_count >= self._prune_at:
                    self._recent_count = prune(self._recent)
                    self._prune_at = max(_PRUNE_AT, 2 * self._recent_count)
                if self._trace is not None:
                    self._trace.deliver(len(events))
            if progress:
                self._progress = True

    async def _resume(self, cause: BaseException | None) -> None:
        """The connection ended without a terminal state: reconnect, or give up."""
        self._close_response()
        if self._closed:
            return
        if self._failed is not None:  # the client closed: nothing to resume
            raise self._failed
        lasted = asyncio.get_running_loop().time() - self._connected_at
        if self._progress or (self._beats and lasted >= self._idle_timeout):
            self._failures = 0  # it delivered, or it was healthy for a good while
        verdict = decide(
            self._client.retry,
            idempotent=True,
            retries=self._failures,
            rate_waits=0,
            status=None,
            error=cause,
        )
        if verdict.action is GIVE_UP:
            reason = "ended" if cause is None else f"failed ({cause})"
            raise APIConnectionError(
                f"the event stream of invocation {self._id!r} {reason} and could not be "
                f"resumed: {self._failures + 1} connection(s) in a row brought no new event",
                method="GET",
                url=str(self._path_url),
            ) from cause
        delay = verdict.delay
        logger.info(
            "Event stream %s %s; resuming in %.2fs",
            self._path_url.raw_path,
            "ended early" if cause is None else f"dropped ({type(cause).__name__})",
            delay,
        )
        self._failures += 1
        if self._trace is not None:
            self._trace.resume(cause, delay)
        await _retry.sleep(delay)
        await self._connect_with_retries()

    async def _connect_with_retries(self) -> None:
        policy = self._client.retry
        while not self._closed:
            try:
                await self._connect()
            except ClientClosedError:
                raise
            except APIStatusError as exc:
                # Rate limits were waited out by the middleware already.
                verdict = decide(
                    policy,
                    idempotent=True,
                    retries=self._failures,
                    rate_waits=policy.max_rate_limit_waits,
                    status=exc.status,
                    headers=exc.headers,
                    body=exc.body,
                )
                if verdict.action is GIVE_UP:
                    raise
            except APIConnectionError as exc:
                verdict = decide(
                    policy,
                    idempotent=True,
                    retries=self._failures,
                    rate_waits=policy.max_rate_limit_waits,
                    status=None,
                    error=exc.__cause__,
                )
                if verdict.action is GIVE_UP:
                    raise
            else:
                return
            self._failures += 1
            if self._trace is not None:
                self._trace.retry(verdict.reason, verdict.delay)
            await _retry.sleep(verdict.delay)

    def _query(self) -> dict[str, str] | None:
        self._end_replay()
        replay = self._replay = resume_from(chain.from_iterable(self._recent))
        if replay is not None:
            return None if replay.since is None else {"since": rfc3339(replay.since)}
        if self._since is not None:
            return {"since": self._since}
        return None

    async def _connect(self) -> None:
        self._progress = self._beats = False
        self._decoder = SSEDecoder(self._max_line_size)
        timeout = ClientTimeout(
            total=None,
            connect=_CONNECT_TIMEOUT,
            sock_connect=_CONNECT_TIMEOUT,
            sock_read=self._idle_timeout,
        )
        query = self._query()
        trace = NO_TRACE if self._trace is None else self._trace
        with trace:  # current while connecting: HTTP spans nest under it, waits report to it
            resp = await self._client._open_stream(
                self._path_url, query, timeout, self._extra_headers, self._extra_query, trace
            )
        if self._closed:  # aclose() while connecting: nothing more
            resp.close()
            return
        self._connected_at = asyncio.get_running_loop().time()
        await check_stream_response(resp)
        if self._trace is not None:
            self._trace.status(resp.status)
        self._resp = resp
        transport = self._client._transport
        transport.streams.add(self)
        if transport.closed:  # closed while this connected: it missed the abort
            self.abort(ClientClosedError("the AsyncKernel client was closed"))
