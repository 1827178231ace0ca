"""The chat use case's fallback rules, against scripted engines.

These engines are test doubles of the ChatEngine port (the real llama.cpp engine is
exercised by tests/service); they let a test make streaming fail on purpose.
"""

from __future__ import annotations

import asyncio

import pytest

from chatbot.core.admission import Admission
from chatbot.core.chat import ChatService
from chatbot.core.ports import Completion, EngineStatus
from chatbot.core.stats import PerformanceStats
from chatbot.domain.errors import GenerationFailedError
from chatbot.domain.personas import CHARACTER
from chatbot.stores.embedded import EmbeddedHistoryStore


class ScriptedEngine:
    model_name = "scripted"

    def __init__(self, stream_pieces, stream_error=None, complete_text=""):
        self.stream_pieces, self.stream_error = stream_pieces, stream_error
        self.complete_text = complete_text
        self.complete_calls = []

    def status(self):
        return EngineStatus(True, self.model_name)

    async def stream(self, messages, params):
        for piece in self.stream_pieces:
            yield piece
        if self.stream_error:
            raise self.stream_error

    async def complete(self, messages, params):
        self.complete_calls.append(params)
        return Completion(self.complete_text, len(self.complete_text.split()))


def _service(engine, store=None):
    stats = PerformanceStats()
    return ChatService(CHARACTER, engine, store or EmbeddedHistoryStore(),
                       Admission(1, 1, stats.mean_service_s), stats, deadline_s=5)


def _chat(service, conversation=None):
    return asyncio.run(service.chat("hi", conversation, lambda history: []))


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
    assert store.document("character", "u1", "db") is None
    assert service.stats.snapshot()["failed"] == 1


def test_a_successful_turn_is_remembered():
    store = EmbeddedHistoryStore()
    _chat(_service(ScriptedEngine(["Nice to meet you!"]), store), ("u1", "db"))
    doc = store.document("character", "u1", "db")
    assert doc["value"][0]["output_data"] == "Nice to meet you!"
