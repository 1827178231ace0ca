"""API key usage in MongoDB, shared by every replica (core/budgets.py's `UsageStore`).

Collection `api_key_usage`: one small document per event, `{key, window, requests, tokens,
at}`, and the totals of a key's window summed by an aggregation. Inserting instead of
`$inc` on one counter document is deliberate: inserts never lose an update, on MongoDB and
on FerretDB v1 with SQLite alike, whose updates are not atomic (FerretDB/FerretDB#3040:
concurrent updates of one document are lost). A TTL index on `at` drops the events once
their window is long past; a server that cannot build it only keeps them longer.
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

    async def add(self, name: str, window: int, requests: int, tokens: int) -> None:
        await self._ensure_indexes()
        await self._events.insert_one({"key": name, "window": window, "requests": requests,
                                       "tokens": tokens, "at": datetime.now(UTC)})

    async def totals(self, name: str, window: int) -> Usage:
        cursor = await self._events.aggregate([
            {"$match": {"key": name, "window": window}},
            {"$group": {"_id": None, "requests": {"$sum": "$requests"},
                        "tokens": {"$sum": "$tokens"}}},
        ])
        docs = await cursor.to_list()
        if not docs:
            return Usage()
        return Usage(int(docs[0]["requests"]), int(docs[0]["tokens"]))

    async def close(self) -> None:
        await self._client.close()

    async def _ensure_indexes(self) -> None:
        if self._indexed:
            return
        await self._events.create_index([("key", ASCENDING), ("window", ASCENDING)])
        try:
            await self._events.create_index("at", expireAfterSeconds=KEEP_S)
        except PyMongoError as exc:  # old events then stay; the counts stay right
            log.warning("api_key_usage: no TTL index (%s); old usage events are kept", exc)
        self._indexed = True
