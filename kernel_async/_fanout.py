"""``kernel.invocations.map()``: run an action once per payload, results as they finish."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from .errors import BadRequestError, ConflictError, KernelError
from .models import Invocation

if TYPE_CHECKING:
    from typing_extensions import Self

    from .resources._params import Extras
    from .resources.invocations import Invocations
    from .telemetry import LifecycleTrace

__all__ = ["CANCEL_OUTPUT", "InvocationMap", "MapResult", "map_results"]

logger = logging.getLogger("kernel_async")

#: The output an invocation is cancelled with, as the Kernel CLI does on Ctrl-C.
CANCEL_OUTPUT: Final = {"error": "Invocation cancelled by user"}
#: Items kept waiting for a slot ahead of need when ``concurrency`` is not given: enough to
#: use every slot that frees, few enough that an endless payload source stays bounded.
_PREFETCH: Final = 16
#: How long cleanup may take to cancel the invocations started, on exit.
_CANCEL_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class MapResult:
    """One item of `InvocationMap`: the payload's place in the input, and how it ended."""

    index: int
    """The payload's position in the input (0-based)."""
    payload: Any
    """The payload, as given."""
    invocation: Invocation | None
    """The invocation's final state (``succeeded`` or ``failed``), or ``None`` when the
    call failed before the end was known."""
    error: KernelError | None
    """Why the SDK could not see it through (``None`` when ``invocation`` is set). The
    invocation may still have been created: see ``invocation_id``."""
    invocation_id: str | None = None
    """The invocation's id, once created (also when ``error`` is set)."""

    @property
    def ok(self) -> bool:
        """Whether the invocation succeeded."""
        return self.invocation is not None and self.invocation.status == "succeeded"


class InvocationMap:
    """The results of `Invocations.map`, as they finish: an async iterator and an async
    context manager.

    ```python
    async with kernel.invocations.map("my-app", "analyze", urls) as results:
        async for result in results:
            print(result.index, result.invocation.status if result.invocation else result.error)
    ```

    Every payload gives exactly one `MapResult`; none is started twice. Leaving early
    (``break``, an exception, cancellation, `aclose`) cancels the invocations it started
    and has not seen finish, setting them to ``failed`` as the Kernel CLI does on Ctrl-C.
    A plain ``async for`` does that too, once the loop lets go of the iterator.
    """

    __slots__ = ("__weakref__", "_gen")

    def __init__(self, gen: AsyncGenerator[MapResult, None]) -> None:
        self._gen = gen

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> MapResult:
        return await self._gen.__anext__()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: cancel the invocations started and not finished, and wait for that."""
        await self._gen.aclose()


@dataclass(frozen=True)
class _End:
    count: int  # every payload was started: this many results in all


@dataclass(frozen=True)
class _Failed:
    error: BaseException  # the payload source, or an item, raised something not an API error


async def map_results(
    invocations: Invocations,
    app_name: str,
    action_name: str,
    payloads: Iterable[Any] | AsyncIterable[Any],
    *,
    version: str,
    concurrency: int | None,
    timeout: float | None,
    async_timeout_seconds: int | None,
    extras: Extras,
) -> AsyncGenerator[MapResult, None]:
    """The results of `Invocations.map`, as they finish (wrap in `InvocationMap`)."""
    loop = asyncio.get_running_loop()
    results: asyncio.Queue[MapResult | _End | _Failed] = asyncio.Queue()
    items: set[asyncio.Task[None]] = set()
    waiting = 0  # items started and not yet sent (queued for a slot)
    changed = asyncio.Event()

    telemetry = invocations._client._telemetry
    map_span = (
        None
        if telemetry is None
        else telemetry._map_span(
            {
                "kernel.app.name": app_name,
                "kernel.action.name": action_name,
                "kernel.app.version": version,
            }
        )
    )

    async def item(index: int, payload: Any) -> None:
        if telemetry is None:
            await run_item(index, payload, None)
            return
        attributes = telemetry._create_attributes(app_name, action_name, version, payload)
        attributes["kernel.map.index"] = index
        with telemetry._lifecycle("run", attributes, parent=map_span) as life:
            await run_item(index, payload, life)

    async def run_item(index: int, payload: Any, life: LifecycleTrace | None) -> None:
        nonlocal waiting
        deadline = None if timeout is None else loop.time() + timeout
        sent = False
        created: asyncio.Future[str] | None = None
        invocation_id: str | None = None

        def on_sent() -> None:
            nonlocal sent, waiting
            if not sent:
                sent = True
                waiting -= 1
                changed.set()

        try:
            created = asyncio.ensure_future(
                invocations._create_async(
                    app_name,
                    action_name,
                    payload,
                    version=version,
                    async_timeout_seconds=async_timeout_seconds,
                    deadline=deadline,
                    on_sent=on_sent,
                    **extras,
                )
            )
            # Shielded: once sent, a create runs to its answer so that its invocation can
            # be cancelled if this item is.
            invocation_id = await asyncio.shield(created)
            if life is not None:
                life.created(invocation_id)
            left = None if deadline is None else max(deadline - loop.time(), 0.001)
            final = await invocations._wait_for(invocation_id, left, True, extras)
            if life is not None:
                life.finished(final)
            results.put_nowait(MapResult(index, payload, final, None, invocation_id))
        except KernelError as exc:
            if life is not None:
                life.failed(exc)
            results.put_nowait(MapResult(index, payload, None, exc, invocation_id))
        except asyncio.CancelledError:
            if invocation_id is None and created is not None:
                if sent:
                    with contextlib.suppress(BaseException):
                        invocation_id = await asyncio.wait_for(created, _CANCEL_TIMEOUT)
                else:
                    created.cancel()
            if invocation_id is not None:
                await _cancel(invocations, invocation_id, extras)
            raise
        except Exception as exc:
            results.put_nowait(_Failed(exc))
        finally:
            on_sent()  # never sent: it no longer waits for a slot either

    def done(task: asyncio.Task[None]) -> None:
        items.discard(task)
        changed.set()

    async def feed() -> None:
        nonlocal waiting
        index = 0
        try:
            async for payload in _aiter(payloads):
                while (concurrency is not None and len(items) >= concurrency) or (
                    waiting >= _PREFETCH
                ):
                    changed.clear()
                    await changed.wait()
                waiting += 1
                task = asyncio.create_task(item(index, payload))
                items.add(task)
                task.add_done_callback(done)
                index += 1
        except Exception as exc:
            results.put_nowait(_Failed(exc))
        else:
            results.put_nowait(_End(index))

    feeder = asyncio.create_task(feed())
    total: int | None = None
    yielded = 0
    try:
        while total is None or yielded < total:
            got = await results.get()
            if isinstance(got, _End):
                total = got.count
            elif isinstance(got, _Failed):
                raise got.error
            else:
                yielded += 1
                yield got
    finally:
        feeder.cancel()
        pending = [*items, feeder]
        for task in items:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if map_span is not None:
            map_span.set_attribute("kernel.map.results", yielded)
            map_span.end()


async def _aiter(payloads: Iterable[Any] | AsyncIterable[Any]) -> AsyncGenerator[Any, None]:
    if isinstance(payloads, AsyncIterable):
        async for payload in payloads:
            yield payload
    else:
        for payload in payloads:
            yield payload


async def _cancel(invocations: Invocations, invocation_id: str, extras: Extras) -> None:
    """Set a started invocation to ``failed``, whatever happens to the task doing it."""
    cancelling = asyncio.ensure_future(
        invocations.cancel(invocation_id, output=CANCEL_OUTPUT, timeout=_CANCEL_TIMEOUT, **extras)
    )
    try:
        await asyncio.shield(cancelling)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(cancelling, _CANCEL_TIMEOUT)
    except (BadRequestError, ConflictError) as exc:  # it had finished meanwhile
        logger.debug("Invocation %r was not cancelled: %s", invocation_id, exc)
    except KernelError as exc:
        logger.warning("Could not cancel invocation %r: %s", invocation_id, exc)
