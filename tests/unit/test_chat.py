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
from chatbot.core.prompts import character_prompt
from chatbot.core.stats import PerformanceStats
from chatbot.domain.conversation import CharacterTurn, ChatMessage
from chatbot.domain.errors import ContextLengthExceededError, GenerationFailedError
from chatbot.domain.personas import CHARACTER
from chatbot.stores.embedded import EmbeddedHistoryStore
from tests.support.engines import CountingEngine, ScriptedEngine
from tests.support.history import embedded_document


def _service(engine, store=None):
    stats = PerformanceStats()
    return ChatService(CHARACTER, engine, store or EmbeddedHistoryStore(),
                       AdmissionQueue(1, 1, stats.mean_service_s), stats, deadline_s=5)


def _turn(conversation=None, context="S" * 50):
    return CharacterTurn("hi", character_name="C", greeting="G", context=context,
                         conversation=conversation)


def _system_tokens(context="S" * 50):
    """The CountingEngine's count of the character system prompt."""
    return len(character_prompt(character_name="C", greeting="G", context=context,
                                user_input="hi").system) + 4


def _chat(service, conversation=None, context="S" * 50):
    return asyncio.run(service.chat(_turn(conversation, context)))


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


def test_history_is_fitted_to_the_context_and_the_store_keeps_every_turn():
    store = EmbeddedHistoryStore()
    _seed_history(store, 10)
    # system + question 6 + 256 (max_tokens) leave 7 * 208 + 100: seven turns of 208 fit,
    # but the window starts on a block boundary (4 turns for character's limit of 10): the
    # turns from the fifth on, six of them, so the next turn replays the same six and more.
    engine = CountingEngine(context=_system_tokens() + 6 + 256 + 7 * 208 + 100)
    result = _chat(_service(engine, store), ("u1", "db"))
    messages, params = engine.streamed[0]
    assert (result.history_turns, result.history_dropped) == (6, 4)
    replayed = [m.content[:3] for m in messages[1:-1]]
    assert replayed == [f"{i:03d}" for i in range(4, 10) for _ in "qa"]  # the newest, whole
    assert all(len(m.content) == 100 for m in messages[1:-1])  # never cut mid-turn
    assert result.prompt_tokens == engine.count_prompt_tokens(messages) == (
        _system_tokens() + 6 + 6 * 208)
    assert params.max_tokens == CHARACTER.generation.max_tokens == 256
    assert result.prompt_tokens + params.max_tokens <= engine.context
    assert len(embedded_document(store, "character", "u1", "db")["value"]) == 11  # 10 + this turn

    # The next turns (short ones) replay from the same first turn (the prefix stays) until
    # the replay limit of 10 turns is passed; then a block of 4 goes at once.
    service = _service(engine, store)
    firsts = []
    for _ in range(5):
        _chat(service, ("u1", "db"))
        firsts.append(engine.streamed[-1][0][1].content[:3])
    assert firsts == ["004", "004", "004", "004", "008"]


def test_the_answer_budget_shrinks_to_what_is_left_and_the_fallback_too():
    store = EmbeddedHistoryStore()
    _seed_history(store, 2)
    bare = _system_tokens() + 6
    engine = CountingEngine(context=bare + 140, stream_pieces=["  "],
                            complete_text="A fallback answer that is long enough.")
    result = _chat(_service(engine, store), ("u1", "db"))
    assert (result.history_turns, result.history_dropped) == (0, 2)
    assert engine.streamed[0][1].max_tokens == 140
    assert engine.complete_calls[0].max_tokens == 140  # not the fallback's 512
    assert result.fallback_used and result.text.startswith("A fallback")


def test_a_prompt_that_cannot_fit_is_context_length_exceeded_and_nothing_is_remembered():
    store = EmbeddedHistoryStore()
    bare = _system_tokens("S" * 90) + 6
    engine = CountingEngine(context=bare)
    service = _service(engine, store)
    with pytest.raises(ContextLengthExceededError) as caught:
        _chat(service, ("u1", "db"), context="S" * 90)
    assert (caught.value.prompt_tokens, caught.value.context_tokens) == (bare, bare)
    assert engine.streamed == [] and engine.complete_calls == []  # never generated, no retry
    assert embedded_document(store, "character", "u1", "db") is None
    assert service.stats.snapshot()["failed"] == 1


def test_the_counter_sees_the_messages_the_engine_gets():
    engine = CountingEngine(context=10_000)
    _chat(_service(engine))
    messages, _ = engine.streamed[0]
    system = character_prompt(character_name="C", greeting="G", context="S" * 50,
                              user_input="hi").system
    assert messages == [ChatMessage("system", system), ChatMessage("user", "hi")]


def test_an_engine_that_cannot_count_still_drops_a_block_at_the_replay_limit():
    # A remote API (no token counts): character replays at most 10 turns; with 11 stored,
    # the window starts at the fifth (a block boundary), as it does on the local engine.
    store = EmbeddedHistoryStore()
    _seed_history(store, 11)
    result = _chat(_service(ScriptedEngine(["A remote answer, long enough."]), store),
                   ("u1", "db"))
    assert (result.history_turns, result.history_dropped) == (7, 3)


def test_each_turn_tells_the_engine_how_the_next_prompt_starts_drops_included():
    # Six turns of 40 tokens fit: the window drops a block of 4 now and then. After each
    # answer the engine is told the next prompt's start (to evaluate while the user reads):
    # the next turn's messages but its new one, exactly, also when that turn drops a block.
    engine = CountingEngine(context=_system_tokens() + 6 + 256 + 6 * 40 + 10,
                            stream_pieces=("A fitting answer, long enough.",))
    service = _service(engine)

    async def conversation():
        for _ in range(14):
            await service.chat(_turn(("u1", "db")))  # its prefill told before it returns

    asyncio.run(conversation())
    replayed = [(len(messages) - 2) // 2 for messages, _ in engine.streamed]
    drops = [b < a for a, b in zip(replayed, replayed[1:], strict=False)]
    assert max(replayed) == 6 and any(drops)
    assert len(engine.prefills) == 14
    for prefill, (messages, _) in zip(engine.prefills, engine.streamed[1:], strict=False):
        assert prefill == messages[:-1]
    assert engine.prefills[0][-1] == ChatMessage("assistant", "A fitting answer, long enough.")


def test_no_prefill_without_a_conversation_or_when_the_turn_was_not_remembered():
    engine = CountingEngine(context=10_000)

    class Down(EmbeddedHistoryStore):
        async def append_turn(self, *args, **kwargs):
            raise ConnectionError("store down")

    async def turns():
        await _service(engine).chat(_turn())  # no conversation: nothing to prepare
        return await _service(engine, Down()).chat(_turn(("u1", "db")))

    assert not asyncio.run(turns()).history_kept
    assert engine.prefills == []
