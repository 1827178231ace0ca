"""A stored conversation as its MongoDB document, read through either history store's
public `document()`: what the tests check was remembered."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from chatbot.stores.embedded import EmbeddedHistoryStore
from chatbot.stores.mongo import MongoHistoryStore


def embedded_document(store: EmbeddedHistoryStore, persona: str, user_id: str,
                      db_id: str) -> dict | None:
    """The conversation as its MongoDB document would look (None: nothing stored). Also
    from a thread whose event loop runs (Playwright's sync API keeps one): then on its own."""
    def read() -> dict | None:
        return asyncio.run(store.document(persona, user_id, db_id))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return read()
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(read).result()


async def mongo_document(store: MongoHistoryStore, persona: str, user_id: str,
                         db_id: str) -> dict | None:
    """The conversation's stored document in a `MongoHistoryStore` (without MongoDB's
    `_id`)."""
    return await store.document(persona, user_id, db_id)
