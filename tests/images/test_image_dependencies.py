"""Each image installs its own deployable's dependencies and none of the other's.

pyproject.toml holds both deployables in one distribution with an extra each: the service
image installs the base, `service` and `llm`; the operator image the base and `operator`.
What the other side's requirements pull in (their dependency closure, read from the
metadata of this venv, where every extra is installed) must not be in an image, unless its
own requirements pull it in too (pyyaml: kopf's and gguf's). The lists are printed (-s).
Of the project's own packages and commands, each image holds its own and the contract, and
no README.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support import docker_engine as engine

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DISTRIBUTION = "chatbot-ai"
SERVICE = ("service", "llm")
OPERATOR = ("operator",)
# What `python -m venv` installs by itself (llm, in the service's closure, asks for pip too).
VENV = {"pip", "setuptools", "wheel"}
PACKAGES = ("chatbot", "chatbot_contract", "chatbot_operator", "chatbot_loadtest",
            "chatbot_dev")
COMMANDS = ("chatbot", "chatbot-loadtest", "chatbot-dev", "kopf")
# The project's packages and commands an image holds, and any README the project's
# distribution brought (a file, or its metadata's long description).
_HOLDS = ("import importlib.util as u, importlib.metadata as m, shutil; "
          f"print(*[p for p in {PACKAGES!r} if u.find_spec(p)], sep=','); "
          f"print(*[c for c in {COMMANDS!r} if shutil.which(c)], sep=','); "
          f"d = m.distribution({DISTRIBUTION!r}); "
          "print(*[f for f in d.files if 'readme' in f.name.lower()], "
          "*(['METADATA description'] if (d.metadata.get_payload() or '').strip() else []), "
          "sep=',')")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(extras: tuple[str, ...]) -> list[Requirement]:
    reqs = [*PROJECT["dependencies"]]
    for extra in extras:
        reqs += PROJECT["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def _closure(extras: tuple[str, ...]) -> set[str]:
    """The distributions the base and these extras install (with their requirements')."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = _requirements(extras)
    while todo:
        req = todo.pop()
        key = (_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        for dep in map(Requirement, requires):
            if dep.marker is None or any(dep.marker.evaluate({"extra": e})
                                         for e in (req.extras or {""})):
                todo.append(dep)
    return {name for name, _ in seen}


def _check(image: str, own: tuple[str, ...], other: tuple[str, ...]) -> None:
    installed = engine.installed_distributions(image)
    print(f"\n{image}: {len(installed)} distributions\n  " + "\n  ".join(sorted(installed)))
    direct = {_name(r.name) for r in _requirements(own)}
    assert direct | {DISTRIBUTION} <= installed, sorted(direct - installed)
    foreign = _closure(other) - _closure(own) - VENV
    assert foreign, "the other deployable's requirements are all shared: nothing to check"
    assert not installed & foreign, f"{image} carries {sorted(installed & foreign)}"


def test_the_operator_image_has_none_of_the_services_dependencies(operator_image):
    _check(operator_image[0], OPERATOR, SERVICE)


def test_the_service_image_has_none_of_the_operators_dependencies(service_image):
    _check(service_image[0], SERVICE, OPERATOR)


def _holds(image: str) -> tuple[set[str], set[str], set[str]]:
    out = engine.docker("run", "--rm", "--entrypoint", "python", image, "-c", _HOLDS).stdout
    packages, commands, readmes = (set(filter(None, line.split(","))) for line in
                                   out.splitlines())
    return packages, commands, readmes


def test_each_image_holds_its_own_packages_and_commands_only(service_image, operator_image):
    assert _holds(service_image[0]) == ({"chatbot", "chatbot_contract"}, {"chatbot"}, set())
    assert _holds(operator_image[0]) == ({"chatbot_operator", "chatbot_contract"}, {"kopf"},
                                         set())
