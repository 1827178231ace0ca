"""The service stopping, in process: `create_app` with scripted engines and a `Shutdown`
begun on the app's event loop, as `chatbot serve`'s signal handler begins it. (The real
signal, uvicorn and llama.cpp: tests/service/test_shutdown.py.)"""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from chatbot.composition_root import create_app
from chatbot.core.shutdown import Shutdown
from chatbot.domain.personas import Persona
from chatbot.settings import Settings
from tests.support.engines import ScriptedEngine

ANSWER = ["A scripted ", "answer, ", "long enough."]
OFFICE = {"input_data": "회의록을 잘 쓰는 방법을 알려주세요."}
STREAM = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def _client(tmp_path, office, shutdown: Shutdown) -> TestClient:
    engines = {Persona.OFFICE: office, Persona.CHARACTER: ScriptedEngine(ANSWER)}
    config = Settings(history_path=tmp_path / "history.sqlite3", search="none")
    return TestClient(create_app(config, engines=engines, shutdown=shutdown))


def _wait_until(condition, timeout_s=10.0):
    """Polls until `condition()` holds (a wait for a state, not a timed assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(0.01)


def _shutting_down(r, detail_end: str) -> None:
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["code"] == "SHUTTING_DOWN"
    assert int(r.headers["retry-after"]) == body["retry_after"] >= 1
    assert body["detail"].endswith(detail_end), body["detail"]


def test_an_answer_not_done_by_the_end_of_the_grace_is_503_and_stores_nothing(tmp_path):
    stuck = ScriptedEngine(ANSWER, hold=threading.Event())
    shutdown = Shutdown(grace_s=0.05)
    conversation = {"db_id": str(uuid.uuid4()), "user_id": "u1"}
    with _client(tmp_path, stuck, shutdown) as client, ThreadPoolExecutor(2) as pool:
        generating = pool.submit(client.post, "/office/Llama", json={**OFFICE, **conversation})
        _wait_until(lambda: stuck.streams == 1)
        queued = pool.submit(client.post, "/office/Llama", json={**OFFICE, **conversation})
        _wait_until(lambda: client.get("/office/performance").json()["queue_size"] == 1)
        client.portal.call(shutdown.begin)
        _shutting_down(queued.result(timeout=30), "the request was not started. Retry in 2 s.")
        _shutting_down(generating.result(timeout=30), "nothing was stored. Retry in 2 s.")
        arrived_later = client.post("/office/Llama", json=OFFICE)
        later_stream = client.post("/office/v1/chat/completions", json=STREAM)
        performance = client.get("/office/performance").json()
        alive = client.get("/office/healthz")  # the routes that gate nothing still answer
    _shutting_down(arrived_later, "not started. Retry in 2 s.")
    _shutting_down(later_stream, "not started. Retry in 2 s.")
    assert stuck.streams == 1  # neither the queued nor the later requests generated
    assert alive.status_code == 200
    assert (performance["total_requests"], performance["failed"], performance["succeeded"]) \
        == (4, 4, 0)
    assert (performance["active_connections"], performance["queue_size"]) == (0, 0)
    with _client(tmp_path, ScriptedEngine(ANSWER), Shutdown(1.0)) as client:
        replayed = client.post("/office/Llama", json={**OFFICE, **conversation})
    assert replayed.headers["x-history-turns"] == "0"  # the cut answer was never stored


def test_an_answer_done_within_the_grace_is_delivered(tmp_path):
    hold = threading.Event()
    slow = ScriptedEngine(ANSWER, hold=hold)
    shutdown = Shutdown(grace_s=60)
    with _client(tmp_path, slow, shutdown) as client, ThreadPoolExecutor(1) as pool:
        generating = pool.submit(client.post, "/office/Llama", json=OFFICE)
        _wait_until(lambda: slow.streams == 1)
        client.portal.call(shutdown.begin)
        hold.set()
        answered = generating.result(timeout=30)
        performance = client.get("/office/performance").json()
    assert answered.status_code == 200
    assert answered.json() == "A scripted answer, long enough."
    assert (performance["succeeded"], performance["failed"]) == (1, 0)


def test_a_started_stream_ends_with_an_error_event_and_done(tmp_path):
    stuck = ScriptedEngine(ANSWER, hold=threading.Event())
    shutdown = Shutdown(grace_s=0.05)
    with _client(tmp_path, stuck, shutdown) as client, \
            client.stream("POST", "/office/v1/chat/completions", json=STREAM) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line)  # the role chunk: the stream started
        client.portal.call(shutdown.begin)
        events = [first, *(line for line in lines if line)]
        performance = client.get("/office/performance").json()
    assert r.status_code == 200
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["type"] == "ServiceShuttingDownError"
    assert "grace period" in error["message"]
    assert (performance["failed"], performance["succeeded"]) == (1, 0)
