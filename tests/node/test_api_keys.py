"""API keys and budgets on the real node, through the route on port 8001, office on 2 replicas.

The chart and a CPU ChatbotModel with `spec.apiKeys` naming a Secret of four keys: `web`
(local + v1, large budgets), `gpt-only` (gpt routes only), `small` (v1, a small token
budget) and `other` (v1). The budgets are shared by the replicas through the release's
MongoDB pod (FerretDB). The release is installed for this module and uninstalled after it
with the Secret, as the `installed` fixture does, so later node tests find the namespace
empty.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import urllib.request
from collections import defaultdict

import pytest

from chatbot.peers.forwarding import HOP_HEADER
from tests.kube.helpers import wait_for
from tests.node import release
from tests.node.release import NS, apply, chatbot_model, get, post, ready_pods

pytestmark = pytest.mark.node

SECRET = "chatbot-api-keys"
WEB = "sk-web-node-0123456789abcdef"
GPT_ONLY = "sk-gpt-node-0123456789abcdef"
SMALL = "sk-small-node-0123456789abcd"
OTHER = "sk-other-node-0123456789abcd"
ROTATED = "sk-web-rotated-0123456789abc"
HOP = HOP_HEADER.decode()
SMALL_TPM = 1500
WEB_TPM = 1_000_000
# The documented bound (docs/configuration.md) for a changed Secret to reach the pods: the
# kubelet's sync of the mount (60 s by default, plus jitter and its cache) + the service's
# 5 s reload interval.
ROTATION_BOUND_S = 90
# Short answers (the prompt's ~30 tokens + 2): a key passes its token budget by at most the
# answers in flight when it is reached (2 here, ~64 tokens, 4% of SMALL_TPM).
V1 = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 2,
      "temperature": 0}
OFFICE = {"input_data": "Write one short sentence about the sea.", "google_access": False}


def _entry(name, key, routes, rpm=10_000, tpm=WEB_TPM):
    return {"name": name, "key": key, "routes": routes,
            "budgets": {"requestsPerMinute": rpm, "tokensPerMinute": tpm}}


KEYS = [_entry("web", WEB, ["local", "v1"]), _entry("gpt-only", GPT_ONLY, ["gpt"]),
        _entry("small", SMALL, ["v1"], tpm=SMALL_TPM), _entry("other", OTHER, ["v1"])]


def _secret(keys) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NS},
            "type": "Opaque", "stringData": {"keys.json": json.dumps({"keys": keys})}}


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(node_cluster, mirror):
    nc = node_cluster
    started = time.monotonic()
    model = chatbot_model(nc, mirror)
    model["spec"]["apiKeys"] = {"secretName": SECRET}
    model["spec"]["office"]["replicas"] = 2
    try:
        release.install(nc, mirror, model=model, before_model=[_secret(KEYS)])
        wait_for(lambda: len(ready_pods(nc, "office")) == 2, timeout=300, interval=1,
                 desc="2 office replicas Ready")
        print(f"[node] keyed release Ready in {time.monotonic() - started:.0f}s",
              file=sys.stderr, flush=True)
        yield nc
    finally:
        release.uninstall(nc)
        # Not the chart's: the journey's "nothing left in the namespace" would find it.
        release.kubectl(nc, "delete", "secret", SECRET, "-n", NS, "--ignore-not-found",
                        check=False)


def _condition(nc, kind: str) -> dict:
    conds = (release.cbm(nc).get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == kind), {})


def _pods(nc) -> list[dict]:
    return [p for persona in ("office", "character") for p in ready_pods(nc, persona)]


def _pod_url(pod: dict, path: str) -> str:
    return f"http://{pod['status']['podIP']}:8080{path}"


def _pod_status(pod: dict, key: str) -> int:
    """What this pod answers to `key`. The hop header makes the pod serve the request itself:
    without it, the pod would forward the conversation to its owner replica, and only the
    owner's keys would be checked."""
    return post(_pod_url(pod, "/v1/chat/completions"), {**V1, "max_tokens": 1},
                headers={**_bearer(key), HOP: "test"}, timeout=60)[0]


def _tokens_charged(pod: dict, name: str) -> float:
    """The pod's own count of tokens charged to key `name` (its /metrics)."""
    text = get(_pod_url(pod, "/metrics"))[2].decode()
    found = re.search(rf'^chatbot_api_key_tokens_total\{{key="{name}",persona="\w+"\}} (\S+)$',
                      text, re.M)
    return float(found.group(1)) if found else 0.0


def test_no_key_a_wrong_key_a_key_for_another_route_and_a_valid_key(keyed):
    url = keyed.route("/office/Llama")
    answers = [post(url, OFFICE, headers=h) for h in (
        {}, _bearer("sk-wrong-0123456789abcdef"), _bearer(GPT_ONLY), _bearer(WEB))]
    assert [status for status, _, _ in answers] == [401, 401, 403, 200]
    assert [json.loads(body).get("code") for _, _, body in answers[:3]] == [
        "API_KEY_REQUIRED", "API_KEY_INVALID", "ROUTE_NOT_ALLOWED"]
    assert answers[0][1]["WWW-Authenticate"] == "Bearer"
    assert get(keyed.route("/office/healthz"))[0] == 200  # probes stay open
    wait_for(lambda: _condition(keyed, "ApiKeysValid").get("status") == "True", timeout=60,
             desc="ApiKeysValid True")


def test_a_key_over_its_token_budget_is_refused_until_the_window_ends_another_is_answered(
        keyed):
    """`small` asks from two threads until refused; `web` asks throughout. The tokens admitted
    for `small` in the minute it was refused, summed over both replicas, are its budget within
    10%, and each replica took part (its own /metrics)."""
    url = keyed.route("/office/v1/chat/completions")
    # Started half a minute into a window, the refusal comes late in it (~10 s on), so that
    # Retry-After is short. A run that crosses into the next window (a loaded machine)
    # still compares the right tokens: those admitted in the window of the refusal, counted
    # from its start.
    if time.time() % 60 < 30:
        time.sleep(30 - time.time() % 60)
    admitted: dict[str, dict[int, int]] = {"small": defaultdict(int), "web": defaultdict(int)}
    refusals: list[tuple[int, int, dict]] = []
    web_statuses: list[int] = []
    done = threading.Event()

    def user(name: str, key: str) -> None:
        while not done.is_set():
            status, headers, body = post(url, V1, headers=_bearer(key))
            now = time.time()
            if status == 200:
                admitted[name][int(now // 60)] += json.loads(body)["usage"]["total_tokens"]
            if name == "web":
                web_statuses.append(status)
            elif status == 429:
                refusals.append((int(now // 60), int(headers["Retry-After"]), json.loads(body)))
                done.set()
            elif status != 200:
                done.set()
                raise AssertionError(f"small: {status} {body[:300]!r}")

    threads = [threading.Thread(target=user, args=("small", SMALL)) for _ in range(2)]
    threads.append(threading.Thread(target=user, args=("web", WEB)))
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    took = time.monotonic() - started
    done.set()
    assert refusals, f"small was never refused; admitted {dict(admitted['small'])}"
    window, retry_after, body = refusals[0]
    per_pod = {p["metadata"]["name"]: _tokens_charged(p, "small")
               for p in ready_pods(keyed, "office")}
    small, web = admitted["small"][window], admitted["web"][window]
    print(f"\n[api keys] small: {small} tokens admitted in the minute against its budget of "
          f"{SMALL_TPM} ({small / SMALL_TPM:.0%}) across the office replicas "
          f"{ {k: int(v) for k, v in per_pod.items()} }, refused after {took:.1f}s with "
          f"Retry-After {retry_after}s; web: {web} tokens in that minute against "
          f"{WEB_TPM} ({web / WEB_TPM:.2%}), {len(web_statuses)} requests, all answered",
          file=sys.stderr, flush=True)
    assert body["code"] == "RATE_LIMITED" and body["budget"]["name"] == "tokensPerMinute"
    assert abs(small - SMALL_TPM) <= 0.10 * SMALL_TPM
    assert len(per_pod) == 2 and all(tokens > 0 for tokens in per_pod.values())
    assert 1 <= retry_after <= 60
    assert web_statuses and set(web_statuses) == {200}
    # Refused until the window ends, answered after it.
    assert post(url, V1, headers=_bearer(SMALL))[0] == 429 or int(time.time() // 60) > window
    time.sleep(retry_after)
    assert post(url, V1, headers=_bearer(SMALL))[0] == 200


def _stream(url: str, body: dict, key: str) -> tuple[int, float, float, float]:
    """(status, when sent, when its response started, when it ended) of a streamed answer,
    on the monotonic clock: the status line comes once the request holds a queue slot."""
    req = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(),
                                 method="POST", headers={"Content-Type": "application/json",
                                                         **_bearer(key)})
    sent = time.monotonic()
    with urllib.request.urlopen(req, timeout=300) as r:
        admitted = time.monotonic()
        text = r.read().decode()
        assert text.rstrip().endswith("data: [DONE]"), text[-300:]
        return r.status, sent, admitted, time.monotonic()


def test_one_key_with_8_parallel_requests_cannot_keep_another_keys_request_waiting(keyed):
    """character (2 slots, 1 replica): `web` sends 8 at once, `other` one request a moment
    later. FIFO would keep it behind 3 rounds of web's answers; the fair queue gives it the
    next free slot, so it waits at most the answer in progress."""
    url = keyed.route("/character/v1/chat/completions")
    body = {"messages": [{"role": "user", "content": "Count from 1 to 100, one number a "
                                                     "line."}],
            "max_tokens": 48, "temperature": 0}
    flood: list[tuple[int, float, float, float]] = []

    def web() -> None:
        flood.append(_stream(url, body, WEB))

    threads = [threading.Thread(target=web) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the flood holds both slots and queues the rest
    status, sent, admitted, ended = _stream(url, body, OTHER)
    for t in threads:
        t.join()
    waited = admitted - sent
    one_answer = sorted(end - start for _, _, start, end in flood)[len(flood) // 2]
    overtaken = sum(start > admitted for _, _, start, _ in flood)
    print(f"\n[api keys] fair queue: one answer {one_answer:.1f}s; other's single request "
          f"waited {waited:.1f}s for a slot (answered after {ended - sent:.1f}s) and went "
          f"ahead of {overtaken} of web's 8 (FIFO: none; web's last started after "
          f"{max(start for _, _, start, _ in flood) - sent:.1f}s)", file=sys.stderr, flush=True)
    assert status == 200 and {s for s, _, _, _ in flood} == {200}
    assert waited <= 1.5 * one_answer + 1.0  # at most the answer in progress
    assert overtaken >= 3


def test_a_rotated_key_takes_effect_within_the_documented_time_without_a_restart(keyed):
    nc = keyed
    pods = _pods(nc)
    assert len(pods) == 3
    uids = sorted(p["metadata"]["uid"] for p in pods)
    before = release.restart_counts(nc, "office", "character")
    keys = [_entry("web", ROTATED, ["local", "v1"]), *KEYS[1:]]
    started = time.monotonic()
    apply(nc, _secret(keys), "api-keys")

    def rotated() -> bool:
        return all(_pod_status(p, WEB) == 401 and _pod_status(p, ROTATED) == 200 for p in pods)

    wait_for(rotated, timeout=ROTATION_BOUND_S, interval=1, desc="the rotated key in force "
             "on every pod")
    took = time.monotonic() - started
    print(f"\n[api keys] rotation in force on all 3 pods after {took:.0f}s "
          f"(bound {ROTATION_BOUND_S}s)", file=sys.stderr, flush=True)
    status, headers, body = post(nc.route("/office/Llama"), OFFICE, headers=_bearer(ROTATED))
    assert status == 200, (status, headers.get("X-Served-By"), body[:300])
    assert release.restart_counts(nc, "office", "character") == before
    assert sorted(p["metadata"]["uid"] for p in _pods(nc)) == uids


def test_a_malformed_secret_is_refused_with_a_condition_naming_the_entries(keyed):
    nc = keyed
    pods = _pods(nc)
    # The key of `web` in force now (the rotation test's, when it ran).
    good = ROTATED if _pod_status(pods[0], ROTATED) == 200 else WEB
    bad = [_entry("web", good, ["local", "v1"]),
           {"name": "nobudget", "key": "sk-nobudget-0123456789", "routes": ["v1"]},
           _entry("negative", "sk-negative-0123456789", ["v1"], tpm=-5),
           _entry("web", "sk-duplicate-0123456789", ["v1"])]
    apply(nc, _secret(bad), "api-keys")
    cond = wait_for(lambda: (c := _condition(nc, "ApiKeysValid")).get("status") == "False"
                    and c, timeout=ROTATION_BOUND_S + 30, interval=1,
                    desc="ApiKeysValid False")
    print(f"\n[api keys] {cond['reason']}: {cond['message']}", file=sys.stderr, flush=True)
    assert cond["reason"] == "InvalidApiKeys"
    assert "keys[1] (nobudget): budgets: is required" in cond["message"]
    assert "keys[2] (negative): budgets.tokensPerMinute" in cond["message"]
    assert "keys[3] (web): duplicate name (also keys[0])" in cond["message"]
    assert release.phase(nc) == "Ready"  # a warning: the pods serve on
    # The last good keys: `web`'s key, `small` and `other` (not in the refused file) too.
    assert all(_pod_status(p, key) == 200 for p in _pods(nc) for key in (good, OTHER))
    assert all(_pod_status(p, "sk-nobudget-0123456789") == 401 for p in _pods(nc))
