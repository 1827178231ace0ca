"""The playground's streamed turn in process (scripted engines): the pieces as they come,
the stored answer last, and the route's own statuses for what fails before the first
piece (tests/service and tests/browser run it on the real model)."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from chatbot.domain.errors import EngineUnavailableError
from chatbot.domain.personas import Persona
from chatbot.stores.embedded import EmbeddedHistoryStore
from tests.support.engines import CountingEngine, ScriptedEngine
from tests.support.history import embedded_document
from tests.unit.test_api import ANSWER, CHARACTER, OFFICE, _client, _wait_until


def _events(response) -> list[dict]:
    return [json.loads(line[5:]) for line in response.text.splitlines()
            if line.startswith("data:")]


def test_pieces_stream_then_the_stored_answer_with_its_timing(tmp_path):
    ref = {"db_id": str(uuid.uuid4()), "user_id": "u1"}
    with _client(tmp_path) as client:
        r = client.post("/office/playground/chat", json={**OFFICE, **ref})
        performance = client.get("/office/performance").json()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["server-timing"].startswith("ttft;dur=")
    events = _events(r)
    assert [e["delta"] for e in events[:-1]] == ANSWER
    done = events[-1]
    assert done["done"] is True and done["text"] == "".join(ANSWER)
    assert done["tokens"] == 3 and done["fallback_used"] is False
    assert done["history_turns"] == 0 and done["tokens_per_s"] > 0
    assert performance["succeeded"] == 1
    doc = embedded_document(EmbeddedHistoryStore(tmp_path / "history.sqlite3"),
                            "office", "u1", ref["db_id"])
    assert [t["output_data"] for t in doc["value"]] == ["".join(ANSWER)]


def test_a_fallback_answer_replaces_what_was_streamed(tmp_path):
    short = ScriptedEngine(["Hel"], None, "The fallback's whole answer.")
    with _client(tmp_path, character=short) as client:
        r = client.post("/character/playground/chat", json=CHARACTER)
    events = _events(r)
    assert events[0] == {"delta": "Hel"}
    assert events[-1]["text"] == "The fallback's whole answer."
    assert events[-1]["fallback_used"] is True


def test_failures_before_the_first_piece_keep_their_status(tmp_path):
    hold = threading.Event()
    busy = ScriptedEngine(ANSWER, hold=hold)
    with _client(tmp_path, office=busy, character=ScriptedEngine(ANSWER, ready=False),
                 office_settings={"max_concurrent": 1, "max_queue": 0}) as client, \
            ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/office/playground/chat", json=OFFICE)
        _wait_until(lambda: busy.streams == 1)
        full = client.post("/office/playground/chat", json=OFFICE)
        hold.set()
        answered = first.result(timeout=30)
        loading = client.post("/character/playground/chat", json=CHARACTER)
        invalid = client.post("/character/playground/chat", json={**CHARACTER, "context": ""})
    assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
    assert full.json()["code"] == "QUEUE_OVERLOADED"
    assert answered.status_code == 200 and _events(answered)[-1]["done"] is True
    assert loading.status_code == 503 and loading.json()["code"] == "ENGINE_UNAVAILABLE"
    assert invalid.status_code == 422 and invalid.json()["detail"].startswith("context")


def test_a_prompt_that_cannot_fit_is_a_400_before_any_stream(tmp_path):
    with _client(tmp_path, character=CountingEngine(context=64)) as client:
        r = client.post("/character/playground/chat", json=CHARACTER)
    assert r.status_code == 400 and r.json()["code"] == "context_length_exceeded"


def test_a_failure_after_the_first_piece_is_the_streams_last_event(tmp_path):
    failing = ScriptedEngine(["Half an ans"], EngineUnavailableError("The model went away."))
    with _client(tmp_path, office=failing) as client:
        r = client.post("/office/playground/chat", json=OFFICE)
    events = _events(r)
    assert r.status_code == 200 and events[0] == {"delta": "Half an ans"}
    assert events[-1] == {"error": {"message": "The model went away.",
                                    "type": "EngineUnavailableError"}}


def test_the_page_is_served_per_persona_and_at_the_root_of_one(tmp_path):
    with _client(tmp_path) as client:
        office, character = client.get("/office/"), client.get("/character/")
    assert 'data-persona="office"' in office.text and 'data-persona="character"' in character.text
    with _client(tmp_path, personas=[Persona.CHARACTER]) as client:
        root = client.get("/")
    assert root.status_code == 200 and 'data-persona="character"' in root.text
