"""Conversations' KV cells kept in host RAM after their slot went to another conversation.

What llama-server's `--cache-ram` does: before a slot's cells are overwritten, its sequence
is saved with `llama_state_seq_get_data` (the cells' positions and K/V, about
`2 * n_layer * n_embd_kv * 2` bytes per token at f16); when that conversation comes back, the
saved state is put into whichever slot it gets with `llama_state_seq_set_data`, and only the
new part of its prompt is evaluated.

Entries are keyed by the tokens they hold and found by the longest common prefix with a new
prompt; least recently used entries leave first when the byte budget is exceeded. An entry
that is a prefix of a newly saved one (the same conversation at an earlier turn) is dropped.
This module holds bytes and tokens only; the engine's decode thread makes the llama.cpp calls.

Each entry also carries the affinity key of the conversation that produced it (None: a request
placed by no key), so that a draining replica can hand it to the replica that owns that
conversation next (`chatbot.peers.handoff`), and whether it came from such a peer.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from chatbot.llm.slots import common_prefix


@dataclass
class Entry:
    tokens: list[int]  # the sequence's cells, positions 0..len-1, in order
    state: object  # a ctypes buffer from llama_state_seq_get_data
    size: int  # bytes
    key: str | None = None  # the conversation's affinity key
    received: bool = False  # handed over by a draining peer


class KvHostCache:
    """An LRU of saved sequences within `budget_bytes` (0: keeps nothing)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # oldest first
        self._next_key = 0
        self.bytes = 0
        self.saved = 0  # sequences saved
        self.saved_tokens = 0
        self.evicted = 0  # sequences dropped for the budget

    def __len__(self) -> int:
        return len(self._entries)

    def fits(self, size: int) -> bool:
        return 0 < size <= self.budget_bytes

    def covers(self, tokens: list[int]) -> bool:
        """Whether an entry already holds `tokens` (or more of the same sequence)."""
        n = len(tokens)
        return any(len(e.tokens) >= n and e.tokens[:n] == tokens
                   for e in self._entries.values())

    def put(self, tokens: list[int], state: object, size: int, key: str | None = None,
            received: bool = False) -> None:
        """Keeps a saved sequence; entries it extends go, then the least recently used ones
        until the budget holds it."""
        if not self.fits(size):
            return
        for key in [k for k, e in self._entries.items()
                    if len(e.tokens) <= len(tokens) and tokens[:len(e.tokens)] == e.tokens]:
            self._drop(key)
        while self._entries and self.bytes + size > self.budget_bytes:
            self._drop(next(iter(self._entries)))
            self.evicted += 1
        self._entries[self._next_key] = Entry(list(tokens), state, size, key, received)
        self._next_key += 1
        self.bytes += size
        self.saved += 1
        self.saved_tokens += len(tokens)

    def best(self, prompt: list[int]) -> tuple[int | None, int]:
        """The entry sharing the longest prefix with `prompt` (most recent on ties): its key
        and that prefix's length; (None, 0) when empty."""
        best_key, best_n = None, 0
        for key, entry in reversed(self._entries.items()):
            n = common_prefix(entry.tokens, prompt)
            if n > best_n:
                best_key, best_n = key, n
        return best_key, best_n

    def entries(self) -> list[Entry]:
        """Every entry, most recently used first."""
        return list(reversed(self._entries.values()))

    def take(self, key: int) -> Entry:
        """Removes and returns an entry (its state moves into a slot)."""
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        return entry

    def _drop(self, key: int) -> None:
        self.bytes -= self._entries.pop(key).size
