"""The spans of `kernel_async.telemetry`: one call's (with the events of its retries, 429s
and waits), one event stream's, one invocation's lifecycle. Made by `Telemetry`; imported
only when telemetry is on (it needs OpenTelemetry)."""

from __future__ import annotations

import time
import traceback
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from ._telemetry_safety import without_queries
from .errors import APIStatusError

if TYPE_CHECKING:
    from typing_extensions import Self
    from yarl import URL

    from .models import Invocation, InvokeResponse
    from .telemetry import Telemetry

__all__ = ["CallTrace", "LifecycleTrace", "StreamTrace", "http_attributes"]

_Attributes = dict[str, Any]


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


def http_attributes(operation: str, method: str, url: URL) -> _Attributes:
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
