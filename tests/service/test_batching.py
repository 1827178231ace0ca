"""Continuous batching seen through HTTP: a real `chatbot serve` on the tiny models."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest


@pytest.fixture(scope="module")
def office3(start_server):
    """The office persona alone, three requests at a time, answers long enough to overlap."""
    return start_server("office", env={
        "CHATBOT_OFFICE__MAX_CONCURRENT": "3",
        "CHATBOT_OFFICE__GENERATION__MAX_TOKENS": "400",
        "CHATBOT_OFFICE__GENERATION__TEMPERATURE": "0",
    })


def test_max_concurrent_requests_decode_together(office3):
    def ask(i: int):
        with office3.client() as http:
            return http.post("/Llama", json={"input_data": f"Question number {i}, please."})

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(ask, range(3)))
    assert [r.status_code for r in answers] == [200, 200, 200]
    p = office3.performance()
    assert p["engine_peak_sequences"] == 3
    assert p["engine_sequences_active"] == 0


def test_a_conversations_next_turn_reuses_its_earlier_prompt(office3):
    """Turn 2 re-evaluates only what follows turn 1's question: the system prompt and turn
    1's question (long here) stay in the KV cache between the turns; turn 1's answer (as
    replayed text) and the new turn (its question, then the time line) are evaluated."""
    conversation = {"db_id": str(uuid.uuid4()), "user_id": "batching-test"}
    question = "Please review these minutes: " + "the budget line moved; " * 20
    with office3.client() as http:
        before = office3.performance()
        first = http.post("/Llama", json={"input_data": question, **conversation})
        middle = office3.performance()
        second = http.post("/Llama", json={"input_data": "And the totals?", **conversation})
        after = office3.performance()
    assert first.status_code == second.status_code == 200
    assert second.headers["x-history-turns"] == "1"
    reused_first = middle["engine_prompt_tokens_reused"] - before["engine_prompt_tokens_reused"]
    reused_second = after["engine_prompt_tokens_reused"] - middle["engine_prompt_tokens_reused"]
    evaluated_second = (after["engine_prompt_tokens_evaluated"]
                        - middle["engine_prompt_tokens_evaluated"])
    # Turn 1 found at most the shared system prompt; turn 2 also found the 20-fold question.
    assert reused_second > reused_first + 60
    # ... and evaluated turn 1's answer and its own turn, nothing before them.
    assert evaluated_second <= int(first.headers["x-generated-tokens"]) + 200


def test_the_sequential_engine_stays_selectable(start_server):
    server = start_server("office", env={"CHATBOT_ENGINE": "sequential"})
    with server.client() as http:
        ready = http.get("/readyz").json()
        answer = http.post("/Llama", json={"input_data": "Hello there, one question."})
    assert ready["engine"]["engine"] == "sequential"
    assert answer.status_code == 200
