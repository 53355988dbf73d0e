"""The docs as written, run against ``kernel-async serve``: the README's Quick start and
every Python block of every page of the docs, with the two variables ``serve`` prints.

A complete program (one that calls ``asyncio.run``) runs as it is. A fragment runs inside
``async def main()`` after ``kernel = AsyncKernel()``, with an invocation of ``my-app``
already made (``id``, ``invocation_id``) and the names a page introduces in its prose
(``url``, ``urls``, ``payloads``); the few that cannot run are listed in `NOT_RUN`, each
with the reason, and are compiled at least.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._cli import serving

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: (page, a line of the block) -> why it is only compiled.
NOT_RUN: dict[tuple[str, str], str] = {
    ("docs/fan-out-and-limits.md", "emulator.quotas.max_running_per_app = 20"): (
        "a test's outline: its `...` stands for the test's own calls"
    ),
}

PRELUDE = """
import asyncio
import aiohttp
from kernel_async import *
from kernel_async import AsyncKernel
from kernel_async.testing import KernelEmulator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

async def _prelude():
    async with AsyncKernel() as kernel:
        created = await kernel.invocations.create("my-app", "analyze", payload={"url": "u"})
        return created.id

id = invocation_id = inv_id = asyncio.run(_prelude())
url = "https://example.com"
urls = [f"https://example.com/{i}" for i in range(5)]
payloads = items = [{"url": u} for u in urls]
provider, meters = TracerProvider(), MeterProvider()
emulator = kernel_emulator = KernelEmulator()  # a test's fixture: configured, not started
"""


def blocks() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
            line = text.count("\n", 0, match.start()) + 1
            found.append((page.relative_to(ROOT).as_posix(), line, match.group(1)))
    return found


def program(code: str) -> str:
    """The block as a program: as it is if complete, else inside ``main()`` (its imports
    at the top), after a first invocation made by ``kernel``."""
    if "asyncio.run(" in code:
        return code
    imports: list[str] = []
    rest: list[str] = []
    open_import = False
    for line in code.splitlines():
        if open_import or line.startswith(("import ", "from ")):
            imports.append(line)
            open_import = (open_import or "(" in line) and ")" not in line
        else:
            rest.append(line)
    body = textwrap.indent("\n".join(rest), "    ")
    return (
        PRELUDE
        + "\n".join(imports)
        + "\n\nasync def main() -> None:\n    kernel = AsyncKernel()\n"
        + '    await kernel.invocations.run("my-app", "echo")\n'
        + body
        + "\n    await kernel.aclose()\n\nasyncio.run(main())\n"
    )


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, str]]:
    with serving() as env:
        yield env


def not_run_reason(page: str, code: str) -> str | None:
    for (where, line), why in NOT_RUN.items():
        if where == page and line in code:
            return why
    return None


def run_snippet(
    source: str, served: dict[str, str], cwd: Path, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``source`` in a fresh interpreter against the served emulator, in ``cwd`` (what a
    snippet writes, a journal say, stays out of the repository), without `KERNEL_LOG`."""
    env = {**os.environ, **served, "PYTHONPATH": str(ROOT)}
    env.pop("KERNEL_LOG", None)
    return subprocess.run(
        [sys.executable, "-c", source],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


@pytest.mark.parametrize(("page", "line", "code"), blocks(), ids=lambda v: str(v)[:40])
def test_every_python_block_runs_against_the_emulator(
    served: dict[str, str], page: str, line: int, code: str, tmp_path: Path
) -> None:
    source = program(code)
    compile(source, f"{page}:{line}", "exec")
    if not_run_reason(page, code) is not None:
        return
    done = run_snippet(source, served, tmp_path, check=False)
    assert done.returncode == 0, f"{page}:{line}\n{done.stdout}\n{done.stderr}"
    assert served["KERNEL_API_KEY"] not in done.stdout + done.stderr


def test_the_readme_quick_start_prints_the_result(served: dict[str, str], tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", quick, flags=re.S)
    assert code is not None
    done = run_snippet(code.group(1), served, tmp_path)
    assert done.stdout.startswith("succeeded {'url': 'https://example.com'")


def test_the_console_exporter_snippet_prints_the_spans(
    served: dict[str, str], tmp_path: Path
) -> None:
    code = next(c for page, _, c in blocks() if "ConsoleSpanExporter" in c)
    done = run_snippet(code, served, tmp_path)
    for name in ("create", "follow", "run"):
        assert f'"name": "kernel.invocations.{name}"' in done.stdout
