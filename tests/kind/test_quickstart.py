"""The kind quickstart (docs/deploying.md#kind-quickstart-cpu), run as a user runs it, on the
locally assembled node image.

kind create cluster (the quickstart's config: port 8001 on the host) -> the images built and
``kind load``ed -> the route controller -> ``helm install`` -> ``kubectl apply`` of the CPU
example -> ``kubectl get cbm`` Ready -> curl on 127.0.0.1:8001 to office and character ->
``helm test`` -> ``kind delete cluster``, with no container or volume of it left.

At the end it checks, on the same cluster, what a kind user gets before installing anything
and what ``kubectl get`` shows them after: the node Ready and every pod Ready (kube-system's
control plane, kube-proxy and CoreDNS, kind's storage provisioner, the chart's; a Job's pod
Succeeded), MongoDB's volume Bound from kind's default StorageClass; a Service name resolves
in a pod (``helm test`` reaches the route as ``traefik.traefik.svc``).

Done at once where the steps allow: ``kind create cluster`` while the images are copied into
kind's engine (only those it does not hold already), the ChatbotModel applied while the
chart's pods start (``helm install`` without ``--wait``, as the quickstart), both personas
asked together. A failure prints the node's systemd state, the pods and the latest events,
and exports kind's logs.

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
from concurrent.futures import ThreadPoolExecutor

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


def _image_id(docker, ref: str) -> str:
    proc = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _transfer(*refs: str) -> list[str]:
    """``docker save`` from the harness's engine, ``docker load`` into kind's, of the images
    kind's engine does not hold already under the same ID (it keeps them between runs).
    Returns the references copied."""
    from tests.support import docker_engine as harness

    todo = [r for r in refs if _image_id(harness.docker, r) != _image_id(engine.docker, r)]
    if todo:
        save = subprocess.Popen(["/usr/bin/docker", "save", *todo], stdout=subprocess.PIPE)
        load = subprocess.run(["/usr/bin/docker", "load"], stdin=save.stdout, env=engine.env(),
                              capture_output=True, text=True, timeout=900)
        save.stdout.close()
        assert save.wait(timeout=60) == 0 and load.returncode == 0, load.stderr
    return todo


def _prune() -> None:
    """Remove the images earlier runs' copies and builds left untagged in kind's engine (its
    data root persists between runs), so its disk stays bounded."""
    engine.docker("image", "prune", "-f", check=False, timeout=300)


def _traefik_image() -> str:
    import shutil
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as ctx:
        binary = binaries.binary("traefik")
        stat = binary.stat()
        stamp = f"{stat.st_size}-{stat.st_mtime_ns}"
        label = engine.docker("image", "inspect", "--format",
                              '{{index .Config.Labels "chatbot.binary"}}', TRAEFIK, check=False)
        if label.returncode == 0 and label.stdout.strip() == stamp:
            return TRAEFIK  # built from this binary already
        shutil.copy2(binary, Path(ctx) / "traefik")
        (Path(ctx) / "Dockerfile").write_text(
            f'FROM scratch\nLABEL chatbot.binary="{stamp}"\nCOPY traefik /traefik\n'
            'USER 65532:65532\nENTRYPOINT ["/traefik"]\n')
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


def _cluster_state(cluster: KindCluster) -> dict:
    """What ``kubectl get nodes,pods,pvc -A`` tells a user: each node's Ready condition, each
    pod as "Ready" (running, every container ready) or its phase, each claim's phase and
    StorageClass."""
    items = json.loads(cluster.kubectl("get", "nodes,pods,pvc", "-A", "-o", "json").stdout)
    state: dict = {"nodes": {}, "pods": {}, "pvcs": {}}
    for item in items["items"]:
        meta, status = item["metadata"], item["status"]
        where = f"{meta.get('namespace')}/{meta['name']}"
        if item["kind"] == "Node":
            state["nodes"][meta["name"]] = next(
                c["status"] for c in status["conditions"] if c["type"] == "Ready")
        elif item["kind"] == "Pod":
            ready = status.get("phase") == "Running" and all(
                c.get("ready") for c in status.get("containerStatuses") or [{}])
            state["pods"][where] = "Ready" if ready else status.get("phase")
        else:
            state["pvcs"][where] = (status.get("phase"), item["spec"].get("storageClassName"))
    return state


def _settled(state: dict) -> bool:
    """The node Ready, and every pod Ready or, a Job's, Succeeded."""
    return bool(state["nodes"]) and all(v == "True" for v in state["nodes"].values()) and all(
        v in ("Ready", "Succeeded") for v in state["pods"].values())


def test_kind_quickstart(kind_engine, docker_engine, service_image, operator_image, tmp_path):
    from chatbot.llm.bundled import bundled_model_path
    from tests.operator.model_server import ModelServer
    from tests.support import docker_engine as harness_engine

    times: dict[str, float] = {}
    t = time.monotonic()
    image, steps = nodeimage.build_node_image()
    times["node image" + (" (built)" if steps else " (cached)")] = time.monotonic() - t
    times.update({f"node image: {step}": s for step, s in steps.items()})
    ferretdb = binaries.COMPONENTS["ferretdb"]
    mongo = harness_engine.build_ferretdb_image(binaries.binary("ferretdb"), ferretdb.version)
    harness_engine.docker("tag", operator_image[0], OPERATOR)
    harness_engine.docker("tag", service_image[0], SERVICE)

    cluster = KindCluster("chatbot", image, tmp_path)
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    try:
        with ThreadPoolExecutor(1) as pool:
            creating = pool.submit(cluster.create)  # while the images are copied
            t = time.monotonic()
            copied = _transfer(OPERATOR, SERVICE, mongo)
            _traefik_image()
            _prune()
            times[f"images into kind's engine ({len(copied)} of 3 copied)"] = (
                time.monotonic() - t)
            creating.result()
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
            # As the quickstart: no --wait, the ChatbotModel applied while the chart starts.
            helm_cli.run("install", "chatbot", str(ROOT / "charts/chatbot"), "-n", NS,
                         "--create-namespace", values=values, env=env, check=True,
                         timeout=300)
            cluster.kubectl("-n", NS, "apply", "-f", "-", input=_example(smol.name))
            wait_for(lambda: cluster.kubectl(
                "-n", NS, "get", "cbm", "chatbot-cpu", "-o", "jsonpath={.status.phase}",
                check=False).stdout.strip() == "Ready", timeout=900, interval=1,
                desc="ChatbotModel Ready")
            times["install to ChatbotModel Ready"] = time.monotonic() - started

            def ask(persona: str, body: dict) -> tuple[tuple, float]:
                tries: list[str] = []

                def post():
                    t = time.monotonic()
                    r = release.post(f"{ROUTE}/{persona}/Llama", body)
                    tries.append(f"{r[0]} in {time.monotonic() - t:.1f} s")
                    return r[0] == 200 and r

                answer = wait_for(post, timeout=240, interval=1,
                                  desc=f"{persona} answers on 8001")
                print(f"[kind] {persona}: {len(tries)} requests ({', '.join(tries[-4:])})")
                return answer, time.monotonic() - started

            with ThreadPoolExecutor(2) as asking:
                office = asking.submit(ask, "office",
                                       {"input_data": "안녕하세요", "google_access": False})
                character = asking.submit(ask, "character", {
                    "input_data": "Hello!", "character_name": "Mina",
                    "greeting": "Hi, I'm Mina.", "context": "A friendly cat."})
                answers = {"office": office.result(), "character": character.result()}
            times["install to first answer (office)"] = answers["office"][1]
            for persona, ((status, _, body), _) in answers.items():
                assert status == 200 and isinstance(json.loads(body), str), (persona, body)
            status, _, page = release.get(f"{ROUTE}/nope")
            assert status == 404, page
            t = time.monotonic()
            helm_cli.run("test", "chatbot", "-n", NS, env=env, check=True, timeout=300)
            times["helm test"] = time.monotonic() - t
        # What kind gives before anything is installed (the node, the control plane,
        # kube-proxy, CoreDNS, the storage provisioner), and the chart's MongoDB volume.
        state = wait_for(lambda: _settled(s := _cluster_state(cluster)) and s,
                         timeout=60, interval=1, desc="the node Ready and every pod Ready")
        for prefix in ("kube-system/kube-apiserver-", "kube-system/etcd-",
                       "kube-system/kube-proxy-", "kube-system/coredns-",
                       "local-path-storage/local-path-provisioner-"):
            assert any(p.startswith(prefix) for p in state["pods"]), (prefix, state["pods"])
        assert any(c.startswith(f"{NS}/data-") for c in state["pvcs"]), state["pvcs"]
        assert all(v == ("Bound", "standard") for v in state["pvcs"].values()), state["pvcs"]
    except Exception:
        print(cluster.describe())
        print(f"kind export logs: {cluster.logs(tmp_path / 'kind-logs')}")
        raise
    finally:
        t = time.monotonic()
        cluster.delete()
        times["kind delete cluster"] = time.monotonic() - t
        print("\n" + "\n".join(f"[kind] {k}: {v:.0f} s" for k, v in times.items()))
    left = engine.docker("ps", "-aq", "--filter", f"label={engine.KIND_LABEL}").stdout.split()
    assert not left, f"containers left: {left}"
    volumes = engine.docker("volume", "ls", "-q", "--filter", "dangling=true").stdout.split()
    assert not volumes, f"volumes left: {volumes}"
