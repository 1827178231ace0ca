"""skaffold's own JSON schema for the ``apiVersion`` that skaffold.yaml declares, which
test_skaffold.py validates skaffold.yaml against.

The schema comes from the skaffold Go module zip (``SKAFFOLD_VERSION`` in
tests/kube/versions.env; ``docs-v2/content/en/schemas/<apiVersion>.json``); skaffold itself
is never built. ``tests/kube/build-binaries`` (no arguments) fetches it once and extracts
it into ``${XDG_CACHE_HOME:-~/.cache}/chatbot-dev/schemas/``. Standard library only, like
build-binaries.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

from tests.kube import binaries

ROOT = Path(__file__).resolve().parents[2]
SKAFFOLD_MODULE = "github.com/GoogleContainerTools/skaffold/v2"


def version() -> str:
    return binaries.versions()["SKAFFOLD_VERSION"]


def api_version(skaffold_yaml: Path | None = None) -> str:
    """The schema version skaffold.yaml declares (``apiVersion: skaffold/v4beta13``)."""
    path = skaffold_yaml or ROOT / "skaffold.yaml"
    m = re.search(r"^apiVersion:\s*skaffold/(\S+)", path.read_text(), re.M)
    if not m:
        raise ValueError(f"{path}: no 'apiVersion: skaffold/...' line")
    return m.group(1)


def schema(api: str | None = None, *, download: bool = True) -> Path:
    """The cached JSON schema file for ``skaffold/<api>`` (default: skaffold.yaml's);
    without ``download``, FileNotFoundError when the module zip is not fetched yet."""
    api = api or api_version()
    out = binaries.cache_root() / "schemas" / f"skaffold-{version()}" / f"{api}.json"
    if out.is_file():
        return out
    zip_path = binaries.module_zip(SKAFFOLD_MODULE, version(), download=download)
    with zipfile.ZipFile(zip_path) as zf:
        data = zf.read(f"{SKAFFOLD_MODULE}@{version()}/docs-v2/content/en/schemas/{api}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_bytes(data)
    os.replace(tmp_out, out)
    return out
