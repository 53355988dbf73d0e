"""Reliability suite: sizes scale with KERNEL_ASYNC_CHAOS_SCALE (1 in the default run, 5 in
``nox -s chaos``); the figures are printed at the end of the run."""

from __future__ import annotations

import os
from typing import Any

SCALE = float(os.environ.get("KERNEL_ASYNC_CHAOS_SCALE", "1"))
FIGURES: dict[str, dict[str, Any]] = {}


def scaled(n: int) -> int:
    return max(1, int(n * SCALE))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name, figures in FIGURES.items():
        line = ", ".join(f"{k}={v}" for k, v in figures.items())
        terminalreporter.write_line(f"{name}: {line}")
