"""Checked by mypy --strict (the typecheck session), never run: the public API's types are
what they promise."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import assert_type

    from kernel_async import AsyncKernel, Invocation, InvokeResponse, Limits
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
