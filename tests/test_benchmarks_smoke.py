"""The benchmark harness keeps working: a tiny run of our client and the floor.

Timings are never asserted; only that every case ran and produced numbers.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(module: str, *args: str) -> None:
    """Run ``python -m benchmarks.<module> *args``; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_benchmark_quick_run(tmp_path: Path) -> None:
    out = str(tmp_path)
    clients = ["--clients", "kernel_async,floor", "--fanout-clients", "kernel_async"]
    run_bench("run", "--quick", *clients, "--out", out, "--no-docs")
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["quick"] is True
    cases = (
        "retrieve_c1",
        "retrieve_c50",
        "create_c50",
        "list100",
        "follow_10k",
        "follow_burst",
        "lifecycle_c200",
        "streams_10k",
    )
    for case in cases:
        for client in ("kernel_async", "floor"):
            assert report["results"][case][client]["cpu_us"] > 0
    assert report["results"]["streams_10k"]["kernel_async"]["unit"] == "stream"
    assert report["results"]["follow_burst"]["floor"]["unit"] == "event"
    # The chart needs matplotlib (the bench extra); the test environment may not have it.
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "latest.png").stat().st_size > 0
    scenario, fanned = report["fanout"]["scenario"], report["fanout"]["results"]
    assert fanned["kernel_async"]["completed"] == scenario["n"]
    assert fanned["kernel_async"]["started_twice"] == 0
    assert fanned["kernel_async"]["peak_running"] <= scenario["cap"]


def test_many_processes_bench_quick_run(tmp_path: Path) -> None:
    """Two uncoordinated processes share the emulator's cap: every invocation, no twice."""
    run_bench(
        "multi", "--quick", "--modes", "uncoordinated", "--cases", "K=2", "--out", str(tmp_path)
    )
    (row,) = json.loads((tmp_path / "multi.json").read_text())
    assert (row["ok"], row["duplicates"], row["errors"]) == (80, 0, 0)


def test_the_limits_simulation_runs_a_case() -> None:
    """The policy's simulator (what a policy change is tried on first) runs from the CLI."""
    run_bench("limits_sim", "K=2", "--seeds", "1", "--timeline")
