"""Many processes, one quota: K client processes share one emulated organisation's cap.

The emulator runs in this (the parent) process, with an org cap of 20, a request rate
limit, and 0.25 s actions; K worker processes (``python -m benchmarks.multi --worker``)
each run an even share of N invocations as a plain ``gather`` and start together (at a
wall-clock time given to all, so imports do not count). Modes: ``uncoordinated`` (each
process learns alone), ``redis`` (shared limits through a ``redis-server`` this starts on
127.0.0.1) and ``official`` (the official SDK: gather of create + follow). Cases: K = 1, 2,
4, 8; another tenant holding the whole cap for a while; staggered starts; 3 apps capped
5/10/20 under the org cap of 20.

Measured: invocations finished, payloads created twice, 429s per invocation, makespan ÷
ideal (the fluid bound: work ÷ cap, later arrivals and per-app caps included), finish
spread between processes ÷ ideal, and seconds (after the first) during which quota was
free while work had not been created yet.

``python -m benchmarks.multi`` (``--quick``: a smoke run) writes
``benchmarks/results/multi.json`` and prints the table; a run of every case and mode also
writes the chart ``docs/many-processes.png`` and the table into docs/many-processes.md
(``--cases`` or ``--modes`` run a part, and leave the docs as they are).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import fanout
from .fanout import _gather

ROOT = Path(__file__).resolve().parent.parent
ACTION = "sleep"
MODES = ["uncoordinated", "redis", "official"]
TARGETS = {"uncoordinated": (0.3, 1.25, 0.25), "redis": (0.1, 1.1, 0.15)}


@dataclass
class Case:
    """One measurement: who runs what, when."""

    name: str
    mode: str
    k: int
    n: int = 400
    duration: float = 0.25
    cap: int = 20
    rate: int = 400  # requests per second
    delays: list[float] = field(default_factory=list)  # each worker's start offset
    apps: list[str] = field(default_factory=list)  # each worker's app
    app_caps: dict[str, int] = field(default_factory=dict)
    tenant: float = 0.0  # another tenant holds the whole cap this long at the start

    def worker_apps(self) -> list[str]:
        return self.apps or ["bench"] * self.k

    def worker_delays(self) -> list[float]:
        return self.delays or [0.0] * self.k

    def ideal(self) -> float:
        """The fluid bound: work flows at the cap (and each app at its own) from when it
        arrives; the tenant's hold first."""
        share = self.n // self.k
        by_app: Counter[str] = Counter()
        for app in self.worker_apps():
            by_app[app] += share
        bound = max(
            count * self.duration / self.app_caps.get(app, self.cap)
            for app, count in by_app.items()
        )
        t, backlog = 0.0, 0.0
        for delay in sorted(self.worker_delays()):
            backlog = max(0.0, backlog - (delay - t) * self.cap)
            t = delay
            backlog += share * self.duration
        fluid = t + backlog / self.cap
        return self.tenant + max(bound, fluid)


def cases(quick: bool) -> list[Case]:
    n = 80 if quick else 400
    ks = [1, 2] if quick else [1, 2, 4, 8]
    out = [Case(f"K={k}", mode, k, n=n) for mode in MODES for k in ks]
    for mode in ("uncoordinated", "redis"):
        out.append(Case("tenant holds 20 for 7.6 s", mode, 4, n=n, tenant=2.0 if quick else 7.6))
        out.append(Case("staggered 0/1/2/4 s", mode, 4, n=n, delays=[0.0, 1.0, 2.0, 4.0]))
        out.append(
            Case(
                "3 apps capped 5/10/20",
                mode,
                3,
                n=n - n % 3,
                apps=["a5", "a10", "a20"],
                app_caps={"a5": 5, "a10": 10, "a20": 20},
            )
        )
    return out


# --- the worker process ----------------------------------------------------------------------


async def work(args: argparse.Namespace) -> dict[str, Any]:
    import kernel_async  # noqa: F401  (imported before the start, like the official SDK)

    if args.mode == "official":
        import kernel  # noqa: F401
    elif args.mode == "redis":
        import redis.asyncio  # noqa: F401  (a quarter second of imports: not the limits')
    print("ready", flush=True)
    start_at = float(await asyncio.to_thread(sys.stdin.readline))
    delay = start_at + args.delay - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    started = time.time()
    payloads = [{"w": args.worker_id, "i": i} for i in range(args.n)]
    if args.mode == "official":
        statuses = await official(args, payloads)
    else:
        statuses = await ours(args, payloads)
    counts = Counter(statuses)
    return {
        "start": started,
        "finish": time.time(),
        "ok": counts.pop("succeeded", 0),
        "errors": dict(counts),
    }


async def ours(args: argparse.Namespace, payloads: list[dict[str, int]]) -> list[str]:
    from kernel_async import AsyncKernel, Limits

    limits = Limits(shared=args.redis if args.mode == "redis" else "")
    async with AsyncKernel(args.key, base_url=args.url, limits=limits) as kernel:

        async def one(i: int) -> str:
            inv = await kernel.invocations.run(args.app, ACTION, payload=payloads[i])
            return inv.status

        return await _gather(one, len(payloads))


async def official(args: argparse.Namespace, payloads: list[dict[str, int]]) -> list[str]:
    n = len(payloads)
    return await fanout.official(
        args.url, args.key, n, n, aiohttp_backend=False, app=args.app, payloads=payloads
    )


# --- the parent: emulator, redis, workers, measures ------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server() -> Any:
    """A ``redis-server`` on a free port of 127.0.0.1 (``None`` when not installed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


async def tenant(emulator: Any, case: Case) -> None:
    """Another tenant's invocations, holding the whole cap for ``case.tenant`` seconds."""
    async with emulator.client() as kernel:
        await asyncio.gather(
            *(kernel.invocations.create("tenant", "hold", async_=True) for _ in range(case.cap))
        )


async def measure(case: Case, redis_url: str | None) -> dict[str, Any]:
    from kernel_async.testing import KernelEmulator, Quotas

    quotas = Quotas(
        max_running=case.cap, requests_per_window=case.rate, window=1.0, app_caps=case.app_caps
    )
    emulator = KernelEmulator(quotas=quotas, heartbeat_interval=15.0)

    running: Counter[int] = Counter()  # running invocations per worker, for the timeline
    begun: Counter[int] = Counter()  # invocations started per worker: whose work is left

    async def sleep(ctx: Any, payload: Any) -> Any:
        worker = payload["w"]
        begun[worker] += 1
        running[worker] += 1
        try:
            await asyncio.sleep(case.duration)
        finally:
            running[worker] -= 1
        return payload

    async def hold(ctx: Any, payload: Any) -> Any:
        await asyncio.sleep(case.tenant)

    for app in {*case.worker_apps()}:
        emulator.add_action(app, ACTION, sleep)
    emulator.add_action("tenant", "hold", hold)
    share = case.n // case.k
    async with emulator:
        procs = []
        for w, (app, delay) in enumerate(
            zip(case.worker_apps(), case.worker_delays(), strict=True)
        ):
            cmd = [sys.executable, "-m", "benchmarks.multi", "--worker", "--mode", case.mode]
            cmd += ["--url", emulator.url, "--key", emulator.api_key, "--app", app]
            cmd += ["--n", str(share), "--worker-id", str(w), "--delay", str(delay)]
            cmd += ["--redis", redis_url or ""]
            procs.append(
                await asyncio.create_subprocess_exec(
                    *cmd, cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
                )
            )
        for proc in procs:  # every worker imported and waiting: start them together
            assert proc.stdout is not None
            assert (await proc.stdout.readline()).strip() == b"ready"
        t0 = time.time()
        if case.tenant:
            await tenant(emulator, case)
        start_at = time.time() + 0.2
        if not case.tenant:  # the clock starts when the workers do (the tenant's, with it)
            t0 = start_at
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start_at}\n".encode())
            await proc.stdin.drain()
        (idle, idle_waiting), unused, unused_waiting, timeline = await sample_idle(
            emulator, case, t0, start_at, running, procs, begun
        )
        outs = [json.loads((await p.communicate())[0]) for p in procs]
        payloads = Counter(
            json.dumps(v.payload_as(), sort_keys=True)
            for v in emulator.snapshot()
            if v.app_name != "tenant"
        )
    ideal = case.ideal()
    finishes = [o["finish"] - t0 for o in outs]
    stats = quotas.stats
    return {
        **asdict(case),
        "ideal_s": ideal,
        "ok": sum(o["ok"] for o in outs),
        "errors": sum(sum(o["errors"].values()) for o in outs),
        "duplicates": sum(c - 1 for c in payloads.values() if c > 1),
        "per_inv_429": (stats.concurrency_rejected + stats.rate_rejected) / (share * case.k),
        "makespan_x": max(finishes) / ideal,
        "spread_x": (max(finishes) - min(finishes)) / ideal,
        "idle_s": idle,
        "idle_s_while_waiting": idle_waiting,
        "finishes_s": finishes,
        "unused_by_second": unused,
        "unused_while_waiting_by_second": unused_waiting,
        "timeline": timeline,
    }


async def sample_idle(
    emulator: Any,
    case: Case,
    t0: float,
    start_at: float,
    running: Counter[int],
    procs: list[Any],
    begun: Counter[int],
) -> tuple[tuple[float, float], dict[int, float], dict[int, float], list[list[float]]]:
    """Seconds (whole seconds of the run after the first) that left more than a tenth of
    the cap unused while work waited to be created (slots left free for want of work are
    not counted: at the end, fewer creates wait than slots are free; nor are those only
    apps with no work left could fill, ``begun`` counting each worker's invocations
    started), and the same counted the old way (`unused_by_second`'s ``while_waiting``);
    the unused share of the cap in each second, both ways;
    and the timeline: ``[seconds since t0, running per worker...]`` about every 50 ms.

    Samples come at jittered moments (25 to 75 ms apart): invocations that start
    together end together, and a fixed step would keep meeting the same phase of them.

    A finishing invocation frees its slot a moment before its process sees the end and
    sends the next create: that turnover keeps about one slot free at any instant even
    when nothing is wasted, so an instant with a free slot is no idle second; a second
    whose average leaves more than a tenth of the cap free is."""
    step = 0.05
    timeline: list[list[float]] = []
    free: dict[int, list[float | None]] = {}  # second -> each sample's unused share (None: no wait)
    while any(p.returncode is None for p in procs):
        await asyncio.sleep(random.uniform(step / 2, step * 1.5))
        now = time.time()
        timeline.append([round(now - t0, 3), *(running[w] for w in range(case.k))])
        created = emulator.create_count - (case.cap if case.tenant else 0)
        arrived = sum(now >= start_at + d for d in case.worker_delays())
        waiting = arrived * (case.n // case.k) - created  # the arrived workers' creates
        if now <= start_at + case.tenant + 1.0:
            continue
        if waiting <= 0:
            free.setdefault(int(now - t0), []).append(None)
        else:
            share = case.n // case.k
            pairs = enumerate(zip(case.worker_apps(), case.worker_delays(), strict=True))
            with_work = [
                app for w, (app, delay) in pairs if now >= start_at + delay and begun[w] < share
            ]
            quotas = emulator.quotas
            unused = unused_slots(case, quotas.running(), quotas.running, with_work, waiting)
            free.setdefault(int(now - t0), []).append(unused / case.cap)
    by_second = {second: round(v, 3) for second, v in unused_by_second(free).items()}
    old = unused_by_second(free, while_waiting=True)
    by_second_waiting = {second: round(v, 3) for second, v in old.items()}
    idle = (float(idle_seconds(free)), float(idle_seconds(free, while_waiting=True)))
    return idle, by_second, by_second_waiting, timeline


def unused_slots(
    case: Case,
    org_running: int,
    app_running: Callable[[str], int],
    apps: Iterable[str],
    waiting: int,
) -> int:
    """Slots some app with work left (``apps``) could still start, under its own cap and
    the org's, up to the creates ``waiting``."""
    room = max((case.app_caps.get(app, case.cap) - app_running(app) for app in apps), default=0)
    return min(max(0, min(case.cap - org_running, room)), waiting)


def unused_by_second(
    free: dict[int, list[float | None]], *, while_waiting: bool = False
) -> dict[int, float]:
    """Each second's unused share of the cap: the average of its samples (``free``: the
    share unused while creates waited, ``None`` where none waited, which counts as none
    unused), the second's capacity left unused while work waited. ``while_waiting``: the
    average of the samples where creates waited only (this bench's measure before
    2026-12-01: a second whose creates waited for its last 30 ms counted as idle from the
    one sample that met them, often in the gap between in-step invocations' ends and
    their successors' creates)."""
    out = {}
    for second, samples in sorted(free.items()):
        waited = [v for v in samples if v is not None]
        if waited:
            out[second] = sum(waited) / (len(waited) if while_waiting else len(samples))
    return out


def idle_seconds(free: dict[int, list[float | None]], *, while_waiting: bool = False) -> int:
    """Whole seconds (``free``: as for `unused_by_second`) that left more than a tenth of
    the cap unused while work waited."""
    by_second = unused_by_second(free, while_waiting=while_waiting)
    return sum(1 for unused in by_second.values() if unused > 0.1)


def chart(results: list[dict[str, Any]], path: Path) -> None:
    """Invocations finished, makespan ÷ ideal and 429s per invocation against K, per mode
    (the legend above the panels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    done, makespan, refused = axes
    for mode in MODES:
        rows = [r for r in results if r["mode"] == mode and r["name"].startswith("K=")]
        ks = [r["k"] for r in rows]
        done.plot(ks, [100 * r["ok"] / r["n"] for r in rows], marker="o", label=mode)
        makespan.plot(ks, [r["makespan_x"] for r in rows], marker="o")
        refused.plot(ks, [r["per_inv_429"] for r in rows], marker="o")
    done.set(ylabel="% of 400 finished", title="Invocations finished", ylim=(0, 105))
    makespan.set(ylabel="makespan ÷ ideal (finished ones)", title="Makespan")
    refused.set(ylabel="429s per invocation", title="429s per invocation")
    for ax in axes:
        ax.set(xlabel="processes (K)", xscale="log")
        ax.set_xticks([1, 2, 4, 8], labels=["1", "2", "4", "8"])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    fig.legend(loc="upper center", ncol=len(MODES), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=110)


def verdict(r: dict[str, Any]) -> str:
    """Whether a row of ours meets its mode's targets: every invocation, none twice, the
    429s per invocation, the makespan, no idle second; and the finish spread where the
    processes have like work from a like start (the K rows, the tenant's)."""
    target = TARGETS.get(r["mode"])
    if target is None:
        return ""
    per_inv, makespan, spread = target
    n = (r["n"] // r["k"]) * r["k"]
    misses = []
    if r["ok"] != n or r["duplicates"]:
        misses.append("lost or twice")
    if r["per_inv_429"] > per_inv:
        misses.append("429s")
    if r["makespan_x"] > makespan:
        misses.append("makespan")
    if (r["name"].startswith("K=") or r["tenant"]) and r["spread_x"] > spread:
        misses.append("spread")
    if r["idle_s"]:
        misses.append("idle")
    return "met" if not misses else "**not met**: " + ", ".join(misses)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| case | mode | ok | dup | 429/inv | makespan ÷ ideal | spread ÷ ideal | idle s "
        "| targets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        n = (r["n"] // r["k"]) * r["k"]
        lines.append(
            f"| {r['name']} | {r['mode']} | {r['ok']}/{n} | {r['duplicates']} "
            f"| {r['per_inv_429']:.2f} | {r['makespan_x']:.2f}× | {r['spread_x']:.2f}× "
            f"| {r['idle_s']:.1f} | {verdict(r)} |"
        )
    return "\n".join(lines)


def write_docs(results: list[dict[str, Any]], path: Path) -> None:
    """Put the table between the page's ``bench:multi`` markers."""
    start, end = "<!-- bench:multi -->", "<!-- /bench:multi -->"
    page = path.read_text()
    before, rest = page.split(start, 1)
    after = rest.split(end, 1)[1]
    path.write_text(f"{before}{start}\n{table(results)}\n{end}{after}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--cases", default="", help="case names, comma-separated (all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs" / "many-processes.png")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "many-processes.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="uncoordinated")
    parser.add_argument("--url", default="")
    parser.add_argument("--key", default="")
    parser.add_argument("--app", default="bench")
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--worker-id", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--redis", default="")
    args = parser.parse_args()
    if args.worker:
        json.dump(asyncio.run(work(args)), sys.stdout)
        return
    modes = args.modes.split(",")
    results = []
    with redis_server() as redis_url:
        for case in cases(args.quick):
            if case.mode not in modes or (case.mode == "redis" and redis_url is None):
                continue
            if args.cases and case.name not in args.cases.split(","):
                continue
            result = asyncio.run(measure(case, redis_url))
            results.append(result)
            print(table([result]).splitlines()[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multi.json").write_text(json.dumps(results, indent=2))
    if not args.quick and not args.cases and set(modes) >= set(MODES):
        chart(results, args.chart)  # the docs show every case: a part run leaves them be
        write_docs(results, args.docs)
    print(f"\nMachine: {os.cpu_count()} cores (shared); emulator in the parent process.\n")
    print(table(results))


if __name__ == "__main__":
    main()
