"""Developer tasks. ``nox`` runs lint, typecheck, tests and docs; the rest are opt-in."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

PYTHON = ["3.11"]
#: Every Python the package supports: the default `nox` run tests each one that is installed
#: (a missing one is skipped, so a claim of support is checked wherever it can be).
SUPPORTED = ["3.10", "3.11", "3.12", "3.13"]
NO_TESTS_COLLECTED = 5


def _expose_pyenv_interpreters() -> None:
    """Put pyenv's installed 3.10-3.13 on PATH ahead of its shims.

    pyenv's shims only answer for the selected version, so without this `nox` would skip
    the other installed Pythons on a machine that has them.
    """
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if not root.is_dir():
        return
    found = [
        str(path / "bin")
        for path in sorted(root.iterdir())
        if any(path.name.startswith(v + ".") for v in SUPPORTED) and (path / "bin").is_dir()
    ]
    if found:
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_expose_pyenv_interpreters()
#: `.ci/run` checks that at least one `tests` session left a marker here: a run where every
#: interpreter was missing must not pass as green.
RAN_MARKER_DIR = Path(".nox") / ".tests-ran"


def _pytest(session: nox.Session, *args: str, allow_empty: bool = False) -> None:
    """Run pytest; collecting no test at all is a failure unless ``allow_empty``."""
    codes = [0, NO_TESTS_COLLECTED] if allow_empty else [0]
    try:
        session.run("pytest", *args, *session.posargs, success_codes=codes)
    except nox.command.CommandFailed:
        session.error("pytest failed (exit 5 would mean it collected no tests)")


@nox.session(python=SUPPORTED)
def tests(session: nox.Session) -> None:
    """The test suite on every supported Python that is installed (emulator and local
    aiohttp servers only, no network)."""
    session.install("-e", ".[test,cli]")
    _pytest(session, "-m", "not slow and not official_sdk", "-p", "no:cacheprovider")
    RAN_MARKER_DIR.mkdir(parents=True, exist_ok=True)
    (RAN_MARKER_DIR / str(session.python)).touch()


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, tests, examples and benchmarks."""
    session.install("-e", ".[typecheck,test,cli]")
    session.run("mypy")


@nox.session(python=PYTHON)
def official_sdk(session: nox.Session) -> None:
    """The official `kernel` SDK against our emulator: proof the emulator speaks the API."""
    session.install("-e", ".[test]", "kernel")
    _pytest(session, "-m", "official_sdk", "-p", "no:cacheprovider")


@nox.session(python=PYTHON)
def slow(session: nox.Session) -> None:
    """The longer tests left out of the default run."""
    session.install("-e", ".[test,cli]")
    _pytest(session, "-m", "slow", "-p", "no:cacheprovider", allow_empty=True)


@nox.session(python=PYTHON)
def conformance(session: nox.Session) -> None:
    """schemathesis against `kernel-async serve`, with the API's OpenAPI spec."""
    session.install("-e", ".", "schemathesis>=4", "pyyaml")
    session.run("python", "tests/conformance/run_schemathesis.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: kernel_async vs the official SDK, aiohttp-sse-client and the raw floor.

    Writes benchmarks/results/latest.json and docs/benchmarks.md. ``-- --quick`` for a
    smoke run with tiny counts.
    """
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks.run", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site in strict mode (broken links fail)."""
    session.install("-e", ".[docs]")
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        "site",
        *session.posargs,
        env={"NO_MKDOCS_2_WARNING": "1"},  # mkdocs-material's end-of-life banner
    )


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """The reliability suite at 5x its default size (500 invocations, 5,000 cancellations)."""
    session.install("-e", ".[test]")
    session.env["KERNEL_ASYNC_CHAOS_SCALE"] = session.posargs[0] if session.posargs else "5"
    _pytest(session, "tests/reliability", "-p", "no:cacheprovider", "-rA")
