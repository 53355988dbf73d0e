"""Typed models of the Kernel invocations API, as msgspec Structs.

Responses decode straight from bytes into these Structs with decoders that are built
once at import time. Decoding is tolerant in the ways a newer server needs: unknown fields
are ignored and ``status`` is a plain ``str`` (compare with the ``InvocationStatus`` values
or use ``Invocation.is_terminal``), so a status added later does not break old clients.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final, Generic, Literal, TypeVar, overload

import msgspec

from . import _serialize

__all__ = [
    "TERMINAL_STATUSES",
    "BaseModel",
    "Browser",
    "Error",
    "ErrorDetail",
    "ErrorEvent",
    "Invocation",
    "InvocationEvent",
    "InvocationStateEvent",
    "InvocationStatus",
    "InvocationUpdateRequest",
    "InvokeResponse",
    "LogEvent",
    "Page",
    "SSEHeartbeatEvent",
    "UnknownEvent",
]

T = TypeVar("T")

#: The statuses the API documents. ``Invocation.status`` is typed ``str`` so that a status a
#: newer server adds still decodes; these are the values to compare against.
InvocationStatus = Literal["queued", "running", "succeeded", "failed"]

#: Statuses after which an invocation never changes again.
TERMINAL_STATUSES: Final[frozenset[str]] = frozenset({"succeeded", "failed"})


class BaseModel(msgspec.Struct):
    """The base of every model: a msgspec Struct with the official SDK's ``to_dict()`` and
    ``to_json()``. Fields hold their default when the API left them out."""

    def to_dict(
        self,
        *,
        mode: Literal["json", "python"] = "python",
        use_api_names: bool = True,
        exclude_unset: bool = True,
        exclude_defaults: bool = False,
        exclude_none: bool = False,
        warnings: bool = True,
    ) -> dict[str, Any]:
        """The model as a dict, recursively, with the API's keys.

        Args:
            mode: ``"json"`` for JSON types only (a ``datetime`` becomes an RFC 3339
                string), ``"python"`` to keep Python objects.
            use_api_names: Keys as the API spells them (``async``), not as the attributes
                (``async_``).
            exclude_unset: Leave out fields at their default (msgspec does not record which
                keys the JSON had: a field the API left out holds its default).
            exclude_defaults: Leave out fields at their default.
            exclude_none: Leave out fields that are ``None``.
            warnings: Accepted for compatibility; there is nothing to warn about.
        """
        return _serialize.to_dict(
            self,
            mode=mode,
            use_api_names=use_api_names,
            exclude_unset=exclude_unset,
            exclude_defaults=exclude_defaults,
            exclude_none=exclude_none,
        )

    def to_json(
        self,
        *,
        indent: int | None = 2,
        use_api_names: bool = True,
        exclude_unset: bool = True,
        exclude_defaults: bool = False,
        exclude_none: bool = False,
        warnings: bool = True,
    ) -> str:
        """The model as JSON text, indented by ``indent`` spaces (compact with ``None``);
        the other options as in `to_dict`."""
        return _serialize.to_json(
            self,
            indent=indent,
            use_api_names=use_api_names,
            exclude_unset=exclude_unset,
            exclude_defaults=exclude_defaults,
            exclude_none=exclude_none,
        )


def _decode_json_string(value: str | None, field: str, type: Any) -> Any:
    if value is None:
        raise ValueError(f"this invocation has no {field}")
    return msgspec.json.decode(value, type=type)


class ErrorDetail(BaseModel, kw_only=True, omit_defaults=True, gc=False):
    """A lower-level error code and message attached to an `Error`."""

    code: str | None = None
    """Lower-level, machine-readable error code, e.g. ``invalid_input``."""
    message: str | None = None
    """Further detail about the error."""


class Error(BaseModel, kw_only=True, omit_defaults=True):
    """The API's error body, also carried by `ErrorEvent`."""

    code: str
    """Application-specific, machine-readable error code, e.g. ``bad_request``."""
    message: str
    """Human-readable error description."""
    details: list[ErrorDetail] | None = None
    """Additional details, one per problem when there are several."""
    inner_error: ErrorDetail | None = None
    """A more specific underlying error."""


class Invocation(BaseModel, kw_only=True, omit_defaults=True):
    """An invocation of an app's action, as the API reports it."""

    id: str
    """ID of the invocation."""
    app_name: str
    """Name of the application."""
    version: str
    """Version label of the application."""
    action_name: str
    """Name of the action invoked."""
    started_at: datetime
    """When the invocation started (timezone-aware; the API's nanoseconds are rounded to
    microseconds)."""
    status: str
    """One of ``queued``, ``running``, ``succeeded``, ``failed`` (or a status a newer API
    adds)."""
    payload: str | None = None
    """The payload the action was given, as the JSON string that was sent."""
    output: str | None = None
    """The action's return value rendered as a JSON string, once it has one."""
    finished_at: datetime | None = None
    """When the invocation finished, or ``None`` while it is still going."""
    status_reason: str | None = None
    """Why the invocation has its status, e.g. the error message of a failed action."""

    @property
    def is_terminal(self) -> bool:
        """Whether the invocation has finished (``succeeded`` or ``failed``)."""
        return self.status in TERMINAL_STATUSES

    @overload
    def output_as(self) -> Any: ...
    @overload
    def output_as(self, type: builtins.type[T]) -> T: ...
    @overload
    def output_as(self, type: Any) -> Any: ...
    def output_as(self, type: Any = Any) -> Any:
        """Decode `output` (a JSON string) into ``type`` with msgspec.

        ``inv.output_as(dict[str, int])`` validates as it decodes, and is typed
        ``dict[str, int]``; the default returns plain Python objects. Raises ``ValueError``
        when there is no output yet and ``msgspec.ValidationError`` /
        ``msgspec.DecodeError`` when it does not match.
        """
        return _decode_json_string(self.output, "output", type)

    @overload
    def payload_as(self) -> Any: ...
    @overload
    def payload_as(self, type: builtins.type[T]) -> T: ...
    @overload
    def payload_as(self, type: Any) -> Any: ...
    def payload_as(self, type: Any = Any) -> Any:
        """Decode `payload` (a JSON string) into ``type``, like `output_as`."""
        return _decode_json_string(self.payload, "payload", type)


class InvokeResponse(BaseModel, kw_only=True, omit_defaults=True):
    """What ``POST /invocations`` returns: the new invocation's id and first status."""

    id: str
    """ID of the invocation."""
    action_name: str
    """Name of the action invoked."""
    status: str
    """``queued`` for an asynchronous invocation; the final status for a synchronous one."""
    status_reason: str | None = None
    """Why the invocation has its status."""
    output: str | None = None
    """The action's return value as a JSON string (synchronous invocations)."""

    @property
    def is_terminal(self) -> bool:
        """Whether the invocation had already finished when the API answered."""
        return self.status in TERMINAL_STATUSES

    @overload
    def output_as(self) -> Any: ...
    @overload
    def output_as(self, type: builtins.type[T]) -> T: ...
    @overload
    def output_as(self, type: Any) -> Any: ...
    def output_as(self, type: Any = Any) -> Any:
        """Decode `output` (a JSON string) into ``type``; see `Invocation.output_as`."""
        return _decode_json_string(self.output, "output", type)


class Browser(BaseModel, kw_only=True, omit_defaults=True):
    """A browser session an invocation started (``list_browsers``).

    Decoded leniently: the API adds fields often, and unknown ones are ignored; ``region``
    and ``memory`` take whatever the API sends (a region added later, ``memory`` as
    ``"2GiB"`` or an object).
    """

    session_id: str
    """Unique identifier of the browser session."""
    cdp_ws_url: str
    """WebSocket URL for Chrome DevTools Protocol connections."""
    webdriver_ws_url: str
    """WebSocket URL for WebDriver BiDi connections."""
    created_at: datetime
    """When the session was created."""
    headless: bool
    """Whether it runs headless."""
    stealth: bool
    """Whether it runs in stealth mode."""
    timeout_seconds: int
    """Seconds of inactivity after which the session is ended."""
    region: str
    """Where it runs: ``us-east``, ``us-west``, ``eu-west``, ``ap-southeast``..."""
    memory: Any = None
    """Memory allocated to the session."""
    browser_live_view_url: str | None = None
    """URL to watch the session live (headful sessions only)."""
    name: str | None = None
    """The session's name, if it has one."""
    deleted_at: datetime | None = None
    """When the session was deleted, for a deleted one."""
    gpu: bool | None = None
    """Whether GPU acceleration is on (headful sessions only)."""
    kiosk_mode: bool | None = None
    """Whether it runs in kiosk mode."""
    tags: Any = None
    """The session's tags, as the API sends them."""
    usage: Any = None
    """The session's usage figures, as the API sends them."""


class _BrowserList(msgspec.Struct):
    browsers: list[Browser]


class InvocationUpdateRequest(BaseModel, kw_only=True, omit_defaults=True):
    """The body of ``PATCH /invocations/{id}``."""

    status: Literal["succeeded", "failed"]
    """The new status."""
    output: str | None = None
    """The new output, as a JSON string."""


class InvocationCreateRequest(BaseModel, kw_only=True, omit_defaults=True):
    """The body of ``POST /invocations`` (``async_`` is sent as ``async``).

    ``version`` has no default here: the API requires it, so it is always sent.
    """

    app_name: str
    action_name: str
    version: str
    payload: str | None = None
    async_: bool = msgspec.field(default=False, name="async")
    async_timeout_seconds: int | None = None


class Page(BaseModel, Generic[T], kw_only=True, dict=True):
    """One page of a list, with the pagination headers the API sent with it.

    ``has_next_page()``, ``next_page_info()`` and ``await get_next_page()`` are the
    official SDK's way through the pages; ``AsyncPaginator.pages()`` is another.
    """

    items: list[T]
    """The items on this page."""
    limit: int
    """The page size (``X-Limit``)."""
    offset: int
    """The offset of the first item (``X-Offset``)."""
    next_offset: int | None
    """The offset of the next page (``X-Next-Offset``), or ``None``."""
    has_more: bool
    """Whether there is a next page (``X-Has-More``)."""

    def __len__(self) -> int:
        return len(self.items)

    def has_next_page(self) -> bool:
        """Whether there is a page after this one."""
        return self.has_more and self.next_offset is not None

    def next_page_info(self) -> dict[str, int] | None:
        """The query of the next page (``{"offset": ...}``), or ``None`` if this is the
        last."""
        if self.next_offset is None or not self.has_more:
            return None
        return {"offset": self.next_offset}

    async def get_next_page(self) -> Page[T]:
        """Request the next page (``RuntimeError`` if there is none, or if this page was
        not fetched by a list call)."""
        fetch: Callable[[int], Awaitable[Page[T]]] | None = self.__dict__.get("_fetch")
        if fetch is None or self.next_offset is None or not self.has_more:
            raise RuntimeError("No next page expected; check has_next_page() first.")
        return await fetch(self.next_offset)

    def _fetched_by(self, fetch: Callable[[int], Awaitable[Page[T]]]) -> Page[T]:
        """Remember how to fetch the next page (not a field: never encoded)."""
        self.__dict__["_fetch"] = fetch
        return self


# --- stream events -------------------------------------------------------------------------
# A tagged union on "event": msgspec picks the Struct from the tag while it decodes.


class LogEvent(BaseModel, tag_field="event", tag="log", kw_only=True, gc=False):
    """A log line the action wrote."""

    timestamp: datetime
    """When the line was produced."""
    message: str
    """The log message text."""

    @property
    def event(self) -> Literal["log"]:
        """The event type, ``"log"``."""
        return "log"


class InvocationStateEvent(BaseModel, tag_field="event", tag="invocation_state", kw_only=True):
    """The invocation's current state; the stream ends after a terminal one."""

    timestamp: datetime
    """When the state was reported."""
    invocation: Invocation
    """The invocation as it now is."""

    @property
    def event(self) -> Literal["invocation_state"]:
        """The event type, ``"invocation_state"``."""
        return "invocation_state"


class ErrorEvent(BaseModel, tag_field="event", tag="error", kw_only=True):
    """An error reported by the application or the API during the stream."""

    timestamp: datetime
    """When the error occurred."""
    error: Error
    """What went wrong."""

    @property
    def event(self) -> Literal["error"]:
        """The event type, ``"error"``."""
        return "error"


class SSEHeartbeatEvent(BaseModel, tag_field="event", tag="sse_heartbeat", kw_only=True, gc=False):
    """A keep-alive the server sends periodically (yielded only with ``heartbeats=True``)."""

    timestamp: datetime
    """When the heartbeat was sent."""

    @property
    def event(self) -> Literal["sse_heartbeat"]:
        """The event type, ``"sse_heartbeat"``."""
        return "sse_heartbeat"


class UnknownEvent(BaseModel, kw_only=True, gc=False):
    """An event whose ``event`` tag this version of the SDK does not know.

    Yielded instead of failing, so a server that adds event types does not break the stream.
    """

    event: str
    """The event type the server sent."""
    data: bytes
    """The raw JSON ``data`` of the event."""
    timestamp: datetime | None = None
    """The event's ``timestamp`` when it has a valid one (every event type the API sends
    has one); ``None`` otherwise."""


#: What ``follow()`` yields. Match on it::
#:
#:     match event:
#:         case LogEvent(message=line): ...
#:         case InvocationStateEvent(invocation=inv): ...
InvocationEvent = LogEvent | InvocationStateEvent | ErrorEvent | SSEHeartbeatEvent | UnknownEvent

_KnownEvent = LogEvent | InvocationStateEvent | ErrorEvent | SSEHeartbeatEvent


class _EventTag(msgspec.Struct, gc=False):
    event: str
    timestamp: Any = None  # checked apart: an odd one must not make the event invalid


# Decoders are built once and reused: building one is far costlier than decoding with it.
invocation_decoder: Final = msgspec.json.Decoder(Invocation)
invocation_list_decoder: Final = msgspec.json.Decoder(list[Invocation])
invoke_response_decoder: Final = msgspec.json.Decoder(InvokeResponse)
error_decoder: Final = msgspec.json.Decoder(Error)
browser_list_decoder: Final = msgspec.json.Decoder(_BrowserList)
event_decoder: Final[msgspec.json.Decoder[_KnownEvent]] = msgspec.json.Decoder(_KnownEvent)
event_tag_decoder: Final = msgspec.json.Decoder(_EventTag)
KNOWN_EVENT_TAGS: Final[frozenset[str]] = frozenset(
    {"log", "invocation_state", "error", "sse_heartbeat"}
)
encoder: Final = msgspec.json.Encoder()
