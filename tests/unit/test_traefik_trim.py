"""Traefik as the harness builds it (tests/kube/gomod_patches.patch_traefik): without the
providers, plugin runtimes and exporters this product does not run, which were a third of
its cold compile, and each of them refused by name when a configuration asks for it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kube import binaries, gomod_patches
from tests.support.http_get import http_get
from tests.support.ports import free_port
from tests.support.processes import running
from tests.support.trimmed_builds import built_binary, patched_module_source

TRAEFIK = gomod_patches.TRAEFIK


def _built() -> Path:
    return built_binary("traefik")


@pytest.fixture(scope="module")
def traefik_src(tmp_path_factory):
    """A patched copy of Traefik's module source, its modules resolved as the build does."""
    src = patched_module_source("traefik", TRAEFIK, gomod_patches.patch_traefik,
                                tmp_path_factory.mktemp("traefik") / "src")
    subprocess.run(["go", "mod", "tidy", "-e"], cwd=src, env=binaries.go_env(),
                   capture_output=True, timeout=600)
    return src


def test_the_build_pulls_none_of_what_was_left_out(traefik_src):
    listed = subprocess.run(
        ["go", "list", "-deps", "-f", "{{with .Module}}{{.Path}}{{end}}", "./cmd/traefik"],
        cwd=traefik_src, env=binaries.go_env(), capture_output=True, text=True, timeout=600)
    assert listed.returncode == 0, listed.stderr[-3000:]
    modules = set(listed.stdout.split())
    gone = sorted(m for m in modules if m.startswith((
        "github.com/aws/aws-sdk-go-v2", "github.com/traefik/yaegi", "github.com/tetratelabs/",
        "github.com/influxdata/", "github.com/redis/", "go.etcd.io/", "github.com/hashicorp/consul",
        "github.com/hashicorp/nomad", "github.com/go-zookeeper/", "github.com/kvtools/")))
    assert gone == []
    assert {TRAEFIK, "k8s.io/client-go", "sigs.k8s.io/gateway-api"} <= modules


@pytest.mark.parametrize("args, refused", [
    (["--providers.ecs=true"], "providers.ecs"),
    (["--providers.ecs.region=eu-west-1", "--providers.ecs.clusters=a,b"], "providers.ecs"),
    (["--providers.consulCatalog.endpoint.address=127.0.0.1:8500"], "providers.consulCatalog"),
    (["--providers.redis.endpoints=127.0.0.1:6379"], "providers.redis"),
    (["--experimental.plugins.demo.moduleName=github.com/traefik/plugindemo",
      "--experimental.plugins.demo.version=v0.2.1"], "experimental.plugins"),
    (["--metrics.influxDB2=true"], "metrics.influxDB2"),
])
def test_a_left_out_feature_stops_traefik_naming_it(args, refused):
    run = subprocess.run([str(_built()), "--entryPoints.web.address=127.0.0.1:0", *args],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode != 0
    assert f"{refused}: not in this build of Traefik" in run.stdout + run.stderr


def test_a_left_out_provider_in_the_config_file_is_refused_too(tmp_path):
    config = tmp_path / "traefik.yaml"
    config.write_text(json.dumps({"entryPoints": {"web": {"address": "127.0.0.1:0"}},
                                  "providers": {"etcd": {"endpoints": ["127.0.0.1:2379"]},
                                                "zooKeeper": {}}}))
    run = subprocess.run([str(_built()), f"--configFile={config}"], capture_output=True,
                         text=True, timeout=30)
    assert run.returncode != 0
    assert ("providers.etcd, providers.zooKeeper: not in this build of Traefik"
            in run.stdout + run.stderr)


def test_routes_with_the_kept_middlewares_serve_and_a_redis_rate_limit_is_refused(tmp_path):
    """The file provider, the in-memory rate limiter and the path rewrite serve as
    upstream's; a rateLimit with Redis storage leaves its router out, the log naming it."""
    backend, web, ping = free_port(), free_port(), free_port()
    (tmp_path / "dynamic").mkdir()
    (tmp_path / "dynamic" / "routes.yaml").write_text(json.dumps({"http": {  # JSON is YAML
        "routers": {
            "kept": {"rule": "PathPrefix(`/kept`)", "service": "backend",
                     "middlewares": ["in-memory", "strip"]},
            "redis": {"rule": "PathPrefix(`/redis`)", "service": "backend",
                      "middlewares": ["on-redis"]}},
        "middlewares": {
            "in-memory": {"rateLimit": {"average": 100}},
            "strip": {"replacePathRegex": {"regex": "^/kept/(.*)", "replacement": "/$1"}},
            "on-redis": {"rateLimit": {"average": 100,
                                       "redis": {"endpoints": ["127.0.0.1:6379"]}}}},
        "services": {"backend": {"loadBalancer": {
            "servers": [{"url": f"http://127.0.0.1:{backend}"}]}}}}}))
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello.txt").write_text("hello\n")
    log = tmp_path / "traefik.log"
    server = [sys.executable, "-m", "http.server", str(backend), "--bind", "127.0.0.1",
              "--directory", str(tmp_path / "www")]
    with open(log, "w") as out, \
            running(server, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), \
            running([str(_built()), f"--entryPoints.web.address=127.0.0.1:{web}",
                     f"--entryPoints.ping.address=127.0.0.1:{ping}", "--ping.entryPoint=ping",
                     f"--providers.file.directory={tmp_path / 'dynamic'}", "--log.level=INFO",
                     "--log.noColor=true"], stdout=out, stderr=subprocess.STDOUT) as traefik:
        body = _get_when_up(f"http://127.0.0.1:{web}/kept/hello.txt", traefik)
        assert body == (200, b"hello\n")
        assert http_get(f"http://127.0.0.1:{web}/redis/hello.txt")[0] == 404
        assert "rateLimit: its redis storage is not in this build of Traefik" in log.read_text()


def _get_when_up(url: str, proc: subprocess.Popen, timeout: float = 30) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "traefik exited"
        got = http_get(url)
        if got[0] == 200 or time.monotonic() > deadline:
            return got
        time.sleep(0.2)
