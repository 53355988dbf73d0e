"""OpenTelemetry: the spans, events, attributes and metrics of what the client did, from real
runs against the emulator with faults and limits on; nothing at all when it is off."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.instrumentation.aiohttp_client import (
    AioHttpClientInstrumentor,
    create_trace_config,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from kernel_async import AsyncKernel, NotFoundError
from kernel_async.telemetry import Telemetry
from kernel_async.testing import KernelEmulator, Quotas
from kernel_async.testing.demo import install_demo_actions

SECRET = "PAYLOAD-MARKER-7f3a"


@dataclass
class Recorded:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def telemetry(self, **options: Any) -> Telemetry:
        return Telemetry(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **options
        )

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], float]]]:
        """Each metric's data points: (attributes, value, or count for histograms)."""
        found: dict[str, list[tuple[dict[str, Any], float]]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = [
                        (dict(p.attributes or {}), getattr(p, "value", getattr(p, "count", 0)))
                        for p in metric.data.data_points
                    ]
        return found

    def total(self, metric: str, **where: Any) -> float:
        """The sum of a metric's points whose attributes match ``where`` (keys spelt with
        ``__`` for dots: ``kernel__operation="create"``)."""
        match = {k.replace("__", "."): v for k, v in where.items()}
        return sum(
            value
            for attributes, value in self.metrics().get(metric, [])
            if all(attributes.get(k) == v for k, v in match.items())
        )


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Recorded(exporter, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


@pytest.fixture
async def emulator() -> AsyncIterator[KernelEmulator]:
    emulator = KernelEmulator(
        heartbeat_interval=0.5,
        quotas=Quotas(max_running_per_app=2, requests_per_window=40, window=0.25),
    )
    install_demo_actions(emulator, seed=3)
    async with emulator:
        yield emulator


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


async def test_a_fan_out_under_faults_and_limits_is_traced(
    emulator: KernelEmulator, recorded: Recorded
) -> None:
    emulator.faults.cut_stream(after_events=2)  # one stream resumes, replaying what it had
    emulator.faults.fail(503, method="GET", path="/invocations/*")  # a retried connect
    emulator.faults.rate_limit(retry_after=0.05, method="POST")  # one rate-limit 429
    async with emulator.client(telemetry=recorded.telemetry()) as kernel:
        finals = await asyncio.gather(
            *(kernel.invocations.run("demo-app", "crawl", payload={"pages": 2}) for _ in range(6))
        )
    assert {inv.status for inv in finals} == {"succeeded"}
    spans = recorded.spans()

    runs = recorded.spans("kernel.invocations.run")
    assert len(runs) == 6
    assert {attrs(r)["kernel.invocation.id"] for r in runs} == {inv.id for inv in finals}
    for run in runs:
        assert run.kind is SpanKind.INTERNAL
        attributes = dict(run.attributes or {})
        assert attributes["kernel.app.name"] == "demo-app"
        assert attributes["kernel.action.name"] == "crawl"
        assert attributes["kernel.app.version"] == "latest"
        assert attributes["kernel.invocation.status"] == "succeeded"
        assert attributes["kernel.invocation.status_reason"]
        names = sorted(s.name for s in children(spans, run))
        assert names == ["kernel.invocations.create", "kernel.invocations.follow"]

    creates = recorded.spans("kernel.invocations.create")
    assert all(c.kind is SpanKind.CLIENT for c in creates)
    assert all(attrs(c)["http.request.method"] == "POST" for c in creates)
    assert all(attrs(c)["url.full"] == emulator.url + "/invocations" for c in creates)
    # Two run at once: the others queued for admission, and the service's 429s were absorbed.
    waits = [e for c in creates for e in events(c, "kernel.admission.wait")]
    assert waits
    assert all(e["kernel.wait.seconds"] >= 0 for e in waits)
    assert max(e["kernel.wait.seconds"] for e in waits) > 0.05
    assert all(e["kernel.app.name"] == "demo-app" for e in waits)
    rate = [e for c in creates for e in events(c, "kernel.rate_limited")]
    assert {"kernel.rate_limit.kind": "rate", "kernel.retry_after.seconds": 0.05} in rate
    assert [e for c in creates for e in events(c, "kernel.rate_limit.wait")]

    follows = recorded.spans("kernel.invocations.follow")
    resumed = [f for f in follows if attrs(f)["kernel.stream.resumes"]]
    assert len(resumed) == 1
    (resume,) = events(resumed[0], "kernel.stream.resume")
    assert resume["kernel.stream.resume.cause"] == "ClientPayloadError"
    assert resume["kernel.stream.resume.attempt"] == 1
    (replayed,) = events(resumed[0], "kernel.stream.replayed")
    assert replayed["kernel.stream.events_replayed"] >= 1
    assert (
        attrs(resumed[0])["kernel.stream.events_replayed"]
        == (replayed["kernel.stream.events_replayed"])
    )
    (retried,) = [e for f in follows for e in events(f, "kernel.retry")]
    assert retried["kernel.retry.attempt"] == 1
    assert retried["kernel.retry.reason"] == "503"
    assert retried["kernel.wait.seconds"] > 0
    assert all(attrs(f)["http.response.status_code"] == 200 for f in follows)
    assert sum(attrs(f)["kernel.stream.events"] for f in follows) == 6 * 5

    assert (
        recorded.total("kernel.client.call.duration", kernel__operation="create", outcome="ok") == 6
    )
    assert (
        recorded.total("kernel.client.call.duration", kernel__operation="follow", outcome="ok") == 6
    )
    assert recorded.total("kernel.client.retries", kernel__retry__reason="503") == 1
    rate_limited = 1 + emulator.quotas.stats.rate_rejected  # the fault, and the quota's
    assert (
        recorded.total("kernel.client.rate_limited", kernel__rate_limit__kind="rate")
        == rate_limited
    )
    concurrency = emulator.quotas.stats.concurrency_rejected
    assert concurrency >= 1
    assert (
        recorded.total("kernel.client.rate_limited", kernel__rate_limit__kind="concurrency")
        == concurrency
    )
    assert recorded.total("kernel.client.wait.duration", kernel__wait__kind="admission") == len(
        waits
    )
    assert recorded.total("kernel.client.stream.resumes") == 1
    assert recorded.total("kernel.client.stream.events") == 6 * 5
    assert recorded.total("kernel.client.streams.open") == 0  # every one ended
    assert recorded.total("kernel.client.invocations", kernel__invocation__status="succeeded") == 6


async def test_a_stream_dropped_without_closing_ends_its_span(
    emulator: KernelEmulator, recorded: Recorded
) -> None:
    async with emulator.client(telemetry=recorded.telemetry()) as kernel:
        created = await kernel.invocations.create(
            "demo-app", "crawl", payload={"pages": 500}, async_=True
        )
        read_once = kernel.invocations.follow(created.id)
        await read_once.__anext__()  # connected, then forgotten mid-stream
        never_read = kernel.invocations.follow(created.id)
        assert recorded.total("kernel.client.streams.open") == 2
        del read_once, never_read
        gc.collect()
        await asyncio.sleep(0)  # the spans end from the event loop, not the collector
        follows = recorded.spans("kernel.invocations.follow")
        assert len(follows) == 2
        assert all(attrs(s)["kernel.stream.abandoned"] is True for s in follows)
        assert recorded.total("kernel.client.streams.open") == 0
        await kernel.invocations.cancel(created.id)


async def test_map_items_are_lifecycles_under_the_map_span(
    emulator: KernelEmulator, recorded: Recorded
) -> None:
    payloads = [{"fail": False}, {"fail": True}, {"fail": False}]
    async with emulator.client(telemetry=recorded.telemetry()) as kernel:
        async with kernel.invocations.map("demo-app", "flaky", payloads) as results:
            outcomes = {r.index: r.ok async for r in results}
    assert outcomes == {0: True, 1: False, 2: True}
    (span,) = recorded.spans("kernel.invocations.map")
    assert attrs(span)["kernel.map.results"] == 3
    items = children(recorded.spans(), span)
    assert sorted(attrs(i)["kernel.map.index"] for i in items) == [0, 1, 2]
    failed = next(i for i in items if attrs(i)["kernel.map.index"] == 1)
    assert attrs(failed)["kernel.invocation.status"] == "failed"
    assert failed.status.status_code is StatusCode.ERROR
    assert attrs(failed)["kernel.invocation.status_reason"] in (failed.status.description or "")
    assert not recorded.spans("kernel.invocations.wait")  # the item's span is its lifecycle
    assert recorded.total("kernel.client.invocations", kernel__invocation__status="failed") == 1


async def test_calls_and_failures_are_spans_with_http_attributes(
    emulator: KernelEmulator, recorded: Recorded
) -> None:
    async with emulator.client(telemetry=recorded.telemetry()) as kernel:
        created = await kernel.invocations.create("demo-app", "echo", payload={"a": 1})
        await kernel.invocations.wait(created.id)
        await kernel.invocations.retrieve(created.id)
        await kernel.invocations.list(limit=5)
        with pytest.raises(NotFoundError):
            await kernel.invocations.retrieve("nope")
    (create,) = recorded.spans("kernel.invocations.create")
    assert attrs(create)["kernel.invocation.id"] == created.id
    (wait,) = recorded.spans("kernel.invocations.wait")
    assert attrs(wait)["kernel.invocation.status"] == "succeeded"
    assert [s.name for s in children(recorded.spans(), wait)] == ["kernel.invocations.follow"]
    ok, missing = recorded.spans("kernel.invocations.retrieve")
    assert attrs(ok)["http.response.status_code"] == 200
    assert attrs(ok)["server.address"] == "127.0.0.1"
    assert missing.status.status_code is StatusCode.ERROR
    assert attrs(missing)["error.type"] == "404"
    assert attrs(missing)["http.response.status_code"] == 404
    assert [e.name for e in missing.events] == ["exception"]
    (page,) = recorded.spans("kernel.invocations.list")
    assert "?" not in str(attrs(page)["url.full"])  # the query may hold default_query
    assert (
        recorded.total("kernel.client.call.duration", kernel__operation="retrieve", outcome="error")
        == 1
    )
    assert recorded.total("kernel.client.call.duration", error__type="404") == 1


def everything(recorded: Recorded) -> str:
    """All that was recorded, as text."""
    parts: list[str] = []
    for span in recorded.spans():
        parts += [span.name, repr(dict(span.attributes or {})), str(span.status.description)]
        parts += [e.name + repr(dict(e.attributes or {})) for e in span.events]
    parts.append(repr(recorded.metrics()))
    return "\n".join(parts)


async def test_no_key_payload_or_output_is_recorded_unless_asked(
    emulator: KernelEmulator, recorded: Recorded
) -> None:
    emulator.faults.fail(502, method="GET")
    async with emulator.client(telemetry=recorded.telemetry()) as kernel:
        inv = await kernel.invocations.run("demo-app", "echo", payload={"s": SECRET})
        assert SECRET in (inv.output or "")
        with pytest.raises(NotFoundError):
            await kernel.invocations.retrieve("missing")
    text = everything(recorded)
    assert "kernel.invocations.run" in text
    assert emulator.api_key not in text
    assert "Bearer" not in text
    assert "Authorization" not in text
    assert SECRET not in text

    recorded.exporter.clear()
    async with emulator.client(telemetry=recorded.telemetry(record_payloads=True)) as kernel:
        await kernel.invocations.run("demo-app", "echo", payload={"s": SECRET})
    (run,) = recorded.spans("kernel.invocations.run")
    assert SECRET in str(attrs(run)["kernel.invocation.payload"])
    assert SECRET in str(attrs(run)["kernel.invocation.output"])
    assert emulator.api_key not in everything(recorded)


async def test_off_records_nothing_and_imports_nothing(emulator: KernelEmulator) -> None:
    code = (
        "import asyncio, sys\n"
        "from kernel_async import AsyncKernel\n"
        "async def main():\n"
        f"    async with AsyncKernel(api_key={emulator.api_key!r},\n"
        f"                           base_url={emulator.url!r}) as k:\n"
        "        inv = await k.invocations.run('demo-app', 'echo', payload=1)\n"
        "        assert inv.status == 'succeeded'\n"
        "asyncio.run(main())\n"
        "assert 'kernel_async.telemetry' not in sys.modules\n"
        "assert not any(m.startswith('opentelemetry') for m in sys.modules)\n"
    )
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


async def test_true_uses_the_global_providers(emulator: KernelEmulator) -> None:
    code = (
        "import asyncio\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
        "from kernel_async import AsyncKernel\n"
        "exporter = InMemorySpanExporter(); provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(exporter))\n"
        "trace.set_tracer_provider(provider)\n"
        "async def main(telemetry):\n"
        f"    async with AsyncKernel(api_key={emulator.api_key!r}, base_url={emulator.url!r},\n"
        "                           telemetry=telemetry) as k:\n"
        "        await k.invocations.list(limit=1)\n"
        "asyncio.run(main(False))\n"
        "assert exporter.get_finished_spans() == ()\n"
        "asyncio.run(main(True))\n"
        "print(*[s.name for s in exporter.get_finished_spans()])\n"
    )
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["kernel.invocations.list"]


def test_a_bad_telemetry_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="telemetry must be"):
        AsyncKernel(api_key="k", telemetry="yes")  # type: ignore[arg-type]


def http_spans(recorded: Recorded) -> list[ReadableSpan]:
    return [s for s in recorded.spans() if not s.name.startswith("kernel.")]


def assert_nested(recorded: Recorded, invocation_id: str) -> None:
    spans = recorded.spans()
    by_id = {s.context.span_id: s for s in spans}
    parents = Counter(
        by_id[s.parent.span_id].name for s in http_spans(recorded) if s.parent is not None
    )
    # One HTTP span per request (retries inside it), under the call or stream that made it.
    assert parents == {
        "kernel.invocations.create": 1,
        "kernel.invocations.follow": 2,  # the stream was cut once: two connections
        "kernel.invocations.retrieve": 1,
    }
    assert all(s.parent is not None for s in http_spans(recorded))
    (run,) = recorded.spans("kernel.invocations.run")
    assert attrs(run)["kernel.invocation.id"] == invocation_id
    assert {s.context.trace_id for s in spans} == {
        run.context.trace_id,
        *(s.context.trace_id for s in recorded.spans("kernel.invocations.retrieve")),
    }


async def traced_run(kernel: AsyncKernel) -> str:
    inv = await kernel.invocations.run("demo-app", "crawl", payload={"pages": 2})
    await kernel.invocations.retrieve(inv.id)
    return inv.id


async def test_aiohttp_instrumentation_nests_under_ours(
    emulator: KernelEmulator, recorded: Recorded
) -> None:
    emulator.faults.cut_stream(after_events=2)
    instrumentor = AioHttpClientInstrumentor()
    instrumentor.instrument(tracer_provider=recorded.tracer_provider)
    try:
        async with emulator.client(telemetry=recorded.telemetry()) as kernel:
            invocation_id = await traced_run(kernel)
    finally:
        instrumentor.uninstrument()
    assert_nested(recorded, invocation_id)


async def test_aiohttp_instrumentation_of_a_session_passed_in_nests_under_ours(
    emulator: KernelEmulator, recorded: Recorded
) -> None:
    emulator.faults.cut_stream(after_events=2)
    config = create_trace_config(tracer_provider=recorded.tracer_provider)
    async with aiohttp.ClientSession(trace_configs=[config]) as session:
        async with emulator.client(session=session, telemetry=recorded.telemetry()) as kernel:
            invocation_id = await traced_run(kernel)
    assert_nested(recorded, invocation_id)
