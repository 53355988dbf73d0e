"""Shared fixtures: small recording aiohttp.web servers, and retry sleeps without sleeping.

The emulator fixtures (``kernel_emulator``, ``kernel_client``) come from the package's own
pytest plugin, as they would for a user.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from kernel_async import AsyncKernel, RetryPolicy, _retry
from kernel_async.testing import KernelEmulator

API_KEY = "sk_test_9f8e7d6c5b4a"

# The official SDK's tests run in `nox -s official_sdk`, which installs it; elsewhere they
# are left out of collection rather than reported as skipped.
collect_ignore = [] if importlib.util.find_spec("kernel") else ["test_official_sdk.py"]

#: The distributions whose behaviour the suite depends on: the header names their versions,
#: so a failure after an upstream release says which release it ran against.
DEPENDENCIES = [
    "aiohttp",
    "msgspec",
    "rich",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "pytest",
    "pytest-asyncio",
    "hypothesis",
    "starlette",
    "httpx",
]


def pytest_report_header() -> str:
    """One header line: ``dependencies: aiohttp 3.12.0, msgspec 0.18.6, ...``."""
    found = []
    for name in DEPENDENCIES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return "dependencies: " + ", ".join(found)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    """A request as the test server received it."""

    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    """A running test server: its URL and every request it saw."""

    url: str
    requests: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None

    def client(self, **options: Any) -> AsyncKernel:
        options.setdefault("api_key", API_KEY)
        options.setdefault("base_url", self.url)
        return AsyncKernel(**options)


ServerFactory = Callable[[list[tuple[str, str, Handler]]], Awaitable[Server]]


@pytest_asyncio.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Start ``aiohttp.web`` servers on 127.0.0.1 from ``[(method, path, handler)]``."""
    servers: list[Server] = []

    async def start(routes: list[tuple[str, str, Handler]]) -> Server:
        server = Server(url="")

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            body = await request.read() if request.can_read_body else b""
            server.requests.append(
                Seen(
                    request.method,
                    request.path,
                    request.raw_path,
                    dict(request.query),
                    dict(request.headers),
                    body,
                )
            )
            return await handler(request)

        app = web.Application(middlewares=[record])
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=0.1,
            handler_cancellation=True,
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        server.url = f"http://127.0.0.1:{port}"
        server.runner = runner
        servers.append(server)
        return server

    yield start
    for server in servers:
        assert server.runner is not None
        await server.runner.cleanup()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the delays the retry logic asks for, and do not actually wait."""
    recorded: list[float] = []

    async def fake_sleep(delay: float) -> None:
        recorded.append(delay)
        await asyncio.sleep(0)

    monkeypatch.setattr(_retry, "sleep", fake_sleep)
    return recorded


@pytest.fixture
def fast_policy() -> RetryPolicy:
    return RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.05, jitter=0.0)


def json_response(
    body: bytes | str, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    raw = body.encode() if isinstance(body, str) else body
    return web.Response(status=status, body=raw, content_type="application/json", headers=headers)


INVOCATION_JSON = (
    '{"id":"inv_1","app_name":"my-app","version":"1.0.0","action_name":"analyze",'
    '"started_at":"2025-06-20T12:00:00.123456789Z","status":"running",'
    '"payload":"{\\"data\\":1}"}'
)


@contextlib.contextmanager
def emulator_thread(emulator: KernelEmulator) -> Iterator[None]:
    """Run ``emulator`` on its own thread and loop, so that every task left in the test's
    loop afterwards can only be the client's."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(emulator.start(), loop).result(10)
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
