"""OpenTelemetry traces and metrics of what the client does on your behalf.

```python
from kernel_async import AsyncKernel

async with AsyncKernel(telemetry=True) as kernel:   # the global tracer and meter providers
    await kernel.invocations.run("my-app", "analyze", payload={"url": "..."})
```

Needs ``pip install "kernel-async[otel]"`` (``opentelemetry-api`` only; bring your own SDK
and exporters). Off by default, and then nothing here is imported or called.

What is recorded:

- a span per call (``kernel.invocations.create``, ``.retrieve``, ``.update``,
  ``.cancel``, ``.list`` (one per page), ``.list_browsers``, ``.delete_browsers``), with
  the HTTP client attributes of OpenTelemetry's semantic conventions; events on it for each
  retry, each 429 absorbed and each wait (the rate limit, or an app's admission queue);
- a span per event stream (``kernel.invocations.follow``), with an event per resume (its
  cause) and per replay recognised after it (how many events were dropped as repeats);
- a span per invocation's lifecycle (``kernel.invocations.run``, ``.wait``, and one per
  `map` item under a ``kernel.invocations.map`` span), from the create to the terminal
  state, with its id, app, action, version, final status and ``status_reason``;
- metrics: calls by outcome (the count of their duration histogram), retries, 429s
  absorbed, time waited (for the rate limit, for admission), open streams, resumes, events
  delivered, invocations finished by status.

HTTP spans of ``opentelemetry-instrumentation-aiohttp-client`` nest under these spans.
Neither the API key, any header nor any query string (it may carry ``default_query``
tokens: it is cut from URLs in error messages and tracebacks too) is recorded; payloads
and outputs only with ``Telemetry(record_payloads=True)``.

Telemetry never changes a call's outcome: an exception raised by OpenTelemetry (a span
processor's ``on_end``, a broken meter...) is logged once, at WARNING on the
``kernel_async`` logger, and ignored.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'kernel_async.telemetry needs OpenTelemetry: pip install "kernel-async[otel]"'
    ) from exc

import msgspec

from ._telemetry_safety import Guard, GuardedInstrument, GuardedSpan, without_queries
from ._version import __version__
from .errors import APIStatusError

if TYPE_CHECKING:
    from typing_extensions import Self
    from yarl import URL

    from .models import Invocation, InvokeResponse

__all__ = ["Telemetry"]

#: The instrumentation scope of every span and metric.
SCOPE: Final = "kernel_async"

_Attributes = dict[str, Any]


class Telemetry:
    """Where the client sends its spans and metrics, and what it may put in them.

    Pass it as ``AsyncKernel(telemetry=Telemetry(...))``; ``telemetry=True`` is
    ``Telemetry()``.

    Args:
        tracer_provider: The ``TracerProvider`` to use (the global one by default).
        meter_provider: The ``MeterProvider`` to use (the global one by default).
        record_payloads: Also record invocation payloads and outputs (as span attributes
            ``kernel.invocation.payload`` and ``kernel.invocation.output``). Off by default:
            they may hold personal data or secrets.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        record_payloads: bool = False,
    ) -> None:
        self.record_payloads = record_payloads
        self._guard = guard = Guard()
        self.tracer = trace.get_tracer(SCOPE, __version__, tracer_provider)
        meter = metrics.get_meter(SCOPE, __version__, meter_provider)

        def guarded(
            create: Callable[[str, str, str], Any], name: str, unit: str, description: str
        ) -> GuardedInstrument:
            return GuardedInstrument(create(name, unit, description), guard)

        self._call_duration = guarded(
            meter.create_histogram,
            "kernel.client.call.duration",
            "s",
            "Duration of API calls, waits and retries included, by operation and outcome "
            "(its count is the calls by outcome)",
        )
        self._retries = guarded(
            meter.create_counter,
            "kernel.client.retries",
            "{retry}",
            "Attempts made again after a failure",
        )
        self._rate_limited = guarded(
            meter.create_counter,
            "kernel.client.rate_limited",
            "{response}",
            "429 responses absorbed (waited out), by kind: rate or concurrency",
        )
        self._wait_duration = guarded(
            meter.create_histogram,
            "kernel.client.wait.duration",
            "s",
            "Time requests waited before being sent: for the rate limit, or queued for an "
            "app's admission (its concurrency limit)",
        )
        self._streams_open = guarded(
            meter.create_up_down_counter,
            "kernel.client.streams.open",
            "{stream}",
            "Event streams open",
        )
        self._resumes = guarded(
            meter.create_counter,
            "kernel.client.stream.resumes",
            "{resume}",
            "Event stream reconnections, by cause",
        )
        self._events = guarded(
            meter.create_counter,
            "kernel.client.stream.events",
            "{event}",
            "Stream events delivered (repeats dropped)",
        )
        self._invocations = guarded(
            meter.create_counter,
            "kernel.client.invocations",
            "{invocation}",
            "Invocations seen through to their end (run, wait, map), by final status",
        )

    def __repr__(self) -> str:
        return f"Telemetry(record_payloads={self.record_payloads})"

    # --- spans --------------------------------------------------------------------------------

    def _start_span(
        self, name: str, kind: SpanKind, attributes: _Attributes, context: Any = None
    ) -> Span:
        """A span started now, guarded (a do-nothing one if starting it failed)."""
        span = self._guard.run(
            self.tracer.start_span,
            INVALID_SPAN,
            name,
            context=context,
            kind=kind,
            attributes=attributes,
        )
        return GuardedSpan(span, self._guard)

    def _call(self, operation: str, method: str, url: URL, attributes: _Attributes) -> CallTrace:
        """The span of one API call (a context manager: current while the call runs)."""
        attributes.update(_http_attributes(operation, method, url))
        span = self._start_span("kernel.invocations." + operation, SpanKind.CLIENT, attributes)
        return CallTrace(self, span, operation)

    def _stream(self, invocation_id: str, url: URL) -> StreamTrace:
        """The span of an event stream, started now, ended by `StreamTrace.end`."""
        attributes = _http_attributes("follow", "GET", url)
        attributes["kernel.invocation.id"] = invocation_id
        span = self._start_span("kernel.invocations.follow", SpanKind.CLIENT, attributes)
        self._streams_open.add(1)
        return StreamTrace(self, span, "follow")

    def _lifecycle(
        self,
        operation: str,
        attributes: _Attributes,
        *,
        parent: Span | None = None,
    ) -> LifecycleTrace:
        """The span of an invocation from its create to its end (a context manager)."""
        context = None if parent is None else trace.set_span_in_context(parent)
        span = self._start_span(
            "kernel.invocations." + operation,
            SpanKind.INTERNAL,
            {"kernel.operation": operation, **attributes},
            context,
        )
        return LifecycleTrace(self, span)

    def _create_attributes(
        self, app: str, action: str, version: str, payload: Any = None
    ) -> _Attributes:
        """The attributes of a create's span, or of a lifecycle before its invocation
        exists (the payload only with ``record_payloads``)."""
        attributes: _Attributes = {
            "kernel.app.name": app,
            "kernel.action.name": action,
            "kernel.app.version": version,
        }
        if payload is not None and self.record_payloads:
            attributes["kernel.invocation.payload"] = (
                payload if isinstance(payload, str) else msgspec.json.encode(payload).decode()
            )
        return attributes

    def _map_span(self, attributes: _Attributes) -> Span:
        """The span of a `map` call; its items' lifecycles are its children."""
        return self._start_span(
            "kernel.invocations.map", SpanKind.INTERNAL, {"kernel.operation": "map", **attributes}
        )


class _Current:
    """Makes a span the current one (for the spans made under it) while in a ``with``."""

    __slots__ = ("_token", "span", "telemetry")

    def __init__(self, telemetry: Telemetry, span: Span) -> None:
        self.telemetry = telemetry
        self.span = span
        self._token: object | None = None

    def __enter__(self) -> Self:
        context = trace.set_span_in_context(self.span)
        self._token = self.telemetry._guard.run(otel_context.attach, None, context)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._detach()
        self._exited(exc)

    def _exited(self, exc: BaseException | None) -> None:
        """What leaving the ``with`` means besides detaching (ending the span, usually)."""

    def _detach(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            self.telemetry._guard.run(otel_context.detach, None, token)  # type: ignore[arg-type]

    def _record_error(self, exc: BaseException) -> str:
        """Mark the span failed with ``exc``; its ``error.type``. The exception's message
        and traceback lose their URLs' query strings, as ``url.full`` does."""
        span = self.span
        error_type = _error_type(exc)
        span.set_attribute("error.type", error_type)
        if isinstance(exc, Exception) and span.is_recording():
            stacktrace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            span.record_exception(
                exc,
                {
                    "exception.message": without_queries(str(exc)),
                    "exception.stacktrace": without_queries(stacktrace),
                },
            )
        span.set_status(Status(StatusCode.ERROR, _describe(exc)))
        return error_type

    def event(self, name: str, attributes: _Attributes) -> None:
        self.span.add_event(name, attributes)


class CallTrace(_Current):
    """The span of one call, and the events of what happened during it. The call hands it
    down (as its `kernel_async._transport.Call`'s trace) to the retry middleware and
    admission, which report to it."""

    __slots__ = ("_started", "operation", "resends")

    def __init__(self, telemetry: Telemetry, span: Span, operation: str) -> None:
        super().__init__(telemetry, span)
        self.operation = operation
        self.resends = 0
        self._started = time.perf_counter()

    def _exited(self, exc: BaseException | None) -> None:
        self.close(exc)

    def close(self, exc: BaseException | None) -> None:
        """End the span (and count the call), failed with ``exc`` if given."""
        span = self.span
        outcome: _Attributes = {"kernel.operation": self.operation}
        if self.resends:
            span.set_attribute("http.request.resend_count", self.resends)
        if exc is None:
            outcome["outcome"] = "ok"
        else:
            outcome["outcome"] = "error"
            outcome["error.type"] = self._record_error(exc)
            if isinstance(exc, APIStatusError):
                span.set_attribute("http.response.status_code", exc.status)
        span.end()
        telemetry = self.telemetry
        telemetry._call_duration.record(time.perf_counter() - self._started, outcome)

    def status(self, status: int) -> None:
        """The HTTP status of the final response."""
        self.span.set_attribute("http.response.status_code", status)

    def created(self, response: InvokeResponse) -> None:
        """What a create answered: the new invocation's id and status."""
        span = self.span
        span.set_attribute("kernel.invocation.id", response.id)
        span.set_attribute("kernel.invocation.status", response.status)
        if response.status_reason is not None:
            span.set_attribute("kernel.invocation.status_reason", response.status_reason)
        if response.output is not None and self.telemetry.record_payloads:
            span.set_attribute("kernel.invocation.output", response.output)

    def retry(self, reason: str, delay: float) -> None:
        """An attempt failed (``reason``: ``HTTP 503``, an exception's type...) and is made
        again after ``delay`` seconds."""
        self.resends += 1
        self.event(
            "kernel.retry",
            {
                "kernel.retry.attempt": self.resends,
                "kernel.retry.reason": reason,
                "kernel.wait.seconds": delay,
            },
        )
        self.telemetry._retries.add(
            1, {"kernel.operation": self.operation, "kernel.retry.reason": reason}
        )

    def rate_limited(self, kind: str, retry_after: float | None) -> None:
        """A 429 absorbed: ``kind`` is ``rate`` (waited out with every request) or
        ``concurrency`` (the create queues for a slot of its app again)."""
        attributes: _Attributes = {"kernel.rate_limit.kind": kind}
        if retry_after is not None:
            attributes["kernel.retry_after.seconds"] = retry_after
        self.event("kernel.rate_limited", attributes)
        self.telemetry._rate_limited.add(1, {"kernel.rate_limit.kind": kind})

    def waited(self, kind: str, seconds: float, app: str | None = None) -> None:
        """The request waited ``seconds`` before being sent: ``kind`` is ``rate_limit``
        (the rate gate) or ``admission`` (the app's queue, at its concurrency limit)."""
        attributes: _Attributes = {"kernel.wait.kind": kind, "kernel.wait.seconds": seconds}
        if app is not None:
            attributes["kernel.app.name"] = app
        self.event("kernel." + kind + ".wait", attributes)
        metric: _Attributes = {"kernel.wait.kind": kind}
        if app is not None:
            metric["kernel.app.name"] = app
        self.telemetry._wait_duration.record(seconds, metric)


class StreamTrace(CallTrace):
    """The span of an event stream: current only while it connects (so HTTP spans nest
    under it), ended once by `end`."""

    __slots__ = ("_ended", "delivered", "replayed", "resumes")

    def __init__(self, telemetry: Telemetry, span: Span, operation: str) -> None:
        super().__init__(telemetry, span, operation)
        self.delivered = self.replayed = self.resumes = 0
        self._ended = False

    def _exited(self, exc: BaseException | None) -> None:
        pass  # a connection attempt: the stream goes on

    def resume(self, cause: BaseException | None, delay: float) -> None:
        """The connection ended early (``cause``: how, ``None`` for a clean end) and the
        stream reconnects after ``delay`` seconds."""
        self.resumes += 1
        reason = "ended" if cause is None else _error_type(cause)
        self.event(
            "kernel.stream.resume",
            {
                "kernel.stream.resume.attempt": self.resumes,
                "kernel.stream.resume.cause": reason,
                "kernel.wait.seconds": delay,
            },
        )
        self.telemetry._resumes.add(1, {"kernel.stream.resume.cause": reason})

    def replay_done(self, skipped: int) -> None:
        """A resumed connection's replay is over: ``skipped`` events came again and were
        dropped."""
        self.replayed += skipped
        self.event("kernel.stream.replayed", {"kernel.stream.events_replayed": skipped})

    def deliver(self, count: int) -> None:
        """``count`` events were delivered (queued for the reader)."""
        self.delivered += count
        self.telemetry._events.add(count)

    @property
    def ended(self) -> bool:
        return self._ended

    def abandon(self) -> None:
        """The stream was garbage-collected without being read to its end or closed."""
        if not self._ended:
            self.span.set_attribute("kernel.stream.abandoned", True)
            self.end(None, None)

    def end(self, exc: BaseException | None, last: Invocation | None) -> None:
        """The stream is over: at its terminal state, closed, or failed with ``exc``."""
        if self._ended:
            return
        self._ended = True
        self.telemetry._streams_open.add(-1)
        span = self.span
        span.set_attributes(
            {
                "kernel.stream.events": self.delivered,
                "kernel.stream.resumes": self.resumes,
                "kernel.stream.events_replayed": self.replayed,
            }
        )
        if last is not None:
            span.set_attributes(_invocation_attributes(last, self.telemetry.record_payloads))
        self.close(exc)


class LifecycleTrace(_Current):
    """The span of an invocation from its create to its terminal state."""

    __slots__ = ("_error", "_invocation")

    def __init__(self, telemetry: Telemetry, span: Span) -> None:
        super().__init__(telemetry, span)
        self._invocation: Invocation | None = None
        self._error: BaseException | None = None

    def _exited(self, exc: BaseException | None) -> None:
        self.end(exc)

    def created(self, invocation_id: str) -> None:
        """The invocation exists: its id."""
        self.span.set_attribute("kernel.invocation.id", invocation_id)

    def finished(self, invocation: Invocation) -> None:
        """The invocation's terminal state."""
        self._invocation = invocation

    def failed(self, exc: BaseException) -> None:
        """What kept the SDK from seeing it through (reported rather than raised)."""
        self._error = exc

    def end(self, exc: BaseException | None) -> None:
        """End the span: with the terminal state, or failed with ``exc``."""
        exc = exc or self._error
        span = self.span
        invocation = self._invocation
        if invocation is not None:
            span.set_attributes(_invocation_attributes(invocation, self.telemetry.record_payloads))
            self.telemetry._invocations.add(
                1,
                {
                    "kernel.app.name": invocation.app_name,
                    "kernel.invocation.status": invocation.status,
                },
            )
            if invocation.status == "failed":
                span.set_status(
                    Status(StatusCode.ERROR, f"invocation failed: {invocation.status_reason or ''}")
                )
        if exc is not None:
            self._record_error(exc)
        span.end()


# --- attributes ---------------------------------------------------------------------------------


def _http_attributes(operation: str, method: str, url: URL) -> _Attributes:
    """OpenTelemetry's HTTP client attributes (no query string: it may carry the user's
    ``default_query``) and the operation."""
    return {
        "kernel.operation": operation,
        "http.request.method": method,
        "server.address": url.host or "",
        "server.port": url.port or 0,
        "url.full": str(url.with_query(None).with_fragment(None)),
    }


def _invocation_attributes(invocation: Invocation, payloads: bool) -> _Attributes:
    attributes: _Attributes = {
        "kernel.invocation.id": invocation.id,
        "kernel.app.name": invocation.app_name,
        "kernel.action.name": invocation.action_name,
        "kernel.app.version": invocation.version,
        "kernel.invocation.status": invocation.status,
    }
    if invocation.status_reason is not None:
        attributes["kernel.invocation.status_reason"] = invocation.status_reason
    if payloads:
        if invocation.payload is not None:
            attributes["kernel.invocation.payload"] = invocation.payload
        if invocation.output is not None:
            attributes["kernel.invocation.output"] = invocation.output
    return attributes


def _error_type(exc: BaseException) -> str:
    """OpenTelemetry's ``error.type``: the status code of an HTTP error, else the class."""
    if isinstance(exc, APIStatusError):
        return str(exc.status)
    return type(exc).__qualname__


def _describe(exc: BaseException) -> str:
    """A span status description: ``exc``'s message, no query strings, at most 300 chars."""
    text = without_queries(str(exc)) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
