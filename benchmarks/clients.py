"""The clients compared, each doing the same operations against the canned server.

* ``kernel_async``: this SDK, default configuration (retry middleware on).
* ``kernel_async_otel``: the same with OpenTelemetry on (the SDK's tracer and meter
  providers, spans batched to an exporter that drops them): the cost of tracing.
* ``floor``: plain aiohttp + msgspec, no SDK layer: the least a client can do. It decodes
  into the same Structs, so the difference is the SDK's own overhead.
* ``official``: the official `kernel` SDK (httpx + pydantic), retries off.
* ``official_aiohttp``: the same SDK on its aiohttp backend (``kernel[aiohttp]``,
  ``DefaultAioHttpClient``): the fair peer of an aiohttp SDK.
* ``sse_client``: aiohttp-sse-client for the event stream, decoding each event with msgspec.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from kernel_async import AsyncKernel, Journal
from kernel_async.models import (
    InvocationStateEvent,
    event_decoder,
    invocation_decoder,
    invocation_list_decoder,
    invoke_response_decoder,
)

API_KEY = "sk_bench_0123456789"
ID = "rr33xuugxj9h0bkf1rdt2bet"
PAYLOAD = '{"data":"example input"}'
MAX_CONNECTIONS = 20_000  # more than any case opens: no client waits for a connection
MAP_ITEMS = 1000  # payloads per map() call
MAP_CONCURRENCY = 50


class Client:
    """The operations every client implements (those it cannot do raise NotImplemented)."""

    name = "base"
    operations: frozenset[str] = frozenset()

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        pass

    async def retrieve(self) -> None:
        raise NotImplementedError

    async def create(self) -> None:
        raise NotImplementedError

    async def create_done(self) -> None:
        """A synchronous create, answered finished."""
        raise NotImplementedError

    async def create_done_async(self) -> None:
        """An asynchronous create (``async_=True``), answered finished."""
        raise NotImplementedError

    async def list100(self) -> int:
        raise NotImplementedError

    async def follow(self, id: str = ID) -> int:
        """Follow a 10,000-event stream to its end; return the events seen."""
        raise NotImplementedError

    async def follow_burst(self) -> int:
        """The same, every event sharing one timestamp."""
        return await self.follow("burst")

    async def lifecycle(self) -> None:
        """Create an invocation asynchronously and follow it to its final state."""
        raise NotImplementedError

    async def hold(self) -> Any:
        """Open a stream, read its first event, and return something to close later."""
        raise NotImplementedError

    async def release(self, held: Any) -> None:
        raise NotImplementedError


ALL_OPS = frozenset(
    {
        "retrieve",
        "create",
        "create_done",
        "create_done_async",
        "list100",
        "follow",
        "follow_burst",
        "lifecycle",
        "hold",
    }
)
#: The app the canned server answers finished creates for.
DONE_APP = "done-app"


class KernelAsyncClient(Client):
    name = "kernel_async"
    operations = ALL_OPS | {"map", "map_journal", "map_journal_nofsync"}

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.kernel = AsyncKernel(API_KEY, base_url=url, connection_limit=MAX_CONNECTIONS)

    async def close(self) -> None:
        await self.kernel.aclose()

    async def retrieve(self) -> None:
        await self.kernel.invocations.retrieve(ID)

    async def create(self) -> None:
        await self.kernel.invocations.create("my-app", "analyze", payload=PAYLOAD, async_=True)

    async def create_done(self) -> None:
        await self.kernel.invocations.create(DONE_APP, "analyze", payload=PAYLOAD)

    async def create_done_async(self) -> None:
        await self.kernel.invocations.create(DONE_APP, "analyze", payload=PAYLOAD, async_=True)

    async def list100(self) -> int:
        page = await self.kernel.invocations.list(limit=100)
        return len(page.items)

    async def follow(self, id: str = ID) -> int:
        count = 0
        async for _ in self.kernel.invocations.follow(id):
            count += 1
        return count

    async def lifecycle(self) -> None:
        await self.kernel.invocations.run("my-app", "analyze", payload=PAYLOAD)

    async def map(self, journal: str | Journal | None = None) -> int:
        """One map() over `MAP_ITEMS` payloads (each create + follow); returns the items."""
        payloads = [{"i": i} for i in range(MAP_ITEMS)]
        results = self.kernel.invocations.map(
            "my-app", "analyze", payloads, concurrency=MAP_CONCURRENCY, journal=journal
        )
        async with results:
            return sum([1 async for r in results if r.ok])

    async def map_journal(self) -> int:
        """The same with a journal (a fresh file: every item is recorded three times)."""
        with tempfile.TemporaryDirectory() as folder:
            return await self.map(str(Path(folder) / "journal.db"))

    async def map_journal_nofsync(self) -> int:
        """The same with ``Journal(fsync=False)``."""
        with tempfile.TemporaryDirectory() as folder:
            return await self.map(Journal(Path(folder) / "journal.db", fsync=False))

    async def hold(self) -> Any:
        stream = self.kernel.invocations.follow("hold")
        await stream.__aenter__()
        await stream.__anext__()
        return stream

    async def release(self, held: Any) -> None:
        await held.aclose()


class KernelAsyncOtelClient(KernelAsyncClient):
    """kernel_async with telemetry on: spans (batched, then dropped) and metrics."""

    name = "kernel_async_otel"
    operations = frozenset({"retrieve", "create", "list100", "follow", "lifecycle"})

    def __init__(self, url: str) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from kernel_async.telemetry import Telemetry

        class Drop(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        Client.__init__(self, url)
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
        self.meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        telemetry = Telemetry(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )
        self.kernel = AsyncKernel(
            API_KEY, base_url=url, connection_limit=MAX_CONNECTIONS, telemetry=telemetry
        )

    async def close(self) -> None:
        await super().close()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


class FloorClient(Client):
    """aiohttp + msgspec, written as directly as possible."""

    name = "floor"
    operations = ALL_OPS

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self.headers = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"}
        self.json_headers = {**self.headers, "Content-Type": "application/json"}
        self.body = self.create_body("my-app", True)
        self.done_body = self.create_body(DONE_APP, False)
        self.done_async_body = self.create_body(DONE_APP, True)

    @staticmethod
    def create_body(app: str, async_: bool) -> bytes:
        return msgspec.json.encode(
            {
                "app_name": app,
                "action_name": "analyze",
                "version": "latest",
                "payload": PAYLOAD,
                "async": async_,
            }
        )

    async def post(self, body: bytes) -> None:
        async with self.session.post(
            f"{self.url}/invocations", data=body, headers=self.json_headers
        ) as r:
            invoke_response_decoder.decode(await r.read())

    async def close(self) -> None:
        await self.session.close()

    async def retrieve(self) -> None:
        async with self.session.get(f"{self.url}/invocations/{ID}", headers=self.headers) as r:
            invocation_decoder.decode(await r.read())

    async def create(self) -> None:
        await self.post(self.body)

    async def create_done(self) -> None:
        await self.post(self.done_body)

    async def create_done_async(self) -> None:
        await self.post(self.done_async_body)

    async def list100(self) -> int:
        async with self.session.get(
            f"{self.url}/invocations", params={"limit": "100"}, headers=self.headers
        ) as r:
            items = invocation_list_decoder.decode(await r.read())
            r.headers.get("X-Has-More")
            return len(items)

    async def follow(self, id: str = ID) -> int:
        count = 0
        async with self.session.get(
            f"{self.url}/invocations/{id}/events", headers=self.headers
        ) as r:
            buffer = b""
            async for chunk in r.content.iter_any():
                buffer += chunk
                *frames, buffer = buffer.split(b"\n\n")
                for frame in frames:
                    if frame.startswith(b"data: "):
                        event = event_decoder.decode(frame[6:])
                        count += 1
                        if isinstance(event, InvocationStateEvent):
                            return count
        return count

    async def lifecycle(self) -> None:
        async with self.session.post(
            f"{self.url}/invocations", data=self.body, headers=self.json_headers
        ) as r:
            created = invoke_response_decoder.decode(await r.read())
        await self.follow(created.id)

    async def hold(self) -> Any:
        response = await self.session.get(
            f"{self.url}/invocations/hold/events", headers=self.headers
        )
        await response.content.readany()
        return response

    async def release(self, held: Any) -> None:
        held.close()


class OfficialClient(Client):
    """The official `kernel` SDK, retries off."""

    name = "official"
    operations = ALL_OPS

    def __init__(self, url: str) -> None:
        super().__init__(url)
        import httpx
        import kernel

        limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=100)
        # A long timeout: opening 10,000 streams at once takes it minutes, not a failure.
        self.client = kernel.AsyncKernel(
            api_key=API_KEY,
            base_url=url,
            max_retries=0,
            timeout=600,
            http_client=self.http_client(limits),
        )

    def http_client(self, limits: Any) -> Any:
        import kernel

        return kernel.DefaultAsyncHttpxClient(limits=limits)

    async def close(self) -> None:
        await self.client.close()

    async def retrieve(self) -> None:
        await self.client.invocations.retrieve(ID)

    async def create(self) -> None:
        await self.client.invocations.create(
            app_name="my-app", action_name="analyze", version="latest", payload=PAYLOAD, async_=True
        )

    async def create_done(self) -> None:
        await self.client.invocations.create(
            app_name=DONE_APP, action_name="analyze", version="latest", payload=PAYLOAD
        )

    async def create_done_async(self) -> None:
        await self.client.invocations.create(
            app_name=DONE_APP, action_name="analyze", version="latest", payload=PAYLOAD, async_=True
        )

    async def list100(self) -> int:
        page = await self.client.invocations.list(limit=100)
        return len(page.items)

    async def follow(self, id: str = ID) -> int:
        count = 0
        stream = await self.client.invocations.follow(id)
        async for _ in stream:
            count += 1
        return count

    async def lifecycle(self) -> None:
        created = await self.client.invocations.create(
            app_name="my-app", action_name="analyze", version="latest", payload=PAYLOAD, async_=True
        )
        stream = await self.client.invocations.follow(created.id)
        async for event in stream:
            if event.event == "invocation_state" and event.invocation.status == "succeeded":
                break
        await stream.close()

    async def hold(self) -> Any:
        stream = await self.client.invocations.follow("hold")
        await stream.__anext__()
        return stream

    async def release(self, held: Any) -> None:
        await held.close()


class OfficialAioHttpClient(OfficialClient):
    """The official SDK on its aiohttp backend (``kernel[aiohttp]``), retries off."""

    name = "official_aiohttp"

    def http_client(self, limits: Any) -> Any:
        import kernel

        return kernel.DefaultAioHttpClient(limits=limits)


class SSEClientClient(Client):
    """aiohttp-sse-client (follow only), each event decoded with msgspec."""

    name = "sse_client"
    operations = frozenset({"follow", "follow_burst", "hold"})

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS))
        self.headers = {"Authorization": f"Bearer {API_KEY}"}

    async def close(self) -> None:
        await self.session.close()

    def _source(self, id: str) -> Any:
        from aiohttp_sse_client import client as sse_client

        return sse_client.EventSource(
            f"{self.url}/invocations/{id}/events", session=self.session, headers=self.headers
        )

    async def follow(self, id: str = ID) -> int:
        count = 0
        async with self._source(id) as source:
            async for message in source:
                event = event_decoder.decode(message.data)
                count += 1
                if isinstance(event, InvocationStateEvent):
                    break
        return count

    async def hold(self) -> Any:
        source = self._source("hold")
        await source.__aenter__()
        await source.__anext__()
        return source

    async def release(self, held: Any) -> None:
        with contextlib.suppress(Exception):
            await held.__aexit__(None, None, None)


CLIENTS: dict[str, type[Client]] = {
    c.name: c
    for c in (
        KernelAsyncClient,
        KernelAsyncOtelClient,
        FloorClient,
        OfficialAioHttpClient,
        OfficialClient,
        SSEClientClient,
    )
}
