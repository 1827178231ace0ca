"""No answered turn is lost: a history store wrapped with the pod's own journal.

A turn the history store cannot take (MongoDB away, slow, failing) is appended to a local
journal file, one JSON line fsync'ed before the answer goes out, and written to the store
once it is back, by a background task: in order within its conversation, with the
timestamp it was answered at, exactly once. A write that failed after the server applied
it is not doubled: a journaled turn is written with `if_absent`, and the store recognises
the turn by its timestamp and input.

While a conversation has turns in the journal, its next turns are journaled behind them
(never written around them), and its history replays them after the stored turns, so the
model sees the whole conversation.

The journal is replayed when the process starts (a container restarted, or the service
restarted on the same volume), and `close()` (a graceful shutdown) first tries to write
what is pending, for at most `flush_on_close_s`: a pod whose volume goes away with it (an
emptyDir) writes its turns before it exits if the store answers by then.

Bounded: at `max_turns` pending turns a new turn is not kept; it is counted, logged, and
its answer says so (the chat use case sees the write fail). A journal that cannot be
written (a read-only or full volume) is reported in `status()` (/readyz: `history.journal`)
and logged as an error; the service keeps answering.

File format (JSON lines): `{"op": "turn", "id", "persona", "user_id", "db_id",
"input_data", "output_data", "timestamp"}` and `{"op": "done", "id"}` once written; the
file is emptied whenever nothing is pending, and rewritten when done lines pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from chatbot.core.ports import HistoryStore
from chatbot.domain.conversation import Turn

log = logging.getLogger(__name__)


class TurnNotKeptError(RuntimeError):
    """The history store did not take the turn and the journal could not keep it."""


@dataclass(frozen=True)
class PendingTurn:
    id: str
    persona: str
    user_id: str
    db_id: str
    input_data: str
    output_data: str
    timestamp: str

    @property
    def conversation(self) -> tuple[str, str, str]:
        return self.persona, self.user_id, self.db_id


class JournalFile:
    """The append-only file: every record written (unbuffered, O_APPEND) and fsync'ed
    before `append` returns; a write that fails is cut off again, so that a later record
    never continues a torn line. It recovers by itself when the volume takes writes again.

    `path` None keeps the journal in memory only (nothing survives the process)."""

    def __init__(self, path: Path | str | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.error = ""

    def open(self) -> list[PendingTurn]:
        """Opens the file for appending; returns the turns it still holds (not done)."""
        if self.path is None:
            return []
        pending: list[PendingTurn] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_file():
                pending = self._read()
            # Fails now, not at the first outage, on a volume that takes no writes.
            self.append([{"op": "open", "pid": os.getpid(),
                          "at": datetime.now(UTC).isoformat()}])
        except OSError as exc:
            self._fail(exc)
            with contextlib.suppress(OSError):
                if not pending and self.path.is_file():
                    pending = self._read()
        return pending

    def append(self, records: list[dict]) -> None:
        if self.path is None:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        with self._lock:
            try:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                       0o600)
                size = os.fstat(self._fd).st_size
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(self._fd, view):]
                    os.fsync(self._fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, size)
                    raise
            except OSError as exc:
                self._fail(exc)
                raise
            if self.error:
                log.info("the history journal %s takes writes again", self.path)
            self.error = ""

    def rewrite(self, pending: list[PendingTurn]) -> None:
        """Replaces the file by just the pending turns (empty when none): atomically, by
        a new file renamed over it."""
        if self.path is None or not self.path.is_file():
            return
        with self._lock:
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as out:
                for turn in pending:
                    out.write(json.dumps({"op": "turn", **asdict(turn)}, ensure_ascii=False)
                              + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
            if self._fd is not None:
                os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    @property
    def failed(self) -> bool:
        return bool(self.error)

    def _fail(self, exc: OSError) -> None:
        first = not self.error
        self.error = f"{type(exc).__name__}: {exc}"[:300]
        if first:
            log.error("the history journal %s cannot be written (%s): turns answered while "
                      "the history store is away will not be kept", self.path, self.error)

    def _read(self) -> list[PendingTurn]:
        turns: dict[str, PendingTurn] = {}
        with open(self.path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash
                    log.warning("history journal %s: line %d is incomplete; ignored",
                                self.path, number)
                    continue
                if record.get("op") == "turn":
                    record.pop("op")
                    turns[record["id"]] = PendingTurn(**record)
                elif record.get("op") == "done":
                    turns.pop(record["id"], None)
        return list(turns.values())


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class JournaledHistoryStore:
    """`HistoryStore` over another one, with the pod's journal in front of it."""

    def __init__(self, store: HistoryStore, path: Path | str | None, *, max_turns: int = 10_000,
                 retry_interval_s: float = 1.0, flush_on_close_s: float = 3.0) -> None:
        self.store = store
        self.journal = JournalFile(path)
        self.max_turns = max_turns
        self.retry_interval_s = retry_interval_s
        self.flush_on_close_s = flush_on_close_s
        self._pending: list[PendingTurn] = []
        self._done_lines = 0
        self.journaled = 0  # turns journaled since start
        self.replayed = 0  # journaled turns written to the store since start
        self.not_kept = 0  # turns lost: journal full or failed
        self._flusher: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._file_lock = asyncio.Lock()
        self._closed = False
        self._opened = False

    # --- the HistoryStore port ---

    async def start(self) -> None:
        self._open()
        await self.store.start()
        if self._pending:
            log.info("history journal: %d turns answered earlier are pending; writing them "
                     "once the history store answers", len(self._pending))
        self._ensure_flusher()

    async def recent_turns(self, persona: str, user_id: str, db_id: str,
                           limit: int) -> list[Turn]:
        self._open()
        key = (persona, user_id, db_id)
        pending = [t for t in self._pending if t.conversation == key]
        try:
            stored = await self.store.recent_turns(persona, user_id, db_id, limit)
        except Exception:
            if not pending:
                raise
            log.warning("history read failed; replaying the %d turns of %s/%s still in the "
                        "journal", len(pending), user_id, db_id)
            stored = []
        held = {(t.timestamp, t.input_data) for t in stored}
        last = stored[-1].index if stored else 0
        extra = [Turn(last + i, t.input_data, t.output_data, t.timestamp)
                 for i, t in enumerate(
                     (t for t in pending if (t.timestamp, t.input_data) not in held), 1)]
        return (stored + extra)[-limit:] if limit else stored + extra

    async def append_turn(self, persona: str, user_id: str, db_id: str, input_data: str,
                          output_data: str, timestamp: str | None = None,
                          if_absent: bool = False) -> int:
        self._open()
        turn = PendingTurn(uuid.uuid4().hex, persona, user_id, db_id, input_data, output_data,
                           timestamp or datetime.now(UTC).isoformat())
        # Straight to the journal while the store is known to be away (no timeout to wait
        # out per answer), or behind the conversation's pending turns.
        away = self.store.status().get("state") == "degraded"
        if not away and not any(t.conversation == turn.conversation for t in self._pending):
            try:
                return await self.store.append_turn(persona, user_id, db_id, input_data,
                                                     output_data, turn.timestamp, if_absent)
            except Exception as exc:
                log.warning("history write failed for %s/%s (%s); journaling the turn",
                            user_id, db_id, exc)
        await self._journal(turn)
        return 0  # its index is given when it is written

    def status(self) -> dict:
        status = dict(self.store.status())
        status["pending"] = len(self._pending)
        state = "failed" if self.journal.failed else (
            "full" if len(self._pending) >= self.max_turns else "ok")
        status["journal"] = {
            "state": state, "path": str(self.journal.path or ":memory:"),
            "detail": self.journal.error, "max_turns": self.max_turns,
            "journaled": self.journaled, "replayed": self.replayed, "not_kept": self.not_kept,
        }
        return status

    async def close(self) -> None:
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.wait({self._flusher}, timeout=1.0)
        if self._pending:
            try:
                async with asyncio.timeout(self.flush_on_close_s):
                    await self._flush()
            except Exception as exc:  # noqa: BLE001 (the store is away, or slow)
                log.debug("history journal: final flush stopped: %r", exc)
            if self._pending:
                log.warning("history journal: %d turns still pending at exit; kept in %s "
                            "for the next start", len(self._pending),
                            self.journal.path or "memory (lost)")
        self.journal.close()
        await self.store.close()

    # --- the journal ---

    def _open(self) -> None:
        if not self._opened:
            self._opened = True
            self._pending = self.journal.open()

    async def _journal(self, turn: PendingTurn) -> None:
        why = ""
        async with self._file_lock:
            if len(self._pending) >= self.max_turns:
                why = f"the journal is full ({self.max_turns} turns pending)"
            else:
                try:
                    await asyncio.to_thread(self.journal.append,
                                            [{"op": "turn", **asdict(turn)}])
                except OSError as exc:
                    why = f"the journal cannot be written ({type(exc).__name__}: {exc})"
                else:
                    self._pending.append(turn)
                    self.journaled += 1
        if why:
            self.not_kept += 1
            log.error("history: a turn of %s/%s is not kept: the store did not take it and "
                      "%s", turn.user_id, turn.db_id, why)
            raise TurnNotKeptError(why)
        self._ensure_flusher()
        self._wake.set()

    def _ensure_flusher(self) -> None:
        if not self._closed and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while not self._closed:
            if self._pending:
                try:
                    await self._flush()
                except Exception as exc:  # noqa: BLE001 (the store is still away)
                    log.debug("history journal: the store does not take turns yet: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.retry_interval_s):
                    await self._wake.wait()

    async def _flush(self) -> None:
        """Writes the pending turns in journal order; the first failure ends the pass (the
        turns after it, of its conversation or any other, wait for the next)."""
        while self._pending:
            turn = self._pending[0]
            await self.store.append_turn(turn.persona, turn.user_id, turn.db_id,
                                         turn.input_data, turn.output_data, turn.timestamp,
                                         if_absent=True)
            await self._mark_done(turn)
            self.replayed += 1
        if self.replayed:
            log.info("history journal: every pending turn is written (%d since start)",
                     self.replayed)

    async def _mark_done(self, turn: PendingTurn) -> None:
        """Records that `turn` is written, then drops it from the pending turns (under the
        lock that journaling takes: a turn journaled meanwhile is never rewritten away)."""
        async with self._file_lock:
            rest = [t for t in self._pending if t.id != turn.id]
            try:
                if not rest:
                    await asyncio.to_thread(self.journal.rewrite, [])
                    self._done_lines = 0
                else:
                    await asyncio.to_thread(self.journal.append, [{"op": "done", "id": turn.id}])
                    self._done_lines += 1
                    if self._done_lines > max(1000, len(rest)):
                        await asyncio.to_thread(self.journal.rewrite, rest)
                        self._done_lines = 0
            except OSError as exc:  # the turn is written; only the journal's record is stale
                log.error("history journal: cannot record a written turn (%s); after a "
                          "restart it is checked again, never written twice", exc)
            self._pending = rest
