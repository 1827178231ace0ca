"""The chart's NetworkPolicies on the real node, enforced by kube-router's firewall
(tests/kube/realnode.py), shown by real TCP connections.

A probe pod in the release's namespace that no policy lets in (not a route peer, not a
persona) connects to the personas' pods and Service on 8080 and to the MongoDB pod on
27017: refused. The same probe connects to a pod that no policy selects, listening on the
same ports, and to the route on the node: connected, so a refusal is the policy's and not a
broken probe, DNS or network. Through the route (the host's Traefik) both personas answer,
and the personas reach MongoDB: their history is connected and a second turn replays the
first.

kube-router REJECTs what no policy allows (an ICMP port-unreachable: the client sees
"connection refused" at once, not a timeout). It also accepts whatever the node itself
sends to its pods, before any policy: the host's Traefik gets in by that rule as much as by
route.peers' ipBlock (the bridge address), so (c) shows the route works under enforcement,
not which of the two admitted it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest

from tests.kube import realnode
from tests.kube.helpers import wait_for
from tests.node import ledger
from tests.node.release import (
    NS,
    apply,
    get,
    get_json,
    kubectl,
    office_question,
    post,
    ready_pods,
    running_pod,
)

pytestmark = pytest.mark.node

PROBE = "netpol-probe"  # connects; no policy lets it in anywhere
OPEN = "netpol-open"  # listens on the guarded ports; no policy selects it
GUARDED_PORTS = (8080, 27017)
CONNECT_TIMEOUT_S = 5
DENIED = ("refused", "timeout")

# Run in the probe pod with host:port arguments; prints one JSON result per target.
CONNECT = r"""
import json, socket, sys, time
results = []
for target in sys.argv[2:]:
    host, port = target.rsplit(":", 1)
    started, address = time.monotonic(), ""
    try:
        address = socket.gethostbyname(host)
        with socket.create_connection((address, int(port)), timeout=float(sys.argv[1])):
            result = "connected"
    except ConnectionRefusedError:
        result = "refused"
    except TimeoutError:
        result = "timeout"
    except OSError as exc:
        result = f"error: {exc}"
    results.append({"target": target, "address": address, "result": result,
                    "seconds": round(time.monotonic() - started, 3)})
print(json.dumps(results))
"""

LISTEN = r"""
import socket, threading
def serve(port):
    server = socket.create_server(("", port))
    while True:
        conn, _ = server.accept()
        conn.close()
for port in (PORTS):
    threading.Thread(target=serve, args=(port,), daemon=True).start()
threading.Event().wait()
""".replace("PORTS", ", ".join(map(str, GUARDED_PORTS)))


def _pod(nc, name: str, command: list[str], **container) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS,
                     "labels": {"app.kubernetes.io/name": name}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": name, "image": nc.images["helper"], "imagePullPolicy": "Never",
                "command": command,
                "securityContext": {"allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                              "limits": {"memory": "64Mi"}},
                **container,
            }],
        },
    }


def _service(nc, component: str) -> dict:
    services = get_json(nc, "-n", NS, "services", "-l",
                        f"app.kubernetes.io/component={component}")["items"]
    assert len(services) == 1, [s["metadata"]["name"] for s in services]
    return services[0]


def _policy(nc, suffix: str) -> str:
    [name] = [p["metadata"]["name"] for p in get_json(nc, "-n", NS, "networkpolicies")["items"]
              if p["metadata"]["name"].endswith(suffix)]
    return name


def _pod_policies(ip: str) -> set[str]:
    """The policies kube-router's firewall runs traffic to ``ip`` through (from one
    ``iptables -S`` snapshot: its chain names change with each sync)."""
    rules = subprocess.run(["iptables", "-t", "filter", "-S"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    parsed = [shlex.split(rule) for rule in rules if rule.startswith("-A ")]
    pod_chains = {_arg(words, "-j") for words in parsed
                  if words[1] == realnode.KUBE_ROUTER_FORWARD and _arg(words, "-d") == f"{ip}/32"}
    prefix = "run through nw policy "
    return {_arg(words, "--comment")[len(prefix):] for words in parsed
            if words[1] in pod_chains and _arg(words, "--comment").startswith(prefix)}


def _arg(words: list[str], flag: str) -> str:
    return words[words.index(flag) + 1] if flag in words else ""


def _wait_enforced(nc, components: tuple[str, ...]) -> None:
    """Until kube-router's chains send the traffic to these components' pods through their
    policies (it syncs on pod and policy events, and every 30 s)."""
    policy = {c: _policy(nc, "-mongodb" if c == "mongodb" else "-services") for c in components}
    ips = {c: running_pod(nc, f"app.kubernetes.io/component={c}")["status"]["podIP"]
           for c in components}
    wait_for(lambda: realnode.forward_chain_first() == realnode.KUBE_ROUTER_FORWARD
             and all(policy[c] in _pod_policies(ips[c]) for c in components),
             timeout=120, interval=1, desc=f"kube-router's chains for {ips}")


class Probes:
    """The probe pods, the targets' addresses, and what each connection did."""

    def __init__(self, nc):
        self.nc = nc
        self.tried: list[dict] = []  # {"what", "target", "expected", "result", "seconds"}
        self.route_requests = 0
        self.route_5xx: Counter = Counter()
        self.enforced_after_s = 0.0
        self.replaced_answering_s: float | None = None

    def connect(self, *targets: tuple[str, str, str]) -> list[dict]:
        """Connect from the probe pod to each (what, host:port, expected) target."""
        out = kubectl(self.nc, "exec", "-n", NS, PROBE, "--", "python3", "-c", CONNECT,
                      str(CONNECT_TIMEOUT_S), *(t for _, t, _ in targets),
                      timeout=CONNECT_TIMEOUT_S * len(targets) + 60)
        results = json.loads(out.strip().splitlines()[-1])
        for (what, _, expected), r in zip(targets, results, strict=True):
            r.update(what=what, expected=expected)
            self.tried.append(r)
            print(f"  {PROBE} -> {what:<38} {r['target']:<55} ({r['address']}): "
                  f"{r['result']} in {r['seconds']:.3f}s (expected {expected})")
        return results

    def route(self, method: str, path: str, body: dict | None = None):
        self.route_requests += 1
        status, headers, data = (post(self.nc.route(path), body) if method == "POST"
                                 else get(self.nc.route(path)))
        if status >= 500:
            self.route_5xx[status] += 1
        print(f"  route {method} {path}: {status}")
        return status, headers, data


@pytest.fixture(scope="module")
def probes(installed):
    nc = installed
    started = time.monotonic()
    apply(nc, _pod(nc, PROBE, ["sleep", "infinity"]), PROBE)
    apply(nc, _pod(nc, OPEN, ["python3", "-c", LISTEN],
                   readinessProbe={"tcpSocket": {"port": GUARDED_PORTS[0]},
                                   "periodSeconds": 1}), OPEN)
    probes = Probes(nc)
    try:
        kubectl(nc, "wait", "-n", NS, "--for=condition=Ready", f"pod/{PROBE}", f"pod/{OPEN}",
                "--timeout=120s", timeout=150)
        _wait_enforced(nc, ("office", "character", "mongodb"))
        probes.enforced_after_s = time.monotonic() - started
        print(f"\n[netpol] probe pods Ready and the policies' chains in place "
              f"{probes.enforced_after_s:.1f}s after the pods were applied", file=sys.stderr)
        yield probes
    finally:
        kubectl(nc, "delete", "pod", "-n", NS, PROBE, OPEN, "--ignore-not-found", "--wait",
                "--timeout=60s", timeout=90, check=False)
        _record(probes)


def _record(probes: Probes) -> None:
    denied = [r for r in probes.tried if r["expected"] == "denied"]
    allowed = [r for r in probes.tried if r["expected"] == "connected"]
    how = Counter(r["result"] for r in denied)
    slowest = max((r["seconds"] for r in denied), default=0.0)
    held = sum(r["result"] in DENIED for r in denied)
    reached = sum(r["result"] == "connected" for r in allowed)
    ledger.record(ledger.FaultRow(
        "NetworkPolicies (kube-router)", probes.route_requests, 0, probes.route_5xx,
        probes.replaced_answering_s,
        f"denied {held}/{len(denied)} ({', '.join(f'{k} x{v}' for k, v in how.items())}, "
        f"<= {slowest:.2f}s), allowed {reached}/{len(allowed)}; rules "
        f"{probes.enforced_after_s:.0f}s after the probe pods; recovery: office pod replaced"))


def _check(results: list[dict]) -> None:
    wrong = [r for r in results
             if (r["expected"] == "denied") != (r["result"] in DENIED)
             or (r["expected"] == "connected" and r["result"] != "connected")]
    assert not wrong, json.dumps(wrong, indent=1)


# ----------------------------------------------------------------------------- the route

def test_the_route_reaches_both_personas(probes):
    """(c) route.peers: the host's Traefik on :8001 reaches the services."""
    db_id = str(uuid.uuid4())
    status, _, body = probes.route("POST", "/office/Llama",
                                   office_question(db_id, "Say hello.", user_id="netpol-user"))
    assert status == 200 and json.loads(body).strip(), body[:300]
    status, _, body = probes.route("GET", "/character/readyz")
    assert status == 200, body[:300]


def test_the_personas_reach_mongodb(probes):
    """(d) MongoDB lets the personas in: their history is connected and kept."""
    for persona in ("office", "character"):
        status, _, body = probes.route("GET", f"/{persona}/readyz")
        assert status == 200, body[:300]
        history = json.loads(body)["history"]
        assert history["kind"] == "mongodb" and history["state"] == "ok", history
    db_id = str(uuid.uuid4())
    for text in ("What is a good way to write meeting notes?", "Give one more tip."):
        status, headers, body = probes.route(
            "POST", "/office/Llama", office_question(db_id, text, user_id="netpol-user"))
        assert status == 200, body[:300]
    assert headers["X-History-Turns"] == "1", dict(headers)


# ----------------------------------------------------------------------------- the probes

def test_a_pod_outside_the_route_peers_cannot_reach_the_personas(probes):
    """(a) The services' policy lets only route.peers in on 8080: not another pod."""
    nc = probes.nc
    office = running_pod(nc, "app.kubernetes.io/component=office")["status"]["podIP"]
    character = running_pod(nc, "app.kubernetes.io/component=character")["status"]["podIP"]
    svc = _service(nc, "office")
    open_ip = running_pod(nc, f"app.kubernetes.io/name={OPEN}")["status"]["podIP"]
    results = probes.connect(
        ("office pod", f"{office}:8080", "denied"),
        ("character pod", f"{character}:8080", "denied"),
        ("office Service (cluster IP, by DNS)",
         f"{svc['metadata']['name']}.{NS}.svc.cluster.local:{svc['spec']['ports'][0]['port']}",
         "denied"),
        ("control: unselected pod, same port", f"{open_ip}:8080", "connected"),
        ("control: the route on the node", f"{nc.node.ip}:{realnode.ROUTE_PORT}", "connected"),
    )
    _check(results)


def test_only_the_personas_reach_mongodb(probes):
    """(b) MongoDB's policy lets only office and character pods in on 27017."""
    nc = probes.nc
    mongo = running_pod(nc, "app.kubernetes.io/component=mongodb")["status"]["podIP"]
    svc = _service(nc, "mongodb")
    open_ip = running_pod(nc, f"app.kubernetes.io/name={OPEN}")["status"]["podIP"]
    results = probes.connect(
        ("MongoDB pod", f"{mongo}:27017", "denied"),
        ("MongoDB Service (headless, by DNS)",
         f"{svc['metadata']['name']}.{NS}.svc.cluster.local:27017", "denied"),
        ("control: unselected pod, same port", f"{open_ip}:27017", "connected"),
    )
    _check(results)


# ----------------------------------------------------------------------------- a new pod

def test_a_replacement_office_pod_reaches_mongodb_and_is_guarded(probes):
    """(e) The policies follow new pods: a replacement office pod is among MongoDB's allowed
    sources in time for its first ping (none failed; pymongo's 2 s server selection would
    hide a shorter refusal) and the conversation goes on, and the probe is refused by it as
    by the old one. The fault tests replace pods under these policies too."""
    nc = probes.nc
    db_id = str(uuid.uuid4())
    status, _, body = probes.route(
        "POST", "/office/Llama", office_question(db_id, "Name one planet.", user_id="netpol-user"))
    assert status == 200, body[:300]
    old = running_pod(nc, "app.kubernetes.io/component=office")
    deleted = time.monotonic()
    kubectl(nc, "delete", "pod", "-n", NS, old["metadata"]["name"], "--wait=false")
    wait_for(lambda: [p for p in ready_pods(nc, "office")
                      if p["metadata"]["uid"] != old["metadata"]["uid"]],
             timeout=300, interval=1, desc="the replacement office pod Ready")
    wait_for(lambda: get(nc.route("/office/readyz"))[0] == 200, timeout=120, interval=1,
             desc="/office/readyz 200 from the replacement")
    status, _, body = probes.route("GET", "/office/readyz")
    history = json.loads(body)["history"]
    print(f"  replacement office pod's history: {history}")
    assert history["state"] == "ok" and not any(history["failures"].values()), history
    status, headers, body = probes.route(
        "POST", "/office/Llama", office_question(db_id, "Name another.", user_id="netpol-user"))
    assert status == 200 and headers["X-History-Turns"] == "1", (status, dict(headers))
    probes.replaced_answering_s = time.monotonic() - deleted

    _wait_enforced(nc, ("office",))
    new = running_pod(nc, "app.kubernetes.io/component=office")["status"]["podIP"]
    _check(probes.connect(("replacement office pod", f"{new}:8080", "denied")))
