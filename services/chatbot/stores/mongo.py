"""The MongoDB history store (pymongo's `AsyncMongoClient`, the successor of motor).

Collection `<persona>_log_<user_id>` holds one document per conversation:
`{id: <db_id>, turns: <last index>, value: [{index, input_data, output_data, timestamp}, ...]}`.

A turn is written with one atomic upsert + `$push` that also advances `turns`, guarded by
the `turns` value it read (compare-and-set). On MongoDB two concurrent turns of one
conversation therefore never share an index, even from different replicas: the loser's
filter no longer matches (or its upsert hits the unique index on `id`) and it retries with
the next index. A write that fails leaves nothing behind.

Writes of one conversation are also serialized inside the process. Besides saving the
retries, this is what keeps them correct on FerretDB v1 with SQLite (the server of the
test suite), whose updates are not atomic: it reads and writes the document in separate
steps, so concurrent updates of one document are lost (FerretDB/FerretDB#3040; measured:
20 concurrent `$push` kept 1).

MongoDB being down or slow never fails an answer: every operation is bounded by
`timeout_s` (pymongo's client-side timeout), failures are counted and `status()` reports
`degraded`. A background ping every `probe_interval_s` watches the server between
requests too, so `status()` (the service's /readyz) says `degraded` while the server does
not answer, idle or not, and `ok` once it answers again. pymongo reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import UTC, datetime

from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from chatbot.core.ports import collection_name
from chatbot.domain.conversation import Turn

log = logging.getLogger(__name__)

_MAX_ATTEMPTS = 64


class HistoryConflictError(RuntimeError):
    """Too many concurrent writers on one conversation; the turn was not written."""


class MongoHistoryStore:
    def __init__(
        self, url: str, database: str = "chatbot", timeout_s: float = 2.0,
        probe_interval_s: float = 1.0,
    ) -> None:
        ms = int(timeout_s * 1000)
        # Creating the client does not connect: start-up never fails on an absent server.
        self._client: AsyncMongoClient = AsyncMongoClient(
            url, timeoutMS=ms, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms,
            heartbeatFrequencyMS=max(500, int(probe_interval_s * 1000)), appname="chatbot",
        )
        self._db = self._client[database]
        self.database = database
        self.timeout_s = timeout_s
        self.probe_interval_s = probe_interval_s
        self.failures = {"read": 0, "write": 0, "ping": 0}
        self._state = "connecting"
        self._last_error = ""
        self._indexed: set[str] = set()
        self._probe: asyncio.Task | None = None
        self._closed = False
        self._writing: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    async def start(self) -> None:
        """Start watching the server in the background; never raises."""
        self._ensure_probe()

    async def recent_turns(self, persona: str, user_id: str, db_id: str, limit: int) -> list[Turn]:
        pipeline = [
            {"$match": {"id": db_id}},
            {"$unwind": "$value"},
            {"$sort": {"value.index": -1}},
            {"$limit": limit},
            {"$project": {"_id": 0, "value": 1}},
        ]
        collection = self._db[collection_name(persona, user_id)]
        try:
            cursor = await collection.aggregate(pipeline)
            docs = await cursor.to_list()
        except PyMongoError as exc:
            self._failed("read", exc)
            raise
        self._ok()
        return [_turn(d["value"]) for d in reversed(docs)]

    async def append_turn(
        self, persona: str, user_id: str, db_id: str, input_data: str, output_data: str,
        timestamp: str | None = None, if_absent: bool = False,
    ) -> int:
        name = collection_name(persona, user_id)
        stamp = timestamp or datetime.now(UTC).isoformat()
        try:
            async with self._conversation_lock(name, db_id):
                held = await self._held(name, db_id, stamp, input_data) if if_absent else None
                index = held or await self._append(name, db_id, input_data, output_data, stamp)
        except PyMongoError as exc:
            self._failed("write", exc)
            raise
        self._ok()
        return index

    async def document(self, persona: str, user_id: str, db_id: str) -> dict | None:
        """The conversation's stored document, `{id, turns, value: [turn, ...]}` (without
        MongoDB's `_id`); None when nothing is stored."""
        return await self._db[collection_name(persona, user_id)].find_one(
            {"id": db_id}, {"_id": 0})

    def status(self) -> dict:
        return {
            "kind": "mongodb", "database": self.database, "state": self._state,
            "detail": self._last_error if self._state != "ok" else "",
            "failures": dict(self.failures),
        }

    async def close(self) -> None:
        self._closed = True
        if self._probe is not None:
            # A cancellation that lands inside pymongo's server selection can be absorbed
            # by it (seen: close() hung with the server away); the loop also ends by the
            # flag, and close() does not wait past one timeout for it.
            self._probe.cancel()
            await asyncio.wait({self._probe}, timeout=self.timeout_s + self.probe_interval_s)
        await self._client.close()

    @contextlib.asynccontextmanager
    async def _conversation_lock(self, name: str, db_id: str):
        key = (name, db_id)
        lock, users = self._writing.get(key, (asyncio.Lock(), 0))
        self._writing[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._writing[key]
            if users == 1:
                del self._writing[key]
            else:
                self._writing[key] = (lock, users - 1)

    async def _held(self, name: str, db_id: str, stamp: str, input_data: str) -> int | None:
        """The index of this turn if the conversation already holds it (by its timestamp
        and input), else None."""
        doc = await self._db[name].find_one(
            {"id": db_id, "value.timestamp": stamp}, {"_id": 0, "value": 1})
        for turn in (doc or {}).get("value", []):
            if turn.get("timestamp") == stamp and turn.get("input_data") == input_data:
                return int(turn["index"])
        return None

    async def _append(self, name: str, db_id: str, input_data: str, output_data: str,
                      stamp: str) -> int:
        collection = self._db[name]
        if name not in self._indexed:
            await collection.create_index("id", unique=True)  # one document per conversation
            self._indexed.add(name)
        for _ in range(_MAX_ATTEMPTS):
            doc = await collection.find_one({"id": db_id}, {"_id": 0, "turns": 1})
            if doc is None:
                last, guard = 0, {"$exists": False}
            elif "turns" in doc:
                last = guard = doc["turns"]
            else:  # a document written before `turns` existed
                old = await collection.find_one({"id": db_id}, {"_id": 0, "value": 1}) or {}
                last = max((t.get("index", 0) for t in old.get("value", [])), default=0)
                guard = {"$exists": False}
            turn = {"index": last + 1, "input_data": input_data, "output_data": output_data,
                    "timestamp": stamp}
            try:
                result = await collection.update_one(
                    {"id": db_id, "turns": guard},
                    {"$set": {"turns": last + 1}, "$push": {"value": turn}},
                    upsert=doc is None,
                )
            except DuplicateKeyError:
                result = None  # another writer created the document first
            if result is not None and (result.modified_count or result.upserted_id is not None):
                return last + 1
            await asyncio.sleep(random.uniform(0, 0.005))  # another writer took this index
        raise HistoryConflictError(
            f"{name}/{db_id}: gave up after {_MAX_ATTEMPTS} concurrent-write conflicts")

    def _ok(self) -> None:
        if self._state != "ok":
            log.info("MongoDB history store is available again")
        self._state = "ok"

    def _failed(self, operation: str, exc: Exception) -> None:
        self.failures[operation] += 1
        self._last_error = f"{operation} failed: {type(exc).__name__}: {exc}"[:300]
        if self._state != "degraded":
            log.warning("MongoDB history store degraded: %s", self._last_error)
        self._state = "degraded"
        self._ensure_probe()

    def _ensure_probe(self) -> None:
        if not self._closed and (self._probe is None or self._probe.done()):
            self._probe = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while not self._closed:
            try:
                await self._client.admin.command("ping")
            except PyMongoError as exc:
                self._failed_ping(exc)
            else:
                self._ok()
            await asyncio.sleep(self.probe_interval_s)

    def _failed_ping(self, exc: Exception) -> None:
        self.failures["ping"] += 1
        self._last_error = f"ping failed: {type(exc).__name__}: {exc}"[:300]
        if self._state != "degraded":
            log.warning("MongoDB is not reachable; answering without history: %s",
                        self._last_error)
        self._state = "degraded"


def _turn(value: dict) -> Turn:
    return Turn(int(value["index"]), value["input_data"], value["output_data"],
                str(value.get("timestamp", "")))
