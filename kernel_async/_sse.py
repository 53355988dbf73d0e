"""An incremental Server-Sent Events decoder: bytes chunks in, messages out.

Pure (no I/O, no asyncio), so it can be tested and fuzzed alone. It follows the WHATWG
"event stream interpretation" rules (https://html.spec.whatwg.org/multipage/server-sent-events.html):

* lines end in LF, CRLF or CR, and a CRLF may be split across two chunks;
* a leading UTF-8 BOM is skipped, even when it arrives a byte at a time;
* ``:`` starts a comment; ``field:value`` drops one space after the colon; a line with no
  colon is a field with an empty value; unknown fields are ignored;
* ``data`` lines accumulate, joined with LF; a blank line dispatches the event (only if it
  had data); ``id`` (without NUL) persists across events; ``retry`` takes ASCII digits only;
* an event not terminated by a blank line when the stream ends is discarded.

``data`` stays ``bytes`` so it can be handed straight to a msgspec decoder.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

__all__ = ["DEFAULT_MAX_LINE_SIZE", "SSEDecoder", "SSELimitError", "SSEMessage"]

DEFAULT_MAX_LINE_SIZE: Final = 16 * 1024 * 1024
_BOM: Final = b"\xef\xbb\xbf"


class SSELimitError(ValueError):
    """A line, or an event's data, grew past the decoder's size limit."""


class SSEMessage(msgspec.Struct, gc=False):
    """One dispatched event: its type (``"message"`` by default), data, and last event id."""

    event: str
    """The ``event`` field, or ``"message"`` when the event had none."""
    data: bytes
    """The ``data`` lines joined with ``\\n``."""
    id: str | None
    """The last event id seen so far in the stream (``id`` persists across events)."""


class SSEDecoder:
    """Feed it chunks as they arrive; it returns the events each chunk completes.

    ```python
    decoder = SSEDecoder()
    async for chunk in response.content.iter_any():
        for message in decoder.feed(chunk):
            ...
    ```

    ``max_line_size`` bounds memory: a line, or the data of one event, longer than that
    raises `SSELimitError` instead of growing forever.
    """

    __slots__ = (
        "_at_start",
        "_data",
        "_data_size",
        "_event",
        "_last_id",
        "_partial",
        "_partial_size",
        "_pending_cr",
        "max_line_size",
        "retry",
    )

    def __init__(self, max_line_size: int = DEFAULT_MAX_LINE_SIZE) -> None:
        if max_line_size <= 0:
            raise ValueError("max_line_size must be positive")
        self.max_line_size = max_line_size
        """The longest line (and event data) accepted, in bytes."""
        self.retry: int | None = None
        """The last valid ``retry`` field (reconnection time in ms), or ``None``."""
        self._partial: list[bytes] = []  # the line in progress, in pieces
        self._partial_size = 0
        self._pending_cr = False  # the previous chunk ended in CR: skip an LF that follows
        self._at_start = True  # the BOM has not been ruled out yet
        self._data: list[bytes] = []
        self._data_size = 0
        self._event = b""
        self._last_id: str | None = None

    @property
    def last_event_id(self) -> str | None:
        """The last ``id`` field seen, as a reconnecting client would send it."""
        return self._last_id

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        """Decode one more chunk; return the events it completed, in order."""
        messages: list[SSEMessage] = self._feed(chunk, False)
        return messages

    def feed_data(self, chunk: bytes) -> list[bytes]:
        """Like `feed`, but return only each completed event's ``data`` (what a client of
        a JSON event stream needs), skipping the message objects."""
        data: list[bytes] = self._feed(chunk, True)
        return data

    def _feed(self, chunk: bytes, data_only: bool) -> list[Any]:
        if not chunk:
            return []
        if self._at_start:
            head = b"".join(self._partial) + chunk
            if len(head) < 3 and _BOM.startswith(head):
                self._partial = [head]
                self._partial_size = len(head)
                return []  # could still be a BOM: wait for more
            self._at_start = False
            self._partial = []
            self._partial_size = 0
            chunk = head[3:] if head.startswith(_BOM) else head
        if self._pending_cr:
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._pending_cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = chunk.rfind(b"\n")
        if end < 0:
            self._add_partial(chunk)
            return []
        rest = chunk[end + 1 :]
        body = chunk[: end + 1]  # whole lines, ending in LF
        if self._partial:
            if self._partial_size + chunk.find(b"\n") > self.max_line_size:
                self._too_long()
            self._partial.append(body)
            body = b"".join(self._partial)
            self._partial = []
            self._partial_size = 0
        messages: list[Any] = []
        # Complete events are separated by blank lines. The common one, a single
        # "data: ..." line, is emitted directly; anything else goes line by line.
        blocks = body.split(b"\n\n")
        last = blocks.pop()
        # When every complete event is one line (newlines = 2 per event), and no event was
        # half-built by earlier lines, each "data: ..." event is emitted directly.
        if (
            not self._data
            and not self._event
            and body.count(b"\n") == 2 * len(blocks) + last.count(b"\n")
        ):
            append = messages.append
            last_id = self._last_id
            limit = self.max_line_size
            for block in blocks:
                if block.startswith(b"data: ") and len(block) <= limit:
                    append(block[6:] if data_only else SSEMessage("message", block[6:], last_id))
                else:
                    self._line(block, messages, data_only)
                    self._line(b"", messages, data_only)
                    last_id = self._last_id
        else:
            for block in blocks:
                for line in block.split(b"\n"):
                    self._line(line, messages, data_only)
                self._line(b"", messages, data_only)
        if last:
            for line in last[:-1].split(b"\n"):
                self._line(line, messages, data_only)
        if rest:
            self._add_partial(rest)
        return messages

    def _add_partial(self, piece: bytes) -> None:
        if not piece:
            return
        self._partial_size += len(piece)
        if self._partial_size > self.max_line_size:
            self._too_long()
        self._partial.append(piece)

    def _too_long(self) -> None:
        self._partial = []
        self._partial_size = 0
        raise SSELimitError(f"an SSE line is longer than the {self.max_line_size}-byte limit")

    def _line(self, line: bytes, messages: list[Any], data_only: bool) -> None:
        if len(line) > self.max_line_size:
            self._too_long()
        if not line:  # a blank line dispatches the event
            if self._data:
                event = self._event.decode("utf-8", "replace") if self._event else "message"
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                messages.append(data if data_only else SSEMessage(event, data, self._last_id))
                self._data = []
                self._data_size = 0
            self._event = b""
            return
        colon = line.find(b":")
        if colon == 0:
            return  # a comment
        if colon < 0:
            field, value = line, b""
        else:
            field = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if field == b"data":
            self._data_size += len(value) + 1
            if self._data_size > self.max_line_size:
                self._data = []
                self._data_size = 0
                raise SSELimitError(
                    f"an SSE event's data is larger than the {self.max_line_size}-byte limit"
                )
            self._data.append(value)
        elif field == b"event":
            self._event = value
        elif field == b"id":
            if b"\0" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif field == b"retry" and value.isdigit() and value.isascii():
            self.retry = int(value)
