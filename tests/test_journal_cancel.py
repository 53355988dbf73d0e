"""A journaled map() stopped early (``break``, Ctrl-C, its timeout) records the payloads
whose invocations it cancelled for certain as to create again: the re-run's summary
counts them "to create", not "re-attached", and follows none of them. Where the cancel
is not certain, the re-run still follows the invocation and never creates twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kernel_async import AsyncKernel, Limits, MapResult, RetryPolicy
from kernel_async.errors import APITimeoutError
from kernel_async.journal import Journal, JournalError, ResumeSummary, _file
from kernel_async.testing import KernelEmulator

from .conftest import emulator_thread

FAST = RetryPolicy(max_retries=1, initial_delay=0.01, max_delay=0.02)
KEY = "sk_journal_cancel_test"


class Work:
    """An action whose payloads marked ``slow`` run until `release` (then succeed)."""

    def __init__(self, emulator: KernelEmulator) -> None:
        self.released = False

        async def work(ctx: Any, payload: Any) -> Any:
            while payload.get("slow") and not self.released:
                await asyncio.sleep(0.01)
            return payload

        emulator.add_action("app", "work", work)

    def release(self) -> None:
        self.released = True


def canonical(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True)


def one_success_each(emulator: KernelEmulator, payloads: list[Any]) -> bool:
    """Whether each payload has exactly one succeeded invocation on the service."""
    succeeded = Counter(
        canonical(json.loads(inv.payload or "null"))
        for inv in emulator.snapshot()
        if inv.status == "succeeded"
    )
    return succeeded == Counter(canonical(p) for p in payloads)


def each_created_once(emulator: KernelEmulator, payloads: list[Any], *, creates: int) -> bool:
    """``creates`` invocations made in all, and exactly one succeeded for each payload."""
    return emulator.create_count == creates and one_success_each(emulator, payloads)


def followed(emulator: KernelEmulator, ids: set[str]) -> list[str]:
    """The requests made about any of ``ids`` (a follow, a get, a cancel)."""
    return [r.path for r in emulator.requests if any(i in r.path for i in ids)]


async def run(kernel: AsyncKernel, payloads: list[Any], journal: Journal) -> list[MapResult]:
    async with kernel.invocations.map("app", "work", payloads, journal=journal) as results:
        return sorted([r async for r in results], key=lambda r: r.index)


@contextlib.asynccontextmanager
async def emulated(**options: Any) -> AsyncIterator[tuple[KernelEmulator, Work, AsyncKernel]]:
    """An emulator running `Work`, and a client of it."""
    async with KernelEmulator() as emulator:
        work = Work(emulator)
        async with emulator.client(retry=FAST, **options) as kernel:
            yield emulator, work, kernel


async def request_seen(emulator: KernelEmulator, method: str) -> None:
    """Return once the emulator has received a ``method`` request."""
    while not any(r.method == method for r in emulator.requests):
        await asyncio.sleep(0.01)


async def cancel_to_the_end(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait: it ends cancelled, and leaves none of map()'s tasks."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    left = [t.get_coro() for t in asyncio.all_tasks()]
    assert not [c for c in left if "Fanout" in getattr(c, "__qualname__", "")]


def quick_then_slow(count: int) -> list[Any]:
    """``count`` payloads: one that finishes at once, then ones that run until released."""
    return [{"n": 0}, *({"n": i, "slow": True} for i in range(1, count))]


def to_create(summary: ResumeSummary, total: int) -> int:
    """What the CLI's summary line prints as "to create"."""
    return total - summary.finished - summary.reattached - summary.adopted - summary.unresolved


async def test_after_a_break_the_rerun_creates_the_cancelled_and_follows_none(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "run.db")
    payloads = quick_then_slow(8)
    async with emulated(limits=Limits(initial=4)) as (emulator, work, kernel):
        async with kernel.invocations.map("app", "work", payloads, journal=path) as results:
            async for result in results:
                assert result.index == 0
                break
        cancelled = {inv.id for inv in emulator.snapshot() if inv.status == "failed"}
        assert len(cancelled) >= 3  # those running when it stopped
        first_creates = emulator.create_count
        work.release()
        emulator.requests.clear()
        journal = Journal(path)
        again = await run(kernel, payloads, journal)
        summary = journal.summary
        assert summary is not None
        assert (summary.finished, summary.reattached, summary.adopted) == (1, 0, 0)
        assert summary.recreated >= len(cancelled)
        assert to_create(summary, len(payloads)) == 7
        assert emulator.create_count - first_creates == 7
        assert followed(emulator, cancelled) == []
        assert [r.index for r in again] == list(range(8))
        assert all(r.ok for r in again)
        assert one_success_each(emulator, payloads)


async def test_a_create_landing_after_the_map_was_cancelled_is_cancelled_and_recreated(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "run.db")
    payloads = [{"n": 1, "slow": True}]
    async with emulated() as (emulator, work, kernel):
        emulator.faults.latency(1.0)  # the create is on the wire when the map is cancelled
        journal = Journal(path)
        task = asyncio.create_task(run(kernel, payloads, journal))
        await request_seen(emulator, "POST")
        await cancel_to_the_end(task)
        emulator.faults.latency(0)
        (cancelled,) = emulator.snapshot()
        assert cancelled.status == "failed"
        work.release()
        again = Journal(path, in_flight=0.0)
        (result,) = await run(kernel, payloads, again)
        assert again.summary is not None
        assert (again.summary.reattached, again.summary.adopted) == (0, 0)
        assert again.summary.recreated == 1
        assert result.ok
        assert result.invocation_id != cancelled.id
        assert each_created_once(emulator, payloads, creates=2)


async def test_invocations_cancelled_at_the_timeout_are_to_create_not_reattached(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "run.db")
    payloads = [{"n": i, "slow": True} for i in range(3)]
    async with emulated() as (emulator, work, kernel):
        async with kernel.invocations.map(
            "app", "work", payloads, journal=path, timeout=0.3
        ) as results:
            first = [r async for r in results]
        assert all(isinstance(r.error, APITimeoutError) for r in first)
        timed_out = {r.invocation_id for r in first if r.invocation_id is not None}
        assert len(timed_out) == 3
        work.release()
        emulator.requests.clear()
        journal = Journal(path)
        again = await run(kernel, payloads, journal)
        assert journal.summary is not None
        assert (journal.summary.reattached, journal.summary.recreated) == (0, 3)
        assert followed(emulator, timed_out) == []
        assert all(r.ok for r in again)
        assert each_created_once(emulator, payloads, creates=6)


async def test_when_the_cancel_fails_the_rerun_follows_and_creates_nothing_twice(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "run.db")
    payloads = [{"n": 0}, {"n": 1, "slow": True}, {"n": 2, "slow": True}]
    async with emulated() as (emulator, work, kernel):
        async with kernel.invocations.map("app", "work", payloads, journal=path) as results:
            async for result in results:
                assert result.index == 0
                while len(emulator.snapshot()) < 3:  # both slow ones created
                    await asyncio.sleep(0.01)
                emulator.faults.fail(503, times=100, method="PATCH")
                break
        # Not cancelled: still running, unknown to the journal's writer.
        running = {inv.id for inv in emulator.snapshot() if inv.status == "running"}
        assert len(running) == 2
        emulator.faults.clear()
        work.release()
        journal = Journal(path)
        again = await run(kernel, payloads, journal)
        assert journal.summary is not None
        assert (journal.summary.finished, journal.summary.reattached) == (1, 2)
        assert {r.invocation_id for r in again[1:]} == running
        assert all(r.ok for r in again)
        assert each_created_once(emulator, payloads, creates=3)


def test_the_cli_summary_after_ctrl_c_counts_the_cancelled_as_to_create(
    tmp_path: Path,
) -> None:
    payloads = quick_then_slow(6)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(p) + "\n" for p in payloads))
    journal = tmp_path / "run.db"
    emulator = KernelEmulator(api_key=KEY)
    work = Work(emulator)
    command = [
        *(sys.executable, "-m", "kernel_async", "--plain", "invoke", "app", "work"),
        *("--payloads", str(items), "--journal", str(journal), "-o", "json"),
    ]
    with emulator_thread(emulator):
        env = {
            **os.environ,
            "KERNEL_BASE_URL": f"http://127.0.0.1:{emulator.port}",
            "KERNEL_API_KEY": KEY,
        }
        with subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc:
            try:
                assert proc.stdout is not None
                assert json.loads(proc.stdout.readline())["index"] == 0
                while not any(inv.status == "running" for inv in emulator.snapshot()):
                    time.sleep(0.05)
                proc.send_signal(signal.SIGINT)
                assert proc.wait(30) == 130
            finally:
                if proc.poll() is None:
                    proc.kill()
        cancelled = [inv for inv in emulator.snapshot() if inv.status == "failed"]
        assert cancelled
        first_creates = emulator.create_count
        work.release()
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        creates = emulator.create_count - first_creates
    assert done.returncode == 0, done.stderr
    line = re.search(r"journal .*: resuming: .*", done.stderr)
    assert line is not None, done.stderr
    assert "1 finished earlier, 0 re-attached, 0 adopted after a crash, 5 to create" in line[0]
    assert creates == 5
    assert one_success_each(emulator, payloads)


async def test_cancelled_again_while_stopping_the_journal_is_still_released(
    tmp_path: Path,
) -> None:
    # A second cancel while the invocations are being cancelled: those cancels still
    # finish, and the journal is closed and released, with what it had recorded.
    payloads = quick_then_slow(5)
    async with emulated(limits=Limits(initial=5)) as (emulator, work, kernel):
        path = str(tmp_path / "run.db")
        task = asyncio.create_task(run(kernel, payloads, Journal(path)))
        while len(emulator.snapshot()) < len(payloads):  # all created
            await asyncio.sleep(0.01)
        emulator.faults.latency(0.5)  # the cancels are under way when it comes again
        task.cancel()
        await request_seen(emulator, "PATCH")
        await cancel_to_the_end(task)
        emulator.faults.latency(0)
        work.release()
        journal = Journal(path)  # not "in use by another map() of this process"
        again = await run(kernel, payloads, journal)
        assert journal.summary is not None
        assert all(r.ok for r in again)
        assert one_success_each(emulator, payloads)


async def test_a_record_arriving_after_the_journal_closed_is_dropped_not_hung_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path / "run.db")
    await journal._open({"app_name": "app", "action_name": "work", "version": "latest"})
    await journal._close()
    journal._post([_file.pending(0)])  # an item ending late: logged, nothing started
    assert journal._flusher is None
    with pytest.raises(JournalError, match="is closed"):
        await journal._write([_file.creating(0, "digest", 0.0)])  # fails, never hangs
    assert "a record was not written" in caplog.text
