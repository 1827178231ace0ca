"""The in-process kopf runner, with admin and with restricted ServiceAccount credentials."""

from pathlib import Path

import pytest

from tests.kube import importorskip

kubernetes = importorskip("kubernetes")
importorskip("kopf")

from kubernetes.client import ApiException  # noqa: E402

from tests.kube import wait_for  # noqa: E402

pytestmark = pytest.mark.cluster

OPERATOR = str(Path(__file__).with_name("kopf_echo_operator.py"))

# What kopf itself needs cluster-wide (see kopf's docs on RBAC): it looks up CRDs
# and namespaces even when it serves a single namespace.
KOPF_CLUSTER_RULES = [
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
]

OPERATOR_RULES = [
    {"apiGroups": [""], "resources": ["configmaps"],
     "verbs": ["get", "list", "watch", "create", "patch", "update"]},
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
]


def _echoed(core, ns, name):
    try:
        return core.read_namespaced_config_map(f"{name}-echo", ns)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _source(name):
    return {"metadata": {"name": name, "labels": {"chatbot-test/echo": "yes"}},
            "data": {"greeting": "hello"}}


def test_operator_runs_in_process_with_a_service_account_token(
        kube_api, namespace, kopf_operator, sa_kubeconfig, request):
    core = kubernetes.client.CoreV1Api(kube_api)
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube_api)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "echo-operator"},
                                            "rules": OPERATOR_RULES})
    cluster_role = f"{namespace}-kopf"
    rbac.create_cluster_role({"metadata": {"name": cluster_role}, "rules": KOPF_CLUSTER_RULES})
    request.addfinalizer(lambda: rbac.delete_cluster_role(cluster_role))
    kc = sa_kubeconfig(namespace, "echo-operator", roles=["echo-operator"],
                       cluster_roles=[cluster_role])

    with kopf_operator(OPERATOR, namespace=namespace, kubeconfig=kc) as op:
        core.create_namespaced_config_map(namespace, _source("first"))
        child = wait_for(lambda: _echoed(core, namespace, "first"), timeout=60,
                         desc="operator created first-echo")
        assert op.alive

    assert child.data == {"greeting": "hello", "secrets": "denied:403"}
    assert child.metadata.owner_references[0].name == "first"
    src = core.read_namespaced_config_map("first", namespace)
    assert src.metadata.annotations["chatbot-test/echoed"] == "first-echo"

    # Stopped means stopped: nothing reacts to new objects any more.
    core.create_namespaced_config_map(namespace, _source("second"))
    with pytest.raises(AssertionError):
        wait_for(lambda: _echoed(core, namespace, "second"), timeout=3, desc="no echo")


def test_operator_with_admin_credentials_by_module_name(kube_api, namespace, kopf_operator):
    core = kubernetes.client.CoreV1Api(kube_api)
    with kopf_operator("tests.cluster.kopf_echo_operator", namespace=namespace):
        core.create_namespaced_config_map(namespace, _source("admin"))
        child = wait_for(lambda: _echoed(core, namespace, "admin"), timeout=60,
                         desc="operator created admin-echo")
    assert child.data["secrets"] == "allowed"
