"""What the CLI prints for programs to read: JSON Lines that stay one object per line,
JSON arrays for json.tool, payload files read as JSON Lines, tables with no rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel_async.cli._common import event_json
from kernel_async.models import UnknownEvent

from ._cli import CLI, run, serving


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, str]]:
    with serving("--actions", "tests._cli_actions:install") as env:
        yield env


def json_lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_list_with_nothing_to_show_prints_the_header_in_every_plain_mode(
    served: dict[str, str],
) -> None:
    header = "ID  APP  ACTION  STATUS  STARTED  SECONDS\n"
    env = {**os.environ, **served}
    for extra_env, flags in [({"NO_COLOR": "1"}, []), ({}, ["--plain"]), ({}, [])]:
        done = subprocess.run(  # piped, as in CI: plain text even without --plain
            [*CLI, "list", "--app", "no-such-app", *flags],
            capture_output=True,
            text=True,
            env={**env, **extra_env},
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, header, "")


def test_payload_lines_end_at_newline_only(served: dict[str, str], tmp_path: Path) -> None:
    texts = ["one\u2028two", "three\u2029four", "five\x85six", "plain"]
    items = tmp_path / "items.jsonl"
    body = "\r\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts) + "\r\n"
    items.write_bytes(b"\xef\xbb\xbf" + body.encode())  # a BOM, as some editors write
    done = run("invoke", "demo-app", "echo", "--payloads", str(items), "-o", "json", env=served)
    assert done.returncode == 0, done.stderr
    results = sorted(json_lines(done.stdout), key=lambda r: r["index"])  # type: ignore[arg-type,return-value]
    assert [(r["index"], r["line"]) for r in results] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert [r["output"] for r in results] == [{"text": t} for t in texts]


def test_payloads_from_stdin_are_utf_8_whatever_the_locale(served: dict[str, str]) -> None:
    stdin = "\ufeff" + json.dumps(["é\u2028"], ensure_ascii=False) + "\n"
    done = subprocess.run(
        [*CLI, "invoke", "demo-app", "echo", "--payloads", "-", "-o", "json"],
        input=stdin.encode(),
        capture_output=True,
        env={**os.environ, **served, "PYTHONIOENCODING": "latin-1"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.decode("latin-1").splitlines()
    assert json.loads(line)["output"] == ["é\u2028"]  # escaped: one line to every reader


@pytest.mark.parametrize(
    ("output", "embedded"),
    [
        ('{\n  "a": [1.50e3, 2],\n  "b": "x"\n}', '{"a":[1.50e3,2],"b":"x"}'),
        ("done: 3 pages\nsecond line", '"done: 3 pages\\nsecond line"'),
        ("", '""'),
    ],
)
def test_a_fan_out_result_is_one_json_line_whatever_the_output(
    served: dict[str, str], output: str, embedded: str
) -> None:
    payload = json.dumps({"output": output})
    args = ["invoke", "odd-app", "finish-with", "--payloads", "-", "-o", "json"]
    done = run(*args, env=served, input=payload + "\n" + payload + "\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert f'"output":{embedded},' in line
        assert json.loads(line)["status"] == "succeeded"


def test_text_and_json_number_a_failure_the_same_way(
    served: dict[str, str], tmp_path: Path
) -> None:
    # payloads #0, #1 and #2; #2 is on line 4, after a blank line
    items = tmp_path / "items.jsonl"
    items.write_text('{"fail": true}\n{"fail": false}\n\n{"fail": true}\n')
    text = run("invoke", "demo-app", "flaky", "--payloads", str(items), env=served)
    as_json = run("invoke", "demo-app", "flaky", "--payloads", str(items), "-o", "json", env=served)
    assert text.returncode == as_json.returncode == 1
    failures = [line for line in text.stdout.splitlines() if line.startswith("#")]
    assert [f.split(": ", 1)[0] for f in failures] == ["#0", "#2 (line 4)"]
    assert all("upstream timed out" in f for f in failures)
    failed = sorted(
        (r["index"], r["line"]) for r in json_lines(as_json.stdout) if r["status"] == "failed"
    )
    assert failed == [(0, 1), (2, 4)]


def test_json_arrays_for_json_tool(served: dict[str, str]) -> None:
    stdin = "".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5))
    fan_out = run(
        "invoke", "demo-app", "echo", "--payloads", "-", "--json", env=served, input=stdin
    )
    assert fan_out.returncode == 0, fan_out.stderr
    assert fan_out.stdout.count("\n") == 1
    results = json.loads(fan_out.stdout)
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]  # in input order
    assert [r["output"] for r in results] == [{"text": f"doc {i}"} for i in range(5)]
    for command in (["list"], ["history"]):
        listed = run(*command, "--limit", "3", "--json", env=served)
        assert listed.returncode == 0, listed.stderr
        assert len(json.loads(listed.stdout)) == 3
    tool = subprocess.run(
        [sys.executable, "-m", "json.tool"],
        input=listed.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tool.returncode == 0, tool.stderr
    inv_id = results[0]["id"]
    browsers = run("browsers", inv_id, "--json", env=served)
    assert json.loads(browsers.stdout) == []


def test_get_as_one_json_line(served: dict[str, str]) -> None:
    inv_id = run("invoke", "demo-app", "echo", "--async", env=served).stdout.strip()
    one_line = run("get", inv_id, "-o", "json", env=served)
    assert one_line.returncode == 0, one_line.stderr
    assert one_line.stdout.count("\n") == 1
    assert json.loads(one_line.stdout)["id"] == inv_id
    indented = run("get", inv_id, env=served)
    assert json.loads(indented.stdout) == json.loads(one_line.stdout)
    assert indented.stdout.count("\n") > 5


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b'{\n  "event": "new_thing",\n  "n": 1.0e1\n}', '{"event":"new_thing","n":1.0e1}'),
        (b"not json\nat all", '{"event":"new_thing","data":"not json\\nat all"}'),
        (b"[1, 2]", '{"event":"new_thing","data":[1,2]}'),
        ('{"s": "a\u2028b"}'.encode(), '{"s":"a\\u2028b"}'),
    ],
)
def test_an_unknown_event_is_one_json_line(data: bytes, line: str) -> None:
    printed = event_json(UnknownEvent(event="new_thing", data=data))
    assert printed == line
    assert len(printed.splitlines()) == 1
    json.loads(printed)
