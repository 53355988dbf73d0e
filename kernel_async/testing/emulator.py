"""KernelEmulator: an in-memory Kernel invocations API on aiohttp.web."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from aiohttp import web

from ..models import Invocation
from . import _wire as wire
from ._routes import Routes, abort, error
from ._store import ActionContext, ActionFunc, Store
from .faults import Faults
from .quotas import Quotas

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

    from .._client import AsyncKernel
    from .._options import ClientOptions

__all__ = ["ActionContext", "KernelEmulator", "RecordedRequest"]

logger = logging.getLogger("kernel_async.testing")

F = TypeVar("F", bound=ActionFunc)


@dataclass(frozen=True)
class RecordedRequest:
    """A request the emulator received (bodies and headers as sent)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class _Action:
    func: ActionFunc
    deployment_id: str


# A typed request key where aiohttp has them (3.14+), a plain one before.
_RATE_HEADERS: Any = (
    web.RequestKey("kernel_async_rate_headers", dict[str, str])
    if hasattr(web, "RequestKey")
    else "kernel_async_rate_headers"
)


class KernelEmulator:
    """A faithful, in-memory emulator of the Kernel invocations API.

    ```python
    emulator = KernelEmulator()

    @emulator.action("my-app", "analyze")
    async def analyze(ctx, payload):
        ctx.log("analyzing")
        return {"length": len(payload["text"])}

    async with emulator:                       # serves on 127.0.0.1, a free port
        async with emulator.client() as kernel:
            inv = await kernel.invocations.run("my-app", "analyze", payload={"text": "hi"})
    ```

    It serves the five operations of the API as documented: JSON bodies, status codes and
    Error bodies, pagination headers, list filters, bearer auth, synchronous (200) and
    asynchronous (202) invocations, cancellation through PATCH, and SSE event streams with
    logs, state changes and heartbeats. `faults` injects failures for tests; `quotas`
    enforces the service's concurrency caps and rate limit (off unless set).

    Args:
        api_key: The bearer token it accepts (random when not given).
        host: The interface to listen on.
        port: The port (0 picks a free one).
        heartbeat_interval: Seconds between ``sse_heartbeat`` events on idle streams.
        max_invocations: Finished invocations beyond this many are evicted, oldest first.
        sync_timeout: Seconds a synchronous invocation may run before it fails.
        async_timeout_scale: Multiplies ``async_timeout_seconds`` (tests use small values to
            see timeouts without waiting minutes).
        seed: Seeds invocation ids, for reproducible runs.
        record_requests: How many recent requests `requests` keeps (0: all).
        quotas: The service's limits to enforce (see `Quotas`); none by default.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        heartbeat_interval: float = 15.0,
        max_invocations: int = 10_000,
        sync_timeout: float = 60.0,
        async_timeout_scale: float = 1.0,
        seed: int | None = None,
        record_requests: int = 10_000,
        quotas: Quotas | None = None,
    ) -> None:
        self.api_key = api_key or "sk_emulator_" + secrets.token_hex(12)
        """The API key the emulator accepts."""
        self.host = host
        self.port = port
        self.heartbeat_interval = heartbeat_interval
        self.max_invocations = max_invocations
        self.sync_timeout = sync_timeout
        self.async_timeout_scale = async_timeout_scale
        self.faults = Faults()
        """Fault injection: see `Faults`."""
        self.quotas = quotas if quotas is not None else Quotas()
        """The service's limits, enforced: see `Quotas` (all off by default)."""
        self.requests: deque[RecordedRequest] = deque(maxlen=record_requests or None)
        """The most recent requests received, oldest first."""
        self.create_count = 0
        """How many invocations were created (successful ``POST /invocations``)."""
        self._store = Store(
            max_invocations=max_invocations,
            seed=seed,
            on_finish=lambda inv: self.quotas.finished(inv.app_name),
        )
        self._actions: dict[tuple[str, str, str], _Action] = {}
        self._latest: dict[str, str] = {}
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._auth = f"Bearer {self.api_key}"
        self.app = self._make_app()
        """The ``aiohttp.web.Application`` (to mount or run elsewhere)."""

    # --- actions ------------------------------------------------------------------------------

    def action(
        self, app_name: str, action_name: str, *, version: str = "latest"
    ) -> Callable[[F], F]:
        """Register a function as an action: ``fn(ctx, payload)``, sync or async.

        The payload is the decoded JSON payload (``None`` if none was sent); the return value
        becomes the invocation's output (JSON-encoded); an exception fails the invocation
        with its message as ``status_reason``. ``version="latest"`` registers under the
        label ``latest``; invoking version ``latest`` runs the most recently registered
        version of the app.
        """

        def register(func: F) -> F:
            self.add_action(app_name, action_name, func, version=version)
            return func

        return register

    def add_action(
        self, app_name: str, action_name: str, func: ActionFunc, *, version: str = "latest"
    ) -> None:
        """Register ``func`` as an action (the non-decorator form of `action`)."""
        deployment = "dep_" + self._store.new_id()[:20]
        self._actions[(app_name, version, action_name)] = _Action(func, deployment)
        self._latest[app_name] = version

    # --- lifetime ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the emulator is serving."""
        return self._runner is not None

    @property
    def url(self) -> str:
        """The base URL to point a client at, e.g. ``http://127.0.0.1:54321``."""
        if self._site is None:
            raise RuntimeError("the emulator is not running; use `async with emulator:`")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Start serving (``async with emulator`` does this)."""
        if self._runner is not None:
            return
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port)
        await self._site.start()
        server = self._site._server
        if self.port == 0 and server is not None:
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop serving, end open streams and cancel running actions."""
        await self._store.stop()
        runner, self._runner, self._site = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def client(self, **options: Unpack[ClientOptions]) -> AsyncKernel:
        """An `AsyncKernel` pointed at this emulator with its key; any other `AsyncKernel`
        option passes through (and only those: they are typed)."""
        from .._client import AsyncKernel

        options.setdefault("api_key", self.api_key)
        options.setdefault("base_url", self.url)
        return AsyncKernel(**options)

    # --- state helpers for tests ---------------------------------------------------------------

    def snapshot(self) -> list[Invocation]:
        """Every invocation held, oldest first, as the API would report them."""
        return [
            msgspec.json.decode(wire.encode(inv.wire()), type=Invocation) for inv in self._store
        ]

    def invocation_ids(self) -> list[str]:
        """Ids of the invocations held, oldest first."""
        return self._store.ids()

    def log_lines(self, invocation_id: str) -> list[str]:
        """Every log line the invocation has written, in order."""
        return self._store.log_lines(self._store[invocation_id])

    async def wait_finished(self, invocation_id: str) -> None:
        """Wait until the invocation reaches a terminal state."""
        await self._store[invocation_id].done.wait()

    # --- internals ---------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=8 * 1024 * 1024)
        Routes(self).install(app)
        app.on_response_prepare.append(_add_rate_headers)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body = await request.read() if request.can_read_body else b""
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                body,
            )
        )
        faults = self.faults
        delay = faults.delay()
        if delay > 0:
            faults.stats.delayed += 1
            await asyncio.sleep(delay)
        if request.headers.get("Authorization") != self._auth:
            return error(401, "unauthorized", "Missing or invalid authorization token")
        headers, retry_after = self.quotas.admit_request(asyncio.get_running_loop().time())
        if headers:
            request[_RATE_HEADERS] = headers
        if retry_after is not None:
            return error(
                429,
                "rate_limited",
                "Too many requests",
                headers={"Retry-After": wire.number(retry_after)},
            )
        rule = faults.take(request.method, request.path)
        if rule is not None and not rule.after_processing:
            return await self._inject(request, rule)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "bad_request")
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            return error(exc.status, code, exc.reason, headers=headers)
        if rule is not None:
            return await self._inject(request, rule)
        return response

    async def _inject(self, request: web.Request, rule: Any) -> web.StreamResponse:
        stats = self.faults.stats
        if rule.kind == "drop":
            stats.drops += 1
            abort(request)
            return web.Response(status=500)
        if rule.kind == "hang":
            stats.hangs += 1
            await asyncio.Event().wait()
        if rule.status == 429:
            stats.rate_limited += 1
            if rule.body is None:
                return error(429, "rate_limited", "Too many requests", headers=rule.headers)
            # A body of the test's own: e.g. a concurrency 429's error code.
            json_like = rule.body.lstrip().startswith((b"{", b"["))
            content_type = "application/json" if json_like else "text/html"
            return web.Response(
                status=429,
                body=rule.body,
                headers={"Content-Type": content_type, **rule.headers},
            )
        stats.errors += 1
        if rule.body is not None:
            return web.Response(
                status=rule.status,
                body=rule.body,
                headers={"Content-Type": "text/html", **rule.headers},
            )
        return error(rule.status, "internal_error", "Injected failure", headers=rule.headers)


async def _add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response to a rate-limited request carries the limit and what is left."""
    headers = request.get(_RATE_HEADERS)
    if headers:
        response.headers.update(headers)
