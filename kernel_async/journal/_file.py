"""The journal's SQLite file: its schema, header check, lock, and writes (blocking calls;
`Journal` runs them off the event loop).

Durability: WAL. A write that records a create about to be sent is committed with
``synchronous=FULL`` (the WAL fsynced before the call returns), so that record survives
a crash of the process or of the machine. The other records (created, finished, not
created) are committed with ``synchronous=NORMAL``: they survive a crash of the process;
a crash of the machine may lose the last of them, and a re-run then finds those creates
on the service or follows them again, as it does after any crash. The file is held with
SQLite's exclusive locking mode for as long as it is open, so a second process gets
`JournalInUseError`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ._errors import JournalCorruptError, JournalError, JournalInUseError, JournalMismatchError
from ._leftovers import sweep, temp_prefix

__all__ = ["HEADER_KEYS", "JournalFile", "Row", "Write"]

#: ``PRAGMA application_id`` of a journal ("KAJ1"), so that another SQLite file is refused.
_APPLICATION_ID: Final = 0x4B414A31
_FORMAT: Final = 1
#: What a journal is for, compared in this order on open.
HEADER_KEYS: Final = ("app_name", "action_name", "version")
STATES: Final = ("pending", "creating", "created", "finished")

_SCHEMA: Final = """
CREATE TABLE header (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (
    idx INTEGER PRIMARY KEY,             -- the payload's index in the input
    digest TEXT NOT NULL,                -- sha256 of the payload's JSON string
    state TEXT NOT NULL CHECK (state IN ('pending', 'creating', 'created')),
    creating_at REAL,                    -- Unix time the create was about to be sent
    invocation_id TEXT                   -- once created
);
CREATE TABLE finals (                    -- apart, so that the rows above stay small
    idx INTEGER PRIMARY KEY,
    final TEXT NOT NULL                  -- the finished invocation, as JSON
);
CREATE VIEW entries AS                   -- what the journal knows of each index
    SELECT items.idx, digest, iif(final IS NULL, state, 'finished') AS state,
           creating_at, invocation_id, final
    FROM items LEFT JOIN finals ON finals.idx = items.idx;
CREATE TABLE known_ids (                 -- ids the journal held before an index's current
    invocation_id TEXT PRIMARY KEY,
    idx INTEGER NOT NULL
);
"""

#: The journals open in this process, by (device, inode): SQLite's locks keep other
#: processes out, but not another connection of this one.
_OPEN: set[tuple[int, int]] = set()
_OPEN_LOCK = threading.Lock()

#: One statement of a write: SQL and its parameters.
Write = tuple[str, Sequence[Any]]


@dataclass(frozen=True)
class Row:
    """What the journal knows of one index."""

    index: int
    digest: str
    state: str
    creating_at: float | None
    invocation_id: str | None
    final: str | None


class JournalFile:
    """An open journal file, locked for this process. Not thread-safe: one thread at a
    time (`Journal` uses a single worker thread)."""

    def __init__(self, path: str, header: dict[str, str]) -> None:
        self.path = path
        sweep(os.path.dirname(os.path.abspath(path)))  # what crashed creations left
        if not os.path.exists(path):
            _create(path, header)
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise JournalCorruptError(
                f"journal {path} is an empty file, not a journal (delete it to start afresh)",
                path=path,
            )
        try:
            conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise JournalCorruptError(f"journal {path} cannot be opened: {exc}", path=path) from exc
        self._conn = conn
        self._key: tuple[int, int] | None = None
        self._sync = True
        try:
            self._claim()
            self._setup(header)
            self.rows, self.known_ids = self._load()
        except BaseException:
            self.close()
            raise

    def _claim(self) -> None:
        stat = os.stat(self.path)
        key = (stat.st_dev, stat.st_ino)
        with _OPEN_LOCK:
            if key in _OPEN:
                raise JournalInUseError(
                    f"journal {self.path} is in use by another map() of this process",
                    path=self.path,
                )
            _OPEN.add(key)
        self._key = key

    def _fail(self, exc: sqlite3.Error) -> Exception:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return JournalInUseError(
                f"journal {self.path} is in use by another process (or another map() of "
                "this one); wait for it to finish, or use another journal",
                path=self.path,
            )
        return JournalCorruptError(
            f"journal {self.path} is not a readable journal ({text}); it was left as it is",
            path=self.path,
        )

    def _setup(self, header: dict[str, str]) -> None:
        conn = self._conn
        try:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN EXCLUSIVE")  # takes the lock, kept until close
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            if app_id != _APPLICATION_ID:
                raise JournalCorruptError(
                    f"{self.path} is an SQLite file but not a kernel_async journal; "
                    "it was left as it is",
                    path=self.path,
                )
            (check,) = conn.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise JournalCorruptError(
                    f"journal {self.path} is damaged ({check}); it was left as it is",
                    path=self.path,
                )
            self._check_header(header)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def _check_header(self, header: dict[str, str]) -> None:
        stored = dict(self._conn.execute("SELECT key, value FROM header").fetchall())
        for key in HEADER_KEYS:
            if stored.get(key) != header[key]:
                raise JournalMismatchError(
                    f"journal {self.path} was made for {key} {stored.get(key)!r}, not "
                    f"{header[key]!r}: use another journal for other input",
                    path=self.path,
                )

    def _load(self) -> tuple[dict[int, Row], set[str]]:
        try:
            rows = {
                r[0]: Row(*r)
                for r in self._conn.execute(
                    "SELECT idx, digest, state, creating_at, invocation_id, final FROM entries"
                )
            }
            known = {r[0] for r in self._conn.execute("SELECT invocation_id FROM known_ids")}
            known.update(r.invocation_id for r in rows.values() if r.invocation_id is not None)
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc
        return rows, known

    def write(self, writes: Sequence[Write], *, sync: bool = True) -> None:
        """Apply ``writes`` in one transaction; ``sync``: on disk before this returns
        (one fsync for them all), else once SQLite next syncs (a crash of the process
        loses nothing either way)."""
        conn = self._conn
        try:
            if sync != self._sync:
                conn.execute("PRAGMA synchronous=" + ("FULL" if sync else "NORMAL"))
                self._sync = sync
            conn.execute("BEGIN")
            try:
                # One executemany per kind of record, in the order an index goes through
                # them (so that one index's records keep their order).
                ordered = sorted(writes, key=lambda write: _PHASE[write[0]])
                for sql, group in itertools.groupby(ordered, key=lambda write: write[0]):
                    conn.executemany(sql, [params for _, params in group])
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def close(self) -> None:
        """Close the file (checkpointing the WAL into it) and release the lock."""
        self._conn.close()
        if self._key is not None:
            with _OPEN_LOCK:
                _OPEN.discard(self._key)
            self._key = None


def _create(path: str, header: dict[str, str]) -> None:
    """Make a new journal at ``path`` atomically: built in a file of its own and linked
    into place once complete, so that a crash while creating it leaves no half-made
    journal (at worst a stray ``.kernel-journal-<pid>-*.tmp`` file beside it, which a
    later open removes: `_leftovers`)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, temp = tempfile.mkstemp(prefix=temp_prefix(), suffix=".tmp", dir=folder)
    except OSError as exc:
        raise JournalError(f"journal {path} cannot be created: {exc}", path=path) from exc
    os.close(fd)
    try:
        conn = sqlite3.connect(temp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={_FORMAT}")
            conn.execute("BEGIN")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO header VALUES (?, ?)", [(k, header[k]) for k in HEADER_KEYS]
            )
            conn.execute("COMMIT")
        finally:
            conn.close()  # checkpoints the WAL into the file, synced
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            os.link(temp, path)
    except (OSError, sqlite3.Error) as exc:
        raise JournalError(f"journal {path} cannot be created: {exc}", path=path) from exc
    finally:
        for leftover in (temp, temp + "-wal", temp + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


# --- the writes -----------------------------------------------------------------------------


_KNOWN: Final = "INSERT OR IGNORE INTO known_ids VALUES (?, ?)"
_CREATING: Final = (
    "INSERT INTO items (idx, digest, state, creating_at) VALUES (?, ?, 'creating', ?) "
    "ON CONFLICT (idx) DO UPDATE SET state = 'creating', creating_at = excluded.creating_at,"
    " invocation_id = NULL"
)
_CREATED: Final = "UPDATE items SET state = 'created', invocation_id = ? WHERE idx = ?"
_FINISHED: Final = "INSERT OR REPLACE INTO finals (final, idx) VALUES (?, ?)"
_PENDING: Final = (
    "UPDATE items SET state = 'pending', creating_at = NULL, invocation_id = NULL WHERE idx = ?"
)
#: The order of the records of one index (a group of writes is applied in this order).
_PHASE: Final = {_KNOWN: 0, _CREATING: 1, _CREATED: 2, _FINISHED: 3, _PENDING: 4}


def creating(index: int, digest: str, at: float) -> Write:
    """About to send the create of ``index``."""
    return (_CREATING, (index, digest, at))


def known(index: int, invocation_id: str) -> Write:
    """``invocation_id`` was ``index``'s before it was created again: never adopt it."""
    return (_KNOWN, (invocation_id, index))


def created(index: int, invocation_id: str) -> Write:
    """``index`` was created as ``invocation_id``."""
    return (_CREATED, (invocation_id, index))


def finished(index: int, final: str) -> Write:
    """``index`` finished: ``final`` is its final invocation as JSON."""
    return (_FINISHED, (final, index))


def pending(index: int) -> Write:
    """``index`` is certainly not created, or its invocation certainly ended cancelled on
    exit: a re-run creates it (an id it had goes to `known` first)."""
    return (_PENDING, (index,))
