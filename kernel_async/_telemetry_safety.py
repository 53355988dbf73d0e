"""Telemetry's safety: calls into OpenTelemetry that never change a call's outcome, and
error text without the query strings of its URLs (they may carry ``default_query`` tokens).
Imported with `kernel_async.telemetry` only."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

from opentelemetry.trace import INVALID_SPAN, Span, SpanContext, Status, StatusCode
from opentelemetry.util.types import Attributes

if TYPE_CHECKING:
    from typing_extensions import ParamSpec

__all__ = ["Guard", "GuardedInstrument", "GuardedSpan", "without_queries"]

logger = logging.getLogger("kernel_async")

if TYPE_CHECKING:
    _P = ParamSpec("_P")
_R = TypeVar("_R")


class Guard:
    """Runs telemetry's calls into OpenTelemetry so that nothing they raise reaches a call:
    a span processor, exporter or meter that fails is logged (once per `Telemetry`, at
    WARNING) and ignored. Only ``Exception``: cancellation and interrupts go through."""

    __slots__ = ("warned",)

    def __init__(self) -> None:
        self.warned = False

    def run(
        self, function: Callable[_P, _R], default: _R, *args: _P.args, **kwargs: _P.kwargs
    ) -> _R:
        """``function(*args, **kwargs)``, or ``default`` if it raised."""
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            self.failed(exc, function)
            return default

    def failed(self, exc: Exception, function: object) -> None:
        """``function`` raised ``exc``: log it, the first time."""
        if not self.warned:
            self.warned = True
            logger.warning(
                "OpenTelemetry raised %s in %s; kernel_async ignores its telemetry "
                "errors (this is logged once)",
                type(exc).__qualname__,
                getattr(function, "__qualname__", function),
                exc_info=exc,
            )


class GuardedSpan(Span):
    """A span whose every method is run through a `Guard` (the ones each call uses with a
    ``try`` of their own: free unless it raises)."""

    __slots__ = ("_guard", "_span")

    def __init__(self, span: Span, guard: Guard) -> None:
        self._span = span
        self._guard = guard

    def end(self, end_time: int | None = None) -> None:
        try:
            self._span.end(end_time)
        except Exception as exc:
            self._guard.failed(exc, self._span.end)

    def get_span_context(self) -> SpanContext:
        return self._guard.run(self._span.get_span_context, INVALID_SPAN.get_span_context())

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self._guard.run(self._span.set_attributes, None, attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        try:
            self._span.set_attribute(key, value)
        except Exception as exc:
            self._guard.failed(exc, self._span.set_attribute)

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        self._guard.run(self._span.add_event, None, name, attributes, timestamp)

    def update_name(self, name: str) -> None:
        self._guard.run(self._span.update_name, None, name)

    def is_recording(self) -> bool:
        return self._guard.run(self._span.is_recording, False)

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self._guard.run(self._span.set_status, None, status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self._guard.run(
            self._span.record_exception, None, exception, attributes, timestamp, escaped
        )


class GuardedInstrument:
    """A counter or histogram whose ``add`` / ``record`` are run through a `Guard`."""

    __slots__ = ("_guard", "_instrument")

    def __init__(self, instrument: Any, guard: Guard) -> None:
        self._instrument = instrument
        self._guard = guard

    def add(self, amount: float, attributes: Attributes = None) -> None:
        try:
            self._instrument.add(amount, attributes)
        except Exception as exc:
            self._guard.failed(exc, self._instrument.add)

    def record(self, amount: float, attributes: Attributes = None) -> None:
        try:
            self._instrument.record(amount, attributes)
        except Exception as exc:
            self._guard.failed(exc, self._instrument.record)


#: A URL's query string: from the ``?`` after a scheme and host to the next blank or quote,
#: keeping the punctuation just before it (``(GET https://host/path?token=...)``).
_QUERY: Final = re.compile(
    r"""([A-Za-z][A-Za-z0-9+.-]*://[^\s?#'"]*)\?[^\s'"]*?(?=[)\]:,;.]*(?:[\s'"]|$))"""
)


def without_queries(text: str) -> str:
    """``text`` with the query strings of the URLs in it cut (they may carry the user's
    ``default_query``: tokens)."""
    return _QUERY.sub(r"\1", text) if "?" in text else text
