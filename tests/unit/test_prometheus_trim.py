"""Prometheus as the harness builds it (tests/kube/gomod_patches.patch_prometheus and the
build tags): Kubernetes, file and static discovery, no OpenAPI document and no cloud
authentication for remote write, each left-out piece refused by name."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.kube import binaries, gomod_patches
from tests.support.http_get import http_get
from tests.support.ports import free_port
from tests.support.processes import running
from tests.support.trimmed_builds import built_binary, patched_module_source

PROMETHEUS = gomod_patches.PROMETHEUS


def _built(name: str) -> Path:
    return built_binary("prometheus", name)


@pytest.fixture(scope="module")
def prometheus_build(tmp_path_factory):
    """A build directory as build-binaries makes it: the patched copy of the module source
    in place of the published one, its modules resolved."""
    work = tmp_path_factory.mktemp("prometheus")
    patched_module_source("prometheus", PROMETHEUS, gomod_patches.patch_prometheus,
                          work / "src")
    version = binaries.COMPONENTS["prometheus"].version
    (work / "go.mod").write_text(f"module chatbot.local/test\n\ngo {binaries._go_version()}\n\n"
                                 f"replace {PROMETHEUS} => ./src\n")
    got = subprocess.run(["go", "get", f"{PROMETHEUS}/cmd/prometheus@{version}",
                          f"{PROMETHEUS}/cmd/promtool@{version}"], cwd=work,
                         env=binaries.go_env(), capture_output=True, text=True, timeout=600)
    assert got.returncode == 0, got.stderr[-3000:]
    return work


def test_the_build_pulls_no_cloud_sdk_and_no_openapi_library(prometheus_build):
    listed = subprocess.run(
        ["go", "list", "-deps", "-tags", gomod_patches.PROMETHEUS_BUILD_TAGS, "-f",
         "{{.ImportPath}} {{with .Module}}{{.Path}}{{end}}", f"{PROMETHEUS}/cmd/prometheus",
         f"{PROMETHEUS}/cmd/promtool"], cwd=prometheus_build, env=binaries.go_env(),
        capture_output=True, text=True, timeout=600)
    assert listed.returncode == 0, listed.stderr[-3000:]
    packages = dict(line.split(" ", 1) if " " in line else (line, "")
                    for line in listed.stdout.splitlines())
    modules = set(packages.values())
    gone = sorted(m for m in modules if m.startswith((
        "github.com/aws/", "github.com/Azure/", "github.com/AzureAD/", "cloud.google.com/",
        "google.golang.org/api", "github.com/pb33f/", "github.com/prometheus/sigv4")))
    assert gone == []
    assert {f"{PROMETHEUS}/discovery/kubernetes", f"{PROMETHEUS}/discovery/file"} <= set(packages)
    assert not any(p.startswith(f"{PROMETHEUS}/discovery/") and p.rsplit("/", 1)[-1]
                   in ("aws", "azure", "gce", "consul", "openstack", "digitalocean")
                   for p in packages)


@pytest.mark.parametrize("key, config", [
    ("sigv4", {"remote_write": [{"url": "http://127.0.0.1:1/write",
                                 "sigv4": {"region": "eu-west-1"}}]}),
    ("azuread", {"remote_write": [{"url": "http://127.0.0.1:1/write", "azuread": {
        "cloud": "AzurePublic",
        "managed_identity": {"client_id": "00000000-0000-0000-0000-000000000000"}}}]}),
    ("google_iam", {"remote_write": [{"url": "http://127.0.0.1:1/write",
                                      "google_iam": {"credentials_file": "/nowhere"}}]}),
    ("sigv4", {"alerting": {"alertmanagers": [{"static_configs": [{"targets": ["a:9093"]}],
                                               "sigv4": {}}]}}),
])
def test_promtool_refuses_a_left_out_authentication_by_name(tmp_path, key, config):
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config))
    check = subprocess.run([str(_built("promtool")), "check", "config", "--syntax-only",
                            str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode != 0
    assert f"{key} (" in check.stdout + check.stderr
    assert "not in this build of Prometheus" in check.stdout + check.stderr


def test_promtool_accepts_the_kept_discovery_and_refuses_another(tmp_path):
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps({"scrape_configs": [{
        "job_name": "kept", "kubernetes_sd_configs": [{"role": "pod"}],
        "file_sd_configs": [{"files": [str(tmp_path / "targets.json")]}],
        "static_configs": [{"targets": ["127.0.0.1:9"]}]}]}))
    ok = subprocess.run([str(_built("promtool")), "check", "config", "--syntax-only",
                         str(path)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    path.write_text(json.dumps({"scrape_configs": [{
        "job_name": "ec2", "ec2_sd_configs": [{"region": "eu-west-1"}]}]}))
    other = subprocess.run([str(_built("promtool")), "check", "config", "--syntax-only",
                            str(path)], capture_output=True, text=True, timeout=60)
    assert other.returncode != 0
    assert "field ec2_sd_configs not found" in other.stdout + other.stderr


def test_the_server_answers_501_for_the_openapi_document(tmp_path):
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({"scrape_configs": [{
        "job_name": "self", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}))
    base = f"http://127.0.0.1:{port}"
    with running([str(_built("prometheus")), f"--config.file={config}",
                  f"--storage.tsdb.path={tmp_path / 'data'}",
                  f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                 stop_timeout=30, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 30
        while http_get(base + "/-/ready")[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "Prometheus not ready"
            time.sleep(0.2)
        status, body = http_get(base + "/api/v1/openapi.yaml")
        assert status == 501
        assert b"OpenAPI specification" in body and b"not in this build" in body
        features = json.loads(http_get(base + "/api/v1/features")[1])["data"]["api"]
        assert not any(name.startswith("openapi") for name in features)
        query = json.loads(http_get(base + "/api/v1/query?query=1%2B1")[1])
        assert query["data"]["result"][1] == "2"
