"""The CLI ends quietly when its reader goes away (``kernel-async ... | head -1``): exit 0
or 141, nothing at all on standard error (no traceback, no asyncio or aiohttp noise)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from ._cli import CLI, run, serving

# Unclosed sessions, sockets and files would print on standard error: let them.
QUIET_CHECKS = {"PYTHONWARNINGS": "always::ResourceWarning"}


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, str]]:
    with serving() as env:
        yield env


def closed_pipe(
    args: list[str], env: dict[str, str], *, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with standard output a pipe whose reader is already gone: its first
    write fails, every time, whatever the timing."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [*CLI, *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            input=stdin,
            text=True,
            env={**os.environ, **env, **QUIET_CHECKS},
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


def head_1(
    args: list[str], env: dict[str, str], *, stdin: str | None = None
) -> tuple[str, int, str]:
    """``kernel-async ARGS | head -1``: read one line, then close the pipe while the
    command still runs. Returns that line, the exit code and standard error."""
    with subprocess.Popen(
        [*CLI, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env, **QUIET_CHECKS},
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            if stdin is not None:
                proc.stdin.write(stdin)
            proc.stdin.close()
            first = proc.stdout.readline()
            proc.stdout.close()
            code = proc.wait(60)
            return first, code, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()


CRAWLS = '{"pages": 3}\n' * 12


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["demo", "-n", "20", "--seed", "1"], None),
        (["list"], None),
        (["list", "--app", "no-such-app"], None),  # only the header: it fails too
        (["list", "-o", "json"], None),
        (["invoke", "demo-app", "crawl", "-p", '{"pages": 3}'], None),
        (["invoke", "demo-app", "crawl", "-o", "json"], None),
        (["invoke", "demo-app", "crawl", "--payloads", "-", "-o", "json"], CRAWLS),
        (["invoke", "demo-app", "crawl", "--payloads", "-"], CRAWLS),
        (["get", "--help"], None),
    ],
)
def test_a_closed_pipe_ends_the_command_with_141_and_nothing_on_stderr(
    served: dict[str, str], args: list[str], stdin: str | None
) -> None:
    run("invoke", "demo-app", "echo", env=served)  # something to list
    done = closed_pipe(args, served, stdin=stdin)
    assert (done.returncode, done.stderr) == (141, "") or (
        args[-1] == "--help" and (done.returncode, done.stderr) == (0, "")
    )


def test_follow_piped_into_head(served: dict[str, str]) -> None:
    created = run("invoke", "demo-app", "crawl", "-p", '{"pages": 40}', "--async", env=served)
    inv_id = created.stdout.strip()
    first, code, stderr = head_1(["follow", inv_id], served)
    assert first.split()[-1] in {"[queued]", "[running]"} or "visiting page" in first
    assert (code, stderr) in {(141, ""), (0, "")}
    # the invocation goes on: a closed pipe is not Ctrl-C
    assert json.loads(run("get", inv_id, env=served).stdout)["status"] in {"running", "succeeded"}


def test_demo_piped_into_head(served: dict[str, str]) -> None:
    first, code, stderr = head_1(["demo", "-n", "40", "--seed", "3"], served)
    assert first.startswith("4/40")  # the first progress line, at 10%
    assert (code, stderr) in {(141, ""), (0, "")}


def test_a_fan_out_piped_into_head_starts_nothing_more(served: dict[str, str]) -> None:
    stdin = '{"pages": 1}\n' * 60
    args = ["invoke", "demo-app", "crawl", "--payloads", "-", "-o", "json", "--concurrency", "2"]
    first, code, stderr = head_1(args, served, stdin=stdin)
    assert json.loads(first)["status"] == "succeeded"
    assert (code, stderr) in {(141, ""), (0, "")}
    listed = json.loads(
        run("list", "--app", "demo-app", "--limit", "100", "--json", env=served).stdout
    )
    one_page = [inv for inv in listed if inv.get("payload") == '{"pages": 1}']
    assert len(one_page) < 60  # it stopped: the rest were never created
    assert all(inv["status"] != "running" for inv in one_page)  # and none left running
