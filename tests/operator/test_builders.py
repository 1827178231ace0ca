"""Pure builders: spec -> manifests (no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chatbot_operator import builders, crd
from chatbot_operator.builders import Owner
from chatbot_operator.config import OperatorConfig
from chatbot_operator.profiles import UnknownProfile, load_profiles, resolve
from chatbot_operator.spec import ChatbotModelSpec

ROOT = Path(__file__).resolve().parents[2]
OWNER = Owner("chat", "ns1", "uid-1")
CONFIG = OperatorConfig()
PROFILES = load_profiles("")


def _spec(**overrides) -> ChatbotModelSpec:
    return ChatbotModelSpec.parse(overrides)


def _env(cm: dict) -> dict:
    return cm["data"]


def _container(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]["containers"][0]


def test_the_committed_crd_is_the_generated_one():
    committed = (ROOT / "charts/chatbot/crds/chatbotmodels.yaml").read_text()
    assert committed == crd.render(), "run: python -m chatbot_operator.crd > " \
                                      "charts/chatbot/crds/chatbotmodels.yaml"


def test_crd_defaults_match_the_spec_model():
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec = _spec()
    for persona in ("office", "character"):
        props = schema["properties"][persona]["properties"]
        p = spec.persona(persona)
        assert props["file"]["default"] == p.file
        assert props["gpuProfile"]["default"] == p.gpu_profile
        assert props["gpuLayers"]["default"] == p.gpu_layers
        assert props["maxConcurrent"]["default"] == p.max_concurrent
        assert props["contextSize"]["default"] == p.context_size
        assert props["batchSize"]["default"] == p.batch_size
    assert schema["properties"]["source"]["properties"]["uri"]["default"] == spec.source.uri


def test_defaults_reproduce_the_seed():
    spec = _spec()
    cm = builders.settings_configmap(OWNER, spec, PROFILES, CONFIG)
    env = _env(cm)
    assert spec.source.uri == "hf://QuantFactory/Meta-Llama-3.1-8B-Claude-GGUF"
    assert env["CHATBOT_OFFICE_MODEL"] == "/models/Meta-Llama-3.1-8B-Claude.Q4_1.gguf"
    assert env["CHATBOT_CHARACTER_MODEL"] == "/models/Meta-Llama-3.1-8B-Claude.Q4_0.gguf"
    assert env["CHATBOT_OFFICE__MODEL__N_GPU_LAYERS"] == "-1"  # auto on a GPU: all layers
    assert env["CHATBOT_CHARACTER__MODEL__N_GPU_LAYERS"] == "50"
    assert env["CHATBOT_OFFICE__MAX_CONCURRENT"] == "1"
    assert env["CHATBOT_CHARACTER__MAX_CONCURRENT"] == "2"
    for p in ("OFFICE", "CHARACTER"):
        assert env[f"CHATBOT_{p}__MODEL__N_CTX"] == "8191"
        assert env[f"CHATBOT_{p}__MODEL__N_BATCH"] == "2048"
        assert env[f"CHATBOT_{p}__MODEL__MAIN_GPU"] == "0"


def test_gpu_profiles_pin_office_to_the_2080_and_character_to_the_3060():
    spec = _spec()
    for persona, product in (("office", "RTX-2080"), ("character", "RTX-3060")):
        pod = builders.persona_deployment(OWNER, spec, persona, PROFILES,
                                          CONFIG)["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": f"NVIDIA-GeForce-{product}"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists",
                "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_cpu_profile_has_no_gpu_and_auto_layers_become_zero():
    spec = _spec(office={"gpuProfile": "cpu"})
    dep = builders.persona_deployment(OWNER, spec, "office", PROFILES, CONFIG)
    pod = dep["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in str(pod["containers"][0]["resources"])
    env = _env(builders.settings_configmap(OWNER, spec, PROFILES, CONFIG))
    assert env["CHATBOT_OFFICE__MODEL__N_GPU_LAYERS"] == "0"


def test_profiles_extend_through_configuration_and_unknown_ones_are_named():
    profiles = load_profiles('{"a100": {"nodeSelector": {"nvidia.com/gpu.product": "A100"}}}')
    a100 = resolve("a100", profiles)
    assert a100.gpus == 1 and a100.node_selector == {"nvidia.com/gpu.product": "A100"}
    with pytest.raises(UnknownProfile, match="unknown gpuProfile 'h100'; known: a100, cpu"):
        resolve("h100", profiles)


def test_spec_node_selector_and_tolerations_add_to_the_profile():
    spec = _spec(character={"gpuProfile": "custom", "nodeSelector": {"pool": "gpu"},
                            "tolerations": [{"key": "dedicated", "operator": "Exists"}]})
    pod = builders.persona_deployment(OWNER, spec, "character", PROFILES,
                                      CONFIG)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]


def test_threads_follow_the_cpu_limit():
    spec = _spec(office={"resources": {"limits": {"cpu": "3500m", "memory": "12Gi"}}})
    env = _env(builders.settings_configmap(OWNER, spec, PROFILES, CONFIG))
    assert env["CHATBOT_OFFICE__MODEL__N_THREADS"] == "3"
    assert "CHATBOT_CHARACTER__MODEL__N_THREADS" not in env


def test_deployment_runs_one_persona_non_root_with_probes_and_secrets():
    spec = _spec(secrets={"mongodb": {"name": "mongo", "key": "url"},
                          "openai": {"name": "openai", "key": "api-key"}})
    dep = builders.persona_deployment(OWNER, spec, "office", PROFILES, CONFIG)
    c = _container(dep)
    assert c["command"][:3] == ["chatbot", "serve", "office"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in c["env"]}
    assert env["MONGO_URL"]["valueFrom"]["secretKeyRef"] == {"name": "mongo", "key": "url"}
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "openai"
    assert env["CHATBOT_ROOT_PATH"]["value"] == "/office"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    # The pod waits (not ready) for a missing model rather than crash-looping.
    cm = builders.settings_configmap(OWNER, spec, PROFILES, CONFIG)
    assert int(cm["data"]["CHATBOT_MODEL_WAIT_TIMEOUT_S"]) > 0


def test_a_terminating_pod_keeps_serving_until_the_route_stopped_sending_to_it():
    """A rollout: the pod sleeps (Kubernetes' own preStop sleep, no binary in the image)
    while the route and kube-proxy drop it, then the service drains its answers in flight;
    the kubelet waits longer than both before it kills."""
    import chatbot_contract as contract
    from chatbot.settings import Settings

    dep = builders.persona_deployment(OWNER, _spec(), "character", PROFILES, CONFIG)
    pre_stop = _container(dep)["lifecycle"]["preStop"]
    assert pre_stop == {"sleep": {"seconds": builders.PRE_STOP_SLEEP_S}}
    assert builders.PRE_STOP_SLEEP_S == 5
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > (pre_stop["sleep"]["seconds"] + Settings().shutdown_grace_s
                    + contract.SHUTDOWN_CUTOFF_MARGIN_S)


def test_a_file_change_changes_only_that_personas_pod_template():
    before, after = _spec(), _spec(office={"file": "other.Q8_0.gguf"})

    def template(spec, persona):
        return builders.persona_deployment(OWNER, spec, persona, PROFILES,
                                           CONFIG)["spec"]["template"]

    assert template(before, "office") != template(after, "office")
    assert template(before, "character") == template(after, "character")
    scaled = _spec(office={"replicas": 3})
    assert template(before, "office") == template(scaled, "office")


def test_replicas_find_each_other_through_a_headless_service_the_service_settings_take():
    """Conversation affinity: each pod knows its own address (the downward API's pod IP)
    and a DNS name that lists its persona's ready pods; the service's Settings accept what
    the operator sets (with the pod IP substituted, as the kubelet does)."""
    from chatbot.settings import Settings

    dep = builders.persona_deployment(OWNER, _spec(), "character", PROFILES, CONFIG)
    env = {e["name"]: e for e in _container(dep)["env"]}
    assert env["CHATBOT_POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    peers = builders.peers_service(OWNER, "character")
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["publishNotReadyAddresses"] is False
    assert peers["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert peers["metadata"]["labels"]["app.kubernetes.io/component"] == "character-peers"
    host, port = env["CHATBOT_AFFINITY_PEERS_DNS"]["value"].split(":")
    assert host == peers["metadata"]["name"] and int(port) == builders.HTTP_PORT
    own = env["CHATBOT_AFFINITY_SELF"]["value"]
    settings = Settings(
        affinity_self=own.replace("$(CHATBOT_POD_IP)", "10.1.2.3"),
        affinity_peers_dns=env["CHATBOT_AFFINITY_PEERS_DNS"]["value"])
    assert settings.affinity and settings.affinity_self == f"http://10.1.2.3:{builders.HTTP_PORT}"



def test_the_kv_handoff_port_is_the_pods_and_the_peers_services_never_the_routes():
    """A draining pod hands its conversations' KV cells to its peers on a port of its own:
    declared on the pod and the headless peers Service, absent from the persona's Service
    (the route's backend), and taken by the service's Settings."""
    from chatbot.settings import Settings

    dep = builders.persona_deployment(OWNER, _spec(), "character", PROFILES, CONFIG)
    container = _container(dep)
    env = {e["name"]: e for e in container["env"]}
    assert {"name": "kv-handoff", "containerPort": builders.KV_HANDOFF_PORT} in \
        container["ports"]
    assert int(env["CHATBOT_KV_HANDOFF_PORT"]["value"]) == builders.KV_HANDOFF_PORT
    peers = builders.peers_service(OWNER, "character")["spec"]["ports"]
    assert {"name": "kv-handoff", "port": builders.KV_HANDOFF_PORT,
            "targetPort": "kv-handoff"} in peers
    public = builders.persona_service(OWNER, "character")["spec"]["ports"]
    assert [p["targetPort"] for p in public] == ["http"]
    settings = Settings(kv_handoff_port=env["CHATBOT_KV_HANDOFF_PORT"]["value"],
                        kv_handoff=env["CHATBOT_KV_HANDOFF"]["value"])
    assert settings.kv_handoff and settings.kv_handoff_port == builders.KV_HANDOFF_PORT
    # kvHandoff: false turns it off for that persona only.
    spec = _spec(character={**_spec().model_dump(by_alias=True)["character"],
                            "kvHandoff": False})
    for persona, on in (("character", "false"), ("office", "true")):
        dep = builders.persona_deployment(OWNER, spec, persona, PROFILES, CONFIG)
        env = {e["name"]: e for e in _container(dep)["env"]}
        assert env["CHATBOT_KV_HANDOFF"]["value"] == on
    assert not Settings(kv_handoff="false").kv_handoff


def test_fetch_job_downloads_into_the_persona_volume_and_reports_status():
    spec = _spec(office={"sha256": "a" * 64})
    job = builders.fetch_job(OWNER, spec, "office", PROFILES, CONFIG)
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["python", "-m", "chatbot_operator.fetch"]
    assert c["args"][c["args"].index("--sha256") + 1] == "a" * 64
    assert c["args"][c["args"].index("--report") + 1] == "ns1/chat/office"
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "chat-office-models"
    assert pod["serviceAccountName"] == "chat-model-fetch"
    assert pod["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-GeForce-RTX-2080"
    assert "nvidia.com/gpu" not in str(c["resources"])  # downloading needs no GPU
    # A new file gives a new Job name (Jobs are immutable); the same spec, the same name.
    assert builders.fetch_job_name(OWNER, spec, "office") == \
        builders.fetch_job_name(OWNER, _spec(office={"sha256": "a" * 64}), "office")
    assert builders.fetch_job_name(OWNER, spec, "office") != \
        builders.fetch_job_name(OWNER, _spec(), "office")
    role = builders.fetch_rbac(OWNER)[1]
    assert role["rules"] == [{"apiGroups": ["chatbot.treenut.ai"],
                              "resources": ["chatbotmodels/status"],
                              "resourceNames": ["chat"], "verbs": ["patch"]}]


def test_pvc_source_uses_the_claim_and_needs_no_fetch():
    spec = _spec(source={"uri": "pvc://shared-models/llama"})
    assert not builders.needs_fetch(spec)
    dep = builders.persona_deployment(OWNER, spec, "character", PROFILES, CONFIG)
    vol = dep["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]
    assert vol == {"claimName": "shared-models", "readOnly": True}
    env = _env(builders.settings_configmap(OWNER, spec, PROFILES, CONFIG))
    assert env["CHATBOT_CHARACTER_MODEL"] == "/models/llama/Meta-Llama-3.1-8B-Claude.Q4_0.gguf"


def test_ingress_strips_prefixes_and_serves_the_404_page():
    ing = builders.ingress(OWNER, _spec(route={"host": "chat.example"}))
    ann = ing["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/rewrite-target"] == "/$2"
    assert ann["nginx.ingress.kubernetes.io/use-regex"] == "true"
    # No default-backend: ingress-nginx would send a persona with no ready pod there,
    # and its clients would get the 404 page instead of a 503 they retry.
    assert sorted(ann) == [f"nginx.ingress.kubernetes.io/{name}" for name in (
        "proxy-body-size", "proxy-read-timeout", "rewrite-target", "use-regex")]
    assert ing["spec"]["ingressClassName"] == "nginx"
    rule = ing["spec"]["rules"][0]
    assert rule["host"] == "chat.example"
    assert [(p["path"], p["backend"]["service"]["name"]) for p in rule["http"]["paths"]] == [
        ("/office(/|$)(.*)", "chat-office"), ("/character(/|$)(.*)", "chat-character"),
        ("/", "chat-not-found")]  # "/" too: a host-less rule would get the controller's 404


def test_http_route_rewrites_prefixes_on_the_8001_listener():
    route = builders.route(OWNER, _spec(route={"kind": "HTTPRoute",
                                               "gateway": {"name": "gw"}}))
    assert route["kind"] == "HTTPRoute"
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io",
                                            "kind": "Gateway", "name": "gw", "port": 8001}]
    office = route["spec"]["rules"][0]
    assert office["matches"][0]["path"] == {"type": "PathPrefix", "value": "/office"}
    assert office["filters"][0]["urlRewrite"]["path"] == {
        "type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}
    assert route["spec"]["rules"][-1]["backendRefs"][0]["name"] == "chat-not-found"
    # each persona's rule reaches its own Service only: with no ready pod the Gateway
    # answers its own 5xx, never the 404 page
    assert [[ref["name"] for ref in rule["backendRefs"]] for rule in route["spec"]["rules"]] \
        == [["chat-office"], ["chat-character"], ["chat-not-found"]]
    assert [[f["type"] for f in rule.get("filters", [])] for rule in route["spec"]["rules"]] \
        == [["URLRewrite"], ["URLRewrite"], []]


def test_example_resources_parse():
    for path in sorted((ROOT / "operator/examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ChatbotModel":
                ChatbotModelSpec.parse(doc["spec"])


def _autoscaled(**block) -> ChatbotModelSpec:
    return _spec(office={"replicas": 2, "autoscaling": {"maxReplicas": 4, **block}})


def test_an_autoscaled_persona_gets_a_scaled_object_on_its_queue_and_no_replicas():
    spec = _autoscaled(scaleDownStabilizationSeconds=120)
    so = builders.scaled_object(OWNER, spec, "office", CONFIG)
    assert so["apiVersion"] == "keda.sh/v1alpha1" and so["kind"] == "ScaledObject"
    assert so["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": "chat-office"}
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (1, 4)
    assert so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
        "stabilizationWindowSeconds"] == 120
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": "http://prometheus-operated.monitoring.svc:9090",
        "query": 'sum(llamacpp:requests_deferred{namespace="ns1",'
                 'pod=~"chat-office-[a-z0-9]{1,10}-[a-z0-9]{5}"})',
        "threshold": "1"}

    # KEDA's HPA owns the count: the Deployment does not carry one to reset it with.
    dep = builders.persona_deployment(OWNER, spec, "office", PROFILES, CONFIG, autoscaled=True)
    assert "replicas" not in dep["spec"]
    # Without KEDA the fixed count stays in force.
    fixed = builders.persona_deployment(OWNER, spec, "office", PROFILES, CONFIG)
    assert fixed["spec"]["replicas"] == 2
    # Scaling never restarts pods: the template is the same either way.
    assert dep["spec"]["template"] == fixed["spec"]["template"]


def test_the_kv_metric_its_target_and_a_prometheus_of_the_models_own():
    spec = _autoscaled(metric="kvCache", target=0.75, minReplicas=2,
                       prometheusAddress="http://prom.obs:9090")
    trigger = builders.scaled_object(OWNER, spec, "office", CONFIG)["spec"]["triggers"][0]
    assert trigger["metadata"]["query"].startswith("sum(llamacpp:kv_cache_usage_ratio{")
    assert trigger["metadata"]["threshold"] == "0.75"
    assert trigger["metadata"]["serverAddress"] == "http://prom.obs:9090"
    config = OperatorConfig(prometheus_address="http://other:9090")
    assert builders.scaled_object(OWNER, _autoscaled(), "office", config)["spec"]["triggers"][
        0]["metadata"]["serverAddress"] == "http://other:9090"


def test_the_pod_regex_matches_the_deployments_pods_only():
    import re
    pattern = re.compile(builders.pod_name_regex(OWNER, "office"))
    assert pattern.fullmatch("chat-office-7d9f8b6c4d-x2k9p")
    assert not pattern.fullmatch("chat-character-7d9f8b6c4d-x2k9p")
    assert not pattern.fullmatch("chat-office-office-7d9f8b6c4d-x2k9p")  # model chat-office


def test_api_key_budgets_split_by_the_most_pods_autoscaling_may_run():
    spec = ChatbotModelSpec.parse({"apiKeys": {"secretName": "keys"},
                                   "office": {"autoscaling": {"maxReplicas": 5}}})
    assert builders.api_keys_settings(spec)["CHATBOT_API_KEYS_REPLICAS"] == "6"
