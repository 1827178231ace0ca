"""The chart and a CPU ChatbotModel on the real node, and the small clients the node tests
drive them with: kubectl, helm, HTTP through the route on port 8001, the MongoDB pod.

The journey installs step by step (each step is a test); the fault tests take a ready
release from ``installed`` and remove it afterwards.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.request
from email.message import Message

from tests.kube import binaries, realnode
from tests.kube import helm as helm_cli
from tests.kube.helpers import wait_for
from tests.kube.operator_fixtures import GROUP, PLURAL, ROOT, VERSION

NS = "chatbot"
RELEASE = "chatbot"
CBM = "chatbot-cpu"
HF_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
CHART = ROOT / "charts/chatbot"
# Room for the replayed first turn beside office's 1 024-token answer budget: on 2 048 a
# long (sampled) first answer is dropped from the second turn's prompt, as it should be.
CONTEXT = 8192
# Two cores: requests small enough for both personas, a second office replica and the
# chart's pods to fit on the node; limits at one core (llama.cpp's threads follow it).
RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"},
             "limits": {"cpu": "1", "memory": "1Gi"}}


def run(*args: str, env=None, timeout: float = 300, check: bool = True) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args[:4])} ... failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def kubectl(nc, *args: str, **kw) -> str:
    return run(str(binaries.binary("kubectl")), *args, env=nc.env(), **kw)


def helm(nc, *args: str, values: dict | None = None, timeout: float = 300) -> str:
    return helm_cli.run(*args, values=values, env=nc.env(), check=True,
                        timeout=timeout).stdout


def get_json(nc, *args: str) -> dict:
    return json.loads(kubectl(nc, "get", "-o", "json", *args))


def post(url: str, body: bytes | dict, timeout: float = 120,
         headers: dict | None = None) -> tuple[int, Message, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def get(url: str, timeout: float = 30) -> tuple[int, Message, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def cbm(nc) -> dict:
    return get_json(nc, "-n", NS, f"{PLURAL}.{GROUP}", CBM)


def pods(nc, persona: str, instance: str = CBM) -> list[dict]:
    """The pods of one persona of one ChatbotModel (the release's, unless named)."""
    return get_json(nc, "-n", NS, "pods", "-l", f"app.kubernetes.io/component={persona},"
                    f"app.kubernetes.io/instance={instance}")["items"]


def ready_pods(nc, persona: str, instance: str = CBM) -> list[dict]:
    return [p for p in pods(nc, persona, instance) if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions", []))]


def diagnose(nc, persona: str) -> str:
    """What a failed assertion shows: the persona's /readyz and its pod's log tail."""
    _, _, ready = get(nc.route(f"/{persona}/readyz"))
    logs = kubectl(nc, "logs", "-n", NS, "--tail=40", "-l",
                   f"app.kubernetes.io/component={persona}", check=False)
    return f"/{persona}/readyz: {ready.decode(errors='replace')}\n--- log ---\n{logs}"


def restart_counts(nc, *personas: str) -> dict[str, int]:
    """Container restarts of the personas' Ready pods, by pod name."""
    return {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"]
            for persona in personas for p in ready_pods(nc, persona)}


def running_pod(nc, selector: str) -> dict:
    """The one Running pod, not being deleted, that the label ``selector`` picks."""
    found = [p for p in get_json(nc, "-n", NS, "pods", "-l", selector)["items"]
             if p["status"].get("phase") == "Running" and p["status"].get("podIP")
             and not p["metadata"].get("deletionTimestamp")]
    assert len(found) == 1, f"{selector}: {[p['metadata']['name'] for p in found]}"
    return found[0]


MONGODB = "app.kubernetes.io/component=mongodb"  # the chart's StatefulSet pod


def mongo_client(nc):
    """A client of the MongoDB pod (FerretDB), with the release's credentials."""
    import pymongo

    pod = running_pod(nc, MONGODB)
    secret = get_json(nc, "-n", NS, "secret", f"{RELEASE}-mongodb")
    user = base64.b64decode(secret["data"]["username"]).decode()
    password = base64.b64decode(secret["data"]["password"]).decode()
    return pymongo.MongoClient(pod["status"]["podIP"], 27017, username=user,
                               password=password, authSource="admin",
                               serverSelectionTimeoutMS=10_000)


def stored_turns(nc, persona: str, user: str, db_id: str) -> list[dict]:
    """The turns of one conversation as the MongoDB pod has them."""
    client = mongo_client(nc)
    try:
        doc = client.chatbot[f"{persona}_log_{user}"].find_one({"id": db_id}, {"_id": 0})
        return (doc or {}).get("value", [])
    finally:
        client.close()


def helm_values(nc, mirror) -> dict:
    repo, tag = nc.images["operator"].rsplit(":", 1)
    mongo_repo, mongo_tag = nc.images["mongodb"].rsplit(":", 1)
    return {
        "operator": {"image": {"repository": repo, "tag": tag},
                     "hfEndpoint": mirror.url, "retryDelaySeconds": 5},
        "mongodb": {"server": "ferretdb", "image": {"repository": mongo_repo, "tag": mongo_tag},
                    "persistence": {"size": "1Gi", "deleteOnUninstall": True}},
        # Traefik runs on the host: it reaches the pods from the bridge's address.
        "route": {"testUrl": f"http://{nc.node.ip}:8001",
                  "peers": [{"ipBlock": {"cidr": f"{realnode.BRIDGE_IP}/32"}}]},
    }


def chatbot_model(nc, mirror, route: dict | None = None, **persona_extra) -> dict:
    def persona() -> dict:
        return {"file": mirror.smollm2, "gpuProfile": "cpu", "contextSize": CONTEXT,
                "batchSize": 256, "resources": RESOURCES, **persona_extra}

    spec = {
        "source": {"uri": f"hf://{HF_REPO}"},
        "image": nc.images["service"],
        "office": persona(),
        "character": persona(),
        "storage": {"size": "1Gi"},
        "secrets": {"mongodb": {"name": f"{RELEASE}-mongodb", "key": "url"}},
    }
    if route:
        spec["route"] = route
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ChatbotModel",
            "metadata": {"name": CBM, "namespace": NS}, "spec": spec}


def apply(nc, manifest: dict, name: str = "manifest") -> None:
    path = nc.cluster.dir / f"{name}.json"
    path.write_text(json.dumps(manifest))
    kubectl(nc, "apply", "-f", str(path))


def phase(nc) -> str | None:
    return (cbm(nc).get("status") or {}).get("phase")


def install(nc, mirror, *, ready_timeout: float = 600, model: dict | None = None,
            before_model: list[dict] = ()) -> None:
    """helm install, the CPU ChatbotModel (or ``model``) applied after ``before_model`` (a
    Secret it names), both personas answering on the route."""
    helm(nc, "install", RELEASE, str(CHART), "-n", NS, "--create-namespace",
         "--wait", "--timeout", "5m", values=helm_values(nc, mirror), timeout=400)
    for index, manifest in enumerate(before_model):
        apply(nc, manifest, f"before-model-{index}")
    apply(nc, model or chatbot_model(nc, mirror), "chatbotmodel")
    wait_for(lambda: phase(nc) == "Ready", timeout=ready_timeout, interval=1,
             desc="ChatbotModel Ready")
    for persona in ("office", "character"):
        wait_for(lambda p=persona: get(nc.route(f"/{p}/readyz"))[0] == 200, timeout=120,
                 interval=1, desc=f"/{persona}/readyz 200 through the route")


def uninstall(nc) -> None:
    """The ChatbotModel deleted, the release uninstalled, the namespace's pods gone."""
    kubectl(nc, "delete", "cbm", "--all", "-n", NS, "--wait", "--timeout=180s", timeout=200,
            check=False)
    helm_cli.run("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "3m", env=nc.env(),
                 check=False, timeout=240)
    wait_for(lambda: not get_json(nc, "-n", NS, "pods")["items"], timeout=180, interval=2,
             desc=f"no pod left in {NS}")


def office_question(db_id: str, text: str, user_id: str = "journey-user") -> dict:
    return {"input_data": text, "google_access": False, "db_id": db_id, "user_id": user_id}


def elapsed_since(started: float) -> float:
    return time.monotonic() - started
