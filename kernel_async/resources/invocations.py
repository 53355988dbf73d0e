"""The invocations resource: the API's operations, and what is built on them (wait, run,
map)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from ..models import Invocation
from ._lifecycle import Landing, Lifecycle
from ._operations import Extra
from ._params import Extras, check_int, check_name
from ._raw import InvocationsWithRawResponse, InvocationsWithStreamingResponse

if TYPE_CHECKING:
    from .._fanout import InvocationMap
    from .._telemetry_traces import LifecycleTrace
    from ..journal import Journal

__all__ = ["Invocations"]


class Invocations(Lifecycle):
    """Run an app's actions, follow their events, and list, update or cancel invocations.

    Reached as ``kernel.invocations``. Arguments the API would reject raise ``ValueError``
    (or ``TypeError``) before any request is made. Every method also takes
    ``extra_headers=`` and ``extra_query=``: headers and query parameters sent with the
    call on top of the client's, for API parameters this SDK does not know yet.
    """

    __slots__ = ()

    @property
    def with_raw_response(self) -> InvocationsWithRawResponse:
        """The one-request methods, returning the HTTP response (``headers``,
        ``status_code``, ``http_request``) with ``await response.parse()`` for the object.

        ```python
        response = await kernel.invocations.with_raw_response.create("my-app", "analyze")
        print(response.headers.get("Content-Type"))
        created = await response.parse()
        ```
        """
        return InvocationsWithRawResponse(self)

    @property
    def with_streaming_response(self) -> InvocationsWithStreamingResponse:
        """The one-request methods as async context managers of their HTTP response
        (``async with kernel.invocations.with_streaming_response.retrieve(id) as r:``)."""
        return InvocationsWithStreamingResponse(self)

    async def wait(
        self,
        id: str,
        *,
        timeout: float | None = None,
        cancel_on_timeout: bool = False,
        extra_headers: Extra = None,
        extra_query: Extra = None,
    ) -> Invocation:
        """Wait for an invocation to finish and return its final state.

        Follows the event stream (resuming it if it drops); if the stream cannot be resumed,
        falls back to `retrieve`. ``timeout`` (seconds, ``None`` for no limit) raises
        `APITimeoutError`; the invocation keeps running unless ``cancel_on_timeout=True``.
        """
        self._item_url(id)  # checks the id
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        extras = Extras(extra_headers=extra_headers, extra_query=extra_query)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        see_through = partial(
            self._see_through,
            id,
            deadline,
            cancel_on_timeout=cancel_on_timeout,
            cancel_on_exit=False,
            extras=extras,
        )
        telemetry = self._client._telemetry
        if telemetry is None:
            return await see_through()
        with telemetry._lifecycle("wait", {"kernel.invocation.id": id}) as life:
            invocation = await see_through()
            life.finished(invocation)
            return invocation

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
        cancel_on_exit: bool = False,
        extra_headers: Extra = None,
        extra_query: Extra = None,
    ) -> Invocation:
        """Invoke an action asynchronously and wait for it to finish: `create` with
        ``async_=True``, then `wait`.

        ``timeout`` bounds the whole call, the wait for a slot under the app's concurrency
        limit included (seconds, ``None`` for no limit), and raises `APITimeoutError` with
        the ``invocation_id`` once one was created, cancelling it only with
        ``cancel_on_timeout=True``. A create already sent when the deadline passes is
        allowed to get its answer, so that its invocation is known (and cancelled when
        asked); one that finished as the deadline passed is returned, not an error.
        Without a timeout, a ``gather`` of many runs finishes however long the queue: each
        create waits for a slot, and each HTTP attempt is bounded by the client's timeout.

        Cancelling the call (``asyncio.timeout``, a request handler going away) leaves the
        invocation running on the service, unless ``cancel_on_exit=True``: then a create in
        flight is let land and the invocation is cancelled (status ``failed``), within
        about ten seconds. Either way its admission slot is freed once it ends: the client
        checks the service's list of running invocations while creates wait for a slot.
        """
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        run = partial(
            self._run,
            app_name,
            action_name,
            payload,
            version=version,
            async_timeout_seconds=async_timeout_seconds,
            timeout=timeout,
            cancel_on_timeout=cancel_on_timeout,
            cancel_on_exit=cancel_on_exit,
            extras=Extras(extra_headers=extra_headers, extra_query=extra_query),
        )
        telemetry = self._client._telemetry
        if telemetry is None:
            return await run(life=None)
        attributes = telemetry._create_attributes(app_name, action_name, version, payload)
        with telemetry._lifecycle("run", attributes) as life:
            invocation = await run(life=life)
            life.finished(invocation)
            return invocation

    async def _run(
        self,
        app_name: str,
        action_name: str,
        payload: Any,
        *,
        version: str,
        async_timeout_seconds: int | None,
        timeout: float | None,
        cancel_on_timeout: bool,
        cancel_on_exit: bool,
        extras: Extras,
        life: LifecycleTrace | None,
    ) -> Invocation:
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        invocation_id = await self._start(
            app_name,
            action_name,
            payload,
            version=version,
            async_timeout_seconds=async_timeout_seconds,
            deadline=deadline,
            extras=extras,
            landing=Landing(),
            cancel_on_exit=cancel_on_exit,
        )
        if life is not None:
            life.created(invocation_id)
        return await self._see_through(
            invocation_id,
            deadline,
            cancel_on_timeout=cancel_on_timeout,
            cancel_on_exit=cancel_on_exit,
            extras=extras,
        )

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
        journal: str | os.PathLike[str] | Journal | None = None,
        extra_headers: Extra = None,
        extra_query: Extra = None,
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
            journal: A file (or `Journal`) recording each payload's progress durably, so
                that the same call run again after a crash or a kill resumes: what
                finished is yielded from it without a request, what was created is
                followed, and nothing is created twice. See "Resumable fan-out".
            extra_headers: Headers to send with every call it makes.
            extra_query: Query parameters to send with every call it makes.
        """
        check_name(app_name, "app_name")
        check_name(action_name, "action_name")
        check_name(version, "version")
        if concurrency is not None:
            check_int(concurrency, "concurrency", 1)
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if async_timeout_seconds is not None:
            check_int(async_timeout_seconds, "async_timeout_seconds", 10, 3600)
        if isinstance(payloads, (str, bytes)):
            raise TypeError("payloads must be an iterable of payloads, not a single str")
        from .._fanout import Fanout, InvocationMap  # it builds on this module
        from ..journal import Journal
        from ..journal._resume import JournalRun

        return InvocationMap(
            Fanout(
                self,
                app_name,
                action_name,
                payloads,
                version=version,
                concurrency=concurrency,
                timeout=timeout,
                async_timeout_seconds=async_timeout_seconds,
                extras=Extras(extra_headers=extra_headers, extra_query=extra_query),
                journal=None
                if journal is None
                else JournalRun(
                    journal if isinstance(journal, Journal) else Journal(journal),
                    app_name,
                    action_name,
                    version,
                ),
            )
        )
