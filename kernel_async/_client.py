"""AsyncKernel: its configuration and options, copies, and the lifetime of its sessions."""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

import aiohttp
from aiohttp import ClientMiddlewareType, ClientSession
from yarl import URL

from ._http import HTTPClient
from ._limits import Backpressure, Limits, LimitStats, Listing
from ._options import (
    DEFAULT_BASE_URL,
    DEFAULT_TIMEOUT,
    NOT_GIVEN,
    DefaultAioHttpClient,
    Environment,
    NotGiven,
    Timeout,
    base_url_for,
    check_api_key,
    check_header,
    env_headers,
    normalize_base_url,
    to_client_timeout,
)
from ._retry import RETRY_COUNT_HEADER, RetryMiddleware, RetryPolicy
from ._transport import (
    RedirectGuard,
    Transport,
)
from ._version import __version__
from .errors import APIStatusError, KernelError

if TYPE_CHECKING:
    from typing_extensions import Self

    from .models import Invocation
    from .resources.invocations import Invocations
    from .telemetry import Telemetry

__all__ = ["AsyncKernel", "AsyncKernelWithRawResponse"]


class _TooMany(Exception):
    """A list of live invocations ran past its bound."""


logger = logging.getLogger("kernel_async")

T = TypeVar("T")

#: The most invocations of one app a list for the admission queue reads (queued and
#: running together): past it, that list counts as failed.
LIVE_IDS_MOST: Final = 2000
#: The admission queue lists every app's invocations (the organisation's, or the
#: project's), to see the room other apps leave under the organisation's cap; past this
#: many queued and running together (two pages of running ones: a list of each app's
#: costs less than the room it would show is worth), it lists the one app's from then on.
ORG_LIST_MOST: Final = 200

_USER_AGENT: Final = (
    f"kernel-async/{__version__} aiohttp/{aiohttp.__version__} python/{platform.python_version()}"
)


class AsyncKernel(HTTPClient):
    """The asyncio client of the Kernel API.

    ```python
    async with AsyncKernel() as kernel:   # KERNEL_API_KEY and KERNEL_BASE_URL from the env
        inv = await kernel.invocations.retrieve("rr33xuugxj9h0bkf1rdt2bet")
    ```

    Args:
        api_key: The API key; defaults to the ``KERNEL_API_KEY`` environment variable.
        base_url: The API's base URL; defaults to the ``environment``'s, else
            ``KERNEL_BASE_URL``, else ``https://api.onkernel.com``.
        environment: ``"production"`` (``https://api.onkernel.com/``) or
            ``"development"`` (``https://localhost:3001/``), as in the official SDK.
            ``base_url`` wins over it; with ``KERNEL_BASE_URL`` set it is ambiguous and
            raises ``ValueError``, unless ``base_url=None`` is passed too.
        timeout: Seconds a whole call may take, retries and their waits included (60 by
            default); an ``aiohttp.ClientTimeout`` for finer control; ``None`` for no limit.
            Every method takes ``timeout=`` too. Unless one is set here or on the call, a
            synchronous `create` waits as long as the service may take (100 s).
        max_retries: Retries after the first attempt (used when ``retry`` is not given).
        retry: The full `RetryPolicy`; wins over ``max_retries``.
        session: An ``aiohttp.ClientSession`` to use (its middlewares are kept). It is never
            closed by the client. Without one the client creates its own, lazily, in the
            running event loop, and closes it in `aclose`.
        middlewares: aiohttp client middlewares run on every attempt, inside the retry
            middleware.
        default_headers: Headers sent with every request (on top of those in the
            ``KERNEL_CUSTOM_HEADERS`` environment variable, one ``Name: value`` per line).
        default_query: Query parameters sent with every request.
        project_id: The project to work in, sent as ``X-Kernel-Project-Id``.
        project: The project to work in, by name, sent as ``X-Kernel-Project``.
        connection_limit: Most simultaneous connections of the client's own session.
        limits: Caps on this client's running invocations (see `Limits`). Without it the
            client learns each app's limit from the service's 429s; either way, creates
            beyond the limit wait in a queue instead of failing.
        http_client: The official SDK's option: an ``aiohttp.ClientSession`` is used as
            ``session``; ``DefaultAioHttpClient()`` changes nothing (this client is built on
            aiohttp already).
        telemetry: OpenTelemetry spans and metrics of what the client does (calls,
            retries, 429 waits, stream resumes, invocation lifecycles): ``True`` for the
            global providers, or a `kernel_async.telemetry.Telemetry`. Needs the ``otel``
            extra. Off by default, at no cost.

    Raises:
        KernelError: No API key was given or found in ``KERNEL_API_KEY``, or ``base_url``
            is not a usable URL.
    """

    invocations: Invocations
    """The invocations resource: create, retrieve, update, cancel, list, follow, wait, run."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        environment: Environment | NotGiven = NOT_GIVEN,
        base_url: str | NotGiven | None = NOT_GIVEN,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int = 2,
        retry: RetryPolicy | None = None,
        session: ClientSession | None = None,
        middlewares: Sequence[ClientMiddlewareType] = (),
        default_headers: Mapping[str, str] | None = None,
        default_query: Mapping[str, str] | None = None,
        project_id: str | None = None,
        project: str | None = None,
        connection_limit: int = 100,
        limits: Limits | None = None,
        telemetry: bool | Telemetry = False,
        http_client: ClientSession | DefaultAioHttpClient | None = None,
    ) -> None:
        if isinstance(http_client, ClientSession):
            if session is not None:
                raise ValueError("pass session= or http_client=, not both")
            session = http_client
        elif not (http_client is None or isinstance(http_client, DefaultAioHttpClient)):
            raise TypeError(
                "http_client must be an aiohttp.ClientSession or DefaultAioHttpClient(), "
                f"got {type(http_client).__name__} (kernel_async does not use httpx)"
            )
        if connection_limit < 0:
            raise ValueError(f"connection_limit must be >= 0, got {connection_limit}")
        policy = retry if retry is not None else RetryPolicy(max_retries=max_retries)
        self._transport = Transport(
            session,
            connection_limit,
            Backpressure(
                limits if limits is not None else Limits(),
                policy.initial_delay,
                policy.max_retry_after,
            ),
        )
        self._owns_transport = True
        self._telemetry = _telemetry(telemetry)
        self._configure(
            api_key=api_key,
            base_url=base_url_for(base_url, environment),
            timeout=timeout,
            retry=policy,
            middlewares=middlewares,
            default_headers={**env_headers(), **(default_headers or {})},
            default_query=default_query,
            project_id=project_id,
            project=project,
        )

    def _configure(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        timeout: Timeout | NotGiven,
        retry: RetryPolicy,
        middlewares: Sequence[ClientMiddlewareType],
        default_headers: Mapping[str, str],
        default_query: Mapping[str, str] | None,
        project_id: str | None,
        project: str | None,
    ) -> None:
        from .resources.invocations import Invocations

        api_key = api_key or os.environ.get("KERNEL_API_KEY")
        if not api_key:
            raise KernelError(
                "No API key: pass api_key=... to AsyncKernel or set the "
                "KERNEL_API_KEY environment variable."
            )
        self._api_key = check_api_key(api_key)
        self._base_url = base = normalize_base_url(
            base_url or os.environ.get("KERNEL_BASE_URL") or DEFAULT_BASE_URL
        )
        self._invocations_url = URL(base + "/invocations", encoded=True)
        self._timeout_set = not isinstance(timeout, NotGiven)
        self._timeout_option: Timeout = (
            DEFAULT_TIMEOUT if isinstance(timeout, NotGiven) else timeout
        )
        self._timeout = to_client_timeout(self._timeout_option)
        self._retry = retry
        self._user_middlewares = tuple(middlewares)
        self._default_headers = dict(default_headers)
        self._default_query = dict(default_query or {})
        self._project_id = project_id
        self._project = project
        project_headers = {}
        if project_id is not None:
            project_headers["X-Kernel-Project-Id"] = check_header(project_id, "project_id")
        if project is not None:
            project_headers["X-Kernel-Project"] = check_header(project, "project")
        headers = {
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
            **self._default_headers,
            **project_headers,
            RETRY_COUNT_HEADER: "0",
            "Authorization": f"Bearer {api_key}",
        }
        self._headers: dict[str, str] = headers
        self._json_headers: dict[str, str] = {**headers, "Content-Type": "application/json"}
        self._stream_headers: dict[str, str] = {
            **headers,
            "Accept": "text/event-stream",
            "Cache-Control": "no-cache",
        }
        self._org_lists = True  # `_live_ids` lists every app's (until too many)
        backpressure = self._backpressure = self._transport.backpressure_for(
            base, api_key, project_id, project
        )
        if backpressure.lister is None:  # the first client of this server, key and project
            backpressure.lister = self._live_ids
        guard = RedirectGuard(self._base_url)
        self._middleware = RetryMiddleware(retry, backpressure=backpressure, guard=guard)
        # Streams resume on their own (counting against the same policy), so their
        # connection attempts get a middleware that only maps errors (and waits out the
        # rate limit, like every request): one retry layer.
        self._stream_middleware = RetryMiddleware(
            retry.with_max_retries(0), backpressure=backpressure, guard=guard
        )
        self._rest: tuple[ClientMiddlewareType, ...] | None = None
        self.invocations = Invocations(self)

    # --- configuration ---------------------------------------------------------------------

    @property
    def with_raw_response(self) -> AsyncKernelWithRawResponse:
        """The official SDK's ``client.with_raw_response.invocations``: the same as
        ``client.invocations.with_raw_response``."""
        return AsyncKernelWithRawResponse(self)

    @property
    def api_key(self) -> str:
        """The API key in use (never shown by ``repr``)."""
        return self._api_key

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._base_url

    @property
    def project_id(self) -> str | None:
        """The project this client works in (``X-Kernel-Project-Id``), if set."""
        return self._project_id

    @property
    def project(self) -> str | None:
        """The project this client works in, by name (``X-Kernel-Project``), if set."""
        return self._project

    @property
    def timeout(self) -> Timeout:
        """The default timeout of every call."""
        return self._timeout_option

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every call (and of stream resumes)."""
        return self._retry

    @property
    def limits(self) -> Limits:
        """The caps on this client's running invocations (shared with its copies)."""
        return self._backpressure.limits

    def limit_stats(self) -> LimitStats:
        """What backpressure did so far: each app's learnt limit, running and queued
        creates, the 429s absorbed and the time spent waiting (shared with copies)."""
        return self._backpressure.stats()

    @property
    def is_closed(self) -> bool:
        """Whether `aclose` has been called on this client (or the one it was derived from)."""
        return self._transport.closed

    def __repr__(self) -> str:
        return f"AsyncKernel(base_url={self._base_url!r}, max_retries={self._retry.max_retries})"

    def with_options(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        middlewares: Sequence[ClientMiddlewareType] | None = None,
        default_headers: Mapping[str, str] | None = None,
        default_query: Mapping[str, str] | None = None,
        project_id: str | None = None,
        project: str | None = None,
    ) -> Self:
        """A client with some options changed, sharing this client's connection pool (and,
        when it talks to the same server with the same key, its rate-limit gate, and in the
        same project too, its admission queue).

        ``kernel.with_options(timeout=5, max_retries=0).invocations.retrieve(id)``. Headers
        and query parameters given here are added to this client's. A project given here
        (``project_id=``, ``project=`` or both) replaces this client's project, both
        spellings: ``with_options(project="staging")`` on a client made with
        ``project_id=`` works in staging alone, not in two projects at once (restating
        the client's own project by one spelling keeps the other, and the client's
        admission queue). The copy never closes the shared session: close the original
        when done.
        """
        policy = retry if retry is not None else self._retry
        if max_retries is not None:
            policy = policy.with_max_retries(max_retries)
        if project_id is None and project is None:  # a project named here is the project
            project_id, project = self._project_id, self._project
        elif project_id is None and project == self._project:  # the same, restated
            project_id = self._project_id
        elif project is None and project_id == self._project_id:
            project = self._project
        clone = object.__new__(type(self))
        clone._transport = self._transport
        clone._owns_transport = False
        clone._telemetry = self._telemetry
        if isinstance(timeout, NotGiven) and self._timeout_set:
            timeout = self._timeout_option
        clone._configure(
            api_key=api_key or self._api_key,
            base_url=base_url or self._base_url,
            timeout=timeout,
            retry=policy,
            middlewares=self._user_middlewares if middlewares is None else middlewares,
            default_headers={**self._default_headers, **(default_headers or {})},
            default_query={**self._default_query, **(default_query or {})},
            project_id=project_id,
            project=project,
        )
        return clone

    async def _live_ids(self, app_name: str) -> Listing:
        """The ids of the invocations queued or running on the service: every app's (the
        room other apps leave under the organisation's cap shows there), or
        ``app_name``'s alone from the first time those were more than `ORG_LIST_MOST` or
        such a list was refused (a 4xx other than a 429). More than `LIVE_IDS_MOST` of
        the app is an error (a list that never ends, or an app this large): a list cut
        short would make invocations of ours still running look ended."""
        if self._org_lists:
            try:
                org = await self._live(None, ORG_LIST_MOST)
            except APIStatusError as exc:
                if exc.status_code == 429 or not 400 <= exc.status_code < 500:
                    raise
                logger.debug("Listing every app's invocations refused (%s)", exc.status_code)
            except _TooMany:
                pass
            else:
                ids = {invocation.id for invocation in org if invocation.app_name == app_name}
                return Listing(ids, {invocation.id for invocation in org})
            logger.debug("Listing app %r's invocations only, from now on", app_name)
            self._org_lists = False
        try:
            return Listing(
                {invocation.id for invocation in await self._live(app_name, LIVE_IDS_MOST)}
            )
        except _TooMany:
            raise KernelError(
                f"app {app_name!r} lists over {LIVE_IDS_MOST} invocations queued or running: "
                "not reconciled"
            ) from None

    async def _live(self, app_name: str | None, most: int) -> list[Invocation]:
        """The queued, then the running invocations (of ``app_name``, or of every app):
        an invocation only moves from queued to running, so one that runs throughout is
        in one list or the other. Raises `_TooMany` past ``most`` read, or past the pages
        they would take (a server repeating a page for ever ends too)."""
        found: list[Invocation] = []
        pages = 0
        for status in ("queued", "running"):
            listing = self.invocations.list(app_name=app_name, status=status, limit=100)
            async for page in listing.pages():
                pages += 1
                found.extend(page.items)
                if len(found) > most or pages > most // 100 + 2:
                    raise _TooMany
        return found

    # --- lifetime ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client's own session and its connections.

        A session passed in by the user is left open, and a copy made by `with_options`
        closes nothing. Safe to call more than once.
        """
        if self._owns_transport:
            await self._transport.aclose()

    async def close(self) -> None:
        """`aclose`, by the official SDK's name."""
        await self.aclose()


def _telemetry(option: bool | Telemetry) -> Telemetry | None:
    """The client's telemetry: imported only when asked for."""
    if option is False:
        return None
    from .telemetry import Telemetry

    if option is True:
        return Telemetry()
    if not isinstance(option, Telemetry):
        raise TypeError(
            f"telemetry must be True, False or a kernel_async.telemetry.Telemetry, got {option!r}"
        )
    return option


class AsyncKernelWithRawResponse:
    """``client.with_raw_response``: its ``invocations`` return raw responses."""

    __slots__ = ("invocations",)

    def __init__(self, client: AsyncKernel) -> None:
        self.invocations = client.invocations.with_raw_response
