"""The scheduler and kwok: nodeSelector placement, extended-resource capacity, readiness."""

import pytest

from tests.kube import importorskip

kubernetes = importorskip("kubernetes")

from tests.kube import wait_for  # noqa: E402

pytestmark = pytest.mark.cluster

GPU_PRODUCT = "nvidia.com/gpu.product"


def _deployment(name, *, node_selector=None, resources=None, replicas=1):
    container = {"name": "main", "image": "registry.invalid/chatbot/fake:1"}
    if resources:
        container["resources"] = resources
    spec = {"containers": [container]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def _pods(core, ns, app):
    return core.list_namespaced_pod(ns, label_selector=f"app={app}").items


def _ready(pod):
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def test_node_selector_places_pod_on_rtx3060_and_it_becomes_ready(
        kube_api, namespace, fake_gpu_nodes):
    apps = kubernetes.client.AppsV1Api(kube_api)
    core = kubernetes.client.CoreV1Api(kube_api)
    apps.create_namespaced_deployment(
        namespace, _deployment("chat-3060", node_selector={GPU_PRODUCT: "NVIDIA-GeForce-RTX-3060"}))

    pods = wait_for(
        lambda: [p for p in _pods(core, namespace, "chat-3060") if _ready(p)],
        timeout=90, desc="a Ready pod of deployment chat-3060")
    assert [p.spec.node_name for p in pods] == ["gpu-3060"]
    assert pods[0].status.phase == "Running"

    dep = wait_for(
        lambda: (d := apps.read_namespaced_deployment(
            "chat-3060", namespace)).status.ready_replicas == 1 and d,
        timeout=60, desc="deployment chat-3060 readyReplicas=1")
    assert dep.status.available_replicas == 1


def test_gpu_request_lands_on_a_gpu_node(kube_api, namespace, fake_gpu_nodes):
    apps = kubernetes.client.AppsV1Api(kube_api)
    core = kubernetes.client.CoreV1Api(kube_api)
    apps.create_namespaced_deployment(namespace, _deployment(
        "one-gpu", resources={"limits": {"nvidia.com/gpu": "1"}}))
    pods = wait_for(lambda: [p for p in _pods(core, namespace, "one-gpu") if _ready(p)],
                    timeout=90, desc="a Ready pod asking for one GPU")
    assert pods[0].spec.node_name in ("gpu-2080", "gpu-3060")


def test_two_gpus_on_a_one_gpu_node_stays_pending(kube_api, namespace, fake_gpu_nodes):
    apps = kubernetes.client.AppsV1Api(kube_api)
    core = kubernetes.client.CoreV1Api(kube_api)
    apps.create_namespaced_deployment(namespace, _deployment(
        "two-gpus",
        node_selector={GPU_PRODUCT: "NVIDIA-GeForce-RTX-3060"},
        resources={"limits": {"nvidia.com/gpu": "2"}}))

    def unschedulable():
        for pod in _pods(core, namespace, "two-gpus"):
            for c in pod.status.conditions or []:
                if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                    return pod, c
        return None

    # The scheduler positively reports the pod as unschedulable (not merely "not yet").
    pod, cond = wait_for(unschedulable, timeout=90, desc="PodScheduled=False/Unschedulable")
    assert "Insufficient nvidia.com/gpu" in cond.message
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    dep = apps.read_namespaced_deployment("two-gpus", namespace)
    assert not dep.status.ready_replicas
