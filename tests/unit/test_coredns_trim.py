"""CoreDNS as the harness builds it (tests/kube/gomod_patches.patch_coredns): only the
plugins of this project's Corefiles, of kubeadm's default one and log and hosts, in
upstream's order; none of the cloud and backend plugins whose SDKs were most of its cold
compile, and a Corefile that names one refused by name."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.kube import binaries, gomod_patches
from tests.support.http_get import http_get
from tests.support.ports import free_port
from tests.support.processes import running
from tests.support.trimmed_builds import built_binary, patched_module_source

COREDNS = gomod_patches.COREDNS
# Upstream's order (plugin.cfg) of the plugins kept: the order a query goes through them.
KEPT_IN_ORDER = ["reload", "bind", "ready", "health", "prometheus", "errors", "log",
                 "loadbalance", "cache", "hosts", "kubernetes", "loop", "forward"]


def _built() -> Path:
    return built_binary("coredns")


@pytest.fixture(scope="module")
def coredns_src(tmp_path_factory):
    """A patched copy of CoreDNS's module source, from the module cache build-binaries fills."""
    return patched_module_source("coredns", COREDNS, gomod_patches.patch_coredns,
                                 tmp_path_factory.mktemp("coredns") / "src")


def test_the_plugin_list_keeps_the_used_plugins_in_upstreams_order(coredns_src):
    zdirectives = (coredns_src / "core/dnsserver/zdirectives.go").read_text()
    assert re.findall(r'^\t"([\w-]+)",$', zdirectives, re.M) == KEPT_IN_ORDER
    assert set(KEPT_IN_ORDER) == gomod_patches.COREDNS_KEPT_PLUGINS
    cfg = re.findall(r"^([\w-]+):", (coredns_src / "plugin.cfg").read_text(), re.M)
    assert cfg == KEPT_IN_ORDER
    imported = re.findall(r'^\t_ "([^"]+)"$',
                          (coredns_src / "core/plugin/zplugin.go").read_text(), re.M)
    assert f"{COREDNS}/plugin/metrics" in imported  # the prometheus directive's package
    assert sorted(imported) == imported and len(imported) == len(KEPT_IN_ORDER)


def test_the_binary_has_the_kept_plugins_and_no_cloud_or_backend_plugin():
    listed = subprocess.run([str(_built()), "-plugins"], capture_output=True, text=True,
                            timeout=30)
    assert listed.returncode == 0, listed.stderr
    registered = set(listed.stdout.split())
    # Linked in because kept plugins import their packages (forward: debug and dnstap;
    # cache, forward, kubernetes, log: metadata; kubernetes: transfer), but no directive:
    # a Corefile naming one is refused as any other removed plugin.
    assert registered - gomod_patches.COREDNS_KEPT_PLUGINS == {
        "debug", "dnstap", "metadata", "transfer"}
    assert gomod_patches.COREDNS_KEPT_PLUGINS <= registered
    if shutil.which("go") is None:
        return
    modules = subprocess.run(["go", "version", "-m", str(_built())], capture_output=True,
                             text=True, timeout=30, env=binaries.go_env())
    assert modules.returncode == 0, modules.stderr
    linked = set(re.findall(r"^\tdep\t(\S+)", modules.stdout, re.M))
    assert "k8s.io/client-go" in linked
    assert not sorted(m for m in linked if m.startswith((
        "github.com/aws/", "github.com/Azure/", "google.golang.org/api", "cloud.google.com/",
        "go.etcd.io/", "github.com/DataDog/", "github.com/openzipkin", "github.com/oschwald/",
        "github.com/hashicorp/nomad")))


def test_a_corefile_of_the_kept_plugins_answers(tmp_path):
    """hosts answers, through cache, log and errors, and falls through to forward, whose
    upstream (a second server block) answers the rest; health, ready and the prometheus
    metrics serve on their ports."""
    port, upstream = free_port(), free_port()
    health, ready, metrics = free_port(), free_port(), free_port()
    corefile = tmp_path / "Corefile"
    corefile.write_text(f"""\
.:{port} {{
    bind 127.0.0.1
    errors
    log
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    prometheus 127.0.0.1:{metrics}
    loadbalance
    cache 30
    hosts {{
        10.1.2.3 chatbot.test
        fallthrough
    }}
    forward . 127.0.0.1:{upstream}
}}
.:{upstream} {{
    bind 127.0.0.1
    hosts {{
        10.9.9.9 upstream.chatbot.test
    }}
}}
""")
    with running([str(_built()), "-conf", str(corefile)], stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, text=True) as proc:
        deadline = time.monotonic() + 20
        while http_get(f"http://127.0.0.1:{ready}/ready")[0] != 200:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "CoreDNS not ready"
            time.sleep(0.1)
        assert http_get(f"http://127.0.0.1:{health}/health") == (200, b"OK")
        for _ in range(2):  # the second from the cache
            assert _addresses(_query("chatbot.test", port)) == ["10.1.2.3"]
        assert _addresses(_query("upstream.chatbot.test", port)) == ["10.9.9.9"]
        # hosts' answer for a name it lacks, as upstream's (it has no SOA for an NXDOMAIN)
        assert _query("missing.chatbot.test", port).rcode() == dns.rcode.SERVFAIL
        status, body = http_get(f"http://127.0.0.1:{metrics}/metrics")
        assert status == 200
        assert b"coredns_dns_requests_total" in body and b"coredns_cache_hits_total" in body
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
    assert '"A IN chatbot.test. udp' in out  # the log plugin's line for the query


def _addresses(answer: dns.message.Message) -> list[str]:
    assert answer.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(answer.rcode())
    return [rr.to_text() for rrset in answer.answer for rr in rrset]


def _query(name: str, port: int) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=2)


@pytest.mark.parametrize("plugin, config", [
    ("route53", "route53 example.org.:Z1D633PJN98FT9"),
    ("etcd", "etcd cluster.local"),
    ("file", "file /nowhere/db.example.org"),
    ("trace", "trace"),
    ("dnstap", "dnstap /tmp/dnstap.sock"),  # compiled in for forward, yet no directive
])
def test_a_corefile_naming_a_removed_plugin_fails_naming_it(tmp_path, plugin, config):
    corefile = tmp_path / "Corefile"
    corefile.write_text(f".:{free_port()} {{\n    bind 127.0.0.1\n    {config}\n}}\n")
    run = subprocess.run([str(_built()), "-conf", str(corefile)], capture_output=True,
                         text=True, timeout=10)
    assert run.returncode != 0
    assert f"Unknown directive '{plugin}'" in run.stdout + run.stderr
