"""Every example in examples/ runs, against the emulator, and does what it says."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from examples import agent_tool, aiohttp_relay, fan_out, telemetry
from kernel_async.testing import KernelEmulator
from kernel_async.testing.demo import install_demo_actions

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_real_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KERNEL_API_KEY", raising=False)


async def test_agent_tool_meets_deadlines_and_cancels() -> None:
    log = await agent_tool.main()
    assert log[0].startswith("summary: ")
    assert log[1].startswith("deadline: ")
    assert "it was cancelled" in log[1]
    assert log[2] == "cancelled by the agent"


async def test_fan_out_runs_every_invocation_under_the_limits() -> None:
    gathered, mapped, stats = await fan_out.main(n=60)
    assert gathered == {"succeeded": 60}
    assert mapped == {"succeeded": 60}
    limit = stats.apps["demo-app"].limit
    assert limit is not None
    # Learnt from the cap of 20: what fit at the last 429, as this client counted it (one
    # of its invocations may have ended a moment before it saw the end: one over).
    assert 15 <= limit <= 21
    assert stats.apps["demo-app"].learnt


async def test_telemetry_traces_the_waits_and_the_resume(tmp_path: Path) -> None:
    spans = await telemetry.main()
    runs = [s for s in spans if s.name == "kernel.invocations.run"]
    assert len(runs) == telemetry.N
    assert all((s.attributes or {})["kernel.invocation.status"] == "succeeded" for s in runs)
    events = Counter(e.name for s in spans for e in s.events)
    assert events["kernel.admission.wait"] >= 1  # the cap of 3 made creates queue
    assert events["kernel.rate_limited"] >= 2  # the rate-limit fault, and concurrency 429s
    assert events["kernel.stream.resume"] == 1  # the cut stream
    assert events["kernel.stream.replayed"] == 1
    lines = telemetry.tree(spans)
    assert lines[0].split()[-1] == "map"
    assert any("stream.resume" in line for line in lines)
    if importlib.util.find_spec("matplotlib") is not None:
        telemetry.draw(spans, tmp_path / "trace.png")
        assert (tmp_path / "trace.png").read_bytes().startswith(b"\x89PNG")


def relay_lines(body: str) -> list[str]:
    return [
        json.loads(line[6:])["line"]
        for line in body.splitlines()
        if line.startswith("data: ") and line != "data: {}"
    ]


async def test_aiohttp_relay_streams_logs_to_the_browser(kernel_emulator: KernelEmulator) -> None:
    install_demo_actions(kernel_emulator)
    app = aiohttp_relay.make_app(api_key=kernel_emulator.api_key, base_url=kernel_emulator.url)
    async with TestClient(TestServer(app)) as browser:
        page = await browser.get("/")
        assert "EventSource" in await page.text()
        resp = await browser.get("/run/crawl")
        assert resp.headers["Content-Type"] == "text/event-stream"
        lines = relay_lines(await resp.text())
    assert "visiting page 3/3" in lines
    assert lines[-1] == "[succeeded]"


async def test_starlette_relay_streams_logs(kernel_emulator: KernelEmulator) -> None:
    httpx = pytest.importorskip("httpx")
    starlette_relay = pytest.importorskip("examples.starlette_relay")
    install_demo_actions(kernel_emulator)
    app = starlette_relay.make_app(api_key=kernel_emulator.api_key, base_url=kernel_emulator.url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as browser:
            resp = await browser.get("/run/crawl")
    lines = relay_lines(resp.text)
    assert "visiting page 1/3" in lines
    assert lines[-1] == "[succeeded]"


@pytest.mark.parametrize("script", ["agent_tool.py", "fan_out.py"])
def test_examples_run_as_scripts(script: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


async def test_telemetry_console_prints_each_span_as_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    spans = await telemetry.main(n=2, console=True)
    printed = capsys.readouterr().out
    assert printed.count('"name": "kernel.invocations.run"') == 2
    assert printed.count('{\n    "name": ') == len(spans)  # one JSON document per span
