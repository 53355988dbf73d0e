"""What a ``follow()`` connection's response must be: an event stream. Anything else is the
typed error it means (the status's, or a validation error), the response closed."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import ClientResponse

from ._retry import retry_after_from_headers
from ._transport import transport_error
from .errors import APIResponseValidationError, make_status_error

__all__ = ["check_stream_response"]


async def check_stream_response(resp: ClientResponse) -> None:
    """Return when ``resp`` is a ``text/event-stream`` with a status under 400; otherwise
    close it and raise the status's error (its body read) or an
    `APIResponseValidationError` (the first KiB of what came instead)."""
    if resp.status >= 400:
        try:
            body = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise transport_error(exc, "GET", str(resp.url)) from exc
        finally:
            resp.close()
        raise make_status_error(
            resp.status,
            body,
            resp.headers,
            reason=resp.reason,
            method="GET",
            url=str(resp.url),
            retry_after=retry_after_from_headers(resp.headers) if resp.status == 429 else None,
        )
    content_type = resp.headers.get("Content-Type", "")
    if _media_type(content_type) != "text/event-stream":
        body = b""
        try:
            body = await resp.content.read(1024)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        finally:
            resp.close()
        raise APIResponseValidationError(
            f"expected an event stream, got Content-Type {content_type!r}",
            body=body,
            status=resp.status,
            headers=resp.headers,
        )


def _media_type(content_type: str) -> str:
    """``Text/Event-Stream; charset=utf-8`` → ``text/event-stream`` (media types are
    case-insensitive)."""
    return content_type.split(";", 1)[0].strip().lower()
