"""A stored conversation as its MongoDB document, read from either history store.

Tests use it to check what was remembered; the product's stores expose only the
`HistoryStore` port (recent turns, append).
"""

from __future__ import annotations

from chatbot.core.ports import collection_name
from chatbot.stores.embedded import EmbeddedHistoryStore


def embedded_document(store: EmbeddedHistoryStore, persona: str, user_id: str,
                      db_id: str) -> dict | None:
    """The conversation as its MongoDB document would look (None: nothing stored)."""
    turns = store._recent(collection_name(persona, user_id), db_id, limit=None)
    if not turns:
        return None
    return {"id": db_id, "value": [t.__dict__ for t in turns]}


async def mongo_document(store, persona: str, user_id: str, db_id: str) -> dict | None:
    """The conversation's stored document in a `MongoHistoryStore` (without MongoDB's
    `_id`)."""
    return await store._db[collection_name(persona, user_id)].find_one(
        {"id": db_id}, {"_id": 0})
