"""KV slots of a batched context: which sequence id holds which tokens, and prefix reuse."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

# Copying another sequence's cells moves its whole KV stream; worth it from this many tokens.
COPY_MIN_GAIN = 32


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # resident in the KV cache, in order
    busy: bool = False
    last_used: int = 0
    key: str | None = None  # the affinity key of the conversation whose cells it holds


class SlotTable:
    """`n` sequence ids of one context.

    A new prompt takes, among the free slots:

    1. the one that holds its conversation's earlier turns (tagged with the conversation's
       affinity key; without a key, the prompt's prefix shared with the slot reaches past
       `own_from`, into the conversation's own first question, and is at least half of
       what the slot holds);
    2. else a slot that loses nothing to it: an empty one, or one that holds only a prefix
       of the prompt (the longest such prefix first, then the least recently used);
    3. else the least recently used free slot is overwritten.

    So another conversation's cells are overwritten only when no slot is free of them, and a
    new conversation that shares only the system prompt with a slot leaves that slot's
    conversation in place (it copies the system prompt's cells instead: `claim`), and the
    cells of the conversation overwritten are the ones least recently used.
    """

    def __init__(self, n: int) -> None:
        self.slots = [Slot(i) for i in range(n)]
        self._clock = 0

    def has_free(self) -> bool:
        return any(not s.busy for s in self.slots)

    @property
    def busy(self) -> int:
        return sum(1 for s in self.slots if s.busy)

    def claim(self, prompt: list[int], own_from: int | None = None,
              claimed: Mapping[int, list[int]] | None = None, key: str | None = None,
              ) -> tuple[Slot, int, Slot | None]:
        """A free slot, how many leading prompt tokens it will hold, and the slot to copy
        them from first (None: the slot already holds them). `own_from`: for a follow-up
        turn, where the prompt's tokens stop being shared with other conversations (the
        system prompt) and become this conversation's own; None for a first turn. `key`:
        the conversation's affinity key, which the slot holding it is tagged with (a
        follow-up whose first question was followed by a per-turn block shares only that
        question with its own slot, like another conversation that asked the same).

        Another slot, busy or not, lends its cells when it holds at least `COPY_MIN_GAIN`
        more of the prompt (typically the system prompt, to a slot that never saw it):
        copying a sequence's cells costs far less than evaluating its tokens again. At least
        the last prompt token is always evaluated again: its logits give the first token.

        `claimed`: the slots claimed before this one in the same round, by sequence id, with
        the prompt prefix each will still hold once its request starts. Their other cells are
        about to be overwritten (by a restore from host RAM, or the new prompt), so they lend
        only that prefix: a conversation whose cells were in such a slot finds them in host
        RAM instead (the earlier request's start saved them there).
        """
        claimed = claimed or {}
        best, best_len, best_rank = None, 0, None
        for slot in self.slots:
            if slot.busy:
                continue
            n = common_prefix(slot.tokens, prompt)
            # Its own: tagged with its key, or past `own_from` and keeping most of the slot
            # (a conversation that merely asked the same first question keeps little of
            # another's history).
            own = own_from is not None and n > 0 and (
                slot.key == key if key is not None
                else n >= own_from and 2 * n >= len(slot.tokens))
            intact = n == len(slot.tokens)  # taking it overwrites nobody's cells
            # The conversation's own slot, then one that loses nothing (longest prefix
            # first), then the least recently used.
            rank = (own, intact, n if own or intact else 0, -slot.last_used)
            if best_rank is None or rank > best_rank:
                best, best_len, best_rank = slot, n, rank  # an evicted slot still lends its prefix
        if best is None:
            raise LookupError("no free slot")
        self._clock += 1
        best.busy, best.last_used = True, self._clock
        donor, donor_len = None, best_len
        for slot in self.slots:
            if slot is best:
                continue
            if (n := common_prefix(claimed.get(slot.seq_id, slot.tokens), prompt)) > donor_len:
                donor, donor_len = slot, n
        if donor is not None and donor_len - best_len >= COPY_MIN_GAIN:
            return best, min(donor_len, len(prompt) - 1), donor
        return best, min(best_len, len(prompt) - 1), None

    def claim_own(self, prompt: list[int], own_from: int, key: str,
                  unsettled: Collection[int] = ()) -> tuple[Slot, int] | None:
        """The free slot that holds this conversation's cells (tagged with its affinity
        `key`, sharing `prompt` up to `own_from` at least), claimed, and the prefix it
        shares; None when no free slot does. Slots in `unsettled` (a stream copy pending)
        are not taken."""
        best, best_len = None, max(1, own_from)
        for slot in self.slots:
            if slot.busy or slot.key != key or slot.seq_id in unsettled:
                continue
            n = common_prefix(slot.tokens, prompt)
            if n >= best_len:
                best, best_len = slot, n
        if best is None:
            return None
        self._clock += 1
        best.busy, best.last_used = True, self._clock
        return best, best_len

    def release(self, slot: Slot) -> None:
        slot.busy = False
