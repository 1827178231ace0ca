"""A user's first hour, on real pods: ``helm install``, ``kubectl apply`` of the CPU
ChatbotModel, ``curl`` through the route on port 8001, then change, scale and clean up.

Everything here is real: the chart installed by helm, the operator running from its image
on the node, the fetch Job's pod downloading SmolLM2 from a local Hugging Face mirror
(``operator.hfEndpoint``) into a volume provisioned by local-path-provisioner, the
services' pods answering with llama.cpp, FerretDB (the chart's MongoDB-wire server, from
an image built here) keeping the history, and Traefik serving the operator's Ingress and
then its HTTPRoute on port 8001. The tests run in file order, each on the state the one
before left; the timings are printed at the end.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.kube import realnode
from tests.kube.helpers import wait_for
from tests.node.release import (
    CBM,
    CHART,
    NS,
    RELEASE,
    apply,
    cbm,
    chatbot_model,
    diagnose,
    get,
    get_json,
    helm,
    helm_values,
    kubectl,
    mongo_client,
    office_question,
    post,
    ready_pods,
    stored_turns,
)
from tests.support.browser import ask, try_it_out

pytestmark = pytest.mark.node

ROUTE_WAIT = 120


class Journey:
    """What one test leaves for the next."""

    timings: dict[str, float] = {}
    state: dict = {}


def turns_for_diagnosis(nc, db_id: str) -> list:
    """The office turns of ``db_id`` as the MongoDB pod has them (for failure messages)."""
    try:
        return stored_turns(nc, "office", "journey-user", db_id)
    except Exception as exc:  # noqa: BLE001 - only a diagnostic
        return [f"unreadable: {exc!r}"]


# ----------------------------------------------------------------------------- 1. install

def test_helm_install_brings_up_operator_and_mongodb(node_cluster, mirror):
    nc = node_cluster
    values = helm_values(nc, mirror)
    started = time.monotonic()
    helm(nc, "install", RELEASE, str(CHART), "-n", NS, "--create-namespace",
         "--wait", "--timeout", "5m", values=values, timeout=400)
    Journey.timings["helm install --wait"] = time.monotonic() - started
    Journey.state["install_started"] = started

    deploys = get_json(nc, "-n", NS, "deployments")["items"]
    [operator] = [d for d in deploys if d["metadata"]["name"].endswith("operator")]
    assert operator["status"].get("readyReplicas") == 1
    pods = get_json(nc, "-n", NS, "pods")["items"]
    running = {p["metadata"]["name"]: p for p in pods if p["status"]["phase"] == "Running"}
    mongo = [p for n, p in running.items() if "mongodb" in n]
    assert mongo, f"no MongoDB pod running: {list(running)}"
    # The StatefulSet's claim was provisioned for real, on this node.
    pvcs = get_json(nc, "-n", NS, "pvc")["items"]
    assert pvcs and all(p["status"]["phase"] == "Bound" for p in pvcs)
    pv = get_json(nc, "pv", pvcs[0]["spec"]["volumeName"])
    assert pv["spec"]["storageClassName"] == "local-path"
    assert str(nc.node.dir / "local-path") in json.dumps(pv["spec"])


# ----------------------------------------------------------------------------- 2. apply

def test_kubectl_apply_downloads_the_model_and_becomes_ready(node_cluster, mirror):
    nc = node_cluster
    applied = time.monotonic()
    apply(nc, chatbot_model(nc, mirror), "chatbotmodel")

    progress: list = []

    def ready():
        obj = cbm(nc)
        download = (obj.get("status") or {}).get("download") or {}
        if download and (not progress or progress[-1] != download):
            progress.append(download)
        return (obj.get("status") or {}).get("phase") == "Ready"

    wait_for(ready, timeout=600, interval=1, desc="ChatbotModel Ready")
    Journey.timings["kubectl apply -> Ready"] = time.monotonic() - applied

    # The fetch Job's pod really downloaded: the mirror saw the requests, the status the bytes.
    assert any(mirror.smollm2 in path for path, _ in mirror.requests)
    assert progress, "status.download never reported"
    done = [d for d in progress if any((v or {}).get("percent") == 100 for v in d.values())]
    assert done, progress
    jobs = get_json(nc, "-n", NS, "jobs")["items"]
    assert jobs and all(j["status"].get("succeeded") == 1 for j in jobs)

    # The service pods run the built image under the operator's securityContext, on the node.
    for persona in ("office", "character"):
        [pod] = ready_pods(nc, persona)
        assert pod["spec"]["nodeName"] == nc.node.name
        [c] = [c for c in pod["spec"]["containers"] if c["name"] == persona] or \
            pod["spec"]["containers"][:1]
        assert c["image"] == nc.images["service"]
        sc = pod["spec"].get("securityContext", {})
        assert sc.get("runAsNonRoot") is True
        assert c["securityContext"].get("allowPrivilegeEscalation") is False
        assert c["securityContext"].get("readOnlyRootFilesystem") is True
        [status] = pod["status"]["containerStatuses"][:1]
        assert status["ready"] and status["restartCount"] == 0

    table = kubectl(nc, "get", "cbm", "-n", NS)
    print(table)
    assert CBM in table and "Ready" in table


# ----------------------------------------------------------------------------- 3. answers

def _ask_both(nc, label: str) -> None:
    db_id = str(uuid.uuid4())
    first_asked = time.monotonic()
    status, headers, body = wait_for(
        lambda: (r := post(nc.route("/office/Llama"),
                           office_question(db_id, "What is a good way to write meeting notes?")))
        and r[0] == 200 and r,
        timeout=ROUTE_WAIT, interval=1, desc=f"office 200 through the route ({label})")
    if "install_started" in Journey.state and label == "Ingress":
        Journey.timings["install -> first answer"] = (time.monotonic()
                                                     - Journey.state["install_started"])
    answer = json.loads(body)
    assert isinstance(answer, str) and answer.strip(), body
    first_prompt = int(headers["X-Prompt-Tokens"])

    status, headers, body = post(nc.route("/office/Llama"),
                                 office_question(db_id, "Give one more tip."))
    assert status == 200, body
    # The second turn replays the first: its prompt holds the first question and answer.
    replayed = (headers["X-History-Turns"], int(headers["X-Prompt-Tokens"]))
    assert replayed[0] == "1" and replayed[1] > first_prompt + 5, (
        f"history turns, prompt tokens: {replayed} after {first_prompt}; "
        f"stored: {turns_for_diagnosis(nc, db_id)}\n{diagnose(nc, 'office')}")
    assert int(headers.get("X-History-Turns-Dropped", "0")) == 0

    status, _, body = post(nc.route("/character/Llama"), {
        "input_data": "*I wave at Rachel.*", "character_name": "Rachel",
        "greeting": "*Rachel looks up from her telescope.*",
        "context": "Rachel is a shy student who loves astronomy.",
        "db_id": db_id, "user_id": "journey-user"})
    assert status == 200 and json.loads(body).strip(), body

    status, _, body = get(nc.route("/nope"))
    assert status == 404 and b"<html" in body.lower(), body[:300]
    status, _, body = post(nc.route("/office/Llama"), b"{" + b" " * 100_000 + b"}")
    assert status == 413, (status, body[:300])
    Journey.state.setdefault("db_ids", []).append(db_id)
    Journey.timings[f"first question answered ({label})"] = time.monotonic() - first_asked


def test_both_personas_answer_through_the_ingress_on_8001(node_cluster):
    _ask_both(node_cluster, "Ingress")


def test_history_is_in_the_mongodb_pod(node_cluster):
    client = mongo_client(node_cluster)
    try:
        db_id = Journey.state["db_ids"][0]
        found = []
        for name in client.list_database_names():
            for coll in client[name].list_collection_names():
                found += [(coll, d) for d in client[name][coll].find({"id": db_id}, {"_id": 0})]
        by_collection = {coll: doc for coll, doc in found}
        office = by_collection["office_log_journey-user"]
        assert [t["input_data"] for t in office["value"]] == [
            "What is a good way to write meeting notes?", "Give one more tip."]
        assert all(t["output_data"].strip() for t in office["value"])
        assert "character_log_journey-user" in by_collection
    finally:
        client.close()


def test_the_docs_and_playgrounds_work_in_a_browser_through_8001(node_cluster, visit,
                                                                 artifacts):
    """Swagger UI ("Try it out" through the prefix), ReDoc and both playgrounds in headless
    Chromium with the network closed (tests/support/browser.py); the playground's turns
    land in the MongoDB pod."""
    for persona in ("office", "character"):
        v = visit(realnode.ROUTE_PORT)
        page = v.page
        page.goto(f"{v.url}/{persona}/docs")
        operation, answered = try_it_out(v, persona, "/readyz")
        assert answered.json()["persona"] == persona
        operation.locator(".live-responses-table").scroll_into_view_if_needed()
        page.screenshot(path=artifacts / f"node-{persona}-docs.png")

        page.goto(f"{v.url}/{persona}/redoc")
        page.locator('[data-section-id*="/operation/"]').first.wait_for()
        page.screenshot(path=artifacts / f"node-{persona}-redoc.png")

        page.goto(f"{v.url}/{persona}/")
        db_id = page.text_content("#db-id")
        question = "회의록을 잘 쓰는 방법을 알려주세요."
        answer, stats = ask(page, question)
        assert answer.strip() and "TTFT" in stats and "tokens/s" in stats, stats
        page.screenshot(path=artifacts / f"node-{persona}-playground.png", full_page=True)
        turns = stored_turns(node_cluster, persona, "playground", db_id)
        assert [(t["input_data"], t["output_data"]) for t in turns] == [(question, answer)]


# ----------------------------------------------------------------------------- 4. HTTPRoute

def test_the_httproute_variant_answers_the_same(node_cluster, mirror):
    nc = node_cluster
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "chatbot-gateway", "namespace": NS},
        "spec": {"gatewayClassName": "traefik", "listeners": [
            {"name": "http-8001", "port": 8001, "protocol": "HTTP",
             "allowedRoutes": {"namespaces": {"from": "Same"}}}]},
    }
    gateway_class = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "traefik"},
        "spec": {"controllerName": "traefik.io/gateway-controller"},
    }
    path = nc.cluster.dir / "gateway.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                "items": [gateway_class, gateway]}))
    kubectl(nc, "apply", "-f", str(path))
    before = {p: ready_pods(nc, p)[0]["metadata"]["name"] for p in ("office", "character")}
    apply(nc, chatbot_model(nc, mirror, route={
        "kind": "HTTPRoute", "gateway": {"name": "chatbot-gateway", "sectionName": "http-8001"}}),
        "chatbotmodel")
    wait_for(lambda: not get_json(nc, "-n", NS, "ingress")["items"], timeout=60,
             desc="the Ingress replaced")
    wait_for(lambda: get_json(nc, "-n", NS, "httproute")["items"], timeout=60,
             desc="the HTTPRoute")
    _ask_both(nc, "HTTPRoute")
    after = {p: ready_pods(nc, p)[0]["metadata"]["name"] for p in ("office", "character")}
    assert after == before, "a route change must not restart the services"


# ----------------------------------------------------------------------------- 5. changes

def _replicasets(nc, persona: str) -> list[dict]:
    return get_json(nc, "-n", NS, "rs", "-l", f"app.kubernetes.io/component={persona}")["items"]


def test_replicas_scale_without_a_new_replicaset(node_cluster):
    nc = node_cluster
    rs_before = {r["metadata"]["name"] for r in _replicasets(nc, "office")}
    kubectl(nc, "patch", "cbm", CBM, "-n", NS, "--type=merge",
            "-p", json.dumps({"spec": {"office": {"replicas": 2}}}))
    wait_for(lambda: len(ready_pods(nc, "office")) == 2, timeout=300, interval=1,
             desc="two office pods Ready")
    assert {r["metadata"]["name"] for r in _replicasets(nc, "office")} == rs_before
    kubectl(nc, "patch", "cbm", CBM, "-n", NS, "--type=merge",
            "-p", json.dumps({"spec": {"office": {"replicas": 1}}}))
    wait_for(lambda: len(ready_pods(nc, "office")) == 1
             and len(get_json(nc, "-n", NS, "pods", "-l",
                              "app.kubernetes.io/component=office")["items"]) == 1,
             timeout=120, interval=1, desc="back to one office pod")


def test_a_file_change_rolls_the_office_pods_only(node_cluster, mirror):
    nc = node_cluster
    smol = mirror.files[mirror.smollm2]
    new_file = "SmolLM2-135M-Instruct.renamed.gguf"  # a new file name: a new download
    mirror.files[new_file] = smol
    office_before = ready_pods(nc, "office")[0]["metadata"]["name"]
    character_before = ready_pods(nc, "character")[0]["metadata"]["name"]
    character_rs = {r["metadata"]["name"] for r in _replicasets(nc, "character")}
    changed = time.monotonic()
    kubectl(nc, "patch", "cbm", CBM, "-n", NS, "--type=merge",
            "-p", json.dumps({"spec": {"office": {"file": new_file}}}))

    def office_on_new_model():
        pods = ready_pods(nc, "office")
        if [p["metadata"]["name"] for p in pods] in ([], [office_before]):
            return False
        status, _, body = get(nc.route("/office/readyz"))
        return status == 200 and new_file.encode() in body

    wait_for(office_on_new_model, timeout=600, interval=1, desc="office on the new file")
    status, _, body = post(nc.route("/office/Llama"),
                           office_question(str(uuid.uuid4()), "Say hello."))
    assert status == 200, body
    Journey.timings["model change -> first answer on it"] = time.monotonic() - changed
    assert any(new_file in path for path, _ in mirror.requests)
    assert [p["metadata"]["name"] for p in ready_pods(nc, "character")] == [character_before]
    assert {r["metadata"]["name"] for r in _replicasets(nc, "character")} == character_rs


# ----------------------------------------------------------------------------- 6. clean-up

def test_helm_test_runs_its_pod_and_passes(node_cluster):
    nc = node_cluster
    access_log = nc.cluster.logs / "traefik.log"
    seen = len(access_log.read_text(errors="replace").splitlines())
    out = helm(nc, "test", RELEASE, "-n", NS, "--timeout", "3m", timeout=240)
    print(out)
    assert "Phase:          Succeeded" in out
    # The hook's pod (its Job is deleted once it succeeded) really called the route: from a
    # pod address, as Traefik's access log shows.
    calls = [line for line in access_log.read_text(errors="replace").splitlines()[seen:]
             if line.startswith("10.88.") and "/healthz HTTP" in line]
    assert any('"GET /office/healthz' in c and '" 200 ' in c for c in calls), calls
    assert any('"GET /character/healthz' in c and '" 200 ' in c for c in calls), calls


def test_delete_and_uninstall_leave_nothing(node_cluster):
    nc = node_cluster
    kubectl(nc, "delete", "cbm", CBM, "-n", NS, "--wait", "--timeout=180s", timeout=200)
    helm(nc, "uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "3m", timeout=240)

    def leftovers():
        kinds = "all,pvc,configmaps,secrets,serviceaccounts,roles,rolebindings,ingress," \
                "httproute,networkpolicies,jobs"
        items = get_json(nc, "-n", NS, kinds)["items"]
        left = [f"{i['kind']}/{i['metadata']['name']}" for i in items
                if (i["kind"], i["metadata"]["name"]) not in {
                    ("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt")}
                and i["kind"] != "Gateway"]
        return left

    wait_for(lambda: not leftovers(), timeout=180, interval=2,
             desc=f"namespace {NS} empty (left: {leftovers()})")
    pvs = [pv for pv in get_json(nc, "pv")["items"]
           if (pv["spec"].get("claimRef") or {}).get("namespace") == NS]
    wait_for(lambda: not [pv for pv in get_json(nc, "pv")["items"]
                          if (pv["spec"].get("claimRef") or {}).get("namespace") == NS],
             timeout=120, interval=2, desc=f"PVs of {NS} deleted (were {len(pvs)})")
    crs = get_json(nc, "clusterroles")["items"] + get_json(nc, "clusterrolebindings")["items"]
    assert not [c["metadata"]["name"] for c in crs
                if (c["metadata"].get("labels") or {}).get("app.kubernetes.io/instance")
                == RELEASE]
    # Nothing of the release is left in the node's runtime either.
    wait_for(lambda: not nc.node.ctr("containers", "ls", "-q").split(), timeout=120,
             interval=2, desc="no container left in containerd")


def test_print_timings(node_cluster):
    rows = {**node_cluster.timings, **Journey.timings}
    width = max(map(len, rows))
    print("\nthe journey's timings (seconds):")
    for what, seconds in rows.items():
        print(f"  {what:<{width}}  {seconds:7.1f}")
    assert "install -> first answer" in rows
