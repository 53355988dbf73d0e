"""Wire helpers of the emulator: nanosecond timestamps, durations, JSON bodies."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import Any, Final, TypeVar

import msgspec

__all__ = [
    "CreateBody",
    "ErrorBody",
    "UpdateBody",
    "WireInvocation",
    "format_ns",
    "parse_duration_ns",
    "parse_since_ns",
]


class ErrorDetailBody(msgspec.Struct, omit_defaults=True):
    code: str | None = None
    message: str | None = None


class ErrorBody(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    details: list[ErrorDetailBody] | None = None
    inner_error: ErrorDetailBody | None = None


class WireInvocation(msgspec.Struct, omit_defaults=True):
    id: str
    app_name: str
    version: str
    action_name: str
    started_at: str
    status: str
    payload: str | None = None
    output: str | None = None
    finished_at: str | None = None
    status_reason: str | None = None


class WireBrowser(msgspec.Struct, omit_defaults=True):
    session_id: str
    cdp_ws_url: str
    webdriver_ws_url: str
    created_at: str
    headless: bool
    stealth: bool
    timeout_seconds: int
    region: str
    memory: str
    browser_live_view_url: str | None = None
    name: str | None = None


class WireBrowserList(msgspec.Struct):
    browsers: list[WireBrowser]


class WireInvokeResponse(msgspec.Struct, omit_defaults=True):
    id: str
    action_name: str
    status: str
    status_reason: str | None = None
    output: str | None = None


class CreateBody(msgspec.Struct, forbid_unknown_fields=False):
    """A missing name is a 400; an empty one names no app (404), as the SDK never sends."""

    app_name: str
    action_name: str
    version: str = "latest"
    payload: str | None = None
    async_: bool = msgspec.field(default=False, name="async")
    # JSON Schema's "integer" admits 600.0; the emulator does too.
    async_timeout_seconds: int | float | None = None


class UpdateBody(msgspec.Struct):
    status: str
    output: str | None = None


class LogWire(msgspec.Struct, tag_field="event", tag="log"):
    timestamp: str
    message: str


class StateWire(msgspec.Struct, tag_field="event", tag="invocation_state"):
    timestamp: str
    invocation: WireInvocation


class HeartbeatWire(msgspec.Struct, tag_field="event", tag="sse_heartbeat"):
    timestamp: str


class ErrorEventWire(msgspec.Struct, tag_field="event", tag="error"):
    timestamp: str
    error: ErrorBody


encode: Final = msgspec.json.Encoder().encode
create_decoder: Final = msgspec.json.Decoder(CreateBody)
update_decoder: Final = msgspec.json.Decoder(UpdateBody)
payload_decoder: Final = msgspec.json.Decoder()

_T = TypeVar("_T")


def decode(decoder: msgspec.json.Decoder[_T], data: bytes | str) -> _T:
    """``data`` decoded; JSON nested deeper than the decoder can follow is a
    ``msgspec.DecodeError`` like any other bad JSON (a 400, not a ``RecursionError``)."""
    try:
        return decoder.decode(data)
    except RecursionError:
        raise msgspec.DecodeError("JSON is nested too deeply") from None


_last_ns = 0


def now_ns() -> int:
    """Wall-clock nanoseconds, strictly increasing within the process."""
    global _last_ns
    ns = time.time_ns()
    if ns <= _last_ns:
        ns = _last_ns + 1
    _last_ns = ns
    return ns


def format_ns(ns: int) -> str:
    """RFC 3339 with nanoseconds, UTC: ``2025-06-20T12:00:00.123456789Z``."""
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


_UNITS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION: Final = re.compile(r"(\d*)(?:\.(\d*))?(ns|us|µs|μs|ms|s|m|h)")
#: The longest duration there is (Go's ``time.Duration``: int64 nanoseconds, ~292 years);
#: a longer one is invalid, as Go's ``time.ParseDuration`` says.
MAX_DURATION_NS: Final = 2**63 - 1
_RFC3339: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})\Z"
)


def parse_duration_ns(text: str) -> int | None:
    """A Go-style duration (``5m``, ``1h30m``, ``1.5s``, ``300ms``) in ns, or None (not
    one, or longer than `MAX_DURATION_NS`). Exact: integers, fractions of a ns dropped."""
    pos, total = 0, 0
    if not text:
        return None
    for m in _DURATION.finditer(text):
        whole, fraction, unit = m.group(1), m.group(2) or "", _UNITS[m.group(3)]
        if m.start() != pos or not (whole or fraction) or len(whole.lstrip("0")) > 20:
            return None
        fraction = fraction[:20]  # digits past a ns of the largest unit change nothing
        total += int(whole or "0") * unit + int(fraction or "0") * unit // 10 ** len(fraction)
        if total > MAX_DURATION_NS:
            return None
        pos = m.end()
    return total if pos == len(text) else None


def parse_since_ns(text: str, now: int | None = None) -> int | None:
    """``since`` as RFC 3339 (nanoseconds kept) or a duration before now, in Unix ns."""
    m = _RFC3339.match(text)
    if m:
        date, clock, frac, zone = m.groups()
        tz = "+00:00" if zone in ("Z", "z") else zone
        try:
            dt = datetime.fromisoformat(f"{date}T{clock}{tz}")
            # OverflowError: an offset that takes the instant out of years 1-9999 in UTC
            base = int(dt.astimezone(timezone.utc).timestamp()) * 1_000_000_000
        except (ValueError, OverflowError):
            return None
        return base + int((frac or "0").ljust(9, "0"))
    duration = parse_duration_ns(text)
    if duration is None:
        return None
    return (now if now is not None else time.time_ns()) - duration


def error_body(code: str, message: str, *details: str) -> bytes:
    return encode(
        ErrorBody(
            code=code,
            message=message,
            details=[ErrorDetailBody(code="invalid_input", message=d) for d in details] or None,
        )
    )


def json_string(value: Any) -> str:
    return encode(value).decode()


def number(value: float) -> str:
    """A header value in seconds: ``2`` or ``0.25``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
