"""Developer tasks. ``nox`` runs lint, typecheck, the tests on the newest installed Python
and the docs; ``.ci/run`` adds the other Pythons, the lowest dependencies and the wheel."""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import nox

nox.needs_version = ">=2024.10.9"
nox.options.sessions = ["lint", "typecheck", "tests", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False
# uv makes the virtualenvs (seconds instead of minutes); plain virtualenv if uv is missing.
nox.options.default_venv_backend = "uv|virtualenv"
# A missing Python is skipped, never downloaded: CI machines may have no internet.
nox.options.download_python = "never"

#: Every Python the package supports, oldest first.
SUPPORTED = ["3.10", "3.11", "3.12", "3.13"]
NO_TESTS_COLLECTED = 5
#: The pytest arguments of every run of the suite.
SUITE = ("-m", "not slow and not official_sdk", "-p", "no:cacheprovider")


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
INSTALLED = [v for v in SUPPORTED if shutil.which(f"python{v}")]
#: The default run tests one Python, the newest installed; `tests_all` tests the others.
NEWEST = INSTALLED[-1] if INSTALLED else SUPPORTED[-1]
OTHERS = [v for v in SUPPORTED if v != NEWEST]
#: The lowest dependencies go with the oldest Python, as on a user's old machine.
OLDEST = INSTALLED[0] if INSTALLED else SUPPORTED[0]
#: `.ci/run` checks that at least one tests session left a marker here: a run where every
#: interpreter was missing must not pass as green.
RAN_MARKER_DIR = Path(".nox") / ".tests-ran"
#: Only for `tests_lowest`: opentelemetry-instrumentation < 0.49b0 (the test extra's oldest
#: aiohttp instrumentation, the one that goes with opentelemetry-api 1.20) imports
#: pkg_resources, which setuptools 81 removed.
LOWEST_CONSTRAINTS = ["setuptools<81"]


def _suite(session: nox.Session, marker: str) -> None:
    """Run the suite (collecting no test is a failure), then leave a marker for CI."""
    _pytest(session, *SUITE)
    RAN_MARKER_DIR.mkdir(parents=True, exist_ok=True)
    (RAN_MARKER_DIR / marker).touch()


def _pytest(session: nox.Session, *args: str, allow_empty: bool = False) -> None:
    """Run pytest; collecting no test at all is a failure unless ``allow_empty``."""
    codes = [0, NO_TESTS_COLLECTED] if allow_empty else [0]
    try:
        session.run("pytest", *args, *session.posargs, success_codes=codes)
    except nox.command.CommandFailed:
        session.error("pytest failed (exit 5 would mean it collected no tests)")


@nox.session(python=NEWEST)
def tests(session: nox.Session) -> None:
    """The test suite on the newest installed Python (emulator and local aiohttp servers
    only, no network). pytest's header names the versions of the dependencies."""
    session.install("-e", ".[test,cli,otel]")
    _suite(session, str(session.python))


@nox.session(python=OTHERS)
def tests_all(session: nox.Session) -> None:
    """The test suite on every other supported Python that is installed (a missing one is
    skipped). With `tests`, every installed Python 3.10-3.13."""
    session.install("-e", ".[test,cli,otel]")
    _suite(session, str(session.python))


@nox.session(python=OLDEST, venv_backend="uv", reuse_venv=False)
def tests_lowest(session: nox.Session) -> None:
    """The test suite against the lowest versions pyproject.toml allows for every runtime
    dependency and extra (uv's ``--resolution lowest-direct``), on the oldest Python.

    Fails loudly on a bound that is a claim nobody ran; pytest's header line
    ``dependencies: ...`` names the versions it ran against.
    """
    constraints = Path(session.create_tmp()) / "lowest-constraints.txt"
    constraints.write_text("\n".join(LOWEST_CONSTRAINTS) + "\n")
    session.install(
        "--resolution", "lowest-direct", "-c", str(constraints), "-e", ".[test,cli,otel,redis]"
    )
    _suite(session, f"lowest-{session.python}")


@nox.session(python=NEWEST)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=NEWEST)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, tests, examples and benchmarks."""
    session.install("-e", ".[typecheck,test,cli,otel]")
    session.run("mypy")


def _check_wheel(wheel: Path) -> None:
    """The wheel carries the type marker, the pytest plugin, the CLI and the extras."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = {n.split("/")[-1]: archive.read(n).decode() for n in names if ".dist-info/" in n}
    missing = [
        n for n in ("kernel_async/py.typed", "kernel_async/testing/__init__.py") if n not in names
    ]
    problems = [f"no {n}" for n in missing]
    entry_points = meta.get("entry_points.txt", "")
    for needed in ("[pytest11]", "kernel_async.testing.pytest_plugin", "kernel-async = "):
        if needed not in entry_points:
            problems.append(f"entry_points.txt lacks {needed!r}")
    for extra in ("cli", "otel", "redis"):
        if f"Provides-Extra: {extra}" not in meta.get("METADATA", ""):
            problems.append(f"no extra {extra!r}")
    if any(n.startswith("tests/") for n in names):
        problems.append("the tests are in the wheel")
    if problems:
        raise nox.command.CommandFailed(f"{wheel.name}: " + "; ".join(problems))


def _check_sdist(sdist: Path) -> None:
    """The sdist can rebuild the wheel and run the tests: source, tests, docs, licence."""
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    needed = [
        "kernel_async/py.typed",
        "tests/conftest.py",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "pyproject.toml",
        "docs/index.md",
        "mkdocs.yml",
    ]
    missing = [n for n in needed if n not in names]
    if missing:
        raise nox.command.CommandFailed(f"{sdist.name} lacks {', '.join(missing)}")


@nox.session(python=NEWEST)
def package(session: nox.Session) -> None:
    """Build the sdist and wheel, check them (twine, contents), install the wheel (not
    editable, with the `cli` extra) in a fresh venv and run `kernel-async demo` from it,
    outside the source tree."""
    session.install("build[uv]>=1.2", "twine>=5")
    tmp = Path(session.create_tmp()).resolve()
    dist = tmp / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--installer", "uv", "--outdir", str(dist))
    wheel, sdist = next(dist.glob("*.whl")), next(dist.glob("*.tar.gz"))
    session.run("twine", "check", "--strict", str(wheel), str(sdist))
    try:
        _check_wheel(wheel)
        _check_sdist(sdist)
    except nox.command.CommandFailed as exc:
        session.error(str(exc))

    user = tmp / "user"  # a stranger's machine: a fresh venv and a directory of their own
    shutil.rmtree(user, ignore_errors=True)
    user.mkdir()
    python = user / "venv" / "bin" / "python"
    session.run("python", "-m", "venv", "--without-pip", str(user / "venv"))
    session.run(
        "python", "-m", "uv", "pip", "install", "-q", "--python", str(python), f"{wheel}[cli]"
    )
    with session.chdir(user):
        where = session.run(
            str(python),
            "-c",
            "import kernel_async; print(kernel_async.__file__)",
            external=True,
            silent=True,
        )
        if not str(where).startswith(str(user / "venv")):
            session.error(f"kernel_async imported from {where}, not from the installed wheel")
        demo = str(user / "venv" / "bin" / "kernel-async")
        out = session.run(demo, "demo", external=True, silent=True)
    print(out)
    summary = {
        "invocations": r"invocations\s+200\b",
        "client errors": r"client errors\s+0\b",
        "started more than once": r"started more than once\s+0\b",
    }
    wrong = [name for name, pattern in summary.items() if not re.search(pattern, str(out))]
    if wrong:
        session.error(f"kernel-async demo from the wheel: unexpected {', '.join(wrong)}")


@nox.session(python=NEWEST)
def official_sdk(session: nox.Session) -> None:
    """The official `kernel` SDK against our emulator: proof the emulator speaks the API."""
    session.install("-e", ".[test]", "kernel")
    _pytest(session, "-m", "official_sdk", "-p", "no:cacheprovider")


@nox.session(python=NEWEST)
def slow(session: nox.Session) -> None:
    """The longer tests left out of the default run."""
    session.install("-e", ".[test,cli]")
    _pytest(session, "-m", "slow", "-p", "no:cacheprovider", allow_empty=True)


@nox.session(python=NEWEST)
def conformance(session: nox.Session) -> None:
    """schemathesis against `kernel-async serve`, with the API's OpenAPI spec."""
    session.install("-e", ".", "schemathesis>=4", "pyyaml")
    session.run("python", "tests/conformance/run_schemathesis.py", *session.posargs)


@nox.session(python=NEWEST)
def bench(session: nox.Session) -> None:
    """Benchmarks: kernel_async vs the official SDK, aiohttp-sse-client and the raw floor.

    Writes benchmarks/results/latest.json and docs/benchmarks.md, then runs the
    many-processes bench (benchmarks/results/multi.json, docs/many-processes.png).
    ``-- --quick`` for a smoke run with tiny counts.
    """
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks.run", *session.posargs)
    # Many processes sharing one cap (alone: python -m benchmarks.multi [--cases K=4]).
    quick = ["--quick"] if "--quick" in session.posargs else []
    session.run("python", "-m", "benchmarks.multi", *quick)


@nox.session(python=NEWEST)
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


@nox.session(python=NEWEST)
def chaos(session: nox.Session) -> None:
    """The reliability suite at 5x its default size (500 invocations, 5,000 cancellations)."""
    session.install("-e", ".[test]")
    session.env["KERNEL_ASYNC_CHAOS_SCALE"] = session.posargs[0] if session.posargs else "5"
    _pytest(session, "tests/reliability", "-p", "no:cacheprovider", "-rA")
