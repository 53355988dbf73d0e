"""Developer tasks. ``nox`` runs lint, typecheck and tests; the rest are opt-in."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

PYTHON = ["3.11"]
NO_TESTS_COLLECTED = 5


def _pytest(session: nox.Session, *args: str, allow_empty: bool = False) -> None:
    """Run pytest; collecting no test at all is a failure unless ``allow_empty``."""
    codes = [0, NO_TESTS_COLLECTED] if allow_empty else [0]
    try:
        session.run("pytest", *args, *session.posargs, success_codes=codes)
    except nox.command.CommandFailed:
        session.error("pytest failed (exit 5 would mean it collected no tests)")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite, against the emulator and local aiohttp servers (no network)."""
    session.install("-e", ".[test,cli]")
    _pytest(session, "-m", "not slow and not official_sdk", "-p", "no:cacheprovider")


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
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs)


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """The reliability suite at 5x its default size (500 invocations, 5,000 cancellations)."""
    session.install("-e", ".[test]")
    session.env["KERNEL_ASYNC_CHAOS_SCALE"] = session.posargs[0] if session.posargs else "5"
    _pytest(session, "tests/reliability", "-p", "no:cacheprovider", "-rA")


@nox.session(python=["3.10", "3.12", "3.13"])
def compat(session: nox.Session) -> None:
    """The test suite on the other supported Pythons (skipped where not installed)."""
    session.install("-e", ".[test,cli]")
    _pytest(session, "-m", "not slow and not official_sdk", "-p", "no:cacheprovider", "-q")
