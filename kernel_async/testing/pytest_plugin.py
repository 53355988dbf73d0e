"""pytest fixtures for testing code that uses kernel_async, registered through ``pytest11``.

Installed with the package, so a test suite can use them with no setup (pytest-asyncio is
needed for async tests; the fixtures are async)::

    async def test_my_agent(kernel_emulator, kernel_client):
        @kernel_emulator.action("my-app", "analyze")
        def analyze(ctx, payload):
            ctx.log("working")
            return {"ok": True}

        inv = await kernel_client.invocations.run("my-app", "analyze")
        assert inv.output_as() == {"ok": True}

``kernel_emulator`` is a running `KernelEmulator` on 127.0.0.1 (a fresh one per test);
``kernel_client`` is an `AsyncKernel` pointed at it with retries' backoff shortened so
injected faults do not slow tests down. Both are closed after the test.

An ``async def`` test that takes either fixture is run by pytest-asyncio even in its
default (strict) mode: the plugin marks it ``asyncio`` for you. Other async tests need
pytest-asyncio's ``asyncio_mode = "auto"`` or the marker, as usual.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .._client import AsyncKernel
    from .emulator import KernelEmulator

__all__ = [
    "kernel_client",
    "kernel_emulator",
    "pytest_pycollect_makeitem",
    "pytest_runtest_setup",
]

_OURS = frozenset({"kernel_emulator", "kernel_client"})

try:
    import pytest_asyncio

    _fixture = pytest_asyncio.fixture
except ImportError:  # pragma: no cover - without pytest-asyncio, async fixtures cannot run
    _fixture = pytest.fixture  # type: ignore[assignment]


_NEEDS_PYTEST_ASYNCIO = (
    "kernel_async's fixtures (kernel_emulator, kernel_client) are async: "
    "install pytest-asyncio (pip install pytest-asyncio) to use them"
)


def _has_pytest_asyncio(config: pytest.Config) -> bool:
    return _fixture is not pytest.fixture and config.pluginmanager.has_plugin("asyncio")


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Mark ``async def`` tests that use these fixtures ``asyncio``, before pytest-asyncio
    decides whether to run them: otherwise its strict mode (the default) leaves them to
    pytest, which says "async def functions are not natively supported"."""
    if not (inspect.iscoroutinefunction(obj) and name.startswith("test")):
        return
    if not _has_pytest_asyncio(collector.config):
        return  # the test fails in setup with a hint (pytest_runtest_setup)
    if _OURS.isdisjoint(inspect.signature(obj).parameters):
        return
    marks = getattr(obj, "pytestmark", [])
    if not any(getattr(mark, "name", None) == "asyncio" for mark in marks):
        pytest.mark.asyncio(obj)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Without pytest-asyncio, a test using these fixtures fails with a one-line hint,
    instead of pytest's "no plugin or hook handled it"."""
    if _OURS.isdisjoint(getattr(item, "fixturenames", ())):
        return
    if not _has_pytest_asyncio(item.config):
        pytest.fail(_NEEDS_PYTEST_ASYNCIO, pytrace=False)


@_fixture
async def kernel_emulator() -> AsyncIterator[KernelEmulator]:
    """A running `KernelEmulator` for this test."""
    from .emulator import KernelEmulator

    async with KernelEmulator() as emulator:
        yield emulator


@_fixture
async def kernel_client(kernel_emulator: KernelEmulator) -> AsyncIterator[AsyncKernel]:
    """An `AsyncKernel` connected to ``kernel_emulator``, with short retry backoff."""
    from .._retry import RetryPolicy

    policy = RetryPolicy(max_retries=3, initial_delay=0.01, max_delay=0.1, max_retry_after=5)
    async with kernel_emulator.client(retry=policy) as client:
        yield client
