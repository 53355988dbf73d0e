"""The invocations API's operations, one request each (`Invocations` builds on them)."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from .._events import format_since
from .._http import decode_body
from .._options import NOT_GIVEN, NotGiven, Timeout
from .._pagination import AsyncPaginator, parse_page_headers
from .._streaming import DEFAULT_IDLE_TIMEOUT, EventStream
from ..models import (
    TERMINAL_STATUSES,
    Browser,
    Invocation,
    InvocationStatus,
    InvocationUpdateRequest,
    InvokeResponse,
    Page,
    browser_list_decoder,
    encoder,
    invocation_decoder,
    invocation_list_decoder,
)
from ._params import UPDATE_STATUSES, Since, create_body, json_string, list_params

if TYPE_CHECKING:
    from yarl import URL

    from .._client import AsyncKernel

__all__ = ["Extra", "Operations"]

#: Per-call extras: headers and query parameters this SDK does not know about yet.
Extra = Mapping[str, str] | None


class Invocations:
    """The API's invocation operations: create, retrieve, update, cancel, list, the
    browsers, and follow. Reached through the public `Invocations`, which adds wait, run
    and map.

    Named ``Invocations`` too, so that type checkers' messages about these methods name
    the class users see ("create" of "Invocations"), not this one.
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

    def _seen(self, invocation: Invocation) -> Invocation:
        """A finished invocation frees its admission slot."""
        if invocation.status in TERMINAL_STATUSES:
            self._client._backpressure.finished(invocation.id)
        return invocation

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
        extra_headers: Extra = None,
        extra_query: Extra = None,
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
            timeout: This call's timeout, overriding the client's. Unless one is set here or
                on the client, a synchronous create waits as long as the service lets an
                action run (100 s).
            extra_headers: Headers to send with this call, on top of the client's.
            extra_query: Query parameters to send with this call.

        Returns:
            The new invocation's id and status (and output, for a synchronous call).

        This call is retried only when the server cannot have started the invocation
        (connection refused, 429, 503); after a timeout or a 500/502/504 the error is raised
        and nothing is retried, so it never starts a second invocation.

        When the app is at its concurrency limit (learnt from the service's 429s, or set
        with `Limits`), the create waits in a first-in, first-out queue for a slot, within
        ``timeout``: a concurrency 429 is backpressure, not a failure.
        """
        body = create_body(
            app_name, action_name, version, payload, bool(async_), async_timeout_seconds
        )
        client = self._client
        call_timeout = client._create_timeout(timeout, sync=not async_)
        total = call_timeout.total
        telemetry = client._telemetry
        return await client._create(
            app_name,
            body,
            timeout=call_timeout,
            deadline=None if total is None else asyncio.get_running_loop().time() + total,
            async_timeout_seconds=async_timeout_seconds,
            extra_headers=extra_headers,
            extra_query=extra_query,
            trace_attributes=None
            if telemetry is None
            else telemetry._create_attributes(app_name, action_name, version, payload),
        )

    async def retrieve(
        self,
        id: str,
        *,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        extra_headers: Extra = None,
        extra_query: Extra = None,
    ) -> Invocation:
        """Get an invocation's details, status and output (``GET /invocations/{id}``)."""
        invocation = await self._client._request(
            invocation_decoder,
            "GET",
            self._item_url(id),
            timeout=timeout,
            extra_headers=extra_headers,
            extra_query=extra_query,
            op="retrieve",
        )
        return self._seen(invocation)

    async def update(
        self,
        id: str,
        *,
        status: Literal["succeeded", "failed"],
        output: Any = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        extra_headers: Extra = None,
        extra_query: Extra = None,
    ) -> Invocation:
        """Set an invocation's status to ``succeeded`` or ``failed``, with an optional
        output (``PATCH /invocations/{id}``).

        ``output``: a ``str`` is sent as is, any other value is JSON-encoded. Setting
        ``failed`` also destroys the browsers the invocation started.
        """
        return await self._update(id, status, output, timeout, extra_headers, extra_query)

    async def _update(
        self,
        id: str,
        status: Literal["succeeded", "failed"],
        output: Any,
        timeout: Timeout | NotGiven,
        extra_headers: Extra,
        extra_query: Extra,
        op: str = "update",
    ) -> Invocation:
        if status not in UPDATE_STATUSES:
            raise ValueError(f"status must be 'succeeded' or 'failed', got {status!r}")
        url = self._item_url(id)
        body = encoder.encode(
            InvocationUpdateRequest(status=status, output=json_string(output, "output"))
        )
        invocation = await self._client._request(
            invocation_decoder,
            "PATCH",
            url,
            body=body,
            timeout=timeout,
            extra_headers=extra_headers,
            extra_query=extra_query,
            op=op,
        )
        return self._seen(invocation)

    async def cancel(
        self,
        id: str,
        *,
        output: Any = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        extra_headers: Extra = None,
        extra_query: Extra = None,
    ) -> Invocation:
        """Cancel an invocation: `update` with ``status="failed"``."""
        return await self._update(
            id, "failed", output, timeout, extra_headers, extra_query, op="cancel"
        )

    def list(
        self,
        *,
        app_name: str | None = None,
        version: str | None = None,
        action_name: str | None = None,
        deployment_id: str | None = None,
        status: InvocationStatus | None = None,
        since: Since | None = None,
        query: str | None = None,
        limit: int = 20,
        offset: int = 0,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        extra_headers: Extra = None,
        extra_query: Extra = None,
    ) -> AsyncPaginator[Invocation]:
        """List invocations, newest first, optionally filtered (``GET /invocations``).

        Returns a lazy `AsyncPaginator`: ``async for inv in kernel.invocations.list()``
        walks every page; ``await kernel.invocations.list()`` gives the first `Page`.
        ``limit`` is the page size (1 to 100). ``since`` takes an RFC 3339 string or a
        duration like ``"5m"``, a timezone-aware ``datetime``, or a ``timedelta``.
        ``query`` searches invocations by id, app name or action name.
        """
        params = list_params(
            app_name=app_name,
            version=version,
            action_name=action_name,
            deployment_id=deployment_id,
            status=status,
            since=since,
            query=query,
            limit=limit,
            offset=offset,
        )
        client = self._client
        url = client._invocations_url
        seen = self._seen

        async def fetch(page_offset: int) -> Page[Invocation]:
            resp, content = await client._send(
                "GET",
                url,
                params={**params, "offset": str(page_offset)},
                timeout=timeout,
                extra_headers=extra_headers,
                extra_query=extra_query,
                op="list",
            )
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
            )._fetched_by(fetch)

        return AsyncPaginator(fetch, offset)

    async def list_browsers(
        self,
        id: str,
        *,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        extra_headers: Extra = None,
        extra_query: Extra = None,
    ) -> builtins.list[Browser]:
        """The browser sessions an invocation started (``GET /invocations/{id}/browsers``)."""
        listed = await self._client._request(
            browser_list_decoder,
            "GET",
            self._item_url(id, "/browsers"),
            timeout=timeout,
            extra_headers=extra_headers,
            extra_query=extra_query,
            op="list_browsers",
        )
        return listed.browsers

    async def delete_browsers(
        self,
        id: str,
        *,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        extra_headers: Extra = None,
        extra_query: Extra = None,
    ) -> None:
        """Delete the browser sessions an invocation started
        (``DELETE /invocations/{id}/browsers``)."""
        await self._client._send(
            "DELETE",
            self._item_url(id, "/browsers"),
            timeout=timeout,
            extra_headers={"Accept": "*/*", **(extra_headers or {})},
            extra_query=extra_query,
            op="delete_browsers",
        )

    def follow(
        self,
        id: str,
        *,
        since: Since | None = None,
        heartbeats: bool = False,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        extra_headers: Extra = None,
        extra_query: Extra = None,
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
            extra_headers: Headers to send with every connection of the stream.
            extra_query: Query parameters to send with every connection of the stream.
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
            extra_headers=extra_headers,
            extra_query=extra_query,
        )


#: The operations' class, by the name the rest of the package knows it by.
Operations = Invocations
