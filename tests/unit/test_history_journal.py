"""The pod's history journal (chatbot.stores.journal) over the real embedded store, with the
store made unreachable by a switch: turns answered while it is away are kept in the file,
written once it is back (in order, with their timestamps, once), survive a restart, and a
full or unwritable journal says so. The same against a real MongoDB-wire server (FerretDB,
stopped and restarted) is in tests/service/test_history_journal.py."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3

import pytest

from chatbot.stores.embedded import EmbeddedHistoryStore
from chatbot.stores.journal import JournaledHistoryStore, TurnNotKeptError


class Unreachable(ConnectionError):
    pass


class SwitchedStore:
    """The embedded store behind a switch: `away` makes every call fail as a network
    error would; `applied_then_lost` makes a write succeed but report a failure (the
    server applied it, its answer was lost)."""

    def __init__(self, path) -> None:
        self.inner = EmbeddedHistoryStore(path)
        self.away = False
        self.applied_then_lost = False
        self.closed = False

    async def recent_turns(self, *args):
        if self.away:
            raise Unreachable("store away")
        return await self.inner.recent_turns(*args)

    async def append_turn(self, *args, **kwargs):
        if self.away:
            raise Unreachable("store away")
        index = await self.inner.append_turn(*args, **kwargs)
        if self.applied_then_lost:
            raise Unreachable("written, but the answer was lost")
        return index

    def status(self):
        return {"kind": "embedded", "state": "degraded" if self.away else "ok"}

    async def start(self):
        pass

    async def close(self):
        self.closed = True


def _rows(path, db_id="d1"):
    db = sqlite3.connect(path)
    try:
        return db.execute('SELECT "index", input_data, timestamp FROM turns WHERE id = ? '
                          'ORDER BY "index"', (db_id,)).fetchall()
    finally:
        db.close()


async def _until(condition, timeout_s=10.0):
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def test_turns_answered_while_the_store_is_away_are_written_once_it_is_back(tmp_path):
    async def scenario():
        store = SwitchedStore(tmp_path / "h.db")
        journaled = JournaledHistoryStore(store, tmp_path / "h.journal", retry_interval_s=0.05)
        await journaled.start()
        await journaled.append_turn("office", "u1", "d1", "q1", "a1")  # stored directly
        store.away = True
        for i in (2, 3, 4):
            await journaled.append_turn("office", "u1", "d1", f"q{i}", f"a{i}")
        during = journaled.status()
        history_during = await journaled.recent_turns("office", "u1", "d1", 10)
        lines = (tmp_path / "h.journal").read_text().splitlines()
        store.away = False
        # The next turn of this conversation sees all four (stored + journaled)...
        history_after = await journaled.recent_turns("office", "u1", "d1", 10)
        await journaled.append_turn("office", "u1", "d1", "q5", "a5")
        await _until(lambda: journaled.status()["pending"] == 0)
        after = journaled.status()
        await journaled.close()
        return during, history_during, lines, history_after, after

    during, history_during, lines, history_after, after = asyncio.run(scenario())
    assert during["pending"] == 3 and during["journal"]["state"] == "ok"
    assert [t.input_data for t in history_during] == ["q2", "q3", "q4"]  # store away
    assert [json.loads(line)["input_data"] for line in lines
            if json.loads(line)["op"] == "turn"] == ["q2", "q3", "q4"]
    assert [t.input_data for t in history_after] == ["q1", "q2", "q3", "q4"]
    rows = _rows(tmp_path / "h.db")
    assert [(i, q) for i, q, _ in rows] == [(1, "q1"), (2, "q2"), (3, "q3"), (4, "q4"),
                                           (5, "q5")]
    # Original timestamps: the journaled turns keep the moment they were answered.
    stamps = [ts for _, _, ts in rows]
    assert stamps == sorted(stamps)
    journaled_stamps = [json.loads(line)["timestamp"] for line in lines
                        if json.loads(line)["op"] == "turn"]
    assert stamps[1:4] == journaled_stamps
    assert after["pending"] == 0 and after["journal"]["replayed"] == 4  # q5 waited its turn
    assert (tmp_path / "h.journal").read_text() == ""  # emptied once nothing is pending


def test_pending_turns_survive_a_restart_and_are_written_exactly_once(tmp_path):
    async def first_life():
        store = SwitchedStore(tmp_path / "h.db")
        store.away = True
        journaled = JournaledHistoryStore(store, tmp_path / "h.journal",
                                          retry_interval_s=0.05, flush_on_close_s=0.2)
        await journaled.start()
        for i in (1, 2):
            await journaled.append_turn("character", "u1", "d1", f"q{i}", f"a{i}")
        # The store comes back, but loses its acknowledgements: q1 is written, and the
        # journal cannot know it.
        store.away, store.applied_then_lost = False, True
        await _until(lambda: len(_rows(tmp_path / "h.db")) == 1)
        store.away = True
        # q3 goes straight to the journal, behind q1 and q2 of its conversation.
        await journaled.append_turn("character", "u1", "d1", "q3", "a3")
        await journaled.close()  # graceful stop while the store is away again
        return journaled.status()["pending"]

    async def second_life():
        store = SwitchedStore(tmp_path / "h.db")
        journaled = JournaledHistoryStore(store, tmp_path / "h.journal", retry_interval_s=0.05)
        await journaled.start()
        await _until(lambda: journaled.status()["pending"] == 0)
        await journaled.close()

    assert asyncio.run(first_life()) == 3
    assert [q for _, q, _ in _rows(tmp_path / "h.db")] == ["q1"]
    asyncio.run(second_life())
    assert [(i, q) for i, q, _ in _rows(tmp_path / "h.db")] == [(1, "q1"), (2, "q2"),
                                                               (3, "q3")]


def test_a_write_applied_but_reported_failed_is_not_doubled(tmp_path):
    async def scenario():
        store = SwitchedStore(tmp_path / "h.db")
        journaled = JournaledHistoryStore(store, tmp_path / "h.journal", retry_interval_s=0.05)
        await journaled.start()
        store.applied_then_lost = True
        await journaled.append_turn("office", "u1", "d1", "q1", "a1")
        store.applied_then_lost = False
        await _until(lambda: journaled.status()["pending"] == 0)
        await journaled.close()

    asyncio.run(scenario())
    assert [q for _, q, _ in _rows(tmp_path / "h.db")] == ["q1"]


def test_a_full_journal_refuses_the_turn_and_says_so(tmp_path):
    async def scenario():
        store = SwitchedStore(tmp_path / "h.db")
        store.away = True
        journaled = JournaledHistoryStore(store, tmp_path / "h.journal", max_turns=2)
        await journaled.start()
        await journaled.append_turn("office", "u1", "d1", "q1", "a1")
        await journaled.append_turn("office", "u1", "d2", "q1", "a1")
        with pytest.raises(TurnNotKeptError, match="full"):
            await journaled.append_turn("office", "u1", "d3", "q1", "a1")
        status = journaled.status()
        await journaled.close()
        return status

    status = asyncio.run(scenario())
    assert status["pending"] == 2
    assert status["journal"]["state"] == "full" and status["journal"]["not_kept"] == 1


def test_a_journal_on_a_full_volume_fails_loudly_and_the_store_still_works(tmp_path, caplog):
    """/dev/full is a device that answers every write with ENOSPC: a full volume."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")

    async def scenario():
        store = SwitchedStore(tmp_path / "h.db")
        journaled = JournaledHistoryStore(store, "/dev/full")
        await journaled.start()
        at_start = journaled.status()["journal"]
        await journaled.append_turn("office", "u1", "d1", "q1", "a1")  # the store takes it
        store.away = True
        with pytest.raises(TurnNotKeptError, match="No space left"):
            await journaled.append_turn("office", "u1", "d1", "q2", "a2")
        status = journaled.status()
        await journaled.close()
        return at_start, status

    at_start, status = asyncio.run(scenario())
    assert at_start["state"] == "failed" and "No space left" in at_start["detail"]
    assert status["journal"]["not_kept"] == 1 and status["pending"] == 0
    assert [q for _, q, _ in _rows(tmp_path / "h.db")] == ["q1"]
    assert any(r.levelname == "ERROR" and "cannot be written" in r.getMessage()
               for r in caplog.records)


def test_a_journal_where_no_file_can_be_made_fails_loudly(tmp_path):
    """A read-only place: the journal's directory cannot be created (its parent is a
    file; chmod would not stop root, who runs these tests in CI)."""
    (tmp_path / "not-a-dir").write_text("")

    async def scenario():
        store = SwitchedStore(tmp_path / "h.db")
        journaled = JournaledHistoryStore(store, tmp_path / "not-a-dir" / "h.journal")
        await journaled.start()
        status = journaled.status()
        await journaled.close()
        return status

    status = asyncio.run(scenario())
    assert status["journal"]["state"] == "failed" and status["journal"]["detail"]


# Through the API, with a MongoDB URL where nothing answers.

def _away_app(tmp_path, journal):
    from fastapi.testclient import TestClient

    from chatbot.composition_root import create_app
    from chatbot.domain.personas import Persona
    from chatbot.settings import Settings
    from tests.support.engines import ScriptedEngine
    from tests.support.ports import free_port

    settings = Settings(mongo_url=f"mongodb://127.0.0.1:{free_port()}/", mongo_timeout_s=0.2,
                        history_path=tmp_path / "h.db", history_journal_path=journal,
                        search="none")
    engines = {p: ScriptedEngine(["A scripted ", "answer, ", "long enough."]) for p in Persona}
    return TestClient(create_app(settings, engines=engines))


TURN = {"input_data": "hi", "db_id": "b440780c-cbaa-454f-a8d2-cf884786d89f", "user_id": "u1"}


def test_an_answer_while_mongodb_is_away_is_journaled_and_counted(tmp_path):
    with _away_app(tmp_path, tmp_path / "h.journal") as client:
        r = client.post("/office/Llama", json=TURN)
        ready = client.get("/office/readyz").json()
        metrics = client.get("/office/metrics").text
    assert r.status_code == 200 and "x-history-kept" not in r.headers
    assert ready["history"]["pending"] == 1 and ready["history"]["journal"]["state"] == "ok"
    assert 'chatbot_history_pending{persona="office"} 1.0' in metrics
    assert 'chatbot_history_journaled_total{persona="office"} 1.0' in metrics


def test_an_answer_whose_turn_cannot_be_kept_says_so_in_a_header(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with _away_app(tmp_path, "/dev/full") as client:
        r = client.post("/office/Llama", json=TURN)
        without = client.post("/office/Llama", json={"input_data": "hi"})
        ready = client.get("/office/readyz")
        metrics = client.get("/office/metrics").text
    assert r.status_code == 200 and r.headers["x-history-kept"] == "false"
    assert "x-history-kept" not in without.headers  # no conversation: nothing to keep
    assert ready.status_code == 200  # keeps answering
    assert ready.json()["history"]["journal"]["state"] == "failed"
    assert 'chatbot_history_not_kept_total{persona="office"} 1.0' in metrics
    assert 'chatbot_history_journal_failed{persona="office"} 1.0' in metrics
