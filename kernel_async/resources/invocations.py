"""The invocations resource: builds requests and hands them to the client's transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from .._http import decode_body
from .._fanout import InvocationMap, run_map
from .._options import NOT_GIVEN, NotGiven, Timeout
from .._pagination import AsyncPaginator, parse_page_headers
from .._streaming import DEFAULT_IDLE_TIMEOUT, EventStream, format_since
from ..errors import APIConnectionError, APITimeoutError
from ..models import (
    TERMINAL_STATUSES,
    Invocation,
    InvocationCreateRequest,
    InvocationUpdateRequest,
    InvokeResponse,
    Page,
    encoder,
    invocation_decoder,
    invocation_list_decoder,
)

if TYPE_CHECKING:
    from yarl import URL

    from .._client import AsyncKernel

__all__ = ["Invocations"]

_STATUSES: Final = frozenset({"queued", "running", "succeeded", "failed"})
_UPDATE_STATUSES: Final = frozenset({"succeeded", "failed"})

Since = str | datetime | timedelta


def _json_string(value: Any, name: str) -> str | None:
    """A payload/output as the API wants it: a JSON string. A str is sent as is."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8")
    try:
        return encoder.encode(value).decode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} is not JSON-encodable: {exc}") from exc


def _check_name(value: str, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _check_int(value: int, name: str, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}")


def _create_body(
    app_name: str,
    action_name: str,
    version: str,
    payload: Any,
    async_: bool,
    async_timeout_seconds: int | None,
) -> bytes:
    """The checked, encoded body of ``POST /invocations``."""
    _check_name(app_name, "app_name")
    _check_name(action_name, "action_name")
    _check_name(version, "version")
    if async_timeout_seconds is not None:
        _check_int(async_timeout_seconds, "async_timeout_seconds", 10, 3600)
        if not async_:
            raise ValueError("async_timeout_seconds only applies with async_=True")
    return encoder.encode(
        InvocationCreateRequest(
            app_name=app_name,
            action_name=action_name,
            version=version,
            payload=_json_string(payload, "payload"),
            async_=async_,
            async_timeout_seconds=async_timeout_seconds,
        )
    )


def _lease(async_timeout_seconds: int | None) -> float | None:
    """How long an unseen invocation holds its admission slot: its async timeout, plus a
    margin (``None``: the service's default)."""
    return None if async_timeout_seconds is None else async_timeout_seconds + 60.0


class Invocations:
    """Run an app's actions, follow their events, and list, update or cancel invocations.

    Reached as ``kernel.invocations``. Arguments the API would reject raise ``ValueError``
    (or ``TypeError``) before any request is made.
    """

    __slots__ = ("_client",)

    def __init__(self, client: AsyncKernel) -> None:
        self._client = client

    def _item_url(self, id: str, suffix: str = "") -> URL:
        if not isinstance(id, str) or not id:
            raise ValueError(f"invocation id must be a non-empty string, got {id!r}")
        if id in (".", ".."):
            raise ValueError(f"invalid invocation id {id!r}")
        return self._client._url("/invocations/" + quote(id, safe="") + suffix)

    async def create(
        self,
        app_name: str,
        action_name: str,
        *,
        version: str = "latest",
        payload: Any = None,
        async_: bool = False,
        async_timeout_seconds: int | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> InvokeResponse:
        """Invoke an action (``POST /invocations``).

        Args:
            app_name: The application's name.
            action_name: The action to invoke.
            version: The application version (``"latest"`` by default).
            payload: The action's input: a ``str`` is sent as is (it should be JSON), any
                other value is JSON-encoded with msgspec.
            async_: Return at once with status ``queued`` (the API answers 202) instead of
                waiting for the action to finish.
            async_timeout_seconds: How long an asynchronous invocation may run, 10 to 3600
                seconds (only with ``async_=True``).
            timeout: This call's timeout, overriding the client's.

        Returns:
            The new invocation's id and status (and output, for a synchronous call).

        This call is retried only when the server cannot have started the invocation
        (connection refused, 429, 503); after a timeout or a 500/502/504 the error is raised
        and nothing is retried, so it never starts a second invocation.

        When the app is at its concurrency limit (learnt from the service's 429s, or set
        with `Limits`), the create waits in a first-in, first-out queue for a slot, within
        ``timeout``: a concurrency 429 is backpressure, not a failure.
        """
        body = _create_body(
            app_name, action_name, version, payload, bool(async_), async_timeout_seconds
        )
        client = self._client
        call_timeout = client._call_timeout(timeout)
        total = call_timeout.total
        return await client._create(
            app_name,
            body,
            timeout=call_timeout,
            deadline=None if total is None else asyncio.get_running_loop().time() + total,
            lease=_lease(async_timeout_seconds),
        )

    async def _create_async(
        self,
        app_name: str,
        action_name: str,
        payload: Any,
        *,
        version: str,
        async_timeout_seconds: int | None,
        deadline: float | None,
        on_sent: Callable[[], None] | None = None,
    ) -> str:
        """An asynchronous create for `run` and `map`: it may wait for a slot until
        ``deadline`` (loop time, ``None`` for ever), each attempt bounded by the client's
        timeout. Returns the new invocation's id."""
        client = self._client
        body = _create_body(app_name, action_name, version, payload, True, async_timeout_seconds)
        created = await client._create(
            app_name,
            body,
            timeout=client._attempt_timeout(),
            deadline=deadline,
            lease=_lease(async_timeout_seconds),
            on_sent=on_sent,
        )
        return created.id

    async def retrieve(self, id: str, *, timeout: Timeout | NotGiven = NOT_GIVEN) -> Invocation:
        """Get an invocation's details, status and output (``GET /invocations/{id}``)."""
        return self._seen(
            await self._client._request(
                invocation_decoder, "GET", self._item_url(id), timeout=timeout
            )
        )

    def _seen(self, invocation: Invocation) -> Invocation:
        """A finished invocation frees its admission slot."""
        if invocation.status in TERMINAL_STATUSES:
            self._client._transport.backpressure.finished(invocation.id)
        return invocation

    async def update(
        self,
        id: str,
        *,
        status: str,
        output: Any = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> Invocation:
        """Set an invocation's status to ``succeeded`` or ``failed``, with an optional
        output (``PATCH /invocations/{id}``).

        ``output``: a ``str`` is sent as is, any other value is JSON-encoded.
        """
        if status not in _UPDATE_STATUSES:
            raise ValueError(f"status must be 'succeeded' or 'failed', got {status!r}")
        url = self._item_url(id)
        body = encoder.encode(
            InvocationUpdateRequest(status=status, output=_json_string(output, "output"))  # type: ignore[arg-type]
        )
        return self._seen(
            await self._client._request(
                invocation_decoder, "PATCH", url, body=body, timeout=timeout
            )
        )

    async def cancel(
        self, id: str, *, output: Any = None, timeout: Timeout | NotGiven = NOT_GIVEN
    ) -> Invocation:
        """Cancel an invocation: `update` with ``status="failed"``."""
        return await self.update(id, status="failed", output=output, timeout=timeout)

    def list(
        self,
        *,
        app_name: str | None = None,
        version: str | None = None,
        action_name: str | None = None,
        deployment_id: str | None = None,
        status: str | None = None,
        since: Since | None = None,
        limit: int = 20,
        offset: int = 0,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> AsyncPaginator[Invocation]:
        """List invocations, newest first, optionally filtered (``GET /invocations``).

        Returns a lazy `AsyncPaginator`: ``async for inv in kernel.invocations.list()``
        walks every page; ``await kernel.invocations.list()`` gives the first `Page`.
        ``limit`` is the page size (1 to 100). ``since`` takes an RFC 3339 string or a
        duration like ``"5m"``, a timezone-aware ``datetime``, or a ``timedelta``.
        """
        _check_int(limit, "limit", 1, 100)
        _check_int(offset, "offset", 0)
        if status is not None and status not in _STATUSES:
            raise ValueError(f"status must be one of {sorted(_STATUSES)}, got {status!r}")
        params: dict[str, str] = {}
        for name, value in (
            ("app_name", app_name),
            ("version", version),
            ("action_name", action_name),
            ("deployment_id", deployment_id),
            ("status", status),
        ):
            if value is not None:
                _check_name(value, name)
                params[name] = value
        if since is not None:
            params["since"] = format_since(since)
        params["limit"] = str(limit)
        client = self._client
        url = client._url("/invocations")
        seen = self._seen

        async def fetch(page_offset: int) -> Page[Invocation]:
            query = {**params, "offset": str(page_offset)}
            resp, content = await client._send("GET", url, params=query, timeout=timeout)
            items = decode_body(invocation_list_decoder, content, resp.status, resp.headers)
            for item in items:
                seen(item)
            page_limit, real_offset, next_offset, has_more = parse_page_headers(
                resp.headers, limit=limit, offset=page_offset, count=len(items)
            )
            return Page(
                items=items,
                limit=page_limit,
                offset=real_offset,
                next_offset=next_offset,
                has_more=has_more,
            )

        return AsyncPaginator(fetch, offset)

    def follow(
        self,
        id: str,
        *,
        since: Since | None = None,
        heartbeats: bool = False,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> EventStream:
        """Stream an invocation's events live (``GET /invocations/{id}/events``).

        Returns an `EventStream`, an async iterator and async context manager of
        `LogEvent`, `InvocationStateEvent`, `ErrorEvent` (and `SSEHeartbeatEvent` with
        ``heartbeats=True``; `UnknownEvent` for types this SDK does not know). It ends after
        the terminal state and resumes dropped connections without repeating events.

        Args:
            id: The invocation to follow.
            since: Replay events from this time: an RFC 3339 string or a duration like
                ``"5m"``, a timezone-aware ``datetime``, or a ``timedelta``.
            heartbeats: Also yield the server's keep-alive events.
            idle_timeout: Seconds without any byte (heartbeats count) after which the
                connection is considered dead and resumed.
        """
        url = self._item_url(id, "/events")
        if idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive, got {idle_timeout!r}")
        return EventStream(
            self._client,
            id,
            url,
            since=None if since is None else format_since(since),
            heartbeats=heartbeats,
            idle_timeout=idle_timeout,
        )

    async def wait(
        self,
        id: str,
        *,
        timeout: float | None = None,
        cancel_on_timeout: bool = False,
    ) -> Invocation:
        """Wait for an invocation to finish and return its final state.

        Follows the event stream (resuming it if it drops); if the stream cannot be resumed,
        falls back to `retrieve`. ``timeout`` (seconds, ``None`` for no limit) raises
        `APITimeoutError`; the invocation keeps running unless ``cancel_on_timeout=True``.
        """
        url = self._item_url(id)
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        try:
            return await asyncio.wait_for(self._wait(id), timeout)
        except asyncio.TimeoutError:
            if cancel_on_timeout:
                await self.cancel(id)
            raise APITimeoutError(
                f"invocation {id} did not finish within {timeout}s"
                + ("; it was cancelled" if cancel_on_timeout else "; it is still running"),
                method="GET",
                url=str(url),
            ) from None

    async def _wait(self, id: str) -> Invocation:
        stream = self.follow(id)
        try:
            async with stream:
                async for _ in stream:
                    pass
        except APIConnectionError:
            invocation = await self.retrieve(id)
            if invocation.is_terminal:
                return invocation
            raise
        state = stream.last_state
        if state is None or not state.is_terminal:  # pragma: no cover - stream ends on terminal
            return await self.retrieve(id)
        return state

    async def run(
        self,
        app_name: str,
        action_name: str,
        *,
        payload: Any = None,
        version: str = "latest",
        async_timeout_seconds: int | None = None,
        timeout: float | None = None,
        cancel_on_timeout: bool = False,
    ) -> Invocation:
        """Invoke an action asynchronously and wait for it to finish: `create` with
        ``async_=True``, then `wait`.

        ``timeout`` bounds the whole call, the wait for a slot under the app's concurrency
        limit included (seconds, ``None`` for no limit), and raises `APITimeoutError`,
        cancelling the invocation only with ``cancel_on_timeout=True``. Without a timeout, a
        ``gather`` of many runs finishes however long the queue: each create waits for a
        slot, and each HTTP attempt is bounded by the client's timeout.
        """
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        invocation_id = await self._create_async(
            app_name,
            action_name,
            payload,
            version=version,
            async_timeout_seconds=async_timeout_seconds,
            deadline=deadline,
        )
        left = None if deadline is None else max(deadline - loop.time(), 0.001)
        return await self.wait(invocation_id, timeout=left, cancel_on_timeout=cancel_on_timeout)

    def map(
        self,
        app_name: str,
        action_name: str,
        payloads: Iterable[Any] | AsyncIterable[Any],
        *,
        version: str = "latest",
        concurrency: int | None = None,
        timeout: float | None = None,
        async_timeout_seconds: int | None = None,
    ) -> InvocationMap:
        """Run an action once per payload, concurrently; yield each result as it finishes.

        ```python
        async with kernel.invocations.map("my-app", "analyze", urls) as results:
            async for result in results:
                if result.ok:
                    print(result.index, result.invocation.output_as())
        ```

        Each payload is invoked asynchronously and followed to the end, exactly once, as
        `run` would; the service's limits are absorbed by the client's backpressure, so
        the fan-out goes as fast as they allow. Every payload gives one `MapResult`, in
        order of completion: its ``invocation`` (``succeeded`` or ``failed``), or the
        ``error`` that kept the SDK from seeing it through. Leaving early or cancelling
        cancels the invocations it started (status ``failed``, as the Kernel CLI does).

        Args:
            app_name: The application's name.
            action_name: The action to invoke for every payload.
            payloads: An iterable or async iterable of payloads, read lazily.
            version: The application version (``"latest"`` by default).
            concurrency: Most invocations of this call in progress at once; ``None``
                leaves it to the service's limits (learnt, or set with `Limits`).
            timeout: Seconds each invocation may take, its wait for a slot included;
                one that takes longer is cancelled and reported with `APITimeoutError`.
            async_timeout_seconds: How long each invocation may run on the service.
        """
        _check_name(app_name, "app_name")
        _check_name(action_name, "action_name")
        _check_name(version, "version")
        if concurrency is not None:
            _check_int(concurrency, "concurrency", 1)
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if async_timeout_seconds is not None:
            _check_int(async_timeout_seconds, "async_timeout_seconds", 10, 3600)
        if isinstance(payloads, (str, bytes)):
            raise TypeError("payloads must be an iterable of payloads, not a single str")
        return run_map(
            self,
            app_name,
            action_name,
            payloads,
            version=version,
            concurrency=concurrency,
            timeout=timeout,
            async_timeout_seconds=async_timeout_seconds,
        )
