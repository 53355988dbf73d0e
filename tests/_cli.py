"""Running the kernel-async CLI as a user runs it: as a process, against `kernel-async serve`
started on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "kernel_async"]
KEY = "sk_cli_test_key"


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``kernel-async --plain ARGS`` to completion, its output captured."""
    return subprocess.run(
        [*CLI, "--plain", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        input=input,
        check=False,
    )


def free_port() -> int:
    """A port nothing listens on (so far) on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(*options: str, said: list[str] | None = None) -> Iterator[dict[str, str]]:
    """`kernel-async serve OPTIONS` in a subprocess; yields the env that points the CLI at
    it, and checks that Ctrl-C stops it with exit 0 (``said`` gets what it printed then)."""
    port = free_port()
    with subprocess.Popen(
        [*CLI, "--plain", "serve", "--port", str(port), "--api-key", KEY, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,  # --actions tests._cli_actions:install imports from here
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert f"http://127.0.0.1:{port}" in first, first
            yield {"KERNEL_BASE_URL": f"http://127.0.0.1:{port}", "KERNEL_API_KEY": KEY}
            proc.send_signal(signal.SIGINT)
            rest = proc.stdout.read()
            assert proc.wait(10) == 0, rest
            if said is not None:
                said.extend(rest.splitlines())
        finally:
            if proc.poll() is None:
                proc.kill()


def row(stdout: str, metric: str) -> str:
    """The value of one row of a plain-text metric table."""
    for line in stdout.splitlines():
        if line.startswith(metric + "  "):
            return line[len(metric) :].strip()
    raise AssertionError(f"no row {metric!r} in:\n{stdout}")
