"""The kernel-async CLI, run as a user runs it: as a process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import entry_points

import pytest

CLI = [sys.executable, "-m", "kernel_async"]
KEY = "sk_cli_test_key"


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--plain", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, str]]:
    """`kernel-async serve` in a subprocess; yields the env that points the CLI at it."""
    port = free_port()
    with subprocess.Popen(
        [*CLI, "--plain", "serve", "--port", str(port), "--api-key", KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert f"http://127.0.0.1:{port}" in first, first
            yield {"KERNEL_BASE_URL": f"http://127.0.0.1:{port}", "KERNEL_API_KEY": KEY}
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0, proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()


def test_console_script_is_registered() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert names["kernel-async"] == "kernel_async.cli:main"


def test_demo_runs_to_the_end() -> None:
    result = run("demo", "-n", "30", "--concurrency", "10", "--seed", "7")
    assert result.returncode == 0, result.stderr
    assert "invocations" in result.stdout
    assert "client errors                       0" in result.stdout
    assert "30/30" in result.stdout


def test_invoke_prints_logs_and_output(served: dict[str, str]) -> None:
    result = run("invoke", "demo-app", "crawl", "--payload", '{"pages": 2}', env=served)
    assert result.returncode == 0, result.stderr
    assert "visiting page 1/2" in result.stdout
    assert "visiting page 2/2" in result.stdout
    assert '{"pages":2}' in result.stdout


def test_invoke_async_get_list_follow_cancel(served: dict[str, str], tmp_path: object) -> None:
    result = run("invoke", "demo-app", "echo", "--async", "--payload", "[1,2]", env=served)
    assert result.returncode == 0, result.stderr
    inv_id = result.stdout.strip()
    assert len(inv_id) == 24

    got = run("get", inv_id, env=served)
    assert got.returncode == 0
    assert json.loads(got.stdout)["id"] == inv_id

    listed = run("list", "--json", "--app", "demo-app", "--limit", "5", env=served)
    assert listed.returncode == 0
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert inv_id in [r["id"] for r in rows]
    table = run("list", "--limit", "3", env=served)
    assert "STATUS" in table.stdout

    followed = run("follow", inv_id, env=served)
    assert followed.returncode == 0
    assert "[succeeded]" in followed.stdout

    cancelled = run("cancel", inv_id, env=served)  # already succeeded: a clear API error
    assert cancelled.returncode == 1
    assert cancelled.stderr.startswith("error: 400")
    assert "Traceback" not in cancelled.stderr


def test_failed_invocation_exits_non_zero(served: dict[str, str]) -> None:
    result = run("invoke", "demo-app", "flaky", "--payload", '{"fail": true}', env=served)
    assert result.returncode == 1, result.stderr
    assert "[failed]" in result.stdout


def test_ctrl_c_cancels_the_invocation_then_exits_130(served: dict[str, str]) -> None:
    with subprocess.Popen(
        [*CLI, "--plain", "invoke", "demo-app", "crawl", "--payload", '{"pages": 500}'],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **served},
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stderr is not None
            inv_id = proc.stdout.readline().split()[1]
            for line in proc.stdout:  # wait until the action is really running
                if "visiting page 1/500" in line:
                    break
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 130
            assert f"cancelling invocation {inv_id}" in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
    status = json.loads(run("get", inv_id, env=served).stdout)
    assert status["status"] == "failed"
    assert status["status_reason"] == "Invocation cancelled"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["invoke", "demo-app", "echo", "--payload", "{bad"], 2, "not valid JSON"),
        (["invoke", "demo-app", "echo", "--payload", "@/no/such/file"], 2, "cannot read"),
        (["list", "--limit", "0"], 2, "limit"),
        (["get", "no-such-id"], 1, "404"),
    ],
)
def test_bad_input_is_one_clear_line(
    served: dict[str, str], args: list[str], code: int, message: str
) -> None:
    result = run(*args, env=served)
    assert result.returncode == code
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_no_api_key_and_unreachable_server_are_clear_errors() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_")}
    no_key = subprocess.run(
        [*CLI, "--plain", "get", "x"], capture_output=True, text=True, env=env, check=False
    )
    assert no_key.returncode == 1
    assert "KERNEL_API_KEY" in no_key.stderr
    port = free_port()
    start = time.perf_counter()
    down = run("get", "x", "--base-url", f"http://127.0.0.1:{port}", "--api-key", KEY, timeout=60)
    assert down.returncode == 1
    assert "Connection error" in down.stderr
    assert KEY not in down.stderr + down.stdout
    assert time.perf_counter() - start < 30


def test_usage_errors_exit_2() -> None:
    assert run("frobnicate").returncode == 2
    assert run("list", "--status", "paused").returncode == 2
