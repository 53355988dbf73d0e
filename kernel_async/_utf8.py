"""Telling invalid UTF-8 apart from invalid JSON, on every msgspec we support.

msgspec up to 0.22 raised `UnicodeDecodeError` for invalid UTF-8 inside a JSON string;
0.23 raises `msgspec.DecodeError` ("Invalid UTF-8 encoded string"). Both mean the same to
a user, so both are described as "not valid UTF-8". The check decodes the bytes again, so
it does not depend on the wording of msgspec's message; it runs only on the error path.
"""

from __future__ import annotations

import msgspec

__all__ = ["is_invalid_utf8"]


def is_invalid_utf8(data: bytes | bytearray | memoryview, exc: BaseException) -> bool:
    """Whether decoding ``data`` failed with ``exc`` because it is not valid UTF-8."""
    if isinstance(exc, UnicodeDecodeError):
        return True
    if not isinstance(exc, msgspec.DecodeError):
        return False
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
