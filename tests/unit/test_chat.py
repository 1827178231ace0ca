"""The chat use case's fallback rules, against scripted engines.

The engines (tests/support/engines.py) are test doubles of the ChatEngine port (the real
llama.cpp engine is exercised by tests/service); they let a test make streaming fail on
purpose.
"""

from __future__ import annotations

import asyncio

import pytest

from chatbot.core.admission_queue import AdmissionQueue
from chatbot.core.chat import ChatService
from chatbot.core.prompts import with_history
from chatbot.core.stats import PerformanceStats
from chatbot.domain.conversation import ChatMessage
from chatbot.domain.errors import ContextLengthExceededError, GenerationFailedError
from chatbot.domain.personas import CHARACTER
from chatbot.stores.embedded import EmbeddedHistoryStore
from tests.support.engines import CountingEngine, ScriptedEngine
from tests.support.history import embedded_document


def _service(engine, store=None):
    stats = PerformanceStats()
    return ChatService(CHARACTER, engine, store or EmbeddedHistoryStore(),
                       AdmissionQueue(1, 1, stats.mean_service_s), stats, deadline_s=5)


def _chat(service, conversation=None):
    return asyncio.run(service.answer("hi", conversation, lambda history, results: []))


def test_a_good_stream_needs_no_fallback():
    engine = ScriptedEngine(["Hello ", "there, ", "traveller!"])
    result = _chat(_service(engine))
    assert result.text == "Hello there, traveller!" and not result.fallback_used
    assert engine.complete_calls == []


def test_a_failing_stream_falls_back_with_the_fallback_parameters():
    engine = ScriptedEngine(["Hel"], RuntimeError("stream broke"), "A complete answer here.")
    result = _chat(_service(engine))
    assert result.text == "A complete answer here." and result.fallback_used
    assert engine.complete_calls == [CHARACTER.fallback]
    assert engine.complete_calls[0].max_tokens == 512


def test_when_both_fail_it_is_an_error_and_nothing_is_remembered():
    store = EmbeddedHistoryStore()
    service = _service(ScriptedEngine(["  "], None, "   "), store)
    with pytest.raises(GenerationFailedError):
        _chat(service, ("u1", "db"))
    assert embedded_document(store, "character", "u1", "db") is None
    assert service.stats.snapshot()["failed"] == 1


def test_a_successful_turn_is_remembered():
    store = EmbeddedHistoryStore()
    _chat(_service(ScriptedEngine(["Nice to meet you!"]), store), ("u1", "db"))
    doc = embedded_document(store, "character", "u1", "db")
    assert doc["value"][0]["output_data"] == "Nice to meet you!"


def _seed_history(store, n, size=100):
    async def seed():
        for i in range(n):
            await store.append_turn("character", "u1", "db", f"{i:03d}" + "q" * (size - 3),
                                    f"{i:03d}" + "a" * (size - 3))
    asyncio.run(seed())


def _build(question, system="S" * 50):
    return lambda history, results: with_history(system, history, question)


def test_history_is_fitted_to_the_context_and_the_store_keeps_every_turn():
    store = EmbeddedHistoryStore()
    _seed_history(store, 10)
    # system 54 + question 6 + 256 (max_tokens) leaves 684: three turns of 208 fit, not four.
    engine = CountingEngine(context=1000)
    result = asyncio.run(_service(engine, store).answer("hi", ("u1", "db"), _build("hi")))
    messages, params = engine.streamed[0]
    assert (result.history_turns, result.history_dropped) == (3, 7)
    replayed = [m.content[:3] for m in messages[1:-1]]
    assert replayed == ["007", "007", "008", "008", "009", "009"]  # the newest, whole
    assert all(len(m.content) == 100 for m in messages[1:-1])  # never cut mid-turn
    assert result.prompt_tokens == engine.count_prompt_tokens(messages) == 60 + 3 * 208
    assert params.max_tokens == CHARACTER.generation.max_tokens == 256
    assert result.prompt_tokens + params.max_tokens <= 1000
    assert len(embedded_document(store, "character", "u1", "db")["value"]) == 11  # 10 + this turn


def test_the_answer_budget_shrinks_to_what_is_left_and_the_fallback_too():
    store = EmbeddedHistoryStore()
    _seed_history(store, 2)
    engine = CountingEngine(context=200, stream_pieces=["  "],
                            complete_text="A fallback answer that is long enough.")
    result = asyncio.run(_service(engine, store).answer("hi", ("u1", "db"), _build("hi")))
    assert (result.history_turns, result.history_dropped) == (0, 2)
    assert engine.streamed[0][1].max_tokens == 200 - 60
    assert engine.complete_calls[0].max_tokens == 200 - 60  # not the fallback's 512
    assert result.fallback_used and result.text.startswith("A fallback")


def test_a_prompt_that_cannot_fit_is_context_length_exceeded_and_nothing_is_remembered():
    store = EmbeddedHistoryStore()
    engine = CountingEngine(context=100)
    service = _service(engine, store)
    with pytest.raises(ContextLengthExceededError) as caught:
        asyncio.run(service.answer("hi", ("u1", "db"), _build("hi", system="S" * 90)))
    assert (caught.value.prompt_tokens, caught.value.context_tokens) == (100, 100)
    assert engine.streamed == [] and engine.complete_calls == []  # never generated, no retry
    assert embedded_document(store, "character", "u1", "db") is None
    assert service.stats.snapshot()["failed"] == 1


def test_the_counter_sees_the_messages_the_engine_gets():
    engine = CountingEngine(context=10_000)
    asyncio.run(_service(engine).answer("hi", None, _build("hi")))
    messages, _ = engine.streamed[0]
    assert messages == [ChatMessage("system", "S" * 50), ChatMessage("user", "hi")]
