"""The embedded history store: SQLite, with the MongoDB document semantics.

Collection `<persona>_log_<user_id>` holds one document per conversation (`db_id`), whose
`value` is the list of turns `{index, input_data, output_data, timestamp}`. Each turn is a
row here; the next index is allocated inside the same INSERT, so concurrent turns of one
conversation never share an index and a failed write leaves nothing half-written.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from chatbot.core.ports import collection_name
from chatbot.domain.conversation import Turn

_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    collection  TEXT NOT NULL,
    id          TEXT NOT NULL,
    "index"     INTEGER NOT NULL,
    input_data  TEXT NOT NULL,
    output_data TEXT NOT NULL,
    timestamp   TEXT NOT NULL,
    PRIMARY KEY (collection, id, "index")
) WITHOUT ROWID;
"""


class EmbeddedHistoryStore:
    def __init__(self, path: Path | str = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    async def recent_turns(self, persona: str, user_id: str, db_id: str, limit: int) -> list[Turn]:
        collection = collection_name(persona, user_id)
        return await asyncio.to_thread(self._recent, collection, db_id, limit)

    async def append_turn(
        self, persona: str, user_id: str, db_id: str, input_data: str, output_data: str,
        timestamp: str | None = None, if_absent: bool = False,
    ) -> int:
        return await asyncio.to_thread(
            self._append, collection_name(persona, user_id), db_id, input_data, output_data,
            timestamp or datetime.now(UTC).isoformat(), if_absent,
        )

    async def document(self, persona: str, user_id: str, db_id: str) -> dict | None:
        """The whole conversation as its MongoDB document would look, `{id, value: [turn,
        ...]}`; None when nothing is stored."""
        turns = await asyncio.to_thread(
            self._recent, collection_name(persona, user_id), db_id, None)
        return {"id": db_id, "value": [t.__dict__ for t in turns]} if turns else None

    def status(self) -> dict:
        return {"kind": "embedded", "path": self.path, "state": "ok"}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        with self._lock:
            self._db.close()

    def _recent(self, collection: str, db_id: str, limit: int | None) -> list[Turn]:
        with self._lock:
            rows = self._db.execute(
                'SELECT "index", input_data, output_data, timestamp FROM turns '
                'WHERE collection = ? AND id = ? ORDER BY "index" DESC LIMIT ?',
                (collection, db_id, -1 if limit is None else limit),
            ).fetchall()
        return [Turn(*row) for row in reversed(rows)]

    def _append(self, collection: str, db_id: str, input_data: str, output_data: str,
                stamp: str, if_absent: bool) -> int:
        with self._lock:
            if if_absent:
                held = self._db.execute(
                    'SELECT "index" FROM turns WHERE collection = ? AND id = ? '
                    "AND timestamp = ? AND input_data = ?",
                    (collection, db_id, stamp, input_data)).fetchone()
                if held is not None:
                    return held[0]
            row = self._db.execute(
                'INSERT INTO turns (collection, id, "index", input_data, output_data, timestamp) '
                'SELECT ?, ?, COALESCE(MAX("index"), 0) + 1, ?, ?, ? FROM turns '
                'WHERE collection = ? AND id = ? RETURNING "index"',
                (collection, db_id, input_data, output_data, stamp, collection, db_id),
            ).fetchone()
        return row[0]
