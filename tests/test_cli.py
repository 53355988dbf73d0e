"""The kernel-async CLI, run as a user runs it: as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from ._cli import CLI, KEY, free_port, row, run, serving


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, str]]:
    """`kernel-async serve` in a subprocess; yields the env that points the CLI at it."""
    with serving() as env:
        yield env


def test_console_script_is_registered() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert names["kernel-async"] == "kernel_async.cli:main"


def test_demo_runs_to_the_end_under_the_limits() -> None:
    # Only what holds however loaded the machine is: not how many 429s came, nor where the
    # learnt limit settled between the AIMD cuts (0.8x what ran, then additive increase).
    n, cap = 60, 5
    result = run("demo", "-n", str(n), "--app-cap", str(cap), "--seed", "7")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # every invocation seen to its end, none started twice
    assert row(out, "client errors") == "0"
    assert int(row(out, "succeeded")) + int(row(out, "failed (by the action)")) == n
    assert row(out, "started more than once") == "0"
    # n at once against the cap: the client met it, and the limit it learnt from the
    # 429s never went more than one past it (additive increase probing for a raised cap)
    assert int(row(out, "429s absorbed: concurrency")) > 0
    assert row(out, "most running at once") == str(cap)  # a concurrency 429 means cap ran
    limit, source = row(out, "concurrency limit").split(" ", 1)
    assert source == "(learnt from 429s)"
    assert 1 <= int(limit) <= cap + 1
    assert 1 <= int(row(out, "highest limit learnt")) <= cap + 1


def test_invoke_fans_out_one_invocation_per_payload_line(
    served: dict[str, str], tmp_path: Path
) -> None:
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(12)]
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join([*lines[:6], "", *lines[6:]]) + "\n")
    result = run("invoke", "demo-app", "summarize", "--payloads", str(items), env=served)
    assert result.returncode == 0, result.stderr
    assert "12/12" in result.stdout
    assert row(result.stdout, "succeeded") == "12"
    assert row(result.stdout, "errors (not seen through)") == "0"


def test_invoke_fan_out_as_json_lines_from_stdin_exits_1_on_a_failure(
    served: dict[str, str],
) -> None:
    stdin = '{"fail": true}\n{"fail": false}\n{"fail": false}\n'
    done = subprocess.run(
        [*CLI, "invoke", "demo-app", "flaky", "--payloads", "-", "-o", "json"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **served},
        check=False,
    )
    assert done.returncode == 1, done.stderr
    results = sorted(
        (json.loads(line) for line in done.stdout.splitlines()), key=lambda r: r["index"]
    )
    assert [(r["index"], r["line"]) for r in results] == [(0, 1), (1, 2), (2, 3)]
    assert results[0]["status"] == "failed"
    assert results[0]["status_reason"] == "upstream timed out"
    assert all(r["status"] == "succeeded" and r["output"] == {"ok": True} for r in results[1:])


def test_a_bad_payload_line_is_named_and_nothing_starts(
    served: dict[str, str], tmp_path: Path
) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text('{"ok": 1}\n{nope\n')
    result = run("invoke", "demo-app", "echo", "--payloads", str(items), env=served)
    assert result.returncode == 2
    assert "line 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_invoke_as_json_prints_one_object_per_event_and_exits_1_on_failure(
    served: dict[str, str],
) -> None:
    result = run(
        "invoke", "demo-app", "flaky", "--payload", '{"fail": true}', "-o", "json", env=served
    )
    assert result.returncode == 1, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert {e["event"] for e in events} >= {"log", "invocation_state"}
    assert events[-1]["invocation"]["status"] == "failed"


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
    rows = json.loads(listed.stdout)
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


def test_ctrl_c_during_a_fan_out_cancels_what_runs_then_exits_130(served: dict[str, str]) -> None:
    stdin = '{"pages": 1}\n' + '{"pages": 500}\n' * 5
    with subprocess.Popen(
        [*CLI, "invoke", "demo-app", "crawl", "--payloads", "-", "-o", "json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **served},
    ) as proc:
        try:
            assert proc.stdin is not None
            assert proc.stdout is not None
            assert proc.stderr is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
            first = json.loads(proc.stdout.readline())  # the quick one finished
            assert first["status"] == "succeeded"
            time.sleep(0.5)  # slow start lets the long ones go within a few doublings
            proc.send_signal(signal.SIGINT)
            assert proc.wait(20) == 130
            assert "cancelled" in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
    listed = run("list", "--app", "demo-app", "--json", "--limit", "100", env=served).stdout
    crawls = json.loads(listed)
    long_ones = [c for c in crawls if c["payload"] == '{"pages": 500}']
    assert len(long_ones) >= 5
    assert all(c["status"] == "failed" for c in long_ones)
    assert all(c["output"] == '{"error":"Invocation cancelled by user"}' for c in long_ones)


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
    assert no_key.returncode == 2  # a missing argument, as every bad argument
    # in the CLI's words: its flag and variable, not the library's AsyncKernel(api_key=...)
    assert no_key.stderr == "error: no API key: pass --api-key KEY or set KERNEL_API_KEY\n"
    port = free_port()
    down = run("get", "x", "--base-url", f"http://127.0.0.1:{port}", "--api-key", KEY, timeout=60)
    assert down.returncode == 1
    # not aiohttp's "Cannot connect to host ... ssl:default [Connect call failed ...]"
    assert down.stderr == f"error: cannot connect to 127.0.0.1:{port}: connection refused\n"
    assert KEY not in down.stderr + down.stdout


def test_usage_errors_exit_2() -> None:
    assert run("frobnicate").returncode == 2
    assert run("list", "--status", "paused").returncode == 2


# --- parity with the Kernel CLI, and what a newcomer tripped on ---------------------------------


def test_invoke_takes_the_payload_from_a_file_or_stdin(
    served: dict[str, str], tmp_path: Path
) -> None:
    payload = tmp_path / "payload.json"
    payload.write_text('{"text": "from a file"}')
    by_file = run("invoke", "demo-app", "echo", "-f", str(payload), "--sync", env=served)
    assert by_file.returncode == 0, by_file.stderr
    assert '{"text":"from a file"}' in by_file.stdout
    by_stdin = subprocess.run(
        [*CLI, "invoke", "demo-app", "echo", "--payload-file", "-", "-s", "-o", "json"],
        input='{"text": "from stdin"}',
        capture_output=True,
        text=True,
        env={**os.environ, **served},
        timeout=60,
        check=False,
    )
    assert by_stdin.returncode == 0, by_stdin.stderr
    done = json.loads(by_stdin.stdout)
    assert (done["status"], json.loads(done["output"])) == ("succeeded", {"text": "from stdin"})


def test_a_failed_sync_invocation_exits_1_in_both_modes(served: dict[str, str]) -> None:
    for mode in ("text", "json"):
        result = run(
            "invoke", "demo-app", "flaky", "-p", '{"fail": true}', "--sync", "-o", mode, env=served
        )
        assert result.returncode == 1, (mode, result.stderr)
        assert "upstream timed out" in result.stdout


def test_async_invoke_as_json_and_since(served: dict[str, str]) -> None:
    created = run("invoke", "demo-app", "echo", "--async", "-o", "json", env=served)
    assert created.returncode == 0, created.stderr
    inv_id = json.loads(created.stdout)["id"]
    later = "2999-01-01T00:00:00Z"  # nothing that old... or that new: only the final state
    replay = run("invoke", "demo-app", "echo", "--since", later, "-o", "json", env=served)
    assert replay.returncode == 0, replay.stderr
    events = [json.loads(line) for line in replay.stdout.splitlines()]
    assert [e["event"] for e in events] == ["invocation_state"]
    assert inv_id


def test_list_filters_search_page_and_print_json(served: dict[str, str]) -> None:
    for text in ("alpha", "beta"):
        assert (
            run(
                "invoke", "demo-app", "summarize", "-p", json.dumps({"text": text}), env=served
            ).returncode
            == 0
        )
    everything = run("list", "-o", "json", "--limit", "100", env=served)
    listed = [json.loads(line) for line in everything.stdout.splitlines()]
    newest = listed[0]
    args = [
        "--app",
        "demo-app",
        "--action",
        "summarize",
        "--status",
        "succeeded",
        "--version",
        "latest",
        "--since",
        "1h",
        "--query",
        newest["id"][:10],
    ]
    found = run("history", *args, "-o", "json", env=served)  # the Kernel CLI's name
    assert found.returncode == 0, found.stderr
    assert [json.loads(line)["id"] for line in found.stdout.splitlines()] == [newest["id"]]
    second = run("list", "--limit", "1", "--offset", "1", "--json", env=served)
    assert [inv["id"] for inv in json.loads(second.stdout)] == [listed[1]["id"]]
    by_deployment = run("list", "--deployment-id", "dep_nope", "-o", "json", env=served)
    assert by_deployment.stdout == ""


def test_piped_output_is_plain_with_complete_rows(served: dict[str, str]) -> None:
    run("invoke", "demo-app", "echo", env=served)
    piped = subprocess.run(  # no --plain: stdout is a pipe, as in `kernel-async list | cat`
        [*CLI, "list"],
        capture_output=True,
        text=True,
        env={**os.environ, **served},
        timeout=60,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr
    assert not set("┏┃━│…") & set(piped.stdout)
    ids = [line.split()[0] for line in piped.stdout.splitlines()[1:]]
    assert ids
    assert all(len(i) == 24 for i in ids)  # whole ids


def test_plain_is_accepted_after_the_command(served: dict[str, str]) -> None:
    result = subprocess.run(
        [*CLI, "list", "--plain"],
        capture_output=True,
        text=True,
        env={**os.environ, **served},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_update_browsers_and_delete_browsers(served: dict[str, str]) -> None:
    created = run("invoke", "demo-app", "crawl", "-p", '{"pages": 500}', "--async", env=served)
    inv_id = created.stdout.strip()
    for _ in range(100):
        browsers = run("browsers", inv_id, "-o", "json", env=served)
        if browsers.stdout:
            break
        time.sleep(0.05)
    [browser] = [json.loads(line) for line in browsers.stdout.splitlines()]
    assert browser["name"] == "crawler"
    table = run("browsers", inv_id, env=served)
    assert browser["session_id"] in table.stdout
    deleted = run("delete-browsers", inv_id, env=served)
    assert deleted.returncode == 0, deleted.stderr
    assert "no browsers" in run("browsers", inv_id, env=served).stdout
    updated = run(
        "update",
        inv_id,
        "--status",
        "succeeded",
        "--result",
        '{"pages": 0}',
        "-o",
        "json",
        env=served,
    )
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["output"] == '{"pages": 0}'
    again = run("update", inv_id, "--status", "failed", env=served)
    assert again.returncode == 1  # already finished: the API says so
    assert "already finished" in again.stderr


def test_api_error_details_are_shown(served: dict[str, str]) -> None:
    result = run("invoke", "demo-app", "nope", env=served)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "404 not_found: Action 'nope' not found in app 'demo-app'" in line


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--base-url", "notaurl", "--api-key", "k"],
        ["list", "--limit", "0"],
        ["serve", "--heartbeat-interval", "-1"],
        ["invoke", "a", "b", "-f", "/no/such/file"],
        ["update", "x", "--status", "queued"],
    ],
)
def test_every_bad_argument_exits_2(served: dict[str, str], args: list[str]) -> None:
    result = run(*args, env=served)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_a_busy_port_is_one_line(served: dict[str, str]) -> None:
    port = served["KERNEL_BASE_URL"].rsplit(":", 1)[1]
    result = run("serve", "--port", port, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot serve on 127.0.0.1:{port}: the address is already in use"
    ]


def test_serve_help_shows_the_defaults_and_the_demo_actions() -> None:
    text = " ".join(run("serve", "--help").stdout.split())
    assert "default 8787" in text
    assert "random one, printed at start" in text
    for action in ("summarize", "crawl", "flaky", "echo"):
        assert f"demo-app/{action}" in text
