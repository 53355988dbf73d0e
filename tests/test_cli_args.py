"""What a newcomer meets first: bad arguments refused before any request, help that names
the command typed, a server that is not there, and a fan-out summary that says what it
knows."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from kernel_async.cli import build_parser

from ._cli import free_port, row, run, serving


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, str]]:
    with serving() as env:
        yield env


@pytest.fixture
def nowhere() -> dict[str, str]:
    """The env for a server that refuses connections (a closed port on 127.0.0.1): a
    command that sends a request fails with exit 1, not 2."""
    return {"KERNEL_BASE_URL": f"http://127.0.0.1:{free_port()}", "KERNEL_API_KEY": "k"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--since", "yesterday"], "--since 'yesterday' is neither an RFC 3339 time"),
        (["history", "--since", "5 minutes"], "--since '5 minutes' is neither"),
        (["follow", "x", "--since", "2025-13-01T00:00:00Z"], "--since '2025-13-01T00:00:00Z'"),
        (["invoke", "a", "b", "--since=-5m"], "--since '-5m' is neither"),
        (["invoke", "a", "b", "--sync", "--async"], "--async: not allowed with argument -s"),
        (["invoke", "a", "b", "--json"], "--json (one JSON array) goes with --payloads"),
    ],
)
def test_bad_arguments_exit_2_before_any_request(
    nowhere: dict[str, str], args: list[str], message: str
) -> None:
    done = run(*args, env=nowhere)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ")
    assert message in line


@pytest.mark.parametrize("since", ["5m", "1h30m", "1.5s", "300ms", "2025-01-31T09:00:00Z"])
def test_good_since_values_pass(served: dict[str, str], since: str) -> None:
    assert run("list", "--since", since, env=served).returncode == 0


@pytest.mark.parametrize(
    "command",
    [
        "invoke",
        "get",
        "list",
        "history",
        "follow",
        "cancel",
        "update",
        "browsers",
        "delete-browsers",
        "serve",
        "demo",
    ],
)
def test_every_command_help_names_the_command_typed(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([command, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: kernel-async {command} ")


def test_a_fan_out_against_a_refusing_server_stops_after_3_failures(
    nowhere: dict[str, str],
) -> None:
    port = nowhere["KERNEL_BASE_URL"].rsplit(":", 1)[1]
    stdin = '{"pages": 1}\n' * 50
    for mode in ("text", "json"):
        done = run(
            "invoke", "demo-app", "crawl", "--payloads", "-", "-o", mode, env=nowhere, input=stdin
        )
        assert done.returncode == 1
        assert done.stderr == (
            f"error: cannot connect to 127.0.0.1:{port}: connection refused; stopped after 3 "
            "connection failures in a row (3 of 50 payloads tried)\n"
        )
        if mode == "json":
            results = [json.loads(line) for line in done.stdout.splitlines()]
            assert len(results) == 3
            assert {r["error"] for r in results} == {
                f"cannot connect to 127.0.0.1:{port}: connection refused"
            }
        assert "ssl:default" not in done.stdout + done.stderr


def test_the_summary_says_no_limit_seen_without_a_cap(served: dict[str, str]) -> None:
    stdin = '{"x": 1}\n' * 50
    done = run("invoke", "demo-app", "echo", "--payloads", "-", env=served, input=stdin)
    assert done.returncode == 0, done.stderr
    assert row(done.stdout, "concurrency limit") == "no limit seen"
    capped = run(
        "invoke",
        "demo-app",
        "echo",
        "--payloads",
        "-",
        "--concurrency",
        "5",
        env=served,
        input=stdin,
    )
    assert row(capped.stdout, "concurrency limit") == "5 (configured)"


def test_a_limit_learnt_from_the_service_is_shown_as_learnt() -> None:
    with serving("--app-cap", "3") as env:
        stdin = '{"pages": 2}\n' * 12
        done = run("invoke", "demo-app", "crawl", "--payloads", "-", env=env, input=stdin)
    assert done.returncode == 0, done.stderr
    assert int(row(done.stdout, "429s absorbed").split()[0]) > 0
    # at most one over the cap while additive increase probes; 0.8x cuts go below it
    limit, learnt = row(done.stdout, "concurrency limit").split(" ", 1)
    assert learnt == "(learnt from 429s)"
    assert 1 <= int(limit) <= 4


def test_a_fan_out_goes_on_when_answers_are_lost_after_sending() -> None:
    # a connection dropped after the create was sent is not a server that is not there:
    # those invocations may run, so the fan-out neither stops nor cancels the others
    with serving("--actions", "tests._cli_actions:drop_five_creates") as env:
        stdin = '{"x": 1}\n' * 12
        done = run(
            "invoke", "demo-app", "echo", "--payloads", "-", "-o", "json", env=env, input=stdin
        )
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(r["index"] for r in results) == list(range(12))
    errors = [r for r in results if r["status"] == "error"]
    assert len(errors) == 5
    assert done.returncode == 1
    assert "stopped after" not in done.stderr
