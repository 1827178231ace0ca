"""Faults on the real node, under traffic: what users see and what the history keeps.

Each test breaks one thing of the installed release (tests/node/conftest.py ``installed``)
while users ask through the route on port 8001, then checks that every question ended in
an answer or a clean error within its deadline, that nothing was lost or half-written in
MongoDB, and how long the release took to answer again. Each adds a row to the table
printed at the end of the session (tests/node/ledger.py).
"""

from __future__ import annotations

import json
import re
import resource
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.kube import binaries
from tests.kube.helpers import wait_for
from tests.node import ledger
from tests.node.release import (
    CBM,
    MONGODB,
    NS,
    apply,
    chatbot_model,
    get,
    get_json,
    kubectl,
    mongo_client,
    office_question,
    pods,
    post,
    ready_pods,
    restart_counts,
    running_pod,
    stored_turns,
)
from tests.node.traffic import (
    Users,
    container_id,
    history_problems,
    pod_performance,
    pod_rss,
    rss_bytes,
)

pytestmark = pytest.mark.node

MiB = 1024 * 1024
DEADLINE_S = 120  # a client's patience for one answer
RETRY_FOR_S = 300  # how long the user of a killed answer keeps asking
ROLLOUT_RUN_S = 90  # the load test's length: the rollout (~30 s, from 20 s on) happens inside it
KUBELET_DOWN_S = 10


def _show(users: Users) -> str:
    return "\n".join(f"{q.user} {q.text!r}: {[(a.status, a.error[:80]) for a in q.attempts]}"
                     for q in users.questions[-20:])


# ----------------------------------------------------------------------------- kubelet

def test_kubelet_restart_keeps_pods_serving_and_the_node_comes_back_ready(installed):
    nc = installed
    before = restart_counts(nc, "office", "character")
    with Users(nc, count=2, name="kubelet") as users:
        time.sleep(3)
        stopped = time.monotonic()
        ready_s = nc.node.restart_kubelet(down_s=KUBELET_DOWN_S)
        time.sleep(3)
    # Served while the kubelet was away: asked, or still being answered, in that window.
    during = users.answered_overlapping(stopped, stopped + KUBELET_DOWN_S)
    assert not users.unanswered(), _show(users)
    assert during, f"no answer overlapped the kubelet's absence:\n{_show(users)}"
    assert not users.status_5xx(), _show(users)
    assert restart_counts(nc, "office", "character") == before, (
        "the pods were restarted or replaced by the kubelet's restart")
    assert not history_problems(nc, users, users.questions)
    ledger.record(ledger.FaultRow(f"kubelet restarted ({KUBELET_DOWN_S} s down)",
                                  users.requests(), 0, users.status_5xx(), ready_s,
                                  f"{len(during)} answers while it was down; "
                                  f"node Ready again"))
    print(f"kubelet down {KUBELET_DOWN_S} s: {len(during)} answers served meanwhile; node Ready "
          f"{ready_s:.1f}s after the stop ({time.monotonic() - stopped:.1f}s in all)")


def test_pod_network_namespaces_live_under_the_node_dir_where_a_killed_run_is_reaped(
        installed):
    """The reaper of a killed run unmounts what lies under the node's directory. Network
    namespaces under /var/run/netns (containerd's default) outlived it with their veths:
    5 of each after a `kill -9` of pytest."""
    nc = installed
    nsfs = [f[1] for f in (line.split() for line in
                           Path("/proc/self/mounts").read_text().splitlines()) if f[2] == "nsfs"]
    ours = [m for m in nsfs if m.startswith(str(nc.node.dir))]
    networked = [p["metadata"]["name"] for p in get_json(nc, "pods", "-A")["items"]
                 if p["status"].get("phase") == "Running"
                 and not p["spec"].get("hostNetwork")]
    assert networked and len(ours) >= len(networked), (networked, nsfs)


# ----------------------------------------------------------------------------- MongoDB

def _history_state(nc, persona: str = "office") -> str:
    status, _, body = get(nc.route(f"/{persona}/readyz"))
    return json.loads(body)["history"]["state"] if status == 200 else f"readyz {status}"


def test_mongodb_pod_deleted_under_load_answers_on_and_history_resumes(installed):
    nc = installed
    restarts = restart_counts(nc, "office")
    with Users(nc, count=2, name="mongo") as users:
        wait_for(lambda: sum(q.answered for q in users.questions) >= 4, timeout=120,
                 desc="answers before the outage")
        old = running_pod(nc, MONGODB)
        deleted = time.monotonic()
        kubectl(nc, "delete", "pod", "-n", NS, old["metadata"]["name"], "--wait=false")
        wait_for(lambda: _history_state(nc) == "degraded", timeout=60, interval=0.5,
                 desc="/readyz shows the history degraded")
        degraded_seen = time.monotonic() - deleted
        wait_for(lambda: running_pod(nc, MONGODB)["metadata"]["uid"] != old["metadata"]["uid"],
                 timeout=180,
                 desc="the StatefulSet's new MongoDB pod running")
        wait_for(lambda: _history_state(nc) == "ok", timeout=120, interval=0.5,
                 desc="/readyz shows the history ok again")
        back = time.monotonic()
        wait_for(lambda: sum(q.answered and q.sent_at > back for q in users.questions) >= 4,
                 timeout=180, desc="answers after the recovery")
        answered_again = time.monotonic() - back
    assert not users.unanswered(), _show(users)
    assert not users.status_5xx(), _show(users)
    before = [q for q in users.questions if q.answered and q.answered_at < deleted]
    after = [q for q in users.questions if q.sent_at > back and q.answered]
    # Answered while the store was away: asked, or still being answered, in that window.
    during = users.answered_overlapping(deleted + degraded_seen, back)
    assert before and after, _show(users)
    assert during, f"no answer overlapped MongoDB's absence:\n{_show(users)}"
    # The pod's journal writes what it answered meanwhile once MongoDB is back.
    drained = time.monotonic()
    wait_for(lambda: _history_pending(nc) == 0, timeout=120, interval=0.5,
             desc="/readyz history.pending back to 0")
    drained = time.monotonic() - drained
    # Every answered turn is there, once, whole, in the order it was asked: before, during
    # and after the outage.
    answered = [q for q in users.questions if q.answered]
    problems = history_problems(nc, users, answered) + _out_of_order(nc, users)
    lost = sum("answered but not stored" in p for p in problems)
    assert not problems, problems
    # History resumed: the turns after the recovery replayed what the store has.
    for q in after[-2:]:
        assert q.history_turns and q.history_turns > 0, (q.user, q.history_turns)
    # Without any service restart.
    assert restart_counts(nc, "office") == restarts
    ledger.record(ledger.FaultRow(
        "MongoDB pod deleted under load", users.requests(), lost, users.status_5xx(),
        back - deleted, f"{len(during)} answered while it was away, all stored; degraded "
                        f"after {degraded_seen:.1f}s; 4 answers after it took "
                        f"{answered_again:.0f}s, the journal drained in {drained:.0f}s"))


def _history_pending(nc, persona: str = "office") -> int | None:
    status, _, body = get(nc.route(f"/{persona}/readyz"))
    return json.loads(body)["history"].get("pending") if status == 200 else None


def _out_of_order(nc, users: Users) -> list[str]:
    """Each conversation's stored turns in the order its user asked (one user asks one
    question at a time), with consecutive indexes."""
    problems = []
    for user, db_id in users.users:
        asked = [q.text for q in users.questions if q.user == user and q.answered]
        turns = stored_turns(nc, users.persona, user, db_id)
        stored = [t["input_data"] for t in turns]
        if stored != [text for text in asked if text in stored]:
            problems.append(f"{user}: stored out of order: {stored}")
        if [t["index"] for t in turns] != list(range(1, len(turns) + 1)):
            problems.append(f"{user}: indexes {[t['index'] for t in turns]}")
    return problems


# ----------------------------------------------------------------------------- pod killed

@pytest.mark.parametrize("how", ["graceful", "forced"])
def test_office_pod_deleted_while_answering(installed, how):
    nc = installed
    [pod] = ready_pods(nc, "office")
    user, db_id = f"kill-{how}-{uuid.uuid4().hex[:6]}", str(uuid.uuid4())
    question = office_question(db_id, "Write a long, detailed plan for a team offsite.", user)
    tries: list[tuple[int, float]] = []  # (status, seconds) of each attempt
    outcome: dict = {}

    def ask() -> None:
        """The user of the killed answer: waits up to its deadline, and asks again after
        an error, as the error invites."""
        started = time.monotonic()
        while time.monotonic() - started < RETRY_FOR_S:
            sent = time.monotonic()
            try:
                status, _, body = post(nc.route("/office/Llama"), question, timeout=DEADLINE_S)
            except OSError as exc:
                status, body = 0, repr(exc).encode()
            tries.append((status, time.monotonic() - sent))
            outcome.update(status=status, body=body)
            if status == 200:
                return
            time.sleep(1)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    wait_for(lambda: (pod_performance(pod) or {}).get("active_connections"), timeout=30,
             interval=0.1, desc="the question in flight on the pod")
    killed = time.monotonic()
    args = ["--wait=false"] + (["--grace-period=0", "--force"] if how == "forced" else [])
    kubectl(nc, "delete", "pod", "-n", NS, pod["metadata"]["name"], *args)

    # Others asking meanwhile: a clean 503 until a pod is back (never the 404 page, never a
    # 500), then an answer. The time from the kill to that answer is the recovery time.
    seen: Counter = Counter()
    probe = office_question(str(uuid.uuid4()), "Say hello.", user)
    old_uid = pod["metadata"]["uid"]
    replacement_ready: list[float] = []

    def answered() -> bool:
        if not replacement_ready and [p for p in ready_pods(nc, "office")
                                      if p["metadata"]["uid"] != old_uid]:
            replacement_ready.append(time.monotonic())
        sent = time.monotonic()
        status = post(nc.route("/office/Llama"), probe, timeout=60)[0]
        seen[status] += 1
        if status == 200:
            answered_sent.append(sent)
        return status == 200

    # Recovery: until the first request that got answered was sent (its answer's own
    # generation time is not the outage).
    answered_sent: list[float] = []
    wait_for(answered, timeout=300, interval=0.5, desc="an answer after the kill")
    answering = answered_sent[0]
    # A forced kill gives no notice: a request already on its way to the dead pod gets
    # the route's 502. A graceful one is drained: 503s (Retry-After) only.
    allowed = {200, 503} if how == "graceful" else {200, 502, 503}
    assert set(seen) <= allowed, seen
    asking.join(RETRY_FOR_S + DEADLINE_S)
    assert not asking.is_alive(), f"the killed answer's client hung: {tries}"
    # The killed answer ended within its deadline, as an answer or an error that says so
    # (never a 200 without one); asked again, it was answered.
    first_status, first_s = tries[0]
    assert first_s < DEADLINE_S and first_status in allowed, tries
    assert outcome["status"] == 200 and json.loads(outcome["body"]).strip(), tries

    # Once the replacement is Ready (and the route knows it), its first answer is a 200.
    wait_for(lambda: [p for p in ready_pods(nc, "office") if p["metadata"]["uid"] != old_uid],
             timeout=300, interval=0.5, desc="the replacement office pod Ready")
    ready_at = (replacement_ready or [time.monotonic()])[0]
    wait_for(lambda: get(nc.route("/office/readyz"))[0] == 200, timeout=60, interval=0.2,
             desc="the route on the replacement")
    status_after, _, body = post(nc.route("/office/Llama"),
                                 office_question(str(uuid.uuid4()), "Say hello.", user))
    assert status_after == 200, body[:300]

    # Nothing half-written, nothing twice: one whole turn, the answer the user got.
    turns = stored_turns(nc, "office", user, db_id)
    assert [t["output_data"] for t in turns] == [json.loads(outcome["body"])], (tries, turns)
    lost = 0
    fives = Counter({k: v for k, v in seen.items() if k >= 500})
    fives.update(status for status, _ in tries if status >= 500)
    ledger.record(ledger.FaultRow(
        f"office pod deleted mid-answer ({how})", len(tries) + 1 + sum(seen.values()), lost,
        fives, answering - killed,
        f"in-flight got {first_status} after {first_s:.1f}s, then {len(tries) - 1} retries; "
        f"replacement Ready {ready_at - killed:.1f}s after the kill"))
    print(f"{how} delete: the answer in flight got {first_status} after {first_s:.1f}s "
          f"(attempts {tries}); others saw {dict(seen)}; answered again from "
          f"{answering - killed:.1f}s after the kill")


# ----------------------------------------------------------------------------- bad input

def _slow_body(host: str, port: int, stop: threading.Event, results: list) -> None:
    """A POST whose body trickles in, a byte a second (slow-loris)."""
    s = socket.create_connection((host, port), timeout=5)
    try:
        s.sendall(b"POST /office/Llama HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 4000\r\n\r\n")
        while not stop.is_set():
            s.sendall(b" ")
            stop.wait(1)
        results.append("open until the end")
    except OSError as exc:
        results.append(f"closed by the server: {exc!r}"[:80])
    finally:
        s.close()


STREAM_MAX_TOKENS = 2000
STREAM_READ_CHUNKS = 20


def _leave_a_stream(nc, office: dict, host: str, port: int) -> str:
    """A client that leaves a streamed answer after some of it: the pod must stop
    generating for it (its connection count back to 0, far fewer tokens than asked for)."""
    before = pod_performance(office)["engine_generated_tokens"]
    payload = json.dumps({"messages": [{"role": "user", "content": (
        "Write a long story about a lighthouse keeper, in at least ten paragraphs.")}],
        "stream": True, "max_tokens": STREAM_MAX_TOKENS}).encode()
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(b"POST /office/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload)
              + payload)
    received = b""
    while received.count(b'"content"') < STREAM_READ_CHUNKS:  # some of the answer, then go
        assert b"[DONE]" not in received, f"the answer ended first: {received[-300:]!r}"
        chunk = s.recv(4096)
        assert chunk, received[-300:]
        received += chunk
    assert b" 200 " in received.split(b"\r\n", 1)[0], received[:200]
    s.close()
    left = time.monotonic()

    def stopped():
        perf = pod_performance(office) or {}
        return not perf.get("engine_generating") and not perf.get("active_connections") and perf

    perf = wait_for(stopped, timeout=120, interval=0.2, desc="generation for the gone client "
                                                           "stopped")
    tokens = perf["engine_generated_tokens"] - before
    assert tokens < STREAM_MAX_TOKENS, f"{tokens} tokens generated for a client that left"
    return f"stopped {time.monotonic() - left:.1f}s later after {tokens} tokens"


def test_bad_input_at_the_edge_leaves_other_users_answered_and_memory_bounded(installed):
    nc = installed
    traefik_pid = nc.cluster.running()["traefik"]
    [office] = ready_pods(nc, "office")
    rss_before = {"traefik": rss_bytes([traefik_pid]), "office": pod_rss(nc, office)}
    kv_host_before = pod_performance(office)["engine_kv_host_bytes"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    host, port = "127.0.0.1", 8001
    left_after = _leave_a_stream(nc, office, host, port)
    stop = threading.Event()
    slow_results: list = []
    idle: list[socket.socket] = []
    with Users(nc, count=2, name="edge") as users:
        # 1 000 idle connections to the route, held open.
        for _ in range(1000):
            idle.append(socket.create_connection((host, port), timeout=10))
        # Slow bodies.
        slow = [threading.Thread(target=_slow_body, args=(host, port, stop, slow_results),
                                 daemon=True) for _ in range(20)]
        for t in slow:
            t.start()
        # Non-UTF-8 bodies: a clear 4xx, never a 500 or an answer.
        bad = {"latin-1 JSON": '{"input_data": "caf\xe9", "db_id": "x"}'.encode("latin-1"),
               "random bytes": bytes(range(256)) * 4,
               "UTF-16": json.dumps({"input_data": "hi", "db_id": "x"}).encode("utf-16")}
        refused = {}
        for what, body in bad.items():
            status, _, text = post(nc.route("/office/Llama"), body)
            refused[what] = status
            assert 400 <= status < 500, (what, status, text[:200])
        # Held until the other users got answers through all of it.
        wait_for(lambda: sum(q.answered for q in users.questions) >= 4, timeout=180,
                 desc="other users answered meanwhile")
    stop.set()
    for t in slow:
        t.join(5)
    for s in idle:
        s.close()
    time.sleep(2)
    rss_after = {"traefik": rss_bytes([traefik_pid]), "office": pod_rss(nc, office)}
    # The conversations' KV cells the engine keeps in host RAM (up to `cache_ram_mib`, by
    # design) are not a leak: what it reports holding is taken off the office pod's growth.
    kv_host_grown = pod_performance(office)["engine_kv_host_bytes"] - kv_host_before
    assert len(users.questions) >= 2 and not users.unanswered(), _show(users)
    assert not users.status_5xx(), _show(users)
    print("RSS before -> after: " + ", ".join(
        f"{k} {rss_before[k] / MiB:.0f} -> {rss_after[k] / MiB:.0f} MiB" for k in rss_before)
        + f"; office's host KV cache grew {kv_host_grown / MiB:.0f} MiB")
    print(f"non-UTF-8 bodies answered {refused}; slow bodies: {sorted(set(slow_results))}; "
          f"a stream left after {STREAM_READ_CHUNKS} chunks: {left_after}")
    # Bounded: the idle and slow connections are closed, and what they cost is given back
    # (or never taken); generous bounds, a leak of a buffer per connection passes them.
    assert rss_after["traefik"] - rss_before["traefik"] < 150 * MiB
    assert rss_after["office"] - rss_before["office"] - kv_host_grown < 100 * MiB
    ledger.record(ledger.FaultRow(
        "1000 idle conns, 20 slow bodies, non-UTF-8, a stream left", users.requests(), 0,
        users.status_5xx(), None,
        f"RSS MiB traefik {rss_before['traefik'] / MiB:.0f}->{rss_after['traefik'] / MiB:.0f}, "
        f"office {rss_before['office'] / MiB:.0f}->{rss_after['office'] / MiB:.0f}"))


# ----------------------------------------------------------------------------- operator

def _operator_pod(nc) -> dict:
    [pod] = [p for p in get_json(nc, "-n", NS, "pods", "-l",
                                 "app.kubernetes.io/component=operator")["items"]
             if not p["metadata"].get("deletionTimestamp")]
    return pod


def _kill_operator(nc) -> int:
    """SIGKILLs the operator's container (not a clean stop); returns its restart count
    before."""
    pod = _operator_pod(nc)
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    nc.node.ctr("tasks", "kill", "--signal", "SIGKILL", container_id(pod))
    return restarts


def _operator_back(nc, restarts: int) -> None:
    def running_again():
        s = _operator_pod(nc)["status"]["containerStatuses"][0]
        return s["restartCount"] > restarts and s.get("ready") and "running" in s["state"]

    wait_for(running_again, timeout=120, interval=0.5, desc="the operator restarted")


def test_operator_sigkilled_during_reconcile_leaves_no_duplicates_and_reaches_ready(
        installed, mirror):
    nc = installed
    name = "faults-op"
    # A host of its own: without one its route would claim the release's paths on 8001 too,
    # and the route controller could send the release's users to this model's pods.
    manifest = chatbot_model(nc, mirror, route={"host": f"{name}.invalid"})
    manifest["metadata"]["name"] = name
    for persona in ("office", "character"):
        manifest["spec"][persona]["contextSize"] = 2048
    points = {
        "just after create": lambda: True,
        "fetch Jobs created": lambda: _children(nc, name, "jobs"),
        "Deployments created": lambda: _children(nc, name, "deployments"),
    }
    try:
        _kill_during_create(nc, manifest, points)
    finally:
        kubectl(nc, "delete", "cbm", name, "-n", NS, "--ignore-not-found", "--wait",
                "--timeout=180s", timeout=200)
        # Its children go after it (garbage collection): the next test counts what the
        # release's pods served, so none of this model's may still be answering.
        wait_for(lambda: not get_json(nc, "-n", NS, "pods,ingress,services", "-l",
                                      f"app.kubernetes.io/instance={name}")["items"],
                 timeout=180, interval=1, desc=f"{name}'s pods, route and Services gone")


def _kill_during_create(nc, manifest: dict, points: dict) -> None:
    name = manifest["metadata"]["name"]
    kills = []
    applied = time.monotonic()
    apply(nc, manifest, name)
    for point, reached in points.items():
        wait_for(reached, timeout=300, interval=0.2, desc=point)
        kills.append((point, time.monotonic() - applied))
        restarts = _kill_operator(nc)
        _operator_back(nc, restarts)
    restarted = time.monotonic()
    wait_for(lambda: (get_json(nc, "-n", NS, "cbm", name).get("status") or {}).get("phase")
             == "Ready", timeout=600, interval=1, desc=f"{name} Ready after the kills")
    ready_s = time.monotonic() - restarted
    passes = [line for line in kubectl(nc, "logs", "-n", NS,
                                       _operator_pod(nc)["metadata"]["name"]).splitlines()
              if f"reconciled {NS}/{name}" in line]
    uid = get_json(nc, "-n", NS, "cbm", name)["metadata"]["uid"]
    owned = {kind: _children(nc, name, kind) for kind in
             ("deployments", "jobs", "persistentvolumeclaims", "configmaps", "services")}
    counts = {kind: len(items) for kind, items in owned.items()}
    print(f"kills at {[(p, round(t, 1)) for p, t in kills]}; Ready {ready_s:.1f}s after the "
          f"last restart, {len(passes)} reconcile passes since; children {counts}")
    # office, character and the route's not-found backend; a fetch Job per persona.
    assert counts["deployments"] == 3 and counts["jobs"] == 2, counts
    assert counts["persistentvolumeclaims"] == 2 and counts["configmaps"] == 1, counts
    # No Job without a living owner (an orphan) in the namespace.
    living = {c["metadata"]["uid"] for c in get_json(nc, "-n", NS, "cbm")["items"]}
    orphans = [j["metadata"]["name"] for j in get_json(nc, "-n", NS, "jobs")["items"]
               if not {r["uid"] for r in j["metadata"].get("ownerReferences") or []} & living]
    assert not orphans and uid in living
    assert passes, "no reconcile pass logged after the last restart"
    ledger.record(ledger.FaultRow(
        "operator SIGKILLed x3 (create, Jobs, Deployments)", 0, 0, Counter(), ready_s,
        f"{len(passes)} passes after the last restart; children {counts}"))


def _children(nc, owner: str, kind: str) -> list[dict]:
    uid = get_json(nc, "-n", NS, "cbm", owner)["metadata"]["uid"]
    return [i for i in get_json(nc, "-n", NS, kind)["items"]
            if any(r["uid"] == uid for r in i["metadata"].get("ownerReferences") or [])]



# ----------------------------------------------------------------------------- rollout

class PodLogs:
    """Follows the log of every pod of the personas, from when it runs until it is gone,
    so the ``final counters`` a terminated pod logs are kept."""

    def __init__(self, nc, out_dir):
        self.nc, self.out_dir = nc, out_dir
        self.followed: dict[str, tuple[str, subprocess.Popen]] = {}  # pod -> persona, kubectl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PodLogs:
        self._follow_new()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        for _, proc in self.followed.values():
            proc.terminate()
            proc.wait(10)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._follow_new()
            except Exception:  # noqa: BLE001 - the API busy for a moment: next round
                pass

    def _follow_new(self) -> None:
        for persona in ("office", "character"):
            for pod in pods(self.nc, persona):
                name = pod["metadata"]["name"]
                running = any("running" in s.get("state", {})
                              for s in pod["status"].get("containerStatuses") or [])
                if name in self.followed or not running:
                    continue
                log = open(self.out_dir / f"{name}.log", "wb")  # noqa: SIM115 - kubectl's
                proc = subprocess.Popen([str(binaries.binary("kubectl")), "logs", "-f",
                                         "-n", NS, name], stdout=log, stderr=subprocess.STDOUT,
                                        env=self.nc.env())
                log.close()
                self.followed[name] = (persona, proc)

    def final_counters(self, pod: str) -> dict | None:
        persona, _ = self.followed[pod]
        marker = f"final counters {persona}: "
        text = (self.out_dir / f"{pod}.log").read_text(errors="replace")
        lines = [line.split(marker, 1)[1] for line in text.splitlines() if marker in line]
        return json.loads(lines[-1]) if lines else None

    def answered_in_log(self, pod: str) -> int:
        """The 200s of chat requests in the pod's access log (uvicorn's), as followed."""
        text = (self.out_dir / f"{pod}.log").read_text(errors="replace")
        return sum('"POST /' in line and '/Llama HTTP/1.1" 200' in line
                   for line in text.splitlines())


def _evidence(persona, rows, logs, before, alive, gone, restarted) -> dict:
    """What a failed reconciliation shows: every pod's counters and access-log answers."""
    def counts(report):
        return {k: (report or {}).get(k) for k in ("total_requests", "succeeded", "failed")}

    ids = [r["request_id"] for r in rows if r["request_id"]]
    return {
        "before": {pod["metadata"]["name"]: counts(c) for pod, c in before},
        "final": {name: counts(logs.final_counters(name))
                  for name, p in gone.items() if p == persona},
        "alive": {pod["metadata"]["name"]: counts(c) for pod, c in alive},
        "200s in access logs": {name: logs.answered_in_log(name)
                                for name, (p, _) in logs.followed.items() if p == persona},
        "container restarts": restarted,
        "rows with an id": len(ids), "distinct ids": len(set(ids)),
    }


def _turns_in_mongo(nc, persona: str) -> dict[str, int]:
    """Stored turns per load-test user: every conversation of the user's collection."""
    client = mongo_client(nc)
    try:
        db = client.chatbot
        prefix = f"{persona}_log_"
        return {name[len(prefix):]: sum(len(d.get("value", [])) for d in db[name].find({}))
                for name in db.list_collection_names() if name.startswith(prefix)
                and "_user_" in name}
    finally:
        client.close()


def test_load_during_a_rollout_loses_nothing(installed, mirror, tmp_path):
    from chatbot_loadtest import analysis
    from chatbot_loadtest.records import read_rows

    nc = installed
    out = tmp_path / "loadtest"
    out.mkdir()
    before_pods = {p: ready_pods(nc, p) for p in ("office", "character")}
    before = {p: [pod_performance(pod) for pod in pods] for p, pods in before_pods.items()}
    assert all(all(b) for b in before.values()), before
    old_uids = {pod["metadata"]["uid"] for pods in before_pods.values() for pod in pods}
    others = [f"{o['kind']} {o['metadata']['name']}" for o in get_json(
        nc, "-n", NS, "pods,ingress", "-l",
        f"app.kubernetes.io/component in (office,character,not-found,route),"
        f"app.kubernetes.io/instance!={CBM}")["items"]]
    assert not others, f"another model's pods or route would take a share of the load: {others}"
    chatbot = Path(sys.executable).with_name("chatbot")
    with PodLogs(nc, tmp_path) as logs:
        load = subprocess.Popen(
            [str(chatbot), "loadtest", "--host", nc.route(""), "--users", "4",
             "--spawn-rate", "2", "--run-time", str(ROLLOUT_RUN_S), "--requests-per-user", "0",
             "--google-access-ratio", "0", "--default-retry-after", "1",
             "--stop-timeout", "180", "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(20)
        changed = time.monotonic()
        # A setting of both personas (llama.cpp's batch): a new pod template for each.
        apply(nc, chatbot_model(nc, mirror, batchSize=128), "chatbotmodel")

        def rolled() -> bool:
            current = {p: pods(nc, p) for p in ("office", "character")}
            return all(len(ps) == 1 and ps[0]["metadata"]["uid"] not in old_uids
                       for ps in current.values()) and all(
                len(ready_pods(nc, p)) == 1 for p in ("office", "character"))

        wait_for(rolled, timeout=300, interval=0.5, desc="both personas rolled")
        rollout_s = time.monotonic() - changed
        output, _ = load.communicate(timeout=ROLLOUT_RUN_S + 400)
        print(output[-3000:])
        # Its own check compares each replica's rows with that replica's counters: the old
        # pods are gone by the end, so it names them and leaves them out (this test adds
        # their final counters from their logs below).
        assert load.returncode == 0, output[-3000:]
        assert "MISMATCH" not in output, output[-3000:]
        for persona in ("office", "character"):
            assert re.search(rf"{persona}:\s+\S+: \d+ requests not reconciled: its counters "
                             "could not be read at the end", output), output[-3000:]
        after_pods = {p: ready_pods(nc, p) for p in ("office", "character")}
        alive = {p: [pod_performance(pod) for pod in pods] for p, pods in after_pods.items()}
        restarted = {name: n for name, n in restart_counts(nc, "office", "character").items()
                     if n}
        time.sleep(2)
    rows = read_rows(sorted(out.glob("*.csv")))
    assert rows, output[-2000:]
    statuses = Counter(r["status_code"] for r in rows)
    # Every question ended in an answer; only 429/503 on the way, each retried.
    requests = analysis.logical_requests(rows)
    unanswered = [a for a in requests if not a[-1]["is_final_success"]]
    assert not unanswered, [(a[-1]["user_id"], a[-1]["status_code"], a[-1]["error"][:100])
                            for a in unanswered]
    assert set(statuses) <= {200, 429, 503}, statuses
    # The CSV against the counters of every pod that served it, the terminated ones by the
    # final counters they logged.
    gone = {name: persona for name, (persona, _) in logs.followed.items()
            if name not in {p["metadata"]["name"] for ps in after_pods.values() for p in ps}}
    reconciled = {}
    for persona in ("office", "character"):
        finals = [logs.final_counters(name) for name, p in gone.items() if p == persona]
        assert all(finals), f"a terminated {persona} pod logged no final counters: {gone}"
        mine = [r for r in rows if r["test_type"] == persona]
        reconciled[persona] = analysis.reconcile_pods(mine, before[persona],
                                                      finals + alive[persona])
        assert reconciled[persona]["match"], (persona, reconciled[persona], _evidence(
            persona, mine, logs, zip(before_pods[persona], before[persona], strict=True),
            zip(after_pods[persona], alive[persona], strict=True), gone, restarted))
    # And against the history: one stored turn per answer, per user.
    for persona in ("office", "character"):
        answered = Counter(r["user_id"] for r in rows
                           if r["test_type"] == persona and r["is_final_success"])
        stored = _turns_in_mongo(nc, persona)
        assert stored == dict(answered), (persona, stored, dict(answered))
    ledger.record(ledger.FaultRow(
        "rollout of both personas under load (chatbot loadtest)", len(rows), 0,
        Counter({k: v for k, v in statuses.items() if k >= 500}), rollout_s,
        f"{sum(r['is_final_success'] for r in rows)} answers, {statuses.get(429, 0)}x429 and "
        f"{statuses.get(503, 0)}x503 retried; CSV = counters = MongoDB"))
    print(f"rollout took {rollout_s:.1f}s; statuses {dict(statuses)}; reconciled {reconciled}; "
          f"container restarts {restarted}")
