"""kind's node image boots on this machine, started exactly as kind starts a node.

The check behind tests/kind: ``docker run --privileged`` works through the
capability-fitting runtime, the node's systemd reaches ``running`` on this kernel's cgroups
with containerd active, and containerd inside runs a nested container.
"""

from __future__ import annotations

import subprocess
import time

from tests.kind import engine, nodeimage
from tests.kube import realnode

HELLO_C = r"""
#include <stdio.h>
int main(void) { puts("hello from a container in the kind node"); return 0; }
"""

# What kind's docker provider passes for a node (pkg/cluster/internal/providers/docker).
KIND_NODE_FLAGS = ["--privileged", "--security-opt", "seccomp=unconfined",
                   "--security-opt", "apparmor=unconfined", "--tmpfs", "/tmp", "--tmpfs",
                   "/run", "--volume", "/var", "--volume", "/lib/modules:/lib/modules:ro",
                   "--cgroupns=private", "-e", "container=docker"]


def _hello_archive(tmp_path) -> bytes:
    src = tmp_path / "hello.c"
    src.write_text(HELLO_C)
    subprocess.run(["gcc", "-Os", "-static", "-o", str(tmp_path / "hello"), str(src)],
                   check=True, capture_output=True)
    return realnode.oci_archive("docker.io/chatbot-local/hello:1",
                                {"hello": ((tmp_path / "hello").read_bytes(), 0o755)},
                                ["/hello"])


def test_privileged_container_runs(kind_engine, tmp_path):
    base = nodeimage.build_base(engine.LOG_DIR)
    out = engine.docker("run", "--rm", "--privileged", "--entrypoint", "sh", base, "-c",
                        "grep CapEff /proc/self/status").stdout
    assert out.startswith("CapEff:"), out


def test_node_boots_and_runs_a_nested_container(kind_engine, tmp_path):
    base = nodeimage.build_base(engine.LOG_DIR)
    name = "chatbot-kind-boot-check"
    engine.docker("rm", "-f", "-v", name, check=False)
    engine.docker("run", "-d", "--name", name, "--label", f"{engine.KIND_LABEL}=boot-check",
                  *KIND_NODE_FLAGS, base)
    try:
        deadline = time.monotonic() + 120
        state = ""
        while time.monotonic() < deadline:
            state = engine.docker("exec", name, "systemctl", "is-system-running",
                                  check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(1)
        failed = engine.docker("exec", name, "systemctl", "--failed", "--no-legend",
                               check=False).stdout
        assert state == "running", f"systemd is {state!r}; failed units: {failed}"
        assert engine.docker("exec", name, "systemctl", "is-active", "containerd",
                             check=False).stdout.strip() == "active"
        engine.docker("exec", "-i", name, "ctr", "images", "import", "-",
                      input=_hello_archive(tmp_path))
        out = engine.docker("exec", name, "ctr", "run", "--rm",
                            "docker.io/chatbot-local/hello:1", "hello-1", timeout=120).stdout
        assert "hello from a container in the kind node" in out
    finally:
        engine.docker("rm", "-f", "-v", name, check=False, timeout=120)
