"""The MongoDB history store against a real MongoDB-wire server: FerretDB v1 (SQLite backend).

See tests/support/ferretdb.py for why FerretDB v1: no PostgreSQL needed, built from its Go module.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from pymongo.errors import PyMongoError

from chatbot.stores.mongo import MongoHistoryStore
from tests.support.history import mongo_document


def _store(server, **kwargs) -> MongoHistoryStore:
    return MongoHistoryStore(server.url, f"test_{uuid.uuid4().hex[:8]}", **kwargs)


def test_turns_are_stored_as_one_document_per_conversation_and_replayed_oldest_first(ferretdb):
    async def scenario():
        store = _store(ferretdb)
        db_id = str(uuid.uuid4())
        try:
            indexes = [await store.append_turn("office", "u1", db_id, f"q{i}", f"a{i}")
                       for i in range(1, 11)]
            last8 = await store.recent_turns("office", "u1", db_id, 8)
            doc = await mongo_document(store, "office", "u1", db_id)
            raw = await store._db["office_log_u1"].find({}).to_list()
            index_info = await store._db["office_log_u1"].index_information()
        finally:
            await store.close()
        return indexes, last8, doc, raw, index_info

    indexes, last8, doc, raw, index_info = asyncio.run(scenario())
    assert indexes == list(range(1, 11))
    assert [t.index for t in last8] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert [(t.input_data, t.output_data) for t in last8[:1]] == [("q3", "a3")]
    assert len(raw) == 1 and doc["id"] == raw[0]["id"]
    assert [t["index"] for t in doc["value"]] == list(range(1, 11))
    assert set(doc["value"][0]) == {"index", "input_data", "output_data", "timestamp"}
    assert any(info["key"] == [("id", 1)] and info.get("unique")
               for info in index_info.values()), index_info


def test_concurrent_turns_of_one_conversation_get_distinct_consecutive_indexes(ferretdb):
    async def scenario():
        store = _store(ferretdb)
        db_id = str(uuid.uuid4())
        try:
            got = await asyncio.gather(*(
                store.append_turn("character", "racer", db_id, f"in {i}", f"out {i}")
                for i in range(20)))
            doc = await mongo_document(store, "character", "racer", db_id)
        finally:
            await store.close()
        return got, doc

    got, doc = asyncio.run(scenario())
    assert sorted(got) == list(range(1, 21))
    stored = {t["index"]: t["input_data"] for t in doc["value"]}
    assert sorted(stored) == list(range(1, 21))  # no duplicate, no gap, nothing lost
    assert {stored[i] for i in got} == {f"in {i}" for i in range(20)}
    assert doc["turns"] == 20


def test_users_and_personas_are_isolated_in_their_own_collections(ferretdb):
    async def scenario():
        store = _store(ferretdb)
        db_id = str(uuid.uuid4())
        try:
            await store.append_turn("office", "alice", db_id, "alice asks", "x")
            await store.append_turn("office", "bob", db_id, "bob asks", "y")
            await store.append_turn("character", "alice", db_id, "alice plays", "z")
            seen = {key: [t.input_data for t in await store.recent_turns(*key, db_id, 10)]
                    for key in [("office", "alice"), ("office", "bob"), ("character", "alice"),
                                ("character", "bob")]}
            names = sorted(await store._db.list_collection_names())
        finally:
            await store.close()
        return seen, names

    seen, names = asyncio.run(scenario())
    assert seen == {("office", "alice"): ["alice asks"], ("office", "bob"): ["bob asks"],
                    ("character", "alice"): ["alice plays"], ("character", "bob"): []}
    assert names == ["character_log_alice", "office_log_alice", "office_log_bob"]


def test_a_stopped_or_paused_server_degrades_then_recovers_without_a_new_client(fresh_ferretdb):
    """Kill (crash) and SIGSTOP (slow) the server under a live store; it reconnects itself."""
    server = fresh_ferretdb

    async def wait_state(store, state, timeout=15.0):
        deadline = time.monotonic() + timeout
        while store.status()["state"] != state:
            assert time.monotonic() < deadline, store.status()
            await asyncio.sleep(0.1)

    async def scenario():
        store = _store(server, timeout_s=0.5, probe_interval_s=0.2)
        await store.start()
        db_id = str(uuid.uuid4())
        try:
            await wait_state(store, "ok")
            await store.append_turn("office", "u", db_id, "before", "a")

            server.kill()
            with pytest.raises(PyMongoError):
                await store.recent_turns("office", "u", db_id, 8)
            with pytest.raises(PyMongoError):
                await store.append_turn("office", "u", db_id, "during outage", "lost")
            down = store.status()

            server.start()  # same port, same data
            await wait_state(store, "ok")
            after_restart = [t.input_data for t in await store.recent_turns("office", "u",
                                                                            db_id, 8)]

            server.pause()
            started = time.monotonic()
            with pytest.raises(PyMongoError):
                await store.recent_turns("office", "u", db_id, 8)
            slow_s = time.monotonic() - started
            paused = store.status()["state"]
            server.resume()
            await wait_state(store, "ok")
            index = await store.append_turn("office", "u", db_id, "after", "b")
        finally:
            await store.close()
        return down, after_restart, slow_s, paused, index

    down, after_restart, slow_s, paused, index = asyncio.run(scenario())
    assert down["state"] == "degraded" and down["failures"]["read"] >= 1
    assert down["failures"]["write"] >= 1 and down["detail"]
    assert after_restart == ["before"]  # the failed write left nothing behind
    assert slow_s < 5 and paused == "degraded"
    assert index == 2


def test_an_idle_store_reports_the_server_gone_and_back(fresh_ferretdb):
    """No request in between: /readyz still says `degraded` while the server is away."""
    server = fresh_ferretdb

    async def state_within(store, state, timeout=15.0) -> float:
        started = time.monotonic()
        while store.status()["state"] != state:
            assert time.monotonic() - started < timeout, store.status()
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    async def scenario():
        store = _store(server, timeout_s=0.5, probe_interval_s=0.2)
        await store.start()
        try:
            await state_within(store, "ok")
            server.kill()
            gone_s = await state_within(store, "degraded")
            detail = store.status()["detail"]
            server.start()
            back_s = await state_within(store, "ok")
        finally:
            await store.close()
        return gone_s, detail, back_s

    gone_s, detail, back_s = asyncio.run(scenario())
    print(f"idle store: degraded {gone_s:.2f}s after the kill, ok {back_s:.2f}s after the start")
    assert detail.startswith("ping failed")


def test_a_turn_written_again_with_if_absent_is_not_doubled_and_keeps_its_timestamp(ferretdb):
    """How the history journal writes a turn whose first write may have been applied."""
    async def scenario():
        store = _store(ferretdb)
        db_id = str(uuid.uuid4())
        stamp = "2026-01-02T03:04:05.678901+00:00"
        try:
            first = await store.append_turn("office", "u1", db_id, "q1", "a1", stamp)
            again = await store.append_turn("office", "u1", db_id, "q1", "a1", stamp,
                                            if_absent=True)
            other = await store.append_turn("office", "u1", db_id, "q2", "a2",
                                            "2026-01-02T03:04:06+00:00", if_absent=True)
            doc = await mongo_document(store, "office", "u1", db_id)
        finally:
            await store.close()
        return first, again, other, doc

    first, again, other, doc = asyncio.run(scenario())
    assert (first, again, other) == (1, 1, 2)
    assert [(t["index"], t["input_data"], t["timestamp"]) for t in doc["value"]] == [
        (1, "q1", "2026-01-02T03:04:05.678901+00:00"), (2, "q2", "2026-01-02T03:04:06+00:00")]


def test_the_journal_keeps_turns_through_a_mongodb_outage_and_writes_them_back(
        fresh_ferretdb, tmp_path):
    """The journaled store against a real MongoDB-wire server killed and restarted: every
    turn answered meanwhile lands once, in order, with its answered-at timestamp."""
    from chatbot.stores.journal import JournaledHistoryStore

    async def scenario():
        store = JournaledHistoryStore(
            MongoHistoryStore(fresh_ferretdb.url, "journal", timeout_s=0.5,
                              probe_interval_s=0.2),
            tmp_path / "journal.jsonl", retry_interval_s=0.2)
        db_id = str(uuid.uuid4())
        await store.start()
        try:
            await store.append_turn("character", "u1", db_id, "before", "a0")
            fresh_ferretdb.kill()
            for i in (1, 2, 3):
                await store.append_turn("character", "u1", db_id, f"during {i}", f"a{i}")
            replay = await store.recent_turns("character", "u1", db_id, 10)
            pending = store.status()["pending"]
            fresh_ferretdb.start()
            async with asyncio.timeout(30):
                while store.status()["pending"]:
                    await asyncio.sleep(0.1)
            await store.append_turn("character", "u1", db_id, "after", "a4")
            doc = await mongo_document(store.store, "character", "u1", db_id)
        finally:
            await store.close()
        return replay, pending, doc

    replay, pending, doc = asyncio.run(scenario())
    assert pending == 3
    assert [t.input_data for t in replay] == ["during 1", "during 2", "during 3"]
    assert [(t["index"], t["input_data"]) for t in doc["value"]] == [
        (1, "before"), (2, "during 1"), (3, "during 2"), (4, "during 3"), (5, "after")]
    stamps = [t["timestamp"] for t in doc["value"]]
    assert stamps == sorted(stamps)
