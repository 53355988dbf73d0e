"""Pure event decoding (what a payload the event decoder rejected is) and the ``since``
query value, shared by streams and list filters."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

import msgspec

from ._replay import rfc3339
from ._utf8 import is_invalid_utf8
from .errors import APIResponseValidationError
from .models import KNOWN_EVENT_TAGS, UnknownEvent, event_tag_decoder

__all__ = ["UNDECODABLE", "format_since", "undecodable"]

_ONE_MICROSECOND: Final = timedelta(microseconds=1)


def format_since(since: str | datetime | timedelta) -> str:
    """The ``since`` query value: a str as is, a datetime as RFC 3339, a timedelta as a
    duration (``"90s"``, ``"1.5s"``).

    Raises ``ValueError`` for a naive datetime (its zone would be a guess), a timedelta that
    is not positive, or an empty string.
    """
    if isinstance(since, str):
        if not since.strip():
            raise ValueError("since must not be empty")
        return since
    if isinstance(since, datetime):
        if since.tzinfo is None or since.utcoffset() is None:
            raise ValueError(
                "since must be a timezone-aware datetime (e.g. datetime.now(timezone.utc))"
            )
        return rfc3339(since)
    if isinstance(since, timedelta):
        seconds = since.total_seconds()
        if seconds <= 0:
            raise ValueError(f"since must be a positive duration, got {since!r}")
        if seconds == int(seconds):
            return f"{int(seconds)}s"
        return f"{since // _ONE_MICROSECOND}us"
    raise TypeError(f"since must be a str, datetime or timedelta, not {type(since).__name__}")


#: What the event decoder raises for data that is not a valid event of a known type
#: (msgspec before 0.23 raises UnicodeDecodeError for invalid UTF-8 inside a string).
UNDECODABLE: Final = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError)


def undecodable(data: bytes, exc: Exception) -> UnknownEvent:
    """What ``data`` is when the event decoder rejected it with ``exc``: an event of a type
    this SDK does not know, or else a validation error."""
    if isinstance(exc, msgspec.ValidationError):
        try:
            tag = event_tag_decoder.decode(data)
        except UNDECODABLE:
            tag = None
        if tag is not None and tag.event not in KNOWN_EVENT_TAGS:
            return UnknownEvent(event=tag.event, data=data, timestamp=_timestamp(tag.timestamp))
        raise APIResponseValidationError(
            f"an invocation event did not match the API schema: {exc}", body=data
        ) from exc
    what = "is not valid UTF-8" if is_invalid_utf8(data, exc) else "is not valid JSON"
    raise APIResponseValidationError(f"an invocation event {what}: {exc}", body=data) from exc


def _timestamp(value: object) -> datetime | None:
    if value is None:
        return None
    try:
        return msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        return None
