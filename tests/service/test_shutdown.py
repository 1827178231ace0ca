"""What `chatbot serve` leaves behind when it stops: each persona's final counters in its
log, so that the requests of a pod a rollout terminated can still be counted."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import time
import uuid

import httpx

from chatbot.stores.embedded import EmbeddedHistoryStore

FINAL = re.compile(r"final counters (\w+): (\{.*\})$")


def final_counters(log: str) -> dict[str, dict]:
    found = {}
    for line in log.splitlines():
        match = FINAL.search(line)
        if match:
            found[match.group(1)] = json.loads(match.group(2))
    return found


def test_sigterm_logs_each_personas_final_counters_with_the_request_it_served(start_server):
    server = start_server()
    answer = httpx.post(server.url + "/office/Llama", timeout=120,
                        json={"input_data": "회의록을 요약해 주세요."})
    assert answer.status_code == 200, answer.text
    served = server.performance("office")

    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=60)
    log = server.log.read_text(errors="replace")
    counters = final_counters(log)

    assert set(counters) == {"office", "character"}, log[-3000:]
    office = counters["office"]
    assert office.keys() == served.keys()  # the same report as /performance
    assert (office["total_requests"], office["succeeded"]) == (1, 1)
    assert office["generated_tokens"] == served["generated_tokens"] > 0
    assert counters["character"]["total_requests"] == 0
    # one line per persona, after uvicorn's own shutdown lines
    assert log.index("Shutting down") < log.index("final counters office")

    # Its successor counts from zero under another name: a load test does not subtract
    # one's counters from the other's.
    successor = start_server().performance("office")
    assert office["instance"] == served["instance"] != successor["instance"]
    assert successor["total_requests"] == 0


def _sse_events(text: str) -> list:
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e.startswith("data: ")]


def test_sigterm_ends_unfinished_answers_with_503_and_retry_after_and_stores_nothing(
        start_server):
    """Past the grace period the service ends an answer itself, before uvicorn would cut it
    into a bare 500; a queued request ends at once; a stream already started ends with an
    error event and [DONE]. All count as failed in the final counters."""
    server = start_server(env={"CHATBOT_OFFICE__GENERATION__MAX_TOKENS": "6000",
                               "CHATBOT_CHARACTER__GENERATION__MAX_TOKENS": "6000",
                               "CHATBOT_SHUTDOWN_GRACE_S": "1"})
    db_id = str(uuid.uuid4())
    outcome: dict[str, httpx.Response | str] = {}

    def ask(name: str, path: str, body: dict) -> threading.Thread:
        def post() -> None:
            try:
                outcome[name] = httpx.post(server.url + path, json=body, timeout=60)
            except httpx.HTTPError as exc:
                outcome[name] = repr(exc)

        thread = threading.Thread(target=post)
        thread.start()
        return thread

    def wait_for(persona: str, condition) -> None:
        deadline = time.monotonic() + 30
        while not condition(server.performance(persona)):
            assert time.monotonic() < deadline, f"{persona} never got there"
            time.sleep(0.05)

    long_answer = {"input_data": "긴 보고서를 써 주세요.", "db_id": db_id, "user_id": "cut-user"}
    askers = [ask("generating", "/office/Llama", long_answer)]
    wait_for("office", lambda perf: perf["engine_generating"])
    askers.append(ask("queued", "/office/Llama", long_answer))  # office runs one at a time
    wait_for("office", lambda perf: perf["queue_size"] == 1)
    askers.append(ask("stream", "/character/v1/chat/completions", {
        "max_tokens": 4096, "stream": True,
        "messages": [{"role": "user", "content": "Tell me a very long story."}]}))
    wait_for("character", lambda perf: perf["engine_generating"])

    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=60)
    for asker in askers:
        asker.join(timeout=60)
    log = server.log.read_text(errors="replace")

    for name, end in (("generating", "nothing was stored."), ("queued", "not started.")):
        r = outcome[name]
        assert isinstance(r, httpx.Response), (name, r)
        assert r.status_code == 503, (name, r.text)
        body = r.json()
        assert body["code"] == "SHUTTING_DOWN"
        assert 1 <= int(r.headers["retry-after"]) == body["retry_after"] <= 5
        assert body["detail"].startswith("The service is shutting down")
        assert end in body["detail"], body["detail"]
    stream = outcome["stream"]
    assert isinstance(stream, httpx.Response) and stream.status_code == 200, stream
    events = _sse_events(stream.text)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["type"] == "ServiceShuttingDownError"
    assert "grace period" in json.loads(events[-2])["error"]["message"]
    # uvicorn's own cut-off (500s) never came into play
    assert "timeout graceful shutdown exceeded" not in log, log[-3000:]

    store = EmbeddedHistoryStore(server.log.parent / f"h-{server.port}.db")
    assert asyncio.run(store.recent_turns("office", "cut-user", db_id, 10)) == []
    counters = final_counters(log)
    assert {k: counters["office"][k] for k in ("total_requests", "failed", "succeeded")} == {
        "total_requests": 2, "failed": 2, "succeeded": 0}
    assert (counters["character"]["failed"], counters["character"]["succeeded"]) == (1, 0)
    assert counters["office"]["active_connections"] == counters["office"]["queue_size"] == 0
