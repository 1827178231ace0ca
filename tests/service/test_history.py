"""Conversation memory on the embedded store: replay on later turns, per-user isolation."""

from __future__ import annotations

import uuid
from pathlib import Path

from chatbot.stores.embedded import EmbeddedHistoryStore
from tests.support.history import embedded_document

CHAR = {"character_name": "Rachel", "greeting": "Hello!", "context": "A shy student."}


def _turns(http, path: str, body: dict, n: int) -> list[int]:
    replayed = []
    for i in range(n):
        r = http.post(path, json={**body, "input_data": f"turn {i + 1}"})
        assert r.status_code == 200, r.text
        replayed.append(int(r.headers["x-history-turns"]))
    return replayed


def test_later_turns_replay_up_to_8_office_turns_dropping_4_at_a_time(gateway):
    ref = {"db_id": str(uuid.uuid4()), "user_id": "history-user"}
    with gateway.client() as http:
        replayed = _turns(http, "/office/Llama", ref, 14)
    # Past 8, the oldest 4 go at once and the window stays put until it is full again.
    assert replayed == [0, 1, 2, 3, 4, 5, 6, 7, 8, 5, 6, 7, 8, 5]


def test_character_replays_10_turns_and_users_are_isolated(gateway):
    db_id = str(uuid.uuid4())
    with gateway.client() as http:
        replayed = _turns(http, "/character/Llama", {**CHAR, "db_id": db_id, "user_id": "alice"},
                          12)
        other_user = _turns(http, "/character/Llama", {**CHAR, "db_id": db_id, "user_id": "bob"},
                            1)
        no_ref = _turns(http, "/character/Llama", CHAR, 1)
    assert replayed == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 7]
    assert other_user == [0] and no_ref == [0]


def test_every_turn_is_stored_as_the_mongodb_document_would_be(gateway):
    db_id = str(uuid.uuid4())
    with gateway.client() as http:
        answers = [http.post("/office/Llama", json={"input_data": f"질문 {i}", "db_id": db_id,
                                                    "user_id": "doc-user"}).json()
                   for i in range(3)]
    store = EmbeddedHistoryStore(Path(gateway.log.parent / f"h-{gateway.port}.db"))
    doc = embedded_document(store, "office", "doc-user", db_id)
    assert doc["id"] == db_id
    assert [t["index"] for t in doc["value"]] == [1, 2, 3]
    assert [t["input_data"] for t in doc["value"]] == ["질문 0", "질문 1", "질문 2"]
    assert [t["output_data"] for t in doc["value"]] == answers
    assert embedded_document(store, "character", "doc-user", db_id) is None
