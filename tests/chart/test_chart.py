"""The Helm chart rendered with several value sets and checked object by object, plus
`helm lint --strict` (real helm, built by tests/kube/build-binaries).

No cluster here: tests/cluster/test_cluster_chart.py installs the chart for real.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
import yaml

from chatbot_operator import builders, profiles
from chatbot_operator.config import OperatorConfig
from chatbot_operator.spec import DEFAULT_SERVICE_IMAGE, ChatbotModelSpec
from tests.chart.value_sets import EXTERNAL, FULL, VALUE_SETS
from tests.kube.helm import CHART, find, one, run, template

RBAC_RULES = yaml.safe_load((CHART / "files/operator-rbac.yaml").read_text())["rules"]
CRD = yaml.safe_load((CHART / "crds/chatbotmodels.yaml").read_text())
OPERATOR_POD_KINDS = ("Deployment", "StatefulSet", "Job")



def _pod_templates(objs):
    for o in objs:
        if o["kind"] in OPERATOR_POD_KINDS:
            yield o, o["spec"]["template"]


def _matches(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels + matchExpressions In/NotIn/Exists) against labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
    return True


def _operator_pod_labels(component: str) -> dict:
    """The labels the operator puts on a ChatbotModel's pods (builders.py)."""
    return builders.labels(builders.Owner("chatbot", "chatbot", "uid"), component)


# ----------------------------------------------------------------------------- lint

@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_strict_passes(name):
    proc = run("lint", "--strict", str(CHART), values=VALUE_SETS[name])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("path", sorted((CHART / "ci").glob("*-values.yaml")),
                         ids=lambda p: p.name)
def test_the_documented_values_files_lint_and_render(path):
    values = yaml.safe_load(path.read_text())
    proc = run("lint", "--strict", str(CHART), values=values)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    objs = template(values)
    if "chatbotModel" in values:
        cbm = one(objs, "ChatbotModel")
        jsonschema.validate(cbm, CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    if values.get("route", {}).get("kind") == "HTTPRoute":
        job = one(objs, "Job", "chatbot-test-route")
        env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0][
            "env"]}
        assert env["ROUTE_URL"].endswith(":8001")


# ----------------------------------------------------------------------------- labels

@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_is_labelled_and_every_selector_selects_its_own_pods(name):
    objs = template(VALUE_SETS[name])
    for o in objs:
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "chatbot", o["metadata"]["name"]
        assert labels["app.kubernetes.io/instance"] == "chatbot"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "chatbot-2.0.0"
        assert labels["app.kubernetes.io/component"]
        if name == "full":
            assert labels["team"] == "ml"
    for o, pod in _pod_templates(objs):
        if o["kind"] == "Job":
            continue  # the test hook: no selector of its own
        match = o["spec"]["selector"]
        assert _matches(match, pod["metadata"]["labels"]), o["metadata"]["name"]
        # and never the operator's own pods (a ChatbotModel named like the release)
        for component in ("office", "character", "not-found", "office-fetch"):
            assert not _matches(match, _operator_pod_labels(component))
    pods = [p["metadata"]["labels"] for _, p in _pod_templates(objs)]
    for svc in find(objs, "Service"):
        assert sum(_matches({"matchLabels": svc["spec"]["selector"]}, p) for p in pods) == 1
    for pdb in find(objs, "PodDisruptionBudget"):
        assert sum(_matches(pdb["spec"]["selector"], p) for p in pods) == 1
        assert pdb["spec"]["minAvailable"] == 1


# ----------------------------------------------------------------------------- RBAC

def test_cluster_role_is_exactly_the_operators_rbac_file():
    objs = template()
    role = one(objs, "ClusterRole", "chatbot-operator")
    assert role["rules"] == RBAC_RULES
    binding = one(objs, "ClusterRoleBinding", "chatbot-operator")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": "chatbot-operator"}
    account = one(objs, "ServiceAccount", "chatbot-operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "chatbot-operator",
                                    "namespace": "chatbot"}]
    deployment = one(objs, "Deployment", "chatbot-operator")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == \
        account["metadata"]["name"]
    # Nothing else in the chart grants anything.
    assert {o["kind"] for o in objs} & {"Role", "RoleBinding"} == set()
    assert len(find(objs, "ClusterRole")) == 1


def test_watched_namespaces_get_role_bindings_and_only_kopfs_cluster_rules_stay_global():
    objs = template(FULL)
    assert one(objs, "ClusterRole", "chatbot-operator")["rules"] == RBAC_RULES
    cluster = one(objs, "ClusterRole", "chatbot-operator-cluster")
    assert cluster["rules"] == [r for r in RBAC_RULES
                                if set(r["resources"]) & {"customresourcedefinitions",
                                                          "namespaces"}]
    assert len(cluster["rules"]) == 2
    [crb] = find(objs, "ClusterRoleBinding")
    assert crb["roleRef"]["name"] == "chatbot-operator-cluster"
    bindings = find(objs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["roleRef"]["name"] == "chatbot-operator" for b in bindings)
    command = one(objs, "Deployment", "chatbot-operator")["spec"]["template"]["spec"][
        "containers"][0]["command"]
    assert "--namespace=team-a" in command and "--namespace=team-b" in command
    assert "--all-namespaces" not in command


# ----------------------------------------------------------------------------- security

@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_pod_runs_non_root_read_only_without_privilege_escalation(name):
    objs = template(VALUE_SETS[name])
    checked = 0
    for o, pod in _pod_templates(objs):
        spec = pod["spec"]
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0, o["metadata"]["name"]
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert "resources" in c and c["resources"]["limits"]["memory"]
            checked += 1
        # Only the operator talks to the API server.
        expected = o["metadata"]["name"] == "chatbot-operator"
        assert spec.get("automountServiceAccountToken") is expected, o["metadata"]["name"]
    assert checked >= 1


# ----------------------------------------------------------------------------- the operator

def test_operator_deployment_runs_the_operator_with_its_settings(tmp_path):
    objs = template(FULL)
    pod = one(objs, "Deployment", "chatbot-operator")["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["command"][:4] == ["kopf", "run", "--standalone",
                                "--module=chatbot_operator.handlers"]
    assert one(objs, "Deployment", "chatbot-operator")["spec"]["replicas"] == 1
    health = next(p for p in c["ports"] if p["name"] == "health")["containerPort"]
    assert f"--liveness=http://0.0.0.0:{health}/healthz" in c["command"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {e["name"]: e["value"] for e in c["env"]}
    fields = {f"CHATBOT_OPERATOR_{f.upper()}" for f in OperatorConfig.model_fields}
    assert {k for k in env if k.startswith("CHATBOT_OPERATOR_")} <= fields
    assert env["CHATBOT_OPERATOR_FETCH_IMAGE"] == c["image"]
    assert env["CHATBOT_OPERATOR_HF_ENDPOINT"] == "https://hf-mirror.example"
    config = OperatorConfig(**{k.removeprefix("CHATBOT_OPERATOR_").lower(): v
                               for k, v in env.items() if k.startswith("CHATBOT_OPERATOR_")
                               and k != "CHATBOT_OPERATOR_GPU_PROFILES"})
    assert config.model_wait_timeout_s == 1800
    # The GPU profiles ConfigMap, mounted where the env says, is what the operator loads.
    path = Path(env["CHATBOT_OPERATOR_GPU_PROFILES"])
    cm = one(objs, "ConfigMap", "chatbot-gpu-profiles")
    mount = next(m for m in c["volumeMounts"] if m["name"] == "gpu-profiles")
    assert str(path.parent) == mount["mountPath"] and path.name in cm["data"]
    mounted = tmp_path / path.name  # the file as the pod sees it
    mounted.write_text(cm["data"][path.name])
    loaded = profiles.load_profiles(str(mounted))
    assert loaded["a100"].node_selector == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert loaded["a100"].gpus == 1 and "rtx-2080" in loaded


def test_default_images_are_the_operators_defaults():
    objs = template()
    op = one(objs, "Deployment", "chatbot-operator")["spec"]["template"]["spec"]
    assert op["containers"][0]["image"] == OperatorConfig().fetch_image
    cbm = one(template({"chatbotModel": {"create": True}}), "ChatbotModel")
    assert cbm["spec"]["image"] == DEFAULT_SERVICE_IMAGE
    cpu = one(template({"chatbotModel": {"create": True}, "serviceImage": {"variant": "cpu"}}),
              "ChatbotModel")
    assert cpu["spec"]["image"] == DEFAULT_SERVICE_IMAGE.replace("-cuda", "-cpu")
    digest = "sha256:" + "ab" * 32
    pinned = template({"operator": {"image": {"repository": "reg.local/op", "tag": "t1",
                                              "digest": digest}}})
    c = one(pinned, "Deployment", "chatbot-operator")["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == f"reg.local/op:t1@{digest}"


# ----------------------------------------------------------------------------- MongoDB

def _env(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def test_in_chart_mongodb_statefulset_with_generated_secret():
    objs = template()
    sts = one(objs, "StatefulSet", "chatbot-mongodb")
    secret = one(objs, "Secret", "chatbot-mongodb")
    svc = one(objs, "Service", "chatbot-mongodb")
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"
    [c] = sts["spec"]["template"]["spec"]["containers"]
    assert c["image"].startswith("docker.io/library/mongo:") and ":latest" not in c["image"]
    env = _env(c)
    assert env["MONGO_INITDB_ROOT_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "chatbot-mongodb", "key": "password"}
    data = secret["stringData"]
    assert len(data["password"]) == 32 and data["password"].isalnum()
    assert data["url"] == (f"mongodb://root:{data['password']}@chatbot-mongodb.chatbot.svc:"
                           "27017/?authSource=admin")
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert "storageClassName" not in claim["spec"]
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/data/db", "/tmp"}
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    # A given password is used as is (URL-encoded in the connection string).
    given = one(template({"mongodb": {"auth": {"rootPassword": "p@ss word"}}}), "Secret")
    assert given["stringData"]["password"] == "p@ss word"
    assert "root:p%40ss+word@" in given["stringData"]["url"]
    # ... and the services' driver reads back exactly that password, host and port
    from pymongo.uri_parser import parse_uri

    parsed = parse_uri(given["stringData"]["url"])
    assert (parsed["username"], parsed["password"]) == ("root", "p@ss word")
    assert parsed["nodelist"] == [(f"{svc['metadata']['name']}.chatbot.svc",
                                   svc["spec"]["ports"][0]["port"])]


def test_mongodb_server_ferretdb_is_configured_by_its_environment():
    """A MongoDB-wire image other than mongo's: FerretDB, with the same Secret's root user."""
    objs = template({"mongodb": {"server": "ferretdb", "image": {
        "repository": "ghcr.io/ferretdb/ferretdb", "tag": "1.24.2"}}})
    sts = one(objs, "StatefulSet", "chatbot-mongodb")
    [c] = sts["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "ghcr.io/ferretdb/ferretdb:1.24.2"
    assert "args" not in c  # mongod's --bind_ip_all means nothing to FerretDB
    env = _env(c)
    assert "MONGO_INITDB_ROOT_PASSWORD" not in env
    assert env["FERRETDB_SETUP_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "chatbot-mongodb", "key": "password"}
    assert env["FERRETDB_SQLITE_URL"]["value"] == "file:/data/db/"
    assert env["FERRETDB_LISTEN_ADDR"]["value"] == ":27017"
    assert "exec" not in c["livenessProbe"]  # no mongosh in that image
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/data/db"}


def test_mongodb_existing_secret_creates_no_secret():
    objs = template({"mongodb": {"auth": {"existingSecret": "my-mongo"}},
                     "chatbotModel": {"create": True}})
    assert not find(objs, "Secret")
    [c] = one(objs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert _env(c)["MONGO_INITDB_ROOT_USERNAME"]["valueFrom"]["secretKeyRef"] == {
        "name": "my-mongo", "key": "username"}
    assert one(objs, "ChatbotModel")["spec"]["secrets"]["mongodb"] == {"name": "my-mongo",
                                                                       "key": "url"}


def test_external_mongo_url_or_secret_replaces_the_statefulset():
    objs = template({**EXTERNAL, "chatbotModel": {"create": True}})
    assert not find(objs, "StatefulSet") and not find(objs, "NetworkPolicy")
    secret = one(objs, "Secret", "chatbot-mongodb")
    assert secret["stringData"] == {"url": "mongodb+srv://u:p@cluster0.example.net/"}
    assert one(objs, "ChatbotModel")["spec"]["secrets"] == {
        "mongodb": {"name": "chatbot-mongodb", "key": "url"}}

    objs = template({"mongodb": {"enabled": False},
                     "externalMongo": {"existingSecret": "prod-mongo", "existingSecretKey": "uri"},
                     "chatbotModel": {"create": True}})
    assert not find(objs, "Secret") and not find(objs, "StatefulSet")
    assert one(objs, "ChatbotModel")["spec"]["secrets"]["mongodb"] == {"name": "prod-mongo",
                                                                       "key": "uri"}
    none = template({"mongodb": {"enabled": False}, "chatbotModel": {"create": True}})
    assert "secrets" not in one(none, "ChatbotModel")["spec"]


def test_delete_on_uninstall_sets_the_claim_retention_policy():
    sts = one(template(FULL), "StatefulSet")
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast"


# ----------------------------------------------------------------------------- ChatbotModel, OpenAI

def test_no_chatbotmodel_by_default_and_one_from_values_valid_against_the_crd():
    assert not find(template(), "ChatbotModel")
    objs = template(FULL)
    cbm = one(objs, "ChatbotModel", "chatbot")
    assert cbm["apiVersion"] == "chatbot.treenut.ai/v1alpha1"
    assert cbm["spec"]["office"] == {"gpuProfile": "a100"}
    assert cbm["spec"]["secrets"] == {"mongodb": {"name": "chatbot-mongodb", "key": "url"},
                                      "openai": {"name": "chatbot-openai", "key": "api-key"}}
    schema = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.validate(cbm, schema)
    spec = ChatbotModelSpec.parse(cbm["spec"])
    assert spec.office.gpu_profile == "a100" and spec.secrets.openai.name == "chatbot-openai"
    # a spec's own choices win over the chart's
    own = one(template({"chatbotModel": {"create": True, "spec": {
        "image": "reg.local/svc:1", "secrets": {"mongodb": {"name": "mine", "key": "u"}}}}}),
        "ChatbotModel")
    assert own["spec"]["image"] == "reg.local/svc:1"
    assert own["spec"]["secrets"] == {"mongodb": {"name": "mine", "key": "u"}}


def test_openai_secret_only_when_a_key_is_given():
    assert not find(template(), "Secret", "chatbot-openai")
    secret = one(template(FULL), "Secret", "chatbot-openai")
    assert secret["stringData"] == {"api-key": "sk-test"}
    objs = template({"openai": {"existingSecret": "oa", "existingSecretKey": "k"},
                     "chatbotModel": {"create": True}})
    assert not find(objs, "Secret", "chatbot-openai")
    assert one(objs, "ChatbotModel")["spec"]["secrets"]["openai"] == {"name": "oa", "key": "k"}


# ----------------------------------------------------------------------------- NetworkPolicies

def test_network_policies_only_the_route_reaches_services_only_services_reach_mongodb():
    objs = template()
    services = one(objs, "NetworkPolicy", "chatbot-services")["spec"]
    mongo = one(objs, "NetworkPolicy", "chatbot-mongodb")["spec"]
    sts_pod = one(objs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    operator_pod = one(objs, "Deployment", "chatbot-operator")["spec"]["template"][
        "metadata"]["labels"]
    for component in ("office", "character", "not-found"):
        assert _matches(services["podSelector"], _operator_pod_labels(component))
    assert not _matches(services["podSelector"], _operator_pod_labels("office-fetch"))
    assert not _matches(services["podSelector"], sts_pod)
    [rule] = services["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": builders.HTTP_PORT}]
    assert rule["from"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}}}]

    assert _matches(mongo["podSelector"], sts_pod)
    [rule] = mongo["ingress"]
    [peer] = rule["from"]
    assert set(peer) == {"podSelector"}  # this namespace only
    assert _matches(peer["podSelector"], _operator_pod_labels("office"))
    assert _matches(peer["podSelector"], _operator_pod_labels("character"))
    for other in ("not-found", "office-fetch"):
        assert not _matches(peer["podSelector"], _operator_pod_labels(other))
    assert not _matches(peer["podSelector"], operator_pod)
    assert rule["ports"] == [{"protocol": "TCP", "port": 27017}]

    operator = one(objs, "NetworkPolicy", "chatbot-operator")["spec"]
    assert _matches(operator["podSelector"], operator_pod) and "ingress" not in operator

    # Conversation affinity: a persona's replicas reach each other, and only each other.
    for persona, other in (("office", "character"), ("character", "office")):
        peers = one(objs, "NetworkPolicy", f"chatbot-{persona}-peers")["spec"]
        assert _matches(peers["podSelector"], _operator_pod_labels(persona))
        assert not _matches(peers["podSelector"], _operator_pod_labels(other))
        [rule] = peers["ingress"]
        [peer] = rule["from"]
        assert set(peer) == {"podSelector"}
        assert _matches(peer["podSelector"], _operator_pod_labels(persona))
        for outsider in (other, "not-found", "office-fetch"):
            assert not _matches(peer["podSelector"], _operator_pod_labels(outsider))
        # 8080: forwarded turns; the KV handoff port: a draining replica's KV cells.
        assert rule["ports"] == [{"protocol": "TCP", "port": builders.HTTP_PORT},
                                 {"protocol": "TCP", "port": builders.KV_HANDOFF_PORT}]

    gateway = template({"route": {"kind": "HTTPRoute", "peers": [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "envoy-gateway-system"}}}]},
        "networkPolicy": {"extraServicePeers": [{"podSelector": {"matchLabels": {
            "app": "prometheus"}}}]}})
    peers = one(gateway, "NetworkPolicy", "chatbot-services")["spec"]["ingress"][0]["from"]
    assert [list(p) for p in peers] == [["namespaceSelector"], ["podSelector"]]


# ----------------------------------------------------------------------------- helm test

class _Route(BaseHTTPRequestHandler):
    status = {"/office/healthz": 200, "/character/healthz": 200}
    hosts: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).hosts.append(self.headers.get("Host"))
        code = self.status.get(self.path, 404)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}' if code == 200 else b'{"detail": "no"}')

    def log_message(self, *args):
        pass


@pytest.fixture
def route_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Route)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Route.hosts = []
    yield server
    server.shutdown()
    server.server_close()
    _Route.status = {"/office/healthz": 200, "/character/healthz": 200}


def _hook_script(job: dict) -> tuple[list[str], dict]:
    [c] = job["spec"]["template"]["spec"]["containers"]
    return c["command"], {e["name"]: e["value"] for e in c["env"]}


def test_helm_test_hook_calls_both_healthz_through_the_route(route_server):
    """The hook's own script, run here with Python against a real HTTP server standing in
    for the route (no ingress controller runs here)."""
    objs = template({"route": {"testUrl": "http://ingress.example:8001",
                               "host": "chat.example"}})
    job = one(objs, "Job", "chatbot-test-route")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command, env = _hook_script(job)
    assert command[:2] == ["python", "-c"]
    assert env == {"ROUTE_URL": "http://ingress.example:8001", "ROUTE_HOST": "chat.example",
                   "TIMEOUT_S": "10"}
    port = route_server.server_address[1]
    env = {**os.environ, **env, "ROUTE_URL": f"http://127.0.0.1:{port}"}
    ok = subprocess.run([sys.executable, "-c", command[2]], env=env, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "/office/healthz: HTTP 200" in ok.stdout
    assert "/character/healthz: HTTP 200" in ok.stdout
    assert _Route.hosts == ["chat.example", "chat.example"]

    _Route.status = {"/office/healthz": 200, "/character/healthz": 503}
    bad = subprocess.run([sys.executable, "-c", command[2]], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1
    assert "route check failed for: character" in bad.stderr
    assert not find(template({"tests": {"enabled": False}}), "Job")


def test_notes_tell_how_to_reach_port_8001():
    proc = run("install", "chatbot", str(CHART), "--dry-run=client", "--namespace", "demo",
               check=True)
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "8001:8001" in notes and "curl -s http://127.0.0.1:8001/office/healthz" in notes
    assert "kubectl -n demo apply -f operator/examples/chatbotmodel.yaml" in notes
    assert "helm test chatbot -n demo" in notes
    gw = run("install", "chatbot", str(CHART), "--dry-run=client",
             "--set", "route.kind=HTTPRoute", check=True).stdout.split("NOTES:", 1)[1]
    assert "Gateway's port-8001 listener" in gw


# ----------------------------------------------------------------------------- schema

BAD_VALUES = [
    ({"operator": {"image": {"repository": ""}}}, "/operator/image/repository"),
    ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "/operator/image/pullPolicy"),
    ({"operator": {"image": {"digest": "sha256:abc"}}}, "/operator/image/digest"),
    ({"operator": {"watchNamespaces": ["Team_A"]}}, "/operator/watchNamespaces/0"),
    ({"operator": {"modelWaitTimeoutSeconds": -1}}, "/operator/modelWaitTimeoutSeconds"),
    ({"operator": {"runAsUser": 0}}, "/operator/runAsUser"),
    ({"operator": {"gpuProfiles": {"a100": {"gpus": -1}}}}, "/operator/gpuProfiles/a100/gpus"),
    ({"operator": {"gpuProfiles": {"a100": {"nodeSelektor": {}}}}}, "nodeSelektor"),
    ({"mongodb": {"server": "postgres"}}, "/mongodb/server"),
    ({"serviceImage": {"variant": "rocm"}}, "/serviceImage/variant"),
    ({"chatbotModel": {"create": "yes"}}, "/chatbotModel/create"),
    ({"chatbotModel": {"name": "My_Chatbot"}}, "/chatbotModel/name"),
    ({"mongodb": {"persistence": {"size": "lots"}}}, "/mongodb/persistence/size"),
    ({"mongodb": {"persistence": {"accessModes": ["ReadWriteSometimes"]}}},
     "/mongodb/persistence/accessModes/0"),
    ({"externalMongo": {"url": "postgres://db:5432"}}, "/externalMongo/url"),
    ({"route": {"testUrl": "ingress:8001"}}, "/route/testUrl"),
    ({"route": {"peers": []}}, "/route/peers"),
    ({"route": {"kind": "Gateway"}}, "/route/kind"),
    ({"tests": {"timeoutSeconds": 0}}, "/tests/timeoutSeconds"),
    ({"mongo": {"enabled": False}}, "mongo"),  # a typo of a top-level key
    # rules across several values: the chart's own checks
    ({"externalMongo": {"url": "mongodb://db:27017"}},
     "externalMongo.url/existingSecret and mongodb.enabled=true are exclusive"),
    ({"mongodb": {"enabled": False},
      "externalMongo": {"url": "mongodb://db:27017", "existingSecret": "s"}},
     "externalMongo.url and externalMongo.existingSecret are exclusive"),
    ({"openai": {"apiKey": "sk", "existingSecret": "s"}},
     "openai.apiKey and openai.existingSecret are exclusive"),
    ({"mongodb": {"auth": {"rootPassword": "p", "existingSecret": "s"}}},
     "mongodb.auth.rootPassword and mongodb.auth.existingSecret are exclusive"),
]


@pytest.mark.parametrize("values,message", BAD_VALUES,
                         ids=[m.strip("/").replace("/", ".")[:40] for _, m in BAD_VALUES])
def test_bad_values_fail_with_a_message_naming_the_field(values, message):
    commands = [["template", "chatbot", str(CHART)],
                ["install", "chatbot", str(CHART), "--dry-run=client"]]
    if message.startswith("/") or " " not in message:
        # the schema: lint fails too (a template's `fail` is only an INFO line for lint)
        commands.append(["lint", "--strict", str(CHART)])
    for args in commands:
        proc = run(*args, values=values)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, f"helm {args[0]} accepted {values}"
        assert message in out, out
