"""A process killed while creating a journal leaves its temporary file; the next open in
that folder removes it once its process is gone (and it is past `STALE_AFTER`), keeps
what a live process may still be building, and opens whatever the sweep could not do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kernel_async.journal._file import JournalFile
from kernel_async.journal._leftovers import ABANDONED_AFTER, STALE_AFTER, is_leftover

HEADER = {"app_name": "app", "action_name": "work", "version": "latest"}

#: Builds a journal and is killed (SIGKILL, by itself) just before linking it into place.
KILLED_WHILE_CREATING = (
    "import os, signal, sys\n"
    "from kernel_async.journal._file import JournalFile\n"
    "os.link = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)\n"
    f"JournalFile(sys.argv[1], {HEADER!r})\n"
)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".kernel-journal-"))


def age(path: Path, seconds: float) -> None:
    """Make ``path`` look ``seconds`` old."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def killed_creation(folder: Path) -> tuple[int, str]:
    """Run a creation of ``folder/run.db`` killed mid-way: its pid and what it left."""
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_WHILE_CREATING, str(folder / "run.db")],
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        _, stderr = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, stderr
    (name,) = leftovers(folder)
    assert name.startswith(f".kernel-journal-{child.pid}-")
    assert name.endswith(".tmp")
    assert not (folder / "run.db").exists()
    return child.pid, name


def test_a_creation_killed_mid_way_leaves_a_file_the_next_open_removes(tmp_path: Path) -> None:
    _, name = killed_creation(tmp_path)
    JournalFile(str(tmp_path / "run.db"), HEADER).close()  # within STALE_AFTER: kept
    assert leftovers(tmp_path) == [name]
    age(tmp_path / name, STALE_AFTER + 5)
    JournalFile(str(tmp_path / "other.db"), HEADER).close()
    assert leftovers(tmp_path) == []
    assert (tmp_path / "run.db").is_file()
    assert (tmp_path / "other.db").is_file()


def test_a_live_process_file_is_kept_and_the_abandoned_removed(tmp_path: Path) -> None:
    dead, _ = killed_creation(tmp_path)
    for leftover in tmp_path.glob(".kernel-journal-*"):
        leftover.unlink()
    planted = {
        # this process is alive: being built, perhaps by another thread
        f".kernel-journal-{os.getpid()}-live0001.tmp": (STALE_AFTER + 5, True),
        # its process is gone: SQLite's companions go too
        f".kernel-journal-{dead}-gone0001.tmp": (STALE_AFTER + 5, False),
        f".kernel-journal-{dead}-gone0001.tmp-wal": (STALE_AFTER + 5, False),
        f".kernel-journal-{dead}-gone0001.tmp-shm": (STALE_AFTER + 5, False),
        # named before pids were: removed only once abandoned
        ".kernel-journal-a1b2c3d4.tmp": (STALE_AFTER + 5, True),
        ".kernel-journal-e5f6g7h8.tmp": (ABANDONED_AFTER + 5, False),
        # whoever made it, a day old is abandoned
        f".kernel-journal-{os.getpid()}-old00001.tmp": (ABANDONED_AFTER + 5, False),
        # not a leftover's name
        ".kernel-journal-notes.txt": (ABANDONED_AFTER + 5, True),
        "run.db.tmp": (ABANDONED_AFTER + 5, True),
    }
    for name, (seconds, _) in planted.items():
        (tmp_path / name).write_bytes(b"x")
        age(tmp_path / name, seconds)
    JournalFile(str(tmp_path / "run.db"), HEADER).close()
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name != "run.db")
    assert kept == sorted(name for name, (_, keep) in planted.items() if keep)


def test_a_leftover_that_cannot_be_removed_does_not_fail_the_open(tmp_path: Path) -> None:
    dead, _ = killed_creation(tmp_path)
    stuck = tmp_path / f".kernel-journal-{dead}-stuck001.tmp"
    stuck.mkdir()  # unlink fails on a directory
    (stuck / "inside").write_bytes(b"x")
    age(stuck, STALE_AFTER + 5)
    file = JournalFile(str(tmp_path / "run.db"), HEADER)
    file.close()
    assert stuck.is_dir()
    assert (tmp_path / "run.db").is_file()


def test_the_policy() -> None:
    name = ".kernel-journal-42-abcd_123.tmp"
    assert is_leftover(name, STALE_AFTER + 1, alive=False)
    assert not is_leftover(name, STALE_AFTER - 1, alive=False)
    assert not is_leftover(name, ABANDONED_AFTER - 1, alive=True)
    assert not is_leftover(name, ABANDONED_AFTER - 1, alive=None)
    assert is_leftover(name, ABANDONED_AFTER + 1, alive=True)
    assert not is_leftover("run.db", ABANDONED_AFTER + 1, alive=False)
