"""Tracing: what the client did for a fan-out, as OpenTelemetry spans.

Twelve invocations through ``map()`` under a cap of three running per app, with a rate
limit and a stream cut mid-way (on the embedded emulator; on the real API with
``KERNEL_API_KEY`` set, minus the faults). The spans are kept in memory and printed as a
tree: each invocation's lifecycle, its create (with the time it queued for a slot and the
429s absorbed) and its event stream (with the resume). ``--console`` prints every span as
JSON with the SDK's ``ConsoleSpanExporter`` instead; ``--png`` also draws the timeline.

Packages: ``pip install ".[otel]" opentelemetry-sdk`` in a clone of the repository (the
``otel`` extra is the API only; the SDK records and exports the spans), and ``matplotlib``
for ``--png``.

    python examples/telemetry.py
    python examples/telemetry.py --console
    python examples/telemetry.py --png trace.png
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kernel_async import AsyncKernel
from kernel_async.telemetry import Telemetry
from kernel_async.testing import KernelEmulator, Quotas
from kernel_async.testing.demo import install_demo_actions

N = 12


@asynccontextmanager
async def traced_client(telemetry: Telemetry) -> AsyncIterator[AsyncKernel]:
    """The real API when ``KERNEL_API_KEY`` is set; else the emulator, with limits and
    faults that give the trace something to show."""
    if os.environ.get("KERNEL_API_KEY"):
        async with AsyncKernel(telemetry=telemetry) as kernel:
            yield kernel
        return
    quotas = Quotas(max_running_per_app=3, requests_per_window=40, window=0.5)
    emulator = KernelEmulator(heartbeat_interval=1.0, quotas=quotas, seed=7)
    install_demo_actions(emulator, seed=7)
    emulator.faults.cut_stream(after_events=3)  # one stream drops mid-way and resumes
    emulator.faults.rate_limit(retry_after=0.1, method="POST")  # one rate-limit 429
    async with emulator, emulator.client(telemetry=telemetry) as kernel:
        yield kernel


async def main(n: int = N, *, console: bool = False) -> list[ReadableSpan]:
    """Run the fan-out with tracing on; return the finished spans, oldest first
    (``console``: also print each span as it ends)."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    if console:
        tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    telemetry = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    async with traced_client(telemetry) as kernel:
        payloads = [{"pages": 2 + i % 2} for i in range(n)]
        async with kernel.invocations.map("demo-app", "crawl", payloads) as results:
            async for result in results:
                assert result.ok, result.error
    tracer_provider.shutdown()
    return sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)


def tree(spans: Sequence[ReadableSpan]) -> list[str]:
    """The spans as an indented tree, times in ms from the first, events under each."""
    t0 = min(s.start_time or 0 for s in spans)
    kids: dict[int | None, list[ReadableSpan]] = {}
    ids = {s.context.span_id for s in spans}
    for span in spans:
        parent = span.parent.span_id if span.parent and span.parent.span_id in ids else None
        kids.setdefault(parent, []).append(span)
    lines: list[str] = []

    def ms(ns: int | None) -> float:
        return ((ns or t0) - t0) / 1e6

    def walk(span: ReadableSpan, depth: int) -> None:
        attributes = dict(span.attributes or {})
        shown = [
            f"{key.rsplit('.', 1)[-1]}={attributes[key]}"
            for key in ("kernel.map.index", "kernel.invocation.status", "kernel.stream.events")
            if key in attributes
        ]
        lines.append(
            f"{ms(span.start_time):7.1f} → {ms(span.end_time):7.1f} ms  "
            f"{'  ' * depth}{span.name.removeprefix('kernel.invocations.')} {' '.join(shown)}"
        )
        for event in span.events:
            details = " ".join(
                f"{key.rsplit('.', 1)[-1]}={value:.3f}"
                if isinstance(value, float)
                else f"{key.rsplit('.', 1)[-1]}={value}"
                for key, value in (event.attributes or {}).items()
                if key != "kernel.app.name"
            )
            lines.append(
                f"{ms(event.timestamp):7.1f} ms{' ' * 12}{'  ' * depth}"
                f"· {event.name.removeprefix('kernel.')} {details}"
            )
        for child in kids.get(span.context.span_id, []):
            walk(child, depth + 1)

    for root in kids.get(None, []):
        walk(root, 0)
    return lines


def draw(spans: Sequence[ReadableSpan], path: Path) -> None:
    """A timeline of the map's items: lifecycle, admission wait, create, stream, events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    t0 = min(s.start_time or 0 for s in spans)

    def sec(ns: int | None) -> float:
        return ((ns or t0) - t0) / 1e9

    runs = sorted(
        (s for s in spans if s.name == "kernel.invocations.run"),
        key=lambda s: int((s.attributes or {}).get("kernel.map.index", 0)),  # type: ignore[arg-type]
    )
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(runs) + 1.6), dpi=110)
    colors = {
        "life": "#e5e7eb",
        "create": "#3b82f6",
        "follow": "#10b981",
        "admission": "#f59e0b",
        "rate_limit": "#fde047",
        "resume": "#c4b5fd",
    }
    for row, run in enumerate(runs):
        ax.barh(row, sec(run.end_time) - sec(run.start_time), left=sec(run.start_time),
                height=0.7, color=colors["life"])  # fmt: skip
        for child in (s for s in spans if s.parent and s.parent.span_id == run.context.span_id):
            kind = child.name.rsplit(".", 1)[-1]
            start, end = sec(child.start_time), sec(child.end_time)
            ax.barh(row, end - start, left=start, height=0.4, color=colors.get(kind, "grey"))
            for event in child.events:
                at = sec(event.timestamp)
                attributes = dict(event.attributes or {})
                seconds = float(attributes.get("kernel.wait.seconds", 0.0))  # type: ignore[arg-type]
                if event.name.endswith(".wait"):  # reported when over: it began earlier
                    kind = str(attributes["kernel.wait.kind"])
                    ax.barh(row, seconds, left=at - seconds, height=0.4, color=colors[kind])
                elif event.name == "kernel.rate_limited":
                    ax.plot(at, row + 0.3, marker="v", color="#dc2626", markersize=7)
                elif event.name == "kernel.stream.resume":  # reported before its backoff
                    ax.barh(row, seconds, left=at, height=0.4, color=colors["resume"])
                    ax.plot(at, row, marker="X", color="#7c3aed", markersize=9)
    ax.set_yticks(range(len(runs)), [f"item {i}" for i in range(len(runs))])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("map() of 12 invocations: cap 3 per app, a rate limit, a cut stream")
    handles = [
        Rectangle((0, 0), 1, 1, color=colors["life"], label="lifecycle (run)"),
        Rectangle((0, 0), 1, 1, color=colors["create"], label="create"),
        Rectangle((0, 0), 1, 1, color=colors["admission"], label="queued for a slot"),
        Rectangle((0, 0), 1, 1, color=colors["rate_limit"], label="rate-limit wait"),
        Rectangle((0, 0), 1, 1, color=colors["follow"], label="follow (stream)"),
        Rectangle((0, 0), 1, 1, color=colors["resume"], label="resume backoff"),
        Line2D([], [], marker="v", color="#dc2626", ls="", label="429 absorbed"),
        Line2D([], [], marker="X", color="#7c3aed", ls="", label="stream dropped"),
    ]
    ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.95)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", type=Path, help="also draw the timeline to this file")
    parser.add_argument("--console", action="store_true", help="print the spans as JSON")
    args = parser.parse_args()
    finished = asyncio.run(main(console=args.console))
    if not args.console:
        print("\n".join(tree(finished)))
    if args.png:
        draw(finished, args.png)
        print(f"timeline: {args.png}")
