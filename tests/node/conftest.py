"""A cluster with a real node (tests/kube/realnode.py): the user's journey on real pods.

One per test session, started on first use and stopped (processes, containers, mounts,
bridge, iptables chains) when the session ends; a SIGKILLed session's leftovers are reaped
at the next start. Needs root, Docker (the images are built locally and copied into the
node's containerd), containerd/runc/CNI plugins from Debian and the Go programs of
``tests/kube/build-binaries``. Without them the tests skip, or fail under CI
(``CI`` or ``CHATBOT_REQUIRE_NODE=1``).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.kube import binaries, controlplane, realnode
from tests.kube.operator_fixtures import gateway_api_crds, install_crd_object
from tests.support import docker_engine as engine
from tests.support.browser import artifacts, browser, report, visit  # noqa: F401
from tests.support.node_lock import workdir as node_lock_workdir
from tests.support.requirements import unavailable

REQUIRE_ENV = "CHATBOT_REQUIRE_NODE"


@dataclass
class NodeCluster:
    cluster: controlplane.LocalCluster
    node: realnode.RealNode
    images: dict[str, str]  # role -> image reference in the node's runtime
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def route(self, path: str) -> str:
        return f"http://127.0.0.1:{realnode.ROUTE_PORT}{path}"


@pytest.fixture(scope="session")
def node_cluster(node_lock, docker_engine, service_image, operator_image) -> NodeCluster:
    missing = realnode.missing_prerequisites()
    if missing:
        unavailable("no real node on this host: missing " + ", ".join(missing), REQUIRE_ENV)
    ferretdb = binaries.COMPONENTS["ferretdb"]
    if not ferretdb.is_built():
        binaries.build_all(["ferretdb"])
    images = {
        "service": service_image[0],
        "operator": operator_image[0],
        "mongodb": engine.build_ferretdb_image(binaries.binary("ferretdb"),
                                               ferretdb.version),
        "helper": engine.build_base_image(),
    }

    say = lambda msg: print(f"[node] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    cluster = controlplane.LocalCluster(node_lock_workdir(), node_ip=realnode.node_ip())
    node = realnode.RealNode(cluster)
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        cluster.up(die_with_parent=True, progress=say)
        import kubernetes

        api = kubernetes.config.new_client_from_config(str(cluster.kubeconfig))
        for crd in gateway_api_crds():
            install_crd_object(api, crd)
        node.up(die_with_parent=True, progress=say)
        timings["cluster up"] = time.monotonic() - started
        loaded = time.monotonic()
        copied = [ref for ref in images.values() if node.load_docker_image(ref)]
        timings[f"images into containerd ({len(copied)} of {len(images)} copied)"] = (
            time.monotonic() - loaded)
        yield NodeCluster(cluster, node, images, timings)
    finally:
        node.down()


@pytest.fixture(scope="module")
def mirror(node_cluster):
    """A Hugging Face mirror on the node's address, serving SmolLM2."""
    from chatbot.llm.bundled import bundled_model_path
    from tests.operator.model_server import ModelServer

    smol = bundled_model_path()
    with ModelServer({smol.name: smol.read_bytes()}, host=node_cluster.node.ip) as server:
        server.smollm2 = smol.name
        yield server


def pytest_terminal_summary(terminalreporter):
    """The fault tests' table (tests/node/ledger.py), when any ran."""
    from tests.node import ledger

    report(terminalreporter)  # the journey's browser screenshots, when it took any
    if ledger.ROWS:
        terminalreporter.write_line("")
        for line in ledger.table():
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def installed(node_cluster, mirror):
    """The chart and the CPU ChatbotModel, Ready and answering on the route, for one test
    module; deleted and uninstalled after it."""
    from tests.node import release

    started = time.monotonic()
    release.install(node_cluster, mirror)
    print(f"[node] release installed and Ready in {time.monotonic() - started:.0f}s",
          file=sys.stderr, flush=True)
    try:
        yield node_cluster
    finally:
        release.uninstall(node_cluster)
