"""Continuous batching seen through HTTP: a real `chatbot serve` on the tiny models."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.server import evaluated_at_turns


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
    replayed text: prefilled while the user reads) and the new turn (its question, then the
    time line) are evaluated."""
    conversation = {"db_id": str(uuid.uuid4()), "user_id": "batching-test"}
    question = "Please review these minutes: " + "the budget line moved; " * 20
    with office3.client() as http:
        before = office3.settled_performance()
        first = http.post("/Llama", json={"input_data": question, **conversation})
        middle = office3.settled_performance()
        second = http.post("/Llama", json={"input_data": "And the totals?", **conversation})
        after = office3.settled_performance()
    assert first.status_code == second.status_code == 200
    assert second.headers["x-history-turns"] == "1"
    reused_first = middle["engine_prompt_tokens_reused"] - before["engine_prompt_tokens_reused"]
    reused_second = after["engine_prompt_tokens_reused"] - middle["engine_prompt_tokens_reused"]
    # Turn 2's work: its own, and turn 1's prefill (not turn 2's, for a turn 3).
    evaluated_second = (evaluated_at_turns(after) - evaluated_at_turns(middle)
                        + middle["engine_prompt_tokens_prefilled"]
                        - before["engine_prompt_tokens_prefilled"])
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


def test_a_turn_sent_once_its_user_has_read_the_answer_evaluates_only_its_own_message(office3):
    """While the user reads, the service evaluates the start of the conversation's next
    prompt (the history it replays and the answer just given, which followed a question
    that carried this turn's time: `prefill_next_turn`); the next turn then evaluates only
    its own message, the question and its time line, however long the answer was."""
    conversation = {"db_id": str(uuid.uuid4()), "user_id": "prefill-test"}

    with office3.client() as http:
        start = office3.settled_performance()
        first = http.post("/Llama", json={"input_data": "Draft the agenda.", **conversation})
        assert first.status_code == 200
        before = office3.settled_performance()  # the user reads: its prefill is done
        second = http.post("/Llama", json={"input_data": "Thanks!", **conversation})
        after = office3.settled_performance()
    assert second.status_code == 200 and second.headers["x-history-turns"] == "1"
    answer_tokens = int(first.headers["x-generated-tokens"])
    prefilled = before["engine_prompt_tokens_prefilled"] - start["engine_prompt_tokens_prefilled"]
    evaluated = evaluated_at_turns(after) - evaluated_at_turns(before)
    reused = after["engine_prompt_tokens_reused"] - before["engine_prompt_tokens_reused"]
    assert reused + evaluated == int(second.headers["x-prompt-tokens"])
    assert prefilled >= answer_tokens > 200  # the answer, prefilled ...
    # ... and reused: without the prefill the turn evaluates it and then its own message.
    assert reused > answer_tokens > evaluated
