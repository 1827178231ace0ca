"""The kind quickstart (docs/deploying.md#kind-quickstart-cpu), run as a user runs it, on the
locally assembled node image.

kind create cluster (the quickstart's config: port 8001 on the host) -> the images built and
``kind load``ed -> the route controller -> ``helm install`` -> ``kubectl apply`` of the CPU
example -> ``kubectl get cbm`` Ready -> curl on 127.0.0.1:8001 to office and character ->
``helm test`` -> ``kind delete cluster``, with no container or volume of it left.

Where this machine cannot run a step as written (no registry), the closest local equivalent:
the images are built by the harness (same Dockerfiles, on a Debian base made by mmdebstrap)
and copied into kind's engine; the route controller is Traefik (its ingress-nginx provider,
built from its module) instead of ingress-nginx; MongoDB is FerretDB (``mongodb.server:
ferretdb``); the example's model comes from a local mirror instead of huggingface.co, and its
CPU limits are cut to fit two personas on a two-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import yaml

from tests.kind import engine, nodeimage
from tests.kind.cluster import KindCluster
from tests.kube import binaries
from tests.kube import helm as helm_cli
from tests.kube.helpers import wait_for
from tests.kube.operator_fixtures import ROOT
from tests.node import release

OPERATOR = "ghcr.io/treenut/chatbot-operator:2.0.0"
SERVICE = "ghcr.io/treenut/chatbot-service:2.0.0-cpu"
TRAEFIK = f"chatbot-local/traefik:{binaries.versions()['TRAEFIK_VERSION']}"
NS = "chatbot"
ROUTE = "http://127.0.0.1:8001"

TRAEFIK_MANIFEST = """apiVersion: v1
kind: Namespace
metadata: {name: traefik}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: traefik, namespace: traefik}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: traefik}
rules:
- apiGroups: ["", "networking.k8s.io", "discovery.k8s.io", "extensions"]
  resources: [services, endpoints, endpointslices, secrets, configmaps, nodes, namespaces,
              ingresses, ingressclasses, pods]
  verbs: [get, list, watch]
- apiGroups: ["networking.k8s.io", "extensions"]
  resources: [ingresses/status]
  verbs: [update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: traefik}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: traefik}
subjects: [{kind: ServiceAccount, name: traefik, namespace: traefik}]
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nginx}
spec: {controller: k8s.io/ingress-nginx}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: traefik, namespace: traefik}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: traefik}}
  template:
    metadata: {labels: {app.kubernetes.io/name: traefik}}
    spec:
      serviceAccountName: traefik
      containers:
      - name: traefik
        image: TRAEFIK_IMAGE
        imagePullPolicy: Never
        args: ["--entryPoints.web.address=:8001", "--providers.kubernetesIngressNGINX=true",
               "--ping", "--ping.entryPoint=web", "--log.level=INFO"]
        ports: [{name: web, containerPort: 8001, hostPort: 8001}]
        readinessProbe: {httpGet: {path: /ping, port: 8001}}
---
apiVersion: v1
kind: Service
metadata: {name: traefik, namespace: traefik}
spec:
  selector: {app.kubernetes.io/name: traefik}
  ports: [{name: web, port: 8001, targetPort: 8001}]
"""


def _transfer(*refs: str) -> None:
    """``docker save`` from the harness's engine, ``docker load`` into kind's."""
    save = subprocess.Popen(["/usr/bin/docker", "save", *refs], stdout=subprocess.PIPE)
    load = subprocess.run(["/usr/bin/docker", "load"], stdin=save.stdout, env=engine.env(),
                          capture_output=True, text=True, timeout=900)
    save.stdout.close()
    assert save.wait(timeout=60) == 0 and load.returncode == 0, load.stderr


def _traefik_image() -> str:
    import shutil
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy2(binaries.binary("traefik"), Path(ctx) / "traefik")
        (Path(ctx) / "Dockerfile").write_text(
            'FROM scratch\nCOPY traefik /traefik\nUSER 65532:65532\nENTRYPOINT ["/traefik"]\n')
        engine.docker("build", "-q", "-t", TRAEFIK, ctx, timeout=600)
    return TRAEFIK


def _kind_gateway() -> str:
    nets = json.loads(engine.docker("network", "inspect", "kind").stdout)[0]
    return next(c["Gateway"] for c in nets["IPAM"]["Config"] if ":" not in c["Gateway"])


def _example(file_name: str) -> str:
    """The CPU example, its model from Hugging Face's API (the operator's ``hfEndpoint``,
    here the local mirror) rather than an https URL, which must not be plain http."""
    doc = yaml.safe_load((ROOT / "operator/examples/chatbotmodel-cpu.yaml").read_text())
    doc["spec"]["source"]["uri"] = "hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
    for persona in ("office", "character"):
        doc["spec"][persona]["file"] = file_name
        doc["spec"][persona]["resources"] = release.RESOURCES
    return json.dumps(doc)


def test_kind_quickstart(kind_engine, docker_engine, service_image, operator_image, tmp_path):
    from chatbot.llm.bundled import bundled_model_path
    from tests.operator.model_server import ModelServer
    from tests.support import docker_engine as harness_engine

    times: dict[str, float] = {}
    t = time.monotonic()
    image, _ = nodeimage.build_node_image()
    times["node image"] = time.monotonic() - t
    ferretdb = binaries.COMPONENTS["ferretdb"]
    mongo = harness_engine.build_ferretdb_image(binaries.binary("ferretdb"), ferretdb.version)
    harness_engine.docker("tag", operator_image[0], OPERATOR)
    harness_engine.docker("tag", service_image[0], SERVICE)
    t = time.monotonic()
    _transfer(OPERATOR, SERVICE, mongo)
    _traefik_image()
    times["images into kind's engine"] = time.monotonic() - t

    cluster = KindCluster("chatbot", image, tmp_path)
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    try:
        cluster.create()
        times["kind create cluster"] = cluster.created_s
        t = time.monotonic()
        cluster.kind("load", "docker-image", "--name", "chatbot", OPERATOR, SERVICE, mongo,
                     TRAEFIK)
        times["kind load docker-image"] = time.monotonic() - t
        cluster.kubectl("apply", "-f", "-",
                        input=TRAEFIK_MANIFEST.replace("TRAEFIK_IMAGE", TRAEFIK))
        smol = bundled_model_path()
        with ModelServer({smol.name: smol.read_bytes()}, host=_kind_gateway()) as mirror:
            started = time.monotonic()
            mongo_repo, mongo_tag = mongo.rsplit(":", 1)
            values = {
                "serviceImage": {"variant": "cpu"},
                "operator": {"retryDelaySeconds": 5, "hfEndpoint": mirror.url},
                "mongodb": {"server": "ferretdb",
                            "image": {"repository": mongo_repo, "tag": mongo_tag},
                            "persistence": {"size": "1Gi", "deleteOnUninstall": True}},
                "route": {"testUrl": "http://traefik.traefik.svc:8001", "peers": [{
                    "namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": "traefik"}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "traefik"}}}]},
            }
            helm_cli.run("install", "chatbot", str(ROOT / "charts/chatbot"), "-n", NS,
                         "--create-namespace", "--wait", "--timeout", "5m", values=values,
                         env=env, check=True, timeout=400)
            cluster.kubectl("-n", NS, "apply", "-f", "-", input=_example(smol.name))
            wait_for(lambda: "Ready" in cluster.kubectl(
                "-n", NS, "get", "cbm", "chatbot-cpu", "-o", "jsonpath={.status.phase}",
                check=False).stdout, timeout=900, interval=2, desc="ChatbotModel Ready")
            answers = {}
            for persona, body in (
                    ("office", {"input_data": "안녕하세요", "google_access": False}),
                    ("character", {"input_data": "Hello!", "character_name": "Mina",
                                   "greeting": "Hi, I'm Mina.", "context": "A friendly cat."})):
                answers[persona] = wait_for(lambda p=persona, b=body: (
                    r := release.post(f"{ROUTE}/{p}/Llama", b))[0] == 200 and r,
                    timeout=240, interval=2, desc=f"{persona} answers on 8001")
                if persona == "office":
                    times["install to first answer"] = time.monotonic() - started
            for persona, (status, _, body) in answers.items():
                assert status == 200 and isinstance(json.loads(body), str), (persona, body)
            status, _, page = release.get(f"{ROUTE}/nope")
            assert status == 404, page
            helm_cli.run("test", "chatbot", "-n", NS, env=env, check=True, timeout=300)
    except Exception:
        cluster.logs(tmp_path / "kind-logs")
        raise
    finally:
        cluster.delete()
        print("\n" + "\n".join(f"[kind] {k}: {v:.0f} s" for k, v in times.items()))
    left = engine.docker("ps", "-aq", "--filter", f"label={engine.KIND_LABEL}").stdout.split()
    assert not left, f"containers left: {left}"
    volumes = engine.docker("volume", "ls", "-q", "--filter", "dangling=true").stdout.split()
    assert not volumes, f"volumes left: {volumes}"
