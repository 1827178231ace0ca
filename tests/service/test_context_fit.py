"""A long conversation never dies: history is fitted to the context by token count, and
only a prompt that cannot fit even without history is a 400 `context_length_exceeded`.

Real `chatbot serve` processes on the tiny models (which never end an answer on their own:
every answer is exactly as long as its budget, the longest a model can make it) and on the
bundled SmolLM2, with the history in the embedded store or in MongoDB (FerretDB).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import openai
import pytest
from pymongo import MongoClient

from chatbot.stores.embedded import EmbeddedHistoryStore
from tests.service.upstreams import ContextOverflowUpstream
from tests.support.history import embedded_document

N_CTX = 2048
ANSWER = 200  # tokens: every tiny-model answer is exactly this long
TURNS = 30
# Far more tokens than any context here holds, yet inside the request limits (≤ 4000 / 2000).
HUGE_CHAR = {"character_name": "뷁", "greeting": "뷁" * 2000, "context": "뷁" * 4000}


def _question(i: int) -> str:
    """Turn i's question: longer and longer, up to the 500-character limit."""
    return (f"{i}번째 질문: " + "회의록을 잘 쓰는 방법을 알려주세요. " * (1 + i // 2))[:500]


def _conversation(http, path: str, body: dict, turns: int) -> list[httpx.Response]:
    answers = []
    for i in range(turns):
        r = http.post(path, json={**body, "input_data": _question(i)})
        assert r.status_code == 200, (i, r.text)
        answers.append(r)
    return answers


def _replayed(answers) -> list[tuple[int, int]]:
    return [(int(r.headers["x-history-turns"]), int(r.headers["x-history-turns-dropped"]))
            for r in answers]


def _check_fitted(answers, limit: int, n_ctx: int) -> None:
    """Every turn replayed what it could and dropped the rest; none overflowed."""
    replayed = _replayed(answers)
    assert [kept + dropped for kept, dropped in replayed] == [
        min(i, limit) for i in range(len(answers))]
    for r in answers:
        assert int(r.headers["x-prompt-tokens"]) + int(r.headers["x-generated-tokens"]) <= n_ctx
    kept = [k for k, _ in replayed]
    peak = max(kept)
    assert 0 < peak < limit, kept  # the context, not the turn limit, bounds the replay
    assert replayed[-1][1] > 0
    assert max(kept[-5:]) < peak, kept  # the questions grow: later turns replay fewer


# One llama.cpp thread: on a busy machine two spin-waiting threads run ~100x slower.
ONE_THREAD = {"CHATBOT_OFFICE__MODEL__N_THREADS": "1", "CHATBOT_CHARACTER__MODEL__N_THREADS": "1"}


def _env(persona: str, **extra: str) -> dict[str, str]:
    upper = persona.upper()
    return {f"CHATBOT_{upper}__MODEL__N_CTX": str(N_CTX),
            f"CHATBOT_{upper}__GENERATION__MAX_TOKENS": str(ANSWER),
            "CHATBOT_SEARCH": "none", **ONE_THREAD, **extra}


@pytest.mark.parametrize("store", ["embedded", "mongodb"])
def test_a_30_turn_conversation_with_long_answers_keeps_answering(start_server, request,
                                                                  store):
    env = _env("office")
    if store == "mongodb":
        ferretdb = request.getfixturevalue("ferretdb")
        database = f"fit_{uuid.uuid4().hex[:8]}"
        env.update(MONGO_URL=ferretdb.url, MONGO_DATABASE=database)
    server = start_server("office", env=env)
    ref = {"db_id": str(uuid.uuid4()), "user_id": "long-talker"}
    with server.client(timeout=120) as http:
        answers = _conversation(http, "/Llama", ref, TURNS)
        hello = http.post("/Llama", json={"input_data": "hello again", **ref})
        metrics = http.get("/metrics").text
    server.stop()
    dropped = sum(int(r.headers["x-history-turns-dropped"]) for r in [*answers, hello])
    assert f'chatbot_history_turns_dropped_total{{persona="office"}} {dropped}.0' in metrics
    assert hello.status_code == 200, hello.text  # the dead conversation, alive
    assert all(int(r.headers["x-generated-tokens"]) > ANSWER // 2 for r in answers)
    _check_fitted(answers, limit=8, n_ctx=N_CTX)

    # The stored history is untouched: every turn is there, in order.
    if store == "mongodb":
        with MongoClient(ferretdb.url, serverSelectionTimeoutMS=5000) as client:
            doc = client[database]["office_log_long-talker"].find_one({"id": ref["db_id"]})
    else:
        db = Path(server.log.parent / f"h-{server.port}.db")
        doc = embedded_document(EmbeddedHistoryStore(db), "office", "long-talker", ref["db_id"])
    assert [t["index"] for t in doc["value"]] == list(range(1, TURNS + 2))
    assert [t["input_data"] for t in doc["value"][:TURNS]] == [_question(i)
                                                               for i in range(TURNS)]
    assert [t["output_data"] for t in doc["value"][:TURNS]] == [r.json() for r in answers]


def test_the_answer_budget_shrinks_to_what_the_context_has_left(start_server):
    server = start_server("character", env=_env("character"))
    body = {"character_name": "Rachel", "greeting": "Hello.", "input_data": "안녕?"}
    with server.client(timeout=120) as http:
        # Measure the persona context's cost, then make it leave ~130 tokens for the answer.
        small, large = (int(http.post("/Llama", json={**body, "context": "뷁" * n})
                            .headers["x-prompt-tokens"]) for n in (100, 200))
        per_char = (large - small) / 100
        chars = 100 + int((N_CTX - 130 - small) / per_char)
        r = http.post("/Llama", json={**body, "context": "뷁" * chars})
    server.stop()
    assert r.status_code == 200, r.text
    prompt, generated = int(r.headers["x-prompt-tokens"]), int(r.headers["x-generated-tokens"])
    assert prompt + ANSWER > N_CTX  # max_tokens would not have fit
    assert 0 < generated <= N_CTX - prompt


@pytest.fixture(scope="module")
def tight(start_server):
    """Office on a context smaller than its own system prompt (nothing fits); character on
    the default context."""
    return start_server(env={"CHATBOT_OFFICE__MODEL__N_CTX": "128", "CHATBOT_SEARCH": "none",
                             **ONE_THREAD})


def _n_ctx(server, persona: str = "office") -> int:
    """The context one conversation gets (llama.cpp rounds n_ctx up to a multiple of 256)."""
    with server.client() as http:
        return http.get(f"/{persona}/readyz").json()["engine"]["n_ctx_per_sequence"]


def _assert_400(r: httpx.Response) -> dict:
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == "context_length_exceeded", body
    return body


def test_a_prompt_that_cannot_fit_is_400_on_the_chat_routes_and_nothing_is_stored(
        tight):
    ref = {"db_id": str(uuid.uuid4()), "user_id": "too-long"}
    with tight.client() as http:
        office = http.post("/office/Llama", json={"input_data": "안녕하세요", **ref})
        character = http.post("/character/Llama", json={**HUGE_CHAR, "input_data": "hi", **ref})
        perf = http.get("/office/performance").json()
    for r in (office, character):
        body = _assert_400(r)
        assert body["prompt_tokens"] + body["min_answer_tokens"] > body["context_tokens"]
        assert f"{body['prompt_tokens']} tokens" in body["detail"]
        assert str(body["context_tokens"]) in body["detail"]
    assert _assert_400(office)["context_tokens"] == _n_ctx(tight) == 256
    assert perf["fallbacks"] == 0  # never retried
    db = Path(tight.log.parent / f"h-{tight.port}.db")
    store = EmbeddedHistoryStore(db)
    assert embedded_document(store, "office", "too-long", ref["db_id"]) is None
    assert embedded_document(store, "character", "too-long", ref["db_id"]) is None


def _huge_messages() -> list[dict]:
    return [{"role": "system", "content": "뷁" * 9000}, {"role": "user", "content": "hi"}]


@pytest.mark.parametrize("stream", [False, True])
def test_v1_answers_400_before_any_stream_starts(tight, stream):
    body = {"messages": _huge_messages(), "max_tokens": 16, "stream": stream}
    with httpx.stream("POST", tight.url + "/character/v1/chat/completions", json=body,
                      timeout=60) as r:
        r.read()
    assert r.headers["content-type"] == "application/json"
    assert _assert_400(r)["context_tokens"] == _n_ctx(tight, "character")


def test_the_openai_client_sees_context_length_exceeded(tight):
    client = openai.OpenAI(api_key="unused", base_url=f"{tight.url}/character/v1",
                           max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="local", messages=_huge_messages(), stream=True)
    assert caught.value.code == "context_length_exceeded"


def test_v1_shrinks_max_tokens_and_streams_the_real_prompt_tokens(tight):
    messages = [{"role": "user", "content": "뷁" * 2600}]  # leaves less than 4000 of 8192
    client = openai.OpenAI(api_key="unused", base_url=f"{tight.url}/character/v1",
                           max_retries=0, timeout=120)
    plain = client.chat.completions.create(model="local", messages=messages, max_tokens=4000)
    chunks = list(client.chat.completions.create(
        model="local", messages=messages, max_tokens=4000, stream=True,
        stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    n_ctx = _n_ctx(tight, "character")
    assert usage.prompt_tokens == plain.usage.prompt_tokens > n_ctx - 4000
    room = n_ctx - plain.usage.prompt_tokens
    assert plain.usage.completion_tokens <= room
    # Sampled: the model may end on its own before the shrunk budget; when it used all of
    # the room, the finish reason says so.
    expected = "length" if plain.usage.completion_tokens == room else "stop"
    assert plain.choices[0].finish_reason == expected, (plain.usage, room)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_gpt_routes_pass_the_upstreams_limit_on_as_400(start_server, tight):
    """The upstream is another service's /v1 (8192 tokens): its 400 comes back as ours."""
    server = start_server(env={"OPENAI_API_KEY": "k", "CHATBOT_OPENAI_MAX_RETRIES": "0",
                               "OPENAI_BASE_URL": tight.url + "/character/v1",
                               "CHATBOT_SEARCH": "none"})
    ref = {"db_id": str(uuid.uuid4()), "user_id": "gpt-too-long"}
    with server.client(timeout=120) as http:
        r = http.post("/character/gpt4.1", json={**HUGE_CHAR, "input_data": "hi", **ref})
    server.stop()
    body = _assert_400(r)
    assert body["context_tokens"] == _n_ctx(tight, "character") < body["prompt_tokens"]
    assert "OpenAI" in body["detail"]
    db = Path(server.log.parent / f"h-{server.port}.db")
    store = EmbeddedHistoryStore(db)
    assert embedded_document(store, "character", "gpt-too-long", ref["db_id"]) is None


def test_gpt_routes_read_llama_servers_overflow_error_too(start_server):
    with ContextOverflowUpstream() as upstream:
        server = start_server(env={"OPENAI_API_KEY": "k", "CHATBOT_OPENAI_MAX_RETRIES": "0",
                                   "OPENAI_BASE_URL": upstream.url, "CHATBOT_SEARCH": "none"})
        with server.client() as http:
            r = http.post("/office/gpt4.1_mini", json={"input_data": "긴 질문"})
        server.stop()
    body = _assert_400(r)
    assert (body["prompt_tokens"], body["context_tokens"]) == (9000, 8192)
    assert "exceeds the available context size" in body["detail"]
    assert len(upstream.requests) == 1  # not retried by the non-streaming fallback


@pytest.mark.smoke
def test_smollm2_keeps_a_long_conversation_going(start_server):
    """The bundled SmolLM2 (its own tokenizer and template) on a small context."""
    n_ctx = 768  # the Korean office system prompt alone is ~390 SmolLM2 tokens
    server = start_server("office", models=False, env={
        "CHATBOT_OFFICE__MODEL__N_CTX": str(n_ctx), "CHATBOT_OFFICE__GENERATION__MAX_TOKENS":
        "48", "CHATBOT_SEARCH": "none", **ONE_THREAD})
    ref = {"db_id": str(uuid.uuid4()), "user_id": "smol-talker"}
    with server.client(timeout=300) as http:
        answers = []
        for i in range(TURNS):
            question = f"Turn {i}. Write a long, detailed essay about the history of " + \
                "European cities, " * (1 + i // 4)
            r = http.post("/Llama", json={"input_data": question[:500], **ref})
            assert r.status_code == 200, (i, r.text)
            answers.append(r)
        huge = http.post("/Llama", json={"input_data": "hi " * 166})
        v1 = http.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "history " * 800}], "stream": True})
    server.stop()
    replayed = _replayed(answers)
    assert [k + d for k, d in replayed] == [min(i, 8) for i in range(TURNS)]
    assert max(d for _, d in replayed) > 0 and replayed[-1][0] < 8
    for r in answers:
        assert int(r.headers["x-prompt-tokens"]) + int(r.headers["x-generated-tokens"]) <= n_ctx
    assert huge.status_code == 200  # a long question on a short context still fits
    assert _assert_400(v1)["context_tokens"] == n_ctx
    assert json.loads(v1.text)["prompt_tokens"] > n_ctx
