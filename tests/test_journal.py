"""map(..., journal=...): a re-run resumes from the journal and never creates twice; a
journal for other input, in use, or damaged gives a typed error and is left as it was."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kernel_async import AsyncKernel, Limits, MapResult, RetryPolicy
from kernel_async.journal import (
    Journal,
    JournalCorruptError,
    JournalError,
    JournalInUseError,
    JournalMismatchError,
    JournalUnresolvedError,
)
from kernel_async.journal._file import JournalFile, created, creating
from kernel_async.journal._match import payload_digest
from kernel_async.testing import KernelEmulator

FAST = RetryPolicy(max_retries=1, initial_delay=0.01, max_delay=0.02)
HEADER = {"app_name": "app", "action_name": "work", "version": "latest"}


def install(emulator: KernelEmulator) -> None:
    async def work(ctx: Any, payload: Any) -> Any:
        await asyncio.sleep(payload.get("sleep", 0.01) if isinstance(payload, dict) else 0.01)
        return payload

    emulator.add_action("app", "work", work)


async def run(
    kernel: AsyncKernel, payloads: list[Any], journal: str | Journal, **kw: Any
) -> list[MapResult]:
    async with kernel.invocations.map("app", "work", payloads, journal=journal, **kw) as results:
        return sorted([r async for r in results], key=lambda r: r.index)


async def test_a_rerun_yields_the_finished_without_any_request(tmp_path: Path) -> None:
    path = str(tmp_path / "run.db")
    payloads = [{"n": i} for i in range(12)]
    async with KernelEmulator() as emulator:
        install(emulator)
        async with emulator.client(retry=FAST) as kernel:
            first = await run(kernel, payloads, path, concurrency=4)
            assert [r.index for r in first] == list(range(12))
            assert all(r.ok for r in first)
            assert emulator.create_count == 12
            emulator.requests.clear()
            journal = Journal(path)
            again = await run(kernel, payloads, journal)
        assert list(emulator.requests) == []
        assert [(r.index, r.invocation_id, r.payload) for r in again] == [
            (r.index, r.invocation_id, r.payload) for r in first
        ]
        assert [r.invocation for r in again] == [r.invocation for r in first]
        assert journal.summary is not None
        assert journal.summary.finished == 12
        assert not journal.summary.reattached
        assert not journal.summary.adopted


async def test_a_create_answered_with_an_error_after_it_started_is_adopted(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "run.db")
    payloads = [{"n": 1}, {"n": 1}, {"n": 2}]  # identical payloads: matched one-to-one
    async with KernelEmulator() as emulator:
        install(emulator)
        emulator.faults.fail(502, times=1, method="POST", after_processing=True)
        async with emulator.client(retry=RetryPolicy(max_retries=0)) as kernel:
            first = await run(kernel, payloads, path, concurrency=1)
            errors = [r for r in first if r.error is not None]
            assert len(errors) == 1
            assert emulator.create_count == 3  # the failed answer's create did start
            journal = Journal(path)
            again = await run(kernel, payloads, journal)
        assert emulator.create_count == 3
        assert journal.summary is not None
        assert journal.summary.adopted == 1
        assert all(r.ok for r in again)
        ids = [r.invocation_id for r in again]
        assert len(set(ids)) == 3
        assert {inv.id for inv in emulator.snapshot()} == set(ids)


async def test_when_the_list_fails_the_unrecorded_create_is_an_error_not_a_duplicate(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "run.db")
    payloads = [{"n": 1}, {"n": 2}]
    async with KernelEmulator() as emulator:
        install(emulator)
        emulator.faults.fail(502, times=1, method="POST", after_processing=True)
        async with emulator.client(retry=RetryPolicy(max_retries=0)) as kernel:
            first = await run(kernel, payloads, path, concurrency=1)
            failed = next(r.index for r in first if r.error is not None)
            emulator.faults.fail(503, times=5, method="GET", path="/invocations")
            again = await run(kernel, payloads, path)
            assert emulator.create_count == 2
            error = again[failed].error
            assert isinstance(error, JournalUnresolvedError)
            assert error.index == failed
            assert "not created again" in str(error)
            assert again[1 - failed].ok
            emulator.faults.clear()
            third = await run(kernel, payloads, path)  # the list works now: adopted
        assert emulator.create_count == 2
        assert all(r.ok for r in third)


async def test_leaving_early_cancels_and_a_rerun_creates_those_again(tmp_path: Path) -> None:
    path = str(tmp_path / "run.db")
    payloads = [{"n": i, "sleep": 0.01 if i == 0 else 0.5} for i in range(4)]
    async with KernelEmulator() as emulator:
        install(emulator)
        async with emulator.client(retry=FAST, limits=Limits(initial=4)) as kernel:
            async with kernel.invocations.map("app", "work", payloads, journal=path) as results:
                async for result in results:
                    assert result.index == 0
                    break
            cancelled = [inv for inv in emulator.snapshot() if inv.status == "failed"]
            assert len(cancelled) == 3
            quick = [{"n": i, "sleep": 0.01} for i in range(4)]
            with pytest.raises(JournalMismatchError, match="payload 1 is not the one"):
                await run(kernel, quick, path)
            journal = Journal(path)
            again = await run(kernel, payloads, journal)
        assert journal.summary is not None
        assert journal.summary.finished == 1
        assert journal.summary.reattached == 0  # known cancelled: created, not followed
        assert journal.summary.recreated == 3
        assert [r.index for r in again] == [0, 1, 2, 3]
        assert all(r.ok for r in again)
        assert emulator.create_count == 7
        assert not {r.invocation_id for r in again} & {inv.id for inv in cancelled}


async def test_a_created_invocation_is_followed_not_created_again(tmp_path: Path) -> None:
    path = str(tmp_path / "run.db")
    async with KernelEmulator() as emulator:
        install(emulator)
        async with emulator.client(retry=FAST) as kernel:
            started = await kernel.invocations.create(
                "app", "work", payload={"sleep": 0.2}, async_=True
            )
            file = JournalFile(path, HEADER)
            digest = payload_digest('{"sleep":0.2}')
            file.write([creating(0, digest, 0.0), created(0, started.id)])
            file.close()
            journal = Journal(path)
            (result,) = await run(kernel, [{"sleep": 0.2}], journal)
        assert journal.summary is not None
        assert journal.summary.reattached == 1
        assert result.invocation_id == started.id
        assert result.ok
        assert emulator.create_count == 1


async def test_a_create_still_in_flight_when_the_rerun_starts_is_adopted(
    tmp_path: Path,
) -> None:
    # The last run recorded a create and died as it was sent; the service gets it a
    # moment after the re-run has started. Listing at once would miss it and create the
    # payload a second time: the re-run waits `in_flight` after the recorded send first.
    path = str(tmp_path / "run.db")
    file = JournalFile(path, HEADER)
    file.write([creating(0, payload_digest('{"n":7}'), time.time())])
    file.close()
    async with KernelEmulator() as emulator:
        install(emulator)
        async with emulator.client(retry=FAST) as kernel:

            async def lands_late() -> str:
                await asyncio.sleep(0.3)
                late = await kernel.invocations.create("app", "work", payload={"n": 7}, async_=True)
                return late.id

            landing = asyncio.create_task(lands_late())
            journal = Journal(path, in_flight=1.0)
            started = time.monotonic()
            (result,) = await run(kernel, [{"n": 7}], journal)
            late_id = await landing
        assert time.monotonic() - started >= 0.6  # waited for it (less the list's head start)
        assert journal.summary is not None
        assert journal.summary.adopted == 1
        assert result.invocation_id == late_id
        assert result.ok
        assert emulator.create_count == 1


def test_in_flight_is_validated(tmp_path: Path) -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="in_flight"):
            Journal(tmp_path / "run.db", in_flight=bad)


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        ({**HEADER, "app_name": "other"}, "app_name 'app', not 'other'"),
        ({**HEADER, "action_name": "act"}, "action_name 'work', not 'act'"),
        ({**HEADER, "version": "v2"}, "version 'latest', not 'v2'"),
    ],
)
def test_a_journal_for_another_app_action_or_version_is_refused(
    tmp_path: Path, header: dict[str, str], needle: str
) -> None:
    path = str(tmp_path / "run.db")
    JournalFile(path, HEADER).close()
    with pytest.raises(JournalMismatchError, match=f"made for {needle}"):
        JournalFile(path, header)


async def test_other_payloads_are_refused_before_any_request(tmp_path: Path) -> None:
    path = str(tmp_path / "run.db")
    async with KernelEmulator() as emulator:
        install(emulator)
        async with emulator.client(retry=FAST) as kernel:
            await run(kernel, [1, 2, 3], path)
            emulator.requests.clear()
            with pytest.raises(JournalMismatchError, match="payload 2 is not the one"):
                await run(kernel, [1, 2, 4, 5], path)
            with pytest.raises(JournalMismatchError, match="holds payload 2 but the input has"):
                await run(kernel, [1, 2], path)

            async def lazy() -> Any:  # a lazy source is checked as it is read
                for value in (1, 9):
                    yield value

            with pytest.raises(JournalMismatchError, match="payload 1 is not the one"):
                async with kernel.invocations.map("app", "work", lazy(), journal=path) as results:
                    async for _ in results:
                        pass
        assert [r for r in emulator.requests if r.method == "POST"] == []


def test_a_damaged_file_is_a_typed_error_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    file = JournalFile(str(path), HEADER)
    file.write([creating(i, payload_digest(str(i)), 0.0) for i in range(300)])
    file.close()
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(JournalCorruptError, match="left as it is") as info:
        JournalFile(str(path), HEADER)
    assert isinstance(info.value, JournalError)
    assert path.read_bytes() == whole[: len(whole) // 2]

    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(JournalCorruptError):
        JournalFile(str(path), HEADER)
    path.write_bytes(b"")
    with pytest.raises(JournalCorruptError, match="empty file"):
        JournalFile(str(path), HEADER)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(JournalCorruptError, match="not a kernel_async journal"):
        JournalFile(str(other), HEADER)


def test_a_journal_open_in_another_process_is_in_use(tmp_path: Path) -> None:
    path = str(tmp_path / "run.db")
    JournalFile(path, HEADER).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from kernel_async.journal._file import JournalFile; "
            f"f = JournalFile({path!r}, {HEADER!r}); print('open', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "open\n"
        with pytest.raises(JournalInUseError, match="in use by another process"):
            JournalFile(path, HEADER)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
        if holder.stdout is not None:
            holder.stdout.close()
    JournalFile(path, HEADER).close()  # released when that process ended


async def test_one_journal_in_two_maps_at_once_is_in_use(tmp_path: Path) -> None:
    path = str(tmp_path / "run.db")
    async with KernelEmulator() as emulator:
        install(emulator)
        async with emulator.client(retry=FAST) as kernel:
            journal = Journal(path)
            slow = [{"sleep": 0.2}]
            async with kernel.invocations.map("app", "work", slow, journal=journal) as first:
                step = asyncio.ensure_future(anext(aiter(first)))
                while journal._file is None:
                    await asyncio.sleep(0.01)
                with pytest.raises(JournalInUseError, match="already open"):
                    await run(kernel, slow, journal)
                with pytest.raises(JournalInUseError, match="in use"):
                    await run(kernel, slow, path)
                assert (await step).ok
    assert journal._file is None  # released when the map ended
