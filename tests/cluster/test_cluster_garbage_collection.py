"""The garbage collector (kube-controller-manager) deletes dependents of deleted owners."""

import pytest

from tests.kube import importorskip

kubernetes = importorskip("kubernetes")

from kubernetes.client import ApiException  # noqa: E402

from tests.kube import wait_for  # noqa: E402

pytestmark = pytest.mark.cluster


def _gone(read):
    try:
        read()
        return False
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise


def test_deleting_owner_deletes_owned_objects(kube_api, namespace):
    core = kubernetes.client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "owner"}, "data": {"role": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
           "uid": owner.metadata.uid, "blockOwnerDeletion": True}
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "owned-cm", "ownerReferences": [ref]}})
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "owned-secret", "ownerReferences": [ref]},
                    "stringData": {"k": "v"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "bystander"}})

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    wait_for(lambda: _gone(lambda: core.read_namespaced_config_map("owned-cm", namespace)),
             timeout=60, desc="owned ConfigMap garbage-collected")
    wait_for(lambda: _gone(lambda: core.read_namespaced_secret("owned-secret", namespace)),
             timeout=60, desc="owned Secret garbage-collected")
    assert core.read_namespaced_config_map("bystander", namespace).metadata.name == "bystander"


def test_deleting_deployment_cascades_to_replicasets_and_pods(kube_api, namespace):
    apps = kubernetes.client.AppsV1Api(kube_api)
    core = kubernetes.client.CoreV1Api(kube_api)
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "fake:1"}]}}},
    })
    wait_for(lambda: len(core.list_namespaced_pod(namespace, label_selector="app=web").items) == 2,
             timeout=60, desc="2 pods created by the ReplicaSet")
    rs = apps.list_namespaced_replica_set(namespace).items
    assert len(rs) == 1 and rs[0].metadata.owner_references[0].name == "web"

    apps.delete_namespaced_deployment("web", namespace, propagation_policy="Foreground")

    wait_for(lambda: not apps.list_namespaced_replica_set(namespace).items,
             timeout=90, desc="ReplicaSet garbage-collected")
    wait_for(lambda: not core.list_namespaced_pod(namespace, label_selector="app=web").items,
             timeout=90, desc="pods garbage-collected")
    wait_for(lambda: _gone(lambda: apps.read_namespaced_deployment("web", namespace)),
             timeout=30, desc="Deployment gone after foreground deletion")
