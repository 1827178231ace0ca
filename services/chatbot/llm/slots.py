"""KV slots of a batched context: which sequence id holds which tokens, and prefix reuse."""

from __future__ import annotations

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

    A new prompt takes the free slot that shares the longest prefix with it while keeping
    at least half of what that slot holds (a conversation's earlier turns; an empty slot
    keeps all of its nothing). When no slot qualifies, the least recently used free slot is
    overwritten, so a conversation's cells outlive a few unrelated requests that merely
    share its system prompt.
    """

    def __init__(self, n: int) -> None:
        self.slots = [Slot(i) for i in range(n)]
        self._clock = 0

    def has_free(self) -> bool:
        return any(not s.busy for s in self.slots)

    @property
    def busy(self) -> int:
        return sum(1 for s in self.slots if s.busy)

    def claim(self, prompt: list[int]) -> tuple[Slot, int, Slot | None]:
        """A free slot, how many leading prompt tokens it will hold, and the slot to copy
        them from first (None: the slot already holds them).

        Another slot, busy or not, lends its cells when it holds at least `COPY_MIN_GAIN`
        more of the prompt (typically the system prompt, to a slot that never saw it):
        copying a sequence's cells costs far less than evaluating its tokens again. At least
        the last prompt token is always evaluated again: its logits give the first token.
        """
        best, best_len, best_key = None, 0, None
        for slot in self.slots:
            if slot.busy:
                continue
            n = common_prefix(slot.tokens, prompt)
            keeps_most = 2 * n >= len(slot.tokens)
            # Qualifying slots first, then the longest prefix, then the least recently used.
            key = (keeps_most, n if keeps_most else 0, -slot.last_used)
            if best_key is None or key > best_key:
                best, best_len, best_key = slot, n, key  # an evicted slot still lends its prefix
        if best is None:
            raise LookupError("no free slot")
        self._clock += 1
        best.busy, best.last_used = True, self._clock
        donor, donor_len = None, best_len
        for slot in self.slots:
            if slot is not best and (n := common_prefix(slot.tokens, prompt)) > donor_len:
                donor, donor_len = slot, n
        if donor is not None and donor_len - best_len >= COPY_MIN_GAIN:
            return best, min(donor_len, len(prompt) - 1), donor
        return best, min(best_len, len(prompt) - 1), None

    def release(self, slot: Slot) -> None:
        slot.busy = False
