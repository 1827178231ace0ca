"""API keys and budgets on the real node, through the route on port 8001, office on 2 replicas.

The chart and a CPU ChatbotModel with `spec.apiKeys` naming a Secret of three keys: `web`
(local + v1, large budgets), `gpt-only` (gpt routes only), `small` (v1, a small token
budget). The budgets are shared by the replicas through the release's MongoDB pod (FerretDB).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict

import pytest

from tests.kube.helpers import wait_for
from tests.node import release
from tests.node.release import NS, apply, chatbot_model, get, post, ready_pods

pytestmark = pytest.mark.node

SECRET = "chatbot-api-keys"
WEB = "sk-web-node-0123456789abcdef"
GPT_ONLY = "sk-gpt-node-0123456789abcdef"
SMALL = "sk-small-node-0123456789abcd"
ROTATED = "sk-web-rotated-0123456789abc"
SMALL_TPM = 1500
# The documented bound for a changed Secret to reach the pods: the kubelet's sync of the
# mount (60 s by default, plus jitter and its cache) + the service's 5 s reload interval.
ROTATION_BOUND_S = 90
V1 = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
OFFICE = {"input_data": "Write one short sentence about the sea.", "google_access": False}


def _entry(name, key, routes, rpm=10_000, tpm=1_000_000):
    return {"name": name, "key": key, "routes": routes,
            "budgets": {"requestsPerMinute": rpm, "tokensPerMinute": tpm}}


OTHER = "sk-other-node-0123456789abcd"
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
    release.helm(nc, "install", release.RELEASE, str(release.CHART), "-n", NS,
                 "--create-namespace", "--wait", "--timeout", "5m",
                 values=release.helm_values(nc, mirror), timeout=400)
    apply(nc, _secret(KEYS), "api-keys")
    model = chatbot_model(nc, mirror)
    model["spec"]["apiKeys"] = {"secretName": SECRET}
    model["spec"]["office"]["replicas"] = 2
    apply(nc, model, "chatbotmodel")
    wait_for(lambda: release.phase(nc) == "Ready", timeout=600, interval=1,
             desc="ChatbotModel Ready")
    wait_for(lambda: len(ready_pods(nc, "office")) == 2, timeout=300, interval=1,
             desc="2 office replicas Ready")
    for persona in ("office", "character"):
        wait_for(lambda p=persona: get(nc.route(f"/{p}/readyz"))[0] == 200, timeout=120,
                 interval=1, desc=f"/{persona}/readyz 200 through the route")
    print(f"[node] keyed release Ready in {time.monotonic() - started:.0f}s", file=sys.stderr,
          flush=True)
    try:
        yield nc
    finally:
        release.uninstall(nc)


def _condition(nc, kind: str) -> dict:
    conds = (release.cbm(nc).get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == kind), {})


def test_no_key_a_wrong_key_a_key_for_another_route_and_a_valid_key(keyed):
    url = keyed.route("/office/Llama")
    statuses = [post(url, OFFICE, headers=h)[0] for h in (
        {}, _bearer("sk-wrong-0123456789abcdef"), _bearer(GPT_ONLY), _bearer(WEB))]
    assert statuses == [401, 401, 403, 200]
    status, headers, _ = post(url, OFFICE)
    assert headers["WWW-Authenticate"] == "Bearer"
    assert get(keyed.route("/office/healthz"))[0] == 200  # probes stay open
    wait_for(lambda: _condition(keyed, "ApiKeysValid").get("status") == "True", timeout=60,
             desc="ApiKeysValid True")


def test_a_key_over_its_token_budget_is_refused_until_the_window_ends_another_is_answered(
        keyed):
    """`small` asks from two threads until refused; `web` asks throughout. The tokens admitted
    for `small` in that minute, summed over both replicas, are its budget within 10%."""
    url = keyed.route("/office/v1/chat/completions")
    # Start at the beginning of a window, so that the run stays inside one.
    time.sleep((60 - time.time() % 60) % 60 + 0.5)
    window = int(time.time() // 60)
    admitted: dict[int, int] = defaultdict(int)
    refusals: list[tuple[int, dict]] = []
    web_statuses: list[int] = []
    done = threading.Event()

    def small_user() -> None:
        while not done.is_set():
            status, headers, body = post(url, V1, headers=_bearer(SMALL))
            if status == 200:
                admitted[int(time.time() // 60)] += json.loads(body)["usage"]["total_tokens"]
            elif status == 429:
                refusals.append((int(headers["Retry-After"]), json.loads(body)))
                done.set()

    def web_user() -> None:
        while not done.is_set():
            web_statuses.append(post(url, V1, headers=_bearer(WEB))[0])

    threads = [threading.Thread(target=small_user) for _ in range(2)]
    threads.append(threading.Thread(target=web_user))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert refusals, f"never refused; admitted {dict(admitted)}"
    retry_after, body = refusals[0]
    assert body["code"] == "RATE_LIMITED" and body["budget"]["name"] == "tokensPerMinute"
    in_window = admitted[window]
    print(f"\n[api keys] small: {in_window} tokens admitted in the minute against a budget of "
          f"{SMALL_TPM} ({in_window / SMALL_TPM:.0%}); refused with Retry-After {retry_after}s",
          file=sys.stderr, flush=True)
    assert abs(in_window - SMALL_TPM) <= 0.10 * SMALL_TPM
    assert web_statuses and set(web_statuses) == {200}
    time.sleep(retry_after)
    assert post(url, V1, headers=_bearer(SMALL))[0] == 200


def test_one_key_with_8_parallel_requests_cannot_keep_another_keys_request_waiting(keyed):
    """character (2 slots, 1 replica): `web` sends 8 at once, `other` one request a moment
    later. FIFO would keep it behind 3 rounds of web's answers; the fair queue gives it the
    next free slot, so it waits at most one answer."""
    url = keyed.route("/character/v1/chat/completions")
    body = {**V1, "max_tokens": 48}

    def ask(key: str, out: list) -> None:
        started = time.monotonic()
        status = post(url, body, headers=_bearer(key))[0]
        out.append((status, time.monotonic() - started))

    flood: list = []
    threads = [threading.Thread(target=ask, args=(WEB, flood)) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # the flood holds both slots and queues the rest
    single: list = []
    ask(OTHER, single)
    for t in threads:
        t.join()
    times = sorted(seconds for _, seconds in flood)
    one_answer = times[1]  # the slower of the two that never waited
    status, waited = single[0]
    print(f"\n[api keys] fair queue: one answer {one_answer:.1f}s, web's flood done after "
          f"{times[-1]:.1f}s, other's single request {waited:.1f}s", file=sys.stderr, flush=True)
    assert status == 200 and {s for s, _ in flood} == {200}
    assert waited <= 2 * one_answer + 1.0  # at most one answer's wait, then its own answer
    assert waited < times[-1]


def _pod_status(pod: dict, key: str) -> int:
    url = f"http://{pod['status']['podIP']}:8080/v1/chat/completions"
    return post(url, {**V1, "max_tokens": 1}, headers=_bearer(key), timeout=60)[0]


def _pods(nc) -> list[dict]:
    return [p for persona in ("office", "character") for p in ready_pods(nc, persona)]


def test_a_rotated_key_takes_effect_within_the_documented_time_without_a_restart(keyed):
    nc = keyed
    before = release.restart_counts(nc, "office", "character")
    keys = [_entry("web", ROTATED, ["local", "v1"]), *KEYS[1:]]
    started = time.monotonic()
    apply(nc, _secret(keys), "api-keys")
    pods = _pods(nc)
    assert len(pods) == 3

    def rotated() -> bool:
        return all(_pod_status(p, WEB) == 401 and _pod_status(p, ROTATED) == 200 for p in pods)

    wait_for(rotated, timeout=ROTATION_BOUND_S, interval=1, desc="the rotated key in force "
             "on every pod")
    took = time.monotonic() - started
    print(f"\n[api keys] rotation in force on all 3 pods after {took:.0f}s "
          f"(bound {ROTATION_BOUND_S}s)", file=sys.stderr, flush=True)
    assert release.restart_counts(nc, "office", "character") == before


def test_a_malformed_secret_is_refused_with_a_condition_naming_the_entries(keyed):
    nc = keyed
    bad = [_entry("web", ROTATED, ["local", "v1"]),
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
    assert all(_pod_status(p, ROTATED) == 200 for p in _pods(nc))  # the last good keys
