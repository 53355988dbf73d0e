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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace import INVALID_SPAN, Span, SpanKind
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'kernel_async.telemetry needs OpenTelemetry: pip install "kernel-async[otel]"'
    ) from exc

import msgspec

from ._telemetry_safety import Guard, GuardedInstrument, GuardedSpan
from ._telemetry_traces import CallTrace, LifecycleTrace, StreamTrace, http_attributes
from ._version import __version__

if TYPE_CHECKING:
    from yarl import URL


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
        attributes.update(http_attributes(operation, method, url))
        span = self._start_span("kernel.invocations." + operation, SpanKind.CLIENT, attributes)
        return CallTrace(self, span, operation)

    def _stream(self, invocation_id: str, url: URL) -> StreamTrace:
        """The span of an event stream, started now, ended by `StreamTrace.end`."""
        attributes = http_attributes("follow", "GET", url)
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
