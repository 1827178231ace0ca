"""A replica that drains (SIGTERM) hands its conversations' KV cells to the replica that owns
them next (real `chatbot serve` processes on the tiny model, each on its own loopback
address, the handoff on its own port): their next turn there restores them instead of
evaluating the history again. A receiver whose model settings differ refuses them, and
that conversation's next turn is evaluated: both counted in /metrics; a crafted or oversized
body is refused, and the public port has no handoff route."""

from __future__ import annotations

import json
import signal
import uuid

import httpx
import pytest

from chatbot.core.affinity import HashRing
from tests.service.test_affinity import CHARACTER, metric
from tests.support.ports import free_port
from tests.support.server import evaluated_at_turns

TURN = "tell me about your favourite bread and why the crust matters so much to you."


def pair(start_server, tmp_path, hosts: tuple[str, str], env_of=lambda i: {}):
    """Two replicas on `hosts` (127.0.0.x), one history store, the handoff port P on each."""
    history = tmp_path / "history.sqlite3"
    handoff = free_port()
    ports = [free_port("0.0.0.0"), free_port("0.0.0.0")]
    urls = [f"http://{host}:{port}" for host, port in zip(hosts, ports, strict=True)]
    servers = [start_server("character", "--host", "0.0.0.0", port=port, env={
        "CHATBOT_AFFINITY_SELF": url, "CHATBOT_AFFINITY_PEERS": json.dumps(urls),
        "CHATBOT_KV_HANDOFF_PORT": str(handoff), "CHATBOT_HISTORY_PATH": str(history),
        "CHATBOT_CHARACTER__GENERATION__MAX_TOKENS": "24", **env_of(i)})
        for i, (port, url) in enumerate(zip(ports, urls, strict=True))]
    return servers, urls


def owned_by(urls: list[str], member: str, n: int) -> list[str]:
    """`n` conversation ids whose owner is `member`."""
    ring, found = HashRing(urls), []
    while len(found) < n:
        db_id = str(uuid.uuid4())
        if ring.owner(f"db:{db_id}") == member:
            found.append(db_id)
    return found


def turn(server, db_id: str, history: bool) -> str:
    body = {**CHARACTER, "db_id": db_id, "user_id": "handoff",
            "input_data": ("And after that? " if history else f"I am guest {db_id[:8]}: ") + TURN}
    response = httpx.post(server.url + "/Llama", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def evaluated(server) -> int:
    """Prompt tokens the server evaluated while turns waited (its prefills done)."""
    return evaluated_at_turns(server.settled_performance())


def restored_tokens(server) -> int:
    return server.performance()["engine_prompt_tokens_restored"]


def drain(server) -> None:
    server.stop_signal = signal.SIGTERM
    server.stop()
    assert "KV handoff" in server.log.read_text(errors="replace")


def test_a_draining_replicas_conversations_restore_on_the_next_owner(start_server, tmp_path):
    (a, b), urls = pair(start_server, tmp_path, ("127.0.0.2", "127.0.0.3"))
    try:
        moving = owned_by(urls, urls[0], 2)
        for db_id in moving:  # through b, as a route would: forwarded to their owner a
            turn(b, db_id, history=False)
        drain(a)
        assert metric(b, "chatbot_kv_transfers_total", result="received") == 2
        assert metric(b, "chatbot_kv_transfer_bytes_total", direction="received") > 0
        before = {kv: metric(b, "chatbot_kv_turns_total", kv=kv)
                  for kv in ("handed_over", "evaluated")}
        tokens, restored = [], []
        for db_id in moving:
            start, start_restored = evaluated(b), restored_tokens(b)
            turn(b, db_id, history=True)
            tokens.append(evaluated(b) - start)
            restored.append(restored_tokens(b) - start_restored)
        after = {kv: metric(b, "chatbot_kv_turns_total", kv=kv) - before[kv]
                 for kv in ("handed_over", "evaluated")}
        print(f"\nthe next turn after the handoff: prompt tokens evaluated {tokens}, "
              f"restored {restored}")
        assert after == {"handed_over": 2, "evaluated": 0}
        # Only the new part: the question and the last answer, far less than the history.
        # (the history is about 390 tokens; the new part about 100 with a 24-token answer)
        assert all(0 < t < 160 for t in tokens) and all(r >= 200 for r in restored), \
            (tokens, restored)
    finally:
        a.stop()
        b.stop()


def test_a_receiver_with_other_model_settings_refuses_the_cells(start_server, tmp_path):
    (c, d), urls = pair(start_server, tmp_path, ("127.0.0.4", "127.0.0.5"),
                        env_of=lambda i: {"CHATBOT_CHARACTER__MODEL__N_CTX": "1024"}
                        if i == 0 else {})
    try:
        db_id = owned_by(urls, urls[0], 1)[0]
        turn(d, db_id, history=False)
        drain(c)
        assert metric(d, "chatbot_kv_transfers_total", result="refused_mismatch") == 1
        assert metric(d, "chatbot_kv_transfers_total", result="received") == 0
        before = metric(d, "chatbot_kv_turns_total", kv="evaluated")
        start = evaluated(d)
        turn(d, db_id, history=True)
        tokens = evaluated(d) - start
        print(f"\nprompt tokens evaluated by the next turn, handoff refused: {tokens}")
        assert metric(d, "chatbot_kv_turns_total", kv="evaluated") == before + 1
        assert tokens >= 200

        # The handoff port takes transfers only, bounded; the public port has no such route.
        handoff = urls[1].rsplit(":", 1)[0] + ":" + d.env["CHATBOT_KV_HANDOFF_PORT"]
        garbage = httpx.post(handoff + "/kv/character", content=b"CBKV1\n" + b"\xff" * 64)
        assert garbage.status_code == 422
        huge = httpx.post(handoff + "/kv/character", content=b"\0" * (64 << 20))
        assert huge.status_code == 413
        assert metric(d, "chatbot_kv_transfers_total", result="refused_invalid") == 2
        assert httpx.post(d.url + "/kv/character", content=b"x").status_code == 404
        assert turn(d, db_id, history=True)  # the engine still answers
    finally:
        c.stop()
        d.stop()


@pytest.fixture
def tmp_path(tmp_path_factory):
    return tmp_path_factory.mktemp("handoff")
