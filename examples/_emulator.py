"""Shared by the examples: a client for the real API if KERNEL_API_KEY is set, else an
embedded emulator with the demo actions (so every example runs with no account), under
limits like the service's: 20 running invocations per app, a request rate limit."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from kernel_async import AsyncKernel
from kernel_async.testing import KernelEmulator, Quotas
from kernel_async.testing.demo import install_demo_actions

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from kernel_async import ClientOptions


@asynccontextmanager
async def kernel_client(**options: Unpack[ClientOptions]) -> AsyncIterator[AsyncKernel]:
    """Yield an AsyncKernel: the real API when configured, the emulator otherwise."""
    if os.environ.get("KERNEL_API_KEY"):
        async with AsyncKernel(**options) as kernel:
            yield kernel
        return
    quotas = Quotas(max_running_per_app=20, requests_per_window=500, window=1.0)
    emulator = KernelEmulator(heartbeat_interval=1.0, quotas=quotas)
    install_demo_actions(emulator)
    emulator.faults.chaos(rate_limit=0.05, retry_after=0.05, seed=1)  # a little weather
    async with emulator, emulator.client(**options) as kernel:
        yield kernel
