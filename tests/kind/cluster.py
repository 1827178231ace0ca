"""A kind cluster on kind's engine (tests/kind/engine.py) from the local node image.

``kind`` itself is unmodified (built from its module by tests/kube/build-binaries); it finds
the engine through ``DOCKER_HOST``. :class:`KindCluster` creates the cluster with a config
(the quickstart's), keeps its kubeconfig apart from the user's, and deletes it; whatever a
killed run left is removed by the engine's reaper at the next start.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.kind import engine
from tests.kube import binaries

# The quickstart's cluster: port 8001 of the node published on the host, for the route.
QUICKSTART_CONFIG = """kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
- role: control-plane
  extraPortMappings:
  - containerPort: 8001
    hostPort: 8001
    listenAddress: 127.0.0.1
"""


class KindCluster:
    def __init__(self, name: str, image: str, workdir: Path, config: str = QUICKSTART_CONFIG):
        self.name, self.image, self.config = name, image, config
        self.kubeconfig = workdir / f"kind-{name}.kubeconfig"
        self.config_file = workdir / f"kind-{name}.yaml"
        self.created_s: float | None = None

    def kind(self, *args: str, timeout: float = 600, check: bool = True,
             input: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(binaries.binary("kind")), *args], capture_output=True,
                              text=True, timeout=timeout, env=engine.env(), input=input)
        if check and proc.returncode:
            raise RuntimeError(f"kind {' '.join(args[:3])} failed ({proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}{proc.stderr[-6000:]}")
        return proc

    def create(self, timeout: float = 600) -> KindCluster:
        self.config_file.write_text(self.config)
        started = time.monotonic()
        self.kind("create", "cluster", "--name", self.name, "--image", self.image,
                  "--config", str(self.config_file), "--kubeconfig", str(self.kubeconfig),
                  "--retain", "--wait", "0s", "-v", "1", timeout=timeout)
        self.created_s = time.monotonic() - started
        return self

    def logs(self, dest: Path) -> Path:
        self.kind("export", "logs", str(dest), "--name", self.name, check=False, timeout=300)
        return dest

    def describe(self) -> str:
        """What a failed test prints: the node's systemd state and failed units, the nodes,
        every pod and the latest events (the full logs: :meth:`logs`)."""
        from tests.support.docker_engine import client

        node = f"{self.name}-control-plane"
        kubectl = [str(binaries.binary("kubectl")), "--kubeconfig", str(self.kubeconfig)]
        out = []
        for shown, cmd in (
                (f"{node}: systemctl is-system-running",
                 [client(), "exec", node, "systemctl", "is-system-running"]),
                (f"{node}: systemctl --failed",
                 [client(), "exec", node, "systemctl", "--failed", "--no-legend"]),
                ("kubectl get nodes,pods -A -o wide",
                 [*kubectl, "get", "nodes,pods", "-A", "-o", "wide"]),
                ("kubectl get events -A (the latest)",
                 [*kubectl, "get", "events", "-A", "--sort-by=.lastTimestamp"])):
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                                      env=engine.env())
                text = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            except (OSError, subprocess.TimeoutExpired) as exc:
                text = repr(exc)
            out.append(f"--- {shown}\n{text}")
        return "\n".join(out)

    def delete(self) -> None:
        self.kind("delete", "cluster", "--name", self.name, "--kubeconfig",
                  str(self.kubeconfig), check=False, timeout=300)

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(binaries.binary("kubectl")), "--kubeconfig",
                               str(self.kubeconfig), *args], capture_output=True, text=True,
                              timeout=timeout, input=input)
        if check and proc.returncode:
            raise RuntimeError(f"kubectl {' '.join(args[:3])} failed: {proc.stderr[-3000:]}")
        return proc
