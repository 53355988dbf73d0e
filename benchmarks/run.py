"""Run every (client, case) against one canned server, in one run, and report ratios.

``nox -s bench`` runs this. Each measurement is a fresh worker process pinned to core 0;
the server runs pinned to core 1 (where the machine has two cores). Each case is
repeated and the median reported. Output: a table on stdout, ``benchmarks/results/
latest.json``, and ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import fanout, report
from .clients import CLIENTS
from .server import serve
from .worker import CASES

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in (
        "kernel-async",
        "aiohttp",
        "msgspec",
        "kernel",
        "httpx",
        "pydantic",
        "httpx-aiohttp",
        "aiohttp-sse-client",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


def available(client: str) -> bool:
    module = {
        "official": "kernel",
        "official_aiohttp": "httpx_aiohttp",
        "sse_client": "aiohttp_sse_client",
        "kernel_async_otel": "opentelemetry.sdk",
    }.get(client)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def run_worker(
    client: str, case: str, url: str, scale: float, repeat: int, core: int | None
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.worker",
        "--client",
        client,
        "--case",
        case,
        "--url",
        url,
        "--scale",
        str(scale),
        "--repeat",
        str(repeat),
    ]
    if core is not None:
        cmd += ["--core", str(core)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each number across rounds (an error in any round is reported)."""
    errors = [r for r in runs if "error" in r]
    if errors:
        return errors[0]
    combined: dict[str, Any] = {"unit": runs[0]["unit"], "rounds": len(runs)}
    for key in ("cpu_us", "wall_us", "peak_rss_mb", "rss_per_stream_kb"):
        if key in runs[0]:
            combined[key] = statistics.median(r[key] for r in runs)
    combined["cpu_us_rounds"] = [r["cpu_us"] for r in runs]
    return combined


def run_fanout(
    scenario: fanout.Scenario, clients: list[str], rounds: int, two_cores: bool
) -> dict[str, dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(rounds):  # clients interleaved, so drift hits them alike
        for client in clients:
            result = fanout.run_round(
                client, scenario, 1 if two_cores else None, 0 if two_cores else None
            )
            runs.setdefault(client, []).append(result)
            shown = result.get("error") or (
                f"{result['completed']}/{scenario.n} in {result['makespan']:.2f}s, "
                f"{result['concurrency_429s'] + result['rate_429s']} 429s"
            )
            print(f"{'fanout':14} {client:23} {shown}", flush=True)
    return {client: fanout.combine(scenario, r) for client, r in runs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke test")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per worker")
    parser.add_argument("--rounds", type=int, default=3, help="workers per client and case")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the docs page")
    parser.add_argument(
        "--fanout-clients",
        default=",".join(fanout.FANOUT_CLIENTS),
        help="clients of the fan-out scenario (empty: skip it)",
    )
    args = parser.parse_args()
    scale, repeat = (0.01, 1) if args.quick else (1.0, args.repeat)
    rounds = 1 if args.quick else args.rounds
    clients = [c for c in args.clients.split(",") if available(c)]
    two_cores = (os.cpu_count() or 1) >= 2
    receiver, sender = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.get_context("spawn").Process(
        target=serve, args=(sender, 1 if two_cores else None), daemon=True
    )
    server.start()
    core = 0 if two_cores else None
    port = receiver.recv()
    url = f"http://127.0.0.1:{port}"
    info = machine()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    started = time.perf_counter()
    try:
        for case in args.cases.split(","):
            op = CASES[case][0]
            results[case] = {}
            runs: dict[str, list[dict[str, Any]]] = {}
            for _ in range(rounds):  # clients interleaved, so drift hits them alike
                for client in clients:
                    if op not in CLIENTS[client].operations:
                        continue
                    result = run_worker(client, case, url, scale, repeat, core)
                    runs.setdefault(client, []).append(result)
                    shown = report.fmt(result.get("cpu_us"), 2) if "cpu_us" in result else result
                    print(f"{case:14} {client:13} {shown} µs/{result.get('unit', '?')}", flush=True)
            for client, client_runs in runs.items():
                results[case][client] = combine(client_runs)
    finally:
        server.terminate()
        server.join(5)
    fanout_clients = [
        c
        for c in args.fanout_clients.split(",")
        if c and available("official" if c.startswith("official") else c)
    ]
    scenario = (
        fanout.Scenario(n=40, duration=0.05, cap=5, rate=100, window=0.5)
        if args.quick
        else fanout.Scenario()
    )
    fanout_results = run_fanout(scenario, fanout_clients, rounds, two_cores)
    args.out.mkdir(parents=True, exist_ok=True)
    chart = args.out / "latest.png"
    drawn = report.chart(results, clients, chart)
    publish = not args.no_docs and not args.quick
    if drawn and publish:
        shutil.copyfile(chart, args.docs.parent / "benchmarks.png")
    page = report.render(
        results, info, clients, chart="benchmarks.png" if drawn and publish else None
    )
    if fanout_results:
        page += "\n".join(report.render_fanout(scenario, fanout_results, quick=args.quick)) + "\n"
    print()
    print(page)
    print(f"({time.perf_counter() - started:.0f}s)")
    (args.out / "latest.json").write_text(
        json.dumps(
            {
                "machine": info,
                "quick": args.quick,
                "results": results,
                "fanout": {"scenario": asdict(scenario), "results": fanout_results},
            },
            indent=2,
        )
    )
    if publish:
        args.docs.write_text(page)
    # Our clients failing fails the run; a peer failing is a result, shown on the page.
    ours = ("kernel_async", "kernel_async_otel", "floor")
    failed = any(
        "error" in by.get(c, {}) for by in results.values() for c in ours
    ) or "error" in fanout_results.get("kernel_async", {})
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
