"""Conversation placement (chatbot.core.affinity): only the conversations of a replica that
goes (or a share for one that comes) move, and bounded load keeps any replica under its
bound while the others stay where the ring puts them."""

from __future__ import annotations

import uuid

import pytest

from chatbot.core.affinity import HashRing, bounded_load

KEYS = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(3000)]
PODS = [f"http://10.0.0.{i}:8080" for i in range(1, 5)]


def owners(ring: HashRing) -> dict[str, str]:
    return {key: ring.owner(key) for key in KEYS}


def test_the_same_key_has_the_same_owner_in_every_process_and_order():
    assert owners(HashRing(PODS)) == owners(HashRing(reversed(PODS)))
    assert HashRing(PODS).owner(KEYS[0]) == HashRing(list(PODS) + [PODS[0]]).owner(KEYS[0])


def test_shares_are_even_within_a_few_percent():
    counts = {}
    for owner in owners(HashRing(PODS)).values():
        counts[owner] = counts.get(owner, 0) + 1
    assert set(counts) == set(PODS)
    assert all(0.6 * len(KEYS) / 4 < n < 1.4 * len(KEYS) / 4 for n in counts.values()), counts


def test_removing_a_replica_moves_only_its_conversations():
    before = owners(HashRing(PODS))
    after = owners(HashRing(PODS[:3]))
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == PODS[3]}


def test_adding_a_replica_moves_conversations_only_to_it():
    before = owners(HashRing(PODS[:3]))
    after = owners(HashRing(PODS))
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved and all(after[k] == PODS[3] for k in moved)
    assert len(moved) < 0.4 * len(KEYS)


def test_bounded_load_passes_a_full_owner_for_the_next_on_the_ring():
    ring = HashRing(PODS)
    key = KEYS[0]
    first, second = list(ring.walk(key))[:2]
    others = {m: 2 for m in PODS if m not in (first, second)}
    assert bounded_load(7, len(PODS), 1.25) == 3  # ceil(1.25 * 8 / 4)
    assert ring.owner(key, {**others, first: 2}) == first  # 6 in all: bound 3
    assert ring.owner(key, {**others, first: 3}) == second  # 7 in all: bound 3, first at it
    # A replica under what it runs at once is never passed over.
    assert ring.owner(key, {**others, first: 3}, min_bound=4) == first


def test_placing_many_in_flight_respects_the_bound():
    ring = HashRing(PODS)
    load: dict[str, int] = {}
    for i, key in enumerate(KEYS[:400]):
        owner = ring.owner(key, load, 1.25)
        assert load.get(owner, 0) + 1 <= bounded_load(i, len(PODS), 1.25)
        load[owner] = load.get(owner, 0) + 1
    assert max(load.values()) <= bounded_load(399, len(PODS), 1.25)


def test_skipped_replicas_are_passed_over_and_no_members_means_no_owner():
    ring = HashRing(PODS)
    key = KEYS[1]
    first = ring.owner(key)
    assert ring.owner(key, skip=[first]) == list(ring.walk(key))[1]
    assert ring.owner(key, skip=PODS) is None
    assert HashRing([]).owner(key) is None
    assert list(ring.walk(key))[0] == first and sorted(ring.walk(key)) == sorted(PODS)


def test_load_factor_below_one_is_refused():
    with pytest.raises(ValueError, match="load_factor"):
        bounded_load(1, 2, 0.9)
