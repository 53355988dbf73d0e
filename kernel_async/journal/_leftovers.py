"""What a crash while creating a journal leaves behind, and its removal.

A new journal is built in a temporary file named after the process building it,
``.kernel-journal-<pid>-XXXXXXXX.tmp``, and linked into place once complete (`_file`).
Killed in between, the process leaves that file (and perhaps SQLite's ``-wal`` / ``-shm``
beside it). Each open of a journal sweeps its folder for such leftovers:

- one whose process is gone on this machine is removed once it is `STALE_AFTER` seconds
  old: building a journal takes milliseconds, and the wait covers a process of another
  machine or PID namespace sharing the folder, whose pid means nothing here;
- any is removed once it is `ABANDONED_AFTER` seconds old: its pid was reused, it is
  named without a pid (made before pids were in the names), or its process is stopped;
- nothing else is touched, a live process's file least of all. The sweep never raises:
  a leftover it cannot remove stays, and the journal opens all the same.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Final

__all__ = ["ABANDONED_AFTER", "STALE_AFTER", "is_leftover", "sweep", "temp_prefix"]

logger = logging.getLogger("kernel_async")

#: Seconds after which a leftover whose process is gone is removed.
STALE_AFTER: Final = 60.0
#: Seconds after which any leftover is removed, whoever made it.
ABANDONED_AFTER: Final = 24 * 3600.0

_PREFIX: Final = ".kernel-journal-"
#: A leftover's name: the pid (absent before pids were in the names: the random part of
#: a `tempfile` name has no ``-``), the random part, and SQLite's companion files.
_NAME: Final = re.compile(r"\.kernel-journal-(?:(\d+)-)?\w+\.tmp(?:-wal|-shm|-journal)?")


def temp_prefix() -> str:
    """The prefix of the temporary file a journal is built in, by this process."""
    return f"{_PREFIX}{os.getpid()}-"


def is_leftover(name: str, age: float, alive: bool | None) -> bool:
    """Whether the file ``name``, ``age`` seconds old, is a leftover to remove; ``alive``:
    whether its process runs here (``None``: unknown, or the name has no pid)."""
    if _NAME.fullmatch(name) is None:
        return False
    return age > ABANDONED_AFTER or (alive is False and age > STALE_AFTER)


def sweep(folder: str) -> None:
    """Remove the leftovers of crashed journal creations in ``folder``; never raises."""
    try:
        names = [name for name in os.listdir(folder) if name.startswith(_PREFIX)]
    except OSError as exc:
        logger.debug("Could not look for journal leftovers in %s: %s", folder, exc)
        return
    now = time.time()
    for name in names:
        path = os.path.join(folder, name)
        try:
            age = now - os.lstat(path).st_mtime
            match = _NAME.fullmatch(name)
            alive = None if match is None or match[1] is None else _alive(int(match[1]))
            if is_leftover(name, age, alive):
                os.unlink(path)
                logger.info("Removed %s, left by a journal creation that did not finish", path)
        except OSError as exc:
            logger.debug("Could not remove journal leftover %s: %s", path, exc)


def _alive(pid: int) -> bool | None:
    """Whether process ``pid`` runs on this machine (``None``: cannot tell)."""
    if pid <= 0 or os.name == "nt":  # on Windows, os.kill would end the process
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # someone else's (alive), or no such pid number
        return None
    return True
