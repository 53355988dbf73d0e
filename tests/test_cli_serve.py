"""`kernel-async serve` with quotas: several client processes share one emulated quota."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import datetime

from ._cli import CLI, free_port, row, run, serving


def instant(timestamp: str) -> datetime:
    """An RFC 3339 time as the API writes it (``...Z``); Python 3.10's fromisoformat
    does not read the ``Z``."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def most_running_at_once(invocations: list[dict[str, str]]) -> int:
    """The most invocations between start and finish at one instant (an end and a start
    at the same instant do not overlap)."""
    moments: list[tuple[datetime, int]] = []
    for inv in invocations:
        moments.append((instant(inv["started_at"]), 1))
        moments.append((instant(inv["finished_at"]), -1))
    running = peak = 0
    for _, step in sorted(moments):  # -1 sorts before +1 at a tie
        running += step
        peak = max(peak, running)
    return peak


def test_two_processes_sharing_an_org_cap_never_run_more_than_it() -> None:
    stdin = '{"pages": 3}\n' * 12
    said: list[str] = []
    with serving("--org-cap", "4", said=said) as env:
        clients = [
            subprocess.Popen(
                [*CLI, "--plain", "invoke", "demo-app", "crawl", "--payloads", "-"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **env},
            )
            for _ in range(2)
        ]
        outputs = [client.communicate(stdin, timeout=120) for client in clients]
        listed = run("list", "--app", "demo-app", "--limit", "100", "--json", env=env)
    for client, (stdout, stderr) in zip(clients, outputs, strict=True):
        assert client.returncode == 0, stderr
        assert row(stdout, "succeeded") == "12"
    invocations = json.loads(listed.stdout)
    assert len(invocations) == 24  # each payload started once
    assert most_running_at_once(invocations) == 4
    # the server's own count agrees, and it refused the creates over the cap
    [summary] = [line for line in said if line.startswith("Stopped.")]
    assert summary.startswith("Stopped. Most running at once: 4 (demo-app: 4); refused ")
    assert not summary.startswith("Stopped. Most running at once: 4 (demo-app: 4); refused 0 ")
    # the server refused the creates over the cap, and the clients waited and went again
    absorbed = [int(row(stdout, "429s absorbed").split()[0]) for stdout, _ in outputs]
    assert sum(absorbed) > 0


def test_serve_enforces_the_rate_across_processes() -> None:
    said: list[str] = []
    with serving("--rate", "2", "--rate-window", "600", said=said) as env:
        # three processes, three requests: the third is over the limit for 600 s, longer
        # than a client waits (max_retry_after), so it fails with the service's 429
        codes = [run("list", env=env) for _ in range(3)]
    assert [c.returncode for c in codes] == [0, 0, 1]
    assert codes[2].stderr.startswith("error: 429 rate_limited: ")
    assert said[-1] == (
        "Stopped. Most running at once: 0; refused 0 creates over a cap and "
        "1 request over the rate limit."
    )


def test_serve_prints_its_quotas() -> None:
    port = free_port()
    args = ["serve", "--port", str(port), "--org-cap", "20", "--rate", "100"]
    with subprocess.Popen(
        [*CLI, "--plain", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            banner = [proc.stdout.readline() for _ in range(4)]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert banner[0] == f"Kernel API emulator on http://127.0.0.1:{port}\n"
    assert banner[3] == "Quotas: org cap 20, app cap none, rate limit 100 requests per 1s.\n"
