"""Two replicas of the character persona (real `chatbot serve` processes on the tiny model,
one history store) forward each conversation's turns to its owner: a client that
alternates between them, as a route does, gets every turn of a conversation from one
replica, whose KV cells hold its earlier turns; the same traffic with placement off (the
hop header: served where it lands) evaluates histories again. A replica that is gone is
skipped and its conversations answered by the other."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
import uuid

import httpx
import pytest

from chatbot.peers.forwarding import HOP_HEADER
from tests.support.ports import free_port
from tests.support.server import evaluated_at_turns

CHARACTER = {"character_name": "Mina", "greeting": "Hello!",
             "context": "Mina is a cheerful baker who loves to talk about bread."}
HOP = HOP_HEADER.decode()
CONVERSATIONS, TURNS = 6, 3


@pytest.fixture(scope="module")
def replicas(start_server, tmp_path_factory):
    history = tmp_path_factory.mktemp("affinity") / "history.sqlite3"
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    servers = [start_server("character", port=port, env={
        "CHATBOT_AFFINITY_SELF": url, "CHATBOT_AFFINITY_PEERS": json.dumps(urls),
        "CHATBOT_HISTORY_PATH": str(history), "CHATBOT_LOG_LEVEL": "warning",
        "CHATBOT_CHARACTER__GENERATION__MAX_TOKENS": "24"})
        for port, url in zip(ports, urls, strict=True)]
    yield servers
    for server in servers:
        server.stop()


def metric(server, name: str, **labels) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}\{{[^}}]*{re.escape(want)}[^}}]*\}} (\S+)$"
    return sum(float(m) for m in re.findall(pattern, text, re.M))


def kv_turns(servers, kv: str) -> float:
    return sum(metric(s, "chatbot_kv_turns_total", kv=kv) for s in servers)


def evaluated(servers) -> int:
    """Prompt tokens the replicas evaluated while turns waited (their prefills done)."""
    return sum(evaluated_at_turns(s.settled_performance()) for s in servers)


def run_traffic(servers, placed: bool) -> tuple[dict[str, set[str]], list[int]]:
    """CONVERSATIONS x TURNS, turn t of conversation c sent to replica (c + t) % 2; returns
    who served each conversation and the prompt tokens evaluated by each turn after the
    first (summed over the conversations)."""
    served: dict[str, set[str]] = {}
    per_turn = [0] * TURNS
    conversations = [str(uuid.uuid4()) for _ in range(CONVERSATIONS)]
    headers = {} if placed else {HOP: "test"}
    for turn in range(TURNS):
        for c, db_id in enumerate(conversations):
            before = evaluated(servers)
            body = {**CHARACTER, "db_id": db_id, "user_id": "affinity",
                    "input_data": f"I am guest {db_id[:8]}, turn {turn}: tell me about your "
                                  f"favourite bread and why the crust matters."}
            response = httpx.post(servers[(c + turn) % 2].url + "/Llama", json=body,
                                  headers=headers, timeout=120)
            assert response.status_code == 200, response.text
            assert isinstance(response.json(), str) and response.json().strip()
            served.setdefault(db_id, set()).add(response.headers["x-served-by"])
            per_turn[turn] += evaluated(servers) - before
    return served, per_turn


def test_each_conversation_stays_on_one_replica_and_evaluates_only_its_new_part(replicas):
    off_before = kv_turns(replicas, "evaluated")
    served_off, tokens_off = run_traffic(replicas, placed=False)
    off_evaluated = kv_turns(replicas, "evaluated") - off_before
    forwarded = sum(metric(s, "chatbot_affinity_requests_total", placement="forwarded")
                    for s in replicas)
    on_before = {kv: kv_turns(replicas, kv) for kv in ("local", "restored", "evaluated")}
    served_on, tokens_on = run_traffic(replicas, placed=True)
    on = {kv: kv_turns(replicas, kv) - n for kv, n in on_before.items()}
    print(f"\nprompt tokens evaluated per turn ({CONVERSATIONS} conversations): "
          f"affinity off {tokens_off}, on {tokens_on}; follow-up turns evaluated from "
          f"scratch: off {off_evaluated:.0f}, on {on['evaluated']:.0f} "
          f"(local {on['local']:.0f}, restored {on['restored']:.0f})")
    assert forwarded == 0  # the hop header: served where it landed
    assert all(len(who) == 2 for who in served_off.values())
    assert all(len(who) == 1 for who in served_on.values()), served_on
    assert len(set().union(*served_on.values())) == 2  # both replicas own conversations
    placements = {p: sum(metric(s, "chatbot_affinity_requests_total", placement=p)
                         for s in replicas) for p in ("forwarded", "local", "received")}
    # Each conversation landed on both replicas: at least one of its turns was forwarded.
    assert placements["forwarded"] + placements["local"] == CONVERSATIONS * TURNS
    assert placements["forwarded"] >= CONVERSATIONS
    # Received: every turn sent with the hop header, and every turn forwarded.
    assert placements["received"] == CONVERSATIONS * TURNS + placements["forwarded"]
    follow_ups = CONVERSATIONS * (TURNS - 1)
    assert on["evaluated"] == 0 and on["local"] + on["restored"] == follow_ups
    assert off_evaluated >= CONVERSATIONS  # at least every second turn landed elsewhere
    assert sum(tokens_on[1:]) < sum(tokens_off[1:])


def test_a_replica_that_is_gone_is_skipped_and_its_conversations_answered(
        replicas, start_server):
    # A third member that listens nowhere owns some conversations: they are served here.
    dead = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server("character", port=port, env={
        "CHATBOT_AFFINITY_SELF": url, "CHATBOT_AFFINITY_PEERS": json.dumps([url, dead]),
        "CHATBOT_CHARACTER__GENERATION__MAX_TOKENS": "8"})
    try:
        for _ in range(6):
            body = {**CHARACTER, "db_id": str(uuid.uuid4()), "user_id": "gone",
                    "input_data": "Hello there"}
            response = httpx.post(url + "/Llama", json=body, timeout=120)
            assert response.status_code == 200, response.text
        assert metric(server, "chatbot_affinity_requests_total",
                      placement="fallback_unreachable") >= 1
        assert metric(server, "chatbot_affinity_requests_total", placement="local") >= 1
    finally:
        server.stop()


def test_a_streamed_v1_answer_comes_from_the_sessions_owner_through_either_replica(replicas):
    body = {"model": "character", "stream": True, "max_tokens": 8,
            "messages": [{"role": "user", "content": "Say hello to the baker."}]}
    served = set()
    for server in replicas:
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                          headers={"X-Session-ID": "session-7"}, timeout=120) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
            served.add(response.headers["x-served-by"])
        assert events[-1] == "data: [DONE]" and len(events) > 2
    assert len(served) == 1


def test_an_owner_still_answering_when_the_forwarders_grace_ends_is_a_503_to_retry(
        start_server):
    """A replica stopping (scale-down) while it waits for a peer's answer: when its grace
    period ends, its client gets its 503 with Retry-After (and retries elsewhere), not the
    bare 500 of uvicorn's own cut-off. The owner here is a stand-in: a socket that takes the
    request and never answers, as an owner still generating a long answer does."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(16)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.extend(holder.accept()[0] for _ in iter(int, 1)),
                     daemon=True).start()
    owner = f"http://127.0.0.1:{holder.getsockname()[1]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server("character", port=port, env={
        "CHATBOT_AFFINITY_SELF": url, "CHATBOT_AFFINITY_PEERS": json.dumps([url, owner]),
        "CHATBOT_SHUTDOWN_GRACE_S": "2", "CHATBOT_CHARACTER__GENERATION__MAX_TOKENS": "8"})
    answers: list[httpx.Response] = []

    def ask(db_id: str) -> None:
        body = {**CHARACTER, "db_id": db_id, "user_id": "cut", "input_data": "Hello there"}
        answers.append(httpx.post(url + "/Llama", json=body, timeout=60))

    try:
        askers = [threading.Thread(target=ask, args=(str(uuid.uuid4()),)) for _ in range(6)]
        for asker in askers:
            asker.start()
        deadline = time.monotonic() + 60
        while len(held) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert held, "no conversation was forwarded to the stand-in owner"
        time.sleep(3)  # the ones this replica owns are answered meanwhile
        server.proc.send_signal(signal.SIGTERM)
        for asker in askers:
            asker.join(30)
    finally:
        server.stop()
        holder.close()
    cut = [a for a in answers if a.status_code != 200]
    assert len(answers) == 6 and cut, [a.status_code for a in answers]
    for answer in cut:
        assert answer.status_code == 503, (answer.status_code, answer.text)
        assert answer.json()["code"] == "SHUTTING_DOWN" and answer.headers["retry-after"]
