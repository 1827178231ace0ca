"""API key usage in MongoDB, shared by every replica (core/budgets.py's `UsageStore`).

Collection `api_key_usage`: one small document per event, `{key, window, kind, n, at}` (kind
`requests` or `tokens`), and the totals of a key's window summed by one aggregation grouped
by kind. Inserting instead of `$inc` on one counter document is deliberate: inserts never
lose an update, on MongoDB and on FerretDB v1 with SQLite alike, whose updates are not atomic
(FerretDB/FerretDB#3040: concurrent updates of one document are lost). One accumulator per
`$group`, because FerretDB v1 gets a second `$sum` in the same `$group` wrong (0).

Old events go: a TTL index on `at` where the server has them (MongoDB; FerretDB v1 answers
NotImplemented), and each process deletes the windows two minutes past once per window.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.errors import PyMongoError

from chatbot.core.budgets import Usage

log = logging.getLogger(__name__)

COLLECTION = "api_key_usage"
KEEP_S = 300  # events older than this are deleted by the TTL index


class MongoUsageStore:
    def __init__(self, url: str, database: str = "chatbot", timeout_s: float = 2.0) -> None:
        ms = int(timeout_s * 1000)
        # Creating the client does not connect: start-up never fails on an absent server.
        self._client: AsyncMongoClient = AsyncMongoClient(
            url, timeoutMS=ms, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms,
            appname="chatbot-budgets")
        self._events = self._client[database][COLLECTION]
        self._indexed = False
        self._swept: int | None = None  # the window whose old events were last deleted

    async def add(self, name: str, window: int, requests: int, tokens: int) -> None:
        await self._ensure_indexes()
        at = datetime.now(UTC)
        events = [{"key": name, "window": window, "kind": kind, "n": n, "at": at}
                  for kind, n in (("requests", requests), ("tokens", tokens)) if n]
        if events:
            await self._events.insert_many(events)
        if window != self._swept:
            self._swept = window
            await self._events.delete_many({"window": {"$lt": window - 2}})

    async def totals(self, name: str, window: int) -> Usage:
        cursor = await self._events.aggregate([
            {"$match": {"key": name, "window": window}},
            {"$group": {"_id": "$kind", "n": {"$sum": "$n"}}},
        ])
        sums = {doc["_id"]: int(doc["n"]) for doc in await cursor.to_list()}
        return Usage(sums.get("requests", 0), sums.get("tokens", 0))

    async def close(self) -> None:
        await self._client.close()

    async def _ensure_indexes(self) -> None:
        if self._indexed:
            return
        self._indexed = True  # once per process, even when the TTL index is refused
        try:
            await self._events.create_index([("key", ASCENDING), ("window", ASCENDING)])
            await self._events.create_index("at", expireAfterSeconds=KEEP_S)
        except PyMongoError as exc:  # the sweep in add() deletes old windows instead
            log.info("api_key_usage: no TTL index (%s); old windows are deleted by the "
                     "services", exc)
