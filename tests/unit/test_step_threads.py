"""Decode steps on one thread or all of them (`llm/threads.py`)."""

from __future__ import annotations

from chatbot.llm.threads import step_threads

TINY, SMOLLM2 = 765_568, 134_515_008  # weights of the tiny test model and SmolLM2-135M


def test_a_step_too_small_to_split_runs_on_one_thread():
    assert step_threads(1, TINY, 2) == 1  # one token each of a few conversations
    assert step_threads(8, TINY, 2) == 1
    assert step_threads(256, TINY, 2) == 2  # a prompt chunk is worth splitting
    assert step_threads(1, SMOLLM2, 2) == 2  # a real model's single token too
    assert step_threads(1, SMOLLM2, 1) == 1
