"""The SSE decoder: the WHATWG rules, any chunking, and a reference implementation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_async._sse import SSEDecoder, SSELimitError, SSEMessage


def decode(*chunks: bytes, max_line_size: int = 1 << 20) -> list[SSEMessage]:
    decoder = SSEDecoder(max_line_size)
    out: list[SSEMessage] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def reference(stream: bytes) -> list[SSEMessage]:
    """A direct, line-at-a-time transcription of the WHATWG algorithm, on the whole stream."""
    text = stream.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines: list[str] = []
    line = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\r":
            lines.append(line)
            line = ""
            if i + 1 < len(text) and text[i + 1] == "\n":
                i += 1
        elif ch == "\n":
            lines.append(line)
            line = ""
        else:
            line += ch
        i += 1
    # `line` is an unterminated last line: never processed
    out: list[SSEMessage] = []
    data: str | None = None
    event = ""
    last_id: str | None = None
    for ln in lines:
        if ln == "":
            if data is not None:
                out.append(SSEMessage(event or "message", data.encode(), last_id))
            data, event = None, ""
            continue
        if ln.startswith(":"):
            continue
        name, sep, value = ln.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data = value if data is None else data + "\n" + value
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value
    return out


def test_basic_events_and_default_type() -> None:
    assert decode(b'data: {"a":1}\n\nevent: log\ndata: x\n\n') == [
        SSEMessage("message", b'{"a":1}', None),
        SSEMessage("log", b"x", None),
    ]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(eol: bytes) -> None:
    stream = b"event: e" + eol + b"data: 1" + eol + b"data: 2" + eol + eol
    assert decode(stream) == [SSEMessage("e", b"1\n2", None)]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [
        SSEMessage("message", b"a\nb", None)
    ]


def test_comments_fields_without_space_or_colon_and_unknown_fields() -> None:
    stream = b": keep-alive\ndata:x\ndata\nfoo: bar\nevent:log\n\n"
    assert decode(stream) == [SSEMessage("log", b"x\n", None)]


def test_only_one_leading_space_is_removed() -> None:
    assert decode(b"data:  two\n\n") == [SSEMessage("message", b" two", None)]


def test_bom_is_skipped_even_a_byte_at_a_time() -> None:
    stream = b"\xef\xbb\xbfdata: x\n\n"
    assert decode(stream) == [SSEMessage("message", b"x", None)]
    assert decode(*[stream[i : i + 1] for i in range(len(stream))]) == [
        SSEMessage("message", b"x", None)
    ]


def test_a_bom_after_the_start_is_data() -> None:
    assert decode(b"data: \xef\xbb\xbfx\n\n")[0].data == b"\xef\xbb\xbfx"


def test_id_persists_and_ignores_nul_retry_takes_digits_only() -> None:
    decoder = SSEDecoder()
    messages = decoder.feed(b"id: 7\ndata: a\n\ndata: b\n\nid: bad\0\nretry: 12x\ndata: c\n\n")
    assert [m.id for m in messages] == ["7", "7", "7"]
    before = decoder.retry
    decoder.feed(b"retry: 2500\n\n")
    assert before is None
    assert decoder.retry == 2500
    assert decoder.last_event_id == "7"


def test_an_event_without_data_is_not_dispatched_and_resets_its_type() -> None:
    assert decode(b"event: ping\n\ndata: x\n\n") == [SSEMessage("message", b"x", None)]


def test_empty_data_field_dispatches_an_empty_event() -> None:
    assert decode(b"data:\n\n") == [SSEMessage("message", b"", None)]


def test_an_unterminated_final_event_is_discarded() -> None:
    assert decode(b"data: complete\n\ndata: cut off\n") == [
        SSEMessage("message", b"complete", None)
    ]


def test_an_over_long_line_raises_instead_of_growing() -> None:
    decoder = SSEDecoder(max_line_size=64)
    with pytest.raises(SSELimitError, match="64-byte"):
        for _ in range(10):
            decoder.feed(b"data: " + b"x" * 20)
    with pytest.raises(SSELimitError):
        SSEDecoder(max_line_size=64).feed(b"data: " + b"y" * 100 + b"\n")


def test_an_event_with_endless_data_lines_raises() -> None:
    decoder = SSEDecoder(max_line_size=64)
    with pytest.raises(SSELimitError, match="event's data"):
        for _ in range(10):
            decoder.feed(b"data: 0123456789\n")


# --- properties ------------------------------------------------------------------------------

field_text = st.text(
    alphabet=st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=12
)
line = st.one_of(
    st.builds(lambda v: "data:" + v, field_text),
    st.builds(lambda v: "data: " + v, field_text),
    st.just("data"),
    st.builds(lambda v: "event: " + v, field_text),
    st.builds(lambda v: "id: " + v, field_text),
    st.builds(lambda v: ": " + v, field_text),
    st.builds(lambda v: "retry: " + v, st.sampled_from(["10", "x", ""])),
    st.builds(lambda v: "unknown:" + v, field_text),
    st.just(""),
)
eols = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    parts = []
    if draw(st.booleans()):
        parts.append("\ufeff")
    for _ in range(draw(st.integers(0, 30))):
        parts.append(draw(line) + draw(eols))
    if draw(st.booleans()):
        parts.append(draw(line))  # maybe an unterminated tail
    return "".join(parts).encode()


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    stream = draw(streams())
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return stream, chunks


@settings(max_examples=400)
@given(streams())
def test_matches_the_reference_implementation(stream: bytes) -> None:
    assert decode(stream) == reference(stream)


@settings(max_examples=400)
@given(chunked())
def test_any_chunking_decodes_to_the_same_messages(case: tuple[bytes, list[bytes]]) -> None:
    stream, chunks = case
    assert decode(*chunks) == decode(stream)


@settings(max_examples=400)
@given(chunked())
def test_feed_data_gives_exactly_the_data_of_feed(case: tuple[bytes, list[bytes]]) -> None:
    _, chunks = case
    decoder = SSEDecoder(max_line_size=1 << 20)
    data = [d for chunk in chunks for d in decoder.feed_data(chunk)]
    assert data == [m.data for m in decode(*chunks)]


@given(st.binary(max_size=300), st.integers(1, 50))
def test_binary_garbage_never_crashes(garbage: bytes, size: int) -> None:
    decoder = SSEDecoder(max_line_size=1 << 20)
    for i in range(0, len(garbage), size):
        for message in decoder.feed(garbage[i : i + size]):
            assert isinstance(message.data, bytes)
