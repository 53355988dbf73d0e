"""Offset pagination driven by the ``X-Has-More`` / ``X-Next-Offset`` headers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from typing import Generic, TypeVar

from .errors import APIResponseValidationError
from .models import Page

__all__ = ["AsyncPaginator", "PageInfo", "parse_page_headers"]

logger = logging.getLogger("kernel_async")

T = TypeVar("T")

#: ``(limit, offset, next_offset, has_more)`` as read from a page's headers.
PageInfo = tuple[int, int, "int | None", bool]


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        return None
    return int(value)


def parse_page_headers(
    headers: Mapping[str, str], *, limit: int, offset: int, count: int
) -> PageInfo:
    """Read the pagination headers of a page of ``count`` items requested at ``offset``.

    ``X-Next-Offset`` is the absolute start of the next page and ``0`` means there is none
    (the stop sentinel). A next offset that does not move past the offset requested (a
    server that ignores ``offset`` would send the same page for ever) ends the iteration
    with a warning; ``X-Has-More: true`` without an ``X-Next-Offset`` raises
    `APIResponseValidationError`, as the official SDK does. Missing or malformed ``X-Limit``
    / ``X-Offset`` fall back to the request's values. Pure.
    """
    page_limit = _int_header(headers.get("X-Limit"))
    page_offset = _int_header(headers.get("X-Offset"))
    if page_offset is None:
        page_offset = offset
    has_more = (headers.get("X-Has-More") or "").strip().lower() == "true"
    next_offset = _int_header(headers.get("X-Next-Offset"))
    if has_more and next_offset is None:
        raise APIResponseValidationError(
            "the server said there are more results (X-Has-More: true) but sent no "
            f"X-Next-Offset (page at offset {offset})",
            body=b"",
            headers=headers,
        )
    if next_offset == 0:
        has_more = False
    elif has_more and next_offset is not None and next_offset <= offset:
        logger.warning(
            "The server asked for offset %d next after the page at offset %d; stopping "
            "pagination here rather than going round in circles",
            next_offset,
            offset,
        )
        has_more = False
    return (page_limit if page_limit is not None else limit, page_offset, next_offset, has_more)


class AsyncPaginator(Generic[T]):
    """A lazy listing: iterate it for items, `pages()` for pages, await it for the first page.

    ```python
    async for inv in kernel.invocations.list(status="failed"):   # every item, page by page
        ...
    page = await kernel.invocations.list(limit=50)               # just the first Page
    async for page in kernel.invocations.list().pages():         # Page objects
        ...
    ```

    A page is requested only when iteration reaches it; nothing is requested until then.
    The paginator can be iterated more than once (each time from the first page).
    """

    __slots__ = ("_fetch", "_offset")

    def __init__(self, fetch: Callable[[int], Awaitable[Page[T]]], offset: int) -> None:
        self._fetch = fetch
        self._offset = offset

    def __repr__(self) -> str:
        return f"<AsyncPaginator offset={self._offset}>"

    def __await__(self) -> Generator[object, None, Page[T]]:
        return self._fetch(self._offset).__await__()

    def pages(self) -> AsyncIterator[Page[T]]:
        """Iterate the pages, from the first, requesting each when it is reached."""
        return _PageIterator(self._fetch, self._offset)

    def __aiter__(self) -> AsyncIterator[T]:
        return _ItemIterator(_PageIterator(self._fetch, self._offset))


class _PageIterator(AsyncIterator[Page[T]]):
    __slots__ = ("_fetch", "_next")

    def __init__(self, fetch: Callable[[int], Awaitable[Page[T]]], offset: int) -> None:
        self._fetch = fetch
        self._next: int | None = offset

    async def __anext__(self) -> Page[T]:
        offset = self._next
        if offset is None:
            raise StopAsyncIteration
        page = await self._fetch(offset)
        self._next = page.next_offset if page.has_more else None
        return page


class _ItemIterator(AsyncIterator[T]):
    __slots__ = ("_index", "_items", "_pages")

    def __init__(self, pages: _PageIterator[T]) -> None:
        self._pages = pages
        self._items: list[T] = []
        self._index = 0

    async def __anext__(self) -> T:
        while self._index >= len(self._items):
            page = await self._pages.__anext__()
            self._items = page.items
            self._index = 0
        item = self._items[self._index]
        self._index += 1
        return item
