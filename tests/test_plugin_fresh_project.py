"""docs/testing.md's pytest setup, as written, in a fresh project: its code blocks are
copied into a throwaway directory and pytest runs there with our plugin, no warnings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def blocks(language: str) -> list[str]:
    text = (ROOT / "docs" / "testing.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def run_pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_documented_fixture_setup_runs_as_written(tmp_path: Path) -> None:
    test_file = next(b for b in blocks("python") if "kernel_emulator, kernel_client" in b)
    [config] = blocks("toml")
    (tmp_path / "test_agent.py").write_text(test_file)
    (tmp_path / "pyproject.toml").write_text(config)
    done = run_pytest(tmp_path, "-W", "error")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "warning" not in done.stdout.lower()


def test_without_the_setting_it_still_runs(tmp_path: Path) -> None:
    test_file = next(b for b in blocks("python") if "kernel_emulator, kernel_client" in b)
    (tmp_path / "test_agent.py").write_text(test_file)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # strict mode, nothing else
    done = run_pytest(tmp_path)
    assert "1 passed" in done.stdout, done.stdout + done.stderr


def test_without_pytest_asyncio_the_fixtures_say_to_install_it(tmp_path: Path) -> None:
    test_file = next(b for b in blocks("python") if "kernel_emulator, kernel_client" in b)
    (tmp_path / "test_agent.py").write_text(test_file)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    # as if pytest-asyncio were not installed; -rN: no short summary, which repeats the hint
    # untruncated where pytest sees CI set
    done = run_pytest(tmp_path, "-p", "no:asyncio", "-rN")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    hint = "are async: install pytest-asyncio (pip install pytest-asyncio) to use them"
    assert sum(hint in line for line in out.splitlines()) == 1, out  # once, in full
    assert "no plugin or hook" not in out
    assert "warning" not in out.lower()
