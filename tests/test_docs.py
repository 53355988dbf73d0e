"""Docs are part of the feature: every public name has a docstring, and so do its public
methods and properties."""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest

import kernel_async
import kernel_async.telemetry
import kernel_async.testing
from kernel_async.resources import invocations

MODULES = [kernel_async, kernel_async.testing, kernel_async.telemetry]


def public_objects() -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    for module in MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                found.append((f"{module.__name__}.{name}", obj))
    found.append(("Invocations", invocations.Invocations))
    return found


@pytest.mark.parametrize(
    ("name", "obj"), public_objects(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_public_names_and_their_members_have_docstrings(name: str, obj: object) -> None:
    assert inspect.getdoc(obj), f"{name} has no docstring"
    if not inspect.isclass(obj):
        return
    for member, value in vars(obj).items():
        if member.startswith("_"):
            continue
        if inspect.isfunction(value) or isinstance(value, property):
            assert inspect.getdoc(value), f"{name}.{member} has no docstring"


def test_modules_have_docstrings() -> None:
    for module in [*MODULES, kernel_async.errors, kernel_async.models]:
        assert isinstance(module, ModuleType)
        assert module.__doc__
