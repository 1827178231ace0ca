"""The operator on the real control plane: kube-apiserver, controller-manager (Deployments,
ReplicaSets, Jobs, garbage collector, PV binder), scheduler and kwok's fake GPU nodes.

The operator runs in-process with only the permissions of the chart's RBAC file, through a
ServiceAccount token. kwok runs no containers: pods become Running+Ready at once and Job
pods then Succeeded (kwok's pod-complete Stage), which is what makes the fetch Job complete
here; the download itself is tested in tests/operator/test_fetch.py and, with its
ServiceAccount, in test_cluster_fetch_progress.py.
"""

from __future__ import annotations

import json
import secrets

import pytest
import yaml

from tests.kube import importorskip

kubernetes = importorskip("kubernetes")
importorskip("kopf")

from kubernetes.client import ApiException  # noqa: E402

from tests.kube import wait_for  # noqa: E402
from tests.kube.operator_fixtures import (  # noqa: E402
    GROUP,
    OPERATOR_MODULE,
    PLURAL,
    ROOT,
    VERSION,
    condition,
    delete_volumes,
    example,
    get_cbm,
    install_crd,
    model_volumes,
    operator_cluster_role,
)

pytestmark = pytest.mark.cluster

HASH_ANNOTATION = "chatbot.treenut.ai/settings-hash"
EXAMPLES = ROOT / "operator/examples"


@pytest.fixture(scope="module")
def crd(kube_cluster):
    install_crd(kube_cluster.api_client())


@pytest.fixture
def operator(crd, kube_api, namespace, kopf_operator, sa_kubeconfig, monkeypatch, request):
    """Factory: start the operator as ServiceAccount chatbot-operator (chart RBAC only)."""
    monkeypatch.setenv("CHATBOT_OPERATOR_FETCH_IMAGE", "chatbot-operator:test")
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube_api)
    role = operator_cluster_role(kube_api, f"chatbot-operator-{secrets.token_hex(3)}")
    request.addfinalizer(lambda: rbac.delete_cluster_role(role))
    kubeconfig = sa_kubeconfig(namespace, "chatbot-operator", cluster_roles=[role])

    def start():
        return kopf_operator(OPERATOR_MODULE, namespace=namespace, kubeconfig=kubeconfig)

    return start


@pytest.fixture
def volumes(kube_api, namespace):
    names = model_volumes(kube_api, namespace, "chatbot")
    yield
    delete_volumes(kube_api, names)


def _apis(api):
    return (kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api),
            kubernetes.client.BatchV1Api(api), kubernetes.client.NetworkingV1Api(api),
            kubernetes.client.CustomObjectsApi(api))


def _pods(core, ns, component):
    return core.list_namespaced_pod(
        ns, label_selector=f"app.kubernetes.io/component={component}").items


def _ready(api, ns, name="chatbot"):
    obj = get_cbm(api, ns, name)
    return obj if (obj or {}).get("status", {}).get("phase") == "Ready" else None


def _children(api, ns):
    core, apps, batch, net, _ = _apis(api)
    listers = {
        "pvc": core.list_namespaced_persistent_volume_claim, "job": batch.list_namespaced_job,
        "deploy": apps.list_namespaced_deployment, "rs": apps.list_namespaced_replica_set,
        "svc": core.list_namespaced_service, "ing": net.list_namespaced_ingress,
        "cm": core.list_namespaced_config_map,
    }
    sel = "app.kubernetes.io/instance=chatbot"
    return {kind: sorted(o.metadata.name for o in lister(ns, label_selector=sel).items)
            for kind, lister in listers.items()}


def test_example_reaches_ready_with_pods_on_their_gpu_nodes(
        kube_api, namespace, operator, volumes, fake_gpu_nodes):
    core, apps, batch, net, custom = _apis(kube_api)
    with operator() as op:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, example())
        obj = wait_for(lambda: _ready(kube_api, namespace), timeout=120,
                       desc="ChatbotModel phase Ready")
        assert op.alive

        status = obj["status"]
        assert {c["type"]: c["status"] for c in status["conditions"]} == {
            "ModelReady": "True", "OfficeReady": "True", "CharacterReady": "True",
            "RouteReady": "True", "Accelerated": "Unknown"}  # kwok pods report no offload
        assert status["accel"] == "office gpu ?, character gpu ?"
        assert status["officeReady"] == "1/1" and status["characterReady"] == "1/1"
        assert status["modelProgress"] == "office 100%, character 100%"
        assert status["observedGeneration"] == obj["metadata"]["generation"]
        assert status["endpoints"]["office"] == f"http://chatbot-office.{namespace}.svc:80"

        children = _children(kube_api, namespace)
        assert children["pvc"] == ["chatbot-character-models", "chatbot-office-models"]
        assert len(children["job"]) == 2 and all("-fetch-" in j for j in children["job"])
        assert children["deploy"] == ["chatbot-character", "chatbot-not-found",
                                      "chatbot-office"]
        assert children["svc"] == ["chatbot-character", "chatbot-character-peers",
                                   "chatbot-not-found", "chatbot-office", "chatbot-office-peers"]
        assert children["ing"] == ["chatbot"]
        assert children["cm"] == ["chatbot-settings"]

        office = _pods(core, namespace, "office")
        character = _pods(core, namespace, "character")
        assert [p.spec.node_name for p in office] == ["gpu-2080"]
        assert [p.spec.node_name for p in character] == ["gpu-3060"]
        assert office[0].spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
        assert office[0].spec.security_context.run_as_non_root is True
        assert all(j.status.succeeded == 1 for j in
                   batch.list_namespaced_job(namespace).items)
        ing = net.read_namespaced_ingress("chatbot", namespace)
        assert ing.metadata.annotations["nginx.ingress.kubernetes.io/rewrite-target"] == "/$2"
        assert all(ref.kind == "ChatbotModel" and ref.controller
                   for ref in ing.metadata.owner_references)

        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.kind=ChatbotModel").items
        reasons = {e.reason for e in events}
        assert {"FetchStarted", "DeploymentCreated", "ModelReady", "OfficeReady"} <= reasons

    # A restart resumes without duplicating anything and without touching the children.
    versions = {d.metadata.name: d.metadata.resource_version
                for d in apps.list_namespaced_deployment(namespace).items}
    before = _children(kube_api, namespace)
    with operator():
        wait_for(lambda: _ready(kube_api, namespace), timeout=30, desc="still Ready")
        with pytest.raises(AssertionError):
            wait_for(lambda: _children(kube_api, namespace) != before, timeout=5,
                     desc="a change in the children")
    assert {d.metadata.name: d.metadata.resource_version
            for d in apps.list_namespaced_deployment(namespace).items} == versions
    assert len(_pods(core, namespace, "office")) == 1

    # Deleting the resource deletes every child (garbage collector, ownerReferences).
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chatbot")
    empty = {k: [] for k in before}
    wait_for(lambda: _children(kube_api, namespace) == empty, timeout=90,
             desc="all children garbage-collected")
    wait_for(lambda: not core.list_namespaced_pod(namespace).items, timeout=60,
             desc="pods gone")


def test_file_change_rolls_office_only_and_replicas_scale_without_rollout(
        kube_api, namespace, operator, volumes, fake_gpu_nodes):
    core, apps, batch, _, custom = _apis(kube_api)

    def replica_sets(component):
        return sorted(r.metadata.name for r in apps.list_namespaced_replica_set(
            namespace, label_selector=f"app.kubernetes.io/component={component}").items)

    with operator():
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, example())
        wait_for(lambda: _ready(kube_api, namespace), timeout=120, desc="Ready")
        office_rs, character_rs = replica_sets("office"), replica_sets("character")
        character_pod = _pods(core, namespace, "character")[0].metadata.name
        office_hash = apps.read_namespaced_deployment(
            "chatbot-office", namespace).spec.template.metadata.annotations[HASH_ANNOTATION]

        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chatbot", {
            "spec": {"office": {"file": "Meta-Llama-3.1-8B-Claude.Q8_0.gguf"}}})

        def office_rolled():
            dep = apps.read_namespaced_deployment("chatbot-office", namespace)
            return (dep.spec.template.metadata.annotations[HASH_ANNOTATION] != office_hash
                    and len(replica_sets("office")) == 2)

        wait_for(office_rolled, timeout=90, desc="office rolled to a new ReplicaSet")
        obj = wait_for(lambda: _ready(kube_api, namespace), timeout=90, desc="Ready again")
        assert obj["status"]["observedGeneration"] == 2
        assert replica_sets("character") == character_rs
        assert [p.metadata.name for p in _pods(core, namespace, "character")] == [character_pod]
        jobs = sorted(j.metadata.name for j in batch.list_namespaced_job(
            namespace, label_selector="app.kubernetes.io/component=office-fetch").items)
        assert len(jobs) == 1  # the old office fetch Job was replaced
        cm = core.read_namespaced_config_map("chatbot-settings", namespace)
        assert cm.data["CHATBOT_OFFICE_MODEL"] == "/models/Meta-Llama-3.1-8B-Claude.Q8_0.gguf"

        # Replicas: the Deployment scales, its pod template (and ReplicaSet) stays.
        office_rs = replica_sets("office")
        template = apps.read_namespaced_deployment("chatbot-office", namespace).spec.template
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chatbot", {
            "spec": {"office": {"replicas": 0}}})
        wait_for(lambda: not _pods(core, namespace, "office"), timeout=60,
                 desc="office scaled to 0")
        dep = apps.read_namespaced_deployment("chatbot-office", namespace)
        assert dep.spec.replicas == 0
        assert dep.spec.template == template
        assert replica_sets("office") == office_rs
        # The status before the patch was Ready too: wait for the one that saw the patch.
        obj = wait_for(lambda: (o := _ready(kube_api, namespace))
                       and o["status"].get("observedGeneration") == o["metadata"]["generation"]
                       and o["status"]["officeReady"] == "0/0" and o,
                       timeout=60, desc="Ready at 0, office 0/0")
        assert obj["status"]["phase"] == "Ready"


def test_an_impossible_spec_is_reported_not_retried_hot(
        kube_api, namespace, operator, fake_gpu_nodes):
    core, apps, _, _, custom = _apis(kube_api)
    body = example()
    body["spec"]["office"]["gpuProfile"] = "h100"  # a valid name, but no such profile
    with operator() as op:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        obj = wait_for(lambda: (get_cbm(kube_api, namespace, "chatbot") or {}).get(
            "status", {}).get("phase") == "Failed" and get_cbm(kube_api, namespace, "chatbot"),
            timeout=60, desc="phase Failed")
        cond = condition(obj, "ModelReady")
        assert cond["reason"] == "InvalidSpec"
        assert "unknown gpuProfile 'h100'" in cond["message"]
        assert not apps.list_namespaced_deployment(namespace).items
        warnings = wait_for(lambda: [e for e in core.list_namespaced_event(namespace).items
                                     if e.type == "Warning" and e.reason == "InvalidSpec"],
                            timeout=30, desc="a Warning event")
        assert "h100" in warnings[0].message
        rv = get_cbm(kube_api, namespace, "chatbot")["metadata"]["resourceVersion"]
        with pytest.raises(AssertionError):  # no hot loop: the object stops changing
            wait_for(lambda: get_cbm(kube_api, namespace, "chatbot")["metadata"][
                "resourceVersion"] != rv, timeout=4, desc="a write")
        assert op.alive


def _reject(custom, namespace, body) -> str:
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body,
                                               dry_run="All")
    except ApiException as exc:
        assert exc.status == 422, exc.body
        return json.loads(exc.body)["message"]
    raise AssertionError("the API server accepted an invalid ChatbotModel")


def _with(path: str, value) -> dict:
    body = example("bad")
    node = body
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return body


INVALID = [
    ("spec.source.uri", "ftp://models/llama", "source.uri must be hf://owner/repo"),
    ("spec.source.uri", "hf://just-one-part", "source.uri must be hf://owner/repo"),
    ("spec.office.file", "model.bin", "file must name a .gguf file"),
    ("spec.character.file", "../../etc/passwd.gguf", "relative path without '..'"),
    ("spec.office.replicas", -1, "spec.office.replicas: Invalid value: -1"),
    ("spec.office.gpuLayers", "lots", "gpuLayers must be a number >= -1"),
    ("spec.character.gpuLayers", -2, "gpuLayers must be a number >= -1"),
    ("spec.office.maxConcurrent", 0, "spec.office.maxConcurrent: Invalid value: 0"),
    ("spec.office.sha256", "abc", "spec.office.sha256: Invalid value: \"abc\""),
    ("spec.office.gpuProfile", "RTX 2080", "gpuProfile must be a lower-case name"),
    ("spec.character.gpuProfile", "custom", "gpuProfile custom needs a nodeSelector"),
    ("spec.office.batchSize", 16384, "batchSize must not exceed contextSize"),
    ("spec.route.kind", "HTTPRoute", "route.kind HTTPRoute needs route.gateway"),
    ("spec.route.kind", "LoadBalancer", "Unsupported value: \"LoadBalancer\""),
    ("spec.storage.accessModes", ["ReadWriteSometimes"], "Unsupported value"),
    ("spec.storage.size", "lots", "spec.storage.size: Invalid value"),
    ("metadata.name", "a-name-far-too-long-for-the-children-it-will-get",
     "metadata.name must be at most 40 characters"),
    ("spec.office.autoscaling", {"minReplicas": 3, "maxReplicas": 2},
     "spec.office.autoscaling.minReplicas: Invalid value: autoscaling.minReplicas "
     "must not exceed autoscaling.maxReplicas"),
    ("spec.office.autoscaling", {"maxReplicas": 2, "metric": "gpu"},
     "spec.office.autoscaling.metric: Unsupported value: \"gpu\": supported values: "
     "\"queue\", \"kvCache\""),
    ("spec.character.autoscaling", {"maxReplicas": 2, "target": 0},
     "spec.character.autoscaling.target: Invalid value: autoscaling.target must "
     "be greater than 0"),
    ("spec.office.autoscaling", {"maxReplicas": 2, "target": -1.5},
     "autoscaling.target must be greater than 0"),
    ("spec.office.autoscaling", {"maxReplicas": 2, "metric": "kvCache", "target": 80},
     "autoscaling.target of metric kvCache is a share: at most 1"),
    ("spec.office.autoscaling", {"minReplicas": 2},
     "spec.office.autoscaling.maxReplicas: Required value"),
    ("spec.office.autoscaling", {"maxReplicas": 2, "prometheusAddress": "prometheus:9090"},
     "autoscaling.prometheusAddress must be an http:// or https:// URL"),
]


@pytest.mark.parametrize(("path", "value", "message"), INVALID,
                         ids=[f"{p}={v}" for p, v, _ in INVALID])
def test_invalid_specs_are_rejected_by_the_api_server(kube_api, crd, namespace, path, value,
                                                      message):
    custom = kubernetes.client.CustomObjectsApi(kube_api)
    message_shown = _reject(custom, namespace, _with(path, value))
    assert message in message_shown


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_accepted(kube_api, crd, namespace, path):
    custom = kubernetes.client.CustomObjectsApi(kube_api)
    # An example may carry what its model needs beside it (the API keys' Secret).
    models = [d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "ChatbotModel"]
    assert len(models) == 1
    obj = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, models[0],
                                                 dry_run="All")
    assert obj["spec"]["office"]["file"].endswith(".gguf")


def test_the_example_itself_is_accepted_with_defaults_filled_in(kube_api, crd, namespace):
    custom = kubernetes.client.CustomObjectsApi(kube_api)
    minimal = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ChatbotModel",
               "metadata": {"name": "minimal"}, "spec": {}}
    obj = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, minimal,
                                                 dry_run="All")
    spec = obj["spec"]
    assert spec["office"]["file"] == "Meta-Llama-3.1-8B-Claude.Q4_1.gguf"
    assert spec["office"]["gpuProfile"] == "rtx-2080"
    assert spec["character"]["gpuLayers"] == 50
    assert spec["character"]["maxConcurrent"] == 2
    assert spec["source"]["uri"] == "hf://QuantFactory/Meta-Llama-3.1-8B-Claude-GGUF"
    assert spec["route"]["kind"] == "Ingress"


def test_an_autoscaling_block_is_accepted_with_its_defaults(kube_api, crd, namespace):
    custom = kubernetes.client.CustomObjectsApi(kube_api)
    body = _with("spec.office.autoscaling", {"maxReplicas": 3})
    body["spec"]["character"]["autoscaling"] = {"maxReplicas": 2, "metric": "kvCache",
                                                "target": 0.8}
    obj = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body,
                                                 dry_run="All")
    assert obj["spec"]["office"]["autoscaling"] == {
        "minReplicas": 1, "maxReplicas": 3, "metric": "queue", "target": 1,
        "scaleDownStabilizationSeconds": 300}
    assert obj["spec"]["character"]["autoscaling"]["target"] == 0.8


def _crd_to_install(kube_api, name: str, load, what: str) -> dict:
    """A CRD this test installs itself: skipped where the cluster already serves it, loaded
    from its Go module (a failure there fails the test where the cluster is required)."""
    from tests.kube import require_cluster

    try:
        kubernetes.client.ApiextensionsV1Api(kube_api).read_custom_resource_definition(name)
        pytest.skip(f"this cluster already serves {name}")
    except ApiException as exc:
        assert exc.status == 404
    try:
        return load()
    except (FileNotFoundError, OSError) as exc:
        if require_cluster():
            raise
        pytest.skip(f"{what} not available: {exc}")


def test_gateway_route_reports_a_missing_api_then_applies_the_httproute(
        kube_api, namespace, operator, volumes, fake_gpu_nodes, monkeypatch):
    """Without the Gateway API the route is reported (and retried); once its CRDs are there,
    the HTTPRoute passes the real Gateway API schema and validation."""
    from tests.kube.operator_fixtures import gateway_api_crd, install_crd_object

    httproute_crd = _crd_to_install(kube_api, "httproutes.gateway.networking.k8s.io",
                                    gateway_api_crd, "the Gateway API CRDs")
    monkeypatch.setenv("CHATBOT_OPERATOR_RETRY_DELAY_S", "2")
    _, _, _, _, custom = _apis(kube_api)
    body = example()
    body["spec"]["route"] = {"kind": "HTTPRoute", "host": "chat.example",
                             "gateway": {"name": "edge", "namespace": "gateways"}}
    with operator():
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        obj = wait_for(lambda: condition(get_cbm(kube_api, namespace, "chatbot"),
                                         "RouteReady").get("reason") == "RouteAPIMissing"
                       and get_cbm(kube_api, namespace, "chatbot"), timeout=60,
                       desc="RouteAPIMissing")
        assert obj["status"]["phase"] == "Failed"
        assert "HTTPRoute (gateway.networking.k8s.io/v1) is not served" in condition(
            obj, "RouteReady")["message"]

        install_crd_object(kube_api, httproute_crd)
        wait_for(lambda: _ready(kube_api, namespace), timeout=60, desc="Ready with HTTPRoute")
        route = custom.get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", namespace, "httproutes", "chatbot")
        assert route["spec"]["parentRefs"][0] == {
            "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge",
            "namespace": "gateways", "port": 8001}
        assert route["spec"]["hostnames"] == ["chat.example"]
        office = route["spec"]["rules"][0]
        assert office["filters"][0]["urlRewrite"]["path"]["replacePrefixMatch"] == "/"
        assert office["backendRefs"][0]["name"] == "chatbot-office"

        # A change of route.kind replaces the route: the old one must not go on serving.
        net = kubernetes.client.NetworkingV1Api(kube_api)

        def httproute_gone():
            try:
                custom.get_namespaced_custom_object(
                    "gateway.networking.k8s.io", "v1", namespace, "httproutes", "chatbot")
                return False
            except ApiException as exc:
                return exc.status == 404

        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chatbot", {
            "spec": {"route": {"kind": "Ingress", "gateway": None}}})
        wait_for(lambda: httproute_gone() and net.read_namespaced_ingress("chatbot", namespace),
                 timeout=60, desc="the HTTPRoute replaced by an Ingress")
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chatbot", {
            "spec": {"route": {"kind": "None"}}})
        wait_for(lambda: not net.list_namespaced_ingress(namespace).items, timeout=60,
                 desc="the Ingress deleted with route.kind None")
        assert httproute_gone()


def test_a_model_wanting_a_route_another_has_is_told_and_gets_it_once_free(
        kube_api, namespace, operator, volumes, fake_gpu_nodes, monkeypatch):
    """Two models without a host would share /office and /character on the ingress class.
    The one that has the route keeps it, even against an older model whose spec changes to
    the same route; that one reports RouteConflict and gets the route once it is free."""
    monkeypatch.setenv("CHATBOT_OPERATOR_RETRY_DELAY_S", "2")
    _, _, _, net, custom = _apis(kube_api)

    def ingresses() -> list[str]:
        return sorted(i.metadata.name for i in net.list_namespaced_ingress(namespace).items)

    def route_reason(name: str) -> str | None:
        return condition(get_cbm(kube_api, namespace, name), "RouteReady").get("reason")

    older = example()
    older["spec"]["route"] = {"kind": "None"}
    with operator():
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, older)
        wait_for(lambda: route_reason("chatbot") == "Disabled", timeout=60,
                 desc="the older model without a route")
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                               example("chatbot-b"))
        wait_for(lambda: route_reason("chatbot-b") == "Applied", timeout=60,
                 desc="the younger model's route")
        claim = "Ingress on host *, ingress class nginx"
        assert get_cbm(kube_api, namespace, "chatbot-b")["status"]["route"] == {
            "kind": "Ingress", "claim": claim}

        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chatbot", {
            "spec": {"route": {"kind": "Ingress"}}})
        wait_for(lambda: route_reason("chatbot") == "RouteConflict", timeout=60,
                 desc="the older model told the route is taken")
        told = get_cbm(kube_api, namespace, "chatbot")
        assert told["status"]["phase"] == "Failed"
        assert condition(told, "RouteReady")["message"] == (
            f"this route ({claim}) is ChatbotModel chatbot-b's: give this one another "
            "route.host, or route.kind None")
        assert ingresses() == ["chatbot-b"] and route_reason("chatbot-b") == "Applied"

        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chatbot-b")
        wait_for(lambda: route_reason("chatbot") == "Applied" and ingresses() == ["chatbot"],
                 timeout=90, desc="the route passed on once the model that had it is gone")


def test_autoscaling_waits_for_keda_then_leaves_the_count_to_it_and_names_unschedulable_pods(
        kube_api, namespace, operator, volumes, fake_gpu_nodes, monkeypatch):
    """Without KEDA: KedaMissing, the fixed replicas kept, the model serving. With KEDA's
    CRD: the ScaledObject applied and owned, the Deployment's count left to KEDA's HPA (a
    rollout does not reset it), a replica no GPU node takes named in status; autoscaling
    switched off: the ScaledObject deleted and the fixed count back."""
    from tests.kube.operator_fixtures import install_crd_object, keda_scaledobject_crd

    keda_crd = _crd_to_install(kube_api, "scaledobjects.keda.sh", keda_scaledobject_crd,
                               "KEDA's ScaledObject CRD")
    monkeypatch.setenv("CHATBOT_OPERATOR_RETRY_DELAY_S", "2")
    core, apps, _, _, custom = _apis(kube_api)
    body = example()
    body["spec"]["office"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3,
                                             "scaleDownStabilizationSeconds": 60}

    def cbm():
        return get_cbm(kube_api, namespace, "chatbot")

    def reason(type_):
        return condition(cbm(), type_).get("reason")

    def office_replicas():
        return apps.read_namespaced_deployment("chatbot-office", namespace).spec.replicas

    with operator():
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        obj = wait_for(lambda: _ready(kube_api, namespace) if reason("AutoscalingReady")
                       == "KedaMissing" else None, timeout=120, desc="Ready, KedaMissing")
        assert condition(obj, "AutoscalingReady")["message"] == (
            "scaledobjects.keda.sh (keda.sh/v1alpha1) is not served by this cluster: install "
            "KEDA; until then office keeps replicas 1")
        assert office_replicas() == 1
        warned = wait_for(lambda: [e for e in core.list_namespaced_event(namespace).items
                                   if e.reason == "KedaMissing"], timeout=30,
                          desc="a Warning event")
        assert warned[0].type == "Warning"

        install_crd_object(kube_api, keda_crd)
        try:
            obj = wait_for(lambda: reason("AutoscalingReady") == "ScaledObjectApplied"
                           and cbm(), timeout=60, desc="ScaledObject applied")
            so = custom.get_namespaced_custom_object("keda.sh", "v1alpha1", namespace,
                                                     "scaledobjects", "chatbot-office")
            assert so["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
            assert so["spec"]["scaleTargetRef"]["name"] == "chatbot-office"
            assert so["spec"]["triggers"][0]["metadata"]["query"].startswith(
                f'sum(llamacpp:requests_deferred{{namespace="{namespace}",')
            assert obj["status"]["autoscaling"] == {"office": {
                "minReplicas": 1, "maxReplicas": 3, "metric": "queue"}}

            # KEDA's HPA asks for 2 through the scale subresource; one rtx-2080 node: the
            # second pod has no node, and the status says so while the first one serves.
            apps.patch_namespaced_deployment_scale(
                "chatbot-office", namespace, {"spec": {"replicas": 2}},
                field_manager="keda-hpa")
            obj = wait_for(lambda: reason("ReplicasScheduled") == "Unschedulable" and cbm(),
                           timeout=60, desc="ReplicasScheduled=False")
            message = condition(obj, "ReplicasScheduled")["message"]
            assert message.startswith("office: 1 replica cannot be scheduled (0/"), message
            assert "nvidia.com/gpu" in message or "node affinity" in message, message
            assert obj["status"]["phase"] == "Ready"
            assert obj["status"]["officeReady"] == "1/2 (auto 1-3, 1 unschedulable)"
            assert obj["status"]["replicas"]["office"] == {
                "desired": 2, "current": 2, "ready": 1, "unschedulable": 1,
                "autoscaled": True}

            # A change that rolls the office pods re-applies its Deployment: the count stays
            # KEDA's.
            generation = apps.read_namespaced_deployment("chatbot-office", namespace) \
                .metadata.generation
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                  "chatbot", {"spec": {"office": {
                                                      "maxConcurrent": 2}}})
            wait_for(lambda: apps.read_namespaced_deployment(
                "chatbot-office", namespace).metadata.generation > generation, timeout=60,
                desc="office Deployment updated")
            assert office_replicas() == 2

            # Autoscaling off: the ScaledObject goes, the fixed count comes back.
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                  "chatbot", {"spec": {"office": {
                                                      "autoscaling": None}}})
            wait_for(lambda: office_replicas() == 1, timeout=60, desc="replicas 1 again")

            def so_gone():
                try:
                    custom.get_namespaced_custom_object("keda.sh", "v1alpha1", namespace,
                                                        "scaledobjects", "chatbot-office")
                    return False
                except ApiException as exc:
                    return exc.status == 404

            wait_for(so_gone, timeout=60, desc="ScaledObject deleted")
            wait_for(lambda: not condition(cbm(), "AutoscalingReady") and reason(
                "ReplicasScheduled") == "AllScheduled", timeout=60,
                desc="AutoscalingReady gone, all scheduled")
        finally:
            kubernetes.client.ApiextensionsV1Api(kube_api).delete_custom_resource_definition(
                "scaledobjects.keda.sh")


def test_the_operator_used_every_permission_the_chart_grants_and_none_was_refused(
        kube_cluster):
    """The chart's RBAC is exactly the operator's calls, read from kube-apiserver's audit log.

    Runs after this module's other tests (pytest keeps file order), which drive the operator
    through every path that needs a permission: Ready (children applied, Jobs and Deployments
    watched, status and Events written), a file change (the old fetch Job deleted) and the
    Gateway route (HTTPRoute applied). A permission none of them used is one to remove; a
    refused call is one kopf or the operator swallowed (kopf only logs a refused Event).
    """
    from tests.kube import rbac_audit
    from tests.kube.operator_fixtures import RBAC_FILE

    if kube_cluster.local is None:
        pytest.skip("only the local control plane writes an audit log")
    calls = rbac_audit.calls_by(kube_cluster.local.audit_log, "chatbot-operator")
    if not calls:
        pytest.skip("the operator made no calls in this session: run the whole module")
    refused = sorted({(c.permission, c.namespace) for c in calls if c.refused_by_rbac})
    assert refused == [], f"calls the chart's RBAC refused: {refused}"

    granted = rbac_audit.granted(yaml.safe_load(RBAC_FILE.read_text())["rules"])
    used = rbac_audit.used(calls)
    assert used <= granted  # (a call outside the grant would have been refused above)
    assert sorted(granted - used) == [], "granted in operator-rbac.yaml but never used"
