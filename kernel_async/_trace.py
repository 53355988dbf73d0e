"""What the request path reports to telemetry, and the do-nothing trace used when it is off,
so that call sites never ask whether telemetry is on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from typing_extensions import Self

    from .models import InvokeResponse

__all__ = ["NO_TRACE", "NoTrace", "Trace"]


class Trace(Protocol):
    """The trace of one call (or one stream's connection): what its attempts report."""

    def retry(self, reason: str, delay: float) -> None:
        """An attempt failed (``reason``) and is made again after ``delay`` seconds."""

    def rate_limited(self, kind: str, retry_after: float | None) -> None:
        """A 429 absorbed: ``kind`` is ``rate`` or ``concurrency``."""

    def waited(self, kind: str, seconds: float, app: str | None = None) -> None:
        """The request waited ``seconds`` before being sent (``rate_limit`` or
        ``admission``)."""


class NoTrace:
    """A trace that records nothing: what every call carries when telemetry is off."""

    __slots__ = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def retry(self, reason: str, delay: float) -> None:
        """Nothing."""

    def rate_limited(self, kind: str, retry_after: float | None) -> None:
        """Nothing."""

    def waited(self, kind: str, seconds: float, app: str | None = None) -> None:
        """Nothing."""

    def status(self, status: int) -> None:
        """Nothing."""

    def created(self, response: InvokeResponse) -> None:
        """Nothing."""


#: The one do-nothing trace.
NO_TRACE: NoTrace = NoTrace()
