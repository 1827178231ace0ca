"""`helm install` of charts/chatbot into the real control plane, the operator reconciling the
example ChatbotModel under the chart's ServiceAccount, `helm test`, and `helm uninstall`
leaving nothing behind.

What is real: helm (v4, versions.env), the API server (CRD from the chart's crds/, RBAC,
admission of every object the chart renders), the controllers (Deployment, StatefulSet,
Job, PV binder, garbage collector) and the scheduler. What is not: no kubelet runs
containers here (kwok fakes the nodes), so the operator's Deployment from the chart becomes
"Ready" without a process. The test therefore plays the kubelet for it: it runs the
container's own command (`kopf run ...`, from this venv instead of the image) with the
container's environment and a token of the chart-created ServiceAccount, i.e. with exactly
the rights the chart grants, calls the startup, readiness and liveness probes where the
Deployment says they are, and stops it with SIGTERM as a pod deletion would. Likewise the
`helm test` Job completes because kwok completes Job pods; that the hook's script checks
both personas through the route is shown in tests/route/ (real nginx in front of the real
services) and tests/chart/test_chart.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.kube import importorskip

kubernetes = importorskip("kubernetes")
importorskip("kopf")

from kubernetes.client import ApiException  # noqa: E402

from tests.kube import binaries, service_account_kubeconfig, wait_for  # noqa: E402

# The operator fixtures, imported by name as in test_cluster_operator_image.py.
from tests.kube.operator_fixtures import (  # noqa: E402
    GROUP,
    PLURAL,
    ROOT,
    VERSION,
    delete_volumes,
    example,
    get_cbm,
    install_crd,
    model_volumes,
)

pytestmark = pytest.mark.cluster

CHART = ROOT / "charts/chatbot"
RELEASE = "chatbot"  # the example's Secret names (chatbot-mongodb, chatbot-openai) follow it
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"
# What a fresh namespace holds by itself.
NAMESPACE_DEFAULTS = {("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt")}


@pytest.fixture
def helm(kube_cluster):
    comp = binaries.COMPONENTS["helm"]
    if not comp.is_built():
        pytest.skip("helm is not built: run tests/kube/build-binaries helm")
    env = kube_cluster.env()

    def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(binaries.binary("helm")), *args], env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    return run


@pytest.fixture
def mongo_volume(kube_api, namespace):
    """The StatefulSet's claim gets a pre-bound PV (no storage provisioner here)."""
    core = kubernetes.client.CoreV1Api(kube_api)
    name = f"{namespace}-mongodb"[:63]
    core.create_persistent_volume({"metadata": {"name": name}, "spec": {
        "capacity": {"storage": "8Gi"}, "accessModes": ["ReadWriteOnce"],
        "hostPath": {"path": f"/tmp/{name}"}, "storageClassName": "",
        "persistentVolumeReclaimPolicy": "Retain",
        "claimRef": {"namespace": namespace, "name": f"data-{RELEASE}-mongodb-0"}}})
    yield
    with contextlib.suppress(ApiException):
        core.delete_persistent_volume(name)


class _Container:
    """One container's process, started from its spec the way a kubelet would."""

    def __init__(self, container, kubeconfig: Path, log: Path):
        self.log = log
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("KUBE", "CHATBOT_", "KOPF_"))}
        env.update({v.name: v.value for v in container.env or []})
        env["KUBECONFIG"] = str(kubeconfig)  # where kopf logs in outside a pod
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        self.ports = {p.name: p.container_port for p in container.ports or []}
        for port in self.ports.values():
            with socket.socket() as sock:  # the command names its own port: it must be free
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
                try:
                    sock.bind(("0.0.0.0", port))
                except OSError as exc:
                    pytest.fail(f"port {port} of the operator's container is taken here: {exc}")
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [*(container.command or []), *(container.args or [])], env=env,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def probe(self, probe, deadline_s: float | None = None) -> int:
        """The probe's HTTP status, retried like the kubelet (period x failureThreshold)."""
        get = probe.http_get
        port = self.ports.get(get.port, get.port)
        url = f"http://127.0.0.1:{port}{get.path}"
        deadline = time.monotonic() + (deadline_s or (probe.period_seconds or 10)
                                       * (probe.failure_threshold or 3))
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the operator exited with {self.proc.returncode}:\n"
                            f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=probe.timeout_seconds or 1) as r:
                    return r.status
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def __enter__(self) -> _Container:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self, grace_s: float | None) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=grace_s if grace_s is not None else 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"no exit within the grace period after SIGTERM:\n{self.log_tail()}")


def _namespaced_objects(api, namespace: str) -> set[tuple[str, str]]:
    """Every object in the namespace, of every listable namespaced kind (discovery), except
    Events (records, not resources)."""
    dyn = kubernetes.dynamic.DynamicClient(api)
    found = set()
    for res in dyn.resources.search(namespaced=True):
        if (type(res).__name__ == "ResourceList" or "/" in res.name
                or "list" not in (res.verbs or []) or res.kind == "Event"):
            continue
        try:
            items = res.get(namespace=namespace).items
        except ApiException as exc:
            if exc.status in (404, 405):
                continue
            raise
        found |= {(res.kind, o.metadata.name) for o in items}
    return found


def _cluster_objects(api) -> set[tuple[str, str]]:
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    return ({("ClusterRole", r.metadata.name)
             for r in rbac.list_cluster_role(label_selector=INSTANCE).items}
            | {("ClusterRoleBinding", b.metadata.name)
               for b in rbac.list_cluster_role_binding(label_selector=INSTANCE).items})


def test_helm_install_reconcile_test_and_uninstall_without_orphans(
        kube_cluster, kube_api, namespace, helm, mongo_volume, fake_gpu_nodes, tmp_path):
    core = kubernetes.client.CoreV1Api(kube_api)
    apps = kubernetes.client.AppsV1Api(kube_api)
    batch = kubernetes.client.BatchV1Api(kube_api)
    custom = kubernetes.client.CustomObjectsApi(kube_api)
    volumes = model_volumes(kube_api, namespace, "chatbot")
    try:
        # -- install: every object admitted by the API server, the workloads ready
        helm("install", RELEASE, str(CHART), "--namespace", namespace,
             "--set", "openai.apiKey=sk-test",
             "--set", "mongodb.persistence.deleteOnUninstall=true",
             "--wait", "--timeout", "120s")
        assert apps.read_namespaced_deployment(f"{RELEASE}-operator", namespace) \
            .status.ready_replicas == 1
        sts = apps.read_namespaced_stateful_set(f"{RELEASE}-mongodb", namespace)
        assert sts.status.ready_replicas == 1
        assert core.read_namespaced_persistent_volume_claim(
            f"data-{RELEASE}-mongodb-0", namespace).status.phase == "Bound"
        assert {s.metadata.name for s in core.list_namespaced_secret(namespace).items} >= {
            "chatbot-mongodb", "chatbot-openai"}  # what the example ChatbotModel refers to
        # an upgrade keeps the generated MongoDB password (the data volume was made with it)
        def password():
            return core.read_namespaced_secret("chatbot-mongodb", namespace).data["password"]

        before = password()
        helm("upgrade", RELEASE, str(CHART), "--namespace", namespace, "--reuse-values")
        assert password() == before
        installed = _namespaced_objects(kube_api, namespace)
        assert {("StatefulSet", "chatbot-mongodb"), ("Deployment", "chatbot-operator"),
                ("NetworkPolicy", "chatbot-services"), ("PersistentVolumeClaim",
                                                        "data-chatbot-mongodb-0")} <= installed
        assert _cluster_objects(kube_api) == {("ClusterRole", "chatbot-operator"),
                                              ("ClusterRoleBinding", "chatbot-operator")}

        # -- the operator, as the chart runs it: its command, env and ServiceAccount token
        deployment = apps.read_namespaced_deployment(f"{RELEASE}-operator", namespace)
        pod = deployment.spec.template.spec
        [container] = pod.containers
        kubeconfig, bindings = service_account_kubeconfig(
            kube_cluster.kubeconfig, namespace, pod.service_account_name,
            tmp_path / "operator.kubeconfig")
        assert bindings == []  # no rights added by the test: only the chart's binding
        with _Container(container, kubeconfig, tmp_path / "operator.log") as op:
            assert op.probe(container.startup_probe, deadline_s=60) == 200
            assert op.probe(container.readiness_probe) == 200
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                   example())
            obj = wait_for(lambda: (get_cbm(kube_api, namespace, "chatbot") or {})
                           .get("status", {}).get("phase") == "Ready"
                           and get_cbm(kube_api, namespace, "chatbot"),
                           timeout=120, desc="the example ChatbotModel Ready")
            assert op.probe(container.liveness_probe) == 200, op.log_tail()
            assert obj["status"]["officeReady"] == "1/1"
            assert obj["status"]["characterReady"] == "1/1"
            nodes = {p.metadata.labels["app.kubernetes.io/component"]: p.spec.node_name
                     for p in core.list_namespaced_pod(
                         namespace, label_selector="app.kubernetes.io/managed-by="
                                                   "chatbot-operator").items
                     if p.metadata.labels["app.kubernetes.io/component"] in
                     ("office", "character")}
            assert nodes == {"office": "gpu-2080", "character": "gpu-3060"}
            fetch_images = {j.spec.template.spec.containers[0].image
                            for j in batch.list_namespaced_job(
                                namespace, label_selector="app.kubernetes.io/instance=chatbot,"
                                "app.kubernetes.io/managed-by=chatbot-operator").items}
            assert fetch_images == {container.image}

            # -- helm test: the hook Job is created and completes (kwok runs no container)
            out = helm("test", RELEASE, "--namespace", namespace, "--timeout", "60s").stdout
            assert f"{RELEASE}-test-route" in out and "Succeeded" in out, out

            # -- uninstall: the ChatbotModel first (its children go with it), then the release
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                   "chatbot")

            wait_for(lambda: get_cbm(kube_api, namespace, "chatbot") is None, timeout=60,
                     desc="ChatbotModel deleted")
            # a pod deletion: SIGTERM, then SIGKILL after the grace period
            assert op.terminate(pod.termination_grace_period_seconds) == 0, op.log_tail()
        helm("uninstall", RELEASE, "--namespace", namespace, "--wait", "--timeout", "120s")

        def leftovers():
            return (_namespaced_objects(kube_api, namespace) - NAMESPACE_DEFAULTS) \
                | _cluster_objects(kube_api)

        try:
            wait_for(lambda: not leftovers(), timeout=90, desc="nothing left")
        except AssertionError as exc:
            raise AssertionError(f"left after uninstall: {sorted(leftovers())}") from exc
    finally:
        subprocess.run([str(binaries.binary("helm")), "uninstall", RELEASE, "-n", namespace],
                       env=kube_cluster.env(), capture_output=True, timeout=120)
        delete_volumes(kube_api, volumes)


@pytest.mark.parametrize("value_set", ["defaults", "full", "external-mongo"])
def test_every_rendered_object_passes_the_api_servers_strict_validation(
        kube_cluster, kube_api, namespace, value_set):
    """Each object `helm template` renders, sent to the API server as a server-side dry run
    with strict field validation: unknown or misplaced fields, bad enums and the CRD's own
    rules for the ChatbotModel are refused here, though nothing is created."""
    from tests.chart.value_sets import VALUE_SETS
    from tests.kube.helm import template

    install_crd(kube_api)
    values = dict(VALUE_SETS[value_set])
    if value_set == "full":  # its RoleBindings go to the watched namespaces: this one
        values["operator"] = {**values["operator"], "watchNamespaces": [namespace]}
    objs = template(values, namespace=namespace)
    dyn = kubernetes.dynamic.DynamicClient(kube_api)
    for obj in objs:
        resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        ns = obj["metadata"].get("namespace") if resource.namespaced else None
        try:
            resource.create(body=obj, namespace=ns, query_params=[
                ("dryRun", "All"), ("fieldValidation", "Strict")])
        except ApiException as exc:
            raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: {exc.body}") from exc
    assert {o["kind"] for o in objs} >= {"Deployment", "ClusterRole", "ServiceAccount"}
    # a dry run: nothing was created ...
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube_api)
    with pytest.raises(ApiException) as missing:
        rbac.read_cluster_role("chatbot-operator")
    assert missing.value.status == 404
    # ... and the check does refuse a field the API does not have
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(ApiException) as refused:
        dyn.resources.get(api_version="apps/v1", kind="Deployment").create(
            body=deployment, namespace=namespace,
            query_params=[("dryRun", "All"), ("fieldValidation", "Strict")])
    assert "securityContex" in str(refused.value.body)
