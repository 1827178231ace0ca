"""The host-RAM cache of saved KV sequences: its budget, LRU order and prefix lookup (pure
bookkeeping; the llama.cpp save/restore is tested on a real model in test_batched_engine)."""

from __future__ import annotations

from chatbot.llm.kv_host_cache import KvHostCache

SYSTEM = list(range(100, 140))  # a shared system prompt


def conversation(user: int, turns: int) -> list[int]:
    return SYSTEM + [1000 * user + t for t in range(10 * turns)]


def test_the_budget_holds_and_the_least_recently_saved_leave_first():
    cache = KvHostCache(budget_bytes=300)
    for user in range(4):
        cache.put(conversation(user, 1), b"state", 100)
    assert cache.bytes == 300 and len(cache) == 3 and cache.evicted == 1
    key, n = cache.best(conversation(0, 2))
    assert n == len(SYSTEM)  # user 0 left: only the system prompt is found (in another user)
    key, n = cache.best(conversation(3, 2))
    assert n == len(conversation(3, 1))
    assert cache.take(key).tokens == conversation(3, 1)
    assert cache.bytes == 200 and len(cache) == 2


def test_a_state_larger_than_the_budget_is_not_kept():
    cache = KvHostCache(budget_bytes=50)
    cache.put(conversation(0, 1), b"state", 51)
    assert len(cache) == 0 and cache.bytes == 0 and not cache.fits(51)
    assert not KvHostCache(0).fits(1)


def test_a_later_turn_replaces_the_earlier_one_of_the_same_conversation():
    cache = KvHostCache(budget_bytes=1000)
    cache.put(conversation(0, 1), b"turn 1", 100)
    cache.put(conversation(0, 2), b"turn 2", 150)
    assert len(cache) == 1 and cache.bytes == 150
    assert cache.covers(conversation(0, 1)) and cache.covers(conversation(0, 2))
    assert not cache.covers(conversation(0, 3))
    key, n = cache.best(conversation(0, 3))
    assert n == len(conversation(0, 2))
    assert cache.take(key).state == b"turn 2"
