"""The embedded store keeps MongoDB document semantics, atomically."""

from __future__ import annotations

import asyncio

from chatbot.core.ports import collection_name
from chatbot.stores.embedded import EmbeddedHistoryStore
from tests.support.history import embedded_document


def test_concurrent_turns_of_one_conversation_get_distinct_indexes(tmp_path):
    store = EmbeddedHistoryStore(tmp_path / "h.db")

    async def many():
        return await asyncio.gather(*(store.append_turn("office", "u", "c", f"q{i}", f"a{i}")
                                      for i in range(40)))

    indexes = asyncio.run(many())
    assert sorted(indexes) == list(range(1, 41))
    document = embedded_document(store, "office", "u", "c")
    assert [t["index"] for t in document["value"]] == list(range(1, 41))


def test_recent_turns_are_the_last_n_oldest_first_and_survive_a_restart(tmp_path):
    store = EmbeddedHistoryStore(tmp_path / "h.db")
    for i in range(12):
        asyncio.run(store.append_turn("character", "u", "c", f"q{i}", f"a{i}"))
    asyncio.run(store.close())
    reopened = EmbeddedHistoryStore(tmp_path / "h.db")
    turns = asyncio.run(reopened.recent_turns("character", "u", "c", 10))
    assert [t.input_data for t in turns] == [f"q{i}" for i in range(2, 12)]


def test_collections_are_per_persona_and_user():
    assert collection_name("office", "alice") == "office_log_alice"
    store = EmbeddedHistoryStore()
    asyncio.run(store.append_turn("office", "alice", "c", "q", "a"))
    assert asyncio.run(store.recent_turns("office", "bob", "c", 8)) == []
    assert asyncio.run(store.recent_turns("character", "alice", "c", 8)) == []
