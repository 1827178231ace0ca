"""Run the helm binary that tests/kube/build-binaries builds (version in versions.env)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.kube import binaries
from tests.kube import helpers as cluster_helpers

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/chatbot"


def helm_binary() -> Path:
    path = binaries.binary("helm")
    if not binaries.COMPONENTS["helm"].is_built():
        msg = "helm is not built: run tests/kube/build-binaries helm"
        if cluster_helpers.require_cluster():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def run(*args: str, values: dict | None = None, check: bool = False,
        env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """helm ARGS [-f values.yaml]; returns the finished process (text output)."""
    cmd = [str(helm_binary()), *args]
    with tempfile.TemporaryDirectory() as tmp:
        if values is not None:
            path = Path(tmp) / "values.yaml"
            path.write_text(yaml.safe_dump(values))
            cmd += ["-f", str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def template(values: dict | None = None, *, release: str = "chatbot",
             namespace: str = "chatbot", show_only: str | None = None) -> list[dict]:
    """`helm template` of the chart, parsed: the list of objects it renders (hooks too)."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    if show_only:
        args += ["--show-only", show_only]
    out = run(*args, values=values or {}, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got " \
                            f"{[o['metadata']['name'] for o in found]}"
    return found[0]


def dumps(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
