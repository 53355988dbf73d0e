"""The relay examples under load, as a web backend runs them: a few hundred viewers against
the emulator, some hanging up on quiet invocations, and the server stopping with streams
open. No ERROR is logged, a departure cancels its invocation (and closes its upstream
stream) without waiting for another event, and shutdown ends every stream at once."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from examples import aiohttp_relay
from kernel_async import Limits
from kernel_async.testing import KernelEmulator
from kernel_async.testing.demo import install_demo_actions

ROOT = Path(__file__).resolve().parent.parent
STAYERS, LEAVERS = 200, 100
#: A bound for what should take well under a second; only ever reached when it is broken.
PATIENCE = 10.0
#: The last line a quiet invocation sends: after it, only heartbeats (never relayed).
QUIET = "started; nothing more for an hour"


@dataclass
class Gate:
    """Holds the emulator's answers to creates (once processed) until opened."""

    closed: bool = False
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.closed and request.method == "POST" and request.path == "/invocations":
            await self.opened.wait()


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
async def emulator(gate: Gate) -> AsyncIterator[KernelEmulator]:
    emulator = KernelEmulator(heartbeat_interval=0.5)
    install_demo_actions(emulator, seed=7)
    emulator.app.on_response_prepare.append(gate)

    async def quiet(ctx: Any, payload: Any) -> None:
        ctx.log(QUIET)
        await asyncio.sleep(3600)

    emulator.add_action("demo-app", "quiet", quiet)
    async with emulator:
        yield emulator


@dataclass
class Viewer:
    """A browser's view of one relay: the lines and events it got."""

    lines: list[str] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status: int = 0


async def watch(
    session: aiohttp.ClientSession,
    url: str,
    *,
    leave_on: str | None = None,
    headers: dict[str, str] | None = None,
) -> Viewer:
    """Open ``url`` as an EventSource would; hang up once the line ``leave_on`` came."""
    viewer = Viewer()
    async with session.get(url, headers=headers) as resp:
        viewer.status = resp.status
        event = "message"
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                viewer.events.append((event, data))
                if event == "message":
                    viewer.lines.append(data["line"])
                event = "message"
                if leave_on is not None and viewer.lines[-1:] == [leave_on]:
                    resp.close()  # the viewer hangs up
                    break
    return viewer


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + PATIENCE
    while not condition():
        assert loop.time() < give_up, f"still not: {what}"
        await asyncio.sleep(0.02)


def statuses(emulator: KernelEmulator, action: str) -> list[str]:
    return [inv.status for inv in emulator.snapshot() if inv.action_name == action]


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors


async def crowd(
    session: aiohttp.ClientSession, base: str, emulator: KernelEmulator
) -> tuple[list[Viewer], list[Viewer]]:
    """STAYERS viewers watch a crawl to its end while LEAVERS hang up on quiet invocations
    after the first line; each departure must cancel its invocation (the quiet action
    never sends another event), or the staying viewers would wait for slots for ever."""
    stayers = [asyncio.ensure_future(watch(session, f"{base}/run/crawl")) for _ in range(STAYERS)]
    leavers = [
        asyncio.ensure_future(watch(session, f"{base}/run/quiet", leave_on=QUIET))
        for _ in range(LEAVERS)
    ]
    left = await asyncio.gather(*leavers)
    await eventually(
        lambda: statuses(emulator, "quiet") == ["failed"] * LEAVERS,
        "every departed viewer's invocation cancelled",
    )
    stayed = await asyncio.gather(*stayers)
    return stayed, left


def assert_served(stayed: list[Viewer], left: list[Viewer]) -> None:
    for viewer in stayed:
        assert viewer.status == 200
        assert "visiting page 3/3" in viewer.lines
        assert viewer.lines[-1] == "[succeeded]"
        assert viewer.events[-1] == ("done", {})
    assert all(viewer.lines[-1] == QUIET for viewer in left)


# --- aiohttp.web ---------------------------------------------------------------------------


@dataclass
class Served:
    app: web.Application
    runner: web.AppRunner
    url: str


async def serve_aiohttp(
    emulator: KernelEmulator, *, handler_cancellation: bool = False, **client_options: Any
) -> Served:
    app = aiohttp_relay.make_app(api_key=emulator.api_key, base_url=emulator.url, **client_options)
    runner = web.AppRunner(app, handler_cancellation=handler_cancellation)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return Served(app, runner, f"http://{host}:{port}")


async def test_aiohttp_relay_under_a_crowd_with_departures(
    emulator: KernelEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    served = await serve_aiohttp(emulator)
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            stayed, left = await crowd(session, served.url, emulator)
        viewers = served.app[aiohttp_relay.VIEWERS]
        await eventually(lambda: len(viewers) == 0, "every relay handler returned")
    finally:
        await served.runner.cleanup()
    assert_served(stayed, left)
    assert emulator.create_count == STAYERS + LEAVERS  # each viewer started exactly one
    no_errors_logged(caplog)


async def test_aiohttp_relay_with_handler_cancellation_cancels_on_departure(
    emulator: KernelEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    # aiohttp cancels the handler itself when its client leaves: same outcome, no error.
    served = await serve_aiohttp(emulator, handler_cancellation=True)
    viewers = served.app[aiohttp_relay.VIEWERS]
    try:
        async with aiohttp.ClientSession() as session:
            left = await asyncio.gather(
                *(watch(session, f"{served.url}/run/quiet", leave_on=QUIET) for _ in range(5))
            )
        await eventually(lambda: statuses(emulator, "quiet") == ["failed"] * 5, "all cancelled")
        await eventually(lambda: len(viewers) == 0, "every relay handler returned")
    finally:
        await served.runner.cleanup()
    assert all(viewer.lines[-1] == QUIET for viewer in left)
    no_errors_logged(caplog)


async def test_aiohttp_relay_starts_nothing_for_a_viewer_who_left_while_queued(
    emulator: KernelEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    served = await serve_aiohttp(emulator, limits=Limits(max_running_per_app=2))
    viewers = served.app[aiohttp_relay.VIEWERS]
    try:
        async with aiohttp.ClientSession() as session:
            holders = [
                asyncio.ensure_future(watch(session, f"{served.url}/run/quiet")) for _ in range(2)
            ]
            await eventually(lambda: emulator.create_count == 2, "both slots taken")
            # A third viewer: its create queues on the client (the app is at 2); it leaves.
            async with session.get(f"{served.url}/run/quiet") as resp:
                assert resp.status == 200
                await eventually(lambda: len(viewers) == 3, "the third relay open")
                resp.close()  # the viewer hangs up
            await eventually(lambda: len(viewers) == 2, "the third relay noticed its departure")
            for holder in holders:  # the first two hang up too
                holder.cancel()
            await asyncio.wait(holders)
            await eventually(lambda: len(viewers) == 0, "the holders' relays ended")
            # A browser reconnecting (Last-Event-ID) is told to stop, and starts nothing.
            again = await watch(
                session, f"{served.url}/run/quiet", headers={"Last-Event-ID": "inv"}
            )
            assert again.status == 204
    finally:
        await served.runner.cleanup()
    assert emulator.create_count == 2  # nothing was sent for the viewer who left
    assert statuses(emulator, "quiet") == ["failed", "failed"]
    no_errors_logged(caplog)


async def test_aiohttp_relay_cancels_what_a_create_in_flight_started(
    emulator: KernelEmulator, gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    gate.closed = True  # the emulator starts the invocation, its answer waits
    served = await serve_aiohttp(emulator)
    viewers = served.app[aiohttp_relay.VIEWERS]
    try:
        await viewer_leaves_while_its_create_is_in_flight(served.url, emulator, gate)
        await eventually(lambda: len(viewers) == 0, "the relay noticed its viewer left")
        gate.opened.set()
        await eventually(
            lambda: statuses(emulator, "quiet") == ["failed"], "the landed create cancelled"
        )
    finally:
        await served.runner.cleanup()
    no_errors_logged(caplog)


async def viewer_leaves_while_its_create_is_in_flight(
    url: str, emulator: KernelEmulator, gate: Gate
) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/run/quiet") as resp:
        assert resp.status == 200
        await eventually(lambda: statuses(emulator, "quiet") == ["running"], "it was created")
        resp.close()  # the viewer hangs up before the relay knows the invocation's id


async def test_aiohttp_relay_stops_promptly_on_shutdown(
    emulator: KernelEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    served = await serve_aiohttp(emulator)
    async with aiohttp.ClientSession() as session:
        watching = [
            asyncio.ensure_future(watch(session, f"{served.url}/run/quiet")) for _ in range(20)
        ]
        await eventually(lambda: len(emulator.snapshot()) == 20, "20 invocations started")
        await eventually(
            lambda: all(emulator.log_lines(inv.id) for inv in emulator.snapshot()),
            "every invocation logged its line",
        )
        # The server stops (as on Ctrl-C); its 60 s shutdown_timeout is never needed.
        await asyncio.wait_for(served.runner.cleanup(), PATIENCE)
        viewers = await asyncio.wait_for(asyncio.gather(*watching), PATIENCE)
    for viewer in viewers:
        assert viewer.events[-1] == ("done", {"reason": "server stopping"})
    assert statuses(emulator, "quiet") == ["failed"] * 20  # nobody can watch them any more
    no_errors_logged(caplog)


# --- Starlette under uvicorn ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Uvicorn:
    """``uvicorn examples.starlette_relay:app``, as documented, in a subprocess."""

    process: asyncio.subprocess.Process
    url: str
    output: list[str] = field(default_factory=list)

    async def read_until(self, marker: str) -> None:
        assert self.process.stderr is not None
        while not any(marker in line for line in self.output):
            line = await asyncio.wait_for(self.process.stderr.readline(), PATIENCE)
            assert line, "uvicorn exited:\n" + "".join(self.output)
            self.output.append(line.decode())

    async def rest_of_output(self) -> str:
        assert self.process.stderr is not None
        self.output.append((await self.process.stderr.read()).decode())
        return "".join(self.output)


@pytest.fixture
async def uvicorn_relay(emulator: KernelEmulator) -> AsyncIterator[Uvicorn]:
    """``uvicorn examples.starlette_relay:app`` on a free port, its client configured by
    the KERNEL_* env vars to use the emulator; killed at the end if still running."""
    pytest.importorskip("uvicorn")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_")}
    env |= {"KERNEL_API_KEY": emulator.api_key, "KERNEL_BASE_URL": emulator.url}
    script = Path(sys.executable).with_name("uvicorn")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "uvicorn"]
    process = await asyncio.create_subprocess_exec(
        *command,
        "examples.starlette_relay:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    server = Uvicorn(process, f"http://127.0.0.1:{port}")
    try:
        await server.read_until("Uvicorn running on")
        yield server
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await server.rest_of_output()


async def stopped(server: Uvicorn, sig: signal.Signals) -> str:
    """Send ``sig``; the process's output once it exited (bounded)."""
    server.process.send_signal(sig)
    await asyncio.wait_for(server.process.wait(), PATIENCE)
    return await server.rest_of_output()


async def test_the_documented_uvicorn_command_serves_a_crowd_and_stops_promptly(
    emulator: KernelEmulator, uvicorn_relay: Uvicorn
) -> None:
    server = uvicorn_relay
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        stayed, left = await crowd(session, server.url, emulator)
        assert_served(stayed, left)
        # Viewers on quiet invocations when the server is told to stop.
        watching = [
            asyncio.ensure_future(watch(session, f"{server.url}/run/quiet")) for _ in range(20)
        ]
        await eventually(
            lambda: statuses(emulator, "quiet").count("running") == 20,
            "20 more quiet invocations running",
        )
        await eventually(
            lambda: all(emulator.log_lines(inv.id) for inv in emulator.snapshot()),
            "every invocation logged its line",
        )
        output = await stopped(server, signal.SIGTERM)
        viewers = await asyncio.wait_for(asyncio.gather(*watching), PATIENCE)
    # uvicorn re-raises the signal once it shut down gracefully: killed by SIGTERM.
    assert server.process.returncode in (0, -signal.SIGTERM), output
    assert "Finished server process" in output
    for viewer in viewers:
        assert viewer.events[-1] == ("done", {"reason": "server stopping"})
    assert statuses(emulator, "quiet") == ["failed"] * (LEAVERS + 20)
    assert "ERROR" not in output
    assert "Traceback" not in output
    assert "Application shutdown complete" in output


async def test_starlette_relay_cancels_what_a_create_in_flight_started(
    emulator: KernelEmulator, gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    starlette_relay = pytest.importorskip("examples.starlette_relay")
    gate.closed = True
    app = starlette_relay.make_app(api_key=emulator.api_key, base_url=emulator.url)
    relays = app.state.relays
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info"))
    serving = asyncio.ensure_future(server.serve())
    try:
        await eventually(lambda: server.started, "uvicorn started")
        url = f"http://127.0.0.1:{port}"
        await viewer_leaves_while_its_create_is_in_flight(url, emulator, gate)
        await eventually(lambda: len(relays) == 0, "the relay noticed its viewer left")
        gate.opened.set()
        await eventually(
            lambda: statuses(emulator, "quiet") == ["failed"], "the landed create cancelled"
        )
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, PATIENCE)
    no_errors_logged(caplog)


async def test_uvicorn_stops_at_once_on_ctrl_c_with_streams_open(
    emulator: KernelEmulator, uvicorn_relay: Uvicorn
) -> None:
    async with aiohttp.ClientSession() as session:
        watching = asyncio.ensure_future(watch(session, f"{uvicorn_relay.url}/run/quiet"))
        await eventually(lambda: statuses(emulator, "quiet") == ["running"], "it runs")
        output = await stopped(uvicorn_relay, signal.SIGINT)
        viewer = await asyncio.wait_for(watching, PATIENCE)
    assert viewer.events[-1] == ("done", {"reason": "server stopping"})
    assert statuses(emulator, "quiet") == ["failed"]
    assert "ERROR" not in output
    assert "Traceback" not in output
