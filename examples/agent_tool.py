"""An agent-style tool: one Kernel action awaited inside the agent's own task.

Agent frameworks call tools as coroutines and impose deadlines; when the deadline passes or
the agent is cancelled, the tool must stop at once and leave nothing behind. Here the tool
runs the action and, if the agent gives up, cancels the invocation on the API so it does not
keep running (and billing) in the background.

    python examples/agent_tool.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from kernel_async import APITimeoutError, AsyncKernel

try:
    from examples._emulator import kernel_client
except ImportError:  # run as a script from the examples folder
    from _emulator import kernel_client  # type: ignore[no-redef,import-not-found]


async def summarize_tool(kernel: AsyncKernel, text: str, *, deadline: float) -> dict[str, Any]:
    """The tool: run ``summarize`` and return its output, within ``deadline`` seconds.

    ``run(..., timeout=, cancel_on_timeout=True)`` bounds the wait and cancels the
    invocation on the API when the deadline passes. If the agent itself cancels the task,
    the invocation is cancelled too (shielded, so the cancel request survives).
    """
    created = await kernel.invocations.create(
        "demo-app", "summarize", payload={"text": text}, async_=True
    )
    try:
        inv = await kernel.invocations.wait(created.id, timeout=deadline, cancel_on_timeout=True)
    except asyncio.CancelledError:
        await asyncio.shield(kernel.invocations.cancel(created.id))
        raise
    if inv.status != "succeeded":
        raise RuntimeError(f"summarize failed: {inv.status_reason}")
    result: dict[str, Any] = inv.output_as(dict[str, Any])
    return result


async def agent(kernel: AsyncKernel) -> list[str]:
    """A toy agent: calls the tool three times, once with a deadline it cannot meet, and
    once cancelled from outside."""
    log: list[str] = []
    result = await summarize_tool(
        kernel, "the quick brown fox jumps over the lazy dog", deadline=10
    )
    log.append(f"summary: {result['words']} words")

    try:
        await summarize_tool(kernel, "too slow", deadline=0.001)
    except APITimeoutError as exc:
        log.append(f"deadline: {exc}")

    task = asyncio.create_task(summarize_tool(kernel, "never mind", deadline=10))
    await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        log.append("cancelled by the agent")
    return log


async def main() -> list[str]:
    async with kernel_client() as kernel:
        return await agent(kernel)


if __name__ == "__main__":
    for line in asyncio.run(main()):
        print(line)
