"""Telemetry keeps to itself: no ``default_query`` token reaches a span through an error's
text, and nothing OpenTelemetry raises (a span processor, a meter) changes a call's outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.context import Context
from opentelemetry.metrics import (
    Counter,
    Histogram,
    NoOpCounter,
    NoOpHistogram,
    NoOpMeter,
    NoOpMeterProvider,
    NoOpUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.util.types import Attributes

from kernel_async import APIConnectionError, AsyncKernel, InternalServerError, NotFoundError
from kernel_async.telemetry import Telemetry
from kernel_async.testing import KernelEmulator
from kernel_async.testing.demo import install_demo_actions

TOKEN = "QUERY-TOKEN-5c1d"


@pytest.fixture
async def emulator() -> AsyncIterator[KernelEmulator]:
    emulator = KernelEmulator(heartbeat_interval=0.5)
    install_demo_actions(emulator, seed=5)
    async with emulator:
        yield emulator


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


def traced(exporter: InMemorySpanExporter, *processors: SpanProcessor) -> Telemetry:
    provider = TracerProvider()
    for processor in processors:
        provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry(tracer_provider=provider, meter_provider=NoOpMeterProvider())


def recorded_text(spans: Sequence[ReadableSpan]) -> str:
    """Everything the spans carry, as text: attributes, status descriptions, events."""
    parts: list[str] = []
    for span in spans:
        parts += [span.name, repr(dict(span.attributes or {})), str(span.status.description)]
        parts += [event.name + repr(dict(event.attributes or {})) for event in span.events]
    return "\n".join(parts)


# --- query strings ------------------------------------------------------------------------------


async def test_a_failed_calls_span_carries_no_query_string(
    emulator: KernelEmulator, exporter: InMemorySpanExporter
) -> None:
    options: dict[str, Any] = {
        "telemetry": traced(exporter),
        "default_query": {"token": TOKEN},
        "max_retries": 0,
    }
    async with emulator.client(**options) as kernel:
        with pytest.raises(NotFoundError) as missing:
            await kernel.invocations.retrieve("nope")
        emulator.faults.fail(503, method="GET")
        with pytest.raises(InternalServerError, match="Injected failure"):
            await kernel.invocations.retrieve("any")
    async with AsyncKernel(api_key="k", base_url="http://127.0.0.1:1", **options) as kernel:
        with pytest.raises(APIConnectionError, match="Connection error") as unreachable:
            await kernel.invocations.retrieve("any")
    assert TOKEN in str(missing.value)  # the exception itself is the caller's, untouched
    assert TOKEN in str(unreachable.value)

    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    assert all(span.status.status_code is StatusCode.ERROR for span in spans)
    assert all([e.name for e in span.events] == ["exception"] for span in spans)
    assert TOKEN not in recorded_text(spans)
    # What the exception said is still there, only its URLs' query strings are cut.
    not_found = spans[0]
    assert not_found.status.description == (
        f"404 not_found: Invocation 'nope' not found (GET {emulator.url}/invocations/nope)"
    )
    (event,) = not_found.events
    assert "Traceback" in str((event.attributes or {})["exception.stacktrace"])
    # the SDK names the type: qualified from opentelemetry-sdk 1.25, bare before
    assert (event.attributes or {})["exception.type"] in {
        "kernel_async.errors.NotFoundError",
        "NotFoundError",
    }
    assert str(spans[2].status.description).startswith(
        "Connection error on GET http://127.0.0.1:1/invocations/any: "
    )


# --- a failing OpenTelemetry --------------------------------------------------------------------


class RaisingProcessor(SpanProcessor):
    """A span processor that fails on every span's start or end."""

    def __init__(self, when: str, error: type[BaseException] = RuntimeError) -> None:
        self.when = when
        self.error = error
        self.raised = 0

    def _fail(self, when: str) -> None:
        if when == self.when:
            self.raised += 1
            raise self.error(f"processor broke on_{when}")

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._fail("start")

    def on_end(self, span: ReadableSpan) -> None:
        self._fail("end")


def telemetry_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "kernel_async" and "OpenTelemetry raised" in r.getMessage()
    ]


async def use_every_traced_path(kernel: AsyncKernel) -> None:
    """Create, run, follow, wait, map, a failed call: each must keep its outcome."""
    created = await kernel.invocations.create("demo-app", "echo", payload={"n": 1})
    assert created.status == "succeeded"
    assert created.output is not None
    run = await kernel.invocations.run("demo-app", "crawl", payload={"pages": 2})
    assert run.status == "succeeded"
    started = await kernel.invocations.create("demo-app", "crawl", payload={}, async_=True)
    async with kernel.invocations.follow(started.id) as events:
        seen = [event async for event in events]
    assert seen
    assert (await kernel.invocations.wait(started.id)).status == "succeeded"
    results = [r async for r in kernel.invocations.map("demo-app", "echo", range(3))]
    assert sorted(r.invocation.output or "" for r in results if r.invocation) == ["0", "1", "2"]
    with pytest.raises(NotFoundError):
        await kernel.invocations.retrieve("nope")


@pytest.mark.parametrize("when", ["start", "end"])
async def test_a_raising_span_processor_changes_no_outcome(
    emulator: KernelEmulator,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    when: str,
) -> None:
    processor = RaisingProcessor(when)
    caplog.set_level(logging.WARNING, "kernel_async")
    async with emulator.client(telemetry=traced(exporter, processor)) as kernel:
        await use_every_traced_path(kernel)
    assert processor.raised > 10
    (warning,) = telemetry_warnings(caplog)  # logged once, not per span
    assert warning.levelno == logging.WARNING
    assert "RuntimeError" in warning.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    if when == "end":  # the processors after the broken one never ran: no spans exported
        assert not exporter.get_finished_spans()


async def test_cancellation_goes_through_a_raising_processor(
    emulator: KernelEmulator, exporter: InMemorySpanExporter
) -> None:
    started = asyncio.Event()

    async def slow(ctx: Any, payload: Any) -> None:
        started.set()
        await asyncio.sleep(3600)

    emulator.add_action("demo-app", "slow", slow)
    async with emulator.client(telemetry=traced(exporter, RaisingProcessor("end"))) as kernel:
        task = asyncio.ensure_future(kernel.invocations.run("demo-app", "slow", timeout=None))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    # A processor that raises CancelledError itself is not swallowed either.
    cancelling = traced(exporter, RaisingProcessor("end", asyncio.CancelledError))
    async with emulator.client(telemetry=cancelling) as kernel:
        with pytest.raises(asyncio.CancelledError):
            await kernel.invocations.retrieve("nope")


class BrokenMeter(NoOpMeter):
    """A meter whose every instrument raises when used."""

    def create_counter(self, name: str, unit: str = "", description: str = "") -> Counter:
        return BrokenCounter(name)

    def create_up_down_counter(
        self, name: str, unit: str = "", description: str = ""
    ) -> UpDownCounter:
        return BrokenUpDownCounter(name)

    def create_histogram(
        self, name: str, unit: str = "", description: str = "", **_: Any
    ) -> Histogram:
        return BrokenHistogram(name)


def broken(*_: Any, **__: Any) -> None:
    raise ValueError("meter down")


class BrokenCounter(NoOpCounter):
    def add(
        self, amount: float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        broken()


class BrokenUpDownCounter(NoOpUpDownCounter):
    def add(
        self, amount: float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        broken()


class BrokenHistogram(NoOpHistogram):
    def record(
        self, amount: float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        broken()


class BrokenMeterProvider(NoOpMeterProvider):
    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> NoOpMeter:
        return BrokenMeter(name)


async def test_a_raising_meter_changes_no_outcome(
    emulator: KernelEmulator, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider, meter_provider=BrokenMeterProvider())
    caplog.set_level(logging.WARNING, "kernel_async")
    async with emulator.client(telemetry=telemetry) as kernel:
        await use_every_traced_path(kernel)
    (warning,) = telemetry_warnings(caplog)
    assert "ValueError" in warning.getMessage()
    # The spans are unharmed by the broken metrics.
    names = {span.name for span in exporter.get_finished_spans()}
    assert {"kernel.invocations.create", "kernel.invocations.run"} <= names
    assert "kernel.invocations.map" in names
