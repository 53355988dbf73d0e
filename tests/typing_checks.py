"""Checked by mypy --strict (the typecheck session), never run: the public API's types are
what they promise."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import assert_type

    from kernel_async import AsyncAPIResponse, AsyncKernel, Invocation, InvokeResponse, Limits, Page
    from kernel_async.testing import KernelEmulator


def _output_types(inv: Invocation, created: InvokeResponse) -> None:
    assert_type(inv.output_as(dict[str, int]), dict[str, int])
    assert_type(inv.output_as(list[str]), list[str])
    assert_type(inv.output_as(), Any)
    assert_type(inv.payload_as(int), int)
    assert_type(created.output_as(dict[str, list[int]]), dict[str, list[int]])


def _emulator_client_takes_client_options(emulator: KernelEmulator) -> None:
    assert_type(emulator.client(max_retries=0, limits=Limits(max_running=2)), AsyncKernel)
    emulator.client(max_retrys=0)  # type: ignore[call-arg]
    emulator.client(timeout="soon")  # type: ignore[arg-type]


async def _official_idioms(kernel: AsyncKernel) -> None:
    await kernel.invocations.update("id", status="failed")
    await kernel.invocations.update("id", status="cancelled")  # type: ignore[arg-type]
    raw = await kernel.invocations.with_raw_response.retrieve("id")
    assert_type(raw, AsyncAPIResponse[Invocation])
    assert_type(await raw.parse(), Invocation)
    created = await kernel.invocations.with_raw_response.create("app", "action", async_=True)
    assert_type(await created.parse(), InvokeResponse)
    page = await kernel.invocations.with_raw_response.list(limit=5)
    assert_type(await page.parse(), Page[Invocation])
    await kernel.invocations.with_raw_response.retrieve("id", limit=5)  # type: ignore[call-arg]
    async with kernel.invocations.with_streaming_response.retrieve("id") as streamed:
        assert_type(await streamed.parse(), Invocation)
    assert_type(AsyncKernel(environment="development"), AsyncKernel)
    AsyncKernel(environment="staging")  # type: ignore[arg-type]
    inv = await kernel.invocations.retrieve("id")
    assert_type(inv.to_dict(mode="json", exclude_none=True), dict[str, Any])
    assert_type(inv.to_json(indent=None), str)
