"""Arguments of the invocations operations: checked before any request, and encoded."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final, TypedDict

from .._events import format_since
from ..models import InvocationCreateRequest, encoder

__all__ = [
    "STATUSES",
    "Extras",
    "UPDATE_STATUSES",
    "Since",
    "check_int",
    "check_name",
    "create_body",
    "json_string",
    "list_params",
]

STATUSES: Final = frozenset({"queued", "running", "succeeded", "failed"})
UPDATE_STATUSES: Final = frozenset({"succeeded", "failed"})

#: ``since`` as the API takes it: an RFC 3339 string or a duration like ``"5m"``, a
#: timezone-aware ``datetime``, or a ``timedelta``.
Since = str | datetime | timedelta


class Extras(TypedDict):
    """A call's escape hatch, passed on by the helpers that make several calls."""

    extra_headers: Mapping[str, str] | None
    extra_query: Mapping[str, str] | None


def json_string(value: Any, name: str) -> str | None:
    """A payload/output as the API wants it: a JSON string. A str is sent as is."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8")
    try:
        return encoder.encode(value).decode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} is not JSON-encodable: {exc}") from exc


def check_name(value: str, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def check_int(value: int, name: str, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}")


def create_body(
    app_name: str,
    action_name: str,
    version: str,
    payload: Any,
    async_: bool,
    async_timeout_seconds: int | None,
) -> bytes:
    """The checked, encoded body of ``POST /invocations``."""
    check_name(app_name, "app_name")
    check_name(action_name, "action_name")
    check_name(version, "version")
    if async_timeout_seconds is not None:
        check_int(async_timeout_seconds, "async_timeout_seconds", 10, 3600)
        if not async_:
            raise ValueError("async_timeout_seconds only applies with async_=True")
    return encoder.encode(
        InvocationCreateRequest(
            app_name=app_name,
            action_name=action_name,
            version=version,
            payload=json_string(payload, "payload"),
            async_=async_,
            async_timeout_seconds=async_timeout_seconds,
        )
    )


def list_params(
    *,
    app_name: str | None,
    version: str | None,
    action_name: str | None,
    deployment_id: str | None,
    status: str | None,
    since: Since | None,
    query: str | None,
    limit: int,
    offset: int,
) -> dict[str, str]:
    """The checked query of ``GET /invocations`` (without the offset)."""
    check_int(limit, "limit", 1, 100)
    check_int(offset, "offset", 0)
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {sorted(STATUSES)}, got {status!r}")
    params: dict[str, str] = {}
    for name, value in (
        ("app_name", app_name),
        ("version", version),
        ("action_name", action_name),
        ("deployment_id", deployment_id),
        ("status", status),
        ("query", query),
    ):
        if value is not None:
            check_name(value, name)
            params[name] = value
    if since is not None:
        params["since"] = format_since(since)
    params["limit"] = str(limit)
    return params
