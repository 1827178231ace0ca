"""Conversation memory in MongoDB through the real service: `chatbot serve` with MONGO_URL
pointing at FerretDB v1 (SQLite backend, see tests/support/ferretdb.py), over real HTTP.

What the prompt carries is read at a tiny real OpenAI-compatible upstream
(tests/service/upstreams.py) that the GPT route sends its messages to.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import httpx
from pymongo import MongoClient

from tests.service.upstreams import FailingUpstream, RecordingUpstream
from tests.support import free_port

CHAR = {"character_name": "Rachel", "greeting": "Hello!", "context": "A shy student."}


def _mongo_env(url: str, database: str, **extra: str) -> dict[str, str]:
    return {"MONGO_URL": url, "MONGO_DATABASE": database, "CHATBOT_SEARCH": "none",
            "CHATBOT_MONGO_TIMEOUT_S": "0.5", **extra}


def _document(url: str, database: str, collection: str, db_id: str) -> dict | None:
    with MongoClient(url, serverSelectionTimeoutMS=5000) as client:
        return client[database][collection].find_one({"id": db_id}, {"_id": 0})


def _metric(server, persona: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/{persona}/metrics", timeout=10).text
    want = {"persona": persona, **labels}
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == want:
            return float(match.group(2))
    raise AssertionError(f"{name}{want} not in /metrics")


def _wait_history(server, persona: str, field: str, value, timeout: float) -> dict:
    """/readyz once its `history.<field>` is `value` (fails with the last body if never)."""
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(f"{server.url}/{persona}/readyz", timeout=10).json()
        if body["history"][field] == value:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def _wait_history_state(server, persona: str, state: str, timeout: float = 20) -> dict:
    return _wait_history(server, persona, "state", state, timeout)


def test_a_multi_turn_conversation_replays_earlier_turns_from_mongodb(start_server, ferretdb):
    database = f"chat_{uuid.uuid4().hex[:8]}"
    ref = {"db_id": str(uuid.uuid4()), "user_id": "mongo-user"}
    with RecordingUpstream() as upstream:
        server = start_server(env=_mongo_env(ferretdb.url, database, OPENAI_API_KEY="k",
                                             OPENAI_BASE_URL=upstream.url))
        with server.client() as http:
            llama = [http.post("/office/Llama", json={"input_data": f"질문 {i}", **ref})
                     for i in range(1, 4)]
            gpt = http.post("/office/gpt4.1", json={"input_data": "질문 4", **ref})
            other = http.post("/office/Llama", json={"input_data": "다른 사용자",
                                                     "db_id": ref["db_id"], "user_id": "other"})
        server.stop()
    assert [r.status_code for r in [*llama, gpt, other]] == [200] * 5
    assert [r.headers["x-history-turns"] for r in [*llama, gpt]] == ["0", "1", "2", "3"]
    assert other.headers["x-history-turns"] == "0"  # per-user collections
    sent = upstream.messages()[1:]
    questions = [m["content"] for m in sent[0::2]]
    # Earlier questions replay as asked; the new one carries the time behind it.
    assert questions[:3] == ["질문 1", "질문 2", "질문 3"]
    assert questions[3].startswith("질문 4\n\n참고 정보")
    assert [m["content"] for m in sent[1::2]] == [r.json() for r in llama]

    doc = _document(ferretdb.url, database, "office_log_mongo-user", ref["db_id"])
    assert [t["index"] for t in doc["value"]] == [1, 2, 3, 4]
    assert [t["output_data"] for t in doc["value"]] == [*(r.json() for r in llama), gpt.json()]
    assert _document(ferretdb.url, database, "office_log_other", ref["db_id"])["value"][0][
        "input_data"] == "다른 사용자"


def test_two_concurrent_turns_of_one_conversation_both_land(start_server, ferretdb):
    database = f"chat_{uuid.uuid4().hex[:8]}"
    db_id = str(uuid.uuid4())
    server = start_server(env=_mongo_env(ferretdb.url, database))

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            return await asyncio.gather(*(
                http.post("/character/Llama", json={**CHAR, "input_data": f"동시 {i}",
                                                    "db_id": db_id, "user_id": "racer"})
                for i in range(2)))

    responses = asyncio.run(both())
    server.stop()
    assert [r.status_code for r in responses] == [200, 200]
    doc = _document(ferretdb.url, database, "character_log_racer", db_id)
    assert sorted(t["index"] for t in doc["value"]) == [1, 2]
    assert sorted(t["input_data"] for t in doc["value"]) == ["동시 0", "동시 1"]


def _wait_pending(server, persona: str, pending: int, timeout: float = 30) -> dict:
    return _wait_history(server, persona, "pending", pending, timeout)


def test_mongodb_outage_answers_from_the_journal_and_writes_it_once_back(start_server,
                                                                          fresh_ferretdb):
    database = "outage"
    ref = {"db_id": str(uuid.uuid4()), "user_id": "outage-user"}
    server = start_server(env=_mongo_env(fresh_ferretdb.url, database))
    _wait_history_state(server, "office", "ok")
    with server.client() as http:
        assert http.post("/office/Llama", json={"input_data": "before", **ref}).status_code == 200

        fresh_ferretdb.kill()
        during = [http.post("/office/Llama", json={"input_data": f"during {i}", **ref})
                  for i in (1, 2)]
        # The journal replays the turns it holds: the second answer saw the first.
        assert [r.status_code for r in during] == [200, 200]
        assert [r.headers["x-history-turns"] for r in during] == ["0", "1"]
        assert "x-history-kept" not in during[1].headers
        ready = _wait_history_state(server, "office", "degraded")
        assert http.get("/office/readyz").status_code == 200  # the model still answers
        assert ready["history"]["pending"] == 2 and ready["history"]["journal"]["state"] == "ok"
        assert ready["history"]["failures"]["read"] >= 1
        assert _metric(server, "office", "chatbot_history_failures_total", operation="read") >= 1
        assert _metric(server, "office", "chatbot_history_pending") == 2
        assert _metric(server, "office", "chatbot_history_journaled_total") == 2
        assert _metric(server, "office", "chatbot_history_store_degraded") == 1

        fresh_ferretdb.start()  # same port, same data; the service is not restarted
        _wait_history_state(server, "office", "ok")
        after = http.post("/office/Llama", json={"input_data": "after", **ref})
        _wait_pending(server, "office", 0)
        replayed = _metric(server, "office", "chatbot_history_replayed_total")
    server.stop()
    assert after.status_code == 200 and after.headers["x-history-turns"] == "3"
    assert replayed >= 2
    doc = _document(fresh_ferretdb.url, database, "office_log_outage-user", ref["db_id"])
    assert [t["input_data"] for t in doc["value"]] == ["before", "during 1", "during 2",
                                                       "after"]
    assert [t["index"] for t in doc["value"]] == [1, 2, 3, 4]
    stamps = [t["timestamp"] for t in doc["value"]]
    assert stamps == sorted(stamps)  # answered-at times, not written-at


def test_turns_pending_at_a_graceful_restart_are_written_by_the_next_start(
        start_server, fresh_ferretdb, tmp_path):
    """The journal lives on the pod's volume: a restarted service replays it, once."""
    database = "restart"
    ref = {"db_id": str(uuid.uuid4()), "user_id": "restart-user"}
    env = _mongo_env(fresh_ferretdb.url, database,
                     CHATBOT_HISTORY_JOURNAL_PATH=str(tmp_path / "journal.jsonl"),
                     CHATBOT_HISTORY_JOURNAL_FLUSH_S="0.5")
    first = start_server(env=env)
    _wait_history_state(first, "character", "ok")
    fresh_ferretdb.kill()
    with first.client() as http:
        answered = [http.post("/character/Llama", json={**CHAR, "input_data": f"turn {i}",
                                                        **ref}) for i in (1, 2, 3)]
    _wait_pending(first, "character", 3)
    first.stop()  # graceful; MongoDB is still away, so the turns stay in the journal
    assert [r.status_code for r in answered] == [200, 200, 200]
    assert "3 turns still pending at exit" in first.log.read_text()

    fresh_ferretdb.start()
    second = start_server(env=env)
    _wait_pending(second, "character", 0)
    second.stop()
    doc = _document(fresh_ferretdb.url, database, "character_log_restart-user", ref["db_id"])
    assert [(t["index"], t["input_data"]) for t in doc["value"]] == [
        (1, "turn 1"), (2, "turn 2"), (3, "turn 3")]
    assert [t["output_data"] for t in doc["value"]] == [r.json() for r in answered]


def test_a_journal_on_a_full_volume_fails_loudly_and_answers_go_on(start_server):
    """/dev/full answers every write with ENOSPC, as a full volume does."""
    server = start_server(env=_mongo_env(f"mongodb://127.0.0.1:{free_port()}/", "down",
                                         CHATBOT_HISTORY_JOURNAL_PATH="/dev/full"))
    ready = _wait_history_state(server, "office", "degraded")
    with server.client() as http:
        r = http.post("/office/Llama", json={"input_data": "hi", "db_id": str(uuid.uuid4()),
                                             "user_id": "u"})
    log = server.output()
    server.stop()
    assert ready["status"] == "ready"
    assert ready["history"]["journal"]["state"] == "failed"
    assert "No space left" in ready["history"]["journal"]["detail"]
    assert "cannot be written" in log
    assert r.status_code == 200 and r.headers["x-history-kept"] == "false"


def test_start_up_with_mongodb_down_answers_without_history(start_server):
    server = start_server(env=_mongo_env(f"mongodb://127.0.0.1:{free_port()}/", "down"))
    ready = _wait_history_state(server, "character", "degraded")
    with server.client() as http:
        r = http.post("/character/Llama", json={**CHAR, "input_data": "hi",
                                                "db_id": str(uuid.uuid4()), "user_id": "u"})
    server.stop()
    assert ready["status"] == "ready" and ready["history"]["kind"] == "mongodb"
    assert "ping failed" in ready["history"]["detail"]
    assert r.status_code == 200 and r.headers["x-history-turns"] == "0"


def test_nothing_is_written_for_a_failed_generation(start_server, ferretdb):
    database = f"chat_{uuid.uuid4().hex[:8]}"
    ref = {"db_id": str(uuid.uuid4()), "user_id": "failing"}
    with FailingUpstream() as upstream:
        server = start_server(env=_mongo_env(
            ferretdb.url, database, OPENAI_API_KEY="k", OPENAI_BASE_URL=upstream.url,
            CHATBOT_OPENAI_MAX_RETRIES="0", CHATBOT_OFFICE__REQUEST_TIMEOUT_S="0.4",
            CHATBOT_OFFICE__GENERATION__MAX_TOKENS="6000"))
        with server.client() as http:
            upstream_failed = http.post("/office/gpt4.1", json={"input_data": "q", **ref})
            too_slow = http.post("/office/Llama", json={"input_data": "긴 보고서", **ref})
        server.stop()
    assert (upstream_failed.status_code, too_slow.status_code) == (502, 504)
    assert _document(ferretdb.url, database, "office_log_failing", ref["db_id"]) is None
