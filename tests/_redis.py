"""A ``redis-server`` of the tests' own on 127.0.0.1, for the shared limits' tests (skipped
where it is not installed, or the ``redis`` extra is not)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

REDIS_SERVER = shutil.which("redis-server")
redis_asyncio = pytest.importorskip("redis.asyncio", reason="the redis extra is not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` process of the test's own."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    async def ready(self) -> None:
        client = redis_asyncio.Redis.from_url(self.url)
        try:
            for _ in range(500):
                try:
                    await client.ping()
                    return
                except Exception:
                    await asyncio.sleep(0.01)
            raise AssertionError("redis-server did not start")
        finally:
            await client.aclose()

    async def zcard_running(self) -> int:
        """Slots held across apps (expired leases included until someone purges them)."""
        client = redis_asyncio.Redis.from_url(self.url, decode_responses=True)
        try:
            keys = [k async for k in client.scan_iter("kernel:limits:*:run")]
            return sum([await client.zcard(k) for k in keys])
        finally:
            await client.aclose()


@pytest.fixture
def redis_process() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def redis_url(redis_process: RedisServer) -> AsyncIterator[str]:
    await redis_process.ready()
    yield redis_process.url
