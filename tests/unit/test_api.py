"""The API layer in process: `create_app` with scripted engines (tests/support/engines.py),
driven through Starlette's TestClient, lifespan included.

Scripted engines stand in for llama.cpp here so that every error mapping is checked in
milliseconds; what needs the real model (token counting, streaming from llama.cpp, process
start-up, signals) stays in tests/service, against real `chatbot serve` processes.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from chatbot.composition_root import NOT_FOUND_PAGE, build_runtime, create_app, persona_app
from chatbot.domain.conversation import SearchResult
from chatbot.domain.personas import Persona
from chatbot.settings import CharacterSettings, OfficeSettings, Settings
from chatbot.stores.embedded import EmbeddedHistoryStore
from tests.support.engines import CountingEngine, RecordingSearch, ScriptedEngine

ANSWER = ["A scripted ", "answer, ", "long enough."]
OFFICE = {"input_data": "회의록을 잘 쓰는 방법을 알려주세요.", "google_access": False}
CHARACTER = {"input_data": "*waves*", "character_name": "Rachel", "greeting": "Hi.",
             "context": "Rachel is a shy student who loves astronomy."}


def _settings(tmp_path, office_settings=None, **settings) -> Settings:
    return Settings(history_path=tmp_path / "history.sqlite3", search="none",
                    office=OfficeSettings(**(office_settings or {})),
                    character=CharacterSettings(), **settings)


def _client(tmp_path, office=None, character=None, search=None, office_settings=None,
            personas=None, **settings) -> TestClient:
    engines = {Persona.OFFICE: office or ScriptedEngine(ANSWER),
               Persona.CHARACTER: character or ScriptedEngine(ANSWER)}
    config = _settings(tmp_path, office_settings, **settings)
    return TestClient(create_app(config, personas, engines=engines, search=search))


def _wait_until(condition, timeout_s=10.0):
    """Polls until `condition()` holds (a wait for a state, not a timed assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(0.01)


def test_an_answer_is_a_json_string_with_its_timing_headers(tmp_path):
    with _client(tmp_path) as client:
        r = client.post("/office/Llama", json=OFFICE, headers={"X-Request-ID": "req-1"})
    assert r.status_code == 200
    assert r.json() == "A scripted answer, long enough."
    assert r.headers["x-request-id"] == "req-1"
    assert r.headers["x-generated-tokens"] == "3"
    assert r.headers["x-history-turns"] == "0"
    assert {t.split(";")[0] for t in r.headers["server-timing"].split(", ")} == {
        "queue", "ttft", "gen", "total"}


@pytest.mark.parametrize("personas, prefix", [(None, "/office"), ([Persona.OFFICE], "")],
                         ids=["both-personas", "one-persona-at-the-root"])
def test_an_unknown_path_inside_a_persona_is_the_html_404_page(tmp_path, personas, prefix):
    """As the route's other paths: nothing in front of a persona turns its 404s into the
    page any more (an Ingress that did would also answer a persona without a ready pod
    with that page instead of a 503)."""
    with _client(tmp_path, personas=personas) as client:
        for method, path in (("GET", "/no/such/page"), ("POST", "/no/such/page"),
                             ("DELETE", "/v1/nope")):
            r = client.request(method, prefix + path)
            assert r.status_code == 404, (method, path)
            assert r.headers["content-type"].startswith("text/html")
            assert r.text == NOT_FOUND_PAGE
        wrong_method = client.get(prefix + "/Llama")  # a known path: its 405 stays JSON
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"detail": "Method Not Allowed"}


def test_a_routes_own_404_stays_json(tmp_path):
    settings = _settings(tmp_path)
    runtime = build_runtime(Persona.OFFICE, settings, ScriptedEngine(ANSWER),
                            EmbeddedHistoryStore(settings.history_path))
    app = persona_app(runtime)

    @app.get("/conversations/{db_id}")
    def conversation(db_id: str):
        raise HTTPException(404, f"no conversation {db_id}")

    r = TestClient(app).get("/conversations/abc")
    assert r.status_code == 404 and r.json() == {"detail": "no conversation abc"}


def test_a_failed_generation_is_a_500_never_error_text_in_a_200(tmp_path):
    broken = ScriptedEngine(["Hel"], RuntimeError("decode failed"), "  ")
    with _client(tmp_path, character=broken) as client:
        r = client.post("/character/Llama", json=CHARACTER)
    assert r.status_code == 500
    assert r.json()["code"] == "GENERATION_FAILED"
    assert "empty answer" in r.json()["detail"]


def test_invalid_fields_are_422_naming_each_field_and_reason(tmp_path):
    with _client(tmp_path) as client:
        r = client.post("/office/Llama", json={"google_access": False, "colour": "red"})
        blank = client.post("/office/Llama", json={**OFFICE, "input_data": "   "})
    assert r.status_code == 422
    errors = {e["field"]: e["reason"] for e in r.json()["errors"]}
    assert errors == {"input_data": "is required", "colour": "is not a field of this request"}
    assert r.json()["detail"].startswith("input_data: is required")
    assert blank.status_code == 422
    assert [e["field"] for e in blank.json()["errors"]] == ["input_data"]


def test_a_body_over_the_limit_is_413(tmp_path):
    with _client(tmp_path, max_body_bytes=1024) as client:
        r = client.post("/office/Llama", json={**OFFICE, "input_data": "x" * 2000})
    assert r.status_code == 413
    assert r.json()["code"] == "BODY_TOO_LARGE" and "1024" in r.json()["detail"]


def test_a_body_that_is_not_json_is_415(tmp_path):
    with _client(tmp_path) as client:
        r = client.post("/character/Llama", data={"input_data": "hi"})
    assert r.status_code == 415
    assert "application/json" in r.json()["detail"]


def test_malformed_json_is_400(tmp_path):
    with _client(tmp_path) as client:
        r = client.post("/office/Llama", content=b'{"input_data": ',
                        headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "MALFORMED_JSON"


def test_a_full_queue_is_429_with_retry_after_and_the_rejected_request_never_searches(
        tmp_path):
    hold = threading.Event()
    engine = ScriptedEngine(ANSWER, hold=hold)
    search = RecordingSearch([SearchResult("Minutes", "Write decisions first.", "https://x")])
    asking = {**OFFICE, "google_access": True}
    with _client(tmp_path, office=engine, search=search,
                 office_settings={"max_concurrent": 1, "max_queue": 0}) as client, \
            ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/office/Llama", json=asking)
        _wait_until(lambda: engine.streams == 1)
        r = client.post("/office/Llama", json=asking)
        busy = client.get("/office/performance").json()
        hold.set()
        answered = first.result(timeout=30)
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert body["code"] == "QUEUE_OVERLOADED" and body["retry_after"] == int(
        r.headers["retry-after"])
    assert body["queue_info"] == {"active": 1, "waiting": 0, "max_concurrent": 1,
                                  "max_queue": 0}
    assert busy["active_connections"] == 1
    assert answered.status_code == 200
    assert search.queries == [OFFICE["input_data"]]  # the admitted request's search only


def test_a_prompt_that_cannot_fit_is_400_context_length_exceeded(tmp_path):
    with _client(tmp_path, character=CountingEngine(context=64)) as client:
        r = client.post("/character/Llama", json={**CHARACTER, "db_id": "b440780c-cbaa-454f"
                        "-a8d2-cf884786d89f", "user_id": "u1"})
        performance = client.get("/character/performance").json()
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == "context_length_exceeded" and body["context_tokens"] == 64
    assert body["prompt_tokens"] > 64 - body["min_answer_tokens"]
    assert performance["failed"] == 1


def test_a_model_not_loaded_is_503_and_readyz_says_so(tmp_path):
    with _client(tmp_path, office=ScriptedEngine(ANSWER, ready=False)) as client:
        r = client.post("/office/Llama", json=OFFICE)
        ready = client.get("/office/readyz")
        alive = client.get("/office/healthz")
        completion = client.post("/office/v1/chat/completions",
                                 json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and r.json()["code"] == "ENGINE_UNAVAILABLE"
    assert "not loaded" in r.json()["detail"]
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"
    assert alive.status_code == 200
    assert completion.status_code == 503


def test_a_passed_deadline_is_504_and_counted_as_failed(tmp_path):
    stuck = ScriptedEngine(ANSWER, hold=threading.Event())
    with _client(tmp_path, office=stuck, office_settings={"request_timeout_s": 0.3}) as client:
        r = client.post("/office/Llama", json=OFFICE)
        performance = client.get("/office/performance").json()
    assert r.status_code == 504
    assert r.json()["code"] == "DEADLINE_EXCEEDED" and "0.3 s" in r.json()["detail"]
    assert (performance["failed"], performance["succeeded"]) == (1, 0)


def test_the_search_results_and_the_persona_fields_reach_the_prompt(tmp_path):
    office, character = CountingEngine(context=100_000), CountingEngine(context=100_000)
    search = RecordingSearch([SearchResult("Minutes 101", "Write decisions first.", "https://x")])
    with _client(tmp_path, office=office, character=character, search=search) as client:
        asked = client.post("/office/Llama", json={**OFFICE, "google_access": True})
        plain = client.post("/office/Llama", json=OFFICE)
        replied = client.post("/character/Llama", json=CHARACTER)
    assert asked.status_code == plain.status_code == replied.status_code == 200
    assert search.queries == [OFFICE["input_data"]]  # google_access false: no search
    searched, unsearched = office.streamed[0][0], office.streamed[1][0]
    # The results follow the question in its message, after the history.
    assert "Minutes 101" in searched[-1].content and "Minutes 101" not in unsearched[-1].content
    assert searched[-1].content.startswith(OFFICE["input_data"] + "\n\n")
    system = character.streamed[0][0][0].content
    assert "Rachel" in system and CHARACTER["context"] in system
    assert character.streamed[0][0][-1].content == "*waves*"


def test_gpt_routes_without_a_key_are_503_and_unknown_names_400(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with _client(tmp_path) as client:
        unconfigured = client.post("/office/gpt4.1", json=OFFICE)
        unknown = client.post("/character/gpt5", json=CHARACTER)
    assert unconfigured.status_code == 503 and "OPENAI_API_KEY" in unconfigured.json()["detail"]
    assert unknown.status_code == 400 and unknown.json() == {"detail": "Invalid model name."}


@pytest.mark.parametrize("stream", [False, True])
def test_chat_completions_answer_in_openai_shape(tmp_path, stream):
    engine = ScriptedEngine(ANSWER, None, "".join(ANSWER))  # streamed, or complete()'s text
    with _client(tmp_path, character=engine) as client:
        r = client.post("/character/v1/chat/completions",
                        json={"messages": [{"role": "user", "content": "hi"}], "stream": stream})
        performance = client.get("/character/performance").json()
    assert r.status_code == 200
    if stream:
        events = [line.removeprefix("data: ") for line in r.text.split("\n\n") if line]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    else:
        text = r.json()["choices"][0]["message"]["content"]
    assert text == "".join(ANSWER)
    assert performance["succeeded"] == 1


def test_engines_are_loaded_at_start_and_closed_at_shutdown(tmp_path):
    office, character = ScriptedEngine(ANSWER), ScriptedEngine(ANSWER)
    client = _client(tmp_path, office=office, character=character)
    with client:
        _wait_until(lambda: office.loads == character.loads == 1)
    assert office.closes == character.closes == 1
