"""Run schemathesis against `kernel-async serve` with the API's OpenAPI spec.

Used by ``nox -s conformance``. Two gaps of the merged spec are handled, not hidden:

* the spec applies bearer auth to every operation (``security: bearerAuth``) but lists a
  401 response only on the GET operations; the API answers 401 on POST and PATCH too, so
  the 401 is added to those operations before the run;
* ``since`` ("RFC timestamps or durations like 5m") and ``payload`` ("sent as a JSON
  string") are constrained in prose only, so schemathesis' ``positive_data_acceptance``
  check would demand that ``since=__main__`` be accepted. The emulator answers those with
  the documented 400, so that one check is left out.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "spec" / "kernel-invocations.openapi.yaml"
KEY = "sk_conformance"


def patched_spec() -> Path:
    spec: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    for path in spec["paths"].values():
        for operation in path.values():
            operation["responses"].setdefault(
                "401", {"$ref": "#/components/responses/Unauthorized"}
            )
    out = Path(tempfile.mkdtemp()) / "spec.yaml"
    out.write_text(yaml.safe_dump(spec))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kernel_async",
            "--plain",
            "serve",
            "--port",
            str(port),
            "--api-key",
            KEY,
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        return subprocess.call(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                str(patched_spec()),
                "--url",
                url,
                "-H",
                f"Authorization: Bearer {KEY}",
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "60",
                "--seed",
                "1",
                "-w",
                "1",
                *sys.argv[1:],
            ]
        )
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    raise SystemExit(main())
