"""KernelEmulator: an in-memory Kernel invocations API on aiohttp.web."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import secrets
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec
from aiohttp import web

from ..models import Invocation
from . import _wire as wire
from .faults import Faults

if TYPE_CHECKING:
    from typing_extensions import Self

    from .._client import AsyncKernel

__all__ = ["ActionContext", "KernelEmulator", "RecordedRequest"]

logger = logging.getLogger("kernel_async.testing")

ActionFunc = Callable[["ActionContext", Any], Any]
F = TypeVar("F", bound=ActionFunc)

_TERMINAL: Final = frozenset({"succeeded", "failed"})
_STATUSES: Final = frozenset({"queued", "running", "succeeded", "failed"})
_ID_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789"


class ActionContext:
    """What an emulated action receives besides its payload."""

    __slots__ = ("_emulator", "_invocation")

    def __init__(self, emulator: KernelEmulator, invocation: _Invocation) -> None:
        self._emulator = emulator
        self._invocation = invocation

    @property
    def invocation_id(self) -> str:
        """The id of the invocation running this action."""
        return self._invocation.id

    @property
    def app_name(self) -> str:
        """The app the action belongs to."""
        return self._invocation.app_name

    @property
    def action_name(self) -> str:
        """The action's name."""
        return self._invocation.action_name

    def log(self, message: str) -> None:
        """Write a log line: followers receive it as a `LogEvent`."""
        self._emulator._log(self._invocation, str(message))


@dataclass(eq=False)
class _Invocation:
    id: str
    app_name: str
    version: str
    action_name: str
    deployment_id: str
    payload: str | None
    started_ns: int
    status: str = "queued"
    status_reason: str | None = None
    output: str | None = None
    finished_ns: int | None = None
    # (timestamp ns, encoded event, is a terminal state)
    events: list[tuple[int, bytes, bool]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def terminal(self) -> bool:
        return self.status in _TERMINAL

    def wire(self) -> wire.WireInvocation:
        return wire.WireInvocation(
            id=self.id,
            app_name=self.app_name,
            version=self.version,
            action_name=self.action_name,
            started_at=wire.format_ns(self.started_ns),
            status=self.status,
            payload=self.payload,
            output=self.output,
            finished_at=None if self.finished_ns is None else wire.format_ns(self.finished_ns),
            status_reason=self.status_reason,
        )


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
    logs, state changes and heartbeats. `faults` injects failures for tests.

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
        self.requests: deque[RecordedRequest] = deque(maxlen=record_requests or None)
        """The most recent requests received, oldest first."""
        self.create_count = 0
        """How many invocations were created (successful ``POST /invocations``)."""
        self._rng = random.Random(seed)
        self._actions: dict[tuple[str, str, str], _Action] = {}
        self._latest: dict[str, str] = {}
        self._invocations: OrderedDict[str, _Invocation] = OrderedDict()
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
        deployment = "dep_" + self._new_id()[:20]
        self._actions[(app_name, version, action_name)] = _Action(func, deployment)
        self._latest[app_name] = version

    # --- lifetime ----------------------------------------------------------------------------

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
        for inv in self._invocations.values():
            if inv.task is not None and not inv.task.done():
                inv.task.cancel()
        tasks = [i.task for i in self._invocations.values() if i.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for inv in self._invocations.values():
            inv.changed.set()
        runner, self._runner, self._site = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def client(self, **options: Any) -> AsyncKernel:
        """An `AsyncKernel` pointed at this emulator with its key (options pass through)."""
        from .._client import AsyncKernel

        options.setdefault("api_key", self.api_key)
        options.setdefault("base_url", self.url)
        return AsyncKernel(**options)

    # --- state helpers for tests ---------------------------------------------------------------

    def snapshot(self) -> list[Invocation]:
        """Every invocation held, oldest first, as the API would report them."""
        return [
            msgspec.json.decode(wire.encode(inv.wire()), type=Invocation)
            for inv in self._invocations.values()
        ]

    def invocation_ids(self) -> list[str]:
        """Ids of the invocations held, oldest first."""
        return list(self._invocations)

    def log_lines(self, invocation_id: str) -> list[str]:
        """Every log line the invocation has written, in order."""
        inv = self._invocations[invocation_id]
        lines = []
        for _, data, _ in inv.events:
            if data.startswith(b'{"event":"log"'):
                lines.append(msgspec.json.decode(data)["message"])
        return lines

    async def wait_finished(self, invocation_id: str) -> None:
        """Wait until the invocation reaches a terminal state."""
        await self._invocations[invocation_id].done.wait()

    # --- internals ---------------------------------------------------------------------------

    def _new_id(self) -> str:
        return "".join(self._rng.choices(_ID_ALPHABET, k=24))

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=8 * 1024 * 1024)
        app.router.add_post("/invocations", self._create)
        app.router.add_get("/invocations", self._list)
        app.router.add_get("/invocations/{id}", self._retrieve)
        app.router.add_patch("/invocations/{id}", self._update)
        app.router.add_get("/invocations/{id}/events", self._events)
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
            return _error(401, "unauthorized", "Missing or invalid authorization token")
        rule = faults.take(request.method, request.path)
        if rule is not None and not rule.after_processing:
            return await self._inject(request, rule)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "bad_request")
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            return _error(exc.status, code, exc.reason, headers=headers)
        if rule is not None:
            return await self._inject(request, rule)
        return response

    async def _inject(self, request: web.Request, rule: Any) -> web.StreamResponse:
        stats = self.faults.stats
        if rule.kind == "drop":
            stats.drops += 1
            _abort(request)
            return web.Response(status=500)
        if rule.kind == "hang":
            stats.hangs += 1
            await asyncio.Event().wait()
        if rule.status == 429:
            stats.rate_limited += 1
            return _error(429, "rate_limited", "Too many requests", headers=rule.headers)
        stats.errors += 1
        if rule.body is not None:
            return web.Response(
                status=rule.status,
                body=rule.body,
                headers={"Content-Type": "text/html", **rule.headers},
            )
        return _error(rule.status, "internal_error", "Injected failure", headers=rule.headers)

    # --- operations ----------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.StreamResponse:
        try:
            body = wire.create_decoder.decode(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _error(400, "bad_request", "Invalid request body", str(exc))
        problems = []
        timeout = body.async_timeout_seconds
        if timeout is not None and not (float(timeout).is_integer() and 10 <= timeout <= 3600):
            problems.append("async_timeout_seconds must be an integer between 10 and 3600")
        payload_value: Any = None
        if body.payload is not None:
            try:
                payload_value = msgspec.json.decode(body.payload)
            except msgspec.DecodeError:
                problems.append("payload must be a JSON string")
        if problems:
            return _error(400, "bad_request", "Invalid request", *problems)
        version = self._latest.get(body.app_name) if body.version == "latest" else body.version
        action = self._actions.get((body.app_name, version or "", body.action_name))
        if action is None or version is None:
            return _error(
                404,
                "not_found",
                f"Action {body.action_name!r} not found in app {body.app_name!r}"
                f" version {body.version!r}",
            )
        inv = _Invocation(
            id=self._new_id(),
            app_name=body.app_name,
            version=version,
            action_name=body.action_name,
            deployment_id=action.deployment_id,
            payload=body.payload,
            started_ns=wire.now_ns(),
        )
        self._store(inv)
        self.create_count += 1
        self._state_event(inv)
        if body.async_:
            limit = (body.async_timeout_seconds or 900) * self.async_timeout_scale
            inv.task = asyncio.create_task(self._run(inv, action.func, payload_value, limit))
            return _json(202, wire.WireInvokeResponse(inv.id, inv.action_name, inv.status))
        inv.task = asyncio.create_task(
            self._run(inv, action.func, payload_value, self.sync_timeout)
        )
        await asyncio.shield(inv.done.wait())
        return _json(
            200,
            wire.WireInvokeResponse(
                inv.id, inv.action_name, inv.status, inv.status_reason, inv.output
            ),
        )

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        inv = self._invocations.get(request.match_info["id"])
        if inv is None:
            return _not_found(request.match_info["id"])
        return _json(200, inv.wire())

    async def _update(self, request: web.Request) -> web.StreamResponse:
        inv = self._invocations.get(request.match_info["id"])
        if inv is None:
            return _not_found(request.match_info["id"])
        try:
            body = wire.update_decoder.decode(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _error(400, "bad_request", "Invalid request body", str(exc))
        if body.status not in _TERMINAL:
            return _error(
                400, "bad_request", "Invalid status", "status must be 'succeeded' or 'failed'"
            )
        if inv.terminal:
            if inv.status == body.status:
                return _json(200, inv.wire())  # idempotent: already so
            return _error(
                400,
                "bad_request",
                f"Invocation {inv.id} already finished with status {inv.status!r}",
            )
        task = inv.task
        if task is not None and not task.done():
            task.cancel()
        reason = "Invocation cancelled" if body.status == "failed" else "Invocation updated"
        self._finish(inv, body.status, body.output, reason)
        return _json(200, inv.wire())

    async def _list(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        problems = []
        limit = _int_param(q.get("limit"), 20)
        offset = _int_param(q.get("offset"), 0)
        if limit is None or not 1 <= limit <= 100:
            problems.append("limit must be an integer between 1 and 100")
        if offset is None or offset < 0:
            problems.append("offset must be a non-negative integer")
        status = q.get("status")
        if status is not None and status not in _STATUSES:
            problems.append("status must be one of queued, running, succeeded, failed")
        since_ns, since_problem = _since_param(q.get("since"))
        if since_problem:
            problems.append(since_problem)
        if problems:
            return _error(400, "bad_request", "Invalid query parameters", *problems)
        assert limit is not None
        assert offset is not None
        filters = [
            (name, q[name])
            for name in ("app_name", "version", "action_name", "deployment_id")
            if name in q
        ]
        matched = [
            inv
            for inv in reversed(self._invocations.values())
            if all(getattr(inv, name) == value for name, value in filters)
            and (status is None or inv.status == status)
            and (since_ns is None or inv.started_ns >= since_ns)
        ]
        matched.sort(key=lambda inv: inv.started_ns, reverse=True)
        page = matched[offset : offset + limit]
        has_more = offset + limit < len(matched)
        headers = {
            "X-Limit": str(limit),
            "X-Offset": str(offset),
            "X-Has-More": "true" if has_more else "false",
        }
        if has_more:
            headers["X-Next-Offset"] = str(offset + limit)
        return _json(200, [inv.wire() for inv in page], headers=headers)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        inv = self._invocations.get(request.match_info["id"])
        if inv is None:
            return _not_found(request.match_info["id"])
        since_ns, since_problem = _since_param(request.query.get("since"))
        if since_problem:
            return _error(400, "bad_request", "Invalid query parameters", since_problem)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-SSE-Content-Type": "application/json",
            }
        )
        try:
            await response.prepare(request)
            await self._stream(request, response, inv, since_ns or 0, self.faults.take_cut())
        except ConnectionResetError:
            pass  # the client went away: nothing to send it
        return response

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        inv: _Invocation,
        since_ns: int,
        cut_after: int | None,
    ) -> None:
        index = sent = 0
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time() + self.heartbeat_interval
        while True:
            events = inv.events
            frames: list[bytes] = []
            finished = False
            while index < len(events):
                ts, data, terminal = events[index]
                index += 1
                if ts < since_ns:
                    continue
                frame = b"data: " + data + b"\n\n"
                if cut_after is not None and sent >= cut_after:
                    frames.append(frame[: len(frame) // 2])
                    await response.write(b"".join(frames))
                    self.faults.stats.cuts += 1
                    _abort(request)
                    return
                frames.append(frame)
                sent += 1
                if terminal:
                    finished = True
                    break
            if not finished and inv.terminal and index >= len(events):
                # The terminal state was before `since`: report the state once more.
                frames.append(b"data: " + self._state_data(inv, wire.now_ns()) + b"\n\n")
                finished = True
            if frames:
                await response.write(b"".join(frames))
            if finished:
                await response.write_eof()
                return
            waiter = inv.changed
            timeout = next_heartbeat - loop.time()
            if timeout > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(waiter.wait(), timeout)
            if loop.time() >= next_heartbeat:
                beat = wire.encode(wire.HeartbeatWire(wire.format_ns(wire.now_ns())))
                await response.write(b"data: " + beat + b"\n\n")
                next_heartbeat = loop.time() + self.heartbeat_interval
            if self._runner is None:
                return

    # --- invocation lifecycle -------------------------------------------------------------------

    async def _run(self, inv: _Invocation, func: ActionFunc, payload: Any, limit: float) -> None:
        ctx = ActionContext(self, inv)
        try:
            self._set_status(inv, "running")
            result = func(ctx, payload)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(_awaitable(result), limit)
            output = wire.json_string(result)
        except asyncio.CancelledError:
            if not inv.terminal:
                self._finish(inv, "failed", None, "Invocation cancelled")
            raise
        except asyncio.TimeoutError:
            self._finish(inv, "failed", None, f"Invocation timed out after {limit:g} seconds")
        except Exception as exc:
            self._finish(inv, "failed", None, str(exc) or type(exc).__name__)
        else:
            if not inv.terminal:
                self._finish(inv, "succeeded", output, "Invocation completed successfully")

    def _store(self, inv: _Invocation) -> None:
        self._invocations[inv.id] = inv
        if len(self._invocations) > self.max_invocations:
            for old_id, old in list(self._invocations.items()):
                if len(self._invocations) <= self.max_invocations:
                    break
                if old.terminal:
                    del self._invocations[old_id]

    def _push(self, inv: _Invocation, ts: int, data: bytes, terminal: bool = False) -> None:
        inv.events.append((ts, data, terminal))
        changed, inv.changed = inv.changed, asyncio.Event()
        changed.set()

    def _log(self, inv: _Invocation, message: str) -> None:
        ts = wire.now_ns()
        self._push(inv, ts, wire.encode(wire.LogWire(wire.format_ns(ts), message)))

    def _state_data(self, inv: _Invocation, ts: int) -> bytes:
        return wire.encode(wire.StateWire(wire.format_ns(ts), inv.wire()))

    def _state_event(self, inv: _Invocation) -> None:
        ts = wire.now_ns()
        self._push(inv, ts, self._state_data(inv, ts), inv.terminal)

    def _set_status(self, inv: _Invocation, status: str) -> None:
        inv.status = status
        self._state_event(inv)

    def _finish(self, inv: _Invocation, status: str, output: str | None, reason: str) -> None:
        inv.status = status
        inv.output = output
        inv.status_reason = reason
        inv.finished_ns = wire.now_ns()
        self._state_event(inv)
        inv.done.set()


async def _awaitable(value: Awaitable[Any]) -> Any:
    return await value


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _since_param(value: str | None) -> tuple[int | None, str | None]:
    """``since`` in Unix ns (None when absent or empty), or the problem with it."""
    if not value:
        return None, None
    since_ns = wire.parse_since_ns(value)
    if since_ns is None:
        return None, "since must be an RFC 3339 timestamp or a duration like 5m"
    return since_ns, None


def _int_param(value: str | None, default: int) -> int | None:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        return None


def _json(status: int, value: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=wire.encode(value), content_type="application/json", headers=headers
    )


def _error(
    status: int, code: str, message: str, *details: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=wire.error_body(code, message, *details),
        content_type="application/json",
        headers=headers,
    )


def _not_found(id: str) -> web.Response:
    return _error(404, "not_found", f"Invocation {id!r} not found")
