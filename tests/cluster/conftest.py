"""Fixtures for tests against a real Kubernetes API server.

Which cluster:
* ``CHATBOT_TEST_KUBECONFIG=/path/to/kubeconfig`` - use that existing cluster
  (kind, minikube, ...); nothing is started or stopped. Plain ``KUBECONFIG`` is
  deliberately ignored so that a developer's or CI's ambient cluster is never
  used by accident.
* otherwise - a session-scoped local control plane (etcd, kube-apiserver,
  controller-manager, scheduler, kwok; see tests/kube/controlplane.py) from the binaries
  built by ``tests/kube/build-binaries``. If they are missing the tests are
  skipped, unless ``CHATBOT_REQUIRE_CLUSTER=1`` (or ``CI`` is set), which makes
  it an error.

Fixtures: ``kube_cluster`` (session), ``namespace`` (fresh per test),
``kopf_operator`` (run a kopf operator in-process), ``sa_kubeconfig``
(ServiceAccount token kubeconfig with given roles).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.kube import binaries, controlplane, operator_runner
from tests.kube import helpers as cluster_helpers

EXTERNAL_ENV = "CHATBOT_TEST_KUBECONFIG"


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.cluster)


@dataclass
class KubeCluster:
    """Handle to the cluster under test."""

    kubeconfig: Path
    external: bool
    local: controlplane.LocalCluster | None = None
    _clients: list = field(default_factory=list)

    def api_client(self, kubeconfig: str | Path | None = None):
        client = cluster_helpers.api_client(kubeconfig or self.kubeconfig)
        self._clients.append(client)
        return client

    def env(self) -> dict[str, str]:
        """Environment for subprocesses (helm, kubectl) that should target this cluster."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def has_node(self, name: str) -> bool:
        import kubernetes

        core = kubernetes.client.CoreV1Api(self.api_client())
        try:
            core.read_node(name)
            return True
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def close(self) -> None:
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()
        self._clients.clear()


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory) -> Iterator[KubeCluster]:
    cluster_helpers.importorskip("kubernetes")
    external = os.environ.get(EXTERNAL_ENV)
    if external:
        path = Path(external).expanduser()
        if not path.is_file():
            pytest.fail(f"{EXTERNAL_ENV}={external}: no such kubeconfig file")
        cluster = KubeCluster(kubeconfig=path, external=True)
        yield cluster
        cluster.close()
        return

    missing = binaries.missing_components(binaries.CLUSTER_COMPONENTS)
    if missing:
        msg = (f"Kubernetes binaries not built ({', '.join(missing)}): run "
               f"tests/kube/build-binaries, or set {EXTERNAL_ENV} to use an existing cluster")
        if cluster_helpers.require_cluster():
            pytest.fail(msg)
        pytest.skip(msg)

    local = controlplane.LocalCluster(tmp_path_factory.mktemp("kube-local"))
    try:
        # die_with_parent: if pytest is killed, the control plane goes with it.
        kubeconfig = local.up(die_with_parent=True)
    except controlplane.ClusterError as exc:
        pytest.fail(f"local cluster did not start: {exc}")
    cluster = KubeCluster(kubeconfig=kubeconfig, external=False, local=local)
    try:
        yield cluster
    finally:
        cluster.close()
        local.down(remove=False)  # keep logs/certs in pytest's tmp dir for post-mortems


@pytest.fixture
def kube_api(kube_cluster):
    """An ``ApiClient`` with the cluster's admin credentials."""
    return kube_cluster.api_client()


def _ns_name(nodeid: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", nodeid.split("::")[-1].lower()).strip("-")
    return f"t-{base[:40].strip('-')}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(kube_cluster, request) -> Iterator[str]:
    """A fresh namespace for this test (deleted afterwards, without waiting)."""
    import kubernetes

    core = kubernetes.client.CoreV1Api(kube_cluster.api_client())
    name = _ns_name(request.node.nodeid)
    core.create_namespace({"metadata": {"name": name, "labels": {"chatbot-test": "true"}}})
    # Pods are only admitted once the namespace's default ServiceAccount exists.
    cluster_helpers.wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=60, desc=f"ServiceAccount {name}/default",
    )
    yield name
    with contextlib.suppress(kubernetes.client.ApiException):
        core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def kopf_operator(kube_cluster):
    """Factory: ``with kopf_operator("pkg.module", namespace=ns) as op: ...``.

    Runs the operator in-process (a thread) with the admin kubeconfig, or with
    ``kubeconfig=`` (e.g. from ``sa_kubeconfig``) to run with restricted rights.
    Operators still running at the end of the test are stopped.
    """
    started: list[operator_runner.KopfOperator] = []

    def factory(module: str, *, namespace: str | None, kubeconfig=None, **kwargs):
        op = operator_runner.KopfOperator(
            module, namespace=namespace, kubeconfig=kubeconfig or kube_cluster.kubeconfig,
            **kwargs)
        started.append(op)
        return op

    yield factory
    for op in started:
        op.stop()


@pytest.fixture
def sa_kubeconfig(kube_cluster, tmp_path):
    """Factory: ``sa_kubeconfig(namespace, name, cluster_roles=[...], roles=[...]) -> Path``.

    Creates a ServiceAccount, binds the given (Cluster)Roles, requests a token with
    the TokenRequest API and writes a kubeconfig that authenticates with it.
    ClusterRoleBindings it created are deleted after the test.
    """
    import kubernetes

    created: list[str] = []

    def factory(namespace: str, name: str, **kwargs) -> Path:
        path, crbs = cluster_helpers.service_account_kubeconfig(
            kube_cluster.kubeconfig, namespace, name,
            tmp_path / f"{namespace}-{name}.kubeconfig", **kwargs)
        created.extend(crbs)
        return path

    yield factory
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube_cluster.api_client())
    for crb in created:
        with contextlib.suppress(kubernetes.client.ApiException):
            rbac.delete_cluster_role_binding(crb)


@pytest.fixture
def fake_gpu_nodes(kube_cluster):
    """Skip unless the kwok GPU nodes exist (they do on the local cluster)."""
    for node in ("gpu-2080", "gpu-3060", "cpu-1"):
        if not kube_cluster.has_node(node):
            pytest.skip(f"node {node} not in this cluster (the local kwok cluster has it)")
    return ["gpu-2080", "gpu-3060", "cpu-1"]
