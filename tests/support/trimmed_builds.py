"""What the trimmed Go builds' tests (tests/unit/test_*_trim.py) check against: a component's
cached binary, and the patched copy of its module source that its build compiled. Both skip,
naming the build command, until build-binaries has built the component (its modules are then
in the module cache the patched copy is made from)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kube import binaries


def built_binary(component: str, name: str = "") -> Path:
    """The cached program `name` (default: the component's own) of a built component."""
    if not binaries.COMPONENTS[component].is_built():
        pytest.skip(f"{component} not built: {binaries.BUILD_COMMAND} {component}")
    return binaries.binary(name or component)


def patched_module_source(component: str, module: str, patch: Callable[[Path], None],
                          dest: Path) -> Path:
    """A writable copy of `module`'s source at the component's version, `patch` applied."""
    if shutil.which("go") is None:
        pytest.skip("go not found")
    built_binary(component)
    return binaries.patched_source(module, binaries.COMPONENTS[component].version, patch,
                                   dest)
