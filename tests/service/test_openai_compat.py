"""`POST /v1/chat/completions` on each persona, driven by the official `openai` client."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello."}]


def _client(server, persona: str) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url=f"{server.url}/{persona}/v1",
                         max_retries=0, timeout=60)


@pytest.mark.parametrize("persona", ["office", "character"])
def test_non_streaming_completion_with_usage(gateway, persona):
    out = _client(gateway, persona).chat.completions.create(
        model="local", messages=MESSAGES, max_tokens=12)
    choice = out.choices[0]
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= out.usage.completion_tokens <= 12
    assert out.usage.prompt_tokens > len(MESSAGES)  # the templated prompt, counted by the engine
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.model.endswith(".gguf")  # the persona's local model


def test_streaming_completion_in_openai_chunks_with_usage(gateway):
    chunks = list(_client(gateway, "office").chat.completions.create(
        model="local", messages=MESSAGES, max_tokens=12, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and 1 <= chunks[-1].usage.completion_tokens <= 12
    assert len({c.id for c in chunks}) == 1
    # The real prompt, counted by the model's tokenizer, as the non-streaming answer reports.
    plain = _client(gateway, "office").chat.completions.create(
        model="local", messages=MESSAGES, max_tokens=1)
    usage = chunks[-1].usage
    assert usage.prompt_tokens == plain.usage.prompt_tokens > len(MESSAGES)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_the_sse_stream_ends_with_done(gateway):
    body = {"messages": MESSAGES, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", gateway.url + "/character/v1/chat/completions", json=body,
                      timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]" and len(events) >= 3


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({"messages": []}, "messages", "at least 1 item"),
    ({}, "messages", "is required"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", "'system'"),
    ({"messages": [{"role": "user"}]}, "messages.0.content", "is required"),
    ({"messages": [{"role": "system", "content": "only rules"}]}, "messages",
     "role 'user'"),
    ({"messages": MESSAGES, "n": 2}, "n", "only n=1"),
    ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens", "greater than 0"),
    ({"messages": MESSAGES, "temperature": 3}, "temperature", "less than or equal to 2"),
    ({"messages": MESSAGES, "stop": ["\n"]}, "stop", "not supported"),
])
def test_invalid_requests_get_422_naming_the_field(gateway, body, field, reason):
    r = httpx.post(gateway.url + "/office/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert any(e["field"] == field and reason in e["reason"] for e in errors), errors


def test_it_waits_in_the_personas_queue_and_gets_429_when_full(start_server):
    server = start_server(env={"CHATBOT_OFFICE__MAX_QUEUE": "0",
                               "CHATBOT_OFFICE__GENERATION__MAX_TOKENS": "6000"})
    with httpx.Client(base_url=server.url, timeout=60) as http:
        # A long streamed answer holds office's only slot (max_queue 0)...
        with http.stream("POST", "/office/v1/chat/completions",
                         json={"messages": MESSAGES, "stream": True, "max_tokens": 4000}) as held:
            assert held.status_code == 200
            deadline = time.monotonic() + 10
            while http.get("/office/performance").json()["active_connections"] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            blocked = [http.post("/office/v1/chat/completions", json={"messages": MESSAGES}),
                       http.post("/office/Llama", json={"input_data": "안녕하세요"})]
        # Closing the stream stops the generation and frees the slot.
        deadline = time.monotonic() + 10
        while http.get("/office/performance").json()["active_connections"] != 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        after = http.post("/office/v1/chat/completions",
                          json={"messages": MESSAGES, "max_tokens": 4})
    assert after.status_code == 200, after.text
    for r in blocked:
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1 and r.json()["code"] == "QUEUE_OVERLOADED"


def test_the_deadline_ends_a_stream_with_an_error_event_and_a_plain_request_with_504(
        start_server):
    server = start_server(env={"CHATBOT_CHARACTER__REQUEST_TIMEOUT_S": "0.4"})
    body = {"messages": MESSAGES, "max_tokens": 4000}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        plain = http.post("/character/v1/chat/completions", json=body)
        with http.stream("POST", "/character/v1/chat/completions",
                         json={**body, "stream": True}) as r:
            events = [line for line in r.iter_lines() if line]
    assert plain.status_code == 504 and plain.json()["code"] == "DEADLINE_EXCEEDED"
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["type"] == "DeadlineExceededError" and "deadline" in error["message"]
