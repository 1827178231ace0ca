"""Each package imports only what its image holds: every module of it imports with the
project's other packages made unimportable (the way Python documents: sys.modules[name] =
None), in a fresh interpreter each."""

from __future__ import annotations

import subprocess
import sys

import pytest

PACKAGES = ("chatbot", "chatbot_contract", "chatbot_operator", "chatbot_loadtest",
            "chatbot_dev")
# package -> the project's packages it may import (besides itself)
ALLOWED = {
    "chatbot": {"chatbot_contract"},  # the service images
    "chatbot_operator": {"chatbot_contract"},  # the operator image
    "chatbot_contract": set(),  # both images; standard library only
    "chatbot_loadtest": set(),  # a client over HTTP
}
_IMPORT_ALL = """
import importlib, pkgutil, sys
for name in {blocked!r}:
    sys.modules[name] = None
package = importlib.import_module({package!r})
for module in pkgutil.walk_packages(package.__path__, {package!r} + "."):
    importlib.import_module(module.name)
print("imported", {package!r})
"""


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_every_module_imports_without_the_packages_it_must_not_use(package):
    blocked = sorted(set(PACKAGES) - ALLOWED[package] - {package})
    if package == "chatbot_contract":
        blocked += ["pydantic", "pydantic_settings"]  # the project's only base dependencies
    run = subprocess.run([sys.executable, "-c", _IMPORT_ALL.format(package=package,
                                                                  blocked=blocked)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"imported {package}" in run.stdout
